"""Cancer tissue region (CTR) detection fusing histology and expression (SpaCRD), trained on labelled sources."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError, unknown_key
from stmap._core._resolve import TableContext, is_spatialdata, resolve
from stmap._core._validate import check_counts, get_counts
from stmap._core._write import Results

__all__ = ["train_ctr", "detect_ctr", "CTRModel"]

_MODALITIES = ("both", "expression", "histology")
_CALL = ("non-CTR", "CTR")


# ----------------------------------------------------------------------------------------------------------------------
# preparation: per-sample scaling rules and neighbour tokens (the rules a CTRModel carries)
# ----------------------------------------------------------------------------------------------------------------------
def _minmax(x: np.ndarray) -> np.ndarray:
    """Per-column min-max scaling to [0, 1] within one sample (constant columns -> 0)."""
    lo, hi = x.min(0, keepdims=True), x.max(0, keepdims=True)
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def _lognorm(ctx: TableContext, layer: str | None) -> tuple[Any, pd.Index]:
    """Library-size normalised (1e4) log1p expression of all genes of a sample (sparse CSR)."""
    X = get_counts(ctx.adata, layer, f"table {ctx.table_key!r}")
    check_counts(X, f"table {ctx.table_key!r}")
    X = sparse.csr_matrix(X, dtype=np.float64)
    tot = np.asarray(X.sum(1)).ravel()
    X = sparse.diags(1e4 / np.where(tot > 0, tot, 1.0)) @ X
    X.data = np.log1p(X.data)
    return X.tocsr(), pd.Index(ctx.adata.var_names.astype(str))


def _gene_block(X: Any, var: pd.Index, genes: Sequence[str]) -> tuple[np.ndarray, int]:
    """Columns ``genes`` of ``X`` (missing genes zero), min-max scaled; also the number of missing genes."""
    pos = var.get_indexer(list(genes))
    out = np.zeros((X.shape[0], len(genes)), dtype=np.float32)
    ok = pos >= 0
    if ok.any():
        out[:, ok] = _minmax(np.asarray(X[:, pos[ok]].todense(), dtype=np.float64))
    return out, int((~ok).sum())


def _neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    """Each spot followed by its ``k`` nearest spots (itself repeated when the sample has fewer)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    kk = min(k + 1, n)
    _, idx = cKDTree(xy).query(xy, k=kk)
    idx = np.asarray(idx).reshape(n, kk)
    if kk < k + 1:
        idx = np.concatenate([idx, np.repeat(idx[:, :1], k + 1 - kk, axis=1)], axis=1)
    idx[:, 0] = np.arange(n)
    return idx.astype(np.int64)


def _features(ctx: TableContext, key: str) -> np.ndarray:
    f = ctx.adata.obsm[key]
    f = np.asarray(f.to_numpy() if isinstance(f, pd.DataFrame) else f, dtype=np.float64)
    if f.ndim != 2:
        raise StmapInputError(f"obsm[{key!r}] of table {ctx.table_key!r} must be 2D, got shape {f.shape}.")
    bad = ~np.isfinite(f).all(1)
    if bad.any():
        raise StmapInputError(
            f"obsm[{key!r}] of table {ctx.table_key!r} has NaN or infinite values in {int(bad.sum())} spots; "
            "recompute the features (st.pp.histology_features) or drop those spots."
        )
    return f


@dataclass
class _Sample:
    name: str
    ctx: TableContext
    genes: np.ndarray
    feats: np.ndarray | None
    nbr: np.ndarray
    y: np.ndarray | None = None
    missing_genes: int = 0


def _as_list(sdatas: Any) -> list[tuple[str, Any]]:
    if isinstance(sdatas, Mapping):
        return [(str(k), v) for k, v in sdatas.items()]
    if is_spatialdata(sdatas) or hasattr(sdatas, "obs"):
        return [("sample_0", sdatas)]
    if isinstance(sdatas, Sequence) and not isinstance(sdatas, str):
        return [(f"sample_{i}", s) for i, s in enumerate(sdatas)]
    raise StmapInputError(f"Expected a SpatialData/AnnData, a list or a dict of them, got {type(sdatas).__name__}.")


