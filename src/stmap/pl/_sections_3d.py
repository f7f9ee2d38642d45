"""Plots of stacked serial sections: measured vs imputed gene per layer, and a 3D scatter of the stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from stmap._core._constants import Key
from stmap._core._errors import StmapInputError, unknown_key

from ._utils import finish

__all__ = ["sections_3d"]


def _column(x: Any, j: int) -> np.ndarray:
    from scipy import sparse

    col = x[:, j]
    col = col.toarray() if sparse.issparse(col) else np.asarray(col)
    return np.asarray(col, dtype=float).ravel()


def _lognorm(x: Any, j: int, target: float = 1e4) -> np.ndarray:
    """``log1p(count / total * target)`` of gene ``j`` per spot (scanpy's normalize_total + log1p)."""
    tot = np.asarray(x.sum(axis=1), dtype=float).ravel()
    return np.log1p(_column(x, j) / np.where(tot > 0, tot, 1.0) * target)


_ASIGN = "ln((c + 1) / sum_genes(c + 1))"


def _measured_scale(t: Any, j: int, key: str | None) -> tuple[np.ndarray, str]:
    """Gene ``j`` measured, on the scale of ``uns[key]['target']``, else ``log1p`` counts per 10,000; the scale's name.

    ``uns[key]`` is e.g. :func:`stmap.tl.impute_3d`'s: its target over its genes, from the counts layer it used.
    """
    from scipy import sparse

    entry = t.uns.get(key) if key is not None else None
    if isinstance(entry, dict) and entry.get("target") == _ASIGN and t.var_names[j] in list(entry.get("genes", [])):
        lay = (entry.get("params") or {}).get("layer")
        x = t.layers[lay] if lay is not None and lay in t.layers else t.X
        cols = t.var_names.get_indexer(list(entry["genes"]))
        c = x[:, cols]
        c = (c.toarray() if sparse.issparse(c) else np.asarray(c)).astype(np.float64) + 1.0
        k = int(np.flatnonzero(cols == j)[0])
        return np.log(c[:, k] / c.sum(1)), _ASIGN
    return _lognorm(t.X, j), "log1p(counts per 10,000)"


def _discs(ax: Any, xy: np.ndarray, r: np.ndarray, values: np.ndarray, norm: Any, cmap: Any) -> Any:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    coll = PatchCollection([Circle(tuple(p), rr) for p, rr in zip(xy, r)], cmap=cmap, norm=norm, linewidths=0)
    coll.set_array(values)
    ax.add_collection(coll)
    return coll


def sections_3d(
    sdata: Any,
    gene: str,
    *,
    table_key: str | None = "stack",
    layer: str | None = Key.layers.imputed,
    sections: list[str] | None = None,
    show_measured: bool = True,
    key: str | None = "stmap_impute3d",
    mode: Literal["layers", "3d"] = "layers",
    section_key: str = Key.obs.section,
    cmap: str = "viridis",
    ax: Any = None,
    save: str | Path | None = None,
    return_ax: bool = False,
    show: bool | None = None,
) -> Any:
    """A gene across stacked sections: measured and imputed side by side per layer, or the stack as a 3D scatter.

    Parameters
    ----------
    sdata
        SpatialData holding the table of :func:`stmap.pp.stack_sections` (or that AnnData).
    gene
        Gene (a ``var_names`` entry).
    table_key
        Name of the stacked table.
    layer
        Layer of predicted values (e.g. ``'imputed'`` from ``st.tl.impute_3d``); skipped when absent or ``None``.
    sections
        Sections to show (default: all, in stacking order).
    show_measured
        Draw the measured row, on the scale of the predictions: that of ``uns[key]['target']`` when the table has
        it and ``gene`` is among ``uns[key]['genes']`` (``st.tl.impute_3d``'s ``ln((c + 1) / sum(c + 1))`` over the
        imputed genes, from the counts it used), else ``log1p`` of counts per 10,000 of ``X``.
    key
        ``uns`` entry of the imputation whose target scale the measured row follows (``None``: always ``log1p``
        counts per 10,000).
    mode
        ``'layers'``: one column per section, row 1 measured (sections without expression say so), row 2
        ``layers[layer]``, one colour scale for all panels; ``'3d'``: a matplotlib 3D scatter of
        ``obsm['spatial_3d']`` coloured by ``layers[layer]`` where present, else by the measured value.
    section_key
        ``obs`` column of the sections.
    cmap
        Colour map.
    ax
        For ``'layers'``: an array of axes ``(n_rows, n_sections)``; for ``'3d'``: one 3D axis.
    save
        File to save the figure to.
    return_ax
        Return the axes.
    show
        Show the figure (default: when not saving and not returning the axes).

    Returns
    -------
    The axes (2D array for ``'layers'``, one 3D axis for ``'3d'``) if ``return_ax=True``, else ``None``.
    """
    import matplotlib.pyplot as plt
    from anndata import AnnData
    from matplotlib.colors import Normalize

    from stmap._core._resolve import is_spatialdata

    if isinstance(sdata, AnnData):
        t = sdata
    elif is_spatialdata(sdata):
        if table_key not in sdata.tables:
            raise unknown_key("Table", str(table_key), sdata.tables.keys(), "sdata.tables",
                              hint="Build the stack with `st.pp.stack_sections`.")  # fmt: skip
        t = sdata.tables[table_key]
    else:
        raise TypeError(f"Expected a SpatialData or an AnnData, got {type(sdata).__name__}.")
    if gene not in t.var_names:
        raise unknown_key("Gene", gene, t.var_names, "the stacked table's var_names")
    if Key.obsm.spatial_3d not in t.obsm or section_key not in t.obs:
        raise StmapInputError(
            f"The table has no obsm[{Key.obsm.spatial_3d!r}] / obs[{section_key!r}]; build it with "
            "`st.pp.stack_sections`."
        )
    if mode not in ("layers", "3d"):
        raise StmapInputError(f"mode must be 'layers' or '3d', got {mode!r}.")
    sec = t.obs[section_key].astype("category")
    order = list(sec.cat.categories) if sections is None else list(sections)
    for s in order:
        if s not in sec.cat.categories:
            raise unknown_key("Section", s, sec.cat.categories, f"obs[{section_key!r}]")
    j = int(t.var_names.get_loc(gene))
    measured = (
        t.obs[Key.obs.measured].to_numpy(dtype=bool) if Key.obs.measured in t.obs else np.ones(t.n_obs, dtype=bool)
    )
    meas_scale, scale_name = _measured_scale(t, j, key)
    meas_vals = np.where(measured, meas_scale, np.nan)
    has_layer = layer is not None and layer in t.layers
    pred_vals = _column(t.layers[layer], j) if has_layer else None
    xyz = np.asarray(t.obsm[Key.obsm.spatial_3d], dtype=float)
    radius = t.obs["spot_radius_um"].to_numpy(dtype=float) if "spot_radius_um" in t.obs else None
    in_sel = sec.isin(order).to_numpy()

    rows = ([("measured", meas_vals)] if show_measured else []) + ([(layer, pred_vals)] if has_layer else [])
    if not rows:
        raise StmapInputError(f"Nothing to draw: show_measured=False and the table has no layers[{layer!r}].")
    stacked = np.concatenate([v[in_sel] for _, v in rows])
    finite = stacked[np.isfinite(stacked)]
    norm = Normalize(*(np.nanpercentile(finite, [0, 100]) if finite.size else (0.0, 1.0)))

    if mode == "3d":
        own = ax is None
        if own:
            fig = plt.figure(figsize=(7, 6))
            ax = fig.add_subplot(projection="3d")
        vals = pred_vals if has_layer else meas_vals
        m = in_sel
        ax.scatter(*xyz[m & ~np.isfinite(vals)].T, c="lightgrey", s=6, depthshade=False)
        sc = ax.scatter(*xyz[m & np.isfinite(vals)].T, c=vals[m & np.isfinite(vals)], cmap=cmap, norm=norm, s=10)
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
        ax.set_zlabel("z (um)")
        ax.set_title(f"{gene} ({layer if has_layer else 'measured'})")
        ax.figure.colorbar(sc, ax=ax, shrink=0.6)
        axs = ax
    else:
        own = ax is None
        if own:
            fig, ax = plt.subplots(len(rows), len(order), figsize=(3.2 * len(order), 3.2 * len(rows)), squeeze=False)
        axs = np.asarray(ax, dtype=object).reshape(len(rows), len(order)) if np.ndim(ax) else np.array([[ax]])
        if axs.shape != (len(rows), len(order)):
            raise StmapInputError(
                f"Pass {len(rows)} x {len(order)} axes (rows: {[r for r, _ in rows]}), got {axs.shape}."
            )
        lim_xy = xyz[in_sel, :2]
        r_all = radius if radius is not None else np.full(t.n_obs, 0.25 * np.ptp(lim_xy[:, 0]) / np.sqrt(in_sel.sum()))
        pad = float(np.max(r_all))
        coll = None
        for c, s in enumerate(order):
            rows_s = (sec == s).to_numpy()
            for r_i, (name, vals) in enumerate(rows):
                a = axs[r_i, c]
                v = vals[rows_s]
                if np.isfinite(v).any():
                    coll = _discs(a, xyz[rows_s, :2], r_all[rows_s], v, norm, cmap)
                else:
                    a.text(0.5, 0.5, "not measured", ha="center", va="center", transform=a.transAxes, color="grey")
                a.set_xlim(lim_xy[:, 0].min() - pad, lim_xy[:, 0].max() + pad)
                a.set_ylim(lim_xy[:, 1].max() + pad, lim_xy[:, 1].min() - pad)  # image convention: y down
                a.set_aspect("equal")
                a.set_xticks([])
                a.set_yticks([])
                a.set_title(f"{s}" if r_i == 0 else "", fontsize=10)
                if c == 0:
                    a.set_ylabel(name)
        fig = axs[0, 0].figure
        if coll is not None:
            label = f"{gene}, {scale_name}" if show_measured else gene
            fig.colorbar(coll, ax=list(axs.ravel()), shrink=0.7, label=label)
    fig = axs.figure if mode == "3d" else axs[0, 0].figure
    return finish(fig, axs, own=own, save=save, show=show, return_ax=return_ax)
