"""``st.tl.map_cells``: validate -> prepare -> composition -> slots -> placement -> write."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import pandas as pd
from anndata import AnnData

from stmap._core import (
    Instance,
    Interval,
    Key,
    Options,
    Results,
    inject_docs,
    resolve,
    resolve_device,
    resolve_verbose,
    seed_everything,
    torch_threads,
    validate_params,
)
from stmap._core import _logging as logg
from stmap._core._names import check_name

from ._composition import fit_composition
from ._intervals import composition_intervals
from ._memory import check_memory
from ._place import place_cells, sparse_path
from ._place_greedy import place_greedy
from ._prepare import prepare_inputs
from ._single_cell import singlet_labels
from ._slots import cells_per_spot as spot_cell_numbers
from ._slots import greedy_capacities, make_slots, mean_cells_prior
from ._validate import check_reference
from ._write import (
    reference_results,
    run_record,
    write_cells_table,
    write_intervals,
    write_reference,
    write_spots,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["map_cells"]

_STR = Instance((str,))
_GENE_LIST = Instance((list, tuple, np.ndarray, pd.Index, pd.Series))


@overload
def map_cells(
    sdata: SpatialData | AnnData,
    sc_adata: AnnData,
    *,
    mode: Literal["regular", "greedy"] = ...,
    table_key: str | None = ...,
    coordinate_system: str | None = ...,
    cell_type_key: str = ...,
    cells_per_spot: None | str | Sequence[float] | np.ndarray | float = ...,
    mean_cells_per_spot: float | None = ...,
    genes: None | Sequence[str] | Literal["markers"] = ...,
    n_markers: int = ...,
    layer: str | None = ...,
    sc_layer: str | None = ...,
    platform_effect: bool = ...,
    n_candidates: int = ...,
    n_refine: int = ...,
    max_iter: int = ...,
    intervals: float | None = ...,
    seed: int | None = ...,
    device: str | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
    verbose: bool | None = ...,
) -> None: ...
@overload
def map_cells(
    sdata: SpatialData | AnnData,
    sc_adata: AnnData,
    *,
    mode: Literal["regular", "greedy"] = ...,
    table_key: str | None = ...,
    coordinate_system: str | None = ...,
    cell_type_key: str = ...,
    cells_per_spot: None | str | Sequence[float] | np.ndarray | float = ...,
    mean_cells_per_spot: float | None = ...,
    genes: None | Sequence[str] | Literal["markers"] = ...,
    n_markers: int = ...,
    layer: str | None = ...,
    sc_layer: str | None = ...,
    platform_effect: bool = ...,
    n_candidates: int = ...,
    n_refine: int = ...,
    max_iter: int = ...,
    intervals: float | None = ...,
    seed: int | None = ...,
    device: str | None = ...,
    key_added: str = ...,
    copy: Literal[True],
    verbose: bool | None = ...,
) -> SpatialData | AnnData: ...
@validate_params(
    sc_adata=Instance((AnnData,)),
    mode=Options({"regular", "greedy"}),
    table_key=[_STR, None],
    coordinate_system=[_STR, None],
    cell_type_key=_STR,
    cells_per_spot=[Instance((str, numbers.Real, list, tuple, np.ndarray, pd.Series)), None],
    mean_cells_per_spot=[Interval(float, 0, None, "neither"), None],
    genes=[Options({"markers"}), _GENE_LIST, None],
    n_markers=Interval(int, 1, None),
    layer=[_STR, None],
    sc_layer=[_STR, None],
    platform_effect=Instance((bool, np.bool_)),
    n_candidates=Interval(int, 1, None),
    n_refine=Interval(int, 0, None),
    max_iter=Interval(int, 1, None),
    intervals=[Interval(float, 0, 1, "neither"), None],
    seed=[Interval(int, 0, None), None],
    device=[_STR, None],
    key_added=_STR,
    copy=Instance((bool,)),
    verbose=[Instance((bool,)), None],
)
@inject_docs()
def map_cells(
    sdata: SpatialData | AnnData,
    sc_adata: AnnData,
    *,
    mode: Literal["regular", "greedy"] = "regular",
    table_key: str | None = None,
    coordinate_system: str | None = None,
    cell_type_key: str = Key.obs.cell_type,
    cells_per_spot: None | str | Sequence[float] | np.ndarray | float = None,
    mean_cells_per_spot: float | None = None,
    genes: None | Sequence[str] | Literal["markers"] = None,
    n_markers: int = 100,
    layer: str | None = None,
    sc_layer: str | None = None,
    platform_effect: bool = False,
    n_candidates: int = 20,
    n_refine: int = 2,
    max_iter: int = 500,
    intervals: float | None = None,
    seed: int | None = 0,
    device: str | None = None,
    key_added: str = Key.default.mapping,
    copy: bool = False,
    verbose: bool | None = None,
) -> SpatialData | AnnData | None:
    """Map single cells onto spots: cell-type composition, cells per spot and the placement of every cell.

    Composition comes from a Poisson fit of each spot on the reference's mean cell-type profiles (with a per-gene
    platform scaling); cells then fill per-spot, per-type slots by expression similarity under capacity
    constraints. No dense ``cells x cells`` matrix is made, and ``cells x spots`` scores only for one block of cells
    of one type at a time.

    At capture-area sizes (a Visium HD area of 650,000 bins, a Xenium section of 500,000 cells, a 100,000-cell
    reference) the spot counts stay sparse: the composition is fitted on their non-zeros, and the placement keeps
    expected counts only where spots have counts, finds each type's candidate pairs from bfloat16 score blocks
    (float32 on CPUs without bfloat16 units) and scores them exactly; refinement rounds re-score the first round's
    candidates. Smaller problems take the exact dense path. A run whose estimated peak memory exceeds the memory
    available is refused before computing, with the settings that make it smaller.

    Parameters
    ----------
    {sdata}
    sc_adata
        Single-cell reference: raw counts in ``X`` (or ``layers[sc_layer]``), cell types in ``obs[cell_type_key]``.
    mode
        ``'regular'``: each spot receives exactly ``n_j`` cells, a cell filling at most its fair share
        ``ceil(slots_t / cells_t)`` of its type's slots (cells may be reused when the reference has fewer cells than
        slots). ``'greedy'``: every reference cell gets exactly one spot; spot capacities are ``n_j`` scaled to the
        number of cells. Below the sparse path's size each cell goes where its own counts are most likely under its
        type's share of the spot's counts, with the fitted composition as a soft prior (no per-type slots: cells
        that vary within their type in space land where they fit), and gets a placement confidence; above it,
        cells fill per-type slots as in regular mode.
    {table_key}
    {coordinate_system}
    cell_type_key
        Column of ``sc_adata.obs`` with cell types.
    cells_per_spot
        Cells in each spot ``n_j``: ``'estimate'`` (proportional to the spot's fitted cell equivalents, i.e. its
        counts of each type over that type's mean reference library size, scaled to ``mean_cells_per_spot``), an
        ``obs`` column of the spot table, an array (one per spot, table order) or one number for all spots, e.g.
        nuclei counts from segmentation. ``None`` (default): ``1`` when the table annotates segmented cells (a
        labels element, or shapes of varying size: the cell tables of Xenium, CosMx, MERSCOPE and Visium HD cell
        segmentation as spatialdata-io reads them), else ``'estimate'``. For single cells in a plain AnnData, or
        drawn as equal circles, pass ``cells_per_spot=1``.
    mean_cells_per_spot
        Prior mean of ``n_j`` when estimating. Default: spot area / 150 um^2 when the spot diameter and unit are
        known, else 5 (CytoSPACE's Visium default).
    genes
        Genes used for mapping: ``None`` (all genes shared by both tables), a list, or ``'markers'`` (the top
        ``n_markers`` genes per type by mean log expression above the best other type, among shared genes).
    n_markers
        Markers per type for ``genes='markers'``.
    layer, sc_layer
        Layers with raw counts in the spot table and in ``sc_adata``, used as given (non-integer "counts" of some
        platforms are fine here). ``None`` uses ``X`` when it holds whole numbers (float rounding within 1e-6 is
        fine); an ``X`` with other non-integers is normalised (``sc.pp.normalize_total``, ``sc.pp.log1p``), and then
        ``layers['counts']`` is used instead (logged; recorded in ``uns[key_added]['params']``), or, without it, an
        error names the fix.
    platform_effect
        Also fit a per-gene scaling between reference and spots (RCTD's platform effect). Use it for references
        from another technology (e.g. Drop-seq vs Visium); on same-platform data it can absorb real differences in
        composition (benchmarks/mapping.py: synthetic JSD 0.014 without, 0.028 with).
    n_candidates
        Candidate spots kept per cell (the sparse score matrix; the greedy assignment's search space).
    n_refine
        Refinement rounds of the placement: each round re-scores a type's cells against what the cells placed
        in the other types leave unexplained in each spot.
    max_iter
        Most iterations of the composition fit (it stops earlier when converged).
    intervals
        Also compute intervals of the cell-type fractions at this level, e.g. ``0.9`` (off by default): a
        quasi-likelihood Laplace approximation of the Poisson fit (its observed information inflated by each spot's
        overdispersion), the spread of the reference cells' library sizes, and the delta method to the fractions;
        ``O(non-zeros x types^2)``, in chunks of spots. On simulated spots 90% intervals cover the true fractions
        about 90% of the time (benchmarks/mapping_quality.py).
    {seed}
    device
        Torch device of the composition fit: ``'cpu'``, ``'cuda'``, ``'cuda:1'`` or ``'auto'`` (CUDA when
        available). ``None`` (default): :attr:`stmap.settings.device`.
    {key_added}
    copy
        If ``True``, return a copy of ``sdata`` with the results and leave ``sdata`` and ``sc_adata`` untouched; if
        ``False`` (default), write into ``sdata`` and ``sc_adata`` and return ``None``.
    verbose
        Show a progress bar over the placement rounds. ``None`` (default): :attr:`stmap.settings.verbose`.

    Returns
    -------
    ``None`` with ``copy=False``; with ``copy=True`` the updated copy of ``sdata`` (``sc_adata`` is not modified).
    Written (default ``key_added``; another ``key_added`` replaces the ``stmap`` prefix):

    - spot table ``.obsm['stmap_cell_type_fractions']`` (DataFrame, columns = cell types, rows sum to 1),
      ``.obsm['stmap_cell_type_counts']`` (integer DataFrame of placed cells), ``.obs['stmap_n_cells']``;
    - single-cell targets (every target holds one cell): ``.obs['stmap_cell_type']`` (categorical, the transferred
      label: the type whose profile gives the target's counts the highest multinomial likelihood, RCTD's singlet
      call; in regular mode the placed cell has this type) and ``.obs['stmap_cell_type_confidence']`` (float in
      ``[0, 1]``: that type's fraction in the mixture fit of the target, ``stmap_cell_type_fractions``);
    - with ``intervals``: spot table ``.obsm['stmap_cell_type_fractions_lower']`` and
      ``.obsm['stmap_cell_type_fractions_upper']`` (DataFrames like the fractions, NaN for spots without counts);
    - spot table ``.uns['stmap_mapping']``: ``params``, ``genes`` (used), ``loss`` (composition fit history),
      ``cell_types``, ``gene_scale`` (platform scaling per gene), ``n_iter``, ``cells_table``, ``single_cell``
      (whether every target holds one cell);
    - the reference's results. With ``copy=False`` on ``sc_adata``: ``.obsm['stmap_mapping']`` (sparse cells x
      spots similarity scores, top ``n_candidates`` per cell, among spots that need the cell's type),
      ``.obsm['stmap_mapping_assignment']`` (sparse cells x spots number of placements),
      ``.uns['stmap_mapping']['spot_ids']`` (the columns), and in greedy mode ``.obs['stmap_spot']`` (assigned spot
      id) and ``.obs['stmap_placement_confidence']`` (probability of that spot under the spots' capacities; below
      the sparse path's size). With ``copy=True`` the same in the returned spot table's
      ``.uns['stmap_mapping']['reference']``: ``cell_ids`` (the reference's ``obs_names``, the rows), ``spot_ids``,
      ``scores`` (greedy mode below the sparse path's size: the cells' log-likelihood scores), ``assignment`` and in
      greedy mode ``spot`` (categorical) and ``placement_confidence``; :func:`~stmap.tl.project_genes` reads it from
      there;
    - (SpatialData only) table ``'<table>_cells'``: one row per placed cell (``obs['cell_id']``, ``obs['spot_id']``,
      ``obs[cell_type_key]``, in greedy mode ``obs['stmap_placement_confidence']``, the reference counts in ``X``,
      ``obsm['spatial']``), annotating a new points element
      ``'<table>_cells_points'`` of the placed cells inside their spot's radius, in the spots' coordinate system.

    Raises
    ------
    StmapInputError
        Invalid parameters, no or too few shared genes, missing cell types, NaN/infinite/negative or non-numeric
        counts, normalised ``X`` without ``layers['counts']``, reference cells (or every spot) without counts on the
        mapping genes, duplicated names, ``cells_per_spot`` of the wrong length or negative, or a run whose estimated
        peak memory exceeds the memory available (the message names what makes it smaller). Nothing is written.
        Spots without counts on the mapping genes (empty Visium HD bins, Xenium cells without panel counts) are not
        an error: they get no cells and NaN fractions, with a warning.
    """
    start = logg.info(f"mapping cells onto spots ({mode} mode)")
    check_reference(sc_adata)
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    if ctx.sdata is not None:  # every name written derives from it (a plain AnnData takes any key)
        check_name(key_added, "key_added")
    inp = prepare_inputs(
        ctx,
        sc_adata,
        cell_type_key=cell_type_key,
        cells_per_spot=cells_per_spot,
        genes=genes,
        n_markers=n_markers,
        layer=layer,
        sc_layer=sc_layer,
    )
    mean_cells = mean_cells_per_spot if mean_cells_per_spot is not None else mean_cells_prior(ctx, log=False)
    check_memory(inp, mode=mode, mean_cells=mean_cells, large=sparse_path(inp))  # refuse before computing
    dev = resolve_device(device)
    gen = seed_everything(seed)
    with torch_threads():
        comp = fit_composition(inp, platform_effect=platform_effect, max_iter=max_iter, device=str(dev))
    n_spot = spot_cell_numbers(comp.cells_eq, inp.n_given, mean_cells_per_spot, ctx)
    single = bool((n_spot == 1).all())  # single-cell targets: one label per target
    label = singlet_labels(inp.Y, comp.prof, comp.gene_scale) if single else None
    slots, row_cap = make_slots(mode, comp.fractions, n_spot, comp.n_t, label)
    confidence = None
    if mode == "greedy" and not sparse_path(inp, slots):  # each cell by its own counts (._place_greedy)
        pl, confidence = place_greedy(inp, comp, n_spot, greedy_capacities(n_spot, comp.n_t), n_candidates=n_candidates)
    else:
        pl = place_cells(
            inp, comp, slots, row_cap, n_candidates=n_candidates, n_refine=n_refine, verbose=resolve_verbose(verbose)
        )

    params = {
        "mode": mode,
        "table_key": ctx.table_key,
        "coordinate_system": ctx.coordinate_system,
        "cell_type_key": cell_type_key,
        "cells_per_spot": cells_per_spot if isinstance(cells_per_spot, str | None) else "given",
        "mean_cells_per_spot": mean_cells_per_spot,
        "genes": genes if isinstance(genes, str | None) else f"{len(inp.genes)} given",
        "n_markers": n_markers,
        "layer": inp.layer,
        "sc_layer": inp.sc_layer,
        "platform_effect": platform_effect,
        "n_candidates": n_candidates,
        "n_refine": n_refine,
        "max_iter": max_iter,
        "intervals": intervals,
        "seed": seed,
        "device": str(dev),
    }
    res = Results(ctx, key_added, params=params)
    keys = Key.mapping(key_added)
    write_spots(res, keys, inp, comp, pl, label)
    if intervals is not None:
        lo, hi, kappa = composition_intervals(inp, comp, n_spot, float(intervals), seed=seed or 0)
        write_intervals(res, keys, inp, (lo, hi))
    record = run_record(inp, comp, mode=mode, single=single, cells_table=Key.table.cells(inp.table_name, key_added))
    reference = reference_results(inp, pl, sc_adata, mode, confidence)
    if intervals is not None:
        record["interval_calibration"] = kappa
    if copy:  # sc_adata stays untouched: its results travel in the returned object
        record[keys.reference] = reference
    res.uns(key_added, record)
    if not copy:
        write_reference(res, keys, reference, sc_adata, table_name=inp.table_name, mode=mode)
    if ctx.sdata is not None and pl.cells.size:
        write_cells_table(
            res, inp, pl, sc_adata, key_added=key_added, cell_type_key=cell_type_key, gen=gen, confidence=confidence
        )
    out = res.commit(copy)
    logg.info(
        "    finished", time=start, deep=f"placed {pl.cells.size} cells in {inp.Y.shape[0]} spots; added {res.written}"
    )
    return out
