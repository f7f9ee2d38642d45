"""Plot gene maps on histology (:func:`stmap.tl.gene_maps`): measured spots beside the predicted map, over the H&E."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core import Key, StmapInputError, inject_docs, unknown_key
from stmap._core._params import Instance, Interval, validate_params

from ._utils import PLOT_PARAMS, colorbar, data_limits, finish, panels, spatial_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

    from stmap._core._resolve import ImageContext, TableContext

__all__ = ["gene_maps"]

#: Largest side (pixels) of an image read for one panel; a coarser pyramid level or a stride is used above it.
_MAX_PX = 800


@validate_params(
    genes=[Instance((str, list, tuple)), None],
    key=Instance((str,)),
    ncols=Interval(int, 1, None),
    alpha=Interval(float, 0, 1),
    show_spots=Instance((bool,)),
    mask_outside=Instance((bool,)),
    size=Interval(float, 0, None, "neither"),
    max_pixels=Interval(int, 1, None),
    **PLOT_PARAMS,
)
@inject_docs()
def gene_maps(
    sdata: SpatialData,
    *,
    genes: str | Sequence[str] | None = None,
    key: str = Key.default.gene_maps,
    table_key: str | None = None,
    element: str | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    crop: Sequence[float] | None = None,
    ncols: int = 1,
    cmap: str = "magma",
    alpha: float = 0.75,
    show_spots: bool = True,
    mask_outside: bool = True,
    size: float = 1.0,
    max_pixels: int = _MAX_PX,
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> np.ndarray | None:
    """Gene maps over the H&E, each beside the spots' measured expression on the same colour scale.

    For each gene, two panels: the H&E with the measured spots coloured by the gene's expression (in the units the
    maps were trained on: ``log1p`` counts per 10⁴ by default), and the predicted map drawn semi-transparently over
    the H&E in the same extent. Both panels share one colour scale (the range of the spot values; the map is clipped
    to it), so a map that reproduces the spots looks like a smooth, finer version of them. The view is cropped to
    the spots (plus a small margin) unless ``crop`` says otherwise, and the axes read micrometres when the unit is
    known. Images are placed with their transformation to the coordinate system and read lazily at a pyramid level
    (or stride) suited to the figure, restricted to the view. Outside the tissue is not shown: map pixels farther
    than one spot pitch (the median distance between neighbouring spots) from the nearest measured spot are left
    transparent, as the map there is an extrapolation without data (``mask_outside=False`` draws the whole map).
    This is a display mask only; the map element is not changed.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` after :func:`stmap.tl.gene_maps`.
    genes
        Gene(s) to draw: channels of the map element. Default: all of them.
    key
        ``key_added`` of :func:`stmap.tl.gene_maps` (the ``.uns`` entry of the table).
    {table_key}
    element
        Map image element; default: the one recorded in ``table.uns[key]['element']``.
    image_key
        H&E drawn below (default: the image the maps were made from; ``False``: none).
    coordinate_system
        Coordinate system to draw in (default: the table's).
    crop
        ``(xmin, ymin, xmax, ymax)`` in coordinate-system units: only this window is read and drawn. Default: the
        spots' extent plus a margin.
    ncols
        Genes per figure row (each gene takes two panels, or one with ``show_spots=False``).
    cmap
        Colormap of the expression.
    alpha
        Opacity of the map over the H&E.
    show_spots
        Draw the panel of measured spots beside each map.
    mask_outside
        Leave map pixels farther than one spot pitch from the nearest spot transparent (outside the tissue is not
        shown); ``False`` draws the map everywhere.
    size
        Factor on the spots' measured diameter.
    max_pixels
        Largest side, in pixels, of an image read for a panel (a coarser pyramid level or a stride is used above).
    {plot}

    Returns
    -------
    {plot_returns}
    The Axes as an array ``(n_genes, 2)`` (spots, map), or ``(n_genes, 1)`` without spots. ``sdata`` is not
    modified.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(0)
    >>> st.tl.gene_maps(sdata, genes=["tumor_r01", "immune_r01"], table_key="spots")  # doctest: +SKIP
    >>> st.pl.gene_maps(sdata, genes=["tumor_r01", "immune_r01"], table_key="spots")  # doctest: +SKIP
    """
    from matplotlib.colors import Normalize

    from stmap._core import is_spatialdata, resolve

    if not is_spatialdata(sdata):
        raise StmapInputError(f"sdata must be a SpatialData holding gene maps, got {type(sdata).__name__}.")
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    src = _sources(sdata, ctx, key, genes, element, image_key)
    diam = ctx.diameters
    window = _window([src.maps] if src.he is None else [src.maps, src.he], crop, ctx.coords, diam, size)
    params = src.params
    spot_vals = _spot_values(
        ctx.adata, src.genes, normalize=bool(params.get("normalize", True)), layer=params.get("layer")
    )

    per = 2 if show_spots else 1
    ncols = max(1, min(int(ncols), len(src.genes)))
    xr, yr = window[2] - window[0], window[3] - window[1]
    aspect = float(np.clip(xr / yr, 0.3, 3.0)) if yr > 0 else 1.0
    panel = (4.0 * aspect * 1.15, 4.0)
    what = f"{'two' if show_spots else 'one'} per gene"
    fig, axs, own = panels(
        ax, len(src.genes) * per, ncols=ncols * per, panel=panel, figsize=figsize, dpi=dpi, what=what
    )
    he_img = None if src.he is None else _read(src.he, window, max_pixels, rgb=True)
    limits = (window[0], window[2], window[1], window[3])
    from ._spatial import um_per_unit

    um = um_per_unit(ctx)
    for i, g in enumerate(src.genes):
        v = spot_vals[:, i]
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        row = axs[i * per : (i + 1) * per]
        mappable = None
        if show_spots:
            if he_img is not None:
                _imshow(row[0], *he_img)
            mappable = _draw_spots(row[0], ctx.coords, v, None if diam is None else diam * size, cmap, norm)
            row[0].set_title(f"{g}: measured spots")
        if he_img is not None:
            _imshow(row[-1], *he_img)
        map_img = _read(src.maps, window, max_pixels, channel=src.channels.index(g))
        if mask_outside:
            map_img = (_outside_masked(map_img[0], map_img[1], ctx.coords, diam), map_img[1])
        im = _imshow(row[-1], *map_img, cmap=cmap, norm=norm, alpha=alpha if he_img is not None else 1.0)
        row[-1].set_title(f"{g}: gene map")
        for a in row:
            spatial_axes(a, um, limits)
        colorbar(fig, mappable if mappable is not None else im, row[-1], _unit(params))  # beside the row's map
    return finish(fig, axs.reshape(len(src.genes), per), own=own, save=save, show=show, dpi=dpi)


@dataclass
class _Sources:
    """What a gene-map figure draws from: the run's record, the map element, its genes, the H&E."""

    params: dict[str, Any]
    maps: ImageContext
    channels: list[str]
    genes: list[str]
    he: ImageContext | None


def _sources(
    sdata: Any, ctx: TableContext, key: str, genes: Any, element: str | None, image_key: str | bool | None
) -> _Sources:
    """Validate the names against the run's record (nothing drawn, nothing touched) and open the images lazily."""
    meta = ctx.adata.uns.get(key)
    if not isinstance(meta, dict):
        raise StmapInputError(
            f"Table {ctx.table_key!r} has no uns[{key!r}]; run `st.tl.gene_maps` first (or pass its `key_added` as "
            "`key=`)."
        )
    params = dict(meta.get("params") or {})
    name = element if element is not None else str(meta.get("element", ""))
    if name not in sdata.images:
        raise unknown_key("Map element", name, sdata.images.keys(), "sdata.images", hint="Pass `element=`.")
    maps = ctx.image(name, check_alignment=False)
    channels = [str(c) for c in maps.channels]
    sel = channels if genes is None else [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not sel:
        raise StmapInputError("genes is empty; name at least one channel of the map element.")
    for g in sel:
        if g not in channels:
            raise unknown_key("Gene", g, channels, f"the channels of {name!r}")
    he = None
    he_name = (
        image_key if isinstance(image_key, str) else None if image_key is False else _none(params.get("image_key"))
    )
    if he_name is not None:
        if he_name not in sdata.images:
            raise unknown_key("Image", he_name, sdata.images.keys(), "sdata.images")
        he = ctx.image(he_name, check_alignment=False)
    return _Sources(params, maps, channels, sel, he)


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _none(v: Any) -> Any:
    """``None`` for missing values and the ``'None'`` string that ``.uns`` parameters store for ``None``."""
    return None if v is None or (isinstance(v, str) and v == "None") else v


def _unit(params: dict) -> str:
    return "log1p(counts per 10⁴)" if bool(params.get("normalize", True)) else "expression"


def _spot_values(adata: Any, genes: list[str], *, normalize: bool, layer: Any) -> np.ndarray:
    """Spot expression of ``genes`` in the units of the maps (NaN for genes the table lacks and for empty spots)."""
    from scipy import sparse

    from stmap._core import get_counts, log_normalize

    X = get_counts(adata, _none(layer), "the spot table")
    out = np.full((adata.n_obs, len(genes)), np.nan)
    have = [i for i, g in enumerate(genes) if g in adata.var_names]
    if not have:
        return out
    sub = X[:, adata.var_names.get_indexer([genes[i] for i in have])]
    sub = np.asarray(sub.toarray() if sparse.issparse(sub) else sub, dtype=np.float64)
    if normalize:
        total = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        sub = np.where(total[:, None] > 0, log_normalize(sub, totals=total), np.nan)
    out[:, have] = sub
    return out


def _window(
    imgs: list[Any], crop: Sequence[float] | None, xy: np.ndarray, diam: np.ndarray | None, size: float
) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` to draw: the crop, else the spots' extent plus a margin (within the images)."""
    ext = np.array([img.extent(0) for img in imgs], dtype=float)
    xmin, xmax, ymin, ymax = ext[:, 0].min(), ext[:, 1].max(), ext[:, 2].min(), ext[:, 3].max()
    if crop is None:
        x0, x1, y0, y1 = data_limits(xy, None if diam is None else np.asarray(diam, dtype=float) * size / 2)
        return max(x0, float(xmin)), max(y0, float(ymin)), min(x1, float(xmax)), min(y1, float(ymax))
    c = [float(v) for v in crop]
    if len(c) != 4 or not np.all(np.isfinite(c)) or c[2] <= c[0] or c[3] <= c[1]:
        raise StmapInputError(f"crop must be (xmin, ymin, xmax, ymax) with xmin < xmax and ymin < ymax, got {crop!r}.")
    if c[2] <= xmin or c[0] >= xmax or c[3] <= ymin or c[1] >= ymax:
        raise StmapInputError(
            f"crop {tuple(c)} does not overlap the images' extent x=[{xmin:.1f}, {xmax:.1f}], "
            f"y=[{ymin:.1f}, {ymax:.1f}]."
        )
    return c[0], c[1], c[2], c[3]


