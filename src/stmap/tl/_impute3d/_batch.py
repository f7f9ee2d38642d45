"""The network on a large graph in pieces: batches of target spots, each with the spots whose edges reach them.

The network is one graph-attention layer between per-spot steps, so a spot's output depends on its own inputs and
on the tokens of the spots with an edge into it. A batch therefore needs its targets, their in-neighbours and the
edges into the targets (rows of the sparse graph), never the whole edge list: the same numbers as the whole graph
at once (to float round-off; dropout draws differ in training), in memory bounded by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from ._config import EDGE_TYPES


@dataclass
class Batch:
    """Targets (global ids, in the given order), the spots they read (``nodes``, sorted) and the edges into them."""

    targets: np.ndarray
    nodes: np.ndarray
    at: Any  # positions of the targets in ``nodes`` (torch)
    ei: Any  # (2, E): sources as positions in ``nodes``, targets as positions in ``targets`` (torch)
    ea: Any  # (E, n_edge_types + 1): type one-hot and weight (torch)


def batch(graphs: dict[str, sparse.csr_matrix], targets: np.ndarray, dev: Any) -> Batch:
    """The edges into ``targets`` (every type, in :func:`~stmap.tl._impute3d._graph.edges`' order) and their sources."""
    import torch

    rows, cols, attr = [], [], []
    for t, k in enumerate(EDGE_TYPES):
        c = graphs[k][targets].tocoo()
        rows.append(c.row)
        cols.append(c.col)
        a = np.zeros((c.nnz, len(EDGE_TYPES) + 1), np.float32)
        a[:, t] = 1.0
        a[:, -1] = c.data
        attr.append(a)
    row, col = np.concatenate(rows), np.concatenate(cols)
    nodes = np.union1d(targets, col)
    ei = np.vstack([np.searchsorted(nodes, col), row])
    return Batch(
        targets=targets,
        nodes=nodes,
        at=torch.as_tensor(np.searchsorted(nodes, targets), device=dev),
        ei=torch.as_tensor(ei, dtype=torch.long, device=dev),
        ea=torch.as_tensor(np.concatenate(attr), device=dev),
    )


def forward(net: Any, T: Any, p: Any, b: Batch, lv: Any = None, *, mix: bool = False) -> tuple[Any, Any, list]:
    """The network's ``(mixed, network, per_level)`` at the batch's targets; ``lv``: every spot's tokens, if known.

    ``mix``: the mixed output with the prior and the available sources (prediction); otherwise without them.
    """
    import torch

    nodes = torch.as_tensor(b.nodes, device=T.dev)
    tok = net.tokens([f[nodes] for f in T.feats], T.has[nodes], p[nodes]) if lv is None else lv[nodes]
    tg = torch.as_tensor(b.targets, device=T.dev)
    conv = net.convolve(tok, b.ei, b.ea, targets=b.at)
    if mix:
        return net.finish(conv, p[tg], T.prior[tg], T.avail[tg])
    return net.finish(conv, p[tg])


def chunks(n: int, size: int) -> list[np.ndarray]:
    """``range(n)`` in consecutive pieces of ``size``."""
    return [np.arange(a, min(a + size, n)) for a in range(0, n, size)]


def tokens(net: Any, T: Any, p: Any, size: int) -> Any:
    """Every spot's tokens after the cross-attention (a per-spot step), computed ``size`` spots at a time."""
    import torch

    out = []
    for idx in chunks(len(p), size):
        i = torch.as_tensor(idx, device=T.dev)
        out.append(net.tokens([f[i] for f in T.feats], T.has[i], p[i]))
    return torch.cat(out, 0)


def predict(net: Any, T: Any, p: Any, size: int) -> tuple[Any, Any]:
    """``(mixed, network)`` for every spot, ``size`` target spots at a time (eval mode, no gradients)."""
    import torch

    lv = tokens(net, T, p, size)
    mixed, outs = [], []
    for idx in chunks(len(p), size):
        m, o, _ = forward(net, T, p, batch(T.graphs, idx, T.dev), lv, mix=True)
        mixed.append(m)
        outs.append(o)
    return torch.cat(mixed, 0), torch.cat(outs, 0)
