"""3D imputation of expression across serial sections (ASIGN): graph label propagation + histology graph attention."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError, unknown_key
from stmap._core._validate import read_counts
from stmap._core._write import Results

__all__ = ["impute_3d", "Impute3DModel"]

_EDGE_TYPES = ("overlap", "similarity", "spatial")


def asign_target(counts: Any) -> np.ndarray:
    """ASIGN's target: ``ln((c + 1) / sum_genes(c + 1))`` per spot (sum over the given genes)."""
    from scipy import sparse

    c = (counts.toarray() if sparse.issparse(counts) else np.asarray(counts)).astype(np.float64) + 1.0
    return np.log(c / c.sum(1, keepdims=True))


def _standardize_levels(levels: list[np.ndarray], has: np.ndarray, codes: np.ndarray, per_section: bool) -> list:
    """Centre/scale every feature column over spots with an image (per section when ``per_section``)."""
    out = []
    for f in levels:
        f = np.where(has[:, None], np.asarray(f, dtype=np.float64), 0.0)
        z = np.zeros_like(f)
        groups = np.unique(codes[has]) if per_section else [None]
        for g in groups:
            m = has & (codes == g) if g is not None else has
            if m.sum() < 2:
                continue
            mu, sd = f[m].mean(0), f[m].std(0)
            z[m] = (f[m] - mu) / np.where(sd > 1e-8, sd, 1.0)
        out.append(np.clip(z, -6, 6).astype(np.float32))
    return out


def build_graph(
    xyz: np.ndarray,
    codes: np.ndarray,
    radius: float | np.ndarray,
    features: np.ndarray | None,
    has_image: np.ndarray,
    *,
    graph: tuple[str, ...] = _EDGE_TYPES,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int | None = None,
    disc_scale: float = 3.0,
) -> dict[str, Any]:
    """The 3D spot graph (see :func:`stmap.pp.spot_graph_3d`); similarity only among spots with an image."""
    from scipy import sparse

    from stmap.pp._stack import graph_arrays

    n = len(xyz)
    n_layers = len(np.unique(codes))
    layers_apart = max(n_layers - 1, 1) if layers_apart is None else int(layers_apart)
    r_disc = np.broadcast_to(np.asarray(radius, float), (n,)) * float(disc_scale)
    g = graph_arrays(xyz, codes, r_disc, None, k_spatial=max(k_spatial, 0), layers_apart=layers_apart)
    out = {"overlap": g["overlap"], "spatial": g["spatial"]}
    sim = sparse.csr_matrix((n, n), dtype=np.float32)
    if features is not None and "similarity" in graph and has_image.sum() > k_similar:
        idx = np.flatnonzero(has_image)
        if len(np.unique(codes[idx])) > 1:
            r = np.broadcast_to(np.asarray(radius, float), (n,))[idx]
            s = graph_arrays(
                xyz[idx], codes[idx], r, features[idx], k_similar=k_similar, k_spatial=0, layers_apart=layers_apart
            )["similarity"].tocoo()
            sim = sparse.csr_matrix((s.data, (idx[s.row], idx[s.col])), shape=(n, n), dtype=np.float32)
    out["similarity"] = sim
    for k in _EDGE_TYPES:
        if k not in graph:
            out[k] = sparse.csr_matrix((n, n), dtype=np.float32)
    return out


def propagate_labels(adj: Any, labels: np.ndarray, known: np.ndarray, *, iterations: int = 20) -> np.ndarray:
    """Label propagation with clamping: ``Z <- D^-1 A Z``, known rows reset to their labels after every step.

    Unknown rows start at 0 (the standardised mean); rows without edges, or that no label reaches, keep it.
    """
    deg = np.asarray(adj.sum(1)).ravel()
    P = adj.multiply(np.where(deg > 0, 1.0 / np.maximum(deg, 1e-12), 0.0)[:, None]).tocsr()
    k = known[:, None]
    z = np.where(k, labels, 0.0)
    for _ in range(int(iterations)):
        z = np.where(k, labels, P @ z)
    return z


