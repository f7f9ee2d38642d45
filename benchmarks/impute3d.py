"""3D imputation on HER2ST patient C: measure one serial section, impute the others (ASIGN setting).

Sections C1..C6 (C2..C6 with H&E; C1 has none) are placed in one frame with the registered ("warped") spot
coordinates shipped with the data (C1's full-resolution pixels x C1's micrometres per pixel), z = section index x
``--z-step`` um. Target: the top ``--genes`` genes by mean count over all sections, normalised per spot as
``ln((c + 1) / sum(c + 1))`` (the ASIGN target). One section is measured; metrics are computed on the spots of the
other sections only: gene-wise Pearson and Spearman (per gene across all unmeasured spots), spot-wise Pearson (per spot
across genes, as ASIGN reports) and MSE.

Methods in the same run: ``stmap`` (:func:`stmap.tl.impute_3d`), the nearest registered spot of the measured section
(copy), inverse-distance 6-NN interpolation in 3D, a histology-only ridge regressor (multi-scale handcrafted features
-> expression, trained on the measured section; C1, without H&E, gets the measured mean), and ablations of stmap
(graph with similarity + spatial edges too, overlap + spatial, similarity only, no label propagation, no
histology), on the first measured section; and ``stmap_public_api``: the same model through the public path
(``st.pp.stack_sections`` -> ``st.tl.impute_3d`` computing the multi-scale features itself), on the first measured
section, scored on the same spots (its time includes stacking and feature extraction).
A second ridge standardises features within each section (removes per-slide stain offsets; a stronger peer).
stmap trains with one torch thread; its time includes building the graph.

Leave one section out (``--held-out``, default C2..C6 in turn; issue 16): every other section measured (C1 too,
without H&E), the held-out one imputed and scored; the held-out section's counts are zeroed in the table stmap
reads. Baselines on the same spots: the nearest measured spot in 3D (copy), 6-NN inverse-distance in 3D and the
per-section-standardised histology ridge. ``stmap`` runs with the tool's defaults. ``stmap_selected`` picks the
graph by validation inside the measured sections only, never looking at the held-out one: among ``--candidates``
(edge-type sets; overlaps between adjacent sections only, ``layers_apart=1``), the one with the best gene-wise
Pearson when a measured H&E section next to the held-out one is hidden too and imputed (the held-out section stays
unmeasured, its counts zeroed); the chosen setting is then trained on every measured section and scored once on the
held-out one. The ablations of the single-measured protocol (``stmap_full_graph`` ...) are scored on the test
sections: they describe, they do not choose defaults.

Histology features are cached under ``--cache`` (default ``~/.cache/stmap/impute3d``).

Usage::

    python benchmarks/impute3d.py [--measured C4 C3 C5] [--held-out C2 C3 C4 C5 C6] [--epochs 200] [--no-ablations]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import measure, report

import stmap as st
from stmap import metrics

warnings.filterwarnings("ignore")

SECTIONS = ("C1", "C2", "C3", "C4", "C5", "C6")
#: spot patch ~224 px at ~0.69 um/px (ASIGN's spot level); x2.3 / x4.6 ~ its 512 / 1024 px region / global levels
PATCH_UM = 155.0
SCALES = (1.0, 2.3, 4.6)


def load_patient_c(path=None, n_genes: int = 250, cache: Path | None = None, features: bool = True) -> dict:
    """Arrays of patient C: xyz (um), section codes, counts and ASIGN targets of the top genes, features."""
    import scipy.sparse as sp

    sds = {s: st.datasets.her2st(s, path=path) for s in SECTIONS}
    mpp0 = float(sds["C1"].tables["C1"].uns["stmap"]["mpp"])
    genes = None
    for s in SECTIONS:
        v = sds[s].tables[s].var_names
        genes = v if genes is None else genes.intersection(v)
    xyz, codes, counts, feats, names = [], [], [], [], []
    for k, s in enumerate(SECTIONS):
        ad = sds[s].tables[s]
        w = np.asarray(ad.obsm["spatial_warped"], dtype=float)
        keep = np.isfinite(w).all(1)
        xyz.append(np.c_[w[keep] * mpp0, np.full(keep.sum(), float(k))])
        codes.append(np.full(keep.sum(), k))
        X = ad[:, genes].X
        counts.append((X.toarray() if sp.issparse(X) else np.asarray(X))[keep])
        names.append(ad.obs_names[keep])
        if features:
            feats.append(_features(sds[s], s, cache)[keep])
    counts = np.concatenate(counts).astype(np.float64)
    top = np.argsort(-counts.mean(0), kind="stable")[:n_genes]
    c = counts[:, top] + 1.0
    Y = np.log(c / c.sum(1, keepdims=True))
    return {
        "xyz": np.concatenate(xyz),
        "codes": np.concatenate(codes),
        "counts": counts[:, top],
        "Y": Y,
        "genes": list(genes[top]),
        "features": _pad(feats) if features else None,
        "sdatas": sds,
        "obs_names": [(s, n) for s, nn in zip(SECTIONS, names) for n in nn],
    }


def _pad(feats: list[np.ndarray]) -> np.ndarray:
    d = max(f.shape[1] for f in feats)
    return np.concatenate([f if f.shape[1] == d else np.full((len(f), d), np.nan, np.float32) for f in feats])


def _features(sdata, s: str, cache: Path | None) -> np.ndarray:
    """Handcrafted features at three scales; NaN rows for a section without an image (C1)."""
    n = sdata.tables[s].n_obs
    if f"{s}_he" not in sdata.images:
        return np.full((n, 0), np.nan, np.float32)
    f = None if cache is None else cache / f"{s}_{PATCH_UM:g}_{'_'.join(f'{x:g}' for x in SCALES)}.npy"
    if f is not None and f.exists():
        return np.load(f)
    out = st.pp.histology_features(sdata, table_key=s, patch_um=PATCH_UM, scales=SCALES, copy=True)
    X = np.asarray(out.tables[s].obsm["X_histology"], dtype=np.float32)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, X)
    return X


def stack_features(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) features with zeros where a section has no image, and the has-image mask."""
    parts = data["features"]
    has = np.isfinite(parts).all(1)
    return np.where(has[:, None], parts, 0.0).astype(np.float32), has


