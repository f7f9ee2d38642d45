"""Cell states within a type for :func:`simulate_tissue`: which reference cell of its type each tissue cell copies.

``'random'`` copies any cell of the type (the types differ in space, the cells of one type do not). The other modes
order each type's reference cells along their own main axis of variation (the first principal component of their
log-normalised expression, so real within-type programmes) and copy, at each position, a cell whose rank matches a
spatial programme:

* ``'gradient'``: a linear gradient across the tissue, in its own random direction for each type, plus Gaussian
  noise of ``state_noise`` (in rank quantiles);
* ``'regions'``: each domain favours one of three sub-states (thirds of the axis) of every type, drawn at random per
  domain and type; a cell copies a cell of its domain's sub-state (with probability ``state_noise`` any cell).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core import log_normalize

__all__ = ["STATES", "state_order", "pick_states"]

STATES = ("random", "gradient", "regions")
_N_SUBSTATES = 3


def state_order(X: Any, types: pd.Categorical) -> np.ndarray:
    """Rank quantile in ``[0, 1]`` of every reference cell along its type's first principal component."""
    Xc = sparse.csr_matrix(X, dtype=np.float64)
    Z = log_normalize(Xc, totals=np.asarray(Xc.sum(axis=1)).ravel())
    Z = Z.toarray() if sparse.issparse(Z) else np.asarray(Z)
    q = np.zeros(Xc.shape[0])
    for t in range(len(types.categories)):
        rows = np.flatnonzero(types.codes == t)
        if rows.size < 2:
            continue
        Zt = Z[rows] - Z[rows].mean(axis=0)
        u = np.linalg.svd(Zt, full_matrices=False)[0][:, 0]
        u = u if u.sum() >= 0 or np.allclose(u.sum(), 0) else -u  # sign fixed by the data, not by LAPACK
        q[rows] = np.argsort(np.argsort(u, kind="stable"), kind="stable") / (rows.size - 1)
    return q


def pick_states(
    gen: np.random.Generator,
    mode: str,
    types: pd.Categorical,
    quantile: np.ndarray,
    cell_type: np.ndarray,
    xy: np.ndarray,
    domain: np.ndarray,
    n_domains: int,
    noise: float,
) -> np.ndarray:
    """Reference cell copied by each tissue cell (of type ``cell_type``), following the spatial programme ``mode``."""
    n_types = len(types.categories)
    if mode == "gradient":
        ang = gen.uniform(0, 2 * np.pi, size=n_types)
        d = np.column_stack([np.cos(ang), np.sin(ang)])[cell_type]
        proj = (xy * d).sum(axis=1)
        lo = np.array([(xy @ dt).min() for dt in np.column_stack([np.cos(ang), np.sin(ang)])])[cell_type]
        hi = np.array([(xy @ dt).max() for dt in np.column_stack([np.cos(ang), np.sin(ang)])])[cell_type]
        target = (proj - lo) / np.maximum(hi - lo, 1e-12) + noise * gen.standard_normal(xy.shape[0])
    else:  # regions: each (domain, type) favours one sub-state
        band = gen.integers(0, _N_SUBSTATES, size=(n_domains, n_types))[domain, cell_type]
        target = (band + gen.random(xy.shape[0])) / _N_SUBSTATES
        other = np.asarray(gen.random(xy.shape[0]) < noise)
        target[other] = gen.random(int(other.sum()))
    target = np.clip(target, 0.0, 1.0)
    pick = np.empty(xy.shape[0], dtype=np.int64)
    for t in range(n_types):
        here = np.flatnonzero(cell_type == t)
        rows = np.flatnonzero(types.codes == t)
        if here.size == 0:
            continue
        order = rows[np.argsort(quantile[rows], kind="stable")]
        k = np.rint(target[here] * (order.size - 1)).astype(np.int64)
        pick[here] = order[k]
    return pick
