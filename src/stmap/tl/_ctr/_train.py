"""``st.tl.train_ctr``: pool labelled sources, prepare them by the model's rules, train SpaCRD in three phases."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._device import resolve_device, resolve_verbose, seed_everything, torch_threads
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError
from stmap._core._params import Instance, Interval, Options, validate_params
from stmap._core._resolve import TableContext, resolve

from ._features import Sample, as_list, feature_meta, features, labels, lognorm
from ._model import CTRModel

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["train_ctr"]

_MODALITIES = ("both", "expression", "histology")


@validate_params(
    label_key=Instance((str,)),
    table_key=[Instance((str,)), None],
    features_key=Instance((str,)),
    genes=[Instance((list, tuple, np.ndarray, pd.Index)), None],
    n_genes=Interval(int, 1, None),
    layer=[Instance((str,)), None],
    modality=Options(_MODALITIES),
    n_neighbors=Interval(int, 0, None),
    dim=Interval(int, 1, None),
    latent=Interval(int, 1, None),
    heads=Interval(int, 1, None),
    dropout=Interval(float, 0, 1, "left"),
    input_dropout=Interval(float, 0, 1, "left"),
    modality_dropout=Interval(float, 0, 0.5),
    pretrain_epochs=Interval(int, 0, None),
    warmup_epochs=Interval(int, 0, None),
    epochs=Interval(int, 0, None),
    batch_size=Interval(int, 1, None),
    lr=Interval(float, 0, None, "neither"),
    weight_decay=Interval(float, 0, None),
    seed=Interval(int, 0, None),
    coordinate_system=[Instance((str,)), None],
    verbose=[Instance((bool,)), None],
)
@inject_docs()
def train_ctr(
    sdatas: SpatialData | AnnData | Sequence[SpatialData | AnnData] | Mapping[str, SpatialData | AnnData],
    *,
    label_key: str,
    positive: Any = True,
    table_key: str | None = None,
    features_key: str = Key.obsm.histology,
    genes: Sequence[str] | None = None,
    n_genes: int = 1000,
    layer: str | None = None,
    modality: str = "both",
    n_neighbors: int = 6,
    dim: int = 64,
    latent: int = 16,
    heads: int = 8,
    dropout: float = 0.1,
    input_dropout: float = 0.2,
    modality_dropout: float = 0.15,
    pretrain_epochs: int = 10,
    warmup_epochs: int = 10,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
    device: str | None = None,
    coordinate_system: str | None = None,
    verbose: bool | None = None,
) -> CTRModel:
    """Train a cancer tissue region detector on labelled source samples (SpaCRD :cite:p:`xue2026spacrd`).

    Each spot is a sequence of 7 tokens (itself and its ``n_neighbors`` nearest spots) in two modalities: log-normalised
    expression of the model genes and histology features (both min-max scaled within each sample). An image and a
    gene encoder are first pre-trained contrastively (CLIP, temperature 0.07); bidirectional 8-head cross-attention
    (image tokens query gene tokens and vice versa) gives centre tokens that are fused; a VAE on the fused embedding
    pulls each spot's latent to a learnable centre of its class (class-conditional KL) and pushes the two centres apart;
    a classifier on ``(mu, log var)`` gives the cancer probability. Loss: reconstruction + 0.5 KL + 0.1 separation
    for ``warmup_epochs``, then BCE + 0.1 x that for ``epochs``.

    Sources without ``obsm[features_key]`` (e.g. a section without an image) are used with their image tokens
    replaced by a learned "missing" embedding (and left out of the contrastive loss), so their expression still
    trains the model.

    Parameters
    ----------
    sdatas
        One SpatialData/AnnData, a list, or a dict ``{name: sdata}`` of labelled sources.
    label_key
        ``obs`` column with the labels; missing values (NaN) mark unlabelled spots (used as neighbours only).
    positive
        Label value(s) counted as cancer.
    {table_key}
    features_key
        ``obsm`` key of the histology features (from :func:`stmap.pp.histology_features`).
    genes
        Model genes; default the ``n_genes`` most variable genes shared by all sources.
    n_genes
        Number of genes selected when ``genes`` is ``None``.
    layer
        Layer with raw counts (default ``X``).
    modality
        ``'both'`` (default), or ``'expression'`` / ``'histology'`` only (ablations and samples without images).
    n_neighbors
        Neighbour tokens per spot (6 as published).
    dim
        Token embedding size (a multiple of ``heads``).
    latent
        Size of the VAE latent space.
    heads
        Number of heads of the cross-attention.
    dropout
        Dropout inside the network.
    input_dropout
        Dropout on the network's inputs (regularisation against source-specific patterns).
    modality_dropout
        During training (``modality='both'``), the probability that a spot's gene modality, and separately its image
        modality, is replaced by the "missing" embedding (never both), so the fused model cannot rely on one modality
        alone and tolerates a missing one.
    pretrain_epochs
        Epochs of contrastive pre-training of the two encoders.
    warmup_epochs
        Epochs of VAE warm-up (reconstruction, KL to the class centres and their separation, no classifier).
    epochs
        Supervised epochs (classification loss plus the VAE losses).
    batch_size
        Spots per mini-batch.
    lr
        Learning rate of Adam.
    weight_decay
        Weight decay (L2 penalty) of Adam.
    {seed}
    {device}
    {coordinate_system}
    {verbose}

    Returns
    -------
    The trained :class:`~stmap.tl.CTRModel`.

    Raises
    ------
    StmapInputError
        Missing label column, labels with a single class, no shared genes, missing or NaN features. The inputs are
        never modified.

    See Also
    --------
    :func:`stmap.tl.detect_ctr`
        Applies the model to a sample.
    :func:`stmap.pp.histology_features`
        Writes the histology features the model reads.
    :class:`stmap.models.SpaCRDNet`
        The network.
    :doc:`/tutorials/ctr`
        Tutorial.

    Examples
    --------
    Train on the synthetic tissue's tumour labels (a few epochs, for speed):

    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.histology_features(sdata, table_key="spots")
    >>> model = st.tl.train_ctr(
    ...     sdata, label_key="tumor", table_key="spots", n_genes=50, pretrain_epochs=1, warmup_epochs=1, epochs=2
    ... )
    >>> model
    CTRModel(modality='both', 50 genes, 42 histology features ('X_histology'), 6 neighbours)
    """
    from stmap.models._spacrd import SpaCRDNet

    items = as_list(sdatas)
    if not items:
        raise StmapInputError("No source samples given.")
    if dim % heads:
        raise StmapInputError(f"dim ({dim}) must be a multiple of heads ({heads}) for the attention layers.")
    dev = resolve_device(device)
    start = logg.info(f"training CTR model on {len(items)} source sample(s)")
    t0 = time.perf_counter()
    ctxs = [(name, resolve(s, table_key, coordinate_system=coordinate_system)) for name, s in items]
    ys = [labels(ctx, label_key, positive) for _, ctx in ctxs]
    yall = np.concatenate(ys)
    _check_two_classes(yall, label_key, positive)
    use_feats = modality in ("both", "histology")
    has_feats = [features_key in ctx.adata.obsm for _, ctx in ctxs]
    n_features = _n_features(ctxs, has_feats, features_key, modality) if use_feats else 0
    model_genes = _model_genes(ctxs, layer, genes, n_genes) if modality in ("both", "expression") else []

    seed_everything(seed)
    config: dict[str, Any] = {
        "n_genes": len(model_genes),
        "n_features": n_features,
        "dim": dim,
        "latent": latent,
        "heads": heads,
        "n_tokens": n_neighbors + 1,
        "dropout": dropout,
        "input_dropout": input_dropout,
    }
    with torch_threads():
        net = SpaCRDNet(**config).to(dev)
        model = CTRModel(
            net, model_genes, features_key if use_feats else None, n_features, modality, n_neighbors, config
        )
        samples = _prepare_sources(model, ctxs, ys, has_feats, layer)
        pool = _Pool.of(samples, yall, model, modality_dropout=modality_dropout, device=dev, seed=seed)
        fit_kw = {"batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "device": dev}
        hist = _fit_phases(
            net,
            pool,
            pretrain_epochs=pretrain_epochs if modality == "both" and pool.any_features else 0,
            warmup_epochs=warmup_epochs,
            epochs=epochs,
            seed=seed,
            verbose=resolve_verbose(verbose),
            **fit_kw,
        )
    elapsed = time.perf_counter() - t0
    model.info = {
        "label_key": label_key,
        "positive": [str(p) for p in np.atleast_1d(positive)],
        "sources": [name for name, _ in items],
        "n_spots": pool.n,
        "n_labelled": int(len(pool.labelled)),
        "n_positive": int(np.nansum(yall)),
        "train_seconds": float(elapsed),
        "loss_contrastive": [float(v) for v in hist.get("contrastive", [])],
        "loss_warmup": [float(v) for v in hist["warmup"]],
        "loss_main": [float(v) for v in hist["main"]],
        "seed": int(seed),
        "features": feature_meta(ctxs, features_key) if use_feats else {},
    }
    logg.info("    finished", time=start, deep=f"trained {model!r} in {elapsed:.1f} s")
    return model


# ----------------------------------------------------------------------------------------------------------------------
# validate and prepare the sources
# ----------------------------------------------------------------------------------------------------------------------
def _check_two_classes(y: np.ndarray, label_key: str, positive: Any) -> None:
    lab = y[~np.isnan(y)]
    if lab.size == 0 or lab.min() == lab.max():
        raise StmapInputError(
            f"Labels obs[{label_key!r}] hold one class only ({'none' if lab.size == 0 else int(lab[0])} positive with "
            f"positive={positive!r}); CTR training needs cancer and non-cancer spots. Check `positive=`."
        )


def _n_features(ctxs: list[tuple[str, TableContext]], has_feats: list[bool], key: str, modality: str) -> int:
    """The sources' histology feature size (one size for all); sources without features named (and logged)."""
    if not any(has_feats):
        raise StmapInputError(
            f"No source has obsm[{key!r}]; run `st.pp.histology_features` on the sources with an image, "
            "or train with modality='expression'."
        )
    dims = {features(ctx, key).shape[1] for (_, ctx), h in zip(ctxs, has_feats, strict=True) if h}
    if len(dims) > 1:
        raise StmapInputError(f"obsm[{key!r}] has different sizes across sources ({sorted(dims)}).")
    skipped = [name for (name, _), h in zip(ctxs, has_feats, strict=True) if not h]
    if skipped and modality == "histology":
        raise StmapInputError(f"Sources {skipped} have no obsm[{key!r}] (needed for modality='histology').")
    if skipped:
        logg.info(f"    sources without {key!r} (image tokens masked): {', '.join(skipped)}")
    return dims.pop()


