"""Intervals of the composition (``map_cells(intervals=...)``): a quasi-likelihood Laplace approximation, chunked.

For each spot the Poisson fit's observed information about the type weights ``w`` is
``H = sum_g y_g / mu_g^2 ps_g ps_g^T`` (a sum over the spot's non-zeros only), inflated by the spot's quasi-Poisson
dispersion ``phi`` (Pearson chi-square per degree of freedom, at least 1: cells of one type differ more than Poisson
from their type's mean). ``phi H^-1`` is the covariance of the weights; the cell equivalents ``e_t = w_t / L_t`` add
the spread of the cells' library sizes (``e_t cv_t^2`` in cells, ``cv_t`` the coefficient of variation of the
reference type's library sizes), and the fractions ``e_t / sum e`` take the delta method. The interval is the
fraction plus or minus ``z`` standard deviations, clipped to ``[0, 1]``.

Work is ``O(nnz x types^2)`` plus one ``types x types`` inverse per spot, in chunks of :data:`CHUNK_ROWS` spots:
memory is bounded by a chunk, not by the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.stats import norm

if TYPE_CHECKING:
    from ._composition import Composition
    from ._prepare import MappingInputs

__all__ = ["composition_intervals", "CHUNK_ROWS"]

#: Spots per chunk.
CHUNK_ROWS = 2048
#: Pseudo-spots of the calibration.
_N_PSEUDO = 300


def _library_cv2(inp: MappingInputs) -> np.ndarray:
    """Squared coefficient of variation of the reference cells' library sizes, per type."""
    n_t = np.bincount(inp.codes, minlength=inp.n_types).astype(float)
    m1 = np.bincount(inp.codes, weights=inp.lib_c, minlength=inp.n_types) / np.maximum(n_t, 1)
    m2 = np.bincount(inp.codes, weights=inp.lib_c**2, minlength=inp.n_types) / np.maximum(n_t, 1)
    return np.maximum(m2 - m1**2, 0.0) / np.maximum(m1**2, 1e-300)


