"""Synthetic platform folders, read by the real spatialdata-io readers, against the known answer they record."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import stmap as st
from stmap._core._errors import StmapInputError

sio = pytest.importorskip("spatialdata_io")

TRUTH = "stmap_truth.h5ad"
REL = 1e-6  # positions: float64 written and read back; 65 / (65 / mpp) and b / (b / mpp) differ from mpp by ulps


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


# spatialdata's notice when the Visium reader builds its table; it concerns the reader's code, not the files
_READER_NOTICES = ("Converting `region_key: region` to categorical dtype",)


def _read(reader, *args, **kwargs):
    """Read with the real reader; any warning (e.g. a cell-id mismatch, a missing image) is a format error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdata = reader(*args, **kwargs)
    unexpected = [str(w.message) for w in caught if not str(w.message).startswith(_READER_NOTICES)]
    assert not unexpected, unexpected
    return sdata


def _affine(element, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    return get_transformation(element, to_coordinate_system=cs).to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )


def _apply(M: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ M[:2, :2].T + M[:2, 2]


def _image_yxc(element) -> np.ndarray:
    from xarray import DataTree

    arr = element["scale0"]["image"] if isinstance(element, DataTree) else element
    return np.moveaxis(np.asarray(arr.values), 0, -1)


def _round_trip(sdata, tmp_path: Path) -> None:
    import spatialdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(tmp_path / "rt.zarr")
        back = spatialdata.read_zarr(tmp_path / "rt.zarr")
    assert back.attrs == sdata.attrs
    assert set(back.tables) == set(sdata.tables)
    for name, table in sdata.tables.items():
        got = back.tables[name]
        np.testing.assert_array_equal(_dense(got.X), _dense(table.X))
        pd.testing.assert_frame_equal(got.obs, table.obs, check_categorical=False)
        assert got.uns["spatialdata_attrs"] == table.uns["spatialdata_attrs"]
        np.testing.assert_array_equal(np.asarray(got.obsm["spatial"]), np.asarray(table.obsm["spatial"]))
    for kind in ("images", "labels", "shapes", "points"):
        assert set(getattr(back, kind)) == set(getattr(sdata, kind))


# --------------------------------------------------------------------------------------------------------------------
# Visium
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def visium(tmp_path_factory):
    path = st.datasets.synthetic_visium(tmp_path_factory.mktemp("visium") / "outs", seed=0, n_cells=1000)
    sdata = _read(
        sio.visium,
        path,
        dataset_id="sample",
        counts_file="filtered_feature_bc_matrix.h5",
        fullres_image_file="tissue_image.tif",
    )
    return path, sdata, ad.read_h5ad(path / TRUTH)


class TestSyntheticVisium:
    def test_counts_are_the_sum_of_the_cells_in_each_spot(self, visium):
        _, sdata, truth = visium
        table = sdata["table"]
        assert list(table.obs_names) == list(truth.obs_names)
        assert list(table.var_names) == list(truth.var_names)
        np.testing.assert_array_equal(_dense(table.X), _dense(truth.X))
        # independently: the truth's spot counts are the sums of its cells' counts within 27.5 um of the centre
        cells, C = truth.uns["cells"], sparse.csr_matrix(truth.uns["cell_counts"])
        xy = cells[["x_um", "y_um"]].to_numpy()
        d = np.linalg.norm(xy[:, None, :] - truth.obsm["spatial_um"][None, :, :], axis=2)
        inside = d <= 27.5
        assert inside.sum(axis=1).max() <= 1
        np.testing.assert_array_equal(_dense(table.X), _dense(sparse.csr_matrix(inside.T.astype(float)) @ C))
        np.testing.assert_array_equal(truth.obs["n_cells"].to_numpy(), inside.sum(axis=0))
        member = np.where(inside.any(axis=1), np.asarray(truth.obs_names)[inside.argmax(axis=1)], "")
        np.testing.assert_array_equal(cells["spot"].to_numpy(), member)
        # composition by cell type
        types = cells["cell_type"].to_numpy()
        for t in truth.obsm["cell_type_counts"].columns:
            np.testing.assert_array_equal(truth.obsm["cell_type_counts"][t].to_numpy(), inside[types == t].sum(axis=0))
        assert truth.obs["tumor"].any() and not truth.obs["tumor"].all()

    def test_spot_centres_and_um_per_px(self, visium):
        path, sdata, truth = visium
        scalef = json.loads((path / "spatial" / "scalefactors_json.json").read_text())
        um_per_px = 65.0 / scalef["spot_diameter_fullres"]
        assert um_per_px == pytest.approx(truth.uns["um_per_px"], rel=1e-12)
        assert truth.uns["um_per_px"] == 0.8
        circles = sdata["sample"]
        np.testing.assert_allclose(2 * circles["radius"].to_numpy(), scalef["spot_diameter_fullres"], rtol=1e-12)
        table = sdata["table"]
        iid = table.obs["spot_id"].to_numpy()
        xy_px = np.column_stack([circles.geometry.x, circles.geometry.y])[iid]
        np.testing.assert_allclose(
            _apply(_affine(circles, "sample"), xy_px) * um_per_px, truth.obsm["spatial_um"], rtol=REL
        )
        np.testing.assert_allclose(np.asarray(table.obsm["spatial"]) * um_per_px, truth.obsm["spatial_um"], rtol=REL)
        # the Visium lattice: 100 um along a row, rows 100 sqrt(3) / 2 apart
        x0, y0 = truth.uns["grid_origin_um"]
        np.testing.assert_allclose(truth.obs["x_um"], x0 + 50.0 * table.obs["array_col"].to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(truth.obs["y_um"], y0 + 50.0 * np.sqrt(3) * table.obs["array_row"], rtol=1e-12)
        assert ((table.obs["array_row"] + table.obs["array_col"]) % 2 == 0).all()

    def test_images_align_with_spots(self, visium):
        _, sdata, truth = visium
        circles, table = sdata["sample"], sdata["table"]
        xy_px = np.column_stack([circles.geometry.x, circles.geometry.y])[table.obs["spot_id"].to_numpy()]
        for image, cs, key in [
            ("sample_hires_image", "sample_downscaled_hires", "he_hires_rgb"),
            ("sample_full_image", "sample", "he_rgb"),
        ]:
            img = _image_yxc(sdata[image])
            # spot centre -> image pixel through the reader's transformations (shapes -> cs -> image pixels)
            to_img = np.linalg.inv(_affine(sdata[image], cs)) @ _affine(circles, cs)
            ij = np.floor(_apply(to_img, xy_px)).astype(int)
            np.testing.assert_array_equal(img[ij[:, 1], ij[:, 0]], truth.obsm[key])
        # and the image shows the tissue the truth describes: over the 55 um spot discs (mapped into the hires image
        # by the reader's transformations), tumour spots are darker (dense hematoxylin) than the other spots
        img = _image_yxc(sdata["sample_hires_image"]).astype(float).mean(axis=2)
        to_img = np.linalg.inv(_affine(sdata["sample_hires_image"], "sample_downscaled_hires")) @ _affine(
            circles, "sample_downscaled_hires"
        )
        centre = _apply(to_img, xy_px)
        r_px = 27.5 / truth.uns["um_per_px"] * to_img[0, 0]
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]] + 0.5
        lum = np.array([img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r_px**2].mean() for cx, cy in centre])
        tum = truth.obs["tumor"].to_numpy()
        assert lum[tum].mean() < lum[~tum].mean() - 10

    def test_round_trip(self, visium, tmp_path):
        _round_trip(visium[1], tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# Visium HD
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def visium_hd(tmp_path_factory):
    path = st.datasets.synthetic_visium_hd(tmp_path_factory.mktemp("hd") / "outs", seed=0, n_cells=200)
    sdata = _read(sio.visium_hd, path, dataset_id="sample", load_segmentations_only=False)
    return path, sdata, ad.read_h5ad(path / TRUTH)


def _hd_um_per_px(path: Path, tag: str) -> tuple[float, float, dict]:
    scalef = json.loads((path / "binned_outputs" / f"square_{tag}" / "spatial" / "scalefactors_json.json").read_text())
    return scalef["microns_per_pixel"], scalef["bin_size_um"], scalef


class TestSyntheticVisiumHD:
    @pytest.mark.parametrize("size", [2, 8, 16])
    def test_counts_positions_and_scale(self, visium_hd, size):
        path, sdata, truth = visium_hd
        tag = f"{size:03d}um"
        table, squares = sdata[f"square_{tag}"], sdata[f"sample_square_{tag}"]
        bins, counts = truth.uns["bins"][f"square_{tag}"], truth.uns["bin_counts"][f"square_{tag}"]
        assert list(table.obs_names) == list(bins.index)
        np.testing.assert_array_equal(_dense(table.X), _dense(counts))
        # every molecule is in an in-tissue bin: the bins' counts sum to the cells' counts, gene by gene
        np.testing.assert_array_equal(_dense(table.X).sum(axis=0), _dense(truth.X).sum(axis=0))
        mpp, bin_um, scalef = _hd_um_per_px(path, tag)
        assert mpp == truth.uns["um_per_px"] == 0.5
        assert bin_um == size
        assert scalef["spot_diameter_fullres"] * mpp == pytest.approx(bin_um, rel=1e-12)
        iid = table.obs["location_id"].to_numpy()
        centre_px = _apply(_affine(squares, "sample"), shapely_centroids(squares))[iid]
        np.testing.assert_allclose(centre_px * mpp, bins[["x_um", "y_um"]].to_numpy(), rtol=REL)
        side = np.sqrt(squares.geometry.area.to_numpy())
        np.testing.assert_allclose(side * mpp, size, rtol=REL)
        np.testing.assert_array_equal(table.obs["array_row"], bins["array_row"])

    def test_larger_bins_are_exact_sums_of_2um_bins(self, visium_hd):
        _, sdata, _ = visium_hd
        t2 = sdata["square_002um"]
        X2 = sparse.csr_matrix(t2.X)
        for size in (8, 16):
            tb = sdata[f"square_{size:03d}um"]
            f = size // 2
            key = pd.MultiIndex.from_arrays([t2.obs["array_row"].to_numpy() // f, t2.obs["array_col"].to_numpy() // f])
            target = pd.MultiIndex.from_arrays([tb.obs["array_row"].to_numpy(), tb.obs["array_col"].to_numpy()])
            row = target.get_indexer(key)
            assert (row >= 0).all()  # every in-tissue 2 um bin lies in an in-tissue larger bin
            P = sparse.csr_matrix((np.ones(row.size), (row, np.arange(row.size))), shape=(tb.n_obs, t2.n_obs))
            np.testing.assert_array_equal(_dense(P @ X2), _dense(tb.X))

    def test_images_align_with_bins(self, visium_hd):
        _, sdata, truth = visium_hd
        img = _image_yxc(sdata["sample_hires_image"])
        for size in (8, 16):
            tag = f"{size:03d}um"
            table, squares = sdata[f"square_{tag}"], sdata[f"sample_square_{tag}"]
            to_img = np.linalg.inv(_affine(sdata["sample_hires_image"], "sample")) @ _affine(squares, "sample")
            ij = np.floor(_apply(to_img, shapely_centroids(squares))[table.obs["location_id"].to_numpy()]).astype(int)
            bins = truth.uns["bins"][f"square_{tag}"]
            np.testing.assert_array_equal(img[ij[:, 1], ij[:, 0]], bins[["hires_r", "hires_g", "hires_b"]].to_numpy())

    def test_round_trip(self, visium_hd, tmp_path):
        _round_trip(visium_hd[1], tmp_path)

    def test_molecules_at_cell_centres_without_2um(self, tmp_path):
        # spread_um=0: a bin's counts are exactly the sum of the cells whose centre lies in it
        path = st.datasets.synthetic_visium_hd(tmp_path / "outs", bin_sizes=(8, 16), n_cells=60, spread_um=0.0, seed=3)
        assert sorted(p.name for p in (path / "binned_outputs").iterdir()) == ["square_008um", "square_016um"]
        sdata = _read(sio.visium_hd, path, load_segmentations_only=False)  # dataset_id inferred from the slice file
        truth = ad.read_h5ad(path / TRUTH)
        for size in (8, 16):
            tb = sdata[f"square_{size:03d}um"]
            cell_bin = truth.obs[f"bin_{size:03d}um"].to_numpy()
            row = pd.Index(tb.obs_names).get_indexer(cell_bin)
            assert (row >= 0).all()
            A = sparse.csr_matrix((np.ones(row.size), (row, np.arange(row.size))), shape=(tb.n_obs, truth.n_obs))
            np.testing.assert_array_equal(_dense(tb.X), _dense(A @ sparse.csr_matrix(truth.X)))
            # and the bin holding each cell's centre contains it (in um, via microns_per_pixel)
            mpp, _, _ = _hd_um_per_px(path, f"{size:03d}um")
            squares = sdata[f"sample_square_{size:03d}um"]
            b = squares.geometry.bounds.to_numpy()[tb.obs["location_id"].to_numpy()][row] * mpp
            xy = truth.obsm["spatial_um"]
            assert np.all((b[:, 0] <= xy[:, 0]) & (xy[:, 0] < b[:, 2]) & (b[:, 1] <= xy[:, 1]) & (xy[:, 1] < b[:, 3]))


def shapely_centroids(gdf) -> np.ndarray:
    c = gdf.geometry.centroid
    return np.column_stack([c.x.to_numpy(), c.y.to_numpy()])


# --------------------------------------------------------------------------------------------------------------------
# Xenium
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xenium(tmp_path_factory):
    path = st.datasets.synthetic_xenium(tmp_path_factory.mktemp("xenium") / "outs", seed=0, n_cells=150)
    sdata = _read(sio.xenium, path)  # every reader default
    return path, sdata, ad.read_h5ad(path / TRUTH)


class TestSyntheticXenium:
    def test_counts_types_and_centres(self, xenium):
        path, sdata, truth = xenium
        table = sdata["table"]
        assert list(table.obs_names) == list(truth.obs_names)
        np.testing.assert_array_equal(_dense(table.X), _dense(truth.X))
        np.testing.assert_array_equal(np.asarray(table.obsm["spatial"]), truth.obsm["spatial_um"])
        np.testing.assert_array_equal(table.obs["cell_labels"].to_numpy(), truth.obs["label_id"].to_numpy())
        assert table.uns["spatialdata_attrs"]["region"] == "cell_labels"
        specs = json.loads((path / "experiment.xenium").read_text())
        assert specs["pixel_size"] == truth.uns["pixel_size"] == 0.2125
        assert set(truth.obs["cell_type"]) <= set(st.datasets._simulate.CELL_TYPES)

    def test_transcripts_are_the_counts(self, xenium):
        _, sdata, truth = xenium
        tx = sdata["transcripts"].compute()
        got = pd.crosstab(tx["cell_id"].astype(str), tx["feature_name"].astype(str))
        got = got.reindex(index=truth.obs_names, columns=truth.var_names, fill_value=0)
        np.testing.assert_array_equal(got.to_numpy(), _dense(truth.X))
        # each transcript lies in its cell's raster label (global = morphology pixels)
        M = _affine(sdata["transcripts"], "global")
        np.testing.assert_allclose(np.diag(M)[:2], 1 / 0.2125, rtol=1e-12)
        ij = np.floor(_apply(M, tx[["x", "y"]].to_numpy())).astype(int)
        lab = np.asarray(sdata["cell_labels"]["scale0"]["image"].values)
        want = truth.obs["label_id"].reindex(tx["cell_id"].astype(str)).to_numpy()
        assert np.mean(lab[ij[:, 1], ij[:, 0]] == want) > 0.999

    def test_labels_boundaries_and_images(self, xenium):
        _, sdata, truth = xenium
        ps = truth.uns["pixel_size"]
        xy = truth.obsm["spatial_um"]
        # cell centre (um) -> morphology pixel: its cell and nucleus labels are the cell's label
        for name in ("cell_labels", "nucleus_labels"):
            M = _affine(sdata[name], "global")
            np.testing.assert_array_equal(M, np.eye(3))
            lab = np.asarray(sdata[name]["scale0"]["image"].values)
            ij = np.floor(xy / ps).astype(int)
            np.testing.assert_array_equal(lab[ij[:, 1], ij[:, 0]], truth.obs["label_id"].to_numpy())
        cb, nb = sdata["cell_boundaries"], sdata["nucleus_boundaries"]
        np.testing.assert_allclose(np.diag(_affine(cb, "global"))[:2], 1 / ps, rtol=1e-12)
        cb = cb.loc[truth.obs_names]
        np.testing.assert_allclose(cb.geometry.area.to_numpy(), truth.obs["cell_area"], rtol=1e-5)
        import shapely

        assert shapely.contains_xy(cb.geometry.to_numpy(), xy[:, 0], xy[:, 1]).all()
        nb = nb.set_index("cell_id").loc[truth.obs_names]
        assert shapely.contains_xy(nb.geometry.to_numpy(), xy[:, 0], xy[:, 1]).all()
        assert np.all(nb.geometry.area.to_numpy() < cb.geometry.area.to_numpy())
        # DAPI is bright at nuclei and dark off them
        dapi = np.asarray(sdata["morphology_focus"]["scale0"]["image"].values)[0].astype(float)
        ij = np.floor(xy / ps).astype(int)
        nuc = np.asarray(sdata["nucleus_labels"]["scale0"]["image"].values)
        assert dapi[ij[:, 1], ij[:, 0]].mean() > 5 * dapi[nuc == 0].mean()
        # the aligned H&E: 1 um per pixel, mapped onto morphology pixels by its alignment affine
        np.testing.assert_allclose(_affine(sdata["he_image"], "global")[:2, :2], np.eye(2) / ps, rtol=1e-12)

    def test_round_trip(self, xenium, tmp_path):
        _round_trip(xenium[1], tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# determinism, arguments
# --------------------------------------------------------------------------------------------------------------------
def test_same_seed_same_files(tmp_path):
    a = st.datasets.synthetic_xenium(tmp_path / "a", n_cells=20, seed=5, he_image=False)
    b = st.datasets.synthetic_xenium(tmp_path / "b", n_cells=20, seed=5, he_image=False)
    c = st.datasets.synthetic_xenium(tmp_path / "c", n_cells=20, seed=6, he_image=False)
    for name in ("transcripts.parquet", "cells.parquet", "cell_boundaries.parquet"):
        assert pd.read_parquet(a / name).equals(pd.read_parquet(b / name))
    assert not pd.read_parquet(a / "cells.parquet").equals(pd.read_parquet(c / "cells.parquet"))


@pytest.mark.parametrize(
    ("func", "kwargs", "match"),
    [
        (st.datasets.synthetic_visium, {"um_per_px": 0}, "um_per_px"),
        (st.datasets.synthetic_visium, {"seed": 1.5}, "seed"),
        (st.datasets.synthetic_visium, {"hires_downsample": 0}, "hires_downsample"),
        (st.datasets.synthetic_visium, {"dataset_id": "a/b"}, "dataset_id"),
        (st.datasets.synthetic_visium, {"n_genes": 3}, "n_genes"),
        (st.datasets.synthetic_visium_hd, {"bin_sizes": (3, 8)}, "multiples of 2"),
        (st.datasets.synthetic_visium_hd, {"bin_sizes": (4, 6)}, "nest"),
        (st.datasets.synthetic_visium_hd, {"bin_sizes": ()}, "bin_sizes"),
        (st.datasets.synthetic_visium_hd, {"spread_um": -1}, "spread_um"),
        (st.datasets.synthetic_xenium, {"pixel_size": "x"}, "pixel_size"),
        (st.datasets.synthetic_xenium, {"n_cells": 3}, "n_cells"),
    ],
)
def test_invalid_arguments(tmp_path, func, kwargs, match):
    with pytest.raises(StmapInputError, match=match):
        func(tmp_path / "outs", **kwargs)
    assert not (tmp_path / "outs").exists()  # validated before anything is written


def test_refuses_to_overwrite_foreign_folders(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(StmapInputError, match="not empty"):
        st.datasets.synthetic_xenium(tmp_path, n_cells=10)
    with pytest.raises(StmapInputError, match="written by stmap"):
        st.datasets.synthetic_xenium(tmp_path, n_cells=10, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    out = st.datasets.synthetic_xenium(tmp_path / "x", n_cells=10, he_image=False)
    assert st.datasets.synthetic_xenium(out, n_cells=12, he_image=False, overwrite=True) == out
    assert ad.read_h5ad(out / TRUTH).n_obs == 12
