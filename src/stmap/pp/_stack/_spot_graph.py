"""``st.pp.spot_graph_3d``: the 3D spot graph of a stacked table (read the table -> :func:`graph_arrays` -> write)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from scipy import sparse

from ..._core import StmapInputError, inject_docs, is_spatialdata, unknown_key
from ..._core import _logging as logg
from ..._core._constants import Key
from ..._core._params import Instance, Interval, Options, validate_params
from ._graph import graph_arrays
from ._write import ALIGNED

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from ..._core import TableContext


def stack_context(
    sdata: SpatialData | AnnData, table_key: str | None, spatial_key: str, section_key: str
) -> tuple[TableContext, AnnData]:
    """The stacked table of ``sdata`` (a SpatialData with the stack's table, or the table itself), checked.

    Returns ``(TableContext, AnnData)``: the context writes results into the table (coordinate system
    ``'aligned'``). Raises when the table, ``obsm[spatial_key]`` or ``obs[section_key]`` is missing.
    """
    from anndata import AnnData

    from ..._core import TableContext

    hint = "Build the stack with `st.pp.stack_sections`."
    if isinstance(sdata, AnnData):
        adata = sdata
        ctx = TableContext(sdata, adata, None, None, None, None, None, spatial_key, spatial_key)
    elif is_spatialdata(sdata):
        if table_key not in sdata.tables:
            raise unknown_key("Table", str(table_key), sdata.tables.keys(), "sdata.tables", hint=hint)
        adata = sdata.tables[table_key]
        ctx = TableContext(sdata, adata, table_key, None, None, None, None, ALIGNED)
    else:
        raise TypeError(f"Expected a SpatialData or an AnnData, got {type(sdata).__name__}.")
    if spatial_key not in adata.obsm:
        raise unknown_key("Coordinates key", spatial_key, adata.obsm.keys(), "obsm", hint=hint)
    if section_key not in adata.obs:
        raise unknown_key("Section column", section_key, adata.obs.columns, "obs")
    return ctx, adata


def stack_radius(adata: AnnData, fix: str) -> np.ndarray | float:
    """The spot radius of a stacked table: ``obs['spot_radius_um']``, else the stack's median; ``fix`` if unknown."""
    if Key.obs.spot_radius_um in adata.obs:
        return adata.obs[Key.obs.spot_radius_um].to_numpy(dtype=float)
    stack = adata.uns.get(Key.uns.stack)
    if isinstance(stack, Mapping) and Key.obs.spot_radius_um in stack:
        return float(stack[Key.obs.spot_radius_um])
    raise StmapInputError(f"The spot radius is unknown: {fix}.")


def _features(adata: AnnData, features_key: str | None) -> np.ndarray | None:
    import pandas as pd

    if features_key is None:
        return None
    if features_key not in adata.obsm:
        hint = "Compute features first, e.g. with `st.pp.histology_features` per section."
        raise unknown_key("Features key", features_key, adata.obsm.keys(), "obsm", hint=hint)
    f = adata.obsm[features_key]
    return f.to_numpy(dtype=float) if isinstance(f, pd.DataFrame) else np.asarray(f, dtype=float)


def _graph(
    xyz: np.ndarray, codes: np.ndarray, radius: Any, feats: np.ndarray | None, features_key: str | None, **kw: Any
) -> dict[str, sparse.csr_matrix]:
    """:func:`graph_arrays`; spots with NaN features (e.g. of a section without an image) get no similarity edges."""
    nan_rows = None
    if feats is not None and not np.isfinite(feats).all():
        nan_rows = ~np.isfinite(feats).all(1)
        if nan_rows.all():
            raise StmapInputError(f"obsm[{features_key!r}] has no row of finite features.")
        feats = np.where(nan_rows[:, None], 0.0, feats)
    g = graph_arrays(xyz, codes, radius, feats, **kw)
    if nan_rows is None or feats is None:
        return g
    n, ok = len(xyz), np.flatnonzero(~nan_rows)  # the similarity part among the spots with features only
    r = np.broadcast_to(np.asarray(radius, dtype=float), (n,))[ok]
    kw_sim = {"k_similar": kw["k_similar"], "k_spatial": 0, "layers_apart": kw["layers_apart"]}
    sub = graph_arrays(xyz[ok], codes[ok], r, feats[ok], **kw_sim)["similarity"].tocoo()
    g["similarity"] = sparse.csr_matrix((sub.data, (ok[sub.row], ok[sub.col])), shape=(n, n), dtype=np.float32)
    return g


@overload
def spot_graph_3d(
    sdata: SpatialData | AnnData,
    *,
    table_key: str | None = ...,
    features_key: str | None = ...,
    k_similar: int = ...,
    k_spatial: int = ...,
    layers_apart: int = ...,
    min_iou: float = ...,
    spatial_weights: Literal["binary", "gaussian"] = ...,
    section_key: str = ...,
    spatial_key: str = ...,
    radius: float | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def spot_graph_3d(
    sdata: SpatialData | AnnData,
    *,
    table_key: str | None = ...,
    features_key: str | None = ...,
    k_similar: int = ...,
    k_spatial: int = ...,
    layers_apart: int = ...,
    min_iou: float = ...,
    spatial_weights: Literal["binary", "gaussian"] = ...,
    section_key: str = ...,
    spatial_key: str = ...,
    radius: float | None = ...,
    key_added: str = ...,
    copy: Literal[True],
) -> SpatialData | AnnData: ...


@validate_params(
    table_key=[Instance((str,)), None],
    features_key=[Instance((str,)), None],
    k_similar=Interval(int, 1, None),
    k_spatial=Interval(int, 0, None),
    layers_apart=Interval(int, 1, None),
    min_iou=Interval(float, 0, 1, "left"),
    spatial_weights=Options({"binary", "gaussian"}),
    section_key=Instance((str,)),
    spatial_key=Instance((str,)),
    radius=[Interval(float, 0, None, "neither"), None],
    key_added=Instance((str,)),
    copy=Instance((bool,)),
)
@inject_docs()
def spot_graph_3d(
    sdata: SpatialData | AnnData,
    *,
    table_key: str | None = Key.table.stack,
    features_key: str | None = None,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int = 1,
    min_iou: float = 0.0,
    spatial_weights: Literal["binary", "gaussian"] = "binary",
    section_key: str = Key.obs.section,
    spatial_key: str = Key.obsm.spatial_3d,
    radius: float | None = None,
    key_added: str = Key.default.spot_graph_3d,
    copy: bool = False,
) -> SpatialData | AnnData | None:
    """The 3D spot graph of a stacked table: disc overlap and feature similarity across sections, kNN within.

    Wraps :func:`stmap.pp.graph_arrays` (the same graph on plain arrays) on the table made by
    :func:`stmap.pp.stack_sections` (or any table/AnnData with aligned coordinates and a categorical section column,
    categories in stacking order).

    Parameters
    ----------
    sdata
        A SpatialData holding the stacked table, or the stacked AnnData itself.
    table_key
        Name of the stacked table (ignored for an AnnData).
    features_key
        ``obsm`` key of spot features (e.g. ``'X_histology'``) for the similarity part; ``None`` skips it.
    k_similar
        Most similar spots kept per spot, among spots of other sections at most ``layers_apart`` away.
    k_spatial
        Nearest neighbours per spot within its section.
    layers_apart
        Sections at most this many positions apart (in the order of ``obs[section_key]``'s categories) are joined.
    min_iou
        Overlap edges need an IoU above this.
    spatial_weights
        ``'binary'`` (every kNN edge 1) or ``'gaussian'`` (``exp(-d^2 / 2s^2)``, ``s`` the section's median
        nearest-neighbour distance).
    section_key
        ``obs`` column of the sections.
    spatial_key
        ``obsm`` key of the aligned coordinates (``x, y`` used; micrometres for a stack).
    radius
        Spot radius in the units of ``spatial_key``; default ``obs['spot_radius_um']``, else
        ``uns['stmap_stack']['spot_radius_um']``.
    {key_added}
    {copy}

    Returns
    -------
    ``None`` (``copy=False``) or the updated copy. Written to the table: ``obsp['<key_added>_overlap']`` (disc IoU),
    ``obsp['<key_added>_spatial']`` (within-section kNN) and, with ``features_key``,
    ``obsp['<key_added>_similarity']`` (cosine similarity, top ``k_similar``; spots with NaN features, e.g. of a
    section without an image, get no similarity edges, and ``layers_apart`` then counts only the sections with
    features): symmetric CSR matrices; and
    ``uns[key_added]``: ``nnz_per_spot`` per part, ``params``.

    Raises
    ------
    StmapInputError
        Unknown table or keys, a non-categorical section column, unknown spot radius, a parameter of the wrong type
        or out of range. Nothing is written.

    See Also
    --------
    :func:`stmap.pp.graph_arrays`
        The same graph on plain arrays.
    :func:`stmap.tl.impute_3d`
        Propagates expression over this graph.

    Examples
    --------
    >>> import stmap as st
    >>> sections = st.datasets.simulate_stack(3, n_genes=20, grid=8, seed=0)  # three serial sections
    >>> stack = st.pp.stack_sections(sections, transforms="warped")
    >>> st.pp.spot_graph_3d(stack)
    >>> sorted(stack.tables["stack"].obsp)
    ['stmap_graph_overlap', 'stmap_graph_spatial']
    """
    import pandas as pd

    from ..._core import Results

    ctx, adata = stack_context(sdata, table_key, spatial_key, section_key)
    sec = adata.obs[section_key]
    if not isinstance(sec.dtype, pd.CategoricalDtype):
        raise StmapInputError(
            f"obs[{section_key!r}] must be categorical with categories in stacking order, e.g. "
            f"`adata.obs[{section_key!r}] = pd.Categorical(values, categories=[...])`."
        )
    r = stack_radius(adata, "pass `radius=` (units of the coordinates)") if radius is None else radius
    feats = _features(adata, features_key)
    start = logg.info("building the 3D spot graph")
    kw = {"k_similar": k_similar, "k_spatial": k_spatial, "layers_apart": layers_apart}
    xyz, codes = np.asarray(adata.obsm[spatial_key], dtype=float), sec.cat.codes.to_numpy()
    g = _graph(xyz, codes, r, feats, features_key, **kw, min_iou=min_iou, spatial_weights=spatial_weights)
    params = {
        "features_key": features_key,
        **kw,
        "min_iou": min_iou,
        "spatial_weights": spatial_weights,
        "section_key": section_key,
        "spatial_key": spatial_key,
    }
    res = Results(ctx, key_added, params)
    for part, m in g.items():
        res.obsp(Key.graph_3d(key_added, part), m)
    res.uns(key_added, {"nnz_per_spot": {part: float(m.nnz / max(adata.n_obs, 1)) for part, m in g.items()}})
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out
