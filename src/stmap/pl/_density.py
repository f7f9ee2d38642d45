"""Plots of density maps (:func:`stmap.tl.density`) and of density rankings (:func:`stmap.tl.rank_densities`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from stmap._core import Key, StmapInputError, image_grid, inject_docs, is_spatialdata, unknown_key
from stmap._core._params import Instance, Interval, Options, validate_params

from ._utils import PLOT_PARAMS, colorbar, data_limits, finish, panels, readable_factor, spatial_axes, wrap

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

__all__ = ["density", "density_ranking"]

#: Scores of :func:`stmap.tl.rank_densities` where lower is better.
_LOWER_IS_BETTER = ("js", "kl", "emd", "mse", "penalty")
#: A map is cropped to where it exceeds this fraction of its maximum (plus a margin); the grid is padded beyond.
_SUPPORT = 0.01


@validate_params(
    key=Instance((str,)),
    groups=[Instance((list, tuple)), None],
    z=[Options({"max", "sum"}), Interval(int, 0, None)],
    ncols=Interval(int, 1, None),
    **PLOT_PARAMS,
)
@inject_docs()
def density(
    sdata: SpatialData,
    *,
    key: str = Key.default.density,
    groups: Sequence[str] | None = None,
    z: int | Literal["max", "sum"] = "max",
    points_key: str | None = None,
    coordinate_system: str | None = None,
    ncols: int = 4,
    cmap: str = "magma",
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> np.ndarray | None:
    """Density maps, one panel per group (channel), cropped to where the densities are.

    Axes read micrometres and colour bars name the unit when the unit of the coordinate system is known:
    ``norm='density'`` maps (integral 1 per group) in 1/mm² (1/mm³ for a z slice or maximum of a 3D map),
    ``norm='counts'`` maps in points per (100 µm)²; otherwise in coordinate units, scaled by a power of ten that the
    label names. The values drawn are the maps' own; only the tick labels are converted.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` holding the density image.
    key
        ``key_added`` of :func:`stmap.tl.density`: the density image (and its ``.uns`` record).
    groups
        Channels to draw (default all).
    z
        For 3D maps: a z index, or ``'max'`` / ``'sum'`` projection along z.
    points_key
        Points element drawn on top (e.g. the cells the maps were estimated from), small grey dots.
    coordinate_system
        Coordinate system (default: the image's only one, or the tools' choice).
    ncols
        Panels per row.
    cmap
        Colormap.
    {plot}

    Returns
    -------
    {plot_returns}
    One panel per group, in ``groups`` order. ``sdata`` is not modified.
    """
    if not is_spatialdata(sdata):
        raise TypeError(f"sdata must be a SpatialData, got {type(sdata).__name__}.")
    el, cs = _density_image(sdata, key, coordinate_system)
    lo, step, shape, chans = image_grid(el, cs)
    names = [str(c) for c in chans]
    sel = names if groups is None else [str(g) for g in groups]
    for g in sel:
        if g not in names:
            raise unknown_key("Group", g, names, f"the channels of {key!r}")
    if len(shape) == 3 and not (z in ("max", "sum") or (isinstance(z, int | np.integer) and 0 <= z < shape[2])):
        raise StmapInputError(f"z must be 'max', 'sum' or an index in [0, {shape[2]}), got {z!r}.")
    pts = None
    if points_key is not None:
        from stmap._core import resolve_points

        pts = np.asarray(resolve_points(sdata, points_key=points_key, coordinate_system=cs, lazy=False).coords)
    arrays = [_panel_array(el.data[names.index(g)], z) for g in sel]
    x0, x1 = lo[0] - step[0] / 2, lo[0] + (shape[0] - 0.5) * step[0]
    extent = (x0, x1, lo[1] + (shape[1] - 0.5) * step[1], lo[1] - step[1] / 2)  # pixel edges, y down like images
    um = _um_per_unit(sdata, cs)
    factor, label = _density_unit(_norm_of(sdata, key), um, len(shape), z, float(step[-1]), arrays)

    limits = _support(arrays, lo, step, pts, extent)
    aspect = float(np.clip((limits[3] - limits[2]) / max(limits[1] - limits[0], 1e-9), 0.2, 5.0))
    # panels 4 in wide (axes ~2.6 in, tick labels and colour bar), as tall as the data's aspect asks: no empty bands
    panel = (4.0, 2.6 * aspect + 1.0)
    fig, axs, own = panels(ax, len(sel), ncols=ncols, panel=panel, figsize=figsize, dpi=dpi, what="groups")
    for a, g, arr in zip(axs, sel, arrays, strict=True):
        im = a.imshow(arr, extent=extent, cmap=cmap, origin="upper", interpolation="nearest")
        if pts is not None:
            a.scatter(pts[:, 0], pts[:, 1], s=0.5, c="0.7", alpha=0.4, linewidths=0)
        a.set_title(wrap(g))
        colorbar(fig, im, a, label, factor=factor)
        spatial_axes(a, um, limits)
    return finish(fig, axs, own=own, save=save, show=show, dpi=dpi)


def _density_image(sdata: Any, key: str, coordinate_system: str | None) -> tuple[Any, str]:
    """The density image and the coordinate system to draw it in (its own frame, else the tools' choice)."""
    from spatialdata.transformations import get_transformation

    if key not in sdata.images:
        raise unknown_key("Density image", key, sdata.images.keys(), "sdata.images", hint="Run st.tl.density.")
    el = sdata.images[key]
    css = list(get_transformation(el, get_all=True))
    cs = coordinate_system
    if cs is None:
        from stmap._core._platform import choose_coordinate_system

        cs = css[0] if len(css) == 1 else choose_coordinate_system(sdata, key, css, what="Image")
    if cs not in css:
        raise unknown_key("Coordinate system", cs, css, f"the transformations of {key!r}")
    return el, str(cs)


def _panel_array(arr: Any, z: Any) -> np.ndarray:
    """One group's map as ``(y, x)``: a 3D map's z slice or projection."""
    if arr.ndim == 3:
        arr = arr.max(axis=0) if z == "max" else arr.sum(axis=0) if z == "sum" else arr[int(z)]
    return np.asarray(arr.compute() if hasattr(arr, "compute") else arr)


def _um_per_unit(sdata: Any, cs: str) -> float | None:
    from stmap._core._platform import infer_units

    try:
        info = infer_units(sdata, cs)
    except StmapInputError:  # contradicting records: the tools say so where the unit is needed
        return None
    return None if info is None else float(info.um_per_unit)


def _norm_of(sdata: Any, key: str) -> str:
    """The ``norm`` recorded by :func:`stmap.tl.density` for the image ``key`` (default ``'density'``)."""
    for t in sdata.tables.values():
        info = t.uns.get(key)
        if isinstance(info, dict) and info.get("element", key) == key and "norm" in info:
            return str(info["norm"])
    return "density"


def _density_unit(
    norm: str, um: float | None, ndim: int, z: Any, z_step: float, arrays: list[np.ndarray]
) -> tuple[float, str]:
    """``(factor, label)`` of the colour bars: a drawn value times ``factor`` reads in the label's unit."""
    dims = 2 if ndim == 2 or z == "sum" else 3
    factor = z_step if ndim == 3 and z == "sum" and norm != "cells_per_voxel" else 1.0  # sum over z -> per area
    power = "²" if dims == 2 else "³"
    if norm == "cells_per_voxel":
        unit = "points per voxel" + (", summed over z" if ndim == 3 and z == "sum" else "")
    elif um is not None:
        factor *= (1e3 / um) ** dims if norm == "density" else (100.0 / um) ** dims
        unit = f"per mm{power}" if norm == "density" else f"points per (100 µm){power}"
    else:
        unit = f"per unit{power}" if norm == "density" else f"points per unit{power}"
    vmax = max((float(np.nanmax(a)) for a in arrays if a.size), default=0.0) * factor
    extra, prefix = (1.0, "") if 0.01 <= vmax < 1e4 else readable_factor(vmax)
    return factor * extra, f"density ({prefix}{unit})"


def _support(
    arrays: list[np.ndarray], lo: np.ndarray, step: np.ndarray, pts: np.ndarray | None, extent: Sequence[float]
) -> tuple[float, float, float, float]:
    """Limits around the nodes where any map exceeds :data:`_SUPPORT` of its maximum and the points, in the image."""
    mask = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        top = float(np.nanmax(a)) if a.size else 0.0
        if top > 0:
            mask |= a > _SUPPORT * top
    iy, ix = np.nonzero(mask)
    xy = np.column_stack([lo[0] + ix * step[0], lo[1] + iy * step[1]])
    if pts is not None:
        xy = np.concatenate([xy, pts[:, :2]])
    x0, x1, y1, y0 = extent  # image extent (y down)
    if not len(xy):
        return x0, x1, y0, y1
    lim = data_limits(xy, float(max(abs(step[0]), abs(step[1]))) / 2)
    return max(lim[0], x0), min(lim[1], x1), max(lim[2], y0), min(lim[3], y1)


# --------------------------------------------------------------------------------------------------------------------
# ranking


@validate_params(
    key=Instance((str,)),
    queries=[Instance((list, tuple)), None],
    score=[Instance((str,)), None],
    top=Interval(int, 1, None),
    **PLOT_PARAMS,
)
@inject_docs()
def density_ranking(
    sdata: SpatialData | pd.DataFrame,
    *,
    key: str = Key.default.density_ranking,
    queries: Sequence[str] | None = None,
    score: str | None = None,
    top: int = 10,
    table_key: str | None = None,
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> np.ndarray | None:
    """Best-ranked reference classes for each query population, as horizontal bars of the ranking score.

    One panel per query, stacked, with the class names on the y axis (the best at the top, read in full), the score
    on the x axis and its value at the end of each bar. Scores spanning more than two orders of magnitude (e.g.
    ``cellmap2d``'s ``1 / (mse + penalty)``) are drawn on a log axis.

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
    {plot}

    Returns
    -------
    {plot_returns}
    One panel per query. ``sdata`` is not modified.
    """
    ranking, method = _ranking(sdata, key, table_key)
    col = score or "score"
    if col not in ranking.columns:
        raise unknown_key("Score", col, [c for c in ranking.columns if c not in ("query", "class")], "the ranking")
    query_col = ranking["query"].astype(str)
    qs = list(dict.fromkeys(query_col)) if queries is None else [str(q) for q in queries]
    for q in qs:
        if q not in set(query_col):
            raise unknown_key("Query", q, query_col.unique(), "the ranking")
    higher = col not in _LOWER_IS_BETTER
    label = (col if col != "score" or method is None else f"{method} score") + ("" if higher else " (lower is better)")

    rows = min(top, int(max(query_col.value_counts().reindex(qs).fillna(0).max(), 1)))
    fig, axs, own = panels(ax, len(qs), panel=(6.4, 0.3 * rows + 1.0), figsize=figsize, dpi=dpi, what="queries")
    for a, q in zip(axs, qs, strict=True):
        sub = ranking[query_col == q].sort_values(col, ascending=not higher, na_position="last").head(top)
        _bars(a, sub["class"].astype(str).tolist(), sub[col].to_numpy(dtype=float))
        a.set_xlabel(label)
        a.set_title(wrap(f"query {q}", 60))
    return finish(fig, axs, own=own, save=save, show=show, dpi=dpi)


def _ranking(sdata: Any, key: str, table_key: str | None) -> tuple[pd.DataFrame, str | None]:
    """The ranking DataFrame and its method (``None`` for a DataFrame given directly)."""
    import pandas as pd

    if isinstance(sdata, pd.DataFrame):
        return sdata, None
    if not is_spatialdata(sdata):
        raise TypeError(f"sdata must be a SpatialData or a ranking DataFrame, got {type(sdata).__name__}.")
    if table_key is None:
        table_key = next((k for k, t in sdata.tables.items() if key in t.uns), None)
        if table_key is None:
            raise StmapInputError(f"No table has .uns[{key!r}]; run `st.tl.rank_densities(..., key_added={key!r})`.")
    elif table_key not in sdata.tables:
        raise unknown_key("Table", table_key, sdata.tables.keys(), "sdata.tables")
    info = sdata.tables[table_key].uns.get(key)
    if not isinstance(info, dict) or "ranking" not in info:
        raise StmapInputError(f"tables[{table_key!r}].uns[{key!r}] holds no ranking; run st.tl.rank_densities.")
    return info["ranking"], info.get("method")


def _bars(ax: Axes, names: list[str], vals: np.ndarray) -> None:
    """Horizontal bars, first row at the top, values written at the bar ends; a log axis for wide ranges."""
    from matplotlib.ticker import NullFormatter

    y = np.arange(len(vals))
    finite = vals[np.isfinite(vals)]
    log = finite.size > 0 and bool((finite > 0).all()) and float(finite.max() / finite.min()) > 100
    base = 10.0 ** np.floor(np.log10(finite.min())) / 2 if log else 0.0
    bars = ax.barh(y, np.where(np.isfinite(vals), vals - base, 0.0), left=base, color="tab:blue", height=0.7)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], padding=3, fontsize="small")
    ax.set_yticks(y, names)
    ax.set_ylim(len(vals) - 0.5, -0.5)  # best at the top
    if log:
        ax.set_xscale("log")
        ax.set_xlim(base, float(finite.max()) * 20)  # room for the value labels
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        lo, hi = min(0.0, float(finite.min(initial=0.0))), max(0.0, float(finite.max(initial=0.0)))
        pad = 0.18 * (hi - lo if hi > lo else 1.0)
        ax.set_xlim(lo - (pad if lo < 0 else 0.0), hi + pad)
    ax.spines[["top", "right"]].set_visible(False)
