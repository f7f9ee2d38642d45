"""Tissue mask of an H&E (st.pp.detect_tissue): a known tissue region recovered, stored over the image, round trip."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import StmapInputError, make_image
from stmap.pp._tissue import tissue_window


def _he(h: int = 600, w: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 H&E-like image: white noisy glass, an elliptic stained region with a hole, a speck of dust.

    Returns the image ``(3, h, w)`` and the true tissue mask ``(h, w)`` (the ellipse, hole included: a small hole is
    tissue for the mask; the speck is not).
    """
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((yy - 0.5 * h) / (0.35 * h)) ** 2 + ((xx - 0.45 * w) / (0.3 * w)) ** 2 <= 1
    hole = (yy - 0.5 * h) ** 2 + (xx - 0.45 * w) ** 2 <= (0.03 * h) ** 2
    speck = (yy - 0.1 * h) ** 2 + (xx - 0.9 * w) ** 2 <= 3**2
    img = np.empty((3, h, w), np.float32)
    img[:] = np.array([243, 241, 245], np.float32)[:, None, None] + g.normal(0, 4, (3, h, w))
    pink = np.array([220, 140, 190], np.float32)[:, None, None]
    purple = np.array([90, 60, 150], np.float32)[:, None, None]
    mix = (g.random((h, w)) < 0.3)[None]
    stain = np.where(mix, purple, pink) + g.normal(0, 12, (3, h, w))
    img = np.where((tissue & ~hole)[None], stain, img)
    img = np.where(speck[None], purple, img)
    return np.clip(img, 0, 255).astype(np.uint8), tissue


def _sdata(img: np.ndarray) -> sd.SpatialData:
    t = np.diag([0.5, 0.5, 1.0])  # 0.5 coordinate units per pixel
    el = make_image(img, transform=t, c_coords=["r", "g", "b"], scale_factors=[2, 2], chunks=(3, 256, 256))
    return sd.SpatialData(images={"he": el})


def _full_mask(sdata: sd.SpatialData, name: str, shape: tuple[int, int]) -> np.ndarray:
    """The labels element read back on the image's full-resolution pixel grid (through both transformations)."""
    from spatialdata.transformations import get_transformation

    lab = sdata.labels[name]
    tl = get_transformation(lab, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    return tissue_window(np.asarray(lab.values), np.linalg.inv(tl) @ np.diag([0.5, 0.5, 1.0]), 0, 0, *shape)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


class TestDetectTissue:
    @pytest.mark.parametrize("max_pixels", [20_000, 1_000_000])  # coarsest level coarsened x2 / the full image
    def test_known_region(self, max_pixels):
        img, truth = _he()
        sdata = _sdata(img)
        st.pp.detect_tissue(sdata, max_pixels=max_pixels)
        assert st.pp.tissue_mask(sdata, "he") == "he_tissue"
        lab = sdata.labels["he_tissue"]
        assert lab.size <= max_pixels
        assert int(lab.max()) == 1  # one piece: the speck (< min_area) is dropped, the hole (< max_hole) filled
        mask = _full_mask(sdata, "he_tissue", truth.shape)
        # measured: IoU 0.983 at 20,000 px (75 x 100: coarse pixels along the border), 0.9995 at 1e6 (full resolution)
        assert _iou(mask, truth) > 0.95

    def test_copy_round_trip_and_key(self, tmp_path):
        img, truth = _he(seed=1)
        sdata = _sdata(img)
        out = st.pp.detect_tissue(sdata, "he", key_added="tissue", copy=True)
        assert "tissue" not in sdata.labels and st.pp.tissue_mask(sdata, "he") is None
        assert st.pp.tissue_mask(out, "he") is None  # a custom name is not the default one
        out.write(tmp_path / "t.zarr")
        back = sd.read_zarr(tmp_path / "t.zarr")
        np.testing.assert_array_equal(back.labels["tissue"].values, out.labels["tissue"].values)
        assert _iou(_full_mask(back, "tissue", truth.shape), truth) > 0.95

    def test_blank_image_has_no_tissue(self):
        sdata = _sdata(np.full((3, 200, 300), 240, np.uint8))
        st.pp.detect_tissue(sdata)
        assert int(sdata.labels["he_tissue"].max()) == 0

    def test_refusals(self):
        img, _ = _he(100, 120)
        sdata = _sdata(img)
        with pytest.raises(StmapInputError, match="nope"):
            st.pp.detect_tissue(sdata, "nope")
        with pytest.raises(StmapInputError):
            st.pp.detect_tissue(sdata, min_area=2.0)
        with pytest.raises(StmapInputError):
            st.pp.detect_tissue(sdata, key_added="bad name/")
        assert len(sdata.labels) == 0
