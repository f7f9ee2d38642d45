"""``st.tl.detect_ctr``: apply a trained CTR model to a sample, call CTR, write the scores and the call."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd

from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._device import resolve_device, torch_threads
from stmap._core._docs import inject_docs
from stmap._core._params import Instance, Interval, validate_params
from stmap._core._resolve import TableContext, resolve
from stmap._core._write import Results

from ._features import Sample, check_feature_meta, labels
from ._model import CTRModel
from ._threshold import CALL, COLORS, call_metrics, call_threshold

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["detect_ctr"]


@overload
def detect_ctr(
    sdata: SpatialData | AnnData,
    model: CTRModel | str | Path,
    *,
    table_key: str | None = ...,
    threshold: float | None = ...,
    label_key: str | None = ...,
    positive: Any = ...,
    layer: str | None = ...,
    device: str | None = ...,
    seed: int = ...,
    coordinate_system: str | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def detect_ctr(
    sdata: SpatialData | AnnData,
    model: CTRModel | str | Path,
    *,
    table_key: str | None = ...,
    threshold: float | None = ...,
    label_key: str | None = ...,
    positive: Any = ...,
    layer: str | None = ...,
    device: str | None = ...,
    seed: int = ...,
    coordinate_system: str | None = ...,
    key_added: str = ...,
    copy: Literal[True],
) -> SpatialData | AnnData: ...
@validate_params(
    model=Instance((CTRModel, str, os.PathLike)),
    table_key=[Instance((str,)), None],
    threshold=[Interval(float, 0, 1), None],
    label_key=[Instance((str,)), None],
    layer=[Instance((str,)), None],
    seed=Interval(int, 0, 2**32 - 1),
    coordinate_system=[Instance((str,)), None],
    key_added=Instance((str,)),
    copy=Instance((bool,)),
)
@inject_docs()
def detect_ctr(
    sdata: SpatialData | AnnData,
    model: CTRModel | str | Path,
    *,
    table_key: str | None = None,
    threshold: float | None = None,
    label_key: str | None = None,
    positive: Any = True,
    layer: str | None = None,
    device: str | None = None,
    seed: int = 0,
    coordinate_system: str | None = None,
    key_added: str = Key.default.ctr,
    copy: bool = False,
) -> SpatialData | AnnData | None:
    """Detect cancer tissue regions in a sample with a trained :class:`~stmap.tl.CTRModel`.

    The detector is SpaCRD's :cite:p:`xue2026spacrd`. The sample is prepared with the model's rules (its genes,
    zero-filled with a warning when the sample lacks some; per-sample min-max scaling; its ``n_neighbors`` nearest
    spots, in any platform's spot layout), scored, and called at a label-free threshold unless one is given: the
    Bayes cut for the sample's own cancer prevalence, estimated from the scores (see ``threshold``).

    Parameters
    ----------
    {sdata}
    model
        A :class:`~stmap.tl.CTRModel` or the path of a saved one.
    {table_key}
    threshold
        Probability above which a spot is called CTR. Default (no label of the sample is used): the model's
        probabilities are posteriors under its training prevalence ``model.prevalence`` (cancer fraction of the
        labelled training spots); the sample's prevalence ``pi`` is estimated from its scores by EM (re-weight every
        posterior by ``pi / prevalence`` and ``(1 - pi) / (1 - prevalence)``, set ``pi`` to their mean, repeat;
        Saerens et al. 2002), and a spot is called where its re-weighted posterior exceeds 1/2, i.e. where the
        probability exceeds ``1 / (1 + r)``, ``r = pi (1 - prevalence) / ((1 - pi) prevalence)`` (0.5 when the
        prevalences agree). A tumour-rich sample is thus cut lower than the sources, a tumour-poor one higher.
        ``threshold_method`` records both prevalences. Models saved without their prevalence fall back to a
        2-component Gaussian mixture on the scores with one shared width (:func:`stmap.metrics.gmm_threshold`).

        How the rule was chosen: on HER2ST sections held out of training (``benchmarks/ctr.py``; for each task only
        sections other than its target, at artificial cancer fractions 0.1 to 0.9), it was compared with 0.5, the
        mixture, the prevalence taken as the mean probability, and EM with its shift scaled down, soft-thresholded
        or ignored below a dead zone. No alternative was better consistently (the best of each task's validation was
        within 0.01 MCC of EM, a different rule each time), and calibrating the probabilities on held-out source
        sections first (Platt) changed the mean MCC by at most 0.02, so the plain EM rule stays. It moves the cut
        where the prevalence truly differs (patient A, 88% cancer, after training on patient C at 45%: MCC 0.53 vs
        0.47 at 0.5, mean of 3 seeds), but only part of the way (the best cut there lies near 0.03). Its limit: a
        sample whose scores are all offset (a batch effect of the section, seen on held-out sections of patient C as
        logit offsets of either sign) looks to EM like a change of prevalence, and no rule on the scores alone can
        tell the two apart; where the sample is known to share the sources' prevalence, ``threshold=0.5`` is the
        alternative.
    label_key
        Optional ``obs`` column with known labels: ROC-AUC, AP and F1 are then stored in ``.uns``.
    positive
        Label value(s) counted as cancer in ``label_key``.
    layer
        Layer with raw counts (default ``X``).
    {device}
    {seed}
    {coordinate_system}
    {key_added}
    {copy}

    Returns
    -------
    ``None`` (or, with ``copy=True``, the modified copy). Writes to the table:

    ``.obs['<key_added>_prob']``
        Cancer probability in [0, 1].
    ``.obs['<key_added>']``
        Categorical call, ``'CTR'`` / ``'non-CTR'`` (palette in ``.uns['<key_added>_colors']``).
    ``.obsm['<key_added>_latent']``
        The VAE posterior ``(mu, log var)`` per spot.
    ``.uns['<key_added>']``
        ``threshold``, ``threshold_method``, ``genes``, ``n_missing_genes``, ``modality``, ``features_key`` and, with
        ``label_key``, ``metrics`` (``roc_auc``, ``average_precision``, ``f1``); ``params``.

    Raises
    ------
    StmapInputError
        No shared genes with the model, missing or NaN features, an unknown label column, or a bad threshold. Nothing
        is written.

    See Also
    --------
    :func:`stmap.tl.train_ctr`
        Trains the model.
    :func:`stmap.pl.ctr`
        Draws the calls over the H&E.
    :func:`stmap.metrics.gmm_threshold`
        The threshold of models saved without their training prevalence.
    :doc:`/tutorials/ctr`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.histology_features(sdata, table_key="spots")
    >>> model = st.tl.train_ctr(
    ...     sdata, label_key="tumor", table_key="spots", n_genes=50, pretrain_epochs=1, warmup_epochs=1, epochs=2
    ... )
    >>> st.tl.detect_ctr(sdata, model, table_key="spots", label_key="tumor")  # in practice: another section
    >>> spots = sdata.tables["spots"]
    >>> sorted(spots.obs["stmap_ctr"].cat.categories), spots.obsm["stmap_ctr_latent"].shape
    (['CTR', 'non-CTR'], (122, 32))
    >>> sorted(spots.uns["stmap_ctr"]["metrics"])
    ['average_precision', 'f1', 'label_key', 'roc_auc']
    """
    if not isinstance(model, CTRModel):
        model = CTRModel.load(model, device=device)
    dev = resolve_device(device)
    model.net.to(dev)
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    y = labels(ctx, label_key, positive) if label_key is not None else None
    start = logg.info(f"detecting cancer tissue regions ({model.modality})")
    s = model._prepare(ctx, ctx.table_key or "sample", layer, require_features=True)
    check_feature_meta(model, ctx)
    _warn_missing_genes(s, model, ctx)
    with torch_threads():
        prob, latent = model._predict(s, dev)
    threshold, method = call_threshold(prob, threshold, seed, prevalence=model.prevalence)
    call = prob > threshold
    meta: dict[str, Any] = {
        "threshold": float(threshold),
        "threshold_method": method,
        "genes": list(model.genes),
        "n_missing_genes": int(s.missing_genes),
        "modality": model.modality,
        "features_key": str(model.features_key),
        "n_ctr": int(call.sum()),
    }
    if y is not None and label_key is not None:
        meta["metrics"] = call_metrics(y, prob, call, label_key)
    params = {"threshold": threshold, "label_key": label_key, "layer": layer, "model": repr(model)}
    out = _write(ctx, key_added, params, prob, call, latent, meta, copy)
    keys = Key.ctr(key_added)
    logg.info("    finished", time=start, deep=f"added .obs[{keys.prob!r}], .obs[{keys.call!r}]")
    return out


def _warn_missing_genes(s: Sample, model: CTRModel, ctx: TableContext) -> None:
    if s.missing_genes:
        warnings.warn(
            f"{s.missing_genes} of the model's {len(model.genes)} genes are missing from table {ctx.table_key!r}; "
            "they are set to zero.",
            UserWarning,
            stacklevel=4,
        )


def _write(
    ctx: TableContext,
    key_added: str,
    params: dict[str, Any],
    prob: np.ndarray,
    call: np.ndarray,
    latent: np.ndarray,
    meta: dict[str, Any],
    copy: bool,
) -> Any:
    """Queue the scores, the call, the latent posterior and the record; commit them at once."""
    keys = Key.ctr(key_added)
    res = Results(ctx, key_added, params=params)
    res.obs(keys.prob, prob)
    res.obs(keys.call, pd.Categorical(np.where(call, CALL[1], CALL[0]), categories=list(CALL)))
    res.obsm(keys.latent, latent)
    res.uns(key_added, meta)
    res.uns(keys.colors, list(COLORS))
    return res.commit(copy)
