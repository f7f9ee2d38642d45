"""A Xenium Onboard Analysis output folder: cells -> boundaries, masks, transcripts -> cell files -> images -> truth."""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core._docs import inject_docs
from stmap._core._params import validate_params

from ._common import (
    COMMON_PARAMS,
    DOCS,
    FLAG,
    POSITIVE,
    SOFTWARE,
    cells_frame,
    gene_ids,
    molecules,
    tissue,
    truth_var,
    write_10x_h5,
    write_folder,
    write_truth,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from anndata import AnnData

_VERSION = "xenium-3.0.0.15"
_NUC_EXTRA_UM = 3.0  # cell radius = nucleus radius + this (nucleus expansion, clipped by Voronoi)
_HE_MPP = 1.0  # µm per pixel of the H&E
_QUAD = 6  # quarter-circle segments of the disc polygons (24-gons)
_REGION = "synthetic"


@dataclass(frozen=True)
class _Args:
    seed: int
    n_cells: int
    n_genes: int
    ps: float
    he_image: bool


@dataclass
class _Cells:
    """The cells of the tissue as Xenium segments them: ids, nucleus and cell discs clipped by Voronoi cells."""

    xy: np.ndarray  # centres (µm)
    prefix: np.ndarray  # uint32 cell-id prefixes
    ids: np.ndarray  # Xenium cell ids
    labels: np.ndarray  # raster label of each cell (1..n)
    types: np.ndarray
    r_nuc: np.ndarray
    r_cell: np.ndarray
    cell_poly: np.ndarray
    nuc_poly: np.ndarray
    cell_area: np.ndarray
    nuc_area: np.ndarray
    w_um: float
    h_um: float

    @property
    def n(self) -> int:
        """Number of cells."""
        return int(self.xy.shape[0])

    def shape_px(self, ps: float) -> tuple[int, int]:
        """``(h, w)`` of the morphology image."""
        return int(np.ceil(self.h_um / ps)), int(np.ceil(self.w_um / ps))


@validate_params(**COMMON_PARAMS, pixel_size=POSITIVE, he_image=FLAG)
@inject_docs(**DOCS)
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
    {truth_item}

    Parameters
    ----------
    {path}
    seed
        Random seed of the tissue, cell ids and molecule positions.
    n_cells
        Number of cells (the default tissue is about 330 µm across: a 1,530-pixel morphology image).
    {n_genes}
    pixel_size
        Micrometres per morphology pixel (Xenium: 0.2125).
    he_image
        Also write an aligned H&E image (read by the reader's default ``aligned_images=True``).
    {overwrite}

    {folder_returns}

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

    See Also
    --------
    :func:`stmap.datasets.large_xenium`
        A whole section, written as zarr.
    :doc:`/tutorials/xenium`
        Tutorial.

    Examples
    --------
    >>> import spatialdata_io
    >>> import stmap as st
    >>> folder = st.datasets.synthetic_xenium("xenium_outs", seed=0)
    >>> sdata = spatialdata_io.xenium(folder)
    >>> sdata.tables["table"].shape  # cells x genes
    (300, 100)
    """
    args = _Args(seed=int(seed), n_cells=int(n_cells), n_genes=int(n_genes), ps=float(pixel_size), he_image=he_image)
    return write_folder(path, overwrite, _write_xenium, args)


def _write_xenium(out: Path, a: _Args) -> None:
    """The folder's files, in order: boundaries, transcripts, cell files, images, specs, truth."""
    import pyarrow.parquet as pq

    t = tissue(a.seed, a.n_cells, a.n_genes, _HE_MPP)
    gen = np.random.default_rng([a.seed, 3])
    c = _cells(t, gen)
    pq.write_table(_boundaries(c, c.cell_poly), out / "cell_boundaries.parquet")
    pq.write_table(_boundaries(c, c.nuc_poly), out / "nucleus_boundaries.parquet")
    cell_mask, nuc_mask = _masks(c, a.ps)
    pq.write_table(_transcripts(gen, t, c), out / "transcripts.parquet")
    ids = gene_ids(a.n_genes)
    gene_names = np.asarray(t["var"].index.astype(str))
    X = t["X"]
    write_10x_h5(out / "cell_feature_matrix.h5", X, c.ids, ids, gene_names, library_id="synthetic", chemistry="Xenium")
    tc = np.asarray(X.sum(axis=1)).ravel()
    pq.write_table(_cells_table(c, tc), out / "cells.parquet")
    _write_cells_zarr(out / "cells.zarr.zip", c, cell_mask, nuc_mask, a.ps)
    _write_morphology(out / "morphology_focus", gen, c, nuc_mask, a.ps)
    if a.he_image:
        _write_he(out, t["he"], a.ps)
    (out / "experiment.xenium").write_text(json.dumps(_specs(c, tc, a), indent=4))
    write_truth(out, _truth(t, c, ids, a))


def _cell_ids(n: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct uint32 prefixes and their Xenium strings (8 letters 'a'..'p' for the hex nibbles, '-1')."""
    prefix = np.sort(gen.choice(2**24, size=n, replace=False).astype(np.uint32) + np.uint32(2**24))
    shifts = np.array([28, 24, 20, 16, 12, 8, 4, 0], dtype=np.uint32)
    nib = (prefix[:, None] >> shifts) & 0xF
    letters = np.array(list("abcdefghijklmnop"))[nib]
    return prefix, np.array(["".join(row) + "-1" for row in letters])


def _cells(t: dict[str, Any], gen: np.random.Generator) -> _Cells:
    """Cell ids, radii by type and the polygons: nucleus and cell discs clipped by the Voronoi cells."""
    import shapely

    from .._simulate import _NUC

    xy = t["xy"]
    n = xy.shape[0]
    w_um, h_um = t["he"].shape[1] * _HE_MPP, t["he"].shape[0] * _HE_MPP
    types = t["cell_type"].astype(str).to_numpy()
    r_nuc = np.array([math.sqrt(_NUC[c][0] * _NUC[c][1]) for c in types])
    r_cell = r_nuc + _NUC_EXTRA_UM
    prefix, ids = _cell_ids(n, gen)
    pts = shapely.points(xy)
    frame = shapely.box(0.0, 0.0, w_um, h_um)
    vor = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=frame))
    hit_poly, hit_pt = shapely.STRtree(pts).query(vor, predicate="contains")
    vor_of = np.empty(n, dtype=object)
    vor_of[hit_pt] = vor[hit_poly]
    cell_poly = shapely.intersection(vor_of, shapely.buffer(pts, r_cell, quad_segs=_QUAD))
    nuc_poly = shapely.intersection(vor_of, shapely.buffer(pts, r_nuc, quad_segs=_QUAD))
    return _Cells(
        xy=xy,
        prefix=prefix,
        ids=ids,
        labels=np.arange(1, n + 1, dtype=np.uint32),
        types=types,
        r_nuc=r_nuc,
        r_cell=r_cell,
        cell_poly=cell_poly,
        nuc_poly=nuc_poly,
        cell_area=shapely.area(cell_poly),
        nuc_area=shapely.area(nuc_poly),
        w_um=w_um,
        h_um=h_um,
    )


def _boundaries(c: _Cells, polys: np.ndarray) -> pa.Table:
    """``*_boundaries.parquet``: the closed rings' vertices (µm) with the cell id and raster label."""
    import pyarrow as pa
    import shapely

    coords, idx = shapely.get_coordinates(shapely.get_exterior_ring(polys), return_index=True)
    return pa.table(
        {
            "cell_id": pa.array(c.ids[idx].astype(object), type=pa.string()),
            "vertex_x": pa.array(coords[:, 0].astype(np.float32)),
            "vertex_y": pa.array(coords[:, 1].astype(np.float32)),
            "label_id": pa.array(c.labels[idx]),
        }
    )


def _masks(c: _Cells, ps: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus rasters: a pixel belongs to the cell whose centre is nearest, within its radius."""
    h, w = c.shape_px(ps)
    cell_mask = np.zeros((h, w), dtype=np.uint32)
    nuc_mask = np.zeros((h, w), dtype=np.uint32)
    best = np.full((h, w), np.inf, dtype=np.float64)
    win = []
    for i in range(c.n):
        cx, cy, R = c.xy[i, 0] / ps, c.xy[i, 1] / ps, c.r_cell[i] / ps
        x0, x1 = max(int(cx - R) - 1, 0), min(int(cx + R) + 2, w)
        y0, y1 = max(int(cy - R) - 1, 0), min(int(cy + R) + 2, h)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = ((xx + 0.5) - cx) ** 2 + ((yy + 0.5) - cy) ** 2
        sub = best[y0:y1, x0:x1]
        m = (d2 <= R * R) & (d2 < sub)
        sub[m] = d2[m]
        cell_mask[y0:y1, x0:x1][m] = c.labels[i]
        win.append((y0, y1, x0, x1, d2))
    for i, (y0, y1, x0, x1, d2) in enumerate(win):
        rn = c.r_nuc[i] / ps
        m = (cell_mask[y0:y1, x0:x1] == c.labels[i]) & (d2 <= rn * rn)
        nuc_mask[y0:y1, x0:x1][m] = c.labels[i]
    return cell_mask, nuc_mask


def _transcripts(gen: np.random.Generator, t: dict[str, Any], c: _Cells) -> pa.Table:
    """``transcripts.parquet``: each cell's molecules in a disc that stays inside its own cell."""
    import pyarrow as pa
    from scipy.spatial import cKDTree

    xy, r_nuc = c.xy, c.r_nuc
    d_nn = cKDTree(xy).query(xy, k=2)[0][:, 1]
    rho = 0.95 * np.minimum(c.r_cell * math.cos(math.pi / (4 * _QUAD)), d_nn / 2.0)
    cell, gene, pos = molecules(gen, t["X"], xy, rho)
    order = np.lexsort((pos[:, 0], pos[:, 1]))
    cell, gene, pos = cell[order], gene[order], pos[order]
    m = cell.size
    dist = np.hypot(pos[:, 0] - xy[cell, 0], pos[:, 1] - xy[cell, 1])
    gene_names = np.asarray(t["var"].index.astype(str))
    z = gen.uniform(8.0, 14.0, m)
    return pa.table(
        {
            "transcript_id": pa.array(np.uint64(281474976710656) + np.arange(m, dtype=np.uint64)),
            "cell_id": pa.array(c.ids[cell].astype(object), type=pa.string()),
            "overlaps_nucleus": pa.array((dist <= r_nuc[cell]).astype(np.uint8)),
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


def _cells_table(c: _Cells, tc: np.ndarray) -> pa.Table:
    """``cells.parquet``: centres, counts and areas of the cells."""
    import pyarrow as pa

    n = c.n
    zeros = np.zeros(n, dtype=np.uint32)
    return pa.table(
        {
            "cell_id": pa.array(c.ids.astype(object), type=pa.string()),
            "x_centroid": pa.array(c.xy[:, 0]),
            "y_centroid": pa.array(c.xy[:, 1]),
            "transcript_counts": pa.array(tc.astype(np.uint32)),
            "control_probe_counts": pa.array(zeros),
            "genomic_control_counts": pa.array(zeros),
            "control_codeword_counts": pa.array(zeros),
            "unassigned_codeword_counts": pa.array(zeros),
            "deprecated_codeword_counts": pa.array(zeros),
            "total_counts": pa.array(tc.astype(np.float64)),
            "cell_area": pa.array(c.cell_area),
            "nucleus_area": pa.array(c.nuc_area),
            "nucleus_count": pa.array(np.ones(n, dtype=np.uint32)),
            "segmentation_method": pa.array(
                np.full(n, f"Segmented by nucleus expansion of {_NUC_EXTRA_UM}µm", dtype=object), type=pa.string()
            ),
        }
    )


def _write_cells_zarr(file: Path, c: _Cells, cell_mask: np.ndarray, nuc_mask: np.ndarray, ps: float) -> None:
    """``cells.zarr.zip``: cell ids, summary, the two masks and the polygon sets (zarr v2 in a zip)."""
    import shapely
    import zarr

    n = c.n
    h, w = cell_mask.shape
    nuc_centroid = shapely.get_coordinates(shapely.centroid(c.nuc_poly))
    cell_centroid = shapely.get_coordinates(shapely.centroid(c.cell_poly))
    summary = np.column_stack([cell_centroid, c.cell_area, nuc_centroid, c.nuc_area, np.zeros(n), np.ones(n)]).astype(
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
        g.create_array("cell_id", data=np.column_stack([c.prefix, np.ones(n, dtype=np.uint32)]).astype(np.uint32))
        g.create_array("cell_summary", data=summary, attributes={"column_names": summary_cols})
        masks = g.create_group("masks")
        chunks = (min(h, 4096), min(w, 4096))
        masks.create_array("0", data=nuc_mask, chunks=chunks)
        masks.create_array("1", data=cell_mask, chunks=chunks)
        masks.create_array("homogeneous_transform", data=np.diag([1.0 / ps, 1.0 / ps, 1.0, 1.0]))
        ps_group = g.create_group("polygon_sets")
        for k in (0, 1):
            ps_group.create_group(str(k)).create_array("cell_index", data=np.arange(n, dtype=np.uint32))
        _zip_folder(store, file)


def _zip_folder(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(src).as_posix())


def _write_morphology(folder: Path, gen: np.random.Generator, c: _Cells, nuc_mask: np.ndarray, ps: float) -> None:
    """``morphology_focus/morphology_focus_0000.ome.tif``: a DAPI-like image, bright nuclei by cell type."""
    import tifffile
    from scipy.ndimage import gaussian_filter

    from .._simulate import _NUC

    h, w = nuc_mask.shape
    strength = np.array([_NUC[t][2] for t in c.types])
    lut = np.concatenate([[0.0], strength])
    dapi = gaussian_filter(lut[nuc_mask], 0.5 / ps) * 3000.0 + 100.0 + gen.normal(0.0, 20.0, size=(h, w))
    dapi = np.clip(np.round(dapi), 0, 65535).astype(np.uint16)
    folder.mkdir()
    tifffile.imwrite(
        folder / "morphology_focus_0000.ome.tif",
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


def _write_he(out: Path, he: np.ndarray, ps: float) -> None:
    """The aligned H&E and its affine to morphology pixels."""
    import tifffile

    tifffile.imwrite(out / f"{_REGION}_he_image.ome.tif", he, ome=True, photometric="rgb", metadata={"axes": "YXS"})
    s = _HE_MPP / ps
    np.savetxt(
        out / f"{_REGION}_he_imagealignment.csv",
        [[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]],
        delimiter=",",
        fmt="%.17g",
    )


def _specs(c: _Cells, tc: np.ndarray, a: _Args) -> dict[str, Any]:
    """``experiment.xenium``."""
    return {
        "major_version": 5,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": "stmap synthetic",
        "run_start_time": "2024-01-01T00:00:00Z",
        "region_name": _REGION,
        "preservation_method": "ffpe",
        "num_cells": c.n,
        "transcripts_per_cell": float(np.median(tc)),
        "transcripts_per_100um": float(tc.sum() / (c.w_um * c.h_um) * 1e4),
        "cassette_name": "synthetic",
        "slide_id": "0000000",
        "panel_design_id": "synthetic",
        "panel_name": "stmap synthetic panel",
        "panel_organism": "Human",
        "panel_num_targets_predesigned": a.n_genes,
        "panel_num_targets_custom": 0,
        "pixel_size": a.ps,
        "instrument_sn": "synthetic",
        "instrument_sw_version": SOFTWARE,
        "analysis_sw_version": _VERSION,
        "experiment_uuid": "",
        "cassette_uuid": "",
        "roi_uuid": "",
        "z_step_size": 3.0,
        "well_uuid": "",
        "calibration_uuid": "",
        "images": {"morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif"},
    }


def _truth(t: dict[str, Any], c: _Cells, ids: np.ndarray, a: _Args) -> AnnData:
    """One row per cell in the order of every file: counts, centre, type, region, label, areas and radii."""
    import anndata as ad

    cells = cells_frame(t)
    cells.index = pd.Index(c.ids)
    cells["label_id"] = c.labels.astype(np.int64)
    cells["cell_area"] = c.cell_area
    cells["nucleus_area"] = c.nuc_area
    cells["nucleus_radius_um"] = c.r_nuc
    cells["cell_radius_um"] = c.r_cell
    cells["source_cell"] = np.asarray(t["names"])
    truth = ad.AnnData(X=t["X"].astype(np.float32), obs=cells, var=truth_var(t, ids))
    truth.obsm["spatial_um"] = c.xy.copy()
    truth.uns.update(
        {
            "platform": "xenium",
            "seed": a.seed,
            "pixel_size": a.ps,
            "analysis_sw_version": _VERSION,
            "he_image_um_per_px": _HE_MPP if a.he_image else 0.0,
        }
    )
    return truth
