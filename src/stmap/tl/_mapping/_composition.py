"""Composition of each spot: a Poisson fit on the reference's mean type profiles (:mod:`stmap.models._mapping`).

The counts attributed to a type divided by that type's mean library size give cell equivalents; normalised per
spot they are the cell-number fractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from ._prepare import MappingInputs

__all__ = ["Composition", "fit_composition", "type_profiles"]


@dataclass
class Composition:
    """The reference's type profiles and the fitted composition of the fitted spots."""

    #: ``(n_types, n_genes)`` mean profile of each type (rows sum to 1).
    prof: np.ndarray
    #: ``(n_types,)`` mean library size of each type on the mapping genes.
    lib_t: np.ndarray
    #: ``(n_types,)`` reference cells of each type.
    n_t: np.ndarray
    #: ``(n_fitted, n_types)`` counts attributed to each type.
    weights: np.ndarray
    #: ``(n_genes,)`` platform scaling.
    gene_scale: np.ndarray
    #: Loss history and iterations of the fit.
    loss: list[float]
    n_iter: int
    #: ``(n_fitted, n_types)`` cell equivalents: counts of each type over its mean library size.
    cells_eq: np.ndarray
    #: ``(n_fitted, n_types)`` cell-number fractions (rows sum to 1).
    fractions: np.ndarray


def type_profiles(
    Xg: sparse.csr_matrix, lib_c: np.ndarray, codes: np.ndarray, n_types: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean normalised profile (rows sum to 1), mean library size and number of cells of each type."""
    onehot = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_types, codes.size))
    n_t = np.asarray(onehot.sum(axis=1)).ravel()
    prof = np.asarray((onehot @ (sparse.diags(1.0 / lib_c) @ Xg)).todense()) / n_t[:, None]
    prof = prof / prof.sum(axis=1, keepdims=True)
    lib_t = np.asarray(onehot @ lib_c).ravel() / n_t
    return prof, lib_t, n_t


def fit_composition(inp: MappingInputs, *, platform_effect: bool, max_iter: int, device: str) -> Composition:
    """Fit every fitted spot as a non-negative mixture of the type profiles (Poisson likelihood)."""
    from stmap.models._mapping import fit_poisson_deconvolution

    prof, lib_t, n_t = type_profiles(inp.Xg, inp.lib_c, inp.codes, inp.n_types)
    fit = fit_poisson_deconvolution(inp.Y, prof, platform_effect=platform_effect, max_iter=max_iter, device=device)
    cells_eq = fit.weights / lib_t[None, :]
    F = cells_eq / np.maximum(cells_eq.sum(axis=1, keepdims=True), 1e-300)
    return Composition(prof, lib_t, n_t, fit.weights, fit.gene_scale, fit.loss, fit.n_iter, cells_eq, F)
