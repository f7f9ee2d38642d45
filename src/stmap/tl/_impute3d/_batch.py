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


def morton(xy: np.ndarray, step: float) -> np.ndarray:
    """A space-filling (Morton, Z-order) key of every point on a grid of ``step``: runs of keys are compact regions."""
    q = np.floor((xy - xy.min(0)) / max(step, 1e-12))
    q = np.clip(q, 0, 2**21 - 1).astype(np.uint64)
    out = np.zeros(len(xy), dtype=np.uint64)
    for bit in range(21):
        one = np.uint64(1)
        for axis in (0, 1):
            out |= ((q[:, axis] >> np.uint64(bit)) & one) << np.uint64(2 * bit + axis)
    return out


@dataclass
class Runs:
    """Spots sorted by their key; a batch is a few runs of consecutive spots, i.e. a few compact regions."""

    ids: np.ndarray
    keys: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, key: np.ndarray) -> Runs:
        """``ids`` sorted by ``key``."""
        order = np.argsort(key[ids], kind="stable")
        return cls(ids[order], key[ids][order])

    def sample(self, size: int, n_runs: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """About ``size`` spots in ``n_runs`` runs at random places (all if ``size`` covers them); their key ranges."""
        n = len(self.ids)
        if size >= n:
            return np.sort(self.ids), [(int(self.keys[0]), int(self.keys[-1]))] if n else []
        piece = -(-size // n_runs)
        starts = rng.integers(0, n - piece + 1, size=n_runs)
        idx = np.unique(np.concatenate([np.arange(s, s + piece) for s in starts]))
        ranges = [(int(self.keys[s]), int(self.keys[s + piece - 1])) for s in starts]
        return np.sort(self.ids[idx]), ranges

    def within(self, ranges: list[tuple[int, int]], cap: int, rng: np.random.Generator) -> np.ndarray:
        """The spots whose keys fall in ``ranges`` (at most ``cap``, a random subset beyond)."""
        parts = [
            np.arange(np.searchsorted(self.keys, lo, "left"), np.searchsorted(self.keys, hi, "right"))
            for lo, hi in ranges
        ]
        idx = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        if len(idx) > cap:
            idx = rng.choice(idx, size=cap, replace=False)
        return np.sort(self.ids[idx])


def chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    """``order`` in consecutive pieces of ``size``."""
    return [order[a : a + size] for a in range(0, len(order), size)]


def tokens(net: Any, T: Any, p: Any, size: int) -> Any:
    """Every spot's tokens after the cross-attention (a per-spot step), computed ``size`` spots at a time."""
    import torch

    out = []
    for idx in chunks(np.arange(len(p)), size):
        i = torch.as_tensor(idx, device=T.dev)
        out.append(net.tokens([f[i] for f in T.feats], T.has[i], p[i]))
    return torch.cat(out, 0)


def predict(net: Any, T: Any, p: Any, size: int, targets: np.ndarray, key: np.ndarray | None = None) -> Any:
    """The mixed prediction at ``targets`` (other rows 0), ``size`` nearby targets at a time (eval, no gradients)."""
    import torch

    lv = tokens(net, T, p, size)
    out = torch.zeros_like(p)
    order = targets if key is None else targets[np.argsort(key[targets], kind="stable")]
    for idx in chunks(order, size):
        idx = np.sort(idx)
        out[torch.as_tensor(idx, device=T.dev)] = forward(net, T, p, batch(T.graphs, idx, T.dev), lv, mix=True)[0]
    return out
