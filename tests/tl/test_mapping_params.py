"""st.tl.map_cells / st.tl.project_genes: declared parameters, and ``copy=True`` returning one object.

Every invalid value generated from the declared constraints raises before anything is written; ``copy=True`` gives
exactly the ``copy=False`` results in one returned object (the reference's results in the spot table's
``uns[key]['reference']``) and leaves both inputs untouched.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from scipy import sparse

import stmap as st
from stmap._core import invalid_values


@pytest.fixture(scope="module")
def tissue():
    return st.datasets.synthetic_tissue(0)


@pytest.fixture(scope="module")
def mapped(tissue):
    """A SpatialData mapped in place (copy=False) and its reference, for project_genes."""
    sdata = sd.deepcopy(tissue)
    ref = sdata.tables["cells"].copy()
    _quiet(st.tl.map_cells, sdata, ref, table_key="spots", cells_per_spot="n_cells")
    return sdata, ref


def _quiet(f, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return f(*args, **kw)


def _state(sdata, ref):
    """Everything a call could write: tables and their keys, elements, the reference's keys and counts."""
    tabs = sdata.tables if hasattr(sdata, "tables") else {"adata": sdata}
    keys = {n: (set(t.obs.columns), set(t.obsm), set(t.uns), set(t.layers)) for n, t in tabs.items()}
    elements = set(sdata.points) | set(sdata.shapes) if hasattr(sdata, "points") else set()
    return keys, elements, (set(ref.obs.columns), set(ref.obsm), set(ref.uns)), ref.X.sum()


def _cases(func):
    return [(name, v) for name, spec in func.__stmap_params__.items() for v in invalid_values(spec)]


class TestParameters:
    @pytest.mark.parametrize(("name", "value"), _cases(st.tl.map_cells), ids=repr)
    def test_map_cells_invalid_value_raises_untouched(self, tissue, name, value):
        ref = tissue.tables["cells"].copy()
        before = _state(tissue, ref)
        args = (tissue, value) if name == "sc_adata" else (tissue, ref)
        kw = {} if name == "sc_adata" else {name: value}
        with pytest.raises(st.StmapInputError, match=rf"map_cells: {name} must be"):
            st.tl.map_cells(*args, **({"table_key": "spots"} | kw))
        assert _state(tissue, ref) == before

    @pytest.mark.parametrize(("name", "value"), _cases(st.tl.project_genes), ids=repr)
    def test_project_genes_invalid_value_raises_untouched(self, mapped, name, value):
        sdata, ref = mapped
        before = _state(sdata, ref)
        args = (sdata, value) if name == "sc_adata" else (sdata, ref)
        kw = {} if name == "sc_adata" else {name: value}
        with pytest.raises(st.StmapInputError, match=rf"project_genes: {name} must be"):
            st.tl.project_genes(*args, **({"table_key": "spots"} | kw))
        assert _state(sdata, ref) == before

    def test_key_added_checked_before_computing(self, mapped):
        """A key that zarr cannot store fails up front, naming key_added (not after the fit, naming a derived key)."""
        sdata, ref = mapped
        before = _state(sdata, ref)
        with pytest.raises(st.StmapInputError, match="key_added 'a/b' is not a valid name"):
            st.tl.map_cells(sdata, ref, table_key="spots", key_added="a/b")
        with pytest.raises(st.StmapInputError, match="key_added 'spots_a/b' is not a valid name"):
            st.tl.project_genes(sdata, ref, table_key="spots", key_added="a/b")
        assert _state(sdata, ref) == before

    @pytest.mark.parametrize("func", [st.tl.map_cells, st.tl.project_genes], ids=lambda f: f.__name__)
    def test_every_parameter_but_the_data_is_declared(self, func):
        import inspect

        assert set(func.__stmap_params__) == set(inspect.signature(func).parameters) - {"sdata"}

    def test_valid_edge_values_pass(self, tissue):
        """Bounds that are allowed: no refinement, one candidate, numpy integers, a tuple of genes."""
        genes = tuple(tissue.tables["spots"].var_names[:40])
        out = _quiet(
            st.tl.map_cells,
            tissue,
            tissue.tables["cells"].copy(),
            table_key="spots",
            cells_per_spot=np.int64(3),
            n_refine=0,
            n_candidates=1,
            max_iter=np.int64(5),
            genes=genes,
            copy=True,
        )
        assert (out.tables["spots"].obs["stmap_n_cells"] == 3).all()
        assert list(out.tables["spots"].uns["stmap_mapping"]["genes"]) == list(genes)


def _assert_same_reference(rec, ref_inplace, key="stmap_mapping"):
    """The copy's record of the reference equals what copy=False wrote on it."""
    assert list(rec["cell_ids"]) == list(ref_inplace.obs_names)
    assert list(rec["spot_ids"]) == list(ref_inplace.uns[key]["spot_ids"])
    for a, b in ((rec["scores"], ref_inplace.obsm[key]), (rec["assignment"], ref_inplace.obsm[f"{key}_assignment"])):
        assert a.shape == b.shape and a.dtype == b.dtype and (a != b).nnz == 0
    if "stmap_spot" in ref_inplace.obs:
        np.testing.assert_array_equal(
            np.asarray(rec["spot"], dtype=object), ref_inplace.obs["stmap_spot"].to_numpy(dtype=object)
        )
    else:
        assert "spot" not in rec


