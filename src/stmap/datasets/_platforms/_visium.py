"""A Space Ranger Visium ``outs/`` folder: lattice -> spots -> files -> truth."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._docs import inject_docs
from stmap._core._params import validate_params

from ._common import (
    BLOCK,
    COMMON_PARAMS,
    DOCS,
    FLAG,
    POSITIVE,
    VISIUM_FIDUCIAL_UM,
    FileName,
    cells_frame,
    gene_ids,
    majority_region,
    pixel_colour,
    tissue,
    truth_var,
    type_counts,
    write_10x_h5,
    write_folder,
    write_images,
    write_tif,
    write_truth,
)

if TYPE_CHECKING:
    from anndata import AnnData

_SPOT_UM = 55.0  # capture-spot diameter
_SPOT_FULLRES_UM = 65.0  # Space Ranger's spot_diameter_fullres is the pixel span of a theoretical 65 um spot
_PITCH_UM = 100.0  # centre-to-centre distance along a row; rows are 100 * sqrt(3) / 2 apart
_ORIGIN_UM = (30.0, 35.0)  # (x, y) of spot (array_row 0, array_col 0) in the tissue frame
_NT = np.array(list("ACGT"))


@dataclass(frozen=True)
class _Args:
    seed: int
    n_cells: int
    n_genes: int
    mpp: float
    dataset_id: str
    k_hi: int
    k_lo: int
    fullres_image: bool


@dataclass
class _Spots:
    """Every spot of the lattice over the image, and the cells each holds."""

    arow: np.ndarray
    acol: np.ndarray
    centres: np.ndarray  # (x, y) µm
    centre_px: np.ndarray  # (x, y) full-resolution pixels
    centre_reg: np.ndarray  # region code at the centre (0: background)
    member: np.ndarray  # spot of each cell (-1: none)
    counts: sparse.csr_matrix  # summed counts of every spot
    in_tissue: np.ndarray
    barcodes: np.ndarray

    @property
    def tis(self) -> np.ndarray:
        """Positions of the in-tissue spots."""
        return np.flatnonzero(self.in_tissue)


@validate_params(
    **COMMON_PARAMS,
    um_per_px=POSITIVE,
    dataset_id=FileName(),
    hires_downsample=BLOCK,
    lowres_downsample=BLOCK,
    fullres_image=FLAG,
)
@inject_docs(**DOCS)
def synthetic_visium(
    path: str | Path,
    *,
    seed: int = 0,
    n_cells: int = 2000,
    n_genes: int = 200,
    um_per_px: float = 0.8,
    dataset_id: str = "sample",
    hires_downsample: int = 2,
    lowres_downsample: int = 8,
    fullres_image: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a Space Ranger Visium output folder built from cells with a known answer.

    A tissue is made with :func:`synthetic_tissue` (``seed``, ``n_cells``, ``n_genes``, its H&E rendered at
    ``um_per_px``). Visium capture spots (55 µm discs on a hexagonal lattice of 100 µm pitch: ``x = x0 + 50
    array_col``, ``y = y0 + 50 sqrt(3) array_row``, ``array_row + array_col`` even, ``(x0, y0) = (30, 35)`` µm)
    cover the image. A cell belongs to the spot whose disc contains its centre, and a spot's counts are the exact sum
    of its cells' counts. Spots are "in tissue" when the tissue map at their centre is tissue or they hold a cell.

    Files written under ``path`` (the tissue frame's micrometres divided by ``um_per_px`` are full-resolution
    pixels, origin at the image's top-left corner):

    - ``filtered_feature_bc_matrix.h5``: 10x HDF5 feature-barcode matrix (format version 2, ``int32`` counts) of the
      in-tissue spots, barcodes ``'<16 nt>-1'``, features ``id`` ``ENSSYN...``, ``name`` the gene names,
      ``feature_type`` ``'Gene Expression'``, ``genome`` ``'synthetic'``;
    - ``spatial/tissue_positions.csv`` (Space Ranger 2 layout with header ``barcode, in_tissue, array_row,
      array_col, pxl_row_in_fullres, pxl_col_in_fullres``): every spot over the image, pixel positions as floats
      (Space Ranger rounds them to integers);
    - ``spatial/scalefactors_json.json``: ``spot_diameter_fullres = 65 / um_per_px`` (the pixel span of Space
      Ranger's theoretical 65 µm spot), ``fiducial_diameter_fullres``, ``tissue_hires_scalef = 1 /
      hires_downsample`` and ``tissue_lowres_scalef = 1 / lowres_downsample``;
    - ``spatial/tissue_hires_image.png`` and ``spatial/tissue_lowres_image.png``: RGB ``uint8``, the H&E averaged
      over ``hires_downsample`` (``lowres_downsample``) square pixel blocks, so hires pixel ``(i, j)`` is the mean of
      full-resolution pixels ``[i k, (i + 1) k) x [j k, (j + 1) k)``;
    - ``tissue_image.tif`` (when ``fullres_image``): the full-resolution H&E, RGB ``uint8``;
    {truth_item}

    Parameters
    ----------
    {path}
    seed
        Random seed of the tissue and the barcodes; the same seed writes the same files.
    n_cells
        Number of cells of the tissue (about ``n_cells / 40`` spots are in tissue).
    {n_genes}
    um_per_px
        Micrometres per full-resolution pixel.
    dataset_id
        Library id written in the matrix's ``library_ids`` attribute; pass the same ``dataset_id`` to the reader.
    {downsample}
    fullres_image
        Also write the full-resolution image ``tissue_image.tif`` (read with ``fullres_image_file=``).
    {overwrite}

    {folder_returns}

    Notes
    -----
    The known answer, ``anndata.read_h5ad(path / "stmap_truth.h5ad")``, has one row per in-tissue spot in the order
    of the matrix (``obs_names`` the barcodes) with

    - ``X``: the counts (the sum of the spot's cells' counts); ``var['gene_ids']``, ``var['program']``;
    - ``obs``: ``array_row``, ``array_col``, ``x_um``, ``y_um`` (spot centre, µm), ``pxl_col_in_fullres``,
      ``pxl_row_in_fullres``, ``n_cells``, ``region`` (majority region of its cells, else the region at its
      centre), ``tumor`` (bool) and ``tumor_fraction``;
    - ``obsm``: ``'spatial_um'``, ``'cell_type_counts'`` and ``'cell_type_fractions'`` (DataFrames, columns the
      cell types), ``'he_rgb'`` (full-resolution pixel under the centre) and ``'he_hires_rgb'`` (hires pixel under
      the centre);
    - ``uns``: ``'um_per_px'``, ``'spot_diameter_um'`` (55), ``'spot_diameter_fullres'``, ``'spot_pitch_um'``,
      ``'grid_origin_um'``, ``'tissue_hires_scalef'``, ``'tissue_lowres_scalef'``, ``'dataset_id'``, ``'seed'``,
      ``'platform'`` (``'visium'``), ``'cells'`` (DataFrame: ``x_um``, ``y_um``, ``cell_type``, ``region``,
      ``spot`` barcode or ``''``) and ``'cell_counts'`` (sparse cell counts, rows as ``'cells'``).

    Read it with::

        spatialdata_io.visium(
            path,
            dataset_id="sample",
            counts_file="filtered_feature_bc_matrix.h5",
            fullres_image_file="tissue_image.tif",
        )

    which gives shapes ``'sample'`` (circles in full-resolution pixels; µm per pixel ``65 /
    (2 * radius)``), table ``'table'`` and images ``'sample_hires_image'``, ``'sample_lowres_image'``,
    ``'sample_full_image'``.

    See Also
    --------
    :func:`stmap.datasets.synthetic_visium_hd`
        The same for Visium HD.
    :func:`stmap.datasets.synthetic_tissue`
        The tissue the folder is made from.
    :doc:`/tutorials/your_own_data`
        Tutorial.

    Examples
    --------
    >>> import anndata as ad
    >>> import spatialdata_io
    >>> import stmap as st
    >>> folder = st.datasets.synthetic_visium("visium_outs", seed=0, n_cells=300)
    >>> sdata = spatialdata_io.visium(folder, dataset_id="sample")
    >>> truth = ad.read_h5ad(folder / "stmap_truth.h5ad")
    >>> sdata.tables["table"].n_obs == truth.n_obs  # one row per in-tissue spot
    True
    """
    args = _Args(
        seed=int(seed),
        n_cells=int(n_cells),
        n_genes=int(n_genes),
        mpp=float(um_per_px),
        dataset_id=dataset_id,
        k_hi=int(hires_downsample),
        k_lo=int(lowres_downsample),
        fullres_image=fullres_image,
    )
    return write_folder(path, overwrite, _write_visium, args)


