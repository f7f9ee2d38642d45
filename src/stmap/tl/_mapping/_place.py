"""Placement of reference cells into the slots, type by type, under capacities (:mod:`stmap.kernels._assign`).

Within each type, cells go to slots by a linearised Poisson likelihood gain: the cell's departure from its type's
mean, ``(x_i - L_i p_t) / sqrt(L_i)``, against the spot's relative residual ``y_j / mu_j - 1`` (a matrix product,
computed for one block of cells at a time): exact assignment for small problems, greedy on top-k candidates
otherwise. ``mu_j`` first comes from the composition fit; refinement rounds replace the other types' share by the
cells actually placed there (Gauss-Seidel over types).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from stmap.kernels._assign import capacity_assign

if TYPE_CHECKING:
    from ._composition import Composition
    from ._prepare import MappingInputs

__all__ = ["Placement", "place_cells", "sparse_path", "LARGE_WORK", "LARGE_ENTRIES"]

#: Above this many scores per round (reference cells x spots needing their type x genes, summed over types) the
#: placement takes the sparse path: candidates from features projected on their leading components, exact scores
#: for the candidates only, counts and expected counts kept at the spots' non-zeros (:mod:`._place_large`).
LARGE_WORK = 5e10
#: ... or above this many fitted spots x genes (the exact path holds ~6 dense float32 arrays of that size).
LARGE_ENTRIES = 2.5e7

_Assigned = tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class Placement:
    """Where the reference cells went."""

    #: Reference row of each placement, sorted by spot then cell.
    cells: np.ndarray
    #: Spot-table row of each placement.
    spots: np.ndarray
    #: Candidate edges: reference rows, spot-table rows and scores (top ``n_candidates`` per cell).
    cand_cells: np.ndarray
    cand_spots: np.ndarray
    cand_scores: np.ndarray


def cell_features_dense(X: np.ndarray, lib: np.ndarray) -> np.ndarray:
    """``(x_i - L_i p_t) / sqrt(L_i)`` of dense float32 counts ``X`` (modified in place and returned)."""
    pbar = (X / lib[:, None].astype(np.float32)).mean(axis=0)
    X -= lib[:, None].astype(np.float32) * pbar[None, :]
    X /= np.sqrt(lib[:, None]).astype(np.float32)
    return X


def _cell_features(Xt: sparse.csr_matrix, lib: np.ndarray) -> np.ndarray:
    """Cells' departure from their type's mean profile, ``(x_i - L_i p_t) / sqrt(L_i)`` (Pearson-like residuals)."""
    return cell_features_dense(np.asarray(Xt.todense(), dtype=np.float32), lib)


def _pseudobulk(X: sparse.csr_matrix, cells: np.ndarray, spots: np.ndarray, m: int) -> np.ndarray:
    """Dense ``(m, genes)`` sums of the rows ``cells`` of ``X`` into ``spots``."""
    A = sparse.csr_matrix((np.ones(cells.size, np.float32), (spots, cells)), shape=(m, X.shape[0]))
    return np.asarray((A @ X).todense(), dtype=np.float32)


def _refined_mu(
    Yd: np.ndarray, comp: Composition, yhat: np.ndarray, demand: np.ndarray, t: int, spots_t: np.ndarray
) -> np.ndarray:
    """Expected counts of the spots ``spots_t``: the other types' placed cells plus type ``t``'s mean x its slots."""
    ref_mu = yhat[spots_t] + (demand[spots_t, None] * comp.lib_t[t]) * comp.prof[t][None, :].astype(np.float32)
    ref_mu *= comp.gene_scale[None, :].astype(np.float32)
    kappa = Yd.sum(axis=1) / np.maximum(ref_mu.sum(axis=1), 1e-12)
    return np.maximum(ref_mu * kappa[:, None], 1e-12)


class _DenseState:
    """Exact placement on dense ``spots x genes`` arrays (small problems): exact scores of every pair of a type."""

    def __init__(self, inp: MappingInputs, comp: Composition) -> None:
        self.inp, self.comp = inp, comp
        self.m = inp.Y.shape[0]  # fitted spots (all but the empty ones)
        Ps = (comp.prof * comp.gene_scale[None, :]).astype(np.float32)
        self.mu0 = np.maximum(comp.weights.astype(np.float32) @ Ps, 1e-12)
        self.Xgd = inp.Xg.astype(np.float32)
        self.yhat = np.zeros((self.m, len(inp.genes)), dtype=np.float32)  # counts of the cells placed so far

    def move(self, t: int, cells_t: np.ndarray, r: np.ndarray, spots: np.ndarray, sign: float) -> None:
        """Add (``sign=1``) or take out (``-1``) the cells ``cells_t[r]`` of type ``t`` placed in ``spots``."""
        self.yhat += sign * _pseudobulk(self.Xgd, cells_t[r], spots, self.m)

    def assign(
        self, t: int, rnd: int, cells_t: np.ndarray, demand: np.ndarray, row_cap: int, k: int, last: bool
    ) -> _Assigned:
        """Cells of type ``t`` into its slots ``demand`` (rows of ``cells_t``, fitted-spot columns, candidates)."""
        inp = self.inp
        spots_t = np.flatnonzero(demand > 0)
        Yd = inp.Y[spots_t].toarray().astype(np.float32, copy=False)
        mu = self.mu0[spots_t] if rnd == 0 else _refined_mu(Yd, self.comp, self.yhat, demand, t, spots_t)
        zc = _cell_features(inp.Xg[cells_t], inp.lib_c[cells_t])
        zs = Yd / mu - 1.0  # rows of spots_t only
        pos = np.full(self.m, -1, dtype=np.int64)
        pos[spots_t] = np.arange(spots_t.size)

        def score(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            return zc[r] @ zs[pos[c]].T

        return capacity_assign(score, np.full(cells_t.size, row_cap, dtype=np.int64), demand, k=k)


def _type_work(inp: MappingInputs, slots: np.ndarray | None) -> float:
    """Scores the exact placement computes per round: cells x spots needing the type x genes, summed over types.

    Without ``slots``, the most it can be (every spot needs every type).
    """
    if slots is None:
        return float(inp.codes.size) * inp.Y.shape[0] * len(inp.genes)
    n_c = np.bincount(inp.codes, minlength=inp.n_types).astype(float)
    return float((n_c * (slots > 0).sum(axis=0)).sum() * len(inp.genes))


def sparse_path(inp: MappingInputs, slots: np.ndarray | None = None) -> bool:
    """Whether the placement takes the sparse path (:data:`LARGE_WORK`, :data:`LARGE_ENTRIES`)."""
    return _type_work(inp, slots) > LARGE_WORK or float(inp.Y.shape[0]) * len(inp.genes) > LARGE_ENTRIES


def place_cells(
    inp: MappingInputs,
    comp: Composition,
    slots: np.ndarray,
    row_cap: list[int],
    *,
    n_candidates: int,
    n_refine: int,
    verbose: bool,
) -> Placement:
    """Fill the slots ``(n_fitted, n_types)``; a reference cell of type ``t`` fills at most ``row_cap[t]`` of them.

    Problems above :data:`LARGE_WORK` scores per round or :data:`LARGE_ENTRIES` spots x genes take the sparse
    path (:mod:`._place_large`).
    """
    from tqdm.auto import tqdm

    from ._place_large import SparseState  # numba kernels: imported on first use

    state = SparseState(inp, comp) if sparse_path(inp, slots) else _DenseState(inp, comp)
    placed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    cands: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    active = [t for t in range(inp.n_types) if slots[:, t].sum() > 0]
    for rnd in tqdm(range(n_refine + 1), desc="placing cells", disable=not verbose):
        for t in active:
            cells_t = np.flatnonzero(inp.codes == t)
            if t in placed:  # take this type's cells out of the running sum
                state.move(t, cells_t, *placed[t], -1.0)
            r, c, cand = state.assign(t, rnd, cells_t, slots[:, t], row_cap[t], n_candidates, rnd == n_refine)
            placed[t] = (r, c)
            cands[t] = (cells_t[cand[0]], cand[1], cand[2])
            state.move(t, cells_t, r, c, 1.0)
    return _collect(inp, placed, cands, active)


def _collect(
    inp: MappingInputs,
    placed: dict[int, tuple[np.ndarray, np.ndarray]],
    cands: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    active: list[int],
) -> Placement:
    """Placements of all types in spot-table rows, sorted by spot then cell, and the candidate edges."""
    if active:
        pc = np.concatenate([np.flatnonzero(inp.codes == t)[placed[t][0]] for t in active])
        ps = inp.fitted[np.concatenate([placed[t][1] for t in active])]  # back to rows of the spot table
    else:
        pc = ps = np.zeros(0, int)
    order = np.lexsort((pc, ps))
    e = np.zeros(0, np.int64)
    cr = np.concatenate([cands[t][0] for t in active]) if active else e
    cc = inp.fitted[np.concatenate([cands[t][1] for t in active])] if active else e
    cv = np.concatenate([cands[t][2] for t in active]) if active else np.zeros(0)
    return Placement(pc[order], ps[order], cr, cc, cv)
