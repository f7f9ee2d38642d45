"""The 3D spot graph on arrays: disc overlap (closed-form IoU) and feature similarity across sections, kNN within."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from ..._core import StmapInputError
from ..._core._params import Instance, Interval, Options, validate_params

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["disc_iou", "graph_arrays"]


def disc_iou(d: ArrayLike, r1: ArrayLike, r2: ArrayLike) -> np.ndarray:
    """Intersection over union of two discs, in closed form (vectorised, broadcasting).

    The intersection of two discs of radii ``r1``, ``r2`` whose centres are ``d`` apart is the lens
    ``r1^2 acos((d^2 + r1^2 - r2^2) / (2 d r1)) + r2^2 acos((d^2 + r2^2 - r1^2) / (2 d r2))
    - sqrt((-d + r1 + r2)(d + r1 - r2)(d - r1 + r2)(d + r1 + r2)) / 2``; it is exactly 0 when
    ``d >= r1 + r2`` and the smaller disc when one contains the other (``d <= |r1 - r2|``).

    Parameters
    ----------
    d
        Centre distances (``>= 0``).
    r1
        Radii of the first discs (``> 0``), broadcastable with ``d``.
    r2
        Radii of the second discs (``> 0``), broadcastable with ``d``.

    Returns
    -------
    IoU in ``[0, 1]``, the broadcast shape of the inputs.

    Raises
    ------
    StmapInputError
        A radius that is not positive or a negative distance.

    See Also
    --------
    :func:`stmap.pp.graph_arrays`
        Joins the spots of neighbouring sections by this overlap.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> st.pp.disc_iou(np.array([0.0, 50.0, 100.0]), 50.0, 50.0).round(3)  # two discs of radius 50
    array([1.   , 0.243, 0.   ])
    """
    d, r1, r2 = np.broadcast_arrays(
        np.asarray(d, dtype=float), np.asarray(r1, dtype=float), np.asarray(r2, dtype=float)
    )
    if (r1 <= 0).any() or (r2 <= 0).any():
        raise StmapInputError("Disc radii must be positive.")
    if (d < 0).any():
        raise StmapInputError("Centre distances must be non-negative.")
    a1, a2 = np.pi * r1**2, np.pi * r2**2
    inter = np.zeros(d.shape, dtype=float)
    contain = d <= np.abs(r1 - r2)
    inter[contain] = np.minimum(a1, a2)[contain]
    lens = ~contain & (d < r1 + r2)
    if lens.any():
        dd, p, q = d[lens], r1[lens], r2[lens]
        c1 = np.clip((dd**2 + p**2 - q**2) / (2 * dd * p), -1.0, 1.0)
        c2 = np.clip((dd**2 + q**2 - p**2) / (2 * dd * q), -1.0, 1.0)
        k = (-dd + p + q) * (dd + p - q) * (dd - p + q) * (dd + p + q)
        inter[lens] = p**2 * np.arccos(c1) + q**2 * np.arccos(c2) - 0.5 * np.sqrt(np.maximum(k, 0.0))
    union = a1 + a2 - inter
    return np.clip(inter / union, 0.0, 1.0)


def _layer_pairs(n_layers: int, layers_apart: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n_layers) for b in range(a + 1, min(n_layers, a + layers_apart + 1))]


def _empty(n: int) -> sparse.csr_matrix:
    return sparse.csr_matrix((n, n), dtype=np.float32)


def _nearest_pairs(tree_b, ia: np.ndarray, ib: np.ndarray, xy: np.ndarray, k: int, rmax: float) -> tuple:
    """For each spot of ``ia``: its ``k`` nearest spots of ``ib`` (``tree_b``) within ``rmax``, as global ids."""
    if len(ib) == 0 or len(ia) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    kk = min(int(k), len(ib))
    dist, j = tree_b.query(xy[ia], k=kk, distance_upper_bound=rmax)
    dist, j = dist.reshape(len(ia), kk), j.reshape(len(ia), kk)
    ok = np.isfinite(dist)
    return np.broadcast_to(ia[:, None], j.shape)[ok], ib[j[ok]], dist[ok]


def _capped_pairs(trees: dict, idx: dict, ca, cb, xy: np.ndarray, k: int, rmax: float) -> tuple:
    """Pairs of sections ``ca``, ``cb`` where either spot is among the other's ``k`` nearest (each pair once)."""
    i1, j1, d1 = _nearest_pairs(trees[cb], idx[ca], idx[cb], xy, k, rmax)
    j2, i2, d2 = _nearest_pairs(trees[ca], idx[cb], idx[ca], xy, k, rmax)
    i, j, d = np.concatenate([i1, i2]), np.concatenate([j1, j2]), np.concatenate([d1, d2])
    _, first = np.unique(i.astype(np.int64) * len(xy) + j, return_index=True)
    return i[first], j[first], d[first]