def _labels(ctx: TableContext, label_key: str, positive: Any) -> np.ndarray:
    """1.0 / 0.0 per spot, NaN where the label is missing."""
    obs = ctx.adata.obs
    if label_key not in obs:
        raise unknown_key("Label column", label_key, obs.columns, f"obs of table {ctx.table_key!r}")
    col = obs[label_key]
    missing = col.isna().to_numpy()
    pos = [positive] if isinstance(positive, str | bool | int | float | np.generic) else list(positive)
    y = col.astype(object).isin(pos).to_numpy().astype(np.float32)
    y[missing] = np.nan
    return y


# ----------------------------------------------------------------------------------------------------------------------
# the model object
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class CTRModel:
    """A trained cancer tissue region detector; apply it to any sample with :func:`stmap.tl.detect_ctr`.

    It carries the network, the gene list, the histology feature key and size, and the scaling rules (per-sample
    min-max of log-normalised expression and of features, as published), so it transfers to new samples, platforms
    and batches. Save with :meth:`save`, reload with :meth:`load`.

    Attributes
    ----------
    net
        The trained :class:`torch.nn.Module`.
    genes
        Model genes, in input order.
    features_key
        ``obsm`` key of the histology features (``None`` for an expression-only model).
    n_features
        Histology feature size.
    modality
        ``'both'``, ``'expression'`` or ``'histology'``.
    n_neighbors
        Neighbour tokens per spot.
    config
        Network sizes.
    info
        Training record: label key, positive values, sources, loss history, training time.
    """

    net: Any
    genes: list[str]
    features_key: str | None
    n_features: int
    modality: str
    n_neighbors: int
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"CTRModel(modality={self.modality!r}, {len(self.genes)} genes, {self.n_features} histology features "
            f"({self.features_key!r}), {self.n_neighbors} neighbours)"
        )

    def save(self, path: str | Path) -> Path:
        """Save to a torch file (weights, gene list, feature key, scaling rules); reload with :meth:`load`."""
        from stmap.models._train import save_checkpoint

        extra = {
            "genes": list(self.genes),
            "features_key": self.features_key,
            "n_features": self.n_features,
            "modality": self.modality,
            "n_neighbors": self.n_neighbors,
            "scaling": "per-sample min-max of log1p(1e4-normalised) expression and of features",
            "info": {k: v for k, v in self.info.items() if isinstance(v, str | int | float | bool | list | dict)},
        }
        return save_checkpoint(path, self.net, config=self.config, extra=extra, kind="CTRModel")

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> CTRModel:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            The file.
        device
            Torch device.

        Returns
        -------
        The :class:`~stmap.tl.CTRModel`.

        Raises
        ------
        FileNotFoundError
            No file at ``path``.
        StmapInputError
            The file is not a CTRModel saved by :meth:`save` (not a torch file, another kind of torch file, a
            file of another stmap model).
        """
        from stmap.models._spacrd import SpaCRDNet
        from stmap.models._train import load_checkpoint

        net, config, extra = load_checkpoint(
            path,
            SpaCRDNet,
            device=device,
            kind="CTRModel",
            required=("genes", "features_key", "n_features", "modality", "n_neighbors"),
        )
        return cls(
            net=net,
            genes=list(extra["genes"]),
            features_key=extra["features_key"],
            n_features=int(extra["n_features"]),
            modality=extra["modality"],
            n_neighbors=int(extra["n_neighbors"]),
            config=config,
            info=dict(extra.get("info", {})),
        )

    # internal ---------------------------------------------------------------------------------------------------------
    @property
    def uses_genes(self) -> bool:
        """Whether the model reads expression."""
        return self.modality in ("both", "expression")

    @property
    def uses_features(self) -> bool:
        """Whether the model reads histology features."""
        return self.modality in ("both", "histology")

    def _prepare(self, ctx: TableContext, name: str, layer: str | None, *, require_features: bool) -> _Sample:
        if self.uses_genes:
            X, var = _lognorm(ctx, layer)
            genes, n_missing = _gene_block(X, var, self.genes)
            if n_missing == len(self.genes):
                raise StmapInputError(
                    f"Table {ctx.table_key!r} ({name}) shares none of the model's {len(self.genes)} genes "
                    f"(e.g. {', '.join(self.genes[:5])}); check the gene naming (symbols vs ids)."
                )
        else:
            genes, n_missing = np.zeros((ctx.adata.n_obs, 0), dtype=np.float32), 0
        feats = None
        if self.uses_features:
            if self.features_key in ctx.adata.obsm:
                f = _features(ctx, self.features_key)
                if f.shape[1] != self.n_features:
                    raise StmapInputError(
                        f"obsm[{self.features_key!r}] of table {ctx.table_key!r} has {f.shape[1]} features, the model "
                        f"was trained on {self.n_features}; compute them with the same extractor and scales."
                    )
                feats = _minmax(f)
            elif require_features:
                raise StmapInputError(
                    f"Table {ctx.table_key!r} ({name}) has no obsm[{self.features_key!r}]; run "
                    f"`st.pp.histology_features(sdata, key_added={self.features_key!r})` first."
                )
        return _Sample(name, ctx, genes, feats, _neighbours(ctx.coords, self.n_neighbors), missing_genes=n_missing)

    def _inputs(self, s: _Sample, device: Any) -> tuple[Any, Any, Any, Any]:
        import torch

        n = len(s.nbr)
        g = torch.from_numpy(s.genes).to(device) if self.uses_genes else None
        f = torch.from_numpy(s.feats).to(device) if (self.uses_features and s.feats is not None) else None
        has_g = torch.full((n,), self.uses_genes, dtype=torch.bool, device=device)
        has_i = torch.full((n,), f is not None, dtype=torch.bool, device=device)
        return g, f, has_g, has_i

    def _predict(self, s: _Sample, device: Any, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        import torch

        self.net.eval()
        g, f, has_g, has_i = self._inputs(s, device)
        tok = torch.from_numpy(s.nbr).to(device)
        probs, lat = [], []
        with torch.no_grad():
            for st in range(0, len(s.nbr), batch_size):
                out = self.net(g, f, tok[st : st + batch_size], has_g, has_i)
                probs.append(torch.sigmoid(out["logit"]).cpu().numpy())
                lat.append(torch.cat([out["mu"], out["logvar"]], -1).cpu().numpy())
        return np.concatenate(probs).astype(np.float64), np.concatenate(lat).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------------
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


_FEATURE_META = ("extractor", "patch_um", "scales", "patch_px")


def _feature_meta(ctxs: list[tuple[str, TableContext]], key: str) -> dict[str, Any]:
    """How the sources' features were computed (``uns[key]`` of :func:`stmap.pp.histology_features`)."""
    for _, ctx in ctxs:
        meta = ctx.adata.uns.get(key)
        if isinstance(meta, Mapping):
            return {k: _plain(meta[k]) for k in _FEATURE_META if k in meta}
    return {}


