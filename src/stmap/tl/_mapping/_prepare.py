"""Prepare the inputs of :func:`~stmap.tl.map_cells`: counts validated, mapping genes chosen, empty spots set aside."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from stmap._core import StmapInputError, log_normalize, shared_genes
from stmap._core import _logging as logg
from stmap._core._validate import read_counts

from ._single_cell import single_cell_layout
from ._validate import cell_types, check_unique_names, given_cells_per_spot, to_csr

if TYPE_CHECKING:
    from anndata import AnnData

    from stmap._core import TableContext

__all__ = ["MappingInputs", "prepare_inputs", "marker_genes"]

_MIN_GENES_WARN = 20


@dataclass
class MappingInputs:
    """Validated inputs of one :func:`~stmap.tl.map_cells` run (spots and reference on the mapping genes)."""

    #: The resolved spot table.
    ctx: TableContext
    #: The spot table's name (``'spots'`` for a plain AnnData).
    table_name: str
    #: Mapping genes, in the spot table's order.
    genes: list[str]
    #: Cell types of the reference (the categories present).
    cats: list[str]
    #: ``(n_cells,)`` type code of each reference cell.
    codes: np.ndarray
    #: Reference counts of all genes, float32 CSR.
    Xc: sparse.csr_matrix
    #: Reference counts of the mapping genes, float32 CSR.
    Xg: sparse.csr_matrix
    #: ``(n_cells,)`` library size of each reference cell on the mapping genes.
    lib_c: np.ndarray
    #: ``(n_fitted, n_genes)`` float32 counts (CSR) of the spots with counts on the mapping genes.
    Y: sparse.csr_matrix
    #: Rows of the spot table that are fitted and receive cells (the others have no counts).
    fitted: np.ndarray
    #: Cells per fitted spot when given (or one per segmented cell), else ``None`` (estimated).
    n_given: np.ndarray | None
    #: Layers read (``None``: ``X``).
    layer: str | None
    sc_layer: str | None

    @property
    def n_types(self) -> int:
        """Number of cell types."""
        return len(self.cats)


def marker_genes(X: sparse.csr_matrix, codes: np.ndarray, n_types: int, candidates: np.ndarray, n: int) -> np.ndarray:
    """Indices (into ``candidates``) of the top ``n`` markers per type (mean log expression above the best other).

    Expression is log1p-CP10k of each cell's counts (library size over all genes of ``X``).
    """
    Z = log_normalize(X[:, candidates], totals=np.asarray(X.sum(axis=1)).ravel())
    onehot = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_types, codes.size))
    means = np.asarray((onehot @ Z).todense()) / np.asarray(onehot.sum(axis=1))
    keep: set[int] = set()
    for t in range(n_types):
        other = np.delete(means, t, axis=0).max(axis=0) if n_types > 1 else 0.0
        lfc = means[t] - other
        order = np.argsort(-lfc, kind="stable")[:n]
        keep.update(order[lfc[order] > 0].tolist() or order[:1].tolist())
    return np.array(sorted(keep), dtype=np.int64)


def _select_genes(
    gl: list[str],
    gi_s: np.ndarray,
    gi_c: np.ndarray,
    genes: Any,
    Xc: sparse.csr_matrix,
    codes: np.ndarray,
    n_types: int,
    n: int,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The shared genes ``gl`` (columns ``gi_s`` of the spots, ``gi_c`` of the reference), or their markers."""
    if isinstance(genes, str):  # markers
        sel = marker_genes(Xc, codes, n_types, gi_c, int(n))
        gi_s, gi_c, gl = gi_s[sel], gi_c[sel], [gl[i] for i in sel]
    if len(gl) < _MIN_GENES_WARN:
        warnings.warn(
            f"Only {len(gl)} genes are used for mapping (fewer than {_MIN_GENES_WARN}); composition and placement "
            "may be unreliable. Use more shared genes (genes=None) if possible.",
            UserWarning,
            stacklevel=5,  # the caller of st.tl.map_cells (through prepare_inputs and the parameter check)
        )
    return gl, gi_s, gi_c


