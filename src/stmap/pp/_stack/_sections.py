"""The sections to stack: the input turned into named ``(SpatialData, table key)`` pairs.

The input is a list, a dict, one object with one table per section, or one table of several sections (split first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core import StmapInputError, is_spatialdata, unknown_key
from ..._core._constants import Key

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData

#: Element collections of a SpatialData object.
KINDS = ("images", "labels", "points", "shapes")


@dataclass
class Section:
    """One section, resolved: its object, table, spots (own coordinate system) and the elements that travel with it."""

    name: str
    sdata: SpatialData
    table: AnnData
    table_key: str
    region: str
    coordinate_system: str
    coords: np.ndarray  # (n, 2) in the section's coordinate system
    radius_um: np.ndarray  # spot radius, micrometres
    um: float  # micrometres per coordinate unit
    elements: list[str]
    measured: bool
    shared: frozenset[str] = frozenset()  # elements common to several sections (one table split by section)


Raw = list[tuple[str | None, Any, str | None]]


def as_sections(sdatas: Any, sections: Sequence[str] | None) -> Raw:
    """``[(name or None, sdata, table_key or None)]`` from a mapping, a sequence or one SpatialData."""
    if is_spatialdata(sdatas):
        keys = list(sdatas.tables.keys())
        if len(keys) < 2:
            raise StmapInputError(
                f"A single SpatialData with {len(keys)} table(s) and no section column holds one section at most; "
                "stacking needs at least two. Pass a list of per-section SpatialData objects, one object with one "
                "table per section, or one table whose obs[section_key] names each spot's section."
            )
        return [(None, sdatas, k) for k in keys]
    if isinstance(sdatas, Mapping):
        out: Raw = [(str(k), v, None) for k, v in sdatas.items()]
    elif isinstance(sdatas, Sequence) and not isinstance(sdatas, str):
        out = [(None, v, None) for v in sdatas]
    else:
        raise TypeError(f"Expected SpatialData objects (a list, a dict or one object), got {type(sdatas).__name__}.")
    for _, v, _ in out:
        if not is_spatialdata(v):
            raise TypeError(f"Every section must be a SpatialData object, got {type(v).__name__}.")
    return out


def pick_table(sdata: SpatialData, name: str | None, given: str | None) -> str:
    """The table of one section: ``given``, else the one named like the section, else its only table."""
    keys = list(sdata.tables.keys())
    if given is not None:
        if given not in keys:
            raise unknown_key("Table", given, keys, "the section's tables")
        return given
    if name is not None and name in keys:
        return name
    if len(keys) == 1:
        return keys[0]
    raise StmapInputError(
        f"Section {name!r} holds several tables ({', '.join(map(repr, keys))}) and none is named after it; pass "
        "`table_keys=` (one table key per section)."
    )


def section_names(raw: Raw, sections: Sequence[str] | None, table_keys: list[str | None]) -> list[str]:
    """Names of the sections: ``sections``, else the dict keys, else the table names."""
    if sections is not None:
        sections = [str(s) for s in sections]
        if len(sections) != len(raw):
            raise StmapInputError(f"`sections` names {len(sections)} sections but {len(raw)} were given.")
        return sections
    names = []
    for i, (name, sdata, tk) in enumerate(raw):
        if name is not None:
            names.append(name)
        elif tk is not None:
            names.append(tk)
        else:
            given = table_keys[i]
            names.append(given if given is not None else pick_table(sdata, None, None) if len(sdata.tables) else "")
    return names


# ----------------------------------------------------------------------------------------------------------------------
# one table holding several sections
# ----------------------------------------------------------------------------------------------------------------------
def _one_table_key(sdata: SpatialData, table_keys: Any) -> str | None:
    """The table to split: ``table_keys`` when one name, else the object's only table; ``None``: nothing to split."""
    keys = list(sdata.tables.keys())
    if isinstance(table_keys, str):
        if table_keys not in keys:
            raise unknown_key("Table", table_keys, keys, "sdata.tables")
        return table_keys
    return keys[0] if table_keys is None and len(keys) == 1 else None


def _present_sections(table: AnnData, table_key: str, section_key: str, sections: Any) -> list[str]:
    """The sections to take from ``obs[section_key]`` (all, in category or appearance order, or ``sections``)."""
    import pandas as pd

    col = table.obs[section_key]
    present = [str(c) for c in pd.unique(col.dropna().astype(str))]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = [str(c) for c in col.cat.categories if str(c) in set(present)]
    names = [str(x) for x in (sections if sections is not None else present)]
    unknown = [n for n in names if n not in set(present)]
    if unknown:
        raise unknown_key("Section", unknown[0], present, f"obs[{section_key!r}] of table {table_key!r}")
    return names