def _plain(v: Any) -> Any:
    return (
        [_plain(x) for x in v] if isinstance(v, list | tuple | np.ndarray) else (v.item() if hasattr(v, "item") else v)
    )


def _check_feature_meta(model: CTRModel, ctx: TableContext) -> None:
    """Warn when the target's features were computed differently from the sources' (e.g. another patch size)."""
    import warnings

    train = model.info.get("features") or {}
    meta = ctx.adata.uns.get(model.features_key) if model.features_key else None
    if not train or not isinstance(meta, Mapping):
        return
    diff = [k for k in _FEATURE_META if k in train and k in meta and _plain(meta[k]) != train[k]]
    if diff:
        got = ", ".join(f"{k}={_plain(meta[k])!r} (model: {train[k]!r})" for k in diff)
        warnings.warn(
            f"Histology features of table {ctx.table_key!r} were computed differently from the model's: {got}. "
            f"For another platform (e.g. Visium vs legacy ST) recompute them with the model's settings, e.g. "
            f"`st.pp.histology_features(sdata, patch_um={train.get('patch_um')}, scales={train.get('scales')})`.",
            UserWarning,
            stacklevel=3,
        )


@inject_docs()
def train_ctr(
    sdatas: Any,
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
    device: str = "cpu",
    coordinate_system: str | None = None,
    verbose: bool = True,
) -> CTRModel:
    """Train a cancer tissue region detector on labelled source samples (SpaCRD).

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
    dim, latent, heads
        Token size, VAE latent size and attention heads.
    dropout, input_dropout
        Dropout inside the network and on its inputs (regularisation against source-specific patterns).
    modality_dropout
        During training (``modality='both'``), the probability that a spot's gene modality, and separately its image
        modality, is replaced by the "missing" embedding (never both), so the fused model cannot rely on one modality
        alone and tolerates a missing one.
    pretrain_epochs, warmup_epochs, epochs
        Contrastive pre-training, VAE warm-up and supervised epochs.
    batch_size, lr, weight_decay
        Optimisation (Adam).
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
    """
    import time

    import torch
    import torch.nn.functional as F

    from stmap._core._device import resolve_device, seed_everything
    from stmap.models._spacrd import SpaCRDNet, clip_loss, spacrd_losses
    from stmap.models._train import fit

    if modality not in _MODALITIES:
        raise StmapInputError(f"modality must be one of {', '.join(map(repr, _MODALITIES))}, got {modality!r}.")
    items = _as_list(sdatas)
    if not items:
        raise StmapInputError("No source samples given.")
    dev = resolve_device(device)
    start = logg.info(f"training CTR model on {len(items)} source sample(s)")
    t0 = time.perf_counter()

    ctxs = [(name, resolve(s, table_key, coordinate_system=coordinate_system)) for name, s in items]
    ys = [_labels(ctx, label_key, positive) for _, ctx in ctxs]
    yall = np.concatenate(ys)
    lab = yall[~np.isnan(yall)]
    if lab.size == 0 or lab.min() == lab.max():
        raise StmapInputError(
            f"Labels obs[{label_key!r}] hold one class only ({'none' if lab.size == 0 else int(lab[0])} positive with "
            f"positive={positive!r}); CTR training needs cancer and non-cancer spots. Check `positive=`."
        )
    use_feats = modality in ("both", "histology")
    has_feats = [features_key in ctx.adata.obsm for _, ctx in ctxs]
    n_features = 0
    if use_feats:
        if not any(has_feats):
            raise StmapInputError(
                f"No source has obsm[{features_key!r}]; run `st.pp.histology_features` on the sources with an image, "
                "or train with modality='expression'."
            )
        dims = {_features(ctx, features_key).shape[1] for (_, ctx), h in zip(ctxs, has_feats, strict=True) if h}
        if len(dims) > 1:
            raise StmapInputError(f"obsm[{features_key!r}] has different sizes across sources ({sorted(dims)}).")
        n_features = dims.pop()
        skipped = [name for (name, _), h in zip(ctxs, has_feats, strict=True) if not h]
        if skipped and modality == "histology":
            raise StmapInputError(
                f"Sources {skipped} have no obsm[{features_key!r}] (needed for modality='histology')."
            )
        if skipped:
            logg.info(f"    sources without {features_key!r} (image tokens masked): {', '.join(skipped)}")
    use_genes = modality in ("both", "expression")
    if use_genes:
        normed = [_lognorm(ctx, layer) for _, ctx in ctxs]
        if genes is None:
            genes = _select_genes(normed, n_genes)
        else:
            genes = [str(g) for g in genes]
            present = set().union(*(set(v) for _, v in normed))
            if not set(genes) & present:
                raise StmapInputError("None of the given `genes` is in the sources.")
    else:
        genes = []
    genes = list(genes)

    seed_everything(seed)
    config = {"n_genes": len(genes), "n_features": n_features, "dim": dim, "latent": latent, "heads": heads,
              "n_tokens": n_neighbors + 1, "dropout": dropout, "input_dropout": input_dropout}  # fmt: skip
    net = SpaCRDNet(**config).to(dev)
    model = CTRModel(net, genes, features_key if use_feats else None, n_features, modality, n_neighbors, config)
    samples = []
    for (name, ctx), y, h in zip(ctxs, ys, has_feats, strict=True):
        s = model._prepare(ctx, name, layer, require_features=False) if (h or not use_feats) else None
        if s is None:  # no features: expression tokens only, image tokens masked
            tmp = CTRModel(net, genes, None, 0, "expression", n_neighbors, config)
            s = tmp._prepare(ctx, name, layer, require_features=False)
        s.y = y
        samples.append(s)

    # pool the samples: one row per spot, neighbour tokens as global row indices
    offsets = np.cumsum([0] + [len(s.nbr) for s in samples])
    n_total = int(offsets[-1])
    g_all = torch.from_numpy(np.concatenate([s.genes for s in samples])) if use_genes else None
    f_all = None
    if use_feats:
        f_all = torch.from_numpy(
            np.concatenate(
                [s.feats if s.feats is not None else np.zeros((len(s.nbr), n_features), np.float32) for s in samples]
            )  # fmt: skip
        )
    nbr_all = np.concatenate([s.nbr + o for s, o in zip(samples, offsets[:-1], strict=True)])
    hi_all = torch.from_numpy(np.concatenate([np.full(len(s.nbr), use_feats and s.feats is not None) for s in samples]))
    hg_all = torch.full((n_total,), use_genes, dtype=torch.bool)
    y_all = torch.from_numpy(yall.astype(np.float32))

    drop_gen = torch.Generator().manual_seed(seed + 3)

    def batch_inputs(idx: Any):
        tok = nbr_all[idx.numpy()]
        uniq, inv = np.unique(tok, return_inverse=True)
        u = torch.from_numpy(uniq)
        g = g_all[u].to(dev) if use_genes else None
        f = f_all[u].to(dev) if use_feats else None
        tokens = torch.from_numpy(inv.reshape(tok.shape)).to(dev)
        hg, hi = hg_all[u], hi_all[u]
        if modality == "both" and modality_dropout > 0:
            r = torch.rand(len(u), generator=drop_gen)
            hg = hg & ~((r < modality_dropout) & hi)  # drop genes only where the image is there
            hi = hi & ~((r >= modality_dropout) & (r < 2 * modality_dropout))
        return g, f, tokens, hg.to(dev), hi.to(dev), y_all[idx].to(dev)

    def step_clip(m, idx, epoch):
        g = g_all[idx].to(dev)
        f = f_all[idx].to(dev)
        hi = hi_all[idx].to(dev)
        eg, ei = m.embed(g, f, hg_all[idx].to(dev), hi)
        if hi.sum() < 2:
            return eg.sum() * 0.0
        return clip_loss(F.normalize(eg[hi], dim=-1), F.normalize(ei[hi], dim=-1), m.tau)

    def step_warm(m, idx, epoch):
        g, f, tok, hg, hi, y = batch_inputs(idx)
        return spacrd_losses(m, m(g, f, tok, hg, hi, sample=True), y)["vae"]

    def step_main(m, idx, epoch):
        g, f, tok, hg, hi, y = batch_inputs(idx)
        ls = spacrd_losses(m, m(g, f, tok, hg, hi, sample=True), y)
        return ls["bce"] + 0.1 * ls["vae"]

    kw = {"batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "device": dev, "verbose": verbose}
    hist = {}
    if modality == "both" and any(s.feats is not None for s in samples) and pretrain_epochs > 0:
        enc_params = list(net.gene_enc.parameters()) + list(net.img_enc.parameters())
        opt = torch.optim.Adam(enc_params, lr=lr, weight_decay=weight_decay)
        h = fit(net, step_clip, n_total, epochs=pretrain_epochs, seed=seed, optimizer=opt, drop_last=True,
                desc="CTR contrastive pre-training", **kw)  # fmt: skip
        hist["contrastive"] = h.loss
    # labelled spots only drive the supervised phases (unlabelled ones still serve as neighbour tokens)
    labelled = np.flatnonzero(~np.isnan(yall))
    perm = torch.from_numpy(labelled)

    def on_labelled(step):
        return lambda m, idx, epoch: step(m, perm[idx], epoch)

    h = fit(
        net, on_labelled(step_warm), len(labelled), epochs=warmup_epochs, seed=seed + 1, desc="CTR VAE warm-up", **kw
    )
    hist["warmup"] = h.loss
    h = fit(net, on_labelled(step_main), len(labelled), epochs=epochs, seed=seed + 2, desc="CTR training", **kw)
    hist["main"] = h.loss
    net.eval()
    elapsed = time.perf_counter() - t0
    model.info = {
        "label_key": label_key,
        "positive": [str(p) for p in np.atleast_1d(positive)],
        "sources": [name for name, _ in items],
        "n_spots": n_total,
        "n_labelled": int(len(labelled)),
        "n_positive": int(np.nansum(yall)),
        "train_seconds": float(elapsed),
        "loss_contrastive": [float(v) for v in hist.get("contrastive", [])],
        "loss_warmup": [float(v) for v in hist["warmup"]],
        "loss_main": [float(v) for v in hist["main"]],
        "seed": int(seed),
        "features": _feature_meta(ctxs, features_key) if use_feats else {},
    }
    logg.info("    finished", time=start, deep=f"trained {model!r} in {elapsed:.1f} s")
    return model


# ----------------------------------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------------------------------
@inject_docs()
def detect_ctr(
    sdata: Any,
    model: CTRModel | str | Path,
    *,
    table_key: str | None = None,
    threshold: float | None = None,
    label_key: str | None = None,
    positive: Any = True,
    layer: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    coordinate_system: str | None = None,
    key_added: str = Key.obs.ctr,
    copy: bool = False,
) -> Any:
    """Detect cancer tissue regions in a sample with a trained :class:`~stmap.tl.CTRModel`.

    The sample is prepared with the model's rules (its genes, zero-filled with a warning when the sample lacks some;
    per-sample min-max scaling; its ``n_neighbors`` nearest spots, in any platform's spot layout), scored, and called
    with a threshold from a two-component Gaussian mixture on the scores (:func:`stmap.metrics.gmm_threshold`) unless
    one is given.

    Parameters
    ----------
    {sdata}
    model
        A :class:`~stmap.tl.CTRModel` or the path of a saved one.
    {table_key}
    threshold
        Probability above which a spot is called CTR; default from a 2-component GMM on the scores with one shared
        width (``covariance_type='tied'``: probabilities pile up near 0 and 1, and a free-width component would
        otherwise model the tail of the cancer mode and push the threshold towards 1).
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
    """
    from stmap import metrics
    from stmap._core._device import resolve_device

    if not isinstance(model, CTRModel):
        model = CTRModel.load(model, device=device)
    dev = resolve_device(device)
    model.net.to(dev)
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    if threshold is not None and not (np.isfinite(threshold) and 0 <= threshold <= 1):
        raise StmapInputError(f"`threshold` must be a probability in [0, 1], got {threshold!r}.")
    y = _labels(ctx, label_key, positive) if label_key is not None else None
    start = logg.info(f"detecting cancer tissue regions ({model.modality})")
    s = model._prepare(ctx, ctx.table_key or "sample", layer, require_features=True)
    _check_feature_meta(model, ctx)
    if s.missing_genes:
        import warnings

        warnings.warn(
            f"{s.missing_genes} of the model's {len(model.genes)} genes are missing from table {ctx.table_key!r}; "
            "they are set to zero.",
            UserWarning,
            stacklevel=2,
        )
    prob, latent = model._predict(s, dev)
    method = "given"
    if threshold is None:
        try:
            threshold, method = metrics.gmm_threshold(prob, seed=seed, covariance_type="tied"), "gmm"
        except ValueError:
            threshold, method = 0.5, "0.5 (scores not bimodal)"
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
    if y is not None:
        ok = ~np.isnan(y)
        yt = y[ok].astype(bool)
        meta["metrics"] = {
            "roc_auc": metrics.roc_auc(yt, prob[ok]),
            "average_precision": metrics.average_precision(yt, prob[ok]),
            "f1": metrics.f1(yt, call[ok]),
            "label_key": label_key,
        }
    res = Results(ctx, key_added, params={"threshold": threshold, "label_key": label_key, "layer": layer,
                                           "model": repr(model)})  # fmt: skip
    res.obs(f"{key_added}_prob", prob)
    res.obs(key_added, pd.Categorical(np.where(call, _CALL[1], _CALL[0]), categories=list(_CALL)))
    res.obsm(f"{key_added}_latent", latent)
    res.uns(key_added, meta)
    res.uns(Key.colors(key_added), ["#bdbdbd", "#d7191c"])
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added .obs[{key_added + '_prob'!r}], .obs[{key_added!r}]")
    return out
