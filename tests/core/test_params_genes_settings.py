"""Declared parameter constraints, the shared log-normalisation and the settings that reach every tool."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

import stmap as st
from stmap._core import Instance, Interval, Options, StmapInputError, invalid_values, log_normalize, validate_params
from stmap._core._device import resolve_verbose, torch_threads


@validate_params(
    n=Interval(int, 1, None),
    frac=Interval(float, 0, 1, "neither"),
    mode=Options({"a", "b"}),
    genes=[Instance((list, tuple)), None],
)
def _tool(x, *, n=3, frac=0.5, mode="a", genes=None):
    return n, frac, mode, genes


class TestValidateParams:
    def test_valid_calls_pass_through(self):
        assert _tool(0) == (3, 0.5, "a", None)
        assert _tool(0, n=7, frac=1e-9, mode="b", genes=["g"]) == (7, 1e-9, "b", ["g"])
        # an int is a real number; numpy integers are integers
        assert _tool(0, frac=np.float32(0.25), n=np.int64(2))[0] == 2

    @pytest.mark.parametrize("name", ["n", "frac", "mode", "genes"])
    def test_every_generated_invalid_value_raises(self, name):
        bad = invalid_values(_tool.__stmap_params__[name])
        assert bad, name
        for v in bad:
            with pytest.raises(StmapInputError, match=rf"_tool: {name} must be"):
                _tool(0, **{name: v})

    def test_message_names_rule_and_value(self):
        with pytest.raises(StmapInputError, match=r"n must be an integer >= 1; got 0\."):
            _tool(0, n=0)
        with pytest.raises(StmapInputError, match=r"frac must be a finite number in \(0, 1\); got 1\."):
            _tool(0, frac=1)
        with pytest.raises(StmapInputError, match=r"genes must be a list or tuple or None"):
            _tool(0, genes="g")

    def test_bool_and_nan_are_not_numbers(self):
        assert not Interval(int, 0, None).ok(True)
        assert not Interval(float, None, None).ok(math.nan)
        assert not Interval(float, None, None).ok(math.inf)

    def test_open_and_closed_ends(self):
        iv = Interval(float, 0, 1, "left")
        assert iv.ok(0) and not iv.ok(1) and iv.ok(0.999)
        assert 1 in iv.invalid() and 0 not in iv.invalid()

    def test_unknown_parameter_is_a_programming_error(self):
        with pytest.raises(TypeError, match="no parameters"):
            validate_params(nope=Interval(int, 0, None))(lambda x: x)

    def test_signature_and_doc_kept(self):
        import inspect

        assert list(inspect.signature(_tool).parameters) == ["x", "n", "frac", "mode", "genes"]
        assert _tool.__name__ == "_tool"


class TestLogNormalize:
    @pytest.mark.parametrize("sparse_in", [False, True])
    def test_equals_scanpy(self, sparse_in):
        import anndata as ad
        import scanpy as sc

        rng = np.random.default_rng(0)
        X = rng.poisson(2.0, size=(40, 30)).astype(np.float64)
        X[3] = 0  # an empty row stays zero
        a = ad.AnnData(sp.csr_matrix(X) if sparse_in else X.copy())
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        ref = a.X.toarray() if sp.issparse(a.X) else a.X
        got = log_normalize(sp.csr_matrix(X) if sparse_in else X)
        assert sp.issparse(got) == sparse_in
        got = got.toarray() if sparse_in else got
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
        assert np.all(got[3] == 0)

    def test_totals_of_all_genes_on_a_subset(self):
        X = np.array([[1.0, 3.0, 6.0], [0.0, 0.0, 0.0]])
        got = log_normalize(X[:, :2], totals=X.sum(1))
        np.testing.assert_allclose(got[0], np.log1p(np.array([1.0, 3.0]) / 10 * 1e4))
        assert np.all(got[1] == 0)


class TestSettings:
    def test_verbose_none_follows_setting(self, monkeypatch):
        monkeypatch.setattr(st.settings, "verbose", False)
        assert resolve_verbose(None) is False and resolve_verbose(True) is True
        monkeypatch.setattr(st.settings, "verbose", True)
        assert resolve_verbose(None) is True and resolve_verbose(False) is False

    def test_n_threads_applied_and_restored(self, monkeypatch):
        import torch

        before = torch.get_num_threads()
        monkeypatch.setattr(st.settings, "n_threads", 1)
        with torch_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == before
        with torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == before
        monkeypatch.setattr(st.settings, "n_threads", 0)
        with pytest.raises(ValueError, match="n_threads"), torch_threads():
            pass

    def test_device_none_follows_setting(self, monkeypatch):
        import torch

        from stmap._core import resolve_device

        monkeypatch.setattr(st.settings, "device", "cpu")
        assert resolve_device(None) == torch.device("cpu")
        if not torch.cuda.is_available():
            monkeypatch.setattr(st.settings, "device", "cuda")
            with pytest.raises(ValueError, match="CUDA is not available"):
                resolve_device(None)
