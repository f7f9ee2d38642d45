"""stmap.tl."""

from ._mapping import map_cells, project_genes
from ._density import GridSpec, density  # noqa: E402
from ._rank import rank_densities  # noqa: E402
from ._ctr import CTRModel, detect_ctr, train_ctr  # noqa: E402

__all__ = ["CTRModel", "detect_ctr", "train_ctr", "density", "GridSpec", "rank_densities", "map_cells", "project_genes"]
