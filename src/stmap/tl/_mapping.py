"""Cell-to-spot mapping (Celloc task): composition, cells per spot, and a capacity-respecting placement of cells.

Pipeline (validate -> prepare -> compute -> write):

1. **Composition.** Each spot's counts are fitted as a non-negative mixture of the reference's mean type profiles
   under a Poisson likelihood with a per-gene platform scaling (:mod:`stmap.models._mapping`), vectorised over all
   spots. The counts attributed to a type divided by that type's mean library size give cell-number fractions.
2. **Cells per spot** ``n_j``: given (segmentation), or estimated CytoSPACE-style as proportional to the spot's
   fitted cell equivalents (counts of each type over its reference library size), scaled to a mean-cells-per-spot
   prior.
3. **Slots.** Regular mode: per spot, ``n_j`` slots split over types by largest-remainder rounding (exactly ``n_j``).
   Greedy mode: capacities ``n_j`` scaled to the number of reference cells, split over types by iterative
   proportional fitting so every cell has exactly one slot of its type.
4. **Placement.** Within each type, cells go to slots by a linearised Poisson likelihood gain: the cell's
   departure from its type's mean, ``(x_i - L_i p_t) / sqrt(L_i)``, against the spot's relative residual
   ``y_j / mu_j - 1`` (a matrix product, computed for one block of cells at a time), under capacities
   (:mod:`stmap.kernels._assign`): exact assignment for small problems, greedy on top-k candidates otherwise.
   ``mu_j`` first comes from the composition fit; refinement rounds replace the other types' share by the cells
   actually placed there (Gauss-Seidel over types). Regular mode lets a cell fill at most
   ``ceil(slots_t / cells_t)`` slots (its fair share).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from stmap._core import (
    Key,
    Results,
    StmapInputError,
    inject_docs,
    make_points,
    resolve,
    seed_everything,
    shared_genes,
    unknown_key,
)
from stmap._core import _logging as logg
from stmap._core._names import safe_key
from stmap._core._validate import read_counts

__all__ = ["map_cells", "project_genes"]

#: Cells per square micrometre assumed when estimating cells per spot without a prior (one cell per 150 um^2,
#: i.e. about 12 um between cell centres).
_CELL_AREA_UM2 = 150.0
#: Mean cells per spot when neither a prior nor the spot size in micrometres is known (CytoSPACE's Visium default).
_DEFAULT_MEAN_CELLS = 5.0
_MIN_GENES_WARN = 20


def _keys(key_added: str) -> dict[str, str]:
    prefix = "stmap" if key_added == Key.obsm.mapping else key_added
    return {
        "fractions": f"{prefix}_cell_type_fractions",
        "counts": f"{prefix}_cell_type_counts",
        "n_cells": f"{prefix}_n_cells",
        "spot": f"{prefix}_spot",
        "mapping": key_added,
        "assignment": f"{key_added}_assignment",
        "label": f"{prefix}_cell_type",
        "confidence": f"{prefix}_cell_type_confidence",
    }


def _cells_table_name(table_key: str, key_added: str) -> str:
    return Key.cells_table(table_key) if key_added == Key.obsm.mapping else f"{table_key}_{key_added}_cells"


# --------------------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------------------
def _check_unique(index: pd.Index, what: str, fix: str) -> None:
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5]
        raise StmapInputError(f"{what} has duplicated names (e.g. {', '.join(map(repr, dup))}); {fix}.")


def _cell_types(sc: AnnData, key: str) -> pd.Categorical:
    if key not in sc.obs:
        raise unknown_key("Cell-type column", key, sc.obs.columns, "sc_adata.obs", hint="Pass `cell_type_key=`.")
    s = sc.obs[key]
    if s.isna().any():
        raise StmapInputError(
            f"sc_adata.obs[{key!r}] has {int(s.isna().sum())} missing cell types; drop or label those cells first."
        )
    cat = pd.Categorical(s.astype(str))
    return pd.Categorical(cat, categories=[c for c in cat.categories if (cat == c).any()])


def _to_csr(X: Any) -> sparse.csr_matrix:
    if sparse.issparse(X):
        return sparse.csr_matrix(X, dtype=np.float32)
    if hasattr(X, "compute"):
        X = X.compute()
    return sparse.csr_matrix(np.asarray(X, dtype=np.float32))


def _cells_per_spot(value: Any, spots: AnnData) -> np.ndarray | None:
    """``None`` when it should be estimated; else validated ``(n_spots,)`` non-negative integers."""
    if value is None or (isinstance(value, str) and value == "estimate"):
        return None
    if isinstance(value, str):
        if value not in spots.obs:
            raise unknown_key(
                "cells_per_spot column", value, spots.obs.columns, "the spot table's obs",
                hint="Pass an obs column, an array, a number, or 'estimate'.",
            )  # fmt: skip
        arr = pd.to_numeric(spots.obs[value], errors="coerce").to_numpy(dtype=float)
    else:
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 0:
            arr = np.full(spots.n_obs, float(arr))
    if arr.ndim != 1 or arr.size != spots.n_obs:
        raise StmapInputError(
            f"cells_per_spot has {arr.size} values but the spot table has {spots.n_obs} spots; give one per spot "
            "(in the order of the table's rows)."
        )
    if not np.all(np.isfinite(arr)):
        raise StmapInputError(f"cells_per_spot has {int((~np.isfinite(arr)).sum())} NaN or infinite values.")
    if (arr < 0).any():
        raise StmapInputError(f"cells_per_spot has {int((arr < 0).sum())} negative values; counts must be >= 0.")
    if arr.sum() == 0:
        raise StmapInputError("cells_per_spot is 0 for every spot: no cell could be placed.")
    return np.round(arr).astype(np.int64)


def _single_cell_layout(ctx) -> bool:
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


def _singlet_labels(Y: np.ndarray, prof: np.ndarray, gene_scale: np.ndarray) -> np.ndarray:
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


def _markers(X: sparse.csr_matrix, codes: np.ndarray, n_types: int, candidates: np.ndarray, n: int) -> np.ndarray:
    """Indices (into ``candidates``) of the top ``n`` markers per type (mean log expression above the best other)."""
    L = np.asarray(X.sum(axis=1)).ravel()
    Z = sparse.diags(1e4 / np.maximum(L, 1e-12)) @ X[:, candidates]
    Z = Z.log1p() if sparse.issparse(Z) else np.log1p(Z)
    onehot = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_types, codes.size))
    means = np.asarray((onehot @ Z).todense()) / np.asarray(onehot.sum(axis=1))
    keep: set[int] = set()
    for t in range(n_types):
        other = np.delete(means, t, axis=0).max(axis=0) if n_types > 1 else 0.0
        lfc = means[t] - other
        order = np.argsort(-lfc, kind="stable")[:n]
        keep.update(order[lfc[order] > 0].tolist() or order[:1].tolist())
    return np.array(sorted(keep), dtype=np.int64)


# --------------------------------------------------------------------------------------------------------------------
# map_cells
# --------------------------------------------------------------------------------------------------------------------
@inject_docs()
def map_cells(
    sdata: Any,
    sc_adata: AnnData,
    *,
    mode: Literal["regular", "greedy"] = "regular",
    table_key: str | None = None,
    coordinate_system: str | None = None,
    cell_type_key: str = Key.obs.cell_type,
    cells_per_spot: None | str | Sequence[float] | np.ndarray | float = None,
    mean_cells_per_spot: float | None = None,
    genes: None | Sequence[str] | Literal["markers"] = None,
    n_markers: int = 100,
    layer: str | None = None,
    sc_layer: str | None = None,
    platform_effect: bool = False,
    n_candidates: int = 20,
    n_refine: int = 2,
    max_iter: int = 500,
    seed: int = 0,
    device: str = "cpu",
    key_added: str = Key.obsm.mapping,
    copy: bool = False,
    verbose: bool = False,
):
    """Map single cells onto spots: cell-type composition, cells per spot and the placement of every cell.

    Composition comes from a Poisson fit of each spot on the reference's mean cell-type profiles (with a per-gene
    platform scaling); cells then fill per-spot, per-type slots by expression similarity under capacity
    constraints. No dense ``cells x cells`` matrix is made, and ``cells x spots`` scores only for one block of cells
    of one type at a time.

    Parameters
    ----------
    {sdata}
    sc_adata
        Single-cell reference: raw counts in ``X`` (or ``layers[sc_layer]``), cell types in ``obs[cell_type_key]``.
    mode
        ``'regular'``: each spot receives exactly ``n_j`` cells, a cell filling at most its fair share
        ``ceil(slots_t / cells_t)`` of its type's slots (cells may be reused when the reference has fewer cells than
        slots). ``'greedy'``: every reference cell gets exactly one spot; spot capacities are ``n_j`` scaled to the
        number of cells.
    {table_key}
    {coordinate_system}
    cell_type_key
        Column of ``sc_adata.obs`` with cell types.
    cells_per_spot
        Cells in each spot ``n_j``: ``'estimate'`` (proportional to the spot's fitted cell equivalents, i.e. its
        counts of each type over that type's mean reference library size, scaled to ``mean_cells_per_spot``), an
        ``obs`` column of the spot table, an array (one per spot, table order) or one number for all spots, e.g.
        nuclei counts from segmentation. ``None`` (default): ``1`` when the table annotates segmented cells (a
        labels element, or shapes of varying size: the cell tables of Xenium, CosMx, MERSCOPE and Visium HD cell
        segmentation as spatialdata-io reads them), else ``'estimate'``. For single cells in a plain AnnData, or
        drawn as equal circles, pass ``cells_per_spot=1``.
    mean_cells_per_spot
        Prior mean of ``n_j`` when estimating. Default: spot area / 150 um^2 when the spot diameter and unit are
        known, else 5 (CytoSPACE's Visium default).
    genes
        Genes used for mapping: ``None`` (all genes shared by both tables), a list, or ``'markers'`` (the top
        ``n_markers`` genes per type by mean log expression above the best other type, among shared genes).
    n_markers
        Markers per type for ``genes='markers'``.
    layer, sc_layer
        Layers with raw counts in the spot table and in ``sc_adata``, used as given (non-integer "counts" of some
        platforms are fine here). ``None`` uses ``X`` when it holds whole numbers (float rounding within 1e-6 is
        fine); an ``X`` with other non-integers is normalised (``sc.pp.normalize_total``, ``sc.pp.log1p``), and then
        ``layers['counts']`` is used instead (logged; recorded in ``uns[key_added]['params']``), or, without it, an
        error names the fix.
    platform_effect
        Also fit a per-gene scaling between reference and spots (RCTD's platform effect). Use it for references
        from another technology (e.g. Drop-seq vs Visium); on same-platform data it can absorb real differences in
        composition (benchmarks/mapping.py: synthetic JSD 0.014 without, 0.028 with).
    n_candidates
        Candidate spots kept per cell (the sparse score matrix; the greedy assignment's search space).
    n_refine
        Refinement rounds of the placement: each round re-scores a type's cells against what the cells placed
        in the other types leave unexplained in each spot.
    max_iter
        Most iterations of the composition fit (it stops earlier when converged).
    {seed}
    {device}
    {key_added}
    {copy}
    {verbose}

    Returns
    -------
    ``None`` with ``copy=False``; with ``copy=True`` a tuple ``(sdata_copy, sc_adata_copy)``. Written (default
    ``key_added``; another ``key_added`` replaces the ``stmap`` prefix):

    - spot table ``.obsm['stmap_cell_type_fractions']`` (DataFrame, columns = cell types, rows sum to 1),
      ``.obsm['stmap_cell_type_counts']`` (integer DataFrame of placed cells), ``.obs['stmap_n_cells']``;
    - single-cell targets (every target holds one cell): ``.obs['stmap_cell_type']`` (categorical, the transferred
      label: the type whose profile gives the target's counts the highest multinomial likelihood, RCTD's singlet
      call; in regular mode the placed cell has this type) and ``.obs['stmap_cell_type_confidence']`` (float in
      ``[0, 1]``: that type's fraction in the mixture fit of the target, ``stmap_cell_type_fractions``);
    - spot table ``.uns['stmap_mapping']``: ``params``, ``genes`` (used), ``loss`` (composition fit history),
      ``cell_types``, ``gene_scale`` (platform scaling per gene), ``n_iter``, ``cells_table``, ``single_cell``
      (whether every target holds one cell);
    - ``sc_adata.obsm['stmap_mapping']``: sparse cells x spots similarity scores (top ``n_candidates`` per cell,
      among spots that need the cell's type), ``sc_adata.obsm['stmap_mapping_assignment']``: sparse cells x spots
      number of placements, ``sc_adata.uns['stmap_mapping']['spot_ids']`` (the columns), and in greedy mode
      ``sc_adata.obs['stmap_spot']`` (assigned spot id);
    - (SpatialData only) table ``'<table>_cells'``: one row per placed cell (``obs['cell_id']``, ``obs['spot_id']``,
      ``obs[cell_type_key]``, the reference counts in ``X``, ``obsm['spatial']``), annotating a new points element
      ``'<table>_cells_points'`` of the placed cells inside their spot's radius, in the spots' coordinate system.

    Raises
    ------
    StmapInputError
        No or too few shared genes, missing cell types, NaN/infinite/negative or non-numeric counts, normalised ``X``
        without ``layers['counts']``, reference cells (or every spot) without counts on the mapping genes, duplicated
        names, ``cells_per_spot`` of the wrong length or negative. Nothing is written. Spots without counts on the
        mapping genes (empty Visium HD bins, Xenium cells without panel counts) are not an error: they get no cells
        and NaN fractions, with a warning.
    """
    start = logg.info(f"mapping cells onto spots ({mode} mode)")
    # 1. resolve + validate -------------------------------------------------------------------------------------------
    if mode not in ("regular", "greedy"):
        raise StmapInputError(f"mode={mode!r} is not one of 'regular', 'greedy'.")
    if not isinstance(sc_adata, AnnData):
        raise StmapInputError(f"`sc_adata` must be an AnnData of single cells, got {type(sc_adata).__name__}.")
    if sc_adata.n_obs == 0 or sc_adata.n_vars == 0:
        raise StmapInputError(f"`sc_adata` is empty ({sc_adata.n_obs} x {sc_adata.n_vars}).")
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    spots = ctx.adata
    tname = ctx.table_key or "spots"
    _check_unique(spots.obs_names, "The spot table", "make them unique with `adata.obs_names_make_unique()`")
    _check_unique(spots.var_names, "The spot table's genes", "make them unique with `adata.var_names_make_unique()`")
    _check_unique(sc_adata.obs_names, "sc_adata", "make them unique with `sc_adata.obs_names_make_unique()`")
    _check_unique(sc_adata.var_names, "sc_adata's genes", "make them unique with `sc_adata.var_names_make_unique()`")
    types = _cell_types(sc_adata, cell_type_key)
    Xs_all, layer = read_counts(spots, layer, f"table {tname!r}", arg="layer")
    Xc_all, sc_layer = read_counts(sc_adata, sc_layer, "sc_adata", arg="sc_layer")
    if isinstance(genes, str) and genes != "markers":
        raise StmapInputError(f"genes={genes!r}: pass None, a list of genes, or 'markers'.")
    req = None if genes is None or isinstance(genes, str) else list(genes)
    gl = shared_genes(spots.var_names, sc_adata.var_names, req, a_name=f"table {tname!r}", b_name="sc_adata")
    n_given = _cells_per_spot(cells_per_spot, spots)
    if cells_per_spot is None and _single_cell_layout(ctx):
        logg.info(f"    table {tname!r} annotates segmented cells ({ctx.region!r}): one cell per target")
        n_given = np.ones(spots.n_obs, dtype=np.int64)
    if mean_cells_per_spot is not None and not (np.isfinite(mean_cells_per_spot) and mean_cells_per_spot > 0):
        raise StmapInputError(f"mean_cells_per_spot must be a positive number, got {mean_cells_per_spot!r}.")
    Xc = _to_csr(Xc_all)
    Xs = _to_csr(Xs_all)
    codes = types.codes.astype(np.int64)
    cats = [str(c) for c in types.categories]
    T = len(cats)
    gi_s = spots.var_names.get_indexer(gl)
    gi_c = sc_adata.var_names.get_indexer(gl)
    if isinstance(genes, str):  # markers
        sel = _markers(Xc, codes, T, gi_c, int(n_markers))
        gi_s, gi_c, gl = gi_s[sel], gi_c[sel], [gl[i] for i in sel]
    if len(gl) < _MIN_GENES_WARN:
        import warnings

        warnings.warn(
            f"Only {len(gl)} genes are used for mapping (fewer than {_MIN_GENES_WARN}); composition and placement "
            "may be unreliable. Use more shared genes (genes=None) if possible.",
            UserWarning,
            stacklevel=2,
        )
    Y = np.asarray(Xs[:, gi_s].todense(), dtype=np.float32)
    Xg = Xc[:, gi_c].tocsr()
    lib_c = np.asarray(Xg.sum(axis=1)).ravel()
    lib_s = Y.sum(axis=1)
    empty = lib_s <= 0  # e.g. Visium HD bins or Xenium cells without panel counts: nothing to deconvolve
    if empty.all():
        raise StmapInputError(
            f"No spot has counts on the {len(gl)} mapping genes; check that the spot table holds raw counts of the "
            "reference's genes (`layer=`)."
        )
    kidx = np.flatnonzero(~empty)  # the spots that are fitted and receive cells; the others get none
    if empty.any():
        bad = spots.obs_names[empty][:5]
        logg.warning(
            f"{int(empty.sum())} of {spots.n_obs} spots have no counts on the {len(gl)} mapping genes (e.g. "
            f"{', '.join(map(repr, bad))}): they get no cells and NaN fractions. Remove them first to silence this "
            "(e.g. `sc.pp.filter_cells(adata, min_counts=1)`)."
        )
        Y = Y[kidx]
        if n_given is not None:
            n_given = n_given[kidx]
    if (lib_c <= 0).any():
        bad = sc_adata.obs_names[lib_c <= 0][:5]
        raise StmapInputError(
            f"{int((lib_c <= 0).sum())} reference cells have no counts on the {len(gl)} mapping genes (e.g. "
            f"{', '.join(map(repr, bad))}); remove them first (e.g. `sc.pp.filter_cells(sc_adata, min_counts=1)`)."
        )
    from stmap._core import resolve_device

    dev = resolve_device(device)
    gen = seed_everything(seed)
    coords = ctx.coords
    radius = _spot_radius(ctx, coords)
    m_all = spots.n_obs

    # 2. composition --------------------------------------------------------------------------------------------------
    from stmap.models._mapping import fit_poisson_deconvolution

    onehot = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(T, codes.size))
    n_t = np.asarray(onehot.sum(axis=1)).ravel()
    prof = np.asarray((onehot @ (sparse.diags(1.0 / lib_c) @ Xg)).todense()) / n_t[:, None]
    prof = prof / prof.sum(axis=1, keepdims=True)
    lib_t = np.asarray(onehot @ lib_c).ravel() / n_t
    fit = fit_poisson_deconvolution(Y, prof, platform_effect=platform_effect, max_iter=max_iter, device=str(dev))
    W = fit.weights
    cells_eq = W / lib_t[None, :]
    F = cells_eq / np.maximum(cells_eq.sum(axis=1, keepdims=True), 1e-300)

    # 3. cells per spot and slots -------------------------------------------------------------------------------------
    from stmap.kernels._assign import capacity_assign, largest_remainder

    if n_given is None:
        prior = mean_cells_per_spot if mean_cells_per_spot is not None else _mean_cells_prior(ctx)
        eq = cells_eq.sum(axis=1)
        n_spot = np.maximum(np.round(prior * eq / eq.mean()), 1).astype(np.int64)
    else:
        n_spot = n_given
    single = bool((n_spot == 1).all())  # single-cell targets: one label per target
    label = _singlet_labels(Y, prof, fit.gene_scale) if single else None
    n_cells_total = sc_adata.n_obs
    if mode == "regular":
        slots = largest_remainder(F, n_spot) if label is None else np.eye(T, dtype=np.int64)[label]
        row_cap_t = [int(np.ceil(slots[:, t].sum() / n_t[t])) for t in range(T)]
    else:
        cap = largest_remainder(n_spot[None, :].astype(float), np.array([n_cells_total]))[0]
        slots = _greedy_quotas(F, cap, n_t.astype(np.int64))
        row_cap_t = [1] * T

    # 4. placement, per type ------------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    m = Y.shape[0]  # fitted spots (all but the empty ones)
    Ps = (prof * fit.gene_scale[None, :]).astype(np.float32)
    mu0 = np.maximum(W.astype(np.float32) @ Ps, 1e-12)
    Xgd = Xg.astype(np.float32)
    yhat = np.zeros((m, len(gl)), dtype=np.float32)  # reference counts of the cells placed so far, per spot
    placed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    cands: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    active = [t for t in range(T) if slots[:, t].sum() > 0]
    for rnd in tqdm(range(n_refine + 1), desc="placing cells", disable=not verbose):
        for t in active:
            demand = slots[:, t]
            cells_t = np.flatnonzero(codes == t)
            spots_t = np.flatnonzero(demand > 0)
            if t in placed:  # take this type's cells out of the running sum
                yhat -= _pseudobulk(Xgd, cells_t[placed[t][0]], placed[t][1], m)
            if rnd == 0:
                mu = mu0[spots_t]
            else:  # other types: the cells placed there; this type: its mean profile times its slots
                ref_mu = yhat[spots_t] + (demand[spots_t, None] * lib_t[t]) * prof[t][None, :].astype(np.float32)
                ref_mu *= fit.gene_scale[None, :].astype(np.float32)
                kappa = Y[spots_t].sum(axis=1) / np.maximum(ref_mu.sum(axis=1), 1e-12)
                mu = np.maximum(ref_mu * kappa[:, None], 1e-12)
            zc = _cell_features(Xg[cells_t], lib_c[cells_t])
            zs = np.zeros((m, zc.shape[1]), dtype=np.float32)
            zs[spots_t] = Y[spots_t] / mu - 1.0

            def score(r, c, zc=zc, zs=zs):
                return zc[r] @ zs[c].T

            row_cap = np.full(cells_t.size, row_cap_t[t], dtype=np.int64)
            r, c, cand = capacity_assign(score, row_cap, demand, k=n_candidates)
            placed[t] = (r, c)
            cands[t] = (cells_t[cand[0]], cand[1], cand[2])
            yhat += _pseudobulk(Xgd, cells_t[r], c, m)
    pc = np.concatenate([np.flatnonzero(codes == t)[placed[t][0]] for t in active]) if active else np.zeros(0, int)
    ps = np.concatenate([placed[t][1] for t in active]) if active else np.zeros(0, int)
    cand_rows = [cands[t][0] for t in active]
    cand_cols = [cands[t][1] for t in active]
    cand_vals = [cands[t][2] for t in active]
    ps = kidx[ps]  # back to rows of the spot table
    order = np.lexsort((pc, ps))
    pc, ps = pc[order], ps[order]

    # 5. collect results ----------------------------------------------------------------------------------------------
    keys = _keys(key_added)
    counts = np.zeros((m_all, T), dtype=np.int64)
    np.add.at(counts, (ps, codes[pc]), 1)
    F_all = np.full((m_all, T), np.nan)
    F_all[kidx] = F
    res = Results(
        ctx,
        key_added,
        params={
            "mode": mode,
            "table_key": ctx.table_key,
            "coordinate_system": ctx.coordinate_system,
            "cell_type_key": cell_type_key,
            "cells_per_spot": cells_per_spot if isinstance(cells_per_spot, str | None) else "given",
            "mean_cells_per_spot": mean_cells_per_spot,
            "genes": genes if isinstance(genes, str | None) else f"{len(gl)} given",
            "n_markers": n_markers,
            "layer": layer,
            "sc_layer": sc_layer,
            "platform_effect": platform_effect,
            "n_candidates": n_candidates,
            "n_refine": n_refine,
            "max_iter": max_iter,
            "seed": seed,
            "device": str(dev),
        },
    )
    sid = spots.obs_names
    res.obsm(keys["fractions"], pd.DataFrame(F_all, index=sid, columns=cats))
    res.obsm(keys["counts"], pd.DataFrame(counts, index=sid, columns=cats))
    res.obs(keys["n_cells"], counts.sum(axis=1))
    if label is not None:
        lab_all = np.full(m_all, -1, dtype=np.int64)
        lab_all[kidx] = label
        conf_all = np.full(m_all, np.nan)
        conf_all[kidx] = F[np.arange(m), label]
        res.obs(keys["label"], pd.Categorical.from_codes(lab_all, categories=cats))
        res.obs(keys["confidence"], conf_all)
    cells_name = _cells_table_name(tname, key_added)
    res.uns(
        key_added,
        {
            "genes": np.asarray(gl, dtype=str),
            "loss": np.asarray(fit.loss, dtype=float),
            "n_iter": int(fit.n_iter),
            "cell_types": np.asarray(cats, dtype=str),
            "gene_scale": fit.gene_scale.astype(float),
            "mode": mode,
            "cells_table": cells_name if ctx.sdata is not None else "None",
            "single_cell": single,
        },
    )
    cr_all = np.concatenate(cand_rows) if cand_rows else np.zeros(0, np.int64)
    cc_all = kidx[np.concatenate(cand_cols)] if cand_cols else np.zeros(0, np.int64)
    cv_all = np.concatenate(cand_vals) if cand_vals else np.zeros(0)
    ok = np.isfinite(cv_all)
    scores = sparse.csr_matrix(
        (cv_all[ok].astype(np.float32), (cr_all[ok], cc_all[ok])), shape=(sc_adata.n_obs, m_all), dtype=np.float32
    )
    assign = sparse.csr_matrix((np.ones(pc.size, np.float32), (pc, ps)), shape=(sc_adata.n_obs, m_all))
    res.obsm(keys["mapping"], scores, adata=sc_adata)
    res.obsm(keys["assignment"], assign, adata=sc_adata)
    res.uns(key_added, {"spot_ids": np.asarray(sid, dtype=str), "spot_table": tname, "mode": mode}, adata=sc_adata)
    if mode == "greedy":
        spot_of = np.full(sc_adata.n_obs, -1, dtype=np.int64)
        spot_of[pc] = ps
        res.obs(keys["spot"], pd.Categorical.from_codes(spot_of, categories=list(map(str, sid))), adata=sc_adata)
    if ctx.sdata is not None and pc.size:
        xy = _positions_in_spots(ps, coords, radius, gen)
        width = len(str(pc.size - 1))
        cell_names = sc_adata.obs_names.to_numpy()[pc].astype(str)
        obs = pd.DataFrame(
            {
                "cell_id": cell_names,
                "spot_id": pd.Categorical(sid.to_numpy()[ps].astype(str), categories=list(map(str, sid))),
                cell_type_key: pd.Categorical.from_codes(codes[pc], categories=cats),
            },
            index=[f"placed_{i:0{width}d}" for i in range(pc.size)],
        )
        tab = AnnData(X=Xc[pc], obs=obs, var=pd.DataFrame(index=sc_adata.var_names.astype(str)))
        tab.obsm[Key.obsm.spatial] = xy
        pts_name = f"{cells_name}_points"
        pts = make_points(
            xy,
            annotations=obs[["cell_id", "spot_id", cell_type_key]].reset_index(drop=True),
            coordinate_system=ctx.coordinate_system,
        )
        res.element(pts_name, pts)
        res.table(cells_name, tab, region=pts_name, instance_ids=np.arange(pc.size))
    out = res.commit(copy)
    logg.info(
        "    finished",
        time=start,
        deep=f"placed {pc.size} cells in {m} spots; added {res.written}",
    )
    return out


def _cell_features(Xt: sparse.csr_matrix, lib: np.ndarray) -> np.ndarray:
    """Cells' departure from their type's mean profile, ``(x_i - L_i p_t) / sqrt(L_i)`` (Pearson-like residuals)."""
    X = np.asarray(Xt.todense(), dtype=np.float32)
    pbar = (X / lib[:, None].astype(np.float32)).mean(axis=0)
    X -= lib[:, None].astype(np.float32) * pbar[None, :]
    X /= np.sqrt(lib[:, None]).astype(np.float32)
    return X


def _pseudobulk(X: sparse.csr_matrix, cells: np.ndarray, spots: np.ndarray, m: int) -> np.ndarray:
    """Dense ``(m, genes)`` sums of the rows ``cells`` of ``X`` into ``spots``."""
    A = sparse.csr_matrix((np.ones(cells.size, np.float32), (spots, cells)), shape=(m, X.shape[0]))
    return np.asarray((A @ X).todense(), dtype=np.float32)


def _mapped_composition(spots: AnnData, mapping_key: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Fractions and cell counts that :func:`~stmap.tl.map_cells` wrote (cell-type key in ``F.attrs``)."""
    keys = _keys(mapping_key)
    if keys["fractions"] not in spots.obsm or keys["n_cells"] not in spots.obs:
        raise StmapInputError(
            f"The spot table has no {keys['fractions']!r} / {keys['n_cells']!r}; run `st.tl.map_cells` with "
            f"key_added={mapping_key!r} on it first (or pass smooth=0)."
        )
    F = spots.obsm[keys["fractions"]].copy()
    params = spots.uns.get(mapping_key, {}).get("params", {})
    F.attrs["cell_type_key"] = params.get("cell_type_key", Key.obs.cell_type)
    return F, spots.obs[keys["n_cells"]].to_numpy(dtype=float)


def _greedy_quotas(F: np.ndarray, cap: np.ndarray, n_t: np.ndarray) -> np.ndarray:
    """Integer spot x type quotas with column sums ``n_t`` exactly and row sums close to ``cap`` (IPF + rounding)."""
    from stmap.kernels._assign import largest_remainder

    E = (F + 1e-6) * cap[:, None]
    E[cap == 0] = 0.0
    for _ in range(100):
        E *= (cap / np.maximum(E.sum(axis=1), 1e-300))[:, None]
        E *= (n_t / np.maximum(E.sum(axis=0), 1e-300))[None, :]
    return largest_remainder(E.T, n_t).T


def _mean_cells_prior(ctx) -> float:
    d = ctx.diameters
    um = ctx.um_per_unit
    if d is None or um is None:
        logg.info(f"    no spot size in micrometres: assuming {_DEFAULT_MEAN_CELLS:g} cells per spot on average")
        return _DEFAULT_MEAN_CELLS
    area = np.pi * (np.median(d) * um / 2.0) ** 2
    return max(1.0, float(area / _CELL_AREA_UM2))


def _spot_radius(ctx, coords: np.ndarray) -> np.ndarray:
    d = ctx.diameters
    if d is not None:
        return np.asarray(d, dtype=float) / 2.0
    if coords.shape[0] > 1:
        from scipy.spatial import cKDTree

        nn = cKDTree(coords).query(coords, k=2)[0][:, 1]
        return np.full(coords.shape[0], 0.25 * float(np.median(nn)))
    return np.ones(coords.shape[0])


def _positions_in_spots(ps: np.ndarray, coords: np.ndarray, radius: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Cells of each spot on a Vogel (sunflower) spiral inside 90% of its radius, randomly rotated per spot."""
    xy = np.empty((ps.size, 2), dtype=float)
    if ps.size == 0:
        return xy
    starts = np.r_[0, np.flatnonzero(np.diff(ps)) + 1]  # ps is sorted
    sizes = np.diff(np.r_[starts, ps.size])
    rot = gen.uniform(0, 2 * np.pi, size=coords.shape[0])
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for s0, k in zip(starts, sizes, strict=True):
        j = ps[s0]
        i = np.arange(k)
        r = 0.9 * radius[j] * np.sqrt((i + 0.5) / k)
        a = rot[j] + i * golden
        xy[s0 : s0 + k, 0] = coords[j, 0] + r * np.cos(a)
        xy[s0 : s0 + k, 1] = coords[j, 1] + r * np.sin(a)
    return xy


# --------------------------------------------------------------------------------------------------------------------
# project_genes
# --------------------------------------------------------------------------------------------------------------------
@inject_docs()
def project_genes(
    sdata: Any,
    sc_adata: AnnData,
    *,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    genes: Sequence[str] | None = None,
    mapping_key: str = Key.obsm.mapping,
    smooth: float | None = None,
    layer: str | None = None,
    sc_layer: str | None = None,
    key_added: str = "stmap_projected",
    copy: bool = False,
):
    """Expected expression of reference genes in every spot, from the cells :func:`~stmap.tl.map_cells` placed there.

    Two predictions are blended: the summed counts of the cells placed in the spot (keeps what is specific to the
    individual cells), and the spot's mapped composition times the reference's mean type profiles (no sampling
    noise of single cells). Each is rescaled so that, over the genes used for mapping, it has the spot's measured
    total. Genes the spots did not measure are imputed the same way.

    Parameters
    ----------
    {sdata}
    sc_adata
        The reference passed to :func:`~stmap.tl.map_cells` (it holds the placement in
        ``obsm[f'{{mapping_key}}_assignment']``).
    {table_key}
    {coordinate_system}
    genes
        Reference genes to project; default all.
    mapping_key
        ``key_added`` of the :func:`~stmap.tl.map_cells` run.
    smooth
        Weight of the composition x type-profile prediction, in ``[0, 1]``: ``0`` uses only the placed cells'
        own counts, ``1`` only the type profiles. Default (``None``): ``0.5`` for spots, the best compromise in
        ``benchmarks/mapping.py`` (sparse Drop-seq cells favour ``1``; references sharing the spots' cell states
        favour ``0``); ``1`` for single-cell targets (the mapping's ``uns[mapping_key]['single_cell']``), where one
        placed reference cell is a noisy stand-in for the target and the mixture of type profiles imputes
        unmeasured genes better (``benchmarks/single_cell_targets.py``).
    layer, sc_layer
        Count layers of the spot table and the reference, as in :func:`~stmap.tl.map_cells`: a named layer is used
        as given; ``None`` uses ``X`` when it holds whole numbers, else ``layers['counts']`` (or an error).
    {key_added}
    {copy}

    Returns
    -------
    ``None`` with ``copy=False``, else the updated copy. Written: with a SpatialData, table
    ``'<table>_projected'`` (for another ``key_added``: ``'<table>_<key_added>'``), spots x genes, annotating the
    same element as the spot table (``obsm['spatial']`` copied); with a plain AnnData, ``.obsm[key_added]``
    (DataFrame spots x genes). ``.uns[key_added]['params']`` on the spot table either way (with the layers read).

    Raises
    ------
    StmapInputError
        If :func:`~stmap.tl.map_cells` has not been run with ``mapping_key`` on these spots, genes are unknown, or the
        counts read are NaN/infinite, negative, non-numeric, or a normalised ``X`` without ``layers['counts']``.
        Nothing is written.
    """
    start = logg.info("projecting genes onto spots")
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    spots = ctx.adata
    akey = f"{mapping_key}_assignment"
    meta = sc_adata.uns.get(mapping_key) if isinstance(sc_adata, AnnData) else None
    if not isinstance(sc_adata, AnnData) or akey not in sc_adata.obsm or not isinstance(meta, dict):
        raise StmapInputError(
            f"sc_adata has no mapping {mapping_key!r} (obsm[{akey!r}]); run `st.tl.map_cells(sdata, sc_adata, "
            f"key_added={mapping_key!r})` first."
        )
    if "spot_ids" not in meta or list(map(str, meta["spot_ids"])) != list(map(str, spots.obs_names)):
        raise StmapInputError(
            f"The mapping {mapping_key!r} in sc_adata was made for other spots than table "
            f"{ctx.table_key or 'adata'!r}; re-run `st.tl.map_cells` on these spots."
        )
    if smooth is None:
        smooth = 1.0 if bool(spots.uns.get(mapping_key, {}).get("single_cell", False)) else 0.5
    if not (0.0 <= float(smooth) <= 1.0):
        raise StmapInputError(f"smooth={smooth!r} must be in [0, 1].")
    if genes is None:
        gl = list(map(str, sc_adata.var_names))
    else:
        gl = list(genes)
        miss = pd.Index(gl).difference(sc_adata.var_names)
        if len(miss):
            raise StmapInputError(f"{len(miss)} genes are not in sc_adata (e.g. {', '.join(map(repr, miss[:5]))}).")
    Xc_all, sc_layer = read_counts(sc_adata, sc_layer, "sc_adata", arg="sc_layer")
    Xs_all, layer = read_counts(spots, layer, f"table {ctx.table_key or 'spots'!r}", arg="layer")
    Xc, Xs = _to_csr(Xc_all), _to_csr(Xs_all)
    A = sparse.csr_matrix(sc_adata.obsm[akey])
    used = spots.uns.get(mapping_key, {}).get("genes")
    ref = [g for g in (list(map(str, used)) if used is not None else gl) if g in spots.var_names]
    ref = ref or [g for g in sc_adata.var_names if g in spots.var_names]
    gi = sc_adata.var_names.get_indexer(gl)
    gi_ref = sc_adata.var_names.get_indexer(ref)
    meas = np.asarray(Xs[:, spots.var_names.get_indexer(ref)].sum(axis=1)).ravel() if ref else None

    def scaled(pb: np.ndarray) -> np.ndarray:  # each spot rescaled to its measured total on the mapping genes
        if meas is None:
            return pb[:, gi]
        pred = pb[:, gi_ref].sum(axis=1)
        return pb[:, gi] * np.where(pred > 0, meas / np.maximum(pred, 1e-12), 0.0)[:, None]

    P = (1.0 - smooth) * scaled(np.asarray((A.T @ Xc).todense())) if smooth < 1 else 0.0
    if smooth > 0:
        F, n = _mapped_composition(spots, mapping_key)
        types = sc_adata.obs[F.attrs["cell_type_key"]].astype(str).map(safe_key)  # as stored ('/' -> '_')
        codes = pd.Categorical(types, categories=list(F.columns)).codes
        onehot = sparse.csr_matrix(
            (np.ones((codes >= 0).sum()), (codes[codes >= 0], np.flatnonzero(codes >= 0))),
            shape=(F.shape[1], sc_adata.n_obs),
        )
        means = np.asarray((onehot @ Xc).todense()) / np.maximum(np.asarray(onehot.sum(axis=1)), 1)
        P = P + smooth * scaled((F.to_numpy() * n[:, None]) @ means)
    P = sparse.csr_matrix(np.asarray(P, dtype=np.float32))
    params = {
        "mapping_key": mapping_key,
        "genes": "all" if genes is None else gl,
        "smooth": smooth,
        "layer": layer,
        "sc_layer": sc_layer,
    }
    res = Results(ctx, key_added, params=params)
    if ctx.sdata is None:
        res.obsm(key_added, pd.DataFrame(P.toarray(), index=spots.obs_names, columns=gl))
    else:
        name = f"{ctx.table_key}_projected" if key_added == "stmap_projected" else f"{ctx.table_key}_{key_added}"
        tab = AnnData(X=P, obs=pd.DataFrame(index=spots.obs_names.copy()), var=pd.DataFrame(index=pd.Index(gl)))
        tab.obsm[Key.obsm.spatial] = ctx.coords.copy()
        res.table(name, tab, region=ctx.region, instance_ids=spots.obs[ctx.instance_key].to_numpy())
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out
