"""Gather the sections: resolve each one's table, spots, units and spot radius; order them by ``z``; pick genes."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._core import StmapInputError, is_spatialdata
from ..._core._constants import Key
from ._sections import KINDS, Raw, Section, as_sections, pick_table, section_names, split_one_table

if TYPE_CHECKING:
    from spatialdata import SpatialData


def _table_key_list(table_keys: Any, raw: Raw) -> list[str | None]:
    """One table key (or ``None``) per input, in input order (a dict is applied once the names are known)."""
    if isinstance(table_keys, Mapping) or table_keys is None:
        return [None] * len(raw)
    tk_list = list(table_keys)
    if len(tk_list) != len(raw):
        raise StmapInputError(f"`table_keys` has {len(tk_list)} entries for {len(raw)} sections.")
    return tk_list


def _section(
    name: str,
    sdata: SpatialData,
    table_key: str,
    coordinate_system: str | None,
    spot_diameter: float | None,
    single: bool,
    shared: frozenset[str],
) -> Section:
    """One section resolved: coordinates, micrometres per unit, spot radii (um) and the elements it carries."""
    from ..._core import resolve

    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    if ctx.element_type == "labels":
        raise StmapInputError(f"Section {name!r}: its table annotates labels; stacking needs spots (shapes/points).")
    um = ctx.um_per_unit
    if um is None:
        raise StmapInputError(
            f"Section {name!r}: the unit of coordinate system {ctx.coordinate_system!r} is unknown. Record it, "
            f"e.g. `sdata.attrs['{Key.units_attr}'] = {{'{ctx.coordinate_system}': 'um'}}`."
        )
    if ctx.region is None:
        raise StmapInputError(f"Section {name!r}: table {table_key!r} annotates no element; stacking needs its spots.")
    if spot_diameter is not None:
        r = np.full(ctx.adata.n_obs, float(spot_diameter) / 2)
    elif ctx.diameters is not None:
        r = np.asarray(ctx.diameters, dtype=float) * um / 2
    else:
        raise StmapInputError(
            f"Section {name!r}: the spot size is unknown (element {ctx.region!r} has no radius); pass "
            "`spot_diameter=` (micrometres)."
        )
    els = [e for kind in KINDS for e in getattr(sdata, kind)]
    if single:  # one object with one table per section: its region and the elements named after the section
        els = [ctx.region] + [e for e in els if e != ctx.region and e.startswith(name)]
    return Section(
        name=name,
        sdata=sdata,
        table=ctx.adata,
        table_key=table_key,
        region=ctx.region,
        coordinate_system=ctx.coordinate_system,
        coords=ctx.coords,
        radius_um=r,
        um=um,
        elements=els,
        measured=ctx.adata.n_vars > 0,
        shared=shared,
    )


def gather(
    sdatas: Any,
    sections: Sequence[str] | None,
    table_keys: Any,
    coordinate_system: str | None,
    spot_diameter: float | None,
    section_key: str = Key.obs.section,
) -> list[Section]:
    """Every section resolved (in input order); one table of several sections is split first."""
    shared: frozenset[str] = frozenset()
    split = split_one_table(sdatas, sections, table_keys, section_key) if is_spatialdata(sdatas) else None
    if split is not None:
        (sdatas, shared), sections, table_keys = split, None, None
    raw = as_sections(sdatas, sections)
    if len(raw) < 2:
        raise StmapInputError(f"Stacking needs at least two sections, got {len(raw)}.")
    tk_list = _table_key_list(table_keys, raw)
    names = section_names(raw, sections, tk_list)
    if isinstance(table_keys, Mapping):
        tk_list = [table_keys.get(n) for n in names]
    if len(set(names)) != len(names) or "" in names:
        raise StmapInputError(f"Section names must be distinct and non-empty, got {names}; pass `sections=`.")
    single = is_spatialdata(sdatas)
    out = []
    for name, (_, sdata, tk), given in zip(names, raw, tk_list):
        if not len(sdata.tables):
            raise StmapInputError(f"Section {name!r} holds no table; every section needs a table of its spots.")
        table_key = tk if tk is not None else pick_table(sdata, name, given)
        out.append(_section(name, sdata, table_key, coordinate_system, spot_diameter, single, shared))
    return out


def median_spacing(xy: np.ndarray) -> float:
    """Median distance from a spot to its nearest neighbour (NaN for fewer than two spots)."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return float("nan")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def order_by_z(secs: list[Section], z: Any, spacing: float) -> tuple[list[Section], np.ndarray]:
    """The sections sorted by their position ``z`` (um) and those positions (default: ``spacing`` apart)."""
    n = len(secs)
    if z is None:
        zs = np.arange(n, dtype=float) * spacing
    elif isinstance(z, numbers.Real):
        zs = np.arange(n, dtype=float) * float(z)
    else:
        if isinstance(z, Mapping):
            zs = np.asarray([z[s.name] for s in secs], dtype=float)
        else:
            zs = np.asarray(z, dtype=float)
        if zs.shape != (n,) or not np.isfinite(zs).all():
            raise StmapInputError(f"z must give one finite position (um) per section ({n}), got {zs.shape}.")
        if len(np.unique(zs)) != n:
            raise StmapInputError(f"Sections must have distinct z positions, got {zs.tolist()}.")
    order = np.argsort(zs, kind="stable")
    return [secs[i] for i in order], zs[order]


def gene_union(secs: list[Section], genes: str) -> list[str]:
    """The genes of the stack: shared by (``'intersection'``) or present in (``'union'``) the measured sections."""
    measured = [s for s in secs if s.measured]
    if not measured:
        raise StmapInputError("No section has expression (every table has 0 genes); at least one must be measured.")
    names = [list(map(str, s.table.var_names)) for s in measured]
    common = set(names[0]).intersection(*names[1:])
    if not common:
        raise StmapInputError(
            "The measured sections share no genes (disjoint var_names); use the same gene identifiers in every "
            "section (e.g. all symbols or all Ensembl ids)."
        )
    if genes == "intersection":
        return [g for g in names[0] if g in common]
    return list(dict.fromkeys(g for n in names for g in n))
