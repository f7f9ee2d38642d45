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

__all__ = ["mapping", "mapping_confidence"]

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


@validate_params(
    key=Instance((str,)),
    truth=[Instance((pd.Series, dict)), None],
    n_bins=Interval(int, 2, None),
    **PLOT_PARAMS,
)
@inject_docs()
def mapping_confidence(
    sdata: SpatialData,
    *,
    key: str = Key.default.mapping,
    table_key: str | None = None,
    truth: pd.Series | dict[str, str] | None = None,
    n_bins: int = 5,
    ax: Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> np.ndarray | None:
    """How sure the greedy placement is of each cell: the confidence's histogram, and against the truth if known.

    Reads the placed-cells table of a greedy :func:`stmap.tl.map_cells` run
    (``obs[Key.mapping(key).placement_confidence]``). With ``truth`` (the true spot of each reference cell, e.g. a
    simulation's ``cells.obs['spot_id']``), a second panel is the reliability diagram: the share of cells in their
    true spot against the mean confidence, per confidence bin (on the diagonal when the confidence is calibrated),
    with the number of cells per bin.

    Parameters
    ----------
    sdata
        :class:`spatialdata.SpatialData` after a greedy :func:`stmap.tl.map_cells` run.
    key
        ``key_added`` of that run.
    {table_key}
    truth
        True spot id per reference cell id (:class:`pandas.Series` or dict); cells without one are left out.
    n_bins
        Equal-width confidence bins.
    {plot}

    Returns
    -------
    {plot_returns}
    One panel without ``truth``, two with it.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(0, n_cells=300)
    >>> cells = sdata.tables["cells"]
    >>> st.tl.map_cells(sdata, cells.copy(), table_key="spots", mode="greedy", cells_per_spot="n_cells")
    >>> axs = st.pl.mapping_confidence(sdata, table_key="spots", truth=cells.obs["spot_id"], show=False)
    >>> len(axs)
    2
    """
    ctx = resolve(sdata, table_key)
    conf_key = Key.mapping(key).placement_confidence
    name = Key.table.cells(str(ctx.table_key), key)
    tables = getattr(sdata, "tables", {})
    if name not in tables or conf_key not in tables[name].obs:
        raise StmapInputError(
            f"No placement confidence in table {name!r} (obs[{conf_key!r}]): run `st.tl.map_cells(..., "
            f"mode='greedy', key_added={key!r})` on a problem small enough for the exact placement first."
        )
    obs = tables[name].obs
    conf = obs[conf_key].to_numpy(dtype=float)
    fig, axs, own = panels(ax, 1 + int(truth is not None), ncols=2, panel=(3.6, 3.2), figsize=figsize, dpi=dpi)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    axs[0].hist(conf, bins=edges, color="0.4")
    axs[0].set(xlabel="placement confidence", ylabel="placed cells", title="confidence")
    if truth is not None:
        t = pd.Series(truth).astype(object)
        true_spot = t.reindex(obs["cell_id"].astype(str).to_numpy()).to_numpy()
        has = pd.notna(true_spot)
        hit = obs["spot_id"].astype(str).to_numpy()[has] == true_spot[has].astype(str)
        table = reliability_table(conf[has], hit, edges)
        a = axs[1]
        a.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
        a.plot(table["mean_confidence"], table["accuracy"], "o-", color="C0")
        for _, row in table.iterrows():
            a.annotate(
                f"{int(row['n'])}",
                (row["mean_confidence"], row["accuracy"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
            )
        a.set(
            xlim=(0, 1), ylim=(0, 1), xlabel="mean confidence", ylabel="cells in their true spot", title="reliability"
        )
    return finish(fig, axs, own=own, save=save, show=show, dpi=dpi)


def reliability_table(conf: np.ndarray, hit: np.ndarray, edges: np.ndarray) -> pd.DataFrame:
    """Per confidence bin: cells, mean confidence and share of hits (bins without cells left out)."""
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, edges.size - 2)
    rows = [
        {
            "bin": f"[{edges[k]:.1f}, {edges[k + 1]:.1f}]",
            "n": int((b == k).sum()),
            "mean_confidence": float(conf[b == k].mean()),
            "accuracy": float(hit[b == k].mean()),
        }
        for k in range(edges.size - 1)
        if (b == k).any()
    ]
    return pd.DataFrame(rows, columns=["bin", "n", "mean_confidence", "accuracy"])
