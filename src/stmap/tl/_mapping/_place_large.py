"""Placement at capture-area sizes: the score of :mod:`._place` without dense ``spots x genes`` arrays.

The exact placement scores every cell of a type against every spot that needs the type, ``z_i . (y_j / mu_j - 1)``
over all mapping genes, and keeps the spots' counts, expected counts and placed cells' counts as dense
``spots x genes`` arrays (20 GB at 650,000 Visium HD bins x 2,000 genes). Here, per type and round:

- ``mu_j`` and the placed cells' counts are kept only where the spot has counts (``y_j`` is sparse; ``y / mu`` is
  zero elsewhere), and ``z_i . (y_j / mu_j - 1) = z_i . (y_j / mu_j) - sum(z_i)`` is exact on those non-zeros;
- candidates come from one memory-bounded pass over blocks of the cells x spots scores in bfloat16 (float32 on CPUs
  without bfloat16 matrix units): the best ``SEARCH_FACTOR * k`` spots of every cell and the best ``k`` cells of
  every spot (:func:`stmap.kernels.search_candidates`); every candidate is then scored exactly (float64 sums over
  the spot's non-zeros), and the assignment (greedy, repair, fill: :func:`stmap.kernels.fill_slots`) runs on the
  exact scores. Refinement rounds re-score the first round's candidates (the slots do not change; on 60,000 bins
  this keeps 99.8-99.9% of the score sum a new search reaches, at a third of the search's cost).

Problems small enough for the dense exact path stay on it (:func:`._place.sparse_path`). The sums differ from the
exact path's float32 products by round-off only: on a problem both run, the first round's candidates and scores
agree (``tests/tl/test_mapping_scale.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from stmap.kernels._fill import fill_slots, row_top, search_candidates
from stmap.kernels._nnz import dot_at_nnz, pair_dots, scatter_rows

from ._place import cell_features_dense

if TYPE_CHECKING:
    from ._composition import Composition
    from ._prepare import MappingInputs

__all__ = ["SparseState", "SEARCH_FACTOR", "search_dtype"]

#: Candidates searched per cell and per spot, in multiples of ``n_candidates`` (then scored exactly).
SEARCH_FACTOR = 2


def search_dtype() -> Any:
    """bfloat16 where the CPU multiplies it natively (AMX or AVX512-BF16: ~6x float32), else float32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    fast = any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return torch.bfloat16 if fast else torch.float32


def _row_ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of the non-zeros of ``rows`` in a CSR matrix's ``data`` (row by row)."""
    starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
    offs = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens)
    return offs + np.arange(int(lens.sum()))


