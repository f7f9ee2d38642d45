"""Plots on matplotlib / spatialdata-plot: every tool's result can be looked at."""

from ._spatial import spatial

__all__ = ["spatial"]
