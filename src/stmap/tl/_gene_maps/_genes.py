"""Gene choice (names, most variable, markers) and the spot targets (log-normalised expression) of gene maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core import StmapInputError, check_counts, get_counts, log_normalize
from stmap._core._genes import dispersion_genes

if TYPE_CHECKING:
    from anndata import AnnData


def _log_expression(counts: Any) -> Any:
    """``log1p`` counts per 10^4 of every gene (:func:`stmap._core.log_normalize`), sparse stays sparse."""
    return log_normalize(counts)


def _dense(X: Any) -> np.ndarray:
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)


def select_genes(adata: AnnData, genes: int | str | Sequence[str], groupby: str | None) -> list[str]:
    """Gene names, the ``genes`` most variable, or the top marker of each group of ``obs[groupby]``."""
    if isinstance(genes, str) and genes != "markers":
        genes = [genes]
    if isinstance(genes, str):  # "markers"
        if groupby is None or groupby not in adata.obs:
            have = [c for c in adata.obs.columns if isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
            raise StmapInputError(
                f"genes='markers' needs a clustering of the spots: pass groupby= with an obs column "
                f"(got {groupby!r}; categorical columns: {have})."
            )
        return _markers(adata, groupby)
    if isinstance(genes, int | np.integer):
        Y = _dense(_log_expression(get_counts(adata, None, "the spot table")))
        return [str(g) for g in adata.var_names[dispersion_genes(Y, int(genes))]]
    names = [str(g) for g in genes]
    if not names:
        raise StmapInputError("genes is empty: give gene names, a number of variable genes, or 'markers'.")
    missing = [g for g in names if g not in adata.var_names]
    if missing:
        raise StmapInputError(
            f"{len(missing)} of {len(names)} genes are not in the spot table (e.g. {missing[:5]}); "
            "check the names against table.var_names."
        )
    if len(set(names)) != len(names):
        raise StmapInputError("genes has duplicates; give each gene once.")
    return names


def _markers(adata: AnnData, groupby: str) -> list[str]:
    """The gene of largest mean log-expression difference (group vs rest) of each group, each gene once."""
    Y = _dense(_log_expression(get_counts(adata, None, "the spot table")))
    groups = pd.Categorical(adata.obs[groupby].astype(str))
    out: list[str] = []
    for g in groups.categories:
        m = np.asarray(groups == g)
        if m.all() or not m.any():
            continue
        diff = Y[m].mean(0) - Y[~m].mean(0)
        for i in np.argsort(-diff, kind="stable"):
            name = str(adata.var_names[i])
            if name not in out:
                out.append(name)
                break
    if not out:
        raise StmapInputError(f"obs[{groupby!r}] has a single group: no markers can be found; pass genes= instead.")
    return out


def targets(adata: AnnData, genes: list[str], *, layer: str | None, normalize: bool, what: str) -> np.ndarray:
    """Spot expression ``(n, G)`` float64 of ``genes`` (log-normalised unless ``normalize=False``), 0 if absent."""
    present = [g for g in genes if g in adata.var_names]
    counts = get_counts(adata, layer, what)
    check_counts(counts, what)
    if normalize:
        sub = _dense(_log_expression(counts)[:, adata.var_names.get_indexer(present)])
    else:
        Xs = adata[:, present].X if layer is None else adata[:, present].layers[layer]
        sub = _dense(Xs)
    Y = np.zeros((adata.n_obs, len(genes)), dtype=np.float64)
    Y[:, [genes.index(g) for g in present]] = sub
    return Y
