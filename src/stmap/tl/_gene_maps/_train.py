"""Training: standardised targets, the cross-fitted histology prior, tiles around the spots, the network fit."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ._features import FEATURE_SCALES, MAX_FEATURE_POINTS, FeatureGrid, disc_features, feature_grid, grid_stride
from ._model import GeneMapModel
from ._prepare import disc_stencil
from ._priors import _PRIOR_K, cross_fitted, fit_ridge, idw_window, spot_spacing, uses_histology, uses_idw

if TYPE_CHECKING:
    from ._prepare import Section

#: Above this many training spots, a tile's spatial prior is computed from the spots near it.
_LOCAL_IDW_SPOTS = 4096
#: Most steps (batches of tiles) in one training epoch.
MAX_STEPS_PER_EPOCH = 32
#: Histology input of the tiles: the feature grid (crop pixels), the fold of every spot, the prior of each fold.
_Histology = tuple[FeatureGrid, np.ndarray, list[np.ndarray]]


def standardise(sec: Section) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation of the targets over the training spots (1 for constant genes)."""
    Y = sec.Y[sec.train]
    mean, std = Y.mean(0), Y.std(0)
    const = [g for g, s in zip(sec.genes, std, strict=True) if s <= 1e-12]
    if const:
        warnings.warn(
            f"{len(const)} genes are constant over the training spots (e.g. {const[:5]}); their maps are constant.",
            UserWarning,
            stacklevel=6,  # the caller of st.tl.gene_maps / train_gene_maps
        )
    return mean, np.where(std > 1e-12, std, 1.0)


def section_grid(sec: Section, verbose: bool) -> FeatureGrid:
    """Histology features on a grid over the training crop (crop pixels), every half spot."""
    ch, cw = sec.crop_shape
    stride = grid_stride(sec.radius, ch, cw)
    return feature_grid(sec.ctx, sec.img, sec.crop_transform, (0, 0, ch, cw), stride, sec.diameter, verbose)


def training_bytes(sec: Section, histology: bool) -> float:
    """Bytes training holds besides the network: the crop, the feature grid and the prior grids.

    The crop is float32 RGB; with the histology prior, the grid's features (raw and standardised) and 6 per-gene
    prior grids (the whole ridge and 5 cross-fitted ones).
    """
    from stmap.pp._extractors import handcrafted_feature_names

    ch, cw = sec.crop_shape
    need = 3.0 * max(ch, sec.tile) * max(cw, sec.tile) * 4
    if histology:
        points = min(MAX_FEATURE_POINTS, ch * cw / grid_stride(sec.radius, ch, cw) ** 2 + 1)
        n_feats = len(handcrafted_feature_names()) * len(FEATURE_SCALES)
        need += points * 4.0 * (2 * n_feats + 6 * len(sec.genes))
    return need


def check_memory(sec: Section, histology: bool) -> None:
    """Refuse, before the crop is read, a training whose crop and priors would not fit in the available memory."""
    from stmap._core import StmapInputError, _memory

    need, avail = training_bytes(sec, histology), _memory.available_bytes()
    if avail is None or need <= _memory.MEMORY_SHARE * avail:
        return
    ch, cw = sec.crop_shape
    raise StmapInputError(
        f"Training gene maps here needs about {need / 2**30:.1f} GB (the training crop, {ch} x {cw} working pixels of "
        f"{sec.px:.4g} coordinate units, held in memory as float32 RGB, and the histology prior), more than the "
        f"{avail / 2**30:.1f} GB available. Use a coarser working pixel (`scale=`, e.g. {2 * sec.px:.4g}), or train "
        "on a region of the section (subset it with spatialdata.bounding_box_query) and apply the model to the "
        "whole section with gene_maps(..., model=model)."
    )


