"""Capacity-constrained assignment at capture-area sizes: one memory-bounded pass over the scores.

Rows (cells) have capacities, columns (spot slots of one type) demands. The score matrix ``rows x columns`` is never
held: it is computed in blocks of columns whose size follows a memory budget, and each block leaves two candidate
sets behind (numba min-heaps over the block): the best ``k`` rows of every column and (merged across blocks) the
best ``k`` columns of every row (:func:`search_candidates`). When the block scores are an approximation (e.g. low
precision products), ``pair_score`` re-scores the union of candidates exactly; candidates found for an earlier,
similar problem can be given instead of searching. The union is sorted once and filled greedily (best edges first,
capacities decremented; a numba loop). Slots still open are repaired on the residual problem (rows with capacity x
columns with demand), which is small after the first pass; what is left after that is filled with any free row,
pairs kept distinct where possible. Small problems with unit row capacities are then solved optimally on the
candidate graph (as :func:`~stmap.kernels.capacity_assign` solves them on all pairs).

Cost: one ``rows x columns`` pass of block scores and ``O(E log E)`` for the ``E = k (rows + columns)`` candidate
edges; memory: the budget plus the edges. The first-pass candidates cover both sides, so a popular row cannot leave
a column without candidates, and a row outside every column's top ``k`` still has its own best columns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

__all__ = ["fill_slots", "search_candidates", "row_top"]

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: Rows per chunk of the row-side pass (one thread keeps the best columns of these rows).
_ROW_CHUNK = 1024


@njit(cache=True)
def _heap_replace(vals, idx, v, i):  # pragma: no cover - compiled
    """Replace the root (minimum) of the min-heap ``vals`` (with payload ``idx``) by ``(v, i)`` and sift it down."""
    n = vals.size
    p = 0
    while True:
        c = 2 * p + 1
        if c >= n:
            break
        if c + 1 < n and vals[c + 1] < vals[c]:
            c += 1
        if vals[c] >= v:
            break
        vals[p] = vals[c]
        idx[p] = idx[c]
        p = c
    vals[p] = v
    idx[p] = i


@njit(parallel=True, cache=True)
def _best_rows_of_cols(St, col_val, col_idx):  # pragma: no cover - compiled
    """The best rows of every column (min-heaps); ``St`` is the block transposed, ``(columns, rows)``."""
    for j in prange(St.shape[0]):
        vals = col_val[j]
        idx = col_idx[j]
        for i in range(St.shape[1]):
            v = St[j, i]
            if v > vals[0]:
                _heap_replace(vals, idx, v, i)


@njit(parallel=True, cache=True)
def _best_cols_of_rows(St, col0, best_val, best_idx):  # pragma: no cover - compiled
    """Merge the block (``St``: columns ``col0 + j`` x rows) into the running best columns of every row (min-heaps)."""
    n_c, n_r = St.shape
    for ch in prange((n_r + _ROW_CHUNK - 1) // _ROW_CHUNK):
        i0, i1 = ch * _ROW_CHUNK, min((ch + 1) * _ROW_CHUNK, n_r)
        thr = np.empty(i1 - i0, dtype=best_val.dtype)
        for i in range(i0, i1):
            thr[i - i0] = best_val[i, 0]
        for j in range(n_c):
            for i in range(i0, i1):
                v = St[j, i]
                if v > thr[i - i0]:
                    _heap_replace(best_val[i], best_idx[i], v, col0 + j)
                    thr[i - i0] = best_val[i, 0]


@njit(cache=True)
def _greedy_loop(order, rows, cols, row_cap, col_cap, take):  # pragma: no cover - compiled
    for e in order:
        r = rows[e]
        c = cols[e]
        if row_cap[r] > 0 and col_cap[c] > 0:
            row_cap[r] -= 1
            col_cap[c] -= 1
            take[e] = True


def _greedy(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, row_cap: np.ndarray, col_cap: np.ndarray):
    """Take edges best first while both ends have capacity (ties: the earlier edge)."""
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    take = np.zeros(rows.size, dtype=np.bool_)
    _greedy_loop(order, rows.astype(np.int64), cols.astype(np.int64), row_cap, col_cap, take)
    return take


def _block_cols(n_rows: int, budget_bytes: float) -> int:
    return int(max(1, budget_bytes // (4 * max(n_rows, 1))))


def search_candidates(
    score: ScoreFn,
    rows: np.ndarray,
    cols: np.ndarray,
    k: int,
    k_col: int | None = None,
    budget_bytes: float = 64e6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct pairs ``(r, c, s)``: the best ``k`` columns of every row and the best ``k_col`` rows of every column.

    One pass over the ``rows x cols`` scores, a block of columns at a time; no block is kept.

    Parameters
    ----------
    score
        ``score(rows, cb) -> (len(rows), len(cb))`` scores of a block of columns ``cb`` (higher is better). A block
        returned as the transpose of a C-contiguous ``(len(cb), len(rows))`` float32 array is read in place.
    rows
        Row indices to search.
    cols
        Column indices to search.
    k
        Best columns kept for every row.
    k_col
        Best rows kept for every column (default ``k``).
    budget_bytes
        Memory of one block of float32 scores (columns per block = budget / (4 * rows)).

    Returns
    -------
    Rows, columns and block scores of the distinct pairs, sorted by row then column.

    Examples
    --------
    >>> import numpy as np
    >>> from stmap.kernels import search_candidates
    >>> S = np.arange(12.0).reshape(3, 4)
    >>> r, c, s = search_candidates(lambda a, b: S[np.ix_(a, b)], np.arange(3), np.arange(4), 1)
    >>> list(zip(r.tolist(), c.tolist()))
    [(0, 3), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
    """
    n_r = rows.size
    kr, kc = min(k if k_col is None else k_col, n_r), min(k, cols.size)
    best_val = np.full((n_r, kc), -np.inf, dtype=np.float32)
    best_idx = np.full((n_r, kc), -1, dtype=np.int64)
    er, ec, es = [], [], []
    step = _block_cols(n_r, budget_bytes)
    for start in range(0, cols.size, step):
        cb = cols[start : start + step]
        St = np.asarray(score(rows, cb)).T
        if St.dtype != np.float32 or not St.flags.c_contiguous:
            St = np.ascontiguousarray(St, dtype=np.float32)
        col_val = np.full((cb.size, kr), -np.inf, dtype=np.float32)
        col_idx = np.full((cb.size, kr), -1, dtype=np.int64)
        _best_rows_of_cols(St, col_val, col_idx)
        _best_cols_of_rows(St, start, best_val, best_idx)
        ok = col_idx >= 0
        er.append(rows[col_idx[ok]])
        ec.append(np.repeat(cb, kr).reshape(cb.size, kr)[ok])
        es.append(col_val[ok])
    ok = best_idx >= 0
    er.append(np.repeat(rows, kc).reshape(n_r, kc)[ok])
    ec.append(cols[best_idx[ok]])
    es.append(best_val[ok])
    r, c, sc = np.concatenate(er), np.concatenate(ec), np.concatenate(es).astype(np.float64)
    code = r.astype(np.int64) * (int(cols.max()) + 1) + c
    _, first = np.unique(code, return_index=True)
    return r[first], c[first], sc[first]


