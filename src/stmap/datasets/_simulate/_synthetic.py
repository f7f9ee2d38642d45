"""``synthetic_tissue``: genes -> tissue layout -> cells and counts -> spots -> H&E image and region labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from stmap._core._constants import Key
from stmap._core._device import rng as _rng
from stmap._core._docs import inject_docs
from stmap._core._elements import affine_matrix, make_image
from stmap._core._params import Interval, validate_params

from ._names import CELLS, HE, POSITIVE, RATE, REGIONS, SEED, SPOTS, UNS_SYNTH, seed_record
from ._spots import simulate_spots

if TYPE_CHECKING:
    from spatialdata import SpatialData

CELL_TYPES = ("tumor", "epithelial", "fibroblast", "endothelial", "T_cell", "macrophage")
TISSUE_REGIONS = ("tumor", "stroma", "immune", "epithelium")
# rows: regions, columns: CELL_TYPES
_COMPOSITION = np.array(
    [
        [0.75, 0.00, 0.08, 0.05, 0.05, 0.07],  # tumor
        [0.00, 0.05, 0.60, 0.15, 0.10, 0.10],  # stroma
        [0.00, 0.00, 0.10, 0.10, 0.60, 0.20],  # immune
        [0.00, 0.70, 0.15, 0.05, 0.05, 0.05],  # epithelium
    ]
)
_KEEP = np.array([1.0, 0.55, 1.0, 0.85])  # relative cell density per region (tumour and immune are dense)
_LIB = np.array([1.4, 1.0, 0.9, 0.8, 0.6, 1.1]) * 400.0  # mean UMIs per cell by type
# nucleus semi-axes (px at 1 um/px) and hematoxylin strength by type
_NUC = {
    "tumor": (4.8, 4.0, 1.15),
    "epithelial": (3.6, 3.0, 0.85),
    "fibroblast": (5.0, 1.6, 0.80),
    "endothelial": (4.5, 1.5, 0.75),
    "T_cell": (2.6, 2.4, 1.10),
    "macrophage": (3.6, 3.0, 0.80),
}
_COLORS_TYPES = ["#7b2d8e", "#e0a3c8", "#f4a259", "#5b8e7d", "#3a86ff", "#8d6e63"]
_COLORS_REGIONS = ["#6a1b9a", "#f48fb1", "#1e88e5", "#ffb74d"]
_H = np.array([0.65, 0.70, 0.29])  # hematoxylin optical density per RGB channel (Ruifrok & Johnston)
_E = np.array([0.10, 0.85, 0.35])  # eosin, tuned toward the pink of photographed stroma
_E = _E / np.linalg.norm(_E)
_LATTICE_UM = 10.0  # candidate cell sites every 10 um; regions thin them by _KEEP
_MARGIN_UM = 25.0


@dataclass
class _Genes:
    """Gene names, what each marks, and the expression programs: base level, type and region effects."""

    names: list[str]
    program: list[str]
    base: np.ndarray
    type_fx: np.ndarray
    reg_fx: np.ndarray


@dataclass
class _Layout:
    """The tissue on the image grid: region map and the candidate cell sites in tissue."""

    region: np.ndarray  # (npx, npx) region code, 0 off tissue
    sites: np.ndarray  # (x, y) µm
    reg_site: np.ndarray  # region code of each site
    weight: np.ndarray  # relative chance of each site to hold a cell


@validate_params(
    seed=SEED,
    n_cells=Interval(int, 10, None),
    n_genes=Interval(int, 6, None),
    mpp=POSITIVE,
    spot_diameter=POSITIVE,
    spot_spacing=POSITIVE,
    capture_rate=RATE,
    dispersion=POSITIVE,
)
@inject_docs()
def synthetic_tissue(
    seed: int | np.random.Generator | None = 0,
    *,
    n_cells: int = 1500,
    n_genes: int = 200,
    mpp: float = 1.0,
    spot_diameter: float = 40.0,
    spot_spacing: float = 50.0,
    capture_rate: float = 1.0,
    dispersion: float = 10.0,
) -> SpatialData:
    """A small, fully synthetic tissue with cells, spots, an H&E-like image and a tumour region.

    The tissue is an irregular disk divided into four regions (``tumor``, ``stroma``, ``immune`` aggregates, normal
    ``epithelium``) drawn from thresholded smooth random fields. Cells of six types (``tumor``, ``epithelial``,
    ``fibroblast``, ``endothelial``, ``T_cell``, ``macrophage``) are placed at region-dependent densities
    (tumour and immune regions are dense) with region-specific type mixtures. Counts are negative binomial
    (gamma-Poisson) from type programs (marker genes ``<type>_mNN``) times region programs (genes ``<region>_rNN``)
    over background genes (``gene_NNN``). Spots on a hexagonal grid aggregate them with :func:`simulate_spots`.
    The image is rendered from the same cells and regions by Beer-Lambert mixing of hematoxylin and eosin: dense,
    large, dark purple nuclei in the tumour; pink, fibrous, sparsely nucleated stroma; small dark lymphocyte nuclei
    in immune aggregates; glands with pale lumina in epithelium; near-white background off tissue.

    Parameters
    ----------
    {seed}
    n_cells
        Number of cells (at least 10).
    n_genes
        Number of genes (at least 6; 96 or more so that each type and region has markers).
    mpp
        Image resolution in micrometres per pixel.
    spot_diameter
        Spot diameter in micrometres. The defaults are a Visium grid (55 and 100 µm) scaled down, so that the small
        tissue holds about 100 spots with about 9 cells each.
    spot_spacing
        Distance between neighbouring spot centres in micrometres.
    capture_rate
        Passed to :func:`simulate_spots`.
    dispersion
        Negative-binomial inverse dispersion (``theta``; variance ``mu + mu^2 / theta``).

    Returns
    -------
    :class:`spatialdata.SpatialData` in ``'global'`` micrometres with

    - image ``'he'``: RGB ``uint8`` (``c, y, x``), multiscale (3 levels), pixel -> micrometre scale ``mpp``;
      about 600 x 600 px at the defaults;
    - labels ``'he_regions'``: region code per image pixel (0 off tissue, then ``1..4`` in the order of the
      categories of ``region``), same transform as ``'he'``;
    - shapes ``'spot_circles'`` + table ``'spots'``: as in :func:`simulate_spots`, plus ``obs['region']``
      (categorical: majority region of the spot's cells), ``obs['tumor']`` (bool, region is tumour) and
      ``obs['tumor_fraction']`` (share of the spot's cells in the tumour region);
    - points ``'cell_points'`` + table ``'cells'``: ``X`` and ``layers['counts']`` the counts, ``obs['cell_type']``,
      ``obs['region']``, ``obs['spot_id']``, ``obsm['spatial']``, ``var['program']`` (what each gene marks),
      ``uns['cell_type_colors']``, ``uns['region_colors']``.

    Both tables carry ``uns['stmap_synthetic_tissue']`` (seed, mpp, region codes of ``'he_regions'``).

    See Also
    --------
    :func:`stmap.datasets.simulate_spots`
        Aggregates cells into spots.
    :func:`stmap.datasets.synthetic_visium`
        The tissue written as a Space Ranger output folder.
    :doc:`/tutorials/xenium`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> sdata.tables["spots"].shape, sdata.tables["cells"].shape
    ((122, 200), (1500, 200))
    >>> sorted(sdata.tables["cells"].obs["cell_type"].unique())
    ['T_cell', 'endothelial', 'epithelial', 'fibroblast', 'macrophage', 'tumor']
    """
    n_cells, mpp = int(n_cells), float(mpp)
    gen = _rng(seed)
    genes = _synthetic_genes(gen, int(n_genes))
    layout = _layout(gen, n_cells, mpp)
    xy, cell_region = _place_cells(gen, layout, n_cells)
    cells, ctype = _cells(gen, genes, xy, cell_region, float(dispersion))
    sdata = simulate_spots(
        cells,
        spot_diameter=spot_diameter,
        spacing=spot_spacing,
        capture_rate=capture_rate,
        origin=(float(xy[:, 0].min()), float(xy[:, 1].min())),
        seed=gen,
    )
    spots, cell_tab = sdata.tables[SPOTS], sdata.tables[CELLS]
    _annotate_spots(spots, cell_tab, cell_region, layout.region, mpp)
    meta = {
        "seed": seed_record(seed),
        "mpp": mpp,
        "n_cells": n_cells,
        "n_genes": int(n_genes),
        "region_codes": {"0": "background", **{str(i + 1): r for i, r in enumerate(TISSUE_REGIONS)}},
        "image": HE,
        "labels": REGIONS,
        "units": "um",
    }
    spots.uns[UNS_SYNTH] = meta
    cell_tab.uns[UNS_SYNTH] = dict(meta)
    _add_images(sdata, gen, layout.region, xy, ctype, mpp)
    return sdata


def _field(gen: np.random.Generator, npx: int, sigma_um: float, mpp: float) -> np.ndarray:
    """Standardised smooth random field on an ``npx x npx`` image grid, made on a coarse grid and upsampled.

    Smoothing at full resolution costs ``O(sigma)`` per pixel; a grid of ``sigma / 4`` pixels gives the same field
    (to interpolation error) in milliseconds.
    """
    from scipy.ndimage import gaussian_filter, zoom

    cp = max(sigma_um / 4.0, mpp)
    g = max(int(np.ceil(npx * mpp / cp)), 2)
    f = gaussian_filter(gen.standard_normal((g, g)), sigma_um / cp, mode="reflect")
    f = zoom(f, npx / g, order=1, grid_mode=True, mode="nearest")[:npx, :npx]
    if f.shape != (npx, npx):  # rounding of the zoomed shape
        f = np.pad(f, ((0, npx - f.shape[0]), (0, npx - f.shape[1])), mode="edge")
    f -= f.mean()
    return f / (f.std() + 1e-12)


def _synthetic_genes(gen: np.random.Generator, n_genes: int) -> _Genes:
    """Marker genes per type and region, then background genes; their expression programs."""
    n_types, n_regions = len(CELL_TYPES), len(TISSUE_REGIONS)
    n_mark = max(1, min(12, n_genes // (2 * n_types)))
    n_reg = max(0, min(6, (n_genes - n_mark * n_types) // (2 * n_regions)))
    names: list[str] = []
    program: list[str] = []
    for t in CELL_TYPES:
        names += [f"{t}_m{j + 1:02d}" for j in range(n_mark)]
        program += [t] * n_mark
    for r in TISSUE_REGIONS:
        names += [f"{r}_r{j + 1:02d}" for j in range(n_reg)]
        program += [f"region:{r}"] * n_reg
    n_bg = n_genes - len(names)
    names += [f"gene_{j + 1:03d}" for j in range(n_bg)]
    program += ["background"] * n_bg
    base = np.exp(gen.normal(0.0, 0.8, size=n_genes))
    type_fx = np.ones((n_types, n_genes))
    for i in range(n_types):
        type_fx[i, i * n_mark : (i + 1) * n_mark] = np.exp(gen.uniform(2.0, 3.0, size=n_mark))
    reg_fx = np.ones((n_regions, n_genes))
    off = n_types * n_mark
    for i in range(n_regions):
        reg_fx[i, off + i * n_reg : off + (i + 1) * n_reg] = np.exp(gen.uniform(1.2, 1.8, size=n_reg))
    return _Genes(names, program, base, type_fx, reg_fx)


def _layout(gen: np.random.Generator, n_cells: int, mpp: float) -> _Layout:
    """Grow an irregular disk of tissue until its sites can hold ``n_cells`` cells."""
    radius = np.sqrt(1.5 * n_cells * _LATTICE_UM**2 / np.pi)
    for _ in range(6):
        size_um = 2 * (radius * 1.15 + _MARGIN_UM)
        npx = int(np.ceil(size_um / mpp))
        region = _region_map(gen, npx, radius, mpp)
        sites, reg_site = _sites(gen, region, mpp)
        weight = _KEEP[reg_site - 1]
        if (weight > 0).sum() >= n_cells:
            return _Layout(region=region, sites=sites, reg_site=reg_site, weight=weight)
        radius *= 1.15
    raise RuntimeError("could not place the cells")  # pragma: no cover - the loop grows the tissue until it fits


def _region_map(gen: np.random.Generator, npx: int, radius: float, mpp: float) -> np.ndarray:
    """Tissue mask and regions on the image grid: boundary, tumour, immune and gland fields, thresholded."""
    c = npx * mpp / 2.0
    yy, xx = (np.mgrid[0:npx, 0:npx] + 0.5) * mpp
    r = np.hypot(xx - c, yy - c)
    # boundary, tumour, immune and gland fields: smooth noise with their own correlation lengths
    f = np.stack([_field(gen, npx, radius / d, mpp) for d in (4.0, 3.5, 9.0, 8.0)])
    inside = (1.0 - r / radius) + 0.12 * np.clip(f[0], -2.5, 1.2) > 0  # stays inside the margin
    region = np.zeros((npx, npx), dtype=np.uint8)
    tum = inside & (f[1] > np.quantile(f[1][inside], 0.62))
    rest = inside & ~tum
    imm = rest & (f[2] > np.quantile(f[2][rest], 0.88))
    rest &= ~imm
    epi = rest & (f[3] > np.quantile(f[3][rest], 0.78))
    region[inside] = 2
    region[tum] = 1
    region[imm] = 3
    region[epi] = 4
    return region


def _sites(gen: np.random.Generator, region: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate cell sites (a jittered lattice) in tissue, and their region codes."""
    npx = region.shape[0]
    k = int(np.ceil(npx * mpp / _LATTICE_UM))
    sx, sy = np.meshgrid(np.arange(k), np.arange(k))
    sites = (np.column_stack([sx.ravel(), sy.ravel()]) + 0.5) * _LATTICE_UM
    sites += gen.uniform(-0.3, 0.3, size=sites.shape) * _LATTICE_UM
    sites = sites[np.all((sites > 0) & (sites < npx * mpp), axis=1)]
    pix = np.minimum((sites / mpp).astype(np.int64), npx - 1)
    reg_site = region[pix[:, 1], pix[:, 0]]
    ok = reg_site > 0
    return sites[ok], reg_site[ok]


def _place_cells(gen: np.random.Generator, layout: _Layout, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_cells`` distinct sites by their region's density; return positions and region indices."""
    w = layout.weight
    chosen = gen.choice(layout.sites.shape[0], size=n_cells, replace=False, p=w / w.sum())
    chosen.sort()
    return layout.sites[chosen], layout.reg_site[chosen].astype(np.int64) - 1


def _cells(
    gen: np.random.Generator, genes: _Genes, xy: np.ndarray, cell_region: np.ndarray, dispersion: float
) -> tuple[AnnData, np.ndarray]:
    """Cell types from each region's mixture; negative-binomial counts from type and region programs."""
    n_cells = int(xy.shape[0])
    cum = np.cumsum(_COMPOSITION[cell_region], axis=1)
    ctype = np.minimum((gen.random(n_cells)[:, None] > cum).sum(axis=1), len(CELL_TYPES) - 1)
    prof = genes.base[None, :] * genes.type_fx[ctype] * genes.reg_fx[cell_region]
    prof /= prof.sum(axis=1, keepdims=True)
    lib = _LIB[ctype] * np.exp(gen.normal(0.0, 0.3, size=n_cells))
    mu = prof * lib[:, None]
    lam = gen.gamma(dispersion, mu / dispersion)
    counts = sparse.csr_matrix(gen.poisson(lam).astype(np.float32))
    width = len(str(n_cells - 1))
    cells = AnnData(
        X=counts,
        obs=pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(ctype, categories=list(CELL_TYPES)),
                "region": pd.Categorical.from_codes(cell_region, categories=list(TISSUE_REGIONS)),
            },
            index=[f"cell_{i:0{width}d}" for i in range(n_cells)],
        ),
        var=pd.DataFrame({"program": pd.Categorical(genes.program)}, index=genes.names),
    )
    cells.layers[Key.layers.counts] = counts.copy()
    cells.obsm[Key.obsm.spatial] = xy
    cells.uns[Key.colors("cell_type")] = list(_COLORS_TYPES)
    cells.uns[Key.colors("region")] = list(_COLORS_REGIONS)
    return cells, ctype


def _annotate_spots(spots: AnnData, cell_tab: AnnData, cell_region: np.ndarray, region: np.ndarray, mpp: float) -> None:
    """Each spot's majority region (ties: the region at its centre), tumour flag and tumour fraction."""
    codes = cell_tab.obs["spot_id"].cat.codes.to_numpy()
    inn = codes >= 0
    rc = np.zeros((spots.n_obs, len(TISSUE_REGIONS)))
    np.add.at(rc, (codes[inn], cell_region[inn]), 1.0)
    centre_px = np.minimum((spots.obsm[Key.obsm.spatial] / mpp).astype(np.int64), region.shape[0] - 1)
    centre_reg = region[centre_px[:, 1], centre_px[:, 0]].astype(np.int64) - 1
    maj = rc.argmax(axis=1)
    tie = (rc == rc.max(axis=1, keepdims=True)).sum(axis=1) > 1
    maj[tie & (centre_reg >= 0)] = centre_reg[tie & (centre_reg >= 0)]
    spots.obs["region"] = pd.Categorical.from_codes(maj, categories=list(TISSUE_REGIONS))
    spots.obs["tumor"] = maj == 0
    spots.obs["tumor_fraction"] = rc[:, 0] / np.maximum(rc.sum(axis=1), 1.0)
    spots.uns[Key.colors("region")] = list(_COLORS_REGIONS)


def _render_he(
    gen: np.random.Generator, region_px: np.ndarray, cell_px: np.ndarray, cell_type: np.ndarray, mpp: float
) -> np.ndarray:
    """H&E-like RGB (uint8, y x c) by Beer-Lambert mixing of hematoxylin and eosin densities."""
    from scipy.ndimage import gaussian_filter

    tissue = region_px > 0
    s = 1.0 / mpp
    E = _eosin(gen, region_px, mpp)
    H = _nuclei(gen, region_px, cell_px, cell_type, mpp)
    H = gaussian_filter(H, 0.6 * s)
    E = gaussian_filter(E, 0.6 * s)
    od = H[..., None] * _H + E[..., None] * _E
    od += gen.normal(0.0, 0.015, size=od.shape) * tissue[..., None]
    od += 0.01  # glass
    rgb = 250.0 * np.power(10.0, -np.clip(od, 0.0, None))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _eosin(gen: np.random.Generator, region_px: np.ndarray, mpp: float) -> np.ndarray:
    """Eosin density: per-region background stain, stromal fibres, pale gland lumina in epithelium."""
    from scipy.ndimage import gaussian_filter

    h, w = region_px.shape
    # per-region background stain: [none, tumor, stroma, immune, epithelium]
    e_bg = np.array([0.0, 0.22, 0.32, 0.12, 0.26])[region_px]
    # stromal fibres: anisotropic noise whose orientation drifts across the tissue
    s = 1.0 / mpp
    n1, n2 = gen.standard_normal((2, h, w))
    f1 = gaussian_filter(n1, (0.7 * s, 6.0 * s))
    f2 = gaussian_filter(n2, (6.0 * s, 0.7 * s))
    mixw = 1.0 / (1.0 + np.exp(-2.0 * _field(gen, h, 25.0, mpp)))
    fib = mixw * f1 / (f1.std() + 1e-12) + (1 - mixw) * f2 / (f2.std() + 1e-12)
    fib_amp = np.array([0.0, 0.04, 0.16, 0.03, 0.06])[region_px]
    E = np.clip(e_bg + fib_amp * fib, 0.0, None)
    # glands in normal epithelium: pale lumina where a fine field peaks
    lum = gaussian_filter(gen.standard_normal((h, w)), 6.0 * s)
    lum = (lum > 2.2 * lum.std()) & (region_px == 4)
    E[lum] *= 0.15
    return E


def _nuclei(
    gen: np.random.Generator, region_px: np.ndarray, cell_px: np.ndarray, cell_type: np.ndarray, mpp: float
) -> np.ndarray:
    """Hematoxylin density: per-region background, then filled nucleus ellipses by type, some pleomorphism."""
    h, w = region_px.shape
    H = np.array([0.0, 0.20, 0.03, 0.10, 0.07])[region_px]
    for (cx, cy), t in zip(cell_px, cell_type):
        a, b, strength = _NUC[CELL_TYPES[t]]
        scale = gen.uniform(0.85, 1.2) / mpp
        a, b = a * scale, b * scale
        th = gen.uniform(0, np.pi)
        rr = int(np.ceil(max(a, b))) + 1
        x0, x1 = max(int(cx) - rr, 0), min(int(cx) + rr + 1, w)
        y0, y1 = max(int(cy) - rr, 0), min(int(cy) + rr + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        m = u * u + v * v <= 1.0
        val = strength * gen.uniform(0.85, 1.15)
        sub = H[y0:y1, x0:x1]
        sub[m] = np.maximum(sub[m], val)
    return H


def _add_images(
    sdata: SpatialData, gen: np.random.Generator, region: np.ndarray, xy: np.ndarray, ctype: np.ndarray, mpp: float
) -> None:
    """Render the H&E from the cells and regions; add it and the region labels (pixel -> µm scale ``mpp``)."""
    from spatialdata.models import Labels2DModel

    from stmap._core._elements import to_transformation

    rgb = _render_he(gen, region, xy / mpp, ctype, mpp)
    T = affine_matrix(mpp)
    sdata.images[HE] = make_image(
        rgb, transform=T, dims=("y", "x", "c"), c_coords=["r", "g", "b"], scale_factors=[2, 2], chunks=(3, 512, 512)
    )
    sdata.labels[REGIONS] = Labels2DModel.parse(
        region, dims=("y", "x"), transformations={Key.cs: to_transformation(T)}, scale_factors=[2, 2]
    )
