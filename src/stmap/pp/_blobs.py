"""Detect labelled cells (round bright or dark blobs) in images: the CellMap2D segmentation, chunked through dask.

LoG response -> threshold at ``median + n_std * std`` -> watershed of the mask from distance-transform peaks -> keep
regions of ``min_area..max_area`` pixels with circularity ``4 pi area / perimeter^2 >= min_circularity``.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd

from .._core import Results, StmapInputError, TableContext, inject_docs, is_spatialdata, unknown_key
from .._core import _logging as logg
from .._core._constants import Key
from .._core._names import check_name
from .._core._params import Instance, Interval, validate_params

if TYPE_CHECKING:
    import dask.array as da
    from spatialdata import SpatialData

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
    p: _BlobParams,
    offset: tuple[int, int],
    core: tuple[int, int, int, int],
    width: int,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Segment one window; keep the regions whose centroid lies in ``core`` (global ``y0, y1, x0, x1``).

    Region ids are ``row * width + col + 1`` of the (rounded) global centroid, so windows that overlap agree on them.
    """
    from skimage.measure import regionprops

    oy, ox = offset
    cy0, cy1, cx0, cx1 = core
    mask = resp > threshold
    empty = pd.DataFrame({c: np.zeros(0) for c in _COLUMNS})
    lab_core = np.zeros((cy1 - cy0, cx1 - cx0), dtype=np.int64) if p.labels else None
    if not mask.any():
        return empty, lab_core
    rows = []
    for rp in regionprops(_watershed(mask, p.h, p.min_distance), intensity_image=resp):
        area = float(rp.area)
        if area < p.min_area or area > p.max_area:
            continue
        per = float(rp.perimeter)
        circ = 4.0 * np.pi * area / per**2 if per > 0 else 0.0
        if circ < p.min_circularity:
            continue
        r, c = rp.centroid
        gr, gc = r + oy, c + ox
        ir, ic = int(np.floor(gr + 0.5)), int(np.floor(gc + 0.5))
        gid = ir * width + ic + 1
        if cy0 <= ir < cy1 and cx0 <= ic < cx1:  # else another window owns (reports) it
            rows.append((gc, gr, area, circ, float(rp.intensity_mean), gid))
        if lab_core is not None:  # paint every kept region's pixels in the core, whoever owns it
            _paint(lab_core, rp, gid, oy - cy0, ox - cx0)
    if not rows:
        return empty, lab_core
    return pd.DataFrame(rows, columns=_COLUMNS), lab_core


