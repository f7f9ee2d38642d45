"""Resolve what a tool needs from a SpatialData (or plain AnnData): table, annotated element, coordinates, images.

This module and :mod:`stmap._core._write` are the only places that know SpatialData/AnnData layouts. Every
function here only reads: errors are raised before anything is modified.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _logging as logg
from ._affine import affine_of as _affine_of
from ._affine import element_coordinate_systems as _element_coordinate_systems
from ._affine import linear_scale as _linear_scale
from ._constants import Key
from ._errors import StmapInputError, unknown_key
from ._platform import UnitInfo, choose_coordinate_system, infer_units, visium_capture_factor

if TYPE_CHECKING:
    import dask.array as da
    from spatialdata import SpatialData

__all__ = [
    "TableContext",
    "ImageContext",
    "resolve",
    "resolve_image",
    "choose_image",
    "is_spatialdata",
    "transform_points",
]

ElementType = Literal["shapes", "points", "labels"]


def is_spatialdata(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`spatialdata.SpatialData` (without importing spatialdata needlessly)."""
    return type(obj).__name__ == "SpatialData" and hasattr(obj, "tables")


def transform_points(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 ``(x, y, 1)`` affine matrix to ``(n, 2)`` points."""
    xy = np.asarray(xy, dtype=float)
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def _check_nonempty(adata: AnnData, what: str) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise StmapInputError(
            f"{what} is empty ({adata.n_obs} observations x {adata.n_vars} variables); "
            "pass a table with at least one row and one column."
        )


def _check_finite_coords(xy: np.ndarray, what: str, index: pd.Index) -> None:
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        ex = ", ".join(map(str, index[bad][:5]))
        raise StmapInputError(
            f"{what} has {int(bad.sum())} observations with NaN or infinite coordinates (e.g. {ex}); "
            "drop them first (e.g. `adata = adata[np.isfinite(adata.obsm['spatial']).all(1)].copy()`)."
        )


@dataclass
class ImageContext:
    """An image resolved for a tool: its pyramid levels as lazy ``(c, y, x)`` dask arrays and their transforms.

    Attributes
    ----------
    name
        Element name (or ``'<library_id>/<hires|lowres>'`` for legacy AnnData images).
    levels
        Lazy arrays ``(c, y, x)``, finest first.
    transforms
        For each level, the 3x3 ``(x, y, 1)`` matrix pixel -> coordinate system.
    coordinate_system
        The coordinate system the transforms map to.
    channels
        Channel names.
    """

    name: str
    levels: list[da.Array]
    transforms: list[np.ndarray]
    coordinate_system: str
    channels: list[Any] = field(default_factory=list)

    def pixel_size(self, level: int = 0) -> float:
        """Size of one pixel of ``level`` in coordinate-system units (isotropic scale of the transform)."""
        return _linear_scale(self.transforms[level])

    def to_pixels(self, xy: np.ndarray, level: int = 0) -> np.ndarray:
        """Map ``(n, 2)`` coordinate-system points to ``(x, y)`` pixel coordinates of ``level``."""
        return transform_points(np.linalg.inv(self.transforms[level]), xy)

    def extent(self, level: int = 0) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` of the image in the coordinate system."""
        _, h, w = self.levels[level].shape
        corners = transform_points(self.transforms[level], np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float))
        return corners[:, 0].min(), corners[:, 0].max(), corners[:, 1].min(), corners[:, 1].max()

    def level_for(self, pixel_size: float) -> int:
        """The coarsest level whose pixels are not larger than ``pixel_size`` (coordinate units); 0 if none is."""
        best = 0
        for i in range(len(self.levels)):
            if self.pixel_size(i) <= pixel_size * (1 + 1e-6):
                best = i
        return best


