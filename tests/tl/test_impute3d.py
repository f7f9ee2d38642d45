"""st.tl.impute_3d: beats nearest-spot copy on a smooth known 3D field, determinism, round trip, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata

import stmap as st
from stmap import metrics
from stmap._core._errors import StmapInputError
from stmap.tl._impute3d import asign_target


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A graph network this small trains several times faster on one torch thread (no OpenMP contention)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stack():
    secs = st.datasets.simulate_stack(4, n_genes=24, seed=1)
    truth = {}
    for s in secs:
        k = next(iter(s.tables))
        ad = s.tables[k]
        truth.update({f"{k}:{n}": row for n, row in zip(ad.obs_names, np.asarray(ad.layers["truth"]))})
        st.pp.histology_features(s, table_key=k, patch_um=150, scales=(1, 2), patch_px=16)
    sd = st.pp.stack_sections(secs, transforms="warped")
    return sd, truth


def _fit(sd, **kw):
    kw = {"measured": ["S1"], "genes": 24, "epochs": 40, "hidden": 16, "n_scales": 2, **kw}
    return st.tl.impute_3d(sd, copy=True, return_model=True, **kw)


def test_beats_nearest_spot_on_known_field(stack):
    from scipy.spatial import cKDTree

    sd, truth = stack
    out, _ = _fit(sd)
    ad = out.tables["stack"]
    meas = ad.obs["stmap_impute3d_measured"].to_numpy()
    genes = ad.uns["stmap_impute3d"]["genes"]
    T = np.stack([truth[n] for n in ad.obs_names])[:, ad.var_names.get_indexer(genes)]
    target = np.log((T + 1) / (T + 1).sum(1, keepdims=True))  # noise-free mean on the ASIGN scale
    pred = ad.obsm["stmap_impute3d"].to_numpy()
    Y = asign_target(ad.layers["counts"][:, ad.var_names.get_indexer(genes)])
    xyz = ad.obsm["spatial_3d"]
    _, i = cKDTree(xyz[meas, :2]).query(xyz[~meas, :2])
    near = Y[meas][i]
    r_ours = np.nanmean(metrics.pearson_per_gene(pred[~meas], target[~meas]))
    r_near = np.nanmean(metrics.pearson_per_gene(near, target[~meas]))
    # the field is smooth and counts are Poisson: smoothing over the graph must clearly beat a single noisy copy
    assert r_ours > r_near + 0.05, (r_ours, r_near)
    # measured spots keep their own values exactly
    np.testing.assert_allclose(pred[meas], Y[meas], rtol=1e-5, atol=1e-5)
    lay = ad.layers["imputed"]
    assert np.isnan(lay[:, ~ad.var_names.isin(genes)]).all()
    w = ad.uns["stmap_impute3d"]["mixing_weights"]
    assert w.shape == (3, len(genes)) and ((w > 0) & (w < 1)).all()
    np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-5)  # a softmax over the three sources
    for part in ("overlap",):
        g = ad.obsp[f"stmap_impute3d_{part}"]
        assert abs(g - g.T).max() < 1e-6  # the graph is symmetric by construction


def test_deterministic_and_save_load(stack, tmp_path):
    sd, _ = stack
    a, model = _fit(sd, epochs=8, seed=3)
    b, _ = _fit(sd, epochs=8, seed=3)
    pa, pb = a.tables["stack"].obsm["stmap_impute3d"], b.tables["stack"].obsm["stmap_impute3d"]
    np.testing.assert_array_equal(pa.to_numpy(), pb.to_numpy())  # same seed, CPU: bit-identical
    path = model.save(tmp_path / "m.pt")
    loaded = st.tl.Impute3DModel.load(path)
    c = st.tl.impute_3d(sd, measured=["S1"], n_scales=2, model=loaded, copy=True)
    np.testing.assert_allclose(c.tables["stack"].obsm["stmap_impute3d"].to_numpy(), pa.to_numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.mixing_weights(), model.mixing_weights())


def test_zarr_round_trip(stack, tmp_path):
    sd, _ = stack
    out, _ = _fit(sd, epochs=2)
    out.write(tmp_path / "s.zarr")
    back = spatialdata.read_zarr(tmp_path / "s.zarr").tables["stack"]
    ad = out.tables["stack"]
    np.testing.assert_array_equal(back.layers["imputed"], ad.layers["imputed"])
    assert (back.obsp["stmap_impute3d_overlap"] != ad.obsp["stmap_impute3d_overlap"]).nnz == 0
    np.testing.assert_array_equal(
        back.uns["stmap_impute3d"]["mixing_weights"], ad.uns["stmap_impute3d"]["mixing_weights"]
    )
    assert back.uns["stmap_impute3d"]["params"]["measured"] == ["S1"]


def _snapshot(sd):
    ad = sd.tables["stack"]
    return (set(ad.obs.columns), set(ad.obsm), set(ad.layers), set(ad.obsp), set(ad.uns))


def test_bad_inputs_leave_object_untouched(stack):
    sd, _ = stack
    before = _snapshot(sd)
    with pytest.raises(StmapInputError, match="No measured spot"):
        st.tl.impute_3d(sd, measured=[], epochs=1)
    with pytest.raises(StmapInputError, match="Unknown sections"):
        st.tl.impute_3d(sd, measured=["nope"], epochs=1)
    with pytest.raises(StmapInputError, match="Genes not in the table"):
        st.tl.impute_3d(sd, measured=["S1"], genes=["notagene"], epochs=1)
    one = sd.tables["stack"][sd.tables["stack"].obs["section"] == "S1"].copy()
    with pytest.raises(StmapInputError, match="at least two sections"):
        st.tl.impute_3d(one, measured=["S1"], epochs=1)
    assert _snapshot(sd) == before


def test_missing_features_warns_and_runs_graph_only(stack, monkeypatch):
    from stmap.tl import _impute3d

    said = []
    monkeypatch.setattr(_impute3d.logg, "warning", lambda msg, **kw: said.append(msg))
    sd, _ = stack
    ad = sd.tables["stack"].copy()
    del ad.obsm["X_histology"]
    st.tl.impute_3d(ad, measured=["S1"], genes=8, epochs=2, hidden=16)
    assert any("expression and the graph only" in m for m in said)
    assert not ad.uns["stmap_impute3d"]["histology"]
    assert np.isfinite(ad.obsm["stmap_impute3d"].to_numpy()).all()


@pytest.fixture(scope="module")
def bare_stack():
    """A stack without precomputed features (its sections have images)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs = st.datasets.simulate_stack(3, n_genes=12, seed=4, grid=8)
        return st.pp.stack_sections(secs, transforms="warped")