def _annotation(table: AnnData, table_key: str) -> tuple[str, str]:
    attrs = table.uns.get(Key.uns.spatialdata_attrs) or {}
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if region_key is None or instance_key is None or attrs.get("region") is None:
        raise StmapInputError(
            f"Table {table_key!r} annotates no element; link it to the spots with "
            "`sdata.set_table_annotates_spatialelement`."
        )
    return region_key, instance_key


def _points_subset(pdf: pd.DataFrame, transformations: dict) -> Any:
    from spatialdata.models import PointsModel

    cols = [c for c in ("x", "y", "z") if c in pdf.columns]
    return PointsModel.parse(pdf, coordinates={c: c for c in cols}, transformations=transformations)


def _spots_of(sdata: SpatialData, region: str, ids: np.ndarray, section: str) -> Any:
    """The spots ``ids`` of element ``region`` (shapes or points), with the element's transformations."""
    from spatialdata.transformations import get_transformation

    from ..._core._elements import with_transformations
    from ..._core._resolve import _get_indexer

    el = sdata[region]
    if region in sdata.labels:
        raise StmapInputError(f"Section {section!r}: its table annotates labels; stacking needs spots (shapes/points).")
    if region in sdata.shapes:
        sub = el.iloc[_get_indexer(el.index, ids)]
    else:
        pdf = el.compute()
        sub = _points_subset(pdf.iloc[_get_indexer(pdf.index, ids)], get_transformation(el, get_all=True))
    return with_transformations(sub, dict(get_transformation(el, get_all=True)), copy=True, replace=True)


def _section_sdata(
    sdata: SpatialData,
    table: AnnData,
    table_key: str,
    section: str,
    sec_values: np.ndarray,
    row_region: np.ndarray,
    keep: set[str],
) -> SpatialData:
    """One section of a table holding several: its rows, its spots (one element) and the elements in ``keep``."""
    from spatialdata import SpatialData

    from ..._core._elements import make_table

    region_key, instance_key = _annotation(table, table_key)
    rows = np.flatnonzero(sec_values == section)
    regs = set(row_region[rows])
    if len(regs) != 1:
        raise StmapInputError(
            f"Section {section!r} has spots in several elements ({sorted(regs)}); one element per section is needed."
        )
    region = regs.pop()
    ids = table.obs[instance_key].to_numpy()[rows]
    only = bool((sec_values[row_region == region] == section).all())
    sub = _spots_of(sdata, region, ids, section)
    name = region if only else f"{section}_{region}"
    sub_table = table[rows].copy()
    sub_table.uns.pop(Key.uns.spatialdata_attrs, None)
    sub_table = make_table(sub_table, region=name, instance_ids=ids, region_key=region_key, instance_key=instance_key)
    els = {k: {e: v for e, v in getattr(sdata, k).items() if e in keep} for k in KINDS}
    els["shapes" if region in sdata.shapes else "points"][name] = sub
    return SpatialData(**els, tables={table_key: sub_table}, attrs=dict(sdata.attrs))


def split_one_table(
    sdata: SpatialData, sections: Any, table_keys: Any, section_key: str
) -> tuple[dict[str, SpatialData], frozenset[str]] | None:
    """One SpatialData whose one table holds several sections (``obs[section_key]``) -> ``{section: SpatialData}``.

    Per section: the table's rows of that section, annotating the section's spots (the annotated element subset to
    them, named ``'<section>_<element>'`` unless the element holds that section only), plus the elements whose names
    start with the section name; every other element (e.g. one image of the whole slide) is shared by all sections.
    ``None`` when the object is not one table of several sections.
    """
    table_key = _one_table_key(sdata, table_keys)
    if table_key is None:
        return None
    table = sdata.tables[table_key]
    if section_key not in table.obs:
        raise unknown_key(
            "Section column",
            section_key,
            table.obs.columns,
            f"obs of table {table_key!r}",
            hint="One table holding several sections needs a column naming each spot's section; pass "
            "`section_key=`, or pass one SpatialData per section.",
        )
    names = _present_sections(table, table_key, section_key, sections)
    region_key, _ = _annotation(table, table_key)
    sec_values = table.obs[section_key].astype(str).to_numpy()
    row_region = table.obs[region_key].astype(str).to_numpy()
    regions = set(row_region)
    loose = [e for k in KINDS for e in getattr(sdata, k) if e not in regions]  # elements no table row annotates
    own = {n: {e for e in loose if e.startswith(n)} for n in names}
    owned = set().union(*own.values())
    shared = frozenset(e for e in loose if e not in owned)
    out = {n: _section_sdata(sdata, table, table_key, n, sec_values, row_region, own[n] | shared) for n in names}
    return out, shared
