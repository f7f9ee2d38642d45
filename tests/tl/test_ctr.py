from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import StmapInputError

pytest.importorskip("torch")

TABLE = "spots"
# small schedule: the synthetic tumour is easy, a few dozen epochs are enough (keeps the test suite fast)
FAST = {"pretrain_epochs": 3, "warmup_epochs": 3, "epochs": 25, "batch_size": 64, "verbose": False}


def _tissue(seed):
    s = st.datasets.synthetic_tissue(seed)
    st.pp.histology_features(s, table_key=TABLE, image_key="he")
    return s


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # on a small shared CI machine, torch's default of one OpenMP thread per core oversubscribes (10x slower)
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tissues():
    return _tissue(0), _tissue(1)


@pytest.fixture(scope="module")
def model(tissues):
    return st.tl.train_ctr(tissues[0], label_key="tumor", table_key=TABLE, seed=0, **FAST)


def _state(sdata):
    t = sdata.tables[TABLE]
    return (set(t.obs.columns), set(t.obsm.keys()), set(t.uns.keys()), t.obs.copy())


def _unchanged(sdata, before):
    after = _state(sdata)
    assert after[:3] == before[:3]
    pd.testing.assert_frame_equal(after[3], before[3])


class TestDetectCTR:
    def _assert_common(self, t, key="stmap_ctr"):
        p = t.obs[f"{key}_prob"].to_numpy()
        assert p.shape == (t.n_obs,) and np.all((p >= 0) & (p <= 1))
        assert list(t.obs[key].cat.categories) == ["non-CTR", "CTR"]
        assert t.obsm[f"{key}_latent"].shape == (t.n_obs, 32)  # (mu, logvar), latent 16
        meta = t.uns[key]
        np.testing.assert_array_equal(t.obs[key] == "CTR", p > meta["threshold"])
        assert "params" in meta and len(meta["genes"]) == 200

    def test_recovers_planted_tumour(self, tissues, model):
        # trained on one synthetic tissue, applied to another (different random regions, cells, counts, image).
        # The tumour has its own marker genes and dense dark nuclei, so a working detector separates it almost
        # perfectly; AUC >= 0.9 (the published cross-platform AUC) leaves room for spots on the tumour border whose
        # label is a majority vote over mixed cells.
        target = sd.deepcopy(tissues[1])
        st.tl.detect_ctr(target, model, table_key=TABLE, label_key="tumor")
        t = target.tables[TABLE]
        self._assert_common(t)
        m = t.uns["stmap_ctr"]["metrics"]
        assert m["roc_auc"] >= 0.9
        assert m["f1"] >= 0.8  # the label-free call must also be useful, not only the ranking
        from stmap.tl._ctr._threshold import prior_shift

        assert t.uns["stmap_ctr"]["threshold_method"].startswith("prior shift")
        assert t.uns["stmap_ctr"]["threshold"] == pytest.approx(
            prior_shift(t.obs["stmap_ctr_prob"].to_numpy(), model.prevalence)[0]
        )

    def test_save_load_identical(self, tissues, model, tmp_path):
        path = model.save(tmp_path / "ctr.pt")
        loaded = st.tl.CTRModel.load(path)
        assert loaded.genes == model.genes and loaded.features_key == model.features_key
        a = st.tl.detect_ctr(tissues[1], model, table_key=TABLE, copy=True).tables[TABLE]
        b = st.tl.detect_ctr(tissues[1], path, table_key=TABLE, copy=True).tables[TABLE]
        np.testing.assert_array_equal(a.obs["stmap_ctr_prob"], b.obs["stmap_ctr_prob"])  # same weights, same math
        np.testing.assert_array_equal(a.obsm["stmap_ctr_latent"], b.obsm["stmap_ctr_latent"])

    def test_zarr_roundtrip(self, tissues, model, tmp_path):
        target = sd.deepcopy(tissues[1])
        st.tl.detect_ctr(target, model, table_key=TABLE, label_key="tumor", threshold=0.5, key_added="ctr")
        target.write(tmp_path / "t.zarr")
        t0, t1 = target.tables[TABLE], sd.read_zarr(tmp_path / "t.zarr").tables[TABLE]
        np.testing.assert_array_equal(t1.obs["ctr_prob"], t0.obs["ctr_prob"])
        assert (t1.obs["ctr"] == t0.obs["ctr"]).all()
        np.testing.assert_array_equal(np.asarray(t1.obsm["ctr_latent"]), t0.obsm["ctr_latent"])
        assert t1.uns["ctr"]["threshold"] == 0.5 and t1.uns["ctr"]["threshold_method"] == "given"
        assert t1.uns["ctr"]["metrics"]["roc_auc"] == pytest.approx(t0.uns["ctr"]["metrics"]["roc_auc"])

    def test_missing_genes_zero_filled(self, tissues, model):
        target = sd.deepcopy(tissues[1])
        t = target.tables[TABLE]
        keep = [g for g in t.var_names if not g.startswith("gene_0")]
        target.tables[TABLE] = t[:, keep].copy()
        with pytest.warns(UserWarning, match=r"\d+ of the model's 200 genes are missing"):
            st.tl.detect_ctr(target, model, table_key=TABLE)
        assert target.tables[TABLE].uns["stmap_ctr"]["n_missing_genes"] == 200 - len(keep)

    def test_plain_anndata_and_modalities(self, tissues):
        # expression-only models run on a plain AnnData (no image needed)
        src = tissues[0].tables[TABLE].copy()
        src.obsm["spatial"] = np.asarray(st._core.resolve(tissues[0], TABLE).coords)
        m = st.tl.train_ctr(src, label_key="tumor", modality="expression", **FAST)
        assert m.features_key is None
        tgt = tissues[1].tables[TABLE].copy()
        tgt.obsm["spatial"] = np.asarray(st._core.resolve(tissues[1], TABLE).coords)
        st.tl.detect_ctr(tgt, m, label_key="tumor")
        assert tgt.uns["stmap_ctr"]["metrics"]["roc_auc"] >= 0.9  # markers alone separate the planted tumour

    def test_seeded(self, tissues):
        kw = {**FAST, "epochs": 3, "modality": "expression"}
        a = st.tl.train_ctr(tissues[0], label_key="tumor", table_key=TABLE, seed=3, **kw)
        b = st.tl.train_ctr(tissues[0], label_key="tumor", table_key=TABLE, seed=3, **kw)
        pa = st.tl.detect_ctr(tissues[1], a, table_key=TABLE, copy=True).tables[TABLE].obs["stmap_ctr_prob"]
        pb = st.tl.detect_ctr(tissues[1], b, table_key=TABLE, copy=True).tables[TABLE].obs["stmap_ctr_prob"]
        np.testing.assert_array_equal(pa, pb)  # same seed -> same weights on CPU


