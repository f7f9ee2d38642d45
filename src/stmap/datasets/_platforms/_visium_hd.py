"""A Space Ranger Visium HD ``outs/`` folder: molecules -> 2 µm bins -> one folder per bin size -> truth."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError
from stmap._core._params import Interval, validate_params

from ._common import (
    BLOCK,
    COMMON_PARAMS,
    DOCS,
    POSITIVE,
    SOFTWARE,
    VISIUM_FIDUCIAL_UM,
    FileName,
    cells_frame,
    gene_ids,
    molecules,
    pixel_colour,
    tissue,
    truth_var,
    write_10x_h5,
    write_folder,
    write_images,
    write_tif,
    write_truth,
)

if TYPE_CHECKING:
    from anndata import AnnData

_BASE_UM = 2  # Visium HD's native bin


@dataclass(frozen=True)
class _Args:
    sizes: list[int]
    seed: int
    n_cells: int
    n_genes: int
    mpp: float
    spread: float
    dataset_id: str
    k_hi: int
    k_lo: int


@dataclass
class _Grid:
    """The 2 µm bins over the image (a whole number of the largest bins per side) and what falls in them."""

    n_rows: int
    n_cols: int
    rr: np.ndarray  # row of each 2 um bin
    cc: np.ndarray  # column of each 2 um bin
    counts: sparse.csr_matrix  # molecules per 2 um bin and gene
    in_tissue: np.ndarray
    cell_bin: np.ndarray  # 2 um bin holding each cell's centre


@dataclass
class _Binned:
    """One bin size: counts, in-tissue flags and barcodes of every bin, and each 2 µm bin's parent."""

    size: int
    n_rows: int
    n_cols: int
    parent: np.ndarray
    counts: sparse.csr_matrix
    in_tissue: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    barcodes: np.ndarray

    @property
    def tag(self) -> str:
        """``'008um'``."""
        return f"{self.size:03d}um"

    @property
    def keep(self) -> np.ndarray:
        """Positions of the in-tissue bins."""
        return np.flatnonzero(self.in_tissue)

    def centres_um(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` bin centres in µm."""
        return (self.cols + 0.5) * self.size, (self.rows + 0.5) * self.size


def _bin_sizes(bin_sizes: Any) -> list[int]:
    """Distinct, nested multiples of 2 µm, sorted (data-dependent: checked here, not declared)."""
    if isinstance(bin_sizes, int | np.integer) and not isinstance(bin_sizes, bool):
        bin_sizes = [bin_sizes]
    try:
        sizes = sorted({int(b) for b in bin_sizes if not isinstance(b, bool) and int(b) == b})
        n_given = len(list(bin_sizes))
    except (TypeError, ValueError) as e:
        raise StmapInputError(
            f"`bin_sizes` must be a sequence of integers (µm), e.g. (2, 8, 16); got {bin_sizes!r}."
        ) from e
    if not sizes or len(sizes) != n_given or any(b < _BASE_UM or b > 999 or b % _BASE_UM for b in sizes):
        raise StmapInputError(
            f"`bin_sizes` must be distinct multiples of {_BASE_UM} µm between 2 and 998 (Visium HD bins are made "
            f"of its native 2 µm squares), e.g. (2, 8, 16); got {bin_sizes!r}."
        )
    for a, b in zip(sizes[:-1], sizes[1:]):
        if b % a:
            raise StmapInputError(
                f"`bin_sizes` must nest (each a multiple of the next smaller one) so that a larger bin is the exact "
                f"sum of smaller ones; {b} is not a multiple of {a}. Use e.g. (2, 8, 16)."
            )
    return sizes


@validate_params(
    **COMMON_PARAMS,
    um_per_px=POSITIVE,
    spread_um=Interval(float, 0, None),
    dataset_id=FileName(),
    hires_downsample=BLOCK,
    lowres_downsample=BLOCK,
)
@inject_docs(**DOCS)
def synthetic_visium_hd(
    path: str | Path,
    *,
    bin_sizes: Sequence[int] = (2, 8, 16),
    seed: int = 0,
    n_cells: int = 300,
    n_genes: int = 100,
    um_per_px: float = 0.5,
    spread_um: float = 4.0,
    dataset_id: str = "sample",
    hires_downsample: int = 2,
    lowres_downsample: int = 8,
    overwrite: bool = False,
) -> Path:
    """Write a Space Ranger Visium HD output folder built from cells with a known answer.

    A tissue is made with :func:`synthetic_tissue` (``seed``, ``n_cells``, ``n_genes``, H&E rendered at
    ``um_per_px``). Each cell's molecules are placed uniformly at random in a disc of radius ``spread_um`` around its
    centre (``spread_um=0`` puts them all at the centre), and the 2 µm bins count the molecules that fall in them:
    bin ``(array_row, array_col)`` of size ``b`` spans ``[b col, b (col + 1)) x [b row, b (row + 1))`` µm of the
    tissue frame. Larger bins are the exact sums of the 2 µm bins they contain (``row_b = row_2 // (b / 2)``), with
    the same genes, whether or not 2 is in ``bin_sizes``. A 2 µm bin is in tissue when the tissue map at its centre is
    tissue or it holds a molecule; a larger bin when any of its 2 µm bins is, so every molecule lands in an in-tissue
    bin of every size.

    Files written under ``path`` (full-resolution pixel = µm / ``um_per_px``, origin at the image's top-left):

    - ``<dataset_id>_feature_slice.h5``: attribute ``metadata_json`` (``hd_layout_json`` with ``file_format``
      ``'1.0'`` and ``transform``, the 2 µm (col, row) -> µm affine; ``transform_matrices`` between 2 µm (col, row)
      and microscope pixels; the CytAssist ones are identities as no CytAssist image is written);
    - ``binned_outputs/square_XXXum/filtered_feature_bc_matrix.h5`` per bin size: 10x HDF5 matrix of the in-tissue
      bins, barcodes ``s_XXXum_RRRRR_CCCCC-1``;
    - ``binned_outputs/square_XXXum/spatial/tissue_positions.parquet``: every bin over the image (``barcode,
      in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres``, float pixel centres);
    - ``binned_outputs/square_XXXum/spatial/scalefactors_json.json``: ``bin_size_um``, ``microns_per_pixel =
      um_per_px``, ``spot_diameter_fullres = bin_size_um / um_per_px``, ``tissue_hires_scalef = 1 /
      hires_downsample``, ``tissue_lowres_scalef = 1 / lowres_downsample``, ``fiducial_diameter_fullres``,
      ``regist_target_img_scalef``;
    - ``spatial/tissue_hires_image.png``, ``spatial/tissue_lowres_image.png``: block means of the H&E (as in
      :func:`synthetic_visium`);
    - ``microscope_image/<dataset_id>_tissue_image.tif``: the full-resolution H&E (RGB ``uint8``);
    {truth_item}

    Parameters
    ----------
    {path}
    bin_sizes
        Bin sizes in µm to write, nested multiples of 2 (Space Ranger writes 2, 8 and 16). ``(8, 16)`` skips the
        many 2 µm bins for speed.
    seed
        Random seed of the tissue and the molecule positions.
    n_cells
        Number of cells (the default tissue is about 330 µm across: about 27,000 2 µm bins).
    {n_genes}
    um_per_px
        Micrometres per full-resolution pixel (Space Ranger's ``microns_per_pixel``).
    spread_um
        Radius in µm of the disc over which a cell's molecules are spread.
    dataset_id
        Prefix of the feature slice file; the reader infers it (or pass the same ``dataset_id``).
    {downsample}
    {overwrite}

    {folder_returns}

    Notes
    -----
    The known answer, ``anndata.read_h5ad(path / "stmap_truth.h5ad")``, has one row per cell with

    - ``X``: the cell's counts (its molecules per gene); ``var['gene_ids']``, ``var['program']``;
    - ``obs``: ``x_um``, ``y_um``, ``cell_type``, ``region`` and, per written bin size, ``bin_XXXum`` (barcode of the
      bin holding the cell's centre);
    - ``obsm['spatial_um']``: cell centres;
    - ``uns``: ``'um_per_px'``, ``'bin_sizes'``, ``'spread_um'``, ``'dataset_id'``, ``'seed'``, ``'platform'``
      (``'visium_hd'``), ``'tissue_hires_scalef'``, ``'tissue_lowres_scalef'``, and per bin size ``XXX``:
      ``uns['bins']['square_XXXum']`` (DataFrame of the in-tissue bins in the matrix's order: ``array_row``,
      ``array_col``, ``x_um``, ``y_um`` (centre), ``region`` at the centre, ``tumor``, ``n_cells`` (cells whose
      centre is inside), ``n_molecules`` and ``hires_r``, ``hires_g``, ``hires_b`` (hires pixel under the centre))
      and ``uns['bin_counts']['square_XXXum']`` (sparse counts, same rows).

    Read it with::

        spatialdata_io.visium_hd(path, dataset_id="sample", load_segmentations_only=False)

    which gives, per bin size, shapes ``'sample_square_XXXum'`` (squares in full-resolution pixels) and table
    ``'square_XXXum'`` (``obs`` with ``array_row``, ``array_col``, ``location_id``), and images
    ``'sample_full_image'``, ``'sample_hires_image'``, ``'sample_lowres_image'``. The reader does not keep
    ``microns_per_pixel``: it is in each ``scalefactors_json.json`` and in the truth.

    See Also
    --------
    :func:`stmap.datasets.synthetic_visium`
        The same for Visium.
    :func:`stmap.datasets.large_visium_hd`
        A whole capture area, written as zarr.
    :doc:`/tutorials/your_own_data`
        Tutorial.

    Examples
    --------
    >>> import spatialdata_io
    >>> import stmap as st
    >>> folder = st.datasets.synthetic_visium_hd("hd_outs", bin_sizes=(8, 16))  # no 2 µm bins, for speed
    >>> sdata = spatialdata_io.visium_hd(folder, dataset_id="sample", load_segmentations_only=False)
    >>> sorted(sdata.tables)
    ['square_008um', 'square_016um']
    """
    args = _Args(
        sizes=_bin_sizes(bin_sizes),
        seed=int(seed),
        n_cells=int(n_cells),
        n_genes=int(n_genes),
        mpp=float(um_per_px),
        spread=float(spread_um),
        dataset_id=dataset_id,
        k_hi=int(hires_downsample),
        k_lo=int(lowres_downsample),
    )
    return write_folder(path, overwrite, _write_visium_hd, args)


def _write_visium_hd(out: Path, a: _Args) -> None:
    """The folder's files, in order: images, feature slice, one folder per bin size, truth."""
    t = tissue(a.seed, a.n_cells, a.n_genes, a.mpp)
    grid = _grid(t, a, np.random.default_rng([a.seed, 2]))
    (out / "spatial").mkdir()
    hires = write_images(out / "spatial", t["he"], a.k_hi, a.k_lo)
    (out / "microscope_image").mkdir()
    write_tif(out / "microscope_image" / f"{a.dataset_id}_tissue_image.tif", t["he"], a.mpp)
    _write_feature_slice(out / f"{a.dataset_id}_feature_slice.h5", grid, a.mpp)
    ids = gene_ids(a.n_genes)
    cell_bins: dict[str, np.ndarray] = {}
    bins: dict[str, pd.DataFrame] = {}
    bin_counts: dict[str, sparse.csr_matrix] = {}
    for size in a.sizes:
        b = _bin(grid, size)
        _write_bin_folder(out / "binned_outputs" / f"square_{b.tag}", b, t, ids, a)
        bins[f"square_{b.tag}"] = _bin_truth(b, grid, t, hires, a)
        bin_counts[f"square_{b.tag}"] = b.counts[b.keep].astype(np.float32)
        cell_bins[f"bin_{b.tag}"] = b.barcodes[b.parent[grid.cell_bin]]
    write_truth(out, _truth(t, cell_bins, bins, bin_counts, ids, a))


def _grid(t: dict[str, Any], a: _Args, gen: np.random.Generator) -> _Grid:
    """Spread each cell's molecules around its centre and count them in the 2 µm bins."""
    he, regions, mpp, base = t["he"], t["regions"], a.mpp, _BASE_UM
    H_um, W_um = he.shape[0] * mpp, he.shape[1] * mpp
    top = a.sizes[-1]
    n_rows = int(np.ceil(H_um / top)) * (top // base)  # 2 um grid, a whole number of the largest bins
    n_cols = int(np.ceil(W_um / top)) * (top // base)
    n = t["X"].shape[0]
    cell, gene, pos = molecules(gen, t["X"], t["xy"], np.full(n, a.spread))
    col2 = np.clip(np.floor(pos[:, 0] / base).astype(np.int64), 0, n_cols - 1)
    row2 = np.clip(np.floor(pos[:, 1] / base).astype(np.int64), 0, n_rows - 1)
    flat2 = row2 * n_cols + col2
    C2 = sparse.csr_matrix((np.ones(flat2.size, dtype=np.int64), (flat2, gene)), shape=(n_rows * n_cols, a.n_genes))
    C2.sum_duplicates()
    rr, cc = np.divmod(np.arange(n_rows * n_cols), n_cols)
    cx_px = ((cc + 0.5) * base / mpp).astype(np.int64)
    cy_px = ((rr + 0.5) * base / mpp).astype(np.int64)
    reg2 = regions[np.clip(cy_px, 0, regions.shape[0] - 1), np.clip(cx_px, 0, regions.shape[1] - 1)].astype(np.int64)
    cell_row = np.clip(np.floor(t["xy"][:, 1] / base).astype(np.int64), 0, n_rows - 1)
    cell_col = np.clip(np.floor(t["xy"][:, 0] / base).astype(np.int64), 0, n_cols - 1)
    return _Grid(
        n_rows=n_rows,
        n_cols=n_cols,
        rr=rr,
        cc=cc,
        counts=C2,
        in_tissue=(reg2 > 0) | (np.diff(C2.indptr) > 0),
        cell_bin=cell_row * n_cols + cell_col,
    )


def _write_feature_slice(file: Path, g: _Grid, mpp: float) -> None:
    """The feature slice: metadata only (the 2 µm grid's layout and its transforms to microscope pixels)."""
    import h5py

    base = _BASE_UM
    colrow_to_um = [base, 0.0, base / 2, 0.0, base, base / 2, 0.0, 0.0, 1.0]
    spot_to_px = np.array([[base / mpp, 0.0, base / 2 / mpp], [0.0, base / mpp, base / 2 / mpp], [0.0, 0.0, 1.0]])
    layout = {"file_format": "1.0", "transform": colrow_to_um, "num_rows": g.n_rows, "num_cols": g.n_cols}
    metadata = {
        "hd_layout_json": json.dumps(layout),
        "transform_matrices": {
            "spot_colrow_to_microscope_colrow": spot_to_px.ravel().tolist(),
            "microscope_colrow_to_spot_colrow": np.linalg.inv(spot_to_px).ravel().tolist(),
            "cytassist_colrow_to_spot_colrow": np.eye(3).ravel().tolist(),
            "spot_colrow_to_cytassist_colrow": np.eye(3).ravel().tolist(),
        },
        "software_version": SOFTWARE,
        "microns_per_pixel": mpp,
    }
    with h5py.File(file, "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)


def _bin(g: _Grid, size: int) -> _Binned:
    """Bins of ``size`` µm: exact sums of the 2 µm bins they contain."""
    fold = size // _BASE_UM  # 2 um bins per side of a bin of this size
    nr, nc = g.n_rows // fold, g.n_cols // fold
    parent = (g.rr // fold) * nc + (g.cc // fold)
    P = sparse.csr_matrix(
        (np.ones(parent.size, dtype=np.int64), (parent, np.arange(parent.size))), shape=(nr * nc, parent.size)
    )
    br, bc = np.divmod(np.arange(nr * nc), nc)
    tag = f"{size:03d}um"
    barcodes = np.char.add(
        np.char.add(np.char.add(f"s_{tag}_", np.char.zfill(br.astype(str), 5)), "_"),
        np.char.add(np.char.zfill(bc.astype(str), 5), "-1"),
    )
    return _Binned(
        size=size,
        n_rows=nr,
        n_cols=nc,
        parent=parent,
        counts=sparse.csr_matrix(P @ g.counts),
        in_tissue=np.asarray(P @ g.in_tissue.astype(np.int64)).ravel() > 0,
        rows=br,
        cols=bc,
        barcodes=barcodes,
    )


def _write_bin_folder(folder: Path, b: _Binned, t: dict[str, Any], ids: np.ndarray, a: _Args) -> None:
    """``binned_outputs/square_XXXum``: matrix, positions and scale factors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "spatial").mkdir(parents=True)
    keep = b.keep
    write_10x_h5(
        folder / "filtered_feature_bc_matrix.h5",
        b.counts[keep],
        b.barcodes[keep],
        ids,
        t["var"].index,
        library_id=a.dataset_id,
        chemistry="Visium HD v1",
    )
    xc_um, yc_um = b.centres_um()
    table = pa.table(
        {
            "barcode": pa.array(b.barcodes.astype(object), type=pa.string()),
            "in_tissue": pa.array(b.in_tissue.astype(np.int32)),
            "array_row": pa.array(b.rows.astype(np.int32)),
            "array_col": pa.array(b.cols.astype(np.int32)),
            "pxl_row_in_fullres": pa.array(yc_um / a.mpp),
            "pxl_col_in_fullres": pa.array(xc_um / a.mpp),
        }
    )
    pq.write_table(table, folder / "spatial" / "tissue_positions.parquet")
    scalef = {
        "spot_diameter_fullres": b.size / a.mpp,
        "bin_size_um": float(b.size),
        "microns_per_pixel": a.mpp,
        "regist_target_img_scalef": 1.0 / a.k_hi,
        "tissue_lowres_scalef": 1.0 / a.k_lo,
        "fiducial_diameter_fullres": VISIUM_FIDUCIAL_UM / a.mpp,
        "tissue_hires_scalef": 1.0 / a.k_hi,
    }
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalef, indent=4))


def _bin_truth(b: _Binned, g: _Grid, t: dict[str, Any], hires: np.ndarray, a: _Args) -> pd.DataFrame:
    """The in-tissue bins of one size: position, region at the centre, cells and molecules, hires colour."""
    keep, regions, mpp = b.keep, t["regions"], a.mpp
    xc_um, yc_um = b.centres_um()
    n_cells_b = np.bincount(b.parent[g.cell_bin], minlength=b.n_rows * b.n_cols)
    cpx = np.clip((xc_um / mpp).astype(np.int64), 0, regions.shape[1] - 1)
    cpy = np.clip((yc_um / mpp).astype(np.int64), 0, regions.shape[0] - 1)
    reg_b = regions[cpy, cpx].astype(np.int64)[keep]
    names = ["background", *t["region_names"]]
    centre_hires = pixel_colour(hires, np.column_stack([xc_um[keep], yc_um[keep]]) / mpp / a.k_hi)
    return pd.DataFrame(
        {
            "array_row": b.rows[keep],
            "array_col": b.cols[keep],
            "x_um": xc_um[keep],
            "y_um": yc_um[keep],
            "region": pd.Categorical.from_codes(reg_b, categories=names),
            "tumor": reg_b == 1,
            "n_cells": n_cells_b[keep],
            "n_molecules": np.asarray(b.counts[keep].sum(axis=1)).ravel(),
            "hires_r": centre_hires[:, 0],
            "hires_g": centre_hires[:, 1],
            "hires_b": centre_hires[:, 2],
        },
        index=pd.Index(b.barcodes[keep]),
    )


def _truth(
    t: dict[str, Any],
    cell_bins: dict[str, np.ndarray],
    bins: dict[str, pd.DataFrame],
    bin_counts: dict[str, sparse.csr_matrix],
    ids: np.ndarray,
    a: _Args,
) -> AnnData:
    """One row per cell (its counts and the bin of each size holding its centre); the bins in ``uns``."""
    import anndata as ad

    cells = cells_frame(t)
    for k, v in cell_bins.items():
        cells[k] = v
    truth = ad.AnnData(X=t["X"].astype(np.float32), obs=cells, var=truth_var(t, ids))
    truth.obsm["spatial_um"] = t["xy"].copy()
    truth.uns.update(
        {
            "platform": "visium_hd",
            "dataset_id": a.dataset_id,
            "seed": a.seed,
            "um_per_px": a.mpp,
            "bin_sizes": np.array(a.sizes),
            "spread_um": a.spread,
            "tissue_hires_scalef": 1.0 / a.k_hi,
            "tissue_lowres_scalef": 1.0 / a.k_lo,
            "bins": bins,
            "bin_counts": bin_counts,
        }
    )
    return truth
