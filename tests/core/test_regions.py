"""_core.resolve_regions / region_image: a table annotating several elements, one context per element."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from stmap._core import StmapInputError, make_circles, make_image, make_table, new_spatialdata, resolve
from stmap._core._elements import affine_matrix
from stmap._core._regions import region_image, resolve_regions


def _two_sections(shared_cs: str | None = "aligned", images: bool = True):
    """Two spot elements, each in its own coordinate system ('A', 'B') plus optionally a shared one; one table."""
    rng = np.random.default_rng(0)
    shapes, imgs, rows, ids = {}, {}, [], []
    for k, (name, shift) in enumerate((("A", 0.0), ("B", 500.0))):
        xy = rng.uniform(10, 90, (5 + k, 2))
        el = make_circles(xy, 4.0, index=np.arange(len(xy)) + 10 * k, coordinate_system=name)
        if shared_cs is not None:
            from stmap._core._elements import with_transformations

            el = with_transformations(el, {shared_cs: affine_matrix(2.0, (shift, 0.0))})
        shapes[f"{name}_spots"] = el
        if images:
            imgs[f"{name}_he"] = make_image(np.zeros((3, 100, 100), dtype=np.uint8), coordinate_system=name)
        rows += [f"{name}_spots"] * len(xy)
        ids += list(np.arange(len(xy)) + 10 * k)
    # rows interleaved on purpose: the regions' rows are not contiguous
    order = np.r_[0, 5, 1, 6, 2, 7, 3, 8, 4, 9, 10]
    table = ad.AnnData(np.ones((len(rows), 2), dtype=np.float32))
    table.obs_names = [f"r{i}" for i in range(len(rows))]
    table = table[order].copy()
    table = make_table(table, region=None, instance_ids=np.asarray(ids)[order], row_regions=np.asarray(rows)[order])
    sdata = new_spatialdata(shapes=shapes, images=imgs, tables={"t": table}, units={"A": "um", "B": "um"})
    return sdata, order


def test_single_region_is_resolve(small_sdata):
    sdata, _ = small_sdata
    whole, regs = resolve_regions(sdata)
    ref = resolve(sdata)
    assert whole.adata is ref.adata and whole.region == ref.region
    assert len(regs) == 1 and regs[0].ctx is whole
    np.testing.assert_array_equal(regs[0].rows, np.arange(ref.adata.n_obs))


def test_regions_rows_coords_and_own_coordinate_system():
    sdata, order = _two_sections()
    whole, regs = resolve_regions(sdata, "t")
    assert whole.region is None and whole.adata is sdata.tables["t"]
    assert [r.region for r in regs] == ["A_spots", "B_spots"]
    # the regions' rows partition the table, in table order
    np.testing.assert_array_equal(np.sort(np.concatenate([r.rows for r in regs])), np.arange(whole.adata.n_obs))
    assert all((np.diff(r.rows) > 0).all() for r in regs)
    # per region: its own coordinate system (the one no other region lives in), coordinates of its own circles
    for r in regs:
        assert r.ctx.coordinate_system == r.region[0]
        el = sdata[r.region]
        ids = whole.adata.obs["instance_id"].to_numpy()[r.rows]
        expect = np.c_[el.geometry.x, el.geometry.y][el.index.get_indexer(ids)]
        np.testing.assert_allclose(r.ctx.coords, expect)
        np.testing.assert_allclose(r.ctx.diameters, 8.0)
    # an explicit shared coordinate system: the affine of each element applies
    _, regs2 = resolve_regions(sdata, "t", coordinate_system="aligned")
    np.testing.assert_allclose(regs2[1].ctx.coords, regs[1].ctx.coords * 2 + [500.0, 0.0])
    assert regs2[1].ctx.diameters[0] == pytest.approx(16.0)  # scaled by 2 in the aligned frame


def test_ambiguous_or_unknown_coordinate_system():
    sdata, _ = _two_sections()
    # an unknown name is refused, naming it
    with pytest.raises(StmapInputError, match="nope"):
        resolve_regions(sdata, "t", coordinate_system="nope")
    from stmap._core._elements import with_transformations

    for n in ("A_spots", "B_spots"):  # give both the other's system: no system is a region's own any more
        sdata.shapes[n] = with_transformations(sdata.shapes[n], {"A": np.eye(3), "B": np.eye(3)})
    with pytest.raises(StmapInputError, match="coordinate_system="):
        resolve_regions(sdata, "t")
    _, regs = resolve_regions(sdata, "t", coordinate_system={"A_spots": "A", "B_spots": "B"})
    assert [r.ctx.coordinate_system for r in regs] == ["A", "B"]


def test_region_image():
    sdata, _ = _two_sections()
    _, regs = resolve_regions(sdata, "t")
    assert [region_image(r.ctx).name for r in regs] == ["A_he", "B_he"]
    del sdata.images["B_he"]
    assert region_image(regs[1].ctx) is None  # no image in B's system
    # two images in one system: the one under the spots is chosen
    far = affine_matrix(1.0, (1e4, 0))
    sdata.images["A_far"] = make_image(np.zeros((3, 50, 50), dtype=np.uint8), transform=far, coordinate_system="A")
    assert region_image(regs[0].ctx).name == "A_he"
    sdata.images["A_also"] = make_image(np.zeros((3, 100, 100), dtype=np.uint8), coordinate_system="A")
    with pytest.raises(StmapInputError, match="image_key="):
        region_image(regs[0].ctx)


def test_undeclared_region_rows():
    sdata, _ = _two_sections()
    t = sdata.tables["t"]
    t.obs["region"] = t.obs["region"].cat.add_categories(["ghost"])
    t.obs.iloc[0, t.obs.columns.get_loc("region")] = "ghost"
    with pytest.raises(StmapInputError, match="ghost"):
        resolve_regions(sdata, "t")


class TestElementsHelpers:
    """make_table(row_regions=) and with_transformations(replace=) (used to build stacks)."""

    def test_make_table_row_regions(self):
        sdata, order = _two_sections()
        t = sdata.tables["t"]
        attrs = t.uns["spatialdata_attrs"]
        assert list(attrs["region"]) == ["A_spots", "B_spots"]  # every named element, in order of appearance
        assert attrs["region_key"] == "region" and attrs["instance_key"] == "instance_id"
        assert list(t.obs["region"].cat.categories) == ["A_spots", "B_spots"]
        np.testing.assert_array_equal(t.obs["region"].to_numpy(), np.where(order < 5, "A_spots", "B_spots"))
        # spatialdata accepts it: the table links to both elements and validates on assembly
        from spatialdata import get_values

        v = get_values(value_key="instance_id", sdata=sdata, element_name="B_spots", table_name="t")
        assert len(v) == 6

    def test_with_transformations_replace(self):
        from spatialdata.transformations import get_transformation

        el = make_circles(np.zeros((2, 2)), 1.0, coordinate_system="old")
        kept = with_t(el, {"new": affine_matrix(3.0)})
        assert set(get_transformation(kept, get_all=True)) == {"old", "new"}
        repl = with_t(el, {"new": affine_matrix(3.0)}, replace=True)
        assert set(get_transformation(repl, get_all=True)) == {"new"}
        m = get_transformation(repl, "new").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(m, affine_matrix(3.0))
        # copy=True (default) leaves the element's own transformations as they were
        assert set(get_transformation(el, get_all=True)) == {"old"}
        with_t(el, {"x": np.eye(3)}, replace=True, copy=False)
        assert set(get_transformation(el, get_all=True)) == {"x"}


def with_t(el, ts, **kw):
    from stmap._core._elements import with_transformations

    return with_transformations(el, ts, **kw)


def test_circle_coords_match_spatialdata_centroids():
    # TableContext.coords maps circle centres by the element's affine itself; spatialdata's get_centroids is the
    # reference (rotation + anisotropic scale + shift)
    from spatialdata import get_centroids

    from stmap._core._elements import with_transformations

    sdata, _ = _two_sections()
    a = np.array([[0.8, -1.3, 7.0], [0.6, 1.1, -3.0], [0, 0, 1.0]])
    sdata.shapes["B_spots"] = with_transformations(sdata.shapes["B_spots"], {"rot": a})
    _, regs = resolve_regions(sdata, "t", coordinate_system={"A_spots": "A", "B_spots": "rot"})
    ctx = regs[1].ctx
    cent = get_centroids(sdata["B_spots"], coordinate_system="rot").compute()
    ids = ctx.adata.obs["instance_id"].to_numpy()
    np.testing.assert_allclose(ctx.coords, cent[["x", "y"]].to_numpy()[cent.index.get_indexer(ids)], atol=1e-9)
