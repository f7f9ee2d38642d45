"""Greedy mode on small problems: every reference cell to one spot by its own counts.

Up to :data:`EM_LIMIT` cells x spots x genes, the spots' counts are deconvolved into the individual reference cells
(:func:`cell_deconvolution`: each spot a Poisson mixture of cells, each cell's shares over the spots summing to 1,
Tangram's objective under a Poisson likelihood) and ``s_ij = log(r_ij + 1e-6)`` with ``r_ij`` the cell's shares
summed over spot ``j`` and its first ring, its share in ``j`` itself weighted :data:`OWN_WEIGHT` (:func:`ring_shares`):
reading the shares as the cell's posterior over the spots, the probability that the cell lies within one ring of
``j``, plus a bonus for ``j`` itself. Cells the counts cannot tell apart (identical or near-identical profiles, e.g.
one state of a type that recurs in a region) spread their shares over several spots; the spot that gathers most of
them within its ring is a better bet than the single largest share, which such cells hold by chance. The price is
the exact spot, right somewhat less often (benchmarks/mapping_quality.py).

Larger problems score each cell of type ``t`` against spot ``j`` by the multinomial log-likelihood of its counts
under the part of the spot's counts that the composition fit gives to type ``t`` (the EM split
``y_jg w_jt p_tg / mu_jg``, shrunk towards the type's mean profile by one pseudo-count), plus the log of the cells of
type ``t`` the fit expects in the spot (a soft composition prior instead of hard per-type quotas):
``s_ij = sum_g x_ig log q_jtg + log(E_jt + 0.01)``.

Either way the spots' capacities are their cell numbers scaled to the reference (no per-type slots), so a cell
whose type the fit misjudged can still go where its counts fit, and cells that vary within their type in space go
where their own state fits. The assignment is exact (linear sum assignment) when small, greedy on top-``k``
candidates otherwise (:func:`stmap.kernels.capacity_assign`).

The confidence of a placement is the probability of the chosen spot under the capacities: an entropic transport
plan (Sinkhorn) of ``exp(s / tau)`` on each cell's candidate spots, rows summing to 1 and columns to the spots'
capacities, so a cell competing with better-fitting cells for its best spot is not sure of it. ``tau`` is 1 for the
deconvolution's shares (already probabilities); for the likelihood scores it is the quasi-Poisson dispersion of the
composition fit (the spots' Pearson chi-square per degree of freedom: counts more variable than Poisson make the
likelihood overconfident) times :data:`TEMPERATURE_FACTOR`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stmap.kernels._assign import capacity_assign

from ._place import Placement

if TYPE_CHECKING:
    from ._composition import Composition
    from ._prepare import MappingInputs

__all__ = ["place_greedy", "PSEUDO_COUNT", "PRIOR_FLOOR"]

#: Pseudo-count of the type's mean profile added to a spot's split counts (chosen on seed 2 of the benchmark's
#: simulations, benchmarks/mapping_quality.py; reported seeds differ).
PSEUDO_COUNT = 1.0
#: Floor added to the expected cells of a type in a spot before its log (a type the fit finds absent stays possible).
PRIOR_FLOOR = 1e-2
#: Factor on the dispersion in the confidence's temperature (chosen on seed 2 of benchmarks/mapping_quality.py).
TEMPERATURE_FACTOR = 10.0
#: Cell-level deconvolution up to this many cells x spots x genes (its iterations cost that much each).
EM_LIMIT = 5e8
#: Iterations of the cell-level deconvolution (chosen on seeds 2 and 6 of benchmarks/mapping_quality.py).
EM_ITER = 200
#: Weight of a cell's share in the spot itself in its ring shares, against 1 for each spot of the first ring: the
#: placement maximises the expected cells within one ring of their true spot plus ``OWN_WEIGHT - 1`` x those in it
#: (1 alone ties a spot with its neighbours and gives up the exact spot; chosen on seeds 10-14 of
#: benchmarks/mapping_quality.py, PBMC: ring accuracy 1.18 / 1.17 / 1.16 x Tangram's and exact-spot accuracy
#: 0.09 / 0.39 / 0.46 at 1 / 1.2 / 1.5, 0.52 with the former ring mean).
OWN_WEIGHT = 1.5
#: Above this many cells x spots the scores are computed per block instead of held at once.
_DENSE_SCORES = 2e7


class _Scores:
    """``s_ij`` for blocks of cells (rows) and fitted spots (columns), one type at a time."""

    def __init__(self, inp: MappingInputs, comp: Composition, n_spot: np.ndarray) -> None:
        self.inp, self.comp = inp, comp
        self.Y = inp.Y.toarray().astype(np.float64)
        self.Ps = comp.prof * comp.gene_scale[None, :]
        self.mu = np.maximum(comp.weights @ self.Ps, 1e-12)
        E = comp.cells_eq / np.maximum(comp.cells_eq.sum(axis=1, keepdims=True), 1e-300)
        self.logE = np.log(E * n_spot[:, None] + PRIOR_FLOOR)
        pbar = comp.prof.mean(axis=0)
        self.base = 0.9 * comp.prof + 0.1 * pbar[None, :] + 1e-9  # never a zero probability
        self.base /= self.base.sum(axis=1, keepdims=True)
        self.full: np.ndarray | None = None
        n, m = inp.codes.size, self.Y.shape[0]
        if float(n) * m <= _DENSE_SCORES:
            self.full = self._block(np.arange(n), np.arange(m))

    def _log_q(self, t: int, c: np.ndarray) -> np.ndarray:
        Yt = self.Y[c] * (self.comp.weights[c, t : t + 1] * self.Ps[t][None, :]) / self.mu[c]
        Q = (Yt + PSEUDO_COUNT * self.base[t][None, :]) / (Yt.sum(axis=1, keepdims=True) + PSEUDO_COUNT)
        return np.log(Q)

    def _block(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        out = np.empty((r.size, c.size), dtype=np.float64)
        codes = self.inp.codes[r]
        for t in np.unique(codes):
            rows = np.flatnonzero(codes == t)
            Xt = self.inp.Xg[r[rows]]
            out[rows] = np.asarray(Xt @ self._log_q(int(t), c).T) + self.logE[c, t][None, :]
        return out

    def __call__(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        if self.full is not None:
            return self.full[np.ix_(r, c)]
        return self._block(r, c)


def dispersion(inp: MappingInputs, comp: Composition) -> float:
    """Quasi-Poisson dispersion of the composition fit: Pearson chi-square per degree of freedom (at least 1)."""
    Ps = comp.prof * comp.gene_scale[None, :]
    mu = np.maximum(comp.weights @ Ps, 1e-12)
    Y = inp.Y.toarray()
    m, g = Y.shape
    chi2 = float((((Y - mu) ** 2) / mu).sum())
    return max(chi2 / max(m * (g - inp.n_types), 1), 1.0)


class _Fixed:
    """Scores held as one dense ``cells x spots`` array (the cell-level deconvolution's)."""

    def __init__(self, full: np.ndarray) -> None:
        self.full = full

    def __call__(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return self.full[np.ix_(r, c)]


def cell_deconvolution(inp: MappingInputs, n_iter: int = EM_ITER) -> np.ndarray:
    """``(cells, spots)`` share of each reference cell in each fitted spot (cell-level Poisson deconvolution).

    The spots' counts are Poisson mixtures of the individual cells (EM, each cell's shares summing to 1, one capture
    factor per spot): the objective of Tangram's cell mode (every spot explained by the cells mapped to it, every
    cell spread over the spots) under a Poisson likelihood; cells of one type compete for the spots their own counts
    explain.
    """
    Y = inp.Y.toarray().astype(np.float64)
    X = inp.Xg.toarray().astype(np.float64)
    L = X.sum(axis=1)
    B = np.full((X.shape[0], Y.shape[0]), 1.0 / Y.shape[0])
    for _ in range(n_iter):
        P = B.T @ X
        c = Y.sum(axis=1) / np.maximum(P.sum(axis=1), 1e-12)
        mu = np.maximum(c[:, None] * P, 1e-12)
        B *= (c[:, None] * ((Y / mu) @ X.T)).T / L[:, None]
        B /= np.maximum(B.sum(axis=1, keepdims=True), 1e-300)
    return B


def ring_shares(inp: MappingInputs, B: np.ndarray) -> np.ndarray:
    """:data:`OWN_WEIGHT` x ``B`` plus its sum over each spot's first ring (spots within 1.2 grid steps).

    Reading the shares as the cell's posterior over the spots, column ``j`` is the probability of lying within one
    ring of spot ``j``, plus ``OWN_WEIGHT - 1`` x the probability of lying in ``j`` itself.
    """
    from scipy import sparse
    from scipy.spatial import cKDTree

    try:
        xy = np.asarray(inp.ctx.coords, dtype=np.float64)[inp.fitted]
    except (KeyError, ValueError):  # a plain AnnData without coordinates: no ring
        return B
    if xy.shape[0] < 3:
        return B
    k = min(7, xy.shape[0])
    d, idx = cKDTree(xy).query(xy, k=k)
    step = float(np.median(d[:, 1]))
    ok = d[:, 1:] <= 1.2 * step
    rows = np.repeat(np.arange(xy.shape[0]), k - 1)[ok.ravel()]
    W = sparse.csr_matrix((np.ones(rows.size), (rows, idx[:, 1:].ravel()[ok.ravel()])), shape=(xy.shape[0],) * 2)
    W = W.maximum(W.T)  # a symmetric ring (the k-nearest query can miss a neighbour at a tie)
    return OWN_WEIGHT * B + np.asarray(W @ B.T).T


def place_greedy(
    inp: MappingInputs, comp: Composition, n_spot: np.ndarray, cap: np.ndarray, *, n_candidates: int
) -> tuple[Placement, np.ndarray]:
    """Every reference cell into one fitted spot (capacities ``cap`` sum to the cells), and each one's confidence.

    ``n_spot``: the cells in each fitted spot (the composition prior's scale). Problems of at most
    :data:`EM_LIMIT` cells x spots x genes (and ``_DENSE_SCORES`` cells x spots) take the cell-level deconvolution
    (:func:`cell_deconvolution`, its shares summed over each spot's ring), larger ones the per-cell likelihood
    scores.
    """
    n = inp.codes.size
    score: _Scores | _Fixed
    sure: _Scores | _Fixed  # the confidence's scores: the shares of the spot itself (not its ring)
    raw = None
    m = inp.Y.shape[0]
    if float(n) * m * len(inp.genes) <= EM_LIMIT and float(n) * m <= _DENSE_SCORES:
        B = cell_deconvolution(inp)
        raw = np.log(B + 1e-6)
        score, sure, tau = _Fixed(np.log(ring_shares(inp, B) + 1e-6)), _Fixed(raw), 1.0
    else:
        score = sure = _Scores(inp, comp, n_spot.astype(np.float64))
        tau = TEMPERATURE_FACTOR * dispersion(inp, comp)
    rows, cols, (cr, cc, cs) = capacity_assign(score, np.ones(n, dtype=np.int64), cap, k=n_candidates)
    spot_of = np.full(n, -1, dtype=np.int64)
    spot_of[rows] = cols
    cs_sure = cs if raw is None else raw[cr, cc]
    conf = _confidence(spot_of, cap, cr, cc, cs_sure, sure, tau)
    order = np.lexsort((rows, cols))
    pl = Placement(rows[order], inp.fitted[cols[order]], cr, inp.fitted[cc], cs)
    return pl, conf


def _segment_lse(x: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    """``log(sum(exp(x)))`` within each segment ``seg`` (``-inf`` for an empty one)."""
    top = np.full(n, -np.inf)
    np.maximum.at(top, seg, x)
    safe = np.where(np.isfinite(top), top, 0.0)
    acc = np.zeros(n)
    np.add.at(acc, seg, np.exp(x - safe[seg]))
    with np.errstate(divide="ignore"):
        return np.log(acc) + safe


def _confidence(
    spot_of: np.ndarray,
    cap: np.ndarray,
    cr: np.ndarray,
    cc: np.ndarray,
    cs: np.ndarray,
    score: _Scores | _Fixed,
    tau: float,
    n_iter: int = 100,
) -> np.ndarray:
    """Probability of each cell's spot under the capacities (entropic transport of ``s / tau``, Sinkhorn).

    The plan lives on the candidate edges and each cell's own spot; its rows sum to 1, its columns to the capacities.
    """
    n = spot_of.size
    own = np.empty(n)
    if score.full is not None:
        own[:] = score.full[np.arange(n), spot_of]
    else:
        for j in np.unique(spot_of):
            r = np.flatnonzero(spot_of == j)
            own[r] = score(r, np.array([j]))[:, 0]
    keep = cc != spot_of[cr]
    er = np.concatenate([np.arange(n), cr[keep]])
    ec = np.concatenate([spot_of, cc[keep]])
    x = np.concatenate([own, cs[keep]]) / tau
    m = cap.size
    log_cap = np.log(np.maximum(cap.astype(np.float64), 1e-300))
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(n_iter):
        f = -_segment_lse(x + g[ec], er, n)
        g = log_cap - _segment_lse(x + f[er], ec, m)
        g[~np.isfinite(g)] = 0.0
    f = -_segment_lse(x + g[ec], er, n)  # rows last: each cell's probabilities sum to 1
    return np.minimum(np.exp(x[:n] + f + g[spot_of]), 1.0)
