"""Scale of the density estimate: time and peak memory of ``st.tl.density`` for 1e6..1e8 points in 2D.

The points (clustered blobs over a 10 x 10 mm section, ~1 % beyond the grid's bounds) are a lazy dask array: each
block of ``BLOCK`` points is generated from its own seed when it is read, so the input never sits in memory and the
memory used is the tool's (one block and the grid). Every (method, size) runs in a fresh Python process
(``ru_maxrss`` = peak resident memory of that process; ``base_gb`` = after imports and compiling, before the call).
``seconds`` is the tool call, which includes generating the points block by block; ``gen_s`` is one pass that only
generates them (sums the blocks), so ``seconds - gen_s`` is the estimate's own time. The growth exponents are the
slopes of log(time) and log(peak above base) against log(points).

Peer: KDEpy ``FFTKDE`` (linear binning + FFT, the same method) on the same points, which it needs in memory as one
numpy array; it runs up to ``--kdepy-max`` points. Its grid is its own (the data's range, same number of nodes);
accuracy of both: relative L2 error against the exact Gaussian sum of every point at 400 random nodes (1e6 points).

Usage::

    flock /tmp/stmap_heavy.lock .venv/bin/python benchmarks/scale_density.py --sizes 1000000 10000000 100000000

Writes ``results/scale_density.json`` and prints the table.
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
BLOCK = 1 << 22
SIDE = 10_000.0  # um
BANDWIDTH = 20.0  # um; voxel bandwidth / 3 (the default): a 1501 x 1501 grid
BOUNDS = ((0.0, SIDE), (0.0, SIDE))
BAR = (100_000_000, 60.0)  # points, seconds (issue 13)


def _block(i: int, n: int, seed: int = 0) -> np.ndarray:
    """Block ``i`` of the points: ``n`` points from 40 blobs (sd 300 um) over the section, some beyond its edges."""
    centers = np.random.default_rng(seed).uniform(0.05, 0.95, size=(40, 2)) * SIDE
    rng = np.random.default_rng([seed, i])
    return centers[rng.integers(0, 40, n)] + rng.normal(scale=300.0, size=(n, 2))


def _points(n: int):
    import dask
    import dask.array as da

    sizes = [min(BLOCK, n - s) for s in range(0, n, BLOCK)]
    parts = [da.from_delayed(dask.delayed(_block)(i, k), shape=(k, 2), dtype=np.float64) for i, k in enumerate(sizes)]
    return da.concatenate(parts, axis=0)


def _gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _child(method: str, n: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import stmap as st

    st.settings.verbose = False
    pts = _points(n)
    out: dict = {}
    if method == "stmap":
        st.tl.density(np.asarray(_block(0, 1000)), bandwidth=BANDWIDTH, bounds=BOUNDS)  # compile / load kernels
        base = _gb()
        t = time.perf_counter()
        grid = st.tl.density(pts, bandwidth=BANDWIDTH, bounds=BOUNDS, dtype="float32")
        out["seconds"] = time.perf_counter() - t
        out["peak_gb"], out["base_gb"] = _gb(), base
        t = time.perf_counter()
        for blk in pts.to_delayed().ravel():  # generation alone, one block at a time (as the tool reads them)
            blk.compute().sum()
        out["gen_s"] = time.perf_counter() - t
        nodes_axes = [np.linspace(lo, hi, s) for (lo, hi), s in zip(BOUNDS, grid.shape, strict=True)]
    else:
        from KDEpy import FFTKDE

        xy = pts.compute()
        base = _gb()
        t = time.perf_counter()
        x, y = FFTKDE(kernel="gaussian", bw=BANDWIDTH).fit(xy).evaluate(grid_points=(1501, 1501))
        out["seconds"] = time.perf_counter() - t
        out["peak_gb"], out["base_gb"] = _gb(), base
        out["gen_s"] = 0.0
        nodes_axes = [np.unique(x[:, 0]), np.unique(x[:, 1])]
        grid = y.reshape(len(nodes_axes[0]), len(nodes_axes[1]))
    out["grid_shape"] = list(grid.shape)
    if n <= 1_000_000:  # accuracy vs the exact Gaussian sum of every point (normalised by all of them)
        from stmap.kernels import kde_direct

        xy = pts.compute()
        rng = np.random.default_rng(1)
        idx = tuple(rng.integers(0, s, 400) for s in grid.shape)
        nodes = np.stack([nodes_axes[a][idx[a]] for a in range(2)], 1)
        exact = kde_direct(xy, nodes, BANDWIDTH)
        got = np.asarray(grid, dtype=np.float64)[idx]
        out["relL2_vs_exact"] = float(np.linalg.norm(got - exact) / np.linalg.norm(exact))
    return out


def _fit(sizes: list[int], values: list[float]) -> float | None:
    ok = [(s, v) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(ok) < 2:
        return None
    return float(np.polyfit(np.log([s for s, _ in ok]), np.log([v for _, v in ok]), 1)[0])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    p.add_argument("--kdepy-max", type=int, default=10_000_000)
    p.add_argument("--timeout", type=int, default=15 * 60)
    p.add_argument("--child", nargs=2)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]))))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    rows = []
    for n in args.sizes:
        for method in ("stmap", "kdepy_fftkde"):
            if method != "stmap" and n > args.kdepy_max:
                continue
            cmd = [sys.executable, __file__, "--child", method, str(n)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                row = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
                err = "" if row else (res.stderr.strip().splitlines() or ["failed"])[-1]
            except subprocess.TimeoutExpired:
                row, err = None, f"did not finish in {args.timeout} s"
            rows.append({"method": method, "points": n, **(row or {"error": err})})
            print(method, n, row or err, flush=True)
    fits = {}
    for method in ("stmap", "kdepy_fftkde"):
        done = [r for r in rows if r["method"] == method and "seconds" in r]
        sizes = [r["points"] for r in done]
        fits[method] = {
            "time_exponent": _fit(sizes, [r["seconds"] for r in done]),
            "memory_exponent": _fit(sizes, [r["peak_gb"] - r["base_gb"] for r in done]),
        }
    for r in rows:  # peer / stmap at the same size
        ours = next((x for x in rows if x["method"] == "stmap" and x["points"] == r["points"]), None)
        if ours and "seconds" in r and "seconds" in ours:
            r["time_vs_stmap"] = r["seconds"] / ours["seconds"]
            r["mem_vs_stmap"] = (r["peak_gb"] - r["base_gb"]) / max(ours["peak_gb"] - ours["base_gb"], 1e-9)
    payload = {
        "benchmark": "scale_density",
        "setup": {"side_um": SIDE, "bandwidth_um": BANDWIDTH, "block_points": BLOCK, "bar": BAR},
        "rows": rows,
        "fits": fits,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale_density.json").write_text(json.dumps(payload, indent=1))
    print("\n| method | points | time (s) | generating (s) | peak (GB) | above base (GB) | rel. L2 | time / stmap |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "seconds" not in r:
            print(f"| {r['method']} | {r['points']:.0e} | {r.get('error', '')} | | | | | |")
            continue
        acc = f"{r['relL2_vs_exact']:.1e}" if "relL2_vs_exact" in r else ""
        print(
            f"| {r['method']} | {r['points']:.0e} | {r['seconds']:.1f} | {r['gen_s']:.1f} | {r['peak_gb']:.2f} | "
            f"{r['peak_gb'] - r['base_gb']:.2f} | {acc} | {r.get('time_vs_stmap', float('nan')):.2f} |"
        )
    for method, f in fits.items():
        print(f"{method}: time exponent {f['time_exponent']}, memory exponent {f['memory_exponent']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