class SparseState:
    """Placed cells' counts and expected counts at the spots' non-zeros; candidates from low-precision blocks."""

    def __init__(self, inp: MappingInputs, comp: Composition) -> None:
        self.inp, self.comp = inp, comp
        self.Y = sparse.csr_matrix(inp.Y, dtype=np.float32)
        self.s = comp.gene_scale.astype(np.float32)
        self.PsT = np.ascontiguousarray((comp.prof * comp.gene_scale[None, :]).T, dtype=np.float32)
        self.ytot = np.asarray(self.Y.sum(axis=1), dtype=np.float64).ravel()
        self.yhat = np.zeros(self.Y.nnz, dtype=np.float32)  # placed cells' counts at the spots' non-zeros
        self.yhat_s = np.zeros(self.Y.shape[0])  # placed cells' counts times the platform scaling, summed
        self.xs = np.asarray(inp.Xg @ comp.gene_scale, dtype=np.float64).ravel()
        self._counts: tuple[int, np.ndarray] | None = None  # dense counts of the type being placed
        self._cands: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # first-round candidates of each type

    def _type_counts(self, t: int, cells_t: np.ndarray) -> np.ndarray:
        if self._counts is None or self._counts[0] != t:
            self._counts = (t, self.inp.Xg[cells_t].toarray().astype(np.float32, copy=False))
        return self._counts[1]

    def move(self, t: int, cells_t: np.ndarray, r: np.ndarray, spots: np.ndarray, sign: float) -> None:
        """Add (``sign=1``) or take out (``-1``) the cells ``cells_t[r]`` placed in the fitted spots ``spots``."""
        scatter_rows(self.Y.indptr, self.Y.indices, self.yhat, self._type_counts(t, cells_t), r, spots, sign)
        np.add.at(self.yhat_s, spots, sign * self.xs[cells_t[r]])

    def _mu(self, t: int, rnd: int, spots_t: np.ndarray, demand: np.ndarray) -> sparse.csr_matrix:
        """``y / mu`` of the spots ``spots_t`` at their non-zeros (``mu`` as in :func:`._place._refined_mu`)."""
        sub = self.Y[spots_t]
        if rnd == 0:
            mu = dot_at_nnz(sub.indptr, sub.indices, self.comp.weights[spots_t], self.PsT)
        else:
            d = demand[spots_t].astype(np.float64) * self.comp.lib_t[t]
            prof_t = self.comp.prof[t].astype(np.float32)
            rep = np.repeat(np.arange(spots_t.size), np.diff(sub.indptr))
            placed = self.yhat[_row_ranges(self.Y.indptr, spots_t)]
            ref = (placed + d[rep] * prof_t[sub.indices]) * self.s[sub.indices]
            kappa = self.ytot[spots_t] / np.maximum(self.yhat_s[spots_t] + d * float(prof_t @ self.s), 1e-12)
            mu = ref * kappa[rep].astype(np.float32)
        w = sub.data / np.maximum(mu, np.float32(1e-12))
        return sparse.csr_matrix((w.astype(np.float32), sub.indices, sub.indptr), shape=sub.shape)

    def assign(self, t: int, rnd: int, cells_t: np.ndarray, demand: np.ndarray, row_cap: int, k: int, last: bool):
        """Cells of type ``t`` into its slots ``demand`` (rows of ``cells_t``, fitted-spot columns, candidates)."""
        spots_t = np.flatnonzero(demand > 0)
        Wt = self._mu(t, rnd, spots_t, demand)
        zc = cell_features_dense(self._type_counts(t, cells_t).copy(), self.inp.lib_c[cells_t])
        score = _BlockScores(zc, Wt)

        def pair_score(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            return pair_dots(Wt.indptr, Wt.indices, Wt.data, zc, r, c) - score.csum[r]

        caps = np.full(cells_t.size, row_cap, dtype=np.int64)
        if t not in self._cands:  # refinement rounds re-score the first round's candidates exactly
            rows, cols = np.arange(cells_t.size), np.arange(spots_t.size)
            r, c, _ = search_candidates(score, rows, cols, SEARCH_FACTOR * k, k_col=k)
            self._cands[t] = (r, c)
        ar, ac, cand = fill_slots(score, caps, demand[spots_t], k=k, pair_score=pair_score, candidates=self._cands[t])
        cr, cc, cs = row_top(*cand, k) if last else (np.zeros(0, np.int64),) * 2 + (np.zeros(0),)
        return ar, spots_t[ac], (cr, spots_t[cc], cs)


class _BlockScores:
    """Approximate scores ``z_r . w_c`` of a block, bfloat16 products where fast.

    ``sum(z_r)`` is ~0 by construction (the exact scores subtract it). A block is returned as the transpose of a
    C-contiguous ``(columns, rows)`` float32 array.
    """

    def __init__(self, zc: np.ndarray, Wt: sparse.csr_matrix) -> None:
        import torch

        self.dtype = search_dtype()
        self.Z = torch.from_numpy(zc).to(self.dtype)
        self.W = Wt
        self.csum = zc.sum(axis=1, dtype=np.float64)

    def __call__(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        import torch

        Z = self.Z if r.size == self.Z.shape[0] else self.Z[torch.from_numpy(r)]  # r: sorted distinct rows
        Wc = torch.from_numpy(self.W[c].toarray()).to(self.dtype)
        return (Wc @ Z.T).float().numpy().T