def _chunk_cov(Y: sparse.csr_matrix, W: np.ndarray, Ps: np.ndarray, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Covariance ``phi H^-1`` of the weights and the dispersion ``phi`` of a chunk of spots."""
    m, g = Y.shape
    rows = np.repeat(np.arange(m), np.diff(Y.indptr))
    mu = np.maximum(np.einsum("et,et->e", W[rows], Ps.T[Y.indices]), 1e-12)
    y = Y.data.astype(np.float64)
    a = y / mu**2
    G = (Ps[:, None, :] * Ps[None, :, :]).reshape(n_types * n_types, g).T  # (g, T*T): ps_tg ps_sg
    H = np.asarray(sparse.csr_matrix((a, Y.indices, Y.indptr), shape=Y.shape) @ G)
    H = H.reshape(m, n_types, n_types)
    # Pearson chi-square: sum over non-zeros of y^2 / mu, minus 2 sum y, plus sum over all genes of mu
    chi2 = np.bincount(rows, weights=y**2 / mu, minlength=m) - 2 * np.asarray(Y.sum(axis=1)).ravel()
    chi2 += W @ Ps.sum(axis=1)
    phi = np.maximum(chi2 / max(g - n_types, 1), 1.0)
    ridge = 1e-8 * np.maximum(np.trace(H, axis1=1, axis2=2) / n_types, 1e-300)
    H += ridge[:, None, None] * np.eye(n_types)[None]
    return phi[:, None, None] * np.linalg.pinv(H, hermitian=True), phi


def _fraction_sd(
    Y: sparse.csr_matrix, W: np.ndarray, Ps: np.ndarray, lib_t: np.ndarray, cv2: np.ndarray, n_spot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fractions and their standard deviations (Laplace + library sizes + delta method), chunk by chunk."""
    n, T = W.shape
    F_all, sd_all = np.empty((n, T)), np.empty((n, T))
    D = 1.0 / lib_t
    for s in range(0, n, CHUNK_ROWS):
        sl = slice(s, min(s + CHUNK_ROWS, n))
        Wc = np.asarray(W[sl], dtype=np.float64)
        cov_w, _ = _chunk_cov(Y[sl], Wc, Ps, T)
        cov_e = cov_w * D[None, :, None] * D[None, None, :]
        e = Wc * D[None, :]
        E = np.maximum(e.sum(axis=1), 1e-300)
        scale = np.maximum(n_spot[sl].astype(float), 1.0) / E  # cells per cell equivalent
        cov_e[:, np.arange(T), np.arange(T)] += e * cv2[None, :] / scale[:, None]
        F = e / E[:, None]
        J = (np.eye(T)[None] - F[:, :, None]) / E[:, None, None]  # dF_t / de_k = (delta_tk - F_t) / E
        var = np.einsum("jtk,jkl,jtl->jt", J, cov_e, J)
        F_all[sl], sd_all[sl] = F, np.sqrt(np.maximum(var, 0.0))
    return F_all, sd_all


def _pseudo_spots(
    inp: MappingInputs, comp: Composition, n_spot: np.ndarray, gen: np.random.Generator
) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Spots built from the reference's own cells with the fitted compositions and cell numbers of real spots."""
    pick = gen.choice(inp.Y.shape[0], size=min(_N_PSEUDO, inp.Y.shape[0]), replace=False)
    n_j = np.maximum(n_spot[pick], 1).astype(np.int64)
    by_type = [np.flatnonzero(inp.codes == t) for t in range(inp.n_types)]
    rows, cols, truth = [], [], np.zeros((pick.size, inp.n_types))
    for k, (j, nj) in enumerate(zip(pick, n_j, strict=True)):
        types = gen.choice(inp.n_types, size=int(nj), p=comp.fractions[j] / comp.fractions[j].sum())
        cells = np.array([by_type[t][gen.integers(by_type[t].size)] for t in types])
        rows.append(np.full(cells.size, k))
        cols.append(cells)
        np.add.at(truth[k], types, 1.0)
    A = sparse.csr_matrix(
        (np.ones(int(n_j.sum())), (np.concatenate(rows), np.concatenate(cols))), shape=(pick.size, inp.codes.size)
    )
    S = sparse.csr_matrix(A @ inp.Xg)
    # thin to the real spots' depth: counts per cell equivalent relative to the reference's
    eq = comp.cells_eq[pick].sum(axis=1)
    rate = float(np.clip(np.median(eq / n_j), 1e-3, 1.0))
    if rate < 1.0:
        S.data = gen.binomial(np.round(S.data).astype(np.int64), rate).astype(np.float64)
        S.eliminate_zeros()
    return S, truth / truth.sum(axis=1, keepdims=True), n_j


def calibration(inp: MappingInputs, comp: Composition, n_spot: np.ndarray, level: float, seed: int) -> float:
    """Factor on the standard deviations that makes ``level`` intervals cover the truth on pseudo-spots.

    The pseudo-spots hold the reference's own cells with the fitted compositions and cell numbers of real spots
    (:data:`_N_PSEUDO` at most); they are fitted like the real ones, and the factor is the ``level`` quantile of
    ``|F_true - F_fit| / (z sd)``, at least 1: the Laplace approximation treats genes as independent, while a cell
    that departs from its type's mean moves many genes together.
    """
    from stmap.models._mapping import fit_poisson_deconvolution

    gen = np.random.default_rng(seed)
    S, truth, n_j = _pseudo_spots(inp, comp, n_spot, gen)
    keep = np.asarray(S.sum(axis=1)).ravel() > 0
    if keep.sum() < 10:
        return 1.0
    S, truth, n_j = S[keep], truth[keep], n_j[keep]
    Ps = comp.prof * comp.gene_scale[None, :]
    P = Ps / Ps.sum(axis=1, keepdims=True)
    fit = fit_poisson_deconvolution(S, P, platform_effect=False, max_iter=500, device="cpu")
    W = fit.weights / Ps.sum(axis=1)[None, :]  # weights on the scaled profiles
    F, sd = _fraction_sd(S, W, Ps, comp.lib_t, _library_cv2(inp), n_j)
    z = float(norm.ppf(0.5 + level / 2.0))
    need = np.abs(truth - F) / np.maximum(z * sd, 1e-12)
    need[np.abs(truth - F) < 1e-9] = 0.0
    return max(float(np.quantile(need, level)), 1.0)  # widens only: the pseudo-spots share the fit's profiles


def composition_intervals(
    inp: MappingInputs, comp: Composition, n_spot: np.ndarray, level: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lower and upper ends ``(n_fitted, n_types)`` of the ``level`` intervals of the fractions, and the calibration.

    The calibration is the factor applied to the standard deviations (:func:`calibration`). ``n_spot``: cells per
    fitted spot (the scale of the library-size term).
    """
    z = float(norm.ppf(0.5 + level / 2.0))
    Ps = comp.prof * comp.gene_scale[None, :]
    F, sd = _fraction_sd(sparse.csr_matrix(inp.Y), comp.weights, Ps, comp.lib_t, _library_cv2(inp), n_spot)
    kappa = calibration(inp, comp, n_spot, level, seed)
    return np.clip(F - kappa * z * sd, 0.0, 1.0), np.clip(F + kappa * z * sd, 0.0, 1.0), kappa