def _ridge_prior(X: np.ndarray, Z: np.ndarray, train: np.ndarray) -> dict[str, Any]:
    """Linear histology prior: ridge of ``Z`` on ``X`` fitted on ``train`` rows (penalty by efficient LOO)."""
    from sklearn.linear_model import RidgeCV

    full = RidgeCV(alphas=np.logspace(0, 5, 11)).fit(X[train], Z[train])
    fit = {"coef": full.coef_.T.astype(np.float64), "intercept": np.asarray(full.intercept_, dtype=np.float64)}
    fit["alpha"] = float(full.alpha_)
    return fit


def _apply_prior(fit: dict[str, Any] | None, X: np.ndarray | None, has: np.ndarray, shape: tuple) -> np.ndarray:
    if fit is None or X is None:
        return np.zeros(shape)
    return np.where(has[:, None], X @ np.asarray(fit["coef"]) + np.asarray(fit["intercept"]), 0.0)


def _edges(graphs: dict[str, Any], torch: Any) -> tuple[Any, Any, Any]:
    """Edge index, edge features (type one-hot + weight) and the summed adjacency (scipy CSR) for propagation."""
    from scipy import sparse

    rows, cols, attr = [], [], []
    for t, k in enumerate(_EDGE_TYPES):
        c = graphs[k].tocoo()
        rows.append(c.row)
        cols.append(c.col)
        a = np.zeros((c.nnz, len(_EDGE_TYPES) + 1), np.float32)
        a[:, t] = 1.0
        a[:, -1] = c.data
        attr.append(a)
    row, col = np.concatenate(rows), np.concatenate(cols)
    n = graphs["overlap"].shape[0]
    A = sum((graphs[k] for k in _EDGE_TYPES), sparse.csr_matrix((n, n), dtype=np.float32)).tocsr()
    # messages flow source (col) -> target (row)
    ei = torch.as_tensor(np.vstack([col, row]), dtype=torch.long)
    return ei, torch.as_tensor(np.concatenate(attr)), A


@dataclass
class Impute3DModel:
    """A trained 3D imputation model: the network, gene list and the scaling it was trained with.

    Attributes
    ----------
    net
        The network (``stmap.models._asign.ASIGNNet``, a :class:`torch.nn.Module`).
    genes
        Genes it predicts (columns of its output).
    mean
        Per-gene mean of the target over the measured spots (standardisation).
    std
        Per-gene standard deviation of the target over the measured spots (standardisation).
    config
        Architecture (rebuilds ``net``).
    params
        Training parameters.
    history
        Training loss per epoch.
    prior
        The linear histology prior (ridge ``coef`` ``(features, genes)``, ``intercept``, ``alpha``), or ``None``.
    sources
        Diagnostics of the last imputation (not saved): each source alone (``'propagated'``, ``'prior'``,
        ``'network'``), ``(n_spots, n_genes)`` on the target scale.
    """

    net: Any
    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    config: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    prior: dict[str, Any] | None = None
    sources: dict[str, np.ndarray] | None = None

    def mixing_weights(self) -> np.ndarray:
        """``(3, n_genes)`` per-gene weights of the propagated expression, the histology prior and the network."""
        return self.net.mixing_weights().cpu().numpy().astype(np.float64)

    def save(self, path: Any) -> Any:
        """Save to a torch file (weights, config, genes, scaling); returns the path."""
        from stmap.models._train import save_checkpoint

        extra = {"genes": list(self.genes), "mean": self.mean, "std": self.std, "params": self.params}
        extra["history"] = list(self.history)
        extra["prior"] = None if self.prior is None else {k: np.asarray(v).tolist() for k, v in self.prior.items()}
        return save_checkpoint(path, self.net, config=self.config, extra=extra, kind="Impute3DModel")

    @classmethod
    def load(cls, path: Any, *, device: str = "cpu") -> Impute3DModel:
        """Load a model written by :meth:`stmap.tl.Impute3DModel.save`.

        A file that is not an Impute3DModel saved by :meth:`save` (not a torch file, another kind of torch file, a
        file of another stmap model) raises :class:`~stmap.StmapInputError` naming it; a missing file
        :class:`FileNotFoundError`.
        """
        from stmap.models._asign import ASIGNNet
        from stmap.models._train import load_checkpoint

        net, config, extra = load_checkpoint(
            path, ASIGNNet, device=device, kind="Impute3DModel", required=("genes", "mean", "std")
        )
        return cls(
            net=net,
            genes=list(extra["genes"]),
            mean=np.asarray(extra["mean"], dtype=np.float64),
            std=np.asarray(extra["std"], dtype=np.float64),
            config=config,
            params=dict(extra.get("params", {})),
            history=list(extra.get("history", [])),
            prior=None if extra.get("prior") is None else {k: np.asarray(v) for k, v in extra["prior"].items()},
        )


