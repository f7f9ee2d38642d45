"""Detect labelled cells (round bright or dark blobs) in images: the CellMap2D segmentation, chunked through dask.

LoG response -> threshold at ``median + n_std * std`` -> watershed of the mask from distance-transform peaks -> keep
regions of ``min_area..max_area`` pixels with circularity ``4 pi area / perimeter^2 >= min_circularity``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from .._core import Results, StmapInputError, TableContext, inject_docs, is_spatialdata, unknown_key
from .._core import _logging as logg
from .._core._names import check_name

__all__ = ["detect_blobs"]

_COLUMNS = ["x", "y", "area", "circularity", "response", "label"]


def _log_depth(sigma: float) -> int:
    """Pixels the LoG filter reads around a pixel: scipy's ``gaussian_laplace`` support (truncate=4) + 1."""
    return int(4.0 * sigma + 0.5) + 1


def _check_size(shape: tuple[int, ...], sigma: float, sigma_given: bool) -> None:
    """Raise when the image is smaller than the filter's reach (dask cannot overlap its chunks by more)."""
    ny, nx = shape
    depth = _log_depth(sigma)
    if min(ny, nx) >= depth:
        return
    if min(ny, nx) < 1:
        raise StmapInputError(f"The image is {ny}x{nx} pixels: empty, no blob can be detected.")
    # the largest sigma whose reach fits the shorter side: int(4 sigma + 0.5) + 1 <= side, rounded down to 0.01
    limit = np.floor(((min(ny, nx) - 0.5) / 4.0 - 1e-9) * 100.0) / 100.0
    origin = "" if sigma_given else " (the default from min_area and max_area)"
    fix = (
        f"Pass `sigma=` of at most {limit:.2f} (with `min_area=`/`max_area=` for blobs that small, e.g. min_area=1), "
        "or use a larger image."
        if limit > 0
        else "Use a larger image."
    )
    raise StmapInputError(
        f"The image is {ny}x{nx} pixels, smaller than the blob filter's reach of {depth} pixels (about 4 * sigma + 1 "
        f"with sigma={sigma:.3g}{origin}): the image must be at least {depth} pixels on each side. {fix}"
    )


def _log_response(block: np.ndarray, sigma: float, bright: bool, fill: float | None = None) -> np.ndarray:
    """Scale-normalised blob response ``-sigma^2 LoG`` (bright blobs positive; ``bright=False``: dark blobs).

    ``fill``: NaN pixels are filled with this (the image's median: no edge at their border) and their response is NaN.
    """
    from scipy import ndimage as ndi

    nan = None
    if fill is not None:
        nan = np.isnan(block)
        block = np.where(nan, np.float32(fill), block)
    r = ndi.gaussian_laplace(block.astype(np.float32, copy=False), sigma) * np.float32(-(sigma**2))
    r = r if bright else -r
    if nan is not None:
        r[nan] = np.nan
    return r


