"""Mapping quality: greedy placement of cells that vary within their type in space, and calibrated uncertainty.

Simulations (``st.datasets.simulate_tissue(cell_states=...)`` then ``simulate_spots``; the reference is the tissue's
cells, so each placed cell has a true spot): 800 cells of two real references, scanpy's PBMCs (10 types, 765 genes)
and the spacexr mouse cerebellum snRNA-seq nuclei (19 types, 384 genes), under 30 um spots 35 um apart (~4 cells per
spot), with three within-type programmes: ``random`` (types vary in space, cells of a type do not), ``gradient``
(each type's cells follow a linear gradient of their main within-type programme) and ``regions`` (each domain
favours one of three sub-states of every type). Plus the fully synthetic ``synth_40um`` tissue of benchmarks/mapping.py
(between-type only).

Metrics, stmap greedy vs tangram-sc (cells mode, its defaults, rna_count_based density prior, CPU) in the same run on
the same inputs:

* ``place_ring``: share of placed cells in their true spot or a neighbouring spot (one ring); Tangram's placement is
  each cell's most probable spot. ``ratio`` = stmap / Tangram; ``stmap_type_slots`` is the greedy placement before
  (per-type slots, the placement large problems still take).
* ``coverage``: share of (spot, type) pairs whose true cell-type fraction lies in stmap's 90% interval
  (``intervals=0.9``), also over pairs with a true fraction above 0 (``coverage_nz``); here on 55 um spots 60 um
  apart (2,000 cells, ~16 cells per spot, full and 30% capture).
* reliability: stmap's per-cell placement confidence in bins against the observed share of cells in their true spot.

Parameters of the greedy placement (deconvolution iterations, ring weight, confidence temperature; pseudo-count and
prior floor of the large-problem scores) were chosen on seeds 2 and 6; the reported seeds are 3, 4, 5.
Run: ``python benchmarks/mapping_quality.py [--seeds 3 4 5]``; writes ``results/mapping_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _harness import RESULTS
from mapping import _ring_acc, run_tangram, synth_40um

import stmap as st

warnings.filterwarnings("ignore")
TK = "cell_type"
BINS = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0 + 1e-9])


def references():
    root = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data, else the data setting
    cer = st.datasets.spacexr("cerebellum_snrnaseq_ref", path=root if root.exists() else None)
    return {"pbmc": st.datasets.pbmc_counts(), "cerebellum": cer}


def simulate(ref, states, seed, n=800, d=30.0, sp=35.0, rate=1.0):
    cells = st.datasets.simulate_tissue(ref, n_cells=n, cell_type_key=TK, cell_states=states, seed=seed)
    sdata = st.datasets.simulate_spots(cells, spot_diameter=d, spacing=sp, capture_rate=rate, seed=seed)
    return sdata, sdata.tables["cells"].copy()


def placement(sdata, ref, genes=None):
    t0 = time.perf_counter()
    out = st.tl.map_cells(
        sdata, ref, table_key="spots", mode="greedy", cells_per_spot="n_cells", genes=genes, copy=True
    )
    sec = time.perf_counter() - t0
    rec = out.tables["spots"].uns["stmap_mapping"]["reference"]
    spots = sdata.tables["spots"]
    truth = ref.obs["spot_id"].astype(object).to_numpy()
    pred = np.asarray(rec["spot"], dtype=object)
    st_ring = _ring_acc(pred, truth, spots)
    has = ref.obs["spot_id"].notna().to_numpy()
    exact = (pred.astype(str) == truth.astype(str))[has]
    dup = _duplicated(ref)[has]
    conf = np.asarray(rec.get("placement_confidence", np.full(ref.n_obs, np.nan)))[has]
    before = _ring_acc(_type_slots(sdata, ref, genes), truth, spots)
    t0 = time.perf_counter()
    o = run_tangram(sdata, ref, genes=genes)
    tg_sec = time.perf_counter() - t0
    best = np.asarray(o["map"].var_names)[np.asarray(o["map"].X).argmax(axis=1)]
    tg_ring = _ring_acc(best, truth, spots)
    tg_exact = (best.astype(str) == truth.astype(str))[has]
    out = {
        "stmap": st_ring,
        "tangram": tg_ring,
        "ratio": st_ring / tg_ring,
        "stmap_type_slots": before,
        "stmap_exact": float(exact.mean()),
        "tangram_exact": float(tg_exact.mean()),
        "duplicated": float(dup.mean()),
        "stmap_s": sec,
        "tangram_s": tg_sec,
    }
    return out, conf, exact


def _duplicated(ref):
    """Whether each cell's counts are identical to another cell's (simulate_tissue copies reference cells)."""
    from scipy import sparse

    X = sparse.csr_matrix(ref.X)
    keys = [hash((X.indices[a:b].tobytes(), X.data[a:b].tobytes())) for a, b in zip(X.indptr[:-1], X.indptr[1:])]
    s = pd.Series(keys)
    return s.duplicated(keep=False).to_numpy()


def _type_slots(sdata, ref, genes):
    """The greedy placement before this benchmark (per-type slots filled by the linearised gain, ._place)."""
    from stmap._core import resolve
    from stmap.tl._mapping._composition import fit_composition
    from stmap.tl._mapping._place import place_cells
    from stmap.tl._mapping._prepare import prepare_inputs
    from stmap.tl._mapping._slots import make_slots

    ctx = resolve(sdata, "spots")
    inp = prepare_inputs(
        ctx, ref, cell_type_key=TK, cells_per_spot="n_cells", genes=genes, n_markers=100, layer=None, sc_layer=None
    )
    comp = fit_composition(inp, platform_effect=False, max_iter=500, device="cpu")
    slots, cap = make_slots("greedy", comp.fractions, inp.n_given, comp.n_t, None)
    pl = place_cells(inp, comp, slots, cap, n_candidates=20, n_refine=2, verbose=False)
    spot = np.full(ref.n_obs, None, dtype=object)
    spot[pl.cells] = ctx.adata.obs_names.to_numpy()[pl.spots]
    return spot


def coverage(sdata, ref, level=0.9):
    out = st.tl.map_cells(
        sdata, ref, table_key="spots", mode="regular", cells_per_spot="n_cells", intervals=level, copy=True
    )
    sp = out.tables["spots"]
    lo = sp.obsm["stmap_cell_type_fractions_lower"].to_numpy()
    hi = sp.obsm["stmap_cell_type_fractions_upper"].to_numpy()
    truth = sdata.tables["spots"].obsm["cell_type_fractions"]
    truth = truth.rename(columns=lambda c: str(c).replace("/", "_"))[sp.obsm["stmap_cell_type_fractions"].columns]
    truth = truth.to_numpy()  # same columns as stmap's (names stored with '_' for '/')
    ok = np.isfinite(truth).all(axis=1) & np.isfinite(lo).all(axis=1)
    cov = (truth[ok] >= lo[ok] - 1e-9) & (truth[ok] <= hi[ok] + 1e-9)
    nz = truth[ok] > 0
    return {
        "coverage": float(cov.mean()),
        "coverage_nz": float(cov[nz].mean()),
        "width": float((hi - lo)[ok].mean()),
        "calibration": float(sp.uns["stmap_mapping"]["interval_calibration"]),
    }


def reliability(conf, exact):
    rows = []
    b = np.clip(np.digitize(conf, BINS) - 1, 0, len(BINS) - 2)
    for k in range(len(BINS) - 1):
        m = b == k
        if m.any():
            rows.append(
                {
                    "bin": f"[{BINS[k]:.1f}, {min(BINS[k + 1], 1.0):.1f}]",
                    "n": int(m.sum()),
                    "mean_confidence": float(conf[m].mean()),
                    "accuracy": float(exact[m].mean()),
                }
            )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--name", default="mapping_quality", help="results/<name>.json")
    ap.add_argument(
        "--no-coverage",
        action="store_true",
        help="placement and reliability only; the coverage rows are kept from results/<name>.json (regular mode)",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    refs = references()
    place_rows, cov_rows, rel = [], [], {}
    for name, ref in refs.items():
        for states in ("random", "gradient", "regions"):
            confs, exacts = [], []
            for seed in args.seeds:
                sdata, cells = simulate(ref, states, seed)
                r, conf, exact = placement(sdata, cells)
                confs.append(conf)
                exacts.append(exact)
                place_rows.append({"reference": name, "states": states, "seed": seed, **r})
                print(place_rows[-1], flush=True)
                for rate in () if args.no_coverage else (1.0, 0.3):
                    sdata2, cells2 = simulate(ref, states, seed, n=2000, d=55.0, sp=60.0, rate=rate)
                    c = coverage(sdata2, cells2)
                    cov_rows.append({"reference": name, "states": states, "seed": seed, "capture": rate, **c})
                    print(cov_rows[-1], flush=True)
            rel[f"{name}/{states}"] = reliability(np.concatenate(confs), np.concatenate(exacts))
    sdata, ref = synth_40um()
    held = [g for g in sdata.tables["spots"].var_names if "_r" in g][:12]
    train = [g for g in sdata.tables["spots"].var_names if g not in held]
    r, conf, exact = placement(sdata, ref, genes=train)
    place_rows.append({"reference": "synthetic", "states": "synth_40um (between types)", "seed": 0, **r})
    rel["synthetic/synth_40um"] = reliability(conf, exact)
    print(place_rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    if args.no_coverage and path.exists():
        cov_rows = json.loads(path.read_text()).get("coverage", [])
    _print(place_rows, cov_rows, rel)
    path.write_text(
        json.dumps(
            {"benchmark": "mapping_quality", "placement": place_rows, "coverage": cov_rows, "reliability": rel},
            indent=2,
        )
    )
    print(f"wrote {path}")


def _print(place_rows, cov_rows, rel):
    p = pd.DataFrame(place_rows)
    p["ratio"] = p["stmap"] / p["tangram"]
    p["ratio_before"] = p["stmap_type_slots"] / p["tangram"]
    print("\n== greedy placement: within one ring ==")
    print(p.to_string(index=False, float_format="%.3f"))
    cols = ["stmap", "stmap_type_slots", "tangram", "ratio", "ratio_before", "stmap_exact", "tangram_exact"]
    g = p.groupby(["reference", "states"])[cols].agg(["mean", "min"])
    print("\nmean over seeds\n" + g.to_string(float_format="%.3f"))
    c = pd.DataFrame(cov_rows)
    print("\n== 90% composition intervals: coverage of the true fractions ==")
    print(
        c.groupby(["reference", "states", "capture"])[["coverage", "coverage_nz", "width", "calibration"]]
        .mean()
        .to_string(float_format="%.3f")
    )
    print("\n== placement confidence vs accuracy (true spot) ==")
    for k, rows in rel.items():
        print(k)
        print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
