"""Simulators with known ground truth.

* :func:`simulate_spots` aggregates single-cell-resolution data into Visium-like spots (the truth: which cell is in
  which spot, and each spot's cell-type composition).
* :func:`simulate_tissue` places real reference cells into a 2D tissue with spatially coherent domains.
* :func:`synthetic_tissue` builds a small, fully synthetic SpatialData (cells, spots, an H&E-like image with a
  tumour region) for the demo and for fast tests.

All coordinates are in micrometres in the ``'global'`` coordinate system.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._constants import Key
from stmap._core._device import rng as _rng
from stmap._core._docs import inject_docs
from stmap._core._elements import affine_matrix, make_circles, make_image, make_points, make_table, new_spatialdata
from stmap._core._errors import StmapInputError
from stmap._core._validate import check_counts

__all__ = ["simulate_spots", "simulate_tissue", "synthetic_tissue", "SPOTS", "CELLS", "SPOT_CIRCLES", "CELL_POINTS"]

#: Name of the spot table made by :func:`simulate_spots` / :func:`synthetic_tissue`.
SPOTS = "spots"
#: Name of the cell (truth) table.
CELLS = "cells"
#: Name of the circles (shapes) element annotated by the spot table.
SPOT_CIRCLES = "spot_circles"
#: Name of the points element annotated by the cell table.
CELL_POINTS = "cell_points"
#: Name of the H&E image element of :func:`synthetic_tissue`.
HE = "he"
#: Name of the region labels element of :func:`synthetic_tissue`.
REGIONS = "he_regions"
#: ``obs`` column naming the element a simulated table annotates (spatialdata ``region_key``). Not ``'region'``,
#: which in simulated data holds the tissue region (tumour, stroma, ...).
ELEMENT_KEY = "element"

_UNS_SPOTS = "stmap_simulate_spots"
_UNS_TISSUE = "stmap_simulate_tissue"
_UNS_SYNTH = "stmap_synthetic_tissue"


# --------------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------------
def _check_anndata(adata: Any, name: str) -> None:
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise StmapInputError(f"`{name}` must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise StmapInputError(f"`{name}` is empty ({adata.n_obs} x {adata.n_vars}); give at least one cell and gene.")


def _get_counts(adata, layer: str | None, name: str):
    if layer is None:
        X = adata.X
        where = f"{name}.X"
    else:
        if layer not in adata.layers:
            raise StmapInputError(
                f"Layer {layer!r} not found in {name}.layers. Available: {sorted(adata.layers.keys()) or 'none'}."
            )
        X = adata.layers[layer]
        where = f"{name}.layers[{layer!r}]"
    if X is None:
        raise StmapInputError(f"{where} is empty; give raw counts in X or name a layer with `counts_layer`.")
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        try:  # dask / h5py-backed
            X = np.asarray(X)
        except Exception as e:
            raise StmapInputError(f"{where} must be a NumPy array or a SciPy sparse matrix.") from e
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
    return X, where


def _get_coords(adata, key: str, name: str) -> np.ndarray:
    if key not in adata.obsm:
        raise StmapInputError(
            f"Coordinates {key!r} not found in {name}.obsm. Available: {sorted(adata.obsm.keys()) or 'none'}. "
            "Put (x, y) in micrometres there, or pass `spatial_key`."
        )
    xy = np.asarray(adata.obsm[key], dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise StmapInputError(f"{name}.obsm[{key!r}] must have shape (n_cells, 2) (x, y), got {xy.shape}.")
    if not np.all(np.isfinite(xy)):
        raise StmapInputError(f"{name}.obsm[{key!r}] contains NaN or infinite coordinates.")
    return xy


def _get_labels(adata, key: str, name: str) -> pd.Categorical:
    if key not in adata.obs:
        raise StmapInputError(
            f"Cell types {key!r} not found in {name}.obs. Available: {sorted(map(str, adata.obs.columns)) or 'none'}."
            " Pass `cell_type_key`."
        )
    s = adata.obs[key]
    if s.isna().any():
        raise StmapInputError(f"{name}.obs[{key!r}] has {int(s.isna().sum())} missing cell types; drop or label them.")
    cat = s.astype("category").cat if not isinstance(s.dtype, pd.CategoricalDtype) else s.cat
    cats = [str(c) for c in cat.categories]
    if len(set(cats)) != len(cats):
        raise StmapInputError(f"{name}.obs[{key!r}] has categories that coincide as strings: {cats}.")
    return pd.Categorical.from_codes(cat.codes.to_numpy(), categories=cats)


def _positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise StmapInputError(f"`{name}` must be a number, got {value!r}.") from e
    if not np.isfinite(v) or v <= 0:
        raise StmapInputError(f"`{name}` must be a positive number, got {value!r}.")
    return v


# --------------------------------------------------------------------------------------------------------------------
# simulate_spots
# --------------------------------------------------------------------------------------------------------------------
def _hex_grid(xmin: float, xmax: float, ymin: float, ymax: float, spacing: float):
    """Visium-like hexagonal grid covering the box (one extra ring); returns xy, array_row, array_col."""
    pitch = spacing * np.sqrt(3.0) / 2.0
    rows = np.arange(-1, int(np.ceil((ymax - ymin) / pitch)) + 2)
    cols = np.arange(-1, int(np.ceil((xmax - xmin) / spacing)) + 2)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    r, c = r.ravel(), c.ravel()
    odd = np.mod(r, 2)
    x = xmin + c * spacing + odd * spacing / 2.0
    y = ymin + r * pitch
    return np.column_stack([x, y]), r - rows[0], 2 * (c - cols[0]) + odd


@inject_docs()
def simulate_spots(
    cells,
    *,
    spot_diameter: float,
    spacing: float | None = None,
    cell_type_key: str = Key.obs.cell_type,
    spatial_key: str = Key.obsm.spatial,
    counts_layer: str | None = None,
    capture_rate: float = 1.0,
    min_cells: int = 1,
    origin: Sequence[float] | None = None,
    seed: int | np.random.Generator | None = 0,
):
    """Aggregate single-cell-resolution data into Visium-like spots, keeping the truth.

    Spots lie on a hexagonal grid (rows ``spacing * sqrt(3) / 2`` apart, odd rows shifted by ``spacing / 2``, as on a
    Visium slide). A cell belongs to the spot whose disk contains its centre; cells between spots belong to none.
    A spot's counts are the sum of its cells' counts, optionally thinned binomially (each molecule kept with
    probability ``capture_rate``).

    Parameters
    ----------
    cells
        :class:`anndata.AnnData` of cells: raw counts in ``X`` (or ``layers[counts_layer]``), coordinates ``(x, y)``
        in micrometres in ``obsm[spatial_key]``, cell types in ``obs[cell_type_key]``. Not modified.
    spot_diameter
        Spot diameter in micrometres (Visium: 55).
    spacing
        Centre-to-centre distance in micrometres; default ``2 * spot_diameter`` (Visium: 100 for 55). Must be at
        least ``spot_diameter`` so that spots do not overlap.
    cell_type_key
        Column of ``cells.obs`` with the cell type.
    spatial_key
        Key of ``cells.obsm`` with the coordinates.
    counts_layer
        Layer with raw counts; ``None`` uses ``X``.
    capture_rate
        Probability in ``(0, 1]`` that a molecule of a member cell is captured by its spot. Below 1 the counts must be
        integers.
    min_cells
        Keep spots holding at least this many cells (``0`` keeps every grid spot over the cells' bounding box).
    origin
        ``(x, y)`` of the grid's first spot; default the cells' minimum ``x`` and ``y``.
    {seed}

    Returns
    -------
    :class:`spatialdata.SpatialData` in the ``'global'`` coordinate system (micrometres) with

    - shapes ``'spot_circles'``: one circle per spot (radius ``spot_diameter / 2``), index ``0..n_spots-1``;
    - table ``'spots'`` annotating it: ``X`` and ``layers['counts']`` the (thinned) summed counts (sparse if the
      input is sparse); ``obs['n_cells']``, ``obs['array_row']``, ``obs['array_col']``; ``obsm['spatial']`` the
      centres; ``obsm['cell_type_counts']`` and ``obsm['cell_type_fractions']`` DataFrames with one column per cell
      type (fractions are NaN for empty spots); ``uns['stmap_simulate_spots']`` the parameters;
    - points ``'cell_points'``: the cells (``x``, ``y``, ``cell_type``);
    - table ``'cells'`` annotating it: a copy of ``cells`` with ``obs['spot_id']`` (categorical spot id, NaN for
      cells in no spot).

    Tables record their annotated element in ``obs['element']`` (see ``uns['spatialdata_attrs']``).

    Raises
    ------
    StmapInputError
        If coordinates, cell types or counts are missing or invalid (NaN or negative counts, non-integer counts
        when thinning), or if the parameters are out of range. ``cells`` is left untouched.
    """
    _check_anndata(cells, "cells")
    diameter = _positive(spot_diameter, "spot_diameter")
    spacing = 2.0 * diameter if spacing is None else _positive(spacing, "spacing")
    if spacing < diameter:
        raise StmapInputError(
            f"spacing={spacing} is smaller than spot_diameter={diameter}: spots would overlap. Use spacing >= "
            "spot_diameter (Visium: 100 for 55)."
        )
    try:
        capture_rate = float(capture_rate)
    except (TypeError, ValueError) as e:
        raise StmapInputError(f"`capture_rate` must be a number in (0, 1], got {capture_rate!r}.") from e
    if not (0.0 < capture_rate <= 1.0):
        raise StmapInputError(f"`capture_rate` must be in (0, 1], got {capture_rate}.")
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 0:
        raise StmapInputError(f"`min_cells` must be a non-negative integer, got {min_cells!r}.")
    xy = _get_coords(cells, spatial_key, "cells")
    types = _get_labels(cells, cell_type_key, "cells")
    X, where = _get_counts(cells, counts_layer, "cells")
    check_counts(X, where, integer=capture_rate < 1.0)
    gen = _rng(seed)

    # grid and assignment -------------------------------------------------------------------------------------------
    from scipy.spatial import cKDTree

    lo = xy.min(axis=0) if origin is None else np.asarray(origin, dtype=float)
    if lo.shape != (2,) or not np.all(np.isfinite(lo)):
        raise StmapInputError(f"`origin` must be (x, y), got {origin!r}.")
    hi = xy.max(axis=0)
    grid, arow, acol = _hex_grid(lo[0], max(hi[0], lo[0]), lo[1], max(hi[1], lo[1]), spacing)
    radius = diameter / 2.0
    dist, nearest = cKDTree(grid).query(xy, k=1)
    member = dist <= radius  # spots are disjoint (spacing >= diameter): the nearest spot is the only candidate
    n = cells.n_obs
    cell_idx = np.flatnonzero(member)
    A = sparse.csr_matrix(
        (np.ones(cell_idx.size, dtype=np.int64), (nearest[cell_idx], cell_idx)), shape=(grid.shape[0], n)
    )
    n_in = np.asarray(A.sum(axis=1)).ravel()
    # min_cells=0: every grid spot whose disk meets the cells' bounding box
    in_box = np.all((grid >= lo - radius) & (grid <= hi + radius), axis=1)
    keep = n_in >= min_cells if min_cells > 0 else in_box
    if not keep.any():
        raise StmapInputError(
            f"No spot holds at least {min_cells} cell(s): the spots (diameter {diameter}) are too small or the cells "
            "too sparse; check that coordinates are in micrometres."
        )
    spot_of_grid = np.full(grid.shape[0], -1, dtype=np.int64)
    spot_of_grid[keep] = np.arange(int(keep.sum()))
    A = A[keep]
    n_spots = A.shape[0]
    width = len(str(max(n_spots - 1, 0)))
    spot_ids = np.array([f"spot_{i:0{width}d}" for i in range(n_spots)], dtype=object)
    cell_spot = np.full(n, -1, dtype=np.int64)
    cell_spot[cell_idx] = spot_of_grid[nearest[cell_idx]]

    # counts --------------------------------------------------------------------------------------------------------
    if sparse.issparse(X):
        S = sparse.csr_matrix(A.astype(X.dtype) @ X)
        S.sum_duplicates()
        if capture_rate < 1.0:
            S.data = gen.binomial(np.round(S.data).astype(np.int64), capture_rate).astype(S.dtype)
            S.eliminate_zeros()
    else:
        Xd = np.asarray(X)
        S = np.asarray(A.astype(Xd.dtype) @ Xd)
        if capture_rate < 1.0:
            S = gen.binomial(np.round(S).astype(np.int64), capture_rate).astype(S.dtype)

    # composition ---------------------------------------------------------------------------------------------------
    cats = list(types.categories)
    onehot = sparse.csr_matrix(
        (np.ones(n, dtype=np.int64), (np.arange(n), types.codes.astype(np.int64))), shape=(n, len(cats))
    )
    type_counts = np.asarray((A @ onehot).todense())
    n_cells = type_counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = type_counts / n_cells[:, None]
    fractions[n_cells == 0] = np.nan

    # tables and elements -------------------------------------------------------------------------------------------
    import anndata as ad

    index = pd.Index(spot_ids, name=None)
    centres = grid[keep]
    obs = pd.DataFrame(
        {"n_cells": n_cells.astype(np.int64), "array_row": arow[keep], "array_col": acol[keep]}, index=index
    )
    spots = ad.AnnData(X=S, obs=obs, var=pd.DataFrame(index=cells.var_names.copy()))
    spots.layers[Key.layers.counts] = S.copy()
    spots.obsm[Key.obsm.spatial] = centres.copy()
    spots.obsm["cell_type_counts"] = pd.DataFrame(type_counts.astype(np.int64), index=index, columns=cats)
    spots.obsm["cell_type_fractions"] = pd.DataFrame(fractions, index=index, columns=cats)
    spots.uns[_UNS_SPOTS] = {
        "params": {
            "spot_diameter": diameter,
            "spacing": spacing,
            "capture_rate": capture_rate,
            "min_cells": int(min_cells),
            "origin": [float(lo[0]), float(lo[1])],
            "cell_type_key": cell_type_key,
            "spatial_key": spatial_key,
            "counts_layer": "None" if counts_layer is None else counts_layer,
            "seed": int(seed) if isinstance(seed, int | np.integer) else "generator" if seed is not None else "None",
        },
        "n_cells_total": int(n),
        "n_cells_in_spots": int((cell_spot >= 0).sum()),
        "units": "um",
    }
    spots = make_table(spots, region=SPOT_CIRCLES, region_key=ELEMENT_KEY)
    circles = make_circles(centres, radius, index=np.arange(n_spots))

    cell_tab = cells.copy()
    if not cell_tab.obs_names.is_unique:
        cell_tab.obs_names_make_unique()
    cell_tab.obs["spot_id"] = pd.Categorical.from_codes(cell_spot, categories=list(spot_ids))
    cell_tab = make_table(cell_tab, region=CELL_POINTS, region_key=ELEMENT_KEY)
    points = make_points(xy, annotations=pd.DataFrame({Key.obs.cell_type: pd.Categorical(types)}))

    return new_spatialdata(
        shapes={SPOT_CIRCLES: circles},
        points={CELL_POINTS: points},
        tables={SPOTS: spots, CELLS: cell_tab},
        units={Key.cs: "um"},
    )


# --------------------------------------------------------------------------------------------------------------------
# simulate_tissue
# --------------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _pbmc_counts():
    """Raw UMI counts recovered from scanpy's bundled ``pbmc68k_reduced`` (cached)."""
    import anndata as ad
    import scanpy as sc

    pb = sc.datasets.pbmc68k_reduced()
    logn = pb.raw.X
    logn = logn.toarray() if sparse.issparse(logn) else np.asarray(logn)
    # .raw holds log1p(normalize_total(counts, target_sum=1e4)) over all genes, with totals in obs['n_counts'];
    # undo both steps. The result is integer to within 0.08 (median 5e-4), so rounding recovers the UMI counts.
    counts = np.round(np.expm1(logn.astype(np.float64)) * (pb.obs["n_counts"].to_numpy()[:, None] / 1e4))
    out = ad.AnnData(
        X=sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame({"cell_type": pb.obs["bulk_labels"].astype("category")}, index=pb.obs_names.copy()),
        var=pd.DataFrame(index=pb.raw.var_names.copy()),
    )
    return out


def _smooth_fields(gen: np.random.Generator, k: int, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """``k`` standardised Gaussian random fields (white noise smoothed by a Gaussian of ``sigma`` pixels)."""
    from scipy.ndimage import gaussian_filter

    noise = gen.standard_normal((k, *shape))
    f = np.stack([gaussian_filter(noise[i], sigma, mode="reflect") for i in range(k)])
    f -= f.mean(axis=(1, 2), keepdims=True)
    f /= f.std(axis=(1, 2), keepdims=True) + 1e-12
    return f


@inject_docs()
def simulate_tissue(
    reference=None,
    *,
    n_cells: int = 5000,
    n_domains: int = 5,
    cell_type_key: str | None = None,
    counts_layer: str | None = None,
    domain_smoothness: float | None = None,
    cell_spacing: float = 12.0,
    concentration: float = 0.5,
    seed: int | np.random.Generator | None = 0,
):
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
    """
    import anndata as ad

    if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 1:
        raise StmapInputError(f"`n_cells` must be a positive integer, got {n_cells!r}.")
    if isinstance(n_domains, bool) or not isinstance(n_domains, int | np.integer) or n_domains < 1:
        raise StmapInputError(f"`n_domains` must be a positive integer, got {n_domains!r}.")
    cell_spacing = _positive(cell_spacing, "cell_spacing")
    concentration = _positive(concentration, "concentration")
    if reference is None:
        reference = _pbmc_counts()
        key = "cell_type"
        X = reference.X
    else:
        _check_anndata(reference, "reference")
        key = Key.obs.cell_type if cell_type_key is None else cell_type_key
        X, where = _get_counts(reference, counts_layer, "reference")
        check_counts(X, where)
    types = _get_labels(reference, key, "reference")
    gen = _rng(seed)

    # positions: jittered lattice, n_cells of its k*k sites --------------------------------------------------------
    k = int(np.ceil(np.sqrt(n_cells)))
    sites = gen.choice(k * k, size=n_cells, replace=False)
    sites.sort()
    xy = np.column_stack([sites % k, sites // k]).astype(float) + 0.5
    xy += gen.uniform(-0.35, 0.35, size=xy.shape)
    xy *= cell_spacing
    side = k * cell_spacing

    # domains: arg-max of smoothed random fields on a coarse grid ---------------------------------------------------
    if domain_smoothness is None:
        smooth = float(np.clip(side / (2.0 * np.sqrt(n_domains)), 50.0, 200.0))
    else:
        smooth = _positive(domain_smoothness, "domain_smoothness")
    px = smooth / 3.0  # field pixel size: the Gaussian spans 3 pixels per sigma
    g = int(np.ceil(side / px)) + 1
    fields = _smooth_fields(gen, n_domains, (g, g), 3.0)
    dom_map = fields.argmax(axis=0)
    ij = np.minimum((xy / px).astype(np.int64), g - 1)
    domain = dom_map[ij[:, 1], ij[:, 0]]

    # cell types from each domain's mixture, counts from a random reference cell of that type -----------------------
    n_types = len(types.categories)
    mix = gen.dirichlet(np.full(n_types, concentration), size=n_domains)
    present = np.bincount(types.codes, minlength=n_types) > 0
    mix = mix * present
    mix /= mix.sum(axis=1, keepdims=True)
    u = gen.random(n_cells)
    cell_type = (u[:, None] > np.cumsum(mix[domain], axis=1)).sum(axis=1)
    cell_type = np.minimum(cell_type, n_types - 1)
    order = np.argsort(types.codes, kind="stable")
    starts = np.searchsorted(types.codes[order], np.arange(n_types))
    sizes = np.bincount(types.codes, minlength=n_types)
    pick = order[starts[cell_type] + (gen.random(n_cells) * sizes[cell_type]).astype(np.int64)]

    Xc = sparse.csr_matrix(X)[pick] if sparse.issparse(X) else sparse.csr_matrix(np.asarray(X)[pick])
    Xc = Xc.astype(np.float32)
    width = len(str(n_cells - 1))
    names = pd.Index([f"cell_{i:0{width}d}" for i in range(n_cells)])
    dom_names = [f"domain_{i}" for i in range(n_domains)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, categories=list(types.categories)),
            "domain": pd.Categorical.from_codes(domain, categories=dom_names),
            "reference_cell": np.asarray(reference.obs_names)[pick].astype(str),
        },
        index=names,
    )
    out = ad.AnnData(X=Xc, obs=obs, var=pd.DataFrame(index=reference.var_names.astype(str)))
    out.layers[Key.layers.counts] = Xc.copy()
    out.obsm[Key.obsm.spatial] = xy
    out.uns[_UNS_TISSUE] = {
        "params": {
            "n_cells": int(n_cells),
            "n_domains": int(n_domains),
            "cell_type_key": key if cell_type_key is None else cell_type_key,
            "domain_smoothness": smooth,
            "cell_spacing": cell_spacing,
            "concentration": concentration,
            "seed": int(seed) if isinstance(seed, int | np.integer) else "generator" if seed is not None else "None",
            "reference": "pbmc68k_reduced" if cell_type_key is None and key == "cell_type" else "user",
        },
        "domain_composition": pd.DataFrame(mix, index=dom_names, columns=list(types.categories)),
        "units": "um",
    }
    return out


# --------------------------------------------------------------------------------------------------------------------
# synthetic_tissue
# --------------------------------------------------------------------------------------------------------------------
CELL_TYPES = ("tumor", "epithelial", "fibroblast", "endothelial", "T_cell", "macrophage")
TISSUE_REGIONS = ("tumor", "stroma", "immune", "epithelium")
# rows: regions, columns: CELL_TYPES
_COMPOSITION = np.array(
    [
        [0.75, 0.00, 0.08, 0.05, 0.05, 0.07],  # tumor
        [0.00, 0.05, 0.60, 0.15, 0.10, 0.10],  # stroma
        [0.00, 0.00, 0.10, 0.10, 0.60, 0.20],  # immune
        [0.00, 0.70, 0.15, 0.05, 0.05, 0.05],  # epithelium
    ]
)
_KEEP = np.array([1.0, 0.55, 1.0, 0.85])  # relative cell density per region (tumour and immune are dense)
_LIB = np.array([1.4, 1.0, 0.9, 0.8, 0.6, 1.1]) * 400.0  # mean UMIs per cell by type
# nucleus semi-axes (px at 1 um/px) and hematoxylin strength by type
_NUC = {
    "tumor": (4.8, 4.0, 1.15),
    "epithelial": (3.6, 3.0, 0.85),
    "fibroblast": (5.0, 1.6, 0.80),
    "endothelial": (4.5, 1.5, 0.75),
    "T_cell": (2.6, 2.4, 1.10),
    "macrophage": (3.6, 3.0, 0.80),
}
_COLORS_TYPES = ["#7b2d8e", "#e0a3c8", "#f4a259", "#5b8e7d", "#3a86ff", "#8d6e63"]
_COLORS_REGIONS = ["#6a1b9a", "#f48fb1", "#1e88e5", "#ffb74d"]
_H = np.array([0.65, 0.70, 0.29])  # hematoxylin optical density per RGB channel (Ruifrok & Johnston)
_E = np.array([0.10, 0.85, 0.35])  # eosin, tuned toward the pink of photographed stroma
_E = _E / np.linalg.norm(_E)


def _field(gen: np.random.Generator, npx: int, sigma_um: float, mpp: float) -> np.ndarray:
    """Standardised smooth random field on an ``npx x npx`` image grid, made on a coarse grid and upsampled.

    Smoothing at full resolution costs ``O(sigma)`` per pixel; a grid of ``sigma / 4`` pixels gives the same field
    (to interpolation error) in milliseconds.
    """
    from scipy.ndimage import gaussian_filter, zoom

    cp = max(sigma_um / 4.0, mpp)
    g = max(int(np.ceil(npx * mpp / cp)), 2)
    f = gaussian_filter(gen.standard_normal((g, g)), sigma_um / cp, mode="reflect")
    f = zoom(f, npx / g, order=1, grid_mode=True, mode="nearest")[:npx, :npx]
    if f.shape != (npx, npx):  # rounding of the zoomed shape
        f = np.pad(f, ((0, npx - f.shape[0]), (0, npx - f.shape[1])), mode="edge")
    f -= f.mean()
    return f / (f.std() + 1e-12)


def _synthetic_genes(gen, n_genes: int):
    n_types, n_regions = len(CELL_TYPES), len(TISSUE_REGIONS)
    n_mark = max(1, min(12, n_genes // (2 * n_types)))
    n_reg = max(0, min(6, (n_genes - n_mark * n_types) // (2 * n_regions)))
    if n_genes < n_mark * n_types + n_reg * n_regions:
        raise StmapInputError(f"`n_genes` must be at least {n_mark * n_types + n_reg * n_regions}, got {n_genes}.")
    names, program = [], []
    for t in CELL_TYPES:
        names += [f"{t}_m{j + 1:02d}" for j in range(n_mark)]
        program += [t] * n_mark
    for r in TISSUE_REGIONS:
        names += [f"{r}_r{j + 1:02d}" for j in range(n_reg)]
        program += [f"region:{r}"] * n_reg
    n_bg = n_genes - len(names)
    names += [f"gene_{j + 1:03d}" for j in range(n_bg)]
    program += ["background"] * n_bg
    base = np.exp(gen.normal(0.0, 0.8, size=n_genes))
    type_fx = np.ones((n_types, n_genes))
    for i in range(n_types):
        type_fx[i, i * n_mark : (i + 1) * n_mark] = np.exp(gen.uniform(2.0, 3.0, size=n_mark))
    reg_fx = np.ones((n_regions, n_genes))
    off = n_types * n_mark
    for i in range(n_regions):
        reg_fx[i, off + i * n_reg : off + (i + 1) * n_reg] = np.exp(gen.uniform(1.2, 1.8, size=n_reg))
    return names, program, base, type_fx, reg_fx


def _render_he(gen, region_px: np.ndarray, cell_px: np.ndarray, cell_type: np.ndarray, mpp: float) -> np.ndarray:
    """H&E-like RGB (uint8, y x c) by Beer-Lambert mixing of hematoxylin and eosin densities."""
    from scipy.ndimage import gaussian_filter

    h, w = region_px.shape
    tissue = region_px > 0
    # per-region background stain: [none, tumor, stroma, immune, epithelium]
    e_bg = np.array([0.0, 0.22, 0.32, 0.12, 0.26])[region_px]
    h_bg = np.array([0.0, 0.20, 0.03, 0.10, 0.07])[region_px]
    # stromal fibres: anisotropic noise whose orientation drifts across the tissue
    s = 1.0 / mpp
    n1, n2 = gen.standard_normal((2, h, w))
    f1 = gaussian_filter(n1, (0.7 * s, 6.0 * s))
    f2 = gaussian_filter(n2, (6.0 * s, 0.7 * s))
    mixw = 1.0 / (1.0 + np.exp(-2.0 * _field(gen, h, 25.0, mpp)))
    fib = mixw * f1 / (f1.std() + 1e-12) + (1 - mixw) * f2 / (f2.std() + 1e-12)
    fib_amp = np.array([0.0, 0.04, 0.16, 0.03, 0.06])[region_px]
    E = np.clip(e_bg + fib_amp * fib, 0.0, None)
    # glands in normal epithelium: pale lumina where a fine field peaks
    lum = gaussian_filter(gen.standard_normal((h, w)), 6.0 * s)
    lum = (lum > 2.2 * lum.std()) & (region_px == 4)
    E[lum] *= 0.15
    # nuclei: filled ellipses, hematoxylin strength by type, some pleomorphism
    H = h_bg.copy()
    for (cx, cy), t in zip(cell_px, cell_type):
        a, b, strength = _NUC[CELL_TYPES[t]]
        scale = gen.uniform(0.85, 1.2) / mpp
        a, b = a * scale, b * scale
        th = gen.uniform(0, np.pi)
        rr = int(np.ceil(max(a, b))) + 1
        x0, x1 = max(int(cx) - rr, 0), min(int(cx) + rr + 1, w)
        y0, y1 = max(int(cy) - rr, 0), min(int(cy) + rr + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        m = u * u + v * v <= 1.0
        val = strength * gen.uniform(0.85, 1.15)
        sub = H[y0:y1, x0:x1]
        sub[m] = np.maximum(sub[m], val)
    H = gaussian_filter(H, 0.6 * s)
    E = gaussian_filter(E, 0.6 * s)
    od = H[..., None] * _H + E[..., None] * _E
    od += gen.normal(0.0, 0.015, size=od.shape) * tissue[..., None]
    od += 0.01  # glass
    rgb = 250.0 * np.power(10.0, -np.clip(od, 0.0, None))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


@inject_docs()
def synthetic_tissue(
    seed: int | np.random.Generator | None = 0,
    *,
    n_cells: int = 1500,
    n_genes: int = 200,
    mpp: float = 1.0,
    spot_diameter: float = 40.0,
    spot_spacing: float = 50.0,
    capture_rate: float = 1.0,
    dispersion: float = 10.0,
):
    """A small, fully synthetic tissue with cells, spots, an H&E-like image and a tumour region.

    The tissue is an irregular disk divided into four regions (``tumor``, ``stroma``, ``immune`` aggregates, normal
    ``epithelium``) drawn from thresholded smooth random fields. Cells of six types (``tumor``, ``epithelial``,
    ``fibroblast``, ``endothelial``, ``T_cell``, ``macrophage``) are placed at region-dependent densities
    (tumour and immune regions are dense) with region-specific type mixtures. Counts are negative binomial
    (gamma-Poisson) from type programs (marker genes ``<type>_mNN``) times region programs (genes ``<region>_rNN``)
    over background genes (``gene_NNN``). Spots on a hexagonal grid aggregate them with :func:`simulate_spots`.
    The image is rendered from the same cells and regions by Beer-Lambert mixing of hematoxylin and eosin: dense,
    large, dark purple nuclei in the tumour; pink, fibrous, sparsely nucleated stroma; small dark lymphocyte nuclei
    in immune aggregates; glands with pale lumina in epithelium; near-white background off tissue.

    Parameters
    ----------
    {seed}
    n_cells
        Number of cells.
    n_genes
        Number of genes (at least 96 so each type and region has markers).
    mpp
        Image resolution in micrometres per pixel.
    spot_diameter, spot_spacing
        Spot geometry in micrometres. The default is a Visium grid scaled down (Visium: 55 and 100) so that the
        small tissue holds about 100 spots with about 9 cells each.
    capture_rate
        Passed to :func:`simulate_spots`.
    dispersion
        Negative-binomial inverse dispersion (``theta``; variance ``mu + mu^2 / theta``).

    Returns
    -------
    :class:`spatialdata.SpatialData` in ``'global'`` micrometres with

    - image ``'he'``: RGB ``uint8`` (``c, y, x``), multiscale (3 levels), pixel -> micrometre scale ``mpp``;
      about 600 x 600 px at the defaults;
    - labels ``'he_regions'``: region code per image pixel (0 off tissue, then ``1..4`` in the order of the
      categories of ``region``), same transform as ``'he'``;
    - shapes ``'spot_circles'`` + table ``'spots'``: as in :func:`simulate_spots`, plus ``obs['region']``
      (categorical: majority region of the spot's cells), ``obs['tumor']`` (bool, region is tumour) and
      ``obs['tumor_fraction']`` (share of the spot's cells in the tumour region);
    - points ``'cell_points'`` + table ``'cells'``: ``X`` and ``layers['counts']`` the counts, ``obs['cell_type']``,
      ``obs['region']``, ``obs['spot_id']``, ``obsm['spatial']``, ``var['program']`` (what each gene marks),
      ``uns['cell_type_colors']``, ``uns['region_colors']``.

    Both tables carry ``uns['stmap_synthetic_tissue']`` (seed, mpp, region codes of ``'he_regions'``).
    """
    import anndata as ad
    from spatialdata.models import Labels2DModel

    from stmap._core._elements import to_transformation

    if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 10:
        raise StmapInputError(f"`n_cells` must be an integer >= 10, got {n_cells!r}.")
    mpp = _positive(mpp, "mpp")
    dispersion = _positive(dispersion, "dispersion")
    gen = _rng(seed)
    names, program, base, type_fx, reg_fx = _synthetic_genes(gen, int(n_genes))

    # tissue mask and regions on the image grid -------------------------------------------------------------------
    lattice = 10.0  # candidate cell sites every 10 um; regions thin them by _KEEP
    radius = np.sqrt(1.5 * n_cells * lattice**2 / np.pi)
    margin = 25.0
    for _ in range(6):
        size_um = 2 * (radius * 1.15 + margin)
        npx = int(np.ceil(size_um / mpp))
        c = npx * mpp / 2.0
        yy, xx = (np.mgrid[0:npx, 0:npx] + 0.5) * mpp
        r = np.hypot(xx - c, yy - c)
        # boundary, tumour, immune and gland fields: smooth noise with their own correlation lengths
        f = np.stack([_field(gen, npx, radius / d, mpp) for d in (4.0, 3.5, 9.0, 8.0)])
        mask = (1.0 - r / radius) + 0.12 * np.clip(f[0], -2.5, 1.2) > 0  # stays inside the margin
        region = np.zeros((npx, npx), dtype=np.uint8)
        inside = mask
        t_thr = np.quantile(f[1][inside], 0.62)
        tum = inside & (f[1] > t_thr)
        rest = inside & ~tum
        imm = rest & (f[2] > np.quantile(f[2][rest], 0.88))
        rest &= ~imm
        epi = rest & (f[3] > np.quantile(f[3][rest], 0.78))
        region[inside] = 2
        region[tum] = 1
        region[imm] = 3
        region[epi] = 4
        # candidate sites
        k = int(np.ceil(npx * mpp / lattice))
        sx, sy = np.meshgrid(np.arange(k), np.arange(k))
        sites = (np.column_stack([sx.ravel(), sy.ravel()]) + 0.5) * lattice
        sites += gen.uniform(-0.3, 0.3, size=sites.shape) * lattice
        sites = sites[np.all((sites > 0) & (sites < npx * mpp), axis=1)]
        pix = np.minimum((sites / mpp).astype(np.int64), npx - 1)
        reg_site = region[pix[:, 1], pix[:, 0]]
        ok = reg_site > 0
        sites, reg_site = sites[ok], reg_site[ok]
        weight = _KEEP[reg_site - 1]
        if (weight > 0).sum() >= n_cells:
            break
        radius *= 1.15
    else:  # pragma: no cover - the loop grows the tissue until it fits
        raise RuntimeError("could not place the cells")
    chosen = gen.choice(sites.shape[0], size=n_cells, replace=False, p=weight / weight.sum())
    chosen.sort()
    xy = sites[chosen]
    cell_region = reg_site[chosen].astype(np.int64) - 1

    # cell types and counts -----------------------------------------------------------------------------------------
    cum = np.cumsum(_COMPOSITION[cell_region], axis=1)
    ctype = np.minimum((gen.random(n_cells)[:, None] > cum).sum(axis=1), len(CELL_TYPES) - 1)
    prof = base[None, :] * type_fx[ctype] * reg_fx[cell_region]
    prof /= prof.sum(axis=1, keepdims=True)
    lib = _LIB[ctype] * np.exp(gen.normal(0.0, 0.3, size=n_cells))
    mu = prof * lib[:, None]
    lam = gen.gamma(dispersion, mu / dispersion)
    counts = sparse.csr_matrix(gen.poisson(lam).astype(np.float32))

    width = len(str(n_cells - 1))
    cells = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(ctype, categories=list(CELL_TYPES)),
                "region": pd.Categorical.from_codes(cell_region, categories=list(TISSUE_REGIONS)),
            },
            index=[f"cell_{i:0{width}d}" for i in range(n_cells)],
        ),
        var=pd.DataFrame({"program": pd.Categorical(program)}, index=names),
    )
    cells.layers[Key.layers.counts] = counts.copy()
    cells.obsm[Key.obsm.spatial] = xy
    cells.uns[Key.colors("cell_type")] = list(_COLORS_TYPES)
    cells.uns[Key.colors("region")] = list(_COLORS_REGIONS)

    # spots ---------------------------------------------------------------------------------------------------------
    sdata = simulate_spots(
        cells,
        spot_diameter=spot_diameter,
        spacing=spot_spacing,
        capture_rate=capture_rate,
        origin=(float(xy[:, 0].min()), float(xy[:, 1].min())),
        seed=gen,
    )
    spots, cell_tab = sdata.tables[SPOTS], sdata.tables[CELLS]
    codes = cell_tab.obs["spot_id"].cat.codes.to_numpy()
    inn = codes >= 0
    rc = np.zeros((spots.n_obs, len(TISSUE_REGIONS)))
    np.add.at(rc, (codes[inn], cell_region[inn]), 1.0)
    centre_px = np.minimum((spots.obsm[Key.obsm.spatial] / mpp).astype(np.int64), npx - 1)
    centre_reg = region[centre_px[:, 1], centre_px[:, 0]].astype(np.int64) - 1
    maj = rc.argmax(axis=1)
    tie = (rc == rc.max(axis=1, keepdims=True)).sum(axis=1) > 1
    maj[tie & (centre_reg >= 0)] = centre_reg[tie & (centre_reg >= 0)]
    spots.obs["region"] = pd.Categorical.from_codes(maj, categories=list(TISSUE_REGIONS))
    spots.obs["tumor"] = maj == 0
    spots.obs["tumor_fraction"] = rc[:, 0] / np.maximum(rc.sum(axis=1), 1.0)
    spots.uns[Key.colors("region")] = list(_COLORS_REGIONS)
    meta = {
        "seed": int(seed) if isinstance(seed, int | np.integer) else "generator" if seed is not None else "None",
        "mpp": mpp,
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "region_codes": {"0": "background", **{str(i + 1): r for i, r in enumerate(TISSUE_REGIONS)}},
        "image": HE,
        "labels": REGIONS,
        "units": "um",
    }
    spots.uns[_UNS_SYNTH] = meta
    cell_tab.uns[_UNS_SYNTH] = dict(meta)

    # image ---------------------------------------------------------------------------------------------------------
    rgb = _render_he(gen, region, xy / mpp, ctype, mpp)
    T = affine_matrix(mpp)
    sdata.images[HE] = make_image(
        rgb, transform=T, dims=("y", "x", "c"), c_coords=["r", "g", "b"], scale_factors=[2, 2], chunks=(3, 512, 512)
    )
    sdata.labels[REGIONS] = Labels2DModel.parse(
        region, dims=("y", "x"), transformations={Key.cs: to_transformation(T)}, scale_factors=[2, 2]
    )
    return sdata
