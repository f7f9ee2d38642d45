"""Kernel density maps of point populations (cells per class, labelled cells) on regular 2D/3D grids."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd

from .._core import (
    Results,
    StmapInputError,
    TableContext,
    image_grid,
    inject_docs,
    is_spatialdata,
    make_image,
    resolve_points,
    unknown_key,
)
from .._core import _logging as logg
from .._core._constants import Key
from .._core._names import check_name
from .._core._params import Instance, Interval, Options, validate_params
from .._core._points import PointsContext, grid_transformation

if TYPE_CHECKING:
    import dask.array as da
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["density", "GridSpec"]

_AXES = ("x", "y", "z")


@dataclass(frozen=True)
class GridSpec:
    """A regular grid: ``shape[a]`` nodes at ``lo[a] + i * step[a]`` along axis ``a`` (order ``x, y[, z]``).

    Attributes
    ----------
    lo
        Position of the first node per axis, in coordinate-system units.
    step
        Node spacing per axis, in coordinate-system units.
    shape
        Number of nodes per axis.
    coordinate_system
        Coordinate system the grid lives in.

    See Also
    --------
    :func:`stmap.tl.density`
        Takes a grid (``grid=``) and stores its own in ``.uns[key_added]['grid']``.

    Examples
    --------
    >>> import stmap as st
    >>> grid = st.tl.GridSpec(lo=(0.0, 0.0), step=(10.0, 10.0), shape=(50, 40))
    >>> grid.hi, grid.nodes().shape
    ((490.0, 390.0), (2000, 2))
    """

    lo: tuple[float, ...]
    step: tuple[float, ...]
    shape: tuple[int, ...]
    coordinate_system: str = "global"

    @property
    def ndim(self) -> int:
        """Number of axes (2 or 3)."""
        return len(self.shape)

    @property
    def hi(self) -> tuple[float, ...]:
        """Position of the last node along each axis."""
        return tuple(lo + (n - 1) * s for lo, s, n in zip(self.lo, self.step, self.shape, strict=True))

    def axis(self, a: int) -> np.ndarray:
        """Node positions along axis ``a`` (``np.linspace(lo, hi, n)``)."""
        return self.lo[a] + np.arange(self.shape[a]) * self.step[a]

    def nodes(self) -> np.ndarray:
        """``(prod(shape), d)`` node coordinates in C order of the ``[ix, iy(, iz)]`` array."""
        mesh = np.meshgrid(*[self.axis(a) for a in range(self.ndim)], indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Storable form (``.uns``)."""
        return {
            "lo": [float(v) for v in self.lo],
            "step": [float(v) for v in self.step],
            "shape": [int(v) for v in self.shape],
            "axes": list(_AXES[: self.ndim]),
            "coordinate_system": self.coordinate_system,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(float(v) for v in d["lo"]),
            tuple(float(v) for v in d["step"]),
            tuple(int(v) for v in d["shape"]),
            str(d.get("coordinate_system", "global")),
        )

    def same_as(self, other: GridSpec, rtol: float = 1e-6) -> bool:
        """Whether two grids have the same nodes."""
        return (
            self.shape == other.shape
            and np.allclose(self.step, other.step, rtol=rtol)
            and np.allclose(self.lo, other.lo, rtol=rtol, atol=rtol * max(map(abs, self.step)))
        )


def _as_tuple(v: Any, d: int, what: str) -> tuple[float, ...]:
    arr = np.atleast_1d(np.asarray(v, dtype=float))
    if arr.size == 1:
        arr = np.repeat(arr, d)
    if arr.size != d:
        raise StmapInputError(f"{what} has {arr.size} values; give one, or one per axis ({d}).")
    return tuple(float(x) for x in arr)


def _check_bandwidth(bandwidth: Any, d: int) -> tuple[float, ...]:
    if bandwidth is None:
        raise StmapInputError("Pass `bandwidth=` (Gaussian standard deviation in coordinate units).")
    bw = _as_tuple(bandwidth, d, "bandwidth")
    if not all(np.isfinite(b) and b > 0 for b in bw):
        raise StmapInputError(f"bandwidth must be positive and finite, got {bw}.")
    return bw


