"""Spots, cells and points over the H&E image, coloured by an annotation or a gene."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError, unknown_key
from stmap._core._params import Instance, Interval, validate_params

from ._utils import PLOT_PARAMS, colorbar, data_limits, finish, panels, quiet_rendering, spatial_axes, wrap

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from spatialdata import SpatialData

    from stmap._core._resolve import TableContext

__all__ = ["spatial"]

#: Colour of missing values (NaN categories and values), in the spots and in the legend.
NA_COLOR = "lightgrey"

_spatial_docs = {
    "color": """\
color
    Column of the table's ``obs`` or gene in its ``var_names`` to colour the spots/cells by. ``None`` draws them
    in one colour.""",
    "palette": """\
palette
    Colours of a categorical ``color``: a mapping category -> colour, a sequence (in category order) or the name
    of a matplotlib colormap. It is stored in ``table.uns[f'{color}_colors']`` (scanpy convention). When ``None``,
    an existing palette there is reused, or scanpy's default palette for that many categories is stored
    (``default_20``, ``default_28`` or ``default_102``). Only the categories present are drawn and listed.""",
    "cmap": """\
cmap
    Colormap of a continuous ``color`` (obs column or gene). Defaults to matplotlib's ``'viridis'``.""",
    "size": """\
size
    Scale of the markers: for circles and polygons a factor on their true size (``1`` draws spots with their
    measured diameter); for points and plain :class:`~anndata.AnnData` the marker area in points².""",
    "title": """\
title
    Axes title; defaults to ``color``.""",
}

_SPATIAL_PARAMS = {
    "color": [Instance((str,)), None],
    "size": [Interval(float, 0, None, "neither"), None],
    "title": [Instance((str,)), None],
    **PLOT_PARAMS,
}


