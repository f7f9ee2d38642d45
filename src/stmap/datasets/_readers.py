"""Readers of small public data sets (Visium, Slide-seq, MERFISH, CosMx, STARmap PLUS, BDTNP) as SpatialData.

All readers take ``path=None``: the data root with the layout of the shared data folder (default
:attr:`stmap.settings.datasetdir`, ``$STMAP_DATA_DIR``). The coordinate system ``'global'`` is in micrometres.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core._constants import Key
from stmap._core._elements import (
    affine_matrix,
    make_circles,
    make_image,
    make_points,
    make_table,
    new_spatialdata,
    to_transformation,
)
from stmap._core._errors import StmapInputError
from stmap._core._io import counts_adata, data_root, lazy_image, read_image, require_files
from stmap._core._params import Instance, Options, validate_params

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = [
    "bdtnp_atlas",
    "cosmx_lung",
    "spacexr",
    "squidpy_visium",
    "starmap_cells",
    "visium_dentate_gyrus",
    "vizgen_brain",
]

#: Visium: 55 um spots, 100 um centre to centre (hexagonal grid; two array columns = one spot spacing).
VISIUM_SPOT_DIAMETER_UM = 55.0
VISIUM_SPACING_UM = 100.0
_UNITS = {Key.cs: "um"}
#: Even small rasters are written as (2-level) pyramids: spatialdata 0.7.2 + ome-zarr 0.18 cannot write a
#: single-scale image (ome-zarr now builds a pyramid when ``scaler=None`` and the chunks no longer match).
_PYRAMID = [2]
#: Declared parameters of the readers: the data root and the image switches.
PATH = [Instance((str, Path)), None]
FLAG = Instance((bool,))


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def _nn_mpp(pixel_xy: np.ndarray, spacing_um: float) -> float:
    """Micrometres per pixel from the median nearest-neighbour distance of a full spot grid."""
    from scipy.spatial import cKDTree

    p = np.asarray(pixel_xy, dtype=float)
    d = cKDTree(p).query(p, k=2)[0][:, 1]
    return float(spacing_um / np.median(d))


def _visium_mpp(array_col: np.ndarray, array_row: np.ndarray, pixel_xy: np.ndarray) -> float:
    """Micrometres per full-resolution pixel of Visium from array coordinates (works for sparse spot subsets).

    Pixel positions are fit as an affine function of ``(array_col, array_row)``; two array columns are one
    centre-to-centre spacing (100 um).
    """
    A = np.column_stack([array_col, array_row, np.ones(len(array_col))]).astype(float)
    coef, *_ = np.linalg.lstsq(A, np.asarray(pixel_xy, dtype=float), rcond=None)
    return float(VISIUM_SPACING_UM / np.linalg.norm(2 * coef[0]))


def _rgb(a: np.ndarray) -> np.ndarray:
    """Drop an alpha channel; grey -> ``(y, x, 1)``."""
    if a.ndim == 2:
        return a[..., None]
    return a[..., :3]


def _spot_table(adata: AnnData, region: str, info: dict[str, Any]) -> AnnData:
    adata.uns[Key.uns.stmap] = info
    return make_table(adata, region=region, instance_ids=np.arange(adata.n_obs))


# --------------------------------------------------------------------------------------------------------------------
# Visium (Space Ranger layout): squidpy's test fixture
# --------------------------------------------------------------------------------------------------------------------
@validate_params(path=PATH, load_images=FLAG)
def squidpy_visium(path: str | Path | None = None, *, load_images: bool = True) -> SpatialData:
    """Minimal Space Ranger output (squidpy's Visium test fixture :cite:p:`palla2022`) read as SpatialData.

    ``<path>/squidpy_tests/visium_fixture/``: ``filtered_feature_bc_matrix.h5`` and ``spatial/``
    (``scalefactors_json.json``, ``tissue_positions_list.csv``, ``tissue_hires_image.png``,
    ``tissue_lowres_image.png``); 100 spots x 100 genes (human, Ensembl ids). This is the reader to copy for any
    Space Ranger folder.

    Parameters
    ----------
    path
        Data root; default :attr:`stmap.settings.datasetdir`.
    load_images
        Add the hires and lowres images.

    Returns
    -------
    :class:`spatialdata.SpatialData` (``'global'`` in micrometres) with

    ``'visium_fixture_hires_image'``, ``'visium_fixture_lowres_image'`` (images)
        RGB (alpha dropped), pixel -> um transform ``mpp / tissue_{hires,lowres}_scalef``.
    ``'visium_fixture_spots'`` (shapes)
        Circles at the spot centres in um, radius 27.5 um (55 um Visium spots).
    ``'visium_fixture'`` (table)
        Spots x genes annotating the circles: raw counts in ``X`` and ``layers['counts']`` (CSR float32),
        ``var_names`` gene symbols (unique), ``var['gene_ids']``; ``obs['in_tissue', 'array_row', 'array_col']``;
        ``obsm['spatial']`` full-resolution pixels ``(x, y)``; ``uns['stmap']`` with ``mpp`` (um per full-resolution
        pixel, from the array grid: 100 um per two array columns), ``spot_diameter_um`` (55),
        ``spot_diameter_fullres`` and ``scalefactors`` as in the JSON, ``source``, ``section``.

    Notes
    -----
    Space Ranger's ``spot_diameter_fullres`` is the pixel width of a theoretical 65 um spot (it includes a margin),
    so ``55 / spot_diameter_fullres`` underestimates the pixel size by ~15 %; the grid spacing is used instead.

    See Also
    --------
    :func:`stmap.datasets.synthetic_visium`
        A Space Ranger output folder with a known answer.
    :doc:`/tutorials/your_own_data`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.squidpy_visium()  # files under st.settings.datasetdir
    >>> sdata.tables["visium_fixture"].shape
    (100, 100)
    >>> st.pp.coordinate_units(sdata)  # 'global' is in micrometres
    1.0
    """
    import scanpy as sc

    base = "squidpy_tests/visium_fixture/"
    rel = [base + "filtered_feature_bc_matrix.h5", base + "spatial/scalefactors_json.json"]
    rel += [base + "spatial/tissue_positions_list.csv"]
    if load_images:
        rel += [base + "spatial/tissue_hires_image.png", base + "spatial/tissue_lowres_image.png"]
    files = require_files(data_root(path), rel, "squidpy Visium fixture")
    h5, sf_path, pos_path = files[:3]

    raw = sc.read_10x_h5(h5)
    sf = json.loads(sf_path.read_text())
    pos = pd.read_csv(pos_path, header=None)
    if not str(pos.iloc[0, 1]).lstrip("-").isdigit():  # Space Ranger >= 2 writes a header
        pos = pos.iloc[1:]
    pos.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    pos = pos.set_index("barcode").astype(float).reindex(raw.obs_names)
    if pos.isna().any().any():
        raise StmapInputError("Some barcodes of the count matrix are missing from tissue_positions_list.csv.")
    pix = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    mpp = _visium_mpp(pos["array_col"].to_numpy(), pos["array_row"].to_numpy(), pix)

    obs = pd.DataFrame(index=raw.obs_names)
    for c in ("in_tissue", "array_row", "array_col"):
        obs[c] = pos[c].astype(int).to_numpy()
    adata = counts_adata(raw.X, raw.obs_names, raw.var_names, obs=obs)
    adata.var["gene_ids"] = raw.var["gene_ids"].to_numpy()
    adata.obsm[Key.obsm.spatial] = pix
    name = "visium_fixture"
    shapes = make_circles(pix * mpp, VISIUM_SPOT_DIAMETER_UM / 2)
    images = {}
    if load_images:
        for res, f in zip(("hires", "lowres"), files[3:], strict=True):
            scalef = float(sf[f"tissue_{res}_scalef"])
            images[f"{name}_{res}_image"] = make_image(
                _rgb(read_image(f, mode=None)),
                dims=("y", "x", "c"),
                transform=affine_matrix(mpp / scalef),
                c_coords=["r", "g", "b"],
                scale_factors=_PYRAMID,
            )
    info = {
        "mpp": mpp,
        "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
        "spot_diameter_fullres": float(sf["spot_diameter_fullres"]),
        "scalefactors": {k: float(v) for k, v in sf.items()},
        "source": "squidpy tests/_data/visium_fixture (scverse/squidpy, BSD-3-Clause); 10x Visium, human",
        "section": name,
    }
    table = _spot_table(adata, f"{name}_spots", info)
    return new_spatialdata(images=images, shapes={f"{name}_spots": shapes}, tables={name: table}, units=_UNITS)


# --------------------------------------------------------------------------------------------------------------------
# Giotto Visium dentate gyrus crop
# --------------------------------------------------------------------------------------------------------------------
#: Extents (full-resolution px, x then y with y pointing down) of the two small H&E crops (Giotto mini script).
_DG_EXTENTS = {
    "deg_image": (2364.5, 6522.5, 2620.75, 5425.25),
    "deg_image2": (2000.5, 6790.5, 2380.75, 5730.25),
}


@validate_params(path=PATH, load_image=FLAG)
def visium_dentate_gyrus(path: str | Path | None = None, *, load_image: bool = True) -> SpatialData:
    """10x Visium mouse brain crop around the dentate gyrus (GiottoData mini data set), 624 spots x 634 genes.

    Parameters
    ----------
    path
        Data root holding ``giotto_visium_dg/`` (``visium_DG_expr.txt.gz``, ``visium_DG_locs.txt``,
        ``visium_DG_meta.txt``, ``scalefactors_json.json``, ``images/deg_image{,2}.png``); default
        :attr:`stmap.settings.datasetdir`.
    load_image
        Add the two small H&E crops.

    Returns
    -------
    :class:`spatialdata.SpatialData` (``'global'`` in micrometres) with

    ``'dentate_gyrus_he'``, ``'dentate_gyrus_he_wide'`` (images, with ``load_image``)
        The tiny RGB crops ``deg_image.png`` (314 x 212 px, ~13.2 full-resolution px per pixel) and
        ``deg_image2.png`` placed at their published extents (too coarse for histology models).
    ``'dentate_gyrus_spots'`` (shapes)
        Circles at the spot centres in um, radius 27.5 um.
    ``'dentate_gyrus'`` (table)
        Spots x genes: raw counts in ``X`` and ``layers['counts']``; ``obs['in_tissue']``; ``obsm['spatial']``
        full-resolution pixels ``(x, y)`` with ``y`` pointing down (the source stores ``-y``); ``uns['stmap']`` with
        ``mpp`` (from the median nearest-neighbour spot distance = 100 um), ``spot_diameter_um`` (55),
        ``spot_diameter_fullres``, ``source``, ``section``.

    See Also
    --------
    :func:`stmap.datasets.squidpy_visium`
        Another small Visium data set.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.visium_dentate_gyrus(load_image=False)  # files under st.settings.datasetdir
    >>> sdata.tables["dentate_gyrus"].shape
    (624, 634)
    """
    base = "giotto_visium_dg/"
    rel = [base + f for f in ("visium_DG_expr.txt.gz", "visium_DG_locs.txt", "visium_DG_meta.txt")]
    rel += [base + "scalefactors_json.json"]
    if load_image:
        rel += [base + f"images/{k}.png" for k in _DG_EXTENTS]
    files = require_files(data_root(path), rel, "Visium dentate gyrus (GiottoData)")
    expr = pd.read_csv(files[0], sep=" ")  # header has one field fewer: first column becomes the index
    locs = pd.read_csv(files[1], sep=r"\s+", header=None).to_numpy(dtype=float)
    meta = pd.read_csv(files[2]).set_index("cell_ID").reindex(expr.columns)
    sf = json.loads(files[3].read_text())
    if locs.shape[0] != expr.shape[1]:
        raise StmapInputError(f"{files[1]} has {locs.shape[0]} rows but the counts have {expr.shape[1]} spots.")
    pix = np.column_stack([locs[:, 0], -locs[:, 1]])
    mpp = _nn_mpp(pix, VISIUM_SPACING_UM)

    obs = pd.DataFrame({"in_tissue": meta["in_tissue"].fillna(1).astype(int).to_numpy()}, index=expr.columns)
    adata = counts_adata(expr.to_numpy().T, expr.columns, expr.index, obs=obs)
    adata.obsm[Key.obsm.spatial] = pix
    name = "dentate_gyrus"
    images = {}
    if load_image:
        for (x0, x1, y0, y1), f, suffix in zip(_DG_EXTENTS.values(), files[4:], ("", "_wide"), strict=True):
            a = _rgb(read_image(f, mode=None))
            sx, sy = (x1 - x0) / a.shape[1], (y1 - y0) / a.shape[0]
            images[f"{name}_he{suffix}"] = make_image(
                a,
                dims=("y", "x", "c"),
                transform=affine_matrix((sx * mpp, sy * mpp), (x0 * mpp, y0 * mpp)),
                c_coords=["r", "g", "b"],
                scale_factors=_PYRAMID,
            )
    info = {
        "mpp": mpp,
        "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
        "spot_diameter_fullres": float(sf["spot_diameter_fullres"]),
        "source": "GiottoData Mini_datasets/Visium (drieslab/GiottoData, MIT); 10x Visium adult mouse brain",
        "section": name,
    }
    table = _spot_table(adata, f"{name}_spots", info)
    shapes = make_circles(pix * mpp, VISIUM_SPOT_DIAMETER_UM / 2)
    return new_spatialdata(images=images, shapes={f"{name}_spots": shapes}, tables={name: table}, units=_UNITS)


# --------------------------------------------------------------------------------------------------------------------
# spacexr (RCTD) example data
# --------------------------------------------------------------------------------------------------------------------
#: name -> (kind, coordinate unit in um or 'visium' (from the spot grid), spot/cell diameter in um, description)
_SPACEXR: dict[str, tuple[str, Any, Any, str]] = {
    "cerebellum_snrnaseq_ref": ("reference", None, None, "mouse cerebellum snRNA-seq reference, 19 types"),
    "hippocampus_dropseq_ref": ("reference", None, None, "mouse hippocampus Drop-seq reference, 17 types"),
    "hypothalamus_scrnaseq_ref": ("reference", None, None, "mouse hypothalamus scRNA-seq reference, 14 types"),
    "cerebellum_slideseq": ("spatial", 0.65, 10.0, "mouse cerebellum Slide-seq beads (puck pixels, 0.65 um)"),
    "hippocampus_visium": ("spatial", "visium", VISIUM_SPOT_DIAMETER_UM, "mouse hippocampus Visium spots (px)"),
    "hypothalamus_merfish": ("spatial", 1.0, 10.0, "mouse hypothalamus MERFISH cells (um)"),
}


@validate_params(name=Options(_SPACEXR), path=PATH)
def spacexr(name: str, *, path: str | Path | None = None) -> AnnData | SpatialData:
    """Example data of spacexr (RCTD :cite:p:`cable2022`): single-cell references and matching spatial sets.

    Parameters
    ----------
    name
        One of ``'cerebellum_snrnaseq_ref'``, ``'cerebellum_slideseq'``, ``'hippocampus_dropseq_ref'``,
        ``'hippocampus_visium'``, ``'hypothalamus_scrnaseq_ref'``, ``'hypothalamus_merfish'``.
    path
        Data root holding ``spacexr/h5ad/<name>.h5ad``; default :attr:`stmap.settings.datasetdir`.

    Returns
    -------
    References (``*_ref``): :class:`anndata.AnnData` cells x genes with raw counts in ``X`` and
    ``layers['counts']`` (CSR float32) and ``obs['cell_type']`` (categorical).

    Spatial sets: :class:`spatialdata.SpatialData` (``'global'`` in micrometres) with shapes ``'<name>_spots'``
    (circles in um: Slide-seq beads 10 um, Visium spots 55 um, MERFISH cells drawn with a nominal 10 um diameter)
    and table ``'<name>'`` (raw counts in ``X`` and ``layers['counts']``, ``obsm['spatial']`` in the source units:
    Slide-seq puck pixels, Visium full-resolution pixels, MERFISH um; ``uns['stmap']`` with ``mpp`` = um per source
    unit: 0.65 for Slide-seq (its camera pixel, assumed: the source does not state it), from the 100 um grid for
    Visium, 1 for MERFISH; ``spot_diameter_um``, ``source``, ``section``).

    See Also
    --------
    :func:`stmap.tl.map_cells`
        Maps a reference's cells onto the spots.
    :doc:`/tutorials/mapping`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> reference = st.datasets.spacexr("hippocampus_dropseq_ref")  # files under st.settings.datasetdir
    >>> reference.shape, reference.obs["cell_type"].nunique()
    ((510, 307), 17)
    >>> sdata = st.datasets.spacexr("hippocampus_visium")
    >>> sdata.tables["hippocampus_visium"].shape
    (313, 276)
    """
    import anndata as ad

    kind, unit, diam, desc = _SPACEXR[name]
    (f,) = require_files(data_root(path), [f"spacexr/h5ad/{name}.h5ad"], "spacexr")
    src = ad.read_h5ad(f)
    obs = src.obs.copy()
    if "cell_type" in obs:
        obs["cell_type"] = pd.Categorical(obs["cell_type"].astype(str))
    adata = counts_adata(src.X, src.obs_names, src.var_names, obs=obs)
    source = f"spacexr inst/extdata (dmcable/spacexr, GPL-3.0): {desc}"
    if kind == "reference":
        adata.uns[Key.uns.stmap] = {"source": source, "section": name}
        return adata
    xy = np.asarray(src.obsm[Key.obsm.spatial], dtype=float)
    adata.obsm[Key.obsm.spatial] = xy
    mpp = _nn_mpp(xy, VISIUM_SPACING_UM) if unit == "visium" else float(unit)
    info = {"mpp": mpp, "spot_diameter_um": float(diam), "source": source, "section": name}
    table = _spot_table(adata, f"{name}_spots", info)
    shapes = make_circles(xy * mpp, diam / 2)
    return new_spatialdata(shapes={f"{name}_spots": shapes}, tables={name: table}, units=_UNITS)


# --------------------------------------------------------------------------------------------------------------------
# STARmap PLUS cell table
# --------------------------------------------------------------------------------------------------------------------
@validate_params(path=PATH)
def starmap_cells(path: str | Path | None = None) -> SpatialData:
    """STARmap PLUS mouse brain cells (well 11, Shi et al. 2023; via STalign): 43341 cells with region and type.

    The cells of :cite:t:`shi2023`, as distributed with STalign :cite:p:`clifton2023`.

    Parameters
    ----------
    path
        Data root holding ``stalign_starmap/well11_spatial.csv.gz``; default :attr:`stmap.settings.datasetdir`.

    Returns
    -------
    :class:`spatialdata.SpatialData` with

    ``'well11_cells'`` (points)
        One point per cell, ``x, y, z`` in the source's pixel units (identity transformation: the source does not
        state the pixel size, so ``'global'`` is in source pixels here, recorded in
        ``sdata.attrs['stmap_coordinate_units']`` as ``'px'``), with columns ``tissue`` (39 regions), ``maintype``
        (26 classes), ``subtype`` (216), categorical.
    ``'well11'`` (table)
        Cells x 0 genes (no expression in the source), annotating nothing; ``obs_names`` = cell ``NAME``;
        ``obs['tissue', 'maintype', 'subtype']`` (categorical, same order as the points); ``obsm['spatial']``
        ``(x, y, z)``; ``uns['stmap']`` with ``source`` and ``section``.

    See Also
    --------
    :func:`stmap.tl.density`
        Density maps of the cell classes.
    :doc:`/tutorials/density`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.starmap_cells()  # files under st.settings.datasetdir
    >>> sdata.tables["well11"].n_obs, sdata.tables["well11"].obs["maintype"].nunique()
    (43341, 26)
    """
    import anndata as ad
    from scipy import sparse

    (f,) = require_files(data_root(path), ["stalign_starmap/well11_spatial.csv.gz"], "STARmap PLUS (STalign)")
    df = pd.read_csv(f, skiprows=[1])  # 2nd line is a TYPE row
    ann = pd.DataFrame(
        {
            "tissue": pd.Categorical(df["Tissue_Symbol"].astype(str)),
            "maintype": pd.Categorical(df["Maintype_Symbol"].astype(str)),
            "subtype": pd.Categorical(df["Subtype_Symbol"].astype(str)),
        }
    )
    xyz = df[["X", "Y", "Z"]].to_numpy(dtype=float)
    points = make_points(xyz, annotations=ann)
    obs = ann.copy()
    obs.index = pd.Index(df["NAME"].astype(str))
    adata = ad.AnnData(X=sparse.csr_matrix((len(df), 0), dtype=np.float32), obs=obs)
    adata.obsm[Key.obsm.spatial] = xyz
    adata.uns[Key.uns.stmap] = {
        "source": "STalign docs/starmap_data (JEFworks-Lab/STalign, GPL-3.0); STARmap PLUS, Shi et al. 2023",
        "section": "well11",
        "units": "px",
    }
    table = make_table(adata, region=None)
    return new_spatialdata(points={"well11_cells": points}, tables={"well11": table}, units={Key.cs: "px"})


# --------------------------------------------------------------------------------------------------------------------
# BDTNP Drosophila atlas
# --------------------------------------------------------------------------------------------------------------------
@validate_params(path=PATH)
def bdtnp_atlas(path: str | Path | None = None) -> AnnData:
    """BDTNP Drosophila stage-6 embryo in situ atlas (via novoSpaRc): 3039 locations x 84 genes, 3D.

    Parameters
    ----------
    path
        Data root holding ``novosparc/bdtnp_atlas.h5ad`` (or ``novosparc/bdtnp_dge.txt`` and
        ``novosparc/bdtnp_geometry.txt``); default :attr:`stmap.settings.datasetdir`.

    Returns
    -------
    :class:`anndata.AnnData` 3039 x 84: ``X`` the atlas's normalised expression (0-2.4, dense float32; not counts,
    so no ``layers['counts']``), ``obsm['spatial']`` ``(x, y, z)`` embryo coordinates (the first 3039 rows of the
    geometry file, novoSpaRc's convention), ``uns['stmap']`` with ``source``.

    See Also
    --------
    :func:`stmap.tl.density`
        Density maps of points in 2D or 3D.

    Examples
    --------
    >>> import stmap as st
    >>> atlas = st.datasets.bdtnp_atlas()  # files under st.settings.datasetdir
    >>> atlas.shape, atlas.obsm["spatial"].shape
    ((3039, 84), (3039, 3))
    """
    import anndata as ad

    root = data_root(path)
    h5 = root / "novosparc/bdtnp_atlas.h5ad"
    if h5.exists():
        adata = ad.read_h5ad(h5)
    else:
        dge, geo = require_files(root, ["novosparc/bdtnp_dge.txt", "novosparc/bdtnp_geometry.txt"], "BDTNP atlas")
        expr = pd.read_csv(dge, sep="\t")
        xyz = pd.read_csv(geo, sep=r"\s+").to_numpy(dtype=float)[: len(expr)]
        adata = ad.AnnData(X=expr.to_numpy(dtype=np.float32), var=pd.DataFrame(index=expr.columns.astype(str)))
        adata.obs_names = [str(i) for i in range(adata.n_obs)]
        adata.obsm[Key.obsm.spatial] = xyz
    if not isinstance(adata.X, np.ndarray):
        adata.X = np.asarray(adata.X.todense())
    adata.X = adata.X.astype(np.float32)
    adata.obsm[Key.obsm.spatial] = np.asarray(adata.obsm[Key.obsm.spatial], dtype=float)
    adata.uns[Key.uns.stmap] = {
        "source": "novoSpaRc datasets/bdtnp (rajewsky-lab/novosparc, BSD-3-Clause); BDTNP stage-6 embryo atlas",
        "section": "bdtnp",
    }
    return adata


# --------------------------------------------------------------------------------------------------------------------
# CosMx NSCLC (Lung12) crop
# --------------------------------------------------------------------------------------------------------------------
COSMX_MPP = 0.18  # um per pixel of the CosMx SMI camera (NanoString; x_global_px * 0.18 = um)
_COSMX_FOVS = (2, 3)


def _gdal_origin(aux_xml: Path) -> tuple[float, float] | None:
    """Top-left ``(x, y)`` of a GDAL ``.aux.xml`` GeoTransform (pixel size assumed 1, -1)."""
    if not aux_xml.exists():
        return None
    m = re.search(r"<GeoTransform>([^<]+)</GeoTransform>", aux_xml.read_text())
    if m is None:
        return None
    v = [float(s) for s in m.group(1).split(",")]
    return v[0], v[3]


@validate_params(path=PATH, load_images=FLAG)
def cosmx_lung(path: str | Path | None = None, *, load_images: bool = True) -> SpatialData:
    """NanoString CosMx NSCLC (Lung12) crop of two FOVs (GiottoData mini data set): transcripts, cells, images.

    Parameters
    ----------
    path
        Data root holding ``giotto_cosmx_lung/`` (``Lung12_tx_file.csv``, ``Lung12_fov_positions_file.csv``,
        ``CellLabels/CellLabels_F00{2,3}.tif``, ``CellComposite/CellComposite_F00{2,3}.jpg(.aux.xml)``); default
        :attr:`stmap.settings.datasetdir`.
    load_images
        Add the composite IF images.

    Returns
    -------
    :class:`spatialdata.SpatialData` (``'global'`` in micrometres, ``y`` pointing down: ``y_um = -0.18 *
    y_global_px``) with

    ``'fov2_labels'``, ``'fov3_labels'`` (labels)
        Cell segmentation (672 x 648 px crops, integer cell ids = ``cell_ID``), 0.18 um per pixel, placed by the
        crop corner in ``CellComposite_F00<F>.jpg.aux.xml`` and the FOV offset.
    ``'fov2_composite'``, ``'fov3_composite'`` (images, with ``load_images``)
        The RGB composite IF crops, same grid and transformation as the labels.
    ``'transcripts'`` (points)
        All 25825 transcripts, ``x, y`` in um, ``feature_key='target'``; columns ``target``, ``fov``, ``cell_ID``
        (0 = unassigned), ``CellComp``, ``z_plane`` (the source's ``z`` focal plane index), ``x_local_px``,
        ``y_local_px``.
    ``'cells'`` (table)
        Cells x targets (980) of assigned transcripts (``cell_ID > 0``) counted per cell: ``X`` and
        ``layers['counts']`` (CSR float32); annotates both label elements (``obs['region']`` = ``'fov<F>_labels'``,
        ``obs['instance_id']`` = ``cell_ID``); ``obs['fov']``, ``obs['cell_ID']``; ``obsm['spatial']`` label
        centroids in global pixels as in the source (``x_global_px, y_global_px``, ``y`` up); ``uns['stmap']`` with
        ``mpp`` (0.18), ``source``, ``section``. Cells of the label images without transcripts have zero rows.

    See Also
    --------
    :func:`stmap.datasets.vizgen_brain`
        Another imaging-based data set with transcripts and cells.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.cosmx_lung(load_images=False)  # files under st.settings.datasetdir
    >>> sorted(sdata.labels), sdata.tables["cells"].shape
    (['fov2_labels', 'fov3_labels'], (120, 980))
    """
    base = "giotto_cosmx_lung/"
    rel = [base + "Lung12_tx_file.csv", base + "Lung12_fov_positions_file.csv"]
    rel += [base + f"CellLabels/CellLabels_F{f:03d}.tif" for f in _COSMX_FOVS]
    if load_images:
        rel += [base + f"CellComposite/CellComposite_F{f:03d}.jpg" for f in _COSMX_FOVS]
    files = require_files(data_root(path), rel, "CosMx lung (GiottoData)")
    tx = pd.read_csv(files[0])
    fovpos = pd.read_csv(files[1]).set_index("fov")
    labels, images, cells = {}, {}, []
    for i, f in enumerate(_COSMX_FOVS):
        composite = files[4 + i] if load_images else None
        labels[f"fov{f}_labels"], image, obs = _cosmx_fov(f, files[2 + i], composite, tx, fovpos, files[0].parent)
        if image is not None:
            images[f"fov{f}_composite"] = image
        cells.append(obs)
    obs = pd.concat(cells, ignore_index=True)
    obs.index = pd.Index([f"fov{f}_cell{c}" for f, c in zip(obs["fov"], obs["cell_ID"], strict=True)])
    genes = pd.Index(sorted(tx["target"].astype(str).unique()))
    table = _cosmx_table(tx, obs, genes, sorted(labels))
    points = _cosmx_points(tx, genes)
    return new_spatialdata(
        images=images, labels=labels, points={"transcripts": points}, tables={"cells": table}, units=_UNITS
    )


def _cosmx_fov(
    f: int, label_file: Path, composite: Path | None, tx: pd.DataFrame, fovpos: pd.DataFrame, base: Path
) -> tuple[Any, Any, pd.DataFrame]:
    """One FOV: its labels (and composite image) placed in µm, and its cells' ids and centroids in global pixels."""
    import tifffile
    from scipy import ndimage
    from spatialdata.models import Labels2DModel

    lab = tifffile.imread(label_file)
    h, w = lab.shape
    t = tx[tx["fov"] == f]
    origin = _gdal_origin(base / f"CellComposite/CellComposite_F{f:03d}.jpg.aux.xml")
    if origin is None:  # crop corner from the transcripts: 672 x 648 px tiles at multiples of the tile size
        origin = (float(np.floor(t["x_local_px"].min() / w) * w), float(np.floor(t["y_local_px"].min()) + h))
    x0, ytop = origin
    fx, fy = float(fovpos.loc[f, "x_global_px"]), float(fovpos.loc[f, "y_global_px"])
    # GDAL geotransform (1, -1): source pixel (col, row) <-> x_local = x0 + col, y_local = ytop - row, and
    # y_um = -0.18 * (y_local + fy) grows with the row: no flip needed, just scale + translation.
    m = affine_matrix(COSMX_MPP, (COSMX_MPP * (x0 + fx), -COSMX_MPP * (ytop + fy)))
    lab = lab.astype(np.int32)
    labels = Labels2DModel.parse(
        lab, dims=("y", "x"), transformations={Key.cs: to_transformation(m)}, scale_factors=_PYRAMID
    )
    image = None
    if composite is not None:
        img = _rgb(read_image(composite, mode="RGB"))
        image = make_image(img, dims=("y", "x", "c"), transform=m, c_coords=["r", "g", "b"], scale_factors=_PYRAMID)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    cy, cx = (np.array(v) for v in zip(*ndimage.center_of_mass(np.ones_like(lab), lab, ids), strict=True))
    gx, gy = x0 + fx + cx, ytop + fy - cy  # centroid (row, col) -> global px (y up, as in the source)
    obs = pd.DataFrame({"fov": f, "cell_ID": ids.astype(int), "region": f"fov{f}_labels", "gx": gx, "gy": gy})
    return labels, image, obs


def _cosmx_table(tx: pd.DataFrame, obs: pd.DataFrame, genes: pd.Index, regions: list[str]) -> AnnData:
    """Cells x targets of the assigned transcripts, annotating the label elements."""
    from scipy import sparse
    from spatialdata.models import TableModel

    assigned = tx[tx["cell_ID"] > 0]
    row = pd.Series(np.arange(len(obs)), index=obs.index)
    keys = "fov" + assigned["fov"].astype(str) + "_cell" + assigned["cell_ID"].astype(str)
    missing = ~keys.isin(row.index)
    if missing.any():
        raise StmapInputError(f"{int(missing.sum())} assigned transcripts have cell ids absent from the labels.")
    X = sparse.csr_matrix(
        (np.ones(len(assigned), np.float32), (row[keys].to_numpy(), genes.get_indexer(assigned["target"]))),
        shape=(len(obs), len(genes)),
    )
    X.sum_duplicates()
    adata = counts_adata(X, obs.index, genes, obs=obs[["fov", "cell_ID"]])
    adata.obsm[Key.obsm.spatial] = obs[["gx", "gy"]].to_numpy()
    adata.uns[Key.uns.stmap] = {
        "mpp": COSMX_MPP,
        "source": "GiottoData Mini_datasets/CosMx (drieslab/GiottoData, MIT); NanoString CosMx NSCLC Lung12",
        "section": "Lung12",
    }
    adata.obs[Key.obs.region] = pd.Categorical(obs["region"].to_numpy())
    adata.obs[Key.obs.instance] = obs["cell_ID"].to_numpy()
    return TableModel.parse(adata, region=regions, region_key=Key.obs.region, instance_key=Key.obs.instance)


def _cosmx_points(tx: pd.DataFrame, genes: pd.Index) -> Any:
    """Every transcript in µm (``y`` down) with its source columns."""
    pts = pd.DataFrame(
        {
            "target": pd.Categorical(tx["target"].astype(str), categories=genes),
            "fov": tx["fov"].to_numpy(),
            "cell_ID": tx["cell_ID"].to_numpy(),
            "CellComp": tx["CellComp"].astype(str).to_numpy(),
            "z_plane": tx["z"].to_numpy(),
            "x_local_px": tx["x_local_px"].to_numpy(),
            "y_local_px": tx["y_local_px"].to_numpy(),
        }
    )
    xy = np.column_stack([tx["x_global_px"] * COSMX_MPP, -tx["y_global_px"] * COSMX_MPP])
    return make_points(xy, annotations=pts, feature_key="target")


# --------------------------------------------------------------------------------------------------------------------
# Vizgen MERFISH mouse brain crop
# --------------------------------------------------------------------------------------------------------------------
#: Image extent in um (x0, x1, y0, y1; y pointing down), from GiottoData's mini Vizgen script.
_VIZGEN_EXTENT = (6400.029, 6900.037, 4699.967, 5150.007)
_VIZGEN_IMAGES = [(z, s) for z in (0, 1) for s in ("dapi", "polyT")]


@validate_params(path=PATH, load_images=FLAG)
def vizgen_brain(path: str | Path | None = None, *, load_images: bool = True) -> SpatialData:
    """Vizgen MERFISH mouse brain crop (GiottoData mini data set): transcripts, cell polygons, DAPI/polyT, counts.

    Parameters
    ----------
    path
        Data root holding ``giotto_vizgen_brain/`` (``vizgen_transcripts.gz``, ``cell_boundaries/z{0,1}_polygons.gz``,
        ``images/mini_dataset_{dapi,polyT}_z{0,1}.jpg``); default :attr:`stmap.settings.datasetdir`.
    load_images
        Add the four stain images.

    Returns
    -------
    :class:`spatialdata.SpatialData` (``'global'`` in micrometres, the source's ``global_x, global_y``) with

    ``'z0_dapi'``, ``'z0_polyT'``, ``'z1_dapi'``, ``'z1_polyT'`` (images, with ``load_images``)
        Grey stain crops (``c`` = ``'dapi'`` / ``'polyT'``), lazy, multiscale, 4603 x 4143 px over
        x 6400.029-6900.037 um, y 4699.967-5150.007 um (~0.109 um per pixel).
    ``'transcripts'`` (points)
        80343 transcripts ``x, y`` in um, columns ``gene`` (``feature_key``), ``z_plane`` (0/1), ``cell_id``
        (polygon id of the same z plane containing it, ``''`` if none).
    ``'cells_z0'``, ``'cells_z1'`` (shapes)
        Cell boundary polygons per z plane (source ``y`` negated back), indexed by ``poly_ID``.
    ``'cells'`` (table)
        Cells x genes (559): transcripts of each z plane assigned to the polygon that contains them (point in
        polygon) and summed over both planes per ``poly_ID``; raw counts in ``X`` and ``layers['counts']``;
        annotates ``'cells_z0'`` (``instance_id`` = ``poly_ID``, only cells with a z0 polygon; the few z1-only
        cells are left out); ``obsm['spatial']`` z0 polygon centroids in um; ``uns['stmap']`` with ``mpp`` (1,
        coordinates are um), ``source``, ``section``, ``n_unassigned`` transcripts.

    See Also
    --------
    :func:`stmap.datasets.cosmx_lung`
        Another imaging-based data set with transcripts and cells.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.vizgen_brain(load_images=False)  # files under st.settings.datasetdir
    >>> sorted(sdata.shapes), sdata.tables["cells"].shape
    (['cells_z0', 'cells_z1'], (498, 559))
    """
    base = "giotto_vizgen_brain/"
    rel = [base + "vizgen_transcripts.gz"] + [base + f"cell_boundaries/z{z}_polygons.gz" for z in (0, 1)]
    if load_images:
        rel += [base + f"images/mini_dataset_{s}_z{z}.jpg" for z, s in _VIZGEN_IMAGES]
    files = require_files(data_root(path), rel, "Vizgen brain (GiottoData)")
    tx = pd.read_csv(files[0])
    shapes, cell_id = _vizgen_cells(tx, files[1:3])
    genes = pd.Index(sorted(tx["gene"].astype(str).unique()))
    table = _vizgen_table(tx, shapes["cells_z0"], cell_id, genes)
    ann = pd.DataFrame(
        {
            "gene": pd.Categorical(tx["gene"].astype(str), categories=genes),
            "z_plane": tx["global_z"].to_numpy(),
            "cell_id": cell_id.astype(str),
        }
    )
    points = make_points(tx[["global_x", "global_y"]].to_numpy(), annotations=ann, feature_key="gene")
    images = _vizgen_images(files[3:]) if load_images else {}
    return new_spatialdata(
        images=images, points={"transcripts": points}, shapes=shapes, tables={"cells": table}, units=_UNITS
    )


def _vizgen_cells(tx: pd.DataFrame, polygon_files: list[Path]) -> tuple[dict[str, Any], np.ndarray]:
    """Cell polygons per z plane (``y`` negated back), and the polygon of the same plane holding each transcript."""
    import geopandas as gpd
    from shapely import Polygon
    from shapely import points as shp_points
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    shapes, cell_id = {}, np.full(len(tx), "", dtype=object)
    for z, file in enumerate(polygon_files):
        poly = pd.read_csv(file, dtype={"poly_ID": str})
        geoms, ids = [], []
        for pid, g in poly.groupby("poly_ID", sort=True):
            geoms.append(Polygon(np.column_stack([g["x"].to_numpy(), -g["y"].to_numpy()])).buffer(0))
            ids.append(pid)
        gdf = gpd.GeoDataFrame(geometry=geoms, index=pd.Index(ids))
        shapes[f"cells_z{z}"] = ShapesModel.parse(gdf, transformations={Key.cs: Identity()})
        sel = np.flatnonzero(tx["global_z"].to_numpy() == z)
        pts = shp_points(tx["global_x"].to_numpy()[sel], tx["global_y"].to_numpy()[sel])
        ip, ig = gdf.sindex.query(pts, predicate="within")
        first = pd.Series(ig, index=ip).groupby(level=0).first()  # overlapping polygons: take one
        cell_id[sel[first.index.to_numpy()]] = np.asarray(ids, dtype=object)[first.to_numpy()]
    return shapes, cell_id


def _vizgen_table(tx: pd.DataFrame, cells: Any, cell_id: np.ndarray, genes: pd.Index) -> AnnData:
    """Cells (z0 polygons) x genes: transcripts of both planes counted per polygon id."""
    from scipy import sparse

    ok = pd.Index(cells.index).get_indexer(cell_id)
    has = ok >= 0
    X = sparse.csr_matrix(
        (np.ones(has.sum(), np.float32), (ok[has], genes.get_indexer(tx["gene"].astype(str)[has]))),
        shape=(len(cells), len(genes)),
    )
    X.sum_duplicates()
    adata = counts_adata(X, cells.index, genes)
    cen = cells.geometry.centroid
    adata.obsm[Key.obsm.spatial] = np.column_stack([cen.x.to_numpy(), cen.y.to_numpy()])
    adata.uns[Key.uns.stmap] = {
        "mpp": 1.0,
        "source": "GiottoData Mini_datasets/Vizgen (drieslab/GiottoData, MIT); Vizgen MERFISH mouse brain",
        "section": "vizgen_brain",
        "n_unassigned": int((cell_id == "").sum()),
    }
    return make_table(adata, region="cells_z0", instance_ids=cells.index.to_numpy())


def _vizgen_images(files: list[Path]) -> dict[str, Any]:
    """The four grey stain crops, lazy, placed at their published extent."""
    x0, x1, y0, y1 = _VIZGEN_EXTENT
    images = {}
    for (z, s), f in zip(_VIZGEN_IMAGES, files, strict=True):
        a = lazy_image(f, mode="L")
        m = affine_matrix(((x1 - x0) / a.shape[1], (y1 - y0) / a.shape[0]), (x0, y0))
        images[f"z{z}_{s}"] = make_image(
            a, dims=("y", "x", "c"), transform=m, c_coords=[s], scale_factors=[2, 2], chunks=(1, 1024, 1024)
        )
    return images
