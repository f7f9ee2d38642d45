"""Resolve point coordinates (2D or 3D) from any SpatialData element or table, and describe regular grids.

Tools that work on point clouds (densities, registration) get ``(n, d)`` coordinates in one coordinate system, the
annotation columns they asked for, and the table that should receive their ``.uns`` results, whatever the input:
a points element, shapes or labels (centroids), a table (of an element, or with ``obsm['spatial']``), a plain
AnnData, or an ``(n, d)`` array.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from anndata import AnnData

from ._constants import Key
from ._errors import StmapInputError, unknown_key
from ._platform import choose_coordinate_system

if TYPE_CHECKING:
    import dask.array as da
    from spatialdata import SpatialData

from ._resolve import ElementType, TableContext, _element_coordinate_systems, _get_indexer, is_spatialdata

__all__ = ["PointsContext", "resolve_points", "grid_transformation", "image_grid"]

_AXES = ("x", "y", "z")


@dataclass
class PointsContext:
    """Points resolved for a tool.

    Attributes
    ----------
    coords
        ``(n, d)`` coordinates ``(x, y[, z])`` in :attr:`coordinate_system` (numpy, or dask for large lazy points).
    annotations
        The requested annotation columns, one row per point.
    coordinate_system
        Coordinate system of :attr:`coords`.
    host
        A :class:`TableContext` of the table that receives ``.uns`` results, or ``None`` when the input has none.
    source
        Human-readable description of where the points came from.
    """

    data: SpatialData | AnnData | np.ndarray | da.Array
    coords: np.ndarray | da.Array
    annotations: pd.DataFrame
    coordinate_system: str
    host: TableContext | None
    source: str
    dims: tuple[str, ...] = field(default=("x", "y"))


def _affine_nd(element: Any, cs: str, axes: tuple[str, ...]) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=axes, output_axes=axes), dtype=float)


def _pick_cs(sdata: Any, element: Any, name: str, coordinate_system: str | None) -> str:
    available = _element_coordinate_systems(element)
    if coordinate_system is None:
        return choose_coordinate_system(sdata, name, available)
    if coordinate_system not in available:
        raise unknown_key("Coordinate system", coordinate_system, available, f"the transformations of {name!r}")
    return coordinate_system


def _annotating_table(sdata: Any, element_name: str) -> str | None:
    for name, t in sdata.tables.items():
        attrs = t.uns.get(Key.uns.spatialdata_attrs) or {}
        region = attrs.get("region")
        regions = [region] if isinstance(region, str) else list(region or [])
        if regions == [element_name]:
            return name
    return None


def _host_ctx(sdata: Any, table_key: str, coordinate_system: str) -> TableContext:
    adata = sdata.tables[table_key]
    attrs = adata.uns.get(Key.uns.spatialdata_attrs) or {}
    region = attrs.get("region")
    element_type: ElementType | None = None
    kinds: tuple[ElementType, ...] = ("shapes", "points", "labels")
    if isinstance(region, str):
        element_type = next((k for k in kinds if region in getattr(sdata, k)), None)
    return TableContext(
        data=sdata,
        adata=adata,
        table_key=table_key,
        region=region if isinstance(region, str) else None,
        region_key=attrs.get("region_key"),
        instance_key=attrs.get("instance_key"),
        element_type=element_type,
        coordinate_system=coordinate_system,
    )


def _columns(frame: pd.DataFrame | None, table: AnnData | None, columns: Sequence[str], where: str) -> list[str]:
    """Check that every requested column exists in ``frame`` or ``table.obs``."""
    have = set() if frame is None else set(map(str, frame.columns))
    have |= set() if table is None else set(map(str, table.obs.columns))
    for c in columns:
        if c not in have:
            raise unknown_key("Column", c, sorted(have), where)
    return list(columns)


def _finite(coords: np.ndarray | da.Array, what: str) -> None:
    if not isinstance(coords, np.ndarray):
        return
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise StmapInputError(
            f"{what} has {int(bad.sum())} points with NaN or infinite coordinates (first at row "
            f"{int(np.flatnonzero(bad)[0])}); drop them first."
        )


def resolve_points(
    data: SpatialData | AnnData | np.ndarray | da.Array,
    *,
    points_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    spatial_key: str = Key.obsm.spatial,
    columns: Sequence[str] = (),
    lazy: bool = False,
) -> PointsContext:
    """Resolve point coordinates (2D or 3D) and annotation columns from an element, a table, an AnnData or an array.

    Parameters
    ----------
    data
        SpatialData, AnnData (coordinates in ``obsm[spatial_key]``) or an ``(n, d)`` array.
    points_key
        A points, shapes or labels element (centroids for shapes and labels).
    table_key
        A table: the coordinates of the element it annotates (aligned to its rows), or its ``obsm[spatial_key]``
        when it annotates nothing.
    coordinate_system
        Target coordinate system (default ``'global'`` or the element's only one).
    spatial_key
        ``obsm`` key of coordinates for tables that annotate no element and for plain AnnData.
    columns
        Annotation columns to return, from the table (the one given, or the one annotating the element) when it has
        them (the table's ``obs`` is the user's annotation and wins over a same-named column of the element), else
        from the points/shapes element itself.
    lazy
        For a multi-partition points element and no ``columns``, return the coordinates as a dask array.

    Returns
    -------
    The :class:`PointsContext`.

    Raises
    ------
    StmapInputError
        Unknown keys/columns, no points, NaN coordinates, ambiguous input.
    """
    columns = [c for c in columns if c is not None]
    if isinstance(data, np.ndarray) or (hasattr(data, "shape") and type(data).__module__.startswith("dask")):
        coords = data if not isinstance(data, np.ndarray) else np.asarray(data, dtype=float)
        if coords.ndim != 2 or coords.shape[1] not in (2, 3):
            raise StmapInputError(f"Expected an (n, 2) or (n, 3) coordinate array, got shape {coords.shape}.")
        if coords.shape[0] == 0:
            raise StmapInputError("The coordinate array is empty; pass at least one point.")
        _finite(coords, "The coordinate array")
        if columns:
            raise StmapInputError(f"A plain array has no annotation columns ({columns}); pass a SpatialData/AnnData.")
        return PointsContext(
            data,
            coords,
            pd.DataFrame(index=pd.RangeIndex(coords.shape[0])),
            coordinate_system or Key.cs,
            None,
            "array",
            _AXES[: coords.shape[1]],
        )
    if isinstance(data, AnnData):
        if spatial_key not in data.obsm:
            raise unknown_key("Coordinates key", spatial_key, data.obsm.keys(), "adata.obsm")
        host = TableContext(data, data, None, None, None, None, None, coordinate_system or spatial_key, spatial_key)
        return _from_table_obsm(data, data, host, spatial_key, columns, "adata")
    if not is_spatialdata(data):
        raise TypeError(f"Expected SpatialData, AnnData or an (n, d) array, got {type(data).__name__}.")
    sdata = cast("SpatialData", data)
    if points_key is None and table_key is None:
        candidates = list(sdata.points)
        if len(candidates) != 1:
            raise StmapInputError(
                "Pass `points_key=` (a points, shapes or labels element) or `table_key=`; the object has points "
                f"elements {candidates or 'none'}."
            )
        points_key = candidates[0]
    if points_key is not None:
        kind = next((k for k in ("points", "shapes", "labels") if points_key in getattr(sdata, k)), None)
        if kind is None:
            present = [n for k in ("points", "shapes", "labels") for n in getattr(sdata, k)]
            raise unknown_key("Element", points_key, present, "the SpatialData's points/shapes/labels")
        el = sdata[points_key]
        cs = _pick_cs(sdata, el, points_key, coordinate_system)
        tkey = table_key or _annotating_table(sdata, points_key)
        el_host = _host_ctx(sdata, tkey, cs) if tkey is not None else None
        table = sdata.tables[tkey] if tkey is not None else None
        coords, ann = _element_coords(el, kind, points_key, cs, columns, table, el_host, lazy)
        return PointsContext(sdata, coords, ann, cs, el_host, f"{kind} {points_key!r}", _AXES[: coords.shape[1]])
    # a table (points_key is None here, so a table was named)
    assert table_key is not None
    if table_key not in sdata.tables:
        raise unknown_key("Table", table_key, sdata.tables.keys(), "sdata.tables")
    table = sdata.tables[table_key]
    attrs = table.uns.get(Key.uns.spatialdata_attrs) or {}
    region = attrs.get("region")
    if region is None or (not isinstance(region, str) and len(region) == 0):
        host = _host_ctx(sdata, table_key, coordinate_system or Key.cs)
        return _from_table_obsm(sdata, table, host, spatial_key, columns, f"table {table_key!r}")
    if not isinstance(region, str):
        region = list(region)
        if len(region) != 1:
            raise StmapInputError(f"Table {table_key!r} annotates several elements {region}; subset it first.")
        region = region[0]
    return resolve_points(
        sdata, points_key=region, table_key=table_key, coordinate_system=coordinate_system, columns=columns, lazy=lazy
    )


def _from_table_obsm(data, table, host, spatial_key, columns, what) -> PointsContext:
    if spatial_key not in table.obsm:
        raise unknown_key(
            "Coordinates key",
            spatial_key,
            table.obsm.keys(),
            f"{what}.obsm",
            hint="The table annotates no element, so coordinates must be in obsm.",
        )
    xy = np.asarray(table.obsm[spatial_key], dtype=float)
    if xy.ndim != 2 or xy.shape[1] not in (2, 3):
        raise StmapInputError(f"{what}.obsm[{spatial_key!r}] has shape {xy.shape}; expected (n, 2) or (n, 3).")
    if xy.shape[0] == 0:
        raise StmapInputError(f"{what} has no rows; pass at least one point.")
    _finite(xy, f"{what}.obsm[{spatial_key!r}]")
    cols = _columns(None, table, columns, f"{what}.obs")
    ann = table.obs[cols].copy() if cols else pd.DataFrame(index=table.obs_names)
    return PointsContext(data, xy, ann, host.coordinate_system, host, what, _AXES[: xy.shape[1]])


def _element_coords(el, kind, name, cs, columns, table, host, lazy):
    from spatialdata.models import get_axes_names

    # a table aligned to this element holds the user's annotation: its obs columns win over same-named columns of
    # the element (relabelled, merged or NaN labels in the table are what the user means)
    aligned = table is not None and host is not None and host.instance_key is not None and host.region == name
    in_table = set(map(str, table.obs.columns)) if aligned else set()
    if kind == "points":
        axes = tuple(a for a in _AXES if a in get_axes_names(el))
        own = [c for c in columns if c in el.columns and c not in in_table]
        from_table = [c for c in columns if c not in own]
        _columns(el, table, columns, f"points {name!r} or its table")
        m = _affine_nd(el, cs, axes)
        d = len(axes)
        if lazy and not columns and table is None and el.npartitions > 1:
            arr = el[list(axes)].to_dask_array(lengths=True).astype(float)
            coords = arr.map_blocks(lambda b: b @ m[:d, :d].T + m[:d, d], dtype=float)
            return coords, pd.DataFrame(index=pd.RangeIndex(int(arr.shape[0])))
        df = el[list(axes) + own].compute()
        coords = df[list(axes)].to_numpy(dtype=float) @ m[:d, :d].T + m[:d, d]
        ann = df[own].copy()
    else:
        from spatialdata import get_centroids

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*index of the dataframe is not monotonic.*")
            cent = get_centroids(el, coordinate_system=cs).compute()
        own = [c for c in columns if kind == "shapes" and c in el.columns and c not in in_table]
        from_table = [c for c in columns if c not in own]
        _columns(el if kind == "shapes" else None, table, columns, f"{kind} {name!r} or its table")
        coords = cent[["x", "y"]].to_numpy(dtype=float)
        ann = el.loc[cent.index, own].copy() if own else pd.DataFrame(index=cent.index)
        df = cent
    if coords.shape[0] == 0:
        raise StmapInputError(f"Element {name!r} holds no points; nothing to estimate.")
    _finite(coords, f"Element {name!r}")
    if aligned:
        # align to the table's rows (the table decides which instances and in which order)
        pos = _get_indexer(pd.Index(df.index), table.obs[host.instance_key].to_numpy())
        if (pos < 0).any():
            raise StmapInputError(
                f"{int((pos < 0).sum())} rows of table {host.table_key!r} point to instances that {name!r} does not "
                "have; subset the table with `spatialdata.match_table_to_element`."
            )
        coords = coords[pos]
        ann = ann.iloc[pos].reset_index(drop=True)
        for c in from_table:
            ann[c] = table.obs[c].to_numpy()
        ann.index = table.obs_names
    elif from_table:
        raise StmapInputError(f"Columns {from_table} are not in {kind} {name!r} and no table annotates it.")
    return coords, ann


# ---------------------------------------------------------------------------------------------------------------------
# regular grids as image elements
# ---------------------------------------------------------------------------------------------------------------------
def grid_transformation(lo: Sequence[float], step: Sequence[float]):
    """Spatialdata transformation of an image whose pixel ``i`` (along x, y[, z]) is centred at ``lo + i * step``.

    Parameters
    ----------
    lo, step
        Per axis, in the order ``(x, y[, z])``.

    Returns
    -------
    ``Sequence([Scale, Translation])`` (pixel centres sit at intrinsic ``i + 0.5``).
    """
    from spatialdata.transformations import Scale, Translation
    from spatialdata.transformations import Sequence as Seq

    axes = _AXES[: len(lo)]
    rev = tuple(reversed(axes))  # z, y, x / y, x
    s = dict(zip(axes, map(float, step), strict=True))
    t = {a: float(lo_a) - 0.5 * s[a] for a, lo_a in zip(axes, lo, strict=True)}
    return Seq([Scale([s[a] for a in rev], axes=rev), Translation([t[a] for a in rev], axes=rev)])


def image_grid(element: Any, coordinate_system: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], list[Any]]:
    """Read the grid of an axis-aligned (2D or 3D) image element: node positions and channels.

    Returns
    -------
    ``(lo, step, shape, channels)``, with ``lo``, ``step``, ``shape`` in the order ``(x, y[, z])``: pixel ``i``
    is centred at ``lo + i * step``.

    Raises
    ------
    StmapInputError
        When the element is rotated/sheared in that coordinate system (not a regular axis-aligned grid).
    """
    from ._resolve import _image_levels

    arr = _image_levels(element)[0]
    axes = tuple(a for a in _AXES if a in arr.dims)
    m = _affine_nd(arr, coordinate_system, axes)
    d = len(axes)
    lin = m[:d, :d]
    if not np.allclose(lin, np.diag(np.diag(lin))):
        raise StmapInputError("The image is rotated or sheared in this coordinate system; it is not a regular grid.")
    step = np.diag(lin).copy()
    lo = m[:d, d] + 0.5 * step
    shape = tuple(int(arr.sizes[a]) for a in axes)
    channels = list(arr.coords["c"].values) if "c" in arr.coords else []
    return lo, step, shape, channels