def _candidates(
    score: ScoreFn, pair_score: ScoreFn | None, rows: np.ndarray, cols: np.ndarray, k: int, budget_bytes: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct candidate pairs of both sides, scored by ``pair_score`` when given (else the block scores)."""
    r, c, s = search_candidates(score, rows, cols, k, budget_bytes=budget_bytes)
    if pair_score is not None:
        s = np.asarray(pair_score(r, c), dtype=np.float64)
    return r, c, s


def row_top(r: np.ndarray, c: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` edges ``(r, c, s)`` of every row ``r`` (ties: the earlier edge)."""
    order = np.argsort(-s, kind="stable")
    order = order[np.argsort(r[order], kind="stable")]
    rs = r[order]
    starts = np.r_[0, np.flatnonzero(np.diff(rs)) + 1]
    rank = np.arange(rs.size) - np.repeat(starts, np.diff(np.r_[starts, rs.size]))
    keep = order[rank < k]
    return r[keep], c[keep], s[keep]


def _block_pairs(score: ScoreFn) -> ScoreFn:
    """Pair scores from the block scores, one column at a time (small problems only)."""

    def pairs(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        out = np.empty(r.size)
        for col in np.unique(c):
            sel = np.flatnonzero(c == col)
            out[sel] = np.asarray(score(r[sel], np.array([col])))[:, 0]
        return out

    return pairs


def _not_used(r: np.ndarray, c: np.ndarray, used_sorted: np.ndarray, n_cols: int) -> np.ndarray:
    if used_sorted.size == 0:
        return np.ones(r.size, dtype=bool)
    code = r.astype(np.int64) * n_cols + c.astype(np.int64)
    pos = np.minimum(np.searchsorted(used_sorted, code), used_sorted.size - 1)
    return used_sorted[pos] != code


def _fill_rest(ar: np.ndarray, ac: np.ndarray, row_cap: np.ndarray, col_cap: np.ndarray, n_cols: int):
    """Open slots get free rows (rows with capacity first, round robin), avoiding pairs already used where possible."""
    need = np.repeat(np.arange(col_cap.size), np.maximum(col_cap, 0))
    if need.size == 0:
        return ar, ac
    free = np.repeat(np.arange(row_cap.size), np.maximum(row_cap, 0))
    if free.size < need.size:  # demand above total capacity: reuse rows in turn
        free = np.concatenate([free, np.resize(np.arange(row_cap.size), need.size - free.size)])
    used = np.sort(ar.astype(np.int64) * n_cols + ac)
    pick = free[: need.size].copy()
    clash = ~_not_used(pick, need, used, n_cols)
    if clash.any():  # rotate the free rows among the clashing slots
        idx = np.flatnonzero(clash)
        for shift in range(1, min(idx.size, 8) + 1):
            alt = np.roll(pick[idx], shift)
            ok = _not_used(alt, need[idx], used, n_cols)
            pick[idx[ok]] = alt[ok]
            idx = idx[~ok]
            if idx.size == 0:
                break
    np.subtract.at(row_cap, pick, 1)
    np.subtract.at(col_cap, need, 1)
    return np.concatenate([ar, pick]), np.concatenate([ac, need])


def _repair(
    score: ScoreFn,
    pair_score: ScoreFn | None,
    state: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    k: int,
    budget_bytes: float,
    max_rounds: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy rounds on the residual problem (rows and columns with capacity left, unused pairs only)."""
    ar, ac, row_cap, col_cap = state
    n_cols = col_cap.size
    for _ in range(max_rounds):
        res_r, res_c = np.flatnonzero(row_cap > 0), np.flatnonzero(col_cap > 0)
        if res_r.size == 0 or res_c.size == 0:
            break
        kk = max(k, 2 * int(col_cap[res_c].max()))
        r, c, s = _candidates(score, pair_score, res_r, res_c, kk, budget_bytes)
        ok = _not_used(r, c, np.sort(ar.astype(np.int64) * n_cols + ac), n_cols)
        r, c, s = r[ok], c[ok], s[ok]
        before = int(col_cap.sum())
        t = _greedy(r, c, s, row_cap, col_cap)
        ar, ac = np.concatenate([ar, r[t]]), np.concatenate([ac, c[t]])
        if int(col_cap.sum()) == before:
            break
    return ar, ac


def _optimum_unit(cand: tuple[np.ndarray, np.ndarray, np.ndarray], ar, ac, col_cap: np.ndarray, pairs: ScoreFn):
    """Unit row capacities: the best assignment on the graph of the candidates and the pairs already assigned.

    Columns are expanded into their slots and scipy's sparse Jonker-Volgenant (LAPJVsp) matches every slot; the
    assigned pairs make the graph's full matching exist. Returns ``None`` when it does not (e.g. repeated pairs).
    """
    from scipy import sparse
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    r, c, s = cand
    n_cols = col_cap.size
    extra = ~np.isin(ar * n_cols + ac, r * n_cols + c)
    R, C = np.concatenate([r, ar[extra]]), np.concatenate([c, ac[extra]])
    S = np.concatenate([s, np.asarray(pairs(ar[extra], ac[extra]), dtype=np.float64)])
    d = col_cap[C]
    first = np.r_[0, np.cumsum(col_cap)[:-1]]
    slot = np.repeat(first[C], d) + np.arange(int(d.sum())) - np.repeat(np.cumsum(d) - d, d)
    rows_u, ri = np.unique(np.repeat(R, d), return_inverse=True)
    w = np.repeat(S, d)
    M = sparse.csr_matrix((w - w.min() + 1.0, (ri, slot)), shape=(rows_u.size, int(col_cap.sum())))
    try:
        mr, ms = min_weight_full_bipartite_matching(M, maximize=True)
    except ValueError:
        return None
    return rows_u[mr], np.repeat(np.arange(n_cols), col_cap)[ms]


def fill_slots(
    score: ScoreFn,
    row_cap: np.ndarray,
    col_cap: np.ndarray,
    *,
    k: int = 20,
    search_k: int | None = None,
    pair_score: ScoreFn | None = None,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
    budget_bytes: float = 64e6,
    max_rounds: int = 4,
    fill: bool = True,
    exact_limit: float = 1e7,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Assign rows to columns, best scores first, under row capacities and column demands.

    Parameters
    ----------
    score
        ``score(row_idx, col_idx) -> (len(row_idx), len(col_idx))`` block of scores (higher is better), exact or,
        with ``pair_score``, an approximation used to find candidates.
    row_cap
        ``(n_rows,)`` non-negative integer capacities.
    col_cap
        ``(n_cols,)`` non-negative integer demands.
    k
        Candidates kept per row and per column.
    search_k
        Candidates searched per row and per column (default ``k``); more than ``k`` helps when ``score`` is an
        approximation that ``pair_score`` corrects.
    pair_score
        ``pair_score(rows, cols) -> (n,)`` exact scores of the pairs ``(rows[e], cols[e])``; ``None``: the block
        scores are exact.
    candidates
        First-pass candidate pairs ``(rows, cols)`` (e.g. :func:`search_candidates` of an earlier, similar problem):
        no search, the pairs are scored by ``pair_score``. Repair rounds search as usual.
    budget_bytes
        Memory for one block of scores (columns per block = budget / (4 * rows), float32).
    max_rounds
        Repair rounds on the residual problem.
    fill
        Fill every open slot at the end with any free row (``True``), or leave demands as upper bounds.
    exact_limit
        With unit row capacities, enough rows and at most this many rows x slots (as
        :func:`capacity_assign`), the filled assignment is made optimal on the graph of the candidates and the
        pairs assigned (scipy's sparse Jonker-Volgenant matching; its time is hard to bound on large graphs).

    Returns
    -------
    ``(rows, cols)`` of the assigned pairs, and the first-pass candidates ``(rows, cols, scores)`` (exact scores;
    ``row_top`` keeps the best of each row).

    Examples
    --------
    >>> import numpy as np
    >>> from stmap.kernels import fill_slots
    >>> S = np.array([[3.0, 1.0], [2.0, 0.0], [0.0, 2.5]])
    >>> rows, cols, _ = fill_slots(lambda r, c: S[np.ix_(r, c)], np.ones(3), np.array([1, 1]), k=2)
    >>> sorted(zip(rows.tolist(), cols.tolist()))
    [(0, 0), (2, 1)]
    """
    row_cap0 = np.asarray(row_cap, dtype=np.int64)
    demand = np.asarray(col_cap, dtype=np.int64)
    row_cap, col_cap = row_cap0.copy(), demand.copy()
    rows, cols = np.flatnonzero(row_cap > 0), np.flatnonzero(col_cap > 0)
    empty = np.zeros(0, dtype=np.int64)
    if rows.size == 0 or cols.size == 0:
        return empty, empty, (empty, empty, np.zeros(0))
    ks = k if search_k is None else max(k, search_k)
    if candidates is None:
        r, c, s = _candidates(score, pair_score, rows, cols, ks, budget_bytes)
    else:
        r, c = (np.asarray(x, dtype=np.int64) for x in candidates)
        keep = (row_cap[r] > 0) & (col_cap[c] > 0)
        r, c = r[keep], c[keep]
        s = np.asarray((pair_score or _block_pairs(score))(r, c), dtype=np.float64)
    take = _greedy(r, c, s, row_cap, col_cap)
    state = (r[take], c[take], row_cap, col_cap)
    ar, ac = _repair(score, pair_score, state, k=ks, budget_bytes=budget_bytes, max_rounds=max_rounds)
    if fill and col_cap.sum() > 0:
        ar, ac = _fill_rest(ar, ac, row_cap, col_cap, col_cap.size)
    small = float(rows.size) * int(demand.sum()) <= exact_limit
    unit = fill and small and row_cap0.max() <= 1 and demand.sum() <= row_cap0.sum()
    best = _optimum_unit((r, c, s), ar, ac, demand, pair_score or _block_pairs(score)) if unit else None
    if best is not None:
        ar, ac = best
    return ar.astype(np.int64), ac.astype(np.int64), (r, c, s)