class TestBadInput:
    def test_train_errors(self, tissues):
        src = tissues[0]
        before = _state(src)
        with pytest.raises(st.StmapKeyError, match="nope"):
            st.tl.train_ctr(src, label_key="nope", table_key=TABLE, **FAST)
        with pytest.raises(StmapInputError, match="one class"):
            st.tl.train_ctr(src, label_key="tumor", positive="yes", table_key=TABLE, **FAST)
        with pytest.raises(StmapInputError, match="No source has"):
            st.tl.train_ctr(src, label_key="tumor", table_key=TABLE, features_key="X_none", **FAST)
        with pytest.raises(StmapInputError, match="modality"):
            st.tl.train_ctr(src, label_key="tumor", table_key=TABLE, modality="image", **FAST)
        _unchanged(src, before)

    def test_nan_features(self, tissues, model):
        target = sd.deepcopy(tissues[1])
        target.tables[TABLE].obsm["X_histology"][3, 2] = np.nan
        before = _state(target)
        with pytest.raises(StmapInputError, match="NaN"):
            st.tl.detect_ctr(target, model, table_key=TABLE)
        _unchanged(target, before)

    def test_detect_errors_leave_object(self, tissues, model):
        target = sd.deepcopy(tissues[1])
        t = target.tables[TABLE]
        t.var_names = [f"other_{i}" for i in range(t.n_vars)]
        before = _state(target)
        with pytest.raises(StmapInputError, match="shares none of the model's"):
            st.tl.detect_ctr(target, model, table_key=TABLE)
        target = sd.deepcopy(tissues[1])
        del target.tables[TABLE].obsm["X_histology"]
        before = _state(target)
        with pytest.raises(StmapInputError, match="histology_features"):
            st.tl.detect_ctr(target, model, table_key=TABLE)
        with pytest.raises(StmapInputError, match="threshold"):
            st.tl.detect_ctr(target, model, table_key=TABLE, threshold=1.5)
        _unchanged(target, before)


