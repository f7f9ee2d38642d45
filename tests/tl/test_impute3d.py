"""st.tl.train_impute_3d / impute_3d: beats nearest-spot copy on a smooth known 3D field, fit + apply == one call,
determinism, round trip, key_added, declared parameters, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata

import stmap as st
from stmap import metrics
from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._errors import StmapInputError
from stmap._core._params import invalid_values


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


FIT = {"measured": ["S1"], "genes": 24, "epochs": 40, "hidden": 16, "n_scales": 2}


def _fit(sd, **kw):
    return st.tl.impute_3d(sd, copy=True, **{**FIT, **kw})


def test_beats_nearest_spot_on_known_field(stack):
    from scipy.spatial import cKDTree

    sd, truth = stack
    out = _fit(sd)
    ad = out.tables["stack"]
    meas = ad.obs["stmap_impute3d_measured"].to_numpy()
    genes = ad.uns["stmap_impute3d"]["genes"]
    T = np.stack([truth[n] for n in ad.obs_names])[:, ad.var_names.get_indexer(genes)]
    target = np.log((T + 1) / (T + 1).sum(1, keepdims=True))  # noise-free mean on the ASIGN scale
    pred = ad.obsm["stmap_impute3d"].to_numpy()
    Y = st.tl.asign_target(ad.layers["counts"][:, ad.var_names.get_indexer(genes)])
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
    a = _fit(sd, epochs=8, seed=3)
    b = _fit(sd, epochs=8, seed=3)
    pa, pb = a.tables["stack"].obsm["stmap_impute3d"], b.tables["stack"].obsm["stmap_impute3d"]
    np.testing.assert_array_equal(pa.to_numpy(), pb.to_numpy())  # same seed, CPU: bit-identical
    model = st.tl.train_impute_3d(sd, **{**FIT, "epochs": 8, "seed": 3})
    path = model.save(tmp_path / "m.pt")
    loaded = st.tl.Impute3DModel.load(path)
    c = st.tl.impute_3d(sd, measured=["S1"], n_scales=2, model=loaded, copy=True)
    np.testing.assert_allclose(c.tables["stack"].obsm["stmap_impute3d"].to_numpy(), pa.to_numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.mixing_weights(), model.mixing_weights())


def test_zarr_round_trip(stack, tmp_path):
    sd, _ = stack
    out = _fit(sd, epochs=2)
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
    said = []
    monkeypatch.setattr(logg, "warning", lambda msg, **kw: said.append(msg))
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

    said = []
    monkeypatch.setattr(logg, "warning", lambda msg, **kw: said.append(msg))
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


def _written(t, key="stmap_impute3d"):
    """Every array one run wrote under ``key`` (its parameters apart)."""
    keys = Key.impute_3d(key)
    out = {
        "layer": np.asarray(t.layers[keys.layer]),
        "obsm": t.obsm[keys.key].to_numpy(),
        "columns": np.asarray(t.obsm[keys.key].columns),
        "measured": t.obs[keys.measured].to_numpy(),
        **{f"uns/{k}": np.asarray(v) for k, v in t.uns[keys.key].items() if k != "params"},
    }
    for part in ("overlap", "similarity", "spatial"):
        g = t.obsp[Key.graph_3d(key, part)].tocsr()
        out[f"obsp/{part}"] = np.concatenate([g.indptr, g.indices, g.data.view(np.int32)])
    return out


class TestFitApply:
    KW = {**FIT, "epochs": 6, "graph": ("overlap", "similarity"), "seed": 5}

    def test_train_then_apply_equals_one_call(self, stack):
        sd, _ = stack
        one = st.tl.impute_3d(sd, copy=True, **self.KW).tables["stack"]
        model = st.tl.train_impute_3d(sd, **self.KW)
        assert "stmap_impute3d" not in sd.tables["stack"].uns  # training writes nothing
        two = st.tl.impute_3d(sd, model=model, measured=["S1"], n_scales=2, copy=True).tables["stack"]
        a, b = _written(one), _written(two)
        assert a.keys() == b.keys()
        for k in a:  # the same model applied to the same table: the same numbers, bit for bit
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        pa, pb = dict(one.uns["stmap_impute3d"]["params"]), dict(two.uns["stmap_impute3d"]["params"])
        assert (pa.pop("pretrained"), pb.pop("pretrained")) == (False, True)
        # the graph and training parameters recorded are the model's, not impute_3d's defaults
        assert pb["graph"] == ["overlap", "similarity"] and pb["epochs"] == 6 and pb["seed"] == 5
        assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)

    def test_model_graph_parameters_are_used(self, stack):
        """With a model, graph= given to impute_3d is not used: the model's graph is rebuilt."""
        sd, _ = stack
        model = st.tl.train_impute_3d(sd, **{**self.KW, "epochs": 2})
        t = st.tl.impute_3d(sd, model=model, measured=["S1"], n_scales=2, graph=("spatial",), copy=True)
        g = t.tables["stack"].obsp
        assert g["stmap_impute3d_similarity"].nnz > 0 and g["stmap_impute3d_spatial"].nnz == 0

    def test_key_added_runs_do_not_overwrite(self, stack):
        sd, _ = stack
        t = sd.tables["stack"].copy()
        st.tl.impute_3d(t, **{**FIT, "epochs": 2, "genes": 12})
        first = np.asarray(t.layers["imputed"]).copy()
        st.tl.impute_3d(t, **{**FIT, "epochs": 2, "genes": 6, "measured": ["S2"]}, key_added="run2")
        # the default key writes layers['imputed']; another key '<key>_imputed' next to it, the first one untouched
        assert {"imputed", "run2_imputed"} <= set(t.layers)
        np.testing.assert_array_equal(t.layers["imputed"], first)
        second = t.obsm["run2"]
        cols = t.var_names.get_indexer(second.columns)
        np.testing.assert_array_equal(np.asarray(t.layers["run2_imputed"])[:, cols], second.to_numpy())
        assert np.isfinite(first).sum(1).max() == 12 and np.isfinite(t.layers["run2_imputed"]).sum(1).max() == 6
        assert t.obs["run2_measured"].to_numpy().sum() == (t.obs["section"] == "S2").sum()


