"""Capture-area generators: spatialdata-io's layout, the truth matches the counts, streaming is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import StmapInputError, resolve


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "hd.zarr"
    st.datasets.large_visium_hd(path, n_bins=3000, n_genes=120, n_types=5, chunk_rows=700, seed=3)
    return path


class TestLargeVisiumHD:
    def test_layout_is_the_readers(self, hd):
        s = sd.read_zarr(hd)
        assert s.attrs["spatialdata_io_reader"] == "visium_hd"
        assert set(s.tables) == {"square_008um"} and set(s.shapes) == {"sample_square_008um"}
        t = s.tables["square_008um"]
        assert t.uns["spatialdata_attrs"] == {
            "region": "sample_square_008um",
            "region_key": "region",
            "instance_key": "location_id",
        }
        assert {"in_tissue", "array_row", "array_col", "location_id"} <= set(t.obs)
        # squares of 8 µm at 0.2738 µm per pixel, and stmap infers the unit from the bin size with no argument
        b = s.shapes["sample_square_008um"].geometry.iloc[0].bounds
        assert b[2] - b[0] == pytest.approx(8 / 0.2738)
        ctx = resolve(s, None)
        assert ctx.um_per_unit == pytest.approx(0.2738, rel=1e-6)
        assert s.images["sample_full_image"]["scale0"]["image"].dtype == np.uint8

    def test_truth_and_counts(self, hd):
        t = sd.read_zarr(hd).tables["square_008um"]
        truth = t.obsm["truth_cell_type_counts"]
        n = truth.to_numpy().sum(1)
        assert n.min() >= 1 and n.max() <= 3  # 1-3 cells per 8 µm bin
        assert list(truth.columns) == list(t.uns["truth_cell_types"])
        X = t.X.tocsr()
        assert X.shape == (3000, 120) and np.all(X.data > 0) and np.all(X.data == np.round(X.data))
        # a bin's counts grow with its number of cells (each cell adds its own library)
        tot = np.asarray(X.sum(1)).ravel()
        assert tot[n == 3].mean() > 2.0 * tot[n == 1].mean()

    def test_types_are_recoverable_from_the_reference(self, hd):
        # the marker structure is shared: bins of one cell correlate best with their own type's reference mean
        t = sd.read_zarr(hd).tables["square_008um"]
        ref = st.datasets.large_reference(n_cells=2000, n_genes=120, n_types=5, seed=3)
        codes = ref.obs["cell_type"].cat.codes.to_numpy()
        means = np.stack([np.asarray(ref.X[codes == k].mean(0)).ravel() for k in range(5)]) + 1e-3
        truth = t.obsm["truth_cell_type_counts"].to_numpy()
        one = truth.sum(1) == 1
        X = t.X.tocsr()[one].toarray()
        score = X @ np.log(means / means.sum(1, keepdims=True)).T  # multinomial log-likelihood
        assert (score.argmax(1) == truth[one].argmax(1)).mean() > 0.9

    def test_deterministic(self, hd, tmp_path):
        # the same seed gives the same counts and truth (with or without the image)
        other = st.datasets.large_visium_hd(
            tmp_path / "b.zarr", n_bins=3000, n_genes=120, n_types=5, chunk_rows=700, seed=3, image=False
        )
        a, b = sd.read_zarr(hd).tables["square_008um"], sd.read_zarr(other).tables["square_008um"]
        assert (a.X != b.X).nnz == 0
        np.testing.assert_array_equal(a.obsm["truth_cell_type_counts"], b.obsm["truth_cell_type_counts"])

    def test_refuses_to_overwrite_and_bad_sizes(self, hd):
        with pytest.raises(StmapInputError, match="overwrite=True"):
            st.datasets.large_visium_hd(hd, n_bins=10)
        with pytest.raises(StmapInputError, match="n_bins must be an integer >= 1"):
            st.datasets.large_visium_hd(hd, n_bins=0)
        with pytest.raises(StmapInputError, match="cells_per_bin"):
            st.datasets.large_visium_hd(hd, cells_per_bin=4.0)


def test_large_xenium_layout_units_and_truth(tmp_path):
    path = st.datasets.large_xenium(tmp_path / "x.zarr", n_cells=2000, n_genes=50, n_types=4, chunk_rows=600)
    s = sd.read_zarr(path)
    assert s.attrs["spatialdata_io_reader"] == "xenium"
    t = s.tables["table"]
    assert t.uns["spatialdata_attrs"]["region"] == "cell_circles"
    assert np.all(t.obsm["truth_cell_type_counts"].to_numpy().sum(1) == 1)
    assert resolve(s, None).um_per_unit == pytest.approx(0.2125)  # circles in µm scaled into morphology pixels
