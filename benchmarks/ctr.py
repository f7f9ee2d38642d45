"""CTR benchmark (issue 5): cancer tissue region detection on HER2ST, our fused model vs baselines, same run.

Data: ../shared/data/her2st (``STMAP_DATA_DIR``). Labels: patient C, cancer = expression clusters annotated cancer in
motivation.csv (spots without a cluster are unlabelled); A1, the pathologist's 'invasive cancer' + 'cancer in situ'
(spots without a label are unlabelled). Histology: ``st.pp.histology_features`` (offline handcrafted extractor, 100 um
spot patch and 2x context) on every section with an image (C1 has none: its image tokens are masked in training).

Tasks:

- ``A1``: train on C1-C6, evaluate on A1 (another patient, another image scan).
- ``LOSO Ck`` (``--loso``): within patient C, train on the other five sections, evaluate on Ck (k = 2..6; C1 has no
  image, so it stays a training source).

Methods: ``stmap`` (fused SpaCRD-style model), ``stmap_expression`` / ``stmap_histology`` (the same model with one
modality), ``logreg`` (sklearn logistic regression, log-normalised expression, top-2000 variance genes, C=0.01, pooled
sources) and ``meta_gene`` (mean z-score of ERBB2, GRB7, EPCAM, KRT8, KRT18, KRT19, KRT7 in the target: a TESLA-like
marker score, no training). Metrics: ROC-AUC, AP, and F1 at a 2-component GMM threshold on each method's scores
(``f1_gmm``: shared-width GMM, detect_ctr's default; ``f1_gmm_full``: free widths).
The torch models are trained with ``--seeds`` seeds; the table reports the mean (per-seed values in the JSON).

Threshold (issue 16): ``--dump-scores F.npz`` keeps every method's scores; ``--inner --folds Ck`` adds the inner folds
of LOSO Ck (validation sections for choosing the label-free rule); ``--thresholds F.npz ...`` then writes the MCC of
every method at its own label-free rule, at 0.5 and at the best cut, and the rule each task's validation picks, to
``results/ctr.json`` ("threshold").

Usage: ``python benchmarks/ctr.py [--loso] [--seeds 3] [--loso-seeds 1] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Run, measure, report

import stmap as st

SECTIONS = ("A1", "C1", "C2", "C3", "C4", "C5", "C6")
MARKERS = ("ERBB2", "GRB7", "EPCAM", "KRT8", "KRT18", "KRT19", "KRT7")
LABEL = "ctr_label"
RESULTS_DIR = Path(__file__).parent / "results"


def load(scales=(1.0, 2.0)) -> dict:
    """All sections with histology features and a float label column (NaN = unlabelled)."""
    out = {}
    for sec in SECTIONS:
        sdata = st.datasets.her2st(sec)
        if sec in sdata.tables and sdata.images:
            st.pp.histology_features(sdata, table_key=sec, scales=scales)
        a = sdata.tables[sec]
        known = a.obs["cluster"].notna() if sec.startswith("C") else a.obs["pathologist_label"].notna()
        lab = a.obs["cancer"].to_numpy().astype(float)
        lab[~known.to_numpy()] = np.nan
        a.obs[LABEL] = lab
        out[sec] = sdata
    return out


def _lognorm(adata):
    import scanpy as sc

    b = adata.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b


SCORES: dict[str, np.ndarray] = {}  # "<task>|<method>|<seed>" -> scores, "<task>|y" -> labels (--dump-scores)
DUMP: list[str] = []  # the --dump-scores path, written after every method (a long run keeps what it has done)


def _scores(y, s, key: str | None = None) -> dict:
    if key is not None:
        SCORES[key] = np.asarray(s, dtype=float)
        if DUMP:
            np.savez(DUMP[0], **SCORES)
    ok = ~np.isnan(y)
    yt, s = y[ok].astype(bool), np.asarray(s, dtype=float)[ok]
    tied = st.metrics.gmm_threshold(s, covariance_type="tied")  # detect_ctr's default
    full = st.metrics.gmm_threshold(s, covariance_type="full")
    return {
        "roc_auc": st.metrics.roc_auc(yt, s),
        "ap": st.metrics.average_precision(yt, s),
        "f1_gmm": st.metrics.f1(yt, s > tied),
        "f1_gmm_full": st.metrics.f1(yt, s > full),
    }


def run_task(
    name: str, data: dict, sources: list[str], target: str, seeds: list[int], runs: list[Run], methods=None
) -> None:
    tgt = data[target]
    y = tgt.tables[target].obs[LABEL].to_numpy()
    SCORES[f"{name}|y"] = y
    src = {k: data[k] for k in sources}

    # our models, several seeds: mean metrics, total time of one seed (train + detect)
    for method, modality in (("stmap", "both"), ("stmap_expression", "expression"), ("stmap_histology", "histology")):
        if methods and method not in methods:
            continue
        srcs = {k: v for k, v in src.items() if modality != "histology" or v.images}
        per_seed, times, mems = [], [], []
        for seed in seeds:

            def fn(srcs=srcs, modality=modality, seed=seed):
                model = st.tl.train_ctr(
                    srcs, label_key=LABEL, positive=1.0, modality=modality, seed=seed, verbose=False
                )
                res = st.tl.detect_ctr(tgt, model, table_key=target, copy=True)
                return res.tables[target].obs["stmap_ctr_prob"].to_numpy(), model.info["train_seconds"]

            key = f"{name}|{method}|{seed}"
            r = measure(name, method, fn, lambda out, key=key: {**_scores(y, out[0], key), "train_s": out[1]})
            per_seed.append(r.metrics)
            times.append(r.seconds)
            mems.append(r.peak_mb)
        mean = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
        mean["roc_auc_sd"] = float(np.std([m["roc_auc"] for m in per_seed]))
        note = "per seed: " + "; ".join(f"seed {s}: AUC {m['roc_auc']:.4f}" for s, m in zip(seeds, per_seed))
        runs.append(Run(name, method, float(np.mean(times)), float(np.max(mems)), mean, note))
        print(runs[-1], flush=True)

    # logistic regression on log-normalised expression (top-2000 variance genes, C=0.01)
    def logreg():
        from sklearn.linear_model import LogisticRegression

        ln = {k: _lognorm(v.tables[k]) for k, v in src.items()}
        lt = _lognorm(tgt.tables[target])
        common = lt.var_names
        for a in ln.values():
            common = common.intersection(a.var_names)
        xs = np.vstack([ln[k][:, common].X.toarray() for k in ln])
        ys = np.concatenate([src[k].tables[k].obs[LABEL].to_numpy() for k in ln])
        top = np.sort(np.argsort(-xs.var(0))[:2000])
        ok = ~np.isnan(ys)
        t0 = time.perf_counter()
        clf = LogisticRegression(C=0.01, max_iter=3000).fit(xs[ok][:, top], ys[ok].astype(int))
        train_s = time.perf_counter() - t0
        return clf.predict_proba(lt[:, common].X.toarray()[:, top])[:, 1], train_s

    runs.append(
        measure(name, "logreg", logreg, lambda out: {**_scores(y, out[0], f"{name}|logreg|0"), "train_s": out[1]})
    )
    print(runs[-1], flush=True)

    def meta():
        lt = _lognorm(tgt.tables[target])
        genes = [g for g in MARKERS if g in lt.var_names]
        x = lt[:, genes].X.toarray()
        return ((x - x.mean(0)) / (x.std(0) + 1e-9)).mean(1)

    runs.append(measure(name, "meta_gene", meta, lambda s: {**_scores(y, s, f"{name}|meta_gene|0"), "train_s": 0.0}))
    print(runs[-1], flush=True)


def _mcc(y: np.ndarray, call: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    ok = ~np.isnan(y)
    return float(matthews_corrcoef(y[ok].astype(bool), np.asarray(call)[ok]))


def _task_sources(task: str) -> list[str]:
    """The training sections of a task: ``A1`` (all of C), ``LOSO Ck`` (C less Ck), ``inner Ck/Cj`` (C less both)."""
    csecs = [s for s in SECTIONS if s.startswith("C")]
    if task == "A1":
        return csecs
    held = task.split()[-1].split("/")
    return [s for s in csecs if s not in held]


def _source_prevalence(task: str) -> float:
    """Cancer fraction of the labelled spots of a task's training sections (what the model was trained on)."""
    counts = [_section_counts(sec) for sec in _task_sources(task)]
    return sum(c[0] for c in counts) / sum(c[1] for c in counts)


