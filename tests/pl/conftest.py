"""Small seeded objects for the plot tests: one result of every tool, written by hand in the tools' layouts.

Nothing here trains or fits, so the figures do not move when a tool's numerics are tuned; the layouts (names from
``Key``, ``.uns`` records) are the ones the tools write (their own tests check that).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import stmap as st
from stmap._core import Key, grid_transformation, make_image, make_points, make_table

#: 17 cell types with long names (more than spatialdata-plot's 16-colour default); two of them place no cell.
LONG_TYPES = [f"cell type with a long name {i:02d}" for i in range(17)]
UNPLACED = (LONG_TYPES[3], LONG_TYPES[11])
MAPPED = ["cell type with a long name 00", "cell type with a long name 01"]
GENES = ["tumor_r01", "immune_r01"]


def _mapping(s: sd.SpatialData, rng: np.random.Generator) -> None:
    """A ``map_cells`` result: fractions over 17 types on the spots, placed cells of 15 of them."""
    spots = s.tables["spots"]
    keys = Key.mapping()
    spots.obsm[keys.fractions] = pd.DataFrame(
        rng.dirichlet(np.full(len(LONG_TYPES), 0.3), spots.n_obs), index=spots.obs_names, columns=LONG_TYPES
    )
    spots.uns[keys.mapping] = {"params": {"cell_type_key": Key.obs.cell_type}}
    cells = s.tables["cells"]
    xy = np.asarray(cells.obsm["spatial"], dtype=float)
    used = [t for t in LONG_TYPES if t not in UNPLACED]
    types = pd.Categorical(np.asarray(used)[np.arange(len(xy)) % len(used)], categories=LONG_TYPES)
    obs = pd.DataFrame({"cell_id": cells.obs_names.astype(str), Key.obs.cell_type: types})
    obs.index = [f"placed_{i:03d}" for i in range(len(xy))]
    name = Key.table.cells("spots")
    s.points[f"{name}_points"] = make_points(xy, annotations=obs.reset_index(drop=True))
    table = ad.AnnData(X=cells.X[:, :5], obs=obs, var=pd.DataFrame(index=cells.var_names[:5]))  # counts as placed
    s.tables[name] = make_table(table, region=f"{name}_points", instance_ids=np.arange(len(xy)))


def _ctr(s: sd.SpatialData) -> None:
    """A ``detect_ctr`` result: probability, call, record with a threshold and an AUC against ``tumor``."""
    spots = s.tables["spots"]
    keys = Key.ctr()
    x = np.asarray(spots.obsm["spatial"], dtype=float)[:, 0]
    prob = 1 / (1 + np.exp(-(x - np.median(x)) / 60))
    spots.obs[keys.prob] = prob
    spots.obs[keys.call] = pd.Categorical(np.where(prob > 0.5, "CTR", "non-CTR"), categories=["CTR", "non-CTR"])
    spots.obs["tumor"] = spots.obs["tumor"].astype(bool)
    spots.uns[keys.colors] = ["#d62728", "#bdbdbd"]
    spots.uns[keys.call] = {"threshold": 0.5, "metrics": {"label_key": "tumor", "roc_auc": 0.875}}


def _density(s: sd.SpatialData) -> None:
    """A ``density`` image (two groups, Gaussian bumps, integral 1) and a ``rank_densities`` ranking."""
    lo, step, (nx, ny) = (0.0, 0.0), (10.0, 10.0), (66, 66)
    gx, gy = np.meshgrid(lo[0] + step[0] * np.arange(nx), lo[1] + step[1] * np.arange(ny))
    maps = []
    for cx, cy, w in ((250, 300, 60), (450, 350, 90)):
        g = np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * w**2))
        maps.append(g / (g.sum() * step[0] * step[1]))
    key = Key.default.density
    s.images[key] = make_image(
        np.stack(maps).astype(np.float32), transform=grid_transformation(lo, step), c_coords=["tumor", "immune"]
    )
    spots = s.tables["spots"]
    spots.uns[key] = {"element": key, "groups": ["tumor", "immune"], "norm": "density"}
    classes = [f"reference class with a long name {c}" for c in "ABCDEFG"]
    ranking = pd.DataFrame(
        {
            "query": ["tumor"] * 7 + ["immune"] * 7,
            "class": classes * 2,
            "score": [1e8, 3.5, 3.1, 2.9, 2.6, 2.4, 2.2, 0.9, 0.7, 0.55, 0.5, 0.3, 0.2, 0.1],
        }
    )
    spots.uns[Key.default.density_ranking] = {"ranking": ranking, "method": "cellmap2d"}


def _gene_maps(s: sd.SpatialData) -> None:
    """A ``gene_maps`` result: smooth maps of two genes over the H&E (4 um pixels) and the run's record."""
    ext = sd.get_extent(s.images["he"], coordinate_system="global")
    x0, y0 = ext["x"][0], ext["y"][0]
    nx, ny = int((ext["x"][1] - x0) // 8), int((ext["y"][1] - y0) // 8)
    gx, gy = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny))
    maps = np.stack([6 * gx * (1 - gy) + 1, 3 * np.sin(3 * gy) ** 2]).astype(np.float32)
    s.images["he_gene_maps"] = make_image(maps, transform=grid_transformation((x0 + 4, y0 + 4), (8, 8)), c_coords=GENES)
    s.tables["spots"].uns[Key.default.gene_maps] = {
        "element": "he_gene_maps",
        "genes": GENES,
        "params": {"image_key": "he", "layer": "None", "normalize": True},
    }