# ---------------------------------------------------------------- baselines (arrays in, predictions out)


def nearest_copy3d(xyz, Y, meas):
    """The nearest measured spot in 3D (several measured sections: the adjacent section's spot on top)."""
    from scipy.spatial import cKDTree

    _, i = cKDTree(xyz[meas]).query(xyz[~meas], k=1)
    return Y[meas][i]


def nearest_copy(xyz, Y, meas):
    from scipy.spatial import cKDTree

    _, i = cKDTree(xyz[meas, :2]).query(xyz[~meas, :2], k=1)
    return Y[meas][i]


def idw3d(xyz, Y, meas, k: int = 6, power: float = 2.0):
    from scipy.spatial import cKDTree

    d, i = cKDTree(xyz[meas]).query(xyz[~meas], k=k)
    w = 1.0 / np.maximum(d, 1e-9) ** power
    return (w[..., None] * Y[meas][i]).sum(1) / w.sum(1, keepdims=True)


def per_section_standardize(F, has, codes):
    """Centre/scale features within each section (removes per-slide stain offsets)."""
    out = np.zeros_like(F)
    for c in np.unique(codes):
        m = has & (codes == c)
        if m.sum() > 1:
            out[m] = (F[m] - F[m].mean(0)) / np.maximum(F[m].std(0), 1e-8)
    return out


def histology_ridge(F, has, Y, meas):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = meas & has
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13))).fit(F[train], Y[train])
    pred = np.repeat(Y[meas].mean(0, keepdims=True), (~meas).sum(), 0)
    test_has = has[~meas]
    if test_has.any():
        pred[test_has] = model.predict(F[~meas][test_has])
    return pred


