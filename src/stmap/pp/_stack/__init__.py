"""Stack serial sections into one 3D sample, and the 3D spot graph (as in ASIGN).

Serial sections are joined into one :class:`spatialdata.SpatialData`: every section keeps its elements (nothing is
resampled), gets a coordinate system named after it, and an aligned frame ``'aligned'`` (micrometres) maps all of
them into one plane; the third axis is the section's ``z``. One table holds every spot of every section.

The 3D spot graph has three sparse parts: spots of nearby sections joined by the overlap (intersection over union,
IoU) of their registered spot discs, computed in closed form from a KD-tree radius query; spots of nearby sections
joined by the similarity of their features (e.g. histology), top-k per spot; and spots of the same section joined by
spatial kNN.

Steps: ``_sections`` (the input as named sections, one table split by section), ``_gather`` (resolve each section,
order by z, genes), ``_align`` (one matrix per section), ``_write`` (elements and the table), ``_graph`` (the graph
on arrays), ``_spot_graph`` (the graph of a stacked table).
"""

from ..._core._constants import Key
from ._graph import disc_iou, graph_arrays
from ._spot_graph import spot_graph_3d, stack_context, stack_radius
from ._stack_sections import stack_sections
from ._write import ALIGNED, ALIGNED_3D

#: ``uns`` key of the stacking metadata (kept for readers of this module; the name lives in ``Key.uns.stack``).
STACK_KEY = Key.uns.stack

__all__ = ["disc_iou", "graph_arrays", "spot_graph_3d", "stack_sections"]