def _tensors(Y, measured, levels, has, graphs, torch, dev):
    ei, ea, A = _edges(graphs, torch)
    return {
        "feats": [torch.as_tensor(f, device=dev) for f in levels],
        "has": torch.as_tensor(has, device=dev),
        "ei": ei.to(dev),
        "ea": ea.to(dev),
        "A": A,
        "Y": torch.as_tensor(Y, dtype=torch.float32, device=dev),
        "measured": torch.as_tensor(measured, device=dev),
    }


def impute_arrays(
    Y: np.ndarray,
    measured: np.ndarray,
    xyz: np.ndarray,
    codes: np.ndarray,
    radius: float | np.ndarray,
    levels: list[np.ndarray] | None,
    has_image: np.ndarray | None,
    *,
    genes: list[str] | None = None,
    graph: tuple[str, ...] = ("overlap",),
    propagate: bool = True,
    iterations: int = 20,
    epochs: int = 100,
    hidden: int = 32,
    heads: int = 4,
    dropout: float = 0.1,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    mask_fraction: float = 0.3,
    n_masks: int = 20,
    use_histology_prior: bool = True,
    holdout_fraction: float = 0.25,
    mix_shrink: float = 10.0,
    expression_token: bool = True,
    mix_lr_factor: float = 25.0,
    aux_weight: float = 0.25,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int | None = None,
    disc_scale: float = 3.0,
    per_section_features: bool = True,
    model: Impute3DModel | None = None,
    seed: int = 0,
    device: str = "cpu",
    verbose: bool = False,
) -> tuple[np.ndarray, Impute3DModel, dict[str, Any]]:
    """Train (unless ``model`` is given) and impute on arrays; returns (prediction for every spot, model, graphs).

    ``Y`` is the target on every spot (rows of unmeasured spots are ignored), ``levels`` one feature block per
    patch scale (``None``/``[]`` for expression + graph only), ``has_image`` which spots have histology.
    Measured spots keep ``Y`` in the prediction.
    """
    import torch

    from stmap._core._device import resolve_device
    from stmap.models._asign import ASIGNNet, impute_loss
    from stmap.models._train import fit

    Y = np.asarray(Y, dtype=np.float64)
    measured = np.asarray(measured, dtype=bool)
    codes = np.asarray(codes)
    n, g = Y.shape
    levels = [] if levels is None else list(levels)
    has = np.zeros(n, bool) if has_image is None or not levels else np.asarray(has_image, bool)
    levels = _standardize_levels(levels, has, codes, per_section_features) if levels else []
    feat_cat = np.concatenate(levels, 1) if levels else None
    graphs = build_graph(
        xyz, codes, radius, feat_cat, has, graph=graph, k_similar=k_similar, k_spatial=k_spatial,
        layers_apart=layers_apart, disc_scale=disc_scale,
    )  # fmt: skip
    if model is None:
        mean = Y[measured].mean(0)
        std = Y[measured].std(0)
        std = np.where(std > 1e-8, std, 1.0)
    else:
        mean, std = model.mean, model.std
    Z = np.where(measured[:, None], (Y - mean) / std, 0.0)
    dev = resolve_device(device)
    torch.manual_seed(int(seed))
    T = _tensors(Z, measured, levels, has, graphs, torch, dev)
    use_prior = bool(levels) and use_histology_prior and (has & measured).sum() >= 10
    prior_fit = None if model is None else model.prior
    if use_prior and model is None:
        prior_fit = _ridge_prior(feat_cat, Z, has & measured)
    prior_t = torch.as_tensor(_apply_prior(prior_fit, feat_cat, has, Z.shape), dtype=torch.float32, device=dev)
    avail = np.c_[np.full(n, propagate), has & (prior_fit is not None), np.ones(n, bool)]
    avail_t = torch.as_tensor(avail, device=dev)

    def prop(known):
        if not propagate:
            return torch.zeros_like(T["Y"])
        p = propagate_labels(T["A"], Z, known, iterations=iterations)
        return torch.as_tensor(p, dtype=torch.float32, device=dev)

    params = {
        "graph": list(graph), "propagate": propagate, "iterations": iterations, "epochs": epochs, "hidden": hidden,
        "heads": heads, "dropout": dropout, "lr": lr, "weight_decay": weight_decay, "mask_fraction": mask_fraction,
        "n_masks": n_masks, "mix_lr_factor": mix_lr_factor, "aux_weight": aux_weight,
        "use_histology_prior": use_histology_prior, "holdout_fraction": holdout_fraction,
        "mix_shrink": mix_shrink, "expression_token": expression_token, "k_similar": k_similar,
        "k_spatial": k_spatial,
        "layers_apart": layers_apart, "disc_scale": disc_scale, "per_section_features": per_section_features,
        "seed": seed,
    }  # fmt: skip
    if model is None:
        config = {
            "level_dims": [int(f.shape[1]) for f in levels], "n_genes": int(g), "hidden": int(hidden),
            "heads": int(heads), "n_edge_types": len(_EDGE_TYPES), "dropout": float(dropout),
            "use_expression": bool(expression_token),
        }  # fmt: skip
        net = ASIGNNet(**config)
        # measured spots: a held-out part H (labels never seen by the network nor the propagation; the per-gene
        # mix is learnt on it) and the rest, of which a random mask_fraction is hidden from the propagation each
        # epoch and predicted by the network
        rng = np.random.default_rng(seed)
        meas_np = rng.permutation(np.flatnonzero(measured))
        n_hold = int(round(holdout_fraction * len(meas_np))) if len(meas_np) >= 10 else 0
        hold, rest = meas_np[:n_hold], meas_np[n_hold:]
        hold_t = torch.as_tensor(np.sort(hold), device=dev)
        rest_mask = np.zeros(n, bool)
        rest_mask[rest] = True
        prior_tr = prior_t
        if prior_fit is not None and n_hold and (has & rest_mask).sum() >= 10:  # the mix sees an honest prior on H
            prior_tr = _apply_prior(_ridge_prior(feat_cat, Z, has & rest_mask), feat_cat, has, Z.shape)
            prior_tr = torch.as_tensor(prior_tr, dtype=torch.float32, device=dev)
        n_mask = max(1, int(round(mask_fraction * len(rest))))
        masks = []  # a fixed set of masks (and their propagations), cycled through the epochs
        for _ in range(max(1, min(int(n_masks), int(epochs)))):
            masked = rng.choice(rest, size=min(n_mask, len(rest)), replace=False)
            known = rest_mask.copy()
            known[masked] = False
            masks.append((torch.as_tensor(np.sort(masked), device=dev), prop(known)))

        def step(net, idx, epoch):
            masked, p = masks[epoch % len(masks)]
            _, out, per_level = net(T["feats"], T["has"], p, T["ei"], T["ea"])
            tgt = T["Y"][masked]
            loss = impute_loss(out[masked], tgt)
            for pl in per_level:
                loss = loss + aux_weight / len(per_level) * impute_loss(pl[masked], tgt)
            if n_hold:  # the mix, on spots the network never trained on (network output detached)
                mixed = net.mix(p[hold_t], prior_tr[hold_t], out[hold_t].detach(), avail_t[hold_t])
                loss = loss + impute_loss(mixed, T["Y"][hold_t])
                ml = net.mix_logit  # shrink per-gene weights towards the per-source mean (few held-out spots)
                loss = loss + mix_shrink * (ml - ml.mean(1, keepdim=True)).pow(2).mean()
            return loss

        others = [p for n_, p in net.named_parameters() if n_ != "mix_logit" and p.requires_grad]
        groups = [{"params": others}]
        if net.mix_logit.requires_grad:  # the per-gene mix learns faster than the network (one scalar per gene)
            groups.append({"params": [net.mix_logit], "lr": lr * mix_lr_factor, "weight_decay": 0.0})
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
        hist = fit(
            net, step, 1, epochs=epochs, batch_size=1, lr=lr, optimizer=opt, seed=seed, device=dev,
            verbose=verbose, desc="impute_3d",
        )  # fmt: skip
        model = Impute3DModel(net, list(genes or range(g)), mean, std, config, params, list(hist.loss), prior_fit)
    net = model.net.to(dev).eval()
    with torch.no_grad():
        p = prop(measured)
        mixed, out, _ = net(T["feats"], T["has"], p, T["ei"], T["ea"], prior_t, avail_t)
    srcs = zip(("propagated", "prior", "network"), (p, prior_t, out))
    model.sources = {k: v.cpu().numpy().astype(np.float64) * std + mean for k, v in srcs}  # each alone (diagnostics)
    pred = mixed.cpu().numpy().astype(np.float64) * std + mean
    pred[measured] = Y[measured]
    return pred, model, graphs


