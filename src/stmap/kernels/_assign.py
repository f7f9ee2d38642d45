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
    ``(rows, cols)`` of the assigned pairs (each pair at most once, unless a column needs more distinct rows than
    exist), and the candidate edges ``(rows, cols, scores)`` (top-``k`` per row).
    """
    row_cap = np.asarray(row_cap, dtype=np.int64).copy()
    col_cap = np.asarray(col_cap, dtype=np.int64).copy()
    n_rows, n_cols = row_cap.size, col_cap.size
    all_cols = np.flatnonzero(col_cap > 0)
    cand_r, cand_c, cand_s = [], [], []
    if n_rows == 0 or all_cols.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, (e, e, np.zeros(0))
    slots = int(col_cap.sum())

    # exact: unit capacities, small -----------------------------------------------------------------------------
    if row_cap.max() <= 1 and float(n_rows) * slots <= exact_limit:
        from scipy.optimize import linear_sum_assignment

        rows_ok = np.flatnonzero(row_cap > 0)
        S = score(rows_ok, all_cols)
        idx, val = _topk(S, k)
        cand_r.append(np.repeat(rows_ok, idx.shape[1]))
        cand_c.append(all_cols[idx.ravel()])
        cand_s.append(val.ravel())
        slot_col = np.repeat(np.arange(all_cols.size), col_cap[all_cols])
        r, c = linear_sum_assignment(S[:, slot_col], maximize=True)
        ar, ac = rows_ok[r], all_cols[slot_col[c]]
        row_cap[ar] -= 1
        np.subtract.at(col_cap, ac, 1)
        assigned_r, assigned_c = [ar], [ac]
    else:
        # candidates: top-k columns per row ------------------------------------------------------------------------
        for start in range(0, n_rows, batch_size):
            rows_b = np.arange(start, min(start + batch_size, n_rows))
            rows_b = rows_b[row_cap[rows_b] > 0]
            if rows_b.size == 0:
                continue
            S = score(rows_b, all_cols)
            idx, val = _topk(S, k)
            cand_r.append(np.repeat(rows_b, idx.shape[1]))
            cand_c.append(all_cols[idx.ravel()])
            cand_s.append(val.ravel())
        er, ec, es = np.concatenate(cand_r), np.concatenate(cand_c), np.concatenate(cand_s)
        take = _greedy(er, ec, es, row_cap, col_cap)
        assigned_r, assigned_c = [er[take]], [ec[take]]

    # repair rounds on the residual problem ------------------------------------------------------------------------
    for _ in range(max_rounds):
        res_c = np.flatnonzero(col_cap > 0)
        res_r = np.flatnonzero(row_cap > 0)
        if res_c.size == 0 or res_r.size == 0:
            break
        used = _pair_codes(assigned_r, assigned_c, n_cols)
        er_l, ec_l, es_l = [], [], []
        kk = max(k, int(col_cap[res_c].max()) * 2)
        for start in range(0, res_r.size, batch_size):
            rows_b = res_r[start : start + batch_size]
            S = score(rows_b, res_c).astype(np.float64)
            bad = np.isin(rows_b[:, None] * n_cols + res_c[None, :], used)
            S[bad] = -np.inf
            if S.shape[1] > kk and S.size > 2e7:
                idx, val = _topk(S, kk)
            else:
                idx = np.broadcast_to(np.arange(S.shape[1]), S.shape)
                val = S
            er_l.append(np.repeat(rows_b, idx.shape[1]))
            ec_l.append(res_c[idx.ravel()])
            es_l.append(val.ravel())
        er, ec, es = np.concatenate(er_l), np.concatenate(ec_l), np.concatenate(es_l)
        ok = np.isfinite(es)
        er, ec, es = er[ok], ec[ok], es[ok]
        if er.size == 0:
            break
        before = int(col_cap.sum())
        take = _greedy(er, ec, es, row_cap, col_cap)
        assigned_r.append(er[take])
        assigned_c.append(ec[take])
        if int(col_cap.sum()) == before:
            break

    # last resort: fill remaining slots with free rows; when a free row already sits in that column, swap it with a
    # row of another column (2-exchange) so that pairs stay distinct and capacities hold ------------------------------
    if fill and col_cap.sum() > 0:
        ar = list(np.concatenate(assigned_r).tolist())
        ac = list(np.concatenate(assigned_c).tolist())
        used = {r * n_cols + c for r, c in zip(ar, ac, strict=True)}
        for c in np.flatnonzero(col_cap > 0).tolist():
            while col_cap[c] > 0:
                free = np.flatnonzero(row_cap > 0)
                if free.size == 0:  # demand above total capacity: reuse the row with the most spare history
                    free = np.arange(n_rows)
                direct = [r for r in free.tolist() if r * n_cols + c not in used]
                if direct:
                    r = direct[0]
                    ar.append(r)
                    ac.append(c)
                else:
                    r = int(free[0])
                    swap = next(
                        (
                            e
                            for e in range(len(ar))
                            if ar[e] != r
                            and ac[e] != c
                            and r * n_cols + ac[e] not in used
                            and ar[e] * n_cols + c not in used
                        ),
                        None,
                    )
                    if swap is None:  # more distinct rows needed than exist: allow a repeated pair
                        ar.append(r)
                        ac.append(c)
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
                        continue
                used.add(r * n_cols + c)
                row_cap[r] -= 1
                col_cap[c] -= 1
        assigned_r, assigned_c = [np.asarray(ar, dtype=np.int64)], [np.asarray(ac, dtype=np.int64)]

    cands = (np.concatenate(cand_r), np.concatenate(cand_c), np.concatenate(cand_s)) if cand_r else None
    if cands is None:
        e = np.zeros(0, dtype=np.int64)
        cands = (e, e, np.zeros(0))
    return np.concatenate(assigned_r).astype(np.int64), np.concatenate(assigned_c).astype(np.int64), cands


def _pair_codes(rows: list[np.ndarray], cols: list[np.ndarray], n_cols: int) -> np.ndarray:
    if not rows:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64) * n_cols + np.concatenate(cols).astype(np.int64)