def build_tissue() -> sd.SpatialData:
    """The synthetic tissue (seed 0, 300 cells) with a mapping, CTR, density, ranking and gene-map result."""
    s = st.datasets.synthetic_tissue(0, n_cells=300)
    rng = np.random.default_rng(0)
    _mapping(s, rng)
    _ctr(s)
    _density(s)
    _gene_maps(s)
    return s


def build_stack() -> sd.SpatialData:
    """Three stacked sections with a predicted layer (``impute_3d``'s default key)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulator's notes on the warp
        secs = st.datasets.simulate_stack(3, n_genes=6, seed=1, grid=8, image=False)
        s = st.pp.stack_sections(secs, transforms="warped")
    t = s.tables[Key.table.stack]
    t.layers[Key.imputed_layer()] = np.log1p(t.layers["counts"].toarray() * 2.0)
    return s


@pytest.fixture(scope="session")
def tissue() -> sd.SpatialData:
    return build_tissue()


@pytest.fixture(scope="session")
def stack() -> sd.SpatialData:
    return build_stack()


#: Each plot once: ``name -> (name of the data fixture, keyword arguments, number of panels)``.
PLOTS = {
    "spatial": ("tissue", {"color": "region", "table_key": "spots"}, 1),
    "mapping": ("tissue", {"table_key": "spots", "cell_types": MAPPED}, 3),
    "ctr": ("tissue", {"table_key": "spots"}, 3),
    "density": ("tissue", {}, 2),
    "density_ranking": ("tissue", {"top": 5}, 2),
    "gene_maps": ("tissue", {"genes": GENES, "table_key": "spots"}, 4),
    "sections_3d": ("stack", {"gene": "gene_0"}, 6),
}


@pytest.fixture(scope="session")
def names() -> SimpleNamespace:
    """The names the data above uses (test modules cannot import this conftest by name)."""
    return SimpleNamespace(long_types=LONG_TYPES, unplaced=UNPLACED, mapped=MAPPED, genes=GENES, plots=PLOTS)


@pytest.fixture(scope="session")
def plot_call(tissue, stack):
    """``plot_call(name, **kw)``: ``st.pl.<name>`` on its data of :data:`PLOTS`, with extra keyword arguments."""
    data = {"tissue": tissue, "stack": stack}

    def call(name: str, **kw):
        which, base, _ = PLOTS[name]
        return getattr(st.pl, name)(data[which], **{**base, **kw})

    return call
