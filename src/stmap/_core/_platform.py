"""What the platforms record: the obvious coordinate system, image and physical unit of a SpatialData object.

SpatialData made by spatialdata-io keeps the platform's own frames. A Visium sample lives in ``'<id>'`` (full-resolution
pixels, the spots' identity frame) and in ``'<id>_downscaled_hires'`` / ``'<id>_downscaled_lowres'``; Visium HD adds one
table per bin size (``'square_008um'``) annotating ``'<id>_square_008um'``; Xenium's ``'global'`` is in morphology
pixels, with transcripts and boundaries scaled from micrometres. None of them records "micrometres per unit" as such,
but each records enough to know it:

========== ============================================================================================================
platform   micrometres per unit of the spots' frame
========== ============================================================================================================
Visium     ``spot_diameter_fullres`` spans 65 µm (the circles' radius is half of it); checked against the 100 µm pitch
           of the array coordinates (``array_row``/``array_col``)
Visium HD  a bin of ``square_XXXum`` spans ``XXX`` µm (the squares' side is ``bin_size_um / microns_per_pixel``)
Xenium,    transcripts and boundaries are stored in micrometres and scaled into ``'global'``: the scale is
MERSCOPE   ``1 / pixel_size``
========== ============================================================================================================

This module only reads. :func:`infer_units` returns what it found; tools record it once in
``sdata.attrs['stmap_coordinate_units']`` when they write their results, so every later tool reads the same number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _logging as logg
from ._affine import affine_of as _affine
from ._affine import element_coordinate_systems as _systems
from ._affine import linear_scale as _scale
from ._constants import Key
from ._errors import StmapInputError

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "UnitInfo",
    "infer_units",
    "recorded_units",
    "choose_coordinate_system",
    "bin_size_um",
    "VISIUM_SPOT_FULLRES_UM",
    "VISIUM_PITCH_UM",
    "VISIUM_CAPTURE_UM",
    "visium_capture_factor",
]

#: Space Ranger's ``spot_diameter_fullres`` is the diameter, in full-resolution pixels, of a 65 µm circle.
VISIUM_SPOT_FULLRES_UM = 65.0
#: Centre-to-centre distance of neighbouring Visium spots.
VISIUM_PITCH_UM = 100.0
#: Diameter of a Visium capture spot (what is measured; Space Ranger's 65 µm includes a margin).
VISIUM_CAPTURE_UM = 55.0
#: Largest disagreement tolerated between two records of the same unit.
UNIT_TOLERANCE = 0.10

_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "mm": 1000.0,
    "millimeter": 1000.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
}
_BIN_RE = re.compile(r"square_(\d+)um")
_UM_INTRINSIC_READERS = ("xenium", "merscope")


@dataclass(frozen=True)
class UnitInfo:
    """Micrometres per unit of one coordinate system, and where the number comes from.

    Attributes
    ----------
    um_per_unit
        Micrometres per coordinate unit.
    source
        What recorded it (e.g. ``"visium spot_diameter_fullres (65 µm)"``, ``"recorded"``).
    recorded
        Whether it was already in ``sdata.attrs`` (``False``: inferred now; tools record it with their results).
    """

    um_per_unit: float
    source: str
    recorded: bool = False

    def to_attr(self) -> dict[str, Any]:
        """The entry stored in ``sdata.attrs['stmap_coordinate_units'][coordinate_system]``."""
        return {"um_per_unit": float(self.um_per_unit), "source": self.source}


def _unit_value(entry: Any) -> float | None:
    """Micrometres per unit from one ``attrs['stmap_coordinate_units']`` entry (a unit name, a number, a dict)."""
    if isinstance(entry, dict):
        entry = entry.get("um_per_unit")
    if isinstance(entry, bool) or entry is None:
        return None
    if isinstance(entry, int | float | np.number):
        v = float(entry)
        return v if np.isfinite(v) and v > 0 else None
    return _UNIT_TO_UM.get(str(entry).lower())


def recorded_units(sdata: SpatialData, coordinate_system: str) -> UnitInfo | None:
    """The unit recorded for ``coordinate_system`` in ``sdata.attrs['stmap_coordinate_units']``, if any."""
    units = dict(sdata.attrs.get(Key.units_attr, {}) or {})
    if coordinate_system not in units:
        return None
    v = _unit_value(units[coordinate_system])
    return None if v is None else UnitInfo(v, "recorded", recorded=True)


def bin_size_um(name: str | None) -> int | None:
    """The bin size in micrometres of a Visium HD element or table name (``'x_square_008um'`` -> 8), else ``None``."""
    if not name:
        return None
    m = _BIN_RE.search(str(name))
    return int(m.group(1)) if m else None


def _annotating_tables(sdata: SpatialData, element_name: str) -> list[tuple[str, Any]]:
    """``(name, table)`` of every table that annotates ``element_name`` (alone or among other elements)."""
    out = []
    for name, t in sdata.tables.items():
        region = (t.uns.get(Key.uns.spatialdata_attrs) or {}).get("region")
        regions = [region] if isinstance(region, str) else list(region or [])
        if element_name in regions:
            out.append((name, t))
    return out


def _has_array_coords(sdata: SpatialData, element_name: str) -> bool:
    """Whether a table of the element has Visium's array coordinates (``array_row``, ``array_col``)."""
    return any({"array_row", "array_col"} <= set(t.obs.columns) for _, t in _annotating_tables(sdata, element_name))


