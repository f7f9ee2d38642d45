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

Writes ``results/scale.json`` (merged with earlier runs: other work items, and other sizes of the same work) and
prints the table.

Peer: ``--work tangram_bags`` runs Tangram (tangram-sc) the way its maintainers advise for large data: cell types
averaged (``mode="clusters"``) and the bins split into random bags of 5,000 mapped one after another; each size also
runs ``map_cells_regular`` in the same invocation, so the ratios compare like with like.
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
    "tangram_bags": None,  # a peer: its time and peak are compared with map_cells_regular at the same size
    "tangram_clusters": None,
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
    elif work.startswith("tangram"):
        frac_df = _tangram(sdata.tables[table_key], ref, bag=TANGRAM_BAG if work == "tangram_bags" else None)
    else:
        raise ValueError(f"unknown work {work!r}")
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    table = sdata.tables[table_key]
    truth = table.obsm["truth_cell_type_counts"]
    if work.startswith("tangram"):
        frac = frac_df.reindex(columns=list(truth.columns), fill_value=0.0).to_numpy(dtype=float)
        tf = truth.to_numpy(dtype=float)
        tf = tf / np.maximum(tf.sum(1, keepdims=True), 1)
        ok = np.isfinite(frac).all(1)
        rmse = float(np.sqrt(np.mean((frac[ok] - tf[ok]) ** 2)))
        return {"seconds": seconds, "peak_gb": peak, "loaded_gb": loaded, "rmse_fractions": rmse}
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


TANGRAM_BAG = 5_000  # spots per bag


def _tangram(table, ref, bag: int | None = None):
    """Tangram at capture-area size the way its maintainers advise for data this large: the reference's cell types
    averaged (``mode="clusters"``, the low-memory mode they point to; cells mode needs a 100k x bins matrix) and, for
    ``bag``, the spatial observations split into random bags of ``bag`` mapped one after another (their answer on
    500k-cell images). Defaults otherwise: 1000 epochs, lr 0.1, ``rna_count_based`` density prior, CPU, all shared
    genes. Returns the per-bin cell-type fractions (``tangram_ct_pred`` normalised per bin)."""
    import anndata as ad
    import pandas as pd
    import tangram as tg

    rng = np.random.default_rng(0)
    order = rng.permutation(table.n_obs) if bag else np.arange(table.n_obs)
    bags = [order[i : i + bag] for i in range(0, table.n_obs, bag)] if bag else [order]
    sc = ad.AnnData(X=ref.X, obs=pd.DataFrame({"cell_type": ref.obs["cell_type"].astype(str).to_numpy()}))
    sc.obs_names, sc.var_names = ref.obs_names, ref.var_names
    parts = []
    for idx in bags:
        sp = ad.AnnData(X=table.X[np.sort(idx)], obs=pd.DataFrame(index=table.obs_names[np.sort(idx)].astype(str)))
        sp.var_names = table.var_names
        tg.pp_adatas(sc, sp, genes=None)
        amap = tg.map_cells_to_space(
            sc,
            sp,
            mode="clusters",
            cluster_label="cell_type",
            density_prior="rna_count_based",
            device="cpu",
            verbose=False,
            random_state=0,
        )
        tg.project_cell_annotations(amap, sp, annotation="cell_type")
        p = sp.obsm["tangram_ct_pred"].clip(lower=0)
        parts.append(p.div(p.sum(axis=1).replace(0, np.nan), axis=0))
        del amap, sp
    out = pd.concat(parts).reindex(table.obs_names.astype(str))
    return out


def _fit(sizes: list[int], values: list[float]) -> float | None:
    ok = [(s, v) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(ok) < 2:
        return None
    x, y = np.log([s for s, _ in ok]), np.log([v for _, v in ok])
    return float(np.polyfit(x, y, 1)[0])


def _run(child_args: list[str], timeout: int) -> dict:
    """One work item in a fresh process: its numbers, or {"error": why}."""
    cmd = [sys.executable, __file__, "--child", *child_args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout} s"}
    if res.returncode == 0:
        return json.loads(res.stdout.strip().splitlines()[-1])
    return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="map_cells_regular")
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000, 200_000])
    p.add_argument("--n-ref", type=int, default=100_000)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stmap_scale")
    p.add_argument("--timeout", type=int, default=40 * 60)
    p.add_argument("--child", nargs=4)
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json", help="results file (merged into)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.child[2], int(args.child[3]))))
        return 0
    works = [w for w in BARS if w.startswith("map_cells")] if args.work == "all" else [args.work]
    args.data.mkdir(parents=True, exist_ok=True)
    out_file = args.out
    results = json.loads(out_file.read_text()) if out_file.exists() else {"runs": {}}
    for work in works:
        kind = "xe" if work.endswith("xenium") else "hd"
        rows = []
        ref_path = _reference(args.n_ref, args.data, args.n_genes)
        for size in args.sizes:
            path = _data(kind, size, args.data, args.n_genes)
            child = [str(path), str(ref_path), str(args.n_genes)]
            row = {"size": size, **_run([work, *child], args.timeout)}
            err = row.get("error", "")
            if work.startswith("tangram"):  # the peer: stmap at the same size in the same run, for the ratios
                ours = _run(["map_cells_regular", *child], args.timeout)
                row["stmap"] = ours
                if "seconds" in row and "seconds" in ours:
                    row["time_ratio_vs_stmap"] = row["seconds"] / ours["seconds"]
                    row["peak_ratio_vs_stmap"] = row["peak_gb"] / ours["peak_gb"]
                    print(
                        f"  stmap at the same size: {ours['seconds']:.1f} s, {ours['peak_gb']:.2f} GB peak", flush=True
                    )
            rows.append(row)
            print(
                f"{work:20s} {size:>9,d}  "
                + (
                    f"{row['seconds']:8.1f} s  {row['peak_gb']:6.2f} GB peak  "
                    f"(input {row['loaded_gb']:.2f} GB)  rmse {row['rmse_fractions']:.3f}"
                    + (f"  label acc {row['label_accuracy']:.3f}" if "label_accuracy" in row else "")
                    if "seconds" in row
                    else err
                ),
                flush=True,
            )
        earlier = results["runs"].get(work, {}).get("rows", [])
        rows = sorted([r for r in earlier if r["size"] not in args.sizes] + rows, key=lambda r: r["size"])
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
            if "stmap" in row and "seconds" in row["stmap"]:
                o = row["stmap"]
                print(
                    f"|   stmap, same run | {row['size']:,} | {o['seconds']:.1f} | {o['peak_gb']:.2f} |"
                    f" Tangram/stmap time {row.get('time_ratio_vs_stmap', float('nan')):.1f}x |"
                    f" peak {row.get('peak_ratio_vs_stmap', float('nan')):.2f}x | {o['rmse_fractions']:.4f} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