FEAT_KW = {"patch_px": 16}
IMP_KW = {"measured": ["S0"], "genes": 12, "epochs": 4, "hidden": 8}


def test_features_computed_when_absent_equal_hand_computed(bare_stack):
    sd = bare_stack
    assert "X_histology" not in sd.tables["stack"].obsm
    auto = st.tl.impute_3d(sd, feature_kwargs=FEAT_KW, copy=True, **IMP_KW)
    assert "X_histology" not in sd.tables["stack"].obsm  # the user's object is untouched with copy=True
    hand = st.pp.histology_features(sd, table_key="stack", scales=(1, 2.3, 4.6), copy=True, **FEAT_KW)
    ref = st.tl.impute_3d(hand, copy=True, **IMP_KW)
    a, r = auto.tables["stack"], ref.tables["stack"]
    # the same features, blocks and seed: the same numbers, bit for bit (deterministic CPU training)
    np.testing.assert_array_equal(a.obsm["X_histology"], r.obsm["X_histology"])
    np.testing.assert_array_equal(a.obsm["stmap_impute3d"].to_numpy(), r.obsm["stmap_impute3d"].to_numpy())
    assert a.uns["X_histology"]["n_features_per_scale"] == r.uns["X_histology"]["n_features_per_scale"]
    assert len(a.uns["X_histology"]["scales"]) == 3 and a.uns["stmap_impute3d"]["histology"]
    assert a.uns["stmap_impute3d"]["params"]["features_computed"]
    assert not r.uns["stmap_impute3d"]["params"]["features_computed"]


def test_features_fall_back_without_any_image(monkeypatch):
    import warnings

    from stmap.tl import _impute3d

    said = []
    monkeypatch.setattr(_impute3d.logg, "warning", lambda msg, **kw: said.append(msg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs = st.datasets.simulate_stack(2, n_genes=6, seed=0, grid=5, image=False)
        sd = st.pp.stack_sections(secs, transforms="warped")
    st.tl.impute_3d(sd, measured=["S0"], genes=6, epochs=2, hidden=8)
    t = sd.tables["stack"]
    assert any("has an image" in m and "graph only" in m for m in said)  # histology_features' reason, then fallback
    assert "X_histology" not in t.obsm and not t.uns["stmap_impute3d"]["histology"]
    assert np.isfinite(t.obsm["stmap_impute3d"].to_numpy()).all()
    with pytest.raises(StmapInputError, match="may not set 'copy'"):
        st.tl.impute_3d(sd, measured=["S0"], genes=6, epochs=1, feature_kwargs={"copy": True}, key_added="x")
