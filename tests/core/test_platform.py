"""Platform defaults: the coordinate system, image and unit a tool picks on spatialdata-io objects.

The Visium case reads the real Space Ranger output in ``../shared/data/squidpy_tests/visium_fixture`` with
spatialdata-io itself; the other cases build the readers' layouts in memory (the reader-made Visium HD / Xenium
folders are tested in ``tests/datasets/test_platforms.py``).
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from _helpers import shared_data_dir

import stmap as st
from stmap._core import StmapInputError, resolve
from stmap._core._platform import VISIUM_SPOT_FULLRES_UM, bin_size_um, infer_units

sio = pytest.importorskip("spatialdata_io")


def _read_fixture():
    path = shared_data_dir() / "squidpy_tests" / "visium_fixture"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sio.visium(path, dataset_id="fx", counts_file="filtered_feature_bc_matrix.h5")
    sf = json.loads((path / "spatial" / "scalefactors_json.json").read_text())
    return sdata, sf


def _snapshot(sdata):
    t = sdata.tables["table"]
    return (
        copy.deepcopy(dict(sdata.attrs)),
        sorted(sdata.images),
        sorted(t.obs.columns),
        sorted(t.obsm.keys()),
        sorted(t.uns.keys()),
    )


@pytest.fixture(scope="module")
def visium():
    return _read_fixture()


class TestVisiumDefaults:
    def test_frame_image_and_unit(self, visium):
        sdata, sf = visium
        ctx = resolve(sdata, "table")
        assert ctx.coordinate_system == "fx"  # the spots' identity frame, not a downscaled one
        # Space Ranger: spot_diameter_fullres spans 65 µm
        assert ctx.um_per_unit == pytest.approx(VISIUM_SPOT_FULLRES_UM / sf["spot_diameter_fullres"], rel=1e-12)
        img = ctx.image()
        assert img.name == "fx_hires_image"  # full > hires > lowres; there is no full-resolution image here
        assert img.pixel_size() == pytest.approx(1 / sf["tissue_hires_scalef"], rel=1e-6)

    def test_unit_agrees_with_spot_pitch(self, visium):
        from stmap._core._platform import _visium_pitch_um_per_unit

        sdata, sf = visium
        pitch = _visium_pitch_um_per_unit(sdata, "fx", sdata["fx"])
        assert pitch == pytest.approx(VISIUM_SPOT_FULLRES_UM / sf["spot_diameter_fullres"], rel=0.01)

    def test_histology_features_same_as_explicit(self, visium):
        sdata, sf = visium
        a, b = _read_fixture()[0], _read_fixture()[0]
        st.pp.histology_features(a, table_key="table", patch_um=65.0)
        st.pp.histology_features(
            b,
            table_key="table",
            patch_um=65.0,
            coordinate_system="fx",
            image_key="fx_hires_image",
            mpp=VISIUM_SPOT_FULLRES_UM / sf["spot_diameter_fullres"],
        )
        np.testing.assert_array_equal(a.tables["table"].obsm["X_histology"], b.tables["table"].obsm["X_histology"])
        # the inferred unit is recorded once, for every later tool
        rec = a.attrs["stmap_coordinate_units"]["fx"]
        assert rec["um_per_unit"] == pytest.approx(VISIUM_SPOT_FULLRES_UM / sf["spot_diameter_fullres"])
        assert "visium" in rec["source"]

    def test_recorded_unit_round_trips_and_wins(self, visium, tmp_path):
        from spatialdata import read_zarr

        sdata = _read_fixture()[0]
        st.pp.histology_features(sdata, table_key="table", patch_um=65.0)
        sdata.write(tmp_path / "v.zarr")
        back = read_zarr(tmp_path / "v.zarr")
        info = infer_units(back, "fx")
        assert info is not None and info.recorded
        assert info.um_per_unit == pytest.approx(sdata.attrs["stmap_coordinate_units"]["fx"]["um_per_unit"])
        np.testing.assert_array_equal(
            back.tables["table"].obsm["X_histology"], sdata.tables["table"].obsm["X_histology"]
        )

    def test_density_and_plot_without_frame(self, visium):
        import matplotlib

        matplotlib.use("Agg")
        sdata = _read_fixture()[0]
        explicit = _read_fixture()[0]
        st.tl.density(sdata, table_key="table", bandwidth=150.0)
        st.tl.density(explicit, table_key="table", bandwidth=150.0, coordinate_system="fx")
        np.testing.assert_array_equal(
            np.asarray(sdata.images["stmap_density"].data), np.asarray(explicit.images["stmap_density"].data)
        )
        assert sdata.tables["table"].uns["stmap_density"]["grid"]["coordinate_system"] == "fx"
        ax = st.pl.spatial(sdata, table_key="table", image_key=False, show=False)
        xy = resolve(sdata, "table").coords
        x0, x1 = sorted(ax.get_xlim())
        assert x0 <= xy[:, 0].min() and x1 >= xy[:, 0].max()  # drawn in full-resolution pixels
        matplotlib.pyplot.close("all")

    def test_contradicting_units_raise_before_writing(self):
        sdata = _read_fixture()[0]
        sdata["fx"]["radius"] = sdata["fx"]["radius"] * 1.3  # spot diameter no longer matches the 100 µm pitch
        before = _snapshot(sdata)
        with pytest.raises(StmapInputError, match="contradict"):
            st.pp.histology_features(sdata, table_key="table")
        assert _snapshot(sdata) == before

    def test_mpp_overrides(self):
        sdata = _read_fixture()[0]
        sdata["fx"]["radius"] = sdata["fx"]["radius"] * 1.3
        st.pp.histology_features(sdata, table_key="table", mpp=0.5)  # the user's number, no inference needed
        assert sdata.tables["table"].uns["X_histology"]["mpp"][0] > 0

    def test_explicit_downscaled_frame(self, visium):
        sdata, sf = visium
        ctx = resolve(sdata, "table", coordinate_system="fx_downscaled_hires")
        assert ctx.um_per_unit == pytest.approx(
            VISIUM_SPOT_FULLRES_UM / sf["spot_diameter_fullres"] / sf["tissue_hires_scalef"], rel=1e-9
        )
        assert ctx.image().name == "fx_hires_image"


def _square_bins(n: int, side_px: float, name: str, cs: dict):
    from geopandas import GeoDataFrame
    from shapely.geometry import box
    from spatialdata.models import ShapesModel

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50 * side_px, size=(n, 2))
    g = GeoDataFrame(geometry=[box(x - side_px / 2, y - side_px / 2, x + side_px / 2, y + side_px / 2) for x, y in xy])
    return ShapesModel.parse(g, transformations=cs)


def _hd_like(bins=(8, 16), mpp=0.2737):
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import TableModel
    from spatialdata.transformations import Identity, Scale

    cs = {"hd": Identity(), "hd_downscaled_hires": Scale([0.08, 0.08], axes=("x", "y"))}
    shapes, tables = {}, {}
    for b in bins:
        name = f"hd_square_{b:03d}um"
        shapes[name] = _square_bins(40, b / mpp, name, cs)
        a = ad.AnnData(np.ones((40, 3), dtype=np.float32))
        a.obs["region"] = pd.Categorical([name] * 40)
        a.obs["location_id"] = np.arange(40)
        tables[f"square_{b:03d}um"] = TableModel.parse(a, region=name, region_key="region", instance_key="location_id")
    sdata = SpatialData(shapes=shapes, tables=tables)
    sdata.attrs["spatialdata_io_reader"] = "visium_hd"
    return sdata


class TestOtherLayouts:
    def test_visium_hd_bins(self):
        sdata = _hd_like()
        for b in (8, 16):
            ctx = resolve(sdata, f"square_{b:03d}um")
            assert ctx.coordinate_system == "hd"
            assert ctx.um_per_unit == pytest.approx(0.2737, rel=1e-9)
        assert bin_size_um("x_square_002um") == 2 and bin_size_um("cells") is None

    def test_visium_hd_mixed_bins_in_one_table(self):
        from stmap._core._regions import resolve_regions

        sdata = _hd_like()
        t = sdata.tables["square_008um"]
        import anndata as ad
        from spatialdata.models import TableModel

        both = ad.concat([t, sdata.tables["square_016um"]], index_unique="-")
        both.obs["region"] = pd.Categorical(both.obs["region"].astype(str))
        del both.uns
        sdata.tables["mixed"] = TableModel.parse(
            both, region=["hd_square_008um", "hd_square_016um"], region_key="region", instance_key="location_id"
        )
        with pytest.raises(StmapInputError, match="several sizes"):
            resolve_regions(sdata, "mixed")
        with pytest.raises(StmapInputError, match="filter_by_coordinate_system"):
            resolve(sdata, "mixed")  # one sample at a time, and how to select it

    def test_xenium_like_global_pixels(self):
        import anndata as ad
        from spatialdata import SpatialData
        from spatialdata.models import Labels2DModel, PointsModel, TableModel
        from spatialdata.transformations import Identity, Scale

        px = 0.2125
        lab = np.zeros((60, 80), dtype=np.int32)
        lab[10:20, 10:20], lab[30:40, 40:55] = 1, 2
        labels = Labels2DModel.parse(lab, dims=("y", "x"), transformations={"global": Identity()})
        pts = PointsModel.parse(
            pd.DataFrame({"x": [1.0, 5.0], "y": [2.0, 3.0], "feature_name": ["a", "b"]}),
            transformations={"global": Scale([1 / px, 1 / px], axes=("x", "y"))},
        )
        a = ad.AnnData(np.ones((2, 2), dtype=np.float32))
        a.obs["region"] = pd.Categorical(["cell_labels"] * 2)
        a.obs["cell_labels"] = [1, 2]
        table = TableModel.parse(a, region="cell_labels", region_key="region", instance_key="cell_labels")
        sdata = SpatialData(labels={"cell_labels": labels}, points={"transcripts": pts}, tables={"table": table})
        sdata.attrs["spatialdata_io_reader"] = "xenium"
        ctx = resolve(sdata)
        assert ctx.coordinate_system == "global"
        assert ctx.um_per_unit == pytest.approx(px, rel=1e-12)
        np.testing.assert_allclose(ctx.coords, [[15.0, 15.0], [47.5, 35.0]])  # label centroids (pixel i spans [i, i+1])

    def test_tie_between_frames_raises_listing_choices(self):
        from spatialdata.transformations import Scale

        sdata = _hd_like(bins=(8,))
        el = sdata["hd_square_008um"]
        from spatialdata.transformations import set_transformation

        set_transformation(
            el,
            {"a": Scale([2.0, 2.0], axes=("x", "y")), "b": Scale([2.0, 2.0], axes=("x", "y"))},
            set_all=True,
        )
        with pytest.raises(StmapInputError, match="'a'.*'b'|coordinate_system="):
            resolve(sdata, "square_008um")
        assert resolve(sdata, "square_008um", coordinate_system="b").coordinate_system == "b"

    def test_unknown_unit_names_the_fix(self, small_sdata):
        sdata, _ = small_sdata
        sdata.attrs.pop("stmap_coordinate_units")
        ctx = resolve(sdata)
        assert ctx.um_per_unit is None
        with pytest.raises(StmapInputError, match="mpp="):
            ctx.require_um_per_unit()
