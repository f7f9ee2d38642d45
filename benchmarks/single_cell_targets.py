"""Single-cell-resolution targets (Xenium / CosMx / MERSCOPE-like): cell-type transfer and imputation of genes outside
the panel. stmap.tl.map_cells + project_genes vs tangram-sc (cells mode) and a kNN baseline, in the same run.

Truth: a reference of real cells is split per type into two halves (seeded). One half is the reference; the other
half are the "spatial" cells, measured on a panel of ~10% of the genes: marker genes chosen on the reference half
only (round robin over types of the top mean log-fold change against the best other type, as targeted panels are
designed). Held-out truth: the spatial cells' annotated types and their counts of every gene outside the panel.
Spatial cells without a panel count are dropped (as Xenium pipelines drop empty cells).

Data: ``cerebellum_snrnaseq_ref`` (snRNA-seq, 19 types, 384 genes) and ``hippocampus_dropseq_ref`` (Drop-seq,
17 types, 307 genes) from spacexr via ``st.datasets.spacexr`` (../shared/data), and scanpy's PBMC (``pbmc68k_reduced``
counts, 10 unbalanced types, 765 genes). Seeds 0 and 1 (different splits).

Methods (the table's time covers label transfer and the projection of all reference genes):

* ``stmap``: the spatial cells as a SpatialData table annotating cell circles of varying radius (Xenium's layout
  with ``cells_as_circles=True``), then the plain calls ``st.tl.map_cells(sdata, ref)`` and
  ``st.tl.project_genes(sdata, ref, table_key=...)``: one cell per target is detected from the layout, labels are
  ``obs['stmap_cell_type']``, imputation uses the single-cell default ``smooth=1``. ``heldout_r_smooth05`` scores
  the spot default ``smooth=0.5`` on the same mapping (not timed).
* ``tangram_uniform``: ``tg.map_cells_to_space(mode='cells', density_prior='uniform')`` (Tangram's advice for
  single-cell targets), panel genes as training genes, 1000 epochs, CPU; labels = argmax of
  ``tg.project_cell_annotations``; imputation = ``tg.project_genes``. ``tangram_default``: the same with its
  default ``density_prior='rna_count_based'``.
* ``knn``: k = 15 nearest reference cells in log1p-CP10k panel space (scikit-learn); majority label; imputation =
  the neighbours' mean of (non-panel counts / panel total), times the target's panel total.

Every method runs once on a small subset first (not recorded), so import and first-call costs do not land on the
first row. Metrics: ``acc``, ``bal_acc`` (mean per-type recall), ``heldout_r`` (gene-wise Pearson over cells, mean
over the held-out genes with variance).
Run: ``python benchmarks/single_cell_targets.py [--quick]`` (``--quick``: seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).parent))
from _harness import RESULTS, Run, measure, report

import stmap as st
from stmap import metrics

warnings.filterwarnings("ignore")
TK = "cell_type"
K = 15
PANEL_FRACTION = 0.10
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIB = {"acc": True, "bal_acc": True, "heldout_r": True, "heldout_r_smooth05": True}


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------
def load(name: str):
    if name == "pbmc":
        from stmap.datasets import pbmc_counts

        a = pbmc_counts()
    else:
        a = st.datasets.spacexr(name, path=DATA)
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    a.obs[TK] = pd.Categorical(a.obs[TK].astype(str))
    return a


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _lognorm(X: np.ndarray) -> np.ndarray:
    return np.log1p(X / np.maximum(X.sum(axis=1, keepdims=True), 1e-12) * 1e4)


def marker_panel(ref, n: int) -> list[str]:
    """``n`` genes: round robin over types of the top mean log1p-CP10k difference to the best other type."""
    Z = _lognorm(_dense(ref.X))
    ty = ref.obs[TK].astype(str).to_numpy()
    cats = sorted(set(ty))
    M = np.stack([Z[ty == c].mean(axis=0) for c in cats])
    order = [np.argsort(-(M[i] - np.delete(M, i, axis=0).max(axis=0)), kind="stable") for i in range(len(cats))]
    panel: list[int] = []
    for r in range(ref.n_vars):
        for o in order:
            if len(panel) < n and int(o[r]) not in panel:
                panel.append(int(o[r]))
        if len(panel) >= n:
            break
    return list(ref.var_names[sorted(panel)])


def split(a, seed: int):
    """Reference half, spatial half (panel genes only, no empty cells), panel, held-out genes and truth."""
    g = np.random.default_rng(seed)
    ty = a.obs[TK].astype(str).to_numpy()
    is_ref = np.zeros(a.n_obs, bool)
    for c in np.unique(ty):
        idx = np.flatnonzero(ty == c)
        g.shuffle(idx)
        is_ref[idx[: len(idx) // 2]] = True
    ref, held = a[is_ref].copy(), a[~is_ref].copy()
    panel = marker_panel(ref, max(20, int(round(PANEL_FRACTION * a.n_vars))))
    held = held[np.asarray(held[:, panel].X.sum(axis=1)).ravel() > 0].copy()
    outside = [v for v in a.var_names if v not in set(panel)]
    return ref, held, panel, outside


def as_sdata(held, panel, seed: int):
    """The spatial cells as spatialdata-io's Xenium (``cells_as_circles=True``) lays them out: varying radii in um."""
    import anndata as ad

    from stmap._core import make_circles, make_table, new_spatialdata

    g = np.random.default_rng(seed)
    n = held.n_obs
    t = ad.AnnData(sparse.csr_matrix(held[:, panel].X), obs=pd.DataFrame(index=held.obs_names.astype(str)))
    t.var_names = panel
    xy = g.uniform(0, 2000, (n, 2))
    t.obsm["spatial"] = xy
    t = make_table(t, region="cell_circles", instance_ids=np.arange(n))
    circles = make_circles(xy, g.uniform(4.0, 9.0, n), index=np.arange(n))
    return new_spatialdata(shapes={"cell_circles": circles}, tables={"table": t}, units={"global": "um"})


