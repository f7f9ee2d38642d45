"""Poisson deconvolution of spots on reference cell-type profiles (torch; knows tensors, not SpatialData).

Model: ``y_jg ~ Poisson(sum_t w_jt * p_tg * s_g)``, with ``p_t`` the reference's mean expression profile of type
``t`` (rows sum to 1), ``w_jt >= 0`` the counts of spot ``j`` that come from type ``t`` and ``s_g > 0`` a per-gene
platform scaling (geometric mean 1). Fitted by multiplicative (EM / Lee-Seung) updates, which keep ``w`` and ``s``
non-negative and never increase the Poisson loss; vectorised over all spots, on any torch device.

Large sparse counts on the CPU (at least :data:`SPARSE_MIN_ENTRIES` spots x genes) take the same updates on the
non-zeros only (:mod:`stmap.kernels._poisson`, float64): ``Y / mu`` is zero wherever ``Y`` is, so an iteration costs
``O(nnz x types)`` and no dense ``spots x genes`` array is made. Both paths agree to float32 round-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    import torch

__all__ = ["PoissonDeconvolution", "fit_poisson_deconvolution", "split_counts", "SPARSE_MIN_ENTRIES"]

#: Sparse counts of at least this many entries (spots x genes) are fitted on their non-zeros on the CPU.
SPARSE_MIN_ENTRIES = 5e7


@dataclass
class PoissonDeconvolution:
    """Result of :func:`~stmap.models.fit_poisson_deconvolution`.

    Attributes
    ----------
    weights
        ``(n_spots, n_types)`` counts attributed to each type.
    gene_scale
        ``(n_genes,)`` platform scaling (geometric mean 1).
    loss
        Poisson loss (mean negative log-likelihood per spot, up to a constant) every ``record_every`` iterations.
    n_iter
        Iterations run.
    """

    weights: np.ndarray
    gene_scale: np.ndarray
    loss: list[float] = field(default_factory=list)
    n_iter: int = 0


def _loss(Y: torch.Tensor, mu: torch.Tensor) -> float:
    import torch

    return float((mu - torch.xlogy(Y, mu)).sum(dim=1).mean())


def fit_poisson_deconvolution(
    Y: np.ndarray | sparse.spmatrix,
    profiles: np.ndarray,
    *,
    platform_effect: bool = True,
    max_iter: int = 500,
    tol: float = 1e-5,
    record_every: int = 10,
    device: str = "cpu",
    batch_size: int = 8192,
) -> PoissonDeconvolution:
    """Fit spot counts as non-negative mixtures of type profiles (Poisson likelihood).

    Parameters
    ----------
    Y
        ``(n_spots, n_genes)`` counts, dense or sparse.
    profiles
        ``(n_types, n_genes)`` non-negative profiles, each row summing to 1.
    platform_effect
        Also fit a per-gene scaling (RCTD-style platform effect between reference and spots).
    max_iter
        Most multiplicative updates.
    tol
        Stop when the loss improved by less than ``tol`` (relative) over ``record_every`` iterations.
    record_every
        Loss is evaluated (and convergence checked) every this many iterations.
    device
        Torch device.
    batch_size
        Spots per block when computing the loss and updates (bounds the ``spots x genes`` temporaries).

    Returns
    -------
    The :class:`PoissonDeconvolution`.
    """
    import torch

    dev = torch.device(device)
    n_entries = Y.shape[0] * Y.shape[1]
    if dev.type == "cpu" and sparse.issparse(Y) and n_entries >= SPARSE_MIN_ENTRIES:
        return _fit_sparse(sparse.csr_matrix(Y), profiles, platform_effect, max_iter, tol, record_every)
    n_threads = torch.get_num_threads()
    if dev.type == "cpu" and n_entries < 2_000_000:
        torch.set_num_threads(1)  # small problems: thread start-up costs more than the work (20x on 2 busy cores)
    try:
        return _fit(Y, profiles, platform_effect, max_iter, tol, record_every, dev, batch_size)
    finally:
        torch.set_num_threads(n_threads)


def _dense_tensor(Y: np.ndarray | sparse.spmatrix, dev: torch.device, block: int = 65536) -> torch.Tensor:
    """``Y`` as a dense float32 tensor on ``dev``; sparse input is densified block by block (one block on the host)."""
    import torch

    if not sparse.issparse(Y):
        return torch.as_tensor(np.asarray(Y, dtype=np.float32), device=dev)
    Y = sparse.csr_matrix(Y)
    out = torch.empty(Y.shape, dtype=torch.float32, device=dev)
    for a in range(0, Y.shape[0], block):
        out[a : a + block] = torch.as_tensor(Y[a : a + block].toarray().astype(np.float32, copy=False), device=dev)
    return out


def _converged(history: list[float], cur: float, tol: float) -> bool:
    """Record the loss; whether it improved by less than ``tol`` (relative) since the last record."""
    prev = history[-1] if history else None
    history.append(cur)
    return prev is not None and abs(prev - cur) <= tol * max(abs(cur), 1.0)


def _fit_sparse(
    Y: sparse.csr_matrix,
    profiles: np.ndarray,
    platform_effect: bool,
    max_iter: int,
    tol: float,
    record_every: int,
) -> PoissonDeconvolution:
    """The updates of :func:`_fit` on the non-zeros of ``Y`` (numba, float64; same start, same stopping rule)."""
    from stmap.kernels._poisson import poisson_em_step

    P = np.maximum(np.asarray(profiles, dtype=np.float32), np.float32(1e-9)).astype(np.float64)
    P = P / P.sum(axis=1, keepdims=True)
    n, g = Y.shape
    tot = np.asarray(Y.sum(axis=1), dtype=np.float64).ravel()
    W = np.ascontiguousarray(np.repeat(np.maximum(tot / P.shape[0], 1e-6)[:, None], P.shape[0], axis=1))
    s = np.ones(g)
    history: list[float] = []
    it = 0
    for it in range(1, max_iter + 1):
        check = it % record_every == 0 or it == max_iter
        den_s = W.sum(axis=0) @ P if platform_effect else None
        lsum, num_s = poisson_em_step(Y, W, P * s, s, want_loss=check, platform=platform_effect)
        if num_s is not None and den_s is not None:
            s = np.clip(s * num_s / np.maximum(den_s, 1e-12), 1e-3, 1e3)
            gm = float(np.exp(np.log(s).mean()))
            s = s / gm
            W *= gm
        if check and _converged(history, lsum / n, tol):
            break
    return PoissonDeconvolution(W, s, history, it)


def _fit(
    Y: np.ndarray | sparse.spmatrix,
    profiles: np.ndarray,
    platform_effect: bool,
    max_iter: int,
    tol: float,
    record_every: int,
    dev: torch.device,
    batch_size: int,
) -> PoissonDeconvolution:
    import torch

    Yt = _dense_tensor(Y, dev)
    P = torch.as_tensor(np.asarray(profiles, dtype=np.float32), device=dev).clamp_min(1e-9)
    P = P / P.sum(dim=1, keepdim=True)
    n, g = Yt.shape
    tot = Yt.sum(dim=1, keepdim=True)
    W = (tot / P.shape[0]).expand(n, P.shape[0]).clone().clamp_min(1e-6)
    s = torch.ones(g, device=dev)
    history: list[float] = []
    blocks = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    it = 0
    prev = None
    for it in range(1, max_iter + 1):
        Ps = P * s
        denom_w = Ps.sum(dim=1)  # (T,)
        num_s = torch.zeros(g, device=dev)
        den_s = torch.zeros(g, device=dev)
        lsum = 0.0
        check = it % record_every == 0 or it == max_iter
        for b in blocks:
            mu = (W[b] @ Ps).clamp_min(1e-12)
            R = Yt[b] / mu
            if check:
                lsum += float((mu - torch.xlogy(Yt[b], mu)).sum())
            if platform_effect:
                WP = W[b] @ P
                num_s += (R * WP).sum(dim=0)
                den_s += WP.sum(dim=0)
            W[b] = W[b] * (R @ Ps.T) / denom_w
        if platform_effect:
            s = s * num_s / den_s.clamp_min(1e-12)
            s = s.clamp(1e-3, 1e3)
            gm = torch.exp(torch.log(s).mean())
            s = s / gm
            W = W * gm
        if check:
            cur = lsum / n
            history.append(cur)
            if prev is not None and abs(prev - cur) <= tol * max(abs(cur), 1.0):
                break
            prev = cur
    return PoissonDeconvolution(W.cpu().numpy().astype(np.float64), s.cpu().numpy().astype(np.float64), history, it)


def split_counts(
    Y: np.ndarray, weights: np.ndarray, profiles: np.ndarray, gene_scale: np.ndarray, t: int
) -> np.ndarray:
    """Expected counts of type ``t`` in each spot given the fit: ``y_jg * w_jt p_tg / sum_u w_ju p_ug`` (E-step).

    Parameters
    ----------
    Y
        ``(n_spots, n_genes)`` counts of the spots to split.
    weights
        ``(n_spots, n_types)`` fitted weights of the same spots.
    profiles
        ``(n_types, n_genes)`` profiles.
    gene_scale
        ``(n_genes,)`` platform scaling.
    t
        Type index.

    Returns
    -------
    ``(n_spots, n_genes)`` float32.
    """
    Ps = (profiles * gene_scale).astype(np.float32)
    mu = np.maximum(weights.astype(np.float32) @ Ps, 1e-12)
    return (Y * (weights[:, [t]].astype(np.float32) * Ps[t]) / mu).astype(np.float32)
