"""Read the stacked table: sections, measured spots, counts -> target on the chosen genes, features, positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core._constants import Key
from stmap._core._errors import StmapInputError, unknown_key

from ._arrays import Problem, problem
from ._config import BATCH_MAX_OVERLAPS, FULL_GRAPH_MAX_EDGES, GraphParams, resolve_batch_size
from ._features import Computed, read_features, split_levels

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from stmap._core import TableContext

    from ._model import Impute3DModel


def asign_target(counts: Any) -> np.ndarray:
    """ASIGN's target, the scale :func:`stmap.tl.impute_3d` predicts on: ``ln((c + 1) / sum_genes(c + 1))``.

    As in ASIGN :cite:p:`zhu2024asign`.

    Parameters
    ----------
    counts
        ``(spots, genes)`` raw counts (dense or sparse) of the genes the target is taken over.

    Returns
    -------
    ``(spots, genes)`` float64 array: log of each gene's share of the spot's pseudo-counted total.

    See Also
    --------
    :func:`stmap.tl.impute_3d`
        Predicts expression on this scale.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> st.tl.asign_target(np.array([[0, 1], [3, 3]])).round(4)  # ln(1/3), ln(2/3); ln(1/2) twice
    array([[-1.0986, -0.4055],
           [-0.6931, -0.6931]])
    """
    from scipy import sparse

    c = (counts.toarray() if sparse.issparse(counts) else np.asarray(counts)).astype(np.float64)
    c += 1.0
    c /= c.sum(1, keepdims=True)
    return np.log(c, out=c)


@dataclass
class Inputs:
    """What the imputation reads from the stacked table."""

    ctx: TableContext
    adata: AnnData
    names: list[str]  # sections, in stacking order
    codes: np.ndarray  # section of each spot
    measured: np.ndarray
    layer: str | None
    genes: list[str]
    gidx: np.ndarray  # columns of the genes in the table
    Y: np.ndarray  # target on the genes (rows of unmeasured spots are not read)
    xyz: np.ndarray
    radius: np.ndarray | float
    levels: list[np.ndarray] | None
    has: np.ndarray | None
    computed: Computed | None
    batched: bool = False  # ``batch_size=None`` on a graph too large for the whole graph at once

    def resolve_graph(self, gp: GraphParams, batch_size: int | None, *, training: bool) -> GraphParams:
        """The graph to build, and whether ``batch_size=None`` means batches (``self.batched``).

        In batches by default (the uncapped graph's estimated edges beyond ``FULL_GRAPH_MAX_EDGES``), a model being
        trained caps its overlaps at ``BATCH_MAX_OVERLAPS`` per spot and other section (unless ``gp`` sets its own
        cap); a trained model keeps the graph it was trained with.
        """
        from dataclasses import replace

        from ._memory import estimate_edges

        self.batched = False
        if batch_size is not None:
            return gp
        k = (gp.k_similar, gp.k_spatial)
        n_edges = estimate_edges(self.xyz, self.codes, self.radius, gp.graph, gp.disc_scale, k)
        self.batched = n_edges > FULL_GRAPH_MAX_EDGES
        if self.batched and training and gp.max_overlaps is None:
            return replace(gp, max_overlaps=BATCH_MAX_OVERLAPS)
        return gp

    def check_memory(self, gp: GraphParams, batch_size: int | None) -> None:
        """Refuse, naming the knob, when the run would not fit in the available memory (before building anything)."""
        from ._memory import check_memory

        k = (gp.k_similar, gp.k_spatial)
        g = gp.graph
        check_memory(
            self.xyz,
            self.codes,
            self.radius,
            len(self.genes),
            graph=g,
            disc_scale=gp.disc_scale,
            k=k,
            batch_size=batch_size,
            max_overlaps=gp.max_overlaps,
            batched=self.batched,
        )

    def problem(self, gp: GraphParams, batch_size: int | None = None) -> Problem:
        """The problem on arrays (standardised features, the graph) for the graph parameters ``gp``.

        Its ``batch_size`` is resolved on the built graph (:func:`resolve_batch_size`); in batches the target is kept
        in float32 (the largest array of a large stack).
        """
        pb = problem(self.Y, self.measured, self.xyz, self.codes, self.radius, self.levels, self.has, gp)
        pb.batch_size = resolve_batch_size(batch_size, pb.n_edges, len(pb.measured), batched=self.batched)
        if pb.batch_size is not None:
            self.Y = pb.Y = pb.Y.astype(np.float32)
        return pb


def _sections(adata: AnnData, section_key: str) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    sec = pd.Categorical(adata.obs[section_key])
    codes = np.asarray(sec.codes)
    if len(np.unique(codes)) < 2:
        raise StmapInputError(
            "impute_3d needs at least two sections (one measured, one to impute); the table has "
            f"{len(np.unique(codes))}. Stack several sections with `st.pp.stack_sections`."
        )
    return codes, list(sec.categories)


def _measured(adata: AnnData, measured: Any, section_key: str, names: list[str]) -> np.ndarray:
    """Which spots have measured expression: ``obs['measured']``, an obs column, or the named sections."""
    sec = adata.obs[section_key]
    if measured is None:
        if Key.obs.measured not in adata.obs:
            raise StmapInputError("No obs['measured'] column: pass `measured=` (an obs column or section names).")
        meas = adata.obs[Key.obs.measured].to_numpy(dtype=bool)
    elif isinstance(measured, str):
        if measured in adata.obs:
            meas = adata.obs[measured].to_numpy(dtype=bool)
        elif measured in names:
            meas = np.asarray(sec == measured)
        else:
            raise unknown_key("Measured column or section", measured, [*adata.obs.columns, *names], "obs/sections")
    else:
        bad = [m for m in measured if m not in names]
        if bad:
            raise StmapInputError(f"Unknown sections in `measured`: {bad}; sections are {names}.")
        meas = np.isin(np.asarray(sec, dtype=object), list(measured))
    if not meas.any():
        raise StmapInputError("No measured spot: `measured` selects nothing; name at least one measured section.")
    if meas.all():
        raise StmapInputError("Every spot is measured: nothing to impute. Mark the sections to impute as unmeasured.")
    return meas


def _measured_mean(counts: Any, measured: np.ndarray) -> np.ndarray:
    """Mean count of every gene over the measured spots (sparse counts: no copy of the rows)."""
    from scipy import sparse

    if not sparse.issparse(counts):
        return np.asarray(counts[measured].mean(0)).ravel()
    w = measured.astype(counts.dtype if np.issubdtype(counts.dtype, np.floating) else np.float64)
    total = np.asarray(sparse.csr_matrix(counts).T @ w).ravel()
    return total / np.asarray(int(measured.sum()), dtype=total.dtype)


def _pick_genes(counts: Any, var_names: Any, measured: np.ndarray, genes: Any) -> np.ndarray:
    """Columns of the top-``genes`` genes by mean count over the measured spots, or of the named genes."""
    if isinstance(genes, (int, np.integer)):
        mean = _measured_mean(counts, measured)
        return np.sort(np.argsort(-mean, kind="stable")[: int(genes)])
    genes = list(genes)
    idx = var_names.get_indexer(genes)
    if (idx < 0).any() or not genes:
        missing = [g for g, i in zip(genes, idx) if i < 0][:5]
        raise StmapInputError(f"Genes not in the table: {missing}; pass names from `var_names` (or an int: top-n).")
    return idx


def _counts(ctx: TableContext, adata: AnnData, layer: str | None, meas: np.ndarray) -> tuple[Any, str | None]:
    """The count matrix (sparse as stored, else dense) and its layer; only the measured spots' counts are checked."""
    from scipy import sparse

    from stmap._core._validate import read_counts

    lay = layer if layer is not None else (Key.layers.counts if Key.layers.counts in adata.layers else None)
    if lay is not None and lay not in adata.layers:
        raise unknown_key("Layer", lay, adata.layers.keys(), "layers")
    where = f"the measured spots of {f'table {ctx.table_key!r}' if ctx.table_key else 'adata'}"
    counts, lay = read_counts(adata, lay, where, rows=meas)
    return (sparse.csr_matrix(counts) if sparse.issparse(counts) else np.asarray(counts)), lay


def _measured_target(counts: Any, gidx: np.ndarray, meas: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The target on the measured spots (chunk by chunk, no dense copy of every spot's counts); 0 on the others.

    Rows of unmeasured spots are never read (their counts may be anything): the same numbers as the whole table's
    target on the measured rows.
    """
    Y = np.zeros((len(meas), len(gidx)), dtype=np.float64)
    rows = np.flatnonzero(meas)
    for a in range(0, len(rows), chunk):
        r = rows[a : a + chunk]
        Y[r] = asign_target(counts[r][:, gidx])
    return Y


def _positions(adata: AnnData, spatial_key: str) -> tuple[np.ndarray, np.ndarray | float]:
    from stmap.pp._stack import stack_radius

    radius = stack_radius(adata, f"add obs[{Key.obs.spot_radius_um!r}] (micrometres)")
    xyz = np.asarray(adata.obsm[spatial_key], dtype=float)
    if not np.isfinite(xyz[:, :2]).all():
        raise StmapInputError(f"obsm[{spatial_key!r}] has NaN coordinates; drop those spots first.")
    return xyz, radius


def prepare(
    sdata: SpatialData | AnnData,
    *,
    table_key: str,
    measured: Any,
    genes: Any,
    features_key: str | None,
    n_scales: int | None,
    compute: dict[str, Any],
    layer: str | None,
    section_key: str,
    spatial_key: str,
    model: Impute3DModel | None = None,
) -> Inputs:
    """Everything the imputation reads, checked (nothing is written); ``model``: its genes and feature layout."""
    from stmap.pp._stack import stack_context

    ctx, adata = stack_context(sdata, table_key, spatial_key, section_key)
    codes, names = _sections(adata, section_key)
    meas = _measured(adata, measured, section_key, names)
    counts, lay = _counts(ctx, adata, layer, meas)
    gidx = _pick_genes(counts, adata.var_names, meas, genes)
    if model is not None and list(adata.var_names[gidx]) != list(model.genes):
        gidx = _pick_genes(counts, adata.var_names, meas, model.genes)
    f, meta, computed = read_features(ctx.sdata, adata, table_key, features_key, compute)
    levels, has = (None, None) if f is None else split_levels(f, meta, n_scales, str(features_key), adata.n_obs)
    dims = [int(x.shape[1]) for x in (levels or [])]
    if model is not None and dims != list(model.config["level_dims"]):
        raise StmapInputError(
            f"The model was trained on feature blocks {model.config['level_dims']}, the table gives {dims}; use the "
            "same features_key layout."
        )
    xyz, radius = _positions(adata, spatial_key)
    Y = _measured_target(counts, gidx, meas)
    gene_names = list(adata.var_names[gidx])
    return Inputs(ctx, adata, names, codes, meas, lay, gene_names, gidx, Y, xyz, radius, levels, has, computed)
