"""Products evaluated only at the non-zeros of a CSR matrix (numba); know arrays only.

Used by the placement of :func:`stmap.tl.map_cells` at capture-area sizes, where the spots' counts are sparse and
every ``spots x genes`` quantity the placement needs (expected counts, relative residuals, placed cells' counts) is
needed only where a spot has counts.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["dot_at_nnz", "pair_dots", "scatter_rows"]


@njit(parallel=True, cache=True)
def _dot_at_nnz(indptr, indices, A, B, out):  # pragma: no cover - compiled
    for j in prange(indptr.size - 1):
        for e in range(indptr[j], indptr[j + 1]):
            g = indices[e]
            acc = np.float32(0.0)
            for t in range(A.shape[1]):
                acc += A[j, t] * B[g, t]
            out[e] = acc


def dot_at_nnz(indptr: np.ndarray, indices: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``(A @ B.T)[j, g]`` at every non-zero ``(j, g)`` of the CSR structure ``(indptr, indices)`` (float32).

    ``A`` is ``(n_rows, k)``, ``B`` is ``(n_cols, k)``; the result is aligned with ``indices``.
    """
    out = np.empty(indices.size, dtype=np.float32)
    _dot_at_nnz(
        indptr, indices, np.ascontiguousarray(A, dtype=np.float32), np.ascontiguousarray(B, dtype=np.float32), out
    )
    return out


@njit(parallel=True, cache=True)
def _pair_dots(indptr, indices, data, Z, rows, cols, out):  # pragma: no cover - compiled
    for p in prange(rows.size):
        r = rows[p]
        c = cols[p]
        acc = 0.0
        for e in range(indptr[c], indptr[c + 1]):
            acc += Z[r, indices[e]] * data[e]
        out[p] = acc


def pair_dots(indptr, indices, data, Z: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``Z[rows[p]] . M[cols[p]]`` for every pair ``p``, with ``M`` the CSR matrix ``(indptr, indices, data)``.

    ``Z`` is dense ``(n, n_genes)`` float32; the sums are accumulated in float64. Pairs are visited by row of ``Z``
    (one row stays in cache while its pairs are summed).
    """
    order = np.argsort(rows, kind="stable")
    out = np.empty(rows.size, dtype=np.float64)
    _pair_dots(indptr, indices, data, Z, rows[order].astype(np.int64), cols[order].astype(np.int64), out)
    res = np.empty_like(out)
    res[order] = out
    return res


@njit(cache=True)
def _scatter_rows(indptr, indices, out, X, cells, spots, sign):  # pragma: no cover - compiled
    for p in range(cells.size):
        i = cells[p]
        j = spots[p]
        for e in range(indptr[j], indptr[j + 1]):
            out[e] += sign * X[i, indices[e]]


def scatter_rows(indptr, indices, out: np.ndarray, X: np.ndarray, cells: np.ndarray, spots: np.ndarray, sign: float):
    """``out[e] += sign * X[cells[p], g]`` for every non-zero ``e = (spots[p], g)`` of the CSR structure, in place.

    Adds (``sign=1``) or removes (``-1``) the rows ``cells`` of dense ``X`` into the rows ``spots``, at the non-zeros
    only (sequential: several cells may go to one row).
    """
    _scatter_rows(indptr, indices, out, X, cells.astype(np.int64), spots.astype(np.int64), np.float32(sign))