def _as_table(xyz, codes, counts, genes, features, meas):
    """The arrays as a stacked table (what :func:`stmap.pp.stack_sections` makes): sections, positions, counts."""
    import anndata as ad
    import pandas as pd

    sections = pd.Categorical.from_codes(codes, categories=[f"L{i}" for i in range(int(codes.max()) + 1)])
    obs = pd.DataFrame({"section": sections, "measured": meas, "spot_radius_um": 50.0})
    obs.index = obs.index.astype(str)
    t = ad.AnnData(X=np.asarray(counts, dtype=np.float64), obs=obs, var=pd.DataFrame(index=list(genes)))
    t.obsm["spatial_3d"] = np.asarray(xyz, dtype=float)
    if features is not None:
        t.obsm["X_histology"] = np.asarray(features)
    return t


def run_stmap(*, xyz, codes, counts, genes, features, meas, epochs=None, seed=0, histology=True, n_scales=3, **kw):
    """stmap's imputation, :func:`stmap.tl.impute_3d` on the arrays as a table (features: NaN rows without an image).

    Its time includes building the graph.
    """
    import torch

    torch.set_num_threads(1)
    if epochs is not None:
        kw["epochs"] = epochs
    counts = np.where(meas[:, None], counts, 0.0)  # the unmeasured spots' counts are never shown
    t = _as_table(xyz, codes, counts, genes, features if histology else None, meas)
    st.tl.impute_3d(
        t, genes=list(genes), features_key="X_histology" if histology else None, n_scales=n_scales, seed=seed, **kw
    )
    return t.obsm["stmap_impute3d"].to_numpy(dtype=np.float64)[~meas]


def run_public(*, path, sections_measured, genes, obs_names, meas, epochs=None, seed=0):
    """The public path end to end: ``stack_sections(transforms='warped')`` -> ``impute_3d`` computing the features.

    Scored on the same spots and genes as the array-level runs (the stack also holds the few spots without a
    registered position, placed by the fitted transform; they take part in the graph but are not scored).
    """
    import torch

    torch.set_num_threads(1)
    stack = st.pp.stack_sections([st.datasets.her2st(s, path=path) for s in SECTIONS], transforms="warped")
    kw = {} if epochs is None else {"epochs": epochs}
    st.tl.impute_3d(
        stack,
        measured=list(sections_measured),
        genes=list(genes),
        feature_kwargs={"patch_um": PATCH_UM},
        seed=seed,
        **kw,
    )
    t = stack.tables["stack"]
    pred = t.obsm["stmap_impute3d"].loc[[f"{s}:{n}" for s, n in obs_names], list(genes)].to_numpy()
    return pred[~meas]


def scores(pred, truth) -> dict[str, float]:
    return {
        "gene_pearson": float(np.nanmean(metrics.pearson_per_gene(pred, truth))),
        "gene_spearman": float(np.nanmean(metrics.spearman_per_gene(pred, truth))),
        "spot_pearson": float(np.nanmean(metrics.pearson_per_spot(pred, truth))),
        "mse": float(np.mean((pred - truth) ** 2)),
    }


#: Settings the validation inside the measured sections chooses from (``--candidates``): edge-type sets, and
#: overlap/similarity edges between adjacent sections only (``layers_apart=1``).
CANDIDATES = {
    "overlap": {"graph": ("overlap",)},
    "overlap_spatial": {"graph": ("overlap", "spatial")},
    "full_graph": {"graph": ("overlap", "similarity", "spatial")},
    "adjacent": {"layers_apart": 1},
}


def _validation_section(held: int, codes: np.ndarray, has: np.ndarray) -> int:
    """A measured section with H&E next to the held-out one (the next one, else the previous one)."""
    with_he = {int(c) for c in np.unique(codes[has])}
    for c in (held + 1, held - 1, held + 2, held - 2):
        if c in with_he and c != held:
            return c
    raise ValueError("no measured section with H&E to validate on")


