"""``st.tl.project_genes``: expected expression of reference genes in every spot, from a :func:`map_cells` run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from stmap._core import (
    Instance,
    Interval,
    Key,
    Results,
    StmapInputError,
    inject_docs,
    resolve,
    validate_params,
)
from stmap._core import _logging as logg
from stmap._core._names import check_name, safe_key
from stmap._core._validate import read_counts

from ._validate import to_csr

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from stmap._core import TableContext

__all__ = ["project_genes"]

_STR = Instance((str,))


def _not_mapped(mapping_key: str, why: str = "") -> StmapInputError:
    akey = Key.mapping(mapping_key).assignment
    return StmapInputError(
        f"sc_adata has no mapping {mapping_key!r} (obsm[{akey!r}]){why}; run `st.tl.map_cells(sdata, sc_adata, "
        f"key_added={mapping_key!r})` first."
    )


def mapped_assignment(sc_adata: AnnData, ctx: TableContext, mapping_key: str) -> sparse.csr_matrix:
    """Reference cells x spots placements of a :func:`~stmap.tl.map_cells` run.

    Read from ``sc_adata`` (written with ``copy=False``), else from the spot table's ``.uns[mapping_key]['reference']``
    (written with ``copy=True``) when its cells are ``sc_adata``'s.
    """
    keys, spots = Key.mapping(mapping_key), ctx.adata
    meta = sc_adata.uns.get(mapping_key)
    if keys.assignment in sc_adata.obsm and isinstance(meta, dict):
        A, spot_ids = sc_adata.obsm[keys.assignment], meta.get("spot_ids")
    else:
        run = spots.uns.get(mapping_key)
        ref = run.get(keys.reference) if isinstance(run, Mapping) else None
        if not isinstance(ref, Mapping):
            raise _not_mapped(mapping_key)
        if list(map(str, ref["cell_ids"])) != list(map(str, sc_adata.obs_names)):
            raise _not_mapped(mapping_key, f", and the spot table's mapping {mapping_key!r} was made with other cells")
        A, spot_ids = ref["assignment"], ref["spot_ids"]
    if spot_ids is None or list(map(str, spot_ids)) != list(map(str, spots.obs_names)):
        raise StmapInputError(
            f"The mapping {mapping_key!r} in sc_adata was made for other spots than table "
            f"{ctx.table_key or 'adata'!r}; re-run `st.tl.map_cells` on these spots."
        )
    return sparse.csr_matrix(A)


def _mapped_composition(spots: AnnData, mapping_key: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Fractions and cell counts that :func:`~stmap.tl.map_cells` wrote (cell-type key in ``F.attrs``)."""
    keys = Key.mapping(mapping_key)
    if keys.fractions not in spots.obsm or keys.n_cells not in spots.obs:
        raise StmapInputError(
            f"The spot table has no {keys.fractions!r} / {keys.n_cells!r}; run `st.tl.map_cells` with "
            f"key_added={mapping_key!r} on it first (or pass smooth=0)."
        )
    F = spots.obsm[keys.fractions].copy()
    params = spots.uns.get(mapping_key, {}).get("params", {})
    F.attrs["cell_type_key"] = params.get("cell_type_key", Key.obs.cell_type)
    return F, spots.obs[keys.n_cells].to_numpy(dtype=float)


def _genes(sc_adata: AnnData, genes: Sequence[str] | None) -> list[str]:
    if genes is None:
        return list(map(str, sc_adata.var_names))
    gl = list(genes)
    miss = pd.Index(gl).difference(sc_adata.var_names)
    if len(miss):
        raise StmapInputError(f"{len(miss)} genes are not in sc_adata (e.g. {', '.join(map(repr, miss[:5]))}).")
    return gl


