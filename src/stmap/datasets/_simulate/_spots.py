"""``simulate_spots``: read the cells -> lay the hexagonal grid and assign cells -> sum counts -> tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from stmap._core._constants import Key
from stmap._core._device import rng as _rng
from stmap._core._docs import inject_docs
from stmap._core._elements import make_circles, make_points, make_table, new_spatialdata
from stmap._core._errors import StmapInputError
from stmap._core._params import Instance, Interval, validate_params
from stmap._core._validate import check_counts

from ._inputs import check_nonempty, get_coords, get_counts, get_labels
from ._names import (
    CELL_POINTS,
    CELLS,
    ELEMENT_KEY,
    KEY,
    POSITIVE,
    RATE,
    SEED,
    SPOT_CIRCLES,
    SPOTS,
    UNS_SPOTS,
    seed_record,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData


@dataclass
class _Grid:
    """The kept spots of the hexagonal grid and which cells they hold."""

    centres: np.ndarray
    array_row: np.ndarray
    array_col: np.ndarray
    A: sparse.csr_matrix  # spots x cells membership
    spot_ids: np.ndarray
    cell_spot: np.ndarray  # spot of each cell, -1 for none


@validate_params(
    cells=Instance((AnnData,)),
    spot_diameter=POSITIVE,
    spacing=[POSITIVE, None],
    cell_type_key=KEY,
    spatial_key=KEY,
    counts_layer=[KEY, None],
    capture_rate=RATE,
    min_cells=Interval(int, 0, None),
    origin=[Instance((list, tuple, np.ndarray)), None],
    seed=SEED,
)
@inject_docs()
def simulate_spots(
    cells: AnnData,
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
) -> SpatialData:
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

    See Also
    --------
    :func:`stmap.datasets.simulate_tissue`
        Places reference cells into a tissue.
    :func:`stmap.tl.map_cells`
        Recovers the cells of each spot.

    Examples
    --------
    >>> import stmap as st
    >>> cells = st.datasets.simulate_tissue(n_cells=500, seed=0)
    >>> sdata = st.datasets.simulate_spots(cells, spot_diameter=55.0)
    >>> spots = sdata.tables["spots"]
    >>> spots.n_obs, spots.obsm["cell_type_fractions"].shape[1]  # spots, cell types
    (12, 10)
    """
    diameter = float(spot_diameter)
    spacing_um = 2.0 * diameter if spacing is None else float(spacing)
    rate = float(capture_rate)
    xy, types, X = _read_cells(cells, diameter, spacing_um, rate, cell_type_key, spatial_key, counts_layer)
    gen = _rng(seed)
    lo = _origin(xy, origin)
    grid = _assign(xy, lo, diameter, spacing_um, int(min_cells))
    S = _sum_counts(grid.A, X, rate, gen)
    type_counts, fractions = _composition(grid.A, types)
    params = {
        "spot_diameter": diameter,
        "spacing": spacing_um,
        "capture_rate": rate,
        "min_cells": int(min_cells),
        "origin": [float(lo[0]), float(lo[1])],
        "cell_type_key": cell_type_key,
        "spatial_key": spatial_key,
        "counts_layer": "None" if counts_layer is None else counts_layer,
        "seed": seed_record(seed),
    }
    spots = _spot_table(cells, grid, S, list(types.categories), type_counts, fractions, params)
    cell_tab = _cell_table(cells, grid)
    points = make_points(xy, annotations=pd.DataFrame({Key.obs.cell_type: pd.Categorical(types)}))
    return new_spatialdata(
        shapes={SPOT_CIRCLES: make_circles(grid.centres, diameter / 2.0, index=np.arange(len(grid.spot_ids)))},
        points={CELL_POINTS: points},
        tables={SPOTS: spots, CELLS: cell_tab},
        units={Key.cs: "um"},
    )


def _read_cells(
    cells: AnnData,
    diameter: float,
    spacing: float,
    capture_rate: float,
    cell_type_key: str,
    spatial_key: str,
    counts_layer: str | None,
) -> tuple[np.ndarray, pd.Categorical, Any]:
    """Coordinates, cell types and counts, after the checks that depend on the data."""
    check_nonempty(cells, "cells")
    if spacing < diameter:
        raise StmapInputError(
            f"spacing={spacing} is smaller than spot_diameter={diameter}: spots would overlap. Use spacing >= "
            "spot_diameter (Visium: 100 for 55)."
        )
    xy = get_coords(cells, spatial_key, "cells")
    types = get_labels(cells, cell_type_key, "cells")
    X, where = get_counts(cells, counts_layer, "cells")
    check_counts(X, where, integer=capture_rate < 1.0)
    return xy, types, X


def _origin(xy: np.ndarray, origin: Sequence[float] | None) -> np.ndarray:
    lo = xy.min(axis=0) if origin is None else np.asarray(origin, dtype=float)
    if lo.shape != (2,) or not np.all(np.isfinite(lo)):
        raise StmapInputError(f"`origin` must be (x, y), got {origin!r}.")
    return lo


