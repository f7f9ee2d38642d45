"""The imputation on arrays, as training and prediction share it: standardised features, graph, target, tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from ._config import GraphParams
from ._graph import adjacency, build_graph, edges
from ._prior import apply_prior, apply_prior32
from ._propagate import propagate_labels, propagate_unknown


@dataclass
class Problem:
    """Target ``Y`` on every spot (rows of unmeasured spots are not read), standardised features, the graph."""

    Y: np.ndarray
    measured: np.ndarray
    levels: list[np.ndarray]
    has: np.ndarray
    feat_cat: np.ndarray | None
    graphs: dict[str, sparse.csr_matrix]
    key: np.ndarray | None = None  # space-filling order of the spots in the plane (batches of nearby spots)
    batch_size: int | None = None  # target spots per batch (``None``: the whole graph at once)

    @property
    def n_edges(self) -> int:
        """Edges of the graph, every type (stored entries of the symmetric matrices)."""
        return int(sum(g.nnz for g in self.graphs.values()))


def standardize_levels(levels: list[np.ndarray], has: np.ndarray, codes: np.ndarray, per_section: bool) -> list:
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


def problem(
    Y: np.ndarray,
    measured: np.ndarray,
    xyz: np.ndarray,
    codes: np.ndarray,
    radius: float | np.ndarray,
    levels: list[np.ndarray] | None,
    has_image: np.ndarray | None,
    gp: GraphParams,
) -> Problem:
    """The problem on arrays: ``levels`` one feature block per patch scale (``None``/``[]``: no histology)."""
    Y = np.asarray(Y, dtype=np.float64)
    measured = np.asarray(measured, dtype=bool)
    codes = np.asarray(codes)
    lv = [] if levels is None else list(levels)
    has = np.zeros(len(Y), bool) if has_image is None or not lv else np.asarray(has_image, bool)
    lv = standardize_levels(lv, has, codes, gp.per_section_features) if lv else []
    feat_cat = np.concatenate(lv, 1) if lv else None
    graphs = build_graph(
        xyz,
        codes,
        radius,
        feat_cat,
        has,
        graph=gp.graph,
        k_similar=gp.k_similar,
        k_spatial=gp.k_spatial,
        layers_apart=gp.layers_apart,
        disc_scale=gp.disc_scale,
        max_overlaps=gp.max_overlaps,
    )
    from ._batch import morton

    r = float(np.median(np.broadcast_to(np.asarray(radius, float), (len(Y),))))
    return Problem(Y, measured, lv, has, feat_cat, graphs, morton(np.asarray(xyz, float)[:, :2], r))


def scaling(pb: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (1 where constant) of the target over the measured spots."""
    mean = pb.Y[pb.measured].mean(0, dtype=np.float64)
    std = pb.Y[pb.measured].std(0, dtype=np.float64)
    return mean, np.where(std > 1e-8, std, 1.0)


@dataclass
class Tensors:
    """The problem on the device: standardised target ``Z``, features, graph edges, prior and available sources.

    With ``batch_size`` (a large graph, in batches) there is no global edge list (``ei``, ``ea`` are ``None``; the
    batches read the edges from ``graphs``), ``Z`` and the prior are float32 and the propagation is float32.
    """

    Z: np.ndarray
    feats: list[Any]
    has: Any
    ei: Any
    ea: Any
    A: sparse.csr_matrix
    Y: Any
    measured: Any
    prior: Any
    avail: Any
    dev: Any
    graphs: dict[str, sparse.csr_matrix]
    batch_size: int | None = None


def standardized(pb: Problem, mean: np.ndarray, std: np.ndarray, *, lean: bool = False) -> np.ndarray:
    """The target standardised per gene on the measured spots, 0 (the mean) elsewhere (``lean``: float32)."""
    if not lean:
        return np.where(pb.measured[:, None], (pb.Y - mean) / std, 0.0)
    Z = np.zeros(pb.Y.shape, dtype=np.float32)
    for rows in np.array_split(np.flatnonzero(pb.measured), max(1, int(pb.measured.sum()) // 65536)):
        Z[rows] = (pb.Y[rows] - mean) / std
    return Z


def tensors(
    pb: Problem,
    Z: np.ndarray,
    prior_fit: dict | None,
    propagate: bool,
    dev: Any,
    batch_size: int | None = None,
    *,
    with_prior: bool = True,
) -> Tensors:
    """Everything the network reads, on ``dev``; the prior (``prior_fit``) is available where a spot has an image.

    ``batch_size``: the graph is read in batches (no global edge list; float32 target and prior).
    """
    import torch

    prior: np.ndarray | None
    if batch_size is None:
        ei, ea, A = edges(pb.graphs, torch)
        ei, ea = ei.to(dev), ea.to(dev)
        prior = apply_prior(prior_fit, pb.feat_cat, pb.has, Z.shape)
    else:  # training in batches reads the prior on held-out spots only (``with_prior=False``)
        ei, ea, A = None, None, adjacency(pb.graphs)
        prior = apply_prior32(prior_fit, pb.feat_cat, pb.has, Z.shape) if with_prior else None
    avail = np.c_[np.full(len(Z), propagate), pb.has & (prior_fit is not None), np.ones(len(Z), bool)]
    return Tensors(
        Z=Z,
        feats=[torch.as_tensor(f, device=dev) for f in pb.levels],
        has=torch.as_tensor(pb.has, device=dev),
        ei=ei,
        ea=ea,
        A=A,
        Y=torch.as_tensor(Z, dtype=torch.float32, device=dev),
        measured=torch.as_tensor(pb.measured, device=dev),
        prior=None if prior is None else torch.as_tensor(prior, dtype=torch.float32, device=dev),
        avail=torch.as_tensor(avail, device=dev),
        dev=dev,
        graphs=pb.graphs,
        batch_size=batch_size,
    )


def propagated(T: Tensors, known: np.ndarray, gp: GraphParams) -> Any:
    """The standardised expression of the ``known`` spots propagated over the graph (zeros without propagation)."""
    import torch

    if not gp.propagate:
        return torch.zeros_like(T.Y)
    if T.batch_size is not None:  # float32, only the rows that change
        return torch.as_tensor(propagate_unknown(T.A, T.Z, known, iterations=gp.iterations), device=T.dev)
    p = propagate_labels(T.A, T.Z, known, iterations=gp.iterations)
    return torch.as_tensor(p, dtype=torch.float32, device=T.dev)