def _type_means(sc_adata: AnnData, Xc: sparse.csr_matrix, F: pd.DataFrame) -> np.ndarray:
    """Mean counts of each mapped type (columns of ``F``, names as stored) over the reference cells."""
    types = sc_adata.obs[F.attrs["cell_type_key"]].astype(str).map(safe_key)  # as stored ('/' -> '_')
    codes = pd.Categorical(types, categories=list(F.columns)).codes
    onehot = sparse.csr_matrix(
        (np.ones((codes >= 0).sum()), (codes[codes >= 0], np.flatnonzero(codes >= 0))),
        shape=(F.shape[1], sc_adata.n_obs),
    )
    return np.asarray((onehot @ Xc).todense()) / np.maximum(np.asarray(onehot.sum(axis=1)), 1)


def projection(
    A: sparse.csr_matrix,
    Xc: sparse.csr_matrix,
    Xs: sparse.csr_matrix,
    spots: AnnData,
    sc_adata: AnnData,
    gl: list[str],
    mapping_key: str,
    smooth: float,
) -> sparse.csr_matrix:
    """``(1 - smooth)`` x placed cells' counts + ``smooth`` x composition x type means, each on the spot's total."""
    used = spots.uns.get(mapping_key, {}).get("genes")
    ref = [g for g in (list(map(str, used)) if used is not None else gl) if g in spots.var_names]
    ref = ref or [g for g in sc_adata.var_names if g in spots.var_names]
    gi = sc_adata.var_names.get_indexer(gl)
    gi_ref = sc_adata.var_names.get_indexer(ref)
    meas = np.asarray(Xs[:, spots.var_names.get_indexer(ref)].sum(axis=1)).ravel() if ref else None

    def scaled(pb: np.ndarray) -> np.ndarray:  # each spot rescaled to its measured total on the mapping genes
        if meas is None:
            return pb[:, gi]
        pred = pb[:, gi_ref].sum(axis=1)
        return pb[:, gi] * np.where(pred > 0, meas / np.maximum(pred, 1e-12), 0.0)[:, None]

    P: Any = (1.0 - smooth) * scaled(np.asarray((A.T @ Xc).todense())) if smooth < 1 else 0.0
    if smooth > 0:
        F, n = _mapped_composition(spots, mapping_key)
        P = P + smooth * scaled((F.to_numpy() * n[:, None]) @ _type_means(sc_adata, Xc, F))
    return sparse.csr_matrix(np.asarray(P, dtype=np.float32))


