"""Real-data readers of :mod:`stmap.datasets` against the shared data folder (``../shared/data``)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import stmap as st

DATA = Path(__file__).parents[2].parent / "shared" / "data"


def _data_root() -> Path:
    if not DATA.is_dir():
        msg = f"../shared/data not found at {DATA} (clone the shared data beside the repository)"
        if os.environ.get("STMAP_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return DATA


@pytest.fixture(scope="session")
def root() -> Path:
    return _data_root()


# one reader call per data set and session; tests that mutate must copy --------------------------------------------
@pytest.fixture(scope="session")
def a1(root):
    return st.datasets.her2st("A1", path=root)


@pytest.fixture(scope="session")
def c1(root):
    return st.datasets.her2st("C1", path=root)


@pytest.fixture(scope="session")
def c2(root):
    return st.datasets.her2st("C2", path=root)


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def _table(sdata):
    (name,) = sdata.tables
    return sdata.tables[name]


def _region(table) -> str:
    return table.uns["spatialdata_attrs"]["region"]


def _centres_um(sdata, shapes_name: str) -> np.ndarray:
    """Circle centres in the 'global' coordinate system (applies the element's transformation)."""
    from spatialdata.transformations import get_transformation

    gdf = sdata.shapes[shapes_name]
    m = get_transformation(gdf, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    xy = np.column_stack([gdf.geometry.x, gdf.geometry.y, np.ones(len(gdf))])
    return (m @ xy.T).T[:, :2]


def _to_pixels(element, xy_um: np.ndarray) -> np.ndarray:
    """Global um -> intrinsic pixel (x, y) of a 2D image/labels element (scale 0)."""
    from spatialdata.transformations import get_transformation

    m = get_transformation(element, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    xy = np.column_stack([xy_um, np.ones(len(xy_um))])
    return (np.linalg.inv(m) @ xy.T).T[:, :2]


def _scale0(element):
    from xarray import DataTree

    return element["scale0"]["image"] if isinstance(element, DataTree) else element


def _assert_common_table(table, n_obs: int, n_vars: int) -> None:
    assert table.shape == (n_obs, n_vars)
    assert sparse.issparse(table.X)
    assert table.X.format == "csr"
    assert (table.layers["counts"] != table.X).nnz == 0
    assert table.var_names.is_unique
    info = table.uns["stmap"]
    for k in ("source", "section"):
        assert k in info


def _assert_uns_equal(a, b, path="uns") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert set(a) == set(b), path
        for k in a:
            _assert_uns_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, np.ndarray | list | tuple):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    else:
        assert a == b or (pd.isna(a) and pd.isna(b)), path


def _assert_elements_equal(x, y) -> None:
    """Two SpatialData objects hold the same elements, tables, transformations and pixels."""
    from spatialdata.transformations import get_transformation
    from xarray import DataTree

    assert x.attrs == y.attrs
    for kind in ("images", "labels", "shapes", "points", "tables"):
        assert set(getattr(x, kind)) == set(getattr(y, kind)), kind
    for kind in ("images", "labels", "shapes", "points"):
        for name, ex in getattr(x, kind).items():
            ey = getattr(y, kind)[name]
            tx, ty = get_transformation(ex, get_all=True), get_transformation(ey, get_all=True)
            assert set(tx) == set(ty), name
            for cs in tx:
                np.testing.assert_allclose(
                    tx[cs].to_affine_matrix(("x", "y"), ("x", "y")), ty[cs].to_affine_matrix(("x", "y"), ("x", "y"))
                )
            if kind in ("images", "labels"):
                if isinstance(ex, DataTree):
                    assert isinstance(ey, DataTree)
                    assert list(ex.children) == list(ey.children)
                    for s in ex.children:
                        np.testing.assert_array_equal(ex[s]["image"].values, ey[s]["image"].values)
                else:
                    np.testing.assert_array_equal(ex.values, ey.values)
                    assert list(ex.coords.get("c", [])) == list(ey.coords.get("c", []))
            elif kind == "shapes":
                assert ex.index.equals(ey.index)
                assert ex.geometry.geom_equals_exact(ey.geometry, tolerance=1e-9).all()
                if "radius" in ex:
                    np.testing.assert_array_equal(ex["radius"].to_numpy(), ey["radius"].to_numpy())
            else:
                pd.testing.assert_frame_equal(
                    ex.compute().reset_index(drop=True), ey.compute().reset_index(drop=True), check_categorical=False
                )
                assert ex.attrs.get("spatialdata_attrs") == ey.attrs.get("spatialdata_attrs")
    for name, ta in x.tables.items():
        tb = y.tables[name]
        assert ta.shape == tb.shape
        assert (sparse.csr_matrix(ta.X) != sparse.csr_matrix(tb.X)).nnz == 0
        for k in ta.layers:
            assert (sparse.csr_matrix(ta.layers[k]) != sparse.csr_matrix(tb.layers[k])).nnz == 0
        pd.testing.assert_frame_equal(ta.obs, tb.obs)
        pd.testing.assert_frame_equal(ta.var, tb.var)
        assert set(ta.obsm) == set(tb.obsm)
        for k in ta.obsm:
            np.testing.assert_array_equal(np.asarray(ta.obsm[k]), np.asarray(tb.obsm[k]))
        _assert_uns_equal(dict(ta.uns), dict(tb.uns))


def _roundtrip(sdata, tmp_path):
    import spatialdata as sd

    out = tmp_path / "x.zarr"
    sdata.write(out)
    back = sd.read_zarr(out)
    _assert_elements_equal(sdata, back)
    return back


# ----------------------------------------------------------------------------------------------------------------------
# HER2ST
# ----------------------------------------------------------------------------------------------------------------------
class TestHer2st:
    def test_a1_counts_match_source(self, a1, root):
        t = a1.tables["A1"]
        _assert_common_table(t, 346, 15045)
        with gzip.open(root / "her2st/counts/A1.tsv.gz", "rt") as fh:
            src = pd.read_csv(fh, sep="\t", index_col=0, nrows=5)
        genes = ["ERBB2", "GAPDH", "KRT19", src.columns[0], src.columns[-1]]
        got = t[src.index, genes].X.toarray()
        np.testing.assert_array_equal(got, src[genes].to_numpy())
        np.testing.assert_array_equal(t[src.index].layers["counts"].toarray(), src.to_numpy())
        assert _region(t) == "A1_spots"

    def test_a1_pathologist_labels(self, a1, root):
        t = a1.tables["A1"]
        lab = pd.read_csv(root / "her2st/pathologist_labels/A1_labeled_coordinates.tsv", sep="\t")
        key = np.rint(lab["x"]).astype(int).astype(str) + "x" + np.rint(lab["y"]).astype(int).astype(str)
        lab = lab.set_index(key)
        got = t.obs["pathologist_label"]
        assert isinstance(got.dtype, pd.CategoricalDtype)
        assert got.notna().all()  # all 346 spots of A1 are labelled
        assert (got.astype(str) == lab.loc[t.obs_names, "label"].to_numpy()).all()
        cancer = lab.loc[t.obs_names, "label"].isin(["invasive cancer", "cancer in situ"]).to_numpy()
        np.testing.assert_array_equal(t.obs["cancer"].to_numpy(), cancer)

    def test_a1_geometry(self, a1):
        from scipy.spatial import cKDTree

        t = a1.tables["A1"]
        mpp = t.uns["stmap"]["mpp"]
        # A1 full-resolution px: ~217 px per 200 um array step
        assert 0.88 < mpp < 0.95
        xy = _centres_um(a1, "A1_spots")
        np.testing.assert_allclose(xy, t.obsm["spatial"] * mpp)
        # legacy ST grid: 200 um centre to centre (spot detection jitter: a few percent)
        nn = cKDTree(xy).query(xy, k=2)[0][:, 1]
        assert abs(np.median(nn) - 200) < 15
        np.testing.assert_array_equal(a1.shapes["A1_spots"]["radius"].to_numpy(), 50.0)

    def test_a1_image(self, a1):
        img = _scale0(a1.images["A1_he"])
        assert img.shape == (3, 2138, 2000)
        assert list(img.coords["c"].values) == ["r", "g", "b"]
        a = img.values
        # the annotation thumbnail (rows 0..534, cols 1500..1999 of the PNG) is masked to background
        assert a[:, :535, 1500:].max() == 0
        # spots land on tissue (background is black): map um -> PNG pixels through the image transformation
        px = _to_pixels(img, _centres_um(a1, "A1_spots"))
        assert (px[:, 0] > 0).all()
        assert (px[:, 0] < 2000).all()
        assert (px[:, 1] > 0).all()
        assert (px[:, 1] < 2138).all()
        vals = a[:, px[:, 1].astype(int), px[:, 0].astype(int)].sum(0)
        assert (vals > 30).all()
        # png px -> full-res px factor 6954 / 2000 = 3.477
        np.testing.assert_allclose(px * 3.477, a1.tables["A1"].obsm["spatial"], rtol=1e-6)

    def test_c1_clusters_and_cancer(self, c1, root):
        t = c1.tables["C1"]
        assert c1.images == {} or len(c1.images) == 0  # C1 has no image in the repository
        _assert_common_table(t, 176, 15557)
        ann = pd.read_csv(root / "her2st/cluster_labels/C1-cluster-annotation.tsv.gz", sep="\t")
        ann.index = ann["x"].astype(str) + "x" + ann["y"].astype(str)
        common = t.obs_names.intersection(ann.index)
        assert len(common) == 174
        np.testing.assert_array_equal(t.obs.loc[common, "cluster"].astype(int), ann.loc[common, "label"])
        # motivation.csv: patient C clusters 2, 3, 4 are cancer (its annotations carry unquoted commas)
        annot = t.obs.dropna(subset=["cluster"]).groupby("cluster", observed=True)["cluster_annotation"].first()
        assert {int(k) for k, v in annot.items() if str(v).startswith("cancer")} == {2, 3, 4}
        assert "immune : APC, B-cell, T-cell" in set(annot.astype(str))
        expect = t.obs["cluster"].astype(float).isin([2, 3, 4]).to_numpy()
        np.testing.assert_array_equal(t.obs["cancer"].to_numpy(), expect)
        assert t.obs["cancer"].dtype == bool
        assert t.obs.loc[t.obs["cluster"] == "6", "cluster_annotation"].eq("unknown").all()
        w = t.obsm["spatial_warped"]
        np.testing.assert_array_equal(
            w[t.obs_names.get_indexer(common)], ann.loc[common, ["warped_x", "warped_y"]].to_numpy()
        )
        assert np.isnan(w).any(axis=1).sum() == 2  # the two spots without a cluster label
        assert t.obs["cluster"].isna().sum() == 2

    def test_c1_pathologist(self, c1, root):
        t = c1.tables["C1"]
        lab = pd.read_csv(root / "her2st/pathologist_labels/C1_labeled_coordinates.tsv", sep="\t")
        lab.index = np.rint(lab["x"]).astype(int).astype(str) + "x" + np.rint(lab["y"]).astype(int).astype(str)
        got = t.obs["pathologist_label"]
        matched = got.notna()
        assert matched.sum() == 176
        assert (got[matched].astype(str) == lab.loc[t.obs_names[matched], "label"].to_numpy()).all()

    def test_c2_image_lazy_and_aligned(self, c2):
        import dask.array as da

        t = c2.tables["C2"]
        mpp = t.uns["stmap"]["mpp"]
        assert 0.66 < mpp < 0.72  # ~290 px per 200 um step
        el = c2.images["C2_he"]
        img = _scale0(el)
        assert img.shape == (3, 9911, 9274)
        assert isinstance(img.data, da.Array)
        px = _to_pixels(img, _centres_um(c2, "C2_spots"))
        np.testing.assert_allclose(px, t.obsm["spatial"], atol=1e-6)  # full-res JPEG: image px == spot px
        coarse = el["scale3"]["image"]
        cpx = _to_pixels(coarse, _centres_um(c2, "C2_spots"))
        a = coarse.values.astype(float).mean(0)
        on = a[cpx[:, 1].astype(int), cpx[:, 0].astype(int)]
        # spots sit on stained tissue: darker than the bright slide background
        assert np.median(on) < np.median(a) - 20

    def test_missing_files(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"C1\.tsv\.gz.*path=.*STMAP_DATA_DIR"):
            st.datasets.her2st("C1", path=tmp_path)

    def test_unknown_section(self, root):
        from stmap._core._errors import StmapInputError

        with pytest.raises(StmapInputError, match="A1, C1"):
            st.datasets.her2st("Z9", path=root)

    def test_deconvolution(self, c1, root):
        df = st.datasets.her2st_deconvolution("C1", path=root)
        assert df.shape[1] == 8
        assert "Epithelial" in df.columns
        np.testing.assert_allclose(df.sum(1), 1, atol=1e-4)
        assert df.index.isin(c1.tables["C1"].obs_names).mean() > 0.95

    def test_roundtrip_a1(self, a1, tmp_path):
        _roundtrip(a1, tmp_path)

    def test_roundtrip_c1(self, c1, tmp_path):
        _roundtrip(c1, tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# other readers
# ----------------------------------------------------------------------------------------------------------------------
class TestSquidpyVisium:
    def test_content(self, root, tmp_path):
        sdata = st.datasets.squidpy_visium(path=root)
        t = sdata.tables["visium_fixture"]
        _assert_common_table(t, 100, 100)
        info = t.uns["stmap"]
        # Space Ranger's spot_diameter_fullres spans a 65 um footprint; the 100 um grid gives the same pixel size
        np.testing.assert_allclose(info["mpp"], 65 / info["spot_diameter_fullres"], rtol=0.02)
        xy = _centres_um(sdata, _region(t))
        for res in ("hires", "lowres"):
            img = _scale0(sdata.images[f"visium_fixture_{res}_image"])
            px = _to_pixels(img, xy)
            np.testing.assert_allclose(px, t.obsm["spatial"] * info["scalefactors"][f"tissue_{res}_scalef"])
        assert _scale0(sdata.images["visium_fixture_hires_image"]).shape == (3, 2000, 2000)
        _roundtrip(sdata, tmp_path)


class TestVisiumDentateGyrus:
    def test_content(self, root, tmp_path):
        sdata = st.datasets.visium_dentate_gyrus(path=root)
        t = sdata.tables["dentate_gyrus"]
        _assert_common_table(t, 624, 634)
        src = pd.read_csv(root / "giotto_visium_dg/visium_DG_expr.txt.gz", sep=" ", nrows=3)
        np.testing.assert_array_equal(t[:, src.index].X.toarray(), src.to_numpy().T)
        locs = np.loadtxt(root / "giotto_visium_dg/visium_DG_locs.txt")
        np.testing.assert_array_equal(t.obsm["spatial"], locs * [1, -1])
        from scipy.spatial import cKDTree

        xy = _centres_um(sdata, _region(t))
        assert abs(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]) - 100) < 1
        px = _to_pixels(
            _scale0(sdata.images["dentate_gyrus_he"]), np.array([[2364.5, 2620.75], [6522.5, 5425.25]]) * 0.73
        )
        np.testing.assert_allclose(px, [[0, 0], [314, 212]], atol=1.5)
        _roundtrip(sdata, tmp_path)


class TestSpacexr:
    @pytest.mark.parametrize(
        ("name", "shape"),
        [("cerebellum_snrnaseq_ref", (475, 384)), ("hippocampus_dropseq_ref", (510, 307))],
    )
    def test_reference(self, root, name, shape):
        adata = st.datasets.spacexr(name, path=root)
        assert adata.shape == shape
        assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)
        assert (adata.layers["counts"] != adata.X).nnz == 0

    @pytest.mark.parametrize(
        ("name", "shape", "diam"),
        [
            ("cerebellum_slideseq", (100, 378), 10),
            ("hippocampus_visium", (313, 276), 55),
            ("hypothalamus_merfish", (750, 134), 10),
        ],
    )
    def test_spatial(self, root, name, shape, diam, tmp_path):
        sdata = st.datasets.spacexr(name, path=root)
        t = sdata.tables[name]
        _assert_common_table(t, *shape)
        np.testing.assert_allclose(_centres_um(sdata, _region(t)), t.obsm["spatial"] * t.uns["stmap"]["mpp"])
        assert (sdata.shapes[_region(t)]["radius"] == diam / 2).all()
        _roundtrip(sdata, tmp_path)

    def test_unknown(self, root):
        with pytest.raises(ValueError, match="hypothalamus_merfish"):
            st.datasets.spacexr("nope", path=root)


