"""Train the imputation network on the measured spots (a held-out part for the mix, masks for the network)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._arrays import Problem, Tensors, propagated, scaling, standardized, tensors
from ._config import EDGE_TYPES, GraphParams, TrainParams, model_params
from ._model import Impute3DModel
from ._prior import apply_prior, apply_prior32, ridge_prior


def _holdout(measured: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Measured spots split into a held-out part (the mix is learnt on it) and the rest (``fraction`` held out)."""
    meas = rng.permutation(np.flatnonzero(measured))
    n_hold = int(round(fraction * len(meas))) if len(meas) >= 10 else 0
    return meas[:n_hold], meas[n_hold:]


def _honest_prior(
    pb: Problem,
    Z: np.ndarray,
    prior_fit: dict | None,
    T: Tensors,
    hold: np.ndarray,
    rest_mask: np.ndarray,
    tp: TrainParams,
) -> Any:
    """The prior the mix sees on the held-out spots: refitted without them (when there are enough other spots).

    In batches: ``(held-out spots sorted, their prior)``, the prior on those spots only.
    """
    import torch

    X = pb.feat_cat
    refit = X is not None and prior_fit is not None and len(hold) > 0 and (pb.has & rest_mask).sum() >= 10
    if T.batch_size is not None:
        ids = np.sort(hold)
        fit = ridge_prior(X, Z, pb.has & rest_mask, tp.prior_max_rows) if refit and X is not None else prior_fit
        vals = apply_prior32(fit, None if X is None else X[ids], pb.has[ids], (len(ids), Z.shape[1]))
        return ids, torch.as_tensor(vals, device=T.dev)
    if not refit or X is None:
        return T.prior
    p = apply_prior(ridge_prior(X, Z, pb.has & rest_mask), X, pb.has, Z.shape)
    return torch.as_tensor(p, dtype=torch.float32, device=T.dev)


def _masks(
    T: Tensors, rest: np.ndarray, rest_mask: np.ndarray, gp: GraphParams, tp: TrainParams, rng: np.random.Generator
) -> list[tuple[Any, Any]]:
    """A fixed set of masks (spots hidden from the propagation) and their propagations, cycled through the epochs."""
    import torch

    n_mask = max(1, int(round(tp.mask_fraction * len(rest))))
    n_masks = tp.n_masks if T.batch_size is None else tp.n_masks_batched
    masks = []
    for _ in range(max(1, min(int(n_masks), int(tp.epochs)))):
        masked = rng.choice(rest, size=min(n_mask, len(rest)), replace=False)
        known = rest_mask.copy()
        known[masked] = False
        masks.append((torch.as_tensor(np.sort(masked), device=T.dev), propagated(T, known, gp)))
    return masks


def _loss(net: Any, out: Any, per_level: list, tgt: Any, hold: tuple | None, tp: TrainParams) -> Any:
    """The network on its targets (plus each level's head); the mix on held-out spots ``(p, prior, out, avail, y)``."""
    from stmap.models._asign import impute_loss

    loss = impute_loss(out, tgt)
    for pl in per_level:
        loss = loss + tp.aux_weight / len(per_level) * impute_loss(pl, tgt)
    if hold is not None:  # the mix, on spots the network never trained on (network output detached)
        p, prior, out_h, avail, y = hold
        loss = loss + impute_loss(net.mix(p, prior, out_h.detach(), avail), y)
        ml = net.mix_logit  # shrink per-gene weights towards the per-source mean (few held-out spots)
        loss = loss + tp.mix_shrink * (ml - ml.mean(1, keepdim=True)).pow(2).mean()
    return loss


def _step(T: Tensors, masks: list, hold: np.ndarray, prior_tr: Any, tp: TrainParams) -> Callable[[Any, Any, int], Any]:
    """The loss of one epoch on the whole graph: the network on its mask, the mix on every held-out spot."""
    import torch

    hold_t = torch.as_tensor(np.sort(hold), device=T.dev)

    def step(net: Any, idx: Any, epoch: int) -> Any:
        masked, p = masks[epoch % len(masks)]
        _, out, per_level = net(T.feats, T.has, p, T.ei, T.ea)
        h = (p[hold_t], prior_tr[hold_t], out[hold_t], T.avail[hold_t], T.Y[hold_t]) if len(hold) else None
        return _loss(net, out[masked], [pl[masked] for pl in per_level], T.Y[masked], h, tp)

    return step


