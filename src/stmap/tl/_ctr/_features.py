"""Preparing samples for a CTR model: the per-sample scaling rules, neighbour tokens, labels and feature records."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._errors import StmapInputError, unknown_key
from stmap._core._genes import log_normalize
from stmap._core._resolve import TableContext, is_spatialdata
from stmap._core._validate import check_counts, get_counts

if TYPE_CHECKING:
    from ._model import CTRModel

#: What ``uns[features_key]`` of :func:`stmap.pp.histology_features` records about how features were computed.
FEATURE_META = ("extractor", "patch_um", "scales", "patch_px")


def minmax(x: np.ndarray) -> np.ndarray:
    """Per-column min-max scaling to [0, 1] within one sample (constant columns -> 0)."""
    lo, hi = x.min(0, keepdims=True), x.max(0, keepdims=True)
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def lognorm(ctx: TableContext, layer: str | None) -> tuple[Any, pd.Index]:
    """Library-size normalised (1e4) log1p expression of all genes of a sample (sparse CSR)."""
    X = get_counts(ctx.adata, layer, f"table {ctx.table_key!r}")
    check_counts(X, f"table {ctx.table_key!r}")
    return log_normalize(sparse.csr_matrix(X, dtype=np.float64)), pd.Index(ctx.adata.var_names.astype(str))


def gene_block(X: Any, var: pd.Index, genes: Sequence[str]) -> tuple[np.ndarray, int]:
    """Columns ``genes`` of ``X`` (missing genes zero), min-max scaled; also the number of missing genes."""
    pos = var.get_indexer(list(genes))
    out = np.zeros((X.shape[0], len(genes)), dtype=np.float32)
    ok = pos >= 0
    if ok.any():
        # column blocks: the scaling is per column, so this equals scaling the dense block at once, without holding
        # spots x genes in float64 (650k bins x 500 genes: 2.6 GB and its copies)
        cols = np.flatnonzero(ok)
        sub = sparse.csc_matrix(X[:, pos[ok]])
        step = max(1, int(2**24 // max(1, X.shape[0])))
        for a in range(0, len(cols), step):
            dense = np.asarray(sub[:, a : a + step].todense(), dtype=np.float64)
            out[:, cols[a : a + step]] = minmax(dense)
    return out, int((~ok).sum())


def neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    """Each spot followed by its ``k`` nearest spots (itself repeated when the sample has fewer)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    kk = min(k + 1, n)
    _, idx = cKDTree(xy).query(xy, k=kk)
    idx = np.asarray(idx).reshape(n, kk)
    if kk < k + 1:
        idx = np.concatenate([idx, np.repeat(idx[:, :1], k + 1 - kk, axis=1)], axis=1)
    idx[:, 0] = np.arange(n)
    return idx.astype(np.int64)


def features(ctx: TableContext, key: str) -> np.ndarray:
    """``obsm[key]`` of a sample as a finite 2D float64 array (NaN or infinite rows are refused, counted)."""
    f = ctx.adata.obsm[key]
    f = np.asarray(f.to_numpy() if isinstance(f, pd.DataFrame) else f, dtype=np.float64)
    if f.ndim != 2:
        raise StmapInputError(f"obsm[{key!r}] of table {ctx.table_key!r} must be 2D, got shape {f.shape}.")
    bad = ~np.isfinite(f).all(1)
    if bad.any():
        raise StmapInputError(
            f"obsm[{key!r}] of table {ctx.table_key!r} has NaN or infinite values in {int(bad.sum())} spots; "
            "recompute the features (st.pp.histology_features) or drop those spots."
        )
    return f


@dataclass
class Sample:
    """One sample prepared by a model's rules: scaled genes and features, neighbour tokens, optional labels."""

    name: str
    ctx: TableContext
    genes: np.ndarray
    feats: np.ndarray | None
    nbr: np.ndarray
    y: np.ndarray | None = None
    missing_genes: int = 0


def as_list(sdatas: Any) -> list[tuple[str, Any]]:
    """``(name, sdata)`` of one object, a list (``sample_<i>``) or a dict of them."""
    if isinstance(sdatas, Mapping):
        return [(str(k), v) for k, v in sdatas.items()]
    if is_spatialdata(sdatas) or hasattr(sdatas, "obs"):
        return [("sample_0", sdatas)]
    if isinstance(sdatas, Sequence) and not isinstance(sdatas, str):
        return [(f"sample_{i}", s) for i, s in enumerate(sdatas)]
    raise StmapInputError(f"Expected a SpatialData/AnnData, a list or a dict of them, got {type(sdatas).__name__}.")


def labels(ctx: TableContext, label_key: str, positive: Any) -> np.ndarray:
    """1.0 / 0.0 per spot, NaN where the label is missing."""
    obs = ctx.adata.obs
    if label_key not in obs:
        raise unknown_key("Label column", label_key, obs.columns, f"obs of table {ctx.table_key!r}")
    col = obs[label_key]
    missing = col.isna().to_numpy()
    pos = [positive] if isinstance(positive, str | bool | int | float | np.generic) else list(positive)
    y = col.astype(object).isin(pos).to_numpy().astype(np.float32)
    y[missing] = np.nan
    return y


def plain(v: Any) -> Any:
    """A numpy value or array as plain Python (lists, scalars), for comparison and storage."""
    return (
        [plain(x) for x in v] if isinstance(v, list | tuple | np.ndarray) else (v.item() if hasattr(v, "item") else v)
    )


def feature_meta(ctxs: list[tuple[str, TableContext]], key: str) -> dict[str, Any]:
    """How the sources' features were computed (``uns[key]`` of :func:`stmap.pp.histology_features`)."""
    for _, ctx in ctxs:
        meta = ctx.adata.uns.get(key)
        if isinstance(meta, Mapping):
            return {k: plain(meta[k]) for k in FEATURE_META if k in meta}
    return {}


def check_feature_meta(model: CTRModel, ctx: TableContext, stacklevel: int = 4) -> None:
    """Warn when the target's features were computed differently from the sources' (e.g. another patch size)."""
    train = model.info.get("features") or {}
    meta = ctx.adata.uns.get(model.features_key) if model.features_key else None
    if not train or not isinstance(meta, Mapping):
        return
    diff = [k for k in FEATURE_META if k in train and k in meta and plain(meta[k]) != train[k]]
    if diff:
        got = ", ".join(f"{k}={plain(meta[k])!r} (model: {train[k]!r})" for k in diff)
        warnings.warn(
            f"Histology features of table {ctx.table_key!r} were computed differently from the model's: {got}. "
            f"For another platform (e.g. Visium vs legacy ST) recompute them with the model's settings, e.g. "
            f"`st.pp.histology_features(sdata, patch_um={train.get('patch_um')}, scales={train.get('scales')})`.",
            UserWarning,
            stacklevel=stacklevel,
        )