class TestStarmapBdtnp:
    def test_starmap(self, root, tmp_path):
        sdata = st.datasets.starmap_cells(path=root)
        t = sdata.tables["well11"]
        assert t.n_obs == 43341
        assert t.obs["tissue"].nunique() == 39
        assert t.obs["maintype"].nunique() == 26
        assert t.obs["subtype"].nunique() == 216
        pts = sdata.points["well11_cells"].compute()
        np.testing.assert_allclose(pts[["x", "y", "z"]].to_numpy(), t.obsm["spatial"])
        assert (pts["maintype"].astype(str).to_numpy() == t.obs["maintype"].astype(str).to_numpy()).all()
        _roundtrip(sdata, tmp_path)

    def test_bdtnp(self, root):
        adata = st.datasets.bdtnp_atlas(path=root)
        assert adata.shape == (3039, 84)
        assert adata.obsm["spatial"].shape == (3039, 3)
        geo = np.loadtxt(root / "novosparc/bdtnp_geometry.txt", skiprows=1, max_rows=5)
        np.testing.assert_allclose(adata.obsm["spatial"][:5], geo)


class TestCosmx:
    def test_content(self, root, tmp_path):
        sdata = st.datasets.cosmx_lung(path=root)
        t = sdata.tables["cells"]
        tx = pd.read_csv(root / "giotto_cosmx_lung/Lung12_tx_file.csv")
        _assert_common_table(t, 120, tx["target"].nunique())
        assert t.X.sum() == (tx["cell_ID"] > 0).sum()
        # one cell's counts equal its transcripts in the source
        c = tx[(tx["fov"] == 2) & (tx["cell_ID"] == tx.loc[tx["fov"] == 2, "cell_ID"].max())]
        row = t[f"fov2_cell{c['cell_ID'].iloc[0]}"]
        vc = c["target"].value_counts()
        np.testing.assert_array_equal(row[:, vc.index].X.toarray().ravel(), vc.to_numpy())
        # transcripts (um) of a cell fall on that cell in its label image (segmentation-edge slack: 95 %)
        pts = sdata.points["transcripts"].compute()
        for f in (2, 3):
            p = pts[(pts["fov"] == f) & (pts["cell_ID"] > 0)]
            lab = _scale0(sdata.labels[f"fov{f}_labels"])
            px = _to_pixels(lab, p[["x", "y"]].to_numpy())
            h, w = lab.shape
            r, cc = np.clip(px[:, 1].astype(int), 0, h - 1), np.clip(px[:, 0].astype(int), 0, w - 1)
            assert (lab.values[r, cc] == p["cell_ID"].to_numpy()).mean() > 0.95
        _roundtrip(sdata, tmp_path)


class TestVizgen:
    def test_content(self, root, tmp_path):
        sdata = st.datasets.vizgen_brain(path=root)
        t = sdata.tables["cells"]
        _assert_common_table(t, 498, 559)
        pts = sdata.points["transcripts"].compute()
        assert len(pts) == 80343
        # every assigned transcript lies in its polygon (same z plane)
        for z in (0, 1):
            p = pts[(pts["z_plane"] == z) & (pts["cell_id"] != "")].iloc[:200]
            poly = sdata.shapes[f"cells_z{z}"].geometry.loc[p["cell_id"]].to_numpy()
            import shapely

            assert shapely.contains_xy(poly, p["x"].to_numpy(), p["y"].to_numpy()).all()
        n_in_z0_cells = pts["cell_id"].isin(sdata.shapes["cells_z0"].index).sum()
        assert t.X.sum() == n_in_z0_cells
        img = _scale0(sdata.images["z0_dapi"])
        px = _to_pixels(img, pts[["x", "y"]].to_numpy())
        assert (px > -1).all()
        assert (px[:, 0] < img.shape[2] + 1).all()
        assert (px[:, 1] < img.shape[1] + 1).all()
        _roundtrip(sdata, tmp_path)
