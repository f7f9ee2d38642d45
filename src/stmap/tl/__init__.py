"""stmap.tl."""

from ._mapping import map_cells, project_genes
from ._density import GridSpec, density  # noqa: E402

__all__ = ["density", "GridSpec", "map_cells", "project_genes"]
