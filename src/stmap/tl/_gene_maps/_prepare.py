"""Preparation of a section for gene maps: the table and its H&E, the working image, spot discs and targets.

Nothing is written; every input problem raises here, before any training or inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core import StmapInputError, is_spatialdata, resolve
from stmap._core._image import intensity_range, rgb_channels, to_unit, warn_nan

from ._genes import targets

if TYPE_CHECKING:
    from stmap._core import ImageContext, TableContext

    from ._model import GeneMapModel

#: Default working resolution: this many pixels across a spot diameter.
PX_PER_SPOT = 16.0


@dataclass
class Section:
    """A spot table and its H&E at the working resolution, ready for training or inference."""

    ctx: TableContext
    img: ImageContext
    #: Genes, in channel order.
    genes: list[str]
    #: Genes absent from the table (a model's genes on another table): no targets, no prior.
    missing: list[str]
    #: ``(n,)`` spots that train (one call) and feed the priors.
    train: np.ndarray
    #: ``(n, G)`` float64 targets (log-normalised expression unless ``normalize=False``; 0 for missing genes).
    Y: np.ndarray
    #: Lazy ``(3, H, W)`` float32 working image in ``[0, 1]``.
    work: Any
    #: Working pixels ``(x, y, 1)`` -> coordinate system.
    T: np.ndarray
    #: Pyramid level read and integer coarsening factor applied to it.
    level: int
    k: int
    #: Working pixel size (coordinate units) and spot radius (working pixels).
    px: float
    radius: float
    #: Median spot diameter (coordinate units).
    diameter: float
    #: ``(n, 2)`` spot centres in working pixels ``(x, y)``.
    centers: np.ndarray
    #: Training tile side (working pixels, a multiple of the network's size multiple).
    tile: int
    #: Training crop ``(y0, x0, y1, x1)``: the spots' bounding box widened by half a tile and a spot radius.
    box: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the working image."""
        return int(self.work.shape[1]), int(self.work.shape[2])

    @property
    def outside(self) -> np.ndarray:
        """Spots whose centre is off the image."""
        h, w = self.shape
        c = self.centers
        return (c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] >= w) | (c[:, 1] >= h)

    @property
    def inside(self) -> np.ndarray:
        """Spots whose centre is on the image."""
        return ~self.outside

    @property
    def local(self) -> np.ndarray:
        """Spot centres in pixels of the training crop."""
        return self.centers - np.array([self.box[1], self.box[0]])

    @property
    def crop_transform(self) -> np.ndarray:
        """Pixels of the training crop -> coordinate system."""
        y0, x0 = self.box[:2]
        return self.T @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]])

    @property
    def crop_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the training crop."""
        y0, x0, y1, x1 = self.box
        return y1 - y0, x1 - x0


def resolve_section(
    sdata: Any, table_key: str | None, coordinate_system: str | None, image_key: str | None
) -> tuple[TableContext, ImageContext, np.ndarray]:
    """The table, its H&E and its spot diameters; refuses AnnData (no image elements) and spots without a size."""
    if not is_spatialdata(sdata):
        raise StmapInputError(
            "gene_maps writes an image element and needs a SpatialData object; convert an AnnData with "
            "`st.pp.to_spatialdata(adata)`."
        )
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    img = ctx.image(image_key)
    diam = ctx.diameters
    if diam is None:
        raise StmapInputError(
            f"The spots of table {ctx.table_key!r} have no size; gene maps average each map over a spot's disc. "
            "Annotate circles (with a radius) or polygons."
        )
    return ctx, img, diam


def round_tile(tile_px: int, depth: int) -> int:
    """``tile_px`` rounded up to a multiple of the network's size multiple ``2 ** depth``; refuses too small tiles."""
    if tile_px < 2**depth * 4:
        raise StmapInputError(f"tile_px={tile_px} is too small for depth={depth}; use at least {2**depth * 4}.")
    return int(math.ceil(tile_px / 2**depth) * 2**depth)


def train_spots(ctx: TableContext, train_mask: str | Sequence[bool] | np.ndarray | None) -> np.ndarray:
    """Boolean ``(n,)`` mask of the training spots from an ``obs`` column, an array, or ``None`` (all)."""
    adata = ctx.adata
    if train_mask is None:
        return np.ones(adata.n_obs, dtype=bool)
    if isinstance(train_mask, str):
        if train_mask not in adata.obs:
            raise StmapInputError(f"train_mask {train_mask!r} is not an obs column of {ctx.table_key!r}.")
        return adata.obs[train_mask].to_numpy().astype(bool)
    train = np.asarray(train_mask, dtype=bool)
    if train.shape != (adata.n_obs,):
        raise StmapInputError(f"train_mask has {train.size} values for {adata.n_obs} spots; give one per spot.")
    return train


