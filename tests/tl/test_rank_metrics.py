"""MapMySections class-probability scores in st.metrics, against sklearn references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, r2_score

import stmap as st


def _case(seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 20, size=(8, 5)).astype(float)
    truth[:, 0] += 1  # every row has a positive total
    pred = rng.dirichlet(np.ones(5), size=8)
    return pred, truth


def test_cross_entropy_matches_sklearn_for_hard_labels():
    pred, _ = _case()
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    onehot = np.eye(5)[y]
    assert st.metrics.cross_entropy(pred, onehot) == pytest.approx(log_loss(y, pred, labels=range(5)), rel=1e-12)


def test_brier_and_r2_definitions():
    pred, truth = _case(1)
    t = truth / truth.sum(1, keepdims=True)
    assert st.metrics.brier(pred, truth) == pytest.approx(np.mean(((pred - t) ** 2).sum(1)), rel=1e-12)
    assert st.metrics.r2_probabilities(pred, truth) == pytest.approx(r2_score(t.ravel(), pred.ravel()), rel=1e-12)
    assert st.metrics.brier(t, truth) == pytest.approx(0, abs=1e-15)  # perfect prediction
    assert st.metrics.r2_probabilities(t, truth) == pytest.approx(1, abs=1e-15)


def test_dataframes_aligned_and_bad_input():
    pred, truth = _case(2)
    cols = list("abcde")
    p = pd.DataFrame(pred, columns=cols)
    t = pd.DataFrame(truth, columns=cols)[cols[::-1]]  # same classes, other order
    assert st.metrics.brier(p, t) == pytest.approx(st.metrics.brier(pred, truth), rel=1e-12)
    with pytest.raises(ValueError, match="positive total"):
        st.metrics.cross_entropy(pred, np.zeros_like(truth))