def _pick_genes(counts: np.ndarray, var_names: Any, measured: np.ndarray, genes: Any) -> np.ndarray:
    from stmap._core._errors import StmapInputError

    if isinstance(genes, (int, np.integer)):
        if genes < 1:
            raise StmapInputError(f"`genes` must be >= 1 or a list of gene names, got {genes}.")
        mean = np.asarray(counts[measured].mean(0)).ravel()
        return np.sort(np.argsort(-mean, kind="stable")[: int(genes)])
    genes = list(genes)
    idx = var_names.get_indexer(genes)
    if (idx < 0).any() or not genes:
        missing = [g for g, i in zip(genes, idx) if i < 0][:5]
        raise StmapInputError(f"Genes not in the table: {missing}; pass names from `var_names` (or an int: top-n).")
    return idx


def _compute_features(
    sdata: Any, table_key: str, features_key: str, scales: Any, kwargs: dict[str, Any] | None, **common: Any
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Multi-scale histology features of a stacked table, computed on a copy (nothing written to ``sdata``).

    Returns ``(features, uns metadata)``, or ``None`` (with a warning) when no section has a usable image.
    """
    from stmap.pp._histology import histology_features

    kw = {**(kwargs or {}), "scales": tuple(scales)}
    for k in ("table_key", "key_added", "copy"):
        if k in kw:
            raise StmapInputError(f"`feature_kwargs` may not set {k!r}; it is set by impute_3d.")
    try:
        out = histology_features(sdata, table_key=table_key, key_added=features_key, copy=True, **common, **kw)
    except StmapInputError as e:
        logg.warning(f"No histology features ({e}): imputing from expression and the graph only.")
        return None
    t = out.tables[table_key]
    return np.asarray(t.obsm[features_key]), dict(t.uns[features_key])


@inject_docs()
def impute_3d(
    sdata: Any,
    *,
    table_key: str = "stack",
    measured: str | list[str] | None = None,
    genes: int | list[str] = 250,
    features_key: str | None = Key.obsm.histology,
    n_scales: int | None = None,
    feature_scales: tuple[float, ...] = (1, 2.3, 4.6),
    feature_kwargs: dict[str, Any] | None = None,
    layer: str | None = None,
    section_key: str = Key.obs.section,
    spatial_key: str = Key.obsm.spatial_3d,
    graph: tuple[str, ...] = ("overlap",),
    propagate: bool = True,
    epochs: int = 100,
    hidden: int = 32,
    mask_fraction: float = 0.3,
    disc_scale: float = 3.0,
    k_similar: int = 12,
    k_spatial: int = 6,
    model: Impute3DModel | None = None,
    seed: int = 0,
    device: str = "cpu",
    key_added: str = "stmap_impute3d",
    copy: bool = False,
    return_model: bool = False,
    verbose: bool = False,
) -> Any:
    """Impute expression on unmeasured serial sections from measured ones and every section's histology (ASIGN).

    A 3D spot graph joins spots of different sections by the overlap (closed-form IoU) of their registered discs,
    enlarged ``disc_scale`` times so that spots one spacing apart still connect, optionally also by the similarity of
    their histology features (top ``k_similar``) and spots of one section by spatial kNN
    (:func:`stmap.pp.spot_graph_3d`; ``graph=``). The measured expression is propagated over this graph (20
    iterations, measured spots clamped). A network encodes the histology features of each patch scale (blocks of
    ``obsm[features_key]``, e.g. spot / region / global context from ``st.pp.histology_features(..., scales=(1, 2.3,
    4.6))``), fuses them with the propagated expression by cross-attention, aggregates neighbours by graph attention
    and combines the scales with a transformer layer. The output mixes, with learnt per-gene weights, the propagated
    expression, a linear histology prior (ridge regression of expression on the features) and the network.

    Training, on the measured spots only: a held-out quarter is never shown to the network nor to the propagation;
    on the rest, a random ``mask_fraction`` is hidden from the propagation each epoch and predicted by the network
    (loss ``0.75 MSE + 0.25 (1 - PCC)`` plus the same for each scale's own head); the mixing weights are fitted on
    the held-out quarter (shrunk towards their mean across genes), so they judge the sources on spots no part of the
    model has seen. With all labels in one section the network still overrates itself (it interpolates within the
    measured section better than it transfers to others): on HER2ST the similarity and spatial edges lowered
    gene-wise accuracy, hence the overlap-only default graph.

    The target is ASIGN's: ``ln((c + 1) / sum(c + 1))`` over the imputed genes, from counts.

    Parameters
    ----------
    {sdata}
        The stack from :func:`stmap.pp.stack_sections` (or an AnnData with ``obs[section_key]``,
        ``obsm[spatial_key]``).
    table_key
        The stacked table.
    measured
        Which spots have measured expression: ``None`` uses ``obs['measured']``; an obs column name (bool); or a list
        of section names.
    genes
        Top-n genes by mean count over the measured spots, or a list of genes.
    features_key
        ``obsm`` key of histology features (rows of spots without an image: NaN), split into blocks, one per patch
        scale, following ``uns[features_key]['n_features_per_scale']`` when present. When the key is absent and
        ``sdata`` is a SpatialData, the features are computed here with :func:`stmap.pp.histology_features` on the
        stacked table (each spot's patches from its own section's image, at ``feature_scales``; NaN rows, with a
        warning, for sections without an image) and written with the results. If no section has an image (or
        ``sdata`` is a plain AnnData without the key): expression and graph only, with a warning. ``None``: no
        histology, no warning.
    n_scales
        Number of equal-width patch-scale blocks in ``obsm[features_key]`` (default: from its ``uns`` entry, else 1).
    feature_scales
        Patch sizes, as multiples of the spot patch, of the features computed when ``obsm[features_key]`` is absent
        (spot / region / global context, ASIGN's 224 / 512 / 1024 px patches).
    feature_kwargs
        Further arguments of :func:`stmap.pp.histology_features` for those features (e.g. ``patch_um``,
        ``patch_px``, ``extractor``, ``image_key``).
    layer
        Layer of raw counts, used as given (default: ``layers['counts']`` if present, else ``X``, which must then
        hold whole numbers: a normalised ``X`` is an error that names the fix). Only the measured spots' counts are
        read and checked (numeric, finite, non-negative); the sections to impute may hold anything (e.g. 0 or NaN).
    section_key, spatial_key
        Section column (categorical, in stacking order) and aligned ``(x, y, z)`` coordinates (micrometres).
    graph
        Edge types used by the propagation and the graph attention: any of ``'overlap'``, ``'similarity'``,
        ``'spatial'`` (types left out are written as empty matrices).
    propagate
        Label propagation and mixing (``False``: the network alone).
    epochs, hidden, mask_fraction
        Training length, token width, fraction of measured spots hidden per epoch.
    disc_scale
        Factor on the spot radius for the overlap graph.
    k_similar, k_spatial
        Neighbours of the similarity and spatial graphs.
    model
        A trained :class:`stmap.tl.Impute3DModel` to apply instead of training (same genes and feature layout).
    {seed}
    {device}
    {key_added}
    {copy}
    return_model
        Also return the :class:`stmap.tl.Impute3DModel` (``(result, model)``).
    {verbose}

    Returns
    -------
    ``None`` (or the modified copy with ``copy=True``; with ``return_model``, a tuple with the model). Writes to the
    table:

    ``.layers['imputed']``
        ``ln((c + 1) / sum(c + 1))`` of the imputed genes for every spot (measured spots: their own values); NaN in
        the other genes' columns.
    ``.obsm[key_added]``
        The same for the imputed genes only (DataFrame, columns = genes).
    ``.obs[key_added + '_measured']``
        Which spots were measured.
    ``.obsp[key_added + '_overlap' | '_similarity' | '_spatial']``
        The graph (sparse).
    ``.obsm[features_key]``, ``.uns[features_key]``
        Only when the features were computed here: the histology features and their metadata, as written by
        :func:`stmap.pp.histology_features`.
    ``.uns[key_added]``
        ``genes``, ``mixing_weights`` (``(3, n_genes)``: weights of the propagated expression, the histology prior
        and the network), ``loss`` (per epoch),
        ``target``, ``histology`` (whether image features were used) and ``params``.

    Raises
    ------
    StmapInputError
        No measured spot, a single section, unknown genes/keys, features of the wrong shape, measured counts that are
        NaN/infinite, negative or non-numeric, a normalised ``X`` without ``layers['counts']``. Nothing is written.
    """
    import pandas as pd
    from scipy import sparse

    from stmap.pp._stack import stack_context

    ctx, adata = stack_context(sdata, table_key, spatial_key, section_key)
    sec = adata.obs[section_key]
    if not isinstance(sec.dtype, pd.CategoricalDtype):
        sec = pd.Categorical(sec)
    codes = np.asarray(pd.Categorical(sec).codes)
    names = list(pd.Categorical(sec).categories)
    if len(np.unique(codes)) < 2:
        raise StmapInputError(
            "impute_3d needs at least two sections (one measured, one to impute); the table has "
            f"{len(np.unique(codes))}. Stack several sections with `st.pp.stack_sections`."
        )
    if measured is None:
        if Key.obs.measured not in adata.obs:
            raise StmapInputError("No obs['measured'] column: pass `measured=` (an obs column or section names).")
        meas = adata.obs[Key.obs.measured].to_numpy(dtype=bool)
    elif isinstance(measured, str):
        if measured in adata.obs:
            meas = adata.obs[measured].to_numpy(dtype=bool)
        elif measured in names:
            meas = np.asarray(sec == measured)
        else:
            raise unknown_key("Measured column or section", measured, [*adata.obs.columns, *names], "obs/sections")
    else:
        bad = [m for m in measured if m not in names]
        if bad:
            raise StmapInputError(f"Unknown sections in `measured`: {bad}; sections are {names}.")
        meas = np.isin(np.asarray(sec, dtype=object), list(measured))
    if not meas.any():
        raise StmapInputError("No measured spot: `measured` selects nothing; name at least one measured section.")
    if meas.all():
        raise StmapInputError("Every spot is measured: nothing to impute. Mark the sections to impute as unmeasured.")
    lay = layer if layer is not None else ("counts" if "counts" in adata.layers else None)
    if lay is not None and lay not in adata.layers:
        raise unknown_key("Layer", lay, adata.layers.keys(), "layers")
    where = f"the measured spots of {f'table {ctx.table_key!r}' if ctx.table_key else 'adata'}"
    counts, lay = read_counts(adata, lay, where, rows=meas)
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    gidx = _pick_genes(counts, adata.var_names, meas, genes)
    if model is not None and list(adata.var_names[gidx]) != list(model.genes):
        gidx = _pick_genes(counts, adata.var_names, meas, model.genes)
    levels, has, computed = None, None, None
    if features_key is not None:
        f, meta = None, {}
        if features_key in adata.obsm:
            f, meta = adata.obsm[features_key], adata.uns.get(features_key, {})
        elif ctx.sdata is None:
            logg.warning(
                f"No obsm[{features_key!r}] histology features: imputing from expression and the graph only. Pass "
                "the SpatialData stack (its sections' images give the features) or compute them with "
                "`st.pp.histology_features`."
            )
        else:
            computed = _compute_features(
                sdata, table_key, features_key, feature_scales, feature_kwargs, seed=seed, device=device,
                verbose=verbose,
            )  # fmt: skip
            if computed is not None:
                f, meta = computed
        if f is not None:
            f = f.to_numpy(dtype=float) if isinstance(f, pd.DataFrame) else np.asarray(f, dtype=float)
            if f.ndim != 2 or len(f) != adata.n_obs:
                raise StmapInputError(f"obsm[{features_key!r}] must be (n_spots, n_features), got {f.shape}.")
            has = np.isfinite(f).all(1)
            if not has.any():
                logg.warning(f"obsm[{features_key!r}] is all NaN: imputing from expression and the graph only.")
                levels = None
            else:
                per = list(meta.get("n_features_per_scale", [])) if isinstance(meta, dict) else []
                if n_scales is not None:
                    if n_scales < 1 or f.shape[1] % int(n_scales):
                        raise StmapInputError(
                            f"n_scales={n_scales} does not divide the {f.shape[1]} feature columns into equal blocks."
                        )
                    per = [f.shape[1] // int(n_scales)] * int(n_scales)
                elif not per or sum(per) != f.shape[1]:
                    per = [f.shape[1]]
                bounds = np.cumsum([0, *per])
                f = np.where(has[:, None], f, 0.0)
                levels = [f[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if model is not None and [int(x.shape[1]) for x in (levels or [])] != list(model.config["level_dims"]):
        raise StmapInputError(
            f"The model was trained on feature blocks {model.config['level_dims']}, the table gives "
            f"{[int(x.shape[1]) for x in (levels or [])]}; use the same features_key layout."
        )
    if "spot_radius_um" in adata.obs:
        radius = adata.obs["spot_radius_um"].to_numpy(dtype=float)
    elif isinstance(adata.uns.get("stmap_stack"), dict) and "spot_radius_um" in adata.uns["stmap_stack"]:
        radius = float(adata.uns["stmap_stack"]["spot_radius_um"])
    else:
        raise StmapInputError("The spot radius is unknown: add obs['spot_radius_um'] (micrometres).")
    xyz = np.asarray(adata.obsm[spatial_key], dtype=float)
    if not np.isfinite(xyz[:, :2]).all():
        raise StmapInputError(f"obsm[{spatial_key!r}] has NaN coordinates; drop those spots first.")
    Y = asign_target(counts[:, gidx])
    gene_names = list(adata.var_names[gidx])

    start = logg.info(f"impute_3d: {int(meas.sum())} measured -> {int((~meas).sum())} spots, {len(gidx)} genes")
    pred, mdl, graphs = impute_arrays(
        Y, meas, xyz, codes, radius, levels, has, genes=gene_names, graph=tuple(graph), propagate=propagate,
        epochs=epochs, hidden=hidden, mask_fraction=mask_fraction, disc_scale=disc_scale, k_similar=k_similar,
        k_spatial=k_spatial, model=model, seed=seed, device=device, verbose=verbose,
    )  # fmt: skip
    full = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
    full[:, gidx] = pred
    params = {
        "measured": [n for n in names if meas[codes == names.index(n)].any()], "genes": len(gene_names),
        "features_key": features_key if levels is not None else None, "layer": lay, "graph": list(graph),
        "propagate": propagate, "epochs": epochs, "hidden": hidden, "mask_fraction": mask_fraction,
        "disc_scale": disc_scale, "k_similar": k_similar, "k_spatial": k_spatial, "seed": seed,
        "device": str(device), "pretrained": model is not None, "features_computed": computed is not None,
    }  # fmt: skip
    res = Results(ctx, key_added, params)
    res.layer(Key.layers.imputed, full)
    res.obsm(key_added, pd.DataFrame(pred.astype(np.float32), index=adata.obs_names, columns=gene_names))
    res.obs(f"{key_added}_measured", meas)
    if computed is not None:
        res.obsm(features_key, computed[0])
        res.uns(features_key, computed[1])
    for part, m in graphs.items():
        res.obsp(f"{key_added}_{part}", m.tocsr())
    res.uns(
        key_added,
        {
            "genes": gene_names,
            "mixing_weights": mdl.mixing_weights(),
            "loss": np.asarray(mdl.history, dtype=float),
            "target": "ln((c + 1) / sum_genes(c + 1))",
            "histology": levels is not None,
        },
    )
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return (out, mdl) if return_model else out