def _model_genes(
    ctxs: list[tuple[str, TableContext]], layer: str | None, genes: Sequence[str] | None, n_genes: int
) -> list[str]:
    """The given genes (at least one present in a source) or the ``n_genes`` most variable shared ones."""
    normed = [lognorm(ctx, layer) for _, ctx in ctxs]
    if genes is None:
        return _select_genes(normed, n_genes)
    out = [str(g) for g in genes]
    present = set().union(*(set(v) for _, v in normed))
    if not set(out) & present:
        raise StmapInputError("None of the given `genes` is in the sources.")
    return out


def _select_genes(samples: list[tuple[Any, pd.Index]], n_genes: int) -> list[str]:
    """Top ``n_genes`` by mean within-sample variance of log-normalised expression, among genes every source has."""
    common = samples[0][1]
    for _, var in samples[1:]:
        common = common.intersection(var, sort=False)
    if len(common) == 0:
        raise StmapInputError("The source samples share no genes; check the gene naming (symbols vs ids).")
    score = np.zeros(len(common))
    for X, var in samples:
        sub = X[:, var.get_indexer(common)]
        m = np.asarray(sub.mean(0)).ravel()
        score += np.asarray(sub.multiply(sub).mean(0)).ravel() - m**2
    order = np.argsort(-score, kind="stable")[: min(n_genes, len(common))]
    return [str(g) for g in common[np.sort(order)]]


