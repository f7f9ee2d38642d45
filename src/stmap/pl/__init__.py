"""Plots on matplotlib / spatialdata-plot: every tool's result can be looked at."""

from ._ctr import ctr
from ._mapping import mapping
from ._spatial import spatial

__all__ = ["ctr", "mapping", "spatial"]
