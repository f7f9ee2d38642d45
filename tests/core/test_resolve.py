from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from _helpers import make_small_sdata

from stmap._core import StmapInputError, affine_matrix, make_image, make_table, resolve
from stmap._core._constants import Key


def _snapshot(sdata):
    t = sdata.tables["table"]
    return (
        sorted(sdata.tables.keys()),
        sorted(sdata.images.keys()),
        list(t.obs.columns),
        list(t.obsm.keys()),
        list(t.uns.keys()),
        t.X.copy(),
    )


def _assert_unchanged(sdata, snap):
    now = _snapshot(sdata)
    assert now[:5] == snap[:5]
    assert (now[5] != snap[5]).nnz == 0


class TestResolve:
    def test_coords_follow_table_rows(self, small_sdata):
        sdata, truth = small_sdata
        ctx = resolve(sdata)
        assert ctx.table_key == "table" and ctx.region == "spots" and ctx.element_type == "shapes"
        assert ctx.coordinate_system == "global"
        # table rows are a permutation of the shapes: coords must follow the table, via the instance key
        np.testing.assert_allclose(ctx.coords, truth["xy"][truth["perm"]])
        np.testing.assert_allclose(ctx.diameters, 55.0)
        assert ctx.um_per_unit == 1.0

    def test_transformed_element(self):
        sdata, truth = make_small_sdata()
        # express the spots in a coordinate system scaled by 3 and shifted: coords and diameters follow
        from spatialdata.transformations import set_transformation

        from stmap._core._elements import to_transformation

        set_transformation(sdata["spots"], to_transformation(affine_matrix(3.0, (5, -7))), "other")
        ctx = resolve(sdata, coordinate_system="other")
        np.testing.assert_allclose(ctx.coords, truth["xy"][truth["perm"]] * 3 + [5, -7])
        np.testing.assert_allclose(ctx.diameters, 55.0 * 3)
        assert ctx.um_per_unit is None  # the unit of "other" was never recorded
        with pytest.raises(StmapInputError, match="mpp="):
            ctx.require_um_per_unit()

    def test_unknown_table_lists_available(self, small_sdata):
        sdata, _ = small_sdata
        with pytest.raises(KeyError, match=r"Table 'nope' not found.*'table'"):
            resolve(sdata, table_key="nope")

    def test_several_tables_need_key(self, small_sdata):
        sdata, _ = small_sdata
        sdata.tables["other"] = make_table(ad.AnnData(np.ones((2, 2))), region=None)
        with pytest.raises(StmapInputError, match="several tables"):
            resolve(sdata)
        with pytest.raises(StmapInputError, match="annotates no element"):
            resolve(sdata, table_key="other")
        assert resolve(sdata, table_key="table").region == "spots"

    def test_no_tables(self, small_sdata):
        sdata, _ = small_sdata
        del sdata.tables["table"]
        with pytest.raises(StmapInputError, match="no tables"):
            resolve(sdata)

    def test_empty_table(self, small_sdata):
        sdata, _ = small_sdata
        sdata.tables["table"]._inplace_subset_var(np.zeros(sdata.tables["table"].n_vars, dtype=bool))
        with pytest.raises(StmapInputError, match="empty"):
            resolve(sdata)
        with pytest.raises(StmapInputError, match="empty"):
            resolve(ad.AnnData(np.zeros((0, 3)), obsm={"spatial": np.zeros((0, 2))}))

    def test_unknown_coordinate_system(self, small_sdata):
        sdata, _ = small_sdata
        snap = _snapshot(sdata)
        with pytest.raises(KeyError, match=r"Coordinate system 'aligned' not found.*'global'"):
            resolve(sdata, coordinate_system="aligned")
        _assert_unchanged(sdata, snap)

    def test_instances_missing_from_element(self, small_sdata):
        sdata, _ = small_sdata
        t = sdata.tables["table"]
        t.obs[Key.obs.instance] = t.obs[Key.obs.instance].astype(str).to_numpy()
        t.obs.iloc[0, t.obs.columns.get_loc(Key.obs.instance)] = "ghost"
        with pytest.raises(StmapInputError, match="ghost"):
            _ = resolve(sdata).coords

    def test_count_validation(self, small_sdata):
        sdata, _ = small_sdata
        t = sdata.tables["table"]
        t.X = t.X.toarray()
        t.X[0, 0] = np.nan
        with pytest.raises(StmapInputError, match="NaN"):
            resolve(sdata, require_counts=True)
        t.X[0, 0] = -1
        with pytest.raises(StmapInputError, match="negative"):
            resolve(sdata, require_counts=True)

    def test_not_spatial(self):
        with pytest.raises(TypeError, match="SpatialData or an anndata.AnnData"):
            resolve(np.zeros((3, 3)))