@dataclass
class TableContext:
    """What a tool needs to know about its input table.

    Attributes
    ----------
    data
        The object the user passed (SpatialData or AnnData); results are written back to it.
    adata
        The table (the user's object itself, not a copy).
    table_key
        Name of the table in ``sdata.tables`` (``None`` for a plain AnnData).
    region
        Name of the element the table annotates (``None`` for a plain AnnData).
    region_key, instance_key
        The table's region and instance columns.
    element_type
        ``'shapes'``, ``'points'`` or ``'labels'`` (``None`` for a plain AnnData).
    coordinate_system
        The coordinate system coordinates are expressed in (``'spatial'`` for a plain AnnData: ``obsm`` units).
    spatial_key
        For a plain AnnData, the ``obsm`` key of the coordinates.
    """

    data: SpatialData | AnnData
    adata: AnnData
    table_key: str | None
    region: str | None
    region_key: str | None
    instance_key: str | None
    element_type: ElementType | None
    coordinate_system: str
    spatial_key: str = Key.obsm.spatial

    @property
    def sdata(self) -> SpatialData | None:
        """The SpatialData, or ``None`` when a plain AnnData was given."""
        return cast("SpatialData", self.data) if is_spatialdata(self.data) else None

    @property
    def element(self) -> Any:
        """The annotated element."""
        if self.sdata is None:
            raise StmapInputError("A plain AnnData has no spatial element; pass a SpatialData object.")
        return self.sdata[self.region]

    @cached_property
    def coords(self) -> np.ndarray:
        """``(n_obs, 2)`` centres ``(x, y)`` in :attr:`coordinate_system`, in the order of the table's rows."""
        if self.sdata is None:
            return np.asarray(self.adata.obsm[self.spatial_key], dtype=float)[:, :2]
        el = self.element
        if self.element_type == "shapes" and len(el) and (el.geometry.geom_type == "Point").all():
            # circles: their centres mapped by the element's affine (what get_centroids computes, without dask)
            xy = np.c_[el.geometry.x.to_numpy(dtype=float), el.geometry.y.to_numpy(dtype=float)]
            xy = transform_points(_affine_of(el, self.coordinate_system), xy)[self._positions(pd.Index(el.index))]
            _check_finite_coords(xy, f"Element {self.region!r}", self.adata.obs_names)
            return xy
        from spatialdata import get_centroids

        with warnings.catch_warnings():  # spatialdata warns about the order of the ids it builds itself
            warnings.filterwarnings("ignore", message=".*index of the dataframe is not monotonic.*")
            cent = get_centroids(self.element, coordinate_system=self.coordinate_system).compute()
        pos = self._positions(pd.Index(cent.index))
        xy = cent[["x", "y"]].to_numpy(dtype=float)[pos]
        _check_finite_coords(xy, f"Element {self.region!r}", self.adata.obs_names)
        return xy

    def _positions(self, element_index: pd.Index) -> np.ndarray:
        """Row of the element for each table row (via the instance key)."""
        ids = self.adata.obs[self.instance_key].to_numpy()
        pos = _get_indexer(element_index, ids)
        missing = pos < 0
        if missing.any():
            ex = ", ".join(map(str, ids[missing][:5]))
            raise StmapInputError(
                f"{int(missing.sum())} rows of table {self.table_key!r} point to instances that element "
                f"{self.region!r} does not have (obs[{self.instance_key!r}] e.g. {ex}). Subset the table to the "
                "element's instances, e.g. with `spatialdata.match_table_to_element`."
            )
        return pos

    @cached_property
    def diameters(self) -> np.ndarray | None:
        """Spot/cell diameters in coordinate-system units, one per row (``None`` when unknown, e.g. points).

        Circles: ``2 * radius``; polygons and labels: the diameter of the disk of equal area.
        """
        if self.sdata is None:
            d = _legacy_spot_diameter(self.adata)
            return None if d is None else np.full(self.adata.n_obs, d, dtype=float)
        el = self.element
        scale = _linear_scale(_affine_of(el, self.coordinate_system))
        if self.element_type == "shapes":
            geom_type = el.geometry.geom_type.iloc[0]
            if geom_type == "Point":
                if "radius" not in el.columns:
                    return None
                d = 2.0 * el["radius"].to_numpy(dtype=float)
            else:
                d = 2.0 * np.sqrt(el.geometry.area.to_numpy(dtype=float) / np.pi)
            d = d[self._positions(pd.Index(el.index))] * scale
            try:
                um = self.um_per_unit if geom_type == "Point" and d.size else None
            except StmapInputError:  # contradicting unit records: raised where the unit is needed, not here
                um = None
            if um is not None and self.region is not None:  # Space Ranger circles span a theoretical 65 µm spot;
                d = d * visium_capture_factor(self.sdata, self.region, float(np.median(d)) * um)  # capture: 55 µm
            return d
        if self.element_type == "labels":
            import dask.array as da

            arr = _image_levels(el)[0].data
            counts = da.bincount(arr.ravel().astype(np.int64)).compute()
            ids = self.adata.obs[self.instance_key].to_numpy().astype(np.int64)
            area = np.where(ids < counts.size, counts[np.clip(ids, 0, counts.size - 1)], 0).astype(float)
            return 2.0 * np.sqrt(area / np.pi) * scale
        return None

    @cached_property
    def unit_info(self) -> UnitInfo | None:
        """Micrometres per coordinate unit and where the number comes from; ``None`` when nothing records it.

        Read from ``sdata.attrs['stmap_coordinate_units']`` (written by :mod:`stmap.datasets` and by every tool that
        inferred it), else inferred from what the platform records (:func:`stmap._core._platform.infer_units`:
        Visium's ``spot_diameter_fullres``, Visium HD's bin size, Xenium/MERSCOPE's micrometre elements); for a plain
        AnnData, from ``uns['stmap']['mpp']`` (micrometres per ``obsm['spatial']`` unit).
        """
        if self.sdata is None:
            meta = self.adata.uns.get(Key.uns.stmap)
            mpp = meta.get("mpp") if isinstance(meta, dict) else None
            try:
                return None if mpp is None else UnitInfo(float(mpp), "uns['stmap']['mpp']", recorded=True)
            except (TypeError, ValueError):
                return None
        info = infer_units(self.sdata, self.coordinate_system, self.region)
        if info is not None and not info.recorded:
            logg.info(
                f"coordinate system {self.coordinate_system!r}: {info.um_per_unit:.6g} µm per unit, from {info.source}"
            )
        return info

    @property
    def um_per_unit(self) -> float | None:
        """Micrometres per coordinate-system unit when recorded or inferable (see :attr:`unit_info`); else ``None``."""
        return None if self.unit_info is None else self.unit_info.um_per_unit

    def require_um_per_unit(self, mpp: float | None = None, image: ImageContext | None = None) -> float:
        """Micrometres per coordinate unit, from the recorded unit, or from ``mpp`` (micrometres per image pixel).

        Raises
        ------
        StmapInputError
            When neither is known.
        """
        if mpp is not None:
            if image is None:
                return float(mpp)
            return float(mpp) / image.pixel_size(0)
        if self.um_per_unit is not None:
            return self.um_per_unit
        raise StmapInputError(
            f"The physical unit of coordinate system {self.coordinate_system!r} is unknown (nothing in the object "
            "records it: no Visium spot diameter, Visium HD bin size or Xenium/MERSCOPE micrometre frame), so sizes in "
            "micrometres cannot be converted. Pass `mpp=` (micrometres per full-resolution image pixel), or record "
            f"the unit with `sdata.attrs['{Key.units_attr}'] = {{'{self.coordinate_system}': <µm per unit>}}` "
            "(or 'um')."
        )

    def image(self, image_key: str | None = None, *, check_alignment: bool = True) -> ImageContext:
        """Resolve the image over this table's spots; see :func:`resolve_image`."""
        return resolve_image(self, image_key, check_alignment=check_alignment)


