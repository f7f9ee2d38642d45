"""Users' own data: every tool on Space Ranger / Xenium folders read by spatialdata-io itself, without frame, image
or unit arguments, gives the same result as with those arguments given explicitly, and the inferred micrometres per
pixel match what the platform recorded."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import stmap as st
from stmap._core import resolve

sio = pytest.importorskip("spatialdata_io")

pytestmark = pytest.mark.xdist_group("users_data")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("platforms")
    return {
        "visium": st.datasets.synthetic_visium(root / "visium", n_cells=1200, n_genes=120),
        "hd": st.datasets.synthetic_visium_hd(root / "hd", bin_sizes=(8, 16)),
        "xenium": st.datasets.synthetic_xenium(root / "xenium"),
    }


def read(folders, platform):
    p = folders[platform]
    if platform == "visium":
        return _quiet(
            sio.visium, p, dataset_id="sample", counts_file="filtered_feature_bc_matrix.h5",
            fullres_image_file="tissue_image.tif",
        )  # fmt: skip
    if platform == "hd":
        return _quiet(sio.visium_hd, p, dataset_id="sample", load_segmentations_only=False)
    return _quiet(sio.xenium, p)


def truth(folders, platform):
    return ad.read_h5ad(folders[platform] / st.datasets._platforms.TRUTH_FILE)


def explicit(sdata, cs, um_per_unit):
    """The same object with the unit recorded by hand (what a user had to do before)."""
    sdata.attrs["stmap_coordinate_units"] = {cs: float(um_per_unit)}
    return sdata


# ---------------------------------------------------------------------------------------------------------------------
# what is inferred, per platform
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("platform", "table", "frame", "image", "um_key"),
    [
        ("visium", "table", "sample", "sample_full_image", "um_per_px"),
        ("hd", "square_008um", "sample", "sample_full_image", "um_per_px"),
        ("hd", "square_016um", "sample", "sample_full_image", "um_per_px"),
        ("xenium", "table", "global", "he_image", "pixel_size"),
    ],
)
def test_inferred_frame_image_unit(folders, platform, table, frame, image, um_key):
    sdata = read(folders, platform)
    ctx = resolve(sdata, table)
    assert ctx.coordinate_system == frame
    assert ctx.um_per_unit == pytest.approx(float(truth(folders, platform).uns[um_key]), rel=0.01)
    assert ctx.image().name == image  # full-resolution RGB (Xenium: the aligned H&E, not the DAPI morphology)


def test_visium_positions_in_micrometres(folders):
    sdata, tr = read(folders, "visium"), truth(folders, "visium")
    ctx = resolve(sdata, "table")
    xy_um = ctx.coords * ctx.um_per_unit
    order = tr.obs_names.get_indexer(ctx.adata.obs_names)
    assert (order >= 0).all()
    want = tr.obs[["x_um", "y_um"]].to_numpy()[order]
    np.testing.assert_allclose(xy_um - xy_um.mean(0), want - want.mean(0), atol=1e-6 * np.abs(want).max())


# ---------------------------------------------------------------------------------------------------------------------
# every tool: defaults == explicit arguments
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("platform", "table"), [("visium", "table"), ("hd", "square_008um"), ("xenium", "table")])
def test_histology_features(folders, platform, table):
    a = read(folders, platform)
    ctx = resolve(a, table)
    cs, um, img = ctx.coordinate_system, ctx.um_per_unit, ctx.image().name
    b = read(folders, platform)
    st.pp.histology_features(a, table_key=table, patch_um=30.0)
    mpp = um * resolve(b, table).image(img).pixel_size()  # µm per full-resolution image pixel
    st.pp.histology_features(b, table_key=table, patch_um=30.0, coordinate_system=cs, image_key=img, mpp=mpp)
    np.testing.assert_array_equal(a.tables[table].obsm["X_histology"], b.tables[table].obsm["X_histology"])
    assert a.attrs["stmap_coordinate_units"][cs]["um_per_unit"] == pytest.approx(um)


@pytest.mark.parametrize(("platform", "table"), [("visium", "table"), ("hd", "square_016um"), ("xenium", "table")])
def test_map_cells_and_project_genes(folders, platform, table):
    ref = st.datasets.synthetic_tissue(seed=3, n_cells=800, n_genes=120).tables["cells"]
    a = read(folders, platform)
    cs, um = resolve(a, table).coordinate_system, resolve(a, table).um_per_unit
    b = explicit(read(folders, platform), cs, um)
    for s, kw in ((a, {}), (b, {"coordinate_system": cs})):
        r = ref.copy()
        _quiet(st.tl.map_cells, s, r, table_key=table, **kw)
        _quiet(st.tl.project_genes, s, r, table_key=table, genes=list(ref.var_names[:5]), **kw)
    ta, tb = a.tables[table], b.tables[table]
    np.testing.assert_array_equal(ta.obsm["stmap_cell_type_fractions"], tb.obsm["stmap_cell_type_fractions"])
    np.testing.assert_array_equal(ta.obs["stmap_n_cells"], tb.obs["stmap_n_cells"])
    assert set(ta.obsm) == set(tb.obsm)


@pytest.mark.parametrize(("platform", "table"), [("visium", "table"), ("xenium", "table")])
def test_density(folders, platform, table):
    a = read(folders, platform)
    cs = resolve(a, table).coordinate_system
    b = read(folders, platform)
    st.tl.density(a, table_key=table, bandwidth=60.0)
    st.tl.density(b, table_key=table, bandwidth=60.0, coordinate_system=cs)
    np.testing.assert_array_equal(
        np.asarray(a.images["stmap_density"].data), np.asarray(b.images["stmap_density"].data)
    )
    assert a.tables[table].uns["stmap_density"]["grid"]["coordinate_system"] == cs


def test_ctr_on_visium(folders):
    import torch

    torch.set_num_threads(1)
    a, b = read(folders, "visium"), read(folders, "visium")
    ctx = resolve(a, "table")
    cs, um, img = ctx.coordinate_system, ctx.um_per_unit, ctx.image().name
    b = explicit(b, cs, um)
    tr = truth(folders, "visium")
    fast = {"pretrain_epochs": 1, "warmup_epochs": 1, "epochs": 3, "batch_size": 32, "verbose": False, "n_genes": 50}
    for s, kw, hkw in ((a, {}, {}), (b, {"coordinate_system": cs}, {"coordinate_system": cs, "image_key": img})):
        s.tables["table"].obs["tumor"] = tr.obs["tumor"].reindex(s.tables["table"].obs_names).to_numpy()
        st.pp.histology_features(s, table_key="table", **hkw)
        model = st.tl.train_ctr(s, label_key="tumor", table_key="table", **fast, **kw)
        st.tl.detect_ctr(s, model, table_key="table", **kw)
    np.testing.assert_array_equal(a.tables["table"].obs["stmap_ctr_prob"], b.tables["table"].obs["stmap_ctr_prob"])
    import matplotlib

    matplotlib.use("Agg")
    pa = st.pl.ctr(a, table_key="table", show=False)
    pb = st.pl.ctr(b, table_key="table", coordinate_system=cs, image_key=img, show=False)
    np.testing.assert_array_equal(_pixels(pa[0].figure), _pixels(pb[0].figure))  # over the full-resolution H&E


def test_gene_maps_on_visium(folders):
    import torch

    torch.set_num_threads(1)
    a = read(folders, "visium")
    ctx = resolve(a, "table")
    cs, um, img = ctx.coordinate_system, ctx.um_per_unit, ctx.image().name
    b = explicit(read(folders, "visium"), cs, um)
    genes = list(a.tables["table"].var_names[:2])
    kw = {"genes": genes, "epochs": 1, "width": 4, "depth": 1, "tile_px": 32, "verbose": False, "prior": "idw"}
    st.tl.gene_maps(a, table_key="table", **kw)
    st.tl.gene_maps(b, table_key="table", coordinate_system=cs, image_key=img, **kw)
    key = f"{img}_gene_maps"
    la, lb = (s.tables["table"].uns["stmap_gene_maps"]["loss"] for s in (a, b))
    np.testing.assert_allclose(la, lb, rtol=1e-6)  # the same training, step for step
    # the same maps up to float32 rounding (oneDNN's convolutions may round differently with the memory layout)
    np.testing.assert_allclose(np.asarray(a.images[key].data), np.asarray(b.images[key].data), rtol=1e-5, atol=1e-5)
    # the maps lie on the full-resolution H&E's frame
    assert a.tables["table"].uns["stmap_gene_maps"]["element"] == key


@pytest.mark.parametrize(("platform", "table"), [("visium", "table"), ("hd", "square_016um"), ("xenium", "table")])
def test_plot_draws_in_the_full_resolution_frame(folders, platform, table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sdata = read(folders, platform)
    ax = st.pl.spatial(sdata, table_key=table, image_key=False, show=False)
    xy = resolve(sdata, table).coords
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    assert x0 <= xy[:, 0].min() and x1 >= xy[:, 0].max() and y0 <= xy[:, 1].min() and y1 >= xy[:, 1].max()
    assert (x1 - x0) < 3 * np.ptp(xy[:, 0]) + 200  # not a downscaled or foreign frame
    plt.close("all")


def test_two_samples_in_one_object(tmp_path):
    """Two Visium samples concatenated: per-region tools run per sample; the others say how to select one."""
    import spatialdata as sd

    samples = []
    for i in (1, 2):
        p = st.datasets.synthetic_visium(tmp_path / f"s{i}", seed=i, n_cells=600, dataset_id=f"s{i}")
        s = _quiet(sio.visium, p, dataset_id=f"s{i}", counts_file="filtered_feature_bc_matrix.h5")
        s.tables["table"].obs_names = [f"s{i}_{n}" for n in s.tables["table"].obs_names]
        samples.append(s)
    both = _quiet(sd.concatenate, samples, concatenate_tables=True)
    st.pp.histology_features(both, table_key="table", patch_um=30.0)
    for s in samples:  # each sample's rows equal the sample run alone (own frame, own unit)
        st.pp.histology_features(s, table_key="table", patch_um=30.0)
        got = both.tables["table"][s.tables["table"].obs_names].obsm["X_histology"]
        np.testing.assert_array_equal(got, s.tables["table"].obsm["X_histology"])
    ref = st.datasets.synthetic_tissue(seed=3, n_cells=400, n_genes=120).tables["cells"]
    with pytest.raises(st.StmapInputError, match=r"filter_by_coordinate_system\('s1'"):
        st.tl.map_cells(both, ref.copy(), table_key="table")
    one = both.filter_by_coordinate_system("s1", filter_tables=True)  # what the message says to do
    _quiet(st.tl.map_cells, one, ref.copy(), table_key="table")
    assert one.tables["table"].obsm["stmap_cell_type_fractions"].shape[0] == samples[0].tables["table"].n_obs


def test_visium_capture_spot_and_second_call(folders):
    """Space Ranger circles span 65 µm; tools use the 55 µm capture spot. Tables a tool made do not get in the way."""
    sdata = read(folders, "visium")
    ctx = resolve(sdata, "table")
    np.testing.assert_allclose(ctx.diameters * ctx.um_per_unit, 55.0, rtol=1e-9)
    ref = st.datasets.synthetic_tissue(seed=3, n_cells=800, n_genes=120).tables["cells"]
    _quiet(st.tl.map_cells, sdata, ref.copy())
    assert set(sdata.tables) == {"table", "table_cells"}
    assert sdata.tables["table_cells"].uns["stmap_derived"] == {"tool": "stmap_mapping", "table": "table"}
    _quiet(st.tl.map_cells, sdata, ref.copy())  # no table_key: the one table not made by stmap
    # placed cells lie inside their 55 µm capture spot
    cells = sdata.tables["table_cells"]
    centre = resolve(sdata, "table").coords[sdata.tables["table"].obs_names.get_indexer(cells.obs["spot_id"])]
    dist_um = np.linalg.norm(np.asarray(cells.obsm["spatial"]) - centre, axis=1) * ctx.um_per_unit
    assert dist_um.max() <= 27.5 + 1e-6


@pytest.mark.parametrize(
    ("platform", "table", "um_key"), [("visium", "table", "um_per_px"), ("xenium", "table", "pixel_size")]
)
def test_coordinate_units(folders, platform, table, um_key):
    sdata = read(folders, platform)
    um = st.pp.coordinate_units(sdata, table)
    assert um == pytest.approx(float(truth(folders, platform).uns[um_key]), rel=1e-9)
    cs = resolve(sdata, table).coordinate_system
    assert sdata.attrs["stmap_coordinate_units"][cs]["um_per_unit"] == pytest.approx(um)


def _pixels(fig) -> np.ndarray:
    """The rendered RGBA pixels of a matplotlib figure (then closed)."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return out