class TestResolveAnnData:
    def test_plain_anndata(self):
        a = ad.AnnData(np.ones((4, 3)), obsm={"spatial": np.arange(8.0).reshape(4, 2)})
        ctx = resolve(a)
        assert ctx.sdata is None and ctx.table_key is None
        np.testing.assert_array_equal(ctx.coords, np.arange(8.0).reshape(4, 2))
        assert ctx.diameters is None

    def test_missing_coordinates(self):
        a = ad.AnnData(np.ones((4, 3)), obsm={"X_pca": np.zeros((4, 2))})
        with pytest.raises(KeyError, match=r"'spatial' not found in adata.obsm. Available: 'X_pca'"):
            resolve(a)

    def test_nan_coordinates(self):
        xy = np.arange(8.0).reshape(4, 2)
        xy[2, 1] = np.nan
        a = ad.AnnData(np.ones((4, 3)), obsm={"spatial": xy})
        with pytest.raises(StmapInputError, match="1 observations with NaN"):
            resolve(a)

    def test_legacy_image(self):
        rng = np.random.default_rng(0)
        hires = rng.random((50, 40, 3)).astype(np.float32)
        a = ad.AnnData(np.ones((3, 2)), obsm={"spatial": np.array([[10.0, 20], [100, 150], [60, 60]])})
        a.uns["spatial"] = {
            "lib": {
                "images": {"hires": hires},
                "scalefactors": {"tissue_hires_scalef": 0.25, "spot_diameter_fullres": 18.0},
            }
        }
        ctx = resolve(a)
        np.testing.assert_allclose(ctx.diameters, 18.0)
        img = ctx.image()
        assert img.levels[0].shape == (3, 50, 40)
        # full-res point (100, 150) is hires pixel (25, 37.5)
        np.testing.assert_allclose(img.to_pixels(np.array([[100.0, 150.0]])), [[25.0, 37.5]])
        a.uns["spatial"]["lib"]["scalefactors"]["tissue_hires_scalef"] = 100.0  # image now covers <1 full-res px
        with pytest.raises(StmapInputError, match="not aligned"):
            resolve(a).image()


class TestResolveImage:
    def test_levels_and_transforms(self, small_sdata):
        sdata, truth = small_sdata
        img = resolve(sdata).image()
        assert img.name == "he" and len(img.levels) == 2
        assert img.pixel_size(0) == pytest.approx(truth["mpp"]) and img.pixel_size(1) == pytest.approx(2 * truth["mpp"])
        xmin, xmax, ymin, ymax = img.extent(0)
        assert (xmin, ymin) == pytest.approx(truth["offset"])
        assert xmax == pytest.approx(truth["offset"][0] + 160 * truth["mpp"])
        np.testing.assert_allclose(img.to_pixels(np.array([truth["offset"]]), level=1), [[0.0, 0.0]])
        assert img.level_for(2 * truth["mpp"]) == 1 and img.level_for(truth["mpp"]) == 0

    def test_no_image(self):
        sdata, _ = make_small_sdata(with_image=False)
        with pytest.raises(StmapInputError, match="no images"):
            resolve(sdata).image()

    def test_unknown_image(self, small_sdata):
        sdata, _ = small_sdata
        with pytest.raises(KeyError, match=r"Image 'hne' not found.*'he'"):
            resolve(sdata).image("hne")

    def test_misaligned_image(self, small_sdata):
        sdata, truth = small_sdata
        # the same pixels placed 10 mm away: no spot falls on it
        sdata.images["far"] = make_image(truth["img"], transform=affine_matrix(truth["mpp"], (1e4, 1e4)))
        with pytest.raises(StmapInputError, match="not aligned to the spots"):
            resolve(sdata).image("far")
        with pytest.raises(StmapInputError, match="Several images"):
            resolve(sdata).image()

    def test_default_prefers_the_one_rgb_image_over_tool_results(self, small_sdata):
        sdata, truth = small_sdata
        he = resolve(sdata).image().name
        # a float single-channel result (e.g. a density) in the same frame does not make the H&E ambiguous
        maps = np.zeros((1, *np.asarray(truth["img"]).shape[-2:]), dtype=np.float32)
        sdata.images["density"] = make_image(maps, transform=affine_matrix(truth["mpp"]))
        assert resolve(sdata).image().name == he


def test_roundtrip_keeps_units_and_alignment(small_sdata, tmp_path):
    sdata, truth = small_sdata
    sdata.write(tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    ctx = resolve(back)
    assert ctx.um_per_unit == 1.0
    np.testing.assert_allclose(ctx.coords, truth["xy"][truth["perm"]])
    assert isinstance(back.tables["table"].obs, pd.DataFrame)


def _bad_calls():
    return {
        "unknown table": lambda s: resolve(s, table_key="nope"),
        "unknown coordinate system": lambda s: resolve(s, coordinate_system="aligned"),
        "unknown image": lambda s: resolve(s).image("hne"),
        "unknown unit": lambda s: resolve(s, coordinate_system="px").require_um_per_unit(),
        "misaligned image": lambda s: resolve(s, coordinate_system="px").image(),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_errors_leave_object_unchanged(case):
    from spatialdata.transformations import get_transformation, set_transformation

    from stmap._core._elements import to_transformation

    sdata, _ = make_small_sdata()
    # a second coordinate system where the spots are scaled but the image is not: misaligned, and of unknown unit
    set_transformation(sdata["spots"], to_transformation(affine_matrix(50.0)), "px")
    set_transformation(sdata["he"], to_transformation(affine_matrix(1.0)), "px")
    snap = _snapshot(sdata)
    transforms = {n: dict(get_transformation(sdata[n], get_all=True)) for n in ("spots", "he")}
    attrs = dict(sdata.attrs)
    with pytest.raises((StmapInputError, KeyError)):
        _bad_calls()[case](sdata)
    _assert_unchanged(sdata, snap)
    assert dict(sdata.attrs) == attrs
    for n in transforms:
        now = get_transformation(sdata[n], get_all=True)
        assert set(now) == set(transforms[n])
        for cs, t in now.items():
            axes = ("x", "y")
            before = transforms[n][cs].to_affine_matrix(axes, axes)
            np.testing.assert_array_equal(t.to_affine_matrix(axes, axes), before)