def _write_visium(out: Path, a: _Args) -> None:
    """The folder's files, in order: matrix, positions, scale factors, images, truth."""
    t = tissue(a.seed, a.n_cells, a.n_genes, a.mpp)
    gen = np.random.default_rng([a.seed, 1])
    spots = _spots(t, a.mpp, gen)
    tis = spots.tis
    write_10x_h5(
        out / "filtered_feature_bc_matrix.h5",
        spots.counts[tis],
        pd.Index(spots.barcodes[tis]),
        gene_ids(a.n_genes),
        t["var"].index,
        library_id=a.dataset_id,
        chemistry="Spatial 3' v1",
    )
    spatial = out / "spatial"
    spatial.mkdir()
    _positions(spots).to_csv(spatial / "tissue_positions.csv", index=False)
    scalef = _scalefactors(a)
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalef, indent=4))
    hires = write_images(spatial, t["he"], a.k_hi, a.k_lo)
    if a.fullres_image:
        write_tif(out / "tissue_image.tif", t["he"], a.mpp)
    write_truth(out, _truth(t, spots, hires, scalef, a))


def _barcodes(n: int, gen: np.random.Generator) -> np.ndarray:
    """``n`` distinct 16-nt barcodes ``'ACGT...-1'`` in random order (deterministic with ``gen``)."""
    codes = gen.choice(4**16, size=n, replace=False)
    digits = (codes[:, None] // (4 ** np.arange(15, -1, -1))[None, :]) % 4
    return np.array(["".join(_NT[d]) + "-1" for d in digits])


def _spots(t: dict[str, Any], mpp: float, gen: np.random.Generator) -> _Spots:
    """The hexagonal lattice over the image; each cell in the spot whose disc holds its centre; summed counts."""
    from scipy.spatial import cKDTree

    he, regions = t["he"], t["regions"]
    H_um, W_um = he.shape[0] * mpp, he.shape[1] * mpp
    x0, y0 = _ORIGIN_UM
    dy = _PITCH_UM * math.sqrt(3.0) / 2.0
    half = _PITCH_UM / 2.0
    rows = np.arange(0, int(np.floor((H_um - y0) / dy)) + 1)
    cols = np.arange(0, int(np.floor((W_um - x0) / half)) + 1)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    keep = (r + c) % 2 == 0
    arow, acol = r[keep].astype(np.int64), c[keep].astype(np.int64)
    centres = np.column_stack([x0 + half * acol, y0 + dy * arow])
    n_all = centres.shape[0]

    dist, nearest = cKDTree(centres).query(t["xy"], k=1)
    member = np.where(dist <= _SPOT_UM / 2.0, nearest, -1)
    inn = np.flatnonzero(member >= 0)
    A = sparse.csr_matrix((np.ones(inn.size, dtype=np.int64), (member[inn], inn)), shape=(n_all, t["X"].shape[0]))
    n_in = np.asarray(A.sum(axis=1)).ravel()
    centre_px = centres / mpp
    centre_reg = regions[
        np.clip(centre_px[:, 1].astype(np.int64), 0, regions.shape[0] - 1),
        np.clip(centre_px[:, 0].astype(np.int64), 0, regions.shape[1] - 1),
    ].astype(np.int64)
    return _Spots(
        arow=arow,
        acol=acol,
        centres=centres,
        centre_px=centre_px,
        centre_reg=centre_reg,
        member=member,
        counts=sparse.csr_matrix(A @ t["X"]),
        in_tissue=(centre_reg > 0) | (n_in > 0),
        barcodes=_barcodes(n_all, gen),
    )


def _positions(s: _Spots) -> pd.DataFrame:
    """``spatial/tissue_positions.csv`` (Space Ranger 2 layout): every spot over the image."""
    return pd.DataFrame(
        {
            "barcode": s.barcodes,
            "in_tissue": s.in_tissue.astype(np.int64),
            "array_row": s.arow,
            "array_col": s.acol,
            "pxl_row_in_fullres": s.centre_px[:, 1],
            "pxl_col_in_fullres": s.centre_px[:, 0],
        }
    )


def _scalefactors(a: _Args) -> dict[str, float]:
    return {
        "tissue_hires_scalef": 1.0 / a.k_hi,
        "tissue_lowres_scalef": 1.0 / a.k_lo,
        "fiducial_diameter_fullres": VISIUM_FIDUCIAL_UM / a.mpp,
        "spot_diameter_fullres": _SPOT_FULLRES_UM / a.mpp,
    }


def _truth(t: dict[str, Any], s: _Spots, hires: np.ndarray, scalef: dict[str, float], a: _Args) -> AnnData:
    """One row per in-tissue spot: counts, lattice position, cells and regions under it, colours at its centre."""
    import anndata as ad

    tis = s.tis
    index = pd.Index(s.barcodes[tis])
    # spots index the in-tissue rows; cells outside in-tissue spots cannot exist (a spot with a cell is in tissue)
    pos_in = np.full(s.centres.shape[0], -1, dtype=np.int64)
    pos_in[tis] = np.arange(tis.size)
    member_in = np.where(s.member >= 0, pos_in[np.maximum(s.member, 0)], -1)
    reg_codes = t["region"].cat.codes.to_numpy().astype(np.int64)
    maj, rc = majority_region(member_in, reg_codes, tis.size, len(t["region_names"]), s.centre_reg[tis] - 1)
    tc = type_counts(member_in, t["cell_type"], tis.size, index)
    n_c = tc.sum(axis=1).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        fr = tc.to_numpy() / n_c[:, None]
    obs = pd.DataFrame(
        {
            "array_row": s.arow[tis],
            "array_col": s.acol[tis],
            "x_um": s.centres[tis, 0],
            "y_um": s.centres[tis, 1],
            "pxl_col_in_fullres": s.centre_px[tis, 0],
            "pxl_row_in_fullres": s.centre_px[tis, 1],
            "n_cells": n_c,
            "region": pd.Categorical.from_codes(np.maximum(maj, 0), categories=t["region_names"]),
            "tumor": maj == 0,
            "tumor_fraction": rc[:, 0] / np.maximum(rc.sum(axis=1), 1.0),
        },
        index=index,
    )
    truth = ad.AnnData(X=s.counts[tis].astype(np.float32), obs=obs, var=truth_var(t, gene_ids(a.n_genes)))
    truth.obsm["spatial_um"] = s.centres[tis].copy()
    truth.obsm["cell_type_counts"] = tc
    truth.obsm["cell_type_fractions"] = pd.DataFrame(fr, index=index, columns=tc.columns)
    truth.obsm["he_rgb"] = pixel_colour(t["he"], s.centre_px[tis])
    truth.obsm["he_hires_rgb"] = pixel_colour(hires, s.centre_px[tis] / a.k_hi)
    cells = cells_frame(t)
    cells["spot"] = np.where(s.member >= 0, s.barcodes[np.maximum(s.member, 0)], "")
    truth.uns.update(
        {
            "platform": "visium",
            "dataset_id": a.dataset_id,
            "seed": a.seed,
            "um_per_px": a.mpp,
            "spot_diameter_um": _SPOT_UM,
            "spot_diameter_fullres": scalef["spot_diameter_fullres"],
            "spot_pitch_um": _PITCH_UM,
            "grid_origin_um": np.array(_ORIGIN_UM),
            "tissue_hires_scalef": scalef["tissue_hires_scalef"],
            "tissue_lowres_scalef": scalef["tissue_lowres_scalef"],
            "fullres_image_file": "tissue_image.tif" if a.fullres_image else "",
            "cells": cells,
            "cell_counts": t["X"].astype(np.float32),
        }
    )
    return truth
