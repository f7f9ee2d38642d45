"""What the imputation will need in memory, estimated before it starts: refuse, naming the knob, when it cannot fit."""

from __future__ import annotations

from typing import Any

import numpy as np

from stmap._core._errors import StmapInputError

from ._config import TrainParams, resolve_batch_size

#: Bytes per edge of the graph: the symmetric matrices (float32 values, int32 indices), the summed adjacency and the
#: construction (pairs and their overlaps, both directions).
GRAPH_BYTES_PER_EDGE = 48
#: Bytes of network activations per edge read in training (three graph-attention levels, kept for the backward
#: pass): measured about 2.5 kB on the whole graph and in batches.
NETWORK_BYTES_PER_EDGE = 3000


def estimate_edges(
    xyz: np.ndarray,
    codes: np.ndarray,
    radius: Any,
    graph: tuple[str, ...],
    disc_scale: float,
    k: tuple[int, int],
    max_overlaps: int | None = None,
) -> float:
    """Edges of the 3D graph (all types), from a sample of spots per section: overlap pairs within ``2 r disc_scale``.

    ``k``: ``(k_similar, k_spatial)``; their parts count at most ``2 k`` per spot (symmetrised kNN).
    ``max_overlaps``: overlap pairs per spot and other section count at most ``2 max_overlaps`` (an upper bound).
    """
    from scipy.spatial import cKDTree

    r = np.broadcast_to(np.asarray(radius, dtype=float), (len(xyz),)) * float(disc_scale)
    layers = np.unique(codes)
    rng = np.random.default_rng(0)
    total = 0.0
    for a in layers:
        ia = np.flatnonzero(codes == a)
        sample = ia if len(ia) <= 2000 else rng.choice(ia, 2000, replace=False)
        for b in layers:
            if b == a:
                continue
            ib = np.flatnonzero(codes == b)
            reach = float(np.max(r[sample]) + np.max(r[ib]))
            hits = cKDTree(xyz[ib, :2]).query_ball_point(xyz[sample, :2], reach, return_length=True)
            if max_overlaps is not None:
                hits = np.minimum(hits, 2 * int(max_overlaps))
            total += len(ia) * float(np.mean(hits))
    n = len(xyz)
    return total + 2 * n * (k[0] * ("similarity" in graph) + k[1] * ("spatial" in graph))


def estimate_bytes(n_spots: int, n_genes: int, n_edges: float, tp: TrainParams) -> dict[str, float]:
    """Peak bytes of the imputation by part (beyond the table it reads), for ``tp.batch_size`` (``None``: whole)."""
    ng = float(n_spots) * n_genes
    if tp.batch_size is None:  # float64 target, standardised target, priors; 20 float32 propagations, tensors
        arrays = ng * (8 * 4 + 4 * (tp.n_masks + 4))
        network = n_edges * NETWORK_BYTES_PER_EDGE
    else:  # float64 target; float32 standardised target, priors, the masks' propagations and their temporaries
        arrays = ng * (8 + 4 * (tp.n_masks_batched + 7))
        batch_edges = 2 * tp.batch_size * n_edges / max(n_spots, 1)  # masked and held-out targets
        network = min(batch_edges, n_edges) * NETWORK_BYTES_PER_EDGE
    return {"spots x genes arrays": arrays, "graph": n_edges * GRAPH_BYTES_PER_EDGE, "network": network}


def available_bytes() -> float:
    """Memory available to this process now (:func:`stmap._core._memory.available_bytes`), or 8 GB when unknown."""
    from stmap._core._memory import available_bytes as system_available

    have = system_available()
    return 8e9 if have is None else have


def check_memory(
    xyz: np.ndarray,
    codes: np.ndarray,
    radius: Any,
    n_genes: int,
    *,
    graph: tuple[str, ...],
    disc_scale: float,
    k: tuple[int, int],
    batch_size: int | None,
    limit: float | None = None,
    max_overlaps: int | None = None,
    batched: bool = False,
) -> None:
    """Raise before anything heavy when the estimated peak exceeds the available memory (or ``limit`` bytes)."""
    n_edges = estimate_edges(xyz, codes, radius, graph, disc_scale, k, max_overlaps)
    tp = TrainParams(batch_size=resolve_batch_size(batch_size, int(n_edges), len(xyz), batched=batched))
    parts = estimate_bytes(len(xyz), n_genes, n_edges, tp)
    need, have = sum(parts.values()), available_bytes() if limit is None else float(limit)
    if need <= have:
        return
    detail = ", ".join(f"{k_} {v / 1e9:.1f} GB" for k_, v in parts.items())
    raise StmapInputError(
        f"impute_3d would need about {need / 1e9:.1f} GB ({detail}; {len(xyz):,} spots x {n_genes} genes, about "
        f"{n_edges / len(xyz):.0f} edges per spot) but {have / 1e9:.1f} GB are available. Impute fewer `genes` "
        "(the spots x genes arrays scale with them), lower `disc_scale` (edges per spot grow with its square; "
        "bins that tile the plane, e.g. Visium HD, connect with 1-1.5), pass a smaller `batch_size` (the network's "
        "memory scales with it), or leave 'similarity'/'spatial' out of `graph`."
    )
