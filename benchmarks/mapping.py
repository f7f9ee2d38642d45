"""Cell-to-spot mapping: stmap.tl.map_cells vs tangram-sc (cells mode with its density prior, constrained mode) and a
plain NNLS fit of each spot on the reference's mean type profiles, in the same run on the same inputs.

Datasets (truth from single-cell-resolution data aggregated into spots with ``st.datasets.simulate_spots``):

* ``pbmc_55um``: real PBMC counts (scanpy's pbmc68k_reduced, counts recovered) placed in a tissue with
  ``simulate_tissue`` from one half of the cells; Visium-like 55 um spots (100 um apart), counts thinned to 50%;
  the reference is the *other* half of the cells. Composition and cells per spot.
* ``synth_40um``: ``st.datasets.synthetic_tissue`` (1500 cells, 6 types, ~7 cells per 40 um spot); the reference is
  the same cells, so greedy placement (cell in its true spot, within one ring) can be scored; 12 region-program
  genes are held out of mapping and predicted by ``project_genes`` / ``tg.project_genes``.
* ``synth_large``: cells of a 12,000-cell synthetic tissue; 6,000 placed into a tissue of 40,000 cells
  (``simulate_tissue``) under 40 um spots (~2,500 spots, 9 cells each), the other 6,000 are the reference:
  n*m >= 1e7, where the speed bar applies.
* ``hippocampus``: real Visium spots + Drop-seq reference (spacexr); no truth, so held-out-gene correlation
  (every 5th shared gene held out of mapping). Cross-platform, so stmap runs with ``platform_effect=True`` (its
  documented setting for a reference from another technology).
* ``--scale``: 100k cells x 10k spots x 1k genes (our method only; Tangram at that size needs a 100k x 10k dense
  matrix and 1000 epochs).

Tangram runs with its defaults (1000 epochs, learning rate 0.1, CPU); constrained mode gets the true cell counts as
``target_count`` and as density prior, the same information ``cells_per_spot`` gives stmap. Run:
``python benchmarks/mapping.py [--quick] [--scale]``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Run, measure, report

import stmap as st
from stmap import metrics

warnings.filterwarnings("ignore")
TK = "cell_type"
HIB = {"jsd": False, "rmse": False, "pearson": True, "n_cells_mae": False}
HIB |= {"place_acc": True, "place_ring": True, "heldout_r": True, "heldout_r_cells": True, "heldout_r_types": True}


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------
def pbmc_55um():
    from stmap.datasets import pbmc_counts

    pb = pbmc_counts()
    perm = np.random.default_rng(0).permutation(pb.n_obs)
    cells = st.datasets.simulate_tissue(pb[perm[:350]].copy(), n_cells=8000, cell_type_key=TK, seed=0)
    sdata = st.datasets.simulate_spots(cells, spot_diameter=55, spacing=100, capture_rate=0.5, seed=0)
    return sdata, pb[perm[350:]].copy()


def synth_40um():
    sdata = st.datasets.synthetic_tissue(0)
    return sdata, sdata.tables["cells"].copy()


def synth_large():
    src = st.datasets.synthetic_tissue(1, n_cells=12000).tables["cells"]
    perm = np.random.default_rng(1).permutation(src.n_obs)
    a, b = src[perm[:6000]].copy(), src[perm[6000:]].copy()
    for x in (a, b):
        x.obs = x.obs[[TK]].copy()
        del x.obsm["spatial"]
    cells = st.datasets.simulate_tissue(a, n_cells=40000, cell_type_key=TK, seed=1)
    sdata = st.datasets.simulate_spots(cells, spot_diameter=40, spacing=45, capture_rate=0.7, seed=1)
    return sdata, b


# --------------------------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------------------------
def run_stmap(sdata, ref, mode="regular", **kw):
    out = st.tl.map_cells(sdata, ref, table_key="spots", mode=mode, copy=True, **kw)  # ref untouched
    return {"sdata": out, "ref": ref}


def run_nnls(sdata, ref, genes=None):
    spots = sdata.tables["spots"]
    genes = list(spots.var_names.intersection(ref.var_names)) if genes is None else genes
    X = ref[:, genes].X
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    ty = ref.obs[TK].astype(str).to_numpy()
    cats = sorted(set(ty))
    M = np.stack([X[ty == c].mean(0) for c in cats])
    Y = spots[:, genes].X
    Y = Y.toarray() if sparse.issparse(Y) else np.asarray(Y)
    C = np.stack([nnls(M.T, y)[0] for y in Y])
    return {"counts": pd.DataFrame(C, index=spots.obs_names, columns=cats), "cats": cats}


def _tg_inputs(sdata, ref, genes):
    import anndata as ad

    spots = sdata.tables["spots"]
    sp = ad.AnnData(X=sparse.csr_matrix(spots.X), obs=pd.DataFrame(index=spots.obs_names.astype(str)))
    sp.var_names = spots.var_names
    sp.obsm["spatial"] = np.asarray(spots.obsm["spatial"])
    sc = ad.AnnData(X=sparse.csr_matrix(ref.X), obs=pd.DataFrame({TK: ref.obs[TK].astype(str).to_numpy()}))
    sc.obs_names = ref.obs_names
    sc.var_names = ref.var_names
    return sc, sp, genes


def run_tangram(sdata, ref, mode="cells", genes=None, n_cells=None):
    import tangram as tg

    sc, sp, genes = _tg_inputs(sdata, ref, genes)
    tg.pp_adatas(sc, sp, genes=genes)
    kw = {"mode": mode, "device": "cpu", "verbose": False, "random_state": 0}
    if mode == "constrained":
        # tangram 1.0.4 compares an array prior with strings (fails on numpy 2): pass it as its "uniform" column
        sp.obs["uniform_density"] = n_cells / n_cells.sum()
        kw |= {"target_count": int(n_cells.sum()), "density_prior": "uniform"}
    else:
        kw |= {"density_prior": "rna_count_based"}
    amap = tg.map_cells_to_space(sc, sp, **kw)
    tg.project_cell_annotations(amap, sp, annotation=TK)
    return {"map": amap, "sp": sp, "sc": sc}


# --------------------------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------------------------
def _comp(pred: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    pred = pred.reindex(columns=truth.columns, fill_value=0.0).clip(lower=0)
    pred = pred.div(pred.sum(axis=1).replace(0, np.nan), axis=0).fillna(1.0 / truth.shape[1])
    ok = truth.notna().all(axis=1).to_numpy()
    return metrics.proportion_metrics(pred.to_numpy()[ok], truth.to_numpy()[ok])


def _ring_acc(pred_spot, true_spot, spots) -> float:
    """Share of cells (with a true spot) placed in their true spot or one of its nearest neighbours (one ring)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(spots.obsm["spatial"])
    pos = pd.Series(np.arange(spots.n_obs), index=spots.obs_names.astype(str))
    t = pd.Series(np.asarray(true_spot, dtype=object))
    has = t.notna().to_numpy()
    p = pos.reindex(pd.Series(np.asarray(pred_spot, dtype=object))[has].astype(str)).to_numpy()
    q = pos.reindex(t[has].astype(str)).to_numpy()
    nn = np.sort(cKDTree(xy).query(xy, k=2)[0][:, 1])
    step = np.median(nn)
    d = np.linalg.norm(xy[p.astype(int)] - xy[q.astype(int)], axis=1)
    return float(np.mean(d <= 1.2 * step))


