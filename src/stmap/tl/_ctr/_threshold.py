"""Calling CTR from the scores: the threshold (given, or from a two-component mixture) and the call's metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Categories of the call, in order (``False``, ``True``).
CALL = ("non-CTR", "CTR")
#: Palette of the call (grey, red).
COLORS = ["#bdbdbd", "#d7191c"]


def call_threshold(
    prob: np.ndarray, threshold: float | None, seed: int, *, prevalence: float | None = None
) -> tuple[float, str]:
    """The threshold and how it was chosen.

    Given; else, when the model's training prevalence is known, the Bayes cut for the target's prevalence estimated
    from the scores (:func:`prior_shift`); else a tied-width 2-component GMM, or 0.5 when the scores are not bimodal.
    """
    from stmap import metrics

    if threshold is not None:
        return threshold, "given"
    if prevalence is not None and 0 < prevalence < 1:
        cut, pi = prior_shift(prob, prevalence)
        return cut, f"prior shift (source prevalence {prevalence:.3f}, target {pi:.3f})"
    try:
        return metrics.gmm_threshold(prob, seed=seed, covariance_type="tied"), "gmm"
    except ValueError:
        return 0.5, "0.5 (scores not bimodal)"


def prior_shift(prob: np.ndarray, prevalence: float, *, max_iter: int = 1000, tol: float = 1e-8) -> tuple[float, float]:
    """Threshold on ``prob`` for a target whose cancer prevalence differs from the training sources'.

    The model's probabilities are posteriors under the sources' prevalence ``prevalence``. The target's prevalence
    ``pi`` is estimated by EM (Saerens, Latinne & Decaestecker 2002): re-weight every posterior by ``pi / prevalence``
    and ``(1 - pi) / (1 - prevalence)``, set ``pi`` to the mean re-weighted posterior, repeat. A spot is called where
    its re-weighted posterior exceeds 1/2, i.e. where ``prob`` exceeds ``1 / (1 + r)`` with
    ``r = pi (1 - prevalence) / ((1 - pi) prevalence)`` (0.5 when the prevalences agree). No target label is used.

    Returns
    -------
    The threshold on ``prob`` and the estimated target prevalence.
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-12, 1 - 1e-12)
    p = p[np.isfinite(p)]
    ps = float(prevalence)
    pi = ps
    for _ in range(max_iter):
        a, b = p * (pi / ps), (1 - p) * ((1 - pi) / (1 - ps))
        new = float(np.mean(a / (a + b)))
        if abs(new - pi) < tol:
            pi = new
            break
        pi = new
    pi = min(max(pi, 1e-6), 1 - 1e-6)
    r = pi * (1 - ps) / ((1 - pi) * ps)
    return float(1.0 / (1.0 + r)), pi


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
