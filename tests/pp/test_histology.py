from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd
from _helpers import make_small_sdata

import stmap as st
from stmap._core import StmapInputError, affine_matrix, make_image

D = len(st.pp.handcrafted_feature_names())


def _tissue_image(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """H&E-like RGB: pink background with dark purple 'nuclei' blobs whose density grows from left to right."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.float64)
    img[...] = (235, 170, 200)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(300):
        cx = w * np.sqrt(rng.uniform())  # denser on the right
        cy = rng.uniform(0, h)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 4] = (90, 40, 140)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def _sdata(chunks=None, img=None):
    sdata, info = make_small_sdata()
    if img is None:
        img = _tissue_image()
    sdata.images["he"] = make_image(
        img, transform=affine_matrix(info["mpp"], info["offset"]), scale_factors=[2], chunks=chunks
    )
    return sdata, info


def _snapshot(sdata):
    t = sdata.tables["table"]
    return set(t.obsm.keys()), set(t.uns.keys()), set(t.obs.columns)


class TestHistologyFeatures:
    def _assert_common(self, sdata, n_scales=1, key="X_histology"):
        t = sdata.tables["table"]
        x = t.obsm[key]
        assert x.shape == (t.n_obs, D * n_scales) and x.dtype == np.float32
        assert np.isfinite(x).all()
        meta = t.uns[key]
        assert meta["extractor"] == "handcrafted" and len(meta["scales"]) == n_scales
        assert len(meta["feature_names"]) == x.shape[1]
        assert meta["patch_um"] == pytest.approx(55.0)  # default = spot diameter (radius 27.5 um)
        assert "params" in meta

    def test_shapes_and_scales(self):
        sdata, _ = _sdata()
        assert st.pp.histology_features(sdata, scales=(1, 2)) is None
        self._assert_common(sdata, n_scales=2)
        meta = sdata.tables["table"].uns["X_histology"]
        # 48 px over 55 um at scale 1 and over 110 um at scale 2
        np.testing.assert_allclose(meta["mpp"], [55 / 48, 110 / 48])

    def test_deterministic_and_copy(self):
        sdata, _ = _sdata()
        a = st.pp.histology_features(sdata, copy=True).tables["table"].obsm["X_histology"]
        b = st.pp.histology_features(sdata, copy=True).tables["table"].obsm["X_histology"]
        np.testing.assert_array_equal(a, b)
        assert "X_histology" not in sdata.tables["table"].obsm

    def test_lazy_equals_eager(self):
        # the same image as one in-memory chunk vs 16 px dask chunks, streamed 7 patches at a time: identical
        img = _tissue_image()
        eager, info = _sdata(img=img)
        lazy, _ = _sdata(chunks=(3, 16, 16), img=img)
        st.pp.histology_features(eager, patch_px=None, batch_size=1000)
        st.pp.histology_features(lazy, patch_px=None, batch_size=7)
        x_eager = eager.tables["table"].obsm["X_histology"]
        np.testing.assert_array_equal(lazy.tables["table"].obsm["X_histology"], x_eager)
        # and equal to patches cut by hand from the numpy image around each spot (native resolution: 2 um/px)
        t = eager.tables["table"]
        pos = [int(i.split("_")[1]) for i in t.obs["instance_id"]]
        px = (info["xy"][pos] - np.array(info["offset"])) / info["mpp"]
        s = round(55.0 / info["mpp"])
        x0 = np.floor(px - s / 2 + 0.5).astype(int)
        hw = img.transpose(1, 2, 0)
        manual = np.stack([hw[y : y + s, x : x + s] for x, y in x0])
        np.testing.assert_array_equal(st.pp.handcrafted_features(manual), x_eager)

    def test_features_follow_tissue(self):
        # nuclei are planted denser to the right: the nuclei fraction must rise with x (monotone ground truth)
        sdata, info = _sdata()
        st.pp.histology_features(sdata, patch_px=None)
        t = sdata.tables["table"]
        pos = [int(i.split("_")[1]) for i in t.obs["instance_id"]]
        x = info["xy"][pos, 0]
        nuc = t.obsm["X_histology"][:, st.pp.handcrafted_feature_names().index("nuclei_fraction")]
        # a density growing ~linearly over 0..160 px and 30 spots: rank correlation well above chance (> 0.5)
        from scipy.stats import spearmanr

        assert spearmanr(x, nuc).statistic > 0.5

    def test_zarr_roundtrip(self, tmp_path):
        sdata, _ = _sdata()
        st.pp.histology_features(sdata)
        sdata.write(tmp_path / "s.zarr")
        back = sd.read_zarr(tmp_path / "s.zarr")
        t0, t1 = sdata.tables["table"], back.tables["table"]
        np.testing.assert_array_equal(np.asarray(t1.obsm["X_histology"]), t0.obsm["X_histology"])
        assert list(t1.uns["X_histology"]["feature_names"]) == list(t0.uns["X_histology"]["feature_names"])

    def test_callable_and_cnn(self):
        sdata, _ = _sdata()

        def mean_rgb(p):
            return p.reshape(len(p), -1, 3).mean(1)

        out = st.pp.histology_features(sdata, extractor=mean_rgb, key_added="X_rgb", copy=True)
        assert out.tables["table"].obsm["X_rgb"].shape == (30, 3)
        a = st.pp.histology_features(sdata, extractor="cnn", patch_px=16, copy=True, seed=1)
        b = st.pp.histology_features(sdata, extractor="cnn", patch_px=16, copy=True, seed=1)
        xa = a.tables["table"].obsm["X_histology"]
        assert xa.shape == (30, 32)
        np.testing.assert_array_equal(xa, b.tables["table"].obsm["X_histology"])  # seeded: identical on CPU

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"patch_um": 1e5}, "larger than image"),
            ({"extractor": "uni"}, "Unknown extractor"),
            ({"extractor": lambda p: np.zeros((len(p) + 1, 2))}, "wrong shape|must return"),
            ({"extractor": lambda p: np.full((len(p), 2), np.nan)}, "NaN"),
            ({"scales": (1, -2)}, "scales"),
            ({"image_key": "nope"}, "nope"),
        ],
    )
    def test_bad_input_leaves_object(self, kwargs, match):
        sdata, _ = _sdata()
        before = _snapshot(sdata)
        with pytest.raises((StmapInputError, KeyError), match=match):
            st.pp.histology_features(sdata, **kwargs)
        assert _snapshot(sdata) == before

    def test_no_image_and_misaligned(self):
        sdata, _ = make_small_sdata(with_image=False)
        with pytest.raises(StmapInputError, match="no images|No image"):
            st.pp.histology_features(sdata)
        sdata, info = _sdata()
        # shift the image so that a third of the spots fall off it
        sdata.images["he"] = make_image(
            _tissue_image(), transform=affine_matrix(info["mpp"], (info["offset"][0] + 110, info["offset"][1]))
        )
        before = _snapshot(sdata)
        with pytest.raises(StmapInputError, match="not aligned"):
            st.pp.histology_features(sdata)
        assert _snapshot(sdata) == before


class TestTorchExtractors:
    def _tiny(self, seed):
        import torch

        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)
        )

    def test_local_state_dict(self, tmp_path):
        import torch

        ref = self._tiny(0)
        path = tmp_path / "w.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
        patches = np.random.default_rng(0).integers(0, 255, (6, 20, 20, 3), dtype=np.uint8)
        loaded = st.pp.torch_extractor(self._tiny(1), path, input_px=32)(patches)
        expected = st.pp.torch_extractor(ref, None, input_px=32)(patches)
        fresh = st.pp.torch_extractor(self._tiny(1), None, input_px=32)(patches)
        np.testing.assert_allclose(loaded, expected, rtol=1e-6)  # same weights, same arithmetic
        assert not np.allclose(fresh, expected)  # ... and the weights really were replaced
        sdata, _ = _sdata()
        st.pp.histology_features(sdata, extractor=st.pp.torch_extractor(ref, path, input_px=32), patch_px=24)
        assert sdata.tables["table"].obsm["X_histology"].shape == (30, 5)

    def test_missing_weights_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="never downloads"):
            st.pp.torch_extractor(self._tiny(0), tmp_path / "none.pt")

    def test_timm_local_weights(self, tmp_path):
        timm = pytest.importorskip("timm")  # optional dependency: only checked where installed
        import torch

        kw = {"img_size": 32, "patch_size": 16, "embed_dim": 24, "depth": 1, "num_heads": 2, "num_classes": 0}
        ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
        torch.save(ref.state_dict(), tmp_path / "vit.pt")
        ext = st.pp.timm_extractor("vit_tiny_patch16_224", tmp_path / "vit.pt", input_px=32, **kw)
        p = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
        np.testing.assert_allclose(ext(p), st.pp.torch_extractor(ref, None, input_px=32)(p), rtol=1e-5)

    def test_optional_backends_error(self):
        import importlib.util

        if importlib.util.find_spec("torchvision") is None:
            with pytest.raises(ImportError, match="pip install torchvision"):
                st.pp.torchvision_extractor("resnet18")
        if importlib.util.find_spec("timm") is None:
            with pytest.raises(ImportError, match="pip install timm"):
                st.pp.timm_extractor()


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, stmap; stmap.pp.histology_features; stmap.tl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _cases(func):
    """Every invalid value generated from the tool's declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(name, value, id=f"{name}-{i}")
        for name, spec in func.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


class TestParameters:
    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.histology_features))
    def test_histology_features_invalid_value_raises_untouched(self, name, value):
        sdata, _ = _sdata()
        before = _snapshot(sdata)
        with pytest.raises(StmapInputError, match=f"histology_features: {name} must be"):
            st.pp.histology_features(sdata, **{name: value})
        assert _snapshot(sdata) == before

    @pytest.mark.parametrize(
        "func", [st.pp.torch_extractor, st.pp.timm_extractor, st.pp.torchvision_extractor], ids=lambda f: f.__name__
    )
    def test_extractor_factories_invalid_value_raises(self, func):
        # checked before the backbone is imported or built: also where timm / torchvision are not installed
        args = (object(),) if func is st.pp.torch_extractor else ()
        for name, value in [(p.values[0], p.values[1]) for p in _cases(func)]:
            with pytest.raises(StmapInputError, match=f"{func.__name__}: {name} must be"):
                func(*args, **{name: value})

    # conversion and units (no test module of their own)
    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.to_spatialdata))
    def test_to_spatialdata_invalid_value_raises_untouched(self, name, value):
        import anndata as ad

        adata = ad.AnnData(np.ones((4, 2), dtype=np.float32), obsm={"spatial": np.arange(8.0).reshape(4, 2)})
        args, kw = ((value,), {}) if name == "adata" else ((adata,), {name: value})
        with pytest.raises(StmapInputError, match=f"to_spatialdata: {name} must be"):
            st.pp.to_spatialdata(*args, **{"spot_diameter": 1.0, **kw})
        assert list(adata.uns) == [] and list(adata.obsm) == ["spatial"]

    def test_to_spatialdata_mpp_recorded(self):
        import anndata as ad

        adata = ad.AnnData(np.ones((4, 2), dtype=np.float32), obsm={"spatial": np.arange(8.0).reshape(4, 2)})
        sdata = st.pp.to_spatialdata(adata, spot_diameter=1.0, mpp=2)  # an integer mpp is a number of micrometres
        assert st.pp.coordinate_units(sdata, "table") == 1.0  # 'global' is in micrometres
        np.testing.assert_allclose(st._core.resolve(sdata, "table").coords, adata.obsm["spatial"] * 2)

    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.coordinate_units))
    def test_coordinate_units_invalid_value_raises_untouched(self, name, value):
        sdata, _ = _sdata()
        attrs = dict(sdata.attrs)
        with pytest.raises(StmapInputError, match=f"coordinate_units: {name} must be"):
            st.pp.coordinate_units(sdata, **{name: value})
        assert dict(sdata.attrs) == attrs
