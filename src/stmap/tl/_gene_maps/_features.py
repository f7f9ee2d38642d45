"""Histology features of spot-sized patches on a regular grid of working pixels (the histology prior's inputs)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core._image import intensity_range

from ._prepare import disc_stencil

if TYPE_CHECKING:
    from stmap._core import ImageContext, PatchSpec, TableContext

#: Upper bound on the number of histology-feature patches of the grid (~4 ms each on one CPU core).
MAX_FEATURE_POINTS = 40_000
#: Side of the histology-feature patches, in working pixels at which they are rendered (the extractor's input).
_FEATURE_PATCH_PX = 48


@dataclass
class FeatureGrid:
    """Standardised histology features of spot-sized patches centred on a regular grid of working pixels.

    Grid point ``(i, j)`` sits at working pixel ``(y, x) = (oy + i * stride, ox + j * stride)``; between grid points
    the features are interpolated bilinearly (a per-pixel function, so windows tile exactly).
    """

    feats: np.ndarray  # (P, gh, gw) float32, standardised
    oy: float
    ox: float
    stride: float

    def sample(self, values: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of grid ``values`` ``(C, gh, gw)`` at working pixels -> ``(C, *yy.shape)``."""
        from scipy.ndimage import map_coordinates

        gy = (np.asarray(yy, dtype=np.float64) - self.oy) / self.stride
        gx = (np.asarray(xx, dtype=np.float64) - self.ox) / self.stride
        return np.stack([map_coordinates(v, [gy, gx], order=1, mode="nearest") for v in values]).astype(np.float32)

    def window(self, values: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """``values`` interpolated on the working-pixel window ``[y0, y0 + h) x [x0, x0 + w)``: ``(C, h, w)``."""
        yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
        return self.sample(values, yy, xx)

    def shifted(self, y0: int, x0: int) -> FeatureGrid:
        """The same grid in pixels of an image whose pixel ``(0, 0)`` is this grid's ``(-y0, -x0)``."""
        return FeatureGrid(feats=self.feats, oy=self.oy + y0, ox=self.ox + x0, stride=self.stride)


def grid_stride(radius: float, h: int, w: int) -> float:
    """Grid step in working pixels: every half spot, coarser when the ``h x w`` box would need too many patches."""
    return max(1.0, radius, math.sqrt(h * w / MAX_FEATURE_POINTS))


def feature_grid(
    ctx: TableContext,
    img: ImageContext,
    T: np.ndarray,
    box: tuple[int, int, int, int],
    stride: float,
    diameter: float,
    verbose: bool,
) -> FeatureGrid:
    """Handcrafted features (:func:`stmap.pp.handcrafted_features`) of spot-diameter patches on a grid over ``box``.

    ``box`` = ``(y0, x0, y1, x1)`` in working pixels; ``T`` maps working pixels to the coordinate system. Features
    are standardised over the grid.
    """
    import dask

    from stmap._core._patches import extract_patches, patch_spec
    from stmap.pp._extractors import handcrafted_features

    y0, x0, y1, x1 = box
    ys = np.arange(y0 + stride / 2, y1, stride)
    xs = np.arange(x0 + stride / 2, x1, stride)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    pts = (T @ np.c_[gx.ravel(), gy.ravel(), np.ones(gx.size)].T).T[:, :2]
    u = ctx.um_per_unit if ctx.um_per_unit is not None else 1.0
    mpp = None if ctx.um_per_unit is not None else img.pixel_size(0)
    spec = patch_spec(ctx, img, diameter * u, out_px=_FEATURE_PATCH_PX, mpp=mpp)
    sub, spec0 = _patch_source(img, spec, pts)
    divisor = intensity_range(img)
    lazy = extract_patches(sub, pts, spec0, fill_value=divisor, chunk_size=512)  # white beyond the image
    f = _featurise(lazy, handcrafted_features, 512, verbose, dask, divisor)
    mu, sd = f.mean(0), f.std(0)
    f = (f - mu) / np.where(sd > 1e-8, sd, 1.0)
    feats = f.T.reshape(-1, len(ys), len(xs)).astype(np.float32)
    return FeatureGrid(feats=feats, oy=float(ys[0]), ox=float(xs[0]), stride=float(stride))


def _featurise(lazy: Any, fn: Any, batch_size: int, verbose: bool, dask: Any, divisor: float) -> np.ndarray:
    """Features of lazy patches ``(n, c, p, p)``, batch by batch (one synchronous dask computation a batch)."""
    from tqdm.auto import tqdm

    from stmap._core._image import to_rgb_uint8

    out = []
    for s in tqdm(range(0, lazy.shape[0], batch_size), desc="histology features", disable=not verbose, leave=False):
        batch = np.asarray(dask.compute(lazy[s : s + batch_size], scheduler="synchronous")[0])
        out.append(np.asarray(fn(to_rgb_uint8(batch, divisor, name="image")), dtype=np.float32))
    return np.concatenate(out)


def _patch_source(img: ImageContext, spec: PatchSpec, pts: np.ndarray) -> tuple[ImageContext, PatchSpec]:
    """The window of the patch level under ``pts``, read once and resampled once to the patches' resolution.

    A lazy image would be decoded again for every batch of patches, and resampling every patch costs more than
    resampling the window. Returns the window as a one-level image (same coordinate system) and the patch spec on it.
    """
    import dask.array as da

    lv = img.levels[spec.level]
    _, h, w = lv.shape
    px = img.to_pixels(pts, spec.level)
    half = spec.size_px / 2 + 1
    bx0, by0 = int(max(0, np.floor(px[:, 0].min() - half))), int(max(0, np.floor(px[:, 1].min() - half)))
    bx1, by1 = int(min(w, np.ceil(px[:, 0].max() + half))), int(min(h, np.ceil(px[:, 1].max() + half)))
    window = np.asarray(lv[:, by0:by1, bx0:bx1].compute())
    shift = np.array([[1.0, 0, bx0], [0, 1.0, by0], [0, 0, 1.0]])
    f = spec.out_px / spec.size_px
    c, wh, ww = window.shape
    nh, nw = max(1, round(wh * f)), max(1, round(ww * f))
    if (nh, nw) != (wh, ww):
        from skimage.transform import resize

        res = resize(window.astype(np.float32), (c, nh, nw), order=1, anti_aliasing=f < 1, preserve_range=True)
        if np.issubdtype(window.dtype, np.integer):
            info = np.iinfo(window.dtype)
            res = np.clip(np.round(res), info.min, info.max)
        window = res.astype(window.dtype)
        shift = shift @ np.diag([ww / nw, wh / nh, 1.0])
    sub = dataclasses.replace(
        img, levels=[da.from_array(window, chunks=window.shape)], transforms=[img.transforms[spec.level] @ shift]
    )
    return sub, dataclasses.replace(spec, level=0, size_px=spec.out_px)


def disc_features(grid: FeatureGrid, centers: np.ndarray, radius: float, chunk: int = 256) -> np.ndarray:
    """Mean of the interpolated feature raster over each spot's disc: ``(n, P)`` (the map's spot average is linear)."""
    dy, dx = disc_stencil(radius)
    out = np.empty((len(centers), grid.feats.shape[0]), dtype=np.float64)
    for s in range(0, len(centers), chunk):
        c = centers[s : s + chunk]
        yy = np.rint(c[:, 1])[:, None] + dy[None, :]
        xx = np.rint(c[:, 0])[:, None] + dx[None, :]
        out[s : s + chunk] = grid.sample(grid.feats, yy, xx).mean(axis=2).T
    return out
