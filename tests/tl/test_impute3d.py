"""st.tl.impute_3d: beats nearest-spot copy on a smooth known 3D field, determinism, round trip, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata

import stmap as st
from stmap import metrics
from stmap._core._errors import StmapInputError
from stmap.tl._impute3d import asign_target


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
