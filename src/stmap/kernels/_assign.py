"""Capacity-constrained assignment of rows (cells) to columns (spot slots); knows arrays only.

Rows have capacities ``row_cap`` (how many columns a row may join), columns demands ``col_cap`` (how many rows
a column needs); a (row, column) pair is used at most once. Small problems with unit row capacities are solved
exactly (:func:`scipy.optimize.linear_sum_assignment` on the slot-expanded score matrix); larger ones greedily on
sparse top-k candidate edges (best edges first, a numba loop), with repair rounds on the residual problem. No dense
``rows x columns`` matrix is made beyond one block of ``batch_size`` rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["capacity_assign", "largest_remainder"]

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def largest_remainder(x: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Round each row of non-negative ``x`` to integers summing exactly to ``totals`` (largest-remainder method).

    Parameters
    ----------
    x
        ``(n, k)`` non-negative weights (rows are rescaled to ``totals`` first; all-zero rows are spread evenly).
    totals
        ``(n,)`` non-negative integers.

    Returns
    -------
    ``(n, k)`` int64 with row sums ``totals``.
    """
    x = np.asarray(x, dtype=np.float64)
    totals = np.asarray(totals, dtype=np.int64)
    s = x.sum(axis=1, keepdims=True)
    frac = np.where(s > 0, x / np.where(s > 0, s, 1.0), 1.0 / x.shape[1])
    exact = frac * totals[:, None]
    base = np.floor(exact + 1e-9).astype(np.int64)
    rem = totals - base.sum(axis=1)
    order = np.argsort(-(exact - base), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(x.shape[1])[None, :].repeat(x.shape[0], 0), axis=1)
    return base + (rank < rem[:, None])


def _greedy_loop():
    from numba import njit

    @njit(cache=True)
    def loop(order, rows, cols, row_cap, col_cap, take):  # pragma: no cover - compiled
        for e in order:
            r = rows[e]
            c = cols[e]
            if row_cap[r] > 0 and col_cap[c] > 0:
                row_cap[r] -= 1
                col_cap[c] -= 1
                take[e] = True

    return loop


_LOOP = None


def _greedy(rows, cols, scores, row_cap, col_cap):
    global _LOOP
    if _LOOP is None:
        _LOOP = _greedy_loop()
    order = np.argsort(-scores, kind="stable")
    take = np.zeros(rows.size, dtype=np.bool_)
    _LOOP(order.astype(np.int64), rows.astype(np.int64), cols.astype(np.int64), row_cap, col_cap, take)
    return take


