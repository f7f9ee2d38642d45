"""``simulate_tissue``: reference cells -> lattice positions -> domains -> cell types and counts -> table."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from stmap._core._constants import Key
from stmap._core._device import rng as _rng
from stmap._core._docs import inject_docs
from stmap._core._params import Instance, Interval, Options, validate_params
from stmap._core._validate import check_counts

from ._inputs import check_nonempty, get_counts, get_labels
from ._names import KEY, POSITIVE, SEED, UNS_TISSUE, seed_record
from ._states import STATES, pick_states, state_order


@functools.lru_cache(maxsize=1)
def pbmc_counts() -> AnnData:
    """Raw UMI counts of scanpy's bundled ``pbmc68k_reduced``: a small single-cell reference with cell types.

    scanpy stores ``log1p(normalize_total(counts, target_sum=1e4))`` in ``.raw`` and the totals in
    ``obs['n_counts']``; undoing both steps gives values within 0.08 of integers (median 5e-4), so rounding recovers
    the UMI counts. No download: the data ship with scanpy.

    Returns
    -------
    AnnData (700 cells x 765 genes) with sparse float32 counts in ``X`` and ``obs['cell_type']`` (scanpy's
    ``bulk_labels``).

    See Also
    --------
    :func:`stmap.datasets.simulate_tissue`
        Places these cells into a tissue.

    Examples
    --------
    >>> import stmap as st
    >>> adata = st.datasets.pbmc_counts()
    >>> adata.shape, adata.obs["cell_type"].nunique()
    ((700, 765), 10)
    """
    import scanpy as sc

    pb = sc.datasets.pbmc68k_reduced()
    logn = pb.raw.X
    logn = logn.toarray() if sparse.issparse(logn) else np.asarray(logn)
    # .raw holds log1p(normalize_total(counts, target_sum=1e4)) over all genes, with totals in obs['n_counts'];
    # undo both steps. The result is integer to within 0.08 (median 5e-4), so rounding recovers the UMI counts.
    counts = np.round(np.expm1(logn.astype(np.float64)) * (pb.obs["n_counts"].to_numpy()[:, None] / 1e4))
    return AnnData(
        X=sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame({"cell_type": pb.obs["bulk_labels"].astype("category")}, index=pb.obs_names.copy()),
        var=pd.DataFrame(index=pb.raw.var_names.copy()),
    )


@validate_params(
    reference=[Instance((AnnData,)), None],
    n_cells=Interval(int, 1, None),
    n_domains=Interval(int, 1, None),
    cell_type_key=[KEY, None],
    counts_layer=[KEY, None],
    domain_smoothness=[POSITIVE, None],
    cell_spacing=POSITIVE,
    concentration=POSITIVE,
    cell_states=Options(set(STATES)),
    state_noise=Interval(float, 0, None),
    seed=SEED,
)
@inject_docs()
def simulate_tissue(
    reference: AnnData | None = None,
    *,
    n_cells: int = 5000,
    n_domains: int = 5,
    cell_type_key: str | None = None,
    counts_layer: str | None = None,
    domain_smoothness: float | None = None,
    cell_spacing: float = 12.0,
    concentration: float = 0.5,
    cell_states: str = "random",
    state_noise: float = 0.1,
    seed: int | np.random.Generator | None = 0,
) -> AnnData:
    """Place real reference cells into a 2D tissue with spatially coherent domains.

    Cells sit on a jittered square lattice (one cell per ``cell_spacing`` micrometres, so a realistic density).
    Domains are the arg-max of ``n_domains`` smoothed Gaussian random fields, so they form patches of about
    ``domain_smoothness`` micrometres. Each domain has its own cell-type mixture drawn from a Dirichlet
    distribution; a cell's type is drawn from its domain's mixture and its counts are those of a reference cell of
    that type drawn at random (with replacement). Everything is vectorised: 100k cells take about a second and no
    ``n x n`` array is made.

    Parameters
    ----------
    reference
        :class:`anndata.AnnData` of raw counts with cell types, e.g. a spacexr reference. ``None`` uses scanpy's
        bundled ``pbmc68k_reduced`` (700 PBMCs, 765 genes, 10 types in ``bulk_labels``): it ships only
        log-normalised values, ``.raw`` being ``log1p`` of counts scaled to 10,000 per cell with the totals in
        ``obs['n_counts']``, so the counts are recovered as ``round(expm1(raw.X) * n_counts / 1e4)`` (exact to
        within 0.08 before rounding).
    n_cells
        Number of cells.
    n_domains
        Number of domains.
    cell_type_key
        Column of ``reference.obs`` with cell types; default ``'cell_type'`` (``'bulk_labels'`` for the default
        reference).
    counts_layer
        Layer of ``reference`` with raw counts; ``None`` uses ``X``.
    domain_smoothness
        Correlation length of the domain fields in micrometres; default ``side / (2 sqrt(n_domains))`` clipped to
        ``[50, 200]``, where ``side = sqrt(n_cells) * cell_spacing``.
    cell_spacing
        Mean distance between neighbouring cells in micrometres.
    concentration
        Dirichlet concentration of the domain mixtures: small values give domains dominated by few types.
    cell_states
        Which reference cell of its type a tissue cell copies. ``'random'`` (default): any, so only the types vary in
        space. ``'gradient'`` and ``'regions'``: cells also vary *within* their type in space. Each type's reference
        cells are ordered along their first principal component (log-normalised expression; a real within-type
        programme), and a cell copies the cell whose rank matches a linear gradient across the tissue in a random
        direction per type (``'gradient'``), or a cell of the sub-state (a third of that order) its domain favours
        for the type (``'regions'``). The truth is in ``obs['state']`` (the copied cell's rank quantile).
    state_noise
        Noise of the within-type programme: the standard deviation (in rank quantiles) added to the gradient, or the
        probability of copying a cell of any sub-state in ``'regions'``.
    {seed}

    Returns
    -------
    :class:`anndata.AnnData` of cells: ``X`` raw counts (sparse, float32) and ``layers['counts']``;
    ``obs['cell_type']`` (categorical, the reference's types), ``obs['domain']`` (categorical ``domain_0``...),
    ``obs['reference_cell']`` (name of the copied reference cell); ``obsm['spatial']`` ``(x, y)`` in micrometres;
    ``uns['stmap_simulate_tissue']`` with the parameters and ``domain_composition`` (DataFrame, domains x types).
    It is a valid input of :func:`simulate_spots`.

    Raises
    ------
    StmapInputError
        If the reference lacks cell types or raw counts, or parameters are out of range.

    See Also
    --------
    :func:`stmap.datasets.simulate_spots`
        Aggregates the cells into spots.
    :func:`stmap.datasets.pbmc_counts`
        The default reference.

    Examples
    --------
    >>> import stmap as st
    >>> cells = st.datasets.simulate_tissue(n_cells=500, seed=0)
    >>> cells.shape, cells.obs["domain"].nunique()
    ((500, 765), 5)
    """
    n_cells, n_domains, cell_spacing = int(n_cells), int(n_domains), float(cell_spacing)
    reference, key, X = _reference(reference, cell_type_key, counts_layer)
    types = get_labels(reference, key, "reference")
    gen = _rng(seed)
    xy, side = _positions(gen, n_cells, cell_spacing)
    if domain_smoothness is None:
        smooth = float(np.clip(side / (2.0 * np.sqrt(n_domains)), 50.0, 200.0))
    else:
        smooth = float(domain_smoothness)
    domain = _domains(gen, xy, side, n_domains, smooth)
    mix = _mixtures(gen, types, n_domains, float(concentration))
    cell_type, pick = _draw_cells(gen, types, mix[domain])
    quantile = None
    if cell_states != "random":  # the same types as 'random' (same draws), other copies
        quantile = state_order(X, types)
        pick = pick_states(gen, cell_states, types, quantile, cell_type, xy, domain, n_domains, float(state_noise))
    params = {
        "n_cells": n_cells,
        "n_domains": n_domains,
        "cell_type_key": key if cell_type_key is None else cell_type_key,
        "domain_smoothness": smooth,
        "cell_spacing": cell_spacing,
        "concentration": float(concentration),
        "cell_states": cell_states,
        "state_noise": float(state_noise),
        "seed": seed_record(seed),
        "reference": "pbmc68k_reduced" if cell_type_key is None and key == "cell_type" else "user",
    }
    out = _cells_table(reference, X, types, xy, cell_type, domain, pick, n_domains)
    if quantile is not None:
        out.obs["state"] = quantile[pick]
    out.uns[UNS_TISSUE] = {
        "params": params,
        "domain_composition": pd.DataFrame(
            mix, index=list(out.obs["domain"].cat.categories), columns=list(types.categories)
        ),
        "units": "um",
    }
    return out


def _reference(
    reference: AnnData | None, cell_type_key: str | None, counts_layer: str | None
) -> tuple[AnnData, str, Any]:
    """The reference (scanpy's PBMCs by default), its cell-type column and its checked raw counts."""
    if reference is None:
        reference = pbmc_counts()
        return reference, "cell_type", reference.X
    check_nonempty(reference, "reference")
    key = Key.obs.cell_type if cell_type_key is None else cell_type_key
    X, where = get_counts(reference, counts_layer, "reference")
    check_counts(X, where)
    return reference, key, X


def _positions(gen: np.random.Generator, n_cells: int, cell_spacing: float) -> tuple[np.ndarray, float]:
    """``n_cells`` of the ``k * k`` sites of a jittered square lattice, and the lattice's side."""
    k = int(np.ceil(np.sqrt(n_cells)))
    sites = gen.choice(k * k, size=n_cells, replace=False)
    sites.sort()
    xy = np.column_stack([sites % k, sites // k]).astype(float) + 0.5
    xy += gen.uniform(-0.35, 0.35, size=xy.shape)
    xy *= cell_spacing
    return xy, k * cell_spacing


def _smooth_fields(gen: np.random.Generator, k: int, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """``k`` standardised Gaussian random fields (white noise smoothed by a Gaussian of ``sigma`` pixels)."""
    from scipy.ndimage import gaussian_filter

    noise = gen.standard_normal((k, *shape))
    f = np.stack([gaussian_filter(noise[i], sigma, mode="reflect") for i in range(k)])
    f -= f.mean(axis=(1, 2), keepdims=True)
    f /= f.std(axis=(1, 2), keepdims=True) + 1e-12
    return f


def _domains(gen: np.random.Generator, xy: np.ndarray, side: float, n_domains: int, smooth: float) -> np.ndarray:
    """Domain of each cell: the arg-max of smoothed random fields on a coarse grid."""
    px = smooth / 3.0  # field pixel size: the Gaussian spans 3 pixels per sigma
    g = int(np.ceil(side / px)) + 1
    dom_map = _smooth_fields(gen, n_domains, (g, g), 3.0).argmax(axis=0)
    ij = np.minimum((xy / px).astype(np.int64), g - 1)
    return dom_map[ij[:, 1], ij[:, 0]]


def _mixtures(gen: np.random.Generator, types: pd.Categorical, n_domains: int, concentration: float) -> np.ndarray:
    """Each domain's cell-type mixture (Dirichlet), over the types the reference has."""
    n_types = len(types.categories)
    mix = gen.dirichlet(np.full(n_types, concentration), size=n_domains)
    present = np.bincount(types.codes, minlength=n_types) > 0
    mix = mix * present
    mix /= mix.sum(axis=1, keepdims=True)
    return mix


def _draw_cells(gen: np.random.Generator, types: pd.Categorical, mix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A type for each cell from its domain's mixture (rows of ``mix``), then a random reference cell of that type."""
    n_cells, n_types = int(mix.shape[0]), int(mix.shape[1])
    u = gen.random(n_cells)
    cell_type = np.minimum((u[:, None] > np.cumsum(mix, axis=1)).sum(axis=1), n_types - 1)
    order = np.argsort(types.codes, kind="stable")
    starts = np.searchsorted(types.codes[order], np.arange(n_types))
    sizes = np.bincount(types.codes, minlength=n_types)
    pick = order[starts[cell_type] + (gen.random(n_cells) * sizes[cell_type]).astype(np.int64)]
    return cell_type, pick


def _cells_table(
    reference: AnnData,
    X: Any,
    types: pd.Categorical,
    xy: np.ndarray,
    cell_type: np.ndarray,
    domain: np.ndarray,
    pick: np.ndarray,
    n_domains: int,
) -> AnnData:
    """The cells: copied reference counts, type, domain and source cell, positions."""
    n_cells = xy.shape[0]
    Xc = sparse.csr_matrix(X)[pick] if sparse.issparse(X) else sparse.csr_matrix(np.asarray(X)[pick])
    Xc = Xc.astype(np.float32)
    width = len(str(n_cells - 1))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, categories=list(types.categories)),
            "domain": pd.Categorical.from_codes(domain, categories=[f"domain_{i}" for i in range(n_domains)]),
            "reference_cell": np.asarray(reference.obs_names)[pick].astype(str),
        },
        index=pd.Index([f"cell_{i:0{width}d}" for i in range(n_cells)]),
    )
    out = AnnData(X=Xc, obs=obs, var=pd.DataFrame(index=reference.var_names.astype(str)))
    out.layers[Key.layers.counts] = Xc.copy()
    out.obsm[Key.obsm.spatial] = xy
    return out


_pbmc_counts = pbmc_counts  # the earlier private name