def _table_state(t):
    return (
        set(t.obs.columns),
        set(t.obsm),
        set(t.layers),
        set(t.obsp),
        set(t.uns),
        float(np.asarray(t.layers["counts"].sum())),
    )


@pytest.mark.parametrize("tool", ["train_impute_3d", "impute_3d"])
def test_declared_parameters_reject_invalid_values(stack, tool):
    sd, _ = stack
    fn = getattr(st.tl, tool)
    spec = fn.__stmap_params__
    assert {"graph", "epochs", "hidden", "seed", "device", "verbose"} <= set(spec)
    t = sd.tables["stack"].copy()
    before = _table_state(t)
    n = 0
    for name, rules in spec.items():
        bad = invalid_values(rules)
        assert bad, name
        for v in bad:
            with pytest.raises(StmapInputError, match=rf"{tool}: {name} must be"):
                fn(t, **{**FIT, "epochs": 1, name: v})
            n += 1
    assert _table_state(t) == before  # checked before anything is read or written
    assert n > 2 * len(spec)


def _r_unmeasured(out, truth):
    """Mean gene-wise Pearson on the unmeasured spots against the noise-free truth (ASIGN scale), and nearest copy."""
    from scipy.spatial import cKDTree

    ad = out.tables["stack"]
    meas = ad.obs["stmap_impute3d_measured"].to_numpy()
    genes = ad.uns["stmap_impute3d"]["genes"]
    T = np.stack([truth[n] for n in ad.obs_names])[:, ad.var_names.get_indexer(genes)]
    target = np.log((T + 1) / (T + 1).sum(1, keepdims=True))
    pred = ad.obsm["stmap_impute3d"].to_numpy()
    Y = st.tl.asign_target(ad.layers["counts"][:, ad.var_names.get_indexer(genes)])
    xyz = ad.obsm["spatial_3d"]
    _, i = cKDTree(xyz[meas, :2]).query(xyz[~meas, :2])
    r = np.nanmean(metrics.pearson_per_gene(pred[~meas], target[~meas]))
    return r, np.nanmean(metrics.pearson_per_gene(Y[meas][i], target[~meas]))


