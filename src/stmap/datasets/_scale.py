"""Whole-capture-area test data, streamed to zarr: Visium HD bins, Xenium cells, a matching single-cell reference.

The objects have the layout ``spatialdata-io`` gives (element names, coordinate systems, table annotations, reader
attributes), at the sizes users bring (10^5-10^6 observations, whole-slide H&E), with a known answer: the cell types
in every bin or cell. Expression is generated chunk by chunk inside the zarr write (a dask array of sparse blocks;
the H&E is a lazy dask image), so building an input never needs two copies of it in memory.

The generative model, shared by all three functions (same ``seed`` and ``n_types``/``n_genes`` -> same cell types):
- cell-type profiles: a gamma-distributed base over genes, each type with its own block of marker genes raised 8x;
- tissue: smooth random fields (one per type, on a coarse grid interpolated to every observation) set the local
  type mixture, so types form domains and gradients, not salt and pepper;
- counts: a library size per cell (log-normal), molecules drawn gene by gene from the cell's profile (Poisson
  sampling of each cell's counts), summed over the cells of a bin; the spatial platform multiplies each gene by a
  fixed log-normal factor (``platform_sd``) that the reference does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._core._params import Interval, validate_params

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["large_visium_hd", "large_xenium", "large_reference"]

#: Truth written with every object: cells of each type per observation (``.obsm``), and the type names (``.uns``).
TRUTH_COUNTS = "truth_cell_type_counts"
TRUTH_TYPES = "truth_cell_types"
_FIELD_GRID = 12  # coarse grid of the type fields (per side)


@dataclass(frozen=True)
class _Model:
    """Cell types of the generator: profiles (types x genes, rows sum to 1), names, platform factor per gene."""

    profiles: np.ndarray
    types: list[str]
    genes: list[str]
    platform: np.ndarray


def _model(seed: int, n_types: int, n_genes: int, platform_sd: float) -> _Model:
    gen = np.random.default_rng([seed, 1])
    base = gen.gamma(0.6, 1.0, size=n_genes)
    prof = np.tile(base, (n_types, 1))
    n_mark = max(1, min(40, n_genes // (2 * n_types)))
    perm = gen.permutation(n_genes)
    for t in range(n_types):
        prof[t, perm[t * n_mark : (t + 1) * n_mark]] *= 8.0
    prof /= prof.sum(axis=1, keepdims=True)
    platform = np.exp(gen.normal(0.0, platform_sd, size=n_genes))
    return _Model(prof, [f"type_{t:02d}" for t in range(n_types)], [f"gene_{g:05d}" for g in range(n_genes)], platform)


def _mixture(seed: int, n_types: int, xy01: np.ndarray, sharpness: float = 3.0) -> np.ndarray:
    """Local type probabilities at positions in [0, 1]^2 from smooth random fields (observations x types)."""
    from scipy.ndimage import map_coordinates

    gen = np.random.default_rng([seed, 2])
    fields = gen.normal(size=(n_types, _FIELD_GRID, _FIELD_GRID))
    coords = np.clip(xy01[:, ::-1].T * (_FIELD_GRID - 1), 0, _FIELD_GRID - 1)  # (row, col)
    logits = np.stack([map_coordinates(f, coords, order=3, mode="nearest") for f in fields], axis=1)
    w = np.exp(sharpness * (logits - logits.max(axis=1, keepdims=True)))
    return w / w.sum(axis=1, keepdims=True)


def _cells_of_units(seed: int, mix: np.ndarray, n_cells: np.ndarray) -> np.ndarray:
    """Cell types of each unit's cells: cells x 2 array ``(unit, type)`` (units in order)."""
    gen = np.random.default_rng([seed, 3])
    unit = np.repeat(np.arange(mix.shape[0]), n_cells)
    cdf = np.cumsum(mix, axis=1)
    u = gen.random(unit.size)
    typ = (u[:, None] > cdf[unit]).sum(axis=1)
    return np.stack([unit, np.minimum(typ, mix.shape[1] - 1)], axis=1)


