"""Scale of 3D work: time and peak memory of ``st.pp.stack_sections`` + ``st.tl.impute_3d`` on serial HD sections.

Inputs come from ``st.datasets.large_stack`` (``--n-sections`` capture areas of ``size`` 16 µm bins each, streamed to
zarr once per size and cached under ``--data``; precomputed ``obsm['X_histology']``, so the 3D cost is measured, not
feature extraction). Every size runs in a fresh Python process, so its peak resident memory (``ru_maxrss``) is the
work's own, including reading the sections; the time is the two tool calls (stacking with the true per-section
matrices, then imputation of the unmeasured sections). The growth exponent is the slope of log(time) and log(memory
above the loaded input) against log(size), fitted over all sizes run (``benchmarks/scale.py``'s fit): 1 means linear.

Quality, on the unmeasured sections' bins: gene-wise Pearson of the imputation with the noise-free truth (each bin's
expected counts from its true cells, on the imputation's scale ``ln((c + 1) / sum(c + 1))``) and with the held-out
counts, next to the nearest measured bin's counts copied across sections and the mean of the 16 nearest measured
bins (aligned frame).

Usage::

    python benchmarks/scale_3d.py --sizes 10000 40000 150000
    python benchmarks/scale_3d.py --sizes 10000 40000 150000 --disc-scale 1.5 --tag hd_disc
    python benchmarks/scale_3d.py --sizes 40000 --keep-earlier  # one size per (locked) run, rows merged by tag

Writes ``results/scale_3d.json`` (merged with earlier runs under other tags) and prints the table in
``benchmarks/scale.py``'s format.
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

sys.path.insert(0, str(Path(__file__).parent))
from scale import _fit

RESULTS = Path(__file__).parent / "results"
#: work -> (bins per section the bar is set at, seconds, peak GB): 4 sections x 150,000 16 µm bins in 20 min, 12 GB
BARS = {"stack_impute_3d": (150_000, 20 * 60, 12.0)}
TABLE = "square_016um"


def _data(size: int, data_dir: Path, n_sections: int, n_genes: int) -> Path:
    """Write (once) and return the directory of the sections' stores."""
    import stmap as st

    path = data_dir / f"stack_{n_sections}x{size}_{n_genes}g"
    if not (path / "done").exists():
        t = time.perf_counter()
        st.datasets.large_stack(path, n_sections=n_sections, n_bins=size, n_genes=n_genes, overwrite=True)
        (path / "done").write_text("ok")
        print(f"  wrote {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def _knn_mean(counts, rows: np.ndarray, gi: np.ndarray, near: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """ASIGN target of the mean counts of ``near`` (rows x k positions into ``rows``), chunk by chunk."""
    import stmap as st

    out = []
    for a in range(0, len(near), chunk):
        nb = near[a : a + chunk]
        c = counts[rows[nb.ravel()]][:, gi].toarray().reshape(*nb.shape, len(gi)).mean(1)
        out.append(st.tl.asign_target(c))
    return np.concatenate(out)


def _quality(table, truth_counts: np.ndarray, profiles: np.ndarray, lib: float, measured: np.ndarray) -> dict:
    """Gene-wise Pearson on the unmeasured bins: imputation and nearest-bin copies vs truth and held-out counts."""
    from scipy.spatial import cKDTree

    import stmap as st
    from stmap import metrics

    genes = list(table.uns["stmap_impute3d"]["genes"])
    gi = table.var_names.get_indexer(genes)
    un = ~measured
    expected = (truth_counts[un] @ profiles[gi].T) * lib + 1.0
    truth = np.log(expected / expected.sum(1, keepdims=True))
    counts = table.layers["counts"]
    observed = st.tl.asign_target(counts[np.flatnonzero(un)][:, gi])
    pred = table.obsm["stmap_impute3d"].to_numpy()[un]
    xy = table.obsm["spatial_3d"][:, :2]
    _, near = cKDTree(xy[measured]).query(xy[un], k=16)
    rows = np.flatnonzero(measured)
    copy = _knn_mean(counts, rows, gi, near[:, :1])
    smooth = _knn_mean(counts, rows, gi, near)

    def r(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.nanmean(metrics.pearson_per_gene(a, b)))

    return {
        "pearson_truth": r(pred, truth),
        "pearson_observed": r(pred, observed),
        "nearest_pearson_truth": r(copy, truth),
        "nearest_pearson_observed": r(copy, observed),
        "knn16_pearson_truth": r(smooth, truth),
        "knn16_pearson_observed": r(smooth, observed),
    }


def _child(path: str, measured: list[str], kw: dict) -> dict:
    """Stack the sections and impute the unmeasured ones in this (fresh) process; return the numbers."""
    import warnings

    warnings.filterwarnings("ignore")
    import spatialdata as sd
    import torch

    import stmap as st

    torch.set_num_threads(2)
    st.settings.verbose = False
    stores = sorted(Path(path).glob("*.zarr"))
    secs = {}
    for i, p in enumerate(stores):
        s = sd.read_zarr(p)
        s.tables[TABLE].X = s.tables[TABLE].X.tocsr()
        secs[f"S{i}"] = s
    info = [s.tables[TABLE].uns["truth_stack"] for s in secs.values()]
    truth_counts = np.concatenate([s.tables[TABLE].obsm["truth_cell_type_counts"].to_numpy() for s in secs.values()])
    profiles = np.asarray(secs["S0"].tables[TABLE].varm["truth_profiles"])
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    stack = st.pp.stack_sections(secs, transforms=[i["transform"] for i in info], z=[i["z_um"] for i in info])
    t_stack = time.perf_counter() - t
    del secs
    st.tl.impute_3d(stack, measured=measured, n_scales=3, **kw)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    table = stack.tables["stack"]
    meas = table.obs["stmap_impute3d_measured"].to_numpy()
    q = _quality(table, truth_counts, profiles, float(info[0]["library_mean"]), meas)
    out = {"seconds": seconds, "stack_seconds": t_stack, "impute_seconds": seconds - t_stack}
    out |= {"peak_gb": peak, "loaded_gb": loaded, "n_spots": int(table.n_obs)}
    out["edges_per_spot"] = float(table.obsp["stmap_impute3d_overlap"].nnz / table.n_obs)
    return out | q


def _row_text(row: dict | None, err: str) -> str:
    if not row:
        return err
    return (
        f"{row['seconds']:8.1f} s (stack {row['stack_seconds']:.1f})  {row['peak_gb']:6.2f} GB peak  "
        f"(input {row['loaded_gb']:.2f} GB)  PCC truth {row['pearson_truth']:.3f} "
        f"(nearest copy {row['nearest_pearson_truth']:.3f}, mean of 16 nearest {row['knn16_pearson_truth']:.3f})"
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 150_000], help="bins per section")
    p.add_argument("--n-sections", type=int, default=4)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--measured", nargs="+", default=["S0", "S2"])
    p.add_argument("--genes", type=int, default=250, help="imputed genes")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--disc-scale", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--tag", default="stack_impute_3d")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stmap_scale")
    p.add_argument("--timeout", type=int, default=60 * 60)
    p.add_argument("--keep-earlier", action="store_true", help="keep this tag's rows of other sizes (one size per run)")
    p.add_argument("--child", nargs=3)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1].split(","), json.loads(args.child[2]))))
        return 0
    kw = {"genes": args.genes, "epochs": args.epochs, "disc_scale": args.disc_scale, "batch_size": args.batch_size}
    args.data.mkdir(parents=True, exist_ok=True)
    out_file = RESULTS / "scale_3d.json"
    results = json.loads(out_file.read_text()) if out_file.exists() else {"runs": {}}
    rows = []
    for size in args.sizes:
        path = _data(size, args.data, args.n_sections, args.n_genes)
        cmd = [sys.executable, __file__, "--child", str(path), ",".join(args.measured), json.dumps(kw)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            row = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
            err = "" if row else (res.stderr.strip().splitlines() or ["failed"])[-1]
        except subprocess.TimeoutExpired:
            row, err = None, f"did not finish in {args.timeout} s"
        rows.append({"size": size, **(row or {"error": err})})
        print(f"{args.tag:20s} {args.n_sections} x {size:>9,d}  {_row_text(row, err)}", flush=True)
    if args.keep_earlier and args.tag in results["runs"]:
        earlier = [r for r in results["runs"][args.tag]["rows"] if r["size"] not in args.sizes]
        rows = sorted(earlier + rows, key=lambda r: r["size"])
    done = [r for r in rows if "seconds" in r]
    sizes = [r["size"] for r in done]
    results["runs"][args.tag] = {
        "rows": rows,
        "time_exponent": _fit(sizes, [r["seconds"] for r in done]),
        "memory_exponent": _fit(sizes, [r["peak_gb"] - r["loaded_gb"] for r in done]),
        "bar": BARS.get("stack_impute_3d"),
        "n_sections": args.n_sections,
        "n_genes": args.n_genes,
        "params": {**kw, "measured": args.measured},
    }
    results["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    out_file.parent.mkdir(exist_ok=True)
    out_file.write_text(json.dumps(results, indent=1))
    print("\n| work | size | time (s) | peak (GB) | time exponent | memory exponent |")
    print("|---|---|---|---|---|---|")
    for work, r in results["runs"].items():
        for row in r["rows"]:
            t = f"{row['seconds']:.1f}" if "seconds" in row else row.get("error", "")
            m = f"{row['peak_gb']:.2f}" if "peak_gb" in row else ""
            te = f"{r['time_exponent']:.2f}" if r["time_exponent"] is not None else ""
            me = f"{r['memory_exponent']:.2f}" if r["memory_exponent"] is not None else ""
            print(f"| {work} | {r['n_sections']} x {row['size']:,} | {t} | {m} | {te} | {me} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
