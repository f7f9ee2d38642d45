"""One contract for every ``st.pl`` function: keyword options, ``ax``/``figsize``/``dpi``/``save``/``show``, declared
parameters, no warnings; and the figure fixes (palettes, crop, units, readable bars) checked on the drawn artists."""

from __future__ import annotations

import inspect
import logging
import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex

import stmap as st
from stmap._core import Key, StmapInputError, invalid_values

pytestmark = pytest.mark.filterwarnings("error")  # a plot prints nothing (third-party noise is silenced in st.pl)

NAMES = ["spatial", "mapping", "ctr", "density", "density_ranking", "gene_maps", "sections_3d"]
#: Panels each plot draws on the data of ``conftest.PLOTS``.
N_PANELS = {"spatial": 1, "mapping": 3, "ctr": 3, "density": 2, "density_ranking": 2, "gene_maps": 4, "sections_3d": 6}
TRAILING = ["ax", "figsize", "dpi", "save", "show"]


def colorbars(fig) -> list[Axes]:
    """The colour-bar Axes of ``fig`` in drawing order: figure-level ones and those inset beside their panel."""
    return [c for a in fig.axes for c in (a, *a.child_axes) if getattr(c, "_colorbar", None) is not None]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture
def shown(monkeypatch):
    """Count ``plt.show()`` calls (the Agg backend cannot show)."""
    calls = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: calls.append(1))
    return calls


def _flat(out):
    return list(np.ravel(np.asarray(out, dtype=object))) if isinstance(out, np.ndarray) else [out]


class TestSignature:
    @pytest.mark.parametrize("name", NAMES)
    def test_data_then_keywords_then_trailing(self, name):
        params = list(inspect.signature(getattr(st.pl, name)).parameters.values())
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
        assert [p.name for p in params[-5:]] == TRAILING
        assert all(p.default is None for p in params[-5:])
        names = {p.name for p in params}
        assert not names & {"return_ax", "return_fig", "key_added", "panel_size"}
        assert name in ("spatial", "sections_3d") or "key" in names  # the result to plot is named by key=

    @pytest.mark.parametrize("name", NAMES)
    def test_documented_once(self, name):
        doc = getattr(st.pl, name).__doc__
        for p in TRAILING:
            assert f"\n{p}\n" in doc.replace("    ", "")  # the shared snippet, injected
        assert "show=False" in doc


class TestShowSaveReturn:
    @pytest.mark.parametrize("name", NAMES)
    def test_show_false_returns_the_axes(self, name, plot_call, shown):
        out = plot_call(name, show=False)
        axs = _flat(out)
        assert len(axs) == N_PANELS[name] and all(isinstance(a, Axes) for a in axs)
        assert isinstance(out, Axes) == (N_PANELS[name] == 1)  # one panel: the Axes; several: an array
        assert plt.fignum_exists(axs[0].figure.number) and not shown

    @pytest.mark.parametrize("name", NAMES)
    @pytest.mark.parametrize("show", [None, True])
    def test_shown_returns_none(self, name, show, plot_call, shown):
        assert plot_call(name, show=show) is None
        assert len(shown) == 1

    @pytest.mark.parametrize("name", NAMES)
    def test_save_writes_and_closes(self, name, plot_call, shown, tmp_path):
        figs = plt.get_fignums()
        path = tmp_path / f"{name}.png"
        assert plot_call(name, save=path, dpi=30) is None
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert plt.get_fignums() == figs and not shown  # saved, not shown, closed

    @pytest.mark.parametrize("name", NAMES)
    def test_figsize_and_dpi(self, name, plot_call):
        ax = _flat(plot_call(name, figsize=(5.0, 4.0), dpi=42, show=False))[0]
        np.testing.assert_allclose(ax.figure.get_size_inches(), (5.0, 4.0))
        assert ax.figure.dpi == 42

    @pytest.mark.parametrize("name", [n for n in NAMES if n != "spatial"])
    def test_into_given_axes(self, name, plot_call, shown):
        n = N_PANELS[name]
        fig, given = plt.subplots(1, n + 1)
        assert plot_call(name, ax=given) is None
        assert not shown and plt.fignum_exists(fig.number)
        for a in given[:n]:
            assert a.has_data() or a.texts  # every panel drawn into (or saying "not measured")
        assert not given[n].has_data() and not given[n].get_title()  # the spare one untouched
        with pytest.raises(StmapInputError, match=f"Pass {n} axes"):
            plot_call(name, ax=given[: n - 1])

    def test_spatial_into_given_ax(self, plot_call, shown):
        fig, ax = plt.subplots()
        assert plot_call("spatial", ax=ax, title="mine") is None
        assert ax.get_title() == "mine" and not shown