def fit_model(
    sec: Section,
    *,
    prior: str | None,
    epochs: int,
    warmup_epochs: int | None,
    spot_weight: float,
    batch_size: int,
    width: int,
    depth: int,
    lr: float,
    seed: int,
    device: Any,
    verbose: bool,
    params: dict[str, Any],
) -> tuple[GeneMapModel, FeatureGrid | None]:
    """Train the network on the section; returns the model and the feature grid (``None`` without histology)."""
    check_memory(sec, uses_histology(prior))
    mean, std = standardise(sec)
    weights = (sec.train & sec.inside).astype(np.float32)
    Z = ((sec.Y - mean) / std).astype(np.float32)
    grid, coef, icpt, histology = None, None, None, None
    if uses_histology(prior):
        grid = section_grid(sec, verbose)
        idx = np.flatnonzero(weights > 0)
        X = disc_features(grid, sec.local[idx], sec.radius)
        coef, icpt = fit_ridge(X, Z[idx])
        folds, per_fold = cross_fitted(grid, X, Z[idx], idx, sec.local[idx], sec.Y.shape[0], (coef, icpt), seed)
        histology = (grid, folds, per_fold)
    tiles = _Tiles(
        _crop(sec),
        sec.local,
        Z,
        weights,
        sec.radius,
        tile=sec.tile,
        batch_size=batch_size,
        seed=seed,
        idw=uses_idw(prior),
        histology=histology,
    )
    warmup = epochs // 5 if warmup_epochs is None else int(warmup_epochs)
    net, loss = _train(
        tiles,
        epochs=epochs,
        warmup=warmup,
        spot_weight=spot_weight,
        batch_size=batch_size,
        width=width,
        depth=depth,
        lr=lr,
        seed=seed,
        device=device,
        verbose=verbose,
    )
    um = sec.ctx.um_per_unit
    model = GeneMapModel(
        net=net,
        genes=list(sec.genes),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        pixel_size=sec.px,
        pixel_size_um=None if um is None else sec.px * um,
        normalize=bool(params["normalize"]),
        history=[float(v) for v in loss],
        prior=prior,
        ridge_coef=coef,
        ridge_intercept=icpt,
        tile_px=sec.tile,
        params=dict(params),
    )
    return model, grid


def _crop(sec: Section) -> np.ndarray:
    """The training crop in memory (float32), padded with white (background) to at least one tile."""
    y0, x0, y1, x1 = sec.box
    ch, cw = sec.crop_shape
    crop = np.asarray(sec.work[:, y0:y1, x0:x1].compute(), dtype=np.float32)
    if ch < sec.tile or cw < sec.tile:
        pad = ((0, 0), (0, max(0, sec.tile - ch)), (0, max(0, sec.tile - cw)))
        crop = np.pad(crop, pad, constant_values=1.0)
    return crop


def _dihedral(tile: np.ndarray, yy: np.ndarray, xx: np.ndarray, code: int, size: int) -> tuple[Any, Any, Any]:
    """Apply one of 8 flips/rotations to a ``(3, T, T)`` tile and to pixel coordinates inside it."""
    if code & 1:
        tile, xx = tile[:, :, ::-1], size - 1 - xx
    if code & 2:
        tile, yy = tile[:, ::-1, :], size - 1 - yy
    if code & 4:
        tile, yy, xx = tile.transpose(0, 2, 1), xx, yy
    return np.ascontiguousarray(tile), yy, xx


