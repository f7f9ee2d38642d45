"""st.pl.density / st.pl.density_ranking draw what was computed (panel data == the maps), bad keys raise."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

import stmap as st
from stmap._core import StmapInputError, make_points, new_spatialdata

pytestmark = pytest.mark.filterwarnings("error")  # a plot prints nothing


def _sdata(d=2):
    rng = np.random.default_rng(0)
    n = 300
    xy = np.concatenate([rng.normal(20, 4, size=(n // 2, d)), rng.normal(45, 5, size=(n - n // 2, d))])
    kind = np.array(["a"] * (n // 2) + ["b"] * (n - n // 2))
    s = new_spatialdata(points={"cells": make_points(xy, annotations=pd.DataFrame({"kind": pd.Categorical(kind)}))})
    st.tl.density(s, groupby="kind", bandwidth=4.0, voxel_size=2.0)
    return s


@pytest.mark.parametrize("d", [2, 3])
def test_density_panels_show_the_maps(d):
    s = _sdata(d)
    fig = st.pl.density(s, z="max", points_key="cells", show=False)[0].figure
    img = np.asarray(s.images["stmap_density"].data)
    for i, g in enumerate(["a", "b"]):
        ax = next(a for a in fig.axes if a.get_title() == g)
        expect = img[i].max(axis=0) if d == 3 else img[i]
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), expect)
    # extent in coordinate units: the grid spans the points (padded by 3 bandwidths)
    x0, x1, _, _ = fig.axes[0].images[0].get_extent()
    assert x0 < 20 - 3 * 4 + 2 and x1 > 45 + 3 * 4 - 2


def test_ranking_bars_and_bad_keys():
    s = _sdata()
    st.tl.rank_densities(s, "stmap_density", "stmap_density", method="pearson")
    fig = st.pl.density_ranking(s, top=2, show=False)[0].figure
    r = next(t for t in s.tables.values() if "stmap_density_ranking" in t.uns).uns["stmap_density_ranking"]["ranking"]
    ax = fig.axes[0]
    top = r[r["query"] == "a"].sort_values("score", ascending=False).head(2)
    heights = sorted(p.get_width() for p in ax.patches)
    np.testing.assert_allclose(heights, sorted(top["score"]))
    with pytest.raises(StmapInputError, match="nope"):
        st.pl.density(s, key="stmap_density", groups=["nope"], show=False)
    with pytest.raises(StmapInputError, match="zz"):
        st.pl.density_ranking(s, queries=["zz"], show=False)
    with pytest.raises(StmapInputError, match="rank_densities"):
        st.pl.density_ranking(s, key="other", show=False)