@validate_params(**_SPATIAL_PARAMS)
@inject_docs(**_spatial_docs)
def spatial(
    sdata: SpatialData | AnnData,
    *,
    color: str | None = None,
    table_key: str | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    palette: Mapping[str, Any] | Sequence[Any] | str | None = None,
    cmap: Colormap | str | None = None,
    size: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Draw the tissue image and the spots/cells of a table, coloured by an annotation or a gene.

    The table's annotated element (circles, polygons, points or labels, read from
    ``table.uns['spatialdata_attrs']['region']``) is drawn over the image of the same coordinate system with
    :mod:`spatialdata_plot`, so sizes and positions are the measured ones. The view is cropped to the spots/cells
    (plus a small margin) and the axes read micrometres when the unit of the coordinate system is known
    (:func:`stmap.pp.coordinate_units`). Categories get a legend beside the axes, continuous values a colour bar.

    Parameters
    ----------
    {sdata}
    {color}
    {table_key}
    image_key
        Image element drawn below the spots. ``None`` picks the image in ``coordinate_system`` (preferring an
        RGB one when there are several); ``False`` draws no image. For a plain :class:`~anndata.AnnData`:
        ``'hires'`` or ``'lowres'`` of the legacy ``uns['spatial']`` images (default: the finest there is).
    coordinate_system
        Coordinate system to draw in; default: the one the tools choose (``'global'``, else the element's
        full-resolution frame shared with the image, e.g. a Visium sample's ``'<id>'``).
    {palette}
    {cmap}
    {size}
    {title}
    {plot}

    Returns
    -------
    {plot_returns}
    Nothing in ``sdata`` is changed except ``table.uns[f'{color}_colors']`` for a categorical ``color``.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.her2st("C2")  # doctest: +SKIP
    >>> st.pl.spatial(sdata, color="cancer")  # doctest: +SKIP
    """
    from anndata import AnnData

    from stmap._core._resolve import resolve

    ctx = resolve(sdata, table_key, coordinate_system=None if isinstance(sdata, AnnData) else coordinate_system)
    _color_kind(ctx.adata, color)  # raises before anything is drawn or touched
    fig, axs, own = panels(ax, 1, panel=(6.4, 5.6), figsize=figsize, dpi=dpi)
    draw(axs[0], ctx, color, image_key=image_key, palette=palette, cmap=cmap, size=size, title=title)
    return finish(fig, axs[0], own=own, save=save, show=show, dpi=dpi)


def draw(
    ax: Axes,
    ctx: TableContext,
    color: str | None,
    *,
    image_key: str | bool | None = None,
    palette: Any = None,
    cmap: Any = None,
    size: float | None = None,
    title: str | None = None,
    label: str | None = None,
) -> None:
    """Draw one panel of :func:`spatial` for a resolved table: image, spots, legend or colour bar, µm axes, crop.

    ``label`` names the colour bar of a continuous ``color`` (default: ``color``).
    """
    table = ctx.adata
    kind = _color_kind(table, color)
    colors = _ensure_palette(table, color, palette) if kind == "categorical" and color is not None else None
    cmap = cmap if cmap is not None else "viridis"
    norm = _norm(table, color) if kind in ("continuous", "gene") else None
    if ctx.sdata is None:
        _legacy_image(ctx, image_key, ax)
        _scatter_anndata(table, color, kind, colors, cmap=cmap, norm=norm, size=size, ax=ax)
    else:
        _render_spatialdata(ctx, color, kind, image_key=image_key, cmap=cmap, norm=norm, size=size, ax=ax)
    ax.set_title(wrap((color or "") if title is None else title))
    if kind == "categorical" and color is not None and colors is not None:
        _legend(ax, table, color, colors)
    elif norm is not None:
        from matplotlib.cm import ScalarMappable

        colorbar(ax.get_figure(), ScalarMappable(norm=norm, cmap=cmap), ax, label if label is not None else str(color))
    diam = ctx.diameters if ctx.element_type == "shapes" or ctx.sdata is None else None
    radius = None if diam is None else np.asarray(diam, dtype=float) / 2 * (1.0 if size is None else float(size))
    spatial_axes(ax, um_per_unit(ctx), data_limits(ctx.coords, radius))


def um_per_unit(ctx: TableContext) -> float | None:
    """Micrometres per coordinate unit of a resolved table; ``None`` when unknown or contradicted (tools say so)."""
    try:
        return ctx.um_per_unit
    except StmapInputError:
        return None


# --------------------------------------------------------------------------------------------------------------------
# images


def _pick_image(sdata: SpatialData, image_key: str | bool | None, cs: str) -> str | None:
    from spatialdata.transformations import get_transformation

    if image_key is False:
        return None
    if isinstance(image_key, str):
        if image_key not in sdata.images:
            raise unknown_key("Image", image_key, sdata.images, where="sdata.images")
        if cs not in get_transformation(sdata.images[image_key], get_all=True):
            raise StmapInputError(f"Image {image_key!r} is not in coordinate system {cs!r}.")
        return image_key
    in_cs = [n for n, im in sdata.images.items() if cs in get_transformation(im, get_all=True)]
    if len(in_cs) <= 1:
        return in_cs[0] if in_cs else None
    from stmap._core._resolve import choose_image

    try:  # the image the tools use: a photograph at the finest resolution
        return choose_image(sdata, in_cs, cs)
    except StmapInputError:
        rgb = [n for n in in_cs if _n_channels(sdata.images[n]) == 3]
        pick = (rgb or in_cs)[0]
        logg.info(f"drawing image {pick!r} of {in_cs}; pass `image_key=` to choose another")
        return pick


def _n_channels(image: Any) -> int:
    if hasattr(image, "sizes") and "c" in getattr(image, "sizes", {}):
        return int(image.sizes["c"])
    first = next(iter(image.children.values()))  # multiscale DataTree: scale0
    return int(next(iter(first.data_vars.values())).sizes["c"])


# --------------------------------------------------------------------------------------------------------------------
# colours


def _color_kind(table: AnnData, color: str | None) -> str | None:
    """``None``, ``'categorical'``, ``'continuous'`` or ``'gene'``; raises for unknown keys."""
    if color is None:
        return None
    if color in table.obs.columns:
        col = table.obs[color]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        return "continuous" if numeric and not isinstance(col.dtype, pd.CategoricalDtype) else "categorical"
    if color in table.var_names:
        return "gene"
    raise unknown_key(
        "Color key",
        color,
        table.obs.columns,
        where="table.obs",
        hint=f"Genes are looked up in the table's var_names ({table.n_vars} genes, e.g. "
        + ", ".join(repr(g) for g in list(table.var_names[:3]))
        + ").",
    )


def _categories(table: AnnData, key: str) -> list[str]:
    col = table.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories]
    return sorted(map(str, pd.unique(col.dropna())))


def _present(table: AnnData, key: str) -> list[str]:
    """The categories of ``obs[key]`` that occur, in category order."""
    seen = set(table.obs[key].dropna().astype(str))
    return [c for c in _categories(table, key) if c in seen]


def _values(table: AnnData, color: str) -> np.ndarray:
    """Values of a continuous obs column or a gene, as float."""
    if color in table.obs.columns:
        return table.obs[color].to_numpy(dtype=float, na_value=np.nan)
    v = table[:, [color]].X
    return np.asarray(v.toarray() if hasattr(v, "toarray") else v, dtype=float).ravel()


def _norm(table: AnnData, color: str | None) -> Any:
    """The colour scale of a continuous ``color``: the range of its finite values."""
    from matplotlib.colors import Normalize

    v = _values(table, str(color))
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    return Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-12)


def _ensure_palette(table: AnnData, key: str, palette: Any) -> list[str]:
    """Store (or reuse) ``table.uns[f'{key}_colors']`` as hex colours in category order and return it."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, to_hex

    cats = _categories(table, key)
    ukey = Key.colors(key)
    n = len(cats)
    if palette is None:
        existing = table.uns.get(ukey)
        if existing is not None and len(existing) >= n:
            return [to_hex(c, keep_alpha=True) if not isinstance(c, str) else c for c in list(existing)[:n]]
        from scanpy.plotting import palettes

        pool = palettes.default_20 if n <= 20 else palettes.default_28 if n <= 28 else palettes.default_102
        colors = [to_hex(c) for c in pool[:n]] if n <= len(pool) else ["#808080"] * n
    elif isinstance(palette, Mapping):
        by_name = {str(k): v for k, v in palette.items()}  # categories are compared as strings (e.g. True -> "True")
        missing = [c for c in cats if c not in by_name]
        if missing:
            raise StmapInputError(f"`palette` has no colour for categories {missing} of {key!r}.")
        colors = [to_hex(by_name[c]) for c in cats]
    elif isinstance(palette, str) and palette in colormaps:
        cm = colormaps[palette]
        if isinstance(cm, ListedColormap) and cm.N < 256:
            colors = [to_hex(cm(i % cm.N)) for i in range(n)]
        else:
            colors = [to_hex(cm(x)) for x in np.linspace(0, 1, max(n, 1))]
    elif isinstance(palette, str):
        raise StmapInputError(f"`palette` {palette!r} is not a matplotlib colormap; pass a list or a mapping.")
    else:
        seq = list(palette)
        if len(seq) < n:
            raise StmapInputError(f"`palette` has {len(seq)} colours but {key!r} has {n} categories.")
        colors = [to_hex(c) for c in seq[:n]]
    table.uns[ukey] = np.array(colors, dtype=object)
    return colors


def _legend(ax: Axes, table: AnnData, key: str, colors: list[str]) -> None:
    """A legend of the categories present (and NA when some are missing) beside the axes, seen by the layout."""
    from matplotlib.lines import Line2D

    by_cat = dict(zip(_categories(table, key), colors, strict=True))
    present = _present(table, key)
    entries = [(c, by_cat[c]) for c in present] + ([("NA", NA_COLOR)] if table.obs[key].isna().any() else [])
    handles = [Line2D([], [], ls="", marker="o", markersize=7, color=col, label=cat) for cat, col in entries]
    ax.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
        frameon=False,
        ncols=1 if len(entries) <= 18 else 2 if len(entries) <= 36 else 3,
        fontsize="small",
        handletextpad=0.2,
        borderaxespad=0.0,
    )


