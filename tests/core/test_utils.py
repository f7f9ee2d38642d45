from __future__ import annotations

import numpy as np
import pytest

from stmap._core import StmapInputError, inject_docs, resolve_device, seed_everything, shared_genes


def test_inject_docs_indents_snippets():
    @inject_docs(extra="extra\n    text")
    def f():
        """Do.

        Parameters
        ----------
        {copy}
        {extra}
        """

    lines = f.__doc__.splitlines()
    i = lines.index("copy")
    assert lines[i + 1].startswith("    If ``True``")
    assert "extra" in lines and "    text" in lines
    assert "{copy}" not in f.__doc__


def test_resolve_device():
    import torch

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")


def test_seed_everything_is_deterministic():
    import torch

    a = seed_everything(3).normal(size=4), torch.rand(3)
    b = seed_everything(3).normal(size=4), torch.rand(3)
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


class TestSharedGenes:
    def test_order_and_subset(self):
        assert shared_genes(["a", "b", "c"], ["c", "a", "z"]) == ["a", "c"]
        assert shared_genes(["a", "b", "c"], ["c", "a"], genes=["c"]) == ["c"]

    def test_missing_requested(self):
        with pytest.raises(StmapInputError, match=r"1 not in the reference \('b'\)"):
            shared_genes(["a", "b"], ["a"], genes=["a", "b"])

    def test_none_shared(self):
        with pytest.raises(StmapInputError, match="share 0 genes"):
            shared_genes(["ENSG1", "ENSG2"], ["ACTB", "GAPDH"])