def _fitted_spots(Y: sparse.csr_matrix, spots: AnnData, n_genes: int) -> np.ndarray:
    """Rows with counts on the mapping genes (raises when none has; warns about the others)."""
    # e.g. Visium HD bins or Xenium cells without panel counts: nothing to deconvolve
    empty = np.asarray(Y.sum(axis=1)).ravel() <= 0
    if empty.all():
        raise StmapInputError(
            f"No spot has counts on the {n_genes} mapping genes; check that the spot table holds raw counts of the "
            "reference's genes (`layer=`)."
        )
    if empty.any():
        bad = spots.obs_names[empty][:5]
        logg.warning(
            f"{int(empty.sum())} of {spots.n_obs} spots have no counts on the {n_genes} mapping genes (e.g. "
            f"{', '.join(map(repr, bad))}): they get no cells and NaN fractions. Remove them first to silence this "
            "(e.g. `sc.pp.filter_cells(adata, min_counts=1)`)."
        )
    return np.flatnonzero(~empty)


def prepare_inputs(
    ctx: TableContext,
    sc_adata: AnnData,
    *,
    cell_type_key: str,
    cells_per_spot: Any,
    genes: None | Sequence[str] | str,
    n_markers: int,
    layer: str | None,
    sc_layer: str | None,
) -> MappingInputs:
    """Validate both tables and read them on the mapping genes; nothing is modified.

    Raises
    ------
    StmapInputError
        Duplicated names, missing cell types, invalid counts, too few shared genes, a wrong ``cells_per_spot``,
        no spot with counts, or reference cells without counts on the mapping genes.
    """
    spots = ctx.adata
    tname = ctx.table_key or "spots"
    check_unique_names(spots, sc_adata)
    types = cell_types(sc_adata, cell_type_key)
    Xs_all, layer = read_counts(spots, layer, f"table {tname!r}", arg="layer")
    Xc_all, sc_layer = read_counts(sc_adata, sc_layer, "sc_adata", arg="sc_layer")
    req = None if genes is None or isinstance(genes, str) else list(genes)
    gl = shared_genes(spots.var_names, sc_adata.var_names, req, a_name=f"table {tname!r}", b_name="sc_adata")
    n_given = given_cells_per_spot(cells_per_spot, spots)
    if cells_per_spot is None and single_cell_layout(ctx):
        logg.info(f"    table {tname!r} annotates segmented cells ({ctx.region!r}): one cell per target")
        n_given = np.ones(spots.n_obs, dtype=np.int64)
    Xc, Xs = to_csr(Xc_all), to_csr(Xs_all)
    codes = types.codes.astype(np.int64)
    cats = [str(c) for c in types.categories]
    gi_s, gi_c = spots.var_names.get_indexer(gl), sc_adata.var_names.get_indexer(gl)
    gl, gi_s, gi_c = _select_genes(gl, gi_s, gi_c, genes, Xc, codes, len(cats), n_markers)
    Y = sparse.csr_matrix(Xs[:, gi_s], dtype=np.float32)
    Xg = Xc[:, gi_c].tocsr()
    lib_c = np.asarray(Xg.sum(axis=1)).ravel()
    fitted = _fitted_spots(Y, spots, len(gl))
    if fitted.size < spots.n_obs:
        Y = Y[fitted]
        n_given = None if n_given is None else n_given[fitted]
    if (lib_c <= 0).any():
        bad = sc_adata.obs_names[lib_c <= 0][:5]
        raise StmapInputError(
            f"{int((lib_c <= 0).sum())} reference cells have no counts on the {len(gl)} mapping genes (e.g. "
            f"{', '.join(map(repr, bad))}); remove them first (e.g. `sc.pp.filter_cells(sc_adata, min_counts=1)`)."
        )
    return MappingInputs(ctx, tname, gl, cats, codes, Xc, Xg, lib_c, Y, fitted, n_given, layer, sc_layer)
