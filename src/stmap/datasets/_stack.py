"""Simulated serial sections with a known smooth 3D expression field (for 3D stacking and imputation)."""

from __future__ import annotations

import numpy as np

from stmap._core._constants import Key
from stmap._core._elements import affine_matrix, make_circles, make_image, make_table, new_spatialdata
from stmap._core._errors import StmapInputError

__all__ = ["simulate_stack"]


def _rigid(angle: float, t: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, t[0]], [s, c, t[1]], [0.0, 0.0, 1.0]])


class _Field:
    """A smooth random 3D field: RGB colour (``colour``) and gene log-means (``log_mean``) at ``(x, y, z)`` in um."""

    def __init__(self, rng: np.random.Generator, n_genes: int, extent: float, depth: float, n_image_genes: int):
        self.extent, self.depth = extent, max(depth, 1.0)
        # colour: a few broad Gaussian blobs that drift with z, each with its own stain
        self.n_blobs = 4
        self.centres = rng.uniform(0.2, 0.8, (self.n_blobs, 2)) * extent
        self.drift = rng.normal(0, 0.15, (self.n_blobs, 2)) * extent
        self.widths = rng.uniform(0.15, 0.3, self.n_blobs) * extent
        self.stains = rng.uniform(-1, 1, (self.n_blobs, 3))
        # genes: image genes follow the blob intensities; position genes follow low-frequency Fourier features
        self.n_image = n_image_genes
        self.w_img = rng.normal(0, 1.0, (n_genes, self.n_blobs))
        self.n_freq = 6
        self.freq = rng.normal(0, 1.0, (self.n_freq, 3)) * np.array([2 * np.pi / extent] * 2 + [np.pi / self.depth])
        self.phase = rng.uniform(0, 2 * np.pi, self.n_freq)
        self.w_pos = rng.normal(0, 0.6, (n_genes, self.n_freq))
        self.base = rng.uniform(-0.5, 1.5, n_genes)

    def blobs(self, xyz: np.ndarray) -> np.ndarray:
        t = xyz[:, 2:3] / self.depth  # 0..1 along the stack
        out = np.empty((len(xyz), self.n_blobs))
        for b in range(self.n_blobs):
            c = self.centres[b] + t * self.drift[b]
            out[:, b] = np.exp(-((xyz[:, :2] - c) ** 2).sum(1) / (2 * self.widths[b] ** 2))
        return out

    def colour(self, xyz: np.ndarray) -> np.ndarray:
        """RGB in [0, 255]: a pink background darkened/tinted by the blobs."""
        base = np.array([230.0, 180.0, 200.0])
        tint = self.blobs(xyz) @ (self.stains * 90.0)
        return np.clip(base + tint, 0, 255)

    def log_mean(self, xyz: np.ndarray) -> np.ndarray:
        out = np.tile(self.base, (len(xyz), 1))
        img = self.blobs(xyz) @ self.w_img.T * 2.0
        pos = np.cos(xyz @ self.freq.T + self.phase) @ self.w_pos.T
        out[:, : self.n_image] += img[:, : self.n_image]
        out[:, self.n_image :] += pos[:, self.n_image :]
        return out


def _section_spots(
    rng: np.random.Generator, i: int, grid: int, spot_spacing: float, extent: float, centre: np.ndarray
) -> np.ndarray:
    """Spot centres of section ``i`` in the aligned frame: a shifted lattice inside the section's outline."""
    shift = rng.uniform(-0.5, 0.5, 2) * spot_spacing
    lat = np.stack(np.meshgrid(np.arange(grid), np.arange(grid)), -1).reshape(-1, 2) * spot_spacing + shift
    # an asymmetric outline (ellipse plus a lobe) that changes with depth, so sections can be registered
    ax = (0.42 + 0.04 * np.sin(i + rng.uniform(0, 1))) * extent
    lobe = centre + np.array([0.3, 0.28]) * extent
    inside = (((lat - centre) / np.array([ax, 0.6 * ax])) ** 2).sum(1) <= 1.0
    inside |= np.linalg.norm(lat - lobe, axis=1) <= (0.2 + 0.02 * np.cos(i)) * extent
    return lat[inside]