@overload
def project_genes(
    sdata: SpatialData | AnnData,
    sc_adata: AnnData,
    *,
    table_key: str | None = ...,
    coordinate_system: str | None = ...,
    genes: Sequence[str] | None = ...,
    mapping_key: str = ...,
    smooth: float | None = ...,
    layer: str | None = ...,
    sc_layer: str | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def project_genes(
    sdata: SpatialData | AnnData,
    sc_adata: AnnData,
    *,
    table_key: str | None = ...,
    coordinate_system: str | None = ...,
    genes: Sequence[str] | None = ...,
    mapping_key: str = ...,
    smooth: float | None = ...,
    layer: str | None = ...,
    sc_layer: str | None = ...,
    key_added: str = ...,
    copy: Literal[True],
) -> SpatialData | AnnData: ...
@validate_params(
    sc_adata=Instance((AnnData,)),
    table_key=[_STR, None],
    coordinate_system=[_STR, None],
    genes=[Instance((list, tuple, np.ndarray, pd.Index, pd.Series)), None],
    mapping_key=_STR,
    smooth=[Interval(float, 0, 1), None],
    layer=[_STR, None],
    sc_layer=[_STR, None],
    key_added=_STR,
    copy=Instance((bool,)),
)
@inject_docs()
def project_genes(
    sdata: SpatialData | AnnData,
    sc_adata: AnnData,
    *,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    genes: Sequence[str] | None = None,
    mapping_key: str = Key.default.mapping,
    smooth: float | None = None,
    layer: str | None = None,
    sc_layer: str | None = None,
    key_added: str = Key.default.projected,
    copy: bool = False,
) -> SpatialData | AnnData | None:
    """Expected expression of reference genes in every spot, from the cells :func:`~stmap.tl.map_cells` placed there.

    Two predictions are blended: the summed counts of the cells placed in the spot (keeps what is specific to the
    individual cells), and the spot's mapped composition times the reference's mean type profiles (no sampling
    noise of single cells). Each is rescaled so that, over the genes used for mapping, it has the spot's measured
    total. Genes the spots did not measure are imputed the same way.

    Parameters
    ----------
    {sdata}
    sc_adata
        The reference passed to :func:`~stmap.tl.map_cells`. The placement is read from
        ``sc_adata.obsm[f'{mapping_key}_assignment']`` (a ``copy=False`` run), else from the spot table's
        ``.uns[mapping_key]['reference']`` (a ``copy=True`` run, whose cells must be ``sc_adata``'s).
    {table_key}
    {coordinate_system}
    genes
        Reference genes to project; default all.
    mapping_key
        ``key_added`` of the :func:`~stmap.tl.map_cells` run.
    smooth
        Weight of the composition x type-profile prediction, in ``[0, 1]``: ``0`` uses only the placed cells'
        own counts, ``1`` only the type profiles. Default (``None``): ``0.5`` for spots, the best compromise in
        ``benchmarks/mapping.py`` (sparse Drop-seq cells favour ``1``; references sharing the spots' cell states
        favour ``0``); ``1`` for single-cell targets (the mapping's ``uns[mapping_key]['single_cell']``), where one
        placed reference cell is a noisy stand-in for the target and the mixture of type profiles imputes
        unmeasured genes better (``benchmarks/single_cell_targets.py``).
    layer, sc_layer
        Count layers of the spot table and the reference, as in :func:`~stmap.tl.map_cells`: a named layer is used
        as given; ``None`` uses ``X`` when it holds whole numbers, else ``layers['counts']`` (or an error).
    {key_added}
    {copy}

    Returns
    -------
    ``None`` with ``copy=False``, else the updated copy of ``sdata``. Written: with a SpatialData, table
    ``'<table>_projected'`` (for another ``key_added``: ``'<table>_<key_added>'``), spots x genes, annotating the
    same element as the spot table (``obsm['spatial']`` copied); with a plain AnnData, ``.obsm[key_added]``
    (DataFrame spots x genes). ``.uns[key_added]['params']`` on the spot table either way (with the layers read).

    Raises
    ------
    StmapInputError
        If :func:`~stmap.tl.map_cells` has not been run with ``mapping_key`` on these spots, genes are unknown, the
        counts read are NaN/infinite, negative, non-numeric, or a normalised ``X`` without ``layers['counts']``, or
        a parameter is invalid. Nothing is written.
    """
    start = logg.info("projecting genes onto spots")
    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    if ctx.sdata is not None:  # the new table's name derives from it
        check_name(Key.table.projected(ctx.table_key or "spots", key_added), "The table named by key_added")
    spots = ctx.adata
    A = mapped_assignment(sc_adata, ctx, mapping_key)
    if smooth is None:
        smooth = 1.0 if bool(spots.uns.get(mapping_key, {}).get("single_cell", False)) else 0.5
    gl = _genes(sc_adata, genes)
    Xc_all, sc_layer = read_counts(sc_adata, sc_layer, "sc_adata", arg="sc_layer")
    Xs_all, layer = read_counts(spots, layer, f"table {ctx.table_key or 'spots'!r}", arg="layer")
    P = projection(A, to_csr(Xc_all), to_csr(Xs_all), spots, sc_adata, gl, mapping_key, float(smooth))
    params = {
        "mapping_key": mapping_key,
        "genes": "all" if genes is None else gl,
        "smooth": smooth,
        "layer": layer,
        "sc_layer": sc_layer,
    }
    res = Results(ctx, key_added, params=params)
    if ctx.sdata is None:
        res.obsm(key_added, pd.DataFrame(P.toarray(), index=spots.obs_names, columns=gl))
    else:
        tab = AnnData(X=P, obs=pd.DataFrame(index=spots.obs_names.copy()), var=pd.DataFrame(index=pd.Index(gl)))
        tab.obsm[Key.obsm.spatial] = ctx.coords.copy()
        name = Key.table.projected(ctx.table_key or "spots", key_added)
        res.table(name, tab, region=ctx.region, instance_ids=spots.obs[ctx.instance_key].to_numpy())
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out