def score_stmap(truth, spots, ref_truth=None, held=None):
    def f(o):
        sp, r = o["sdata"].tables["spots"], o["ref"]
        m = _comp(sp.obsm["stmap_cell_type_fractions"], truth)
        m["n_cells_mae"] = float(np.mean(np.abs(sp.obs["stmap_n_cells"].to_numpy() - spots.obs["n_cells"].to_numpy())))
        placed = sp.uns["stmap_mapping"]["reference"]  # the reference's results of a copy=True run
        if ref_truth is not None and "spot" in placed:
            m["place_acc"] = metrics.assignment_accuracy(placed["spot"], ref_truth)
            m["place_ring"] = _ring_acc(np.asarray(placed["spot"], dtype=object), ref_truth, spots)
        if held:  # default smooth=0.5, and both ends (placed cells only / type profiles only)
            for w, name in ((0.5, "heldout_r"), (0.0, "heldout_r_cells"), (1.0, "heldout_r_types")):
                o2 = st.tl.project_genes(o["sdata"], r, table_key="spots", smooth=w, copy=True)
                pred = o2.tables["spots_projected"][:, held].X.toarray()
                m[name] = float(np.nanmean(metrics.pearson_per_gene(pred, _dense(spots[:, held].X))))
        return m

    return f


