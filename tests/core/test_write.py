from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

from stmap._core import Results, make_points, resolve


def _fractions(ctx):
    n = ctx.adata.n_obs
    return pd.DataFrame({"A": np.full(n, 0.25), "B": np.full(n, 0.75)}, index=ctx.adata.obs_names)


class TestResults:
    def test_in_place(self, small_sdata):
        sdata, _ = small_sdata
        ctx = resolve(sdata)
        res = Results(ctx, "stmap_test", params={"k": 3, "genes": ["a", "b"], "obj": object()})
        res.obs("stmap_n", np.arange(ctx.adata.n_obs))
        res.obsm("stmap_frac", _fractions(ctx))
        assert "stmap_n" not in ctx.adata.obs  # nothing written before commit
        assert res.commit(copy=False) is None
        t = sdata.tables["table"]
        np.testing.assert_array_equal(t.obs["stmap_n"], np.arange(t.n_obs))
        assert list(t.obsm["stmap_frac"].columns) == ["A", "B"]
        assert t.uns["stmap_test"]["params"]["k"] == 3
        assert t.uns["stmap_test"]["params"]["genes"] == ["a", "b"]
        assert isinstance(t.uns["stmap_test"]["params"]["obj"], str)

    def test_copy_leaves_input(self, small_sdata):
        sdata, _ = small_sdata
        ctx = resolve(sdata)
        res = Results(ctx, "stmap_test")
        res.obs("stmap_n", np.ones(ctx.adata.n_obs))
        res.element("cells", make_points(np.zeros((3, 2))))
        out = res.commit(copy=True)
        assert "stmap_n" not in sdata.tables["table"].obs and "cells" not in sdata.points
        assert "stmap_n" in out.tables["table"].obs and "cells" in out.points
        assert out.images["he"] is sdata.images["he"]  # large elements are shared, not copied

    def test_external_table_only_in_place(self, small_sdata):
        sdata, _ = small_sdata
        ctx = resolve(sdata)
        ref = ad.AnnData(np.ones((5, 2)))
        res = Results(ctx, "stmap_test")
        res.obs("stmap_n", np.ones(ctx.adata.n_obs))
        res.obs("stmap_spot", np.array(["a"] * 5), adata=ref)
        # copy=True returns one object: writes meant for another object are a tool error, refused before writing
        with pytest.raises(RuntimeError, match="outside the one copy=True returns"):
            res.commit(copy=True)
        assert "stmap_spot" not in ref.obs and "stmap_n" not in sdata.tables["table"].obs
        assert res.commit(copy=False) is None
        assert "stmap_spot" in ref.obs and "stmap_n" in sdata.tables["table"].obs

    def test_overwrite_warns(self, small_sdata):
        sdata, _ = small_sdata
        ctx = resolve(sdata)
        for _ in range(2):
            res = Results(ctx, "stmap_test")
            res.obs("stmap_n", np.ones(ctx.adata.n_obs))
            if _ == 0:
                res.commit()
        with pytest.warns(UserWarning, match=r"Overwriting existing obs\['stmap_n'\]"):
            res.commit()

    def test_new_table_and_points_roundtrip(self, small_sdata, tmp_path):
        sdata, _ = small_sdata
        ctx = resolve(sdata)
        cells = ad.AnnData(
            np.ones((4, 2)), obs=pd.DataFrame({"spot_id": list("abcd")}, index=[f"c{i}" for i in range(4)])
        )
        res = Results(ctx, "stmap_test")
        res.element("table_cells_points", make_points(np.arange(8.0).reshape(4, 2)))
        res.table("table_cells", cells, region="table_cells_points")
        res.obsm("stmap_frac", _fractions(ctx))
        res.commit()
        sdata.write(tmp_path / "o.zarr")
        back = sd.read_zarr(tmp_path / "o.zarr")
        c = resolve(back, table_key="table_cells")
        assert c.element_type == "points"
        np.testing.assert_allclose(c.coords, np.arange(8.0).reshape(4, 2))
        pd.testing.assert_frame_equal(back.tables["table"].obsm["stmap_frac"], sdata.tables["table"].obsm["stmap_frac"])
        assert back.tables["table"].uns["stmap_test"]["params"] == {}

    def test_anndata_target(self):
        a = ad.AnnData(np.ones((3, 2)), obsm={"spatial": np.zeros((3, 2))})
        res = Results(resolve(a), "stmap_test")
        res.obs("x", np.arange(3))
        res.element("pts", make_points(np.zeros((3, 2))))
        res.commit()
        np.testing.assert_array_equal(a.obs["x"], np.arange(3))
        assert "stmap_test" in a.uns
