"""Capacity-constrained assignment at capture-area sizes: one memory-bounded pass over the scores.

Rows (cells) have capacities, columns (spot slots of one type) demands. The score matrix ``rows x columns`` is never
held: it is computed in blocks of columns whose size follows a memory budget, and each block leaves two candidate
sets behind, the best ``k`` rows of every column and (merged across blocks) the best ``k`` columns of every row. The
union is sorted once and filled greedily (best edges first, capacities decremented; a numba loop). Slots still open
are repaired on the residual problem (rows with capacity x columns with demand), which is small after the first
pass; what is left after that is filled with any free row, pairs kept distinct where possible.

Cost: one ``rows x columns x d`` product and ``O(E log E)`` for the ``E = k (rows + columns)`` candidate edges; memory:
the budget plus the edges. The first-pass candidates cover both sides, so a popular row cannot leave a column
without candidates, and a row outside every column's top ``k`` still has its own best columns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["fill_slots"]

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _loop():
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


def _greedy(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, row_cap: np.ndarray, col_cap: np.ndarray):
    """Take edges best first while both ends have capacity (ties: the earlier edge)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = _loop()
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    take = np.zeros(rows.size, dtype=np.bool_)
    _LOOP(order, rows.astype(np.int64), cols.astype(np.int64), row_cap, col_cap, take)
    return take


def _block_cols(n_rows: int, budget_bytes: float) -> int:
    return int(max(1, budget_bytes // (4 * max(n_rows, 1))))


def _candidates(score: ScoreFn, rows: np.ndarray, cols: np.ndarray, k: int, budget_bytes: float):
    """Edges ``(r, c, s)``: the best ``k`` rows of every column and the best ``k`` columns of every row."""
    import torch

    n_r = rows.size
    kr, kc = min(k, n_r), min(k, cols.size)
    best_c = torch.full((n_r, kc), -1, dtype=torch.int64)  # running best columns of each row
    best_s = torch.full((n_r, kc), -torch.inf, dtype=torch.float32)
    er, ec, es = [], [], []
    step = _block_cols(n_r, budget_bytes)
    for start in range(0, cols.size, step):
        cb = cols[start : start + step]
        S = torch.from_numpy(np.ascontiguousarray(score(rows, cb), dtype=np.float32))  # (n_r, len(cb))
        val, top = torch.topk(S, kr, dim=0)  # best rows of each column
        er.append(rows[top.numpy()].T.ravel())
        ec.append(np.repeat(cb, kr))
        es.append(val.numpy().T.ravel())
        vb, ib = torch.topk(S, min(kc, cb.size), dim=1)  # merged into the running best columns of each row
        alls = torch.cat([best_s, vb], dim=1)
        allc = torch.cat([best_c, torch.from_numpy(cb)[ib]], dim=1)
        best_s, keep = torch.topk(alls, kc, dim=1)
        best_c = torch.gather(allc, 1, keep)
    ok = (best_c >= 0).numpy()
    er.append(np.repeat(rows, kc).reshape(n_r, kc)[ok])
    ec.append(best_c.numpy()[ok])
    es.append(best_s.numpy()[ok])
    r, c, s = np.concatenate(er), np.concatenate(ec), np.concatenate(es).astype(np.float64)
    return _unique_edges(r, c, s, int(cols.max()) + 1 if cols.size else 1)


def _unique_edges(r: np.ndarray, c: np.ndarray, s: np.ndarray, n_cols: int):
    code = r.astype(np.int64) * n_cols + c.astype(np.int64)
    _, first = np.unique(code, return_index=True)
    first.sort()
    return r[first], c[first], s[first]


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


def fill_slots(
    score: ScoreFn,
    row_cap: np.ndarray,
    col_cap: np.ndarray,
    *,
    k: int = 20,
    budget_bytes: float = 256e6,
    max_rounds: int = 4,
    fill: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Assign rows to columns, best scores first, under row capacities and column demands.

    Parameters
    ----------
    score
        ``score(row_idx, col_idx) -> (len(row_idx), len(col_idx))`` block of scores (higher is better).
    row_cap
        ``(n_rows,)`` non-negative integer capacities.
    col_cap
        ``(n_cols,)`` non-negative integer demands.
    k
        Candidates kept per row and per column.
    budget_bytes
        Memory for one block of scores (columns per block = budget / (4 * rows), float32).
    max_rounds
        Repair rounds on the residual problem.
    fill
        Fill every open slot at the end with any free row (``True``), or leave demands as upper bounds.

    Returns
    -------
    ``(rows, cols)`` of the assigned pairs and the first-pass candidate edges ``(rows, cols, scores)``.
    """
    row_cap = np.asarray(row_cap, dtype=np.int64).copy()
    col_cap = np.asarray(col_cap, dtype=np.int64).copy()
    n_cols = col_cap.size
    rows = np.flatnonzero(row_cap > 0)
    cols = np.flatnonzero(col_cap > 0)
    empty = np.zeros(0, dtype=np.int64)
    if rows.size == 0 or cols.size == 0:
        return empty, empty, (empty, empty, np.zeros(0))
    cand = _candidates(score, rows, cols, k, budget_bytes)
    take = _greedy(*cand, row_cap, col_cap)
    ar, ac = cand[0][take], cand[1][take]
    for _ in range(max_rounds):
        res_r, res_c = np.flatnonzero(row_cap > 0), np.flatnonzero(col_cap > 0)
        if res_r.size == 0 or res_c.size == 0:
            break
        kk = max(k, 2 * int(col_cap[res_c].max()))
        r, c, s = _candidates(score, res_r, res_c, kk, budget_bytes)
        ok = _not_used(r, c, np.sort(ar.astype(np.int64) * n_cols + ac), n_cols)
        r, c, s = r[ok], c[ok], s[ok]
        before = int(col_cap.sum())
        t = _greedy(r, c, s, row_cap, col_cap)
        ar, ac = np.concatenate([ar, r[t]]), np.concatenate([ac, c[t]])
        if int(col_cap.sum()) == before:
            break
    if fill and col_cap.sum() > 0:
        ar, ac = _fill_rest(ar, ac, row_cap, col_cap, n_cols)
    return ar.astype(np.int64), ac.astype(np.int64), cand
