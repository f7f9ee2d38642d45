"""Images read as intensities by one rule: uint16 rescaled (not clipped), grey replicated, NaN pixels warned about."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import make_small_sdata

import stmap as st
from stmap._core import StmapInputError, affine_matrix, make_image
from stmap._core._image import intensity_range, to_rgb_uint8, to_unit


def _tissue(h=120, w=160, seed=0):
    """H&E-like uint8 RGB (3, h, w): pink background, dark purple 'nuclei' denser to the right."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3))
    img[...] = (235, 170, 200)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(300):
        cx, cy = w * np.sqrt(rng.uniform()), rng.uniform(0, h)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 4] = (90, 40, 140)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def _with_image(img):
    sdata, info = make_small_sdata()
    sdata.images["he"] = make_image(img, transform=affine_matrix(info["mpp"], info["offset"]), scale_factors=[2])
    return sdata


def _features(img, **kw):
    sdata = _with_image(img)
    st.pp.histology_features(sdata, image_key="he", **kw)
    return sdata.tables["table"].obsm["X_histology"]


class TestRule:
    def test_intensity_range(self):
        u8 = _tissue()
        assert intensity_range(u8) == 255.0
        assert intensity_range(u8.astype(np.uint16) * 257) == 65535.0
        assert intensity_range(u8.astype(np.uint16)) == 255.0  # 8-bit data in a 16-bit container
        assert intensity_range(u8 / 255.0) == 1.0
        assert intensity_range(u8.astype(np.float32)) == 255.0
        assert intensity_range(np.array([[[0.0, 4000.0]]])) == 4000.0

    def test_uint8_untouched_and_uint16_equal(self):
        p = _tissue()[None]
        np.testing.assert_array_equal(to_rgb_uint8(p), np.moveaxis(p, 1, -1))
        np.testing.assert_array_equal(to_rgb_uint8(p.astype(np.uint16) * 257, 65535.0), np.moveaxis(p, 1, -1))
        # float32 division of the same real number x / 255: bit-equal unit intensities
        np.testing.assert_array_equal(to_unit(p.astype(np.uint16) * 257, 65535.0), to_unit(p, 255.0))

    def test_nan_reads_white(self):
        x = np.array([[[0.2, np.nan]]], dtype=np.float32)
        np.testing.assert_array_equal(to_unit(x, 1.0), np.array([[[0.2, 1.0]]], dtype=np.float32))


class TestHistologyDtypes:
    def test_uint16_same_features_as_uint8(self):
        u8 = _tissue()
        ref = _features(u8)
        # before: uint16 clipped to 255 (everything white): features off by up to 34x
        np.testing.assert_allclose(_features(u8.astype(np.uint16) * 257), ref, rtol=1e-6, atol=1e-6)
        # 8-bit values in a 16-bit container read as 8-bit
        np.testing.assert_allclose(_features(u8.astype(np.uint16)), ref, rtol=1e-6, atol=1e-6)

    def test_grey_equals_replicated_rgb(self):
        grey = _tissue()[1:2]
        # before: "1 channel(s); an RGB H&E is needed"
        np.testing.assert_array_equal(_features(grey), _features(np.repeat(grey, 3, axis=0)))

    def test_nan_warns_and_reads_white(self):
        img = _tissue().astype(np.float32) / 255.0
        img[:, :40, :50] = np.nan
        with pytest.warns(UserWarning, match=r"NaN pixel value\(s\) \(.*%.*white"):
            got = _features(img, patch_px=None)  # native resolution (resampling blurs NaN into its neighbours)
        white = img.copy()
        white[:, :40, :50] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            np.testing.assert_array_equal(got, _features(white, patch_px=None))

    def test_two_channels_raise_before_writing(self):
        sdata = _with_image(_tissue()[:2])
        t = sdata.tables["table"]
        before = (set(t.obsm), set(t.uns))
        with pytest.raises(StmapInputError, match="2 channels"):
            st.pp.histology_features(sdata, image_key="he")
        assert (set(t.obsm), set(t.uns)) == before


class TestDetectBlobsNaN:
    @staticmethod
    def _eight_blobs():
        rng = np.random.default_rng(0)
        h, w = 200, 240
        img = rng.normal(0, 0.05, (h, w))
        yy, xx = np.mgrid[:h, :w]
        centres = [
            (60.0 + 50 * i + rng.uniform(-3, 3), 70.0 + 80 * j + rng.uniform(-3, 3)) for i in range(4) for j in range(2)
        ]
        for cx, cy in centres:
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 4.0**2))
        return img.astype(np.float32), np.asarray(centres)

    def test_nan_corner(self):
        img, centres = self._eight_blobs()
        ref = st.pp.detect_blobs(img)
        assert len(ref) == 8
        img[:30, :30] = np.nan  # a corner without blobs
        # before: the threshold's median/std became NaN and 0 of 8 blobs were found
        with pytest.warns(UserWarning, match=r"900 NaN pixel\(s\) \(1.88%"):
            df = st.pp.detect_blobs(img)
        assert len(df) == 8
        d = np.linalg.norm(df[["x", "y"]].to_numpy()[:, None] - centres[None], axis=-1).min(0)
        assert d.max() < 1.0

    def test_all_nan_raises(self):
        with pytest.raises(StmapInputError, match="no finite pixel"):
            st.pp.detect_blobs(np.full((64, 64), np.nan, dtype=np.float32))


@pytest.fixture(scope="module")
def tissue():
    pytest.importorskip("torch")
    return st.datasets.synthetic_tissue(0)


class TestGeneMapsDtypes:
    FAST = {"epochs": 1, "width": 4, "depth": 2, "tile_px": 64, "batch_size": 2, "scale": 4.0, "verbose": False}
    GENES = ["tumor_r01", "stroma_r01"]

    def _run(self, tissue, img):
        from spatialdata.transformations import get_transformation

        he = tissue.images["he"]["scale0"]["image"]
        t = get_transformation(he, "global").to_affine_matrix(("x", "y"), ("x", "y"))
        sdata = st.datasets.synthetic_tissue(0)
        sdata.images["he"] = make_image(img, transform=t)
        model = st.tl.train_gene_maps(sdata, genes=self.GENES, table_key="spots", **self.FAST)
        out = st.tl.gene_maps(sdata, model=model, table_key="spots", copy=True, verbose=False)
        el = out.images["he_gene_maps"]
        el = el["scale0"]["image"] if "scale0" in getattr(el, "children", {}) else el
        return np.asarray(el.values), model

    def test_uint16_and_grey(self, tissue):
        u8 = np.asarray(tissue.images["he"]["scale0"]["image"].values)
        maps8, m8 = self._run(tissue, u8)
        # before: the histology prior clipped uint16 to 255 (the maps differed by up to 3.3)
        maps16, m16 = self._run(tissue, u8.astype(np.uint16) * 257)
        np.testing.assert_allclose(m16.ridge_coef, m8.ridge_coef, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(maps16, maps8, rtol=1e-5, atol=1e-6)
        # before: a grey H&E failed in the default (histology) prior; now it is the RGB-replicated grey
        grey = u8[1:2]
        maps_g, mg = self._run(tissue, grey)
        maps_r, mr = self._run(tissue, np.repeat(grey, 3, axis=0))
        np.testing.assert_allclose(mg.ridge_coef, mr.ridge_coef, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(maps_g, maps_r, rtol=1e-5, atol=1e-6)