def _counts(
    gen: np.random.Generator, prof: np.ndarray, cell_type: np.ndarray, lib: np.ndarray, owner: np.ndarray, n_rows: int
) -> sparse.csr_matrix:
    """Counts of ``n_rows`` rows: each cell's molecules (Poisson of ``lib * profile``) added to row ``owner``."""
    n_genes = prof.shape[1]
    rows, cols, vals = [], [], []
    for t in np.unique(cell_type):
        sel = np.flatnonzero(cell_type == t)
        lam = lib[sel, None] * prof[t][None, :]
        c = gen.poisson(lam)
        r, g = np.nonzero(c)
        rows.append(owner[sel][r])
        cols.append(g)
        vals.append(c[r, g])
    if not rows:
        return sparse.csr_matrix((n_rows, n_genes), dtype=np.float32)
    m = sparse.coo_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_rows, n_genes),
    )
    return m.tocsr()


def _lazy_counts(seed: int, prof: np.ndarray, cells: np.ndarray, lib_mean: float, n_rows: int, chunk_rows: int) -> Any:
    """A dask array (rows x genes) of sparse CSR blocks, each generated when written."""
    import dask
    import dask.array as da

    bounds = [*range(0, n_rows, chunk_rows), n_rows]
    starts = np.searchsorted(cells[:, 0], bounds)  # cells are sorted by their unit

    def block(i: int, lo: int, hi: int, a: int, b: int) -> sparse.csr_matrix:
        gen = np.random.default_rng([seed, 4, i])
        part = cells[a:b]
        lib = np.exp(gen.normal(np.log(lib_mean), 0.3, size=part.shape[0]))
        return _counts(gen, prof, part[:, 1], lib, part[:, 0] - lo, hi - lo)

    blocks = []
    for i, lo in enumerate(range(0, n_rows, chunk_rows)):
        hi = min(lo + chunk_rows, n_rows)
        d = dask.delayed(block)(i, lo, hi, int(starts[i]), int(starts[i + 1]))
        meta = sparse.csr_matrix((0, prof.shape[1]), dtype=np.float32)
        blocks.append(da.from_delayed(d, shape=(hi - lo, prof.shape[1]), dtype=np.float32, meta=meta))
    return da.concatenate(blocks, axis=0)


def _truth(cells: np.ndarray, n_rows: int, types: list[str], index: pd.Index) -> pd.DataFrame:
    counts = np.zeros((n_rows, len(types)), dtype=np.int32)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    return pd.DataFrame(counts, index=index, columns=types)


