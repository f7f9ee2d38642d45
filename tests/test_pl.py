from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PatchCollection
from matplotlib.colors import to_hex, to_rgba

import stmap as st
from stmap._core._elements import affine_matrix, make_circles, make_image, make_table, new_spatialdata
from stmap._core._errors import StmapInputError

pytestmark = pytest.mark.filterwarnings("error")  # a plot prints nothing

N_SPOTS = 40
SCALE, TRANSLATION = 2.0, (10.0, 20.0)  # image px -> um
IMG_H, IMG_W = 50, 60


def _tiny_sdata(seed: int = 0, *, region: str = "my_spots", image: str = "my_he"):
    """A small H&E + circles + table; element names are deliberately unusual (nothing may hard-code them)."""
    rng = np.random.default_rng(seed)
    img = make_image(
        rng.integers(0, 255, (3, IMG_H, IMG_W)).astype(np.uint8), transform=affine_matrix(SCALE, TRANSLATION)
    )
    xy = rng.uniform(20, 120, (N_SPOTS, 2))
    circles = make_circles(xy, 3.0)
    adata = ad.AnnData(rng.poisson(2, (N_SPOTS, 5)).astype(np.float32))
    adata.var_names = [f"gene{i}" for i in range(5)]
    adata.obs_names = [f"spot{i}" for i in range(N_SPOTS)]
    adata.obs["cluster"] = pd.Categorical(rng.choice(["a", "b", "c"], N_SPOTS), categories=["a", "b", "c"])
    adata.obs["score"] = rng.normal(size=N_SPOTS)
    adata.obs["label"] = rng.choice(["x", "y"], N_SPOTS).astype(object)  # plain strings, not categorical
    table = make_table(adata, region=region)
    return new_spatialdata(
        images={image: img}, shapes={region: circles}, tables={"spots_table": table}, units={"global": "um"}
    )


def _spot_collections(ax):
    return [c for c in ax.collections if isinstance(c, PatchCollection)]


def _snapshot(table: ad.AnnData):
    return table.obs.copy(), table.X.copy(), {k: v for k, v in table.uns.items() if not k.endswith("_colors")}


def _assert_unchanged(table: ad.AnnData, snap) -> None:
    obs, x, uns = snap
    pd.testing.assert_frame_equal(table.obs, obs)
    np.testing.assert_array_equal(table.X, x)
    assert {k for k in table.uns if not k.endswith("_colors")} == set(uns)
    for k, v in uns.items():
        assert table.uns[k] == v


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