def _read(img: Any, window, max_pixels: int, *, rgb: bool = False, channel: int | None = None):
    """The part of ``img`` under ``window`` at a pyramid level (and stride) with at most ~``max_pixels`` a side.

    Returns ``(array, matrix)``: ``(y, x[, c])`` values and the 3x3 pixel -> coordinate-system matrix of that array.
    """
    xmin, ymin, xmax, ymax = window
    side = max(xmax - xmin, ymax - ymin)
    level = img.level_for(side / max_pixels)
    arr, T = img.levels[level], np.asarray(img.transforms[level], dtype=float)
    _, h, w = arr.shape
    # pixel window covering the crop (all four corners, so flipped or rotated transforms work)
    inv = np.linalg.inv(T)
    corners = np.array([[xmin, ymin], [xmax, ymin], [xmin, ymax], [xmax, ymax]], dtype=float)
    px = corners @ inv[:2, :2].T + inv[:2, 2]
    x0, y0 = (max(0, int(np.floor(px[:, k].min()))) for k in (0, 1))
    x1, y1 = min(w, int(np.ceil(px[:, 0].max()))), min(h, int(np.ceil(px[:, 1].max())))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    step = max(1, int(np.ceil(max(x1 - x0, y1 - y0) / max_pixels)))
    if rgb:
        sub = arr[:, y0:y1:step, x0:x1:step]
        c = sub.shape[0]
        sub = sub[:3] if c >= 3 else sub[:1]
    else:
        sub = arr[channel, y0:y1:step, x0:x1:step]
    data = np.asarray(sub.compute() if hasattr(sub, "compute") else sub)
    if rgb:
        data = np.moveaxis(data, 0, -1)
        data = data[..., 0] if data.shape[-1] == 1 else data
        if not np.issubdtype(data.dtype, np.integer):
            hi = float(np.nanmax(data)) if data.size else 1.0
            data = np.clip(data / (hi if hi > 1.0 else 1.0), 0, 1)
    else:
        data = data.astype(np.float32)
    M = T @ np.array([[step, 0, x0], [0, step, y0], [0, 0, 1.0]])
    return data, M


