"""st.pp.histology_features on a stacked table: each spot's patch from its own section's image."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import StmapInputError

KW = {"patch_um": 150.0, "patch_px": 16, "scales": (1, 2)}


@pytest.fixture(scope="module")
def secs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return st.datasets.simulate_stack(3, n_genes=4, seed=2, grid=6)


@pytest.fixture(scope="module")
def per_section(secs):
    out = []
    for i, x in enumerate(secs):
        r = st.pp.histology_features(x, table_key=f"S{i}", copy=True, **KW)
        out.append(r.tables[f"S{i}"].obsm["X_histology"])
    return out


def _rows(tab, sec):
    return (tab.obs["section"] == sec).to_numpy()


def test_stack_equals_per_section(secs, per_section, tmp_path):
    s = st.pp.stack_sections(secs, transforms="warped")
    st.pp.histology_features(s, table_key="stack", **KW)
    tab = s.tables["stack"]
    f = tab.obsm["X_histology"]
    # the same patches from the same images, in each section's own frame: identical features, row for row
    ref = per_section
    for i, r in enumerate(ref):
        np.testing.assert_array_equal(f[_rows(tab, f"S{i}")], r)
    assert tab.uns["X_histology"]["image_key"] == {f"S{i}_spots": f"S{i}_he" for i in range(3)}
    tab.write_zarr(tmp_path / "t.zarr")  # the table's zarr round trip (what SpatialData.write stores for it)
    back = ad.read_zarr(tmp_path / "t.zarr")
    np.testing.assert_array_equal(back.obsm["X_histology"], f)
    assert dict(back.uns["X_histology"]["image_key"]) == tab.uns["X_histology"]["image_key"]
    # the sections differ (the field drifts with z): features are not just copies across sections
    assert not np.allclose(ref[0].mean(0), ref[2].mean(0))


def test_section_without_image_gets_nan(secs, per_section):
    other = sd.deepcopy(secs[1])
    del other.images["S1_he"]
    s = st.pp.stack_sections([secs[0], other, secs[2]], transforms="warped")
    with pytest.warns(UserWarning, match="S1_spots"):
        st.pp.histology_features(s, table_key="stack", **KW)
    tab = s.tables["stack"]
    f = tab.obsm["X_histology"]
    rows = _rows(tab, "S1")
    assert np.isnan(f[rows]).all() and np.isfinite(f[~rows]).all()
    # the sections that have an image get their per-section features unchanged
    np.testing.assert_array_equal(f[_rows(tab, "S2")], per_section[2])
    assert tab.uns["X_histology"]["image_key"] == {"S0_spots": "S0_he", "S2_spots": "S2_he"}


def test_generic_multi_region_and_dict_image_key(secs, per_section):
    s = st.pp.stack_sections(secs, transforms="warped")
    tab = s.tables["stack"]
    with pytest.warns(UserWarning, match="S2_spots"):
        b = (
            st.pp.histology_features(
                s, table_key="stack", image_key={"S0": "S0_he", "S1_spots": "S1_he"}, copy=True, **KW
            )
            .tables["stack"]
            .obsm["X_histology"]
        )
    # keys by section or by region; the dict names no image for S2: NaN there
    assert np.isnan(b[_rows(tab, "S2")]).all()
    np.testing.assert_array_equal(b[_rows(tab, "S1")], per_section[1])
    del tab.uns["stmap_stack"]  # no stack metadata: images found in each region's own coordinate system
    a = st.pp.histology_features(s, table_key="stack", copy=True, **KW).tables["stack"].obsm["X_histology"]
    np.testing.assert_array_equal(a, np.concatenate(per_section))


def test_no_image_anywhere_errors_and_writes_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = st.datasets.simulate_stack(2, n_genes=3, seed=0, grid=5, image=False)
    s = st.pp.stack_sections(bare, transforms="warped")
    before = set(s.tables["stack"].obsm) | set(s.tables["stack"].uns)
    with pytest.raises(StmapInputError, match="has an image"):
        st.pp.histology_features(s, table_key="stack", **KW)
    assert set(s.tables["stack"].obsm) | set(s.tables["stack"].uns) == before
