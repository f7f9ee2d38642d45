"""st.tl.density: array API vs direct sum, SpatialData output (image + grid transform + .uns), bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import image_grid, make_points, make_table, new_spatialdata
from stmap.kernels import kde_direct


def _sdata(n=400, seed=0, d=2, with_table=False):
    rng = np.random.default_rng(seed)
    xy = np.concatenate([rng.normal(20, 4, size=(n // 2, d)), rng.normal(50, 6, size=(n - n // 2, d))])
    kind = np.array(["a"] * (n // 2) + ["b"] * (n - n // 2))
    pts = make_points(xy, annotations=pd.DataFrame({"kind": pd.Categorical(kind)}))
    tables = {}
    if with_table:
        t = ad.AnnData(np.ones((n, 1), dtype=np.float32), obs=pd.DataFrame({"w": rng.uniform(size=n)}))
        tables["cell_table"] = make_table(t, region="cells")
    return new_spatialdata(points={"cells": pts}, tables=tables, units={"global": "um"}), xy, kind


def _snapshot(s):
    return {
        "elements": sorted([*s.images, *s.labels, *s.points, *s.shapes]),
        "tables": {k: (sorted(t.uns), sorted(t.obs.columns)) for k, t in s.tables.items()},
    }


class TestDensityArray:
    def test_matches_direct_sum(self):
        pts = np.random.default_rng(0).normal(size=(500, 2))
        bounds = ((-5, 5), (-4, 4))
        g = st.tl.density(pts, bandwidth=0.5, grid_shape=(101, 81), bounds=bounds)
        assert g.shape == (101, 81)
        ax = [np.linspace(*bounds[0], 101), np.linspace(*bounds[1], 81)]
        nodes = np.stack([m.ravel() for m in np.meshgrid(*ax, indexing="ij")], 1)
        exact = kde_direct(pts, nodes, 0.5).reshape(g.shape)
        # 5 nodes per bandwidth and 500 points: corrected linear binning is within ~1e-3 of the exact sum
        assert np.linalg.norm(g - exact) / np.linalg.norm(exact) < 1e-3

    def test_3d_and_weights(self):
        rng = np.random.default_rng(1)
        pts = rng.uniform(0, 10, size=(300, 3))
        w = rng.uniform(size=300)
        b = ((-2, 12),) * 3
        g = st.tl.density(pts, bandwidth=(1.0, 1.2, 0.8), grid_shape=(57, 57, 57), bounds=b, weights=w)
        ax = np.linspace(-2, 12, 57)
        nodes = np.stack([m.ravel() for m in np.meshgrid(ax, ax, ax, indexing="ij")], 1)
        exact = kde_direct(pts, nodes, (1.0, 1.2, 0.8), weights=w).reshape(g.shape)
        # 3-5 nodes per bandwidth: corrected binning error of a few 1e-3
        assert np.linalg.norm(g - exact) / np.linalg.norm(exact) < 5e-3

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"bandwidth": 0.0}, "positive"),
            ({"bandwidth": -1.0}, "positive"),
            ({"bandwidth": None}, "bandwidth"),
            ({"bandwidth": 1.0, "grid_shape": (10,)}, "grid_shape"),
            ({"bandwidth": 1.0, "voxel_size": 1e-4, "max_memory": 1e6}, "GB"),
            ({"bandwidth": 1.0, "mask": np.ones((3, 3), bool)}, "mask"),
        ],
    )
    def test_bad_input(self, kwargs, match):
        pts = np.random.default_rng(2).normal(size=(20, 2))
        with pytest.raises(st.StmapInputError, match=match):
            st.tl.density(pts, **kwargs)

    def test_empty_and_nan(self):
        with pytest.raises(st.StmapInputError, match="empty"):
            st.tl.density(np.zeros((0, 2)), bandwidth=1.0)
        pts = np.random.default_rng(3).normal(size=(20, 2))
        pts[4] = np.nan
        with pytest.raises(st.StmapInputError, match="NaN"):
            st.tl.density(pts, bandwidth=1.0)

    def test_points_outside_the_bounds(self):
        pts = np.array([[0.0, 0.0], [100.0, 100.0], [10.5, 0.0]])
        kw = {"bandwidth": 1.0, "grid_shape": (161, 161), "bounds": ((-10, 10), (-10, 10))}
        g = st.tl.density(pts, norm="counts", **kw)
        # the far point adds nothing; the one 0.5 beyond the edge adds its kernel at the nodes inside
        ax = np.linspace(-10, 10, 161)
        nodes = np.stack([m.ravel() for m in np.meshgrid(ax, ax, indexing="ij")], 1)
        exact = 2 * kde_direct(pts[[0, 2]], nodes, 1.0).reshape(161, 161)
        # 8 nodes per bandwidth, two points: binning error (measured 1.8e-3; dropping the edge point: 0.46)
        assert np.linalg.norm(g - exact) / np.linalg.norm(exact) < 5e-3
        d = st.tl.density(pts, **kw)
        np.testing.assert_allclose(d, g / 3, rtol=1e-12)  # the density divides by every point


class TestDensitySpatialData:
    def test_groups_image_and_uns(self):
        sdata, xy, kind = _sdata()
        st.tl.density(sdata, points_key="cells", groupby="kind", bandwidth=3.0, voxel_size=1.5)
        img = sdata.images["stmap_density"]
        assert list(img.coords["c"].values) == ["a", "b"] and img.dims == ("c", "y", "x")
        t = sdata.tables["stmap_density_groups"]  # no table in the input: our one-row-per-group table
        info = t.uns["stmap_density"]
        assert list(t.obs["n_points"]) == [200, 200] and info["params"]["groupby"] == "kind"
        lo, step, shape, _ = image_grid(img, "global")
        np.testing.assert_allclose(lo, info["grid"]["lo"])  # the image transform places pixel i at node i
        np.testing.assert_allclose(step, [1.5, 1.5])
        # channel 'a' == the array API on the points of 'a', on the same grid
        ref = st.tl.density(xy[kind == "a"], bandwidth=3.0, grid=info["grid"])
        np.testing.assert_allclose(img.sel(c="a").values.T, ref, rtol=1e-5, atol=1e-6 * ref.max())  # float32 image

    def test_table_host_weights_3d_roundtrip(self, tmp_path):
        sdata, xyz, _ = _sdata(d=3, with_table=True)
        st.tl.density(sdata, table_key="cell_table", bandwidth=4.0, voxel_size=3.0, weights="w", norm="counts")
        img = sdata.images["stmap_density"]
        assert img.dims == ("c", "z", "y", "x")
        info = sdata.tables["cell_table"].uns["stmap_density"]
        w = sdata.tables["cell_table"].obs["w"].to_numpy()
        assert info["total_weight"][0] == pytest.approx(w.sum())
        # counts norm: integral = total weight (grid covers +- 3 bandwidths: >99% of the mass)
        assert img.values.sum() * 27 == pytest.approx(w.sum(), rel=1e-2)
        sdata.write(tmp_path / "d.zarr")
        back = sd.read_zarr(tmp_path / "d.zarr")
        np.testing.assert_array_equal(back.images["stmap_density"].values, img.values)
        assert back.tables["cell_table"].uns["stmap_density"]["grid"]["shape"].tolist() == info["grid"]["shape"]
        lo, _, shape, _ = image_grid(back.images["stmap_density"], "global")
        np.testing.assert_allclose(lo, info["grid"]["lo"])

    def test_reuse_grid_by_name_and_copy(self):
        sdata, xy, kind = _sdata()
        st.tl.density(sdata, groupby="kind", bandwidth=3.0, voxel_size=2.0)
        out = st.tl.density(sdata, bandwidth=3.0, grid="stmap_density", key_added="query", copy=True)
        assert "query" not in sdata.images and "query" in out.images  # copy=True leaves the input alone
        assert out.images["query"].shape[1:] == sdata.images["stmap_density"].shape[1:]
        assert out.tables["query_groups"].uns["query"]["grid"]["lo"] == pytest.approx(
            list(sdata.tables["stmap_density_groups"].uns["stmap_density"]["grid"]["lo"])
        )

    def test_anndata_3d(self):
        rng = np.random.default_rng(5)
        a = ad.AnnData(np.ones((50, 1), dtype=np.float32))
        a.obsm["spatial"] = rng.normal(size=(50, 3))
        st.tl.density(a, bandwidth=0.5, voxel_size=0.25)
        assert a.uns["stmap_density"]["density"].ndim == 4  # (groups, nx, ny, nz)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"groupby": "nope", "bandwidth": 1.0}, "nope"),
            ({"points_key": "nope", "bandwidth": 1.0}, "nope"),
            ({"bandwidth": 0.0}, "positive"),
            ({"bandwidth": 1.0, "voxel_size": 0.001, "max_memory": 1e7}, "GB"),
            ({"bandwidth": 1.0, "grid": "nope"}, "nope"),
            ({"groupby": "kind", "groups": ["zz"], "bandwidth": 1.0}, "zz"),
        ],
    )
    def test_bad_input_leaves_object(self, kwargs, match):
        sdata, _, _ = _sdata()
        before = _snapshot(sdata)
        with pytest.raises(st.StmapInputError, match=match):
            st.tl.density(sdata, **kwargs)
        assert _snapshot(sdata) == before


def _cases(func):
    """Every invalid value generated from the tool's declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(name, value, id=f"{name}-{i}")
        for name, spec in func.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


