"""stmap.tl."""

from ._mapping import map_cells, project_genes

__all__ = ["map_cells", "project_genes"]
