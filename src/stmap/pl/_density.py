"""Plots of density maps (:func:`stmap.tl.density`) and of density rankings (:func:`stmap.tl.rank_densities`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stmap._core import StmapInputError, image_grid, is_spatialdata, unknown_key

__all__ = ["density", "density_ranking"]


def _finish(fig: Any, save: str | Path | None, show: bool | None, return_fig: bool) -> Any:
    import matplotlib.pyplot as plt

    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show or (show is None and not return_fig):
        plt.show()
    if return_fig:
        return fig
    if not show and show is not None:
        plt.close(fig)
    return None


def density(
    sdata: Any,
    image_key: str = "stmap_density",
    *,
    groups: Sequence[str] | None = None,
    z: int | Literal["max", "sum"] = "max",
    points_key: str | None = None,
    coordinate_system: str | None = None,
    ncols: int = 4,
    panel_size: float = 3.0,
    cmap: str = "magma",
    save: str | Path | None = None,
    return_fig: bool = False,
    show: bool | None = None,
):
    """Density maps, one panel per group (channel), in coordinate-system units.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` holding the density image.
    image_key
        Density image written by :func:`stmap.tl.density` (its ``key_added``).
    groups
        Channels to draw (default all).
    z
        For 3D maps: a z index, or ``'max'`` / ``'sum'`` projection along z.
    points_key
        Points element drawn on top (e.g. the cells the maps were estimated from), small grey dots.
    coordinate_system
        Coordinate system (default: the image's only one, or ``'global'``).
    ncols
        Panels per row.
    panel_size
        Size of one panel in inches.
    cmap
        Colormap.
    save
        File to write the figure to.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.
    show
        Show the figure; default unless ``return_fig``.

    Returns
    -------
    The figure if ``return_fig=True``, else ``None``. ``sdata`` is not modified.
    """
    import matplotlib.pyplot as plt
    from spatialdata.transformations import get_transformation

    if not is_spatialdata(sdata):
        raise TypeError(f"sdata must be a SpatialData, got {type(sdata).__name__}.")
    if image_key not in sdata.images:
        raise unknown_key("Density image", image_key, sdata.images.keys(), "sdata.images", hint="Run st.tl.density.")
    el = sdata.images[image_key]
    css = list(get_transformation(el, get_all=True))
    if coordinate_system is None:  # the grid's own frame (a density image has one), else the tools' choice
        from stmap._core._platform import choose_coordinate_system

        coordinate_system = css[0] if len(css) == 1 else choose_coordinate_system(sdata, image_key, css, what="Image")
    cs = coordinate_system
    if cs not in css:
        raise unknown_key("Coordinate system", cs, css, f"the transformations of {image_key!r}")
    lo, step, shape, chans = image_grid(el, cs)
    names = [str(c) for c in chans]
    sel = names if groups is None else [str(g) for g in groups]
    for g in sel:
        if g not in names:
            raise unknown_key("Group", g, names, f"the channels of {image_key!r}")
    if len(shape) == 3 and not (z in ("max", "sum") or (isinstance(z, int | np.integer) and 0 <= z < shape[2])):
        raise StmapInputError(f"z must be 'max', 'sum' or an index in [0, {shape[2]}), got {z!r}.")
    pts = None
    if points_key is not None:
        from stmap._core import resolve_points

        pts = np.asarray(resolve_points(sdata, points_key=points_key, coordinate_system=cs, lazy=False).coords)
    extent = (lo[0] - step[0] / 2, lo[0] + (shape[0] - 0.5) * step[0], lo[1] + (shape[1] - 0.5) * step[1])
    extent = (*extent[:2], extent[2], lo[1] - step[1] / 2)  # y down, like images
    n = len(sel)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.25 * panel_size * ncols, panel_size * nrows), squeeze=False, layout="constrained"
    )
    data = el.data
    for ax, g in zip(axes.ravel(), sel, strict=False):
        arr = data[names.index(g)]  # (y, x) or (z, y, x)
        if arr.ndim == 3:
            arr = arr.max(axis=0) if z == "max" else arr.sum(axis=0) if z == "sum" else arr[int(z)]
        arr = np.asarray(arr.compute() if hasattr(arr, "compute") else arr)
        im = ax.imshow(arr, extent=extent, cmap=cmap, origin="upper", interpolation="nearest")
        if pts is not None:
            ax.scatter(pts[:, 0], pts[:, 1], s=0.5, c="0.7", alpha=0.4, linewidths=0)
        ax.set_title(g)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return _finish(fig, save, show, return_fig)


def density_ranking(
    sdata: Any,
    key: str = "stmap_density_ranking",
    *,
    queries: Sequence[str] | None = None,
    score: str | None = None,
    top: int = 10,
    table_key: str | None = None,
    panel_size: float = 3.5,
    save: str | Path | None = None,
    return_fig: bool = False,
    show: bool | None = None,
):
    """Best-ranked reference classes for each query population, as horizontal bars of the ranking score.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with a ranking in some table's ``.uns[key]``, or the ranking DataFrame
        returned by :func:`stmap.tl.rank_densities` with ``sdata=None``.
    key
        ``key_added`` of :func:`stmap.tl.rank_densities`.
    queries
        Query populations to draw (default all).
    score
        Column drawn (default: the ranking's method, ``score``); e.g. ``'mixture'`` or ``'pearson'``.
    top
        Classes per query.
    table_key
        Table holding the ranking (default: the one whose ``.uns`` has ``key``).
    panel_size
        Size of one panel in inches.
    save
        File to write the figure to.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.
    show
        Show the figure; default unless ``return_fig``.

    Returns
    -------
    The figure if ``return_fig=True``, else ``None``. ``sdata`` is not modified.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    if isinstance(sdata, pd.DataFrame):
        ranking, method = sdata, None
    else:
        if not is_spatialdata(sdata):
            raise TypeError(f"sdata must be a SpatialData or a ranking DataFrame, got {type(sdata).__name__}.")
        if table_key is None:
            table_key = next((k for k, t in sdata.tables.items() if key in t.uns), None)
            if table_key is None:
                raise StmapInputError(
                    f"No table has .uns[{key!r}]; run `st.tl.rank_densities(..., key_added={key!r})`."
                )
        elif table_key not in sdata.tables:
            raise unknown_key("Table", table_key, sdata.tables.keys(), "sdata.tables")
        info = sdata.tables[table_key].uns.get(key)
        if not isinstance(info, dict) or "ranking" not in info:
            raise StmapInputError(f"tables[{table_key!r}].uns[{key!r}] holds no ranking; run st.tl.rank_densities.")
        ranking, method = info["ranking"], info.get("method")
    col = score or "score"
    if col not in ranking.columns:
        raise unknown_key("Score", col, [c for c in ranking.columns if c not in ("query", "class")], "the ranking")
    qs = list(dict.fromkeys(ranking["query"].astype(str))) if queries is None else [str(q) for q in queries]
    for q in qs:
        if q not in set(ranking["query"].astype(str)):
            raise unknown_key("Query", q, ranking["query"].astype(str).unique(), "the ranking")
    higher = col not in ("js", "kl", "emd", "mse", "penalty")
    fig, axes = plt.subplots(
        1, len(qs), figsize=(panel_size * len(qs), max(2.0, 0.3 * top + 1)), squeeze=False, layout="constrained"
    )
    for ax, q in zip(axes.ravel(), qs, strict=True):
        sub = ranking[ranking["query"].astype(str) == q]
        sub = sub.sort_values(col, ascending=not higher, na_position="last").head(top)
        vals = sub[col].to_numpy(dtype=float)
        ax.barh(np.arange(len(sub))[::-1], vals, color="tab:blue")
        ax.set_yticks(np.arange(len(sub))[::-1], sub["class"].astype(str))
        label = col if col != "score" or method is None else f"{method} score"
        ax.set_xlabel(label + ("" if higher else " (lower is better)"))
        if (col == "cellmap2d" or (col == "score" and method == "cellmap2d")) and (vals > 0).all():
            ax.set_xscale("log")  # 1 / (mse + penalty) spans orders of magnitude
        ax.set_title(f"query {q}")
    return _finish(fig, save, show, return_fig)