class _Tiles:
    """Training tiles of the crop, centred on (jittered) training spots so that every tile carries supervision.

    One epoch covers the crop about once, in at least 4 and at most :data:`MAX_STEPS_PER_EPOCH` steps (a whole
    Visium HD capture area would need thousands of tiles to cover: its epochs draw that many tiles at random
    places). ``histology``: the feature grid (crop pixels), the training fold of every spot (-1: not training)
    and, per fold, the grid of histology-prior values fitted without that fold: a tile centred on a spot of fold
    ``k`` sees the prior of the model that never saw fold ``k`` (cross-fitting), as a held-out region would.
    """

    def __init__(
        self,
        image: np.ndarray,
        centers: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        radius: float,
        *,
        tile: int,
        batch_size: int,
        seed: int,
        idw: bool,
        histology: _Histology | None,
    ) -> None:
        from scipy.spatial import cKDTree

        self.image, self.centers, self.targets, self.weights = image, centers, targets, weights
        self.tile, self.seed, self.idw, self.histology = tile, seed, idw, histology
        _, self.h, self.w = image.shape
        self.dy, self.dx = disc_stencil(radius)
        self.margin = int(math.ceil(radius)) + 1
        cover = int(math.ceil(self.h * self.w / tile**2))
        self.n = min(max(4 * batch_size, cover), MAX_STEPS_PER_EPOCH * batch_size)
        self.train_idx = np.flatnonzero(weights > 0)
        self.spacing = spot_spacing(centers[self.train_idx])
        self.tree = cKDTree(centers[self.train_idx])
        self._plan: tuple[int, tuple[np.ndarray, ...]] | None = None

    @property
    def n_priors(self) -> int:
        """Prior blocks in the network's input."""
        return int(self.idw) + int(self.histology is not None)

    def plan(self, epoch: int) -> tuple[np.ndarray, ...]:
        """Tile corners, dihedral codes, centre spots and prior-hiding radii of the epoch's ``n`` tiles."""
        if self._plan is None or self._plan[0] != epoch:
            g = np.random.default_rng([self.seed, epoch])
            n, t, m = self.n, self.tile, self.margin
            pick = g.choice(self.train_idx, size=n, replace=n > self.train_idx.size)
            jitter = g.uniform(-t / 2 + m, t / 2 - m, size=(n, 2))
            cy, cx = self.centers[pick, 1], self.centers[pick, 0]
            y0 = np.clip(np.round(cy + jitter[:, 1] - t / 2), 0, max(self.h - t, 0)).astype(np.int64)
            x0 = np.clip(np.round(cx + jitter[:, 0] - t / 2), 0, max(self.w - t, 0)).astype(np.int64)
            # the prior of a tile hides the training spots within a random radius of one of its spots (none in about
            # a third of the tiles), so the network learns both regimes: a pixel next to measured spots, and a pixel
            # far from any (a held-out region, tissue between sparse spots)
            hide_r = np.where(g.random(n) < 1 / 3, 0.0, g.uniform(1.0, 4.0, size=n)) * self.spacing
            self._plan = (epoch, (y0, x0, g.integers(0, 8, size=n), pick, hide_r))
        return self._plan[1]

    def input(self, y0: int, x0: int, centre: int, hide: float) -> np.ndarray:
        """Network input of one tile: RGB, then the prior blocks and the distance channel."""
        t = self.tile
        rgb = self.image[:, y0 : y0 + t, x0 : x0 + t]
        if self.n_priors == 0:
            return np.concatenate([rgb])
        keep = self.train_idx
        if self.idw and hide > 0:
            keep = np.delete(self.train_idx, self.tree.query_ball_point(self.centers[centre], hide))
        p = self._idw(keep, y0, x0, 3 * self.spacing + hide)
        parts = [rgb, p[:-1]] if self.idw else [rgb]
        if self.histology is not None:
            grid, folds, per_fold = self.histology
            parts.append(grid.window(per_fold[folds[centre]], y0, x0, t, t))
        return np.concatenate([*parts, p[-1:]])

    def _idw(self, keep: np.ndarray, y0: int, x0: int, margin: float) -> np.ndarray:
        """:func:`idw_window` of the ``keep`` spots on the tile at ``(y0, x0)``.

        With many spots, from those within ``margin`` of the tile (a KD-tree of all of them would be built for every
        tile): exact when every pixel's neighbours lie within ``margin``, else recomputed from all of them.
        """
        t = self.tile
        values = self.targets if self.idw else self.targets[:, :0]
        if keep.size > _LOCAL_IDW_SPOTS:
            cy, cx = self.centers[keep, 1], self.centers[keep, 0]
            near = keep[(cy >= y0 - margin) & (cy < y0 + t + margin) & (cx >= x0 - margin) & (cx < x0 + t + margin)]
            if near.size >= _PRIOR_K:  # a spot left out is at least `margin` from every pixel of the tile
                reach: list[float] = []
                p = idw_window(self.centers[near], values[near], y0, x0, t, t, self.spacing, reach=reach)
                if reach[0] < margin:
                    return p
        return idw_window(self.centers[keep], values[keep], y0, x0, t, t, self.spacing)

    def batch(self, idx: Any, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Tiles ``(B, C, T, T)``, and for the spots whose disc lies in a tile: its tile, disc pixels and index."""
        y0s, x0s, codes, picks, hides = self.plan(epoch)
        t, m = self.tile, self.margin
        cy, cx = self.centers[:, 1], self.centers[:, 0]
        tiles, batch, pix, spots = [], [], [], []
        for b, i in enumerate(idx.tolist()):
            y0, x0 = int(y0s[i]), int(x0s[i])
            x = self.input(y0, x0, int(picks[i]), float(hides[i]))
            # inside = whole disc in the tile and the spot has a training target
            ly, lx = cy - y0, cx - x0
            inside = np.flatnonzero((ly >= m) & (ly < t - m) & (lx >= m) & (lx < t - m) & (self.weights > 0))
            yy = np.rint(ly[inside])[:, None].astype(np.int64) + self.dy[None, :]
            xx = np.rint(lx[inside])[:, None].astype(np.int64) + self.dx[None, :]
            x, yy, xx = _dihedral(x, yy, xx, int(codes[i]), t)
            tiles.append(x)
            batch.append(np.full(inside.size, b))
            pix.append(yy * t + xx)
            spots.append(inside)
        return np.stack(tiles), np.concatenate(batch), np.concatenate(pix), np.concatenate(spots)


def _train(
    tiles: _Tiles,
    *,
    epochs: int,
    warmup: int,
    spot_weight: float,
    batch_size: int,
    width: int,
    depth: int,
    lr: float,
    seed: int,
    device: Any,
    verbose: bool,
) -> tuple[Any, list[float]]:
    """Fit a :class:`~stmap.models._genemap.GeneMapNet` on the tiles; returns it and the loss per epoch.

    Loss: ``1 - SSIM`` of the reconstructed RGB plus, after ``warmup`` epochs, ``spot_weight`` times the weighted
    MSE of the maps' disc averages against the spot targets.
    """
    import torch

    from stmap._core import resolve_device
    from stmap.models._genemap import GeneMapNet, spot_means, ssim_loss
    from stmap.models._train import fit

    torch.manual_seed(seed)
    net = GeneMapNet(tiles.targets.shape[1], width=width, depth=depth, n_priors=tiles.n_priors)
    t_targets = torch.as_tensor(tiles.targets, dtype=torch.float32)
    dev = resolve_device(device)

    def step(model: Any, idx: Any, epoch: int) -> Any:
        x_np, batch, pix, sel = tiles.batch(idx, epoch)
        x = torch.tensor(x_np).to(dev)  # a copy in torch's own (aligned) memory: same rounding every run
        recon, genes = model(x)
        loss = ssim_loss(recon, x[:, :3])
        if epoch >= warmup and spot_weight > 0 and sel.size:
            pred = spot_means(genes, torch.as_tensor(batch).to(dev), torch.as_tensor(pix).to(dev))
            err = (pred - t_targets[sel].to(dev)) ** 2
            wt = torch.as_tensor(tiles.weights[sel], dtype=torch.float32).to(dev)
            loss = loss + spot_weight * (err.mean(dim=1) * wt).sum() / wt.sum()
        return loss

    hist = fit(
        net,
        step,
        tiles.n,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=dev,
        verbose=verbose,
        desc="gene maps",
    )
    return net, list(hist.loss)
