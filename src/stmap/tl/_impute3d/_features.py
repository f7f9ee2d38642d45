"""Histology features of the stacked table: read from ``obsm`` (or computed here), split into patch-scale blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core import _logging as logg
from stmap._core._errors import StmapInputError

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

#: ``(features, uns metadata)`` computed by this tool.
Computed = tuple[np.ndarray, dict[str, Any]]


def compute_features(
    sdata: SpatialData, table_key: str, features_key: str, scales: Any, kwargs: dict[str, Any] | None, **common: Any
) -> Computed | None:
    """Multi-scale histology features of a stacked table, computed on a copy (nothing written to ``sdata``).

    Returns ``(features, uns metadata)``, or ``None`` (with a warning) when no section has a usable image.
    """
    from stmap.pp._histology import histology_features

    kw = {**(kwargs or {}), "scales": tuple(scales)}
    for k in ("table_key", "key_added", "copy"):
        if k in kw:
            raise StmapInputError(f"`feature_kwargs` may not set {k!r}; it is set by impute_3d.")
    try:
        out = histology_features(sdata, table_key=table_key, key_added=features_key, copy=True, **common, **kw)
    except StmapInputError as e:
        logg.warning(f"No histology features ({e}): imputing from expression and the graph only.")
        return None
    t = out.tables[table_key]
    return np.asarray(t.obsm[features_key]), dict(t.uns[features_key])


def _block_widths(meta: Any, n_cols: int, n_scales: int | None) -> list[int]:
    """Widths of the patch-scale blocks: ``n_scales`` equal ones, else as recorded in ``uns``, else one block."""
    per = list(meta.get("n_features_per_scale", [])) if isinstance(meta, dict) else []
    if n_scales is not None:
        if n_cols % int(n_scales):
            raise StmapInputError(
                f"n_scales={n_scales} does not divide the {n_cols} feature columns into equal blocks."
            )
        return [n_cols // int(n_scales)] * int(n_scales)
    return per if per and sum(per) == n_cols else [n_cols]


def split_levels(
    f: Any, meta: Any, n_scales: int | None, features_key: str, n_obs: int
) -> tuple[list[np.ndarray] | None, np.ndarray]:
    """The features as one block per patch scale (``None`` if all NaN) and which spots have them (finite rows)."""
    import pandas as pd

    f = f.to_numpy(dtype=float) if isinstance(f, pd.DataFrame) else np.asarray(f, dtype=float)
    if f.ndim != 2 or len(f) != n_obs:
        raise StmapInputError(f"obsm[{features_key!r}] must be (n_spots, n_features), got {f.shape}.")
    has = np.isfinite(f).all(1)
    if not has.any():
        logg.warning(f"obsm[{features_key!r}] is all NaN: imputing from expression and the graph only.")
        return None, has
    bounds = np.cumsum([0, *_block_widths(meta, f.shape[1], n_scales)])
    f = np.where(has[:, None], f, 0.0)
    return [f[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])], has


def read_features(
    sdata: SpatialData | None,
    adata: AnnData,
    table_key: str,
    features_key: str | None,
    compute: dict[str, Any],
) -> tuple[Any, dict[str, Any], Computed | None]:
    """``(features or None, their uns metadata, what was computed here or None)``.

    ``obsm[features_key]`` when present; else computed (:func:`compute_features` with ``compute``) from the
    SpatialData ``sdata``, or a warning when there is none (a plain table).
    """
    if features_key is None:
        return None, {}, None
    if features_key in adata.obsm:
        return adata.obsm[features_key], adata.uns.get(features_key, {}), None
    if sdata is None:
        logg.warning(
            f"No obsm[{features_key!r}] histology features: imputing from expression and the graph only. Pass "
            "the SpatialData stack (its sections' images give the features) or compute them with "
            "`st.pp.histology_features`."
        )
        return None, {}, None
    computed = compute_features(sdata, table_key, features_key, **compute)
    return (None, {}, None) if computed is None else (computed[0], computed[1], computed)
