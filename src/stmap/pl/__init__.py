"""Plots on matplotlib / spatialdata-plot: every tool's result can be looked at."""

from ._ctr import ctr
from ._density import density, density_ranking
from ._gene_maps import gene_maps
from ._mapping import mapping, mapping_confidence
from ._sections_3d import sections_3d
from ._spatial import spatial

__all__ = ["ctr", "density", "density_ranking", "gene_maps", "mapping", "mapping_confidence", "sections_3d", "spatial"]
