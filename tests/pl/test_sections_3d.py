"""st.pl.sections_3d: panels per section, one colour scale, 3D mode, errors."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

import stmap as st
from stmap._core import StmapInputError

pytestmark = pytest.mark.filterwarnings("error")  # a plot prints nothing


@pytest.fixture(scope="module")
def stack():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs = st.datasets.simulate_stack(3, n_genes=6, seed=1, grid=8, image=False)
        s = st.pp.stack_sections(secs, transforms="warped")
    t = s.tables["stack"]
    t.layers["imputed"] = np.log1p(t.layers["counts"].toarray() * 2.0)
    return s


def test_layers_grid_and_shared_scale(stack):
    axs = st.pl.sections_3d(stack, gene="gene_0", show=False)
    assert axs.shape == (2, 3)  # measured + imputed rows, one column per section
    colls = [a.collections[0] for a in axs.ravel()]
    # one colour scale for every panel: identical limits spanning both rows' values
    lims = {(c.norm.vmin, c.norm.vmax) for c in colls}
    assert len(lims) == 1
    t = stack.tables["stack"]
    allv = np.concatenate([c.get_array() for c in colls])
    assert lims.pop() == (pytest.approx(allv.min()), pytest.approx(allv.max()))
    # imputed row shows layers['imputed'] of the section's spots
    rows0 = (t.obs["section"] == "S0").to_numpy()
    np.testing.assert_allclose(colls[3].get_array(), t.layers["imputed"][rows0, 0])
    matplotlib.pyplot.close("all")


def test_unmeasured_section_and_subset(stack):
    t = stack.tables["stack"]
    old = t.obs["measured"].copy()
    t.obs["measured"] = (t.obs["section"] != "S1").to_numpy()
    try:
        axs = st.pl.sections_3d(stack, gene="gene_1", sections=["S1", "S2"], key=None, show=False)
        assert axs.shape == (1, 2)
        assert not axs[0, 0].collections and axs[0, 0].texts[0].get_text() == "not measured"
    finally:
        t.obs["measured"] = old
    matplotlib.pyplot.close("all")


def test_3d_mode(stack):
    ax = st.pl.sections_3d(stack, gene="gene_2", mode="3d", show=False)
    assert ax.name == "3d"
    t = stack.tables["stack"]
    assert ax.collections[-1].get_array().size == t.n_obs  # every spot drawn (imputed layer covers all)
    matplotlib.pyplot.close("all")


def test_errors(stack):
    with pytest.raises(StmapInputError, match="nope"):
        st.pl.sections_3d(stack, gene="nope", show=False)
    with pytest.raises(StmapInputError, match="Section"):
        st.pl.sections_3d(stack, gene="gene_0", sections=["S9"], show=False)


def test_measured_row_on_the_imputation_target_scale(stack):
    from stmap.tl._impute3d import asign_target

    t = stack.tables["stack"]
    genes = ["gene_1", "gene_3", "gene_4"]
    rows0 = (t.obs["section"] == "S0").to_numpy()
    # without an imputation entry: log1p of counts per 10,000 of X (scanpy's normalize_total + log1p)
    x = t.X.toarray() if hasattr(t.X, "toarray") else np.asarray(t.X)
    axs = st.pl.sections_3d(stack, gene="gene_3", key=None, show=False)
    cp10k = np.log1p(x[:, 3] / x.sum(1) * 1e4)
    np.testing.assert_allclose(axs[0, 0].collections[0].get_array(), cp10k[rows0], rtol=1e-6)
    t.uns["stmap_impute3d"] = {
        "genes": genes,
        "target": "ln((c + 1) / sum_genes(c + 1))",
        "params": {"layer": "counts"},
    }
    try:
        axs = st.pl.sections_3d(stack, gene="gene_3", show=False)
        want = asign_target(t.layers["counts"][:, t.var_names.get_indexer(genes)])[:, 1]  # the layer's own scale
        np.testing.assert_allclose(axs[0, 0].collections[0].get_array(), want[rows0], rtol=1e-6)
        # key=None, or a gene the imputation did not cover: back to log1p counts per 10,000
        axs = st.pl.sections_3d(stack, gene="gene_3", key=None, show=False)
        np.testing.assert_allclose(axs[0, 0].collections[0].get_array(), cp10k[rows0], rtol=1e-6)
        axs = st.pl.sections_3d(stack, gene="gene_0", show=False)
        np.testing.assert_allclose(axs[0, 0].collections[0].get_array(), np.log1p(x[:, 0] / x.sum(1) * 1e4)[rows0])
    finally:
        del t.uns["stmap_impute3d"]
    matplotlib.pyplot.close("all")
