"""Cells per spot and the per-spot, per-type slots that the placement fills.

Cells per spot ``n_j`` are given (segmentation) or estimated CytoSPACE-style, proportional to the spot's fitted
cell equivalents and scaled to a mean-cells-per-spot prior. Regular mode splits each spot's ``n_j`` slots over types
by largest-remainder rounding (exactly ``n_j``); greedy mode scales the capacities ``n_j`` to the number of
reference cells and splits them over types by iterative proportional fitting, so every cell has exactly one slot of
its type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from stmap._core import _logging as logg
from stmap.kernels._assign import largest_remainder

if TYPE_CHECKING:
    from stmap._core import TableContext

__all__ = ["cells_per_spot", "greedy_capacities", "greedy_quotas", "make_slots", "mean_cells_prior"]

#: Cells per square micrometre assumed when estimating cells per spot without a prior (one cell per 150 um^2,
#: i.e. about 12 um between cell centres).
_CELL_AREA_UM2 = 150.0
#: Mean cells per spot when neither a prior nor the spot size in micrometres is known (CytoSPACE's Visium default).
_DEFAULT_MEAN_CELLS = 5.0


def mean_cells_prior(ctx: TableContext, *, log: bool = True) -> float:
    """Mean cells per spot from the spot area (one cell per 150 um^2), else 5 (logged)."""
    d = ctx.diameters
    um = ctx.um_per_unit
    if d is None or um is None:
        if log:
            logg.info(f"    no spot size in micrometres: assuming {_DEFAULT_MEAN_CELLS:g} cells per spot on average")
        return _DEFAULT_MEAN_CELLS
    area = np.pi * (np.median(d) * um / 2.0) ** 2
    return max(1.0, float(area / _CELL_AREA_UM2))


def cells_per_spot(
    cells_eq: np.ndarray, n_given: np.ndarray | None, mean_cells: float | None, ctx: TableContext
) -> np.ndarray:
    """``n_j`` of every fitted spot: as given, else proportional to its cell equivalents, scaled to the prior mean."""
    if n_given is not None:
        return n_given
    prior = mean_cells if mean_cells is not None else mean_cells_prior(ctx)
    eq = cells_eq.sum(axis=1)
    return np.maximum(np.round(prior * eq / eq.mean()), 1).astype(np.int64)


def greedy_quotas(F: np.ndarray, cap: np.ndarray, n_t: np.ndarray) -> np.ndarray:
    """Integer spot x type quotas with column sums ``n_t`` exactly and row sums close to ``cap`` (IPF + rounding)."""
    E = (F + 1e-6) * cap[:, None]
    E[cap == 0] = 0.0
    for _ in range(100):
        E *= (cap / np.maximum(E.sum(axis=1), 1e-300))[:, None]
        E *= (n_t / np.maximum(E.sum(axis=0), 1e-300))[None, :]
    return largest_remainder(E.T, n_t).T


def make_slots(
    mode: Literal["regular", "greedy"],
    F: np.ndarray,
    n_spot: np.ndarray,
    n_t: np.ndarray,
    label: np.ndarray | None,
) -> tuple[np.ndarray, list[int]]:
    """Slots ``(n_fitted, n_types)`` and the most slots one cell of each type may fill.

    Regular mode: ``n_j`` slots per spot (single-cell targets: one slot of the transferred type ``label``), a cell
    filling at most its fair share ``ceil(slots_t / cells_t)``. Greedy mode: one slot per reference cell.
    """
    T = F.shape[1]
    if mode == "regular":
        slots = largest_remainder(F, n_spot) if label is None else np.eye(T, dtype=np.int64)[label]
        return slots, [int(np.ceil(slots[:, t].sum() / n_t[t])) for t in range(T)]
    return greedy_quotas(F, greedy_capacities(n_spot, n_t), n_t.astype(np.int64)), [1] * T


def greedy_capacities(n_spot: np.ndarray, n_t: np.ndarray) -> np.ndarray:
    """Greedy mode's spot capacities: ``n_j`` scaled to the number of reference cells (largest remainder)."""
    n_cells = int(round(float(n_t.sum())))
    return largest_remainder(n_spot[None, :].astype(float), np.array([n_cells]))[0]
