"""st.pp.detect_blobs: planted blobs are found (and distractors rejected), chunking-invariant, SpatialData output."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd
from scipy.spatial import cKDTree

import stmap as st
from stmap._core import StmapInputError, affine_matrix, make_image, new_spatialdata


def _planted(seed=0, h=400, w=500):
    """Noisy image with 20 sparse round blobs (radius 5-9 px) on a jittered lattice plus three distractors."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 0.05, (h, w))
    yy, xx = np.mgrid[:h, :w]
    centres = []
    for i in range(5):
        for j in range(4):
            cy, cx = 40 + j * 95 + rng.uniform(-4, 4), 40 + i * 100 + rng.uniform(-4, 4)
            r = rng.uniform(5, 9)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 1.0
            centres.append((cx, cy))
    # distractors: a thin elongated streak (circularity), a 2-px dot (area) - both in empty space
    img[(np.abs(yy - 390) <= 2) & (np.abs(xx - 250) <= 40)] += 1.0
    img[(yy - 10) ** 2 + (xx - 490) ** 2 <= 2] += 1.0
    return img.astype(np.float32), np.asarray(centres)


def _match(df, centres, both=False):
    """Distance of each planted centre to the nearest detection (``both``: of each detection to a centre)."""
    if both:
        return cKDTree(centres).query(df[["x", "y"]].to_numpy())[0]
    return cKDTree(df[["x", "y"]].to_numpy()).query(centres)[0]


class TestDetectBlobsArray:
    def test_finds_planted_blobs(self):
        img, centres = _planted()
        df = st.pp.detect_blobs(img)
        # every planted blob found once, nothing else: the streak fails circularity, the dot fails min_area
        assert len(df) == len(centres)
        # centroid of a symmetric disk: sub-pixel (noise 0.05 and pixelisation only)
        assert _match(df, centres).max() < 0.5
        assert (df["area"] >= 30).all() and (df["area"] <= 1000).all() and (df["circularity"] >= 0.85).all()

    def test_filters_are_exposed(self):
        img, centres = _planted()
        loose = st.pp.detect_blobs(img, sigma=5.0, min_circularity=0.0, min_area=1)
        # without the shape/size filters the distractors come back (the streak, maybe in pieces, and the dot)
        extra = loose[_match(loose, centres, both=True) > 1.0]
        assert len(loose) >= len(centres) + 2 and _match(loose, centres).max() < 0.5
        assert ((extra["y"] > 385) | (extra["x"] > 485)).all()
        strict = st.pp.detect_blobs(img, sigma=5.0, max_area=120)
        areas = st.pp.detect_blobs(img, sigma=5.0)["area"]
        assert len(strict) == int((areas <= 120).sum())

    def test_dark_blobs(self):
        img, centres = _planted(seed=1)
        df = st.pp.detect_blobs(1.0 - img, bright=False)
        assert len(df) == len(centres) and _match(df, centres).max() < 0.5

    def test_chunking_invariant(self):
        img, _ = _planted(seed=2)
        a, la = st.pp.detect_blobs(img, labels=True)
        b, lb = st.pp.detect_blobs(img, chunk_size=137, labels=True)  # core edges cut blobs
        # windows overlap by more than a blob: identical blobs, ids and labels whatever the chunking
        np.testing.assert_allclose(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy(), atol=1e-9)
        np.testing.assert_array_equal(a["label"].to_numpy(), b["label"].to_numpy())
        np.testing.assert_array_equal(la, lb)
        assert set(np.unique(la)) - {0} == set(a["label"])
        # label ids are the areas' pixels
        for lab, area in zip(a["label"], a["area"], strict=True):
            assert (la == lab).sum() == area

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [({"min_area": 50, "max_area": 10}, "min_area"), ({"sigma": -1}, "sigma"), ({"chunk_size": 4}, "chunk_size")],
    )
    def test_bad_args(self, kwargs, match):
        img, _ = _planted()
        with pytest.raises(StmapInputError, match=match):
            st.pp.detect_blobs(img, **kwargs)


def _sdata(img):
    # 3 channels, the blobs in channel 'gfp'; 2 um pixels, shifted; two-level pyramid
    stack = np.stack([np.zeros_like(img), img, np.zeros_like(img)])
    el = make_image(
        stack, transform=affine_matrix(2.0, (100.0, -50.0)), c_coords=["dapi", "gfp", "x"], scale_factors=[2]
    )
    return new_spatialdata(images={"section": el}, units={"global": "um"})