def _check_dtype(dtype: Any, array_mode: bool) -> np.dtype:
    """``float32`` (default for SpatialData output) or ``float64`` (default for arrays)."""
    out = np.dtype(dtype if dtype is not None else (np.float64 if array_mode else np.float32))
    if out not in (np.float32, np.float64):
        raise StmapInputError(f"dtype must be float32 or float64, got {out}.")
    return out


def _point_weights(weights: Any, pts: PointsContext) -> np.ndarray | None:
    """Per-point weights from an annotation column or an array (finite, non-negative, one per point)."""
    n = int(pts.coords.shape[0])
    if isinstance(weights, str):
        w = pts.annotations[weights].to_numpy(dtype=float)
    elif weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.shape != (n,):
            raise StmapInputError(f"weights has shape {w.shape}; expected ({n},), one per point.")
    else:
        return None
    if (~np.isfinite(w) | (w < 0)).any():
        raise StmapInputError("weights must be finite and non-negative.")
    return w


def _grid_from_args(
    data: Any,
    grid: Any,
    grid_shape: Any,
    bounds: Any,
    voxel_size: Any,
    coords: Any,
    bw: tuple[float, ...],
    d: int,
    cs: str,
) -> GridSpec:
    """The grid: reused (a GridSpec, its dict, a density image's name) or built from bounds and shape/voxel size."""
    if isinstance(grid, GridSpec):
        spec = grid
    elif isinstance(grid, dict):
        spec = GridSpec.from_dict(grid)
    elif isinstance(grid, str):
        if not is_spatialdata(data) or grid not in data.images:
            avail = list(data.images) if is_spatialdata(data) else []
            raise unknown_key("Grid image", grid, avail, "sdata.images", hint="Pass the name of a density image.")
        lo, step, shape, _ = image_grid(data.images[grid], cs)
        spec = GridSpec(tuple(lo), tuple(step), tuple(shape), cs)
    else:
        spec = _new_grid(grid_shape, bounds, voxel_size, coords, bw, d, cs)
    if spec.ndim != d:
        raise StmapInputError(f"The grid is {spec.ndim}D but the points are {d}D.")
    if min(spec.shape) < 2 or min(spec.step) <= 0:
        raise StmapInputError(f"Invalid grid {spec}: every axis needs >= 2 nodes and a positive step.")
    return spec


def _new_grid(
    grid_shape: Any, bounds: Any, voxel_size: Any, coords: Any, bw: tuple[float, ...], d: int, cs: str
) -> GridSpec:
    """Nodes at ``np.linspace(lo, hi, n)`` per axis; bounds default to the points' extent padded by 3 bandwidths."""
    if bounds is None:
        lo_c, hi_c = coords.min(axis=0), coords.max(axis=0)
        if not isinstance(lo_c, np.ndarray):  # dask
            lo_c, hi_c = np.asarray(lo_c.compute()), np.asarray(hi_c.compute())
        pad = 3.0 * np.asarray(bw)
        bounds = list(zip(lo_c - pad, hi_c + pad, strict=True))
    b = np.asarray(bounds, dtype=float)
    if b.shape != (d, 2) or not np.isfinite(b).all() or (b[:, 1] <= b[:, 0]).any():
        raise StmapInputError(f"bounds must be {d} pairs (lo, hi) with lo < hi, got {bounds!r}.")
    step: tuple[float, ...]
    if grid_shape is not None:
        shape = tuple(int(n) for n in np.atleast_1d(grid_shape))
        if len(shape) != d or min(shape) < 2:
            raise StmapInputError(f"grid_shape must give {d} axis lengths >= 2, got {grid_shape!r}.")
        step = tuple((b[:, 1] - b[:, 0]) / (np.asarray(shape) - 1))
    else:
        vs = _as_tuple(min(bw) / 3.0 if voxel_size is None else voxel_size, d, "voxel_size")
        if min(vs) <= 0:
            raise StmapInputError(f"voxel_size must be positive, got {vs}.")
        shape = tuple(int(np.floor((hi - lo) / v + 1e-9)) + 1 for (lo, hi), v in zip(b, vs, strict=True))
        shape = tuple(max(n, 2) for n in shape)
        step = vs
    return GridSpec(tuple(b[:, 0]), tuple(float(s) for s in step), shape, cs)