def _visium_pitch_um_per_unit(sdata: SpatialData, name: str, el: Any) -> float | None:
    """Micrometres per element unit from the array lattice (100 µm pitch), when the table has array coordinates."""
    for _, t in _annotating_tables(sdata, name):
        attrs = t.uns.get(Key.uns.spatialdata_attrs) or {}
        ik, rk = attrs.get("instance_key"), attrs.get("region_key")
        if not {"array_row", "array_col"} <= set(t.obs.columns) or ik not in t.obs:
            continue
        if rk in t.obs:  # a table over several samples: this element's rows only
            t = t[t.obs[rk].astype(str).to_numpy() == str(name)]
        from ._resolve import _get_indexer

        pos = _get_indexer(pd.Index(el.index), t.obs[ik].to_numpy())
        ok = pos >= 0
        if ok.sum() < 3:
            continue
        xy = np.c_[el.geometry.x.to_numpy(dtype=float), el.geometry.y.to_numpy(dtype=float)][pos[ok]]
        col = t.obs["array_col"].to_numpy(dtype=float)[ok]
        row = t.obs["array_row"].to_numpy(dtype=float)[ok]
        # hexagonal lattice: neighbours 100 µm apart at (col +- 2) and (row +- 1, col +- 1)
        lattice = np.c_[col * VISIUM_PITCH_UM / 2, row * VISIUM_PITCH_UM * np.sqrt(3) / 2, np.ones(len(col))]
        if np.linalg.matrix_rank(lattice) < 3:
            continue
        coef, *_ = np.linalg.lstsq(lattice, xy, rcond=None)  # px = lattice_um @ coef
        px_per_um = float(np.sqrt(abs(np.linalg.det(coef[:2, :2]))))
        if px_per_um > 0:
            return 1.0 / px_per_um
    return None


