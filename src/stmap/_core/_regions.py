"""Tables annotating several elements (e.g. one spot element per section of a stack): one context per region.

:func:`stmap._core.resolve` refuses a table that annotates several elements, because most tools work on one
element in one coordinate system. Tools that can work region by region (e.g. cutting image patches from each
section's own image) use :func:`resolve_regions`: a :class:`TableContext` over the whole table (where results are
written) plus one per region, over that region's rows, in that region's own coordinate system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from ._constants import Key
from ._errors import StmapInputError, unknown_key
from ._platform import bin_size_um, choose_coordinate_system
from ._resolve import (
    ImageContext,
    TableContext,
    _check_nonempty,
    _element_coordinate_systems,
    choose_image,
    is_spatialdata,
    resolve,
    resolve_image,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["RegionContext", "resolve_regions", "region_image"]


@dataclass
class RegionContext:
    """One region (annotated element) of a table.

    Attributes
    ----------
    region
        Name of the element (``None`` for a plain AnnData).
    rows
        Positions of the region's rows in the whole table, in table order.
    ctx
        A :class:`TableContext` over these rows only (its ``adata`` is a view of the table's rows), in the region's
        coordinate system: ``ctx.coords``, ``ctx.diameters``, ``ctx.image()`` work as for a one-region table.
    """

    region: str | None
    rows: np.ndarray
    ctx: TableContext


def resolve_regions(
    data: SpatialData | AnnData,
    table_key: str | None = None,
    *,
    coordinate_system: str | Mapping[str, str] | None = None,
    spatial_key: str = Key.obsm.spatial,
) -> tuple[TableContext, list[RegionContext]]:
    """Resolve a table that may annotate several elements, giving one context per element.

    Parameters
    ----------
    data
        SpatialData, or AnnData with coordinates in ``obsm[spatial_key]`` (then one region, the whole table).
    table_key
        Table name; may be omitted when there is exactly one table.
    coordinate_system
        One coordinate system for every region, or ``{region: coordinate system}``. Default, per region:
        ``'global'`` if the element lives there, else its only coordinate system, else the only one of its
        coordinate systems that no other region of the table lives in (e.g. the per-section system of a stack made by
        :func:`stmap.pp.stack_sections`).
    spatial_key
        For a plain AnnData, the ``obsm`` key of the coordinates.

    Returns
    -------
    ``(whole, regions)``: ``whole`` is a :class:`TableContext` over the whole table (``region`` is ``None`` when the
    table annotates several elements; use it to write results with :class:`stmap._core.Results`); ``regions`` has
    one :class:`RegionContext` per annotated element that has rows, in the order of the table's declared regions.
    For a table annotating one element, ``whole`` is what :func:`stmap._core.resolve` returns and ``regions`` holds
    it once with every row.

    Raises
    ------
    StmapInputError
        Unknown/ambiguous table, a table annotating nothing, unknown elements or coordinate systems, a region whose
        coordinate system cannot be chosen (pass ``coordinate_system=``), rows pointing to undeclared regions.
    """
    if not is_spatialdata(data) or not _is_multi_region(data, table_key):
        cs = coordinate_system
        if isinstance(cs, Mapping):
            ctx0 = resolve(data, table_key, spatial_key=spatial_key)
            cs = cs.get(ctx0.region) if ctx0.region is not None else None
        ctx = resolve(data, table_key, coordinate_system=cs, spatial_key=spatial_key)
        return ctx, [RegionContext(ctx.region, np.arange(ctx.adata.n_obs), ctx)]

    sdata = data
    if table_key is None:
        table_key = next(iter(sdata.tables))
    adata = sdata.tables[table_key]
    _check_nonempty(adata, f"Table {table_key!r}")
    attrs = adata.uns[Key.uns.spatialdata_attrs]
    regions = list(attrs["region"])
    region_key, instance_key = attrs["region_key"], attrs["instance_key"]
    for col in (region_key, instance_key):
        if col not in adata.obs:
            raise StmapInputError(
                f"Table {table_key!r} declares obs column {col!r} in uns['spatialdata_attrs'] but has no such column; "
                "re-parse it with `spatialdata.models.TableModel.parse`."
            )
    row_region = adata.obs[region_key].astype(str).to_numpy()
    stray = sorted(set(row_region) - set(map(str, regions)))
    if stray:
        raise StmapInputError(
            f"Rows of table {table_key!r} point to regions {stray} that uns['spatialdata_attrs']['region'] does not "
            f"declare ({regions}); re-link the table with `sdata.set_table_annotates_spatialelement`."
        )
    kinds: dict[str, str] = {}
    systems: dict[str, list[str]] = {}
    for r in regions:
        kind = next((k for k in ("shapes", "points", "labels") if r in getattr(sdata, k)), None)
        if kind is None:
            present = [n for k in ("shapes", "points", "labels") for n in getattr(sdata, k)]
            raise unknown_key(
                f"Element annotated by table {table_key!r},",
                r,
                present,
                "the SpatialData's shapes/points/labels",
                hint="The table points to an element that is not in this object; add it or re-link the table.",
            )
        kinds[r] = kind
        systems[r] = _element_coordinate_systems(sdata[r])
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{r!r} ({k})" for r, k in kinds.items())
        raise StmapInputError(
            f"Table {table_key!r} annotates elements of different kinds ({listing}); a tool reads one kind of "
            "observation at a time. Store one table per kind (e.g. `sdata.subset([<element>], filter_tables=True)`)."
        )
    bins = {r: bin_size_um(r) for r in regions}
    if len({b for b in bins.values() if b is not None}) > 1:
        listing = ", ".join(f"{r!r} ({b} µm)" for r, b in bins.items())
        raise StmapInputError(
            f"Table {table_key!r} mixes Visium HD bins of several sizes ({listing}); counts of different bin sizes "
            "are not comparable. Use the table of one bin size, e.g. `sdata.tables['square_008um']`."
        )
    chosen = {r: _choose_cs(r, systems, coordinate_system, sdata) for r in regions}
    shared = set.intersection(*[set(v) for v in systems.values()])
    if isinstance(coordinate_system, str):
        whole_cs = coordinate_system
    else:
        whole_cs = Key.cs if Key.cs in shared else (sorted(shared)[0] if shared else "")
    whole = TableContext(sdata, adata, table_key, None, region_key, instance_key, None, whole_cs)
    out = []
    for r in regions:
        rows = np.flatnonzero(row_region == str(r))
        if len(rows) == 0:
            continue
        sub = adata[rows]
        ctx = TableContext(sdata, sub, table_key, r, region_key, instance_key, kinds[r], chosen[r])  # type: ignore[arg-type]
        out.append(RegionContext(r, rows, ctx))
    return whole, out


def _is_multi_region(sdata: Any, table_key: str | None) -> bool:
    keys = list(sdata.tables.keys())
    if table_key is None:
        if len(keys) != 1:
            return False  # let resolve() raise its error
        table_key = keys[0]
    if table_key not in sdata.tables:
        return False
    attrs = sdata.tables[table_key].uns.get(Key.uns.spatialdata_attrs) or {}
    region = attrs.get("region")
    if region is None or isinstance(region, str) or attrs.get("region_key") is None:
        return False
    return len(list(region)) > 1


def _choose_cs(region: str, systems: dict[str, list[str]], coordinate_system: Any, sdata: Any = None) -> str:
    available = systems[region]
    if isinstance(coordinate_system, str):
        cs = coordinate_system
    elif isinstance(coordinate_system, Mapping) and region in coordinate_system:
        cs = coordinate_system[region]
    else:
        if Key.cs in available:
            return Key.cs
        if len(available) == 1:
            return available[0]
        others = {c for r, v in systems.items() if r != region for c in v}
        own = [c for c in available if c not in others]
        if len(own) == 1:
            return own[0]
        if len(own) > 1 and sdata is not None:  # e.g. one Visium sample's full-res and downscaled frames
            return choose_coordinate_system(sdata, region, own)
        raise StmapInputError(
            f"Element {region!r} lives in several coordinate systems ({', '.join(map(repr, available))}), none is "
            "'global' and none is its own; pass `coordinate_system=` (one name, or a dict region -> name)."
        )
    if cs not in available:
        raise unknown_key("Coordinate system", cs, available, f"the transformations of element {region!r}")
    return cs


def region_image(ctx: TableContext, image_key: str | None = None) -> ImageContext | None:
    """The image over one region's spots, or ``None`` when its coordinate system holds no image.

    With ``image_key=None`` and several images in the coordinate system, the one holding the largest share of the
    region's spot centres is taken (it must hold more than half of them).

    Raises
    ------
    StmapInputError
        Unknown image, an image outside the coordinate system or not aligned to the spots, or several images none of
        which covers the spots.
    """
    sdata = ctx.sdata
    if image_key is not None or sdata is None:
        return resolve_image(ctx, image_key)
    in_cs = [n for n in sdata.images if ctx.coordinate_system in _element_coordinate_systems(sdata.images[n])]
    if not in_cs:
        return None
    if len(in_cs) == 1:
        return resolve_image(ctx, in_cs[0])
    xy = ctx.coords
    share = []
    for n in in_cs:
        img = resolve_image(ctx, n, check_alignment=False)
        xmin, xmax, ymin, ymax = img.extent(0)
        share.append(float(np.mean((xy[:, 0] >= xmin) & (xy[:, 0] <= xmax) & (xy[:, 1] >= ymin) & (xy[:, 1] <= ymax))))
    best = max(share)
    if best <= 0.5:
        raise StmapInputError(
            f"Several images in coordinate system {ctx.coordinate_system!r} ({', '.join(map(repr, in_cs))}) and none "
            f"is the one clearly under element {ctx.region!r}'s spots; pass `image_key=` (a dict region -> image)."
        )
    # the images that cover the spots best; among them the photograph at the finest resolution (full > hires > lowres)
    under = [n for n, sh in zip(in_cs, share, strict=True) if sh == best]
    return resolve_image(ctx, choose_image(sdata, under, ctx.coordinate_system))
