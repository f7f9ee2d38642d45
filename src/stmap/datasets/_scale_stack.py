"""Serial Visium HD sections at capture-area size, streamed to zarr: test data for 3D stacking and imputation.

Every section is one capture area in ``spatialdata_io.visium_hd``'s layout (see :func:`stmap.datasets.large_visium_hd`,
whose generative model this reuses): the same cell types, tissue domains that are smooth in ``x, y`` and drift slowly
along the cutting axis ``z`` (shared across sections, so expression can be learnt from the neighbouring sections),
bins on each section's own lattice and a small rigid misalignment per section (rotation and shift of the tissue
against the capture area). Histology is either a precomputed ``obsm['X_histology']`` (three blocks of features, one
per "patch scale", that follow the bin's own cells and its neighbourhood, to isolate the cost of the 3D tools) or a
lazy synthetic H&E whose tint follows the tissue domains (``image=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._core._constants import Key
from .._core._params import Interval, validate_params
from ._scale import _FIELD_GRID, TRUTH_COUNTS, TRUTH_TYPES, _cells_of_units, _he_image, _lazy_counts, _model, _truth

__all__ = ["large_stack"]

#: ``uns`` entry of each section's table with its truth: section name, ``z_um``, ``transform``, ``library_mean``.
TRUTH_STACK = "truth_stack"
#: ``varm`` entry with the cell-type profiles (genes x types, columns sum to 1) the counts are drawn from.
TRUTH_PROFILES = "truth_profiles"
_MARGIN_UM = 200.0


def _z_grid(depth_um: float, extent_um: float) -> tuple[float, int]:
    """Field-grid units per micrometre (along z as in the plane) and the z grid points covering the stack's depth."""
    per_um = (_FIELD_GRID - 1) / extent_um
    return per_um, int(math.ceil(depth_um * per_um)) + 4


def _mixture_3d(seed: int, n_types: int, xy01: np.ndarray, z: tuple[float, int], sharpness: float) -> np.ndarray:
    """Local type probabilities from smooth random 3D fields (observations x types).

    ``xy01``: positions in the plane in [0, 1]^2; ``z``: ``(position in grid units, grid points along z)``.
    """
    from scipy.ndimage import map_coordinates

    zg, n_z = z
    gen = np.random.default_rng([seed, 21, n_z])
    fields = gen.normal(size=(n_types, _FIELD_GRID, _FIELD_GRID, n_z))
    rc = np.clip(xy01[:, ::-1] * (_FIELD_GRID - 1), 0, _FIELD_GRID - 1)  # (row, col)
    coords = np.r_[rc.T, np.full((1, len(xy01)), zg)]
    logits = np.stack([map_coordinates(f, coords, order=3, mode="nearest") for f in fields], axis=1)
    w = np.exp(sharpness * (logits - logits.max(axis=1, keepdims=True)))
    return w / w.sum(axis=1, keepdims=True)


def _rigid(seed: int, i: int, max_angle: float, max_shift_um: float, centre_um: float, mpp: float) -> np.ndarray:
    """3x3 ``(x, y, 1)`` matrix: section ``i``'s full-resolution pixels -> the aligned frame (micrometres)."""
    gen = np.random.default_rng([seed, 22, i])
    a = np.deg2rad(gen.uniform(-max_angle, max_angle))
    t = gen.uniform(-max_shift_um, max_shift_um, 2)
    c, s = np.cos(a), np.sin(a)
    rot = np.array([[c, -s], [s, c]])
    m = np.eye(3)
    m[:2, :2] = rot * mpp
    m[:2, 2] = centre_um - rot @ np.full(2, centre_um) + t  # rotate about the capture area's centre, then shift
    return m


