"""stmap: place what was measured at one resolution onto tissue at another.

A scverse plugin for :class:`spatialdata.SpatialData` and :class:`anndata.AnnData`::

    import stmap as st

    sdata = st.datasets.synthetic_tissue(seed=0)
    st.pl.spatial(sdata, color="region")

Heavy dependencies (torch, torch-geometric, numba kernels) are imported on first use, so ``import stmap`` stays fast.
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, metrics, pl, pp, tl
from ._core._errors import StmapInputError, StmapKeyError
from ._core._settings import settings

try:
    __version__ = version("stmap")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["StmapInputError", "StmapKeyError", "datasets", "io", "metrics", "pl", "pp", "settings", "tl", "__version__"]