def _hex_grid(
    xmin: float, xmax: float, ymin: float, ymax: float, spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visium-like hexagonal grid covering the box (one extra ring); returns xy, array_row, array_col."""
    pitch = spacing * np.sqrt(3.0) / 2.0
    rows = np.arange(-1, int(np.ceil((ymax - ymin) / pitch)) + 2)
    cols = np.arange(-1, int(np.ceil((xmax - xmin) / spacing)) + 2)
    r2, c2 = np.meshgrid(rows, cols, indexing="ij")
    r, c = r2.ravel(), c2.ravel()
    odd = np.mod(r, 2)
    x = xmin + c * spacing + odd * spacing / 2.0
    y = ymin + r * pitch
    return np.column_stack([x, y]), r - rows[0], 2 * (c - cols[0]) + odd


def _assign(xy: np.ndarray, lo: np.ndarray, diameter: float, spacing: float, min_cells: int) -> _Grid:
    """Lay the grid from ``lo`` over the cells, put each cell in the spot whose disk holds it, keep the spots."""
    from scipy.spatial import cKDTree

    hi = xy.max(axis=0)
    grid, arow, acol = _hex_grid(lo[0], max(hi[0], lo[0]), lo[1], max(hi[1], lo[1]), spacing)
    radius = diameter / 2.0
    dist, nearest = cKDTree(grid).query(xy, k=1)
    member = dist <= radius  # spots are disjoint (spacing >= diameter): the nearest spot is the only candidate
    n = xy.shape[0]
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
    cell_spot = np.full(n, -1, dtype=np.int64)
    cell_spot[cell_idx] = spot_of_grid[nearest[cell_idx]]
    return _Grid(
        centres=grid[keep],
        array_row=arow[keep],
        array_col=acol[keep],
        A=A,
        spot_ids=np.array([f"spot_{i:0{width}d}" for i in range(n_spots)], dtype=object),
        cell_spot=cell_spot,
    )


def _sum_counts(A: sparse.csr_matrix, X: Any, capture_rate: float, gen: np.random.Generator) -> Any:
    """Each spot's counts: the sum of its cells' counts, thinned binomially below ``capture_rate`` 1."""
    if sparse.issparse(X):
        S = sparse.csr_matrix(A.astype(X.dtype) @ X)
        S.sum_duplicates()
        if capture_rate < 1.0:
            S.data = gen.binomial(np.round(S.data).astype(np.int64), capture_rate).astype(S.dtype)
            S.eliminate_zeros()
        return S
    Xd = np.asarray(X)
    Sd = np.asarray(A.astype(Xd.dtype) @ Xd)
    if capture_rate < 1.0:
        Sd = gen.binomial(np.round(Sd).astype(np.int64), capture_rate).astype(Sd.dtype)
    return Sd


def _composition(A: sparse.csr_matrix, types: pd.Categorical) -> tuple[np.ndarray, np.ndarray]:
    """Cells of each type per spot, and their fractions (NaN for empty spots)."""
    n = A.shape[1]
    onehot = sparse.csr_matrix(
        (np.ones(n, dtype=np.int64), (np.arange(n), types.codes.astype(np.int64))), shape=(n, len(types.categories))
    )
    type_counts = np.asarray((A @ onehot).todense())
    n_cells = type_counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = type_counts / n_cells[:, None]
    fractions[n_cells == 0] = np.nan
    return type_counts, fractions


def _spot_table(
    cells: AnnData,
    grid: _Grid,
    S: Any,
    cats: list[str],
    type_counts: np.ndarray,
    fractions: np.ndarray,
    params: dict[str, Any],
) -> AnnData:
    """The spot table: summed counts, grid position, composition and the parameters, annotating the circles."""
    index = pd.Index(grid.spot_ids, name=None)
    n_cells = type_counts.sum(axis=1)
    obs = pd.DataFrame(
        {"n_cells": n_cells.astype(np.int64), "array_row": grid.array_row, "array_col": grid.array_col}, index=index
    )
    spots = AnnData(X=S, obs=obs, var=pd.DataFrame(index=cells.var_names.copy()))
    spots.layers[Key.layers.counts] = S.copy()
    spots.obsm[Key.obsm.spatial] = grid.centres.copy()
    spots.obsm["cell_type_counts"] = pd.DataFrame(type_counts.astype(np.int64), index=index, columns=cats)
    spots.obsm["cell_type_fractions"] = pd.DataFrame(fractions, index=index, columns=cats)
    spots.uns[UNS_SPOTS] = {
        "params": params,
        "n_cells_total": int(cells.n_obs),
        "n_cells_in_spots": int((grid.cell_spot >= 0).sum()),
        "units": "um",
    }
    return make_table(spots, region=SPOT_CIRCLES, region_key=ELEMENT_KEY)


def _cell_table(cells: AnnData, grid: _Grid) -> AnnData:
    """A copy of ``cells`` with the spot of each cell, annotating the cell points."""
    cell_tab = cells.copy()
    if not cell_tab.obs_names.is_unique:
        cell_tab.obs_names_make_unique()
    cell_tab.obs["spot_id"] = pd.Categorical.from_codes(grid.cell_spot, categories=list(grid.spot_ids))
    return make_table(cell_tab, region=CELL_POINTS, region_key=ELEMENT_KEY)
