"""Cell-to-spot mapping (Celloc task): composition, cells per spot, and a capacity-respecting placement of cells.

:func:`map_cells` runs the steps, one module each (validate -> prepare -> compute -> write):

1. :mod:`._validate`, :mod:`._prepare`: counts checked, mapping genes chosen (all shared, a list, or markers),
   spots without counts on them set aside.
2. :mod:`._composition`: each spot's counts fitted as a non-negative mixture of the reference's mean type profiles
   under a Poisson likelihood with a per-gene platform scaling (:mod:`stmap.models._mapping`), vectorised over all
   spots; counts of a type over its mean library size give cell-number fractions.
3. :mod:`._slots`: cells per spot ``n_j`` given or estimated (CytoSPACE-style), split into per-type slots.
   :mod:`._single_cell`: targets that hold one cell each get one label (RCTD's singlet call).
4. :mod:`._place`: within each type, cells fill slots by a linearised Poisson likelihood gain under capacities
   (:mod:`stmap.kernels._assign`), with refinement rounds over types.
5. :mod:`._write`: spot-table results, the reference's placements and the table of placed cells.

:func:`project_genes` (:mod:`._project`) predicts reference genes in every spot from the placement.
"""

from ._map_cells import map_cells
from ._project import project_genes

__all__ = ["map_cells", "project_genes"]