# --------------------------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------------------------
def run_stmap(sdata, ref, seed: int):
    out = st.tl.map_cells(sdata, ref, seed=seed, copy=True)  # ref untouched; the placement is recorded in `out`
    out = st.tl.project_genes(out, ref, table_key="table", copy=True)
    return {"sdata": out, "ref": ref}


def run_tangram(sdata, ref, panel, seed: int, prior: str):
    import anndata as ad
    import tangram as tg

    t = sdata.tables["table"]
    sc = ad.AnnData(sparse.csr_matrix(ref.X), obs=pd.DataFrame({TK: ref.obs[TK].astype(str).to_numpy()}))
    sc.obs_names, sc.var_names = ref.obs_names, ref.var_names
    sp = ad.AnnData(sparse.csr_matrix(t.X), obs=pd.DataFrame(index=t.obs_names))
    sp.var_names = t.var_names
    tg.pp_adatas(sc, sp, genes=panel)
    amap = tg.map_cells_to_space(
        sc, sp, mode="cells", density_prior=prior, device="cpu", verbose=False, random_state=seed
    )
    tg.project_cell_annotations(amap, sp, annotation=TK)
    genes = tg.project_genes(amap, sc)
    pred = sp.obsm["tangram_ct_pred"]
    return {"labels": pred.columns[pred.to_numpy().argmax(axis=1)].to_numpy(), "genes": genes}


def run_knn(sdata, ref, panel):
    from sklearn.neighbors import NearestNeighbors

    Y = _dense(sdata.tables["table"][:, panel].X)
    Xr = _dense(ref[:, panel].X)
    _, idx = NearestNeighbors(n_neighbors=K).fit(_lognorm(Xr)).kneighbors(_lognorm(Y))
    ty = ref.obs[TK].astype(str).to_numpy()
    labels = np.array([pd.Series(ty[i]).value_counts().index[0] for i in idx])  # ties: first in count order
    rel = _dense(ref.X) / np.maximum(Xr.sum(axis=1, keepdims=True), 1e-12)
    genes = pd.DataFrame(rel[idx].mean(axis=1) * Y.sum(axis=1, keepdims=True), columns=ref.var_names)
    return {"labels": labels, "genes": genes}


# --------------------------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------------------------
def _labels(pred, truth) -> dict[str, float]:
    pred = np.asarray(pred, dtype=str)
    recall = [np.mean(pred[truth == c] == c) for c in np.unique(truth)]
    return {"acc": float(np.mean(pred == truth)), "bal_acc": float(np.mean(recall))}


