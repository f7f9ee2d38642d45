"""Read what the simulators need from a user's AnnData: counts, coordinates, cell types (data-dependent checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._errors import StmapInputError

if TYPE_CHECKING:
    from anndata import AnnData


def check_nonempty(adata: AnnData, name: str) -> None:
    """Refuse an AnnData without cells or genes."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise StmapInputError(f"`{name}` is empty ({adata.n_obs} x {adata.n_vars}); give at least one cell and gene.")


def get_counts(adata: AnnData, layer: str | None, name: str) -> tuple[Any, str]:
    """``X`` or ``layers[layer]`` as CSR or a NumPy array, and where it was read (for messages)."""
    if layer is None:
        X = adata.X
        where = f"{name}.X"
    else:
        if layer not in adata.layers:
            raise StmapInputError(
                f"Layer {layer!r} not found in {name}.layers. Available: {sorted(adata.layers.keys()) or 'none'}."
            )
        X = adata.layers[layer]
        where = f"{name}.layers[{layer!r}]"
    if X is None:
        raise StmapInputError(f"{where} is empty; give raw counts in X or name a layer with `counts_layer`.")
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        try:  # dask / h5py-backed
            X = np.asarray(X)
        except Exception as e:
            raise StmapInputError(f"{where} must be a NumPy array or a SciPy sparse matrix.") from e
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
    return X, where


def get_coords(adata: AnnData, key: str, name: str) -> np.ndarray:
    """Finite ``(n, 2)`` coordinates from ``obsm[key]``."""
    if key not in adata.obsm:
        raise StmapInputError(
            f"Coordinates {key!r} not found in {name}.obsm. Available: {sorted(adata.obsm.keys()) or 'none'}. "
            "Put (x, y) in micrometres there, or pass `spatial_key`."
        )
    xy = np.asarray(adata.obsm[key], dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise StmapInputError(f"{name}.obsm[{key!r}] must have shape (n_cells, 2) (x, y), got {xy.shape}.")
    if not np.all(np.isfinite(xy)):
        raise StmapInputError(f"{name}.obsm[{key!r}] contains NaN or infinite coordinates.")
    return xy


def get_labels(adata: AnnData, key: str, name: str) -> pd.Categorical:
    """Cell types from ``obs[key]`` as a categorical with string categories (no missing values)."""
    if key not in adata.obs:
        raise StmapInputError(
            f"Cell types {key!r} not found in {name}.obs. Available: {sorted(map(str, adata.obs.columns)) or 'none'}."
            " Pass `cell_type_key`."
        )
    s = adata.obs[key]
    if s.isna().any():
        raise StmapInputError(f"{name}.obs[{key!r}] has {int(s.isna().sum())} missing cell types; drop or label them.")
    cat = s.astype("category").cat if not isinstance(s.dtype, pd.CategoricalDtype) else s.cat
    cats = [str(c) for c in cat.categories]
    if len(set(cats)) != len(cats):
        raise StmapInputError(f"{name}.obs[{key!r}] has categories that coincide as strings: {cats}.")
    return pd.Categorical.from_codes(cat.codes.to_numpy(), categories=cats)