def _overlap_graph(
    xy: np.ndarray, codes: np.ndarray, radius: np.ndarray, layers_apart: int, min_iou: float, k: int | None = None
) -> sparse.csr_matrix:
    from scipy.spatial import cKDTree

    n = len(xy)
    rows, cols, vals = [], [], []
    layers = np.unique(codes)
    idx = {c: np.flatnonzero(codes == c) for c in layers}
    trees = {c: cKDTree(xy[idx[c]]) for c in layers}
    for a, b in _layer_pairs(len(layers), layers_apart):
        ca, cb = layers[a], layers[b]
        ia, ib = idx[ca], idx[cb]
        rmax = float(radius[ia].max() + radius[ib].max())
        if k is not None:  # KD-tree k-nearest queries from both sides: at most 2 k pairs per spot, O(n log n)
            i, j, dist = _capped_pairs(trees, idx, ca, cb, xy, k, rmax)
        else:
            pairs = trees[ca].sparse_distance_matrix(trees[cb], rmax, output_type="ndarray")
            i, j, dist = ia[pairs["i"]], ib[pairs["j"]], pairs["v"]
        if len(i) == 0:
            continue
        iou = disc_iou(dist, radius[i], radius[j])
        keep = (iou > min_iou) & (iou > 0)
        rows.append(i[keep])
        cols.append(j[keep])
        vals.append(iou[keep])
    if not rows:
        return _empty(n)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float32)
    m = sparse.coo_matrix((v, (r, c)), shape=(n, n)).tocsr()
    return (m + m.T).tocsr()  # each unordered pair was found once (a < b): the sum is the symmetric graph


def _unit_rows(features: np.ndarray, standardize: bool) -> np.ndarray:
    """Rows scaled to unit length (after centring and scaling each column with ``standardize``)."""
    f = np.asarray(features, dtype=np.float64)
    if standardize:
        sd = f.std(0)
        f = (f - f.mean(0)) / np.where(sd > 0, sd, 1.0)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(norm > 0, norm, 1.0)


#: Largest block of similarities computed at once (rows x candidates); larger problems merge column blocks.
_SIM_BLOCK = 2**24


def _top_k(f: np.ndarray, rows_i: np.ndarray, near: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows_i``: the ``kk`` most similar of ``near`` (positions into ``near``) and their similarity."""
    if len(rows_i) * len(near) > _SIM_BLOCK and kk < len(near):
        return _top_k_blocked(f, rows_i, near, kk)
    sim = f[rows_i] @ f[near].T
    if kk >= len(near):  # every candidate
        top = np.tile(np.arange(kk), (len(rows_i), 1))
        return top, np.take_along_axis(sim, top, axis=1)
    top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
    return top, np.take_along_axis(sim, top, axis=1)


def _top_k_blocked(f: np.ndarray, rows_i: np.ndarray, near: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_top_k` over blocks of candidates, keeping a running top ``kk`` (memory: rows x block)."""
    fr = f[rows_i]
    step = max(kk, _SIM_BLOCK // max(len(rows_i), 1))
    best_i = np.zeros((len(rows_i), 0), dtype=np.int64)
    best_v = np.zeros((len(rows_i), 0))
    for a in range(0, len(near), step):
        sim = fr @ f[near[a : a + step]].T
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + sim.shape[1]), sim.shape)], axis=1)
        cand_v = np.concatenate([best_v, sim], axis=1)
        if cand_v.shape[1] > kk:
            top = np.argpartition(-cand_v, kk - 1, axis=1)[:, :kk]
            cand_i, cand_v = np.take_along_axis(cand_i, top, axis=1), np.take_along_axis(cand_v, top, axis=1)
        best_i, best_v = cand_i, cand_v
    return best_i, best_v


