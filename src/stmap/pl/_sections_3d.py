"""Plots of stacked serial sections: measured vs imputed gene per layer, and a 3D scatter of the stack."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from stmap._core._constants import Key
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError, unknown_key
from stmap._core._params import Instance, Interval, Options, validate_params

from ._utils import PLOT_PARAMS, colorbar, data_limits, finish, fit_width, panels, spatial_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

__all__ = ["sections_3d"]

_ASIGN = "ln((c + 1) / sum_genes(c + 1))"
_CP10K = "log1p(counts per 10⁴)"


@validate_params(
    gene=Instance((str,)),
    key=[Instance((str,)), None],
    sections=[Instance((list, tuple)), None],
    show_measured=Instance((bool,)),
    mode=Options({"layers", "3d"}),
    ncols=Interval(int, 1, None),
    **PLOT_PARAMS,
)
@inject_docs()
def sections_3d(
    sdata: SpatialData | AnnData,
    *,
    gene: str,
    key: str | None = Key.default.impute_3d,
    table_key: str = Key.table.stack,
    sections: Sequence[str] | None = None,
    show_measured: bool = True,
    mode: Literal["layers", "3d"] = "layers",
    section_key: str = Key.obs.section,
    cmap: str = "viridis",
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
) -> Any:
    """A gene across stacked sections: measured and imputed side by side per layer, or the stack as a 3D scatter.

    Parameters
    ----------
    sdata
        SpatialData holding the table of :func:`stmap.pp.stack_sections` (or that AnnData).
    gene
        Gene (a ``var_names`` entry).
    key
        ``key_added`` of :func:`stmap.tl.impute_3d`: its predictions ``layers[Key.impute_3d(key).layer]`` are drawn
        (skipped when the table has none) and the measured row follows its target scale (``uns[key]['target']``,
        ``ln((c + 1) / sum(c + 1))`` over the imputed genes, from the counts it used) when ``gene`` is among
        ``uns[key]['genes']``; else the measured row is ``log1p`` of counts per 10⁴ of ``X``. ``None``: the measured
        values only, in ``log1p`` counts per 10⁴.
    table_key
        Name of the stacked table.
    sections
        Sections to show (default: all, in stacking order).
    show_measured
        Draw the measured row (sections without expression say so).
    mode
        ``'layers'``: one column per section, row 1 measured, row 2 the predictions, one colour scale for all
        panels, axes in µm; ``'3d'``: a matplotlib 3D scatter of ``obsm['spatial_3d']`` coloured by the
        predictions where present, else by the measured value.
    section_key
        ``obs`` column of the sections.
    cmap
        Colour map.
    ncols
        Sections per figure row in ``'layers'`` mode: more sections wrap into further blocks of rows (measured above
        imputed in each block), so that the figure fits a page column; one colour bar beside the whole grid.
    {plot}

    Returns
    -------
    {plot_returns}
    For ``'layers'`` an array ``(n_rows, n_sections)`` of Axes; for ``'3d'`` one 3D Axes.
    """
    t = _stack_table(sdata, table_key)
    if gene not in t.var_names:
        raise unknown_key("Gene", gene, t.var_names, "the stacked table's var_names")
    if Key.obsm.spatial_3d not in t.obsm or section_key not in t.obs:
        raise StmapInputError(
            f"The table has no obsm[{Key.obsm.spatial_3d!r}] / obs[{section_key!r}]; build it with "
            "`st.pp.stack_sections`."
        )
    sec = t.obs[section_key].astype("category")
    order = list(sec.cat.categories) if sections is None else list(sections)
    for s in order:
        if s not in sec.cat.categories:
            raise unknown_key("Section", s, sec.cat.categories, f"obs[{section_key!r}]")
    rows, scale_name = _rows(t, gene, key, show_measured)
    in_sel = sec.isin(order).to_numpy()
    stacked = np.concatenate([v[in_sel] for _, v in rows])
    finite = stacked[np.isfinite(stacked)]
    from matplotlib.colors import Normalize

    norm = Normalize(*(np.nanpercentile(finite, [0, 100]) if finite.size else (0.0, 1.0)))
    label = f"{gene}, {scale_name}" if show_measured or len(rows) > 1 else gene
    xyz = np.asarray(t.obsm[Key.obsm.spatial_3d], dtype=float)

    if mode == "3d":
        fig, axs, own = panels(ax, 1, panel=(6.4, 5.6), figsize=figsize, dpi=dpi, projection="3d")
        _draw_3d(axs[0], xyz, rows[-1][1], in_sel, norm, cmap, f"{gene} ({rows[-1][0]})", label)
        return finish(fig, axs[0], own=own, save=save, show=show, dpi=dpi)
    lim = data_limits(xyz[in_sel, :2], _radius(t, xyz, in_sel)[in_sel])
    fig, grid, own = _layer_grid(ax, len(rows), len(order), ncols, lim, figsize, dpi, [r for r, _ in rows])
    members = np.column_stack([(sec == s).to_numpy() for s in order])
    coll = _draw_layers(grid, rows, members, order, xyz, t, lim, norm, cmap)
    if coll is not None:
        colorbar(fig, coll, list(grid.ravel()), label, shrink=0.8)
    return finish(fig, grid, own=own, save=save, show=show, dpi=dpi)


def _layer_grid(
    ax: Any, n_rows: int, n_sections: int, ncols: int, lim: Any, figsize: Any, dpi: Any, names: list[str]
) -> tuple[Any, np.ndarray, bool]:
    """The Axes of the layers mode as ``(n_rows, n_sections)``: sections wrapped into blocks of ``ncols`` columns.

    A new figure has one block of ``n_rows`` figure rows per ``ncols`` sections; cells a short last block leaves
    empty are hidden. Passed ``ax`` are used in order (rows first, as before).
    """
    what = f"{n_rows} x {n_sections}: rows {names}"
    if ax is not None:
        _, axs, own = panels(ax, n_rows * n_sections, what=what)
        return axs[0].get_figure(), axs.reshape(n_rows, n_sections), own
    ncols = max(1, min(int(ncols), n_sections))
    blocks = int(np.ceil(n_sections / ncols))
    aspect = float(np.clip((lim[3] - lim[2]) / max(lim[1] - lim[0], 1e-9), 0.2, 5.0))
    # panels 2.6 in wide at the data's aspect, plus room for the tick/row labels and the colour bar: no empty bands
    size = fit_width(2.6 * ncols + 1.9, ((2.5 * aspect + 0.1) * n_rows + 0.75) * blocks) if figsize is None else figsize
    fig, flat, own = panels(None, blocks * n_rows * ncols, ncols=ncols, figsize=size, dpi=dpi, what=what)
    cells = flat.reshape(blocks, n_rows, ncols)
    grid = np.empty((n_rows, n_sections), dtype=object)
    for c in range(n_sections):
        grid[:, c] = cells[c // ncols, :, c % ncols]
    for b in range(blocks):
        for c in range(n_sections - b * ncols, ncols):
            for a in cells[b, :, c]:
                a.set_axis_off()
    return fig, grid, own


def _stack_table(sdata: Any, table_key: str) -> AnnData:
    from anndata import AnnData

    from stmap._core._resolve import is_spatialdata

    if isinstance(sdata, AnnData):
        return sdata
    if is_spatialdata(sdata):
        if table_key not in sdata.tables:
            raise unknown_key(
                "Table",
                str(table_key),
                sdata.tables.keys(),
                "sdata.tables",
                hint="Build the stack with `st.pp.stack_sections`.",
            )
        return sdata.tables[table_key]
    raise TypeError(f"Expected a SpatialData or an AnnData, got {type(sdata).__name__}.")


def _rows(t: AnnData, gene: str, key: str | None, show_measured: bool) -> tuple[list[tuple[str, np.ndarray]], str]:
    """The rows to draw, ``[(name, value per spot)]`` (measured, predicted), and the name of their scale."""
    j = int(t.var_names.get_loc(gene))
    measured = (
        t.obs[Key.obs.measured].to_numpy(dtype=bool) if Key.obs.measured in t.obs else np.ones(t.n_obs, dtype=bool)
    )
    meas_scale, scale_name = _measured_scale(t, j, key)
    layer = None if key is None else Key.impute_3d(key).layer
    rows = [("measured", np.where(measured, meas_scale, np.nan))] if show_measured else []
    if layer is not None and layer in t.layers:
        rows.append((layer, _column(t.layers[layer], j)))
    if not rows:
        raise StmapInputError(f"Nothing to draw: show_measured=False and the table has no layers[{layer!r}].")
    return rows, scale_name


def _column(x: Any, j: int) -> np.ndarray:
    from scipy import sparse

    col = x[:, j]
    col = col.toarray() if sparse.issparse(col) else np.asarray(col)
    return np.asarray(col, dtype=float).ravel()


def _measured_scale(t: AnnData, j: int, key: str | None) -> tuple[np.ndarray, str]:
    """Gene ``j`` measured, on the scale of ``uns[key]['target']``, else ``log1p`` counts per 10,000; the scale's name.

    ``uns[key]`` is e.g. :func:`stmap.tl.impute_3d`'s: its target over its genes, from the counts layer it used.
    """
    from scipy import sparse

    from stmap._core import log_normalize

    entry = t.uns.get(key) if key is not None else None
    if isinstance(entry, dict) and entry.get("target") == _ASIGN and t.var_names[j] in list(entry.get("genes", [])):
        lay = (entry.get("params") or {}).get("layer")
        x = t.layers[lay] if lay is not None and lay in t.layers else t.X
        cols = t.var_names.get_indexer(list(entry["genes"]))
        c = x[:, cols]
        c = (c.toarray() if sparse.issparse(c) else np.asarray(c)).astype(np.float64) + 1.0
        k = int(np.flatnonzero(cols == j)[0])
        return np.log(c[:, k] / c.sum(1)), _ASIGN
    totals = np.asarray(t.X.sum(axis=1), dtype=np.float64).ravel()
    return log_normalize(_column(t.X, j)[:, None], totals=totals).ravel(), _CP10K


def _radius(t: AnnData, xyz: np.ndarray, in_sel: np.ndarray) -> np.ndarray:
    """Spot radius per spot: recorded (µm), else a quarter of the mean spacing of the selected spots."""
    if Key.obs.spot_radius_um in t.obs:
        return t.obs[Key.obs.spot_radius_um].to_numpy(dtype=float)
    return np.full(t.n_obs, 0.25 * np.ptp(xyz[in_sel, 0]) / np.sqrt(in_sel.sum()))


def _discs(ax: Any, xy: np.ndarray, r: np.ndarray, values: np.ndarray, norm: Any, cmap: Any) -> Any:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    coll = PatchCollection([Circle(tuple(p), rr) for p, rr in zip(xy, r)], cmap=cmap, norm=norm, linewidths=0)
    coll.set_array(values)
    ax.add_collection(coll)
    return coll


def _draw_layers(
    grid: np.ndarray,
    rows: list[tuple[str, np.ndarray]],
    members: np.ndarray,
    order: list[str],
    xyz: np.ndarray,
    t: AnnData,
    lim: Any,
    norm: Any,
    cmap: Any,
) -> Any:
    """One panel per (row, section): discs of the spots' true radius in µm; labels on the outer panels only."""
    radius = _radius(t, xyz, np.asarray(members.any(axis=1), dtype=bool))
    coll = None
    for c, s in enumerate(order):
        rows_s = members[:, c]
        for r_i, (name, vals) in enumerate(rows):
            a = grid[r_i, c]
            v = vals[rows_s]
            if np.isfinite(v).any():
                coll = _discs(a, xyz[rows_s, :2], radius[rows_s], v, norm, cmap)
            else:
                a.text(0.5, 0.5, "not measured", ha="center", va="center", transform=a.transAxes, color="grey")
            spatial_axes(a, 1.0, lim, labels=False)  # the stack is in micrometres
            first = c == 0 or a.get_subplotspec() is None or a.get_subplotspec().colspan.start == 0
            last = r_i == len(rows) - 1
            a.tick_params(labelleft=first, labelbottom=last, labelsize="small")
            a.set_title(f"{s}" if r_i == 0 else "", fontsize=10)  # each block of rows names its sections
            a.set_ylabel(f"{name}\ny (µm)" if first else "")
            a.set_xlabel("x (µm)" if last else "")
    return coll


def _draw_3d(
    ax: Any, xyz: np.ndarray, vals: np.ndarray, in_sel: np.ndarray, norm: Any, cmap: Any, title: str, label: str
) -> None:
    """The selected spots in 3D, coloured by ``vals`` (grey where missing)."""
    ok = in_sel & np.isfinite(vals)
    ax.scatter(*xyz[in_sel & ~np.isfinite(vals)].T, c="lightgrey", s=6, depthshade=False)
    sc = ax.scatter(*xyz[ok].T, c=vals[ok], cmap=cmap, norm=norm, s=10)
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_zlabel("z (µm)")
    ax.set_title(title)
    colorbar(ax.get_figure(), sc, [ax], label, shrink=0.6)  # beside the 3D box (an inset would cover the z labels)