@pytest.mark.parametrize(("platform", "table"), [("hd", "square_008um"), ("hd", "square_016um"), ("xenium", "table")])
def test_plots_default_equal_explicit(folders, platform, table):
    """pl.mapping and pl.density draw the same figure with and without the frame / image arguments."""
    import matplotlib

    matplotlib.use("Agg")
    ref = st.datasets.synthetic_tissue(seed=3, n_cells=800, n_genes=120).tables["cells"]
    a = read(folders, platform)
    ctx = resolve(a, table)
    cs, img = ctx.coordinate_system, ctx.image().name
    b = explicit(read(folders, platform), cs, ctx.um_per_unit)
    figs = []
    for s, kw in ((a, {}), (b, {"coordinate_system": cs})):
        _quiet(st.tl.map_cells, s, ref.copy(), table_key=table, **kw)
        st.tl.density(s, table_key=table, groupby=None, bandwidth=80.0, **kw)
        pk = {"image_key": img, **kw} if kw else {}
        f1 = _quiet(st.pl.mapping, s, table_key=table, cell_types=["tumor"], cells=False, show=False, **pk)[0].figure
        f2 = st.pl.density(s, show=False, **kw)[0].figure
        figs.append((_pixels(f1), _pixels(f2)))
    for x, y in zip(figs[0], figs[1], strict=True):
        np.testing.assert_array_equal(x, y)


