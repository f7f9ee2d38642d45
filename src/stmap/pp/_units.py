"""Micrometres per coordinate unit, as stmap infers them from what the platform recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stmap._core import StmapInputError, resolve
from stmap._core._constants import Key
from stmap._core._docs import inject_docs
from stmap._core._params import Instance, validate_params

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["coordinate_units"]


@validate_params(
    table_key=[Instance((str,)), None],
    coordinate_system=[Instance((str,)), None],
    record=Instance((bool,)),
)
@inject_docs()
def coordinate_units(
    sdata: SpatialData | AnnData,
    table_key: str | None = None,
    *,
    coordinate_system: str | None = None,
    record: bool = True,
) -> float:
    """Micrometres per unit of the coordinate system a table's spots or cells are expressed in.

    Every tool reads the same number: the unit recorded in ``sdata.attrs['stmap_coordinate_units']``, else what the
    platform records (Visium: ``spot_diameter_fullres`` spans 65 µm, checked against the 100 µm spot pitch; Visium
    HD: the bin size of ``square_XXXum``; Xenium and MERSCOPE: transcripts and boundaries stored in micrometres and
    scaled into ``'global'``). Use it to express a length in the coordinate system's units, e.g. a density bandwidth
    of 15 µm on a Xenium object: ``bandwidth=15 / st.pp.coordinate_units(sdata)``.

    Parameters
    ----------
    {sdata}
    {table_key}
    {coordinate_system}
    record
        Store an inferred unit in ``sdata.attrs['stmap_coordinate_units'][coordinate_system]`` (as ``{{'um_per_unit':
        ..., 'source': ...}}``; tools also store it when they write their results).

    Returns
    -------
    Micrometres per coordinate unit.

    Raises
    ------
    StmapInputError
        When nothing records the unit (record it yourself: ``sdata.attrs['stmap_coordinate_units'] =
        {{'<coordinate system>': <µm per unit>}}``) or when the platform's records contradict each other.

    See Also
    --------
    :func:`stmap.pp.to_spatialdata`
        Records the unit of a converted AnnData (``mpp=``).
    :doc:`/tutorials/xenium`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.coordinate_units(sdata, "spots")  # stmap's own data: 'global' is in micrometres
    1.0
    """
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    um = ctx.require_um_per_unit()
    info = ctx.unit_info
    if record and ctx.sdata is not None and info is not None and not info.recorded:
        units = dict(ctx.sdata.attrs.get(Key.units_attr, {}) or {})
        units[ctx.coordinate_system] = info.to_attr()
        ctx.sdata.attrs[Key.units_attr] = units
    if um <= 0:  # pragma: no cover - guarded by the platform rules
        raise StmapInputError(f"Invalid unit {um!r} µm per unit for {ctx.coordinate_system!r}.")
    return float(um)
