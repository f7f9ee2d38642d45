"""Results of :func:`stmap.tl.map_cells`: cell-type fractions over the spots (and H&E), and the placed cells."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stmap._core import Key, StmapInputError, inject_docs, is_spatialdata, resolve, unknown_key

from ._spatial import spatial

__all__ = ["mapping"]


@inject_docs()
def mapping(
    sdata: Any,
    *,
    table_key: str | None = None,
    cell_types: Sequence[str] | None = None,
    key_added: str = Key.obsm.mapping,
    image_key: str | bool | None = None,
    coordinate_system: str | None = None,
    cells: bool = True,
    ncols: int = 4,
    panel_size: float = 3.5,
    cmap: str = "magma",
    save: str | Path | None = None,
    return_fig: bool = False,
    show: bool | None = None,
):
    """Cell-type fractions over the spots (on the tissue image) and the placed cells, one panel each.

    Parameters
    ----------
    {sdata}
    {table_key}
    cell_types
        Types to draw; default all mapped types.
    key_added
        ``key_added`` of the :func:`stmap.tl.map_cells` run.
    image_key
        Image drawn below the spots (see :func:`stmap.pl.spatial`); ``False`` for none.
    coordinate_system
        Coordinate system to draw in; default: the one the tools choose (see :func:`stmap.pl.spatial`).
    cells
        Add a panel with the placed cells coloured by type (SpatialData only).
    ncols
        Panels per row.
    panel_size
        Size of one panel in inches.
    cmap
        Colormap of the fractions.
    save
        File to write the figure to.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.
    show
        Show the figure; default unless ``return_fig``.

    Returns
    -------
    The figure if ``return_fig=True``, else ``None``. ``sdata`` is not modified.
    """
    import matplotlib.pyplot as plt

    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    prefix = "stmap" if key_added == Key.obsm.mapping else key_added
    fkey = f"{prefix}_cell_type_fractions"
    if fkey not in ctx.adata.obsm:
        raise StmapInputError(
            f"No mapping result {fkey!r} in the spot table's obsm; run `st.tl.map_cells(sdata, sc_adata, "
            f"key_added={key_added!r})` first."
        )
    F = ctx.adata.obsm[fkey]
    from stmap._core._names import safe_key

    # names as stored: a '/' in a cell type is stored as '_' (zarr cannot store it)
    types = list(F.columns) if cell_types is None else [t if t in F.columns else safe_key(t) for t in cell_types]
    for t in types:
        if t not in F.columns:
            raise unknown_key("Cell type", t, F.columns, f"obsm[{fkey!r}]")
    meta = ctx.adata.uns.get(key_added, {})
    cells_name = meta.get("cells_table") if isinstance(meta, dict) else None
    has_cells = bool(cells and is_spatialdata(sdata) and cells_name in getattr(sdata, "tables", {}))

    tab = ctx.adata.copy()
    cols = {t: f"{t}_fraction" for t in types}
    for t, c in cols.items():
        tab.obs[c] = F[t].to_numpy(dtype=float)
    if is_spatialdata(sdata):
        from spatialdata import SpatialData

        tables = {ctx.table_key: tab}
        points = {}
        if has_cells:
            ct = sdata.tables[cells_name]
            tables[cells_name] = ct
            points = {ct.uns["spatialdata_attrs"]["region"]: sdata[ct.uns["spatialdata_attrs"]["region"]]}
        tmp = SpatialData(
            images=dict(sdata.images), shapes={ctx.region: sdata[ctx.region]} if ctx.element_type == "shapes" else {},
            points=points | ({ctx.region: sdata[ctx.region]} if ctx.element_type == "points" else {}),
            labels={ctx.region: sdata[ctx.region]} if ctx.element_type == "labels" else {},
            tables=tables,
            attrs=dict(sdata.attrs),
        )  # fmt: skip
    else:
        tmp = tab
    n = len(types) + int(has_cells)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.3 * panel_size * ncols, panel_size * nrows), squeeze=False, layout="constrained"
    )
    kw = {"table_key": ctx.table_key} if is_spatialdata(sdata) else {}
    if is_spatialdata(sdata):
        kw["coordinate_system"] = ctx.coordinate_system
    for ax, t in zip(axes.ravel(), types, strict=False):
        spatial(tmp, color=cols[t], image_key=image_key, cmap=cmap, ax=ax, show=False, **kw)
    if has_cells:
        ax = axes.ravel()[len(types)]
        ct_key = next(
            (
                c
                for c in sdata.tables[cells_name].obs.columns
                if c not in ("cell_id", "spot_id", "region", "instance_id")
            ),
            None,
        )
        spatial(
            tmp, color=ct_key, table_key=cells_name, image_key=image_key, ax=ax, show=False, size=2.0,
            title="placed cells", coordinate_system=ctx.coordinate_system,
            palette=None if len(sdata.tables[cells_name].obs[ct_key].cat.categories) <= 20 else "gist_ncar",
        )  # fmt: skip
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show or (show is None and not return_fig):
        plt.show()
    if return_fig:
        return fig
    if not show and show is not None:
        plt.close(fig)
    return None
