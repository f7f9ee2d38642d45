"""Synthetic raw platform output folders (Visium, Visium HD, Xenium) with a known answer.

Each writer builds a tissue with :func:`~stmap.datasets.synthetic_tissue` (cells with types, counts and positions in
micrometres, an H&E-like image and tissue regions) and writes it as the files that 10x Genomics' pipelines produce,
in the layout that the ``spatialdata_io`` readers read:

* :func:`synthetic_visium`: a Space Ranger Visium ``outs/`` folder, read by ``spatialdata_io.visium``;
* :func:`synthetic_visium_hd`: a Space Ranger Visium HD ``outs/`` folder, read by ``spatialdata_io.visium_hd``;
* :func:`synthetic_xenium`: a Xenium Onboard Analysis output folder, read by ``spatialdata_io.xenium``.

The known answer is written beside the platform files, as ``stmap_truth.h5ad`` (an :class:`anndata.AnnData` that
no reader looks at). Only ``h5py``, ``pyarrow``, ``tifffile``, ``zarr`` and ``Pillow`` are used to write: importing
these writers does not import ``spatialdata_io``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._errors import StmapInputError

__all__ = ["TRUTH_FILE", "synthetic_visium", "synthetic_visium_hd", "synthetic_xenium"]

#: Name of the file holding the known answer in every folder written here (read it with
#: :func:`anndata.read_h5ad`). The spatialdata-io readers do not look at it.
TRUTH_FILE = "stmap_truth.h5ad"

_SOFTWARE = "stmap-synthetic"
_VISIUM_SPOT_UM = 55.0  # capture-spot diameter
_VISIUM_SPOT_FULLRES_UM = 65.0  # Space Ranger's spot_diameter_fullres is the pixel span of a theoretical 65 um spot
_VISIUM_FIDUCIAL_UM = 65.0 * 144.48 / 89.44  # fiducial / spot diameter ratio of Space Ranger's scalefactors
_VISIUM_PITCH_UM = 100.0  # centre-to-centre distance along a row; rows are 100 * sqrt(3) / 2 apart
_VISIUM_ORIGIN_UM = (30.0, 35.0)  # (x, y) of spot (array_row 0, array_col 0) in the tissue frame
_HD_BASE_UM = 2  # Visium HD's native bin
_XENIUM_VERSION = "xenium-3.0.0.15"
_XENIUM_NUC_EXTRA_UM = 3.0  # cell radius = nucleus radius + this (nucleus expansion, clipped by Voronoi)
_NT = np.array(list("ACGT"))


# --------------------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------------------
def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise StmapInputError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _pos(value: Any, name: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise StmapInputError(f"`{name}` must be a number, got {value!r}.") from e
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise StmapInputError(f"`{name}` must be a {kind} finite number, got {value!r}.")
    return v


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise StmapInputError(
            f"`seed` must be a non-negative integer (the folders are reproducible from it), got {seed!r}."
        )
    return int(seed)


def _name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "/\\") or value.startswith("."):
        raise StmapInputError(f"`{name}` must be a non-empty file-name-safe string (no '/', '\\\\'), got {value!r}.")
    return value


def _out_dir(path: Any, overwrite: bool) -> Path:
    if not isinstance(path, str | Path):
        raise StmapInputError(f"`path` must be a str or pathlib.Path, got {type(path).__name__}.")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise StmapInputError(f"{out} exists and is a file; give a folder path.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise StmapInputError(f"{out} exists and is not empty; give a new or empty folder, or pass overwrite=True.")
        if not (out / TRUTH_FILE).exists():
            raise StmapInputError(
                f"overwrite=True only replaces a folder written by stmap (one holding {TRUTH_FILE!r}); {out} is not "
                "one. Give a new or empty folder."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write(path: Any, overwrite: bool, body, *args) -> Path:
    """Prepare the folder, run ``body(out, *args)``; on failure remove what was written (and the folder if new)."""
    existed = isinstance(path, str | Path) and Path(path).is_dir()
    out = _out_dir(path, overwrite)
    try:
        body(out, *args)
    except BaseException:
        if existed:  # the user's (empty) folder: keep it, empty
            for p in out.iterdir():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _downsample_factor(value: Any, name: str) -> int:
    return _int(value, name, 1)


# --------------------------------------------------------------------------------------------------------------------
# shared writers
# --------------------------------------------------------------------------------------------------------------------
def _tissue(seed: int, n_cells: int, n_genes: int, mpp: float) -> dict[str, Any]:
    """Cells, H&E (y, x, 3) and region map of :func:`synthetic_tissue`, as plain arrays."""
    from ._simulate import synthetic_tissue

    sd = synthetic_tissue(seed, n_cells=n_cells, n_genes=n_genes, mpp=mpp)
    cells = sd.tables["cells"]
    he = np.ascontiguousarray(np.moveaxis(np.asarray(sd.images["he"]["scale0"]["image"].values), 0, -1))
    regions = np.asarray(sd.labels["he_regions"]["scale0"]["image"].values)
    X = sparse.csr_matrix(cells.layers["counts"]).astype(np.int64)
    X.sort_indices()
    return {
        "xy": np.asarray(cells.obsm["spatial"], dtype=np.float64),
        "cell_type": cells.obs["cell_type"].copy(),
        "region": cells.obs["region"].copy(),
        "names": cells.obs_names.copy(),
        "X": X,
        "var": cells.var.copy(),
        "he": he,
        "regions": regions,
        "region_names": list(cells.obs["region"].cat.categories),
        "mpp": mpp,
    }


def _gene_ids(n: int) -> np.ndarray:
    return np.array([f"ENSSYN{i + 1:011d}" for i in range(n)])


def _write_10x_h5(
    file: Path,
    X: sparse.spmatrix,
    barcodes: Sequence[str],
    gene_ids: Sequence[str],
    gene_names: Sequence[str],
    *,
    library_id: str,
    chemistry: str,
) -> None:
    """Write a 10x feature-barcode matrix (HDF5 format version 2 of Cell/Space Ranger >= 3)."""
    import h5py

    Xc = sparse.csr_matrix(X)  # barcodes x genes in CSR == genes x barcodes in CSC, as 10x stores it
    Xc.sort_indices()
    n_obs, n_var = Xc.shape

    def _s(values) -> np.ndarray:
        return np.array([str(v).encode() for v in values], dtype=f"S{max([1, *(len(str(v)) for v in values)])}")

    with h5py.File(file, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["chemistry_description"] = chemistry
        f.attrs["software_version"] = _SOFTWARE
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=_s(barcodes) if n_obs else np.array([], dtype="S1"))
        m.create_dataset("data", data=Xc.data.astype(np.int32), compression="gzip", compression_opts=1)
        m.create_dataset("indices", data=Xc.indices.astype(np.int64), compression="gzip", compression_opts=1)
        m.create_dataset("indptr", data=Xc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_var, n_obs], dtype=np.int32))
        feat = m.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feat.create_dataset("feature_type", data=_s(["Gene Expression"] * n_var))
        feat.create_dataset("genome", data=_s(["synthetic"] * n_var))
        feat.create_dataset("id", data=_s(gene_ids))
        feat.create_dataset("name", data=_s(gene_names))


def _block_mean(rgb: np.ndarray, k: int) -> np.ndarray:
    """Downsample ``(y, x, c)`` by the mean over ``k x k`` blocks (edges padded with the image's background)."""
    if k == 1:
        return rgb.copy()
    h, w = rgb.shape[:2]
    H, W = -(-h // k) * k, -(-w // k) * k
    pad = np.pad(rgb.astype(np.float64), ((0, H - h), (0, W - w), (0, 0)), mode="edge")
    out = pad.reshape(H // k, k, W // k, k, rgb.shape[2]).mean(axis=(1, 3))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _write_png(file: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(file, compress_level=1)


def _write_tif(file: Path, rgb: np.ndarray, mpp: float) -> None:
    import tifffile

    tifffile.imwrite(file, rgb, photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


def _pixel_colour(img: np.ndarray, xy_px: np.ndarray) -> np.ndarray:
    """Colour of the pixel containing each (x, y) pixel coordinate (pixel i spans [i, i + 1))."""
    j = np.clip(np.floor(xy_px[:, 0]).astype(np.int64), 0, img.shape[1] - 1)
    i = np.clip(np.floor(xy_px[:, 1]).astype(np.int64), 0, img.shape[0] - 1)
    return img[i, j]


def _majority_region(member_spot: np.ndarray, cell_region: np.ndarray, n_spots: int, n_regions: int, fallback):
    """Majority region of each spot's cells; spots without cells or with a tie take ``fallback`` (the centre's)."""
    rc = np.zeros((n_spots, n_regions))
    inn = member_spot >= 0
    np.add.at(rc, (member_spot[inn], cell_region[inn]), 1.0)
    maj = rc.argmax(axis=1)
    unclear = (rc.sum(axis=1) == 0) | ((rc == rc.max(axis=1, keepdims=True)).sum(axis=1) > 1)
    use = unclear & (fallback >= 0)
    maj[use] = fallback[use]
    return maj, rc


def _type_counts(member: np.ndarray, cell_type: pd.Series, n_units: int, index) -> pd.DataFrame:
    cats = list(cell_type.cat.categories)
    codes = cell_type.cat.codes.to_numpy()
    tc = np.zeros((n_units, len(cats)), dtype=np.int64)
    inn = member >= 0
    np.add.at(tc, (member[inn], codes[inn]), 1)
    return pd.DataFrame(tc, index=index, columns=cats)


def _molecules(gen: np.random.Generator, X: sparse.csr_matrix, xy: np.ndarray, radius: np.ndarray):
    """One row per molecule: (cell, gene, x, y), uniform in a disc of ``radius[cell]`` around the cell centre."""
    coo = X.tocoo()
    reps = np.round(coo.data).astype(np.int64)
    cell = np.repeat(coo.row.astype(np.int64), reps)
    gene = np.repeat(coo.col.astype(np.int64), reps)
    r = radius[cell] * np.sqrt(gen.random(cell.size))
    th = gen.uniform(0.0, 2.0 * np.pi, cell.size)
    pos = xy[cell] + np.column_stack([r * np.cos(th), r * np.sin(th)])
    return cell, gene, pos


def _write_truth(out: Path, adata) -> None:
    adata.write_h5ad(out / TRUTH_FILE)


def _cells_frame(t: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x_um": t["xy"][:, 0],
            "y_um": t["xy"][:, 1],
            "cell_type": t["cell_type"].to_numpy(),
            "region": t["region"].to_numpy(),
        },
        index=pd.Index(t["names"], name=None),
    )


# --------------------------------------------------------------------------------------------------------------------
# Visium
# --------------------------------------------------------------------------------------------------------------------
def _nt_barcodes(n: int, gen: np.random.Generator) -> np.ndarray:
    """``n`` distinct 16-nt barcodes ``'ACGT...-1'`` in random order (deterministic with ``gen``)."""
    codes = gen.choice(4**16, size=n, replace=False)
    digits = (codes[:, None] // (4 ** np.arange(15, -1, -1))[None, :]) % 4
    return np.array(["".join(_NT[d]) + "-1" for d in digits])


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
    - ``stmap_truth.h5ad``: the known answer (below).

    Parameters
    ----------
    path
        Folder to write (created; must be new or empty unless ``overwrite``).
    seed
        Random seed of the tissue and the barcodes; the same seed writes the same files.
    n_cells
        Number of cells of the tissue (about ``n_cells / 40`` spots are in tissue).
    n_genes
        Number of genes (see :func:`synthetic_tissue`).
    um_per_px
        Micrometres per full-resolution pixel.
    dataset_id
        Library id written in the matrix's ``library_ids`` attribute; pass the same ``dataset_id`` to the reader.
    hires_downsample, lowres_downsample
        Integer block sizes of the hires and lowres images (``tissue_*_scalef = 1 / block``).
    fullres_image
        Also write the full-resolution image ``tissue_image.tif`` (read with ``fullres_image_file=``).
    overwrite
        Replace ``path`` if it is a folder written by these functions.

    Returns
    -------
    The folder's :class:`~pathlib.Path`.

    Raises
    ------
    StmapInputError
        If an argument is out of range, or ``path`` is a file or a non-empty folder (``overwrite=True`` replaces
        only a folder these functions wrote). Nothing is written then.

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

    Examples
    --------
    >>> import stmap as st
    >>> folder = st.datasets.synthetic_visium("visium_outs", seed=0)  # doctest: +SKIP
    >>> import spatialdata_io  # doctest: +SKIP
    >>> sdata = spatialdata_io.visium(folder, dataset_id="sample")  # doctest: +SKIP
    """
    seed = _seed(seed)
    n_cells = _int(n_cells, "n_cells", 10)
    n_genes = _int(n_genes, "n_genes", 6)
    um_per_px = _pos(um_per_px, "um_per_px")
    dataset_id = _name(dataset_id, "dataset_id")
    k_hi = _downsample_factor(hires_downsample, "hires_downsample")
    k_lo = _downsample_factor(lowres_downsample, "lowres_downsample")
    return _write(
        path, overwrite, _visium, seed, n_cells, n_genes, um_per_px, dataset_id, k_hi, k_lo, bool(fullres_image)
    )


def _visium(out, seed, n_cells, n_genes, mpp, dataset_id, k_hi, k_lo, fullres_image) -> None:
    import anndata as ad
    from scipy.spatial import cKDTree

    t = _tissue(seed, n_cells, n_genes, mpp)
    gen = np.random.default_rng([seed, 1])
    he, regions = t["he"], t["regions"]
    H_um, W_um = he.shape[0] * mpp, he.shape[1] * mpp

    # hexagonal lattice over the image ------------------------------------------------------------------------------
    x0, y0 = _VISIUM_ORIGIN_UM
    dy = _VISIUM_PITCH_UM * math.sqrt(3.0) / 2.0
    half = _VISIUM_PITCH_UM / 2.0
    rows = np.arange(0, int(np.floor((H_um - y0) / dy)) + 1)
    cols = np.arange(0, int(np.floor((W_um - x0) / half)) + 1)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    keep = (r + c) % 2 == 0
    arow, acol = r[keep].astype(np.int64), c[keep].astype(np.int64)
    centres = np.column_stack([x0 + half * acol, y0 + dy * arow])
    n_all = centres.shape[0]

    # membership and counts -----------------------------------------------------------------------------------------
    dist, nearest = cKDTree(centres).query(t["xy"], k=1)
    member = np.where(dist <= _VISIUM_SPOT_UM / 2.0, nearest, -1)
    inn = np.flatnonzero(member >= 0)
    A = sparse.csr_matrix((np.ones(inn.size, dtype=np.int64), (member[inn], inn)), shape=(n_all, t["X"].shape[0]))
    counts_all = sparse.csr_matrix(A @ t["X"])
    n_in = np.asarray(A.sum(axis=1)).ravel()
    centre_px = centres / mpp
    centre_reg = regions[
        np.clip(centre_px[:, 1].astype(np.int64), 0, regions.shape[0] - 1),
        np.clip(centre_px[:, 0].astype(np.int64), 0, regions.shape[1] - 1),
    ].astype(np.int64)
    in_tissue = (centre_reg > 0) | (n_in > 0)
    barcodes_all = _nt_barcodes(n_all, gen)

    tis = np.flatnonzero(in_tissue)
    index = pd.Index(barcodes_all[tis])
    counts = counts_all[tis]
    _write_10x_h5(
        out / "filtered_feature_bc_matrix.h5",
        counts,
        index,
        _gene_ids(n_genes),
        t["var"].index,
        library_id=dataset_id,
        chemistry="Spatial 3' v1",
    )

    spatial = out / "spatial"
    spatial.mkdir()
    pd.DataFrame(
        {
            "barcode": barcodes_all,
            "in_tissue": in_tissue.astype(np.int64),
            "array_row": arow,
            "array_col": acol,
            "pxl_row_in_fullres": centre_px[:, 1],
            "pxl_col_in_fullres": centre_px[:, 0],
        }
    ).to_csv(spatial / "tissue_positions.csv", index=False)
    scalef = {
        "tissue_hires_scalef": 1.0 / k_hi,
        "tissue_lowres_scalef": 1.0 / k_lo,
        "fiducial_diameter_fullres": _VISIUM_FIDUCIAL_UM / mpp,
        "spot_diameter_fullres": _VISIUM_SPOT_FULLRES_UM / mpp,
    }
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalef, indent=4))
    hires = _block_mean(he, k_hi)
    _write_png(spatial / "tissue_hires_image.png", hires)
    _write_png(spatial / "tissue_lowres_image.png", _block_mean(he, k_lo))
    if fullres_image:
        _write_tif(out / "tissue_image.tif", he, mpp)

    # truth ---------------------------------------------------------------------------------------------------------
    # spots index the in-tissue rows; cells outside in-tissue spots cannot exist (a spot with a cell is in tissue)
    pos_in = np.full(n_all, -1, dtype=np.int64)
    pos_in[tis] = np.arange(tis.size)
    member_in = np.where(member >= 0, pos_in[np.maximum(member, 0)], -1)
    reg_codes = t["region"].cat.codes.to_numpy().astype(np.int64)
    maj, rc = _majority_region(member_in, reg_codes, tis.size, len(t["region_names"]), centre_reg[tis] - 1)
    tc = _type_counts(member_in, t["cell_type"], tis.size, index)
    n_c = tc.sum(axis=1).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        fr = tc.to_numpy() / n_c[:, None]
    truth = ad.AnnData(
        X=counts.astype(np.float32),
        obs=pd.DataFrame(
            {
                "array_row": arow[tis],
                "array_col": acol[tis],
                "x_um": centres[tis, 0],
                "y_um": centres[tis, 1],
                "pxl_col_in_fullres": centre_px[tis, 0],
                "pxl_row_in_fullres": centre_px[tis, 1],
                "n_cells": n_c,
                "region": pd.Categorical.from_codes(np.maximum(maj, 0), categories=t["region_names"]),
                "tumor": maj == 0,
                "tumor_fraction": rc[:, 0] / np.maximum(rc.sum(axis=1), 1.0),
            },
            index=index,
        ),
        var=pd.DataFrame(
            {"gene_ids": _gene_ids(n_genes), "program": t["var"]["program"].astype(str).to_numpy()},
            index=t["var"].index.copy(),
        ),
    )
    truth.obsm["spatial_um"] = centres[tis].copy()
    truth.obsm["cell_type_counts"] = tc
    truth.obsm["cell_type_fractions"] = pd.DataFrame(fr, index=index, columns=tc.columns)
    truth.obsm["he_rgb"] = _pixel_colour(he, centre_px[tis])
    truth.obsm["he_hires_rgb"] = _pixel_colour(hires, centre_px[tis] / k_hi)
    cells = _cells_frame(t)
    cells["spot"] = np.where(member >= 0, barcodes_all[np.maximum(member, 0)], "")
    truth.uns.update(
        {
            "platform": "visium",
            "dataset_id": dataset_id,
            "seed": seed,
            "um_per_px": mpp,
            "spot_diameter_um": _VISIUM_SPOT_UM,
            "spot_diameter_fullres": scalef["spot_diameter_fullres"],
            "spot_pitch_um": _VISIUM_PITCH_UM,
            "grid_origin_um": np.array(_VISIUM_ORIGIN_UM),
            "tissue_hires_scalef": scalef["tissue_hires_scalef"],
            "tissue_lowres_scalef": scalef["tissue_lowres_scalef"],
            "fullres_image_file": "tissue_image.tif" if fullres_image else "",
            "cells": cells,
            "cell_counts": t["X"].astype(np.float32),
        }
    )
    _write_truth(out, truth)


# --------------------------------------------------------------------------------------------------------------------
# Visium HD
# --------------------------------------------------------------------------------------------------------------------
def _bin_sizes(bin_sizes: Any) -> list[int]:
    if isinstance(bin_sizes, int | np.integer) and not isinstance(bin_sizes, bool):
        bin_sizes = [bin_sizes]
    try:
        sizes = sorted({int(b) for b in bin_sizes if not isinstance(b, bool) and int(b) == b})
        n_given = len(list(bin_sizes))
    except (TypeError, ValueError) as e:
        raise StmapInputError(
            f"`bin_sizes` must be a sequence of integers (µm), e.g. (2, 8, 16); got {bin_sizes!r}."
        ) from e
    if not sizes or len(sizes) != n_given or any(b < _HD_BASE_UM or b > 999 or b % _HD_BASE_UM for b in sizes):
        raise StmapInputError(
            f"`bin_sizes` must be distinct multiples of {_HD_BASE_UM} µm between 2 and 998 (Visium HD bins are made "
            f"of its native 2 µm squares), e.g. (2, 8, 16); got {bin_sizes!r}."
        )
    for a, b in zip(sizes[:-1], sizes[1:]):
        if b % a:
            raise StmapInputError(
                f"`bin_sizes` must nest (each a multiple of the next smaller one) so that a larger bin is the exact "
                f"sum of smaller ones; {b} is not a multiple of {a}. Use e.g. (2, 8, 16)."
            )
    return sizes


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
    - ``stmap_truth.h5ad``: the known answer (below).

    Parameters
    ----------
    path
        Folder to write (created; must be new or empty unless ``overwrite``).
    bin_sizes
        Bin sizes in µm to write, nested multiples of 2 (Space Ranger writes 2, 8 and 16). ``(8, 16)`` skips the
        many 2 µm bins for speed.
    seed
        Random seed of the tissue and the molecule positions.
    n_cells
        Number of cells (the default tissue is about 330 µm across: about 27,000 2 µm bins).
    n_genes
        Number of genes.
    um_per_px
        Micrometres per full-resolution pixel (Space Ranger's ``microns_per_pixel``).
    spread_um
        Radius in µm of the disc over which a cell's molecules are spread.
    dataset_id
        Prefix of the feature slice file; the reader infers it (or pass the same ``dataset_id``).
    hires_downsample, lowres_downsample
        Integer block sizes of the hires and lowres images.
    overwrite
        Replace ``path`` if it is a folder written by these functions.

    Returns
    -------
    The folder's :class:`~pathlib.Path`.

    Raises
    ------
    StmapInputError
        If an argument is out of range (``bin_sizes`` must be nested multiples of 2), or ``path`` is a file or a
        non-empty folder (``overwrite=True`` replaces only a folder these functions wrote). Nothing is written then.

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

    Examples
    --------
    >>> import stmap as st
    >>> folder = st.datasets.synthetic_visium_hd("hd_outs", bin_sizes=(8, 16))  # doctest: +SKIP
    >>> import spatialdata_io  # doctest: +SKIP
    >>> sdata = spatialdata_io.visium_hd(folder, dataset_id="sample", load_segmentations_only=False)  # doctest: +SKIP
    """
    sizes = _bin_sizes(bin_sizes)
    seed = _seed(seed)
    n_cells = _int(n_cells, "n_cells", 10)
    n_genes = _int(n_genes, "n_genes", 6)
    um_per_px = _pos(um_per_px, "um_per_px")
    spread_um = _pos(spread_um, "spread_um", allow_zero=True)
    dataset_id = _name(dataset_id, "dataset_id")
    k_hi = _downsample_factor(hires_downsample, "hires_downsample")
    k_lo = _downsample_factor(lowres_downsample, "lowres_downsample")
    return _write(
        path, overwrite, _visium_hd, sizes, seed, n_cells, n_genes, um_per_px, spread_um, dataset_id, k_hi, k_lo
    )


def _visium_hd(out, sizes, seed, n_cells, n_genes, mpp, spread, dataset_id, k_hi, k_lo) -> None:
    import anndata as ad
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = _tissue(seed, n_cells, n_genes, mpp)
    gen = np.random.default_rng([seed, 2])
    he, regions = t["he"], t["regions"]
    H_um, W_um = he.shape[0] * mpp, he.shape[1] * mpp
    base = _HD_BASE_UM
    top = sizes[-1]
    n_rows = int(np.ceil(H_um / top)) * (top // base)  # 2 um grid, a whole number of the largest bins
    n_cols = int(np.ceil(W_um / top)) * (top // base)

    # molecules -> 2 um bins ----------------------------------------------------------------------------------------
    n = t["X"].shape[0]
    cell, gene, pos = _molecules(gen, t["X"], t["xy"], np.full(n, spread))
    col2 = np.clip(np.floor(pos[:, 0] / base).astype(np.int64), 0, n_cols - 1)
    row2 = np.clip(np.floor(pos[:, 1] / base).astype(np.int64), 0, n_rows - 1)
    flat2 = row2 * n_cols + col2
    C2 = sparse.csr_matrix((np.ones(flat2.size, dtype=np.int64), (flat2, gene)), shape=(n_rows * n_cols, n_genes))
    C2.sum_duplicates()
    rr, cc = np.divmod(np.arange(n_rows * n_cols), n_cols)
    cx_px = ((cc + 0.5) * base / mpp).astype(np.int64)
    cy_px = ((rr + 0.5) * base / mpp).astype(np.int64)
    reg2 = regions[np.clip(cy_px, 0, regions.shape[0] - 1), np.clip(cx_px, 0, regions.shape[1] - 1)].astype(np.int64)
    tissue2 = (reg2 > 0) | (np.diff(C2.indptr) > 0)
    cell_flat2 = np.clip(np.floor(t["xy"][:, 1] / base).astype(np.int64), 0, n_rows - 1) * n_cols + np.clip(
        np.floor(t["xy"][:, 0] / base).astype(np.int64), 0, n_cols - 1
    )

    hires = _block_mean(he, k_hi)
    spatial_top = out / "spatial"
    spatial_top.mkdir()
    _write_png(spatial_top / "tissue_hires_image.png", hires)
    _write_png(spatial_top / "tissue_lowres_image.png", _block_mean(he, k_lo))
    (out / "microscope_image").mkdir()
    _write_tif(out / "microscope_image" / f"{dataset_id}_tissue_image.tif", he, mpp)

    # feature slice: metadata only --------------------------------------------------------------------------------
    colrow_to_um = [base, 0.0, base / 2, 0.0, base, base / 2, 0.0, 0.0, 1.0]
    spot_to_px = np.array([[base / mpp, 0.0, base / 2 / mpp], [0.0, base / mpp, base / 2 / mpp], [0.0, 0.0, 1.0]])
    layout = {"file_format": "1.0", "transform": colrow_to_um, "num_rows": n_rows, "num_cols": n_cols}
    metadata = {
        "hd_layout_json": json.dumps(layout),
        "transform_matrices": {
            "spot_colrow_to_microscope_colrow": spot_to_px.ravel().tolist(),
            "microscope_colrow_to_spot_colrow": np.linalg.inv(spot_to_px).ravel().tolist(),
            "cytassist_colrow_to_spot_colrow": np.eye(3).ravel().tolist(),
            "spot_colrow_to_cytassist_colrow": np.eye(3).ravel().tolist(),
        },
        "software_version": _SOFTWARE,
        "microns_per_pixel": mpp,
    }
    with h5py.File(out / f"{dataset_id}_feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)

    # one folder per bin size ---------------------------------------------------------------------------------------
    gene_ids = _gene_ids(n_genes)
    cell_tab_cols: dict[str, np.ndarray] = {}
    bins_truth: dict[str, pd.DataFrame] = {}
    counts_truth: dict[str, sparse.csr_matrix] = {}
    for b in sizes:
        fold = b // base  # 2 um bins per side of a bin of this size
        nr, nc = n_rows // fold, n_cols // fold
        parent = (rr // fold) * nc + (cc // fold)
        P = sparse.csr_matrix(
            (np.ones(parent.size, dtype=np.int64), (parent, np.arange(parent.size))), shape=(nr * nc, parent.size)
        )
        Cb = sparse.csr_matrix(P @ C2)
        tissue_b = np.asarray(P @ tissue2.astype(np.int64)).ravel() > 0
        br, bc = np.divmod(np.arange(nr * nc), nc)
        tag = f"{b:03d}um"
        barcodes = np.char.add(
            np.char.add(np.char.add(f"s_{tag}_", np.char.zfill(br.astype(str), 5)), "_"),
            np.char.add(np.char.zfill(bc.astype(str), 5), "-1"),
        )
        xc_um, yc_um = (bc + 0.5) * b, (br + 0.5) * b
        folder = out / "binned_outputs" / f"square_{tag}"
        (folder / "spatial").mkdir(parents=True)
        keep = np.flatnonzero(tissue_b)
        _write_10x_h5(
            folder / "filtered_feature_bc_matrix.h5",
            Cb[keep],
            barcodes[keep],
            gene_ids,
            t["var"].index,
            library_id=dataset_id,
            chemistry="Visium HD v1",
        )
        table = pa.table(
            {
                "barcode": pa.array(barcodes.astype(object), type=pa.string()),
                "in_tissue": pa.array(tissue_b.astype(np.int32)),
                "array_row": pa.array(br.astype(np.int32)),
                "array_col": pa.array(bc.astype(np.int32)),
                "pxl_row_in_fullres": pa.array(yc_um / mpp),
                "pxl_col_in_fullres": pa.array(xc_um / mpp),
            }
        )
        pq.write_table(table, folder / "spatial" / "tissue_positions.parquet")
        scalef = {
            "spot_diameter_fullres": b / mpp,
            "bin_size_um": float(b),
            "microns_per_pixel": mpp,
            "regist_target_img_scalef": 1.0 / k_hi,
            "tissue_lowres_scalef": 1.0 / k_lo,
            "fiducial_diameter_fullres": _VISIUM_FIDUCIAL_UM / mpp,
            "tissue_hires_scalef": 1.0 / k_hi,
        }
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalef, indent=4))

        # truth for this size
        cell_bin = parent[cell_flat2]
        n_cells_b = np.bincount(cell_bin, minlength=nr * nc)
        cpx = np.clip((xc_um / mpp).astype(np.int64), 0, regions.shape[1] - 1)
        cpy = np.clip((yc_um / mpp).astype(np.int64), 0, regions.shape[0] - 1)
        reg_b = regions[cpy, cpx].astype(np.int64)[keep]
        names = ["background", *t["region_names"]]
        centre_hires = _pixel_colour(hires, np.column_stack([xc_um[keep], yc_um[keep]]) / mpp / k_hi)
        bins_truth[f"square_{tag}"] = pd.DataFrame(
            {
                "array_row": br[keep],
                "array_col": bc[keep],
                "x_um": xc_um[keep],
                "y_um": yc_um[keep],
                "region": pd.Categorical.from_codes(reg_b, categories=names),
                "tumor": reg_b == 1,
                "n_cells": n_cells_b[keep],
                "n_molecules": np.asarray(Cb[keep].sum(axis=1)).ravel(),
                "hires_r": centre_hires[:, 0],
                "hires_g": centre_hires[:, 1],
                "hires_b": centre_hires[:, 2],
            },
            index=pd.Index(barcodes[keep]),
        )
        counts_truth[f"square_{tag}"] = Cb[keep].astype(np.float32)
        cell_tab_cols[f"bin_{tag}"] = barcodes[cell_bin]

    cells = _cells_frame(t)
    for k, v in cell_tab_cols.items():
        cells[k] = v
    truth = ad.AnnData(
        X=t["X"].astype(np.float32),
        obs=cells,
        var=pd.DataFrame(
            {"gene_ids": gene_ids, "program": t["var"]["program"].astype(str).to_numpy()}, index=t["var"].index.copy()
        ),
    )
    truth.obsm["spatial_um"] = t["xy"].copy()
    truth.uns.update(
        {
            "platform": "visium_hd",
            "dataset_id": dataset_id,
            "seed": seed,
            "um_per_px": mpp,
            "bin_sizes": np.array(sizes),
            "spread_um": spread,
            "tissue_hires_scalef": 1.0 / k_hi,
            "tissue_lowres_scalef": 1.0 / k_lo,
            "bins": bins_truth,
            "bin_counts": counts_truth,
        }
    )
    _write_truth(out, truth)


# --------------------------------------------------------------------------------------------------------------------
# Xenium
# --------------------------------------------------------------------------------------------------------------------
def _xenium_cell_ids(n: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct uint32 prefixes and their Xenium strings (8 letters 'a'..'p' for the hex nibbles, '-1')."""
    prefix = np.sort(gen.choice(2**24, size=n, replace=False).astype(np.uint32) + np.uint32(2**24))
    shifts = np.array([28, 24, 20, 16, 12, 8, 4, 0], dtype=np.uint32)
    nib = (prefix[:, None] >> shifts) & 0xF
    letters = np.array(list("abcdefghijklmnop"))[nib]
    return prefix, np.array(["".join(row) + "-1" for row in letters])


def _zip_folder(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(src).as_posix())


def synthetic_xenium(
    path: str | Path,
    *,
    seed: int = 0,
    n_cells: int = 300,
    n_genes: int = 100,
    pixel_size: float = 0.2125,
    he_image: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a Xenium Onboard Analysis output folder built from cells with a known answer.

    A tissue is made with :func:`synthetic_tissue` (``seed``, ``n_cells``, ``n_genes``; H&E at 1 µm per pixel). The
    frame is micrometres from the top-left corner of the morphology image, whose pixels are ``pixel_size`` µm. Each
    cell is a nucleus disc (radius by cell type, 2.5 to 4.4 µm) expanded by 3 µm, both clipped by the Voronoi cells of
    the cell centres, in the raster masks and in the boundary polygons alike. Each cell's molecules (its counts) lie
    uniformly in a disc around its centre that stays inside its own cell; every transcript is assigned to its cell,
    so ``cell_feature_matrix.h5`` is exactly the transcripts counted per cell and gene. The analyzer version is
    ``xenium-3.0.0.15`` (the reader's v2+ path: ``polygon_sets`` in ``cells.zarr.zip``, ``label_id`` in the
    boundaries, ``morphology_focus/``).

    Files written under ``path``:

    - ``experiment.xenium``: JSON specs with ``pixel_size``, ``analysis_sw_version``, ``num_cells``, panel info;
    - ``cell_feature_matrix.h5``: 10x HDF5 matrix of the cells (``'Gene Expression'`` features);
    - ``cells.parquet``: ``cell_id``, ``x_centroid``, ``y_centroid`` (the cell centres, µm), ``transcript_counts``,
      control counts (0), ``total_counts``, ``cell_area``, ``nucleus_area`` (µm², of the polygons),
      ``nucleus_count`` (1), ``segmentation_method``;
    - ``cell_boundaries.parquet``, ``nucleus_boundaries.parquet``: ``cell_id``, ``vertex_x``, ``vertex_y`` (µm,
      closed rings), ``label_id`` (the raster label);
    - ``transcripts.parquet``: ``transcript_id``, ``cell_id``, ``overlaps_nucleus``, ``feature_name``,
      ``x_location``, ``y_location``, ``z_location`` (µm), ``qv``, ``fov_name``, ``nucleus_distance``,
      ``codeword_index``;
    - ``cells.zarr.zip`` (zarr v2 in a zip): ``cell_id`` ``(N, 2) uint32`` (prefix, 1), ``cell_summary`` (8 columns
      named in its ``column_names`` attribute), ``masks/0`` (nuclei) and ``masks/1`` (cells) ``uint32`` rasters in
      morphology pixels (label of cell ``i`` = ``i + 1``), ``polygon_sets/{0,1}/cell_index``;
    - ``morphology_focus/morphology_focus_0000.ome.tif``: a DAPI-like ``uint16`` OME-TIFF (bright nuclei);
    - ``<region>_he_image.ome.tif`` + ``<region>_he_imagealignment.csv`` (when ``he_image``): the H&E at 1 µm per
      pixel and its affine to morphology pixels;
    - ``stmap_truth.h5ad``: the known answer (below).

    Parameters
    ----------
    path
        Folder to write (created; must be new or empty unless ``overwrite``).
    seed
        Random seed of the tissue, cell ids and molecule positions.
    n_cells
        Number of cells (the default tissue is about 330 µm across: a 1,530-pixel morphology image).
    n_genes
        Number of genes of the panel.
    pixel_size
        Micrometres per morphology pixel (Xenium: 0.2125).
    he_image
        Also write an aligned H&E image (read by the reader's default ``aligned_images=True``).
    overwrite
        Replace ``path`` if it is a folder written by these functions.

    Returns
    -------
    The folder's :class:`~pathlib.Path`.

    Raises
    ------
    StmapInputError
        If an argument is out of range, or ``path`` is a file or a non-empty folder (``overwrite=True`` replaces
        only a folder these functions wrote). Nothing is written then.

    Notes
    -----
    The known answer, ``anndata.read_h5ad(path / "stmap_truth.h5ad")``, has one row per cell (``obs_names`` the
    Xenium cell ids, in the order of every file) with ``X`` the counts; ``obs``: ``x_um``, ``y_um`` (centre),
    ``cell_type``, ``region``, ``label_id``, ``cell_area``, ``nucleus_area``, ``nucleus_radius_um``,
    ``cell_radius_um``; ``obsm['spatial_um']``; ``var['gene_ids']``, ``var['program']``; ``uns``:
    ``'pixel_size'``, ``'platform'`` (``'xenium'``), ``'seed'``, ``'analysis_sw_version'``,
    ``'he_image_um_per_px'`` (1.0).

    Read it with ``spatialdata_io.xenium(path)`` (all defaults): labels ``'cell_labels'`` and ``'nucleus_labels'``
    and image ``'morphology_focus'`` in ``'global'`` morphology pixels; shapes ``'cell_boundaries'`` and
    ``'nucleus_boundaries'`` and points ``'transcripts'`` in µm with a ``Scale(1 / pixel_size)`` to ``'global'``;
    table ``'table'`` annotating ``'cell_labels'`` (``obs['cell_labels']`` the label, ``obsm['spatial']`` the
    centres in µm); image ``'he_image'`` with its alignment affine.

    Examples
    --------
    >>> import stmap as st
    >>> folder = st.datasets.synthetic_xenium("xenium_outs", seed=0)  # doctest: +SKIP
    >>> import spatialdata_io  # doctest: +SKIP
    >>> sdata = spatialdata_io.xenium(folder)  # doctest: +SKIP
    """
    seed = _seed(seed)
    n_cells = _int(n_cells, "n_cells", 10)
    n_genes = _int(n_genes, "n_genes", 6)
    pixel_size = _pos(pixel_size, "pixel_size")
    return _write(path, overwrite, _xenium, seed, n_cells, n_genes, pixel_size, bool(he_image))


def _xenium(out, seed, n_cells, n_genes, ps, he_image) -> None:
    import anndata as ad
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    import tifffile
    import zarr
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree

    from ._simulate import _NUC

    he_mpp = 1.0
    t = _tissue(seed, n_cells, n_genes, he_mpp)
    gen = np.random.default_rng([seed, 3])
    xy, X = t["xy"], t["X"]
    n = xy.shape[0]
    W_um, H_um = t["he"].shape[1] * he_mpp, t["he"].shape[0] * he_mpp
    w, h = int(np.ceil(W_um / ps)), int(np.ceil(H_um / ps))
    types = t["cell_type"].astype(str).to_numpy()
    r_nuc = np.array([math.sqrt(_NUC[c][0] * _NUC[c][1]) for c in types])
    r_cell = r_nuc + _XENIUM_NUC_EXTRA_UM
    prefix, ids = _xenium_cell_ids(n, gen)
    labels_id = np.arange(1, n + 1, dtype=np.uint32)

    # polygons: discs clipped by the Voronoi cells ------------------------------------------------------------------
    pts = shapely.points(xy)
    frame = shapely.box(0.0, 0.0, W_um, H_um)
    vor = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=frame))
    hit_poly, hit_pt = shapely.STRtree(pts).query(vor, predicate="contains")
    vor_of = np.empty(n, dtype=object)
    vor_of[hit_pt] = vor[hit_poly]
    quad = 6  # 24-gon
    cell_poly = shapely.intersection(vor_of, shapely.buffer(pts, r_cell, quad_segs=quad))
    nuc_poly = shapely.intersection(vor_of, shapely.buffer(pts, r_nuc, quad_segs=quad))

    def _boundaries(polys) -> pa.Table:
        coords, idx = shapely.get_coordinates(shapely.get_exterior_ring(polys), return_index=True)
        return pa.table(
            {
                "cell_id": pa.array(ids[idx].astype(object), type=pa.string()),
                "vertex_x": pa.array(coords[:, 0].astype(np.float32)),
                "vertex_y": pa.array(coords[:, 1].astype(np.float32)),
                "label_id": pa.array(labels_id[idx]),
            }
        )

    pq.write_table(_boundaries(cell_poly), out / "cell_boundaries.parquet")
    pq.write_table(_boundaries(nuc_poly), out / "nucleus_boundaries.parquet")
    cell_area, nuc_area = shapely.area(cell_poly), shapely.area(nuc_poly)

    # rasters: pixel centre within the radius and nearest to this cell ----------------------------------------------
    cell_mask = np.zeros((h, w), dtype=np.uint32)
    nuc_mask = np.zeros((h, w), dtype=np.uint32)
    best = np.full((h, w), np.inf, dtype=np.float64)
    win = []
    for i in range(n):
        cx, cy, R = xy[i, 0] / ps, xy[i, 1] / ps, r_cell[i] / ps
        x0, x1 = max(int(cx - R) - 1, 0), min(int(cx + R) + 2, w)
        y0, y1 = max(int(cy - R) - 1, 0), min(int(cy + R) + 2, h)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = ((xx + 0.5) - cx) ** 2 + ((yy + 0.5) - cy) ** 2
        sub = best[y0:y1, x0:x1]
        m = (d2 <= R * R) & (d2 < sub)
        sub[m] = d2[m]
        cell_mask[y0:y1, x0:x1][m] = labels_id[i]
        win.append((y0, y1, x0, x1, d2))
    for i, (y0, y1, x0, x1, d2) in enumerate(win):
        rn = r_nuc[i] / ps
        m = (cell_mask[y0:y1, x0:x1] == labels_id[i]) & (d2 <= rn * rn)
        nuc_mask[y0:y1, x0:x1][m] = labels_id[i]

    # transcripts ---------------------------------------------------------------------------------------------------
    d_nn = cKDTree(xy).query(xy, k=2)[0][:, 1]
    rho = 0.95 * np.minimum(r_cell * math.cos(math.pi / (4 * quad)), d_nn / 2.0)
    cell, gene, pos = _molecules(gen, X, xy, rho)
    order = np.lexsort((pos[:, 0], pos[:, 1]))
    cell, gene, pos = cell[order], gene[order], pos[order]
    m = cell.size
    dist = np.hypot(pos[:, 0] - xy[cell, 0], pos[:, 1] - xy[cell, 1])
    in_nuc = dist <= r_nuc[cell]
    gene_names = np.asarray(t["var"].index.astype(str))
    z = gen.uniform(8.0, 14.0, m)
    transcripts = pa.table(
        {
            "transcript_id": pa.array(np.uint64(281474976710656) + np.arange(m, dtype=np.uint64)),
            "cell_id": pa.array(ids[cell].astype(object), type=pa.string()),
            "overlaps_nucleus": pa.array(in_nuc.astype(np.uint8)),
            "feature_name": pa.array(gene_names[gene].astype(object), type=pa.string()),
            "x_location": pa.array(pos[:, 0].astype(np.float32)),
            "y_location": pa.array(pos[:, 1].astype(np.float32)),
            "z_location": pa.array(z.astype(np.float32)),
            "qv": pa.array(np.full(m, 40.0, dtype=np.float32)),
            "fov_name": pa.array(np.full(m, "A1", dtype=object), type=pa.string()),
            "nucleus_distance": pa.array(np.maximum(dist - r_nuc[cell], 0.0).astype(np.float32)),
            "codeword_index": pa.array(gene.astype(np.int32)),
        }
    )
    pq.write_table(transcripts, out / "transcripts.parquet")

    # cells: matrix, metadata, zarr -------------------------------------------------------------------------------
    gene_ids = _gene_ids(n_genes)
    _write_10x_h5(
        out / "cell_feature_matrix.h5", X, ids, gene_ids, gene_names, library_id="synthetic", chemistry="Xenium"
    )
    tc = np.asarray(X.sum(axis=1)).ravel()
    zeros = np.zeros(n, dtype=np.uint32)
    pq.write_table(
        pa.table(
            {
                "cell_id": pa.array(ids.astype(object), type=pa.string()),
                "x_centroid": pa.array(xy[:, 0]),
                "y_centroid": pa.array(xy[:, 1]),
                "transcript_counts": pa.array(tc.astype(np.uint32)),
                "control_probe_counts": pa.array(zeros),
                "genomic_control_counts": pa.array(zeros),
                "control_codeword_counts": pa.array(zeros),
                "unassigned_codeword_counts": pa.array(zeros),
                "deprecated_codeword_counts": pa.array(zeros),
                "total_counts": pa.array(tc.astype(np.float64)),
                "cell_area": pa.array(cell_area),
                "nucleus_area": pa.array(nuc_area),
                "nucleus_count": pa.array(np.ones(n, dtype=np.uint32)),
                "segmentation_method": pa.array(
                    np.full(n, f"Segmented by nucleus expansion of {_XENIUM_NUC_EXTRA_UM}µm", dtype=object),
                    type=pa.string(),
                ),
            }
        ),
        out / "cells.parquet",
    )
    nuc_centroid = shapely.get_coordinates(shapely.centroid(nuc_poly))
    cell_centroid = shapely.get_coordinates(shapely.centroid(cell_poly))
    summary = np.column_stack([cell_centroid, cell_area, nuc_centroid, nuc_area, np.zeros(n), np.ones(n)]).astype(
        np.float64
    )
    summary_cols = [
        "cell_centroid_x",
        "cell_centroid_y",
        "cell_area",
        "nucleus_centroid_x",
        "nucleus_centroid_y",
        "nucleus_area",
        "z_level",
        "nucleus_count",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "cells.zarr"
        g = zarr.open_group(str(store), mode="w", zarr_format=2)
        g.attrs.update(
            {
                "major_version": 5,
                "minor_version": 0,
                "number_cells": n,
                "polygon_set_names": ["nucleus", "cell"],
                "polygon_set_display_names": ["Nucleus boundaries", "Cell boundaries"],
                "spatial_units": "microns",
            }
        )
        g.create_array("cell_id", data=np.column_stack([prefix, np.ones(n, dtype=np.uint32)]).astype(np.uint32))
        g.create_array("cell_summary", data=summary, attributes={"column_names": summary_cols})
        masks = g.create_group("masks")
        chunks = (min(h, 4096), min(w, 4096))
        masks.create_array("0", data=nuc_mask, chunks=chunks)
        masks.create_array("1", data=cell_mask, chunks=chunks)
        T = np.diag([1.0 / ps, 1.0 / ps, 1.0, 1.0])
        masks.create_array("homogeneous_transform", data=T)
        ps_group = g.create_group("polygon_sets")
        for k in (0, 1):
            ps_group.create_group(str(k)).create_array("cell_index", data=np.arange(n, dtype=np.uint32))
        _zip_folder(store, out / "cells.zarr.zip")

    # morphology image: DAPI-like -----------------------------------------------------------------------------------
    strength = np.array([_NUC[c][2] for c in types])
    lut = np.concatenate([[0.0], strength])
    dapi = lut[nuc_mask]
    dapi = gaussian_filter(dapi, 0.5 / ps) * 3000.0 + 100.0 + gen.normal(0.0, 20.0, size=(h, w))
    dapi = np.clip(np.round(dapi), 0, 65535).astype(np.uint16)
    (out / "morphology_focus").mkdir()
    tifffile.imwrite(
        out / "morphology_focus" / "morphology_focus_0000.ome.tif",
        dapi,
        ome=True,
        photometric="minisblack",
        tile=(512, 512),
        metadata={
            "axes": "YX",
            "PhysicalSizeX": ps,
            "PhysicalSizeY": ps,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
            "Channel": {"Name": ["DAPI"]},
        },
    )
    region_name = "synthetic"
    if he_image:
        tifffile.imwrite(
            out / f"{region_name}_he_image.ome.tif", t["he"], ome=True, photometric="rgb", metadata={"axes": "YXS"}
        )
        s = he_mpp / ps
        np.savetxt(
            out / f"{region_name}_he_imagealignment.csv",
            [[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]],
            delimiter=",",
            fmt="%.17g",
        )

    specs = {
        "major_version": 5,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": "stmap synthetic",
        "run_start_time": "2024-01-01T00:00:00Z",
        "region_name": region_name,
        "preservation_method": "ffpe",
        "num_cells": n,
        "transcripts_per_cell": float(np.median(tc)),
        "transcripts_per_100um": float(tc.sum() / (W_um * H_um) * 1e4),
        "cassette_name": "synthetic",
        "slide_id": "0000000",
        "panel_design_id": "synthetic",
        "panel_name": "stmap synthetic panel",
        "panel_organism": "Human",
        "panel_num_targets_predesigned": n_genes,
        "panel_num_targets_custom": 0,
        "pixel_size": ps,
        "instrument_sn": "synthetic",
        "instrument_sw_version": _SOFTWARE,
        "analysis_sw_version": _XENIUM_VERSION,
        "experiment_uuid": "",
        "cassette_uuid": "",
        "roi_uuid": "",
        "z_step_size": 3.0,
        "well_uuid": "",
        "calibration_uuid": "",
        "images": {"morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif"},
    }
    (out / "experiment.xenium").write_text(json.dumps(specs, indent=4))

    # truth ---------------------------------------------------------------------------------------------------------
    cells = _cells_frame(t)
    cells.index = pd.Index(ids)
    cells["label_id"] = labels_id.astype(np.int64)
    cells["cell_area"] = cell_area
    cells["nucleus_area"] = nuc_area
    cells["nucleus_radius_um"] = r_nuc
    cells["cell_radius_um"] = r_cell
    cells["source_cell"] = np.asarray(t["names"])
    truth = ad.AnnData(
        X=X.astype(np.float32),
        obs=cells,
        var=pd.DataFrame(
            {"gene_ids": gene_ids, "program": t["var"]["program"].astype(str).to_numpy()}, index=t["var"].index.copy()
        ),
    )
    truth.obsm["spatial_um"] = xy.copy()
    truth.uns.update(
        {
            "platform": "xenium",
            "seed": seed,
            "pixel_size": ps,
            "analysis_sw_version": _XENIUM_VERSION,
            "he_image_um_per_px": he_mpp if he_image else 0.0,
        }
    )
    _write_truth(out, truth)