def leave_one_out(args, data, xyz, Y, codes, F, has, Fsec) -> tuple[list, list[dict]]:
    """Each of ``args.held_out`` unmeasured in turn, the others measured; baselines and stmap (default, selected)."""
    stmap_kw = {
        "xyz": xyz,
        "codes": codes,
        "counts": data["counts"],
        "genes": data["genes"],
        "features": data["features"],
        "epochs": args.epochs,
        "seed": args.seed,
        "n_scales": len(SCALES),
    }
    runs, table = [], []
    for sec in args.held_out:
        held = SECTIONS.index(sec)
        meas = codes != held
        truth = Y[~meas]
        n_in, n_out = int(meas.sum()), int((~meas).sum())
        name = f"HER2ST C, {sec} held out ({n_in} measured spots -> {n_out} imputed, {Y.shape[1]} genes)"

        def score(pred, truth=truth):
            return scores(pred, truth)

        # choose the graph inside the measured sections: hide a measured neighbour too, impute it, score it there
        val = _validation_section(held, codes, has)
        inner = meas & (codes != val)
        vmask = (codes == val)[~inner]
        val_scores = {}
        for cand in args.candidates:
            pred = run_stmap(meas=inner, **stmap_kw, **CANDIDATES[cand])
            val_scores[cand] = scores(pred[vmask], Y[codes == val])["gene_pearson"]
            print(f"  {sec}: validation on {SECTIONS[val]}, {cand}: {val_scores[cand]:.4f}", flush=True)
        chosen = max(val_scores, key=val_scores.get)
        methods = {
            "stmap": partial(run_stmap, meas=meas, **stmap_kw),
            "nearest_copy3d": lambda meas=meas: nearest_copy3d(xyz, Y, meas),
            "idw3d_k6": lambda meas=meas: idw3d(xyz, Y, meas, k=6),
            "histology_ridge_per_section": lambda meas=meas: histology_ridge(Fsec, has, Y, meas),
        }
        if chosen != "overlap":  # the default graph: the same run as ``stmap``
            methods["stmap_selected"] = partial(run_stmap, meas=meas, **stmap_kw, **CANDIDATES[chosen])
        got = {}
        for m, fn in methods.items():
            runs.append(measure(name, m, fn, score))
            got[m] = runs[-1].metrics["gene_pearson"]
            print(f"{sec} held out {m}: {runs[-1].seconds:.1f} s {runs[-1].metrics}", flush=True)
        got.setdefault("stmap_selected", got["stmap"])
        best = max(v for k, v in got.items() if not k.startswith("stmap"))
        table.append(
            {"held_out": sec, **got, "validated_on": SECTIONS[val], "chosen": chosen, "validation": val_scores}
            | {"margin": got["stmap"] - best, "margin_selected": got["stmap_selected"] - best}
        )
    base = [k for k in table[0] if k in ("nearest_copy3d", "idw3d_k6", "histology_ridge_per_section")]
    print("\n| held out | stmap | stmap (graph chosen on measured) | " + " | ".join(base) + " | margin | chosen |")
    print("|---" * (len(base) + 5) + "|")
    for r in table:
        cells = " | ".join(f"{r[b]:.3f}" for b in base)
        print(
            f"| {r['held_out']} | {r['stmap']:.3f} | {r['stmap_selected']:.3f} | {cells} | {r['margin']:+.3f} | "
            f"{r['chosen']} (on {r['validated_on']}) |"
        )
    return runs, table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--measured", nargs="*", default=["C4", "C3", "C5"])
    ap.add_argument("--held-out", nargs="*", default=["C2", "C3", "C4", "C5", "C6"])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--z-step", type=float, default=200.0, help="um between adjacent sections")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--name", default="impute3d", help="results/<name>.json")
    ap.add_argument("--keep-earlier", action="store_true", help="keep results/<name>.json's other datasets' rows")
    ap.add_argument("--path", default=os.environ.get("STMAP_DATA_DIR"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "stmap" / "impute3d"))
    args = ap.parse_args(argv)

    data = load_patient_c(args.path, n_genes=args.genes, cache=Path(args.cache))
    xyz = data["xyz"].copy()
    xyz[:, 2] *= args.z_step
    Y, codes = data["Y"], data["codes"]
    F, has = stack_features(data)
    Fsec = per_section_standardize(F, has, codes)
    runs = []
    for sec in args.measured:
        meas = codes == SECTIONS.index(sec)
        truth = Y[~meas]
        name = f"HER2ST C, {sec} measured ({int(meas.sum())} spots -> {int((~meas).sum())} imputed, {Y.shape[1]} genes)"

        def score(pred, truth=truth):
            return scores(pred, truth)

        methods = {
            "stmap": {},
            "nearest_copy": lambda meas=meas: nearest_copy(xyz, Y, meas),
            "idw3d_k6": lambda meas=meas: idw3d(xyz, Y, meas, k=6),
            "histology_ridge": lambda meas=meas: histology_ridge(F, has, Y, meas),
            "histology_ridge_per_section": lambda meas=meas: histology_ridge(Fsec, has, Y, meas),
        }
        if sec == args.measured[0]:  # the public API end to end (its own stack and features) on the same spots
            methods["stmap_public_api"] = lambda meas=meas, sec=sec: run_public(
                path=args.path,
                sections_measured=[sec],
                genes=data["genes"],
                obs_names=data["obs_names"],
                meas=meas,
                epochs=args.epochs,
                seed=args.seed,
            )
        if not args.no_ablations and sec == args.measured[0]:
            methods.update(
                {
                    "stmap_full_graph": {"graph": ("overlap", "similarity", "spatial")},
                    "stmap_overlap_spatial": {"graph": ("overlap", "spatial")},
                    "stmap_similarity_only": {"graph": ("similarity",)},
                    "stmap_no_propagation": {"propagate": False},
                    "stmap_no_histology": {"histology": False},
                }
            )
        for m, fn in methods.items():
            if isinstance(fn, dict):
                fn = partial(
                    run_stmap,
                    xyz=xyz,
                    codes=codes,
                    counts=data["counts"],
                    genes=data["genes"],
                    features=data["features"],
                    meas=meas,
                    epochs=args.epochs,
                    seed=args.seed,
                    n_scales=len(SCALES),
                    **fn,
                )
            runs.append(measure(name, m, fn, score))
            print(f"{sec} {m}: {runs[-1].seconds:.1f} s {runs[-1].metrics}", flush=True)
    loo_runs, table = leave_one_out(args, data, xyz, Y, codes, F, has, Fsec) if args.held_out else ([], [])
    hib = {"gene_pearson": True, "gene_spearman": True, "spot_pearson": True}
    import json
    from dataclasses import fields

    from _harness import RESULTS, Run

    earlier = {"runs": [], "leave_one_out": []}
    if args.keep_earlier and (RESULTS / f"{args.name}.json").exists():
        earlier = {"leave_one_out": [], **json.loads((RESULTS / f"{args.name}.json").read_text())}
    now = {r.dataset for r in runs + loo_runs}
    keep = [Run(**{f.name: r[f.name] for f in fields(Run)}) for r in earlier["runs"] if r["dataset"] not in now]
    path = report(args.name, keep + runs + loo_runs, higher_is_better=hib)
    held = {r["held_out"] for r in table}
    table = [r for r in earlier["leave_one_out"] if r["held_out"] not in held] + table
    table = sorted(table, key=lambda r: r["held_out"])
    if table:
        payload = json.loads(path.read_text())
        payload["leave_one_out"] = table
        path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