def _features(
    seed: int, sec_seed: int, own: np.ndarray, mix: np.ndarray, wide: np.ndarray, n_features: int, noise: float
) -> np.ndarray:
    """Three blocks of features: the bin's own cells, its neighbourhood's mixture, a wider context; plus noise."""
    w = np.random.default_rng([seed, 23]).normal(size=(3, own.shape[1], n_features))  # one "stain" per type
    gen = np.random.default_rng([sec_seed, 24])
    blocks = [src @ w[k] + noise * gen.normal(size=(len(own), n_features)) for k, src in enumerate((own, mix, wide))]
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _tint(seed: int, chunks: tuple, mats: np.ndarray, extent: float, z: tuple[float, int], n_types: int) -> Any:
    """A lazy ``(3, y, x)`` int16 tint of the H&E by the local cell-type mixture, on the image's chunks."""
    import dask.array as da

    stains = np.random.default_rng([seed, 25]).uniform(-60, 60, size=(n_types, 3))

    def block(block_info: Any = None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        step = 32  # the tint is smooth: evaluate it every 32 px and repeat
        ys, xs = np.arange(y0, y1, step) + step / 2, np.arange(x0, x1, step) + step / 2
        gx, gy = np.meshgrid(xs, ys)
        um = np.c_[gx.ravel(), gy.ravel()] @ mats[:2, :2].T + mats[:2, 2]
        rgb = (_mixture_3d(seed, n_types, um / extent, z, 3.0) @ stains).reshape(len(ys), len(xs), 3)
        full = np.repeat(np.repeat(rgb, step, axis=0), step, axis=1)[: y1 - y0, : x1 - x0]
        return np.moveaxis(full, -1, 0).astype(np.int16)

    return da.map_blocks(block, dtype=np.int16, chunks=chunks)


@dataclass(frozen=True)
class _Geometry:
    """The capture area shared by the sections, and the stack's extent along ``z`` on the type fields' grid."""

    side: int  # bins per row
    n_bins: int
    bin_um: float
    mpp: float
    z_per_um: float  # field-grid units per micrometre
    n_z: int  # field-grid points along z

    @property
    def extent_um(self) -> float:
        """Side of the capture area with its margins, micrometres."""
        return 2 * _MARGIN_UM + self.side * self.bin_um

    def z(self, z_um: float) -> tuple[float, int]:
        """A section's position on the fields' grid (``_mixture_3d``'s ``z``)."""
        return 1.5 + z_um * self.z_per_um, self.n_z


def _image(seed: int, g: _Geometry, mat: np.ndarray, z: tuple[float, int], n_types: int, cells_per_bin: float) -> Any:
    """The section's lazy H&E pyramid: nuclei on pink stroma (:func:`large_visium_hd`'s), tinted by the domains."""
    from spatialdata.models import Image2DModel

    px = g.bin_um / g.mpp
    h = int(math.ceil((2 * _MARGIN_UM + math.ceil(g.n_bins / g.side) * g.bin_um) / g.mpp))
    w = int(math.ceil(g.extent_um / g.mpp))
    base = _he_image(seed, h, w, 3.0 / g.mpp, cells_per_bin / px**2, 4096)
    tint = _tint(seed, base.chunks, mat, g.extent_um, z, n_types)
    arr = (base.astype(np.int16) + tint).clip(0, 255).astype(np.uint8)
    return Image2DModel.parse(arr, dims=("c", "y", "x"), scale_factors=[2, 2, 2, 2], chunks=(3, 4096, 4096))


def _obs(g: _Geometry, region: str) -> pd.DataFrame:
    """The reader's ``obs``: bins row by row, named like Space Ranger's barcodes."""
    idx = np.arange(g.n_bins)
    row, col = idx // g.side, idx % g.side
    tag = f"{int(round(g.bin_um)):03d}"
    index = pd.Index([f"s_{tag}um_{r:05d}_{c:05d}-1" for r, c in zip(row, col, strict=True)])
    cols = {"in_tissue": 1, "array_row": row, "array_col": col, "location_id": idx}
    return pd.DataFrame({**cols, "region": pd.Categorical([region] * g.n_bins)}, index=index)


def _corners_px(g: _Geometry) -> np.ndarray:
    """Top-left corner of every bin, full-resolution pixels of the section's own frame."""
    idx = np.arange(g.n_bins)
    return np.c_[_MARGIN_UM + (idx % g.side) * g.bin_um, _MARGIN_UM + (idx // g.side) * g.bin_um] / g.mpp


def _table(i: int, seed: int, model: Any, g: _Geometry, mat: np.ndarray, z_um: float, opts: dict[str, Any]) -> Any:
    """Section ``i``'s table (lazy counts) with its truth and, with ``n_features``, the synthetic features."""
    from anndata import AnnData
    from spatialdata.models import TableModel

    sec_seed = int(np.random.default_rng([seed, 26, i]).integers(2**31))
    px = g.bin_um / g.mpp
    um = (_corners_px(g) + px / 2) @ mat[:2, :2].T + mat[:2, 2]  # bin centres in the aligned frame
    mix = _mixture_3d(seed, len(model.types), um / g.extent_um, g.z(z_um), 3.0)
    n_cells = 1 + np.random.default_rng([sec_seed, 6]).binomial(2, (opts["cells_per_bin"] - 1) / 2, size=g.n_bins)
    cells = _cells_of_units(sec_seed, mix, n_cells)
    region = f"{opts['cs']}_square_{int(round(g.bin_um)):03d}um"
    obs = _obs(g, region)
    prof = model.profiles * model.platform[None, :]
    prof /= prof.sum(axis=1, keepdims=True)
    lib_mean = 60.0 * g.bin_um**2 / 64.0
    X = _lazy_counts(sec_seed, prof, cells, lib_mean, g.n_bins, opts["chunk_rows"])
    table = AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    truth = _truth(cells, g.n_bins, model.types, obs.index)
    table.obsm[TRUTH_COUNTS] = truth
    table.obsm["spatial_true"] = um
    table.uns[TRUTH_TYPES] = np.asarray(model.types)
    table.uns[TRUTH_STACK] = {"section": f"S{i}", "z_um": z_um, "transform": mat, "library_mean": lib_mean}
    table.varm[TRUTH_PROFILES] = prof.T
    if opts["n_features"] is not None:
        own = truth.to_numpy(dtype=float)
        own /= own.sum(1, keepdims=True)
        wide = _mixture_3d(seed, len(model.types), um / g.extent_um, g.z(z_um), 1.0)
        k = int(opts["n_features"])
        table.obsm[Key.obsm.histology] = _features(seed, sec_seed, own, mix, wide, k, opts["feature_noise"])
        table.uns[Key.obsm.histology] = {"n_features_per_scale": [k] * 3, "extractor": "synthetic"}
    return TableModel.parse(table, region=region, region_key="region", instance_key="location_id")


def _section(i: int, seed: int, model: Any, g: _Geometry, mat: np.ndarray, z_um: float, opts: dict[str, Any]) -> Any:
    """One section as a SpatialData in the reader's layout (counts and image lazy)."""
    import geopandas as gpd
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity, set_transformation

    table = _table(i, seed, model, g, mat, z_um, opts)
    region = table.uns["spatialdata_attrs"]["region"]
    x0, y0 = _corners_px(g).T
    px = g.bin_um / g.mpp
    squares = shapely.box(x0, y0, x0 + px, y0 + px)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=squares, index=np.arange(g.n_bins)), transformations={opts["cs"]: Identity()}
    )
    images = {}
    if opts["image"]:
        sec_seed = int(np.random.default_rng([seed, 26, i]).integers(2**31))
        img = _image(sec_seed, g, mat, g.z(z_um), len(model.types), opts["cells_per_bin"])
        set_transformation(img, Identity(), to_coordinate_system=opts["cs"])
        images[f"{opts['cs']}_full_image"] = img
    tag = f"{int(round(g.bin_um)):03d}"
    sdata = SpatialData(images=images, shapes={region: shapes}, tables={f"square_{tag}um": table})
    sdata.attrs["spatialdata_io_reader"] = "visium_hd"
    return sdata


@validate_params(
    n_sections=Interval(int, 2, None),
    n_bins=Interval(int, 1, None),
    n_genes=Interval(int, 2, None),
    n_types=Interval(int, 2, None),
    bin_um=Interval(float, 0, None, "neither"),
    mpp=Interval(float, 0, None, "neither"),
    cells_per_bin=Interval(float, 1, 3),
    z_step_um=Interval(float, 0, None, "neither"),
    max_angle=Interval(float, 0, 45),
    max_shift_um=Interval(float, 0, None),
    n_features=[Interval(int, 1, None), None],
    feature_noise=Interval(float, 0, None),
    platform_sd=Interval(float, 0, None),
    chunk_rows=Interval(int, 1, None),
    seed=Interval(int, 0, None),
)
def large_stack(
    path: str | Path,
    *,
    n_sections: int = 4,
    n_bins: int = 150_000,
    n_genes: int = 2000,
    n_types: int = 12,
    bin_um: float = 16.0,
    mpp: float = 0.2738,
    cells_per_bin: float = 1.7,
    z_step_um: float = 20.0,
    max_angle: float = 2.0,
    max_shift_um: float = 40.0,
    n_features: int | None = 16,
    feature_noise: float = 0.5,
    image: bool = False,
    platform_sd: float = 0.2,
    dataset_id: str = "sample",
    chunk_rows: int = 50_000,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write serial Visium HD sections (one capture area each) as zarr stores, in ``spatialdata_io.visium_hd``'s layout.

    Section ``i`` (named ``'S{i}'``) is cut at ``z = i * z_step_um`` through one simulated block: smooth random fields
    in ``x, y, z`` set the local cell-type mixture (domains shared by neighbouring sections, drifting along ``z``),
    each bin holds 1-3 cells drawn from it, and counts follow :func:`large_visium_hd`'s model (same ``seed``,
    ``n_types`` and ``n_genes``: the same cell types). Each section's bins fill its own capture area row by row; the
    tissue is rotated (up to ``max_angle`` degrees) and shifted (up to ``max_shift_um``) against it, so the sections
    need aligning, and the truth says how.

    Each store ``'{dataset_id}_S{i}.zarr'`` holds shapes ``'{dataset_id}_S{i}_square_{bin}um'`` (squares, full-res
    pixels) in the coordinate system ``'{dataset_id}_S{i}'``, table ``'square_{bin}um'`` (``obs``: ``in_tissue``,
    ``array_row``, ``array_col``, ``location_id``, ``region``; sparse counts), with ``n_features``:
    ``obsm['X_histology']`` (three blocks of ``n_features`` columns, ``uns['X_histology']['n_features_per_scale']``:
    the bin's own cells, its neighbourhood, a wider context, each a fixed linear map of the cell-type composition plus
    Gaussian noise of standard deviation ``feature_noise``), with ``image=True`` the lazy H&E pyramid
    ``'{dataset_id}_S{i}_full_image'`` (nuclei on stroma tinted by the domains); ``attrs['spatialdata_io_reader'] =
    'visium_hd'``. The truth: ``obsm['truth_cell_type_counts']``, ``uns['truth_cell_types']``,
    ``varm['truth_profiles']`` (genes x types, the expected share of each gene in a cell of each type),
    ``obsm['spatial_true']`` (bin centres in the aligned frame, µm) and ``uns['truth_stack']``: ``section``, ``z_um``,
    ``transform`` (3x3 ``(x, y, 1)`` matrix, the section's pixels -> the aligned frame in µm, what
    ``st.pp.stack_sections(transforms=...)`` takes) and ``library_mean`` (mean counts per cell).

    Parameters
    ----------
    path
        Directory of the stores (created).
    n_sections
        Number of sections.
    n_bins
        Bins per section (a whole 6.5 mm capture area: 160,000 bins of 16 µm).
    n_genes
        Number of genes.
    n_types
        Number of cell types.
    bin_um
        Bin side in micrometres.
    mpp
        Micrometres per full-resolution pixel of the shapes and the image.
    cells_per_bin
        Mean number of cells per bin, between 1 and 3.
    z_step_um
        Distance between consecutive sections, in micrometres.
    max_angle
        Largest rotation of a section's tissue against its capture area, in degrees.
    max_shift_um
        Largest shift of a section's tissue against its capture area (per axis), in micrometres.
    n_features
        Columns per block of the precomputed ``obsm['X_histology']``; ``None``: no features.
    feature_noise
        Standard deviation of the noise added to the features.
    image
        Whether to write a lazy H&E per section (about 24,000 px square for 150,000 bins of 16 µm).
    platform_sd
        Standard deviation of the log platform factor per gene.
    dataset_id
        Prefix of the stores, element names and coordinate systems.
    chunk_rows
        Bins per generated (and written) block of counts.
    seed
        Seed.
    overwrite
        Replace existing stores.

    Returns
    -------
    The paths of the written stores, one per section, in ``z`` order.

    See Also
    --------
    :func:`stmap.datasets.large_visium_hd`
        One capture area.
    :func:`stmap.datasets.simulate_stack`
        Small serial sections of legacy spatial transcriptomics spots.
    :func:`stmap.pp.stack_sections`
        Stacks the sections (``transforms=`` the truth's matrices).

    Examples
    --------
    Two small sections (the default is four whole capture areas):

    >>> import spatialdata as sd
    >>> import stmap as st
    >>> paths = st.datasets.large_stack("stack_stores", n_sections=2, n_bins=500, n_genes=30)
    >>> [path.name for path in paths]
    ['sample_S0.zarr', 'sample_S1.zarr']
    >>> sd.read_zarr(paths[0]).tables["square_016um"].shape
    (500, 30)
    """
    from .._core import StmapInputError

    out_dir = Path(path)
    paths = [out_dir / f"{dataset_id}_S{i}.zarr" for i in range(n_sections)]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise StmapInputError(f"{existing[0]} exists; pass overwrite=True to replace it or choose another path.")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _model(seed, n_types, n_genes, platform_sd)
    side = math.ceil(math.sqrt(n_bins))
    extent_um = 2 * _MARGIN_UM + side * bin_um
    g = _Geometry(side, n_bins, bin_um, mpp, *_z_grid((n_sections - 1) * z_step_um, extent_um))
    opts = {
        "cells_per_bin": cells_per_bin,
        "n_features": n_features,
        "feature_noise": feature_noise,
        "image": image,
        "chunk_rows": chunk_rows,
    }
    for i, p in enumerate(paths):
        mat = _rigid(seed, i, max_angle, max_shift_um, _MARGIN_UM + side * bin_um / 2, mpp)
        sdata = _section(i, seed, model, g, mat, float(i * z_step_um), {**opts, "cs": f"{dataset_id}_S{i}"})
        sdata.write(p, overwrite=overwrite)
    return paths