def _segment(
    resp: np.ndarray,
    threshold: float,
    h: float,
    min_distance: int,
    min_area: int,
    max_area: int,
    min_circularity: float,
    offset: tuple[int, int],
    core: tuple[int, int, int, int],
    width: int,
    want_labels: bool,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Segment one window; keep the regions whose centroid lies in ``core`` (global ``y0, y1, x0, x1``).

    Region ids are ``row * width + col + 1`` of the (rounded) global centroid, so windows that overlap agree on them.
    """
    from scipy import ndimage as ndi
    from skimage.measure import regionprops
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    oy, ox = offset
    cy0, cy1, cx0, cx1 = core
    mask = resp > threshold
    empty = pd.DataFrame({c: np.zeros(0) for c in _COLUMNS})
    lab_core = np.zeros((cy1 - cy0, cx1 - cx0), dtype=np.int64) if want_labels else None
    if not mask.any():
        return empty, lab_core
    dist = ndi.distance_transform_edt(mask)
    # seeds: the maxima of the distance transform with a dynamic >= h (a flat top is one seed), at least
    # min_distance apart (closer maxima merge into one seed)
    peaks = h_maxima(dist, h) & mask
    if min_distance > 1:
        peaks = ndi.binary_dilation(peaks, structure=np.ones((min_distance, min_distance), bool)) & mask
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3), bool))
    seg = watershed(-dist, markers, mask=mask)
    rows = []
    for rp in regionprops(seg, intensity_image=resp):
        area = float(rp.area)
        if area < min_area or area > max_area:
            continue
        per = float(rp.perimeter)
        circ = 4.0 * np.pi * area / per**2 if per > 0 else 0.0
        if circ < min_circularity:
            continue
        r, c = rp.centroid
        gr, gc = r + oy, c + ox
        ir, ic = int(np.floor(gr + 0.5)), int(np.floor(gc + 0.5))
        gid = ir * width + ic + 1
        if cy0 <= ir < cy1 and cx0 <= ic < cx1:  # else another window owns (reports) it
            rows.append((gc, gr, area, circ, float(rp.intensity_mean), gid))
        if lab_core is not None:  # paint every kept region's pixels in the core, whoever owns it
            sl = rp.slice
            sub = rp.image
            ys = np.arange(sl[0].start, sl[0].stop) + oy - cy0
            xs = np.arange(sl[1].start, sl[1].stop) + ox - cx0
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            ok = sub & (yy >= 0) & (yy < cy1 - cy0) & (xx >= 0) & (xx < cx1 - cx0)
            lab_core[yy[ok], xx[ok]] = gid
    if not rows:
        return empty, lab_core
    return pd.DataFrame(rows, columns=_COLUMNS), lab_core


def _detect(
    img: Any,
    *,
    sigma: float,
    n_std: float,
    threshold: float | None,
    bright: bool,
    min_area: int,
    max_area: int,
    min_circularity: float,
    h: float,
    min_distance: int,
    chunk_size: int,
    labels: bool,
    max_sample: int = 1 << 22,
) -> tuple[pd.DataFrame, np.ndarray | None, float]:
    """Blobs of a 2D ``(y, x)`` array (numpy or dask): centroids in pixel index units, optional label image."""
    import dask
    import dask.array as da

    arr = img if isinstance(img, da.Array) else da.from_array(np.asarray(img))
    arr = arr.rechunk((chunk_size, chunk_size))
    ny, nx = arr.shape
    step = max(1, int(np.ceil(np.sqrt(ny * nx / max_sample))))
    n_nan = int(da.isnan(arr).sum().compute()) if np.issubdtype(np.dtype(arr.dtype), np.floating) else 0
    fill = None
    if n_nan == ny * nx:
        raise StmapInputError("The image has no finite pixel values: no blob threshold can be set.")
    if n_nan:  # NaN pixels: filled with the median for the filter, then ignored (no statistics, no blobs)
        warnings.warn(
            f"{n_nan} NaN pixel(s) ({n_nan / (ny * nx):.2%} of the image) are ignored: no blob is detected there and "
            "they do not count in the threshold's statistics.",
            UserWarning,
            stacklevel=4,
        )
        fill = float(np.nanmedian(np.asarray(arr[::step, ::step].compute(), dtype=np.float64)))
        fill = 0.0 if not np.isfinite(fill) else fill
    log_depth = _log_depth(sigma)
    resp = arr.map_overlap(
        _log_response, depth=log_depth, boundary="reflect", dtype=np.float32, sigma=sigma, bright=bright, fill=fill
    )
    if threshold is None:
        if n_nan:
            sample, sd_ = dask.compute(resp[::step, ::step], da.nanstd(resp, dtype=np.float64))
            threshold = float(np.nanmedian(sample) + n_std * float(sd_))
        else:
            sample, sd_ = dask.compute(resp[::step, ::step], resp.std(dtype=np.float64))
            threshold = float(np.median(sample) + n_std * float(sd_))
        if not np.isfinite(threshold):
            raise StmapInputError("The image has no finite pixel values: no blob threshold can be set.")
    if n_nan:
        resp = da.where(da.isnan(resp), np.float32(-np.inf), resp)
    # a window must hold every region whose centroid is in its core: regions have <= max_area pixels
    halo = int(np.ceil(2.0 * np.sqrt(max_area / np.pi))) + 2 * min_distance + 2
    ys = list(range(0, ny, chunk_size))
    xs = list(range(0, nx, chunk_size))
    tasks = []
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + chunk_size, ny), min(x0 + chunk_size, nx)
            wy0, wx0 = max(0, y0 - halo), max(0, x0 - halo)
            wy1, wx1 = min(ny, y1 + halo), min(nx, x1 + halo)
            win = resp[wy0:wy1, wx0:wx1]
            tasks.append(
                dask.delayed(_segment)(
                    win, threshold, h, min_distance, min_area, max_area, min_circularity, (wy0, wx0),
                    (y0, y1, x0, x1), nx, labels,
                )
            )  # fmt: skip
    out = dask.compute(*tasks)
    frames = [f for f, _ in out if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: np.zeros(0) for c in _COLUMNS})
    df["label"] = df["label"].astype(np.int64)
    df["area"] = df["area"].astype(np.int64)
    lab = None
    if labels:
        lab = np.zeros((ny, nx), dtype=np.int64)
        i = 0
        for y0 in ys:
            for x0 in xs:
                core = out[i][1]
                lab[y0 : y0 + core.shape[0], x0 : x0 + core.shape[1]] = core
                i += 1
    return df.sort_values(["y", "x"], ignore_index=True), lab, threshold


def _unmodified_copy(sdata: Any) -> Any:
    """A new SpatialData holding the same elements and tables (as ``copy=True`` shares unmodified ones)."""
    import copy as _copy

    from spatialdata import SpatialData

    return SpatialData(
        images=dict(sdata.images),
        labels=dict(sdata.labels),
        points=dict(sdata.points),
        shapes=dict(sdata.shapes),
        tables=dict(sdata.tables),
        attrs=_copy.deepcopy(dict(sdata.attrs)),
    )


@inject_docs()
def detect_blobs(
    sdata: Any,
    image_key: str | None = None,
    *,
    channel: int | str = 0,
    level: int = 0,
    sigma: float | None = None,
    n_std: float = 5.0,
    threshold: float | None = None,
    bright: bool = True,
    min_area: int = 30,
    max_area: int = 1000,
    min_circularity: float = 0.85,
    h: float = 1.0,
    min_distance: int = 1,
    chunk_size: int = 2048,
    labels: bool = False,
    coordinate_system: str | None = None,
    key_added: str = "stmap_blobs",
    copy: bool = False,
) -> Any:
    """Detect labelled cells (round blobs) in an image: the CellMap2D segmentation, chunked with overlap.

    The image channel is filtered with a scale-normalised Laplacian of Gaussian (``-sigma^2 LoG``, lazily through
    :func:`dask.array.map_overlap`); pixels whose response exceeds ``median + n_std * std`` (over the image) form
    the foreground, which is split by a watershed of its distance transform seeded at the distance peaks; regions
    of ``min_area..max_area`` pixels with circularity ``4 pi area / perimeter^2 >= min_circularity`` are kept. The
    image is processed in ``chunk_size`` windows with an overlap larger than the largest kept region, each region
    being reported once (by the window that holds its centroid), so the result does not depend on the chunking
    (unless foreground components are larger than the overlap).

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData`, or a 2D ``(y, x)`` array (numpy or dask): then a DataFrame of
        centroids in pixel index units is returned (and the label image, with ``labels=True``).
    image_key
        Image element (2D, single or multiscale). Default: the only image.
    channel
        Channel index or name.
    level
        Pyramid level to segment (0 = full resolution); areas are in pixels of that level.
    sigma
        LoG scale in pixels; default ``r / sqrt(2)`` for the radius ``r`` of a disk of ``sqrt(min_area * max_area)``
        pixels (the middle of the kept size range).
    n_std
        Threshold at ``median + n_std * std`` of the response (the median over an evenly strided sample of at most
        4 million pixels for large images; the standard deviation over all pixels).
    threshold
        Fixed response threshold instead of ``median + n_std * std``.
    bright
        Bright blobs on a dark background (fluorescence); ``False`` for dark blobs (e.g. stained nuclei in
        bright-field).
    min_area, max_area
        Kept region sizes, in pixels.
    min_circularity
        Kept regions' minimum ``4 pi area / perimeter^2``.
    h
        Watershed seeds are the maxima of the foreground's distance transform with a dynamic of at least ``h``
        pixels (a flat top is one seed; ``h`` merges seeds split by digitisation).
    min_distance
        Seeds closer than this (pixels) merge.
    chunk_size
        Window size in pixels.
    labels
        Also write the label image (region ids as in the points' ``label`` column).
    {coordinate_system}
    {key_added}
    {copy}

    Returns
    -------
    For an array: a DataFrame with columns ``x``, ``y`` (column / row of the centroid), ``area``, ``circularity``,
    ``response`` (mean LoG response), ``label``; with ``labels=True`` the tuple ``(DataFrame, label image)``.

    Otherwise ``None`` (``copy=False``) or the updated copy (always a new object: when no blob passes the
    filters, a warning is logged, nothing is written and ``copy=True`` returns an unmodified copy); written:

    ``sdata.points[key_added]``
        Blob centroids (``x``, ``y`` in the image's pixel space with the image level's transformations, so they
        overlay the image in every coordinate system), with ``area``, ``circularity``, ``response``, ``label``.
    ``sdata.tables[key_added + '_table']``
        One row per blob annotating the points (``obs`` columns as above), ``.uns[key_added]`` with
        ``threshold``, ``n_blobs``, ``image_key``, ``level``, ``params``.
    ``sdata.labels[key_added + '_labels']``
        With ``labels=True``: the regions (ids = ``label``), at the level's resolution.

    Raises
    ------
    StmapInputError
        Unknown image/channel/level, a 3D image, invalid size range or ``sigma``, an image without a finite pixel,
        an image smaller than the filter's reach (``4 * sigma + 1`` pixels a side), an invalid ``key_added``.
        Nothing is written.

    Warns
    -----
    UserWarning
        NaN pixels (their number and fraction): they are ignored, neither detected in nor counted in the threshold.
    """
    import dask.array as da

    check_name(key_added, "key_added")
    if min_area < 1 or max_area < min_area:
        raise StmapInputError(f"Need 1 <= min_area <= max_area, got min_area={min_area}, max_area={max_area}.")
    if not 0 <= min_circularity <= 1.5:
        raise StmapInputError(f"min_circularity must be in [0, 1.5], got {min_circularity}.")
    sigma_given = sigma is not None
    if sigma is None:
        sigma = float(np.sqrt(np.sqrt(min_area * max_area) / np.pi) / np.sqrt(2.0))
    if not (np.isfinite(sigma) and sigma > 0):
        raise StmapInputError(f"sigma must be positive, got {sigma}.")
    if h <= 0 or min_distance < 1:
        raise StmapInputError(f"Need h > 0 and min_distance >= 1, got h={h}, min_distance={min_distance}.")
    if chunk_size < 16:
        raise StmapInputError(f"chunk_size must be >= 16 pixels, got {chunk_size}.")
    opts = {
        "sigma": float(sigma),
        "n_std": float(n_std),
        "threshold": threshold,
        "bright": bright,
        "min_area": int(min_area),
        "max_area": int(max_area),
        "min_circularity": float(min_circularity),
        "h": float(h),
        "min_distance": int(min_distance),
        "chunk_size": int(chunk_size),
        "labels": labels,
    }
    if isinstance(sdata, (np.ndarray, da.Array)):
        if sdata.ndim != 2:
            raise StmapInputError(f"Pass a 2D (y, x) array, got shape {sdata.shape}.")
        _check_size(sdata.shape, sigma, sigma_given)
        df, lab, _ = _detect(sdata, **opts)
        return (df, lab) if labels else df
    if not is_spatialdata(sdata):
        raise TypeError(f"Expected a SpatialData or a 2D array, got {type(sdata).__name__}.")
    from spatialdata.transformations import get_transformation

    from .._core._resolve import _element_coordinate_systems, _image_levels

    names = list(sdata.images)
    if image_key is None:
        if len(names) != 1:
            raise StmapInputError(f"Pass `image_key=`; the object has images {names or 'none'}.")
        image_key = names[0]
    if image_key not in sdata.images:
        raise unknown_key("Image", image_key, names, "sdata.images")
    levels = _image_levels(sdata.images[image_key])
    if "z" in levels[0].dims:
        raise StmapInputError(f"Image {image_key!r} is 3D; detect blobs per 2D section (a 2D image element).")
    if not 0 <= level < len(levels):
        raise StmapInputError(f"Image {image_key!r} has {len(levels)} level(s); level={level} does not exist.")
    lv = levels[level]
    chans = [str(c) for c in lv.coords["c"].values] if "c" in lv.coords else [str(i) for i in range(lv.shape[0])]
    if isinstance(channel, str):
        if channel not in chans:
            raise unknown_key("Channel", channel, chans, f"image {image_key!r}")
        ci = chans.index(channel)
    else:
        ci = int(channel)
        if not -len(chans) <= ci < len(chans):
            raise StmapInputError(f"Image {image_key!r} has {len(chans)} channel(s); channel={channel} does not exist.")
    css = _element_coordinate_systems(sdata.images[image_key])
    if coordinate_system is not None and coordinate_system not in css:
        raise unknown_key("Coordinate system", coordinate_system, css, f"the transformations of {image_key!r}")
    transforms = get_transformation(lv, get_all=True)
    if coordinate_system is not None:
        transforms = {coordinate_system: transforms[coordinate_system]}
    data = lv.transpose("c", "y", "x").data[ci]
    _check_size(data.shape, sigma, sigma_given)

    start = logg.info(f"detecting blobs in {image_key!r} (level {level}, {data.shape[0]}x{data.shape[1]} px)")
    df, lab, thr = _detect(data, **opts)
    logg.info(f"    {len(df)} blob(s) kept (threshold {thr:.4g})")
    if not len(df):
        logg.warning(f"No blob passed the filters in {image_key!r}; nothing written. Lower `n_std` or check `bright`.")
        return _unmodified_copy(sdata) if copy else None

    import anndata as ad
    from spatialdata.models import Labels2DModel, PointsModel

    pts_df = df.copy()
    pts_df["x"] += 0.5  # pixel (row, col) is centred at intrinsic (col + 0.5, row + 0.5)
    pts_df["y"] += 0.5
    points = PointsModel.parse(pts_df, coordinates={"x": "x", "y": "y"}, transformations=dict(transforms))
    obs = df[["area", "circularity", "response", "label"]].copy()
    obs.index = obs.index.astype(str)
    table = ad.AnnData(X=np.zeros((len(df), 0), dtype=np.float32), obs=obs)
    tname = f"{key_added}_table"
    host = TableContext(sdata, table, tname, key_added, None, None, "points", next(iter(transforms)))
    params = {k: v for k, v in opts.items() if k != "labels"} | {
        "image_key": image_key,
        "channel": channel,
        "level": level,
        "labels": labels,
    }
    res = Results(host, key_added, params)
    res.element(key_added, points)
    if lab is not None:
        dt = np.int32 if lab.max() < np.iinfo(np.int32).max else np.int64
        res.element(
            f"{key_added}_labels",
            Labels2DModel.parse(lab.astype(dt), dims=("y", "x"), transformations=dict(transforms)),
        )
    res.table(tname, table, region=key_added, instance_ids=np.arange(len(df)))
    res.uns(key_added, {"threshold": thr, "n_blobs": len(df), "image_key": image_key, "level": level})
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out
