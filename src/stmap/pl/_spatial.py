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

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from spatialdata import SpatialData

__all__ = ["spatial"]

_spatial_docs = {
    "color": """\
color
    Column of the table's ``obs`` or gene in its ``var_names`` to colour the spots/cells by. ``None`` draws them
    in one colour.""",
    "palette": """\
palette
    Colours of a categorical ``color``: a mapping category -> colour, a sequence (in category order) or the name
    of a matplotlib colormap. It is stored in ``table.uns[f'{color}_colors']`` (scanpy convention). When ``None``,
    an existing palette there is reused, or scanpy's default palette is stored.""",
    "plot_common": """\
cmap
    Colormap of a continuous ``color`` (obs column or gene). Defaults to matplotlib's ``'viridis'``.
size
    Scale of the markers: for circles and polygons a factor on their true size (``1`` draws spots with their
    measured diameter); for points and plain :class:`~anndata.AnnData` the marker area in points².
ax
    Axes to draw into; a new figure is made when ``None``.
title
    Axes title; defaults to ``color``.
save
    Path of a file to write the figure to (the format follows the suffix, e.g. ``.png``, ``.pdf``).
return_ax
    Return the :class:`~matplotlib.axes.Axes`.
show
    Show the figure. ``None`` shows it unless ``ax`` is given or ``return_ax=True``.""",
}


@inject_docs(**_spatial_docs)
def spatial(
    sdata: SpatialData | AnnData,
    color: str | None = None,
    *,
    table_key: str | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    palette: Mapping[str, Any] | Sequence[Any] | str | None = None,
    cmap: Colormap | str | None = None,
    size: float | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    save: str | Path | None = None,
    return_ax: bool = False,
    show: bool | None = None,
) -> Axes | None:
    """Draw the tissue image and the spots/cells of a table, coloured by an annotation or a gene.

    The table's annotated element (circles, polygons, points or labels, read from
    ``table.uns['spatialdata_attrs']['region']``) is drawn over the image of the same coordinate system with
    :mod:`spatialdata_plot`, so sizes and positions are the measured ones in the coordinate system's units.

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
    {plot_common}

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` if ``return_ax=True``, else ``None``. Nothing in ``sdata`` is changed
    except ``table.uns[f'{color}_colors']`` for a categorical ``color``.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.her2st("C2")  # doctest: +SKIP
    >>> st.pl.spatial(sdata, color="cancer")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from anndata import AnnData

    from stmap._core._resolve import resolve

    ctx = resolve(sdata, table_key, coordinate_system=None if isinstance(sdata, AnnData) else coordinate_system)
    table = ctx.adata
    kind = _color_kind(table, color)  # raises before anything is touched
    colors = _ensure_palette(table, color, palette) if kind == "categorical" else None

    own_fig = ax is None
    if own_fig:
        fig, ax = plt.subplots(figsize=(6.4, 5.6))
    else:
        fig = ax.get_figure()

    if ctx.sdata is None:
        _legacy_image(ctx, image_key, ax)
        _scatter_anndata(table, color, kind, colors, cmap=cmap, size=size, ax=ax)
        ax.set_title(color if title is None else title)
    else:
        _render_spatialdata(
            ctx.sdata,
            table,
            ctx.table_key,
            [(ctx.region, ctx.element_type)],
            color,
            kind,
            image_key=image_key,
            coordinate_system=ctx.coordinate_system,
            cmap=cmap,
            size=size,
            ax=ax,
            title=title,
        )

    if save is not None:
        fig.savefig(save, bbox_inches="tight", dpi=150)
        logg.info(f"saved figure to {str(save)!r}")
    if show is None:
        show = own_fig and not return_ax
    if show:
        plt.show()
    elif own_fig and not return_ax:
        plt.close(fig)
    return ax if return_ax else None


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


# --------------------------------------------------------------------------------------------------------------------
# drawing


class _DropAdvice:
    """Logging filter: drop spatialdata-plot's performance advice about annotations stored in a table."""

    def filter(self, record: Any) -> bool:
        return not str(record.getMessage()).startswith("Annotating points with")


