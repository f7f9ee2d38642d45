"""Plot cancer tissue region detection: score and call over the H&E, with the known labels if present."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core._constants import Key
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError
from stmap._core._params import Instance, Interval, validate_params

from ._utils import PLOT_PARAMS, data_limits, finish, panels

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

__all__ = ["ctr"]


@validate_params(
    key=Instance((str,)),
    label_key=[Instance((str,)), None],
    size=[Interval(float, 0, None, "neither"), None],
    ncols=Interval(int, 1, None),
    **PLOT_PARAMS,
)
@inject_docs()
def ctr(
    sdata: SpatialData | AnnData,
    *,
    key: str = Key.default.ctr,
    table_key: str | None = None,
    label_key: str | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    size: float | None = None,
    ncols: int = 2,
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> np.ndarray | None:
    """Cancer probability, CTR call and (when known) the reference labels, side by side over the H&E.

    Parameters
    ----------
    {sdata}
    key
        ``key_added`` of :func:`stmap.tl.detect_ctr`: the probability ``obs[Key.ctr(key).prob]`` and the call
        ``obs[key]`` are drawn.
    {table_key}
    label_key
        ``obs`` column with reference labels; default: the ``label_key`` recorded by ``detect_ctr`` (if any).
    image_key
        Image drawn below the spots (``False``: none); see :func:`stmap.pl.spatial`.
    coordinate_system
        Coordinate system to draw in; default: the one the tools choose (see :func:`stmap.pl.spatial`).
    size
        Spot size (see :func:`stmap.pl.spatial`).
    ncols
        Panels per row; the default of two keeps the figure narrow enough for a page column (the labels panel goes
        to a second row).
    {plot}

    Returns
    -------
    {plot_returns}
    The panels are the probability, the call and the labels (when there are labels).
    """
    from stmap._core._resolve import resolve

    from ._spatial import draw

    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    keys = Key.ctr(key)
    table = ctx.adata
    if keys.prob not in table.obs or keys.call not in table.obs:
        raise StmapInputError(
            f"Table {ctx.table_key!r} has no obs[{keys.prob!r}] / obs[{keys.call!r}]; run `st.tl.detect_ctr` first "
            "(or pass its `key_added` as `key=`)."
        )
    meta = table.uns.get(key, {}) or {}
    metrics = meta.get("metrics") or {}
    label_key = metrics.get("label_key") if label_key is None else label_key
    if label_key is not None and label_key not in table.obs:
        raise StmapInputError(f"Label column {label_key!r} is not in obs of table {ctx.table_key!r}.")
    panel_list = _panels(keys.prob, keys.call, label_key, meta, metrics)

    what = "probability, call, labels"
    lim = data_limits(ctx.coords)
    aspect = float(np.clip((lim[3] - lim[2]) / max(lim[1] - lim[0], 1e-9), 0.2, 5.0))
    panel = (4.6, 3.0 * aspect + 1.0)  # axes ~3 in wide beside a legend, as tall as the data: no empty bands
    fig, axs, own = panels(ax, len(panel_list), ncols=ncols, panel=panel, figsize=figsize, dpi=dpi, what=what)
    for a, (color, title, kw) in zip(axs, panel_list, strict=True):
        draw(a, ctx, color, image_key=image_key, size=size, title=title, **kw)
    return finish(fig, axs, own=own, save=save, show=show, dpi=dpi)


def _panels(
    prob: str, call: str, label_key: str | None, meta: dict[str, Any], metrics: dict[str, Any]
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(obs column, title, drawing options)`` of each panel."""
    out = [
        (prob, "cancer probability", {"cmap": "magma", "label": "probability"}),
        (call, f"CTR call (threshold {meta.get('threshold', np.nan):.2f})", {}),
    ]
    if label_key is not None:
        scored = "roc_auc" in metrics and metrics.get("label_key") == label_key
        auc = f", ROC-AUC {metrics['roc_auc']:.3f}" if scored else ""
        out.append((label_key, f"labels: {label_key}{auc}", {}))
    return out
