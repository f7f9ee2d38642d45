"""st.tl.rank_densities: exact CellMap2D score, planted-class recovery, mixture weights, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import make_points, new_spatialdata
from stmap.tl import density_scores

CENTERS = {"A": (20.0, 20.0), "B": (60.0, 25.0), "C": (40.0, 60.0), "D": (20.0, 60.0)}


def _atlas(n=300, seed=0):
    rng = np.random.default_rng(seed)
    xy = np.concatenate([rng.normal(c, 6.0, size=(n, 2)) for c in CENTERS.values()])
    lab = np.repeat(list(CENTERS), n)
    pts = make_points(xy, annotations=pd.DataFrame({"cls": pd.Categorical(lab)}))
    sdata = new_spatialdata(points={"atlas": pts}, units={"global": "um"})
    st.tl.density(sdata, points_key="atlas", groupby="cls", bandwidth=4.0, grid_shape=(41, 41), bounds=((0, 80),) * 2)
    return sdata, rng


class TestCellMap2DScore:
    def test_hand_computed(self):
        # 1D toy maps (4 voxels): S = [0, 1, 4, 10], Q = [5, 0.05, 2, 10]
        s = np.array([0.0, 1.0, 4.0, 10.0])
        q = np.array([5.0, 0.05, 2.0, 10.0])
        # relevant region S > 0.05 * 10 = 0.5 -> voxels 1, 2, 3; diffs 0.95, 2, 0 -> mse = (0.9025 + 4) / 3
        mse = (0.95**2 + 2.0**2 + 0.0) / 3
        # query floor 0.01 * 10 = 0.1: voxel 1 (Q = 0.05) is missed -> penalty = 1 / (1 + 4 + 10)
        pen = 1.0 / 15.0
        df = density_scores(q, s[None], classes=["S"])
        assert df.loc["S", "mse"] == pytest.approx(mse, rel=1e-12)
        assert df.loc["S", "penalty"] == pytest.approx(pen, rel=1e-6)  # the published +1e-8 in the denominator
        assert df.loc["S", "cellmap2d"] == pytest.approx(1.0 / (mse + pen + 1e-8), rel=1e-6)

    def test_other_scores_reference(self):
        rng = np.random.default_rng(0)
        q, s = rng.uniform(size=50), rng.uniform(size=(1, 50))
        df = density_scores(q, s)
        assert df.loc["0", "pearson"] == pytest.approx(np.corrcoef(q, s[0])[0, 1], rel=1e-12)
        from scipy.spatial.distance import jensenshannon
        from scipy.stats import entropy

        assert df.loc["0", "js"] == pytest.approx(jensenshannon(q, s[0]) ** 2, rel=1e-9)  # scipy returns sqrt(JS)
        assert df.loc["0", "kl"] == pytest.approx(entropy(q, s[0] + 1e-12 / 50 * s[0].sum()), rel=1e-6)
        from scipy.stats import wasserstein_distance

        x = np.arange(50)
        assert df.loc["0", "emd"] == pytest.approx(wasserstein_distance(x, x, q, s[0]), rel=1e-9)


class TestRankDensities:
    @pytest.mark.parametrize("method", ["cellmap2d", "pearson", "cosine", "js", "kl", "emd", "mixture"])
    def test_recovers_planted_class(self, method):
        sdata, rng = _atlas()
        q = rng.normal(CENTERS["C"], 6.0, size=(150, 2))  # held-out cells of class C
        qmap = st.tl.density(q, bandwidth=4.0, grid_shape=(41, 41), bounds=((0, 80),) * 2)
        df = st.tl.rank_densities(
            None, qmap, sdata.images["stmap_density"].values.transpose(0, 2, 1), classes=list(CENTERS), method=method
        )
        assert df.iloc[0]["class"] == "C"

    def test_mixture_weights(self):
        sdata, rng = _atlas(n=2000)
        true = {"A": 0.5, "B": 0.3, "D": 0.2}
        q = np.concatenate([rng.normal(CENTERS[k], 6.0, size=(int(4000 * w), 2)) for k, w in true.items()])
        qmap = st.tl.density(q, bandwidth=4.0, grid_shape=(41, 41), bounds=((0, 80),) * 2)
        df = st.tl.rank_densities(
            None, qmap, sdata.images["stmap_density"].values.transpose(0, 2, 1), classes=list(CENTERS), method="mixture"
        ).set_index("class")
        for k in CENTERS:
            # 4000 query / 2000 atlas cells per class: sampling noise of the weights ~0.01-0.02
            assert df.loc[k, "mixture"] == pytest.approx(true.get(k, 0.0), abs=0.04)
        assert df["mixture"].sum() == pytest.approx(1.0)

    def test_sdata_images_uns_roundtrip(self, tmp_path):
        sdata, rng = _atlas()
        q = rng.normal(CENTERS["B"], 6.0, size=(100, 2))
        sdata.points["query_cells"] = make_points(q)
        st.tl.density(sdata, points_key="query_cells", bandwidth=4.0, grid="stmap_density", key_added="query")
        st.tl.rank_densities(sdata, "query", "stmap_density")
        info = sdata.tables["query_groups"].uns["stmap_density_ranking"]
        r = info["ranking"]
        assert r.iloc[0]["class"] == "B" and list(r["rank"]) == [1, 2, 3, 4]
        sdata.write(tmp_path / "r.zarr")
        back = sd.read_zarr(tmp_path / "r.zarr").tables["query_groups"].uns["stmap_density_ranking"]["ranking"]
        pd.testing.assert_frame_equal(
            back.reset_index(drop=True), r.reset_index(drop=True), check_dtype=False, check_categorical=False
        )

    def test_mismatched_grids_and_bad_method(self):
        sdata, rng = _atlas()
        sdata.points["q"] = make_points(rng.normal(size=(50, 2)) + 40)
        st.tl.density(sdata, points_key="q", bandwidth=4.0, voxel_size=3.0, key_added="qmap")
        before = {k: sorted(t.uns) for k, t in sdata.tables.items()}
        with pytest.raises(st.StmapInputError, match="different grids"):
            st.tl.rank_densities(sdata, "qmap", "stmap_density")
        with pytest.raises(st.StmapInputError, match="method"):
            st.tl.rank_densities(sdata, "qmap", "stmap_density", method="magic")
        with pytest.raises(st.StmapKeyError, match="nope"):
            st.tl.rank_densities(sdata, "nope", "stmap_density")
        assert {k: sorted(t.uns) for k, t in sdata.tables.items()} == before


def _cases(func):
    """Every invalid value generated from the tool's declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(name, value, id=f"{name}-{i}")
        for name, spec in func.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