class TestParameters:
    @pytest.mark.parametrize(("name", "value"), _cases(st.tl.density))
    def test_invalid_value_raises_untouched(self, name, value):
        sdata, _, _ = _sdata()
        before = _snapshot(sdata)
        with pytest.raises(st.StmapInputError, match=f"density: {name} must be"):
            st.tl.density(sdata, **{"points_key": "cells", "bandwidth": 3.0, name: value})
        assert _snapshot(sdata) == before

    @pytest.mark.parametrize(("name", "value"), _cases(st.tl.density))
    def test_invalid_value_raises_arrays(self, name, value):
        pts = np.random.default_rng(0).normal(size=(20, 2))
        copy = pts.copy()
        with pytest.raises(st.StmapInputError, match=f"density: {name} must be"):
            st.tl.density(pts, **{"bandwidth": 1.0, name: value})
        np.testing.assert_array_equal(pts, copy)

    def test_copy_returns_one_object_equal_to_in_place(self):
        a, _, _ = _sdata()
        b, _, _ = _sdata()
        out = st.tl.density(a, groupby="kind", bandwidth=3.0, voxel_size=2.0, copy=True)
        assert st.tl.density(b, groupby="kind", bandwidth=3.0, voxel_size=2.0) is None
        assert type(out).__name__ == "SpatialData" and "stmap_density" not in a.images
        np.testing.assert_array_equal(out.images["stmap_density"].values, b.images["stmap_density"].values)