def _check_memory(spec: GridSpec, n_grids: int, dtype: Any, max_memory: float | None) -> None:
    from ..kernels._kde import estimate_grid_bytes

    need = estimate_grid_bytes(spec.shape, dtype, n_grids)
    if max_memory is None:
        try:
            import psutil

            max_memory = 0.5 * psutil.virtual_memory().available
        except ImportError:  # pragma: no cover
            max_memory = 8e9
    if need > max_memory:
        raise StmapInputError(
            f"The density grid {spec.shape} x {n_grids} group(s) needs about {need / 1e9:.2f} GB "
            f"(limit {max_memory / 1e9:.2f} GB). Use a coarser `voxel_size`/`grid_shape`, fewer groups, "
            "float32 (`dtype='float32'`), or raise `max_memory=`."
        )


def _group_codes(col: pd.Series, groupby: str, source: str) -> tuple[list[Any], np.ndarray]:
    """Categories of a label column and each point's code (``-1``: no label, left out of every group).

    Categorical columns keep their category order, others are sorted. Missing labels (NaN, None, ``pd.NA``) are
    counted and reported with a warning; a column without any label is an error.
    """
    import warnings

    missing = np.asarray(col.isna(), dtype=bool)
    n, n_missing = int(missing.size), int(missing.sum())
    if n_missing == n:
        raise StmapInputError(
            f"Every {groupby!r} label of the {n} points is missing (NaN) in {source} (or its table); fill the column "
            f"(e.g. `table.obs[{groupby!r}]`) or pass `groupby=None` for one density of all points."
        )
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = list(col.cat.categories)
        codes = np.asarray(col.cat.codes, dtype=np.int64)
    else:
        cats = sorted(col[~missing].unique())
        codes = np.asarray(pd.Categorical(col, categories=cats).codes, dtype=np.int64)
    if n_missing:
        warnings.warn(
            f"{n_missing} of {n} point(s) have no {groupby!r} label (NaN) and are left out of every group; label "
            "them (or drop them) to include them.",
            UserWarning,
            stacklevel=5,
        )
    return cats, codes


def _groups(
    pts: PointsContext, groupby: str | None, groups: Sequence[str] | None, min_points: int
) -> tuple[list[Any], Mapping[Any, np.ndarray | None], list[Any]]:
    """The groups to estimate (in order), the points of each (``None``: all) and the groups skipped as too small."""
    if groupby is None:
        return ["all"], {"all": None}, []
    cats, codes = _group_codes(pts.annotations[groupby], groupby, pts.source)
    if groups is not None:
        missing = [g for g in groups if g not in set(cats)]
        if missing:
            raise unknown_key("Group", missing[0], map(str, cats), f"column {groupby!r}")
        pos = {g: i for i, g in enumerate(cats)}
        idx = {g: np.flatnonzero(codes == pos[g]) for g in groups}
        cats = list(groups)
    else:
        idx = {g: np.flatnonzero(codes == i) for i, g in enumerate(cats)}
    skipped = [g for g in cats if idx[g].size < min_points]
    cats = [g for g in cats if idx[g].size >= min_points]
    if not cats:
        raise StmapInputError(f"No group of {groupby!r} has at least {min_points} points.")
    return cats, idx, skipped


def _mask_array(mask: Any, spec: GridSpec) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != spec.shape:
        raise StmapInputError(
            f"mask has shape {m.shape}; it must match the grid {spec.shape} (indexed [ix, iy(, iz)])."
        )
    return m.astype(bool)