class TestParameters:
    @pytest.mark.parametrize(("name", "value"), _cases(st.tl.rank_densities))
    def test_rank_densities_invalid_value_raises_untouched(self, name, value):
        sdata, _ = _atlas(n=50)
        before = {k: sorted(t.uns) for k, t in sdata.tables.items()}
        with pytest.raises(st.StmapInputError, match=f"rank_densities: {name} must be"):
            st.tl.rank_densities(sdata, "stmap_density", "stmap_density", **{name: value})
        assert {k: sorted(t.uns) for k, t in sdata.tables.items()} == before

    @pytest.mark.parametrize(("name", "value"), _cases(density_scores))
    def test_density_scores_invalid_value_raises(self, name, value):
        q, ref = np.ones((4, 5)), np.ones((2, 4, 5))
        with pytest.raises(st.StmapInputError, match=f"density_scores: {name} must be"):
            density_scores(q, ref, **{name: value})
        assert (q == 1).all() and (ref == 1).all()

    def test_density_scores_equals_rank_densities(self):
        # the array-level API and the tool compute the same scores (the tool adds the rank and the chosen score)
        rng = np.random.default_rng(1)
        q, ref = rng.uniform(size=(30, 20)), rng.uniform(size=(3, 30, 20))
        df = density_scores(q, ref, classes=["a", "b", "c"])
        ranked = st.tl.rank_densities(None, q, ref, classes=["a", "b", "c"]).set_index("class").loc[df.index]
        pd.testing.assert_frame_equal(ranked[list(df.columns)], df, check_exact=True, check_names=False)


