"""Validation of expression inputs: counts, genes shared between tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._errors import StmapInputError

__all__ = ["check_counts", "shared_genes", "get_counts"]


def _values(X: Any) -> np.ndarray:
    if sparse.issparse(X):
        return X.data
    if hasattr(X, "compute"):  # dask
        X = X.compute()
    return np.asarray(X)


def check_counts(X: Any, what: str, *, integer: bool = False) -> None:
    """Raise if ``X`` has NaN/infinite or negative values (or non-integers when ``integer=True``).

    Parameters
    ----------
    X
        Dense, sparse or dask matrix.
    what
        How to name the matrix in the message, e.g. ``"table 'spots'"``.
    integer
        Also require whole numbers (raw counts).

    Raises
    ------
    StmapInputError
        Naming the problem and the fix.
    """
    v = _values(X)
    if v.size == 0:
        return
    if not np.issubdtype(v.dtype, np.number):
        raise StmapInputError(f"{what} is not numeric (dtype {v.dtype}); pass a count matrix.")
    if np.issubdtype(v.dtype, np.floating):
        n_bad = int((~np.isfinite(v)).sum())
        if n_bad:
            raise StmapInputError(
                f"{what} has {n_bad} NaN or infinite values; fill or drop them (e.g. `np.nan_to_num`) before running."
            )
    n_neg = int((v < 0).sum())
    if n_neg:
        raise StmapInputError(
            f"{what} has {n_neg} negative values, but raw or normalised counts are expected. Pass raw counts "
            "(e.g. `layer='counts'`), not scaled/centred data."
        )
    if integer and np.issubdtype(v.dtype, np.floating) and not np.all(v == np.round(v)):
        raise StmapInputError(
            f"{what} holds non-integer values, but raw counts are required here; pass the raw count layer "
            "(e.g. `layer='counts'`)."
        )


def get_counts(adata, layer: str | None, what: str):
    """The matrix ``adata.layers[layer]`` (or ``adata.X``), raising a clear error for an unknown layer."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        from ._errors import unknown_key

        raise unknown_key("Layer", layer, adata.layers.keys(), what)
    return adata.layers[layer]


def shared_genes(
    a_genes: Sequence[str] | pd.Index,
    b_genes: Sequence[str] | pd.Index,
    genes: Sequence[str] | None = None,
    *,
    a_name: str = "the spatial table",
    b_name: str = "the reference",
    min_genes: int = 1,
) -> list[str]:
    """Genes present in both tables (optionally restricted to ``genes``), in the order of ``a_genes``.

    Parameters
    ----------
    a_genes, b_genes
        Gene names of the two tables.
    genes
        Genes requested by the user; each must be in both tables.
    a_name, b_name
        Names used in error messages.
    min_genes
        Fewest shared genes accepted.

    Returns
    -------
    The shared gene names.

    Raises
    ------
    StmapInputError
        When requested genes are missing (names them) or too few genes are shared.
    """
    a, b = pd.Index(a_genes), pd.Index(b_genes)
    if genes is not None:
        req = pd.Index(list(genes))
        miss_a, miss_b = req.difference(a), req.difference(b)
        if len(miss_a) or len(miss_b):
            parts = []
            if len(miss_a):
                parts.append(f"{len(miss_a)} not in {a_name} ({', '.join(map(repr, miss_a[:10]))})")
            if len(miss_b):
                parts.append(f"{len(miss_b)} not in {b_name} ({', '.join(map(repr, miss_b[:10]))})")
            raise StmapInputError(
                "Requested genes are missing: " + "; ".join(parts) + ". Pass genes present in both tables "
                "(check capitalisation and gene-id type: symbols vs Ensembl ids)."
            )
        return list(req)
    common = a[a.isin(b)]
    if len(common) < min_genes:
        raise StmapInputError(
            f"{a_name} and {b_name} share {len(common)} genes (need at least {min_genes}). Check that both use the "
            f"same gene identifiers (e.g. symbols vs Ensembl ids; first genes: {list(a[:3])} vs {list(b[:3])})."
        )
    return list(common)
