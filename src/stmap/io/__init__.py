"""Input/output: save results into the zarr store a :class:`spatialdata.SpatialData` was read from."""

from ._write import recover, write_results

__all__ = ["recover", "write_results"]