class TestDetectBlobsSpatialData:
    def test_points_in_coordinate_system_and_roundtrip(self, tmp_path):
        img, centres = _planted()
        sdata = _sdata(img)
        st.pp.detect_blobs(sdata, "section", channel="gfp", labels=True)
        pts = sdata.points["stmap_blobs"]
        xy = sd.transform(pts, to_coordinate_system="global").compute()[["x", "y"]].to_numpy()
        expect = (centres + 0.5) * 2.0 + np.array([100.0, -50.0])  # pixel centres at index + 0.5
        d, _ = cKDTree(xy).query(expect)
        assert len(xy) == len(centres) and d.max() < 1.0  # 0.5 px at 2 um/px
        t = sdata.tables["stmap_blobs_table"]
        assert t.n_obs == len(centres) and t.uns["stmap_blobs"]["n_blobs"] == len(centres)
        assert "params" in t.uns["stmap_blobs"]
        assert sdata.labels["stmap_blobs_labels"].shape == img.shape
        sdata.write(tmp_path / "b.zarr")
        back = sd.read_zarr(tmp_path / "b.zarr")
        np.testing.assert_array_equal(
            np.asarray(back.labels["stmap_blobs_labels"]), np.asarray(sdata.labels["stmap_blobs_labels"])
        )
        xy2 = sd.transform(back.points["stmap_blobs"], to_coordinate_system="global").compute()[["x", "y"]]
        np.testing.assert_allclose(xy2.to_numpy(), xy)
        assert back.tables["stmap_blobs_table"].uns["stmap_blobs"]["threshold"] == t.uns["stmap_blobs"]["threshold"]

    def test_coarser_level(self):
        img, centres = _planted()
        sdata = _sdata(img)
        out = st.pp.detect_blobs(sdata, "section", channel=1, level=1, sigma=2.6, min_area=8, max_area=300, copy=True)
        assert "stmap_blobs" not in sdata.points  # copy=True leaves the input alone
        xy = sd.transform(out.points["stmap_blobs"], to_coordinate_system="global").compute()[["x", "y"]].to_numpy()
        expect = (centres + 0.5) * 2.0 + np.array([100.0, -50.0])
        d, _ = cKDTree(xy).query(expect)
        # half resolution (4 um px): every blob within a coarse pixel; the 2.5 px wide streak now looks like blobs
        assert d.max() < 4.0
        extra = xy[cKDTree(expect).query(xy)[0] > 4.0]
        assert (np.abs(extra[:, 1] - ((390 + 0.5) * 2 - 50)) < 8).all()

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"image_key": "nope"}, "nope"),
            ({"channel": "rfp"}, "rfp"),
            ({"channel": 7}, "channel"),
            ({"level": 3}, "level"),
        ],
    )
    def test_bad_input_leaves_object_unchanged(self, kwargs, match):
        img, _ = _planted()
        sdata = _sdata(img)
        kw = {"image_key": "section"} | kwargs
        with pytest.raises((StmapInputError, KeyError), match=match):
            st.pp.detect_blobs(sdata, **kw)
        assert list(sdata.points) == [] and list(sdata.tables) == [] and list(sdata.labels) == []


def _cases(func):
    """Every invalid value generated from the tool's declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(name, value, id=f"{name}-{i}")
        for name, spec in func.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


class TestParameters:
    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.detect_blobs))
    def test_invalid_value_raises_untouched(self, name, value):
        img, _ = _planted()
        sdata = _sdata(img)
        with pytest.raises(StmapInputError, match=f"detect_blobs: {name} must be"):
            st.pp.detect_blobs(sdata, **{"image_key": "section", name: value})
        assert list(sdata.points) == [] and list(sdata.tables) == [] and list(sdata.labels) == []

    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.detect_blobs))
    def test_invalid_value_raises_arrays(self, name, value):
        img, _ = _planted()
        copy = img.copy()
        with pytest.raises(StmapInputError, match=f"detect_blobs: {name} must be"):
            st.pp.detect_blobs(img, **{name: value})
        np.testing.assert_array_equal(img, copy)
