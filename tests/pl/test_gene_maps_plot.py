"""st.pl.gene_maps: panels, placement of the images, shared colour scale, errors, nothing changed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from matplotlib.collections import PatchCollection

import stmap as st
from stmap._core import affine_matrix, make_circles, make_image, make_table, new_spatialdata

pytestmark = pytest.mark.filterwarnings("error")  # a plot prints nothing

GENES = ["g0", "g1", "g2"]
HE_SCALE, HE_SHIFT = 2.0, (10.0, 20.0)  # H&E pixel -> um
MAP_SCALE, MAP_SHIFT = 8.0, (10.0, 20.0)  # maps: 4x coarser, same origin (as st.tl.gene_maps writes them)
FULL = (10.0, 20.0, 170.0, 148.0)  # (xmin, ymin, xmax, ymax): the union of the H&E's and the maps' extents


def _sdata(*, map_scale_factors=None, seed: int = 0):
    """H&E (60 x 80 px), 30 spots, a table with counts, and hand-made maps (16 x 20 px) recorded as the tool does."""
    rng = np.random.default_rng(seed)
    he = make_image(rng.integers(0, 255, (3, 60, 80)).astype(np.uint8), transform=affine_matrix(HE_SCALE, HE_SHIFT))
    maps = make_image(
        rng.normal(2.0, 1.0, (len(GENES), 16, 20)).astype(np.float32),
        transform=affine_matrix(MAP_SCALE, MAP_SHIFT),
        c_coords=GENES,
        scale_factors=map_scale_factors,
    )
    xy = rng.uniform(30, 160, (30, 2))
    counts = rng.poisson(3.0, (30, 6)).astype(np.float32)
    counts[0] = 0  # an empty spot: no log-normalised value (drawn grey), never a colour limit
    adata = ad.AnnData(counts, var=pd.DataFrame(index=[*GENES, "h0", "h1", "h2"]))
    adata.obs_names = [f"s{i}" for i in range(30)]
    table = make_table(adata, region="spots")
    table.uns["stmap_gene_maps"] = {
        "element": "he_gene_maps",
        "genes": GENES,
        "params": {"image_key": "he", "layer": "None", "normalize": True},
    }
    return new_spatialdata(
        images={"he": he, "he_gene_maps": maps},
        shapes={"spots": make_circles(xy, 12.0)},
        tables={"table": table},
        units={"global": "um"},
    )


def _lognorm(sdata, gene):
    X = np.asarray(sdata.tables["table"].X, dtype=float)
    j = list(sdata.tables["table"].var_names).index(gene)
    tot = X.sum(1)
    return np.log1p(X[tot > 0, j] / tot[tot > 0] * 1e4)


def _extent(element):
    e = sd.get_extent(element, coordinate_system="global")
    return (e["x"][0], e["x"][1], e["y"][1], e["y"][0])  # matplotlib's (left, right, bottom, top), y down


@pytest.fixture
def sdata():
    return _sdata()


class TestGeneMapsPlot:
    def test_panels_and_colorbars(self, sdata):
        axs = st.pl.gene_maps(sdata, genes=GENES[:2], show=False)
        assert axs.shape == (2, 2)  # one row per gene: spots | map
        fig = axs[0, 0].figure
        assert len(fig.axes) == 2 * 2  # four panels
        cbars = [[c for c in a.child_axes if getattr(c, "_colorbar", None) is not None] for a in axs.ravel()]
        assert [len(c) for c in cbars] == [0, 1, 0, 1]  # one colour bar per gene, beside its map (shared with spots)
        assert [a.get_title() for a in axs[:, 1]] == ["g0: gene map", "g1: gene map"]
        plt.close(fig)
        axs = st.pl.gene_maps(sdata, show_spots=False, show=False)  # default: every channel
        assert axs.shape == (3, 1)
        plt.close(axs[0, 0].figure)

    def test_images_placed_by_their_transformations(self, sdata):
        axs = st.pl.gene_maps(sdata, genes="g1", crop=FULL, show=False)  # the union of the images' extents
        he_im, map_im = axs[0, 1].images
        # extents equal the elements' extents in the coordinate system (float arithmetic of the same matrices only)
        np.testing.assert_allclose(he_im.get_extent(), _extent(sdata.images["he"]), atol=1e-9)
        np.testing.assert_allclose(map_im.get_extent(), _extent(sdata.images["he_gene_maps"]), atol=1e-9)
        np.testing.assert_array_equal(map_im.get_array(), sdata.images["he_gene_maps"].values[1])
        np.testing.assert_allclose(axs[0, 0].images[0].get_extent(), he_im.get_extent())
        plt.close(axs[0, 0].figure)

    def test_colour_limits_shared_with_the_spots(self, sdata):
        axs = st.pl.gene_maps(sdata, genes=["g0", "g2"], show=False)
        for row, gene in zip(axs, ["g0", "g2"], strict=True):
            spots = [c for c in row[0].collections if isinstance(c, PatchCollection)]
            assert len(spots) == 1 and len(spots[0].get_paths()) == 30
            want = _lognorm(sdata, gene)  # the spots' log1p counts per 10^4, computed here independently
            np.testing.assert_allclose(spots[0].get_clim(), (want.min(), want.max()), rtol=1e-12)
            assert row[1].images[1].get_clim() == spots[0].get_clim()
        plt.close(axs[0, 0].figure)

    def test_crop_reads_only_the_window(self, sdata):
        crop = (50.0, 40.0, 110.0, 90.0)
        axs = st.pl.gene_maps(sdata, genes="g0", crop=crop, show=False)
        for a in axs[0]:
            assert a.get_xlim() == (50.0, 110.0) and a.get_ylim() == (90.0, 40.0)
        left, right, bottom, top = axs[0, 1].images[1].get_extent()
        # the read window covers the crop by less than one map pixel on each side
        assert left <= 50 < left + MAP_SCALE and right - MAP_SCALE < 110 <= right
        assert top <= 40 < top + MAP_SCALE and bottom - MAP_SCALE < 90 <= bottom
        plt.close(axs[0, 0].figure)

    def test_reads_a_coarser_pyramid_level_for_small_figures(self):
        s = _sdata(map_scale_factors=[2])
        axs = st.pl.gene_maps(s, genes="g0", image_key=False, max_pixels=10, crop=FULL, show=False)
        im = axs[0, 1].images[0]
        assert im.get_array().shape == (8, 10)  # level 1 of the 16 x 20 pyramid (8 x 10 px) fits 10 px
        level0 = sd.get_extent(s.images["he_gene_maps"], coordinate_system="global")
        np.testing.assert_allclose(im.get_extent(), (*level0["x"], *level0["y"][::-1]), atol=1e-9)
        plt.close(axs[0, 0].figure)

    @pytest.mark.parametrize(
        ("kwargs", "err", "match"),
        [
            ({"genes": ["g0", "nope"]}, st.StmapKeyError, "nope"),
            ({"key": "other"}, st.StmapInputError, "gene_maps"),
            ({"element": "missing"}, st.StmapKeyError, "missing"),
            ({"crop": (0, 0, -1, 5)}, st.StmapInputError, "xmin < xmax"),
            ({"crop": (1000, 1000, 2000, 2000)}, st.StmapInputError, "overlap"),
        ],
    )
    def test_bad_input_raises_before_drawing(self, sdata, kwargs, err, match):
        figs = plt.get_fignums()
        with pytest.raises(err, match=match):
            st.pl.gene_maps(sdata, **{"genes": "g0", **kwargs}, show=False)
        assert plt.get_fignums() == figs

    def test_leaves_sdata_unchanged(self, sdata, tmp_path):
        before = sd.deepcopy(sdata)
        st.pl.gene_maps(sdata, genes="g1", save=tmp_path / "maps.png")
        assert (tmp_path / "maps.png").read_bytes()[:4] == b"\x89PNG"
        assert set(sdata.images) == set(before.images) and set(sdata.tables) == set(before.tables)
        t, t0 = sdata.tables["table"], before.tables["table"]
        pd.testing.assert_frame_equal(t.obs, t0.obs)
        np.testing.assert_array_equal(t.X, t0.X)
        assert set(t.uns) == set(t0.uns)
        np.testing.assert_array_equal(sdata.images["he_gene_maps"].values, before.images["he_gene_maps"].values)


def test_plots_the_output_of_tl_gene_maps():
    pytest.importorskip("torch")
    s = st.datasets.synthetic_tissue(0, n_cells=300)
    genes = ["tumor_r01", "immune_r01"]
    # epochs=0: an untrained network, but the element, its transformation and .uns are exactly what the tool writes
    st.tl.gene_maps(s, genes=genes, table_key="spots", epochs=0, width=4, depth=2, tile_px=64, scale=4.0, verbose=False)
    ext = [sd.get_extent(s.images[n], coordinate_system="global") for n in ("he", "he_gene_maps")]
    full = (
        min(e["x"][0] for e in ext),
        min(e["y"][0] for e in ext),
        max(e["x"][1] for e in ext),
        max(e["y"][1] for e in ext),
    )
    axs = st.pl.gene_maps(s, genes=genes, table_key="spots", crop=full, show=False)  # the images' extents
    np.testing.assert_allclose(axs[1, 1].images[0].get_extent(), _extent(s.images["he"]), atol=1e-9)
    np.testing.assert_allclose(axs[1, 1].images[1].get_extent(), _extent(s.images["he_gene_maps"]), atol=1e-9)
    spots = [c for c in axs[1, 0].collections if isinstance(c, PatchCollection)][0]
    assert axs[1, 1].images[1].get_clim() == spots.get_clim()
    plt.close(axs[0, 0].figure)
