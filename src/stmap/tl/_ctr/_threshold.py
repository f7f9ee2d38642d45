"""Calling CTR from the scores: the threshold (given, or from a two-component mixture) and the call's metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Categories of the call, in order (``False``, ``True``).
CALL = ("non-CTR", "CTR")
#: Palette of the call (grey, red).
COLORS = ["#bdbdbd", "#d7191c"]


def call_threshold(prob: np.ndarray, threshold: float | None, seed: int) -> tuple[float, str]:
    """The threshold and how it was chosen: given, from a tied-width 2-component GMM, or 0.5 when not bimodal."""
    from stmap import metrics

    if threshold is not None:
        return threshold, "given"
    try:
        return metrics.gmm_threshold(prob, seed=seed, covariance_type="tied"), "gmm"
    except ValueError:
        return 0.5, "0.5 (scores not bimodal)"


def call_metrics(y: np.ndarray, prob: np.ndarray, call: np.ndarray, label_key: str) -> dict[str, Any]:
    """ROC-AUC and AP of the scores, F1 of the call, over the spots with a label (``y`` not NaN)."""
    from stmap import metrics

    ok = ~np.isnan(y)
    yt = y[ok].astype(bool)
    return {
        "roc_auc": metrics.roc_auc(yt, prob[ok]),
        "average_precision": metrics.average_precision(yt, prob[ok]),
        "f1": metrics.f1(yt, call[ok]),
        "label_key": label_key,
    }
