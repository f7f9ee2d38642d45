"""Image patches around spots, cut lazily from dask images at a size given in micrometres."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._errors import StmapInputError
from ._resolve import ImageContext, TableContext

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["PatchSpec", "patch_spec", "extract_patches"]


@dataclass(frozen=True)
class PatchSpec:
    """How patches are cut: pyramid level, size in pixels of that level, output size, micrometres per pixel.

    Attributes
    ----------
    level
        Pyramid level the patches are cut from.
    size_px
        Side of the square cut, in pixels of ``level``.
    out_px
        Side of the returned patches (resampled from ``size_px`` when different).
    size_um
        Side in micrometres.
    mpp
        Micrometres per output pixel.
    """

    level: int
    size_px: int
    out_px: int
    size_um: float
    mpp: float


def patch_spec(
    ctx: TableContext,
    image: ImageContext,
    size_um: float,
    *,
    out_px: int | None = None,
    mpp: float | None = None,
    level: int | None = None,
) -> PatchSpec:
    """Choose the pyramid level and pixel sizes of patches of side ``size_um`` micrometres.

    Parameters
    ----------
    ctx, image
        From :func:`stmap._core.resolve` and :meth:`TableContext.image`.
    size_um
        Patch side in micrometres.
    out_px
        Side of the returned patches in pixels. ``None`` keeps the native resolution of ``level``.
    mpp
        Micrometres per full-resolution (level 0) pixel, when the coordinate system's unit is not recorded.
    level
        Pyramid level; by default the coarsest level that still has at least ``out_px`` pixels across the patch
        (level 0 when ``out_px`` is ``None``).

    Returns
    -------
    The :class:`PatchSpec`.
    """
    if not np.isfinite(size_um) or size_um <= 0:
        raise StmapInputError(f"Patch size must be a positive number of micrometres, got {size_um!r}.")
    um_per_unit = ctx.require_um_per_unit(mpp, image)
    size_units = size_um / um_per_unit
    if level is None:
        level = 0 if out_px is None else image.level_for(size_units / out_px)
    if not 0 <= level < len(image.levels):
        raise StmapInputError(f"Image {image.name!r} has {len(image.levels)} levels; level={level} does not exist.")
    size_px = max(1, round(size_units / image.pixel_size(level)))
    out = size_px if out_px is None else int(out_px)
    return PatchSpec(level=level, size_px=size_px, out_px=out, size_um=float(size_um), mpp=float(size_um) / out)


def extract_patches(
    image: ImageContext, centers: np.ndarray, spec: PatchSpec, *, fill_value: float = 0, chunk_size: int = 256
) -> da.Array:
    """Cut square patches centred on ``centers`` as a lazy ``(n, c, out_px, out_px)`` dask array.

    Parameters
    ----------
    image
        The image.
    centers
        ``(n, 2)`` centres ``(x, y)`` in the image's coordinate system.
    spec
        From :func:`patch_spec`.
    fill_value
        Value for pixels outside the image (patches near the border are padded).
    chunk_size
        Patches per dask chunk along the first axis.

    Returns
    -------
    Lazy dask array; nothing is read until it is computed (e.g. batch by batch).
    """
    import dask
    import dask.array as da

    arr = image.levels[spec.level]
    c, h, w = arr.shape
    s, out_px = spec.size_px, spec.out_px
    px = image.to_pixels(np.asarray(centers, dtype=float), spec.level)
    x0 = np.floor(px[:, 0] - s / 2.0 + 0.5).astype(np.int64)
    y0 = np.floor(px[:, 1] - s / 2.0 + 0.5).astype(np.int64)
    if len(px) == 0:
        return da.zeros((0, c, out_px, out_px), dtype=arr.dtype)
    # batch spatially close patches together so each batch reads one small window of a (possibly huge) image
    order = np.lexsort((x0 // (4 * s), y0 // (4 * s)))
    chunks = []
    for start in range(0, len(order), chunk_size):
        sel = order[start : start + chunk_size]
        xs, ys = x0[sel], y0[sel]
        bx0, by0 = min(max(int(xs.min()), 0), w - 1), min(max(int(ys.min()), 0), h - 1)
        bx1, by1 = max(min(int(xs.max()) + s, w), bx0 + 1), max(min(int(ys.max()) + s, h), by0 + 1)
        job = dask.delayed(_cut_batch)(arr[:, by0:by1, bx0:bx1], xs - bx0, ys - by0, s, out_px, fill_value)
        chunks.append(da.from_delayed(job, shape=(len(sel), c, out_px, out_px), dtype=arr.dtype))
    stacked = da.concatenate(chunks, axis=0)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return stacked[inverse].rechunk({0: chunk_size})


def _cut_batch(
    window: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: int, out_px: int, fill_value: float
) -> np.ndarray:
    """Cut (and resample) patches whose top-left corners ``xs, ys`` are relative to ``window``."""
    window = np.asarray(window)
    c, wh, ww = window.shape
    out = np.full((len(xs), c, size, size), fill_value, dtype=window.dtype)
    for i, (x, y) in enumerate(zip(xs, ys)):
        sx0, sy0, sx1, sy1 = max(x, 0), max(y, 0), min(x + size, ww), min(y + size, wh)
        if sx1 > sx0 and sy1 > sy0:
            out[i, :, sy0 - y : sy1 - y, sx0 - x : sx1 - x] = window[:, sy0:sy1, sx0:sx1]
    if out_px == size:
        return out
    from skimage.transform import resize

    res = resize(
        out.astype(np.float32), (len(xs), c, out_px, out_px), order=1, anti_aliasing=out_px < size, preserve_range=True
    )
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        res = np.clip(np.round(res), info.min, info.max)
    return res.astype(out.dtype)
