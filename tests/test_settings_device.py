"""``st.settings.device`` reaches every tool that runs a model: ``device=None`` means the setting.

On a machine without CUDA, setting ``st.settings.device = "cuda"`` must make each tool ask for CUDA (and refuse
with the message that names ``device=``) before it modifies anything; ``device="cpu"`` in the call still wins.
"""

from __future__ import annotations

import pytest
import torch

import stmap as st

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture
def cuda_setting(monkeypatch):
    monkeypatch.setattr(st.settings, "device", "cuda")


@pytest.fixture(scope="module")
def tissue():
    return st.datasets.synthetic_tissue(seed=0)


def _calls(tissue):
    ref = tissue.tables["cells"]
    return {
        "map_cells": lambda s, **kw: st.tl.map_cells(s, ref, table_key="spots", **kw),
        "train_gene_maps": lambda s, **kw: st.tl.train_gene_maps(
            s,
            genes=["tumor_r01"],
            table_key="spots",
            image_key="he",
            epochs=1,
            width=8,
            depth=2,
            tile_px=64,
            scale=4.0,
            **kw,
        ),
        "train_ctr": lambda s, **kw: st.tl.train_ctr(
            s, label_key="tumor", table_key="spots", pretrain_epochs=1, warmup_epochs=1, epochs=1, **kw
        ),
    }


@pytest.mark.parametrize("tool", ["map_cells", "train_gene_maps", "train_ctr"])  # handcrafted features use no device
def test_setting_reaches_the_tool(tool, tissue, cuda_setting):
    s = tissue
    if tool == "train_ctr":
        s = st.datasets.synthetic_tissue(seed=0)
        st.pp.histology_features(s, table_key="spots", device="cpu")
    before = {k: set(t.obs.columns) | set(t.obsm) | set(t.uns) for k, t in s.tables.items()}
    with pytest.raises(ValueError, match="CUDA is not available"):
        _calls(tissue)[tool](s)
    assert {k: set(t.obs.columns) | set(t.obsm) | set(t.uns) for k, t in s.tables.items()} == before


def test_call_argument_wins_over_setting(tissue, cuda_setting):
    out = st.tl.map_cells(tissue, tissue.tables["cells"], table_key="spots", device="cpu", copy=True)
    assert "stmap_cell_type_fractions" in out.tables["spots"].obsm


def test_impute_3d_follows_setting(cuda_setting):
    secs = st.datasets.simulate_stack(2, n_genes=6, seed=0, grid=5)
    stack = st.pp.stack_sections(secs, transforms="warped")
    with pytest.raises(ValueError, match="CUDA is not available"):
        st.tl.impute_3d(stack, measured=["S1"], genes=6, epochs=1, hidden=8)
    assert "imputed" not in stack.tables["stack"].layers