@functools.cache
def _section_counts(sec: str) -> tuple[int, int]:
    """(cancer, labelled) spots of a patient-C section (labelled = with an expression cluster)."""
    a = st.datasets.her2st(sec).tables[sec]
    known = a.obs["cluster"].notna().to_numpy()
    return int(a.obs["cancer"].to_numpy()[known].astype(bool).sum()), int(known.sum())


def _rule_family(ps: float) -> dict:
    """Label-free threshold rules for a model's probabilities, given its training prevalence ``ps``.

    ``0.5``; the tied GMM; the prior-shift Bayes cut with the target prevalence from EM (Saerens et al.) or from the
    mean probability; EM with the logit shift ``d = logit(pi) - logit(ps)`` kept only when ``|d| > delta`` (a dead
    zone: the calibration error a held-out section shows without any shift), soft-thresholded
    (``sign(d) max(|d| - delta, 0)``) or scaled by ``w``. Each returns the cut on the probability.
    """
    from scipy.special import expit, logit

    from stmap.tl._ctr._threshold import prior_shift

    def shift(s):
        return float(logit(prior_shift(s, ps)[1]) - logit(ps))

    rules = {
        "0.5": lambda s: 0.5,
        "gmm": lambda s: st.metrics.gmm_threshold(s, covariance_type="tied"),
        "EM": lambda s: float(expit(-shift(s))),
        "mean": lambda s: float(expit(-(logit(np.clip(np.mean(s), 1e-6, 1 - 1e-6)) - logit(ps)))),
    }
    for d in (0.25, 0.5, 0.75, 1.0, 1.5):
        rules[f"EM dead zone {d}"] = lambda s, d=d: float(expit(-(v if abs(v := shift(s)) > d else 0.0)))
        rules[f"EM soft {d}"] = lambda s, d=d: float(expit(-np.sign(v := shift(s)) * max(abs(v) - d, 0.0)))
    for w in (0.25, 0.5, 0.75):
        rules[f"EM x {w}"] = lambda s, w=w: float(expit(-w * shift(s)))
    return rules