def test_stack_two_reader_made_sections(tmp_path):
    """Serial Visium sections from Space Ranger folders stack without frame or unit arguments, in micrometres."""
    secs, secs_explicit = {}, {}
    for name in ("A", "B"):  # the same tissue twice (seed), as two sections 10 µm apart
        p = st.datasets.synthetic_visium(tmp_path / name, seed=4, n_cells=600, dataset_id=name)
        truth_um = float(ad.read_h5ad(p / st.datasets._platforms.TRUTH_FILE).uns["um_per_px"])
        secs[name] = _quiet(sio.visium, p, dataset_id=name, counts_file="filtered_feature_bc_matrix.h5")
        secs_explicit[name] = explicit(
            _quiet(sio.visium, p, dataset_id=name, counts_file="filtered_feature_bc_matrix.h5"), name, truth_um
        )
    a = st.pp.stack_sections(secs, z=[0.0, 10.0])
    b = st.pp.stack_sections(secs_explicit, z=[0.0, 10.0], coordinate_system=None, spot_diameter=55.0)
    ta, tb = a.tables["stack"], b.tables["stack"]
    np.testing.assert_allclose(ta.obsm["spatial_3d"], tb.obsm["spatial_3d"], rtol=1e-9)
    np.testing.assert_allclose(ta.obs["spot_radius_um"], 27.5, rtol=1e-9)  # the 55 µm capture spot
    xy = ta.obsm["spatial_3d"]
    # in micrometres: neighbouring spots of one section are 100 µm apart (the Visium pitch)
    from scipy.spatial import cKDTree

    one = xy[ta.obs["section"].astype(str).to_numpy() == "A", :2]
    nn = cKDTree(one).query(one, k=2)[0][:, 1]
    assert np.median(nn) == pytest.approx(100.0, rel=1e-6)


def test_register_array_onto_reader_frame(folders):
    """An array of coordinates registered onto a reader-made element: the element's own frame, no 'global' needed."""
    from spatialdata.transformations import get_transformation

    sdata = read(folders, "visium")
    xy = resolve(sdata, "table").coords
    th = np.deg2rad(10.0)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = (xy - xy.mean(0)) @ rot.T + xy.mean(0) + 40.0
    st.pp.register(sdata, moved, xy, kind="rigid", elements=["sample"], table_key="table")
    m = get_transformation(sdata["sample"], to_coordinate_system="aligned").to_affine_matrix(("x", "y"), ("x", "y"))
    back = xy @ np.asarray(m)[:2, :2].T + np.asarray(m)[:2, 2]  # the element's points mapped like `moved` onto `xy`
    want = (xy - xy.mean(0)) @ np.linalg.inv(rot).T
    np.testing.assert_allclose(back - back.mean(0), want - want.mean(0), atol=1e-6 * np.abs(xy).max())
