"""Metrics against hand-computed values and independent implementations (scipy / sklearn)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

from stmap import metrics as m

RNG = np.random.default_rng(0)


class TestPearson:
    def test_hand(self):
        # gene 0: x = (1, 2, 3), y = (2, 4, 7): r = 5 / sqrt(2 * 12.667) by hand; gene 1: perfectly anti-correlated
        pred = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
        truth = np.array([[2.0, 3.0], [4.0, 2.0], [7.0, 1.0]])
        r = m.pearson_per_gene(pred, truth)
        np.testing.assert_allclose(r, [5.0 / np.sqrt(2.0 * 38.0 / 3.0), -1.0])

    def test_matches_scipy_and_sparse(self):
        a, b = RNG.poisson(2.0, (30, 5)).astype(float), RNG.poisson(2.0, (30, 5)).astype(float)
        want_g = [stats.pearsonr(a[:, j], b[:, j])[0] for j in range(5)]
        want_s = [stats.pearsonr(a[i], b[i])[0] for i in range(30)]
        np.testing.assert_allclose(m.pearson_per_gene(sparse.csr_matrix(a), b), want_g, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m.pearson_per_spot(a, sparse.csc_matrix(b)), want_s, rtol=1e-10, atol=1e-12)

    def test_constant_is_nan(self):
        pred = np.array([[0.1, 1.0], [0.1, 2.0], [0.1, 3.0]])  # 0.1 is not exact in binary: centring leaves noise
        r = m.pearson_per_gene(pred, np.array([[1.0, 1.0], [2.0, 2.0], [4.0, 3.0]]))
        assert np.isnan(r[0])
        assert r[1] == pytest.approx(1.0)
        assert np.isnan(m.pearson_per_spot(np.ones((1, 3)), np.array([[1.0, 2.0, 3.0]]))[0])

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="same shape"):
            m.pearson_per_gene(np.ones((3, 2)), np.ones((2, 3)))

    def test_spearman(self):
        a, b = RNG.normal(size=(20, 4)), RNG.normal(size=(20, 4))
        a[:5, 0] = 1.0  # ties
        want = [stats.spearmanr(a[:, j], b[:, j])[0] for j in range(4)]
        np.testing.assert_allclose(m.spearman_per_gene(a, b), want, rtol=1e-10)
        # monotone but non-linear: Spearman 1, Pearson < 1
        x = np.arange(1.0, 6.0)[:, None]
        assert m.spearman_per_gene(x, np.exp(x))[0] == pytest.approx(1.0)
        assert m.pearson_per_gene(x, np.exp(x))[0] < 0.95


class TestRmse:
    def test_hand(self):
        # errors 1, -1, 2, 0 -> sqrt((1 + 1 + 4 + 0) / 4) = sqrt(1.5)
        assert m.rmse(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 3.0], [1.0, 4.0]])) == pytest.approx(
            np.sqrt(1.5)
        )
        np.testing.assert_allclose(
            m.rmse(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 3.0], [1.0, 4.0]]), axis=1), [1.0, np.sqrt(2)]
        )

    def test_nan_propagates(self):
        assert np.isnan(m.rmse(np.array([np.nan, 1.0]), np.array([0.0, 1.0])))


class TestJsd:
    def test_hand(self):
        # disjoint supports: JSD = 1 bit; identical: 0; p=(1,0), q=(1/2,1/2): m=(3/4,1/4),
        # JSD = 1/2 log2(4/3) + 1/2 [1/2 log2(2/3) + 1/2 log2(2)] = 0.311278...
        p = np.array([[1.0, 0.0], [0.3, 0.7], [1.0, 0.0]])
        q = np.array([[0.0, 1.0], [0.3, 0.7], [0.5, 0.5]])
        want3 = 0.5 * np.log2(4 / 3) + 0.5 * (0.5 * np.log2(2 / 3) + 0.5 * np.log2(2.0))
        np.testing.assert_allclose(m.jsd(p, q), [1.0, 0.0, want3], atol=1e-12)

    def test_matches_scipy(self):
        from scipy.spatial.distance import jensenshannon

        p, q = RNG.dirichlet(np.ones(6), 10), RNG.dirichlet(np.ones(6), 10) * 3.0  # q unnormalised
        want = [jensenshannon(p[i], q[i], base=2) ** 2 for i in range(10)]
        np.testing.assert_allclose(m.jsd(p, q), want, atol=1e-12)
        assert isinstance(m.jsd(p[0], q[0]), float)

    def test_zero_row_nan_and_negative_raises(self):
        out = m.jsd(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
        assert np.isnan(out[0])
        assert out[1] == 0.0
        with pytest.raises(ValueError, match="non-negative"):
            m.jsd(np.array([[-1.0, 2.0]]), np.array([[1.0, 0.0]]))


class TestProportionMetrics:
    def test_aligned_by_name(self):
        truth = pd.DataFrame([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], columns=["a", "b", "c"])
        pred = truth[["c", "a", "b"]]
        out = m.proportion_metrics(pred, truth)
        assert out == pytest.approx({"pearson": 1.0, "rmse": 0.0, "jsd": 0.0})

    def test_hand(self):
        truth = np.array([[1.0, 0.0], [0.5, 0.5]])
        pred = np.array([[0.0, 1.0], [0.5, 0.5]])
        out = m.proportion_metrics(pred, truth)
        # spot 0: r = -1; spot 1: both constant -> NaN, skipped. RMSE: entries (1, 1, 0, 0) -> sqrt(2/4)
        assert out["pearson"] == pytest.approx(-1.0)
        assert out["rmse"] == pytest.approx(np.sqrt(0.5))
        assert out["jsd"] == pytest.approx(0.5)  # (1 + 0) / 2

    def test_column_mismatch(self):
        with pytest.raises(ValueError, match="same columns"):
            m.proportion_metrics(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"b": [1.0]}))


class TestAssignmentAccuracy:
    def test_hand(self):
        true = ["s1", "s2", np.nan, "", "s3", "s1"]
        pred = ["s1", "s1", "s9", "s9", None, "s1"]
        # cells with a true spot: 0, 1, 4, 5 -> right: 0, 5 -> 2/4
        assert m.assignment_accuracy(pred, true) == 0.5
        assert m.assignment_accuracy(pd.Categorical(pred), pd.Categorical(true)) == 0.5

    def test_no_truth_and_shape(self):
        assert np.isnan(m.assignment_accuracy(["a"], [np.nan]))
        with pytest.raises(ValueError, match="same length"):
            m.assignment_accuracy(["a", "b"], ["a"])


class TestBinary:
    def test_against_sklearn(self):
        from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

        y = RNG.random(50) > 0.6
        s = y + RNG.normal(0, 0.8, 50)
        assert m.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
        assert m.average_precision(y, s) == pytest.approx(average_precision_score(y, s))
        assert m.f1(y, s > 0.5) == pytest.approx(f1_score(y, s > 0.5))

    def test_hand(self):
        y = np.array([0, 0, 1, 1])
        # scores 0.1 0.4 0.35 0.8: of the 4 (neg, pos) pairs, 3 are ordered right -> AUC 0.75
        assert m.roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == 0.75
        # ranking 0.8(+) 0.4(-) 0.35(+) 0.1(-): precision at the positives 1 and 2/3 -> AP = (1 + 2/3) / 2
        assert m.average_precision(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
        # TP 1, FP 1, FN 1 -> 2 / 4
        assert m.f1(y, [0, 1, 0, 1]) == 0.5

    def test_edge_cases(self):
        assert np.isnan(m.roc_auc([1, 1], [0.2, 0.3]))
        assert np.isnan(m.average_precision([0, 0], [0.2, 0.3]))
        assert np.isnan(m.f1([0, 0], [0, 0]))
        with pytest.raises(ValueError, match="binary"):
            m.roc_auc([0, 2], [0.1, 0.2])
        with pytest.raises(ValueError, match="binary"):
            m.f1([0, 1], [0.2, 0.7])
        with pytest.raises(ValueError, match="same length"):
            m.roc_auc([0, 1, 1], [0.1, 0.2])


class TestGmmThreshold:
    def test_separates_two_groups(self):
        s = np.concatenate([RNG.normal(0.0, 1.0, 300), RNG.normal(6.0, 1.0, 300)])
        t = m.gmm_threshold(s, seed=0)
        # equal weights and widths: the posterior crosses 0.5 at the midpoint of the means (3), up to fitting error
        assert abs(t - 3.0) < 0.5
        assert m.gmm_threshold(s, seed=0) == t  # seedable

    def test_unequal_weights_shift_toward_minor(self):
        s = np.concatenate([RNG.normal(0.0, 1.0, 900), RNG.normal(6.0, 1.0, 100)])
        # weights 0.9 / 0.1: log(9) / 6 ~ 0.37 past the midpoint toward the small component
        assert 3.0 < m.gmm_threshold(s) < 4.0

    def test_bad(self):
        with pytest.raises(ValueError, match="distinct"):
            m.gmm_threshold([1.0, 1.0, np.nan])


class TestImages:
    def test_ssim(self):
        from skimage.metrics import structural_similarity

        a = RNG.random((32, 32))
        assert m.ssim(a, a) == pytest.approx(1.0)
        b = a + RNG.normal(0, 0.1, a.shape)
        rng_ = max(a.max(), b.max()) - min(a.min(), b.min())
        assert m.ssim(a, b) == pytest.approx(structural_similarity(a, b, data_range=rng_))
        rgb = RNG.random((32, 32, 3))
        assert m.ssim(rgb, rgb, channel_axis=-1) == pytest.approx(1.0)
        with pytest.raises(ValueError, match="same shape"):
            m.ssim(a, a[:10])

    def test_relative_l2(self):
        # ||(3, 4) - (0, 0)|| / ||(3, 4)|| style: a = (3, 4), b = (0, 4) -> 3 / 4
        assert m.relative_l2(np.array([3.0, 4.0]), np.array([0.0, 4.0])) == 0.75
        assert m.relative_l2(sparse.csr_matrix([[1.0, 0.0]]), np.array([[1.0, 0.0]])) == 0.0
        assert m.relative_l2(np.zeros(2), np.zeros(2)) == 0.0
        assert m.relative_l2(np.ones(2), np.zeros(2)) == np.inf
        with pytest.raises(ValueError, match="same shape"):
            m.relative_l2(np.ones(2), np.ones(3))


def _cases(*funcs):
    """Every invalid value generated from the functions' declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(f, name, value, id=f"{f.__name__}-{name}-{i}")
        for f in funcs
        for name, spec in f.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


@pytest.mark.parametrize(("func", "name", "value"), _cases(m.rmse, m.gmm_threshold, m.ssim, m.cross_entropy))
def test_invalid_parameter_raises(func, name, value):
    from stmap import StmapInputError

    a = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    args = {m.rmse: (a, a), m.gmm_threshold: (a.ravel(),), m.ssim: (a, a), m.cross_entropy: (a, a)}[func]
    with pytest.raises(StmapInputError, match=f"{func.__name__}: {name} must be"):  # a ValueError too
        func(*args, **{name: value})
    np.testing.assert_array_equal(a, [[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