def _render_spatialdata(
    sdata: SpatialData,
    table: AnnData,
    table_name: str,
    regions: list[tuple[str, str]],
    color: str | None,
    kind: str | None,
    *,
    image_key: str | bool | None,
    coordinate_system: str,
    cmap: Any,
    size: float | None,
    ax: Axes,
    title: str | None,
) -> None:
    import spatialdata_plot  # noqa: F401  (registers the `.pl` accessor)
    from spatialdata import SpatialData

    image = _pick_image(sdata, image_key, coordinate_system)
    # spatialdata-plot is given a slim SpatialData that shares the elements but holds a slim copy of the table (only
    # the colour column / gene): it then cannot change the user's table (it may write palettes or cast columns), and
    # it does not have to index a large expression matrix.
    plot_table = _slim_table(table, color, kind)
    elements: dict[str, dict[str, Any]] = {"images": {}, "shapes": {}, "points": {}, "labels": {}}
    if image is not None:
        elements["images"][image] = sdata.images[image]
    for name, etype in regions:
        elements[etype][name] = _without_column(getattr(sdata, etype)[name], color if kind is not None else None)
    slim = SpatialData(**elements, tables={table_name: plot_table})

    pl = slim.pl
    if image is not None:
        pl = pl.render_images(image).pl
    color_arg = color if kind is not None else None
    for name, etype in regions:
        kw: dict[str, Any] = {"table_name": table_name} if color_arg is not None else {}
        if kind in ("continuous", "gene") and cmap is not None:
            kw["cmap"] = cmap
        if etype == "shapes":
            kw["scale"] = 1.0 if size is None else float(size)
            # Without a colour key spatialdata-plot draws a fixed grey; keep it so, but opaque enough over H&E.
            pl = pl.render_shapes(name, color=color_arg, fill_alpha=1.0, **kw).pl
        elif etype == "points":
            kw["size"] = 4.0 if size is None else float(size)
            pl = pl.render_points(name, color=color_arg, **kw).pl
        elif etype == "labels":
            pl = pl.render_labels(name, color=color_arg, **kw).pl
        else:  # a table annotating an image is not a plottable layout
            raise StmapInputError(f"Table {table_name!r} annotates image {name!r}; cannot draw spots for it.")
    import logging

    advice = _DropAdvice()  # spatialdata-plot advises moving annotations into the points' parquet: not the user's job
    loggers = [logging.getLogger(n) for n in ("spatialdata_plot._logging", "spatialdata_plot")]
    for lg in loggers:
        lg.addFilter(advice)
    try:
        pl.show(
            coordinate_systems=coordinate_system,
            ax=ax,
            title=(color or "") if title is None else title,
            show=False,
        )
    finally:
        for lg in loggers:
            lg.removeFilter(advice)
    unit = (sdata.attrs or {}).get(Key.units_attr, {}).get(coordinate_system)
    if isinstance(unit, str) and unit:
        ax.set_xlabel(f"x ({'µm' if unit in ('um', 'micrometer', 'micron') else unit})")
        ax.set_ylabel(f"y ({'µm' if unit in ('um', 'micrometer', 'micron') else unit})")
    elif unit:
        from stmap._core._platform import _unit_value

        v = _unit_value(unit)
        if v is not None:
            ax.set_xlabel(f"x (pixels of {v:.3g} µm)")
            ax.set_ylabel(f"y (pixels of {v:.3g} µm)")


def _without_column(element: Any, column: str | None) -> Any:
    """The element without a column named like the colour key (else spatialdata-plot refuses the ambiguous key)."""
    if column is None or not hasattr(element, "columns") or column not in element.columns:
        return element
    out = element[[c for c in element.columns if c != column]]
    out.attrs.update(element.attrs)  # transformations and spatialdata metadata
    return out


def _slim_table(table: AnnData, color: str | None, kind: str | None) -> AnnData:
    from anndata import AnnData

    obs = table.obs.copy()
    uns: dict[str, Any] = {Key.uns.spatialdata_attrs: dict(table.uns[Key.uns.spatialdata_attrs])}
    if kind == "gene":
        x = table[:, [color]].X
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        out = AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[color]))
    else:
        out = AnnData(obs=obs)
    if kind == "categorical":
        col = obs[color]
        if not isinstance(col.dtype, pd.CategoricalDtype):
            obs[color] = pd.Categorical(col.astype("string").astype(object), categories=_categories(table, color))
            out.obs[color] = obs[color]
        uns[Key.colors(color)] = list(table.uns[Key.colors(color)])
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
    adata: AnnData, color: str | None, kind: str | None, colors: list[str] | None, *, cmap: Any, size: Any, ax: Axes
) -> None:
    """Plain AnnData: a scatter of ``obsm['spatial']``.

    Plain matplotlib, because spatialdata-plot draws SpatialData only; converting the AnnData first would copy it.
    """
    xy = np.asarray(adata.obsm[Key.obsm.spatial])[:, :2]
    s = 120000 / max(adata.n_obs, 1) if size is None else float(size)
    s = min(s, 200.0) if size is None else s
    if kind is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=s, c="lightgrey", edgecolors="none")
    elif kind == "categorical":
        cats = _categories(adata, color)
        values = adata.obs[color].astype("string").to_numpy(dtype=object, na_value=None)
        for cat, col in zip(cats, colors, strict=True):
            m = values == cat
            ax.scatter(xy[m, 0], xy[m, 1], s=s, color=col, edgecolors="none", label=cat)
        na = pd.isna(adata.obs[color]).to_numpy()
        if na.any():
            ax.scatter(xy[na, 0], xy[na, 1], s=s, color="lightgrey", edgecolors="none", label="NA")
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.0)
    else:
        if kind == "gene":
            v = adata[:, [color]].X
            v = (v.toarray() if hasattr(v, "toarray") else np.asarray(v)).ravel()
        else:
            v = adata.obs[color].to_numpy(dtype=float)
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=s, c=v, cmap=cmap, edgecolors="none")
        ax.get_figure().colorbar(sc, ax=ax, shrink=0.7)
    ax.set_aspect("equal")
    if not ax.yaxis_inverted():  # y points down (image convention, as in spatialdata-plot and scanpy)
        ax.invert_yaxis()
    ax.set_xlabel("spatial 1")
    ax.set_ylabel("spatial 2")