def _get_indexer(index: pd.Index, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in ``index``, tolerating int/str mismatches (instance ids are often re-typed on I/O)."""
    pos = index.get_indexer(ids)
    if (pos < 0).any():
        pos2 = pd.Index(index.astype(str)).get_indexer(pd.Index(ids).astype(str))
        if (pos2 >= 0).sum() > (pos >= 0).sum():
            pos = pos2
    return pos


def _is_rgb_like(element: Any) -> bool:
    """An image element with 3 or 4 channels of an integer type (a photograph, e.g. an H&E)."""
    try:
        arr = element
        if not hasattr(arr, "dtype"):  # multiscale (DataTree): its finest level
            arr = next(iter(element["scale0"].ds.data_vars.values()))
        return arr.sizes.get("c", 0) in (3, 4) and np.issubdtype(arr.dtype, np.integer)
    except Exception:  # noqa: BLE001 - an unusual element is simply not preferred
        return False


def _legacy_spatial(adata: AnnData) -> dict[str, Any]:
    sp = adata.uns.get(Key.uns.spatial)
    return sp if isinstance(sp, dict) else {}


def _legacy_library(adata: AnnData, library_id: str | None = None) -> tuple[str, dict[str, Any]] | None:
    sp = _legacy_spatial(adata)
    if not sp:
        return None
    if library_id is None:
        if len(sp) > 1:
            raise StmapInputError(
                f"adata.uns['spatial'] holds several libraries ({', '.join(map(repr, sp))}); pass `library_id=`."
            )
        library_id = next(iter(sp))
    if library_id not in sp:
        raise unknown_key("Library", library_id, sp, "adata.uns['spatial']")
    return library_id, sp[library_id]


def _legacy_spot_diameter(adata: AnnData) -> float | None:
    try:
        lib = _legacy_library(adata)
    except StmapInputError:
        return None
    if lib is None:
        return None
    d = lib[1].get("scalefactors", {}).get("spot_diameter_fullres")
    return None if d is None else float(d)


def resolve(
    data: SpatialData | AnnData,
    table_key: str | None = None,
    *,
    coordinate_system: str | None = None,
    spatial_key: str = Key.obsm.spatial,
    require_counts: bool = False,
) -> TableContext:
    """Resolve the table a tool works on, the element it annotates and the coordinate system.

    Parameters
    ----------
    data
        SpatialData, or AnnData with coordinates in ``obsm[spatial_key]``.
    table_key
        Table name; may be omitted when there is exactly one table.
    coordinate_system
        Defaults to ``'global'`` if the element lives there, else the element's only coordinate system.
    spatial_key
        For a plain AnnData, the ``obsm`` key of the coordinates.
    require_counts
        Also check that the table's ``X`` holds finite, non-negative values.

    Returns
    -------
    The :class:`TableContext`.

    Raises
    ------
    StmapInputError
        With a message naming the problem and the fix: unknown/ambiguous table, empty table, a table that annotates
        nothing (or several elements), unknown coordinate system, missing or NaN coordinates.
    """
    if isinstance(data, AnnData):
        _check_nonempty(data, "The AnnData")
        if spatial_key not in data.obsm:
            raise unknown_key(
                "Coordinates key",
                spatial_key,
                data.obsm.keys(),
                "adata.obsm",
                hint="Put spot/cell centres (n_obs x 2) there, or pass `spatial_key=`.",
            )
        xy = np.asarray(data.obsm[spatial_key], dtype=float)
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise StmapInputError(
                f"adata.obsm[{spatial_key!r}] has shape {xy.shape}; expected (n_obs, 2) or (n_obs, 3)."
            )
        _check_finite_coords(xy[:, :2], f"adata.obsm[{spatial_key!r}]", data.obs_names)
        ctx = TableContext(
            data=data,
            adata=data,
            table_key=None,
            region=None,
            region_key=None,
            instance_key=None,
            element_type=None,
            coordinate_system=coordinate_system or spatial_key,
            spatial_key=spatial_key,
        )
    elif is_spatialdata(data):
        ctx = _resolve_sdata(data, table_key, coordinate_system)
    else:
        raise TypeError(
            f"Expected a spatialdata.SpatialData or an anndata.AnnData, got {type(data).__name__}. "
            "Read your data with spatialdata-io / stmap.datasets, or build an AnnData with obsm['spatial']."
        )
    if require_counts:
        from ._validate import check_counts

        check_counts(ctx.adata.X, f"table {ctx.table_key!r}" if ctx.table_key else "adata.X")
    return ctx


def _resolve_sdata(sdata: SpatialData, table_key: str | None, coordinate_system: str | None) -> TableContext:
    table_key = _choose_table(sdata, table_key)
    adata = sdata.tables[table_key]
    _check_nonempty(adata, f"Table {table_key!r}")
    region, region_key, instance_key = _annotated_region(sdata, table_key, coordinate_system)
    element_type = _element_type(sdata, region, table_key)
    for col in (region_key, instance_key):
        if col not in adata.obs:
            raise StmapInputError(
                f"Table {table_key!r} declares obs column {col!r} in uns['spatialdata_attrs'] but has no such column; "
                "re-parse it with `spatialdata.models.TableModel.parse`."
            )
    available = _element_coordinate_systems(sdata[region])
    if coordinate_system is None:
        coordinate_system = choose_coordinate_system(sdata, region, available)
    elif coordinate_system not in available:
        raise unknown_key(
            "Coordinate system", coordinate_system, available, f"the transformations of element {region!r}"
        )
    return TableContext(
        data=sdata,
        adata=adata,
        table_key=table_key,
        region=region,
        region_key=region_key,
        instance_key=instance_key,
        element_type=element_type,
        coordinate_system=coordinate_system,
    )


def _choose_table(sdata: SpatialData, table_key: str | None) -> str:
    """``table_key``, or the only table (the only one not made by an stmap tool, when that settles it)."""
    tables = list(sdata.tables.keys())
    if not tables:
        raise StmapInputError(
            "The SpatialData object holds no tables. Add one annotating the spots/cells, e.g. "
            "`sdata.tables['table'] = TableModel.parse(adata, region='spots', region_key='region', "
            "instance_key='instance_id')`."
        )
    if table_key is not None:
        if table_key not in sdata.tables:
            raise unknown_key("Table", table_key, tables, "sdata.tables")
        return table_key
    own = [t for t in tables if Key.uns.derived not in sdata.tables[t].uns]  # not made by an stmap tool
    if len(tables) > 1 and len(own) == 1:
        logg.info(f"using table {own[0]!r} (the others were made by stmap tools); pass `table_key=` to choose")
        tables = own
    if len(tables) > 1:
        raise StmapInputError(
            f"The SpatialData object holds several tables ({', '.join(map(repr, tables))}); pass `table_key=`."
        )
    return tables[0]


def _annotated_region(sdata: SpatialData, table_key: str, coordinate_system: str | None) -> tuple[str, str, str]:
    """The one element the table annotates, and its region and instance columns (from ``spatialdata_attrs``)."""
    attrs = sdata.tables[table_key].uns.get(Key.uns.spatialdata_attrs) or {}
    region = attrs.get("region")
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if region is None or region_key is None or instance_key is None:
        raise StmapInputError(
            f"Table {table_key!r} annotates no element (uns['spatialdata_attrs'] has no region). Link it to the "
            f"spots/cells with `sdata.set_table_annotates_spatialelement({table_key!r}, region=<element name>, "
            "region_key=..., instance_key=...)`."
        )
    regions = [region] if isinstance(region, str) else list(region)
    if len(regions) != 1:
        try:
            el0 = sdata[regions[0]]
            cs0 = coordinate_system or choose_coordinate_system(sdata, regions[0], _element_coordinate_systems(el0))
        except Exception:  # noqa: BLE001 - only for the example in the message
            cs0 = "<coordinate system of one sample>"
        raise StmapInputError(
            f"Table {table_key!r} annotates several elements ({', '.join(map(repr, regions))}), e.g. one per sample; "
            "this tool works on one element at a time. Select one sample (its elements, images and table rows) with "
            f"spatialdata, e.g. `one = sdata.filter_by_coordinate_system({cs0!r}, filter_tables=True)`, run the tool "
            "on it, and loop over the samples."
        )
    return regions[0], region_key, instance_key


def _element_type(sdata: SpatialData, region: str, table_key: str) -> ElementType:
    """Whether the annotated element is shapes, points or labels (it must be in the object)."""
    kinds: tuple[ElementType, ...] = ("shapes", "points", "labels")
    for kind in kinds:
        if region in getattr(sdata, kind):
            return kind
    present = [n for kind in kinds for n in getattr(sdata, kind)]
    raise unknown_key(
        f"Element annotated by table {table_key!r},",
        region,
        present,
        "the SpatialData's shapes/points/labels",
        hint="The table points to an element that is not in this object; add it or re-link the table.",
    )


def _image_levels(element: Any) -> list[Any]:
    """Pyramid levels (DataArrays) of an image element, finest first."""
    from xarray import DataTree

    if isinstance(element, DataTree):  # multiscale
        return [element[k].ds[next(iter(element[k].ds.data_vars))] for k in sorted(element.children)]
    return [element]


def choose_image(sdata: SpatialData, names: list[str], coordinate_system: str) -> str:
    """The obvious image among ``names`` (all in ``coordinate_system``): a photograph at the finest resolution.

    RGB(A) integer images (an H&E) come before other integer images (fluorescence) and those before float images
    (tool results such as densities and gene maps); within the first kind present, the finest pixels win (full >
    hires > lowres). The choice is logged when there was one.

    Raises
    ------
    StmapInputError
        When two images tie (same kind, same pixel size), listing them.
    """
    if len(names) == 1:
        return names[0]

    def kind(n: str) -> int:
        el = sdata.images[n]
        if _is_rgb_like(el):
            return 0
        arr = _image_levels(el)[0]
        return 1 if np.issubdtype(arr.dtype, np.integer) else 2

    kinds = {n: kind(n) for n in names}
    best_kind = min(kinds.values())
    cands = [n for n in names if kinds[n] == best_kind]
    if len(cands) > 1:
        size = {
            n: round(_linear_scale(_affine_of(_image_levels(sdata.images[n])[0], coordinate_system)), 9) for n in cands
        }
        cands.sort(key=lambda n: size[n])
        if size[cands[0]] == size[cands[1]]:
            raise StmapInputError(
                f"Several images in coordinate system {coordinate_system!r} ({', '.join(map(repr, names))}) and "
                f"{cands[0]!r} and {cands[1]!r} are alike (same kind, same pixel size); pass `image_key=`."
            )
        logg.info(
            f"using image {cands[0]!r} (the finest of {', '.join(map(repr, cands))} in {coordinate_system!r}); pass "
            "`image_key=` to choose another"
        )
    return cands[0]


def resolve_image(ctx: TableContext, image_key: str | None = None, *, check_alignment: bool = True) -> ImageContext:
    """Resolve the image over a table's spots, with its pixel -> coordinate transform at every pyramid level.

    Parameters
    ----------
    ctx
        From :func:`resolve`.
    image_key
        Image element name (SpatialData), or ``'hires'``/``'lowres'`` (legacy ``adata.uns['spatial']``). Defaults to
        the only image in the table's coordinate system (the finest legacy image for AnnData).
    check_alignment
        Raise if fewer than half of the spot centres fall inside the image.

    Returns
    -------
    The :class:`ImageContext` (arrays stay lazy).

    Raises
    ------
    StmapInputError
        No image, unknown/ambiguous image, an image outside the coordinate system, or an image not aligned to spots.
    """
    import dask.array as da

    if ctx.sdata is None:
        img = _legacy_image(ctx.adata, image_key, ctx.coordinate_system)
    else:
        sdata = ctx.sdata
        names = list(sdata.images.keys())
        in_cs = [n for n in names if ctx.coordinate_system in _element_coordinate_systems(sdata.images[n])]
        if image_key is None:
            if not in_cs:
                raise StmapInputError(
                    f"No image in coordinate system {ctx.coordinate_system!r}"
                    + (f" (images present: {', '.join(map(repr, names))})" if names else " (the object has no images)")
                    + ". Add the H&E as an image element with a transformation to that coordinate system, or pass "
                    "`image_key=`."
                )
            image_key = choose_image(sdata, in_cs, ctx.coordinate_system)
        elif image_key not in sdata.images:
            raise unknown_key("Image", image_key, names, "sdata.images")
        elif image_key not in in_cs:
            raise StmapInputError(
                f"Image {image_key!r} has no transformation to coordinate system {ctx.coordinate_system!r} (it "
                f"lives in {', '.join(map(repr, _element_coordinate_systems(sdata.images[image_key])))}); "
                "register it first."
            )
        element = sdata.images[image_key]
        levels = _image_levels(element)
        if "z" in levels[0].dims:
            raise StmapInputError(f"Image {image_key!r} is 3D (c, z, y, x); pass a 2D image element.")
        arrays = [lv.transpose("c", "y", "x").data for lv in levels]
        arrays = [a if isinstance(a, da.Array) else da.from_array(a) for a in arrays]
        transforms = [_affine_of(lv, ctx.coordinate_system) for lv in levels]
        channels = list(levels[0].coords["c"].values) if "c" in levels[0].coords else []
        img = ImageContext(image_key, arrays, transforms, ctx.coordinate_system, channels)
    if check_alignment:
        xy = ctx.coords
        xmin, xmax, ymin, ymax = img.extent(0)
        inside = (xy[:, 0] >= xmin) & (xy[:, 0] <= xmax) & (xy[:, 1] >= ymin) & (xy[:, 1] <= ymax)
        if inside.mean() < 0.5:
            raise StmapInputError(
                f"Image {img.name!r} is not aligned to the spots: only {inside.mean():.0%} of the spot centres fall "
                f"inside its extent x=[{xmin:.1f}, {xmax:.1f}], y=[{ymin:.1f}, {ymax:.1f}] in coordinate system "
                f"{ctx.coordinate_system!r} (spots span x=[{xy[:, 0].min():.1f}, {xy[:, 0].max():.1f}], "
                f"y=[{xy[:, 1].min():.1f}, {xy[:, 1].max():.1f}]). Check the image's transformation (scale factor, "
                "flipped axes) or pass the image registered to these spots."
            )
    return img


def _legacy_image(adata: AnnData, image_key: str | None, coordinate_system: str) -> ImageContext:
    import dask.array as da

    lib = _legacy_library(adata)
    if lib is None or not lib[1].get("images"):
        raise StmapInputError(
            "The AnnData has no image: adata.uns['spatial'][library_id]['images'] is missing. Pass a SpatialData with "
            "an image element, or add the image the way scanpy/squidpy's Visium readers do."
        )
    library_id, meta = lib
    images, sf = meta["images"], meta.get("scalefactors", {})
    order = [k for k in ("hires", "lowres") if k in images] + [k for k in images if k not in ("hires", "lowres")]
    if image_key is None:
        image_key = order[0]
    elif image_key not in images:
        raise unknown_key("Image", image_key, images, f"adata.uns['spatial'][{library_id!r}]['images']")
    scalef = sf.get(f"tissue_{image_key}_scalef")
    if scalef is None:
        raise StmapInputError(
            f"adata.uns['spatial'][{library_id!r}]['scalefactors'] has no 'tissue_{image_key}_scalef', so image "
            f"{image_key!r} cannot be placed on the spot coordinates; add the scale factor."
        )
    arr = np.asarray(images[image_key])
    arr = arr[..., None] if arr.ndim == 2 else arr
    data = da.from_array(np.moveaxis(arr, -1, 0))
    from ._elements import affine_matrix

    transform = affine_matrix(1.0 / float(scalef))
    return ImageContext(f"{library_id}/{image_key}", [data], [transform], coordinate_system, list(range(arr.shape[-1])))