# --------------------------------------------------------------------------------------------------------------------
# drawing


def _render_spatialdata(
    ctx: TableContext,
    color: str | None,
    kind: str | None,
    *,
    image_key: str | bool | None,
    cmap: Any,
    norm: Any,
    size: float | None,
    ax: Axes,
) -> None:
    """Draw the image and the table's element with spatialdata-plot.

    No legend or colour bar: :func:`draw` adds them where the layout engine sees them.
    """
    import spatialdata_plot  # noqa: F401  (registers the `.pl` accessor)
    from spatialdata import SpatialData

    sdata, cs = ctx.sdata, ctx.coordinate_system
    assert sdata is not None and ctx.region is not None and ctx.element_type is not None and ctx.table_key is not None
    etype, name, table_name = str(ctx.element_type), ctx.region, ctx.table_key
    if etype not in ("shapes", "points", "labels"):  # a table annotating an image is not a plottable layout
        raise StmapInputError(f"Table {table_name!r} annotates image {name!r}; cannot draw spots for it.")
    image = _pick_image(sdata, image_key, cs)
    # spatialdata-plot is given a slim SpatialData that shares the elements but holds a slim copy of the table (only
    # the colour column / gene): it then cannot change the user's table (it may write palettes or cast columns), and
    # it does not have to index a large expression matrix.
    elements: dict[str, dict[str, Any]] = {"images": {}, "shapes": {}, "points": {}, "labels": {}}
    if image is not None:
        elements["images"][image] = sdata.images[image]
    elements[etype][name] = _without_column(getattr(sdata, etype)[name], color if kind is not None else None)
    slim = SpatialData(**elements, tables={table_name: _slim_table(ctx.adata, color, kind)})

    color_arg = color if kind is not None else None
    kw: dict[str, Any] = {"colorbar": False, "na_color": NA_COLOR}
    if color_arg is not None:
        kw["table_name"] = table_name
    if norm is not None:
        kw.update(cmap=cmap, norm=norm)
    with quiet_rendering():
        pl = slim.pl if image is None else slim.pl.render_images(image, colorbar=False).pl
        if etype == "shapes":
            # Without a colour key spatialdata-plot draws a fixed grey; keep it so, but opaque enough over H&E.
            pl = pl.render_shapes(name, color=color_arg, fill_alpha=1.0, scale=1.0 if size is None else size, **kw).pl
        elif etype == "points":
            pl = pl.render_points(name, color=color_arg, size=4.0 if size is None else float(size), **kw).pl
        else:
            pl = pl.render_labels(name, color=color_arg, **kw).pl
        pl.show(coordinate_systems=cs, ax=ax, title="", show=False, colorbar=False, legend_loc=None)


