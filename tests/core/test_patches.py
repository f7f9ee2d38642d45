from __future__ import annotations

import numpy as np
import pytest

from stmap._core import StmapInputError, extract_patches, patch_spec, resolve


class TestPatches:
    def test_patches_equal_direct_crops(self, small_sdata):
        sdata, truth = small_sdata
        ctx = resolve(sdata)
        img = ctx.image()
        spec = patch_spec(ctx, img, size_um=20.0)  # 20 um at 2 um/px -> 10 px at level 0
        assert (spec.level, spec.size_px, spec.out_px) == (0, 10, 10)
        patches = extract_patches(img, ctx.coords, spec, chunk_size=7).compute()
        assert patches.shape == (ctx.adata.n_obs, 3, 10, 10) and patches.dtype == np.uint8
        # ground truth: crop the numpy image around each spot's pixel centre
        px = (ctx.coords - truth["offset"]) / truth["mpp"]
        for i in range(len(px)):
            x0, y0 = int(np.floor(px[i, 0] - 5 + 0.5)), int(np.floor(px[i, 1] - 5 + 0.5))
            np.testing.assert_array_equal(patches[i], truth["img"][:, y0 : y0 + 10, x0 : x0 + 10])

    def test_border_is_padded(self, small_sdata):
        sdata, truth = small_sdata
        ctx = resolve(sdata)
        img = ctx.image()
        spec = patch_spec(ctx, img, size_um=8.0)  # 4 px
        corner = np.array([truth["offset"]])  # image corner: 2x2 of the 4x4 patch are outside
        p = extract_patches(img, corner, spec, fill_value=7).compute()[0]
        assert (p[:, :2, :] == 7).all() and (p[:, :, :2] == 7).all()
        np.testing.assert_array_equal(p[:, 2:, 2:], truth["img"][:, :2, :2])
        far = extract_patches(img, np.array([[1e6, 1e6]]), spec, fill_value=3).compute()
        assert (far == 3).all()

    def test_resampled_level(self, small_sdata):
        sdata, truth = small_sdata
        ctx = resolve(sdata)
        img = ctx.image()
        # 40 um patches at 10 px: 4 um/px, which the second level (4 um/px) provides natively
        spec = patch_spec(ctx, img, size_um=40.0, out_px=10)
        assert (spec.level, spec.size_px, spec.out_px, spec.mpp) == (1, 10, 10, 4.0)
        spec0 = patch_spec(ctx, img, size_um=40.0, out_px=10, level=0)
        p0 = extract_patches(img, ctx.coords[:3], spec0).compute()
        assert p0.shape == (3, 3, 10, 10)
        # a 20 px crop resampled to 10 px averages 2x2 blocks: its mean equals the crop's mean (up to rounding)
        full = extract_patches(img, ctx.coords[:3], patch_spec(ctx, img, 40.0, level=0)).compute()
        np.testing.assert_allclose(p0.mean(axis=(2, 3)), full.mean(axis=(2, 3)), atol=2.0)

    def test_mpp_needed_without_units(self, small_sdata):
        sdata, truth = small_sdata
        sdata.attrs.clear()
        ctx = resolve(sdata)
        img = ctx.image()
        with pytest.raises(StmapInputError, match="unit of coordinate system 'global' is unknown"):
            patch_spec(ctx, img, 20.0)
        assert patch_spec(ctx, img, 20.0, mpp=truth["mpp"]).size_px == 10

    def test_bad_size(self, small_sdata):
        sdata, _ = small_sdata
        ctx = resolve(sdata)
        with pytest.raises(StmapInputError, match="positive"):
            patch_spec(ctx, ctx.image(), -5)
