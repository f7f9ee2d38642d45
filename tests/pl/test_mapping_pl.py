"""st.pl.mapping: one panel per cell type plus the placed cells; the user's object is left as it was."""

from __future__ import annotations

import warnings

import matplotlib
import pytest

import stmap as st

pytestmark = pytest.mark.filterwarnings("error")  # a plot prints nothing

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def mapped():
    sdata = st.datasets.synthetic_tissue(0, n_cells=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        st.tl.map_cells(sdata, sdata.tables["cells"].copy(), table_key="spots", cells_per_spot="n_cells")
    return sdata


def test_panels(mapped, tmp_path):
    import matplotlib.pyplot as plt

    obs_before = list(mapped.tables["spots"].obs.columns)
    types = ["tumor", "T_cell"]  # two panels keep the test fast; each panel is one spatialdata-plot render
    axs = st.pl.mapping(mapped, table_key="spots", cell_types=types, save=tmp_path / "m.png", show=False)
    fig = axs[0].figure
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == types + ["placed cells"]  # one panel per type, then the cells
    assert (tmp_path / "m.png").stat().st_size > 0
    assert list(mapped.tables["spots"].obs.columns) == obs_before  # fractions were drawn from a copy
    plt.close(fig)


def test_subset_and_errors(mapped):
    import matplotlib.pyplot as plt

    axs = st.pl.mapping(mapped, table_key="spots", cell_types=["tumor"], cells=False, image_key=False, show=False)
    fig = axs[0].figure
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["tumor"]
    plt.close(fig)
    with pytest.raises(st.StmapKeyError, match="not found"):
        st.pl.mapping(mapped, table_key="spots", cell_types=["nope"], show=False)
    with pytest.raises(st.StmapInputError, match="run `st.tl.map_cells"):
        st.pl.mapping(mapped, table_key="spots", key="other", show=False)