@pytest.fixture(scope="module")
def big_stack():
    """Four sections of ~250 spots: enough measured spots that small batches sample them."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs = st.datasets.simulate_stack(4, n_genes=16, seed=2, grid=24)
        truth = {}
        for s in secs:
            k = next(iter(s.tables))
            ad = s.tables[k]
            truth.update({f"{k}:{n}": row for n, row in zip(ad.obs_names, np.asarray(ad.layers["truth"]))})
            st.pp.histology_features(s, table_key=k, patch_um=150, scales=(1, 2), patch_px=16)
        return st.pp.stack_sections(secs, transforms="warped"), truth


class TestBatches:
    """batch_size: the network on batches of target spots with the spots whose edges reach them."""

    def test_prediction_in_batches_equals_the_whole_graph(self, stack):
        sd, _ = stack
        model = st.tl.train_impute_3d(sd, **{**FIT, "epochs": 6, "graph": ("overlap", "similarity", "spatial")})
        kw = {"measured": ["S1"], "n_scales": 2, "model": model, "copy": True}
        whole = st.tl.impute_3d(sd, **kw).tables["stack"]
        assert str(whole.uns["stmap_impute3d"]["params"]["batch_size"]) == "None"  # small: the whole graph, as before
        for size in (7, 64, 100_000):
            part = st.tl.impute_3d(sd, batch_size=size, **kw).tables["stack"]
            assert part.uns["stmap_impute3d"]["params"]["batch_size"] == size
            # the same model, graph and inputs: each spot's output reads only its own inputs and its in-neighbours'
            # tokens, so batches give the whole graph's numbers; float32 propagation and sums: measured 4.8e-7
            np.testing.assert_allclose(
                part.obsm["stmap_impute3d"].to_numpy(), whole.obsm["stmap_impute3d"].to_numpy(), atol=1e-6
            )
            for g in ("overlap", "similarity", "spatial"):  # the graph itself is the same matrix
                assert (part.obsp[f"stmap_impute3d_{g}"] != whole.obsp[f"stmap_impute3d_{g}"]).nnz == 0

    def test_training_in_batches_learns_as_well(self, big_stack):
        sd, truth = big_stack
        kw = {"measured": ["S1", "S3"], "genes": 16, "epochs": 40, "hidden": 16, "n_scales": 2, "copy": True}
        r_whole, r_near = _r_unmeasured(st.tl.impute_3d(sd, **kw), truth)
        out = st.tl.impute_3d(sd, batch_size=24, **kw)
        r_batch, _ = _r_unmeasured(out, truth)
        # 24 masked spots per step (of ~110) in compact regions, 2 masks: as good as the whole graph on the truth
        # (measured: whole graph 0.809, batches 0.809, nearest copy 0.660)
        assert r_batch > r_near + 0.05, (r_batch, r_near)
        assert abs(r_batch - r_whole) < 0.05, (r_batch, r_whole)
        again = st.tl.impute_3d(sd, batch_size=24, **kw)
        np.testing.assert_array_equal(  # seeded sampling: reproducible
            again.tables["stack"].obsm["stmap_impute3d"].to_numpy(),
            out.tables["stack"].obsm["stmap_impute3d"].to_numpy(),
        )

    def test_large_graph_default_caps_overlaps_and_the_model_keeps_it(self, stack, monkeypatch):
        from stmap.tl._impute3d import _config, _prepare

        sd, _ = stack
        kw = {**FIT, "epochs": 3, "copy": True}
        whole = st.tl.impute_3d(sd, **kw).tables["stack"]
        full = whole.obsp["stmap_impute3d_overlap"]
        assert str(whole.uns["stmap_impute3d"]["params"]["max_overlaps"]) == "None"  # small: every overlap, as before
        # the same stack seen as large (beyond the whole-graph limit): batches, overlaps capped per spot and section
        monkeypatch.setattr(_prepare, "FULL_GRAPH_MAX_EDGES", 10)
        monkeypatch.setattr(_prepare, "BATCH_MAX_OVERLAPS", 2)
        monkeypatch.setattr(_config, "FULL_GRAPH_MAX_EDGES", 10)
        model = st.tl.train_impute_3d(sd, **{**FIT, "epochs": 3})
        assert model.params["max_overlaps"] == 2 and model.params["batch_size"] is not None
        out = st.tl.impute_3d(sd, **kw).tables["stack"]
        capped = out.obsp["stmap_impute3d_overlap"]
        assert out.uns["stmap_impute3d"]["params"]["max_overlaps"] == 2
        assert capped.nnz < full.nnz and (capped != capped.T).nnz == 0
        codes = out.obs["section"].cat.codes.to_numpy()
        for c in np.unique(codes):  # each spot keeps its 2 nearest overlaps per section, plus those that keep it
            per = np.asarray((capped[:, codes == c] > 0).sum(1)).ravel()
            had = np.asarray((full[:, codes == c] > 0).sum(1)).ravel()
            assert (per >= np.minimum(had, 2)).all() and (per <= had).all()
            assert per[codes != c].mean() <= 4
        kept = capped.multiply(capped > 0).tocoo()
        np.testing.assert_array_equal(np.asarray(full[kept.row, kept.col]).ravel(), kept.data)  # uncapped weights
        # applying the trained model builds its graph again, whatever the limit
        monkeypatch.setattr(_prepare, "FULL_GRAPH_MAX_EDGES", 10**9)
        monkeypatch.setattr(_config, "FULL_GRAPH_MAX_EDGES", 10**9)
        again = st.tl.impute_3d(sd, **{**kw, "model": model}).tables["stack"]
        assert (again.obsp["stmap_impute3d_overlap"] != capped).nnz == 0

    def test_refuses_what_would_not_fit(self, stack, monkeypatch):
        from stmap.tl._impute3d import _memory

        sd, _ = stack
        t = sd.tables["stack"].copy()
        before = _table_state(t)
        monkeypatch.setattr(_memory, "available_bytes", lambda: 1e5)
        for tool in (st.tl.train_impute_3d, st.tl.impute_3d):
            with pytest.raises(StmapInputError, match=r"would need about .* GB .*genes.*disc_scale.*batch_size"):
                tool(t, **{**FIT, "epochs": 1})
        assert _table_state(t) == before

    def test_lazy_layer_beyond_the_dense_limit(self, stack, monkeypatch, tmp_path):
        import dask.array as da

        from stmap.tl._impute3d import _write

        sd, _ = stack
        dense = st.tl.impute_3d(sd, copy=True, **{**FIT, "epochs": 2}).tables["stack"]
        monkeypatch.setattr(_write, "DENSE_LAYER_MAX", 100)
        out = st.tl.impute_3d(sd, copy=True, **{**FIT, "epochs": 2})
        lazy = out.tables["stack"].layers["imputed"]
        assert isinstance(lazy, da.Array) and lazy.shape == dense.layers["imputed"].shape
        np.testing.assert_array_equal(np.asarray(lazy), dense.layers["imputed"])  # NaN outside the imputed genes
        out.write(tmp_path / "lazy.zarr")
        back = spatialdata.read_zarr(tmp_path / "lazy.zarr").tables["stack"].layers["imputed"]
        np.testing.assert_array_equal(np.asarray(back), dense.layers["imputed"])