def _assert_same_spots(a, b, key="stmap_mapping"):
    for k in ("stmap_cell_type_fractions", "stmap_cell_type_counts"):
        pd.testing.assert_frame_equal(a.obsm[k], b.obsm[k], check_exact=True)
    pd.testing.assert_series_equal(a.obs["stmap_n_cells"], b.obs["stmap_n_cells"], check_exact=True)
    ua, ub = a.uns[key], b.uns[key]
    assert set(ua) - {"reference"} == set(ub)
    for k in ("genes", "loss", "gene_scale", "cell_types"):
        np.testing.assert_array_equal(ua[k], ub[k])
    assert ua["params"] == ub["params"]


class TestCopy:
    @pytest.mark.parametrize("mode", ["regular", "greedy"])
    def test_spatialdata_copy_equals_in_place(self, tissue, mode):
        ref = tissue.tables["cells"].copy()
        before = _state(tissue, ref)
        out = _quiet(st.tl.map_cells, tissue, ref, table_key="spots", mode=mode, cells_per_spot="n_cells", copy=True)
        assert isinstance(out, sd.SpatialData)  # one object, not a tuple
        assert _state(tissue, ref) == before  # neither input was modified
        inplace, ref_in = sd.deepcopy(tissue), tissue.tables["cells"].copy()
        assert _quiet(st.tl.map_cells, inplace, ref_in, table_key="spots", mode=mode, cells_per_spot="n_cells") is None
        _assert_same_spots(out.tables["spots"], inplace.tables["spots"])
        _assert_same_reference(out.tables["spots"].uns["stmap_mapping"]["reference"], ref_in)
        c0, c1 = out.tables["spots_cells"], inplace.tables["spots_cells"]
        pd.testing.assert_frame_equal(c0.obs, c1.obs)
        np.testing.assert_array_equal(c0.obsm["spatial"], c1.obsm["spatial"])
        assert (c0.X != c1.X).nnz == 0
        # project_genes reads the placement from the copy (ref untouched) and gives the in-place projection
        p0 = _quiet(st.tl.project_genes, out, ref, table_key="spots", copy=True)
        p1 = _quiet(st.tl.project_genes, inplace, ref_in, table_key="spots", copy=True)
        assert (p0.tables["spots_projected"].X != p1.tables["spots_projected"].X).nnz == 0
        assert _state(tissue, ref) == before

    def test_anndata_copy_equals_in_place(self, tissue):
        spots, ref = tissue.tables["spots"].copy(), tissue.tables["cells"].copy()
        before = _state(spots, ref)
        out = _quiet(st.tl.map_cells, spots, ref, cells_per_spot="n_cells", key_added="m2", mode="greedy", copy=True)
        assert type(out) is type(spots) and out is not spots
        assert _state(spots, ref) == before
        sp_in, ref_in = spots.copy(), ref.copy()
        _quiet(st.tl.map_cells, sp_in, ref_in, cells_per_spot="n_cells", key_added="m2", mode="greedy")
        pd.testing.assert_frame_equal(out.obsm["m2_cell_type_fractions"], sp_in.obsm["m2_cell_type_fractions"])
        rec = out.uns["m2"]["reference"]
        assert list(rec["cell_ids"]) == list(ref_in.obs_names)
        assert (rec["assignment"] != ref_in.obsm["m2_assignment"]).nnz == 0
        np.testing.assert_array_equal(np.asarray(rec["spot"], dtype=object), ref_in.obs["m2_spot"].to_numpy(object))
        p0 = _quiet(st.tl.project_genes, out, ref, mapping_key="m2", copy=True)
        p1 = _quiet(st.tl.project_genes, sp_in, ref_in, mapping_key="m2", copy=True)
        pd.testing.assert_frame_equal(p0.obsm["stmap_projected"], p1.obsm["stmap_projected"], check_exact=True)

    def test_copy_record_survives_zarr(self, tissue, tmp_path):
        ref = tissue.tables["cells"].copy()
        out = _quiet(
            st.tl.map_cells, tissue, ref, table_key="spots", mode="greedy", cells_per_spot="n_cells", copy=True
        )
        path = tmp_path / "copy.zarr"
        _quiet(out.write, path)
        back = sd.read_zarr(path)
        rec0, rec1 = (s.tables["spots"].uns["stmap_mapping"]["reference"] for s in (out, back))
        assert sparse.issparse(rec1["assignment"]) and (rec1["assignment"] != rec0["assignment"]).nnz == 0
        np.testing.assert_array_equal(np.asarray(rec1["spot"], dtype=str), np.asarray(rec0["spot"], dtype=str))
        p0 = _quiet(st.tl.project_genes, out, ref, table_key="spots", copy=True)
        p1 = _quiet(st.tl.project_genes, back, ref, table_key="spots", copy=True)
        np.testing.assert_array_equal(
            p0.tables["spots_projected"].X.toarray(), p1.tables["spots_projected"].X.toarray()
        )

    def test_project_genes_refuses_other_cells(self, tissue):
        ref = tissue.tables["cells"].copy()
        out = _quiet(st.tl.map_cells, tissue, ref, table_key="spots", cells_per_spot="n_cells", copy=True)
        with pytest.raises(st.StmapInputError, match="made with other cells"):
            st.tl.project_genes(out, ref[:-1].copy(), table_key="spots")
        assert "spots_projected" not in out.tables
