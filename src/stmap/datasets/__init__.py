"""Real public data as SpatialData, and simulators with known ground truth."""

from ._her2st import her2st, her2st_deconvolution
from ._platforms import synthetic_visium, synthetic_visium_hd, synthetic_xenium
from ._readers import (
    bdtnp_atlas,
    cosmx_lung,
    spacexr,
    squidpy_visium,
    starmap_cells,
    visium_dentate_gyrus,
    vizgen_brain,
)
from ._scale import large_reference, large_visium_hd, large_xenium
from ._scale_stack import large_stack
from ._simulate import pbmc_counts, simulate_spots, simulate_tissue, synthetic_tissue
from ._stack import simulate_stack

__all__ = [
    "bdtnp_atlas",
    "cosmx_lung",
    "her2st",
    "her2st_deconvolution",
    "large_reference",
    "large_stack",
    "large_visium_hd",
    "large_xenium",
    "pbmc_counts",
    "simulate_spots",
    "simulate_stack",
    "simulate_tissue",
    "spacexr",
    "squidpy_visium",
    "starmap_cells",
    "synthetic_tissue",
    "synthetic_visium",
    "synthetic_visium_hd",
    "synthetic_xenium",
    "visium_dentate_gyrus",
    "vizgen_brain",
]