def _estimate(
    coords: Any,
    weights: np.ndarray | None,
    cats: list[Any],
    idx: Mapping[Any, np.ndarray | None],
    spec: GridSpec,
    bw: tuple[float, ...],
    *,
    norm: Literal["density", "counts", "cells_per_voxel"],
    dtype: np.dtype,
    truncate: float,
    mask: np.ndarray | None,
) -> tuple[np.ndarray, list[int], list[float], int]:
    """The KDE of every group on the grid: ``(maps (groups, *grid), points used, total weights, points dropped)``."""
    from ..kernels._kde import kde_grid

    out = np.empty((len(cats), *spec.shape), dtype=dtype)
    n_points, totals, n_dropped = [], [], 0
    for gi, g in enumerate(cats):
        sel = idx[g]
        c = coords if sel is None else coords[sel]
        w = weights if sel is None or weights is None else weights[sel]
        grid_g, dropped, total = kde_grid(
            c, bw, spec.lo, spec.step, spec.shape, weights=w, norm=norm, dtype=dtype, truncate=truncate
        )
        if mask is not None:
            grid_g[~mask] = 0
        out[gi] = grid_g
        n_points.append(int(c.shape[0]) - dropped)
        totals.append(total)
        n_dropped += dropped
    if n_dropped:
        logg.warning(f"{n_dropped} point(s) with non-finite coordinates were skipped.")
    return out, n_points, totals, n_dropped


def _write(
    pts: PointsContext, out: np.ndarray, spec: GridSpec, info: dict[str, Any], params: dict[str, Any], key_added: str
) -> Results:
    """Queue the density image (SpatialData) or array (AnnData) and the record, on the host table or a new one."""
    import anndata as ad

    names = info["groups"]
    data, host = pts.data, pts.host
    new_table = None
    if host is None:  # no table in the input: our own one-row-per-group table receives .uns
        new_table = ad.AnnData(
            X=np.zeros((len(names), 0), dtype=np.float32),
            obs=pd.DataFrame(
                {"n_points": list(info["n_points"]), "total_weight": list(info["total_weight"])},
                index=pd.Index(names),
            ),
        )
        host = TableContext(data, new_table, Key.table.groups(key_added), None, None, None, None, pts.coordinate_system)
    res = Results(host, key_added, params)
    if is_spatialdata(data):
        d = spec.ndim
        axes = _AXES[:d]
        img = np.ascontiguousarray(out.transpose(0, *range(d, 0, -1)))  # [g, ix, iy, iz] -> (c, z, y, x)
        el = make_image(
            img,
            transform=grid_transformation(spec.lo, spec.step),
            coordinate_system=pts.coordinate_system,
            c_coords=names,
            dims=("c", *reversed(axes)),
        )
        res.element(key_added, el)
        if new_table is not None:
            res.table(Key.table.groups(key_added), new_table)
    else:
        info["density"] = out
    res.uns(key_added, info)
    return res


_NORMS = ("density", "counts", "cells_per_voxel")
_ARRAYS = (list, tuple, np.ndarray)