class TestSpatial:
    def test_categorical_over_image(self):
        sdata = _tiny_sdata()
        table = sdata.tables["spots_table"]
        table.uns["cluster_colors"] = ["#ff0000", "#00ff00", "#0000ff"]  # an explicit palette must be reused
        snap = _snapshot(table)

        ax = st.pl.spatial(sdata, color="cluster", show=False)

        assert len(ax.images) == 1
        spots = _spot_collections(ax)
        assert len(spots) == 1
        assert len(spots[0].get_paths()) == N_SPOTS
        # each spot's face colour is its category's palette entry, in the table's row order
        palette = dict(zip(table.obs["cluster"].cat.categories, table.uns["cluster_colors"], strict=True))
        drawn = [to_hex(c) for c in spots[0].get_facecolors()]
        assert sorted(drawn) == sorted(palette[c] for c in table.obs["cluster"])
        assert set(drawn) == {"#ff0000", "#00ff00", "#0000ff"}
        _assert_unchanged(table, snap)
        assert list(table.uns["cluster_colors"]) == ["#ff0000", "#00ff00", "#0000ff"]
        assert ax.get_title() == "cluster"

    def test_image_extent_matches_transform(self):
        sdata = _tiny_sdata()
        ax = st.pl.spatial(sdata, color="cluster", show=False)
        im = ax.images[0]
        x0, x1, y0, y1 = im.get_extent()  # pixel-edge extent in intrinsic coordinates
        to_data = im.get_transform() - ax.transData
        corners = to_data.transform([[x0, y0], [x1, y1]])
        # pixel edges -0.5 .. W-0.5 mapped by coords = px * SCALE + TRANSLATION
        expected = np.array(
            [
                [-0.5 * SCALE + TRANSLATION[0], -0.5 * SCALE + TRANSLATION[1]],
                [(IMG_W - 0.5) * SCALE + TRANSLATION[0], (IMG_H - 0.5) * SCALE + TRANSLATION[1]],
            ]
        )
        np.testing.assert_allclose(np.sort(corners, axis=0), np.sort(expected, axis=0), atol=1e-6)

    def test_default_palette_written_once(self):
        sdata = _tiny_sdata()
        table = sdata.tables["spots_table"]
        assert "cluster_colors" not in table.uns
        snap = _snapshot(table)
        ax = st.pl.spatial(sdata, color="cluster", show=False)
        stored = list(table.uns["cluster_colors"])
        assert len(stored) == 3
        drawn = {to_hex(c) for c in _spot_collections(ax)[0].get_facecolors()}
        assert drawn == set(stored)
        st.pl.spatial(sdata, color="cluster", show=False)
        assert list(table.uns["cluster_colors"]) == stored  # reused, not regenerated
        _assert_unchanged(table, snap)

    def test_explicit_palette_mapping(self):
        sdata = _tiny_sdata()
        table = sdata.tables["spots_table"]
        pal = {"a": "black", "b": "white", "c": "orange"}
        ax = st.pl.spatial(sdata, color="cluster", palette=pal, show=False)
        assert list(table.uns["cluster_colors"]) == [to_hex(pal[k]) for k in "abc"]
        face = _spot_collections(ax)[0].get_facecolors()
        for code, c in zip(table.obs["cluster"], face, strict=True):
            np.testing.assert_allclose(c, to_rgba(pal[code]))

    def test_string_column_not_cast(self):
        sdata = _tiny_sdata()
        table = sdata.tables["spots_table"]
        ax = st.pl.spatial(sdata, color="label", show=False)
        assert table.obs["label"].dtype == object  # not turned into a categorical in the user's table
        assert len(table.uns["label_colors"]) == 2
        assert {to_hex(c) for c in _spot_collections(ax)[0].get_facecolors()} == set(table.uns["label_colors"])

    @pytest.mark.parametrize("color", ["score", "gene1"])
    def test_continuous_and_gene(self, color):
        sdata = _tiny_sdata()
        table = sdata.tables["spots_table"]
        snap = _snapshot(table)
        ax = st.pl.spatial(sdata, color=color, cmap="magma", show=False)
        spots = _spot_collections(ax)
        assert len(spots) == 1
        face = spots[0].get_facecolors()
        values = table.obs[color].to_numpy() if color in table.obs else table[:, color].X.ravel()
        # the spot with the largest value is drawn with the top of the colormap
        top = matplotlib.colormaps["magma"](1.0)
        np.testing.assert_allclose(face[int(np.argmax(values))], top, atol=1e-6)
        _assert_unchanged(table, snap)
        assert not any(k.endswith("_colors") for k in table.uns)

    def test_no_image(self):
        ax = st.pl.spatial(_tiny_sdata(), color="cluster", image_key=False, show=False)
        assert len(ax.images) == 0
        assert len(_spot_collections(ax)) == 1

    def test_save_png(self, tmp_path):
        path = tmp_path / "spots.png"
        figs = plt.get_fignums()
        out = st.pl.spatial(_tiny_sdata(), color="cluster", save=path)
        assert out is None
        assert plt.get_fignums() == figs  # a saved figure that the plot made is closed (show=None)
        assert path.exists()
        assert path.stat().st_size > 0
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_into_given_ax(self):
        fig, ax = plt.subplots()
        out = st.pl.spatial(_tiny_sdata(), color="cluster", ax=ax, title="mine")
        assert out is None
        assert ax.get_title() == "mine"
        assert len(_spot_collections(ax)) == 1
        assert plt.fignum_exists(fig.number)

    def test_unknown_color_key(self):
        sdata = _tiny_sdata()
        table = sdata.tables["spots_table"]
        snap = _snapshot(table)
        with pytest.raises(StmapInputError, match="not_a_key") as err:
            st.pl.spatial(sdata, color="not_a_key", show=False)
        msg = str(err.value)
        for col in ["cluster", "score", "label"]:
            assert repr(col) in msg
        assert "var_names" in msg
        _assert_unchanged(table, snap)
        assert not any(k.endswith("_colors") for k in table.uns)

    def test_unknown_table_and_image(self):
        sdata = _tiny_sdata()
        with pytest.raises(StmapInputError, match="'spots_table'"):
            st.pl.spatial(sdata, color="cluster", table_key="nope", show=False)
        with pytest.raises(StmapInputError, match="'my_he'"):
            st.pl.spatial(sdata, color="cluster", image_key="nope", show=False)

    def test_wrong_coordinate_system(self):
        with pytest.raises(StmapInputError, match="global"):
            st.pl.spatial(_tiny_sdata(), color="cluster", coordinate_system="aligned", show=False)

    def test_palette_too_short(self):
        with pytest.raises(StmapInputError, match="3 categories"):
            st.pl.spatial(_tiny_sdata(), color="cluster", palette=["red"], show=False)

    def test_plain_anndata(self):
        sdata = _tiny_sdata()
        adata = sdata.tables["spots_table"].copy()
        adata.obsm["spatial"] = np.random.default_rng(1).uniform(0, 100, (N_SPOTS, 2))
        ax = st.pl.spatial(adata, color="cluster", palette="tab10", show=False)
        assert len(ax.collections) == 3  # one scatter per category
        stored = list(adata.uns["cluster_colors"])
        assert stored == [to_hex(matplotlib.colormaps["tab10"](i)) for i in range(3)]
        for coll, col in zip(ax.collections, stored, strict=True):
            assert {to_hex(c) for c in coll.get_facecolors()} == {col}
        assert sum(len(c.get_offsets()) for c in ax.collections) == N_SPOTS

    def test_plain_anndata_legacy_image(self):
        adata = _tiny_sdata().tables["spots_table"].copy()
        adata.obsm["spatial"] = np.random.default_rng(1).uniform(0, 100, (N_SPOTS, 2))  # full-resolution pixels
        hires = np.random.default_rng(2).random((30, 40, 3))
        adata.uns["spatial"] = {"lib": {"images": {"hires": hires}, "scalefactors": {"tissue_hires_scalef": 0.25}}}
        ax = st.pl.spatial(adata, color="score", show=False)
        assert len(ax.images) == 1
        # hires pixel = full-res pixel * scalef, so the image spans 40 / 0.25 x 30 / 0.25 coordinate units, y down
        np.testing.assert_allclose(ax.images[0].get_extent(), (0, 160, 120, 0))
        assert ax.yaxis_inverted()
        assert len(ax.collections) == 1
        assert len(ax.collections[0].get_offsets()) == N_SPOTS
        ax2 = st.pl.spatial(adata, color="score", image_key=False, show=False)
        assert len(ax2.images) == 0

    def test_plain_anndata_without_coordinates(self):
        with pytest.raises(StmapInputError, match="obsm"):
            st.pl.spatial(ad.AnnData(np.zeros((3, 2))), show=False)

    def test_points_and_rgb_image_preferred(self):
        from stmap._core._elements import make_points

        rng = np.random.default_rng(0)
        he = make_image(rng.integers(0, 255, (3, 64, 64)).astype(np.uint8), scale_factors=[2])  # multiscale RGB
        maps = make_image(rng.random((4, 64, 64)).astype(np.float32))  # e.g. gene maps: not the background
        adata = ad.AnnData(np.ones((20, 2), dtype=np.float32))
        adata.obs["ct"] = pd.Categorical(rng.choice(["u", "v"], 20))
        table = make_table(adata, region="cells")
        sdata = new_spatialdata(
            images={"zz_he": he, "aa_maps": maps},
            # the points carry a column named like the colour key: the table's column must win, not an error
            points={"cells": make_points(rng.uniform(5, 60, (20, 2)), annotations=adata.obs[["ct"]])},
            tables={"t": table},
        )
        ax = st.pl.spatial(sdata, color="ct", show=False)
        assert len(ax.images) == 1
        assert ax.images[0].get_array().shape[-1] == 3  # the RGB image, not the 4-channel one
        drawn = [c for c in ax.collections if len(c.get_offsets()) == 20]
        assert len(drawn) == 1
        palette = dict(zip(table.obs["ct"].cat.categories, table.uns["ct_colors"], strict=True))
        assert [to_hex(c) for c in drawn[0].get_facecolors()] == [palette[c] for c in table.obs["ct"]]
        assert list(sdata.points["cells"].columns) == ["x", "y", "ct"]  # the user's element is untouched