def model_pixel_size(model: GeneMapModel, ctx: TableContext) -> float:
    """The model's working pixel size in this table's coordinate units (through micrometres when both know them)."""
    if ctx.um_per_unit is None or model.pixel_size_um is None:
        return float(model.pixel_size)
    return float(model.pixel_size_um / ctx.um_per_unit)


def working_image(img: ImageContext, scale: float) -> tuple[Any, np.ndarray, int, int]:
    """Lazy float32 RGB ``(3, y, x)`` in ``[0, 1]`` at ~``scale`` cs units per pixel, its transform, level, factor.

    Intensities by :mod:`stmap._core._image`'s rule (uint16 by its range, grey replicated, NaN read as white with a
    warning). The image is never resampled arbitrarily: a pyramid level, coarsened by an integer factor.
    """
    import dask.array as da

    level = img.level_for(scale)
    k = max(1, int(round(scale / img.pixel_size(level))))
    arr = img.levels[level]
    c = arr.shape[0]
    if c not in (1, 3, 4):
        raise StmapInputError(
            f"Image {img.name!r} has {c} channels; gene maps need an RGB(A) or grey H&E image. "
            "Pick the channels first (e.g. `sdata[image].sel(c=[...])`)."
        )
    arr = rgb_channels(arr, 0, name=img.name)  # alpha dropped, grey replicated
    if np.issubdtype(np.dtype(arr.dtype), np.floating):  # the warning points at the caller of the tool
        warn_nan(img.name, int(da.isnan(arr).sum().compute()), int(np.prod(arr.shape)), "image read", stacklevel=7)
    arr = to_unit(arr, intensity_range(img))
    if k > 1:
        h, w = (arr.shape[1] // k) * k, (arr.shape[2] // k) * k
        arr = da.coarsen(np.mean, arr[:, :h, :w], {1: k, 2: k})
    transform = img.transforms[level] @ np.diag([k, k, 1.0])
    return arr.astype(np.float32), transform, level, k


def disc_stencil(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets ``(dy, dx)`` of a disc of ``radius`` pixels around a centre pixel."""
    r = int(math.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dx**2 + dy**2 <= radius**2
    return dy[inside].astype(np.int64), dx[inside].astype(np.int64)


def prepare(
    ctx: TableContext,
    img: ImageContext,
    diam: np.ndarray,
    *,
    genes: list[str],
    train: np.ndarray,
    layer: str | None,
    normalize: bool,
    px: float,
    tile: int,
) -> Section:
    """Targets, working image and spot geometry of a resolved section (nothing written)."""
    adata = ctx.adata
    Y = targets(adata, genes, layer=layer, normalize=normalize, what=f"table {ctx.table_key!r}")
    if not np.isfinite(px) or px <= 0:
        raise StmapInputError(f"scale must be a positive pixel size, got {px!r}.")
    work, T, level, k = working_image(img, px)
    px_eff = float(np.sqrt(abs(np.linalg.det(T[:2, :2]))))
    radius = float(np.median(diam)) / 2 / px_eff
    if radius < 1.0:
        raise StmapInputError(
            f"Spots are {2 * radius:.2f} px across at the working scale ({px_eff:.3g} units/px): smaller than a "
            "pixel. Pass a smaller scale= (or use an image with a finer resolution)."
        )
    centers = np.linalg.solve(T, np.c_[ctx.coords, np.ones(adata.n_obs)].T).T[:, :2]  # working (x, y) pixels
    sec = Section(
        ctx=ctx,
        img=img,
        genes=list(genes),
        missing=[g for g in genes if g not in adata.var_names],
        train=train,
        Y=Y,
        work=work,
        T=T,
        level=level,
        k=k,
        px=px_eff,
        radius=radius,
        diameter=float(np.median(diam)),
        centers=centers,
        tile=tile,
        box=(0, 0, 0, 0),
    )
    if sec.outside.all():
        raise StmapInputError(f"No spot of {ctx.table_key!r} lies on image {img.name!r}; check the coordinates.")
    sec.box = _crop_box(centers[sec.inside], tile // 2 + int(math.ceil(radius)) + 1, sec.shape)
    return sec


def _crop_box(centers: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)``: the bounding box of ``centers`` widened by ``margin``, within the image."""
    h, w = shape
    y0 = int(max(0, math.floor(centers[:, 1].min()) - margin))
    x0 = int(max(0, math.floor(centers[:, 0].min()) - margin))
    y1 = int(min(h, math.ceil(centers[:, 1].max()) + margin + 1))
    x1 = int(min(w, math.ceil(centers[:, 0].max()) + margin + 1))
    return y0, x0, y1, x1
