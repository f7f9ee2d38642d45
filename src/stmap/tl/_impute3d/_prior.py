"""The linear histology prior: a ridge regression of the (standardised) expression on the spot features."""

from __future__ import annotations

from typing import Any

import numpy as np


def ridge_prior(X: np.ndarray, Z: np.ndarray, train: np.ndarray, max_rows: int | None = None) -> dict[str, Any]:
    """Linear histology prior: ridge of ``Z`` on ``X`` fitted on ``train`` rows (penalty by efficient LOO).

    ``max_rows``: fit on at most this many of them (a seeded random subset; a few features need few spots).
    """
    from sklearn.linear_model import RidgeCV

    rows = np.flatnonzero(train)
    if max_rows is not None and len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(0).choice(rows, size=max_rows, replace=False))
    full = RidgeCV(alphas=np.logspace(0, 5, 11)).fit(X[rows], Z[rows])
    fit = {"coef": full.coef_.T.astype(np.float64), "intercept": np.asarray(full.intercept_, dtype=np.float64)}
    fit["alpha"] = float(full.alpha_)
    return fit


def apply_prior(fit: dict[str, Any] | None, X: np.ndarray | None, has: np.ndarray, shape: tuple) -> np.ndarray:
    """The prior at every spot (0 without an image, and everywhere without a fit or features)."""
    if fit is None or X is None:
        return np.zeros(shape)
    return np.where(has[:, None], X @ np.asarray(fit["coef"]) + np.asarray(fit["intercept"]), 0.0)


def apply_prior32(fit: dict[str, Any] | None, X: np.ndarray | None, has: np.ndarray, shape: tuple) -> np.ndarray:
    """:func:`apply_prior` in float32, without spots x genes temporaries (for large stacks)."""
    out = np.zeros(shape, dtype=np.float32)
    if fit is None or X is None:
        return out
    coef = np.asarray(fit["coef"], dtype=np.float32)
    icpt = np.asarray(fit["intercept"], dtype=np.float32)
    rows = np.flatnonzero(has)
    for part in np.array_split(rows, max(1, len(rows) // 65536)):
        out[part] = np.asarray(X[part], dtype=np.float32) @ coef + icpt
    return out
