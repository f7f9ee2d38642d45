"""The parameters of one imputation model: its graph and propagation, and its training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

#: Edge types of the 3D spot graph, in the order of the network's edge-type code.
EDGE_TYPES = ("overlap", "similarity", "spatial")
#: ``batch_size=None``: graphs of at most this many edges (all types) train and predict as a whole, at once.
FULL_GRAPH_MAX_EDGES = 1_000_000
#: ``batch_size=None`` on larger graphs: target spots per training step (and prediction batch) such that a batch
#: reads about this many edges (the network's time and memory per step), between the bounds below.
DEFAULT_BATCH_EDGES = 50_000
BATCH_SIZE_BOUNDS = (256, 4096)
#: ``batch_size=None`` on graphs beyond ``FULL_GRAPH_MAX_EDGES``: overlap edges of a spot with each other section, at
#: most to its this many nearest spots there (``GraphParams.max_overlaps``), so edges per spot (the time of every
#: step, of the propagation and of the prediction) stay bounded whatever the bin size and ``disc_scale``.
BATCH_MAX_OVERLAPS = 8


def resolve_batch_size(batch_size: int | None, n_edges: int, n_spots: int, *, batched: bool = False) -> int | None:
    """The batch size to use: ``None`` (the whole graph at once) or a number of target spots.

    ``batched``: in batches whatever the number of edges (the uncapped graph was too large for the whole graph).
    """
    if batch_size is not None:
        return int(batch_size)
    if n_edges <= FULL_GRAPH_MAX_EDGES and not batched:
        return None
    lo, hi = BATCH_SIZE_BOUNDS
    return int(np.clip(DEFAULT_BATCH_EDGES * n_spots // max(n_edges, 1), lo, hi))


@dataclass(frozen=True)
class GraphParams:
    """How the graph is built and expression propagated over it (the same when training and applying)."""

    graph: tuple[str, ...] = ("overlap",)
    propagate: bool = True
    iterations: int = 20
    k_similar: int = 12
    k_spatial: int = 6
    layers_apart: int | None = None
    disc_scale: float = 3.0
    per_section_features: bool = True
    max_overlaps: int | None = None  # overlap edges per spot and other section (nearest spots); None: every overlap


@dataclass(frozen=True)
class TrainParams:
    """How the network is trained."""

    epochs: int = 100
    hidden: int = 32
    heads: int = 4
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    mask_fraction: float = 0.3
    n_masks: int = 20
    n_masks_batched: int = 2  # in batches each step samples its targets anew: a few masks suffice
    batch_size: int | None = None
    batch_runs: int = 4  # compact regions per training batch
    prior_max_rows: int = 50_000  # in batches, the histology prior is fitted on at most this many spots
    use_histology_prior: bool = True
    holdout_fraction: float = 0.25
    mix_shrink: float = 10.0
    expression_token: bool = True
    mix_lr_factor: float = 25.0
    aux_weight: float = 0.25


def model_params(gp: GraphParams, tp: TrainParams, seed: int) -> dict[str, Any]:
    """The parameters a model records (``Impute3DModel.params``)."""
    return {**asdict(gp), "graph": list(gp.graph), **asdict(tp), "seed": seed}


def graph_params(params: dict[str, Any]) -> GraphParams:
    """The graph parameters a model was trained with (defaults for those a file does not record)."""
    kw = {f.name: params[f.name] for f in fields(GraphParams) if f.name in params}
    if "graph" in kw:
        kw["graph"] = tuple(kw["graph"])
    return GraphParams(**kw)
