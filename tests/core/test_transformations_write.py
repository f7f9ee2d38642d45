"""Results.transformation / with_transformations: transformations added in place or on a copy, data shared."""

from __future__ import annotations

import numpy as np
import spatialdata as sd
from spatialdata.transformations import Scale, get_transformation

from stmap._core import Results, TableContext, make_circles, make_image, make_points, new_spatialdata
from stmap._core._elements import with_transformations


def _sdata():
    return new_spatialdata(
        images={"img": make_image(np.zeros((1, 16, 16)), scale_factors=[2])},
        points={"pts": make_points(np.random.default_rng(0).uniform(size=(5, 2)))},
        shapes={"spots": make_circles(np.ones((3, 2)), 1.0)},
    )


def test_with_transformations_copy_is_independent():
    s = _sdata()
    for name in ("img", "pts", "spots"):
        el = s[name]
        new = with_transformations(el, {"other": np.diag([2.0, 3.0, 1.0])})
        assert set(get_transformation(new, get_all=True)) == {"global", "other"}
        assert set(get_transformation(el, get_all=True)) == {"global"}  # the original is untouched


def test_results_transformation_in_place_and_copy(tmp_path):
    import anndata as ad

    s = _sdata()
    t = Scale([2.0, 2.0], axes=("y", "x"))
    ctx = TableContext(s, ad.AnnData(np.zeros((1, 0))), "tbl", None, None, None, None, "global")
    res = Results(ctx, "k")
    res.transformation("pts", "aligned", t)
    res.table("tbl", ctx.adata)
    out = res.commit(copy=True)
    assert "aligned" not in get_transformation(s["pts"], get_all=True)
    assert "aligned" in get_transformation(out["pts"], get_all=True)
    ctx2 = TableContext(s, ad.AnnData(np.zeros((1, 0))), "tbl2", None, None, None, None, "global")
    res2 = Results(ctx2, "k")
    res2.transformation("img", "aligned", t)
    res2.table("tbl2", ctx2.adata)
    res2.commit()
    assert "aligned" in get_transformation(s["img"], get_all=True)
    s.write(tmp_path / "t.zarr")
    back = sd.read_zarr(tmp_path / "t.zarr")
    m = get_transformation(back["img"], to_coordinate_system="aligned").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(m, np.diag([2.0, 2.0, 1.0]))