def _similarity_graph(
    features: np.ndarray, codes: np.ndarray, k: int, layers_apart: int, standardize: bool, block: int = 2048
) -> sparse.csr_matrix:
    f = _unit_rows(features, standardize)
    n = len(f)
    layers = np.unique(codes)
    pos = np.searchsorted(layers, codes)
    rows, cols, vals = [], [], []
    for li in range(len(layers)):
        ia = np.flatnonzero(pos == li)
        near = np.flatnonzero((np.abs(pos - li) <= layers_apart) & (pos != li))
        if len(near) == 0 or len(ia) == 0:
            continue
        kk = min(k, len(near))
        for s in range(0, len(ia), block):
            rows_i = ia[s : s + block]
            top, sv = _top_k(f, rows_i, near, kk)
            rows.append(np.repeat(rows_i, kk))
            cols.append(near[top].ravel())
            vals.append(sv.ravel())
    if not rows:
        return _empty(n)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    keep = v > 0  # a spot dissimilar to (negatively correlated with) all candidates gets no similarity edge
    m = sparse.coo_matrix((v[keep].astype(np.float32), (r[keep], c[keep])), shape=(n, n)).tocsr()
    return m.maximum(m.T).tocsr()


def _spatial_graph(xy: np.ndarray, codes: np.ndarray, k: int, weights: str) -> sparse.csr_matrix:
    from scipy.spatial import cKDTree

    n = len(xy)
    rows, cols, vals = [], [], []
    for c in np.unique(codes):
        ia = np.flatnonzero(codes == c)
        kk = min(k, len(ia) - 1)
        if kk < 1:
            continue
        dist, j = cKDTree(xy[ia]).query(xy[ia], k=kk + 1)
        dist, j = dist[:, 1:], j[:, 1:]  # drop self
        if weights == "gaussian":
            sigma = float(np.median(dist[:, 0])) or 1.0
            w = np.exp(-(dist**2) / (2 * sigma**2))
        else:
            w = np.ones_like(dist)
        rows.append(np.repeat(ia, kk))
        cols.append(ia[j].ravel())
        vals.append(w.ravel())
    if not rows:
        return _empty(n)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float32)
    m = sparse.coo_matrix((v, (r, c)), shape=(n, n)).tocsr()
    return m.maximum(m.T).tocsr()


