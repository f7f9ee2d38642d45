"""One multiplicative (EM) update of a Poisson mixture fit on sparse counts; knows arrays only.

The model of :func:`stmap.models._mapping.fit_poisson_deconvolution`: ``y_jg ~ Poisson(mu_jg)``,
``mu_jg = sum_t w_jt ps_tg``. Its update needs ``R = Y / mu`` only where ``Y`` is non-zero (``R`` is zero
elsewhere), so one pass over the non-zeros of a CSR matrix gives ``R @ Ps.T`` (the weights' update), the
platform-effect numerator ``sum_j R_jg (w_j . p_g)`` and the data part ``sum y log mu`` of the loss, in
``O(nnz x types)`` work and memory ``O(spots x types)``: no dense ``spots x genes`` array.

Rows are cut into fixed chunks whose partial sums are added in chunk order, so the result does not depend on the
number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["poisson_em_step", "CHUNK_ROWS"]

#: Rows per chunk of the parallel loop (partial sums per chunk, added in order).
CHUNK_ROWS = 4096


@njit(parallel=True, fastmath=True, cache=True)
def _step(indptr, indices, data, W, PsT, denom_w, inv_s, want_loss, platform, num_s, loss_parts):  # pragma: no cover
    n, T = W.shape
    n_chunks = loss_parts.shape[0]
    for c in prange(n_chunks):
        acc = np.empty(T, dtype=np.float64)
        lin = 0.0
        ylog = 0.0
        for j in range(c * CHUNK_ROWS, min((c + 1) * CHUNK_ROWS, n)):
            acc[:] = 0.0
            wj = W[j]
            for e in range(indptr[j], indptr[j + 1]):
                g = indices[e]
                p = PsT[g]
                raw = 0.0
                for t in range(T):
                    raw += wj[t] * p[t]
                mu = max(raw, 1e-12)
                r = data[e] / mu
                if want_loss:
                    ylog += data[e] * math.log(mu)
                if platform:
                    num_s[c, g] += r * raw * inv_s[g]
                for t in range(T):
                    acc[t] += r * p[t]
            for t in range(T):
                if want_loss:
                    lin += W[j, t] * denom_w[t]
                W[j, t] = W[j, t] * acc[t] / denom_w[t]
        loss_parts[c] = lin - ylog


def poisson_em_step(
    Y, W: np.ndarray, Ps: np.ndarray, s: np.ndarray, *, want_loss: bool, platform: bool
) -> tuple[float, np.ndarray | None]:
    """Update the weights ``W`` in place by one EM step on CSR counts ``Y``.

    Parameters
    ----------
    Y
        ``(n, g)`` :class:`scipy.sparse.csr_matrix` of counts (sorted or unsorted indices).
    W
        ``(n, T)`` float64 C-contiguous weights, updated in place.
    Ps
        ``(T, g)`` profiles times the platform scaling.
    s
        ``(g,)`` platform scaling (used for the platform-effect numerator).
    want_loss
        Also return the Poisson loss of the weights before the update.
    platform
        Also return the platform-effect numerator ``sum_j R_jg (w_j . p_g)`` (per gene).

    Returns
    -------
    The loss ``sum_jg mu_jg - y_jg log mu_jg`` (``nan`` without ``want_loss``) and the numerator (or ``None``).
    """
    n, g = Y.shape
    n_chunks = max(1, -(-n // CHUNK_ROWS))
    PsT = np.ascontiguousarray(Ps.T, dtype=np.float64)
    denom_w = np.ascontiguousarray(Ps.sum(axis=1), dtype=np.float64)
    inv_s = 1.0 / np.asarray(s, dtype=np.float64)
    num_s = np.zeros((n_chunks if platform else 1, g if platform else 1), dtype=np.float64)
    loss_parts = np.zeros(n_chunks, dtype=np.float64)
    _step(Y.indptr, Y.indices, Y.data, W, PsT, denom_w, inv_s, want_loss, platform, num_s, loss_parts)
    loss = float(loss_parts.sum()) if want_loss else float("nan")
    return loss, (num_s.sum(axis=0) if platform else None)
