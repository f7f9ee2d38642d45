"""Plot cancer tissue region detection: score and call over the H&E, with the known labels if present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stmap._core._constants import Key
from stmap._core._errors import StmapInputError

from ._utils import finish

__all__ = ["ctr"]


def ctr(
    sdata: Any,
    *,
    table_key: str | None = None,
    key: str = Key.obs.ctr,
    label_key: str | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    size: float | None = None,
    axs: Any = None,
    save: str | Path | None = None,
    return_ax: bool = False,
    show: bool | None = None,
) -> Any:
    """Cancer probability, CTR call and (when known) the reference labels, side by side over the H&E.

    Parameters
    ----------
    sdata
        SpatialData (or AnnData) after :func:`stmap.tl.detect_ctr`.
    table_key
        Table name (may be omitted when there is one table).
    key
        ``key_added`` of :func:`stmap.tl.detect_ctr`.
    label_key
        ``obs`` column with reference labels; default: the ``label_key`` recorded by ``detect_ctr`` (if any).
    image_key
        Image drawn below the spots (``False``: none); see :func:`stmap.pl.spatial`.
    coordinate_system
        Coordinate system to draw in; default: the one the tools choose (see :func:`stmap.pl.spatial`).
    size
        Spot size (see :func:`stmap.pl.spatial`).
    axs
        Matplotlib axes to draw into (one per panel).
    save
        File to save the figure to.
    return_ax
        Return the axes.
    show
        Show the figure (default: when not saving and not returning the axes).

    Returns
    -------
    The axes if ``return_ax=True``, else ``None``.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from stmap._core._resolve import resolve

    from ._spatial import spatial

    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    t = ctx.adata
    if f"{key}_prob" not in t.obs or key not in t.obs:
        raise StmapInputError(
            f"Table {ctx.table_key!r} has no obs[{key + '_prob'!r}] / obs[{key!r}]; run `st.tl.detect_ctr` first "
            "(or pass its `key_added` as `key=`)."
        )
    meta = t.uns.get(key, {}) or {}
    if label_key is None:
        label_key = (meta.get("metrics") or {}).get("label_key")
    if label_key is not None and label_key not in t.obs:
        raise StmapInputError(f"Label column {label_key!r} is not in obs of table {ctx.table_key!r}.")
    panels = [(f"{key}_prob", "cancer probability"), (key, f"CTR call (threshold {meta.get('threshold', np.nan):.2f})")]
    if label_key is not None:
        m = meta.get("metrics") or {}
        auc = f", ROC-AUC {m['roc_auc']:.3f}" if "roc_auc" in m and m.get("label_key") == label_key else ""
        panels.append((label_key, f"labels: {label_key}{auc}"))
    own = axs is None
    if own:
        # room between panels for each panel's colour bar / legend and the next one's tick labels (spatialdata-plot
        # attaches colour bars beside the axes, which layout engines do not see)
        fig, axs = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.8), gridspec_kw={"wspace": 0.6})
    axs = list(np.atleast_1d(axs))
    if len(axs) < len(panels):
        raise StmapInputError(f"Pass {len(panels)} axes (probability, call, labels), got {len(axs)}.")
    for ax, (color, title) in zip(axs, panels, strict=False):
        kw = {"cmap": "magma"} if color == f"{key}_prob" else {}
        spatial(sdata, color=color, table_key=ctx.table_key, image_key=image_key, size=size, ax=ax, title=title,
                coordinate_system=None if ctx.sdata is None else ctx.coordinate_system, show=False, **kw)  # fmt: skip
    fig = axs[0].figure
    return finish(fig, axs, own=own, save=save, show=show, return_ax=return_ax)