def _snapshot(sdata):
    return {k: (t.obs.copy(), set(t.uns)) for k, t in sdata.tables.items()}, set(sdata.images)


_INVALID = [
    (name, param, bad)
    for name in NAMES
    for param, spec in getattr(st.pl, name).__stmap_params__.items()
    for bad in invalid_values(spec)
]


@pytest.mark.parametrize(("name", "param", "bad"), _INVALID, ids=[f"{n}-{p}-{b!r}"[:60] for n, p, b in _INVALID])
def test_invalid_values_raise_before_drawing(name, param, bad, plot_call, tissue, stack):
    data = stack if name == "sections_3d" else tissue
    before = _snapshot(data)
    figs = plt.get_fignums()
    with pytest.raises(StmapInputError, match=param):
        plot_call(name, **{param: bad})
    assert plt.get_fignums() == figs
    after = _snapshot(data)
    assert after[1] == before[1]
    for k, (obs, uns) in before[0].items():
        pd.testing.assert_frame_equal(after[0][k][0], obs)
        assert after[0][k][1] == uns


class TestFigures:
    def test_mapping_palette_from_the_categories_present(self, tissue, names):
        LONG_TYPES, UNPLACED, MAPPED = names.long_types, names.unplaced, names.mapped
        cells = tissue.tables[Key.table.cells("spots")]
        cells.uns.pop(Key.colors(Key.obs.cell_type), None)
        # spatialdata-plot logs through its own non-propagating logger: listen there too
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append  # type: ignore[method-assign]
        sdp = logging.getLogger("spatialdata_plot._logging")
        sdp.addHandler(handler)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # nothing may be warned, by us or by the libraries we render with
                axs = st.pl.mapping(tissue, table_key="spots", cell_types=MAPPED, show=False)
        finally:
            sdp.removeHandler(handler)
        assert not records, [r.getMessage() for r in records]  # e.g. "Not enough colors provided for category"
        # 17 types: scanpy's default_20 stored in category order (scanpy convention), for all of them
        from scanpy.plotting.palettes import default_20

        stored = list(cells.uns[Key.colors(Key.obs.cell_type)])
        assert stored == [to_hex(c) for c in default_20[: len(LONG_TYPES)]]
        # the legend lists the 15 placed types, each with its own colour (none grey, none shifted)
        legend = axs[-1].get_legend()
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels == [t for t in LONG_TYPES if t not in UNPLACED]
        by_type = dict(zip(LONG_TYPES, stored, strict=True))
        assert [to_hex(h.get_color()) for h in legend.legend_handles] == [by_type[t] for t in labels]
        # every cell is drawn in its type's colour
        drawn = [c for c in axs[-1].collections if len(c.get_offsets()) == cells.n_obs]
        assert len(drawn) == 1
        face = [to_hex(c) for c in drawn[0].get_facecolors()]
        assert face == [by_type[t] for t in cells.obs[Key.obs.cell_type].astype(str)]

    def test_mapping_reads_the_names_of_its_key(self, tissue, names):
        MAPPED = names.mapped
        s = tissue
        keys, other = Key.mapping(), Key.mapping("run2")
        spots = s.tables["spots"]
        spots.obsm[other.fractions] = spots.obsm[keys.fractions] * 0.5
        try:
            axs = st.pl.mapping(s, key="run2", table_key="spots", cell_types=MAPPED[:1], show=False)
            assert len(axs) == 1  # no placed-cells table under this key: fractions only
            v = spots.obsm[other.fractions][MAPPED[0]].to_numpy()
            cbar = colorbars(axs[0].figure)[-1]
            np.testing.assert_allclose(cbar.get_ylim(), (v.min(), v.max()))  # the colour scale spans run2's values
        finally:
            del spots.obsm[other.fractions]
        with pytest.raises(StmapInputError, match="key_added='nope'"):
            st.pl.mapping(s, key="nope", table_key="spots", show=False)

    def test_spatial_cropped_to_the_spots_in_micrometres(self, tissue):
        ax = st.pl.spatial(tissue, color="region", table_key="spots", show=False)
        ctx = st._core.resolve(tissue, "spots")
        xy, r = ctx.coords, ctx.diameters / 2
        (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()  # y down
        lo, hi = (xy - r[:, None]).min(0), (xy + r[:, None]).max(0)
        pad = 0.04 * max(hi - lo)  # the margin: 4 % of the larger side of the spots' extent
        np.testing.assert_allclose([x0, y0, x1, y1], [lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad])
        assert ax.get_xlabel() == "x (µm)" and ax.get_ylabel() == "y (µm)"
        assert ax.get_legend() is not None and not colorbars(ax.figure)  # legend, no colour bar

    def test_ticks_at_round_micrometres_when_a_unit_is_not_one(self):
        import anndata as ad

        from stmap._core import make_circles, make_table, new_spatialdata

        rng = np.random.default_rng(0)
        adata = ad.AnnData(np.ones((30, 2), dtype=np.float32))
        adata.obs["v"] = rng.normal(size=30)
        s = new_spatialdata(
            shapes={"c": make_circles(rng.uniform(0, 1000, (30, 2)), 10.0)}, tables={"t": make_table(adata, region="c")}
        )
        s.attrs[Key.units_attr] = {"global": 0.5}  # coordinates in pixels of 0.5 um
        ax = st.pl.spatial(s, color="v", show=False)
        ax.figure.canvas.draw()
        pos = ax.get_xticks()
        shown = np.array([float(t.get_text()) for t in ax.get_xticklabels()])
        np.testing.assert_allclose(shown, pos * 0.5)  # labels are micrometres
        assert np.all(np.isclose(shown % 50, 0) | np.isclose(shown % 50, 50)) and len(shown) >= 3  # round ones
        assert ax.get_xlabel() == "x (µm)"
        assert colorbars(ax.figure)[0].get_ylabel() == "v"  # the colour bar, beside the axes

    def test_density_colour_bar_names_the_unit(self, tissue):
        axs = st.pl.density(tissue, show=False)
        cbar = colorbars(axs[0].figure)[-1]
        assert cbar.get_ylabel() == "density (per mm²)"
        img = np.asarray(tissue.images[Key.default.density].data)
        # drawn values are the map's own (per µm²); the ticks read per mm² (x 1e6)
        np.testing.assert_array_equal(axs[0].images[0].get_array(), img[0])
        ticks = [float(t.get_text()) for t in cbar.get_yticklabels() if t.get_text()]
        pos = cbar.get_yticks()[: len(ticks)]
        np.testing.assert_allclose(ticks, np.asarray(pos) * 1e6, rtol=1e-6)
        assert max(ticks) > 1  # readable numbers, not 4e-05

    def test_ranking_bars_drawn_on_a_log_axis_for_wide_ranges(self, tissue):
        axs = st.pl.density_ranking(tissue, top=5, show=False)
        r = tissue.tables["spots"].uns[Key.default.density_ranking]["ranking"]
        for ax, q in zip(axs, ["tumor", "immune"], strict=True):
            want = r[r["query"] == q].sort_values("score", ascending=False).head(5)
            right = [p.get_x() + p.get_width() for p in ax.patches]
            np.testing.assert_allclose(right, want["score"], rtol=1e-12)  # bar ends at the score, best on top
            assert [t.get_text() for t in ax.get_yticklabels()] == list(want["class"])
            assert all(p.get_width() > 0 for p in ax.patches)  # every bar visible
        assert axs[0].get_xscale() == "log" and axs[1].get_xscale() == "linear"  # 1e8 vs 2.6; 0.9 vs 0.3

    def test_gene_maps_cropped_to_the_spots(self, tissue, names):
        import spatialdata as sd

        axs = st.pl.gene_maps(tissue, genes=names.genes[:1], table_key="spots", show=False)
        ctx = st._core.resolve(tissue, "spots")
        xy, r = ctx.coords, ctx.diameters / 2
        lo, hi = (xy - r[:, None]).min(0), (xy + r[:, None]).max(0)
        pad = 0.04 * max(hi - lo)
        ext = [sd.get_extent(tissue.images[n], coordinate_system="global") for n in ("he", "he_gene_maps")]
        img_lo = [min(e[a][0] for e in ext) for a in "xy"]
        img_hi = [max(e[a][1] for e in ext) for a in "xy"]
        # the spots' extent plus the margin, within the images
        want_x = (max(lo[0] - pad, img_lo[0]), min(hi[0] + pad, img_hi[0]))
        want_y = (min(hi[1] + pad, img_hi[1]), max(lo[1] - pad, img_lo[1]))  # y down
        for a in axs[0]:
            np.testing.assert_allclose(a.get_xlim(), want_x)
            np.testing.assert_allclose(a.get_ylim(), want_y)
            assert a.get_xlabel() == "x (µm)"
        assert colorbars(axs[0, 0].figure)[-1].get_ylabel() == "log1p(counts per 10⁴)"

    def test_sections_3d_rows_without_empty_bands(self, stack):
        axs = st.pl.sections_3d(stack, gene="gene_0", show=False)
        fig = axs[0, 0].figure
        fig.canvas.draw()
        top = axs[0, 0].get_position()
        bottom = axs[1, 0].get_position()
        gap = (top.y0 - bottom.y1) * fig.get_size_inches()[1]
        assert gap < 0.6  # inches: room for tick labels, no band
        assert axs[1, 0].get_xlabel() == "x (µm)" and "y (µm)" in axs[1, 0].get_ylabel()
        assert [t.get_text() for t in axs[1, 0].get_xticklabels() if t.get_text()]  # axes with ticks


def test_matplotlib_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


class TestPageFit:
    """Figures that read in a documentation page column (~75 characters): sizes, colour bars, titles, masks."""

    @staticmethod
    def _extent(artist, fig):
        """Bounding box of ``artist`` as drawn, in inches."""
        return artist.get_window_extent(fig.canvas.get_renderer()).transformed(fig.dpi_scale_trans.inverted())

    @pytest.mark.parametrize("name", NAMES)
    def test_default_width_fits_the_page(self, name, plot_call):
        from stmap.pl._utils import MAX_WIDTH

        out = plot_call(name, show=False)
        fig = np.ravel(np.asarray(out, dtype=object))[0].figure
        assert fig.get_size_inches()[0] <= MAX_WIDTH + 1e-9
        plt.close(fig)

    def test_ctr_two_panels_per_row(self, plot_call):
        axs = plot_call("ctr", show=False)
        fig = axs[0].figure
        fig.canvas.draw()
        x0 = [round(a.get_position().x0, 3) for a in axs]
        assert x0[0] == x0[2] != x0[1]  # the labels panel starts a second row

    @pytest.mark.parametrize("name", ["mapping", "ctr", "density", "gene_maps", "spatial"])
    def test_colour_bars_beside_their_panel(self, name, plot_call):
        """Each colour bar starts just right of its panel as drawn and stays within the panel's height."""
        kw = {"color": "tumor_r01"} if name == "spatial" else {}
        out = plot_call(name, show=False, figsize=(12.0, 3.4) if name == "mapping" else None, **kw)
        fig = np.ravel(np.asarray(out, dtype=object))[0].figure
        fig.canvas.draw()
        cbars = [(a, c) for a in fig.axes for c in a.child_axes if getattr(c, "_colorbar", None) is not None]
        assert cbars and len(cbars) == len(colorbars(fig))
        for panel, cbar in cbars:
            p, c = panel.get_position(), cbar.get_position()  # after equal aspect: the drawn boxes
            gap = (c.x0 - p.x1) * fig.get_size_inches()[0]
            assert 0 <= gap < 0.25  # inches: attached, not at the far side of a wide cell
            assert c.y0 >= p.y0 - 1e-9 and c.y1 <= p.y1 + 1e-9
            assert not self._extent(panel.title, fig).overlaps(self._extent(cbar, fig))
        plt.close(fig)

    def test_density_title_clear_of_the_colour_bar_and_axes_in_units(self, tissue):
        long = "a group with a long name that wraps"
        img = tissue.images[Key.default.density]
        s = sd.SpatialData(images={"d": img.assign_coords(c=[long, "immune"])})
        axs = st.pl.density(s, key="d", show=False)
        fig = axs[0].figure
        fig.canvas.draw()
        for a in axs:
            (cbar,) = a.child_axes
            assert not self._extent(a.title, fig).overlaps(self._extent(cbar, fig))
            assert a.get_xlabel() == "x (coordinate units)"  # no unit recorded: said so, never a bare "x"
        plt.close(fig)

    def test_sections_3d_wraps_into_blocks(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            secs = st.datasets.simulate_stack(6, n_genes=3, seed=1, grid=6, image=False)
            s = st.pp.stack_sections(secs, transforms="warped")
        t = s.tables[Key.table.stack]
        t.layers[Key.imputed_layer()] = np.log1p(t.layers["counts"].toarray())
        axs = st.pl.sections_3d(s, gene="gene_0", show=False)
        assert axs.shape == (2, 6)  # (measured/imputed, sections), whatever the layout
        fig = axs[0, 0].figure
        fig.canvas.draw()
        assert fig.get_size_inches()[0] <= 10.0
        x0 = {round(a.get_position().x0, 3) for a in axs.ravel()}
        y0 = [a.get_position().y0 for a in axs[:, 0]] + [a.get_position().y0 for a in axs[:, 3]]
        assert len(x0) == 3 and y0 == sorted(y0, reverse=True)  # 3 columns; S3-S5 in a second block below
        assert axs[0, 3].get_title() == "S3" and "y (µm)" in axs[1, 3].get_ylabel()
        assert len(colorbars(fig)) == 1  # one colour scale for every panel
        plt.close(fig)

    def test_gene_maps_not_shown_outside_the_spots_reach(self, tissue, names):
        from scipy.spatial.distance import cdist

        axs = st.pl.gene_maps(tissue, genes=names.genes[:1], table_key="spots", show=False)
        xy = st._core.resolve(tissue, "spots").coords
        d = cdist(xy, xy)
        np.fill_diagonal(d, np.inf)
        pitch = np.median(d.min(1))
        im = axs[0, 1].images[-1]  # the map over the H&E
        arr = np.ma.masked_invalid(im.get_array())
        x0, x1, y1, y0 = im.get_extent()
        h, w = arr.shape
        cx = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
        cy = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
        centres = np.column_stack([np.repeat(cx[None], h, 0).ravel(), np.repeat(cy[:, None], w, 1).ravel()])
        dmin = cdist(centres, xy).min(1).reshape(h, w)
        far, clear = dmin > pitch, np.abs(dmin - pitch) > 1e-6 * pitch  # (pixels on the boundary: either)
        assert far.any() and (~far).any()
        np.testing.assert_array_equal(np.ma.getmaskarray(arr)[clear], far[clear])  # transparent beyond one pitch
        plt.close(axs[0, 0].figure)
        axs = st.pl.gene_maps(tissue, genes=names.genes[:1], table_key="spots", mask_outside=False, show=False)
        assert not np.ma.getmaskarray(np.ma.masked_invalid(axs[0, 1].images[-1].get_array())).any()
        plt.close(axs[0, 0].figure)
