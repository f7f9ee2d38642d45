"""Results of :func:`stmap.tl.map_cells`: cell-type fractions over the spots (and H&E), and the placed cells."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core import Key, StmapInputError, inject_docs, is_spatialdata, resolve, unknown_key
from stmap._core._params import Instance, Interval, validate_params

from ._spatial import draw
from ._utils import PLOT_PARAMS, data_limits, finish, panels

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

    from stmap._core._resolve import TableContext

__all__ = ["mapping"]

#: Columns of the placed-cells table that are not the cell type.
_CELL_ID_COLUMNS = ("cell_id", "spot_id", Key.obs.region, Key.obs.instance)


@validate_params(
    key=Instance((str,)),
    cell_types=[Instance((list, tuple)), None],
    cells=Instance((bool,)),
    ncols=Interval(int, 1, None),
    cell_size=[Interval(float, 0, None, "neither"), None],
    **PLOT_PARAMS,
)
@inject_docs()
def mapping(
    sdata: SpatialData | AnnData,
    *,
    key: str = Key.default.mapping,
    table_key: str | None = None,
    cell_types: Sequence[str] | None = None,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    cells: bool = True,
    ncols: int = 4,
    cmap: str = "magma",
    cell_size: float | None = None,
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> np.ndarray | None:
    """Cell-type fractions over the spots (on the tissue image) and the placed cells, one panel each.

    Each fraction panel colours the spots by the fraction of their cells of one type (NaN for spots without
    cells: grey). The last panel draws the cells that :func:`stmap.tl.map_cells` placed in the spots, coloured by
    type with the palette of the placed-cells table (``uns['<cell type column>_colors']``; scanpy's default palette
    for that many types is stored there when it has none), without the image so that the colours read, with the
    legend beside the panel.

    Parameters
    ----------
    {sdata}
    key
        ``key_added`` of the :func:`stmap.tl.map_cells` run: the fractions are read from
        ``obsm[Key.mapping(key).fractions]`` and the placed cells from the table ``Key.table.cells(table_key, key)``.
    {table_key}
    cell_types
        Types to draw; default all mapped types.
    image_key
        Image drawn below the spots of the fraction panels (see :func:`stmap.pl.spatial`); ``False`` for none.
    coordinate_system
        Coordinate system to draw in; default: the one the tools choose (see :func:`stmap.pl.spatial`).
    cells
        Add a panel with the placed cells coloured by type (SpatialData only).
    ncols
        Panels per row.
    cmap
        Colormap of the fractions.
    cell_size
        Marker area of the placed cells in points²; default: smaller the more cells there are.
    {plot}

    Returns
    -------
    {plot_returns}
    The panels are the fractions in ``cell_types`` order, then the placed cells. ``sdata`` is not modified, except
    the palette stored in the placed-cells table.
    """
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    fractions = _fractions(ctx, key)
    types = _select_types(fractions, cell_types, Key.mapping(key).fractions)
    cells_name = Key.table.cells(str(ctx.table_key), key) if cells and ctx.sdata is not None else None
    has_cells = cells_name is not None and cells_name in getattr(sdata, "tables", {})
    plot_data, columns = _plot_data(sdata, ctx, fractions, types, cells_name if has_cells else None)

    n = len(types) + int(has_cells)
    lim = data_limits(ctx.coords)
    aspect = float(np.clip((lim[3] - lim[2]) / max(lim[1] - lim[0], 1e-9), 0.2, 5.0))
    cell = (4.4, 2.8 * aspect + 1.0)  # axes ~2.8 in wide beside a colour bar, as tall as the data: no empty bands
    fig, axs, own = panels(ax, n, ncols=ncols, panel=cell, figsize=figsize, dpi=dpi, what="fractions, cells")
    panel = resolve(plot_data, ctx.table_key, coordinate_system=None if ctx.sdata is None else ctx.coordinate_system)
    for a, t in zip(axs, types, strict=False):
        draw(a, panel, columns[t], image_key=image_key, cmap=cmap, title=t, label="fraction of cells")
    if has_cells:
        cell_ctx = resolve(plot_data, cells_name, coordinate_system=ctx.coordinate_system)
        ct_key = _cell_type_column(cell_ctx.adata, ctx.adata.uns.get(key))
        size = cell_size if cell_size is not None else float(np.clip(3000 / max(cell_ctx.adata.n_obs, 1), 0.3, 3.0))
        draw(axs[len(types)], cell_ctx, ct_key, image_key=False, size=size, title="placed cells")
    return finish(fig, axs, own=own, save=save, show=show, dpi=dpi)


def _fractions(ctx: TableContext, key: str) -> pd.DataFrame:
    """The run's cell-type fractions (spots x types); a clear error when the table has none under ``key``."""
    fkey = Key.mapping(key).fractions
    if fkey not in ctx.adata.obsm:
        raise StmapInputError(
            f"No mapping result {fkey!r} in the spot table's obsm; run `st.tl.map_cells(sdata, sc_adata, "
            f"key_added={key!r})` first (or pass its `key_added` as `key=`)."
        )
    return ctx.adata.obsm[fkey]


def _select_types(fractions: pd.DataFrame, cell_types: Sequence[str] | None, fkey: str) -> list[str]:
    """The types to draw, as stored (a '/' in a type name is stored as '_', which zarr can store)."""
    from stmap._core._names import safe_key

    if cell_types is None:
        return [str(c) for c in fractions.columns]
    types = [t if t in fractions.columns else safe_key(t) for t in cell_types]
    for t in types:
        if t not in fractions.columns:
            raise unknown_key("Cell type", t, fractions.columns, f"obsm[{fkey!r}]")
    return types


def _plot_data(
    sdata: Any, ctx: TableContext, fractions: pd.DataFrame, types: list[str], cells_name: str | None
) -> tuple[Any, dict[str, str]]:
    """An object to draw from: a copy of the spot table with one ``obs`` column per fraction, the same elements.

    The user's table is not touched; the elements and the placed-cells table are shared, not copied.
    """
    table = ctx.adata.copy()
    columns = {t: f"fraction_{i}" for i, t in enumerate(types)}  # valid names whatever the types are called
    for t, c in columns.items():
        table.obs[c] = fractions[t].to_numpy(dtype=float)
    if not is_spatialdata(sdata):
        return table, columns
    from spatialdata import SpatialData

    tables = {str(ctx.table_key): table}
    elements: dict[str, dict[str, Any]] = {"shapes": {}, "points": {}, "labels": {}}
    elements[str(ctx.element_type)][str(ctx.region)] = sdata[ctx.region]
    if cells_name is not None:
        cells = sdata.tables[cells_name]
        tables[cells_name] = cells
        region = cells.uns[Key.uns.spatialdata_attrs]["region"]
        elements["points"][region] = sdata[region]
    out = SpatialData(images=dict(sdata.images), **elements, tables=tables, attrs=dict(sdata.attrs))
    return out, columns


def _cell_type_column(cells: AnnData, meta: Any) -> str:
    """The placed cells' type column: the run's ``cell_type_key``, else the first annotation column."""
    params = meta.get(Key.uns.params) if isinstance(meta, dict) else None
    recorded = params.get("cell_type_key") if isinstance(params, dict) else None
    if isinstance(recorded, str) and recorded in cells.obs.columns:
        return recorded
    rest = [c for c in cells.obs.columns if c not in _CELL_ID_COLUMNS]
    if not rest:
        raise StmapInputError("The placed-cells table has no cell-type column; pass `cells=False`.")
    return str(rest[0])
