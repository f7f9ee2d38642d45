"""Measures used in tests, benchmarks and docs.

All functions take NumPy arrays (SciPy sparse matrices where noted, pandas DataFrames where columns carry names) and
return plain floats or arrays. Shapes are checked and a mismatch raises :class:`ValueError`.

NaN conventions: a correlation is NaN when either vector is constant (it is undefined). Functions returning one
value per row/column return those NaNs; summaries such as :func:`proportion_metrics` average with ``nanmean``.
Inputs containing NaN are not cleaned: NaN propagates to the entries it touches.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._params import Instance, Interval, Options, validate_params

__all__ = [
    "assignment_accuracy",
    "average_precision",
    "brier",
    "cross_entropy",
    "f1",
    "gmm_threshold",
    "jsd",
    "pearson_per_gene",
    "pearson_per_spot",
    "proportion_metrics",
    "r2_probabilities",
    "relative_l2",
    "rmse",
    "roc_auc",
    "spearman_per_gene",
    "ssim",
]


def _dense2d(x: Any, name: str) -> np.ndarray:
    if isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    if sparse.issparse(x):
        x = x.toarray()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"`{name}` must be 1D or 2D, got shape {a.shape}.")
    return a


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(pred, pd.DataFrame) and isinstance(truth, pd.DataFrame):
        pred, truth = _align_columns(pred, truth)
    p, t = _dense2d(pred, "pred"), _dense2d(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"`pred` and `truth` must have the same shape, got {p.shape} and {t.shape}.")
    return p, t


def _align_columns(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cp, ct = [str(c) for c in pred.columns], [str(c) for c in truth.columns]
    if set(cp) != set(ct):  # stmap stores a '/' of a data-derived name as '_' (zarr cannot store it): match so too
        from stmap._core._names import safe_key

        sp, st_ = [safe_key(c) for c in cp], [safe_key(c) for c in ct]
        if set(sp) == set(st_) and len(set(sp)) == len(sp) == len(st_):
            cp, ct = sp, st_
    if set(cp) != set(ct):
        raise ValueError(
            f"`pred` and `truth` must have the same columns; only in pred: {sorted(set(cp) - set(ct))}, "
            f"only in truth: {sorted(set(ct) - set(cp))}."
        )
    pred = pred.set_axis(cp, axis=1)
    truth = truth.set_axis(ct, axis=1)
    return pred[ct], truth


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    const = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)  # exact test; centring may leave rounding noise
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    num = (a * b).sum(axis=1)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r[const] = np.nan
    return np.clip(r, -1.0, 1.0)


def pearson_per_gene(pred: Any, truth: Any) -> np.ndarray:
    """Pearson correlation of each gene (column) across observations.

    Parameters
    ----------
    pred
        Predicted ``(n_obs, n_genes)`` values: an array, a SciPy sparse matrix or a DataFrame.
    truth
        True values of the same shape; two DataFrames are aligned by column name.

    Returns
    -------
    ``(n_genes,)`` correlations; NaN where either column is constant.

    See Also
    --------
    :func:`stmap.metrics.spearman_per_gene`
        The same on ranks.
    :func:`stmap.metrics.pearson_per_spot`
        One correlation per observation instead of per gene.
    :func:`stmap.tl.project_genes`
        Predicts the expression this measure is used to check.
    :doc:`/tutorials/mapping`
        Tutorial.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> truth = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    >>> pred = np.array([[1.1, 1.0], [2.1, 0.0], [2.9, 1.0]])
    >>> st.metrics.pearson_per_gene(pred, truth).round(3)
    array([ 0.998, -1.   ])
    """
    p, t = _pair(pred, truth)
    return _rowwise_pearson(p.T, t.T)


def pearson_per_spot(pred: Any, truth: Any) -> np.ndarray:
    """Pearson correlation of each observation (row, e.g. a spot) across genes or cell types.

    Parameters
    ----------
    pred
        Predicted ``(n_obs, n_features)`` values: an array, a SciPy sparse matrix or a DataFrame.
    truth
        True values of the same shape; two DataFrames are aligned by column name.

    Returns
    -------
    ``(n_obs,)`` correlations; NaN where either row is constant.

    See Also
    --------
    :func:`stmap.metrics.pearson_per_gene`
        One correlation per gene instead of per observation.
    :func:`stmap.metrics.proportion_metrics`
        Its mean over spots, with RMSE and JSD, for cell-type proportions.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> truth = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    >>> pred = np.array([[0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    >>> st.metrics.pearson_per_spot(pred, truth).round(3)
    array([0.997, 1.   ])
    """
    p, t = _pair(pred, truth)
    return _rowwise_pearson(p, t)


def spearman_per_gene(pred: Any, truth: Any) -> np.ndarray:
    """Spearman rank correlation of each gene (column) across observations (ties get average ranks).

    Parameters
    ----------
    pred
        Predicted ``(n_obs, n_genes)`` values: an array, a SciPy sparse matrix or a DataFrame.
    truth
        True values of the same shape; two DataFrames are aligned by column name.

    Returns
    -------
    ``(n_genes,)`` correlations; NaN where either column is constant.

    See Also
    --------
    :func:`stmap.metrics.pearson_per_gene`
        The linear correlation.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> truth = np.array([[1.0, 5.0], [2.0, 1.0], [3.0, 0.0]])
    >>> pred = np.array([[1.0, 0.0], [4.0, 1.0], [9.0, 2.0]])  # monotone in gene 0, reversed in gene 1
    >>> st.metrics.spearman_per_gene(pred, truth)
    array([ 1., -1.])
    """
    from scipy.stats import rankdata

    p, t = _pair(pred, truth)
    return _rowwise_pearson(rankdata(p, axis=0).T, rankdata(t, axis=0).T)


@validate_params(axis=[Options({0, 1}), None])
def rmse(pred: Any, truth: Any, *, axis: int | None = None) -> float | np.ndarray:
    """Root mean squared error.

    Parameters
    ----------
    pred
        Predicted values: an array, a SciPy sparse matrix or a DataFrame.
    truth
        True values of the same shape; two DataFrames are aligned by column name.
    axis
        ``None``: one value over all entries; ``1``: one per row; ``0``: one per column.

    Returns
    -------
    The RMSE (NaN if any entry involved is NaN).

    See Also
    --------
    :func:`stmap.metrics.relative_l2`
        The error relative to the size of the reference.
    :func:`stmap.metrics.proportion_metrics`
        RMSE with correlation and JSD for cell-type proportions.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> truth = np.array([[0.0, 1.0], [2.0, 3.0]])
    >>> pred = np.array([[0.0, 1.0], [2.0, 5.0]])
    >>> st.metrics.rmse(pred, truth)
    1.0
    >>> st.metrics.rmse(pred, truth, axis=1)
    array([0.        , 1.41421356])
    """
    p, t = _pair(pred, truth)
    out = np.sqrt(np.mean((p - t) ** 2, axis=axis))
    return float(out) if axis is None else out


def jsd(p: Any, q: Any) -> np.ndarray | float:
    """Row-wise Jensen-Shannon divergence in bits (base 2, so it lies in ``[0, 1]``).

    Each row is normalised to sum to 1 first; ``0 log 0 = 0``.

    Parameters
    ----------
    p
        ``(n, k)`` non-negative array (or a 1D ``(k,)`` one, giving one value) or DataFrame.
    q
        Non-negative values of the same shape; two DataFrames are aligned by column name.

    Returns
    -------
    ``(n,)`` divergences (a float for 1D input); NaN for rows where either sums to 0 or contains NaN.

    See Also
    --------
    :func:`stmap.metrics.proportion_metrics`
        Its mean over spots, with correlation and RMSE.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> st.metrics.jsd(np.array([1.0, 0.0]), np.array([0.0, 1.0]))  # disjoint: the maximum
    1.0
    >>> st.metrics.jsd(np.array([[2.0, 2.0], [1.0, 3.0]]), np.array([[1.0, 1.0], [1.0, 3.0]]))  # rows are normalised
    array([0., 0.])
    """
    one = np.ndim(p) == 1 and np.ndim(q) == 1
    a, b = _pair(np.asarray(p)[None], np.asarray(q)[None]) if one else _pair(p, q)
    if np.any(a < 0) or np.any(b < 0):
        raise ValueError("`p` and `q` must be non-negative.")
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / a.sum(axis=1, keepdims=True)
        b = b / b.sum(axis=1, keepdims=True)
        m = 0.5 * (a + b)

        def kl(x, y):
            return np.where(x > 0, x * np.log2(x / y), 0.0).sum(axis=1)

        out = 0.5 * kl(a, m) + 0.5 * kl(b, m)
    bad = ~(np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1))
    out[bad] = np.nan
    out = np.clip(out, 0.0, 1.0)
    return float(out[0]) if one else out


def proportion_metrics(pred: Any, truth: Any) -> dict[str, float]:
    """Summaries of predicted vs true cell-type proportions per spot.

    Parameters
    ----------
    pred
        Predicted ``(n_spots, n_types)`` proportions, an array or a DataFrame with one column per type.
    truth
        True proportions of the same shape; two DataFrames are aligned by column name (the order may differ, the
        sets of columns must agree), arrays must already be in the same order.

    Returns
    -------
    ``{'pearson': mean per-spot Pearson (NaN spots skipped), 'rmse': RMSE over all entries, 'jsd': mean per-spot JSD
    (NaN spots skipped)}``.

    See Also
    --------
    :func:`stmap.tl.map_cells`
        Writes the predicted proportions (``obsm['stmap_cell_type_fractions']``).
    :func:`stmap.metrics.pearson_per_spot`
        The per-spot correlations behind ``'pearson'``.
    :func:`stmap.metrics.jsd`
        The per-spot divergences behind ``'jsd'``.
    :doc:`/tutorials/mapping`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> truth = sdata.tables["spots"].obsm["cell_type_fractions"].dropna()
    >>> uniform = truth * 0 + 1 / truth.shape[1]  # a baseline that ignores the data
    >>> scores = st.metrics.proportion_metrics(uniform, truth)
    >>> sorted(scores)
    ['jsd', 'pearson', 'rmse']
    >>> st.metrics.proportion_metrics(truth, truth)["rmse"]
    0.0
    """
    if isinstance(pred, pd.DataFrame) and isinstance(truth, pd.DataFrame):
        pred, truth = _align_columns(pred, truth)
    p, t = _pair(pred, truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN -> NaN, documented
        return {
            "pearson": float(np.nanmean(pearson_per_spot(p, t))),
            "rmse": float(rmse(p, t)),
            "jsd": float(np.nanmean(jsd(p, t))),
        }


def assignment_accuracy(pred_spot: Any, true_spot: Any) -> float:
    """Share of cells placed in their true spot, over cells that have one.

    Parameters
    ----------
    pred_spot
        Predicted spot id per cell; a missing prediction (NaN, ``None``) counts as wrong.
    true_spot
        True spot id per cell (same length); a cell without one (NaN, ``None`` or ``''``) is ignored.

    Returns
    -------
    The accuracy in ``[0, 1]``; NaN when no cell has a true spot.

    See Also
    --------
    :func:`stmap.tl.map_cells`
        Places cells in spots (in greedy mode, the spot of each reference cell is ``obs['stmap_spot']``).

    Examples
    --------
    >>> import stmap as st
    >>> st.metrics.assignment_accuracy(["s1", "s2", "s2", None], ["s1", "s1", "s2", "s3"])
    0.5
    >>> st.metrics.assignment_accuracy(["s1", "s2"], ["s1", None])  # the second cell has no true spot
    1.0
    """
    p, t = pd.Series(np.asarray(pred_spot, dtype=object)), pd.Series(np.asarray(true_spot, dtype=object))
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"`pred_spot` and `true_spot` must be 1D of the same length, got {p.shape} and {t.shape}.")
    has = t.notna().to_numpy() & (t.astype(str).to_numpy() != "")
    if not has.any():
        return float("nan")
    pv, tv = p.to_numpy()[has], t.to_numpy()[has]
    ok = pd.notna(pv) & (pd.Series(pv).astype(str).to_numpy() == pd.Series(tv).astype(str).to_numpy())
    return float(ok.mean())


def _binary(y_true: Any, score: Any, name: str = "y_score") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"`y_true` and `{name}` must have the same length, got {y.shape} and {s.shape}.")
    if y.dtype != bool:
        vals = set(np.unique(y).tolist())
        if not vals <= {0, 1}:
            raise ValueError(f"`y_true` must be binary (bool or 0/1), got values {sorted(vals)[:5]}.")
    return y.astype(bool), s


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve (:func:`sklearn.metrics.roc_auc_score`).

    Parameters
    ----------
    y_true
        Binary labels (bool or 0/1).
    y_score
        Scores, higher meaning more likely positive.

    Returns
    -------
    The AUC; NaN when only one class is present.

    See Also
    --------
    :func:`stmap.metrics.average_precision`
        The area under the precision-recall curve.
    :func:`stmap.tl.detect_ctr`
        Stores this score for known labels (``label_key``).

    Examples
    --------
    >>> import stmap as st
    >>> st.metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    from sklearn.metrics import roc_auc_score

    y, s = _binary(y_true, y_score)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def average_precision(y_true: Any, y_score: Any) -> float:
    """Average precision (:func:`sklearn.metrics.average_precision_score`).

    Parameters
    ----------
    y_true
        Binary labels (bool or 0/1).
    y_score
        Scores, higher meaning more likely positive.

    Returns
    -------
    The AP; NaN when there is no positive.

    See Also
    --------
    :func:`stmap.metrics.roc_auc`
        The area under the ROC curve.
    :func:`stmap.tl.detect_ctr`
        Stores this score for known labels (``label_key``).

    Examples
    --------
    >>> import stmap as st
    >>> round(st.metrics.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    from sklearn.metrics import average_precision_score

    y, s = _binary(y_true, y_score)
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, s))


def f1(y_true: Any, y_pred: Any) -> float:
    """Binary F1 score of the positive class, ``2 TP / (2 TP + FP + FN)``.

    Parameters
    ----------
    y_true
        True binary labels (bool or 0/1).
    y_pred
        Predicted binary labels (bool or 0/1); threshold scores first, e.g. with :func:`gmm_threshold`.

    Returns
    -------
    The F1 score; NaN when there are neither true nor predicted positives (undefined).

    See Also
    --------
    :func:`stmap.metrics.gmm_threshold`
        Turns scores into binary calls.
    :func:`stmap.tl.detect_ctr`
        Stores this score for known labels (``label_key``).

    Examples
    --------
    >>> import stmap as st
    >>> st.metrics.f1([1, 1, 0, 0], [1, 0, 1, 0])  # one TP, one FP, one FN
    0.5
    """
    y, p = _binary(y_true, y_pred, "y_pred")
    if not set(np.unique(p).tolist()) <= {0.0, 1.0}:
        raise ValueError("`y_pred` must be binary (bool or 0/1); threshold scores first, e.g. with gmm_threshold.")
    p = p.astype(bool)
    tp = np.sum(y & p)
    den = 2 * tp + np.sum(~y & p) + np.sum(y & ~p)
    return float("nan") if den == 0 else float(2 * tp / den)


@validate_params(
    seed=[Interval(int, 0, 2**32 - 1), None],
    covariance_type=Options({"full", "tied", "diag", "spherical"}),
)
def gmm_threshold(scores: Any, *, seed: int | None = 0, covariance_type: str = "full") -> float:
    """Threshold separating the two components of a 1D two-component Gaussian mixture fitted to ``scores``.

    The threshold is the point between the two means where the posterior of the upper component reaches 0.5 (found
    on a fine grid); if the posterior never crosses there (very unequal widths), the midpoint of the means.

    Parameters
    ----------
    scores
        1D scores (NaNs are dropped).
    seed
        Seed of :class:`sklearn.mixture.GaussianMixture`.
    covariance_type
        ``'full'`` (each component its own width) or ``'tied'`` (one shared width: the upper component cannot
        absorb the tail of the lower one, e.g. for probabilities piled up near 0 and 1); ``'diag'`` and
        ``'spherical'`` equal ``'full'`` in 1D.

    Returns
    -------
    The threshold; call ``scores > threshold`` positive.

    See Also
    --------
    :func:`stmap.tl.detect_ctr`
        Calls cancer regions with this threshold (``covariance_type='tied'``).
    :func:`stmap.metrics.f1`
        Scores the calls.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> rng = np.random.default_rng(0)
    >>> scores = np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.8, 0.05, 100)])
    >>> threshold = st.metrics.gmm_threshold(scores)
    >>> 0.4 < threshold < 0.6, int((scores > threshold).sum())
    (True, 100)
    """
    from sklearn.mixture import GaussianMixture

    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size < 2 or np.ptp(s) == 0:
        raise ValueError("`scores` needs at least two distinct finite values.")
    gm = GaussianMixture(n_components=2, covariance_type=covariance_type, random_state=seed, n_init=3)
    gm = gm.fit(s[:, None])
    means = gm.means_.ravel()
    lo, hi = np.sort(means)
    upper = int(np.argmax(means))
    grid = np.linspace(lo, hi, 2001)
    post = gm.predict_proba(grid[:, None])[:, upper]
    cross = np.flatnonzero(post >= 0.5)
    if cross.size == 0 or cross[0] == 0:
        return float((lo + hi) / 2)
    return float(grid[cross[0]])


@validate_params(
    data_range=[Interval(float, 0, None, "neither"), None],
    channel_axis=[Instance((numbers.Integral,)), None],
)
def ssim(img1: Any, img2: Any, *, data_range: float | None = None, channel_axis: int | None = None) -> float:
    """Structural similarity :cite:p:`wang2004ssim` (:func:`skimage.metrics.structural_similarity`).

    Parameters
    ----------
    img1
        The first image (any number of dimensions).
    img2
        The second image, of the same shape.
    data_range
        Value range; default the range of both images together (``max - min``), so float images work.
    channel_axis
        Axis of channels for multichannel images; ``None`` treats all axes as spatial.

    Returns
    -------
    The mean SSIM.

    See Also
    --------
    :func:`stmap.models.ssim_loss`
        The differentiable ``1 - SSIM`` that gene maps are trained with.
    :func:`stmap.tl.gene_maps`
        Reconstructs the H&E (``reconstruct=True``) that this measure can compare with the original.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> img = np.random.default_rng(0).random((32, 32))
    >>> st.metrics.ssim(img, img)
    1.0
    >>> st.metrics.ssim(img, img + 0.5) < 1  # same structure, other brightness
    True
    """
    from skimage.metrics import structural_similarity

    a, b = np.asarray(img1, dtype=np.float64), np.asarray(img2, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Images must have the same shape, got {a.shape} and {b.shape}.")
    if data_range is None:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min())) or 1.0
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis))


