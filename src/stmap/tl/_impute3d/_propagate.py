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