def _batch_step(
    T: Tensors, pb: Problem, masks: list, hold: np.ndarray, prior_tr: Any, tp: TrainParams, rng: np.random.Generator
) -> Callable[[Any, Any, int], Any]:
    """The loss of one epoch in batches: ``batch_size`` masked spots in a few compact regions, the held-out spots there.

    Nearby targets share their graph neighbours, so a batch reads few spots besides its targets.
    """
    import torch

    from ._batch import Runs, batch, forward

    size = int(T.batch_size or 1)
    key = pb.key if pb.key is not None else np.arange(len(pb.measured), dtype=np.uint64)
    pools = [Runs.of(m.cpu().numpy(), key) for m, _ in masks]
    held = Runs.of(np.asarray(hold, dtype=np.int64), key)

    def step(net: Any, idx: Any, epoch: int) -> Any:
        k = epoch % len(masks)
        bm, ranges = pools[k].sample(size, tp.batch_runs, rng)
        bh = held.within(ranges, size, rng)
        p = masks[k][1]
        _, out, per_level = forward(net, T, p, batch(T.graphs, np.concatenate([bm, bh]), T.dev))
        n, h_t = len(bm), torch.as_tensor(bh, device=T.dev)
        prior_h = prior_tr[1][torch.as_tensor(np.searchsorted(prior_tr[0], bh), device=T.dev)]
        h = (p[h_t], prior_h, out[n:], T.avail[h_t], T.Y[h_t]) if len(bh) else None
        return _loss(net, out[:n], [pl[:n] for pl in per_level], T.Y[torch.as_tensor(bm, device=T.dev)], h, tp)

    return step


def _optimizer(net: Any, tp: TrainParams) -> Any:
    """Adam; the per-gene mix (one scalar per gene and source) learns faster than the network."""
    import torch

    others = [p for n_, p in net.named_parameters() if n_ != "mix_logit" and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": others}]
    if net.mix_logit.requires_grad:
        groups.append({"params": [net.mix_logit], "lr": tp.lr * tp.mix_lr_factor, "weight_decay": 0.0})
    return torch.optim.Adam(groups, lr=tp.lr, weight_decay=tp.weight_decay)


def train_arrays(
    pb: Problem, gp: GraphParams, tp: TrainParams, *, genes: list[str], seed: int, dev: Any, verbose: bool
) -> Impute3DModel:
    """Train on the measured spots of ``pb``.

    A held-out part (labels never seen by the network nor the propagation; the per-gene mix is learnt on it) and the
    rest, of which a random ``mask_fraction`` is hidden from the propagation each epoch and predicted by the network.
    """
    import torch

    from stmap.models._asign import ASIGNNet
    from stmap.models._train import fit

    mean, std = scaling(pb)
    Z = standardized(pb, mean, std, lean=tp.batch_size is not None)
    prior_fit = None  # features (feat_cat: every level side by side) on enough measured spots: a ridge prior
    if pb.feat_cat is not None and tp.use_histology_prior and (pb.has & pb.measured).sum() >= 10:
        prior_fit = ridge_prior(pb.feat_cat, Z, pb.has & pb.measured, tp.prior_max_rows if tp.batch_size else None)
    T = tensors(pb, Z, prior_fit, gp.propagate, dev, tp.batch_size, with_prior=tp.batch_size is None)
    config: dict[str, Any] = {
        "level_dims": [int(f.shape[1]) for f in pb.levels],
        "n_genes": int(Z.shape[1]),
        "hidden": int(tp.hidden),
        "heads": int(tp.heads),
        "n_edge_types": len(EDGE_TYPES),
        "dropout": float(tp.dropout),
        "use_expression": bool(tp.expression_token),
    }
    torch.manual_seed(int(seed))
    net = ASIGNNet(**config)
    rng = np.random.default_rng(seed)
    hold, rest = _holdout(pb.measured, tp.holdout_fraction, rng)
    rest_mask = np.zeros(len(Z), bool)
    rest_mask[rest] = True
    prior_tr = _honest_prior(pb, Z, prior_fit, T, hold, rest_mask, tp)
    masks = _masks(T, rest, rest_mask, gp, tp, rng)
    step = (
        _step(T, masks, hold, prior_tr, tp)
        if tp.batch_size is None
        else _batch_step(T, pb, masks, hold, prior_tr, tp, rng)
    )
    hist = fit(
        net,
        step,
        1,
        epochs=tp.epochs,
        batch_size=1,
        lr=tp.lr,
        optimizer=_optimizer(net, tp),
        seed=seed,
        device=dev,
        verbose=verbose,
        desc="impute_3d",
    )
    return Impute3DModel(net, list(genes), mean, std, config, model_params(gp, tp, seed), list(hist.loss), prior_fit)