def _shapes_rule(sdata: SpatialData, name: str, el: Any, reader: str | None) -> tuple[float, str] | None:
    """Micrometres per *element* unit for one shapes element, from what its platform records."""
    if len(el) == 0:
        return None
    geom = el.geometry
    bin_um = bin_size_um(name) or next((bin_size_um(n) for n, _ in _annotating_tables(sdata, name)), None)
    if bin_um is not None:  # Visium HD bins: squares (or circles) spanning bin_um
        if (geom.geom_type == "Point").all() and "radius" in el.columns:
            side = float(np.median(2.0 * el["radius"].to_numpy(dtype=float)))
        else:
            step = max(1, len(geom) // 20_000)  # bins are all alike: a sample of them is enough (millions at 2 µm)
            side = float(np.sqrt(np.median(geom.iloc[::step].area.to_numpy(dtype=float))))
        if side > 0:
            return bin_um / side, f"visium_hd bin size {bin_um} µm ({name!r})"
        return None
    is_visium = reader == "visium" or (reader is None and _has_array_coords(sdata, name))
    if is_visium and (geom.geom_type == "Point").all() and "radius" in el.columns:
        radius = el["radius"].to_numpy(dtype=float)
        if not np.allclose(radius, radius[0], rtol=1e-6):
            return None
        um = VISIUM_SPOT_FULLRES_UM / (2.0 * float(radius[0]))
        pitch = _visium_pitch_um_per_unit(sdata, name, el)
        if pitch is not None and abs(pitch / um - 1.0) > UNIT_TOLERANCE:
            raise StmapInputError(
                f"The units of Visium element {name!r} contradict each other: its spot diameter "
                f"(spot_diameter_fullres = {2 * radius[0]:.4g} px spans 65 µm) gives {um:.4g} µm per unit, but the "
                f"100 µm pitch of its array coordinates gives {pitch:.4g} µm per unit ({abs(pitch / um - 1):.0%} "
                "apart). Check the scale factors (tissue_positions vs scalefactors_json.json), then pass `mpp=` or "
                f"record the unit: `sdata.attrs['{Key.units_attr}'] = {{'<coordinate system>': <µm per unit>}}`."
            )
        return um, "visium spot_diameter_fullres (65 µm)"
    return None


def infer_units(sdata: SpatialData, coordinate_system: str, region: str | None = None) -> UnitInfo | None:
    """Micrometres per unit of ``coordinate_system``: recorded, or inferred from what the platform records.

    Parameters
    ----------
    sdata
        The SpatialData.
    coordinate_system
        The coordinate system.
    region
        The element a tool works on: it is asked first (then the other elements in the coordinate system).

    Returns
    -------
    A :class:`UnitInfo`, or ``None`` when nothing records the unit.

    Raises
    ------
    StmapInputError
        When two records disagree by more than 10 % (e.g. Visium's spot diameter vs its spot pitch, or two bin sizes).
    """
    rec = recorded_units(sdata, coordinate_system)
    if rec is not None:
        return rec
    reader = sdata.attrs.get("spatialdata_io_reader")
    reader = None if reader is None else str(reader).lower()
    found: list[tuple[float, str]] = []
    names = list(sdata.shapes.keys())
    if region in names:
        names = [region] + [n for n in names if n != region]
    for name in names:
        el = sdata.shapes[name]
        if coordinate_system not in _systems(el):
            continue
        rule = _shapes_rule(sdata, name, el, reader)
        if rule is not None:
            found.append((rule[0] / _scale(_affine(el, coordinate_system)), rule[1]))
    if reader in _UM_INTRINSIC_READERS:  # transcripts and boundaries in µm, scaled into the pixel frame
        for kind in ("points", "shapes"):
            for name, el in getattr(sdata, kind).items():
                if coordinate_system not in _systems(el):
                    continue
                from spatialdata.models import get_axes_names

                if kind == "points" and not {"x", "y"} <= set(get_axes_names(el)):
                    continue
                m = _affine(el, coordinate_system)
                if np.allclose(m, np.eye(3)):
                    continue  # stored in the frame itself: says nothing about micrometres
                found.append((1.0 / _scale(m), f"{reader} {kind} {name!r} stored in µm"))
    if not found:
        return None
    values = np.array([v for v, _ in found])
    if values.max() / values.min() - 1.0 > UNIT_TOLERANCE:
        listing = "; ".join(f"{s}: {v:.4g}" for v, s in found)
        raise StmapInputError(
            f"The platform's records of the unit of coordinate system {coordinate_system!r} disagree ({listing} µm per "
            "unit). Pass `mpp=` or record the unit: "
            f"`sdata.attrs['{Key.units_attr}'] = {{{coordinate_system!r}: <µm per unit>}}`."
        )
    return UnitInfo(float(found[0][0]), found[0][1])


def choose_coordinate_system(sdata: SpatialData, name: str, available: list[str], *, what: str = "Element") -> str:
    """The obvious coordinate system of element ``name`` among ``available`` (its coordinate systems).

    ``'global'`` when the element lives there, else its only one; else, among those it shares with an image (all of
    them if it shares none), its own identity frame, else the frame where it is largest (full resolution before
    ``*_downscaled_hires`` before ``*_downscaled_lowres``). The choice is logged.

    Raises
    ------
    StmapInputError
        When two frames tie, listing the choices.
    """
    if Key.cs in available:
        return Key.cs
    if len(available) == 1:
        return available[0]
    with_image = {cs for im in sdata.images.values() for cs in _systems(im)}
    cands = [cs for cs in available if cs in with_image] or list(available)
    if len(cands) == 1:
        chosen = cands[0]
    else:
        el = sdata[name]
        keyed = []
        for cs in cands:
            m = _affine(el, cs)
            keyed.append(((bool(np.allclose(m, np.eye(3))), round(_scale(m), 9)), cs))
        keyed.sort(key=lambda k: k[0], reverse=True)
        if keyed[0][0] == keyed[1][0]:
            raise StmapInputError(
                f"{what} {name!r} lives in several coordinate systems ({', '.join(map(repr, available))}) and none is "
                f"the obvious one (no 'global', and {keyed[0][1]!r} and {keyed[1][1]!r} map it alike); pass "
                "`coordinate_system=`."
            )
        chosen = keyed[0][1]
    others = [cs for cs in available if cs != chosen]
    logg.info(
        f"using coordinate system {chosen!r} for {what.lower()} {name!r} (its full-resolution frame shared with the "
        f"image; also available: {', '.join(map(repr, others))}); pass `coordinate_system=` to choose another"
    )
    return chosen


def visium_capture_factor(sdata: SpatialData, name: str, diameter_um: float) -> float:
    """Factor from the circles' diameter to the capture spot's: ``55 / 65`` for Space Ranger circles, else 1.

    spatialdata-io draws Visium spots with Space Ranger's ``spot_diameter_fullres``, the span of a theoretical 65 µm
    spot; the capture area that holds the measured cells is 55 µm across. Tools that need the spot's size (cells per
    spot, where placed cells go, patch sizes) use the capture spot.
    """
    reader = sdata.attrs.get("spatialdata_io_reader")
    el = sdata.shapes.get(name) if hasattr(sdata.shapes, "get") else None
    if el is None or len(el) == 0 or not (el.geometry.geom_type == "Point").all() or "radius" not in el.columns:
        return 1.0
    if str(reader).lower() != "visium" and not (reader is None and _has_array_coords(sdata, name)):
        return 1.0
    if bin_size_um(name) is not None or abs(diameter_um / VISIUM_SPOT_FULLRES_UM - 1.0) > 0.01:
        return 1.0
    return VISIUM_CAPTURE_UM / VISIUM_SPOT_FULLRES_UM
