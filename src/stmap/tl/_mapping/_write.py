"""Results of :func:`~stmap.tl.map_cells`, queued on a :class:`~stmap._core.Results` (written all at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from stmap._core import Key, make_points

if TYPE_CHECKING:
    from stmap._core import Results, TableContext
    from stmap._core._constants import MappingKeys

    from ._composition import Composition
    from ._place import Placement
    from ._prepare import MappingInputs

__all__ = ["write_spots", "write_intervals", "run_record", "reference_results", "write_reference", "write_cells_table"]


def write_spots(
    res: Results, keys: MappingKeys, inp: MappingInputs, comp: Composition, pl: Placement, label: np.ndarray | None
) -> None:
    """Fractions, placed cells per type and per spot; for single-cell targets the label and its confidence."""
    m_all, T = inp.ctx.adata.n_obs, inp.n_types
    sid = inp.ctx.adata.obs_names
    counts = np.zeros((m_all, T), dtype=np.int64)
    np.add.at(counts, (pl.spots, inp.codes[pl.cells]), 1)
    F_all = np.full((m_all, T), np.nan)
    F_all[inp.fitted] = comp.fractions
    res.obsm(keys.fractions, pd.DataFrame(F_all, index=sid, columns=inp.cats))
    res.obsm(keys.counts, pd.DataFrame(counts, index=sid, columns=inp.cats))
    res.obs(keys.n_cells, counts.sum(axis=1))
    if label is not None:
        lab_all = np.full(m_all, -1, dtype=np.int64)
        lab_all[inp.fitted] = label
        conf_all = np.full(m_all, np.nan)
        conf_all[inp.fitted] = comp.fractions[np.arange(label.size), label]
        res.obs(keys.label, pd.Categorical.from_codes(lab_all, categories=inp.cats))
        res.obs(keys.confidence, conf_all)


def write_intervals(res: Results, keys: MappingKeys, inp: MappingInputs, lo_hi: tuple[np.ndarray, np.ndarray]) -> None:
    """Lower and upper ends of the fractions' intervals (NaN for spots without counts)."""
    sid = inp.ctx.adata.obs_names
    for key, arr in zip((keys.fractions_lower, keys.fractions_upper), lo_hi, strict=True):
        full = np.full((inp.ctx.adata.n_obs, inp.n_types), np.nan)
        full[inp.fitted] = arr
        res.obsm(key, pd.DataFrame(full, index=sid, columns=inp.cats))


def run_record(inp: MappingInputs, comp: Composition, *, mode: str, single: bool, cells_table: str) -> dict[str, Any]:
    """What ``.uns[key_added]`` of the spot table holds besides the parameters."""
    return {
        "genes": np.asarray(inp.genes, dtype=str),
        "loss": np.asarray(comp.loss, dtype=float),
        "n_iter": int(comp.n_iter),
        "cell_types": np.asarray(inp.cats, dtype=str),
        "gene_scale": comp.gene_scale.astype(float),
        "mode": mode,
        "cells_table": cells_table if inp.ctx.sdata is not None else "None",
        "single_cell": single,
    }


def reference_results(
    inp: MappingInputs, pl: Placement, sc_adata: AnnData, mode: str, confidence: np.ndarray | None = None
) -> dict[str, Any]:
    """Per reference cell: candidate scores and placements over the spots (sparse), in greedy mode its spot.

    Where computed (greedy mode on small problems), also the placement's confidence.
    """
    n_cells, m_all = sc_adata.n_obs, inp.ctx.adata.n_obs
    sid = inp.ctx.adata.obs_names
    ok = np.isfinite(pl.cand_scores)
    scores = sparse.csr_matrix(
        (pl.cand_scores[ok].astype(np.float32), (pl.cand_cells[ok], pl.cand_spots[ok])),
        shape=(n_cells, m_all),
        dtype=np.float32,
    )
    assign = sparse.csr_matrix((np.ones(pl.cells.size, np.float32), (pl.cells, pl.spots)), shape=(n_cells, m_all))
    out: dict[str, Any] = {
        "cell_ids": np.asarray(sc_adata.obs_names, dtype=str),
        "spot_ids": np.asarray(sid, dtype=str),
        "scores": scores,
        "assignment": assign,
    }
    if mode == "greedy":
        spot_of = np.full(n_cells, -1, dtype=np.int64)
        spot_of[pl.cells] = pl.spots
        out["spot"] = pd.Categorical.from_codes(spot_of, categories=list(map(str, sid)))
        if confidence is not None:
            out["placement_confidence"] = np.asarray(confidence, dtype=float)
    return out


