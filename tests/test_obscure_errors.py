"""Inputs that used to give an obscure error (or the input object back) now give a clear StmapInputError, nothing
modified: an image smaller than the blob filter, ``copy=True`` without blobs, garbage model files, duplicated obs
names in ``to_spatialdata`` (issue 15, finding 8)."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import stmap as st
from stmap._core import StmapInputError, affine_matrix, make_image, new_spatialdata

torch = pytest.importorskip("torch")


# ----------------------------------------------------------------------------------------------------------------------
# detect_blobs
# ----------------------------------------------------------------------------------------------------------------------
def _blob_sdata(img):
    return new_spatialdata(images={"section": make_image(img[None], transform=affine_matrix(1.0))})


def _state(sdata):
    return (list(sdata.images), list(sdata.points), list(sdata.labels), list(sdata.tables), dict(sdata.attrs))


class TestDetectBlobs:
    def test_tiny_array_names_filter_size(self):
        img = np.random.default_rng(0).random((8, 8)).astype(np.float32)
        before = img.copy()
        with pytest.raises(StmapInputError, match=r"8x8 pixels.*sigma") as e:
            st.pp.detect_blobs(img)
        assert "min_area" in str(e.value) and "larger image" in str(e.value)
        np.testing.assert_array_equal(img, before)

    def test_tiny_image_in_spatialdata_unchanged(self):
        sdata = _blob_sdata(np.random.default_rng(0).random((8, 30)).astype(np.float32))
        before = _state(sdata)
        with pytest.raises(StmapInputError, match=r"8x30 pixels"):
            st.pp.detect_blobs(sdata)
        assert _state(sdata) == before

    def test_the_advised_sigma_works(self):
        img = np.random.default_rng(1).random((8, 11)).astype(np.float32)
        with pytest.raises(StmapInputError, match=r"sigma=` of at most ([0-9.]+)") as e:
            st.pp.detect_blobs(img)
        sigma = float(re.search(r"at most ([0-9.]+)", str(e.value)).group(1))
        assert isinstance(st.pp.detect_blobs(img, sigma=sigma, min_area=1), pd.DataFrame)
        with pytest.raises(StmapInputError, match="8x11 pixels"):
            st.pp.detect_blobs(img, sigma=sigma + 0.01, min_area=1)

    def test_copy_without_blobs_returns_a_copy(self):
        sdata = _blob_sdata(np.zeros((64, 64), np.float32))
        before = _state(sdata)
        out = st.pp.detect_blobs(sdata, copy=True)
        assert out is not sdata
        assert _state(out) == before  # nothing found: an unmodified copy
        assert _state(sdata) == before
        assert st.pp.detect_blobs(sdata, copy=False) is None and _state(sdata) == before

    def test_bad_key_added_up_front(self):
        sdata = _blob_sdata(np.zeros((64, 64), np.float32))  # no blob: today nothing would check the name
        before = _state(sdata)
        with pytest.raises(StmapInputError, match="key_added"):
            st.pp.detect_blobs(sdata, key_added="a/b")
        assert _state(sdata) == before


# ----------------------------------------------------------------------------------------------------------------------
# model files
# ----------------------------------------------------------------------------------------------------------------------
def _ctr():
    from stmap.models import SpaCRDNet

    config = {"n_genes": 3, "n_features": 4, "dim": 8, "latent": 4, "heads": 2, "hidden": 8}
    return st.tl.CTRModel(
        net=SpaCRDNet(**config),
        genes=["a", "b", "c"],
        features_key="feat",
        n_features=4,
        modality="both",
        n_neighbors=6,
        config=config,
    )


def _genemap():
    from stmap.models import GeneMapNet

    net = GeneMapNet(3, width=4, depth=1)
    return st.tl.GeneMapModel(net=net, genes=["a", "b", "c"], mean=np.zeros(3), std=np.ones(3), pixel_size=1.0)


def _impute():
    pytest.importorskip("torch_geometric")
    from stmap.models import ASIGNNet

    config = {"level_dims": [4], "n_genes": 3, "hidden": 8, "heads": 2}
    return st.tl.Impute3DModel(
        net=ASIGNNet(**config), genes=["a", "b", "c"], mean=np.zeros(3), std=np.ones(3), config=config
    )


_MAKERS = {"CTRModel": _ctr, "GeneMapModel": _genemap, "Impute3DModel": _impute}
_CLASSES = {"CTRModel": st.tl.CTRModel, "GeneMapModel": st.tl.GeneMapModel, "Impute3DModel": st.tl.Impute3DModel}


def _not_ours(name, path):
    return re.escape(f"{str(path)!r} is not a stmap {name} file (saved by {name}.save)")


@pytest.mark.parametrize("name", list(_CLASSES))
class TestModelFiles:
    def test_random_bytes(self, name, tmp_path):
        for seed in range(4):
            p = tmp_path / f"rand{seed}.pt"
            p.write_bytes(np.random.default_rng(seed).integers(0, 256, 512, dtype=np.uint8).tobytes())
            with pytest.raises(StmapInputError, match=_not_ours(name, p)):
                _CLASSES[name].load(p)

    @pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04 not really a zip"])
    def test_other_files(self, name, tmp_path, content):
        p = tmp_path / "notes.txt"
        p.write_bytes(content)
        with pytest.raises(StmapInputError, match=_not_ours(name, p)):
            _CLASSES[name].load(p)

    def test_torch_file_of_another_kind(self, name, tmp_path):
        p = tmp_path / "x.pt"
        torch.save({"x": 1}, p)
        with pytest.raises(StmapInputError, match=_not_ours(name, p)):
            _CLASSES[name].load(p)
        torch.save([1, 2, 3], p)
        with pytest.raises(StmapInputError, match=_not_ours(name, p)):
            _CLASSES[name].load(p)
        torch.save({"format": "stmap-model/1", "config": {}}, p)  # truncated record
        with pytest.raises(StmapInputError, match=_not_ours(name, p)):
            _CLASSES[name].load(p)

    def test_missing_file(self, name, tmp_path):
        with pytest.raises(FileNotFoundError, match="missing.pt"):
            _CLASSES[name].load(tmp_path / "missing.pt")

    def test_directory(self, name, tmp_path):
        with pytest.raises(FileNotFoundError, match=str(tmp_path.name)):
            _CLASSES[name].load(tmp_path)

    @pytest.mark.parametrize("shift", [1, 2])
    def test_file_of_another_model_class(self, name, shift, tmp_path):
        names = list(_CLASSES)
        other = names[(names.index(name) + shift) % len(names)]
        p = _MAKERS[other]().save(tmp_path / "m.pt")
        with pytest.raises(StmapInputError, match=_not_ours(name, p)) as e:
            _CLASSES[name].load(p)
        assert f"{other}.load" in str(e.value)

    @pytest.mark.parametrize("shift", [1, 2])
    def test_legacy_file_of_another_model_class(self, name, shift, tmp_path):
        # files written before the model class was recorded: the configuration / weights / record do not fit
        names = list(_CLASSES)
        other = names[(names.index(name) + shift) % len(names)]
        p = _MAKERS[other]().save(tmp_path / "m.pt")
        ckpt = torch.load(p, weights_only=True)
        ckpt.pop("kind", None)
        torch.save(ckpt, p)
        with pytest.raises(StmapInputError, match=_not_ours(name, p)):
            _CLASSES[name].load(p)

    def test_roundtrip_and_legacy_file_of_the_same_class(self, name, tmp_path):
        m = _MAKERS[name]()
        p = m.save(tmp_path / "m.pt")
        assert torch.load(p, weights_only=True)["kind"] == name
        ckpt = torch.load(p, weights_only=True)
        ckpt.pop("kind")
        torch.save(ckpt, tmp_path / "legacy.pt")
        for q in (p, tmp_path / "legacy.pt"):
            back = _CLASSES[name].load(q)
            assert back.genes == m.genes
            for k, v in m.net.state_dict().items():
                torch.testing.assert_close(back.net.state_dict()[k], v, rtol=0, atol=0)


def test_load_checkpoint_kind_generic(tmp_path):
    from stmap.models import load_checkpoint

    p = tmp_path / "bytes.pt"
    p.write_bytes(b"\x80\x02garbage")
    with pytest.raises(StmapInputError, match="is not a stmap model file"):
        load_checkpoint(p, torch.nn.Linear)


# ----------------------------------------------------------------------------------------------------------------------
# to_spatialdata
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Observation names are not unique")  # anndata's own (on copy), easy to miss
def test_to_spatialdata_duplicated_obs_names():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=rng.poisson(2.0, (6, 3)).astype(np.float32))
    adata.obs_names = ["a", "b", "a", "c", "b", "d"]
    adata.obsm["spatial"] = rng.uniform(0, 100, (6, 2))
    before = adata.copy()
    with pytest.raises(StmapInputError, match=r"obs_names_make_unique") as e:
        st.pp.to_spatialdata(adata, spot_diameter=10.0)
    assert "'a'" in str(e.value) and "'b'" in str(e.value)
    assert list(adata.obs_names) == list(before.obs_names)
    np.testing.assert_array_equal(adata.X, before.X)
    np.testing.assert_array_equal(adata.obsm["spatial"], before.obsm["spatial"])
    assert adata.uns.keys() == before.uns.keys()
    adata.obs_names_make_unique()
    out = st.pp.to_spatialdata(adata, spot_diameter=10.0)  # the named fix works
    assert out.tables["table"].n_obs == 6
