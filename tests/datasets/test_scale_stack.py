"""st.datasets.large_stack: spatialdata-io's Visium HD layout per section, the truth (alignment, domains shared
across z, counts and features that follow the cells), determinism, declared parameters."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import StmapInputError, invalid_values, resolve

KW = {"n_sections": 3, "n_bins": 1600, "n_genes": 80, "n_types": 4, "chunk_rows": 700, "seed": 5}
TABLE = "square_016um"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    paths = st.datasets.large_stack(tmp_path_factory.mktemp("stack") / "s", **KW)
    return paths, [sd.read_zarr(p) for p in paths]


def _tiles(table, n_side=8):
    """Cell-type fractions per tile of the aligned frame (the 1-3 cells of one bin are too few to compare)."""
    xy = table.obsm["spatial_true"]
    counts = table.obsm["truth_cell_type_counts"].to_numpy(dtype=float)
    lo, hi = np.array([300.0, 300.0]), np.array([820.0, 820.0])  # inside every section's (rotated) area
    ij = np.floor((xy - lo) / (hi - lo) * n_side).astype(int)
    ok = ((ij >= 0) & (ij < n_side)).all(1)
    tile = ij[ok, 0] * n_side + ij[ok, 1]
    out = np.zeros((n_side * n_side, counts.shape[1]))
    np.add.at(out, tile, counts[ok])
    return out / out.sum(1, keepdims=True)


class TestLargeStack:
    def test_layout_is_the_readers(self, stack):
        paths, secs = stack
        assert [p.name for p in paths] == ["sample_S0.zarr", "sample_S1.zarr", "sample_S2.zarr"]
        for i, s in enumerate(secs):
            assert s.attrs["spatialdata_io_reader"] == "visium_hd"
            assert set(s.tables) == {TABLE} and set(s.shapes) == {f"sample_S{i}_square_016um"}
            assert set(s.coordinate_systems) == {f"sample_S{i}"}
            t = s.tables[TABLE]
            assert t.uns["spatialdata_attrs"] == {
                "region": f"sample_S{i}_square_016um",
                "region_key": "region",
                "instance_key": "location_id",
            }
            assert {"in_tissue", "array_row", "array_col", "location_id"} <= set(t.obs)
            # squares of 16 µm at 0.2738 µm per pixel: stmap infers the unit from the bin size
            assert resolve(s, None).um_per_unit == pytest.approx(0.2738, rel=1e-6)
            assert t.obsm["X_histology"].shape == (1600, 48) and t.obsm["X_histology"].dtype == np.float32
            assert list(t.uns["X_histology"]["n_features_per_scale"]) == [16, 16, 16]
            assert t.uns["truth_stack"]["z_um"] == pytest.approx(20.0 * i)

    def test_transform_maps_bins_to_the_aligned_frame(self, stack):
        _, secs = stack
        angles = []
        for s in secs:
            t = s.tables[TABLE]
            m = np.asarray(t.uns["truth_stack"]["transform"])
            centres = resolve(s, None).coords  # full-resolution pixels, the section's own frame
            np.testing.assert_allclose(centres @ m[:2, :2].T + m[:2, 2], t.obsm["spatial_true"], atol=1e-6)
            assert np.linalg.det(m[:2, :2]) == pytest.approx(0.2738**2, rel=1e-9)  # rigid, in µm
            angles.append(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
        # every section is misaligned by its own small rotation (up to max_angle = 2 degrees)
        assert all(abs(a) <= 2.0 for a in angles) and len({round(a, 6) for a in angles}) == 3

    def test_domains_shared_across_sections(self, stack):
        _, secs = stack
        f = [_tiles(s.tables[TABLE]) for s in secs]

        def r(a, b):
            return np.corrcoef(a.ravel(), b.ravel())[0, 1]

        shuffled = r(f[0], f[1][np.random.default_rng(0).permutation(len(f[1]))])
        # co-located tiles of adjacent sections share their cell types (measured 0.74, 0.87; tiles of ~16 bins of
        # 1-3 cells each are noisy), the domains drift with z (sections 40 µm apart: 0.53), other tiles: 0.02
        assert min(r(f[0], f[1]), r(f[1], f[2])) > 0.65
        assert r(f[0], f[2]) < 0.5 * (r(f[0], f[1]) + r(f[1], f[2]))
        assert abs(shuffled) < 0.3

    def test_counts_and_features_follow_the_cells(self, stack):
        _, secs = stack
        t = secs[1].tables[TABLE]
        truth = t.obsm["truth_cell_type_counts"].to_numpy(dtype=float)
        n = truth.sum(1)
        assert n.min() >= 1 and n.max() <= 3
        X = t.X.tocsr() if hasattr(t.X, "tocsr") else t.X.compute().tocsr()
        tot = np.asarray(X.sum(1)).ravel()
        assert tot[n == 3].mean() > 2.0 * tot[n == 1].mean()  # each cell adds its own library
        # expected counts from the true cells and profiles explain the counts (per-gene Pearson across bins)
        expected = truth @ np.asarray(t.varm["truth_profiles"]).T
        dense = X.toarray()
        r = [np.corrcoef(dense[:, g], expected[:, g])[0, 1] for g in range(dense.shape[1])]
        assert np.nanmean(r) > 0.3, np.nanmean(r)
        # the spot block of the features is a linear map of the bin's own cell-type fractions plus noise
        own = truth / n[:, None]
        feats = np.asarray(t.obsm["X_histology"])[:, :16]
        coef, *_ = np.linalg.lstsq(np.c_[own, np.ones(len(own))], feats, rcond=None)
        resid = feats - np.c_[own, np.ones(len(own))] @ coef
        assert 1 - resid.var() / feats.var() > 0.5

    def test_stacks_with_the_true_transforms(self, stack):
        _, secs = stack
        info = [s.tables[TABLE].uns["truth_stack"] for s in secs]
        out = st.pp.stack_sections(
            {f"S{i}": s for i, s in enumerate(secs)},
            transforms=[i["transform"] for i in info],
            z=[i["z_um"] for i in info],
        )
        tab = out.tables["stack"]
        true = np.concatenate([s.tables[TABLE].obsm["spatial_true"] for s in secs])
        np.testing.assert_allclose(tab.obsm["spatial_3d"][:, :2], true, atol=1e-6)
        assert min(tab.uns["stmap_stack"]["overlap_fraction"]) > 0.9
        assert tab.obsm["X_histology"].shape == (4800, 48)

    def test_deterministic_and_refuses_to_overwrite(self, stack, tmp_path):
        paths, secs = stack
        again = st.datasets.large_stack(tmp_path / "b", **KW)
        a, b = secs[2].tables[TABLE], sd.read_zarr(again[2]).tables[TABLE]
        assert (a.X != b.X).nnz == 0
        np.testing.assert_array_equal(a.obsm["X_histology"], b.obsm["X_histology"])
        with pytest.raises(StmapInputError, match="overwrite=True"):
            st.datasets.large_stack(paths[0].parent, **KW)

    def test_lazy_image_tinted_by_the_domains(self, tmp_path):
        kw = {**KW, "n_sections": 2, "n_bins": 400, "n_features": None, "image": True}
        paths = st.datasets.large_stack(tmp_path / "img", **kw)
        s = sd.read_zarr(paths[0])
        assert "X_histology" not in s.tables[TABLE].obsm
        img = s.images["sample_S0_full_image"]["scale0"]["image"]
        assert img.dtype == np.uint8 and img.shape[0] == 3
        # the capture area (20 x 20 bins of 16 µm plus 200 µm margins) in 0.2738 µm pixels
        assert img.shape[1] == img.shape[2] == int(np.ceil((2 * 200 + 20 * 16) / 0.2738))
        arr = img.values.astype(float)
        # the stroma is tinted by the local cell types: the mean colour varies across the area
        blocks = arr[:, :2048, :2048].reshape(3, 8, 256, 8, 256).mean((2, 4))
        assert blocks.std(axis=(1, 2)).max() > 3.0


@pytest.mark.parametrize(
    ("name", "value"),
    [(k, v) for k, spec in st.datasets.large_stack.__stmap_params__.items() for v in invalid_values(spec)],
)
def test_declared_parameters_reject_invalid_values(name, value, tmp_path):
    with pytest.raises(StmapInputError, match=name):
        st.datasets.large_stack(tmp_path / "x", **{**KW, name: value})
    assert not (tmp_path / "x").exists()
