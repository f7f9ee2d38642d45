"""Scale of the histology path: ``st.pp.histology_features`` and ``st.tl.detect_ctr`` on whole Visium HD capture areas.

Inputs: ``st.datasets.large_visium_hd(n_bins=..., image=True)`` written to zarr once per size (cached under ``--data``)
and read back lazily: 8 um bins and a lazy H&E at 0.2738 um/px whose side grows with the capture area (about 8,600 px
at 60,000 bins, 14,600 px at 200,000 and 25,000 px at 650,000; stored in 4096 px chunks). Every size runs in a fresh
Python process (``ru_maxrss`` is that process's peak; ``loaded`` the watermark after reading the inputs; the inputs
are written by their own processes, since a Linux child inherits its parent's ``ru_maxrss``), on the
threads dask and torch are given (``OMP_NUM_THREADS``; 2 on the shared benchmark machine).

Work per size:

- ``histology``: ``st.pp.histology_features`` with its defaults (handcrafted extractor, a 48 px patch of the bin's
  diameter around every bin), timed alone.
- ``detect_ctr``: a CTR model trained once on a small section (the 20,000-bin capture area, label = bins whose most
  frequent true cell type is type 0; 3 + 3 + 10 epochs) applied to all bins: preparation (genes, neighbours), batched
  network, threshold, writes. Timed alone, after the features.
- peer ``per_patch``: the implementation before tiling (patches cut lazily per batch of 256 with dask's synchronous
  scheduler, the extractor one patch at a time), on the first ``--peer-bins`` bins of the 60,000-bin section; its
  rate (bins/s) extrapolated to each size.

The growth exponent is the slope of log(time) and log(memory above the loaded inputs) against log(bins).

Usage: ``python benchmarks/scale_histology.py [--sizes 60000 200000 650000] [--peer-bins 3000]``; writes
``results/scale_histology.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
BARS = {"histology": (650_000, 15 * 60), "detect_ctr": (650_000, 5 * 60)}  # work -> (bins, seconds)
N_GENES = 500
TRAIN_BINS = 20_000


def _gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _data(size: int, data_dir: Path) -> Path:
    """Write (once, in a child process: Linux children inherit the parent's ru_maxrss) and return the store."""
    path = data_dir / f"hdimg_{size}_{N_GENES}g.zarr"
    if not path.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--child", "data", str(path), str(size)], check=True)
        print(f"  wrote {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def _write_data(path: str, size: str) -> dict:
    import stmap as st

    st.datasets.large_visium_hd(path, n_bins=int(size), n_genes=N_GENES, image=True)
    return {"path": path}


def _read(path: str):
    import spatialdata as sd

    sdata = sd.read_zarr(path)
    table_key = next(iter(sdata.tables))
    sdata.tables[table_key].X = sdata.tables[table_key].X.tocsr()
    return sdata, table_key


def _label(table) -> np.ndarray:
    truth = table.obsm["truth_cell_type_counts"]
    return (truth.to_numpy().argmax(1) == 0).astype(float)


def _train(path: str, model_path: str) -> dict:
    """Features and a CTR model on the small section; the model saved for the other sizes."""
    import stmap as st

    sdata, tk = _read(path)
    st.pp.histology_features(sdata, table_key=tk)
    sdata.tables[tk].obs["tumor"] = _label(sdata.tables[tk])
    t = time.perf_counter()
    model = st.tl.train_ctr(
        sdata, label_key="tumor", positive=1.0, table_key=tk, pretrain_epochs=3, warmup_epochs=3, epochs=10, seed=0
    )
    model.save(model_path)
    return {"train_seconds": time.perf_counter() - t, "prevalence": float(sdata.tables[tk].obs["tumor"].mean())}


def _child(path: str, model_path: str) -> dict:
    import stmap as st

    sdata, tk = _read(path)
    table = sdata.tables[tk]
    img = next(iter(sdata.images.values()))
    side = int(max(img["scale0"]["image"].shape[1:]))
    loaded = _gb()
    t = time.perf_counter()
    st.pp.histology_features(sdata, table_key=tk)
    hist_s = time.perf_counter() - t
    hist_peak = _gb()
    x = table.obsm["X_histology"]
    model = st.tl.CTRModel.load(model_path)
    y = _label(table)
    t = time.perf_counter()
    st.tl.detect_ctr(sdata, model, table_key=tk)
    ctr_s = time.perf_counter() - t
    prob = table.obs["stmap_ctr_prob"].to_numpy()
    return {
        "n_bins": int(table.n_obs),
        "image_px": side,
        "loaded_gb": loaded,
        "histology_seconds": hist_s,
        "histology_peak_gb": hist_peak,
        "histology_bins_per_s": table.n_obs / hist_s,
        "features_finite": bool(np.isfinite(x).all()),
        "detect_ctr_seconds": ctr_s,
        "detect_ctr_peak_gb": _gb(),
        "ctr_auc": st.metrics.roc_auc(y.astype(bool), prob),
    }


def _peer(path: str, n: int) -> dict:
    """The per-patch path as it was before tiling, on the first ``n`` bins: bins per second."""
    import dask

    import stmap as st
    from stmap._core import extract_patches, patch_spec, resolve
    from stmap._core._image import intensity_range, to_rgb_uint8

    sdata, tk = _read(path)
    sub = sdata.tables[tk][:n].copy()
    sdata.tables[tk] = sub
    ctx = resolve(sdata, tk)
    img = ctx.image()
    patch_um = float(np.median(ctx.diameters)) * ctx.require_um_per_unit(None, img)  # histology_features' default
    spec = patch_spec(ctx, img, patch_um, out_px=48)
    dv = intensity_range(img)
    lazy = extract_patches(img, ctx.coords, spec, fill_value=0, chunk_size=256)
    t = time.perf_counter()
    feats = []
    for s in range(0, n, 256):
        (batch,) = dask.compute(lazy[s : s + 256], scheduler="synchronous")
        rgb = to_rgb_uint8(np.asarray(batch), dv)
        feats.append(np.concatenate([st.pp.handcrafted_features(p[None]) for p in rgb]))  # one patch at a time
    seconds = time.perf_counter() - t
    ours = st.pp.histology_features(sdata, table_key=tk, copy=True).tables[tk].obsm["X_histology"]
    diff = float(np.abs(np.concatenate(feats) - ours).max())
    return {"n_bins": n, "seconds": seconds, "bins_per_s": n / seconds, "max_abs_diff_vs_tiled": diff}


def _fit(sizes: list[int], values: list[float]) -> float | None:
    ok = [(s, v) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(ok) < 2:
        return None
    return float(np.polyfit(np.log([s for s, _ in ok]), np.log([v for _, v in ok]), 1)[0])


def _run_child(args: list[str], timeout: int) -> dict:
    cmd = [sys.executable, __file__, *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout} s"}
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[60_000, 200_000, 650_000])
    p.add_argument("--peer-bins", type=int, default=3000)
    p.add_argument("--train-bins", type=int, default=TRAIN_BINS)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stmap_scale")
    p.add_argument("--timeout", type=int, default=40 * 60)
    p.add_argument("--data-only", action="store_true", help="write the inputs and the model, measure nothing")
    p.add_argument("--child", nargs="+")
    p.add_argument("--out", default="scale_histology.json", help="results file name ('' to write none)")
    args = p.parse_args()
    if args.child:
        import warnings

        warnings.filterwarnings("ignore")
        import stmap as st

        st.settings.verbose = False
        kind, *rest = args.child
        fn = {"run": _child, "train": _train, "peer": lambda a, b: _peer(a, int(b)), "data": _write_data}[kind]
        print(json.dumps(fn(*rest)))
        return 0
    args.data.mkdir(parents=True, exist_ok=True)
    model_path = args.data / f"ctr_model_{args.train_bins}_{N_GENES}g.pt"
    train_path = _data(args.train_bins, args.data)
    train = {}
    if not model_path.exists():
        train = _run_child(["--child", "train", str(train_path), str(model_path)], args.timeout)
        print(f"  trained the CTR model: {train}", flush=True)
    paths = {size: _data(size, args.data) for size in args.sizes}
    if args.data_only:
        return 0
    rows: list[dict] = []
    peer: dict = {}

    def write() -> dict:  # after every size: a run stopped early keeps what it measured
        done = [r for r in rows if "histology_seconds" in r]
        sizes = [r["size"] for r in done]
        out = {
            "rows": rows,
            "peer_per_patch": {**peer, "section": min(args.sizes)},
            "training": train,
            "exponents": {
                "histology_time": _fit(sizes, [r["histology_seconds"] for r in done]),
                "histology_memory": _fit(sizes, [r["histology_peak_gb"] - r["loaded_gb"] for r in done]),
                "detect_ctr_time": _fit(sizes, [r["detect_ctr_seconds"] for r in done]),
            },
            "bars": BARS,
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        }
        if args.out:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / args.out).write_text(json.dumps(out, indent=1))
        return out

    for size in sorted(paths, reverse=True):  # the bar size first
        row = {"size": size, **_run_child(["--child", "run", str(paths[size]), str(model_path)], args.timeout)}
        rows.append(row)
        rows.sort(key=lambda r: r["size"])
        write()
        print(json.dumps(row), flush=True)
    peer.update(_run_child(["--child", "peer", str(paths[min(args.sizes)]), str(args.peer_bins)], args.timeout))
    print(f"  peer (per patch, before tiling): {peer}", flush=True)
    out = write()
    rate = peer.get("bins_per_s")
    print(
        "\n| bins | image px | histology s | bins/s | peak GB (input) | detect_ctr s | per-patch s (extrap.) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "histology_seconds" not in r:
            print(f"| {r['size']:,} | {r.get('error', '')} |")
            continue
        extra = r["size"] / rate if rate else float("nan")
        print(
            f"| {r['size']:,} | {r['image_px']:,} | {r['histology_seconds']:.0f} | {r['histology_bins_per_s']:.0f} | "
            f"{r['detect_ctr_peak_gb']:.2f} ({r['loaded_gb']:.2f}) | {r['detect_ctr_seconds']:.1f} | {extra:.0f} | "
            f"{extra / r['histology_seconds']:.1f}x |"
        )
    print(f"exponents: {out['exponents']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
