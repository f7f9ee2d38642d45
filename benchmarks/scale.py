"""Scale: time and peak memory of stmap's tools at capture-area sizes, and how both grow with the size.

Inputs come from ``st.datasets.large_visium_hd`` / ``large_xenium`` / ``large_reference`` (streamed to zarr once per
size, the reference written to h5ad once, all cached under ``--data``). Every (work, size) runs in a fresh Python
process that reads its inputs, so the peak resident memory of that process (``ru_maxrss``) is the tool's own plus
the inputs (generating the reference in the process would set a higher watermark than most tools reach); the time
is the tool call alone. The growth exponent is the slope of log(time) and log(memory above the loaded inputs) against
log(size), fitted over all sizes run: 1 means linear in the work. ``rmse_fractions``: cell-type fractions vs the
truth; ``label_accuracy`` (single cells): transferred label vs the true type.

Usage::

    python benchmarks/scale.py --work map_cells_regular --sizes 20000 60000 200000 650000
    python benchmarks/scale.py --work all --sizes 20000 60000 200000      # every work item, three sizes

Writes ``results/scale.json`` (merged with earlier runs of other work items) and prints the table.
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
BARS = {  # work -> (size the bar is set at, seconds, peak GB); None where the issue sets no bar of that kind
    "map_cells_regular": (650_000, 15 * 60, 12.0),
    "map_cells_greedy": (650_000, 15 * 60, 12.0),
    "map_cells_xenium": (500_000, 15 * 60, 12.0),
}


def _data(kind: str, size: int, data_dir: Path, n_genes: int) -> Path:
    """Write (once) and return the zarr of ``size`` observations."""
    import stmap as st

    path = data_dir / f"{kind}_{size}_{n_genes}g.zarr"
    if not path.exists():
        t = time.perf_counter()
        if kind == "hd":
            st.datasets.large_visium_hd(path, n_bins=size, n_genes=n_genes, image=False)
        else:
            st.datasets.large_xenium(path, n_cells=size, n_genes=n_genes)
        print(f"  wrote {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def _reference(n_ref: int, data_dir: Path, n_genes: int) -> Path:
    """Write (once) and return the h5ad of the matching single-cell reference."""
    import stmap as st

    path = data_dir / f"ref_{n_ref}_{n_genes}g.h5ad"
    if not path.exists():
        st.datasets.large_reference(n_cells=n_ref, n_genes=n_genes).write_h5ad(path)
    return path


def _child(work: str, path: str, ref_path: str, n_genes: int) -> dict:
    """Run one work item on one input in this (fresh) process; return its numbers."""
    import warnings

    warnings.filterwarnings("ignore")
    import anndata as ad
    import spatialdata as sd
    import torch

    import stmap as st

    torch.set_num_threads(2)
    st.settings.verbose = False
    sdata = sd.read_zarr(path)
    table_key = next(iter(sdata.tables))
    sdata.tables[table_key].X = sdata.tables[table_key].X.tocsr()
    ref = ad.read_h5ad(ref_path)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    if work.startswith("map_cells"):
        mode = "greedy" if work.endswith("greedy") else "regular"
        # large_xenium draws cells as equal circles: say that every target is one cell (the map_cells docstring)
        n_cells = 1 if work.endswith("xenium") else None
        st.tl.map_cells(sdata, ref, table_key=table_key, mode=mode, cells_per_spot=n_cells)
    else:
        raise ValueError(f"unknown work {work!r}")
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    table = sdata.tables[table_key]
    truth = table.obsm["truth_cell_type_counts"]
    frac = table.obsm["stmap_cell_type_fractions"][list(truth.columns)].to_numpy(dtype=float)
    tf = truth.to_numpy(dtype=float)
    tf = tf / np.maximum(tf.sum(1, keepdims=True), 1)
    ok = np.isfinite(frac).all(1)
    rmse = float(np.sqrt(np.mean((frac[ok] - tf[ok]) ** 2)))
    out = {"seconds": seconds, "peak_gb": peak, "loaded_gb": loaded, "rmse_fractions": rmse}
    if "stmap_cell_type" in table.obs:  # single cells: the transferred label vs the true type
        label = table.obs["stmap_cell_type"].astype(str).to_numpy()
        out["label_accuracy"] = float((label == np.asarray(truth.columns)[tf.argmax(1)]).mean())
    out["n_placed"] = int(table.obs["stmap_n_cells"].sum())
    return out


def _fit(sizes: list[int], values: list[float]) -> float | None:
    ok = [(s, v) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(ok) < 2:
        return None
    x, y = np.log([s for s, _ in ok]), np.log([v for _, v in ok])
    return float(np.polyfit(x, y, 1)[0])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="map_cells_regular")
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000, 200_000])
    p.add_argument("--n-ref", type=int, default=100_000)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stmap_scale")
    p.add_argument("--timeout", type=int, default=40 * 60)
    p.add_argument("--child", nargs=4)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.child[2], int(args.child[3]))))
        return 0
    works = list(BARS) if args.work == "all" else [args.work]
    args.data.mkdir(parents=True, exist_ok=True)
    out_file = RESULTS / "scale.json"
    results = json.loads(out_file.read_text()) if out_file.exists() else {"runs": {}}
    for work in works:
        kind = "xe" if work.endswith("xenium") else "hd"
        rows = []
        ref_path = _reference(args.n_ref, args.data, args.n_genes)
        for size in args.sizes:
            path = _data(kind, size, args.data, args.n_genes)
            cmd = [sys.executable, __file__, "--child", work, str(path), str(ref_path), str(args.n_genes)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                row = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
                err = "" if row else (res.stderr.strip().splitlines() or ["failed"])[-1]
            except subprocess.TimeoutExpired:
                row, err = None, f"did not finish in {args.timeout} s"
            rows.append({"size": size, **(row or {"error": err})})
            print(
                f"{work:20s} {size:>9,d}  "
                + (
                    f"{row['seconds']:8.1f} s  {row['peak_gb']:6.2f} GB peak  "
                    f"(input {row['loaded_gb']:.2f} GB)  rmse {row['rmse_fractions']:.3f}"
                    + (f"  label acc {row['label_accuracy']:.3f}" if "label_accuracy" in row else "")
                    if row
                    else err
                ),
                flush=True,
            )
        done = [r for r in rows if "seconds" in r]
        sizes = [r["size"] for r in done]
        results["runs"][work] = {
            "rows": rows,
            "time_exponent": _fit(sizes, [r["seconds"] for r in done]),
            "memory_exponent": _fit(sizes, [r["peak_gb"] - r["loaded_gb"] for r in done]),
            "bar": BARS.get(work),
            "n_ref": args.n_ref,
            "n_genes": args.n_genes,
        }
    results["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    out_file.parent.mkdir(exist_ok=True)
    out_file.write_text(json.dumps(results, indent=1))
    print("\n| work | size | time (s) | peak (GB) | time exponent | memory exponent | rmse |")
    print("|---|---|---|---|---|---|---|")
    for work, r in results["runs"].items():
        for row in r["rows"]:
            t = f"{row['seconds']:.1f}" if "seconds" in row else row.get("error", "")
            m = f"{row['peak_gb']:.2f}" if "peak_gb" in row else ""
            te = f"{r['time_exponent']:.2f}" if r["time_exponent"] is not None else ""
            me = f"{r['memory_exponent']:.2f}" if r["memory_exponent"] is not None else ""
            e = f"{row['rmse_fractions']:.4f}" if "rmse_fractions" in row else ""
            print(f"| {work} | {row['size']:,} | {t} | {m} | {te} | {me} | {e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