def _watershed(mask: np.ndarray, h: float, min_distance: int) -> np.ndarray:
    """Split the foreground by a watershed of its distance transform seeded at the distance peaks.

    Seeds: the maxima of the distance transform with a dynamic >= ``h`` (a flat top is one seed), at least
    ``min_distance`` apart (closer maxima merge into one seed).
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(mask)
    peaks = h_maxima(dist, h) & mask
    if min_distance > 1:
        peaks = ndi.binary_dilation(peaks, structure=np.ones((min_distance, min_distance), bool)) & mask
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3), bool))
    return watershed(-dist, markers, mask=mask)


def _paint(lab_core: np.ndarray, rp: Any, gid: int, dy: int, dx: int) -> None:
    """Write region ``rp`` (window coordinates shifted by ``dy, dx`` into the core) with id ``gid``, clipped."""
    sl = rp.slice
    ys = np.arange(sl[0].start, sl[0].stop) + dy
    xs = np.arange(sl[1].start, sl[1].stop) + dx
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    h, w = lab_core.shape
    ok = rp.image & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    lab_core[yy[ok], xx[ok]] = gid


@dataclass(frozen=True)
class _BlobParams:
    """The validated filter and segmentation settings of one run (also its recorded parameters)."""

    sigma: float
    n_std: float
    threshold: float | None
    bright: bool
    min_area: int
    max_area: int
    min_circularity: float
    h: float
    min_distance: int
    chunk_size: int
    labels: bool


def _detect(img: Any, p: _BlobParams, max_sample: int = 1 << 22) -> tuple[pd.DataFrame, np.ndarray | None, float]:
    """Blobs of a 2D ``(y, x)`` array (numpy or dask): centroids in pixel index units, optional label image."""
    import dask
    import dask.array as da

    arr = img if isinstance(img, da.Array) else da.from_array(np.asarray(img))
    arr = arr.rechunk((p.chunk_size, p.chunk_size))
    ny, nx = arr.shape
    step = max(1, int(np.ceil(np.sqrt(ny * nx / max_sample))))
    n_nan, fill = _nan_fill(arr, step)
    resp = arr.map_overlap(
        _log_response,
        depth=_log_depth(p.sigma),
        boundary="reflect",
        dtype=np.float32,
        sigma=p.sigma,
        bright=p.bright,
        fill=fill,
    )
    threshold = p.threshold if p.threshold is not None else _auto_threshold(resp, step, p.n_std, bool(n_nan))
    if n_nan:
        resp = da.where(da.isnan(resp), np.float32(-np.inf), resp)
    # a window must hold every region whose centroid is in its core: regions have <= max_area pixels
    halo = int(np.ceil(2.0 * np.sqrt(p.max_area / np.pi))) + 2 * p.min_distance + 2
    windows = _windows(ny, nx, p.chunk_size, halo)
    tasks = [
        dask.delayed(_segment)(resp[wy0:wy1, wx0:wx1], threshold, p, (wy0, wx0), core, nx)
        for core, (wy0, wy1, wx0, wx1) in windows
    ]
    out = dask.compute(*tasks)
    frames = [f for f, _ in out if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: np.zeros(0) for c in _COLUMNS})
    df["label"] = df["label"].astype(np.int64)
    df["area"] = df["area"].astype(np.int64)
    lab = None
    if p.labels:
        lab = np.zeros((ny, nx), dtype=np.int64)
        for ((y0, _, x0, _), _), (_, core) in zip(windows, out, strict=True):
            lab[y0 : y0 + core.shape[0], x0 : x0 + core.shape[1]] = core
    return df.sort_values(["y", "x"], ignore_index=True), lab, threshold


def _nan_fill(arr: Any, step: int) -> tuple[int, float | None]:
    """The number of NaN pixels and the value that fills them for the filter (the image's median; ``None``: no NaN).

    NaN pixels are filled for the filter, then ignored (no statistics, no blobs); an image without a finite pixel is
    refused.
    """
    import dask.array as da

    ny, nx = arr.shape
    n_nan = int(da.isnan(arr).sum().compute()) if np.issubdtype(np.dtype(arr.dtype), np.floating) else 0
    if n_nan == ny * nx:
        raise StmapInputError("The image has no finite pixel values: no blob threshold can be set.")
    if not n_nan:
        return 0, None
    warnings.warn(
        f"{n_nan} NaN pixel(s) ({n_nan / (ny * nx):.2%} of the image) are ignored: no blob is detected there and "
        "they do not count in the threshold's statistics.",
        UserWarning,
        stacklevel=5,
    )
    fill = float(np.nanmedian(np.asarray(arr[::step, ::step].compute(), dtype=np.float64)))
    return n_nan, 0.0 if not np.isfinite(fill) else fill


def _auto_threshold(resp: Any, step: int, n_std: float, has_nan: bool) -> float:
    """``median + n_std * std`` of the response: median over an evenly strided sample, std over all pixels."""
    import dask
    import dask.array as da

    if has_nan:
        sample, sd_ = dask.compute(resp[::step, ::step], da.nanstd(resp, dtype=np.float64))
        threshold = float(np.nanmedian(sample) + n_std * float(sd_))
    else:
        sample, sd_ = dask.compute(resp[::step, ::step], resp.std(dtype=np.float64))
        threshold = float(np.median(sample) + n_std * float(sd_))
    if not np.isfinite(threshold):
        raise StmapInputError("The image has no finite pixel values: no blob threshold can be set.")
    return threshold


def _windows(
    ny: int, nx: int, chunk: int, halo: int
) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Every ``chunk`` core ``(y0, y1, x0, x1)`` and its window ``(wy0, wy1, wx0, wx1)`` grown by ``halo``."""
    out = []
    for y0 in range(0, ny, chunk):
        for x0 in range(0, nx, chunk):
            y1, x1 = min(y0 + chunk, ny), min(x0 + chunk, nx)
            win = (max(0, y0 - halo), min(ny, y1 + halo), max(0, x0 - halo), min(nx, x1 + halo))
            out.append(((y0, y1, x0, x1), win))
    return out


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


@overload
def detect_blobs(
    sdata: np.ndarray | da.Array,
    image_key: str | None = ...,
    *,
    channel: int | str = ...,
    level: int = ...,
    sigma: float | None = ...,
    n_std: float = ...,
    threshold: float | None = ...,
    bright: bool = ...,
    min_area: int = ...,
    max_area: int = ...,
    min_circularity: float = ...,
    h: float = ...,
    min_distance: int = ...,
    chunk_size: int = ...,
    labels: bool = ...,
    coordinate_system: str | None = ...,
    key_added: str = ...,
    copy: bool = ...,
) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]: ...
@overload
def detect_blobs(
    sdata: SpatialData,
    image_key: str | None = ...,
    *,
    channel: int | str = ...,
    level: int = ...,
    sigma: float | None = ...,
    n_std: float = ...,
    threshold: float | None = ...,
    bright: bool = ...,
    min_area: int = ...,
    max_area: int = ...,
    min_circularity: float = ...,
    h: float = ...,
    min_distance: int = ...,
    chunk_size: int = ...,
    labels: bool = ...,
    coordinate_system: str | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def detect_blobs(
    sdata: SpatialData,
    image_key: str | None = ...,
    *,
    channel: int | str = ...,
    level: int = ...,
    sigma: float | None = ...,
    n_std: float = ...,
    threshold: float | None = ...,
    bright: bool = ...,
    min_area: int = ...,
    max_area: int = ...,
    min_circularity: float = ...,
    h: float = ...,
    min_distance: int = ...,
    chunk_size: int = ...,
    labels: bool = ...,
    coordinate_system: str | None = ...,
    key_added: str = ...,
    copy: Literal[True],
) -> SpatialData: ...
@validate_params(
    image_key=[Instance((str,)), None],
    channel=Instance((numbers.Integral, str)),
    level=Interval(int, 0, None),
    sigma=[Interval(float, 0, None, "neither"), None],
    n_std=Interval(float, None, None),
    threshold=[Interval(float, None, None), None],
    bright=Instance((bool,)),
    min_area=Interval(int, 1, None),
    max_area=Interval(int, 1, None),
    min_circularity=Interval(float, 0, 1.5),
    h=Interval(float, 0, None, "neither"),
    min_distance=Interval(int, 1, None),
    chunk_size=Interval(int, 16, None),
    labels=Instance((bool,)),
    coordinate_system=[Instance((str,)), None],
    key_added=Instance((str,)),
    copy=Instance((bool,)),
)
@inject_docs()
def detect_blobs(
    sdata: SpatialData | np.ndarray | da.Array,
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
    key_added: str = Key.default.blobs,
    copy: bool = False,
) -> SpatialData | pd.DataFrame | tuple[pd.DataFrame, np.ndarray] | None:
    """Detect labelled cells (round blobs) in an image: the CellMap2D segmentation, chunked with overlap.

    The segmentation of CellMap2D :cite:p:`topilko2025cellmap2d`.

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
    min_area
        Smallest kept region, in pixels.
    max_area
        Largest kept region, in pixels.
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

    See Also
    --------
    :func:`stmap.tl.density`
        Density maps of the detected cells.
    :doc:`/more_than_one_machine`
        Whole slides, chunk by chunk, on a dask cluster.

    Examples
    --------
    Three bright round cells on a dark background (a DAPI-like image):

    >>> import numpy as np
    >>> import spatialdata as sd
    >>> import stmap as st
    >>> from spatialdata.models import Image2DModel
    >>> yy, xx = np.mgrid[0:128, 0:128]
    >>> image = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0) for x, y in [(30, 30), (90, 40), (60, 100)])
    >>> sdata = sd.SpatialData(images={"dapi": Image2DModel.parse(image[None], dims=("c", "y", "x"))})
    >>> st.pp.detect_blobs(sdata, "dapi", min_area=10, max_area=200)
    >>> sdata.points["stmap_blobs"].compute()[["x", "y"]].to_numpy().tolist()  # centroids (pixel centres)
    [[30.5, 30.5], [90.5, 40.5], [60.5, 100.5]]
    """
    import dask.array as da

    check_name(key_added, "key_added")
    if max_area < min_area:
        raise StmapInputError(f"Need 1 <= min_area <= max_area, got min_area={min_area}, max_area={max_area}.")
    sigma_given = sigma is not None
    if sigma is None:  # the disk of sqrt(min_area * max_area) pixels: r / sqrt(2)
        sigma = float(np.sqrt(np.sqrt(min_area * max_area) / np.pi) / np.sqrt(2.0))
    opts = _BlobParams(
        sigma=float(sigma),
        n_std=float(n_std),
        threshold=threshold,
        bright=bright,
        min_area=int(min_area),
        max_area=int(max_area),
        min_circularity=float(min_circularity),
        h=float(h),
        min_distance=int(min_distance),
        chunk_size=int(chunk_size),
        labels=labels,
    )
    if isinstance(sdata, np.ndarray | da.Array):
        if sdata.ndim != 2:
            raise StmapInputError(f"Pass a 2D (y, x) array, got shape {sdata.shape}.")
        _check_size(sdata.shape, opts.sigma, sigma_given)
        df, lab, _ = _detect(sdata, opts)
        return (df, lab) if labels and lab is not None else df
    if not is_spatialdata(sdata):
        raise TypeError(f"Expected a SpatialData or a 2D array, got {type(sdata).__name__}.")
    image_key, data, transforms = _image_channel(sdata, image_key, channel, level, coordinate_system)
    _check_size(data.shape, opts.sigma, sigma_given)

    start = logg.info(f"detecting blobs in {image_key!r} (level {level}, {data.shape[0]}x{data.shape[1]} px)")
    df, lab, thr = _detect(data, opts)
    logg.info(f"    {len(df)} blob(s) kept (threshold {thr:.4g})")
    if not len(df):
        logg.warning(f"No blob passed the filters in {image_key!r}; nothing written. Lower `n_std` or check `bright`.")
        return _unmodified_copy(sdata) if copy else None
    params = {k: v for k, v in asdict(opts).items() if k != "labels"}
    params |= {"image_key": image_key, "channel": channel, "level": level, "labels": labels}
    res = _write(sdata, df, lab, transforms, params, key_added)
    res.uns(key_added, {"threshold": thr, "n_blobs": len(df), "image_key": image_key, "level": level})
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out


def _image_channel(
    sdata: Any, image_key: str | None, channel: int | str, level: int, coordinate_system: str | None
) -> tuple[str, Any, dict[str, Any]]:
    """The image's name, the ``(y, x)`` array of one channel at one level, and the level's transformations."""
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
    return image_key, lv.transpose("c", "y", "x").data[ci], dict(transforms)


def _write(
    sdata: Any,
    df: pd.DataFrame,
    lab: np.ndarray | None,
    transforms: dict[str, Any],
    params: dict[str, Any],
    key_added: str,
) -> Results:
    """Queue the centroids (points), their table and, optionally, the label image."""
    import anndata as ad
    from spatialdata.models import Labels2DModel, PointsModel

    keys = Key.blobs(key_added)
    pts_df = df.copy()
    pts_df["x"] += 0.5  # pixel (row, col) is centred at intrinsic (col + 0.5, row + 0.5)
    pts_df["y"] += 0.5
    points = PointsModel.parse(pts_df, coordinates={"x": "x", "y": "y"}, transformations=dict(transforms))
    obs = df[["area", "circularity", "response", "label"]].copy()
    obs.index = obs.index.astype(str)
    table = ad.AnnData(X=np.zeros((len(df), 0), dtype=np.float32), obs=obs)
    host = TableContext(sdata, table, keys.table, keys.points, None, None, "points", next(iter(transforms)))
    res = Results(host, key_added, params)
    res.element(keys.points, points)
    if lab is not None:
        dt = np.int32 if lab.max() < np.iinfo(np.int32).max else np.int64
        labels = Labels2DModel.parse(lab.astype(dt), dims=("y", "x"), transformations=dict(transforms))
        res.element(keys.labels, labels)
    res.table(keys.table, table, region=keys.points, instance_ids=np.arange(len(df)))
    return res
