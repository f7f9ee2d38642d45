"""Gene maps on histology: per-pixel expression predicted on the H&E, written as an image element.

A fully convolutional network (:class:`stmap.models._genemap.GeneMapNet`) learns to reconstruct the H&E (SSIM
loss) and, in extra output channels, one map per gene whose average over each spot's disc matches the spot's
measured (log-normalised, per-gene standardised) expression. Training runs on tiles of a working resolution
chosen from the spot size; inference streams the whole (lazy, possibly multiscale) image through
:func:`dask.array.map_overlap` with a halo wider than the network's receptive field, so a tiled pass equals a
whole-image pass.

Pipeline: validate (nothing touched) -> prepare (genes, targets, working image, spot discs) -> train -> infer ->
write (image element ``"<image>_gene_maps"``, spot aggregates in ``obsm``, parameters in ``uns``).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from stmap._core import (
    Key,
    Results,
    StmapInputError,
    check_counts,
    get_counts,
    inject_docs,
    is_spatialdata,
    make_image,
    resolve,
)
from stmap._core import _logging as logg
from stmap._core._image import intensity_range, rgb_channels, to_unit, warn_nan

__all__ = ["gene_maps", "GeneMapModel"]

#: Default working resolution: this many pixels across a spot diameter.
_PX_PER_SPOT = 16.0

_TORCH_LOCK = threading.Lock()  # see predict_maps


# --------------------------------------------------------------------------------------------------------------------
# the trained model
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class GeneMapModel:
    """A trained gene-map network with what is needed to apply it to another image.

    Attributes
    ----------
    net
        The :class:`torch.nn.Module`.
    genes
        Gene names, in channel order.
    mean
        Per-gene mean of the targets (maps are ``net output * std + mean``).
    std
        Per-gene standard deviation of the targets.
    pixel_size_um
        Working pixel size in micrometres when known (``None`` if the coordinate unit is unknown), else see
        ``pixel_size``.
    pixel_size
        Working pixel size in coordinate-system units of the training image.
    normalize
        Whether targets were ``log1p`` of counts per 10^4.
    history
        Training loss per epoch.
    prior
        The priors the network was trained with (``'idw+histology'``, ``'idw'``, ``'histology'`` or ``None``).
    ridge_coef
        With a histology prior: the ridge regression weights ``(P, G)`` of the standardised targets on the
        standardised handcrafted features (:func:`stmap.pp.handcrafted_features`) of spot-sized patches.
    ridge_intercept
        With a histology prior: the ridge intercepts ``(G,)``.
    """

    net: Any
    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    pixel_size: float
    pixel_size_um: float | None = None
    normalize: bool = True
    history: list[float] = field(default_factory=list)
    prior: str | None = None
    ridge_coef: np.ndarray | None = None
    ridge_intercept: np.ndarray | None = None

    def save(self, path: str | Path) -> Path:
        """Save weights, genes and scaling to a torch file."""
        from stmap.models._train import save_checkpoint

        return save_checkpoint(
            path,
            self.net,
            config=self.net.config(),
            extra={
                "genes": list(self.genes),
                "mean": np.asarray(self.mean, dtype=float),
                "std": np.asarray(self.std, dtype=float),
                "pixel_size": float(self.pixel_size),
                "pixel_size_um": self.pixel_size_um,
                "normalize": bool(self.normalize),
                "history": list(self.history),
                "prior": self.prior,
                "ridge_coef": None if self.ridge_coef is None else np.asarray(self.ridge_coef, dtype=float),
                "ridge_intercept": None if self.ridge_intercept is None else np.asarray(self.ridge_intercept, float),
            },
            kind="GeneMapModel",
        )

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> GeneMapModel:
        """Load a model written by :meth:`save`.

        A file that is not a GeneMapModel saved by :meth:`save` (not a torch file, another kind of torch file, a
        file of another stmap model) raises :class:`~stmap.StmapInputError` naming it; a missing file
        :class:`FileNotFoundError`.
        """
        from stmap.models._genemap import GeneMapNet
        from stmap.models._train import load_checkpoint

        net, _, extra = load_checkpoint(
            path, GeneMapNet, device=device, kind="GeneMapModel", required=("genes", "mean", "std", "pixel_size")
        )
        return cls(
            net=net,
            genes=list(extra["genes"]),
            mean=np.asarray(extra["mean"], dtype=np.float32),
            std=np.asarray(extra["std"], dtype=np.float32),
            pixel_size=float(extra["pixel_size"]),
            pixel_size_um=extra.get("pixel_size_um"),
            normalize=bool(extra.get("normalize", True)),
            history=list(extra.get("history", [])),
            prior=extra.get("prior"),
            ridge_coef=None if extra.get("ridge_coef") is None else np.asarray(extra["ridge_coef"], dtype=np.float64),
            ridge_intercept=(
                None if extra.get("ridge_intercept") is None else np.asarray(extra["ridge_intercept"], dtype=np.float64)
            ),
        )


# --------------------------------------------------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------------------------------------------------
def _select_genes(adata, genes, groupby: str | None) -> list[str]:
    names = adata.var_names
    if isinstance(genes, str) and genes != "markers":
        genes = [genes]
    if isinstance(genes, str):  # "markers"
        if groupby is None or groupby not in adata.obs:
            have = [c for c in adata.obs.columns if isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
            raise StmapInputError(
                f"genes='markers' needs a clustering of the spots: pass groupby= with an obs column "
                f"(got {groupby!r}; categorical columns: {have})."
            )
        return _markers(adata, groupby)
    if isinstance(genes, int | np.integer):
        if genes < 1:
            raise StmapInputError(f"genes={genes}: ask for at least one gene.")
        return _variable_genes(adata, int(genes))
    genes = [str(g) for g in genes]
    if not genes:
        raise StmapInputError("genes is empty: give gene names, a number of variable genes, or 'markers'.")
    missing = [g for g in genes if g not in names]
    if missing:
        raise StmapInputError(
            f"{len(missing)} of {len(genes)} genes are not in the spot table (e.g. {missing[:5]}); "
            "check the names against table.var_names."
        )
    if len(set(genes)) != len(genes):
        raise StmapInputError("genes has duplicates; give each gene once.")
    return genes


def _log_norm(counts) -> np.ndarray:
    from scipy import sparse

    X = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    X = X.astype(np.float64)
    total = X.sum(axis=1, keepdims=True)
    return np.log1p(X / np.maximum(total, 1e-12) * 1e4)


def _variable_genes(adata, n: int) -> list[str]:
    counts = get_counts(adata, None, "the spot table")
    Y = _log_norm(counts)
    mean, var = Y.mean(0), Y.var(0)
    # dispersion relative to genes of similar mean (20 mean bins), as scanpy's 'seurat' flavour
    bins = np.quantile(mean, np.linspace(0, 1, 21))
    which = np.clip(np.searchsorted(bins, mean, side="right") - 1, 0, 19)
    disp = np.log(np.maximum(var, 1e-12) / np.maximum(mean, 1e-12))
    z = np.zeros_like(disp)
    for b in np.unique(which):
        m = which == b
        sd = disp[m].std()
        z[m] = (disp[m] - disp[m].mean()) / (sd if sd > 0 else 1.0)
    z[(mean <= 0) | (var <= 0)] = -np.inf
    order = np.argsort(-z, kind="stable")[: min(n, adata.n_vars)]
    return [str(g) for g in adata.var_names[order]]


def _markers(adata, groupby: str) -> list[str]:
    counts = get_counts(adata, None, "the spot table")
    Y = _log_norm(counts)
    groups = pd.Categorical(adata.obs[groupby].astype(str))
    out: list[str] = []
    for g in groups.categories:
        m = np.asarray(groups == g)
        if m.all() or not m.any():
            continue
        diff = Y[m].mean(0) - Y[~m].mean(0)
        for i in np.argsort(-diff, kind="stable"):
            name = str(adata.var_names[i])
            if name not in out:
                out.append(name)
                break
    if not out:
        raise StmapInputError(f"obs[{groupby!r}] has a single group: no markers can be found; pass genes= instead.")
    return out


def _working_image(img, scale: float) -> tuple[Any, np.ndarray, int, int]:
    """Lazy float32 RGB ``(3, y, x)`` in ``[0, 1]`` at ~``scale`` cs units per pixel, its transform, level, factor.

    Intensities by :mod:`stmap._core._image`'s rule (uint16 by its range, grey replicated, NaN read as white with a
    warning).
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
    if np.issubdtype(np.dtype(arr.dtype), np.floating):
        warn_nan(img.name, int(da.isnan(arr).sum().compute()), int(np.prod(arr.shape)), "image read", stacklevel=4)
    arr = to_unit(arr, intensity_range(img))
    if k > 1:
        h, w = (arr.shape[1] // k) * k, (arr.shape[2] // k) * k
        arr = da.coarsen(np.mean, arr[:, :h, :w], {1: k, 2: k})
    transform = img.transforms[level] @ np.diag([k, k, 1.0])
    return arr.astype(np.float32), transform, level, k


def _disc_stencil(radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(math.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dx**2 + dy**2 <= radius**2
    return dy[inside].astype(np.int64), dx[inside].astype(np.int64)


_PRIORS = ("idw+histology", "idw", "histology", None)
#: Nearest measured spots and inverse-distance power of the spatial prior.
_PRIOR_K, _PRIOR_POWER = 8, 2.0
#: The distance channel saturates at this many spot spacings.
_PRIOR_FAR = 5.0


def _spot_spacing(centers: np.ndarray) -> float:
    """Median nearest-neighbour distance between spot centres (pixels)."""
    from scipy.spatial import cKDTree

    if len(centers) < 2:
        return 1.0
    d, _ = cKDTree(centers).query(centers, k=2)
    return float(max(np.median(d[:, 1]), 1.0))


def prior_raster(
    points: np.ndarray, values: np.ndarray, y0: int, x0: int, h: int, w: int, spacing: float, tree: Any = None
) -> np.ndarray:
    """Spatial prior on the pixel window ``[y0, y0 + h) x [x0, x0 + w)``: ``(G + 1, h, w)`` float32.

    Channels ``0..G-1``: inverse-distance interpolation (the ``_PRIOR_K`` nearest spots, power ``_PRIOR_POWER``) of
    ``values`` ``(n, G)`` known at ``points`` ``(n, 2)`` (``x, y`` pixels); channel ``G``: the distance to the
    nearest spot in spot spacings divided by ``_PRIOR_FAR``, clipped to ``[0, 1]``. Zero prior and distance 1 when
    there is no spot. A per-pixel function of the spots, so windows tile exactly.
    """
    from scipy.spatial import cKDTree

    g = values.shape[1]
    out = np.zeros((g + 1, h, w), dtype=np.float32)
    if len(points) == 0:
        out[g] = 1.0
        return out
    tree = cKDTree(points) if tree is None else tree
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    q = np.c_[xx.ravel(), yy.ravel()].astype(np.float64)
    k = min(_PRIOR_K, len(points))
    d, i = tree.query(q, k=k)
    if k == 1:
        d, i = d[:, None], i[:, None]
    wt = 1.0 / np.maximum(d, 0.5) ** _PRIOR_POWER
    est = np.einsum("pk,pkg->pg", wt, values[i]) / wt.sum(1, keepdims=True)
    out[:g] = est.T.reshape(g, h, w)
    out[g] = np.clip(d[:, 0] / (spacing * _PRIOR_FAR), 0.0, 1.0).reshape(h, w)
    return out


def _lazy_prior(points: np.ndarray, values: np.ndarray, shape: tuple[int, int], chunks, spacing: float):
    """The prior of :func:`prior_raster` over a whole ``shape`` image, lazily, with the image's chunking."""
    import dask.array as da
    from scipy.spatial import cKDTree

    tree = cKDTree(points) if len(points) else None
    g = values.shape[1]

    def block(block_info=None):
        (ys, ye), (xs, xe) = block_info[None]["array-location"][1:]
        return prior_raster(points, values, ys, xs, ye - ys, xe - xs, spacing, tree=tree)

    return da.map_blocks(block, dtype=np.float32, chunks=((g + 1,), *chunks), meta=np.empty((0, 0, 0), np.float32))


#: Upper bound on the number of histology-feature patches of the grid (~4 ms each on one CPU core).
_MAX_FEATURE_POINTS = 40_000
#: Side of the histology-feature patches, in working pixels at which they are rendered (the extractor's input).
_FEATURE_PATCH_PX = 48


@dataclass
class _FeatureGrid:
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
        yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
        return self.sample(values, yy, xx)


def _feature_grid(ctx, img, T: np.ndarray, box: tuple[int, int, int, int], stride: float, diameter: float,
                  verbose: bool) -> _FeatureGrid:  # fmt: skip
    """Handcrafted features (:func:`stmap.pp.handcrafted_features`) of spot-diameter patches on a grid over ``box``.

    ``box`` = ``(y0, x0, y1, x1)`` in working pixels; ``T`` maps working pixels to the coordinate system.
    """
    import dask

    from stmap._core._patches import extract_patches, patch_spec
    from stmap.pp._extractors import handcrafted_features
    from stmap.pp._histology import _stream

    y0, x0, y1, x1 = box
    ys = np.arange(y0 + stride / 2, y1, stride)
    xs = np.arange(x0 + stride / 2, x1, stride)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    pts = (T @ np.c_[gx.ravel(), gy.ravel(), np.ones(gx.size)].T).T[:, :2]
    u = ctx.um_per_unit if ctx.um_per_unit is not None else 1.0
    spec = patch_spec(
        ctx, img, diameter * u, out_px=_FEATURE_PATCH_PX, mpp=None if ctx.um_per_unit is not None else img.pixel_size(0)
    )
    # read the window of the patch level under the grid once (a lazy image would be decoded again for every batch)
    import dataclasses

    import dask.array as da

    lv = img.levels[spec.level]
    _, h, w = lv.shape
    px = img.to_pixels(pts, spec.level)
    half = spec.size_px / 2 + 1
    bx0, by0 = int(max(0, np.floor(px[:, 0].min() - half))), int(max(0, np.floor(px[:, 1].min() - half)))
    bx1, by1 = int(min(w, np.ceil(px[:, 0].max() + half))), int(min(h, np.ceil(px[:, 1].max() + half)))
    window = np.asarray(lv[:, by0:by1, bx0:bx1].compute())
    shift = np.array([[1.0, 0, bx0], [0, 1.0, by0], [0, 0, 1.0]])
    # resample the window once to the patches' resolution (rather than every patch)
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
    spec0 = dataclasses.replace(spec, level=0, size_px=spec.out_px)
    divisor = intensity_range(img)
    lazy = extract_patches(sub, pts, spec0, fill_value=divisor, chunk_size=512)  # white beyond the image
    (f,) = _stream([lazy], [handcrafted_features], 512, verbose, dask, divisor=divisor, name=None)
    mu, sd = f.mean(0), f.std(0)
    f = (f - mu) / np.where(sd > 1e-8, sd, 1.0)
    feats = f.T.reshape(-1, len(ys), len(xs)).astype(np.float32)
    return _FeatureGrid(feats=feats, oy=float(ys[0]), ox=float(xs[0]), stride=float(stride))


def _disc_features(grid: _FeatureGrid, centers: np.ndarray, radius: float, chunk: int = 256) -> np.ndarray:
    """Mean of the interpolated feature raster over each spot's disc: ``(n, P)`` (the map's spot average is linear)."""
    dy, dx = _disc_stencil(radius)
    out = np.empty((len(centers), grid.feats.shape[0]), dtype=np.float64)
    for s in range(0, len(centers), chunk):
        c = centers[s : s + chunk]
        yy = np.rint(c[:, 1])[:, None] + dy[None, :]
        xx = np.rint(c[:, 0])[:, None] + dx[None, :]
        out[s : s + chunk] = grid.sample(grid.feats, yy, xx).mean(axis=2).T
    return out


def _fit_ridge(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge of ``Y`` on ``X`` (features already standardised), penalty per gene by efficient leave-one-out CV.

    Returns weights ``(P, G)`` and intercepts ``(G,)``.
    """
    from sklearn.linear_model import RidgeCV

    m = RidgeCV(alphas=np.logspace(-1, 5, 13), alpha_per_target=True).fit(X, Y)
    return np.asarray(m.coef_, dtype=np.float64).T.reshape(X.shape[1], -1), np.atleast_1d(m.intercept_)


def _histology_prior_values(grid: _FeatureGrid, coef: np.ndarray, icpt: np.ndarray) -> np.ndarray:
    """Per-gene prediction on the grid: ``(G, gh, gw)``."""
    p, gh, gw = grid.feats.shape
    return (np.tensordot(coef, grid.feats.reshape(p, -1), axes=(0, 0)) + icpt[:, None]).reshape(-1, gh, gw)


def _lazy_window(grid: _FeatureGrid, values: np.ndarray, shape: tuple[int, int], chunks):
    """:meth:`_FeatureGrid.window` of ``values`` over a whole ``shape`` image, lazily."""
    import dask.array as da

    def block(block_info=None):
        (ys, ye), (xs, xe) = block_info[None]["array-location"][1:]
        return grid.window(values, ys, xs, ye - ys, xe - xs)

    return da.map_blocks(
        block, dtype=np.float32, chunks=((values.shape[0],), *chunks), meta=np.empty((0, 0, 0), np.float32)
    )


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------
def _dihedral(tile: np.ndarray, yy: np.ndarray, xx: np.ndarray, code: int, size: int):
    """Apply one of 8 flips/rotations to a ``(3, T, T)`` tile and to pixel coordinates inside it."""
    if code & 1:
        tile, xx = tile[:, :, ::-1], size - 1 - xx
    if code & 2:
        tile, yy = tile[:, ::-1, :], size - 1 - yy
    if code & 4:
        tile, yy, xx = tile.transpose(0, 2, 1), xx, yy
    return np.ascontiguousarray(tile), yy, xx


def _train(
    image: np.ndarray,
    centers: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    radius: float,
    *,
    tile: int,
    epochs: int,
    warmup: int,
    spot_weight: float,
    batch_size: int,
    width: int,
    depth: int,
    lr: float,
    seed: int,
    device: str,
    verbose: bool,
    idw: bool = False,
    histology: tuple[_FeatureGrid, np.ndarray, list[np.ndarray]] | None = None,
):
    """Train a :class:`GeneMapNet` on tiles of ``image`` (a crop; ``centers`` in its pixels).

    ``histology``: the feature grid (in crop pixels), the training fold of every spot (-1: not training) and, per
    fold, the grid of histology-prior values fitted without that fold: a tile centred on a spot of fold ``k`` sees
    the prior of the model that never saw fold ``k`` (cross-fitting), as a held-out region would.
    """
    import torch
    from scipy.spatial import cKDTree

    from stmap.models._genemap import GeneMapNet, spot_means, ssim_loss
    from stmap.models._train import fit

    torch.manual_seed(seed)
    net = GeneMapNet(targets.shape[1], width=width, depth=depth, n_priors=int(idw) + int(histology is not None))
    _, h, w = image.shape
    dy, dx = _disc_stencil(radius)
    m = int(math.ceil(radius)) + 1
    # tiles are centred on training spots (jittered) so every tile carries supervision
    # one epoch covers the training crop about once, and is at least 4 steps long
    n_tiles = max(4 * batch_size, int(math.ceil(h * w / tile**2)))
    cy, cx = centers[:, 1], centers[:, 0]
    train_idx = np.flatnonzero(weights > 0)
    t_targets = torch.as_tensor(targets, dtype=torch.float32)
    spacing = _spot_spacing(centers[train_idx])
    full_tree = cKDTree(centers[train_idx])
    cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def plan(epoch: int):
        if epoch not in cache:
            cache.clear()
            g = np.random.default_rng([seed, epoch])
            pick = g.choice(train_idx, size=n_tiles, replace=n_tiles > train_idx.size)
            jitter = g.uniform(-tile / 2 + m, tile / 2 - m, size=(n_tiles, 2))
            y0 = np.clip(np.round(cy[pick] + jitter[:, 1] - tile / 2), 0, max(h - tile, 0)).astype(np.int64)
            x0 = np.clip(np.round(cx[pick] + jitter[:, 0] - tile / 2), 0, max(w - tile, 0)).astype(np.int64)
            # the prior of a tile hides the training spots within a random radius of one of its spots (none in about
            # a third of the tiles), so the network learns both regimes: a pixel next to measured spots, and a pixel
            # far from any (a held-out region, tissue between sparse spots)
            hide_r = np.where(g.random(n_tiles) < 1 / 3, 0.0, g.uniform(1.0, 4.0, size=n_tiles)) * spacing
            cache[epoch] = (y0, x0, g.integers(0, 8, size=n_tiles), pick, hide_r)
        return cache[epoch]

    def tile_input(y0: int, x0: int, centre: int, hide: float) -> np.ndarray:
        t = image[:, y0 : y0 + tile, x0 : x0 + tile]
        parts = [t]
        if idw:
            keep = train_idx
            if hide > 0:
                near = full_tree.query_ball_point(centers[centre], hide)
                keep = np.delete(train_idx, near)
            p = prior_raster(centers[keep], targets[keep], y0, x0, tile, tile, spacing)
            parts.append(p[:-1])
            dist = p[-1:]
        else:
            dist = prior_raster(centers[train_idx], targets[train_idx, :0], y0, x0, tile, tile, spacing)
        if histology is not None:
            grid, folds, per_fold = histology
            parts.append(grid.window(per_fold[folds[centre]], y0, x0, tile, tile))
        if len(parts) > 1:
            parts.append(dist)
        return np.concatenate(parts)

    def step(model, idx, epoch):
        y0s, x0s, codes, picks, hides = plan(epoch)
        tiles, batch, pix, tgt = [], [], [], []
        for b, i in enumerate(idx.tolist()):
            y0, x0 = int(y0s[i]), int(x0s[i])
            t = tile_input(y0, x0, int(picks[i]), float(hides[i]))
            # inside = whole disc in the tile and the spot has a training target
            ly, lx = cy - y0, cx - x0
            inside = np.flatnonzero((ly >= m) & (ly < tile - m) & (lx >= m) & (lx < tile - m) & (weights > 0))
            yy = np.rint(ly[inside])[:, None].astype(np.int64) + dy[None, :]
            xx = np.rint(lx[inside])[:, None].astype(np.int64) + dx[None, :]
            t, yy, xx = _dihedral(t, yy, xx, int(codes[i]), tile)
            tiles.append(t)
            batch.append(np.full(inside.size, b))
            pix.append(yy * tile + xx)
            tgt.append(inside)
        x = torch.tensor(np.stack(tiles)).to(dev)  # a copy in torch's own (aligned) memory: same rounding every run
        recon, genes = model(x)
        loss = ssim_loss(recon, x[:, :3])
        if epoch >= warmup and spot_weight > 0:
            sel = np.concatenate(tgt)
            if sel.size:
                pred = spot_means(
                    genes,
                    torch.as_tensor(np.concatenate(batch)).to(dev),
                    torch.as_tensor(np.concatenate(pix)).to(dev),
                )
                err = (pred - t_targets[sel].to(dev)) ** 2
                wt = torch.as_tensor(weights[sel], dtype=torch.float32).to(dev)
                loss = loss + spot_weight * (err.mean(dim=1) * wt).sum() / wt.sum()
        return loss

    from stmap._core import resolve_device

    dev = resolve_device(device)
    hist = fit(
        net, step, n_tiles, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev, verbose=verbose,
        desc="gene maps",
    )  # fmt: skip
    return net, hist, spacing


# --------------------------------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------------------------------
def predict_maps(
    net: Any,
    image: Any,
    *,
    chunk: int = 512,
    halo: int | None = None,
    device: str = "cpu",
    reconstruct: bool = False,
):
    """Run ``net`` over a ``(3, y, x)`` float image in overlapping tiles (lazy dask in, lazy dask out).

    Each chunk is extended by ``halo`` pixels (a multiple of the network's size multiple, at least its receptive
    radius), padded at the image's bottom/right edge to the size multiple exactly as a whole-image pass would be,
    run, and trimmed: the result equals a whole-image pass up to floating-point rounding.

    Returns
    -------
    Lazy ``(n_genes [+3], y, x)`` float32 array (gene channels in standardised units, then the reconstruction).
    """
    import dask.array as da
    import torch

    from stmap._core import resolve_device

    mult = net.multiple
    if halo is None:
        halo = net.receptive_radius
    halo = int(math.ceil(halo / mult) * mult)
    chunk = max(mult, int(math.ceil(chunk / mult) * mult))
    chunk = max(chunk, halo)

    def split(n: int) -> tuple[int, ...]:
        # chunks of `chunk` pixels; a short remainder joins the last chunk (every chunk must be >= halo, and chunk
        # starts stay multiples of `mult` so pooling windows line up with a whole-image pass)
        parts = [chunk] * (n // chunk)
        rest = n - sum(parts)
        if rest and parts and rest < halo:
            parts[-1] += rest
        elif rest:
            parts.append(rest)
        return tuple(parts)

    img = da.asarray(image).astype(np.float32)
    img = img.rechunk(((img.shape[0],), split(img.shape[1]), split(img.shape[2])))
    n_out = net.n_genes + (3 if reconstruct else 0)
    dev = resolve_device(device)
    net = net.to(dev).eval()

    def run(block: np.ndarray) -> np.ndarray:
        _, bh, bw = block.shape
        ph, pw = (-bh) % mult, (-bw) % mult
        x = np.pad(block, ((0, 0), (0, ph), (0, pw)), constant_values=1.0)
        # one tile at a time through torch (it threads each tile itself): tiles run concurrently from dask's threads
        # would share the thread pool unpredictably and round differently from run to run
        with _TORCH_LOCK, torch.no_grad():
            recon, genes = net(torch.tensor(x[None]).to(dev))  # own aligned copy (see _train)
        out = genes if not reconstruct else torch.cat([genes, recon], dim=1)
        return out[0, :, :bh, :bw].float().cpu().numpy()

    ny, nx = len(img.chunks[1]), len(img.chunks[2])

    def block_fn(block, block_info=None):
        # `block` carries `halo` extra pixels on each side that is not an image edge (boundary="none"): the padding
        # to the size multiple then happens at the image's bottom/right edge only, as in a whole-image pass
        iy, ix = block_info[0]["chunk-location"][1:]
        out = run(block)
        top, left = (halo if iy > 0 else 0), (halo if ix > 0 else 0)
        bottom = out.shape[1] - (halo if iy < ny - 1 else 0)
        right = out.shape[2] - (halo if ix < nx - 1 else 0)
        return out[:, top:bottom, left:right]

    ov = da.overlap.overlap(img, depth={0: 0, 1: halo, 2: halo}, boundary="none")
    out = ov.map_blocks(
        block_fn, dtype=np.float32, chunks=((n_out,), *img.chunks[1:]), meta=np.empty((0, 0, 0), np.float32)
    )
    return out


# --------------------------------------------------------------------------------------------------------------------
# public function
# --------------------------------------------------------------------------------------------------------------------
@inject_docs()
def gene_maps(
    sdata: Any,
    *,
    genes: int | Sequence[str] | Literal["markers"] = 20,
    groupby: str | None = None,
    image_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    scale: float | None = None,
    tile_px: int = 128,
    epochs: int = 30,
    warmup_epochs: int | None = None,
    spot_weight: float = 1.0,
    batch_size: int = 8,
    width: int = 16,
    depth: int = 3,
    lr: float = 2e-3,
    prior: Literal["idw+histology", "idw", "histology"] | None = "idw+histology",
    train_mask: str | Sequence[bool] | np.ndarray | None = None,
    model: GeneMapModel | None = None,
    reconstruct: bool = False,
    dtype: Literal["float32", "float16"] = "float32",
    lazy: bool | None = None,
    seed: int = 0,
    device: str = "cpu",
    key_added: str | None = None,
    verbose: bool = True,
    copy: bool = False,
    return_model: bool = False,
):
    """Predict per-pixel gene expression on the H&E: a new image element with one channel per gene.

    A U-Net learns to reconstruct the H&E (``1 - SSIM``) and, in one extra channel per gene, maps whose average
    over each spot's disc matches the spot's expression (MSE on per-gene standardised ``log1p`` counts per 10^4).
    The first ``warmup_epochs`` train the image head only; then both. The maps are predicted over the whole image,
    streamed through overlapping tiles.

    Parameters
    ----------
    {sdata}
    genes
        Gene names, a number of most variable genes, or ``'markers'`` (the top marker of each group of
        ``obs[groupby]``).
    groupby
        Spot clustering used with ``genes='markers'``.
    image_key
        H&E image element; default: the RGB image in the spots' coordinate system at the finest resolution
        (full > hires > lowres).
    {table_key}
    {coordinate_system}
    layer
        Layer with raw counts (default ``X``).
    normalize
        Targets are ``log1p(counts / total * 1e4)``; ``False`` uses the values as they are (already normalised data).
    scale
        Working pixel size in coordinate-system units; default: the spot diameter / 16. Rounded to a pyramid level
        times an integer factor so the image is never resampled arbitrarily.
    tile_px
        Training tile side in working pixels.
    epochs, warmup_epochs
        Training epochs, of which the first ``warmup_epochs`` (default ``epochs // 5``) train the image head only.
    spot_weight
        Weight ``lambda`` of the spot loss.
    batch_size, width, depth, lr
        Tiles per step, U-Net width and depth, Adam learning rate.
    prior
        Estimates of the (standardised) expression fed to the network beside the H&E, per gene, which its gene head
        adds with learnt per-gene gains; the network learns how to weigh them and the departure from them that the
        histology shows:

        - ``'idw'``: the expression interpolated from the nearest training spots (inverse distance), with a channel
          saying how far they are. The maps then honour the measured spots. During training this prior hides the
          spots around a random spot of most tiles, so the network also learns what to do far from any spot.
        - ``'histology'``: a ridge regression of the expression on handcrafted features
          (:func:`stmap.pp.handcrafted_features`) of spot-sized patches on a grid every half spot (coarser if that
          would exceed 40,000 patches), interpolated to each pixel. Training tiles see the regression fitted
          without their spatial block (5 k-means blocks of the training spots), as a held-out region would.
        - ``'idw+histology'`` (default): both.
        - ``None``: the H&E alone (the published model).

        A model trained with ``'idw'`` needs the new table's expression of its genes (it re-interpolates them);
        to predict a section without expression use ``'histology'`` or ``None``.
    train_mask
        Spots used for training (boolean ``obs`` column or array); default all. Held-out spots still get map
        averages (for validation).
    model
        A trained :class:`~stmap.tl.GeneMapModel` (e.g. from another section, or loaded from disk): no training,
        its genes are predicted.
    reconstruct
        Also write the reconstructed H&E as ``"<element>_reconstruction"``.
    dtype
        Storage type of the maps.
    lazy
        Keep the maps as a lazy dask array (computed when written or read: use it for images too large for memory;
        ``sdata.write`` streams the tiles). Default: computed now unless larger than 2 GiB.
    {seed}
    {device}
    {key_added}
        Default: element ``"<image>_gene_maps"`` and table keys ``"stmap_gene_maps"``.
    {verbose}
    {copy}
    return_model
        Also return the :class:`~stmap.tl.GeneMapModel`.

    Returns
    -------
    ``None`` (or a copy with ``copy=True``; with ``return_model=True`` a tuple ``(result, model)``). Writes:

    - image element ``"<image>_gene_maps"`` (``c, y, x``; channels = genes, units of the targets), with the
      working resolution's transformation to the image's coordinate system, so it overlays the H&E;
    - ``table.obsm['stmap_gene_maps']``: DataFrame (spots x genes) of the maps averaged over each spot's disc;
    - ``table.obs['stmap_gene_maps_train']``: whether the spot was used for training;
    - ``table.uns['stmap_gene_maps']``: ``params``, ``genes``, ``element``, per-gene ``mean``/``std``, ``loss``
      history, ``pixel_size``, and ``spot_pearson`` (per gene, train and held-out spots).
    """
    start = logg.info("computing gene maps")
    # ---- 1. validate ------------------------------------------------------------------------------------------------
    if not is_spatialdata(sdata):
        raise StmapInputError(
            "gene_maps writes an image element and needs a SpatialData object; convert an AnnData with "
            "`st.pp.to_spatialdata(adata)`."
        )
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    adata = ctx.adata
    img = ctx.image(image_key)
    diam = ctx.diameters
    if diam is None:
        raise StmapInputError(
            f"The spots of table {ctx.table_key!r} have no size; gene maps average each map over a spot's disc. "
            "Annotate circles (with a radius) or polygons."
        )
    if prior not in _PRIORS:
        raise StmapInputError(f"prior must be one of {_PRIORS}, got {prior!r}.")
    if epochs < 0 or (warmup_epochs is not None and warmup_epochs < 0):
        raise StmapInputError("epochs and warmup_epochs must be >= 0.")
    if tile_px < 2**depth * 4:
        raise StmapInputError(f"tile_px={tile_px} is too small for depth={depth}; use at least {2**depth * 4}.")
    if dtype not in ("float32", "float16"):
        raise StmapInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
    if model is not None:
        missing = [g for g in model.genes if g not in adata.var_names]
        gene_list = list(model.genes)
        if train_mask is not None:
            raise StmapInputError("train_mask has no use with a trained model (nothing is trained); drop one of them.")
    else:
        gene_list = _select_genes(adata, genes, groupby)
        missing = []
    if train_mask is None:
        train = np.ones(adata.n_obs, dtype=bool)
    elif isinstance(train_mask, str):
        if train_mask not in adata.obs:
            raise StmapInputError(f"train_mask {train_mask!r} is not an obs column of {ctx.table_key!r}.")
        train = adata.obs[train_mask].to_numpy().astype(bool)
    else:
        train = np.asarray(train_mask, dtype=bool)
        if train.shape != (adata.n_obs,):
            raise StmapInputError(f"train_mask has {train.size} values for {adata.n_obs} spots; give one per spot.")
    if model is None and train.sum() < 2:
        raise StmapInputError("Fewer than 2 training spots; train_mask must select spots with expression.")

    present = [g for g in gene_list if g in adata.var_names]
    counts = get_counts(adata, layer, f"table {ctx.table_key!r}")
    check_counts(counts, f"table {ctx.table_key!r}")
    if normalize:
        sub = _log_norm(counts)[:, adata.var_names.get_indexer(present)]
    else:
        Xs = adata[:, present].X if layer is None else adata[:, present].layers[layer]
        sub = np.asarray(Xs.toarray() if hasattr(Xs, "toarray") else Xs, dtype=np.float64)
    Y = np.zeros((adata.n_obs, len(gene_list)), dtype=np.float64)
    Y[:, [gene_list.index(g) for g in present]] = sub

    px = float(np.median(diam)) / _PX_PER_SPOT if scale is None else float(scale)
    if model is not None and scale is None:
        px = model.pixel_size if ctx.um_per_unit is None or model.pixel_size_um is None else (
            model.pixel_size_um / ctx.um_per_unit
        )  # fmt: skip
    if not np.isfinite(px) or px <= 0:
        raise StmapInputError(f"scale must be a positive pixel size, got {scale!r}.")
    work, T, level, k = _working_image(img, px)
    px_eff = float(np.sqrt(abs(np.linalg.det(T[:2, :2]))))
    radius = float(np.median(diam)) / 2 / px_eff
    if radius < 1.0:
        raise StmapInputError(
            f"Spots are {2 * radius:.2f} px across at the working scale ({px_eff:.3g} units/px): smaller than a "
            "pixel. Pass a smaller scale= (or use an image with a finer resolution)."
        )
    centers = np.linalg.solve(T, np.c_[ctx.coords, np.ones(adata.n_obs)].T).T[:, :2]  # working (x, y) pixels
    _, H, W = work.shape
    outside = (centers[:, 0] < 0) | (centers[:, 1] < 0) | (centers[:, 0] >= W) | (centers[:, 1] >= H)
    if outside.all():
        raise StmapInputError(f"No spot of {ctx.table_key!r} lies on image {img.name!r}; check the coordinates.")
    const = []
    if model is None:
        mean = Y[train].mean(0)
        std = Y[train].std(0)
        const = [g for g, s in zip(gene_list, std, strict=True) if s <= 1e-12]
        std = np.where(std > 1e-12, std, 1.0)
    else:
        mean, std = np.asarray(model.mean, dtype=float), np.asarray(model.std, dtype=float)
    tile = int(math.ceil(tile_px / 2**depth) * 2**depth)

    # ---- 2. training crop (spots' bounding box + margin), in memory -------------------------------------------------
    if const:
        warnings.warn(
            f"{len(const)} genes are constant over the training spots (e.g. {const[:5]}); their maps are constant.",
            UserWarning,
            stacklevel=2,
        )
    if missing:
        warnings.warn(
            f"{len(missing)} model genes are not in the table (e.g. {missing[:5]}); no spot Pearson for them.",
            UserWarning,
            stacklevel=2,
        )
    margin = tile // 2 + int(math.ceil(radius)) + 1
    inside = ~outside
    y0 = int(max(0, math.floor(centers[inside, 1].min()) - margin))
    x0 = int(max(0, math.floor(centers[inside, 0].min()) - margin))
    y1 = int(min(H, math.ceil(centers[inside, 1].max()) + margin + 1))
    x1 = int(min(W, math.ceil(centers[inside, 0].max()) + margin + 1))
    ch, cw = y1 - y0, x1 - x0
    crop = None
    if model is None:  # in memory: the tiles are drawn from it
        crop = np.asarray(work[:, y0:y1, x0:x1].compute(), dtype=np.float32)
        if ch < tile or cw < tile:  # pad with white (background) to one tile
            crop = np.pad(crop, ((0, 0), (0, max(0, tile - ch)), (0, max(0, tile - cw))), constant_values=1.0)
    local = centers - np.array([x0, y0])
    T_crop = T @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]])
    # histology features every half spot, at most ~_MAX_FEATURE_POINTS patches (a large section: a coarser grid)
    stride = max(1.0, radius, math.sqrt(ch * cw / _MAX_FEATURE_POINTS))
    use_idw = prior in ("idw", "idw+histology")
    use_hist = prior in ("histology", "idw+histology")

    # ---- 3. train ---------------------------------------------------------------------------------------------------
    grid = None
    if model is None:
        warm = epochs // 5 if warmup_epochs is None else int(warmup_epochs)
        weights = (train & inside).astype(np.float32)
        Zt = ((Y - mean) / std).astype(np.float32)
        hist_in, coef, icpt = None, None, None
        if use_hist:
            grid = _feature_grid(ctx, img, T_crop, (0, 0, ch, cw), stride, float(np.median(diam)), verbose)
            idx = np.flatnonzero(weights > 0)
            Xd = _disc_features(grid, local[idx], radius)
            coef, icpt = _fit_ridge(Xd, Zt[idx])
            folds = np.full(adata.n_obs, -1)
            n_folds = 5 if idx.size >= 25 else 1
            if n_folds > 1:  # spatial blocks of training spots (k-means on their centres)
                from sklearn.cluster import KMeans

                folds[idx] = KMeans(n_folds, n_init=3, random_state=seed).fit_predict(local[idx])
                per_fold = [
                    _histology_prior_values(grid, *_fit_ridge(Xd[folds[idx] != f], Zt[idx][folds[idx] != f]))
                    for f in range(n_folds)
                ]
            else:
                folds[idx] = 0
                per_fold = [_histology_prior_values(grid, coef, icpt)]
            hist_in = (grid, folds, per_fold)
        net, hist, _ = _train(
            crop, local, Zt, weights, radius, tile=tile, epochs=epochs, warmup=warm, spot_weight=spot_weight,
            batch_size=batch_size, width=width, depth=depth, lr=lr, seed=seed, device=device, verbose=verbose,
            idw=use_idw, histology=hist_in,
        )  # fmt: skip
        model = GeneMapModel(
            net=net,
            genes=list(gene_list),
            mean=mean.astype(np.float32),
            std=std.astype(np.float32),
            pixel_size=px_eff,
            pixel_size_um=None if ctx.um_per_unit is None else px_eff * ctx.um_per_unit,
            normalize=normalize,
            history=[float(v) for v in hist.loss],
            prior=prior,
            ridge_coef=coef,
            ridge_intercept=icpt,
        )
    net = model.net

    # ---- 4. infer: the whole image, lazily, and the maps' average over every spot disc -------------------------------
    import dask.array as da

    m_idw, m_hist = model.prior in ("idw", "idw+histology"), model.prior in ("histology", "idw+histology")
    wk = work.rechunk((3, 512, 512))
    work_parts, wchunks = [wk], wk.chunks[1:]
    # the spot prior comes from the training spots (with a trained model: every spot of this table on the image)
    src = np.flatnonzero(train & inside)
    Z = ((Y - model.mean[None, :]) / model.std[None, :]).astype(np.float32)
    if missing:
        Z[:, [gene_list.index(g) for g in missing]] = 0.0
    if m_idw or m_hist:
        spacing = _spot_spacing(centers[src])
        work_prior = _lazy_prior(centers[src], Z[src] if m_idw else Z[src, :0], work.shape[1:], wchunks, spacing)
        if m_idw:
            work_parts.append(work_prior[:-1])
        if m_hist:
            if grid is None:
                grid = _feature_grid(ctx, img, T_crop, (0, 0, ch, cw), stride, float(np.median(diam)), verbose)
            hv = _histology_prior_values(grid, model.ridge_coef, model.ridge_intercept)
            glob = _FeatureGrid(feats=grid.feats, oy=grid.oy + y0, ox=grid.ox + x0, stride=grid.stride)
            work_parts.append(_lazy_window(glob, hv, work.shape[1:], wchunks))
        work_parts.append(work_prior[-1:])
    work_in = da.concatenate(work_parts) if len(work_parts) > 1 else work
    maps = predict_maps(net, work_in, device=device, reconstruct=reconstruct)
    gene_part = maps[: len(gene_list)] * _col(model.std) + _col(model.mean)
    gene_part = gene_part.astype(dtype)
    nbytes = int(np.prod(gene_part.shape)) * np.dtype(dtype).itemsize
    keep_lazy = (nbytes > 2 * 1024**3) if lazy is None else bool(lazy)
    if not keep_lazy:
        gene_part = gene_part.persist()
    # spot averages of the maps in the stored units, streamed block by block (bounded memory on huge images)
    spot_vals = _disc_means(gene_part, centers, radius)
    spot_vals[outside] = np.nan

    from stmap.metrics import pearson_per_gene

    def _pearson(mask):
        mask = mask & inside
        if mask.sum() < 3:
            return [float("nan")] * len(gene_list)
        return [float(v) for v in pearson_per_gene(Y[mask], spot_vals[mask])]

    # ---- 5. write ---------------------------------------------------------------------------------------------------
    element_name = Key.gene_maps(img.name) if key_added is None else key_added
    key = "stmap_gene_maps" if key_added is None else key_added
    params = {
        "genes": gene_list if isinstance(genes, int | str) else "list",
        "groupby": groupby,
        "image_key": img.name,
        "layer": layer,
        "normalize": normalize,
        "scale": px_eff,
        "level": level,
        "coarsen": k,
        "tile_px": tile,
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "spot_weight": spot_weight,
        "batch_size": batch_size,
        "width": width,
        "depth": depth,
        "lr": lr,
        "prior": model.prior,
        "seed": seed,
        "device": str(device),
        "dtype": dtype,
    }
    res = Results(ctx, key, params)
    res.element(
        element_name,
        make_image(gene_part, transform=T, coordinate_system=img.coordinate_system, c_coords=gene_list,
                   chunks=(1, 512, 512)),
    )  # fmt: skip
    if reconstruct:
        rec = (maps[len(gene_list) :].clip(0, 1) * 255).round().astype(np.uint8)
        res.element(
            f"{element_name}_reconstruction",
            make_image(rec if keep_lazy else rec.persist(), transform=T, coordinate_system=img.coordinate_system,
                       c_coords=["r", "g", "b"], chunks=(3, 512, 512)),
        )  # fmt: skip
    res.obsm(key, pd.DataFrame(spot_vals, index=adata.obs_names, columns=gene_list))
    res.obs(f"{key}_train", train & inside)
    res.uns(
        key,
        {
            "genes": gene_list,
            "element": element_name,
            "mean": np.asarray(model.mean, dtype=float),
            "std": np.asarray(model.std, dtype=float),
            "loss": np.asarray(model.history, dtype=float),
            "pixel_size": px_eff,
            "spot_pearson_train": np.asarray(_pearson(train), dtype=float),
            "spot_pearson_heldout": np.asarray(_pearson(~train), dtype=float),
        },
    )
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added image {element_name!r} and {res.written}")
    return (out, model) if return_model else out


def _disc_means(maps: Any, centers: np.ndarray, radius: float) -> np.ndarray:
    """Mean of lazy ``maps`` ``(G, y, x)`` over each spot's disc (centres in pixels ``(x, y)``): ``(n, G)`` float64.

    Block by block: each block adds its pixels' values to the sums of the spots whose discs it holds, so only one
    block (per worker) is in memory. Disc pixels outside the image are left out of the mean.
    """
    import dask

    g, h, w = maps.shape
    dy, dx = _disc_stencil(radius)
    yy = (np.rint(centers[:, 1])[:, None] + dy[None, :]).astype(np.int64).ravel()
    xx = (np.rint(centers[:, 0])[:, None] + dx[None, :]).astype(np.int64).ravel()
    spot = np.repeat(np.arange(len(centers)), dy.size)
    ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    yy, xx, spot = yy[ok], xx[ok], spot[ok]
    ybounds, xbounds = np.cumsum((0, *maps.chunks[1])), np.cumsum((0, *maps.chunks[2]))
    by, bx = np.searchsorted(ybounds, yy, side="right") - 1, np.searchsorted(xbounds, xx, side="right") - 1
    blocks = maps.to_delayed()[0]

    def partial(block, ly, lx, sp):
        u, inv = np.unique(sp, return_inverse=True)
        sums = np.zeros((u.size, block.shape[0]), dtype=np.float64)
        np.add.at(sums, inv, np.asarray(block[:, ly, lx], dtype=np.float64).T)
        return u, sums

    tasks = []
    key = by * len(xbounds) + bx
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
    for s0, s1 in zip(starts, np.r_[starts[1:], order.size], strict=True):
        sel = order[s0:s1]
        iy, ix = int(by[sel[0]]), int(bx[sel[0]])
        tasks.append(dask.delayed(partial)(blocks[iy, ix], yy[sel] - ybounds[iy], xx[sel] - xbounds[ix], spot[sel]))
    sums = np.zeros((len(centers), g), dtype=np.float64)
    for u, part in dask.compute(*tasks):
        sums[u] += part
    n = np.bincount(spot, minlength=len(centers)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / n[:, None]


def _col(v: np.ndarray) -> np.ndarray:
    """A ``(c, 1, 1)`` float32 array for broadcasting over ``(c, y, x)``."""
    return np.asarray(v, dtype=np.float32)[:, None, None]
