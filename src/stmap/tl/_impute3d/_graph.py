"""The 3D spot graph of the imputation (overlap of enlarged discs, histology similarity, spatial kNN) and its edges."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from ._config import EDGE_TYPES


def build_graph(
    xyz: np.ndarray,
    codes: np.ndarray,
    radius: float | np.ndarray,
    features: np.ndarray | None,
    has_image: np.ndarray,
    *,
    graph: tuple[str, ...] = EDGE_TYPES,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int | None = None,
    disc_scale: float = 3.0,
    max_overlaps: int | None = None,
) -> dict[str, sparse.csr_matrix]:
    """The 3D spot graph (see :func:`stmap.pp.spot_graph_3d`); similarity only among spots with an image.

    Every edge type is returned; those not in ``graph`` are empty.
    """
    from stmap.pp import graph_arrays

    n = len(xyz)
    n_layers = len(np.unique(codes))
    layers_apart = max(n_layers - 1, 1) if layers_apart is None else int(layers_apart)
    r_disc = np.broadcast_to(np.asarray(radius, float), (n,)) * float(disc_scale)
    g = graph_arrays(
        xyz, codes, r_disc, None, k_spatial=max(k_spatial, 0), layers_apart=layers_apart, max_overlaps=max_overlaps
    )
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
    for k in EDGE_TYPES:
        if k not in graph:
            out[k] = sparse.csr_matrix((n, n), dtype=np.float32)
    return out


def adjacency(graphs: dict[str, sparse.csr_matrix]) -> sparse.csr_matrix:
    """The summed adjacency of every edge type (scipy CSR), for the propagation."""
    n = graphs["overlap"].shape[0]
    return sum((graphs[k] for k in EDGE_TYPES), sparse.csr_matrix((n, n), dtype=np.float32)).tocsr()


def edges(graphs: dict[str, Any], torch: Any) -> tuple[Any, Any, sparse.csr_matrix]:
    """Edge index, edge features (type one-hot + weight) and the summed adjacency (scipy CSR) for propagation."""
    rows, cols, attr = [], [], []
    for t, k in enumerate(EDGE_TYPES):
        c = graphs[k].tocoo()
        rows.append(c.row)
        cols.append(c.col)
        a = np.zeros((c.nnz, len(EDGE_TYPES) + 1), np.float32)
        a[:, t] = 1.0
        a[:, -1] = c.data
        attr.append(a)
    row, col = np.concatenate(rows), np.concatenate(cols)
    A = adjacency(graphs)
    # messages flow source (col) -> target (row)
    ei = torch.as_tensor(np.vstack([col, row]), dtype=torch.long)
    return ei, torch.as_tensor(np.concatenate(attr)), A