def _without_column(element: Any, column: str | None) -> Any:
    """The element without a column named like the colour key (else spatialdata-plot refuses the ambiguous key)."""
    if column is None or not hasattr(element, "columns") or column not in element.columns:
        return element
    out = element[[c for c in element.columns if c != column]]
    out.attrs.update(element.attrs)  # transformations and spatialdata metadata
    return out


def _slim_table(table: AnnData, color: str | None, kind: str | None) -> AnnData:
    """The table's index, region columns and colour column only; a categorical colour keeps the categories present.

    Categories without any row are dropped, with their colours: anndata trims ``uns['<key>_colors']`` of unused
    categories when spatialdata-plot subsets the table, which would shift every colour after the first unused one.
    """
    from anndata import AnnData

    obs = table.obs.copy()
    uns: dict[str, Any] = {Key.uns.spatialdata_attrs: dict(table.uns[Key.uns.spatialdata_attrs])}
    if kind == "gene":
        x = table[:, [color]].X
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        out = AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[color]))
    else:
        out = AnnData(obs=obs)
    if kind == "categorical" and color is not None:
        by_cat = dict(zip(_categories(table, color), table.uns[Key.colors(color)], strict=False))
        present = _present(table, color)
        out.obs[color] = pd.Categorical(table.obs[color].astype("string").astype(object), categories=present)
        uns[Key.colors(color)] = [by_cat[c] for c in present]
    out.uns.update(uns)
    return out


def _legacy_image(ctx: Any, image_key: str | bool | None, ax: Axes) -> None:
    """Draw a legacy ``uns['spatial'][library]['images']`` image (scanpy/squidpy Visium layout), if there is one."""
    if image_key is False or not isinstance(ctx.adata.uns.get(Key.uns.spatial), dict):
        return
    try:
        img = ctx.image(image_key if isinstance(image_key, str) else None, check_alignment=False)
    except StmapInputError:
        if isinstance(image_key, str):
            raise
        return  # no usable image: spots only
    level = len(img.levels) - 1  # coarsest: a figure needs no more pixels
    arr = np.moveaxis(np.asarray(img.levels[level]), 0, -1)
    arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :4]
    xmin, xmax, ymin, ymax = img.extent(level)
    ax.imshow(arr, extent=(xmin, xmax, ymax, ymin), cmap="gray" if arr.ndim == 2 else None, zorder=0)


def _scatter_anndata(
    adata: AnnData,
    color: str | None,
    kind: str | None,
    colors: list[str] | None,
    *,
    cmap: Any,
    norm: Any,
    size: Any,
    ax: Axes,
) -> None:
    """Plain AnnData: a scatter of ``obsm['spatial']``, one collection per category (legend drawn by the caller).

    Plain matplotlib, because spatialdata-plot draws SpatialData only; converting the AnnData first would copy it.
    """
    xy = np.asarray(adata.obsm[Key.obsm.spatial])[:, :2]
    s = min(120000 / max(adata.n_obs, 1), 200.0) if size is None else float(size)
    if kind is None or color is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=s, c=NA_COLOR, edgecolors="none")
    elif kind == "categorical":
        values = adata.obs[color].astype("string").to_numpy(dtype=object, na_value=None)
        for cat, col in zip(_categories(adata, color), colors or [], strict=True):
            m = values == cat
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=s, color=col, edgecolors="none", label=cat)
        na = pd.isna(adata.obs[color]).to_numpy()
        if na.any():
            ax.scatter(xy[na, 0], xy[na, 1], s=s, color=NA_COLOR, edgecolors="none", label="NA")
    else:
        from matplotlib import colormaps

        cm = (colormaps[cmap] if isinstance(cmap, str) else cmap).with_extremes(bad=NA_COLOR)
        v = np.ma.masked_invalid(_values(adata, color))
        ax.scatter(xy[:, 0], xy[:, 1], s=s, c=v, cmap=cm, norm=norm, edgecolors="none", plotnonfinite=True)