def test_gmm_threshold_bimodal():
    # two well separated score populations (known membership): the GMM threshold lies between them and calls
    # >= 97% of the spots right (the components overlap by ~1% at 2.5 sd separation on each side)
    rng = np.random.default_rng(0)
    lo = np.clip(rng.normal(0.15, 0.07, 400), 0, 1)
    hi = np.clip(rng.normal(0.8, 0.08, 200), 0, 1)
    s = np.concatenate([lo, hi])
    truth = np.r_[np.zeros(400, bool), np.ones(200, bool)]
    for cov in ("full", "tied"):
        thr = st.metrics.gmm_threshold(s, covariance_type=cov)
        assert 0.3 < thr < 0.65
        assert ((s > thr) == truth).mean() >= 0.97


def test_pl_ctr(tissues, model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = sd.deepcopy(tissues[1])
    with pytest.raises(StmapInputError, match="detect_ctr"):
        st.pl.ctr(target, table_key=TABLE, show=False)
    st.tl.detect_ctr(target, model, table_key=TABLE, label_key="tumor")
    axs = st.pl.ctr(target, table_key=TABLE, show=False)
    # probability, call and the labels recorded by detect_ctr (with their AUC in the title)
    assert len(axs) == 3 and "ROC-AUC" in axs[2].get_title()
    plt.close("all")


def test_feature_settings_mismatch_warns(tissues, model, tmp_path):
    # a target featurised with another patch size (e.g. Visium spots vs the sources' spots) gets a warning naming it
    target = sd.deepcopy(tissues[1])
    st.pp.histology_features(target, table_key=TABLE, patch_um=30.0)
    with pytest.warns(UserWarning, match="patch_um=30.0"):
        st.tl.detect_ctr(target, model, table_key=TABLE)
    loaded = st.tl.CTRModel.load(model.save(tmp_path / "m.pt"))
    assert loaded.info["features"] == model.info["features"]  # the rule travels with the saved model


def _cases(func):
    """Every invalid value generated from the tool's declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(name, value, id=f"{name}-{i}")
        for name, spec in func.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


class TestParameters:
    @pytest.mark.parametrize(("name", "value"), _cases(st.tl.train_ctr))
    def test_train_ctr_invalid_value_raises_untouched(self, tissues, name, value):
        src = tissues[0]
        before = _state(src)
        with pytest.raises(StmapInputError, match=f"train_ctr: {name} must be"):
            st.tl.train_ctr(src, **{"label_key": "tumor", "table_key": TABLE, **FAST, name: value})
        _unchanged(src, before)

    @pytest.mark.parametrize(("name", "value"), _cases(st.tl.detect_ctr))
    def test_detect_ctr_invalid_value_raises_untouched(self, tissues, model, name, value):
        target = tissues[1]
        before = _state(target)
        args, kw = ((target, value), {"table_key": TABLE}) if name == "model" else ((target, model), {name: value})
        with pytest.raises(StmapInputError, match=f"detect_ctr: {name} must be"):
            st.tl.detect_ctr(*args, **{"table_key": TABLE, **kw})
        _unchanged(target, before)

    def test_heads_must_divide_dim(self, tissues):
        with pytest.raises(StmapInputError, match=r"dim \(30\) must be a multiple of heads \(8\)"):
            st.tl.train_ctr(tissues[0], label_key="tumor", table_key=TABLE, dim=30, **FAST)

    def test_defaults_follow_settings(self, tissues, model, monkeypatch):
        # device=None and verbose=None read st.settings; the default device is the CPU, the same numbers as "cpu"
        a = st.tl.detect_ctr(tissues[1], model, table_key=TABLE, copy=True).tables[TABLE]
        b = st.tl.detect_ctr(tissues[1], model, table_key=TABLE, device="cpu", copy=True).tables[TABLE]
        np.testing.assert_array_equal(a.obs["stmap_ctr_prob"], b.obs["stmap_ctr_prob"])
        monkeypatch.setattr(st.settings, "device", "no-such-device")
        with pytest.raises(ValueError, match="no-such-device"):
            st.tl.detect_ctr(tissues[1], model, table_key=TABLE, copy=True)