def _prepare_sources(
    model: CTRModel,
    ctxs: list[tuple[str, TableContext]],
    ys: list[np.ndarray],
    has_feats: list[bool],
    layer: str | None,
) -> list[Sample]:
    """Every source prepared by the model's rules, with its labels; without features: expression tokens only."""
    samples = []
    for (name, ctx), y, h in zip(ctxs, ys, has_feats, strict=True):
        if h or not model.uses_features:
            s = model._prepare(ctx, name, layer, require_features=False)
        else:  # no features: expression tokens only, image tokens masked
            tmp = CTRModel(model.net, model.genes, None, 0, "expression", model.n_neighbors, model.config)
            s = tmp._prepare(ctx, name, layer, require_features=False)
        s.y = y
        samples.append(s)
    return samples


# ----------------------------------------------------------------------------------------------------------------------
# the pooled training data and the three training phases
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class _Pool:
    """All source spots in one table: one row per spot, neighbour tokens as global row indices (tensors on CPU)."""

    genes: Any
    feats: Any
    nbr: np.ndarray
    has_gene: Any
    has_img: Any
    y: Any
    labelled: np.ndarray
    any_features: bool
    modality_dropout: float
    drop_gen: Any
    device: Any

    @property
    def n(self) -> int:
        """Number of spots."""
        return len(self.nbr)

    @classmethod
    def of(
        cls,
        samples: list[Sample],
        yall: np.ndarray,
        model: CTRModel,
        *,
        modality_dropout: float,
        device: Any,
        seed: int,
    ) -> _Pool:
        """Pool prepared samples; modality dropout applies only to a model of both modalities."""
        import torch

        use_genes, use_feats = model.uses_genes, model.uses_features
        offsets = np.cumsum([0] + [len(s.nbr) for s in samples])
        n_total = int(offsets[-1])
        feats = None
        if use_feats:
            blocks = [
                s.feats if s.feats is not None else np.zeros((len(s.nbr), model.n_features), np.float32)
                for s in samples
            ]
            feats = torch.from_numpy(np.concatenate(blocks))
        has_img = np.concatenate([np.full(len(s.nbr), use_feats and s.feats is not None) for s in samples])
        return cls(
            genes=torch.from_numpy(np.concatenate([s.genes for s in samples])) if use_genes else None,
            feats=feats,
            nbr=np.concatenate([s.nbr + o for s, o in zip(samples, offsets[:-1], strict=True)]),
            has_gene=torch.full((n_total,), use_genes, dtype=torch.bool),
            has_img=torch.from_numpy(has_img),
            y=torch.from_numpy(yall.astype(np.float32)),
            labelled=np.flatnonzero(~np.isnan(yall)),
            any_features=any(s.feats is not None for s in samples),
            modality_dropout=modality_dropout if model.modality == "both" else 0.0,
            drop_gen=torch.Generator().manual_seed(seed + 3),
            device=device,
        )

    def batch(self, idx: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
        """Inputs of a batch of spots: the spots it involves (with their neighbours) encoded once each."""
        import torch

        dev = self.device
        tok = self.nbr[idx.numpy()]
        uniq, inv = np.unique(tok, return_inverse=True)
        u = torch.from_numpy(uniq)
        g = self.genes[u].to(dev) if self.genes is not None else None
        f = self.feats[u].to(dev) if self.feats is not None else None
        tokens = torch.from_numpy(inv.reshape(tok.shape)).to(dev)
        hg, hi = self.has_gene[u], self.has_img[u]
        md = self.modality_dropout
        if md > 0:
            r = torch.rand(len(u), generator=self.drop_gen)
            hg = hg & ~((r < md) & hi)  # drop genes only where the image is there
            hi = hi & ~((r >= md) & (r < 2 * md))
        return g, f, tokens, hg.to(dev), hi.to(dev), self.y[idx].to(dev)

    def step_clip(self, m: Any, idx: Any, epoch: int) -> Any:
        """Contrastive (CLIP) loss of the gene and image embeddings of the spots with an image."""
        import torch.nn.functional as F

        from stmap.models._spacrd import clip_loss

        dev = self.device
        hi = self.has_img[idx].to(dev)
        eg, ei = m.embed(self.genes[idx].to(dev), self.feats[idx].to(dev), self.has_gene[idx].to(dev), hi)
        if hi.sum() < 2:
            return eg.sum() * 0.0
        return clip_loss(F.normalize(eg[hi], dim=-1), F.normalize(ei[hi], dim=-1), m.tau)

    def step_warm(self, m: Any, idx: Any, epoch: int) -> Any:
        """VAE loss (warm-up)."""
        from stmap.models._spacrd import spacrd_losses

        g, f, tok, hg, hi, y = self.batch(idx)
        return spacrd_losses(m, m(g, f, tok, hg, hi, sample=True), y)["vae"]

    def step_main(self, m: Any, idx: Any, epoch: int) -> Any:
        """BCE + 0.1 x the VAE loss (supervised training)."""
        from stmap.models._spacrd import spacrd_losses

        g, f, tok, hg, hi, y = self.batch(idx)
        ls = spacrd_losses(m, m(g, f, tok, hg, hi, sample=True), y)
        return ls["bce"] + 0.1 * ls["vae"]


def _fit_phases(
    net: Any, pool: _Pool, *, pretrain_epochs: int, warmup_epochs: int, epochs: int, seed: int, **kw: Any
) -> dict[str, list[float]]:
    """Contrastive pre-training of the encoders (all spots), then VAE warm-up and supervised training (labelled)."""
    import torch

    from stmap.models._train import fit

    hist: dict[str, list[float]] = {}
    if pretrain_epochs > 0:
        enc_params = [*net.gene_enc.parameters(), *net.img_enc.parameters()]
        opt = torch.optim.Adam(enc_params, lr=kw["lr"], weight_decay=kw["weight_decay"])
        desc = "CTR contrastive pre-training"
        h = fit(
            net,
            pool.step_clip,
            pool.n,
            epochs=pretrain_epochs,
            seed=seed,
            optimizer=opt,
            drop_last=True,
            desc=desc,
            **kw,
        )
        hist["contrastive"] = h.loss
    # labelled spots only drive the supervised phases (unlabelled ones still serve as neighbour tokens)
    perm = torch.from_numpy(pool.labelled)
    n = len(pool.labelled)

    def on_labelled(step: Any) -> Any:
        return lambda m, idx, epoch: step(m, perm[idx], epoch)

    hist["warmup"] = fit(
        net, on_labelled(pool.step_warm), n, epochs=warmup_epochs, seed=seed + 1, desc="CTR VAE warm-up", **kw
    ).loss
    hist["main"] = fit(
        net, on_labelled(pool.step_main), n, epochs=epochs, seed=seed + 2, desc="CTR training", **kw
    ).loss
    net.eval()
    return hist