def simulate_stack(
    n_sections: int = 5,
    *,
    n_genes: int = 40,
    seed: int = 0,
    image: bool = True,
    grid: int = 12,
    spot_spacing: float = 200.0,
    spot_diameter: float = 100.0,
    z_step: float = 200.0,
    image_mpp: float = 8.0,
    frac_image_genes: float = 0.5,
    max_angle: float = 0.35,
    max_shift: float = 300.0,
    library_size: float = 200.0,
) -> list:
    """Serial sections of one simulated block, each shaped like a :func:`stmap.datasets.her2st` section.

    A smooth random 3D field drives both the colour of the histology and the expected expression: the first
    ``frac_image_genes`` of the genes depend on the same blobs that tint the image (so histology carries signal),
    the others only on position (low-frequency waves in ``x, y, z``). Counts are Poisson around the field's mean.
    Each section is cut at ``z = i * z_step`` and observed through its own random rigid transform (its spots and
    image live in the section's own frame), on a square lattice of spots shifted at random against the other
    sections and restricted to an elliptical tissue outline that changes with depth.

    Parameters
    ----------
    n_sections
        Number of sections (``>= 1``).
    n_genes
        Number of genes.
    seed
        Random seed (same seed, same sections).
    image
        Add an RGB image ``'<S>_he'`` per section.
    grid
        Lattice size (``grid x grid`` positions before the tissue outline).
    spot_spacing
        Centre-to-centre distance of neighbouring spots, in micrometres (legacy ST: 200).
    spot_diameter
        Spot diameter, in micrometres (legacy ST: 100).
    z_step
        Distance between sections, micrometres (the field's depth is ``(n_sections - 1) * z_step``).
    image_mpp
        Micrometres per image pixel.
    frac_image_genes
        Share of genes driven by the histology blobs.
    max_angle
        Largest rotation of a section's own frame against the aligned frame, in radians.
    max_shift
        Largest translation of a section's own frame against the aligned frame, in micrometres.
    library_size
        Mean total expected count per spot (before the field's variation).

    Returns
    -------
    A list of ``n_sections`` :class:`spatialdata.SpatialData`, section names ``'S0'``, ``'S1'``, ..., each with
    coordinate system ``'global'`` in micrometres (the section's own frame) holding

    ``'<S>_he'`` (image, with ``image=True``)
        RGB ``uint8``, the field's colour at the section's depth, pixel -> um scale ``image_mpp``.
    ``'<S>_spots'`` (shapes)
        Circles of diameter ``spot_diameter``.
    ``'<S>'`` (table)
        Raw counts (``X`` and ``layers['counts']``, CSR float32), ``layers['truth']`` the noise-free mean;
        ``obs['section']``; ``obsm['spatial']`` centres in the section's frame (um); ``obsm['spatial_true']`` and
        ``obsm['spatial_warped']`` centres in the common aligned frame (um); ``obsm['histology_true']`` the field's
        colour at the spot; ``var['image_gene']``; ``uns['stmap']``: ``mpp`` (1.0), ``spot_diameter_um``,
        ``spot_spacing_um``, ``z`` (um), ``true_transform`` (3x3, section frame -> aligned frame), ``section``,
        ``source``.

    See Also
    --------
    :func:`stmap.pp.stack_sections`
        Stacks the sections (``transforms='warped'`` uses ``obsm['spatial_warped']``).
    :func:`stmap.datasets.large_stack`
        Serial Visium HD capture areas, written as zarr.

    Examples
    --------
    >>> import stmap as st
    >>> sections = st.datasets.simulate_stack(3, n_genes=20, grid=8, seed=0)
    >>> [list(sdata.tables) for sdata in sections]
    [['S0'], ['S1'], ['S2']]
    >>> sections[0].tables["S0"].shape
    (22, 20)
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    if n_sections < 1 or n_genes < 1 or grid < 2:
        raise StmapInputError(f"Need n_sections >= 1, n_genes >= 1, grid >= 2; got {n_sections}, {n_genes}, {grid}.")
    rng = np.random.default_rng(seed)
    extent = (grid - 1) * spot_spacing
    depth = (n_sections - 1) * z_step
    n_img = int(round(frac_image_genes * n_genes))
    field = _Field(rng, n_genes, extent, depth, n_img)
    genes = [f"gene_{i}" for i in range(n_genes)]
    centre = np.array([extent / 2, extent / 2])
    out = []
    for i in range(n_sections):
        name = f"S{i}"
        z = i * z_step
        p = _section_spots(rng, i, grid, spot_spacing, extent, centre)  # aligned frame, um
        xyz = np.c_[p, np.full(len(p), z)]
        true_t = _rigid(rng.uniform(-max_angle, max_angle), tuple(rng.uniform(-max_shift, max_shift, 2)))
        inv = np.linalg.inv(true_t)
        own = p @ inv[:2, :2].T + inv[:2, 2]
        mean = np.exp(field.log_mean(xyz))
        mean *= library_size / np.exp(field.base).sum()
        counts = rng.poisson(mean).astype(np.float32)
        adata = ad.AnnData(
            X=sparse.csr_matrix(counts),
            obs=pd.DataFrame(index=[f"{name}_{j}" for j in range(len(p))]),
            var=pd.DataFrame({"image_gene": np.arange(n_genes) < n_img}, index=genes),
        )
        adata.layers[Key.layers.counts] = adata.X.copy()
        adata.layers["truth"] = mean.astype(np.float32)
        adata.obs[Key.obs.section] = pd.Categorical([name] * len(p))
        adata.obsm[Key.obsm.spatial] = own
        adata.obsm["spatial_true"] = p.copy()
        adata.obsm[Key.obsm.spatial_warped] = p.copy()
        adata.obsm["histology_true"] = field.colour(xyz)
        adata.uns[Key.uns.stmap] = {
            "mpp": 1.0,
            "spot_diameter_um": float(spot_diameter),
            "spot_spacing_um": float(spot_spacing),
            "z": float(z),
            "true_transform": true_t,
            "section": name,
            "source": f"stmap.datasets.simulate_stack(seed={seed})",
        }
        images = {}
        if image:
            lo = own.min(0) - spot_spacing
            hi = own.max(0) + spot_spacing
            w, h = (np.ceil((hi - lo) / image_mpp)).astype(int)
            yy, xx = np.mgrid[0:h, 0:w]
            pix_um = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5] * image_mpp + lo  # section frame
            al = pix_um @ true_t[:2, :2].T + true_t[:2, 2]
            rgb = field.colour(np.c_[al, np.full(len(al), z)])
            rgb += rng.normal(0, 4.0, rgb.shape)
            arr = np.clip(rgb, 0, 255).astype(np.uint8).reshape(h, w, 3)
            images[f"{name}_he"] = make_image(
                arr, dims=("y", "x", "c"), transform=affine_matrix(image_mpp, tuple(lo)), c_coords=["r", "g", "b"]
            )
        shapes = {f"{name}_spots": make_circles(own, spot_diameter / 2, index=np.arange(len(p)))}
        table = make_table(adata, region=f"{name}_spots", instance_ids=np.arange(len(p)))
        out.append(new_spatialdata(images=images, shapes=shapes, tables={name: table}, units={Key.cs: "um"}))
    return out
