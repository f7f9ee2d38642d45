"""Memory safety of :func:`~stmap.tl.map_cells`: refuse, before computing, a run whose peak would not fit.

The estimate adds what the run allocates after reading its inputs: the composition fit, the placement (the dense
exact path holds several ``spots x genes`` arrays, the sparse path the counts at the spots' non-zeros and one type's
dense cells x genes blocks), and the results (the placed-cells table holds every placed cell's reference counts).
It is compared with the memory the system reports available (``MemAvailable``); where that is unknown, nothing is
refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stmap._core import StmapInputError
from stmap._core._memory import MEMORY_SHARE, available_bytes

if TYPE_CHECKING:
    from ._prepare import MappingInputs

__all__ = ["check_memory", "estimate_peak_bytes", "available_bytes"]


def estimate_peak_bytes(inp: MappingInputs, *, mode: str, mean_cells: float | None, large: bool) -> dict[str, float]:
    """Bytes a run allocates after reading its inputs, by part (composition, placement, results)."""
    m, g = inp.Y.shape
    n_ref, T = inp.codes.size, inp.n_types
    n_c = float(np.bincount(inp.codes, minlength=T).max())
    if mode == "greedy":
        placed = float(n_ref)
    elif inp.n_given is not None:
        placed = float(np.sum(inp.n_given))
    else:  # n_j = max(round(prior x cell equivalents / their mean), 1): a little above the prior on average
        placed = 1.25 * m * max(mean_cells or 5.0, 1.0)
    row_nnz = inp.Xc.nnz / max(n_ref, 1)
    from stmap.models._mapping import SPARSE_MIN_ENTRIES

    fit = m * T * 16.0 if m * g >= SPARSE_MIN_ENTRIES else m * g * 4.0 * 2
    if large:  # counts and expected counts at the non-zeros; one type's dense blocks and candidates
        place = inp.Y.nnz * 16.0 + n_c * g * 10.0 + 3 * 64e6 + (40.0 * n_c + 20.0 * m) * 24
    else:  # mu0, yhat and a pseudobulk of all fitted spots; counts, mu and residuals of one type's spots
        place = m * g * 4.0 * 6
    results = placed * (row_nnz * 8.0 + 200.0) + n_ref * 20 * 12.0
    return {"composition": fit, "placement": place, "results": results}


def check_memory(inp: MappingInputs, *, mode: str, mean_cells: float | None, large: bool) -> None:
    """Raise when the estimated peak exceeds the available memory, naming what makes the run smaller.

    Raises
    ------
    StmapInputError
        The run would not fit.
    """
    avail = available_bytes()
    if avail is None:
        return
    parts = estimate_peak_bytes(inp, mode=mode, mean_cells=mean_cells, large=large)
    need = sum(parts.values())
    if need <= MEMORY_SHARE * avail:
        return
    m, g = inp.Y.shape
    detail = ", ".join(f"{k} {v / 2**30:.1f} GB" for k, v in parts.items())
    raise StmapInputError(
        f"map_cells would need about {need / 2**30:.1f} GB ({detail}) for {m} spots x {g} genes and "
        f"{inp.codes.size} reference cells, more than the {avail / 2**30:.1f} GB available. Map on fewer genes "
        "(`genes='markers'` with a smaller `n_markers`, or a gene list), with a smaller reference (subsample "
        "`sc_adata` per type; greedy mode places every reference cell), with fewer cells per spot "
        "(`cells_per_spot` / `mean_cells_per_spot`; the placed-cells table holds each placed cell's counts: subset "
        "`sc_adata` to the genes you need), or free memory."
    )