def _dense(X):
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def score_nnls(truth, spots, ref, held=None):
    def f(o):
        m = _comp(o["counts"], truth)
        n = o["counts"].sum(axis=1).to_numpy()
        n = n * spots.obs["n_cells"].sum() / n.sum()
        m["n_cells_mae"] = float(np.mean(np.abs(n - spots.obs["n_cells"].to_numpy())))
        if held:
            Xh = _dense(ref[:, held].X)
            ty = ref.obs[TK].astype(str).to_numpy()
            Mh = np.stack([Xh[ty == c].mean(0) for c in o["cats"]])
            pred = o["counts"].to_numpy() @ Mh
            m["heldout_r"] = float(np.nanmean(metrics.pearson_per_gene(pred, _dense(spots[:, held].X))))
        return m

    return f


def score_tangram(truth, spots, ref_truth=None, held=None):
    def f(o):
        import tangram as tg

        amap, sp = o["map"], o["sp"]
        pred = sp.obsm["tangram_ct_pred"]
        m = _comp(pred, truth) if truth is not None else {}
        M = np.asarray(amap.X)
        if "F_out" in amap.obs:
            M = M * (amap.obs["F_out"].to_numpy()[:, None] > 0.5)
        n = M.sum(axis=0)
        n = n * spots.obs["n_cells"].sum() / max(n.sum(), 1e-12)
        m["n_cells_mae"] = float(np.mean(np.abs(n - spots.obs["n_cells"].to_numpy())))
        if ref_truth is not None:
            best = np.asarray(amap.var_names)[np.asarray(amap.X).argmax(axis=1)]
            m["place_acc"] = metrics.assignment_accuracy(best, ref_truth)
            m["place_ring"] = _ring_acc(best, ref_truth, spots)
        if held:
            ge = tg.project_genes(amap, o["sc"])
            hl = [h.lower() for h in held]
            pred = _dense(ge[:, hl].X)
            m["heldout_r"] = float(np.nanmean(metrics.pearson_per_gene(pred, _dense(spots[:, held].X))))
        return m

    return f