def write_reference(
    res: Results, keys: MappingKeys, ref: dict[str, Any], sc_adata: AnnData, *, table_name: str, mode: str
) -> None:
    """The reference's results written on ``sc_adata`` itself (``copy=False``)."""
    res.obsm(keys.mapping, ref["scores"], adata=sc_adata)
    res.obsm(keys.assignment, ref["assignment"], adata=sc_adata)
    res.uns(keys.mapping, {"spot_ids": ref["spot_ids"], "spot_table": table_name, "mode": mode}, adata=sc_adata)
    if "spot" in ref:
        res.obs(keys.spot, ref["spot"], adata=sc_adata)
    if "placement_confidence" in ref:
        res.obs(keys.placement_confidence, ref["placement_confidence"], adata=sc_adata)


def _spot_radius(ctx: TableContext, coords: np.ndarray) -> np.ndarray:
    d = ctx.diameters
    if d is not None:
        return np.asarray(d, dtype=float) / 2.0
    if coords.shape[0] > 1:
        from scipy.spatial import cKDTree

        nn = cKDTree(coords).query(coords, k=2)[0][:, 1]
        return np.full(coords.shape[0], 0.25 * float(np.median(nn)))
    return np.ones(coords.shape[0])


def _positions_in_spots(ps: np.ndarray, coords: np.ndarray, radius: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Cells of each spot on a Vogel (sunflower) spiral inside 90% of its radius, randomly rotated per spot."""
    xy = np.empty((ps.size, 2), dtype=float)
    if ps.size == 0:
        return xy
    starts = np.r_[0, np.flatnonzero(np.diff(ps)) + 1]  # ps is sorted
    sizes = np.diff(np.r_[starts, ps.size])
    rot = np.asarray(gen.uniform(0, 2 * np.pi, size=coords.shape[0]))
    golden = np.pi * (3.0 - np.sqrt(5.0))
    i = np.arange(ps.size) - np.repeat(starts, sizes)  # rank of each cell in its spot
    k = np.repeat(sizes, sizes)
    r = 0.9 * radius[ps] * np.sqrt((i + 0.5) / k)
    a = rot[ps] + i * golden
    xy[:, 0] = coords[ps, 0] + r * np.cos(a)
    xy[:, 1] = coords[ps, 1] + r * np.sin(a)
    return xy


def write_cells_table(
    res: Results,
    inp: MappingInputs,
    pl: Placement,
    sc_adata: AnnData,
    *,
    key_added: str,
    cell_type_key: str,
    gen: np.random.Generator,
    confidence: np.ndarray | None = None,
) -> None:
    """Table of the placed cells (reference counts, spot, type) annotating new points inside their spots.

    Where computed (greedy mode on small problems), the table also holds the placement's confidence.
    """
    ctx = inp.ctx
    coords = ctx.coords
    xy = _positions_in_spots(pl.spots, coords, _spot_radius(ctx, coords), gen)
    sid = ctx.adata.obs_names
    width = len(str(pl.cells.size - 1))
    obs = pd.DataFrame(
        {
            "cell_id": sc_adata.obs_names.to_numpy()[pl.cells].astype(str),
            "spot_id": pd.Categorical(sid.to_numpy()[pl.spots].astype(str), categories=list(map(str, sid))),
            cell_type_key: pd.Categorical.from_codes(inp.codes[pl.cells], categories=inp.cats),
        },
        index=[f"placed_{i:0{width}d}" for i in range(pl.cells.size)],
    )
    if confidence is not None:
        obs[Key.mapping(key_added).placement_confidence] = np.asarray(confidence, dtype=float)[pl.cells]
    tab = AnnData(X=inp.Xc[pl.cells], obs=obs, var=pd.DataFrame(index=sc_adata.var_names.astype(str)))
    tab.obsm[Key.obsm.spatial] = xy
    name, pts_name = Key.table.cells(inp.table_name, key_added), Key.table.cells_points(inp.table_name, key_added)
    annotations = obs[["cell_id", "spot_id", cell_type_key]].reset_index(drop=True)
    res.element(pts_name, make_points(xy, annotations=annotations, coordinate_system=ctx.coordinate_system))
    res.table(name, tab, region=pts_name, instance_ids=np.arange(pl.cells.size))
