"""Simulators with known ground truth.

* :func:`simulate_spots` aggregates single-cell-resolution data into Visium-like spots (the truth: which cell is in
  which spot, and each spot's cell-type composition).
* :func:`simulate_tissue` places real reference cells into a 2D tissue with spatially coherent domains.
* :func:`synthetic_tissue` builds a small, fully synthetic SpatialData (cells, spots, an H&E-like image with a
  tumour region) for the demo and for fast tests.

All coordinates are in micrometres in the ``'global'`` coordinate system. One file per simulator, named for it;
``_inputs`` reads what they need from a user's AnnData and ``_names`` holds the names of what they write.
"""

from ._names import CELL_POINTS, CELLS, ELEMENT_KEY, HE, REGIONS, SPOT_CIRCLES, SPOTS
from ._spots import simulate_spots
from ._synthetic import _NUC as _NUC  # nucleus shapes by type, also drawn by the Xenium writer
from ._synthetic import CELL_TYPES, TISSUE_REGIONS, synthetic_tissue
from ._tissue import pbmc_counts, simulate_tissue

__all__ = [
    "pbmc_counts",
    "simulate_spots",
    "simulate_tissue",
    "synthetic_tissue",
    "SPOTS",
    "CELLS",
    "SPOT_CIRCLES",
    "CELL_POINTS",
    "HE",
    "REGIONS",
    "ELEMENT_KEY",
    "CELL_TYPES",
    "TISSUE_REGIONS",
]