def _he_image(seed: int, height: int, width: int, nucleus_px: float, density: float, chunk: int) -> Any:
    """A lazy H&E-like RGB image (3, y, x) uint8: pink stroma with purple nuclei; each chunk drawn when read."""
    import dask.array as da

    r = max(1, int(round(nucleus_px)))
    dy, dx = np.nonzero(np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= r)
    dy, dx = dy - r, dx - r

    def block(block_info: Any = None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        gen = np.random.default_rng([seed, 5, y0, x0])
        h, w = y1 - y0, x1 - x0
        n = gen.poisson(density * h * w)
        cy, cx = gen.integers(0, h, n), gen.integers(0, w, n)
        # a disk stamped on every centre (= binary_dilation of the centres by the disk, without its cost), in a frame
        # of r pixels so that no stamp needs clipping
        pad = np.zeros((h + 2 * r, w + 2 * r), bool)
        flat = (cy + r)[:, None] * (w + 2 * r) + (cx + r)[:, None] + (dy * (w + 2 * r) + dx)[None, :]
        pad.ravel()[flat.ravel()] = True
        nuc = pad[r : r + h, r : r + w]
        noise = gen.normal(0.0, 6.0, size=(h, w))
        stroma, purple = np.array([232.0, 182.0, 205.0]), np.array([95.0, 60.0, 140.0])
        rgb = np.where(nuc[None], purple[:, None, None], stroma[:, None, None]) + noise[None]
        return np.clip(rgb, 0, 255).astype(np.uint8)

    chunks = ((3,), *(tuple(min(chunk, n - s) for s in range(0, n, chunk)) for n in (height, width)))
    return da.map_blocks(block, dtype=np.uint8, chunks=chunks)


def _write(path: str | Path, overwrite: bool, sdata: Any) -> Path:
    out = Path(path)
    if out.exists() and not overwrite:
        from .._core import StmapInputError

        raise StmapInputError(f"{out} exists; pass overwrite=True to replace it or choose another path.")
    sdata.write(out, overwrite=overwrite)
    return out


_COMMON = {
    "n_genes": Interval(int, 2, None),
    "n_types": Interval(int, 2, None),
    "platform_sd": Interval(float, 0, None),
    "chunk_rows": Interval(int, 1, None),
    "seed": Interval(int, 0, None),
}


@validate_params(
    n_bins=Interval(int, 1, None),
    bin_um=Interval(float, 0, None, "neither"),
    mpp=Interval(float, 0, None, "neither"),
    cells_per_bin=Interval(float, 1, 3),
    **_COMMON,
)
def large_visium_hd(
    path: str | Path,
    *,
    n_bins: int = 650_000,
    n_genes: int = 2000,
    n_types: int = 12,
    bin_um: float = 8.0,
    mpp: float = 0.2738,
    cells_per_bin: float = 1.7,
    image: bool = True,
    platform_sd: float = 0.2,
    dataset_id: str = "sample",
    chunk_rows: int = 50_000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a whole Visium HD capture area (one bin size) as zarr, in ``spatialdata_io.visium_hd``'s layout.

    Bins fill a square capture area row by row (``n_bins`` of them); each holds 1-3 cells (mean ``cells_per_bin``)
    whose types follow smooth tissue domains. Elements: shapes ``'{dataset_id}_square_{bin}um'`` (squares, full-res
    pixels), table ``'square_{bin}um'`` (``obs``: ``in_tissue``, ``array_row``, ``array_col``, ``location_id``,
    ``region``; sparse counts), image ``'{dataset_id}_full_image'`` (a lazy H&E pyramid, ``image=True``), all in the
    coordinate system ``dataset_id``; ``attrs['spatialdata_io_reader'] = 'visium_hd'``. The truth:
    ``obsm['truth_cell_type_counts']`` (cells of each type per bin) and ``uns['truth_cell_types']``.

    Parameters
    ----------
    path
        Where to write the ``.zarr`` store.
    n_bins
        Number of bins (a whole 6.5 mm capture area: 650,000 bins of 8 µm, 160,000 of 16 µm).
    n_genes
        Number of genes.
    n_types
        Number of cell types.
    bin_um
        Bin side in micrometres (2, 8 or 16 for Space Ranger).
    mpp
        Micrometres per full-resolution pixel of the image and of the shapes.
    cells_per_bin
        Mean number of cells per bin, between 1 and 3.
    image
        Whether to write the H&E (its side is the capture area's in pixels: about 19,000 px for 650,000 8 µm bins).
    platform_sd
        Standard deviation of the log platform factor per gene (the reference does not have it).
    dataset_id
        Prefix of the element names and name of the coordinate system.
    chunk_rows
        Bins per generated (and written) block of counts.
    seed
        Seed; the same seed, ``n_types`` and ``n_genes`` give the cell types of :func:`large_reference`.
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    The path of the written store.

    See Also
    --------
    :func:`stmap.datasets.large_reference`
        The matching single-cell reference.
    :func:`stmap.datasets.large_xenium`
        Single cells instead of bins.
    :func:`stmap.datasets.synthetic_visium_hd`
        A small Space Ranger output folder instead of a zarr store.

    Examples
    --------
    A small capture area (the default is a whole one):

    >>> import spatialdata as sd
    >>> import stmap as st
    >>> path = st.datasets.large_visium_hd("hd.zarr", n_bins=2000, n_genes=50, image=False)
    >>> sd.read_zarr(path).tables["square_008um"].shape
    (2000, 50)
    """
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    model = _model(seed, n_types, n_genes, platform_sd)
    side = math.ceil(math.sqrt(n_bins))
    idx = np.arange(n_bins)
    row, col = idx // side, idx % side
    margin_um = 200.0
    x0_um, y0_um = margin_um + col * bin_um, margin_um + row * bin_um
    n_rows_grid = math.ceil(n_bins / side)
    mix = _mixture(seed, n_types, np.stack([col / max(side - 1, 1), row / max(n_rows_grid - 1, 1)], axis=1))
    n_cells = 1 + np.random.default_rng([seed, 6]).binomial(2, (cells_per_bin - 1) / 2, size=n_bins)
    cells = _cells_of_units(seed, mix, n_cells)
    tag = f"{int(round(bin_um)):03d}"
    region = f"{dataset_id}_square_{tag}um"
    index = pd.Index([f"s_{tag}um_{r:05d}_{c:05d}-1" for r, c in zip(row, col, strict=True)])
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n_bins, np.int64),
            "array_row": row,
            "array_col": col,
            "location_id": idx,
            "region": pd.Categorical([region] * n_bins),
        },
        index=index,
    )
    from anndata import AnnData

    prof = model.profiles * model.platform[None, :]
    prof /= prof.sum(axis=1, keepdims=True)
    X = _lazy_counts(seed, prof, cells, 60.0 * bin_um**2 / 64.0, n_bins, chunk_rows)
    table = AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    table.obsm[TRUTH_COUNTS] = _truth(cells, n_bins, model.types, index)
    table.uns[TRUTH_TYPES] = np.asarray(model.types)
    table = TableModel.parse(table, region=region, region_key="region", instance_key="location_id")
    px = bin_um / mpp
    x0, y0 = x0_um / mpp, y0_um / mpp
    squares = shapely.box(x0, y0, x0 + px, y0 + px)
    import geopandas as gpd

    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=squares, index=idx), transformations={dataset_id: Identity()})
    images = {}
    if image:
        h = int(math.ceil((2 * margin_um + n_rows_grid * bin_um) / mpp))
        w = int(math.ceil((2 * margin_um + side * bin_um) / mpp))
        arr = _he_image(seed, h, w, 3.0 / mpp, cells_per_bin / (bin_um / mpp) ** 2, 4096)
        images[f"{dataset_id}_full_image"] = Image2DModel.parse(
            arr,
            dims=("c", "y", "x"),
            scale_factors=[2, 2, 2, 2],
            transformations={dataset_id: Identity()},
            chunks=(3, 4096, 4096),
        )
    sdata = SpatialData(images=images, shapes={region: shapes}, tables={f"square_{tag}um": table})
    sdata.attrs["spatialdata_io_reader"] = "visium_hd"
    return _write(path, overwrite, sdata)


@validate_params(
    n_cells=Interval(int, 1, None),
    cell_um=Interval(float, 0, None, "neither"),
    pixel_size=Interval(float, 0, None, "neither"),
    **_COMMON,
)
def large_xenium(
    path: str | Path,
    *,
    n_cells: int = 500_000,
    n_genes: int = 300,
    n_types: int = 12,
    cell_um: float = 10.0,
    pixel_size: float = 0.2125,
    platform_sd: float = 0.2,
    chunk_rows: int = 50_000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a Xenium-like section of single cells as zarr, in ``spatialdata_io.xenium``'s circle layout.

    Cells sit on a jittered square lattice of pitch ``cell_um``; types follow the same smooth domains as
    :func:`large_visium_hd`. Elements: shapes ``'cell_circles'`` (centres and radii in µm, with a
    ``Scale(1 / pixel_size)`` into the morphology-pixel frame ``'global'``, as the reader writes them) and table
    ``'table'`` annotating them (``obs['cell_id']``, ``obs['region']``); ``attrs['spatialdata_io_reader'] =
    'xenium'``. The truth: ``obsm['truth_cell_type_counts']`` (one-hot) and ``uns['truth_cell_types']``.

    Parameters
    ----------
    path
        Where to write the ``.zarr`` store.
    n_cells
        Number of cells (a full Xenium section: 300,000-1,000,000).
    n_genes
        Panel size.
    n_types
        Number of cell types.
    cell_um
        Distance between neighbouring cell centres in micrometres.
    pixel_size
        Micrometres per morphology pixel (the frame ``'global'``).
    platform_sd
        Standard deviation of the log platform factor per gene.
    chunk_rows
        Cells per generated (and written) block of counts.
    seed
        Seed; the same seed, ``n_types`` and ``n_genes`` give the cell types of :func:`large_reference`.
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    The path of the written store.

    See Also
    --------
    :func:`stmap.datasets.large_reference`
        The matching single-cell reference.
    :func:`stmap.datasets.large_visium_hd`
        Bins instead of single cells.
    :func:`stmap.datasets.synthetic_xenium`
        A small Xenium output folder instead of a zarr store.

    Examples
    --------
    A small section (the default is a whole one):

    >>> import spatialdata as sd
    >>> import stmap as st
    >>> path = st.datasets.large_xenium("xenium.zarr", n_cells=2000, n_genes=50)
    >>> sd.read_zarr(path).tables["table"].shape
    (2000, 50)
    """
    import geopandas as gpd
    import shapely
    from anndata import AnnData
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Scale

    model = _model(seed, n_types, n_genes, platform_sd)
    side = math.ceil(math.sqrt(n_cells))
    idx = np.arange(n_cells)
    gen = np.random.default_rng([seed, 7])
    xy = (np.stack([idx % side, idx // side], axis=1) + 0.5 + gen.uniform(-0.3, 0.3, (n_cells, 2))) * cell_um
    mix = _mixture(seed, n_types, xy / (side * cell_um))
    cells = _cells_of_units(seed, mix, np.ones(n_cells, np.int64))
    index = pd.Index([f"cell{i:07d}-1" for i in idx])
    obs = pd.DataFrame({"cell_id": index.to_numpy(), "region": pd.Categorical(["cell_circles"] * n_cells)}, index=index)
    prof = model.profiles * model.platform[None, :]
    prof /= prof.sum(axis=1, keepdims=True)
    X = _lazy_counts(seed, prof, cells, 150.0, n_cells, chunk_rows)
    table = AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    table.obsm[TRUTH_COUNTS] = _truth(cells, n_cells, model.types, index)
    table.uns[TRUTH_TYPES] = np.asarray(model.types)
    table = TableModel.parse(table, region="cell_circles", region_key="region", instance_key="cell_id")
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(n_cells, 0.4 * cell_um)}, geometry=shapely.points(xy[:, 0], xy[:, 1]), index=index
    )
    circles = ShapesModel.parse(gdf, transformations={"global": Scale([1 / pixel_size] * 2, axes=("x", "y"))})
    sdata = SpatialData(shapes={"cell_circles": circles}, tables={"table": table})
    sdata.attrs["spatialdata_io_reader"] = "xenium"
    return _write(path, overwrite, sdata)


@validate_params(
    n_cells=Interval(int, 1, None),
    n_genes=Interval(int, 2, None),
    n_types=Interval(int, 2, None),
    seed=Interval(int, 0, None),
    library_size=Interval(float, 0, None, "neither"),
)
def large_reference(
    *, n_cells: int = 100_000, n_genes: int = 2000, n_types: int = 12, library_size: float = 2000.0, seed: int = 0
) -> AnnData:
    """A single-cell reference with the cell types of the large spatial data sets of the same seed.

    The cell types are those of :func:`~stmap.datasets.large_visium_hd` and :func:`~stmap.datasets.large_xenium`
    with the same ``seed``, ``n_types`` and ``n_genes``. Types are balanced; counts are Poisson draws of a
    log-normal library size times the type profile, without the spatial platform's per-gene factor.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes (the spatial object's, for matching names).
    n_types
        Number of cell types (the spatial object's).
    library_size
        Mean counts per cell.
    seed
        Seed of the shared cell types (the spatial object's).

    Returns
    -------
    AnnData with sparse counts in ``X`` and ``obs['cell_type']``.

    See Also
    --------
    :func:`stmap.datasets.large_visium_hd`
        Bins with these cell types.
    :func:`stmap.datasets.large_xenium`
        Single cells with these cell types.
    :func:`stmap.tl.map_cells`
        Maps the reference's cells onto the spatial object.

    Examples
    --------
    >>> import stmap as st
    >>> reference = st.datasets.large_reference(n_cells=1000, n_genes=50)
    >>> reference.shape, reference.obs["cell_type"].nunique()
    ((1000, 50), 12)
    """
    from anndata import AnnData

    model = _model(seed, n_types, n_genes, 0.0)
    gen = np.random.default_rng([seed, 8])
    cell_type = gen.permutation(np.arange(n_cells) % n_types)
    lib = np.exp(gen.normal(np.log(library_size), 0.3, size=n_cells))
    X = _counts(gen, model.profiles, cell_type, lib, np.arange(n_cells), n_cells)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical.from_codes(cell_type, categories=model.types)},
        index=pd.Index([f"ref{i:07d}" for i in range(n_cells)]),
    )
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