def relative_l2(a: Any, b: Any) -> float:
    """Relative L2 error ``||a - b|| / ||b||`` (``b`` is the reference).

    Parameters
    ----------
    a
        The estimate: an array or a SciPy sparse matrix.
    b
        The reference, of the same shape.

    Returns
    -------
    The relative error; ``inf`` if ``b`` is all zero and ``a`` is not, 0 if both are.

    See Also
    --------
    :func:`stmap.metrics.rmse`
        The absolute error.
    :func:`stmap.kernels.kde_direct`
        The exact estimate the binned density is compared with this way.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> st.metrics.relative_l2(np.array([3.0, 4.0]), np.array([3.0, 0.0]))
    1.3333333333333333
    """
    x = np.asarray(a.toarray() if sparse.issparse(a) else a, dtype=np.float64)
    y = np.asarray(b.toarray() if sparse.issparse(b) else b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {x.shape} and {y.shape}.")
    num, den = np.linalg.norm((x - y).ravel()), np.linalg.norm(y.ravel())
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


# ---------------------------------------------------------------------------------------------------------------------
# class-probability scores (MapMySections challenge scoring)
# ---------------------------------------------------------------------------------------------------------------------
def _class_probs(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows normalised to sum 1 (true counts -> proportions); DataFrames are aligned on columns."""
    if isinstance(pred, pd.DataFrame) and isinstance(truth, pd.DataFrame):
        pred, truth = _align_columns(pred, truth)
    p = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    t = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}.")
    if (p < 0).any() or (t < 0).any() or not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("Class probabilities/counts must be finite and non-negative.")
    ps, ts = p.sum(1, keepdims=True), t.sum(1, keepdims=True)
    if (ps == 0).any() or (ts == 0).any():
        raise ValueError("Every row needs a positive total (an all-zero row has no class distribution).")
    return p / ps, t / ts


@validate_params(eps=Interval(float, 0, 1, "neither"))
def cross_entropy(pred: Any, truth: Any, *, eps: float = 1e-15) -> float:
    """Mean cross-entropy ``-sum_k t_k log p_k`` of predicted class probabilities against the true proportions.

    Parameters
    ----------
    pred
        ``(n, k)`` predicted probabilities (or non-negative scores; rows are normalised to sum 1).
    truth
        ``(n, k)`` true class counts or proportions (rows normalised to sum 1).
    eps
        Predicted probabilities are clipped to ``[eps, 1]`` (as in :func:`sklearn.metrics.log_loss`).

    Returns
    -------
    The mean over rows (lower is better).

    See Also
    --------
    :func:`stmap.metrics.brier`
        The squared error of the same probabilities.
    :func:`stmap.metrics.r2_probabilities`
        The explained variance of the proportions.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> truth = np.array([[3, 1], [0, 4]])  # counts per class
    >>> pred = np.array([[0.75, 0.25], [0.1, 0.9]])
    >>> round(st.metrics.cross_entropy(pred, truth), 4)
    0.3338
    """
    p, t = _class_probs(pred, truth)
    return float(np.mean(-(t * np.log(np.clip(p, eps, 1.0))).sum(1)))


def brier(pred: Any, truth: Any) -> float:
    """Multi-class Brier score: mean over rows of ``sum_k (p_k - t_k)**2`` (rows normalised to sum 1).

    Parameters
    ----------
    pred
        ``(n, k)`` predicted probabilities (or non-negative scores; rows are normalised to sum 1).
    truth
        ``(n, k)`` true class counts or proportions (rows normalised to sum 1).

    Returns
    -------
    The score in ``[0, 2]`` (lower is better).

    See Also
    --------
    :func:`stmap.metrics.cross_entropy`
        The log loss of the same probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> truth = np.array([[3, 1], [0, 4]])
    >>> st.metrics.brier(np.array([[0.75, 0.25], [0.0, 1.0]]), truth)  # exact proportions
    0.0
    >>> st.metrics.brier(np.array([[0.25, 0.75], [0.0, 1.0]]), truth)
    0.25
    """
    p, t = _class_probs(pred, truth)
    return float(np.mean(((p - t) ** 2).sum(1)))


def r2_probabilities(pred: Any, truth: Any) -> float:
    """Coefficient of determination of predicted vs true class proportions, pooled over all rows and classes.

    Parameters
    ----------
    pred
        ``(n, k)`` predicted probabilities (or non-negative scores; rows are normalised to sum 1).
    truth
        ``(n, k)`` true class counts or proportions (rows normalised to sum 1).

    Returns
    -------
    ``1 - sum (t - p)**2 / sum (t - mean(t))**2`` (1 is perfect; can be negative).

    See Also
    --------
    :func:`stmap.metrics.cross_entropy`
        The log loss of the same probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> truth = np.array([[3, 1], [0, 4]])
    >>> st.metrics.r2_probabilities(np.array([[0.75, 0.25], [0.0, 1.0]]), truth)
    1.0
    >>> st.metrics.r2_probabilities(np.array([[0.5, 0.5], [0.5, 0.5]]), truth)  # uniform guess
    0.0
    """
    p, t = _class_probs(pred, truth)
    den = float(((t - t.mean()) ** 2).sum())
    return float(1.0 - ((t - p) ** 2).sum() / den) if den > 0 else float("nan")
