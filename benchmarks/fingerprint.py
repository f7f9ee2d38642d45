"""Fingerprint every number the demo writes, to show a refactor changes no result.

Runs ``stmap demo`` (all five capabilities on the embedded synthetic tissue, seeded), reads the written zarr back and
prints one line per array: its path, shape, and a rounded digest (float arrays are rounded to 5 significant digits
first, so that float32 round-off from oneDNN kernels does not count as a change). ``--compare old.json`` reports the
arrays whose digest differs.

Usage: ``python benchmarks/fingerprint.py --out results/fingerprint.json [--compare old.json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def _digest(a: np.ndarray) -> str:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        with np.errstate(all="ignore"):
            a = np.round(a.astype(np.float64), 4)
        a = np.where(np.isfinite(a), a, 0.0)
    elif a.dtype.kind in "OUS":
        a = np.asarray(a.astype(str))
    if a.dtype.kind == "U":
        return hashlib.sha1("\x00".join(a.ravel().tolist()).encode()).hexdigest()[:12]
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]


def _walk(prefix: str, obj, out: dict) -> None:
    import pandas as pd
    import scipy.sparse as sp

    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _walk(f"{prefix}/{k}", obj[k], out)
    elif isinstance(obj, pd.DataFrame):
        for c in obj.columns:
            _walk(f"{prefix}/{c}", obj[c].to_numpy(), out)
    elif sp.issparse(obj):
        _walk(prefix, obj.toarray(), out)
    elif isinstance(obj, np.ndarray | list | tuple | int | float | np.number):
        a = np.asarray(obj)
        if a.dtype.kind in "biufcOUS":
            out[prefix] = [list(a.shape), _digest(a)]


def fingerprint(zarr_path: Path) -> dict:
    """Digest of every table array and image of a written SpatialData."""
    import spatialdata as sd

    s = sd.read_zarr(zarr_path)
    out: dict = {}
    for name, t in s.tables.items():
        X = t.X.toarray() if hasattr(t.X, "toarray") else np.asarray(t.X)
        _walk(f"tables/{name}/X", X, out)
        _walk(f"tables/{name}/obs", t.obs, out)
        _walk(f"tables/{name}/var", t.var, out)
        _walk(f"tables/{name}/obsm", dict(t.obsm), out)
        _walk(f"tables/{name}/layers", dict(t.layers), out)
        _walk(f"tables/{name}/uns", {k: v for k, v in t.uns.items() if k != "spatialdata_attrs"}, out)
    for name, im in s.images.items():
        arr = im["scale0"]["image"].values if hasattr(im, "keys") and "scale0" in im else np.asarray(im.values)
        _walk(f"images/{name}", arr, out)
    for name, lab in s.labels.items():
        arr = lab["scale0"]["image"].values if hasattr(lab, "keys") and "scale0" in lab else np.asarray(lab.values)
        _walk(f"labels/{name}", arr, out)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--compare")
    args = p.parse_args()
    from stmap.cli import run_demo

    with tempfile.TemporaryDirectory() as d:
        fp = fingerprint(run_demo(Path(d) / "demo", verbose=False))
    Path(args.out).write_text(json.dumps(fp, indent=0, sort_keys=True))
    print(f"{len(fp)} arrays fingerprinted -> {args.out}")
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        changed = sorted(k for k in old if k in fp and old[k] != fp[k])
        gone = sorted(set(old) - set(fp))
        new = sorted(set(fp) - set(old))
        for k in changed:
            print("CHANGED", k, old[k], fp[k])
        for k in gone:
            print("GONE", k)
        for k in new:
            print("NEW", k)
        print(f"{len(changed)} changed, {len(gone)} gone, {len(new)} new of {len(old)}")
        return 1 if changed or gone else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
