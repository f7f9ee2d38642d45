"""Expression steps shared by the tools: library-size normalisation and gene selection, written once."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["log_normalize", "dispersion_genes"]

#: Counts per cell/spot after library-size normalisation (scanpy's ``normalize_total(target_sum=1e4)``).
TARGET_SUM = 1e4


def log_normalize(X: Any, *, totals: np.ndarray | None = None, target: float = TARGET_SUM) -> Any:
    """``log1p(X / total * target)`` per row, as float64; sparse in, sparse (CSR) out; dense otherwise.

    The same numbers as ``sc.pp.normalize_total(target_sum=target)`` then ``sc.pp.log1p`` (in float64), without an
    AnnData round trip, so that array-level steps can call it on a gene subset with the totals of all genes.

    Parameters
    ----------
    X
        Counts, observations x genes (dense or sparse).
    totals
        Library size per row; default the row sums of ``X``. Rows with total 0 stay 0.
    target
        Total each row is scaled to before ``log1p``.

    Returns
    -------
    The log-normalised matrix (float64).
    """
    if sparse.issparse(X):
        X = sparse.csr_matrix(X, dtype=np.float64)
        tot = np.asarray(X.sum(axis=1)).ravel() if totals is None else np.asarray(totals, dtype=np.float64).ravel()
        Z = sparse.diags(target / np.where(tot > 0, tot, 1.0)) @ X
        Z = Z.tocsr()
        Z.data = np.log1p(Z.data)
        return Z
    X = np.asarray(X, dtype=np.float64)
    tot = X.sum(axis=1) if totals is None else np.asarray(totals, dtype=np.float64).ravel()
    scale = target / np.where(tot > 0, tot, 1.0)
    return np.log1p(X * scale[:, None])


def dispersion_genes(Y: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` genes of highest normalised dispersion (scanpy's ``'seurat'`` flavour), best first.

    The dispersion ``log(var / mean)`` of each gene is z-scored among the genes of similar mean (20 bins between the
    quantiles of the means); genes never expressed rank last. Ties keep the genes' order.

    Parameters
    ----------
    Y
        Log-normalised expression (e.g. :func:`log_normalize`), dense, observations x genes.
    n
        Number of genes (at most the number of columns).

    Returns
    -------
    Integer column indices, ``min(n, Y.shape[1])`` of them.
    """
    Y = np.asarray(Y)
    mean, var = Y.mean(0), Y.var(0)
    bins = np.quantile(mean, np.linspace(0, 1, 21))
    which = np.clip(np.searchsorted(bins, mean, side="right") - 1, 0, 19)
    disp = np.log(np.maximum(var, 1e-12) / np.maximum(mean, 1e-12))
    z = np.zeros_like(disp)
    for b in np.unique(which):
        m = which == b
        sd = disp[m].std()
        z[m] = (disp[m] - disp[m].mean()) / (sd if sd > 0 else 1.0)
    z[(mean <= 0) | (var <= 0)] = -np.inf
    return np.argsort(-z, kind="stable")[: min(int(n), Y.shape[1])]
