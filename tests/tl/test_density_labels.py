"""st.tl.density / rank_densities: the table's labels win, missing labels are left out loudly, bad maps are refused.

Issue 15 ("Nothing silently wrong"), findings 4 and 8: relabelled, merged or NaN labels in the table were ignored
(the points' own column was read), NaN labels crashed with ``boolean value of NA is ambiguous``, a NaN reference
class was silently ranked last, and a multiscale density image could not be ranked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import stmap as st
from stmap._core import StmapInputError, make_image, resolve_points

KW = {"bandwidth": 30.0, "grid_shape": (32, 32), "norm": "counts", "dtype": "float64"}


def T():
    return st.datasets.synthetic_tissue(0, n_cells=500, n_genes=60)


def _bounds(s):
    xy = resolve_points(s, table_key="cells").coords
    return [(float(lo) - 50, float(hi) + 50) for lo, hi in zip(xy.min(0), xy.max(0), strict=True)]


def _maps(s, key="stmap_density"):
    img = s.images[key]
    return {str(c): np.asarray(img.sel(c=c).values) for c in img.coords["c"].values}


def _snapshot(s):
    return {
        "elements": sorted([*s.images, *s.labels, *s.points, *s.shapes]),
        "tables": {k: (sorted(t.uns), sorted(t.obs.columns), t.obs.copy()) for k, t in s.tables.items()},
    }


def _same(a, b):
    assert a["elements"] == b["elements"]
    assert a["tables"].keys() == b["tables"].keys()
    for k in a["tables"]:
        assert a["tables"][k][:2] == b["tables"][k][:2]
        pd.testing.assert_frame_equal(a["tables"][k][2], b["tables"][k][2])


def _set_table_labels(s, values):
    t = s.tables["cells"]
    t.obs["cell_type"] = pd.Categorical(values)


class TestTableLabelsWin:
    def test_merged_types_in_table(self):
        base = T()
        b = _bounds(base)
        st.tl.density(base, table_key="cells", groupby="cell_type", bounds=b, **KW)
        before = _maps(base)
        s = T()
        lab = s.tables["cells"].obs["cell_type"].astype(str)
        _set_table_labels(s, lab.replace({"T_cell": "immune", "macrophage": "immune"}).to_numpy())
        st.tl.density(s, table_key="cells", groupby="cell_type", bounds=b, **KW)
        after = _maps(s)
        assert set(after) == {"immune", "tumor", "epithelial", "fibroblast", "endothelial"}
        np.testing.assert_allclose(after["immune"], before["T_cell"] + before["macrophage"], rtol=1e-10, atol=1e-14)
        for g in ("tumor", "epithelial", "fibroblast", "endothelial"):
            np.testing.assert_array_equal(after[g], before[g])
        n = dict(
            zip(
                s.tables["cells"].uns["stmap_density"]["groups"],
                s.tables["cells"].uns["stmap_density"]["n_points"],
                strict=True,
            )
        )
        assert n["immune"] == int((lab.isin(["T_cell", "macrophage"])).sum())

    def test_annotating_table_wins_for_points_key(self):
        s = T()
        _set_table_labels(s, np.where(np.arange(s.tables["cells"].n_obs) % 2 == 0, "even", "odd"))
        st.tl.density(s, points_key="cell_points", groupby="cell_type", bounds=_bounds(s), **KW)
        assert sorted(_maps(s)) == ["even", "odd"]

    def test_agreeing_labels_bit_identical(self):
        # the table and the points agree: every map equals the one from the points' own column
        a, b = T(), T()
        bnd = _bounds(a)
        del b.tables["cells"].obs["cell_type"]  # forces the points' own column
        st.tl.density(a, table_key="cells", groupby="cell_type", bounds=bnd, **KW)
        st.tl.density(b, table_key="cells", groupby="cell_type", bounds=bnd, **KW)
        ma, mb = _maps(a), _maps(b)
        assert sorted(ma) == sorted(mb)
        for g in ma:
            np.testing.assert_array_equal(ma[g], mb[g])


class TestMissingLabels:
    def _check_left_out(self, s, missing, bnd):
        with pytest.warns(UserWarning, match=rf"{int(missing.sum())} of 500 point\(s\) have no 'cell_type' label"):
            st.tl.density(s, table_key="cells", groupby="cell_type", bounds=bnd, **KW)
        ctx = resolve_points(s, table_key="cells", columns=["cell_type"])
        lab = ctx.annotations["cell_type"].astype("string").fillna("").to_numpy(dtype=object)
        got = _maps(s)
        for g in ("tumor", "fibroblast"):
            sel = (~missing) & (lab == g)
            ref = st.tl.density(ctx.coords[sel], bounds=bnd, **KW)
            np.testing.assert_array_equal(got[g], ref.T)  # image (y, x), array [ix, iy]
        info = s.tables["cells"].uns["stmap_density"]
        assert int(np.sum(info["n_points"])) + info["n_dropped"] == int((~missing).sum())

    def test_nan_in_table(self):
        s = T()
        bnd = _bounds(s)
        lab = s.tables["cells"].obs["cell_type"].astype(object).to_numpy()
        missing = np.arange(lab.size) % 5 == 0
        lab[missing] = np.nan
        _set_table_labels(s, lab)
        self._check_left_out(s, missing, bnd)

    @pytest.mark.parametrize("with_table_column", [False, True])
    def test_nan_in_points_column(self, with_table_column):
        from spatialdata.models import PointsModel
        from spatialdata.transformations import get_transformation

        s = T()
        bnd = _bounds(s)
        el = s.points["cell_points"]
        df = el.compute()
        missing_el = np.arange(len(df)) % 4 == 1
        df["cell_type"] = df["cell_type"].astype(object).where(~missing_el, None).astype("string")
        s.points["cell_points"] = PointsModel.parse(df, transformations=get_transformation(el, get_all=True))
        if with_table_column:  # the table has no such column: the points' own one is read, aligned to the table
            del s.tables["cells"].obs["cell_type"]
        else:  # no table: the points' own column
            del s.tables["cells"]
        if with_table_column:
            inst = s.tables["cells"].obs["instance_id"].to_numpy()
            missing = missing_el[inst]
            self._check_left_out(s, missing, bnd)
        else:
            with pytest.warns(UserWarning, match=rf"{int(missing_el.sum())} of 500 point\(s\) have no 'cell_type'"):
                st.tl.density(s, points_key="cell_points", groupby="cell_type", bounds=bnd, **KW)
            ctx = resolve_points(s, points_key="cell_points", columns=["cell_type"])
            lab = ctx.annotations["cell_type"].astype("string").fillna("").to_numpy(dtype=object)
            sel = (~missing_el) & (lab == "tumor")
            ref = st.tl.density(ctx.coords[sel], bounds=bnd, **KW)
            np.testing.assert_array_equal(_maps(s)["tumor"], ref.T)

    def test_all_nan_raises_before_writing(self):
        s = T()
        _set_table_labels(s, np.full(s.tables["cells"].n_obs, np.nan, dtype=object))
        before = _snapshot(s)
        with pytest.raises(StmapInputError, match=r"Every 'cell_type' label of the 500 points is missing"):
            st.tl.density(s, table_key="cells", groupby="cell_type", bounds=_bounds(s), **KW)
        _same(before, _snapshot(s))


class TestKeyAddedUpFront:
    def test_density(self):
        # an invalid key_added is refused first (before the missing bandwidth, i.e. before any work)
        with pytest.raises(StmapInputError, match="key_added 'a/b'"):
            st.tl.density(T(), table_key="cells", groupby="cell_type", key_added="a/b")

    def test_rank(self):
        with pytest.raises(StmapInputError, match="key_added 'a/b'"):
            st.tl.rank_densities(T(), "no_such_query", "no_such_reference", key_added="a/b")


def _ref_and_query():
    s = T()
    bnd = _bounds(s)
    kw = {"bandwidth": 30.0, "grid_shape": (32, 32), "bounds": bnd}
    st.tl.density(s, table_key="cells", groupby="cell_type", key_added="ref", **kw)
    w = (np.arange(s.tables["cells"].n_obs) % 2).astype(float)
    st.tl.density(s, table_key="cells", groupby="cell_type", groups=["tumor"], weights=w, key_added="qry", **kw)
    return s


def _multiscale(img):
    from spatialdata.transformations import get_transformation

    t = get_transformation(img, get_all=True)
    ((cs, tr),) = t.items()
    channels = list(img.coords["c"].values)
    return make_image(img.data, transform=tr, coordinate_system=cs, c_coords=channels, scale_factors=[2], dims=img.dims)


class TestRankInputs:
    def test_nan_reference_class_raises(self):
        s = _ref_and_query()
        ref = s.images["ref"]
        data = np.asarray(ref.data).copy()
        ch = list(map(str, ref.coords["c"].values))
        data[ch.index("fibroblast"), 3, 4] = np.nan
        from spatialdata.transformations import get_transformation

        ((cs, tr),) = get_transformation(ref, get_all=True).items()
        s.images["ref_nan"] = make_image(data, transform=tr, coordinate_system=cs, c_coords=ch)
        before = _snapshot(s)
        with pytest.raises(StmapInputError, match=r"'fibroblast'.*NaN") as e:
            st.tl.rank_densities(s, "qry", "ref_nan")
        assert "st.tl.density" in str(e.value)
        _same(before, _snapshot(s))
        # arrays: the same error
        reference = np.stack([np.ones((5, 5)), np.full((5, 5), np.nan)])
        with pytest.raises(StmapInputError, match=r"\['c1'\].*NaN"):
            st.tl.rank_densities(None, np.ones((5, 5)), reference, classes=["c0", "c1"])

    def test_multiscale_reference_and_query(self):
        s = _ref_and_query()
        st.tl.rank_densities(s, "qry", "ref", key_added="r_single")
        s.images["ref_ms"] = _multiscale(s.images["ref"])
        s.images["qry_ms"] = _multiscale(s.images["qry"])
        st.tl.rank_densities(s, "qry", "ref_ms", key_added="r_ms")
        st.tl.rank_densities(s, "qry_ms", "ref_ms", key_added="r_ms2")
        host = next(t for t in s.tables.values() if "r_single" in t.uns)
        one = host.uns["r_single"]["ranking"]
        for key in ("r_ms", "r_ms2"):
            t = next(t for t in s.tables.values() if key in t.uns)
            pd.testing.assert_frame_equal(t.uns[key]["ranking"], one)
