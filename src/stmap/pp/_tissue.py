"""Tissue mask of an H&E: Otsu on the colour saturation at a coarse resolution, holes filled, specks removed.

The anchor is squidpy's ``squidpy.experimental.im.detect_tissue`` (Otsu on grey, holes filled, components filtered by
area, then upscaled to the full image). Here the mask stays at the coarse resolution it was computed at, with the
transformation that places it over the image (a labels element of about ``max_pixels`` pixels however large the
image): nothing of the image's full size is ever built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from .._core import Results, StmapInputError, TableContext, inject_docs, unknown_key
from .._core import _logging as logg
from .._core._constants import Key
from .._core._params import Instance, Interval, validate_params

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["detect_tissue", "tissue_mask", "tissue_window"]


def _levels(sdata: Any, image_key: str | None) -> tuple[str, list[Any]]:
    from .._core._resolve import _image_levels

    names = list(sdata.images)
    if image_key is None:
        rgb = [n for n in names if _image_levels(sdata.images[n])[0].shape[0] in (3, 4)]
        cands = rgb or names
        if len(cands) != 1:
            raise StmapInputError(f"Pass `image_key=`; the object has images {names or 'none'}.")
        image_key = cands[0]
    if image_key not in sdata.images:
        raise unknown_key("Image", image_key, names, "sdata.images")
    levels = _image_levels(sdata.images[image_key])
    if "z" in levels[0].dims:
        raise StmapInputError(f"Image {image_key!r} is 3D; detect the tissue per 2D section (a 2D image element).")
    if levels[0].shape[0] not in (1, 3, 4):
        raise StmapInputError(
            f"Image {image_key!r} has {levels[0].shape[0]} channels; the tissue mask needs an RGB(A) or grey H&E."
        )
    return image_key, levels


def _coarse(levels: list[Any], max_pixels: int) -> tuple[np.ndarray, int, int]:
    """The image at ``<= max_pixels`` pixels, computed (it is small): ``(c, y, x)`` in ``[0, 1]``, level, factor.

    The finest level that fits (else the coarsest), block-averaged by an integer factor.
    """
    import dask.array as da

    from .._core._image import intensity_range, rgb_channels, to_unit

    level = len(levels) - 1
    for i, lv in enumerate(levels):
        if lv.shape[1] * lv.shape[2] <= max_pixels:
            level = i
            break
    arr = levels[level].transpose("c", "y", "x").data
    arr = arr if isinstance(arr, da.Array) else da.from_array(arr)
    _, h0, w0 = arr.shape
    k = max(1, int(np.ceil(np.sqrt(h0 * w0 / max_pixels))))
    divisor = intensity_range(levels[level])
    h, w = h0 // k, w0 // k
    out = np.empty((3, h, w), dtype=np.float32)
    # windows of about 2048 x 2048 pixels (whole k x k blocks), each read on its own: dask's scheduler, given the
    # whole reduction at once, reads the image ahead of the averaging and holds it (memory grew with the image)
    step = max(1, 2048 // k)
    for y in range(0, h, step):
        for x in range(0, w, step):
            y1, x1 = min(h, y + step), min(w, x + step)
            win = arr[:, y * k : y1 * k, x * k : x1 * k].compute(scheduler="synchronous")
            win = np.asarray(to_unit(rgb_channels(win, 0), divisor), dtype=np.float32)
            c = win.shape[0]
            out[:, y:y1, x:x1] = win.reshape(c, y1 - y, k, x1 - x, k).mean(axis=(2, 4))
    return out, level, k


def tissue_score(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel tissue score of a ``(3, y, x)`` image in ``[0, 1]``.

    The larger of the HSV saturation ``(max - min) / max`` and the darkness ``1 - mean``: stained tissue is
    saturated (eosin) or dark (haematoxylin-dense nuclei); glass and white background are neither. Black pixels
    (``max < 0.05``: padding, off-slide) score 0.
    """
    hi, lo = rgb.max(0), rgb.min(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = np.where(hi > 1e-6, (hi - lo) / hi, 0.0)
    score = np.maximum(sat, 1.0 - rgb.mean(0))
    return np.where(hi < 0.05, 0.0, score).astype(np.float32)


def mask_from_score(score: np.ndarray, *, min_area: float, max_hole: float, sigma: float = 1.0) -> np.ndarray:
    """Labels (0 background, 1..K tissue pieces) from a tissue score.

    Gaussian smoothing, Otsu threshold, holes up to ``max_hole`` of the image area filled, pieces under ``min_area``
    of it removed.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    s = ndi.gaussian_filter(score.astype(np.float32), sigma) if sigma > 0 else score
    if float(s.max() - s.min()) < 1e-6:  # a flat image: no tissue to tell from background
        return np.zeros(s.shape, dtype=np.int32)
    mask = s > threshold_otsu(s)
    eight = np.ones((3, 3), bool)
    if max_hole > 0:  # background pieces not touching the border and at most max_hole of the image: holes
        bg, _ = ndi.label(~mask)
        area = np.bincount(bg.ravel())
        edge = np.unique(np.r_[bg[0], bg[-1], bg[:, 0], bg[:, -1]])
        hole = area <= max_hole * mask.size
        hole[0], hole[edge] = False, False
        mask |= hole[bg]
    if min_area > 0:
        lab, _ = ndi.label(mask, structure=eight)
        keep = np.bincount(lab.ravel()) >= min_area * mask.size
        keep[0] = False
        mask = keep[lab]
    lab, _ = ndi.label(mask, structure=eight)
    return lab.astype(np.int32)


@overload
def detect_tissue(
    sdata: SpatialData,
    image_key: str | None = ...,
    *,
    max_pixels: int = ...,
    min_area: float = ...,
    max_hole: float = ...,
    sigma: float = ...,
    key_added: str | None = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def detect_tissue(
    sdata: SpatialData,
    image_key: str | None = ...,
    *,
    max_pixels: int = ...,
    min_area: float = ...,
    max_hole: float = ...,
    sigma: float = ...,
    key_added: str | None = ...,
    copy: Literal[True],
) -> SpatialData: ...
@validate_params(
    image_key=[Instance((str,)), None],
    max_pixels=Interval(int, 1024, None),
    min_area=Interval(float, 0, 1),
    max_hole=Interval(float, 0, 1),
    sigma=Interval(float, 0, None),
    key_added=[Instance((str,)), None],
    copy=Instance((bool,)),
)
@inject_docs()
def detect_tissue(
    sdata: SpatialData,
    image_key: str | None = None,
    *,
    max_pixels: int = 1_000_000,
    min_area: float = 0.001,
    max_hole: float = 0.01,
    sigma: float = 1.0,
    key_added: str | None = None,
    copy: bool = False,
) -> SpatialData | None:
    """Detect the tissue on an H&E: a labels element (0 background, 1..K pieces of tissue) over the image.

    The image is read lazily at a coarse resolution (the finest pyramid level with at most ``max_pixels`` pixels,
    block-averaged by an integer factor when no level is that small), so the cost does not grow with the image. The
    tissue score is the larger of the colour saturation and the darkness (stained tissue is pink/purple or dark,
    glass and background white or light grey; black padding scores 0), smoothed by a Gaussian of ``sigma`` coarse
    pixels and thresholded by Otsu's method; holes smaller than ``max_hole`` of the image area are filled and pieces
    smaller than ``min_area`` of it removed. The labels stay at that coarse resolution, with the transformation that
    places them over the image in each of its coordinate systems. As squidpy's
    ``squidpy.experimental.im.detect_tissue`` (Otsu on grey, holes filled, small pieces dropped), but never upscaled
    to the full image (a mask as large as the image).

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with an H&E image element.
    image_key
        The image; default: the only RGB(A) image (or the only image).
    max_pixels
        Largest number of pixels of the resolution the mask is computed (and stored) at.
    min_area
        Pieces of tissue smaller than this fraction of the image are dropped (debris, dust).
    max_hole
        Holes smaller than this fraction of the image are filled (nuclei-free gaps, fat, small lumina).
    sigma
        Gaussian smoothing of the score before thresholding, in coarse pixels (0: none).
    key_added
        Name of the labels element; default ``'<image>_tissue'``.
    {copy}

    Returns
    -------
    ``None``, or with ``copy=True`` the modified copy. Writes labels element ``'<image>_tissue'`` (``int32``,
    ``y, x``).

    Raises
    ------
    StmapInputError
        No such image, a 3D image, an image without 1, 3 or 4 channels, or an invalid parameter. Nothing is written.

    See Also
    --------
    :func:`stmap.pp.tissue_mask`
        The name of an image's tissue mask, if one was detected.
    :func:`stmap.tl.gene_maps`
        Masks the maps to the tissue.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.detect_tissue(sdata, "he")
    >>> st.pp.tissue_mask(sdata, "he")
    'he_tissue'
    >>> bool(sdata.labels["he_tissue"].max() >= 1)
    True
    """
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import get_transformation

    from .._core._elements import to_transformation
    from .._core._names import check_name

    start = logg.info("detecting tissue")
    image_key, levels = _levels(sdata, image_key)
    name = Key.tissue(image_key) if key_added is None else key_added
    check_name(name, "key_added")
    rgb, level, k = _coarse(levels, max_pixels)
    lab = mask_from_score(tissue_score(rgb), min_area=min_area, max_hole=max_hole, sigma=sigma)
    transforms = {}
    for cs, t in get_transformation(levels[level], get_all=True).items():
        m = t.to_affine_matrix(("x", "y"), ("x", "y")) @ np.diag([k, k, 1.0])
        transforms[cs] = to_transformation(m)
    labels = Labels2DModel.parse(lab, dims=("y", "x"), transformations=transforms)
    params = {"image_key": image_key, "level": level, "coarsen": k, "max_pixels": max_pixels}
    params |= {"min_area": min_area, "max_hole": max_hole, "sigma": sigma}
    import anndata as ad

    host = TableContext(
        sdata, ad.AnnData(np.zeros((0, 0), np.float32)), None, None, None, None, None, next(iter(transforms))
    )
    res = Results(host, name, params)
    res.element(name, labels)
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added labels {name!r} ({int(lab.max())} pieces, level {level}, x{k})")
    return out


def tissue_mask(sdata: Any, image_key: str) -> str | None:
    """The name of the tissue mask of ``image_key`` (from :func:`stmap.pp.detect_tissue`), ``None`` if absent.

    The mask is the labels element ``'<image>_tissue'``.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData`.
    image_key
        The image element.

    Returns
    -------
    The labels element's name, or ``None``.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.tissue_mask(sdata, "he") is None
    True
    """
    name = Key.tissue(image_key)
    labels = getattr(sdata, "labels", None)
    return name if labels is not None and name in labels else None


def tissue_window(labels: np.ndarray, to_labels: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Boolean ``(h, w)`` tissue mask on a pixel window of another grid (nearest labels pixel; off the labels: False).

    ``to_labels`` maps the grid's pixel ``(x, y, 1)`` (pixel centres at integer + 0.5) to the labels' pixels.
    """
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    p = to_labels @ np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5, np.ones(xx.size)])
    ix, iy = np.floor(p[0]).astype(np.int64), np.floor(p[1]).astype(np.int64)
    lh, lw = labels.shape
    ok = (ix >= 0) & (ix < lw) & (iy >= 0) & (iy < lh)
    out = np.zeros(xx.size, dtype=bool)
    out[ok] = labels[iy[ok], ix[ok]] > 0
    return out.reshape(h, w)