# --------------------------------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------------------------------
def scale_data(n_cells=100_000, n_spots=10_000, n_genes=1000, n_types=20, seed=0):
    import anndata as ad

    from stmap._core import make_circles, make_table, new_spatialdata

    g = np.random.default_rng(seed)
    prof = g.gamma(0.3, 1.0, size=(n_types, n_genes)) + 0.01
    prof /= prof.sum(1, keepdims=True)
    ty = g.integers(0, n_types, n_cells)
    lib = g.lognormal(np.log(2000), 0.4, n_cells)
    X = sparse.csr_matrix(g.poisson(prof[ty] * lib[:, None]).astype(np.float32))
    genes = [f"g{i}" for i in range(n_genes)]
    ref = ad.AnnData(X=X, obs=pd.DataFrame({TK: pd.Categorical([f"t{t}" for t in ty])}))
    ref.obs_names = [f"c{i}" for i in range(n_cells)]
    ref.var_names = genes
    comp = g.dirichlet(np.full(n_types, 0.3), size=n_spots)
    ncell = g.integers(5, 16, n_spots)
    mu = (comp * ncell[:, None] * 2000 * 0.5) @ prof
    Y = sparse.csr_matrix(g.poisson(mu).astype(np.float32))
    side = int(np.ceil(np.sqrt(n_spots)))
    xy = np.column_stack([np.arange(n_spots) % side, np.arange(n_spots) // side]) * 100.0
    spots = ad.AnnData(X=Y, obs=pd.DataFrame({"n_cells": ncell}, index=[f"s{i}" for i in range(n_spots)]))
    spots.var_names = genes
    spots.obsm["spatial"] = xy
    spots = make_table(spots, region="spot_circles", instance_ids=np.arange(n_spots))
    sdata = new_spatialdata(
        shapes={"spot_circles": make_circles(xy, 27.5)}, tables={"spots": spots}, units={"global": "um"}
    )
    truth = pd.DataFrame(comp, index=spots.obs_names, columns=[f"t{t}" for t in range(n_types)])
    return sdata, ref, truth


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", action="store_true", help="run only the 100k x 10k x 1k scale run")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--large-constrained", action="store_true", help="also Tangram constrained mode on synth_large")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="mapping", help="results/<name>.json")
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    # one setting for every method: on this shared 2-core machine, torch's intra-op threads cost more than they
    # give on small problems (Tangram and stmap alike)
    torch.set_num_threads(args.torch_threads)
    runs: list[Run] = []
    if args.scale:
        sdata, ref, truth = scale_data()
        spots = sdata.tables["spots"]
        for mode in ("regular", "greedy"):
            runs.append(
                measure(
                    "scale_100k_10k_1k",
                    f"stmap_{mode}",
                    lambda mode=mode: run_stmap(sdata, ref, mode=mode, cells_per_spot="n_cells", device=args.device),
                    score_stmap(truth, spots),
                )
            )
            print(runs[-1])
        report("mapping_scale", runs, ours="stmap_regular")
        return

    # composition on real cells, reference = other cells ----------------------------------------------------------
    sdata, ref = pbmc_55um()
    spots = sdata.tables["spots"]
    truth = spots.obsm["cell_type_fractions"]
    n_true = spots.obs["n_cells"].to_numpy().astype(float)
    ds = f"pbmc_55um ({spots.n_obs} spots, {ref.n_obs} ref cells)"
    runs.append(
        measure(ds, "stmap", lambda: run_stmap(sdata, ref, cells_per_spot="n_cells"), score_stmap(truth, spots))
    )
    runs.append(
        measure(
            ds,
            "stmap_estimate_n",
            lambda: run_stmap(sdata, ref, mean_cells_per_spot=float(n_true.mean())),
            score_stmap(truth, spots),
        )
    )
    runs.append(measure(ds, "nnls", lambda: run_nnls(sdata, ref), score_nnls(truth, spots, ref)))
    runs.append(measure(ds, "tangram_cells", lambda: run_tangram(sdata, ref), score_tangram(truth, spots)))
    runs.append(
        measure(
            ds,
            "tangram_constrained",
            lambda: run_tangram(sdata, ref, "constrained", n_cells=n_true),
            score_tangram(truth, spots),
        )
    )

    report(args.name, runs, higher_is_better=HIB)  # partial results survive an interrupted run

    # placement + held-out genes, synthetic tissue, reference = the cells --------------------------------------------
    sdata, ref = synth_40um()
    spots = sdata.tables["spots"]
    truth = spots.obsm["cell_type_fractions"]
    n_true = spots.obs["n_cells"].to_numpy().astype(float)
    held = [g for g in spots.var_names if "_r" in g][:12]
    train = [g for g in spots.var_names if g not in held]
    rt = ref.obs["spot_id"].astype(object).to_numpy()
    ds = f"synth_40um ({spots.n_obs} spots, {ref.n_obs} cells)"
    runs.append(
        measure(
            ds,
            "stmap",
            lambda: run_stmap(sdata, ref, mode="greedy", cells_per_spot="n_cells", genes=train),
            score_stmap(truth, spots, rt, held),
        )
    )
    runs.append(
        measure(
            ds,
            "stmap_regular",
            lambda: run_stmap(sdata, ref, cells_per_spot="n_cells", genes=train),
            score_stmap(truth, spots, None, held),
        )
    )
    runs.append(measure(ds, "nnls", lambda: run_nnls(sdata, ref, train), score_nnls(truth, spots, ref, held)))
    runs.append(
        measure(
            ds, "tangram_cells", lambda: run_tangram(sdata, ref, genes=train), score_tangram(truth, spots, rt, held)
        )
    )
    runs.append(
        measure(
            ds,
            "tangram_constrained",
            lambda: run_tangram(sdata, ref, "constrained", genes=train, n_cells=n_true),
            score_tangram(truth, spots, rt, held),
        )
    )

    report(args.name, runs, higher_is_better=HIB)  # partial results survive an interrupted run

    # real pair without truth: held-out genes ------------------------------------------------------------------------
    try:
        vis = st.datasets.spacexr("hippocampus_visium")
        hr = st.datasets.spacexr("hippocampus_dropseq_ref")
    except Exception as e:  # noqa: BLE001 - data not present
        print("hippocampus skipped:", e)
    else:
        t = vis.tables["hippocampus_visium"]
        keep = np.asarray(t.X.sum(1)).ravel() > 0
        del vis.tables["hippocampus_visium"]
        vis.tables["spots"] = t = t[keep].copy()
        shared = sorted(set(t.var_names) & set(hr.var_names))
        held = shared[::5]
        train = [g for g in shared if g not in held]
        t.obs["n_cells"] = 1  # unused, for the shared scorers
        ds = f"hippocampus ({t.n_obs} spots, {hr.n_obs} ref cells, {len(held)} held-out genes)"
        nan = pd.DataFrame(np.full((t.n_obs, 1), np.nan), columns=["x"])

        def heldout(f):
            def g(o):
                return {k: v for k, v in f(o).items() if k.startswith("heldout_r")}

            return g

        runs.append(
            measure(
                ds,
                "stmap",
                lambda: run_stmap(vis, hr, genes=train, platform_effect=True),
                heldout(score_stmap(nan, vis.tables["spots"], None, held)),
            )
        )
        runs.append(measure(ds, "nnls", lambda: run_nnls(vis, hr, train), heldout(score_nnls(nan, t, hr, held))))
        runs.append(
            measure(
                ds,
                "tangram_cells",
                lambda: run_tangram(vis, hr, genes=train),
                heldout(score_tangram(None, t, None, held)),
            )
        )

    report(args.name, runs, higher_is_better=HIB)  # partial results survive an interrupted run

    # speed at n*m >= 1e7 --------------------------------------------------------------------------------------------
    if not args.skip_large:
        sdata, ref = synth_large()
        spots = sdata.tables["spots"]
        truth = spots.obsm["cell_type_fractions"]
        n_true = spots.obs["n_cells"].to_numpy().astype(float)
        ds = f"synth_large ({spots.n_obs} spots, {ref.n_obs} ref cells, n*m={spots.n_obs * ref.n_obs:.1e})"
        runs.append(
            measure(ds, "stmap", lambda: run_stmap(sdata, ref, cells_per_spot="n_cells"), score_stmap(truth, spots))
        )
        runs.append(measure(ds, "nnls", lambda: run_nnls(sdata, ref), score_nnls(truth, spots, ref)))
        runs.append(measure(ds, "tangram_cells", lambda: run_tangram(sdata, ref), score_tangram(truth, spots)))
        if args.large_constrained:  # another ~15 min on 2 shared cores; cells mode already sets the speed bar
            runs.append(
                measure(
                    ds,
                    "tangram_constrained",
                    lambda: run_tangram(sdata, ref, "constrained", n_cells=n_true),
                    score_tangram(truth, spots),
                )
            )
    report(args.name, runs, higher_is_better=HIB)


if __name__ == "__main__":
    main()
