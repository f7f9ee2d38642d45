"""Single-cell targets (Xenium, CosMx, MERSCOPE, Visium HD cell segmentation): one cell per row, one label each."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stmap._core import TableContext

__all__ = ["single_cell_layout", "singlet_labels"]


def single_cell_layout(ctx: TableContext) -> bool:
    """Whether the table annotates segmented cells (a labels element, or shapes of varying size) rather than spots.

    Spot and bin arrays (Visium, Slide-seq, Visium HD bins) have one size for all their circles or squares; the
    outlines of segmented cells (Xenium, CosMx, MERSCOPE, Visium HD cell segmentation) vary in size.
    """
    if ctx.sdata is None or ctx.element_type == "points":
        return False
    if ctx.element_type == "labels":
        return True
    d = ctx.diameters
    if d is None or d.size < 2:
        return False
    d = d[np.isfinite(d)]
    return bool(d.size > 1 and np.ptp(d) > 1e-3 * max(float(np.median(d)), 1e-12))


def singlet_labels(Y: np.ndarray, prof: np.ndarray, gene_scale: np.ndarray) -> np.ndarray:
    """Most likely single type of each target: multinomial log-likelihood of its counts under each type's profile.

    RCTD's singlet call: the target's counts ``y`` scored as ``sum_g y_g log p_tg`` with ``p_t`` the type's mean
    profile times the platform scaling (renormalised, floored at 1e-6 of its mean so an unseen gene is not fatal).
    """
    P = prof.astype(np.float64) * gene_scale[None, :].astype(np.float64)
    P = P / P.sum(axis=1, keepdims=True)
    P = P + 1e-6 / P.shape[1]
    P = P / P.sum(axis=1, keepdims=True)
    ll = Y.astype(np.float64) @ np.log(P).T
    return np.argmax(ll, axis=1)
