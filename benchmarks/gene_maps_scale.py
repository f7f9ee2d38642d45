"""Gene maps at scale: training time on a ~2000 x 2000 px H&E with 50 genes, and bounded inference memory.

(a) Training. ``st.datasets.synthetic_tissue(0, n_cells=15000)`` renders a ~2000 x 2000 px H&E-like image at 1 um/px
with ~1300 spots (40 um, 50 um apart) over 200 genes; ``st.tl.gene_maps`` trains on the 50 most variable ones with
its default settings (working resolution spot diameter / 16 = 2.5 um -> 2 um px after rounding to the pyramid, default
epochs, U-Net width and depth), with 1 and with 2 torch threads. Bar: < 5 min on CPU. The inverse-distance map of the
same spots on the same working grid is the reference row (the time of the method the maps are measured against).

(b) Inference memory. A lazy ``(3, S, S)`` uint8 H&E (the image of (a) tiled with :func:`dask.array.tile`, so nothing
of size S^2 is ever built) carries the spots of (a) in its top-left tile. The model of (a) (from ``train_gene_maps``) is
applied with ``gene_maps(..., model=m, lazy=True, dtype='float16')``, and the result is streamed to zarr with
``SpatialData.write``. Each size runs in a fresh subprocess; peak memory is its resident set size
(``resource.getrusage(...).ru_maxrss``) minus the RSS after the imports and model load, and, as a check, the harness's
sampled RSS peak. Bounded means flat in S, and far below the image (3 S^2 float32) and the maps (G S_w^2 float32, S_w
the working side). Reference row: the same network run eagerly on the whole working image (no tiling), at the sizes
where that fits.

Usage::

    python benchmarks/gene_maps_scale.py [--train] [--infer] [--sizes 5000 10000 20000] [--genes 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import RESULTS, Run, measure, report

warnings.filterwarnings("ignore")
SCRATCH = RESULTS / "_gene_maps_scale"  # model + inputs handed to the inference subprocesses; removed at the end
MODEL = SCRATCH / "model.pt"


def _tissue():
    import stmap as st

    return st.datasets.synthetic_tissue(0, n_cells=15000)


def _idw_grid(sdata, genes: list[str], pixel: float) -> np.ndarray:
    """Inverse-distance (8 nearest, power 2) maps of the spots' log1p counts per 10^4 on a grid of ``pixel`` um."""
    from scipy.spatial import cKDTree

    spots = sdata.tables["spots"]
    X = spots[:, genes].X
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    tot = np.asarray(spots.X.sum(1)).reshape(-1, 1)
    Y = np.log1p(X / np.maximum(tot, 1) * 1e4)
    h, w = sdata.images["he"]["scale0"]["image"].shape[1:]
    ny, nx = int(h / pixel), int(w / pixel)
    yy, xx = (np.mgrid[0:ny, 0:nx] + 0.5) * pixel
    tree = cKDTree(np.asarray(spots.obsm["spatial"]))
    out = np.empty((len(genes), ny, nx), dtype=np.float32)
    pts = np.c_[xx.ravel(), yy.ravel()]
    for s in range(0, len(pts), 1 << 18):
        d, i = tree.query(pts[s : s + (1 << 18)], k=8)
        wt = 1.0 / np.maximum(d, 1e-9) ** 2
        out.reshape(len(genes), -1)[:, s : s + (1 << 18)] = ((wt[..., None] * Y[i]).sum(1) / wt.sum(1)[:, None]).T
    return out