def _topk(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of the ``k`` best entries of each row of ``S``."""
    k = min(k, S.shape[1])
    if k == S.shape[1]:
        idx = np.broadcast_to(np.arange(k), S.shape).copy()
    else:
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return idx, np.take_along_axis(S, idx, axis=1)


class _Edges:
    """(row, column[, score]) pairs collected block by block."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    def add(self, rows: np.ndarray, cols: np.ndarray, scores: np.ndarray | None = None) -> None:
        self.rows.append(rows)
        self.cols.append(cols)
        if scores is not None:
            self.scores.append(scores)

    def add_topk(self, rows: np.ndarray, cols: np.ndarray, idx: np.ndarray, val: np.ndarray) -> None:
        """Add the block ``rows`` x ``cols[idx]`` (``idx``: column positions per row) with scores ``val``."""
        self.add(np.repeat(rows, idx.shape[1]), cols[idx.ravel()], val.ravel())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.rows:
            e = np.zeros(0, dtype=np.int64)
            return e, e, np.zeros(0)
        return np.concatenate(self.rows), np.concatenate(self.cols), np.concatenate(self.scores)


def capacity_assign(
    score: ScoreFn,
    row_cap: np.ndarray,
    col_cap: np.ndarray,
    *,
    k: int = 20,
    exact_limit: float = 1e7,
    batch_size: int = 4096,
    max_rounds: int = 8,
    fill: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Assign rows to columns maximising the total score under capacities.

    Small problems with unit row capacities are solved exactly (:func:`scipy.optimize.linear_sum_assignment` on
    the slot-expanded score matrix); larger ones greedily on sparse top-``k`` candidate edges (best edges first),
    then by repair rounds on the residual problem, then (``fill``) by filling what is left with free rows.

    Parameters
    ----------
    score
        ``score(row_idx, col_idx) -> (len(row_idx), len(col_idx))`` dense block of scores (higher is better).
    row_cap
        ``(n_rows,)`` non-negative integer capacities.
    col_cap
        ``(n_cols,)`` non-negative integer demands; ``col_cap.sum() <= row_cap.sum()`` fills every slot.
    k
        Candidate columns kept per row (also returned, e.g. to store a sparse score matrix).
    exact_limit
        Solve exactly when all row capacities are at most 1 and ``n_rows * col_cap.sum()`` is at most this.
    batch_size
        Rows per score block.
    max_rounds
        Repair rounds on the residual problem before remaining slots are filled by any free row.
    fill
        Fill every slot (``True``); with ``False`` column demands are upper bounds and only rows with capacity are
        assigned (use it when ``col_cap.sum() > row_cap.sum()`` and every row should be placed).

    Returns
    -------
    ``(rows, cols)`` of the assigned pairs, and the candidate edges ``(rows, cols, scores)`` (top-``k`` per row).
    A pair is assigned at most once, except in the last-resort fill: when a column needs a free row that already
    sits in it and no 2-exchange with another column frees one, the pair repeats (always when a column needs more
    distinct rows than exist).

    Examples
    --------
    >>> import numpy as np
    >>> from stmap.kernels import capacity_assign
    >>> S = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> rows, cols, _ = capacity_assign(lambda r, c: S[np.ix_(r, c)], np.ones(3), np.array([1, 1]), k=2)
    >>> sorted(zip(rows.tolist(), cols.tolist()))
    [(0, 0), (1, 1)]
    """
    row_cap = np.asarray(row_cap, dtype=np.int64).copy()
    col_cap = np.asarray(col_cap, dtype=np.int64).copy()
    all_cols = np.flatnonzero(col_cap > 0)
    if row_cap.size == 0 or all_cols.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, (e, e, np.zeros(0))
    cands = _Edges()
    if row_cap.max() <= 1 and float(row_cap.size) * int(col_cap.sum()) <= exact_limit:
        assigned = _exact(score, row_cap, col_cap, all_cols, k, cands)
    else:
        assigned = _greedy_topk(score, row_cap, col_cap, all_cols, k, batch_size, cands)
    _repair(score, row_cap, col_cap, assigned, k=k, batch_size=batch_size, max_rounds=max_rounds)
    if fill and col_cap.sum() > 0:
        assigned = _fill(row_cap, col_cap, assigned)
    rows, cols = np.concatenate(assigned.rows).astype(np.int64), np.concatenate(assigned.cols).astype(np.int64)
    return rows, cols, cands.arrays()


def _exact(
    score: ScoreFn, row_cap: np.ndarray, col_cap: np.ndarray, all_cols: np.ndarray, k: int, cands: _Edges
) -> _Edges:
    """Unit capacities, small: optimal assignment on the slot-expanded matrix (capacities decremented)."""
    from scipy.optimize import linear_sum_assignment

    rows_ok = np.flatnonzero(row_cap > 0)
    S = score(rows_ok, all_cols)
    idx, val = _topk(S, k)
    cands.add_topk(rows_ok, all_cols, idx, val)
    slot_col = np.repeat(np.arange(all_cols.size), col_cap[all_cols])
    r, c = linear_sum_assignment(S[:, slot_col], maximize=True)
    ar, ac = rows_ok[r], all_cols[slot_col[c]]
    row_cap[ar] -= 1
    np.subtract.at(col_cap, ac, 1)
    assigned = _Edges()
    assigned.add(ar, ac)
    return assigned


def _greedy_topk(
    score: ScoreFn,
    row_cap: np.ndarray,
    col_cap: np.ndarray,
    all_cols: np.ndarray,
    k: int,
    batch_size: int,
    cands: _Edges,
) -> _Edges:
    """Top-``k`` columns per row (one block of rows at a time), then best edges first (capacities decremented)."""
    n_rows = row_cap.size
    for start in range(0, n_rows, batch_size):
        rows_b = np.arange(start, min(start + batch_size, n_rows))
        rows_b = rows_b[row_cap[rows_b] > 0]
        if rows_b.size == 0:
            continue
        idx, val = _topk(score(rows_b, all_cols), k)
        cands.add_topk(rows_b, all_cols, idx, val)
    er, ec, es = (np.concatenate(x) for x in (cands.rows, cands.cols, cands.scores))
    take = _greedy(er, ec, es, row_cap, col_cap)
    assigned = _Edges()
    assigned.add(er[take], ec[take])
    return assigned


def _repair(
    score: ScoreFn,
    row_cap: np.ndarray,
    col_cap: np.ndarray,
    assigned: _Edges,
    *,
    k: int,
    batch_size: int,
    max_rounds: int,
) -> None:
    """Greedy rounds on the residual problem (rows and columns with capacity left, unused pairs only)."""
    n_cols = col_cap.size
    for _ in range(max_rounds):
        res_c = np.flatnonzero(col_cap > 0)
        res_r = np.flatnonzero(row_cap > 0)
        if res_c.size == 0 or res_r.size == 0:
            break
        used = _pair_codes(assigned.rows, assigned.cols, n_cols)
        edges = _Edges()
        kk = max(k, int(col_cap[res_c].max()) * 2)
        for start in range(0, res_r.size, batch_size):
            rows_b = res_r[start : start + batch_size]
            S = score(rows_b, res_c).astype(np.float64)
            S[np.isin(rows_b[:, None] * n_cols + res_c[None, :], used)] = -np.inf
            if S.shape[1] > kk and S.size > 2e7:
                idx, val = _topk(S, kk)
            else:
                idx, val = np.broadcast_to(np.arange(S.shape[1]), S.shape), S
            edges.add_topk(rows_b, res_c, idx, val)
        er, ec, es = edges.arrays()
        ok = np.isfinite(es)
        er, ec, es = er[ok], ec[ok], es[ok]
        if er.size == 0:
            break
        before = int(col_cap.sum())
        take = _greedy(er, ec, es, row_cap, col_cap)
        assigned.add(er[take], ec[take])
        if int(col_cap.sum()) == before:
            break


def _fill(row_cap: np.ndarray, col_cap: np.ndarray, assigned: _Edges) -> _Edges:
    """Last resort: remaining slots filled with free rows.

    When every free row already sits in that column, it is swapped with a row of another column (2-exchange) so
    that pairs stay distinct and capacities hold.
    """
    n_rows, n_cols = row_cap.size, col_cap.size
    ar: list[int] = np.concatenate(assigned.rows).tolist()
    ac: list[int] = np.concatenate(assigned.cols).tolist()
    used: set[int] = {r * n_cols + c for r, c in zip(ar, ac, strict=True)}
    for c in np.flatnonzero(col_cap > 0).tolist():
        while col_cap[c] > 0:
            free = np.flatnonzero(row_cap > 0)
            if free.size == 0:  # demand above total capacity: reuse the row with the most spare history
                free = np.arange(n_rows)
            direct = [r for r in free.tolist() if r * n_cols + c not in used]
            r = direct[0] if direct else int(free[0])
            swap = None if direct else _swap_partner(ar, ac, used, r, c, n_cols)
            if swap is None:  # a direct pair (or, when none exists, a repeated pair)
                ar.append(r)
                ac.append(c)
                used.add(r * n_cols + c)
            else:
                r2, c2 = ar[swap], ac[swap]
                used.discard(r2 * n_cols + c2)
                ac[swap] = c  # r2 moves to c, r takes its place in c2
                used.add(r2 * n_cols + c)
                ar.append(r)
                ac.append(c2)
                used.add(r * n_cols + c2)
            row_cap[r] -= 1
            col_cap[c] -= 1
    out = _Edges()
    out.add(np.asarray(ar, dtype=np.int64), np.asarray(ac, dtype=np.int64))
    return out


def _swap_partner(ar: list[int], ac: list[int], used: set[int], r: int, c: int, n_cols: int) -> int | None:
    """An assigned pair ``(ar[e], ac[e])`` that ``r`` can replace while ``ar[e]`` moves to column ``c``."""
    return next(
        (
            e
            for e in range(len(ar))
            if ar[e] != r and ac[e] != c and r * n_cols + ac[e] not in used and ar[e] * n_cols + c not in used
        ),
        None,
    )


def _pair_codes(rows: list[np.ndarray], cols: list[np.ndarray], n_cols: int) -> np.ndarray:
    if not rows:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64) * n_cols + np.concatenate(cols).astype(np.int64)