def _heldout(pred: np.ndarray, truth: np.ndarray) -> float:
    ok = truth.std(axis=0) > 0
    return float(np.nanmean(metrics.pearson_per_gene(pred[:, ok], truth[:, ok])))


def scorer(kind: str, held, outside):
    truth_t = held.obs[TK].astype(str).to_numpy()
    truth_x = _dense(held[:, outside].X)

    def f(o):
        if kind == "stmap":
            t = o["sdata"].tables["table"]
            m = _labels(t.obs["stmap_cell_type"].astype(str).to_numpy(), truth_t)
            P = o["sdata"].tables["table_projected"][:, outside].X
            m["heldout_r"] = _heldout(_dense(P), truth_x)
            o2 = st.tl.project_genes(o["sdata"], o["ref"], table_key="table", genes=outside, smooth=0.5, copy=True)
            m["heldout_r_smooth05"] = _heldout(_dense(o2.tables["table_projected"].X), truth_x)
            return m
        m = _labels(o["labels"], truth_t)
        g = o["genes"]  # tangram lower-cases gene names
        P = g[outside].to_numpy() if isinstance(g, pd.DataFrame) else _dense(g[:, [v.lower() for v in outside]].X)
        m["heldout_r"] = _heldout(P, truth_x)
        return m

    return f


def summary(runs: list[Run]) -> dict:
    """Mean over datasets of each peer's quality and time relative to stmap (quality: peer - stmap, time: ratio)."""
    out: dict = {}
    for method in sorted({r.method for r in runs} - {"stmap"}):
        diffs: dict[str, list[float]] = {}
        for r in runs:
            if r.method != method:
                continue
            ours = next(x for x in runs if x.dataset == r.dataset and x.method == "stmap")
            for k, v in r.metrics.items():
                diffs.setdefault(f"{k}_minus_stmap", []).append(v - ours.metrics[k])
            diffs.setdefault("time_ratio", []).append(r.seconds / ours.seconds)
        out[method] = {k: float(np.mean(v)) for k, v in diffs.items()}
    return out


def bench(name: str, a, seed: int) -> list[Run]:
    """All methods on one dataset and split."""
    ref, held, panel, outside = split(a, seed)
    sdata = as_sdata(held, panel, seed)
    ds = f"{name.split('_')[0]} s{seed} ({ref.n_obs} ref, {held.n_obs} cells, {len(panel)}/{a.n_vars} genes)"
    runs = [measure(ds, "stmap", lambda: run_stmap(sdata, ref, seed), scorer("stmap", held, outside))]
    for prior, meth in (("uniform", "tangram_uniform"), ("rna_count_based", "tangram_default")):
        runs.append(
            measure(
                ds,
                meth,
                lambda prior=prior: run_tangram(sdata, ref, panel, seed, prior),
                scorer("peer", held, outside),
            )
        )
    runs.append(measure(ds, "knn", lambda: run_knn(sdata, ref, panel), scorer("peer", held, outside)))
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="seed 0 only")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--name", default="single_cell_targets")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    runs: list[Run] = []
    seeds = (0,) if args.quick else (0, 1)
    for i, name in enumerate(("cerebellum_snrnaseq_ref", "hippocampus_dropseq_ref", "pbmc")):
        a = load(name)
        if i == 0:  # warm-up, not recorded: first-call costs (torch, tangram, numba imports) would land on one row
            bench(name, a[np.random.default_rng(0).permutation(a.n_obs)[:120]].copy(), 0)
        for seed in seeds:
            runs += bench(name, a, seed)
            report(args.name, runs, higher_is_better=HIB)  # partial results survive an interrupted run
    path = report(args.name, runs, higher_is_better=HIB)
    summ = summary(runs)
    print("\nmean over datasets, peer vs stmap (quality: peer - stmap; time: peer / stmap)")
    for method, vals in summ.items():
        print(f"  {method:16s} " + "  ".join(f"{k}={v:+.3f}" for k, v in vals.items()))
    payload = json.loads(path.read_text())
    payload["summary_vs_stmap"] = summ
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
