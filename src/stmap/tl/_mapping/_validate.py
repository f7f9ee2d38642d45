"""Checks of the inputs of :func:`~stmap.tl.map_cells` that depend on the data (types and ranges are declared)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core import StmapInputError, unknown_key

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["check_reference", "check_unique_names", "cell_types", "given_cells_per_spot", "to_csr"]


def check_reference(sc_adata: AnnData) -> None:
    """Raise when the single-cell reference has no cells or no genes."""
    if sc_adata.n_obs == 0 or sc_adata.n_vars == 0:
        raise StmapInputError(f"`sc_adata` is empty ({sc_adata.n_obs} x {sc_adata.n_vars}).")


def _check_unique(index: pd.Index, what: str, fix: str) -> None:
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5]
        raise StmapInputError(f"{what} has duplicated names (e.g. {', '.join(map(repr, dup))}); {fix}.")


def check_unique_names(spots: AnnData, sc_adata: AnnData) -> None:
    """Raise when spots, cells or the genes of either table have duplicated names (naming the fix)."""
    _check_unique(spots.obs_names, "The spot table", "make them unique with `adata.obs_names_make_unique()`")
    _check_unique(spots.var_names, "The spot table's genes", "make them unique with `adata.var_names_make_unique()`")
    _check_unique(sc_adata.obs_names, "sc_adata", "make them unique with `sc_adata.obs_names_make_unique()`")
    _check_unique(sc_adata.var_names, "sc_adata's genes", "make them unique with `sc_adata.var_names_make_unique()`")


def cell_types(sc: AnnData, key: str) -> pd.Categorical:
    """The reference's cell types as a categorical of the types present (raises on a missing column or NaN)."""
    if key not in sc.obs:
        raise unknown_key("Cell-type column", key, sc.obs.columns, "sc_adata.obs", hint="Pass `cell_type_key=`.")
    s = sc.obs[key]
    if s.isna().any():
        raise StmapInputError(
            f"sc_adata.obs[{key!r}] has {int(s.isna().sum())} missing cell types; drop or label those cells first."
        )
    cat = pd.Categorical(s.astype(str))
    return pd.Categorical(cat, categories=[c for c in cat.categories if (cat == c).any()])


def to_csr(X: Any) -> sparse.csr_matrix:
    """A dense, sparse or dask matrix as float32 CSR."""
    if sparse.issparse(X):
        return sparse.csr_matrix(X, dtype=np.float32)
    if hasattr(X, "compute"):
        X = X.compute()
    return sparse.csr_matrix(np.asarray(X, dtype=np.float32))


def given_cells_per_spot(value: Any, spots: AnnData) -> np.ndarray | None:
    """``None`` when it should be estimated; else validated ``(n_spots,)`` non-negative integers."""
    if value is None or (isinstance(value, str) and value == "estimate"):
        return None
    if isinstance(value, str):
        if value not in spots.obs:
            raise unknown_key(
                "cells_per_spot column",
                value,
                spots.obs.columns,
                "the spot table's obs",
                hint="Pass an obs column, an array, a number, or 'estimate'.",
            )
        arr = pd.to_numeric(spots.obs[value], errors="coerce").to_numpy(dtype=float)
    else:
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 0:
            arr = np.full(spots.n_obs, float(arr))
    if arr.ndim != 1 or arr.size != spots.n_obs:
        raise StmapInputError(
            f"cells_per_spot has {arr.size} values but the spot table has {spots.n_obs} spots; give one per spot "
            "(in the order of the table's rows)."
        )
    if not np.all(np.isfinite(arr)):
        raise StmapInputError(f"cells_per_spot has {int((~np.isfinite(arr)).sum())} NaN or infinite values.")
    if (arr < 0).any():
        raise StmapInputError(f"cells_per_spot has {int((arr < 0).sum())} negative values; counts must be >= 0.")
    if arr.sum() == 0:
        raise StmapInputError("cells_per_spot is 0 for every spot: no cell could be placed.")
    return np.round(arr).astype(np.int64)
