"""Names checked before anything is written; a rerun under the same key replaces everything the previous run wrote."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import spatialdata as sd

import stmap as st


@pytest.fixture(scope="module")
def tissue():
    return st.datasets.synthetic_tissue(0, n_cells=500, n_genes=100)


def _snapshot(sdata, *extra):
    tabs = {k: (set(t.obs), set(t.obsm), set(t.uns), set(t.layers)) for k, t in sdata.tables.items()}
    els = {k: set(getattr(sdata, k)) for k in ("images", "labels", "points", "shapes")}
    return tabs, els, copy.deepcopy(dict(sdata.attrs)), [(set(a.obs), set(a.obsm), set(a.uns)) for a in extra]


@pytest.mark.parametrize("key", ["my map", "a/b", "__x", ""])
def test_invalid_key_added_raises_before_writing(tissue, key):
    s = sd.deepcopy(tissue)
    ref = s.tables["cells"].copy()
    before = _snapshot(s, ref)
    with pytest.raises(st.StmapInputError, match="not a valid name"):
        st.tl.map_cells(s, ref, table_key="spots", key_added=key)
    assert _snapshot(s, ref) == before
    with pytest.raises(st.StmapInputError, match="not a valid name"):
        st.tl.density(s, table_key="cells", groupby="cell_type", bandwidth=20.0, key_added=key)
    assert _snapshot(s, ref) == before


def test_valid_results_write_and_read_back(tissue, tmp_path):
    s = sd.deepcopy(tissue)
    ref = s.tables["cells"].copy()
    st.tl.map_cells(s, ref, table_key="spots", key_added="my_map.v2")
    s.write(tmp_path / "a.zarr")
    back = sd.read_zarr(tmp_path / "a.zarr")
    assert "my_map.v2_cell_type_fractions" in back.tables["spots"].obsm


def test_rerun_replaces_everything_the_previous_run_wrote(tissue):
    s = sd.deepcopy(tissue)
    ref = s.tables["cells"].copy()
    with pytest.warns(UserWarning, match="Overwriting"):  # noqa: PT031 - the second run overwrites (and says so)
        st.tl.map_cells(s, ref, table_key="spots", mode="greedy")
        assert "stmap_spot" in ref.obs
        st.tl.map_cells(s, ref, table_key="spots", mode="regular")
    assert "stmap_spot" not in ref.obs  # greedy-only result of the previous run: gone
    assert s.tables["spots"].uns["stmap_mapping"]["mode"] == "regular"
    assert ref.uns["stmap_mapping"]["mode"] == "regular"
    # what the run wrote is recorded, and only that is replaced: another key is untouched
    st.tl.map_cells(s, ref, table_key="spots", mode="greedy", key_added="other")
    assert "other_spot" in ref.obs and "stmap_mapping_assignment" in ref.obsm
    rec = set(map(str, s.tables["spots"].uns["stmap_mapping"]["written"]))
    assert {"obsm:stmap_cell_type_fractions", "obs:stmap_n_cells", "element:spots_cells"} <= rec


def test_record_lists_new_tables_and_elements(tissue):
    """New tables/elements are recorded under the key, so a later run under it that makes none removes them."""
    s = sd.deepcopy(tissue)
    ref = s.tables["cells"].copy()
    st.tl.map_cells(s, ref, table_key="spots")
    assert "spots_cells" in s.tables
    rec = set(map(str, s.tables["spots"].uns["stmap_mapping"]["written"]))
    assert "element:spots_cells" in rec and "element:spots_cells_points" in rec
    np.testing.assert_array_equal(
        s.tables["spots"].obsm["stmap_cell_type_counts"].sum(1), s.tables["spots"].obs["stmap_n_cells"]
    )


def test_data_derived_names_with_slash_are_stored_and_written(tissue, tmp_path):
    """A cell type 'T/NK' (data, not a name the user chose) must not make sdata.write fail afterwards."""
    s = sd.deepcopy(tissue)
    ref = s.tables["cells"].copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].cat.rename_categories(lambda c: "T/NK" if c == "T_cell" else c)
    st.tl.map_cells(s, ref, table_key="spots")
    F = s.tables["spots"].obsm["stmap_cell_type_fractions"]
    assert "T_NK" in F.columns and "T/NK" not in F.columns
    st.tl.project_genes(s, ref, table_key="spots", genes=list(ref.var_names[:4]))  # reads the stored names
    s.write(tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    np.testing.assert_array_equal(back.tables["spots"].obsm["stmap_cell_type_fractions"].to_numpy(), F.to_numpy())
    # the same result as with the category renamed by hand
    s2 = sd.deepcopy(tissue)
    ref2 = s2.tables["cells"].copy()
    ref2.obs["cell_type"] = ref2.obs["cell_type"].cat.rename_categories(lambda c: "T_NK" if c == "T_cell" else c)
    st.tl.map_cells(s2, ref2, table_key="spots")
    st.tl.project_genes(s2, ref2, table_key="spots", genes=list(ref.var_names[:4]))
    np.testing.assert_array_equal(F.to_numpy(), s2.tables["spots"].obsm["stmap_cell_type_fractions"].to_numpy())

    def dense(x):
        return x.toarray() if hasattr(x, "toarray") else np.asarray(x)

    np.testing.assert_allclose(dense(s.tables["spots_projected"].X), dense(s2.tables["spots_projected"].X))