def _previous_scores(q: np.ndarray, ref: np.ndarray) -> pd.DataFrame:
    """The scores as computed before the threaded two-pass kernels: one fused parallel pass (``map_scores``, a
    ``math.log`` per voxel) per class, as in stmap up to 2026-12-02 (defaults: threshold 0.05, floor 0.01)."""
    from stmap.kernels._kde import grid_stats, map_scores
    from stmap.tl._rank import _as3d, _Query

    shape = q.shape
    qd = _Query(q, shape, 1e-3, 20_000)
    floor_u = 1e-12 / float(np.prod(shape))
    rows, supp = [], []
    v = float(q.size)
    for s3 in ref:
        s_tot, s_max, margs = grid_stats(s3.reshape(_as3d(shape)))
        s = s3.ravel()
        nr, sse, s_reg, s_miss, ss, sss, ssq, sqq, sq, js2, kl = map_scores(
            s, qd.flat, 0.05 * s_max, 0.01 * qd.max, s_tot, qd.tot, floor_u, qd.plogp
        )
        ok = nr > 0 and s_max > 0
        mse = sse / nr if ok else np.nan
        pen = s_miss / (s_reg + 1e-8) if ok else np.nan
        den = np.sqrt(max(sss - ss * ss / v, 0.0) * max(sqq - sq * sq / v, 0.0))
        cdf = [np.cumsum(m) / s_tot for m in margs[: len(shape)]] if s_tot > 0 else None
        rows.append(
            {
                "mse": mse,
                "penalty": pen,
                "cellmap2d": 1.0 / (mse + pen + 1e-8) if np.isfinite(mse) else np.nan,
                "pearson": (ssq - ss * sq / v) / den if den > 0 else np.nan,
                "cosine": ssq / np.sqrt(sss * sqq) if sss > 0 else np.nan,
                "js": 0.5 * js2 if s_tot > 0 else np.nan,
                "kl": kl if s_tot > 0 else np.nan,
                "emd": sum(float(np.abs(a - b).sum()) for a, b in zip(cdf, qd.cdf, strict=True)) if cdf else np.nan,
            }
        )
        supp.append(np.take(s, qd.keep).astype(np.float64) / s_tot if s_tot > 0 else np.zeros(qd.keep.size))
    df = pd.DataFrame(rows, index=pd.Index([str(i) for i in range(len(ref))], name="class"))
    p, q_s = np.asarray(supp), qd.flat[qd.keep].astype(np.float64)
    w, qn = np.full(len(ref), 1.0 / len(ref)), q_s / q_s.sum()
    for _ in range(300):  # the previous EM: two matrix-vector products per iteration
        mix = w @ p
        w_new = w * (p @ np.divide(qn, mix, out=np.zeros_like(qn), where=mix > 0))
        w_new /= w_new.sum()
        done = np.abs(w_new - w).max() < 1e-7
        w = w_new
        if done:
            break
    df["mixture"] = w
    return df


class TestSameAsPrevious:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_scores_and_ranking_unchanged(self, seed, dtype):
        rng = np.random.default_rng(seed)
        shape = (30, 20, 25) if seed != 1 else (60, 45)
        ref = (rng.random(size=(40, *shape)) ** 4).astype(dtype)
        ref[3] = 0  # an empty class map: NaN scores, ranked last
        ref[5, :10] = 0
        ref[7] = ref[8]  # a tie: ranked in class order
        q = (rng.random(size=shape) ** 4).astype(dtype)
        new, old = density_scores(q, ref), _previous_scores(q, ref)
        # same sums in another order (serial per thread vs a parallel reduction) and numpy's SIMD log vs math.log:
        # round-off differences only (measured <= 5e-12 relative, pearson; the others <= 1e-13)
        np.testing.assert_allclose(new.to_numpy(), old[new.columns].to_numpy(), rtol=1e-9, atol=1e-15)
        for method in ("cellmap2d", "pearson", "cosine", "js", "kl", "emd", "mixture"):
            a = st.tl.rank_densities(None, q, ref, method=method)
            b = _ranking_of(old, method)
            assert a["class"].tolist() == b, method


def _ranking_of(df: pd.DataFrame, method: str) -> list[str]:
    from stmap.tl._rank import _HIGHER_BETTER

    asc = not _HIGHER_BETTER.get(method, True)
    rank = df[method].rank(ascending=asc, method="first", na_option="bottom").astype(int)
    return rank.sort_values(kind="stable").index.tolist()
