"""Counts read by map_cells / project_genes / impute_3d are validated before anything is written.

Without these checks one NaN or negative count in one measured spot made every imputed value NaN, NaN in the
reference gave NaN projections, negative spot counts gave projected expression down to -723, and log-normalised
counts in ``X`` were mapped silently with a composition ~7x worse (mean abs error 0.148 vs 0.022).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import sparse

import stmap as st
from stmap import StmapInputError

TYPES = "cell_type"


def _tissue():
    return st.datasets.synthetic_tissue(0, n_cells=500, n_genes=60)


def _lognorm(X):
    """``sc.pp.normalize_total`` + ``sc.pp.log1p`` of a count matrix (dense float32)."""
    X = np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float64)
    lib = X.sum(1, keepdims=True)
    return np.log1p(X / np.maximum(lib, 1) * 1e4).astype(np.float32)


def _snap(adata):
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    layers = {k: (v.toarray() if sparse.issparse(v) else np.asarray(v)).copy() for k, v in adata.layers.items()}
    return (set(adata.obs.columns), set(adata.obsm), set(adata.uns), set(adata.obsp), X.copy(), layers)


def _same(a, b):
    assert a[:4] == b[:4]
    np.testing.assert_array_equal(a[4], b[4])
    assert a[5].keys() == b[5].keys()
    for k in a[5]:
        np.testing.assert_array_equal(a[5][k], b[5][k])


def _set(adata, i, j, value, layer=None):
    """Set one entry of X (or a layer), keeping the matrix type."""
    M = adata.X if layer is None else adata.layers[layer]
    M = M.tolil() if sparse.issparse(M) else np.array(M, dtype=np.float32)
    M[i, j] = value
    M = M.tocsr() if sparse.issparse(M) else M
    if layer is None:
        adata.X = M
    else:
        adata.layers[layer] = M


def _map(sdata, ref, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return st.tl.map_cells(sdata, ref, table_key="spots", cells_per_spot="n_cells", **kw)


@pytest.fixture(scope="module")
def mapped():
    """A mapped synthetic tissue (spots + reference), for project_genes."""
    sdata = _tissue()
    ref = sdata.tables["cells"].copy()
    _map(sdata, ref)
    return sdata, ref


# ---- finding 1: NaN / inf / negative counts ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "value", "match"),
    [
        ("spots", np.nan, r"X of table 'spots' has 1 NaN or infinite"),
        ("spots", -3.0, r"X of table 'spots' has 1 negative"),
        ("ref", np.inf, r"X of sc_adata has 1 NaN or infinite"),
        ("ref", -1.0, r"X of sc_adata has 1 negative.*sc_layer="),
    ],
)
def test_map_cells_rejects_bad_counts_untouched(where, value, match):
    sdata = _tissue()
    ref = sdata.tables["cells"].copy()
    _set(sdata.tables["spots"] if where == "spots" else ref, 3, 5, value)
    before = (_snap(sdata.tables["spots"]), _snap(ref), set(sdata.tables), set(sdata.points))
    with pytest.raises(StmapInputError, match=match):
        _map(sdata, ref)
    after = (_snap(sdata.tables["spots"]), _snap(ref), set(sdata.tables), set(sdata.points))
    _same(before[0], after[0])
    _same(before[1], after[1])
    assert before[2:] == after[2:]


@pytest.mark.parametrize(
    ("where", "value", "match"),
    [
        ("ref", np.nan, r"X of sc_adata has 1 NaN or infinite"),  # was: NaN projections
        ("spots", -3.0, r"X of table 'spots' has 1 negative"),  # was: expression down to -723
        ("ref", "text", r"X of sc_adata is not numeric"),
    ],
)
def test_project_genes_rejects_bad_counts_untouched(mapped, where, value, match):
    sdata0, ref0 = mapped
    sdata = st.datasets.synthetic_tissue(0, n_cells=500, n_genes=60)
    sdata.tables["spots"] = sdata0.tables["spots"].copy()
    ref = ref0.copy()
    target = sdata.tables["spots"] if where == "spots" else ref
    if value == "text":
        target.X = np.asarray(target.X.toarray(), dtype=object)
        target.X[0, 0] = "n/a"
    else:
        _set(target, 2, 7, value)
    before = (_snap(sdata.tables["spots"]), _snap(ref), set(sdata.tables))
    with pytest.raises(StmapInputError, match=match):
        st.tl.project_genes(sdata, ref, table_key="spots")
    after = (_snap(sdata.tables["spots"]), _snap(ref), set(sdata.tables))
    _same(before[0], after[0])
    _same(before[1], after[1])
    assert before[2] == after[2]


@pytest.fixture(scope="module")
def stack():
    secs = st.datasets.simulate_stack(3, n_genes=12, seed=1)
    return st.pp.stack_sections(secs, transforms="warped").tables["stack"]


@pytest.mark.parametrize(
    ("layer", "value", "match"),
    [
        ("counts", np.nan, r"layers\['counts'\] of the measured spots of adata has 1 NaN or infinite"),
        ("counts", -2.0, r"layers\['counts'\] of the measured spots of adata has 1 negative"),
        (None, np.nan, r"X of the measured spots of adata has 1 NaN or infinite"),
    ],
)
def test_impute_3d_rejects_bad_measured_counts_untouched(stack, layer, value, match):
    ad = stack.copy()
    if layer is None:
        del ad.layers["counts"]
    row = int(np.flatnonzero(ad.obs["section"].to_numpy() == "S1")[4])
    _set(ad, row, 3, value, layer=layer)
    before = _snap(ad)
    with pytest.raises(StmapInputError, match=match):
        st.tl.impute_3d(ad, measured=["S1"], genes=6, epochs=1, hidden=8)
    _same(before, _snap(ad))


def test_impute_3d_ignores_unmeasured_rows(stack):
    """Counts of the sections to impute are not read: NaN there (no measurement) is no error and changes nothing."""
    ad = stack.copy()
    kw = {"measured": ["S1"], "genes": 6, "epochs": 2, "hidden": 8, "features_key": None, "copy": True}
    ref = st.tl.impute_3d(ad, **kw)
    row = int(np.flatnonzero(ad.obs["section"].to_numpy() == "S0")[0])
    _set(ad, row, 3, np.nan, layer="counts")
    out = st.tl.impute_3d(ad, **kw)
    np.testing.assert_array_equal(out.obsm["stmap_impute3d"].to_numpy(), ref.obsm["stmap_impute3d"].to_numpy())


# ---- finding 2: normalised (non-integer) counts in X ---------------------------------------------------------------
def test_map_cells_lognormalised_x_uses_counts_layer():
    """X log-normalised, raw counts in layers['counts']: exactly the composition of raw X, and the layer recorded."""
    raw = _tissue()
    raw_ref = raw.tables["cells"].copy()
    _map(raw, raw_ref)
    norm = _tissue()
    spots = norm.tables["spots"]
    ref = norm.tables["cells"].copy()
    assert "counts" in spots.layers and "counts" in ref.layers
    spots.X = _lognorm(spots.layers["counts"])
    ref.X = _lognorm(ref.layers["counts"])
    _map(norm, ref)
    key = "stmap_cell_type_fractions"
    np.testing.assert_array_equal(spots.obsm[key].to_numpy(), raw.tables["spots"].obsm[key].to_numpy())
    np.testing.assert_array_equal(
        spots.obsm["stmap_cell_type_counts"].to_numpy(), raw.tables["spots"].obsm["stmap_cell_type_counts"].to_numpy()
    )
    params = spots.uns["stmap_mapping"]["params"]
    assert params["layer"] == "counts" and params["sc_layer"] == "counts"
    assert raw.tables["spots"].uns["stmap_mapping"]["params"]["layer"] == "None"  # X, as before
    # project_genes reads the same layers: the same projection as from raw X
    st.tl.project_genes(raw, raw_ref, table_key="spots")
    st.tl.project_genes(norm, ref, table_key="spots")
    a, b = raw.tables["spots_projected"].X, norm.tables["spots_projected"].X
    np.testing.assert_array_equal(a.toarray(), b.toarray())
    assert norm.tables["spots"].uns["stmap_projected"]["params"]["layer"] == "counts"


@pytest.mark.parametrize("where", ["spots", "ref"])
def test_map_cells_lognormalised_x_without_counts_layer_raises(where):
    sdata = _tissue()
    ref = sdata.tables["cells"].copy()
    target = sdata.tables["spots"] if where == "spots" else ref
    target.X = _lognorm(target.layers["counts"])
    del target.layers["counts"]
    arg = "layer" if where == "spots" else "sc_layer"
    name = "table 'spots'" if where == "spots" else "sc_adata"
    before = (_snap(sdata.tables["spots"]), _snap(ref), set(sdata.tables))
    with pytest.raises(StmapInputError, match=rf"X of {name} holds non-integer values.*`{arg}=`"):
        _map(sdata, ref)
    after = (_snap(sdata.tables["spots"]), _snap(ref), set(sdata.tables))
    _same(before[0], after[0])
    _same(before[1], after[1])
    assert before[2] == after[2]


def test_explicit_layer_is_trusted_and_noise_is_fine():
    """A named layer is not checked for integers; X within 1e-6 of integers counts as raw (float rounding)."""
    sdata = _tissue()
    ref = sdata.tables["cells"].copy()
    spots = sdata.tables["spots"]
    raw = spots.layers["counts"].toarray()
    spots.layers["scaled"] = raw * 0.5  # e.g. a platform's non-integer "counts": trusted when named
    spots.X = (raw + 4e-7).astype(np.float64)
    _map(sdata, ref, layer="scaled", key_added="named")
    assert spots.uns["named"]["params"]["layer"] == "scaled"
    _map(sdata, ref, key_added="noisy")
    assert spots.uns["noisy"]["params"]["layer"] == "None"


def test_impute_3d_normalised_x_without_counts_layer_raises(stack):
    ad = stack.copy()
    del ad.layers["counts"]
    ad.X = _lognorm(ad.X)
    before = _snap(ad)
    with pytest.raises(StmapInputError, match=r"X of the measured spots of adata holds non-integer.*`layer=`"):
        st.tl.impute_3d(ad, measured=["S1"], genes=6, epochs=1, hidden=8)
    _same(before, _snap(ad))