def _working_he(img, pixel: float) -> np.ndarray:
    """The uint8 RGB H&E at ~``pixel`` units per pixel as ``st.tl.gene_maps`` reads it: a pyramid level, / 255, block
    means over an integer factor."""
    import dask.array as da

    level = img.level_for(pixel)
    k = max(1, int(round(pixel / img.pixel_size(level))))
    arr = img.levels[level][:3].astype(np.float32) / 255.0
    if k > 1:
        h, w = (arr.shape[1] // k) * k, (arr.shape[2] // k) * k
        arr = da.coarsen(np.mean, arr[:, :h, :w], {1: k, 2: k})
    return np.asarray(arr.compute(), dtype=np.float32)


def train(n_genes: int, threads: list[int]) -> list[Run]:
    import shutil

    import spatialdata as sd
    import torch

    import stmap as st

    sdata = _tissue()
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    np.save(SCRATCH / "he.npy", np.asarray(sdata.images["he"]["scale0"]["image"].data.compute()))
    sd.SpatialData(
        shapes={"spot_circles": sdata.shapes["spot_circles"]}, tables={"spots": sdata.tables["spots"]}
    ).write(SCRATCH / "spots.zarr")
    size = sdata.images["he"]["scale0"]["image"].shape[1:]
    dataset = f"train_{size[0]}x{size[1]}px_{n_genes}genes"
    runs = []
    for t in threads:
        torch.set_num_threads(t)

        def run():
            # fit then apply, as the one call does (the apply step reads the histology features again)
            model = st.tl.train_gene_maps(sdata, genes=n_genes, table_key="spots", verbose=False)
            return st.tl.gene_maps(sdata, table_key="spots", model=model, copy=True, verbose=False), model

        def score(res, t=t):
            out, model = res
            if t == threads[0]:
                model.save(MODEL)
            u = out.tables["spots"].uns["stmap_gene_maps"]
            return {
                "spot_pearson_train": float(np.nanmean(u["spot_pearson_train"])),
                "final_loss": float(u["loss"][-1]),
                "working_px": float(np.prod(out.images["he_gene_maps"].shape[1:]) ** 0.5),
            }

        r = measure(dataset, "stmap" if t == threads[0] else f"stmap_{t}threads", run, score)
        r.note = f"bar < 300 s: {'met' if r.seconds < 300 else 'NOT met'}"
        print(r, flush=True)
        runs.append(r)
    model = st.tl.GeneMapModel.load(MODEL)
    genes, pixel = list(model.genes), float(model.pixel_size)
    runs.append(
        measure(dataset, "idw_k8", lambda: _idw_grid(sdata, genes, pixel), lambda m: {"working_px": m.shape[1]})
    )
    return runs


def _child(size: int, mode: str) -> None:
    """One inference run in this fresh process; prints one JSON line."""
    import resource

    import dask
    import dask.array as da
    import psutil
    import spatialdata as sd
    import torch

    import stmap as st
    from stmap._core import make_image

    torch.set_num_threads(int(os.environ.get("STMAP_BENCH_THREADS", "1")))
    model = st.tl.GeneMapModel.load(MODEL)
    base = sd.read_zarr(SCRATCH / "spots.zarr")
    he = np.load(SCRATCH / "he.npy")  # (3, ~2000, ~2000) uint8, 12 MB: the image of (a)
    reps = int(np.ceil(size / he.shape[1]))
    big = da.tile(da.from_array(he, chunks=(3, 1024, 1024)), (1, reps, reps))[:, :size, :size]
    big = big.rechunk((3, 2048, 2048))
    sdata = sd.SpatialData(
        images={"he": make_image(big, c_coords=["r", "g", "b"])},
        shapes={"spot_circles": base.shapes["spot_circles"]},
        tables={"spots": base.tables["spots"]},
    )
    del base
    start = psutil.Process().memory_info().rss
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:

        def run():
            if mode == "tiled":
                st.tl.gene_maps(sdata, table_key="spots", model=model, lazy=True, dtype="float16", verbose=False)
                el = sdata.images["he_gene_maps"]
                with dask.config.set(scheduler="threads", num_workers=2):
                    sd.SpatialData(images={"he_gene_maps": el}).write(Path(tmp) / "maps.zarr")
                return el.shape
            # eager reference: the whole working image in memory, one forward pass (the prior channels, if the
            # network takes them, are zeros: this row measures memory, not quality)
            from stmap._core import resolve

            x = _working_he(resolve(sdata, "spots").image("he"), model.pixel_size)
            m, net = model.net.multiple, model.net
            x = np.pad(x, ((0, 0), (0, (-x.shape[1]) % m), (0, (-x.shape[2]) % m)), constant_values=1.0)
            extra = np.zeros((net.in_channels - 3, *x.shape[1:]), dtype=np.float32)
            with torch.no_grad():
                _, genes = net(torch.as_tensor(np.concatenate([x, extra])[None]))
            return tuple(genes.shape[1:])

        r = measure(
            f"infer_{size}x{size}px",
            "stmap" if mode == "tiled" else "eager_whole_image",
            run,
            lambda shape: {"maps_c": shape[0]},
        )
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shape = sdata.images["he_gene_maps"].shape if "he_gene_maps" in sdata.images else None
    # process peak (ru_maxrss) above the RSS at the start of the run; the harness's sampled peak is peak_MB
    r.metrics["maxrss_over_start_MB"] = (ru - start) / 2**20 if ru > ru0 else float("nan")
    r.metrics["rss_start_MB"] = start / 2**20
    r.metrics["image_float32_MB"] = 3 * size * size * 4 / 2**20
    if shape is not None:
        r.metrics["maps_float32_MB"] = float(np.prod(shape)) * 4 / 2**20
    print("RESULT " + json.dumps({k: getattr(r, k) for k in ("dataset", "method", "seconds", "peak_mb", "metrics")}))


def infer(sizes: list[int], eager_max: int) -> list[Run]:
    runs = []
    for size in sizes:
        for mode in ("tiled", "eager") if size <= eager_max else ("tiled",):
            t0 = time.perf_counter()
            p = subprocess.run(
                [sys.executable, __file__, "--child", str(size), mode], capture_output=True, text=True, check=False
            )
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(p.stdout[-2000:], p.stderr[-4000:])
                name = "stmap" if mode == "tiled" else "eager_whole_image"
                seconds, note = time.perf_counter() - t0, f"failed (rc {p.returncode})"
                runs.append(Run(f"infer_{size}x{size}px", name, seconds, float("nan"), note=note))
                continue
            d = json.loads(line[len("RESULT ") :])
            runs.append(Run(d["dataset"], d["method"], d["seconds"], d["peak_mb"], d["metrics"]))
            print(runs[-1], flush=True)
    return runs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--infer", action="store_true")
    ap.add_argument("--genes", type=int, default=50)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    ap.add_argument("--eager-max", type=int, default=10000, help="largest size run eagerly (reference)")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(int(a.child[0]), a.child[1])
        return
    both = not (a.train or a.infer)
    runs = []
    if a.train or both or not MODEL.exists():
        runs += train(a.genes, a.threads)
    if a.infer or both:
        runs += infer(a.sizes, a.eager_max)
    report("gene_maps_scale", runs, ours="stmap")
    if a.infer or both:
        import shutil

        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