def _spot_pitch(xy: np.ndarray, diam: np.ndarray | None = None) -> float | None:
    """Median distance from each spot to its nearest neighbour (one spot: its diameter; ``None`` if unknown)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)[:, :2]
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) >= 2:
        d, _ = cKDTree(xy).query(xy, k=2)
        pitch = float(np.median(d[:, 1]))
        if pitch > 0:
            return pitch
    if diam is not None and np.isfinite(np.asarray(diam, dtype=float)).any():
        return float(np.nanmedian(np.asarray(diam, dtype=float)))
    return None


def _outside_masked(data: np.ndarray, M: np.ndarray, xy: np.ndarray, diam: np.ndarray | None) -> np.ndarray:
    """``data`` (a map read by :func:`_read`) with NaN (drawn transparent) farther than one spot pitch from a spot."""
    from scipy.spatial import cKDTree

    reach = _spot_pitch(xy, diam)
    pts = np.asarray(xy, dtype=float)[:, :2]
    pts = pts[np.isfinite(pts).all(axis=1)]
    if reach is None or len(pts) == 0:
        return data
    h, w = data.shape[:2]
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)  # pixel centres
    centres = np.column_stack([jj.ravel(), ii.ravel()]) @ M[:2, :2].T + M[:2, 2]
    dist, _ = cKDTree(pts).query(centres, k=1, distance_upper_bound=reach)
    out = np.array(data, dtype=np.float32, copy=True)
    out[~np.isfinite(dist).reshape(h, w)] = np.nan
    return out


def _imshow(ax: Any, data: np.ndarray, M: np.ndarray, **kw: Any) -> Any:
    """Draw ``data`` placed by the pixel -> coordinate matrix ``M`` (an ``extent`` when axis-aligned)."""
    h, w = data.shape[:2]
    gray = data.ndim == 2 and "cmap" not in kw
    opts = {"interpolation": "nearest", "origin": "upper", **({"cmap": "gray"} if gray else {}), **kw}
    if np.isclose(M[0, 1], 0) and np.isclose(M[1, 0], 0):
        extent = (M[0, 2], M[0, 2] + w * M[0, 0], M[1, 2] + h * M[1, 1], M[1, 2])
        return ax.imshow(data, extent=extent, **opts)
    from matplotlib.transforms import Affine2D

    im = ax.imshow(data, extent=(0, w, h, 0), **opts)  # pixel edges, then the affine map to the coordinate system
    im.set_transform(Affine2D(M) + ax.transData)
    return im


def _draw_spots(ax: Any, xy: np.ndarray, values: np.ndarray, diam: np.ndarray | None, cmap: str, norm: Any) -> Any:
    """Spots as discs of their measured diameter (points when unknown), coloured on the shared ``norm``."""
    from matplotlib import colormaps
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    cm = colormaps[cmap].with_extremes(bad="lightgrey")
    values = np.ma.masked_invalid(values)
    if diam is None:
        return ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap=cm, norm=norm, s=12, edgecolors="none")
    coll = PatchCollection(
        [Circle((float(x), float(y)), float(d) / 2) for (x, y), d in zip(xy, np.broadcast_to(diam, len(xy)))],
        cmap=cm,
        norm=norm,
        edgecolors="none",
    )
    coll.set_array(values)
    ax.add_collection(coll)
    return coll