def _app(s: np.ndarray, y: np.ndarray, rng, reps: int = 10):
    """Artificial-prevalence draws of a labelled section: cancer fraction 0.1 .. 0.9, as many spots as it allows."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    for q in np.linspace(0.1, 0.9, 9):
        n = int(min(len(pos) / q, len(neg) / (1 - q)))
        k = int(round(q * n))
        for _ in range(reps):
            idx = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])
            yield s[idx], y[idx]


def _validation_sets(task: str, scores: dict, method: str = "stmap") -> list:
    """Held-out sections scored by models trained on the task's sources less that section (never the task's target).

    A1: the LOSO folds C2-C6 (models of five C sections). LOSO Ck: the inner folds ``inner Ck/Cj`` (models of the
    four C sections other than Ck and Cj, scored on Cj; written by ``--inner``).
    """
    csecs = [s for s in SECTIONS if s.startswith("C")][1:]
    held = None if task == "A1" else task.split()[-1]
    names = [f"LOSO {c}" for c in csecs] if held is None else [f"inner {held}/{c}" for c in csecs if c != held]
    out = []
    for name in names:
        if f"{name}|y" not in scores:
            continue
        y = scores[f"{name}|y"]
        ok = ~np.isnan(y)
        for key in sorted(k for k in scores if k.startswith(f"{name}|{method}|")):
            out.append((name, key.split("|")[-1], scores[key][ok], y[ok].astype(bool), _source_prevalence(name)))
    return out


def select_rule(task: str, scores: dict, seed: int = 0) -> dict:
    """Mean MCC of every rule of :func:`_rule_family` on the task's validation sets; the best under prior shift.

    Criterion (fixed before looking at any result): mean MCC over the validation sections x seeds x artificial
    prevalences 0.1..0.9 (10 draws each), so that a rule must do well both where the target's prevalence equals the
    sources' (within patient C) and where it does not (A1). Ties keep the earlier (simpler) rule. The task's own target
    is never used.
    """
    rng = np.random.default_rng(seed)
    nat: dict[str, list[float]] = {}
    app: dict[str, list[float]] = {}
    sets = _validation_sets(task, scores)
    for _, _, s, y, ps in sets:
        rules = _rule_family(ps)
        for name, f in rules.items():
            nat.setdefault(name, []).append(_mcc(y.astype(float), s > f(s)))
        for ss, yy in _app(s, y, rng):
            for name, f in rules.items():
                app.setdefault(name, []).append(_mcc(yy.astype(float), ss > f(ss)))
    if not sets:
        return {"n_sets": 0}
    table = {k: {"mcc_natural": float(np.mean(nat[k])), "mcc_app": float(np.mean(app[k]))} for k in nat}
    best = max(table, key=lambda k: table[k]["mcc_app"])  # max keeps the first of equals
    return {"n_sets": len(sets), "sets": sorted({f"{n}|{sd}" for n, sd, *_ in sets}), "rules": table, "chosen": best}


def _platt(task: str, scores: dict) -> tuple[float, float] | None:
    """Platt scaling ``(a, b)`` (``sigmoid(a logit(p) + b)``) fitted on the task's validation sections (pooled)."""
    from scipy.special import logit
    from sklearn.linear_model import LogisticRegression

    sets = _validation_sets(task, scores)
    if not sets:
        return None
    x = np.concatenate([logit(np.clip(s, 1e-6, 1 - 1e-6)) for *_, s, _, _ in sets])
    y = np.concatenate([yy for *_, yy, _ in sets])
    lr = LogisticRegression(C=1e6).fit(x[:, None], y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def threshold_table(npz: list[str]) -> dict:
    """AUC and MCC at label-free thresholds, per task and method, from scores written with ``--dump-scores``.

    stmap's call is detect_ctr's default (``threshold_method`` in its ``uns``); the baselines are cut at their own
    label-free threshold: logistic regression at probability 0.5 (its ``predict``), the marker meta-gene (a z-score
    mean, no probability) at a two-component GMM. Every method is also shown under the other rules. For stmap, the
    rule chosen by :func:`select_rule` on the task's validation sections (never its target) is shown too.
    """
    from stmap.tl._ctr._threshold import call_threshold

    scores: dict[str, np.ndarray] = {}
    for f in npz:
        scores.update(dict(np.load(f)))
    tasks = sorted({k.split("|")[0] for k in scores if not k.startswith("inner")}, key=lambda t: (t != "A1", t))
    own = {"logreg": "0.5", "meta_gene": "gmm"}
    rows, selection = [], {}
    for task in tasks:
        y = scores[f"{task}|y"]
        prev = _source_prevalence(task)
        sel = selection[task] = select_rule(task, scores)
        platt = sel["platt"] = _platt(task, scores)
        for key in sorted(k for k in scores if k.startswith(task + "|") and not k.endswith("|y")):
            _, method, seed = key.split("|")
            s = scores[key]
            ok = ~np.isnan(y)
            ours = method.startswith("stmap")
            cuts = {
                "gmm": st.metrics.gmm_threshold(s, covariance_type="tied"),
                "0.5": 0.5,
                "stmap_rule": call_threshold(s, None, 0, prevalence=prev)[0] if ours else np.nan,
                "validated": _rule_family(prev)[sel["chosen"]](s) if ours and sel.get("n_sets") else np.nan,
            }
            row = {"task": task, "method": method, "seed": int(seed), "source_prevalence": prev}
            row["roc_auc"] = st.metrics.roc_auc(y[ok].astype(bool), s[ok])
            for name, cut in cuts.items():
                row[f"mcc_{name}"] = _mcc(y, s > cut) if np.isfinite(cut) else np.nan
            rule = "stmap_rule" if ours else own.get(method, "gmm")
            row["own_rule"] = rule
            row["mcc_own"] = row[f"mcc_{rule}"]
            row["threshold_own"] = float(cuts[rule])
            row["validated_rule"] = sel.get("chosen") if ours else None
            row["mcc_platt_em"] = np.nan
            if ours and platt is not None:  # calibrated on held-out source sections first, then the EM cut
                from scipy.special import expit, logit

                q = expit(platt[0] * logit(np.clip(s, 1e-6, 1 - 1e-6)) + platt[1])
                row["mcc_platt_em"] = _mcc(y, q > call_threshold(q, None, 0, prevalence=prev)[0])
            # the ceiling: the best MCC any cut of these scores reaches (uses the labels; for reference only)
            row["mcc_best_cut"] = max(_mcc(y, s > c) for c in np.quantile(s[ok], np.linspace(0.01, 0.99, 197)))
            row["called_fraction"] = float((s[ok] > cuts[rule]).mean())
            row["true_fraction"] = float(y[ok].mean())
            rows.append(row)
    print(
        "\n| task | method | seed | AUC | own rule | threshold | MCC (own rule) | MCC validated rule | MCC gmm "
        "| MCC 0.5 | best cut (oracle) | called / true cancer |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['method']} | {r['seed']} | {r['roc_auc']:.3f} | {r['own_rule']} | "
            f"{r['threshold_own']:.3f} | {r['mcc_own']:.3f} | {r['mcc_validated']:.3f} | {r['mcc_gmm']:.3f} | "
            f"{r['mcc_0.5']:.3f} | {r['mcc_best_cut']:.3f} | {r['called_fraction']:.2f} / {r['true_fraction']:.2f} |"
        )
    summary = _summary(rows)
    print(
        "\n| task | method | seeds | AUC | MCC own rule | MCC 0.5 | MCC best cut | validated rule | MCC validated "
        "| MCC Platt + EM |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        print(
            f"| {r['task']} | {r['method']} | {r['n_seeds']} | {r['roc_auc']:.3f} | {r['mcc_own']:.3f} | "
            f"{r['mcc_0.5']:.3f} | {r['mcc_best_cut']:.3f} | {r['validated_rule'] or ''} | "
            f"{r['mcc_validated']:.3f} | {r['mcc_platt_em']:.3f} |"
        )
    for task, sel in selection.items():
        if sel.get("n_sets"):
            top = sorted(sel["rules"].items(), key=lambda kv: -kv[1]["mcc_app"])[:5]
            print(f"{task}: {sel['n_sets']} validation sets; " + "; ".join(f"{k} {v['mcc_app']:.4f}" for k, v in top))
    return {"rows": rows, "summary": summary, "selection": selection}


def _summary(rows: list[dict]) -> list[dict]:
    """Per task and method: the mean over seeds."""
    out = []
    for task, method in dict.fromkeys((r["task"], r["method"]) for r in rows):
        rs = [r for r in rows if r["task"] == task and r["method"] == method]
        keys = ("roc_auc", "mcc_own", "mcc_0.5", "mcc_best_cut", "mcc_validated", "mcc_platt_em")
        m = {k: float(np.mean([r[k] for r in rs])) for k in keys}
        out.append({"task": task, "method": method, "n_seeds": len(rs), **m, "validated_rule": rs[0]["validated_rule"]})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loso", action="store_true", help="also leave-one-section-out within patient C (slow)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the torch models on A1")
    p.add_argument("--loso-seeds", type=int, default=1, help="seeds of the torch models per LOSO fold")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--folds", default=None, help="comma-separated LOSO folds (default: C2..C6)")
    p.add_argument("--no-a1", action="store_true", help="skip the A1 transfer task")
    p.add_argument(
        "--inner",
        action="store_true",
        help="for each LOSO fold in --folds, the inner folds: train on its sources less one, score that one "
        "(validation scores for choosing the threshold rule without the fold's own section)",
    )
    p.add_argument("--methods", default=None, help="comma-separated torch models to run (default: all three)")
    p.add_argument("--thresholds", nargs="+", default=None, help="score files (.npz): print the threshold table only")
    p.add_argument("--dump-scores", default=None, help="write every method's scores and the labels to this .npz")
    args = p.parse_args()
    if args.thresholds:
        import json

        table = threshold_table(args.thresholds)
        out = RESULTS_DIR / "ctr.json"
        payload = json.loads(out.read_text()) if out.exists() else {}
        note = (
            "scores from --dump-scores (torch models: the seeds listed per row; logreg and meta_gene deterministic); "
            "'selection': each task's rule chosen on its validation sections (A1: LOSO C2-C6; LOSO Ck: inner Ck/Cj), "
            "'platt': Platt scaling fitted on the same sections"
        )
        payload["threshold"] = {**table, "scores": args.thresholds, "note": note}
        out.write_text(json.dumps(payload, indent=2))
        return
    if args.dump_scores:
        DUMP.append(args.dump_scores)
    warnings.filterwarnings("ignore")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    data = load()
    seeds = list(range(args.seeds))
    runs: list[Run] = []
    csecs = [s for s in SECTIONS if s.startswith("C")]
    if not args.no_a1:
        run_task("A1", data, csecs, "A1", seeds, runs, args.methods.split(",") if args.methods else None)
    if args.inner:
        for held in args.folds.split(",") if args.folds else csecs[1:]:
            for inner in (c for c in csecs[1:] if c != held):
                srcs = [s for s in csecs if s not in (held, inner)]
                methods = args.methods.split(",") if args.methods else None
                run_task(f"inner {held}/{inner}", data, srcs, inner, list(range(args.loso_seeds)), runs, methods)
    if args.loso:
        for held in args.folds.split(",") if args.folds else csecs[1:]:
            srcs = [s for s in csecs if s != held]
            methods = args.methods.split(",") if args.methods else None
            run_task(f"LOSO {held}", data, srcs, held, list(range(args.loso_seeds)), runs, methods)
    if args.dump_scores:
        np.savez(args.dump_scores, **SCORES)
    if args.dump_scores and (args.no_a1 or args.folds or args.inner or args.methods):
        return  # partial run: scores only, results/ctr.json untouched
    report("ctr", runs, ours="stmap", higher_is_better={"roc_auc": True, "ap": True, "f1_gmm": True})


if __name__ == "__main__":
    main()