@overload
def density(
    sdata: np.ndarray | da.Array,
    *,
    points_key: str | None = ...,
    table_key: str | None = ...,
    groupby: str | None = ...,
    bandwidth: float | Sequence[float] | None = ...,
    grid: GridSpec | dict | str | None = ...,
    grid_shape: Sequence[int] | None = ...,
    bounds: Sequence[Sequence[float]] | None = ...,
    voxel_size: float | Sequence[float] | None = ...,
    weights: str | np.ndarray | None = ...,
    mask: np.ndarray | None = ...,
    norm: Literal["density", "counts", "cells_per_voxel"] = ...,
    dtype: Any = ...,
    truncate: float = ...,
    groups: Sequence[str] | None = ...,
    min_points: int = ...,
    coordinate_system: str | None = ...,
    spatial_key: str = ...,
    max_memory: float | None = ...,
    key_added: str = ...,
    copy: bool = ...,
) -> np.ndarray: ...
@overload
def density(
    sdata: SpatialData | AnnData,
    *,
    points_key: str | None = ...,
    table_key: str | None = ...,
    groupby: str | None = ...,
    bandwidth: float | Sequence[float] | None = ...,
    grid: GridSpec | dict | str | None = ...,
    grid_shape: Sequence[int] | None = ...,
    bounds: Sequence[Sequence[float]] | None = ...,
    voxel_size: float | Sequence[float] | None = ...,
    weights: str | np.ndarray | None = ...,
    mask: np.ndarray | None = ...,
    norm: Literal["density", "counts", "cells_per_voxel"] = ...,
    dtype: Any = ...,
    truncate: float = ...,
    groups: Sequence[str] | None = ...,
    min_points: int = ...,
    coordinate_system: str | None = ...,
    spatial_key: str = ...,
    max_memory: float | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def density(
    sdata: SpatialData | AnnData,
    *,
    points_key: str | None = ...,
    table_key: str | None = ...,
    groupby: str | None = ...,
    bandwidth: float | Sequence[float] | None = ...,
    grid: GridSpec | dict | str | None = ...,
    grid_shape: Sequence[int] | None = ...,
    bounds: Sequence[Sequence[float]] | None = ...,
    voxel_size: float | Sequence[float] | None = ...,
    weights: str | np.ndarray | None = ...,
    mask: np.ndarray | None = ...,
    norm: Literal["density", "counts", "cells_per_voxel"] = ...,
    dtype: Any = ...,
    truncate: float = ...,
    groups: Sequence[str] | None = ...,
    min_points: int = ...,
    coordinate_system: str | None = ...,
    spatial_key: str = ...,
    max_memory: float | None = ...,
    key_added: str = ...,
    copy: Literal[True],
) -> SpatialData | AnnData: ...
@validate_params(
    points_key=[Instance((str,)), None],
    table_key=[Instance((str,)), None],
    groupby=[Instance((str,)), None],
    bandwidth=[Instance((numbers.Real, *_ARRAYS)), None],
    grid=[Instance((GridSpec, dict, str)), None],
    grid_shape=[Instance(_ARRAYS), None],
    bounds=[Instance(_ARRAYS), None],
    voxel_size=[Interval(float, 0, None, "neither"), Instance(_ARRAYS), None],
    weights=[Instance((str, pd.Series, *_ARRAYS)), None],
    mask=[Instance((np.ndarray,)), None],
    norm=Options(_NORMS),
    dtype=[Options({"float32", "float64"}), Instance((type, np.dtype)), None],
    truncate=Interval(float, 0, None, "neither"),
    groups=[Instance((list, tuple)), None],
    min_points=Interval(int, 0, None),
    coordinate_system=[Instance((str,)), None],
    spatial_key=Instance((str,)),
    max_memory=[Interval(float, 0, None, "neither"), None],
    key_added=Instance((str,)),
    copy=Instance((bool,)),
)
@inject_docs()
def density(
    sdata: SpatialData | AnnData | np.ndarray | da.Array,
    *,
    points_key: str | None = None,
    table_key: str | None = None,
    groupby: str | None = None,
    bandwidth: float | Sequence[float] | None = None,
    grid: GridSpec | dict | str | None = None,
    grid_shape: Sequence[int] | None = None,
    bounds: Sequence[Sequence[float]] | None = None,
    voxel_size: float | Sequence[float] | None = None,
    weights: str | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    norm: Literal["density", "counts", "cells_per_voxel"] = "density",
    dtype: Any = None,
    truncate: float = 4.0,
    groups: Sequence[str] | None = None,
    min_points: int = 1,
    coordinate_system: str | None = None,
    spatial_key: str = "spatial",
    max_memory: float | None = None,
    key_added: str = Key.default.density,
    copy: bool = False,
) -> SpatialData | AnnData | np.ndarray | None:
    """Gaussian kernel density maps of points on a regular 2D or 3D grid, one per group (e.g. per cell class).

    The density maps of CellMap2D :cite:p:`topilko2025cellmap2d`, ranked with :func:`stmap.tl.rank_densities`.

    Points are binned linearly onto the grid nodes (second-order accurate) and smoothed with a separable Gaussian
    (:mod:`stmap.kernels`, numba, parallel; FFT for wide kernels). The result is the KDE at the nodes
    ``lo + i * step`` of every axis, of all the points: those beyond the bounds add the part of their kernel that
    falls inside.

    Points are read and binned in blocks (a dask array's chunks, e.g. a lazy points element), so memory does not
    grow with their number; under an active ``dask.distributed`` client the blocks are binned on its workers
    and the partial grids summed here, with the same result as without the client.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData`; an :class:`anndata.AnnData` with coordinates (2 or 3 columns) in
        ``obsm[spatial_key]``; or an ``(n, d)`` coordinate array (numpy or dask), in which case the density is
        returned as an array indexed ``[ix, iy(, iz)]``.
    points_key
        Points, shapes or labels element (centroids for shapes/labels). Default: the only points element.
    table_key
        A table: the coordinates of the element it annotates, or its ``obsm[spatial_key]`` when it annotates none.
    groupby
        Column whose categories each get a density map: of the table (the one given, or the one annotating the
        element) when it has that column, since its ``obs`` is the user's annotation, else of the points/shapes
        element. Points without a label (NaN) are left out of every group, with a warning that says how many.
    bandwidth
        Gaussian standard deviation in coordinate units; one value or one per axis (anisotropic).
    grid
        Reuse a grid: a :class:`GridSpec`, its dict (``.uns[key]['grid']``), or the name of an existing density
        image (so query and reference maps share nodes).
    grid_shape
        Number of nodes per axis; the nodes are at ``np.linspace(lo, hi, n)`` of each axis of ``bounds``.
    bounds
        ``((x0, x1), (y0, y1)[, (z0, z1)])``: first and last node per axis; default the points' extent padded by
        ``3 * bandwidth``. Points outside the bounds count: each adds the part of its kernel that falls inside
        (the grid is padded by the kernel's support while binning, then cropped), and ``norm='density'``
        divides by all points; points farther than ``truncate`` bandwidths contribute exactly nothing.
    voxel_size
        Node spacing when ``grid_shape`` is not given (default ``bandwidth / 3``).
    weights
        Per-point weights: an annotation column name or an array.
    mask
        Boolean grid (shape of the grid, ``[ix, iy(, iz)]``): the density is set to 0 outside it.
    norm
        ``'density'`` (integral 1 per group), ``'counts'`` (points per unit area/volume) or ``'cells_per_voxel'``.
    dtype
        ``'float32'`` (default for SpatialData output) or ``'float64'`` (default for arrays).
    truncate
        Kernel support in standard deviations.
    groups
        Subset/order of the groups to estimate (default: all categories).
    min_points
        Groups with fewer points are skipped (logged).
    {coordinate_system}
    spatial_key
        ``obsm`` key of coordinates for AnnData input / tables annotating no element.
    max_memory
        Refuse grids needing more bytes than this (default: half the available memory).
    {key_added}
    {copy}

    Returns
    -------
    For an array input: the density array ``[ix, iy(, iz)]``.

    Otherwise, with ``copy=False`` ``None``, with ``copy=True`` the updated copy; written:

    ``sdata.images[key_added]``
        Image ``(c, y, x)`` or ``(c, z, y, x)``, channels = groups, with the grid's transformation (pixel ``i``
        centred at node ``lo + i * step``) to the coordinate system.
    ``.uns[key_added]``
        ``grid`` (``lo``, ``step``, ``shape``, ``axes``, ``coordinate_system``), ``element``, ``groups``,
        ``n_points``, ``total_weight``, ``n_dropped``, ``bandwidth``, ``norm``, ``params``; in the table of the
        input (the table given, or the one annotating the element), else in a new table
        ``sdata.tables[key_added + '_groups']`` with one row per group (``obs['n_points']``,
        ``obs['total_weight']``). For a plain AnnData the maps are stored in ``.uns[key_added]['density']``
        (``(groups, *grid)``).

    Raises
    ------
    StmapInputError
        No points, NaN coordinates, zero/negative bandwidth, a grid too large for memory (with its size), an unknown
        column/element, a ``groupby`` column without any label, a mask not matching the grid, an invalid
        ``key_added``. Nothing is written.

    See Also
    --------
    :func:`stmap.tl.rank_densities`
        Ranks reference classes by how well their maps match a query's.
    :func:`stmap.pl.density`
        Draws the maps.
    :func:`stmap.kernels.kde_grid`
        The estimate on plain arrays.
    :doc:`/tutorials/density`
        Tutorial.

    Examples
    --------
    One map per cell type of the synthetic tissue's cells, 20 µm bandwidth:

    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.tl.density(sdata, points_key="cell_points", groupby="cell_type", bandwidth=20.0)
    >>> sdata.images["stmap_density"].shape  # (groups, y, x)
    (6, 99, 105)
    >>> sdata.tables["cells"].uns["stmap_density"]["groups"]
    ['T_cell', 'endothelial', 'epithelial', 'fibroblast', 'macrophage', 'tumor']

    On a plain array of coordinates the map is returned, indexed ``[ix, iy]``:

    >>> import numpy as np
    >>> xy = np.random.default_rng(0).normal(size=(1000, 2))
    >>> st.tl.density(xy, bandwidth=0.5, grid_shape=(50, 40), bounds=((-5, 5), (-5, 5))).shape
    (50, 40)
    """
    array_mode = isinstance(sdata, np.ndarray) or type(sdata).__module__.startswith("dask")
    if not array_mode:  # refused before any work (Results checks it again at commit time)
        check_name(key_added, "key_added")
    columns = [c for c in (groupby, weights if isinstance(weights, str) else None) if c is not None]
    pts = resolve_points(
        sdata,
        points_key=points_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
        spatial_key=spatial_key,
        columns=columns,
        lazy=groupby is None and weights is None,
    )
    d = pts.coords.shape[1]
    bw = _check_bandwidth(bandwidth, d)
    dt = _check_dtype(dtype, array_mode)
    w_all = _point_weights(weights, pts)
    spec = _grid_from_args(sdata, grid, grid_shape, bounds, voxel_size, pts.coords, bw, d, pts.coordinate_system)
    cats, idx, skipped = _groups(pts, groupby, groups, min_points)
    _check_memory(spec, len(cats), dt, max_memory)
    mask_arr = _mask_array(mask, spec)

    start = logg.info(f"computing densities of {len(cats)} group(s) on a {'x'.join(map(str, spec.shape))} grid")
    if skipped:
        logg.info(f"    skipped {len(skipped)} group(s) with < {min_points} points: {skipped[:10]}")
    out, n_points, totals, n_dropped = _estimate(
        pts.coords, w_all, cats, idx, spec, bw, norm=norm, dtype=dt, truncate=truncate, mask=mask_arr
    )
    if array_mode:
        logg.info("    finished", time=start)
        return out[0] if groupby is None else out

    info: dict[str, Any] = {
        "grid": spec.to_dict(),
        "element": key_added,
        "groups": [str(g) for g in cats],
        "n_points": np.asarray(n_points, dtype=np.int64),
        "total_weight": np.asarray(totals, dtype=float),
        "n_dropped": int(n_dropped),
        "bandwidth": list(bw),
        "norm": norm,
    }
    params = {
        "points_key": points_key,
        "table_key": table_key,
        "groupby": groupby,
        "bandwidth": list(bw),
        "norm": norm,
        "truncate": truncate,
        "dtype": str(dt),
        "source": pts.source,
    }
    res = _write(pts, out, spec, info, params, key_added)
    result = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return result