def _checked_arrays(
    xyz: ArrayLike, section_codes: ArrayLike, radius: float | ArrayLike, features: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``(xy, codes, radius per spot, features or None)``, checked for shape and finiteness."""
    xyz = np.asarray(xyz, dtype=float)
    if xyz.ndim != 2 or xyz.shape[1] not in (2, 3):
        raise StmapInputError(f"xyz must be an (n, 2) or (n, 3) array, got shape {xyz.shape}.")
    n = len(xyz)
    xy = xyz[:, :2]
    if not np.isfinite(xy).all():
        raise StmapInputError("xyz contains NaN or infinite coordinates; drop or fill those spots first.")
    codes = np.asarray(section_codes)
    if codes.shape != (n,):
        raise StmapInputError(f"section_codes must have one entry per spot ({n}), got shape {codes.shape}.")
    r = np.broadcast_to(np.asarray(radius, dtype=float), (n,)).astype(float)
    if not (np.isfinite(r).all() and (r > 0).all()):
        raise StmapInputError("radius must be positive and finite for every spot.")
    if features is None:
        return xy, codes, r, None
    f = np.asarray(features)
    if f.ndim != 2 or len(f) != n:
        raise StmapInputError(f"features must be an (n, f) array with n = {n} rows, got shape {f.shape}.")
    if not np.isfinite(f).all():
        raise StmapInputError("features contain NaN or infinite values.")
    return xy, codes, r, f


@validate_params(
    k_similar=Interval(int, 1, None),
    k_spatial=Interval(int, 0, None),
    layers_apart=Interval(int, 1, None),
    min_iou=Interval(float, 0, 1, "left"),
    max_overlaps=[Interval(int, 1, None), None],
    spatial_weights=Options({"binary", "gaussian"}),
    standardize=Instance((bool,)),
)
def graph_arrays(
    xyz: ArrayLike,
    section_codes: ArrayLike,
    radius: float | ArrayLike,
    features: ArrayLike | None = None,
    *,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int = 1,
    min_iou: float = 0.0,
    max_overlaps: int | None = None,
    spatial_weights: Literal["binary", "gaussian"] = "binary",
    standardize: bool = True,
) -> dict[str, sparse.csr_matrix]:
    """The 3D spot graph on arrays: disc overlap and feature similarity across sections, kNN within sections.

    The array-level core of :func:`stmap.pp.spot_graph_3d`.

    Parameters
    ----------
    xyz
        ``(n, 2)`` or ``(n, 3)`` aligned spot centres; only ``x, y`` are used (sections are told apart by
        ``section_codes``).
    section_codes
        ``(n,)`` integer layer of each spot; layers are ordered by their code (e.g. ``obs['section'].cat.codes``).
    radius
        Spot radius (one value or one per spot), in the units of ``xyz``.
    features
        ``(n, f)`` features (e.g. histology) for the similarity part; ``None`` skips it.
    k_similar
        Most similar spots kept per spot (among spots of the other sections within ``layers_apart``).
    k_spatial
        Nearest neighbours per spot within its own section (``0``: an empty spatial part).
    layers_apart
        Sections at most this many positions apart (in the order of the codes) are joined by overlap/similarity.
    min_iou
        Overlap edges need an IoU above this (and above 0).
    max_overlaps
        Overlap edges of a spot with each other section: only those to its ``max_overlaps`` nearest spots there (the
        largest overlaps for equal radii), kept when either end has the other among its nearest (so the graph stays
        symmetric; on average at most ``2 max_overlaps`` per spot and section). Bounds the edges per spot of
        densely tiled bins (e.g. Visium HD) with large discs; found by KD-tree k-nearest queries, O(n log n).
        ``None``: every overlap.
    spatial_weights
        ``'binary'``: every kNN edge weighs 1; ``'gaussian'``: ``exp(-d^2 / (2 s^2))`` with ``s`` the section's
        median nearest-neighbour distance.
    standardize
        Centre and scale each feature column before the cosine similarity (otherwise all-positive features, such as
        mean colours, are all nearly parallel).

    Returns
    -------
    ``{'overlap': ..., 'spatial': ...}`` plus ``'similarity'`` when ``features`` is given: symmetric
    :class:`scipy.sparse.csr_matrix` ``(n, n)`` (float32, no diagonal). ``overlap``: disc IoU between spots of
    different sections at most ``layers_apart`` apart (found with a KD-tree radius query of ``r_i + r_j``; never
    dense). ``similarity``: cosine similarity of the (standardised) features to the ``k_similar`` most similar spots
    of the other sections within ``layers_apart``, kept where positive, symmetrised by the maximum.
    ``spatial``: ``k_spatial``-nearest-neighbour graph within each section, symmetrised by the maximum.

    Raises
    ------
    StmapInputError
        Arrays of the wrong shape, NaN/infinite coordinates or features, radii that are not positive, or a
        parameter out of its range.

    See Also
    --------
    :func:`stmap.pp.spot_graph_3d`
        The same graph on a stacked table.
    :func:`stmap.pp.disc_iou`
        The overlap of two discs.

    Examples
    --------
    Two sections: spots 0 and 1 lie on each other, spot 2 is next to spot 1 in its section:

    >>> import numpy as np
    >>> import stmap as st
    >>> xy = np.array([[0.0, 0.0], [0.0, 0.0], [60.0, 0.0]])
    >>> graph = st.pp.graph_arrays(xy, section_codes=np.array([0, 1, 1]), radius=50.0)
    >>> graph["overlap"].toarray().astype(float).round(3).tolist()  # across sections
    [[0.0, 1.0, 0.166], [1.0, 0.0, 0.0], [0.166, 0.0, 0.0]]
    >>> graph["spatial"].toarray().tolist()  # within sections
    [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    xy, codes, r, f = _checked_arrays(xyz, section_codes, radius, features)
    k_max = None if max_overlaps is None else int(max_overlaps)
    out = {"overlap": _overlap_graph(xy, codes, r, int(layers_apart), float(min_iou), k_max)}
    if f is not None:
        out["similarity"] = _similarity_graph(f, codes, int(k_similar), int(layers_apart), standardize)
    out["spatial"] = _spatial_graph(xy, codes, int(k_spatial), spatial_weights) if k_spatial > 0 else _empty(len(xy))
    return out
