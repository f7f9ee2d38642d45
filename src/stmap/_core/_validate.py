"""Validation of expression inputs: counts, genes shared between tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._errors import StmapInputError

__all__ = ["check_counts", "shared_genes", "get_counts", "read_counts"]

#: Values this close to a whole number (relative to ``max(1, |x|)``) count as integers: float rounding of raw counts
#: (e.g. a sum of float32 UMIs, a float64 round trip) is not normalisation.
INTEGER_TOL = 1e-6


def _values(X: Any) -> np.ndarray:
    if sparse.issparse(X):
        return X.data
    if hasattr(X, "compute"):  # dask
        X = X.compute()
    return np.asarray(X)


def _rows(X: Any, rows: np.ndarray | None) -> Any:
    """The rows ``rows`` (boolean mask) of a dense, sparse or dask matrix; ``X`` itself when ``rows`` is None."""
    if rows is None or X is None:
        return X
    return X.tocsr()[rows] if sparse.issparse(X) else X[np.asarray(rows)]


def _non_integer(v: np.ndarray, tol: float = 0.0, chunk: int = 1 << 22) -> float | None:
    """The first finite value of ``v`` farther than ``tol * max(1, |x|)`` from a whole number, else ``None``.

    Scans in chunks (no full-size temporaries) and stops at the first hit: normalised data are rejected at once.
    """
    if not np.issubdtype(v.dtype, np.floating):
        return None
    flat = v.reshape(-1)
    for a in range(0, flat.size, chunk):
        c = flat[a : a + chunk]
        c = c[np.isfinite(c)]
        off = np.abs(c - np.rint(c))
        bad = off > tol * np.maximum(1.0, np.abs(c)) if tol else off > 0
        if bad.any():
            return float(c[np.argmax(bad)])
    return None


def check_counts(X: Any, what: str, *, integer: bool = False, arg: str = "layer") -> None:
    """Raise if ``X`` has NaN/infinite or negative values (or non-integers when ``integer=True``).

    Parameters
    ----------
    X
        Dense, sparse or dask matrix.
    what
        How to name the matrix in the message, e.g. ``"table 'spots'"``.
    integer
        Also require whole numbers (raw counts).
    arg
        The tool's parameter that names a count layer, for the fix in the message (``'layer'``, ``'sc_layer'``).

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
            f"(e.g. `{arg}='counts'`), not scaled/centred data."
        )
    if integer and _non_integer(v) is not None:
        raise StmapInputError(
            f"{what} holds non-integer values, but raw counts are required here; pass the raw count layer "
            f"(e.g. `{arg}='counts'`)."
        )


def get_counts(adata, layer: str | None, what: str):
    """The matrix ``adata.layers[layer]`` (or ``adata.X``), raising a clear error for an unknown layer."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        from ._errors import unknown_key

        raise unknown_key("Layer", layer, adata.layers.keys(), what)
    return adata.layers[layer]


def read_counts(
    adata, layer: str | None, what: str, *, arg: str = "layer", rows: np.ndarray | None = None
) -> tuple[Any, str | None]:
    """The raw count matrix a tool reads, validated, and the layer it came from (``None``: ``X``).

    Every matrix read must be numeric, finite and non-negative. A layer named by ``layer`` is trusted to hold counts
    (platforms with non-integer "counts" name their layer). ``X`` (``layer=None``) must also hold whole numbers (up
    to :data:`INTEGER_TOL` of float rounding): non-integers mean normalised data (``sc.pp.normalize_total``,
    ``sc.pp.log1p``); then ``layers['counts']`` is read instead when present (logged at info level), else the error
    names the fix.

    Parameters
    ----------
    adata
        The table.
    layer
        Layer named by the user, or ``None`` for ``X``.
    what
        How to name the table (or the rows read) in messages, e.g. ``"table 'spots'"``, ``"sc_adata"``.
    arg
        The tool's parameter naming a count layer (``'layer'``, ``'sc_layer'``), for the fix in messages.
    rows
        Boolean mask of the rows the tool reads (e.g. measured spots); only these are checked (the others may hold
        anything, e.g. NaN for no measurement).

    Returns
    -------
    ``(matrix, layer)``: the whole matrix (all rows) as stored, and the layer it is from (``None``: ``X``).

    Raises
    ------
    StmapInputError
        Unknown layer (lists the layers), non-numeric, NaN/infinite or negative values, or normalised ``X`` without a
        ``'counts'`` layer. Nothing is modified.
    """
    X = get_counts(adata, layer, what)
    Xr = _rows(X, rows)
    if layer is None:
        v = _values(Xr)
        x = _non_integer(v, INTEGER_TOL) if np.issubdtype(v.dtype, np.number) else None
        if x is not None:
            desc = f"X of {what} holds non-integer values (e.g. {x:.4g}; max {np.nanmax(v):.4g})"
            if "counts" in adata.layers:
                from . import _logging as logg

                logg.info(f"    {desc}: normalised, so its raw counts in layers['counts'] are used")
                layer, X = "counts", adata.layers["counts"]
                Xr = _rows(X, rows)
            else:
                raise StmapInputError(
                    f"{desc}: it looks normalised (e.g. `sc.pp.normalize_total` / `sc.pp.log1p`), but raw counts "
                    f"are needed. Pass `{arg}=` naming a layer of raw counts (keep them before normalising with "
                    "`adata.layers['counts'] = adata.X.copy()`), or put raw counts in X. A named layer is used as "
                    "given."
                )
    where = "X" if layer is None else f"layers[{layer!r}]"
    check_counts(Xr, f"{where} of {what}", arg=arg)
    return X, layer


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
