"""Label propagation of the measured expression over the 3D spot graph."""

from __future__ import annotations

from typing import Any

import numpy as np


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


def propagate_unknown(adj: Any, labels: np.ndarray, known: np.ndarray, *, iterations: int = 20) -> np.ndarray:
    """:func:`propagate_labels` in float32, computing only the rows that change (for large graphs).

    With ``P = D^-1 A`` split into unknown (``U``) and known (``K``) rows and columns, each step is
    ``z_U <- P_UU z_U + P_UK y_K`` (the known rows stay clamped): the same iteration, without the rows it resets.
    """
    from scipy import sparse

    deg = np.asarray(adj.sum(1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.maximum(deg, 1e-12), 0.0).astype(np.float32)
    unk = np.flatnonzero(~known)
    P = (sparse.diags(inv[unk]) @ adj[unk]).astype(np.float32).tocsc()  # rows U, every column
    P_uk = P @ sparse.diags(known.astype(np.float32))  # the known columns only
    P_uu = P[:, unk].tocsr()
    out = np.zeros(labels.shape, dtype=np.float32)
    out[known] = labels[known]
    b = np.asarray(P_uk.tocsr() @ out, dtype=np.float32)
    z = np.zeros((len(unk), labels.shape[1]), dtype=np.float32)
    for _ in range(int(iterations)):
        z = P_uu @ z
        z += b
    out[unk] = z
    return out
