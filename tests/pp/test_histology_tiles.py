"""Tile-wise histology features equal the per-patch reference (the implementation before tiling), exactly or to
float32 rounding; the vectorised handcrafted extractor equals the per-patch scikit-image one."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_small_sdata

import stmap as st
from stmap._core import affine_matrix, extract_patches, make_image, patch_spec, resolve
from stmap._core._image import intensity_range, to_rgb_uint8
from stmap._core._patches import patch_tiles
from stmap.pp._extractors import _QUANTILES, _tissue_mask

NAMES = st.pp.handcrafted_feature_names()
#: Columns that count pixels (tissue, LBP codes, nuclei pixels and blobs): equal bit for bit. The others are sums in
#: another order (1e-14 apart) or OD quantiles of values sorted as float32 (< 1e-7 apart).
COUNTS = [i for i, n in enumerate(NAMES) if n.startswith(("tissue", "lbp", "nuclei_fraction", "nuclei_density"))]


def _assert_same(got: np.ndarray, ref: np.ndarray) -> None:
    cols = [i + k * len(NAMES) for k in range(got.shape[1] // len(NAMES)) for i in COUNTS]
    np.testing.assert_array_equal(got[:, cols], ref[:, cols])
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def _reference_features(patches: np.ndarray) -> np.ndarray:
    """The handcrafted features one patch at a time with scikit-image (the extractor as it was written first)."""
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.feature import local_binary_pattern
    from skimage.filters import laplace, sobel

    out = np.zeros((len(patches), len(NAMES)), dtype=np.float32)
    for i, rgb in enumerate(patches):
        mask = _tissue_mask(rgb.astype(np.int16))
        frac = float(mask.mean())
        if mask.sum() < 4:
            mask = np.ones(mask.shape, dtype=bool)
        f = [frac]
        px = rgb[mask].astype(np.float64) / 255.0
        f += [v for c in range(3) for v in (px[:, c].mean(), px[:, c].std())]
        hed = rgb2hed(rgb)
        for c in range(3):
            v = hed[..., c][mask]
            f += [v.mean(), v.std(), *np.quantile(v, _QUANTILES)]
        gray = rgb.astype(np.float64).mean(-1) / 255.0
        grad = sobel(gray)[mask]
        f += [gray[mask].mean(), gray[mask].std(), grad.mean(), grad.std(), laplace(gray)[mask].var()]
        lbp = local_binary_pattern((gray * 255).astype(np.uint8), 8, 1, method="uniform")[mask]
        f += list(np.bincount(lbp.astype(np.int64), minlength=10)[:10] / lbp.size)
        h = hed[..., 0]
        hv = h[mask]
        nuc = (h > max(hv.mean() + hv.std(), 0.03)) & mask
        lab, k = ndimage.label(nuc)
        sizes = np.bincount(lab.ravel())[1:] if k else np.zeros(1)
        f += [nuc.sum() / mask.sum(), 1000.0 * k / mask.sum(), sizes.mean(), sizes.std(), h[nuc].mean() if k else 0.0]
        out[i] = f
    return out


def _reference_histology(sdata, table_key, patch_um, scales=(1.0,), patch_px=48):
    """histology_features before tiling: lazy patches around each spot (extract_patches), per-patch features."""
    ctx = resolve(sdata, table_key)
    img = ctx.image()
    dv = intensity_range(img)
    blocks, n_nan = [], 0
    for s in scales:
        spec = patch_spec(ctx, img, patch_um * s, out_px=patch_px)
        p = np.asarray(extract_patches(img, ctx.coords, spec, fill_value=0, chunk_size=64).compute())
        n_nan += int(np.isnan(p).sum()) if p.dtype.kind == "f" else 0
        blocks.append(_reference_features(to_rgb_uint8(p, dv)))
    return np.concatenate(blocks, axis=1), n_nan


def _he(h=160, w=200, seed=0):
    """H&E-like RGB with nuclei, white glass on the left quarter and a black masked corner."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3))
    img[...] = (232, 182, 205)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(400):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.5, 3.5)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (95, 60, 140)
    img += rng.normal(0, 8, img.shape)
    img[:, : w // 4] = 245 + rng.normal(0, 3, (h, w // 4, 3))
    img[: h // 5, -w // 5 :] = 0
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def _sdata(chunks, img=None):
    sdata, info = make_small_sdata(n_spots=60, seed=3)
    img = _he() if img is None else img
    sdata.images["he"] = make_image(
        img, transform=affine_matrix(info["mpp"], info["offset"]), scale_factors=[2], chunks=chunks
    )
    return sdata


class TestVectorisedExtractor:
    def test_equals_per_patch_reference(self):
        rng = np.random.default_rng(0)
        img = _he().transpose(1, 2, 0)
        xs, ys = rng.integers(0, 200 - 48, 80), rng.integers(0, 160 - 48, 80)
        patches = np.stack([img[y : y + 48, x : x + 48] for x, y in zip(xs, ys)])
        noise = rng.integers(0, 256, (20, 48, 48, 3), dtype=np.uint8)
        glass = np.full((3, 48, 48, 3), 250, dtype=np.uint8)  # < 4 tissue pixels: the whole patch is used
        glass[0, :1, :2] = (90, 40, 120)
        black = np.zeros((2, 48, 48, 3), dtype=np.uint8)
        odd = rng.integers(0, 256, (5, 31, 17, 3), dtype=np.uint8)  # not square
        for p in (np.concatenate([patches, noise, glass, black]), odd):
            _assert_same(st.pp.handcrafted_features(p), _reference_features(p))

    def test_independent_of_batch(self):
        p = np.random.default_rng(1).integers(0, 256, (600, 24, 24, 3), dtype=np.uint8)
        whole = st.pp.handcrafted_features(p)
        parts = np.concatenate([st.pp.handcrafted_features(p[i : i + 37]) for i in range(0, 600, 37)])
        np.testing.assert_array_equal(parts, whole)


class TestTiles:
    @pytest.mark.parametrize("chunks", [None, (3, 32, 48), (3, 64, 64)])
    @pytest.mark.parametrize("scales", [(1.0,), (1.0, 2.3)])
    def test_equals_reference(self, chunks, scales):
        # one chunk, or tiles smaller than a patch and its halo; scales at different pyramid levels
        sdata = _sdata(chunks)
        st.pp.histology_features(sdata, patch_um=40.0, scales=scales, batch_size=13)
        got = sdata.tables["table"].obsm["X_histology"]
        _assert_same(got, _reference_histology(sdata, "table", 40.0, scales)[0])

    def test_patch_tiles_cover_every_spot_once(self):
        sdata = _sdata((3, 32, 48))
        ctx = resolve(sdata, "table")
        img = ctx.image()
        specs = [patch_spec(ctx, img, 40.0 * s, out_px=48) for s in (1, 2.3)]
        tiles = patch_tiles(img, ctx.coords, specs)
        rows = np.concatenate([t.rows for t in tiles])
        np.testing.assert_array_equal(np.sort(rows), np.arange(ctx.adata.n_obs))
        assert len(tiles) > 4  # several tiles were used
        # each window lies within its level and holds every in-image pixel of its patches
        for t in tiles:
            for spec, (xs, ys) in zip(specs, t.corners, strict=True):
                y0, y1, x0, x1 = t.windows[spec.level]
                _, h, w = img.levels[spec.level].shape
                assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
                assert (np.minimum(ys + y0 + spec.size_px, h) <= y1).all()
                assert (np.maximum(ys + y0, 0) >= y0).all() and (np.maximum(xs + x0, 0) >= x0).all()

    def test_float_image_with_nan(self):
        img = _he().astype(np.float32) / 255
        img[:, 60:90, 100:140] = np.nan
        sdata = _sdata((3, 48, 48), img=img)
        with pytest.warns(UserWarning, match="NaN pixel value") as rec:
            st.pp.histology_features(sdata, patch_um=40.0)
        got = sdata.tables["table"].obsm["X_histology"]
        ref, _ = _reference_histology(sdata, "table", 40.0)
        assert len([r for r in rec if "NaN" in str(r.message)]) == 1
        # patches away from the NaN block equal the reference; those on it read NaN as white in both, but the
        # reference's batched resize also spread NaN into the neighbouring patches of its batch (zero weights)
        ctx = resolve(sdata, "table")
        px = ctx.image().to_pixels(ctx.coords, 0)
        far = (px[:, 0] < 100 - 12) | (px[:, 0] > 140 + 12) | (px[:, 1] < 60 - 12) | (px[:, 1] > 90 + 12)
        assert 10 < far.sum() < len(far)
        _assert_same(got[far], ref[far])

    @pytest.mark.slow
    def test_distributed_client_equals_threads(self):
        distributed = pytest.importorskip("distributed")
        sdata = _sdata((3, 48, 48))
        local = st.pp.histology_features(sdata, patch_um=40.0, copy=True).tables["table"].obsm["X_histology"]
        with (
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc,
            distributed.Client(lc),
        ):
            remote = st.pp.histology_features(sdata, patch_um=40.0, copy=True).tables["table"].obsm["X_histology"]
        np.testing.assert_array_equal(remote, local)


def test_lazy_he_nuclei_are_dilated_centres():
    # the stamped nuclei equal scipy's binary dilation of the centres by the disk (the generator's first form)
    from scipy import ndimage

    from stmap.datasets._scale import _he_image

    seed, h, w, r, density = 3, 300, 350, 5, 2e-3
    got = _he_image(seed, h, w, r, density, 4096).compute()
    gen = np.random.default_rng([seed, 5, 0, 0])
    centres = np.zeros((h, w), bool)
    n = gen.poisson(density * h * w)
    centres[gen.integers(0, h, n), gen.integers(0, w, n)] = True
    nuc = ndimage.binary_dilation(centres, structure=np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= r)
    noise = gen.normal(0.0, 6.0, size=(h, w))
    rgb = np.where(nuc[None], np.array([95.0, 60, 140])[:, None, None], np.array([232.0, 182, 205])[:, None, None])
    np.testing.assert_array_equal(got, np.clip(rgb + noise[None], 0, 255).astype(np.uint8))
