"""Command-line entry point: ``stmap demo``."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["main", "run_demo", "DEMO_STEPS"]

#: A demo step: ``function(sdata, outdir) -> list of written figure paths``.
Step = Callable[["SpatialData", Path], list[Path]]
#: Demo steps, in order: ``(name, step)``. Each capability adds its own step here.
DEMO_STEPS: list[tuple[str, Step]] = []


def _step(name: str) -> Callable[[Step], Step]:
    def deco(func: Step) -> Step:
        DEMO_STEPS.append((name, func))
        return func

    return deco


@_step("look at the tissue")
def _overview(sdata: SpatialData, outdir: Path) -> list[Path]:
    from . import pl

    spots = _spot_table(sdata)
    figs = []
    for color in ("region", "tumor"):
        path = outdir / f"tissue_{color}.png"
        pl.spatial(sdata, color=color, table_key=spots, save=path)
        figs.append(path)
    return figs


@_step("spatial statistics on the spots (scanpy + squidpy)")
def _squidpy(sdata: SpatialData, outdir: Path) -> list[Path]:
    import numpy as np
    import scanpy as sc
    import squidpy as sq

    from ._core import resolve

    ctx = resolve(sdata, _spot_table(sdata))
    adata = ctx.adata
    adata.obsm["spatial"] = ctx.coords
    sq.gr.spatial_neighbors_knn(adata, n_neighs=6)
    norm = adata.copy()
    sc.pp.normalize_total(norm)
    sc.pp.log1p(norm)
    sq.gr.spatial_autocorr(
        norm, mode="moran", genes=list(norm.var_names[:50]), connectivity_key="spatial_connectivities"
    )
    adata.uns["moranI"] = norm.uns["moranI"]
    top = norm.uns["moranI"].index[0]
    col = norm[:, top].X
    adata.obs[f"log1p_{top}"] = np.asarray(col.todense() if hasattr(col, "todense") else col).ravel()
    from . import pl

    path = outdir / "top_moran_gene.png"
    pl.spatial(sdata, color=f"log1p_{top}", table_key=ctx.table_key, save=path)
    return [path]


@_step("map cells onto spots (st.tl.map_cells)")
def _mapping(sdata: SpatialData, outdir: Path) -> list[Path]:
    from . import pl, tl

    spots = _spot_table(sdata)
    ref = sdata.tables["cells"].copy()  # the synthetic cells serve as the single-cell reference
    tl.map_cells(sdata, ref, table_key=spots, mode="greedy", cells_per_spot="n_cells")
    tl.project_genes(sdata, ref, table_key=spots)
    path = outdir / "mapping.png"
    pl.mapping(sdata, table_key=spots, cell_types=["tumor", "fibroblast", "T_cell"], save=path)
    return [path]


@_step("cancer tissue regions (st.pp.histology_features, st.tl.train_ctr / detect_ctr)")
def _ctr(sdata: SpatialData, outdir: Path) -> list[Path]:
    from . import datasets, pl, pp, tl

    spots = _spot_table(sdata)
    source = datasets.synthetic_tissue(seed=101)  # another slide with its own planted tumour: the labelled source
    for s in (source, sdata):
        pp.histology_features(s, table_key=spots)
    from ._core._device import torch_threads

    with torch_threads(1):  # a model this small trains fastest on one thread (no OpenMP contention)
        model = tl.train_ctr(
            source,
            label_key="tumor",
            table_key=spots,
            pretrain_epochs=3,
            warmup_epochs=3,
            epochs=20,
            batch_size=64,
            verbose=False,
        )
    tl.detect_ctr(sdata, model, table_key=spots, label_key="tumor")
    path = outdir / "ctr.png"
    pl.ctr(sdata, table_key=spots, save=path)
    return [path]


@_step("density identity (st.tl.density, st.tl.rank_densities)")
def _density(sdata: SpatialData, outdir: Path) -> list[Path]:
    import numpy as np

    from . import pl, tl

    # half of the cells build the per-type reference maps; the other half's tumour cells are the query population
    half = np.random.default_rng(0).uniform(size=sdata.tables["cells"].n_obs) < 0.5
    tl.density(
        sdata,
        points_key="cell_points",
        groupby="cell_type",
        bandwidth=25.0,
        voxel_size=8.0,
        weights=half.astype(float),
        key_added="cell_type_density",
    )
    tl.density(
        sdata,
        points_key="cell_points",
        groupby="cell_type",
        bandwidth=25.0,
        weights=(~half).astype(float),
        groups=["tumor"],
        grid="cell_type_density",
        key_added="query_density",
    )
    tl.rank_densities(sdata, "query_density", "cell_type_density", method="cellmap2d")
    paths = [outdir / "densities.png", outdir / "density_ranking.png"]
    pl.density(sdata, key="cell_type_density", save=paths[0])
    pl.density_ranking(sdata, save=paths[1])
    return paths


@_step("gene maps on histology (st.tl.gene_maps)")
def _gene_maps(sdata: SpatialData, outdir: Path) -> list[Path]:
    from . import pl, tl
    from ._core._device import torch_threads

    spots = _spot_table(sdata)
    genes = ["tumor_r01", "immune_r01", "stroma_r01"]  # genes planted in the tumour, immune and stroma regions
    with torch_threads(1):  # a small U-Net trains fastest on one thread (no OpenMP contention)
        # a short run at a coarse working resolution (4 um px): the demo shows the pipeline, not the best maps
        tl.gene_maps(
            sdata,
            genes=genes,
            table_key=spots,
            image_key="he",
            epochs=5,
            width=8,
            depth=2,
            tile_px=64,
            scale=4.0,
            verbose=False,
        )
    path = outdir / "gene_maps.png"
    pl.gene_maps(sdata, genes=genes, table_key=spots, save=path)
    return [path]


@_step("3D imputation across serial sections (st.pp.stack_sections, st.tl.impute_3d)")
def _impute3d(sdata: SpatialData, outdir: Path) -> list[Path]:
    from . import datasets, pl, pp, tl
    from ._core._device import torch_threads

    secs = datasets.simulate_stack(4, n_genes=20, seed=0)  # its own small stack (the tissue has one section)
    stack = pp.stack_sections(secs, transforms="warped")
    with torch_threads(1):  # measure one section, impute the three others from it and their own histology
        tl.impute_3d(stack, measured=["S1"], genes=20, epochs=30, hidden=16, feature_kwargs={"patch_px": 16})
    gene = stack.tables["stack"].uns["stmap_impute3d"]["genes"][0]
    path = outdir / "impute3d.png"
    pl.sections_3d(stack, gene=gene, show_measured=True, save=path)  # measured row on the imputed scale
    return [path]


@_step("your own data: a Visium HD capture read by spatialdata-io (st.tl.map_cells on 16 µm bins)")
def _visium_hd(sdata: SpatialData, outdir: Path) -> list[Path]:
    import warnings

    from . import datasets, pl, tl

    try:
        import spatialdata_io
    except ImportError:  # optional extra: pip install "stmap[io]"
        print("[stmap demo] spatialdata-io is not installed (pip install 'stmap[io]'): Visium HD step skipped")
        return []
    # a Space Ranger Visium HD output folder (in real life: your `outs/`), read as users read theirs
    raw = datasets.synthetic_visium_hd(outdir / "visium_hd_outs", bin_sizes=(8, 16), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reader's notices about optional files
        hd = spatialdata_io.visium_hd(raw, dataset_id="sample", load_segmentations_only=False)
    ref = sdata.tables["cells"].copy()  # the synthetic tissue's cells as the single-cell reference
    # no coordinate system, image or unit argument: stmap reads them from what Space Ranger recorded
    tl.map_cells(hd, ref, table_key="square_016um")
    path = outdir / "visium_hd_mapping.png"
    pl.mapping(hd, table_key="square_016um", cell_types=["tumor", "fibroblast", "T_cell"], save=path)
    hd.write(outdir / "visium_hd.zarr")
    return [path]


def _spot_table(sdata: SpatialData) -> str:
    return "spots" if "spots" in sdata.tables else next(iter(sdata.tables))


def run_demo(outdir: str | Path = "stmap_demo", *, seed: int = 0, verbose: bool = True) -> Path:
    """Run every capability on the synthetic tissue; write ``<outdir>/demo.zarr`` and PNG figures.

    Parameters
    ----------
    outdir
        Output folder (replaced if it exists).
    seed
        Seed of the synthetic tissue and of every stochastic step.
    verbose
        Print progress.

    Returns
    -------
    Path of the written zarr store.
    """
    import matplotlib

    matplotlib.use("Agg")
    import spatialdata as sd

    from . import datasets

    out = Path(outdir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    sdata = datasets.synthetic_tissue(seed=seed)
    say(f"[stmap demo] synthetic tissue ({time.perf_counter() - t0:.1f} s)")
    figures: list[Path] = []
    for name, step in DEMO_STEPS:
        t = time.perf_counter()
        figures += step(sdata, out)
        say(f"[stmap demo] {name} ({time.perf_counter() - t:.1f} s)")
    zarr_path = out / "demo.zarr"
    sdata.write(zarr_path)
    back = sd.read_zarr(zarr_path)
    missing = [n for n in sdata.tables if n not in back.tables]
    if missing:
        raise RuntimeError(f"Round trip lost tables {missing}")
    say(f"[stmap demo] wrote {zarr_path.resolve()}")
    for f in figures:
        say(f"[stmap demo] figure {Path(f).resolve()}")
    say(f"[stmap demo] done in {time.perf_counter() - t0:.1f} s")
    return zarr_path


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stmap`` command."""
    parser = argparse.ArgumentParser(prog="stmap", description="stmap command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every capability on the synthetic tissue; write a zarr and figures")
    demo.add_argument("--out", default="stmap_demo", help="output folder (default: stmap_demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "demo":
        import warnings

        warnings.filterwarnings("ignore", message=".*zarr v3 autosharding.*")
        warnings.filterwarnings("ignore", module="zarr")
        warnings.filterwarnings("ignore", module="ome_zarr")
        run_demo(args.out, seed=args.seed, verbose=not args.quiet)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
