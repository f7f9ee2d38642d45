"""Register sections / point sets: similarity or affine transforms from landmarks or point clouds (ICP).

Transforms are ``(d + 1, d + 1)`` homogeneous matrices acting on ``(x, y[, z], 1)`` column vectors (the 2D case is
the 3x3 convention of :mod:`stmap._core`). They are written as spatialdata transformations to a (new) coordinate
system: nothing is resampled.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from .._core import Results, StmapInputError, TableContext, inject_docs, is_spatialdata, resolve_points, unknown_key
from .._core import _logging as logg
from .._core._constants import Key
from .._core._params import Instance, Interval, Options, validate_params

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["fit_transform", "icp", "apply_transform", "register", "align_sections"]

Kind = Literal["translation", "rigid", "similarity", "affine"]
_KINDS = ("translation", "rigid", "similarity", "affine")
_MIN_POINTS = {"translation": 1, "rigid": 2, "similarity": 2, "affine": 3}


_ARRAY = (np.ndarray, list, tuple)
_ICP_KWARGS = ("n_starts", "trim", "max_iter", "tol", "max_points", "seed", "warn")


def apply_transform(matrix: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Apply a ``(d + 1, d + 1)`` homogeneous matrix to ``(n, d)`` coordinates.

    Parameters
    ----------
    matrix
        Homogeneous transform acting on ``(x, y[, z], 1)`` column vectors.
    coords
        Points ``(n, d)``.

    Returns
    -------
    The transformed ``(n, d)`` coordinates.

    See Also
    --------
    :func:`stmap.pp.fit_transform`
        Fits such a matrix to corresponding points.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> shift = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, -5.0], [0.0, 0.0, 1.0]])
    >>> st.pp.apply_transform(shift, np.array([[0.0, 0.0], [1.0, 2.0]]))
    array([[10., -5.],
           [11., -3.]])
    """
    m = np.asarray(matrix, dtype=float)
    c = np.asarray(coords, dtype=float)
    return c @ m[:-1, :-1].T + m[:-1, -1]


@validate_params(kind=Options(_KINDS), weights=[Instance(_ARRAY), None])
def fit_transform(
    source: np.ndarray,
    target: np.ndarray,
    *,
    kind: Kind = "similarity",
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Least-squares transform mapping ``source`` points onto corresponding ``target`` points (2D or 3D).

    ``'rigid'`` and ``'similarity'`` use the closed-form Umeyama solution (proper rotation, no reflection; uniform
    scale for ``'similarity'``); ``'affine'`` solves the linear least squares; ``'translation'`` matches the means.

    Parameters
    ----------
    source
        ``(n, d)`` points to move (``d`` = 2 or 3).
    target
        ``(n, d)`` points they correspond to, row by row.
    kind
        ``'translation'``, ``'rigid'``, ``'similarity'`` or ``'affine'``.
    weights
        Non-negative weight per pair.

    Returns
    -------
    The ``(d + 1, d + 1)`` homogeneous matrix ``M`` minimising ``sum_i w_i |M source_i - target_i|^2``.

    Raises
    ------
    StmapInputError
        Mismatched shapes, too few pairs for ``kind``, non-finite values, degenerate (collinear) points.

    See Also
    --------
    :func:`stmap.pp.icp`
        The same without known correspondences.
    :func:`stmap.pp.register`
        Registers SpatialData elements with landmarks or by ICP.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> rng = np.random.default_rng(0)
    >>> fixed = rng.uniform(0, 100, size=(200, 2))
    >>> angle = np.deg2rad(20)
    >>> rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    >>> moving = (fixed - 50) @ rotation.T + [10.0, -5.0]  # the same points, rotated and shifted
    >>> matrix = st.pp.fit_transform(moving, fixed, kind="rigid")
    >>> matrix.shape, np.allclose(st.pp.apply_transform(matrix, moving), fixed)
    ((3, 3), True)
    """
    src = np.asarray(source, dtype=float)
    dst = np.asarray(target, dtype=float)
    if src.ndim != 2 or src.shape != dst.shape or src.shape[1] not in (2, 3):
        raise StmapInputError(
            f"source and target must be matching (n, 2) or (n, 3) arrays, got {src.shape}, {dst.shape}."
        )
    n, d = src.shape
    need = _MIN_POINTS[kind] + (1 if kind == "affine" and d == 3 else 0)
    if n < need:
        raise StmapInputError(f"A {kind} transform in {d}D needs at least {need} point pairs, got {n}.")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise StmapInputError("source/target coordinates contain NaN or infinite values.")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise StmapInputError("weights must be one non-negative value per pair, not all zero.")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    m = np.eye(d + 1)
    if kind == "translation":
        m[:d, d] = mu_d - mu_s
        return m
    if kind == "affine":
        a = (xs * w[:, None]).T @ xs
        if np.linalg.matrix_rank(a) < d:
            raise StmapInputError("The source points are degenerate (collinear/coplanar): an affine fit is undefined.")
        lin = np.linalg.solve(a, (xs * w[:, None]).T @ xd).T
    else:
        cov = (xd * w[:, None]).T @ xs  # target x source
        u, sv, vt = np.linalg.svd(cov)
        s = np.ones(d)
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            s[-1] = -1.0
        rot = u @ np.diag(s) @ vt
        var_s = float((w * (xs**2).sum(1)).sum())
        if var_s <= 0:
            raise StmapInputError("The source points all coincide: the transform is undefined.")
        scale = float((sv * s).sum() / var_s) if kind == "similarity" else 1.0
        lin = scale * rot
    m[:d, :d] = lin
    m[:d, d] = mu_d - lin @ mu_s
    return m


# a final ICP residual above this fraction of the fixed points' median nearest-neighbour spacing is "poor": points
# that correspond land much closer (noise), points placed at random land about one spacing away
_POOR_RESIDUAL = 0.6


def _linear(a: np.ndarray) -> np.ndarray:
    """The homogeneous matrix of a linear ``(d, d)`` map."""
    d = a.shape[0]
    m = np.eye(d + 1)
    m[:d, :d] = a
    return m


def _nn_spacing(points: np.ndarray) -> float:
    """Median distance of each point to its nearest other point (duplicates skipped)."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=2)
    d = dist[:, 1]
    d = d[d > 0]
    return float(np.median(d)) if len(d) else 0.0


def _start_rotations(d: int, n_starts: int) -> list[np.ndarray]:
    if d == 2:
        angles = np.linspace(0.0, 2 * np.pi, max(1, n_starts), endpoint=False)
        return [np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in angles]
    rots = [np.eye(3)]
    for ax in range(3):  # 180 degrees about each axis
        r = -np.eye(3)
        r[ax, ax] = 1.0
        rots.append(r)
    return rots[: max(1, n_starts)]


@validate_params(
    kind=Options(_KINDS),
    init=[Instance(_ARRAY), None],
    n_starts=Interval(int, 1, None),
    trim=Interval(float, 0, 1, "right"),
    max_iter=Interval(int, 1, None),
    tol=Interval(float, 0, None),
    max_points=[Interval(int, 3, None), None],
    seed=Interval(int, 0, None),
    warn=Instance((bool,)),
)
def icp(
    moving: np.ndarray,
    fixed: np.ndarray,
    *,
    kind: Kind = "similarity",
    init: np.ndarray | None = None,
    n_starts: int = 8,
    trim: float = 0.9,
    max_iter: int = 100,
    tol: float = 1e-9,
    max_points: int | None = 20_000,
    seed: int = 0,
    warn: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Register a point cloud onto another by trimmed iterative closest points (2D or 3D).

    Each iteration pairs every moving point with its nearest fixed point and refits ``kind`` by least squares
    (:func:`fit_transform`); after convergence on all pairs, a second round keeps only the ``trim`` fraction of
    closest pairs in each fit (robust to partial overlap and outliers).
    Without ``init`` the clouds' centroids (and, for ``'similarity'``/``'affine'``, spreads) are matched first and
    ``n_starts`` initial rotations are tried; the one with the lowest trimmed RMS distance wins.
    ``'similarity'`` and ``'affine'`` fit a rigid transform first (at the start's scale), then refine it with the
    free scale / shape, keeping whichever has the lower residual: a free scale fitted while the rotation is still
    off shrinks the moving cloud into a wrong minimum (a 17 degree rotation came back as 41 degrees at scale 0.80).
    A final residual above 0.6 times the fixed points' median nearest-neighbour spacing warns: where both clouds
    hold the same points a right fit lands far closer (their noise), a wrong one about a spacing away. For different
    cells (serial sections) a residual near the spacing is expected and the check says little (``warn=False``).

    Parameters
    ----------
    moving
        ``(n, d)`` points to move (``d`` = 2 or 3).
    fixed
        ``(m, d)`` points to register onto; no correspondence with ``moving`` is needed.
    kind
        Transform family (see :func:`fit_transform`).
    init
        Initial ``(d + 1, d + 1)`` transform (then a single start).
    n_starts
        Initial rotations (evenly spaced in 2D; identity and 180 degrees about each axis in 3D).
    trim
        Fraction of closest pairs used in each fit.
    max_iter
        Largest number of iterations per round.
    tol
        Stop when the trimmed RMS distance changes by less than this (relative).
    max_points
        Randomly subsample both clouds to at most this many points (``None``: all).
    seed
        Random seed of the subsampling.
    warn
        Warn when the final residual is poor relative to the fixed points' nearest-neighbour spacing.

    Returns
    -------
    ``(matrix, info)``: the homogeneous matrix mapping ``moving`` onto ``fixed`` and a dict with ``rmse`` (trimmed
    RMS distance), ``n_iter``, ``start`` (index of the winning start), ``spacing`` (median nearest-neighbour
    distance of the fixed points).

    Raises
    ------
    StmapInputError
        Mismatched or too few points, non-finite coordinates, unknown ``kind``, ``trim`` outside (0, 1], an ``init``
        of the wrong shape, non-finite or singular.

    Warns
    -----
    UserWarning
        The final residual exceeds 0.6 times the fixed points' median nearest-neighbour spacing.

    See Also
    --------
    :func:`stmap.pp.fit_transform`
        The least-squares fit of each iteration.
    :func:`stmap.pp.register`
        Registers SpatialData elements (ICP unless landmarks are given).

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> rng = np.random.default_rng(0)
    >>> fixed = rng.uniform(0, 100, size=(200, 2))
    >>> angle = np.deg2rad(20)
    >>> rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    >>> moving = (fixed - 50) @ rotation.T + [10.0, -5.0]  # the same points, rotated and shifted
    >>> shuffled = rng.permutation(moving)  # no correspondence needed
    >>> matrix, info = st.pp.icp(shuffled, fixed, kind="rigid")
    >>> np.allclose(st.pp.apply_transform(matrix, moving), fixed, atol=1e-6), sorted(info)
    (True, ['n_iter', 'rmse', 'spacing', 'start'])
    """
    mov, fix = _check_clouds(moving, fixed)
    d = mov.shape[1]
    rng = np.random.default_rng(seed)
    if max_points is not None and len(mov) > max_points:
        mov = mov[rng.choice(len(mov), max_points, replace=False)]
    if max_points is not None and len(fix) > max_points:
        fix = fix[rng.choice(len(fix), max_points, replace=False)]
    starts = [_check_init(init, d)] if init is not None else _starts(mov, fix, kind, n_starts)
    run = _ICPRun(mov, fix, kind, max(_MIN_POINTS[kind] + 1, int(np.ceil(trim * len(mov)))), max_iter, tol)
    best: tuple[float, np.ndarray, int, int] | None = None
    for si, m in enumerate(starts):
        final, m, it = run.from_start(m)
        if best is None or final < best[0]:
            best = (final, m, it, si)
    assert best is not None
    spacing = _nn_spacing(fix)
    if warn and spacing > 0 and best[0] > _POOR_RESIDUAL * spacing:
        warnings.warn(
            f"ICP ({kind}) ended with a trimmed residual of {best[0]:.4g}, {best[0] / spacing:.2g} times the fixed "
            f"points' median nearest-neighbour spacing ({spacing:.4g}): the registration may be a wrong minimum. "
            "If both clouds hold the same points (cells/spots), try kind='rigid', landmarks=, or a coarse "
            "pre-alignment (init=); for different cells (e.g. serial sections) a residual near the spacing is "
            "expected and says little; pass warn=False to silence this.",
            UserWarning,
            stacklevel=3,
        )
    return best[1], {"rmse": best[0], "n_iter": best[2], "start": best[3], "spacing": spacing}


def _check_clouds(moving: Any, fixed: Any) -> tuple[np.ndarray, np.ndarray]:
    mov = np.asarray(moving, dtype=float)
    fix = np.asarray(fixed, dtype=float)
    if mov.ndim != 2 or fix.ndim != 2 or mov.shape[1] != fix.shape[1] or mov.shape[1] not in (2, 3):
        raise StmapInputError(
            f"moving and fixed must be (n, d) arrays with the same d in (2, 3), got {mov.shape}, {fix.shape}."
        )
    if len(mov) < 3 or len(fix) < 3:
        raise StmapInputError(f"ICP needs at least 3 points in each cloud, got {len(mov)} and {len(fix)}.")
    if not (np.isfinite(mov).all() and np.isfinite(fix).all()):
        raise StmapInputError("Point coordinates contain NaN or infinite values.")
    return mov, fix


def _check_init(init: Any, d: int) -> np.ndarray:
    m = np.asarray(init, dtype=float)
    if m.shape != (d + 1, d + 1):
        raise StmapInputError(f"init must be a {(d + 1, d + 1)} matrix, got {m.shape}.")
    if not np.isfinite(m).all() or abs(np.linalg.det(m[:d, :d])) <= 1e-300:
        raise StmapInputError("init must be finite with an invertible linear part.")
    return m


def _starts(mov: np.ndarray, fix: np.ndarray, kind: Kind, n_starts: int) -> list[np.ndarray]:
    """Centroids (and, for similarity/affine, spreads) matched, under each start rotation."""
    d = mov.shape[1]
    mu_m, mu_f = mov.mean(0), fix.mean(0)
    sc = 1.0
    if kind in ("similarity", "affine"):
        sc = float(np.sqrt(((fix - mu_f) ** 2).sum(1).mean() / max(((mov - mu_m) ** 2).sum(1).mean(), 1e-300)))
    rots = [np.eye(d)] if kind == "translation" else _start_rotations(d, n_starts)
    starts = []
    for r in rots:
        m0 = np.eye(d + 1)
        m0[:d, :d] = sc * r
        m0[:d, d] = mu_f - sc * r @ mu_m
        starts.append(m0)
    return starts


@dataclass
class _ICPRun:
    """Trimmed ICP of ``mov`` onto ``fix`` (the fixed points' tree built once), from any start."""

    mov: np.ndarray
    fix: np.ndarray
    kind: Kind
    n_keep: int
    max_iter: int
    tol: float

    def __post_init__(self) -> None:
        from scipy.spatial import cKDTree

        self.tree = cKDTree(self.fix)
        self.floor = 1e-12 * float(np.ptp(self.fix, axis=0).max())  # an exact fit stops at round-off

    def from_start(self, m: np.ndarray) -> tuple[float, np.ndarray, int]:
        """``(trimmed residual, matrix, iterations)`` from the start ``m``.

        ``'similarity'``/``'affine'``: rigid first, at the start's scale/shape (a free scale shrinks the moving cloud
        into the fixed one while the rotation is still off: a wrong minimum); then the requested kind refines the
        rigid fit; the better of the two is kept.
        """
        d = self.mov.shape[1]
        if self.kind not in ("similarity", "affine"):
            m, it = self.converge(m, self.kind)
            return self.residual(m), m, it
        m_r, it = self.converge(m, "rigid", m[:d, :d].copy())
        m_k, it2 = self.converge(m_r, self.kind)
        cands = [(self.residual(m_r), m_r, it), (self.residual(m_k), m_k, it + it2)]
        return min(cands, key=lambda c: c[0])

    def converge(self, m: np.ndarray, fit_kind: Kind, pre: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """All pairs first (trimming from a poor start locks onto a subset), then the trimmed refinement."""
        m, it = self.run(m, len(self.mov), fit_kind, pre)
        if self.n_keep < len(self.mov):
            m, it2 = self.run(m, self.n_keep, fit_kind, pre)
            it += it2
        return m, it

    def run(self, m: np.ndarray, k: int, fit_kind: Kind, pre: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Iterate pairing and refitting on the ``k`` closest pairs; ``pre``: a fixed linear map applied first."""
        src = self.mov if pre is None else self.mov @ pre.T
        prev, it = np.inf, 0
        for it in range(1, self.max_iter + 1):  # noqa: B007
            dist, idx = self.tree.query(apply_transform(m, self.mov))
            keep = np.argpartition(dist, k - 1)[:k] if k < len(dist) else np.arange(len(dist))
            m = fit_transform(src[keep], self.fix[idx[keep]], kind=fit_kind)
            if pre is not None:
                m = m @ _linear(pre)
            rmse = float(np.sqrt(np.mean(dist[keep] ** 2)))
            if abs(prev - rmse) <= self.tol * max(rmse, self.floor) or rmse <= self.floor:
                break
            prev = rmse
        return m, it

    def residual(self, m: np.ndarray) -> float:
        """Trimmed RMS distance of the moved points to their nearest fixed points."""
        dist, _ = self.tree.query(apply_transform(m, self.mov))
        return float(np.sqrt(np.mean(np.sort(dist)[: self.n_keep] ** 2)))


def _to_spatialdata_transform(matrix: np.ndarray):
    from spatialdata.transformations import Affine

    d = matrix.shape[0] - 1
    axes = ("x", "y", "z")[:d]
    return Affine(np.asarray(matrix, dtype=float), input_axes=axes, output_axes=axes)


def _element_kind(sdata: Any, name: str) -> str:
    kind = next((k for k in ("images", "labels", "points", "shapes") if name in getattr(sdata, k)), None)
    if kind is None:
        present = [n for k in ("images", "labels", "points", "shapes") for n in getattr(sdata, k)]
        raise unknown_key("Element", name, present, "the SpatialData's elements")
    return kind


def _coords_of(sdata: Any, x: Any, cs: str | None, what: str) -> tuple[np.ndarray, str | None]:
    """(n, d) coordinates of an element name (in ``cs``) or of an array; the coordinate system used."""
    if isinstance(x, str):
        pts = resolve_points(sdata, points_key=x, coordinate_system=cs, lazy=False)
        c = np.asarray(pts.coords, dtype=float)
        return c, pts.coordinate_system
    c = np.asarray(x, dtype=float)
    if c.ndim != 2 or c.shape[1] not in (2, 3):
        raise StmapInputError(f"{what} must be an element name or an (n, 2)/(n, 3) array, got shape {c.shape}.")
    return c, cs


def _landmark_arrays(sdata: Any, landmarks: Any, cs_m: str | None, cs_f: str | None) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(landmarks, Sequence) and len(landmarks) == 2):
        raise StmapInputError(
            "landmarks must be a pair (moving_landmarks, fixed_landmarks): arrays or points elements."
        )
    a, _ = _coords_of(sdata, landmarks[0], cs_m, "moving landmarks")
    b, _ = _coords_of(sdata, landmarks[1], cs_f, "fixed landmarks")
    if a.shape != b.shape:
        raise StmapInputError(f"The landmark sets differ in shape ({a.shape} vs {b.shape}); give corresponding pairs.")
    return a, b


def _host(sdata: Any, table_key: str | None, key_added: str, cs: str) -> tuple[TableContext, Any]:
    """The table receiving ``.uns`` results (given, or a new one), in coordinate system ``cs``."""
    import anndata as ad

    if table_key is not None:
        if table_key not in sdata.tables:
            raise unknown_key("Table", table_key, sdata.tables.keys(), "sdata.tables")
        return TableContext(sdata, sdata.tables[table_key], table_key, None, None, None, None, cs), None
    new = ad.AnnData(np.zeros((1, 0), dtype=np.float32))
    return TableContext(sdata, new, key_added, None, None, None, None, cs), new


@overload
def register(
    sdata: None,
    moving: str | np.ndarray,
    fixed: str | np.ndarray | None = ...,
    *,
    landmarks: tuple[Any, Any] | None = ...,
    kind: Kind = ...,
    elements: Sequence[str] | None = ...,
    coordinate_system: str | None = ...,
    fixed_coordinate_system: str | None = ...,
    target_coordinate_system: str = ...,
    icp_kwargs: dict[str, Any] | None = ...,
    table_key: str | None = ...,
    key_added: str = ...,
    copy: bool = ...,
) -> tuple[np.ndarray, dict[str, Any]]: ...
@overload
def register(
    sdata: SpatialData,
    moving: str | np.ndarray,
    fixed: str | np.ndarray | None = ...,
    *,
    landmarks: tuple[Any, Any] | None = ...,
    kind: Kind = ...,
    elements: Sequence[str] | None = ...,
    coordinate_system: str | None = ...,
    fixed_coordinate_system: str | None = ...,
    target_coordinate_system: str = ...,
    icp_kwargs: dict[str, Any] | None = ...,
    table_key: str | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def register(
    sdata: SpatialData,
    moving: str | np.ndarray,
    fixed: str | np.ndarray | None = ...,
    *,
    landmarks: tuple[Any, Any] | None = ...,
    kind: Kind = ...,
    elements: Sequence[str] | None = ...,
    coordinate_system: str | None = ...,
    fixed_coordinate_system: str | None = ...,
    target_coordinate_system: str = ...,
    icp_kwargs: dict[str, Any] | None = ...,
    table_key: str | None = ...,
    key_added: str = ...,
    copy: Literal[True],
) -> SpatialData: ...
@validate_params(
    moving=Instance((str, *_ARRAY)),
    fixed=[Instance((str, *_ARRAY)), None],
    landmarks=[Instance((tuple, list)), None],
    kind=Options(_KINDS),
    elements=[Instance((list, tuple)), None],
    coordinate_system=[Instance((str,)), None],
    fixed_coordinate_system=[Instance((str,)), None],
    target_coordinate_system=Instance((str,)),
    icp_kwargs=[Instance((dict,)), None],
    table_key=[Instance((str,)), None],
    key_added=Instance((str,)),
    copy=Instance((bool,)),
)
@inject_docs()
def register(
    sdata: SpatialData | None,
    moving: str | np.ndarray,
    fixed: str | np.ndarray | None = None,
    *,
    landmarks: tuple[Any, Any] | None = None,
    kind: Kind = "similarity",
    elements: Sequence[str] | None = None,
    coordinate_system: str | None = None,
    fixed_coordinate_system: str | None = None,
    target_coordinate_system: str = "aligned",
    icp_kwargs: dict[str, Any] | None = None,
    table_key: str | None = None,
    key_added: str = Key.default.registration,
    copy: bool = False,
) -> SpatialData | tuple[np.ndarray, dict[str, Any]] | None:
    """Register a section (or any point cloud) onto another: a transform to a new coordinate system, no resampling.

    With ``landmarks`` the transform is the least-squares fit of the landmark pairs (:func:`fit_transform`);
    otherwise the moving element's points (points, shape or label centroids) are registered onto the fixed ones by
    trimmed ICP (:func:`icp`). The transform is written as a spatialdata transformation of every element in
    ``elements`` to ``target_coordinate_system`` (composed with its transformation to the moving coordinate
    system); the fixed element gets its own transformation to that coordinate system too, so both overlay there.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData`; or ``None`` when ``moving`` / ``fixed`` / ``landmarks`` are arrays (then
        the matrix and a summary dict are returned).
    moving
        Element to move (points, shapes or labels; its points drive ICP), or an ``(n, d)`` array.
    fixed
        Element (or ``(m, d)`` array, e.g. atlas cell positions) to register onto; optional with ``landmarks``.
    landmarks
        ``(moving_landmarks, fixed_landmarks)``: corresponding ``(k, d)`` arrays or points elements.
    kind
        ``'translation'``, ``'rigid'``, ``'similarity'`` or ``'affine'``.
    elements
        Elements receiving the transformation (default: ``moving``; add e.g. the section's image and shapes to move
        the whole section).
    coordinate_system
        Coordinate system of the moving element (default ``'global'`` or its only one).
    fixed_coordinate_system
        Coordinate system of the fixed element.
    target_coordinate_system
        Coordinate system written (new, or existing: e.g. the fixed element's own to place the moving one in it).
    icp_kwargs
        Options of :func:`icp` (``n_starts``, ``trim``, ``max_iter``, ``max_points``, ``seed``, ``warn``).
    table_key
        Table whose ``.uns`` receives the summary (default: a new one-row table named ``key_added``).
    {key_added}
    {copy}

    Returns
    -------
    For arrays (``sdata=None``): ``(matrix, summary)``. Otherwise ``None`` (``copy=False``) or the updated copy;
    written: the transformations of ``elements`` (and of ``fixed``) to ``target_coordinate_system``, and
    ``.uns[key_added]``: ``matrix`` (``(d + 1, d + 1)``, moving coordinate system -> target), ``kind``, ``method``
    (``'landmarks'`` or ``'icp'``), ``rmse`` (landmark residual or trimmed ICP distance), ``moving``, ``fixed``,
    ``elements``, ``coordinate_system``, ``target_coordinate_system``, ``params``.

    Raises
    ------
    StmapInputError
        Unknown elements or coordinate systems, neither ``fixed`` nor ``landmarks``, too few/mismatched landmarks,
        2D vs 3D mismatch. Nothing is written.

    See Also
    --------
    :func:`stmap.pp.align_sections`
        Aligns a series of sections to each other.
    :func:`stmap.pp.icp`
        The registration on arrays.

    Examples
    --------
    Two point elements of one SpatialData: ``section_b`` is ``section_a`` rotated and shifted.

    >>> import numpy as np
    >>> import stmap as st
    >>> rng = np.random.default_rng(0)
    >>> fixed = rng.uniform(0, 100, size=(200, 2))
    >>> angle = np.deg2rad(20)
    >>> rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    >>> moving = (fixed - 50) @ rotation.T + [10.0, -5.0]  # the same points, rotated and shifted
    >>> import pandas as pd
    >>> import spatialdata as sd
    >>> from spatialdata.models import PointsModel
    >>> sdata = sd.SpatialData(
    ...     points={
    ...         "section_a": PointsModel.parse(pd.DataFrame(fixed, columns=["x", "y"])),
    ...         "section_b": PointsModel.parse(pd.DataFrame(moving, columns=["x", "y"])),
    ...     }
    ... )
    >>> st.pp.register(sdata, "section_b", "section_a", kind="rigid")
    >>> sorted(sd.transformations.get_transformation(sdata["section_b"], get_all=True))  # a new coordinate system
    ['aligned', 'global']
    >>> record = sdata.tables["stmap_registration"].uns["stmap_registration"]
    >>> record["method"], bool(record["rmse"] < 1e-6)
    ('icp', True)

    With arrays (``sdata=None``) the matrix and the summary are returned:

    >>> matrix, summary = st.pp.register(None, moving, fixed, kind="rigid")
    >>> np.allclose(st.pp.apply_transform(matrix, moving), fixed)
    True
    """
    if sdata is not None and not is_spatialdata(sdata):
        raise TypeError(f"sdata must be a SpatialData or None (arrays), got {type(sdata).__name__}.")
    if fixed is None and landmarks is None:
        raise StmapInputError("Pass `fixed=` (an element or points to register onto) or `landmarks=`.")
    if sdata is None and any(isinstance(x, str) for x in (moving, fixed)):
        raise StmapInputError("Element names need `sdata`; pass arrays with sdata=None.")
    _check_icp_kwargs(icp_kwargs)
    mov, cs_m = _coords_of(sdata, moving, coordinate_system, "moving")
    fix, cs_f = (None, fixed_coordinate_system)
    if fixed is not None:
        fix, cs_f = _coords_of(sdata, fixed, fixed_coordinate_system, "fixed")
        if fix.shape[1] != mov.shape[1]:
            raise StmapInputError(f"moving is {mov.shape[1]}D but fixed is {fix.shape[1]}D.")
    if landmarks is not None:
        a, b = _landmark_arrays(sdata, landmarks, cs_m, cs_f)
        if a.shape[1] != mov.shape[1]:
            raise StmapInputError(f"The landmarks are {a.shape[1]}D but the moving points {mov.shape[1]}D.")
        matrix = fit_transform(a, b, kind=kind)
        rmse = float(np.sqrt(np.mean(((apply_transform(matrix, a) - b) ** 2).sum(1))))
        method = "landmarks"
    else:
        assert fix is not None  # fixed or landmarks, checked above
        matrix, info = icp(mov, fix, kind=kind, **(icp_kwargs or {}))
        rmse, method = info["rmse"], "icp"
    summary = {
        "matrix": matrix,
        "kind": kind,
        "method": method,
        "rmse": rmse,
        "moving": moving if isinstance(moving, str) else "array",
        "fixed": fixed if isinstance(fixed, str) else ("array" if fixed is not None else "none"),
    }
    if sdata is None:
        return matrix, summary

    elements, cs_m = _receivers(sdata, moving, elements, coordinate_system, cs_m)
    ctx, new_table = _host(sdata, table_key, key_added, cs_m)
    res = Results(ctx, key_added, {"kind": kind, "method": method, "icp_kwargs": icp_kwargs or {}})
    for n in elements:
        res.transformation(n, target_coordinate_system, _composed(sdata, n, cs_m, matrix))
    if isinstance(fixed, str) and target_coordinate_system != cs_f:
        from spatialdata.transformations import get_transformation

        res.transformation(fixed, target_coordinate_system, get_transformation(sdata[fixed], to_coordinate_system=cs_f))
    if new_table is not None:
        res.table(key_added, new_table)
    where = {"elements": elements, "coordinate_system": cs_m, "target_coordinate_system": target_coordinate_system}
    res.uns(key_added, summary | where)
    start = logg.info(f"registered {summary['moving']!r} onto {summary['fixed']!r} ({kind}, {method}, rmse {rmse:.4g})")
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out


def _check_icp_kwargs(icp_kwargs: dict[str, Any] | None) -> None:
    unknown = sorted(set(icp_kwargs or {}) - set(_ICP_KWARGS))
    if unknown:
        raise StmapInputError(f"icp_kwargs has unknown options {unknown}; use {', '.join(_ICP_KWARGS)}.")


def _receivers(
    sdata: Any, moving: Any, elements: Sequence[str] | None, coordinate_system: str | None, cs_m: str | None
) -> tuple[list[str], str]:
    """The elements receiving the transformation and the moving coordinate system they all must have."""
    from .._core._resolve import _element_coordinate_systems

    if not isinstance(moving, str) and elements is None:
        raise StmapInputError("With an array `moving`, pass `elements=` to receive the transformation.")
    names = [moving] if elements is None else list(elements)
    if cs_m is None and coordinate_system is None:  # an array `moving`: the frame the tools choose for the element
        from .._core._points import _pick_cs

        _element_kind(sdata, names[0])
        cs_m = _pick_cs(sdata, sdata[names[0]], names[0], None)
    cs = cs_m or coordinate_system
    assert cs is not None  # from the element or given
    for n in names:
        _element_kind(sdata, n)
        if cs not in _element_coordinate_systems(sdata[n]):
            raise StmapInputError(f"Element {n!r} has no transformation to {cs!r}, the moving coordinate system.")
    return names, cs


def _composed(sdata: Any, name: str, cs: str, matrix: np.ndarray) -> Any:
    """The element's transformation to ``cs`` followed by ``matrix``."""
    from spatialdata.transformations import Sequence as Seq
    from spatialdata.transformations import get_transformation

    return Seq([get_transformation(sdata[name], to_coordinate_system=cs), _to_spatialdata_transform(matrix)])


@overload
def align_sections(
    sdata: SpatialData,
    sections: Sequence[str],
    *,
    reference: str | None = ...,
    kind: Kind = ...,
    chain: bool = ...,
    coordinate_system: str | None = ...,
    target_coordinate_system: str = ...,
    icp_kwargs: dict[str, Any] | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def align_sections(
    sdata: SpatialData,
    sections: Sequence[str],
    *,
    reference: str | None = ...,
    kind: Kind = ...,
    chain: bool = ...,
    coordinate_system: str | None = ...,
    target_coordinate_system: str = ...,
    icp_kwargs: dict[str, Any] | None = ...,
    key_added: str = ...,
    copy: Literal[True],
) -> SpatialData: ...
@validate_params(
    sections=Instance((list, tuple)),
    reference=[Instance((str,)), None],
    kind=Options(_KINDS),
    chain=Instance((bool,)),
    coordinate_system=[Instance((str,)), None],
    target_coordinate_system=Instance((str,)),
    icp_kwargs=[Instance((dict,)), None],
    key_added=Instance((str,)),
    copy=Instance((bool,)),
)
@inject_docs()
def align_sections(
    sdata: SpatialData,
    sections: Sequence[str],
    *,
    reference: str | None = None,
    kind: Kind = "rigid",
    chain: bool = True,
    coordinate_system: str | None = None,
    target_coordinate_system: str = "aligned",
    icp_kwargs: dict[str, Any] | None = None,
    key_added: str = Key.default.alignment,
    copy: bool = False,
) -> SpatialData | None:
    """Align serial sections to each other by ICP on their points, written as transformations (nothing resampled).

    Each section's points (points, shape or label centroids) are registered onto the previous, already aligned
    section (``chain=True``) or onto ``reference`` directly; the composed transforms place every section in
    ``target_coordinate_system``, where the reference keeps its own coordinates.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with one points/shapes/labels element per section.
    sections
        The sections' elements, in stacking order.
    reference
        Section that stays fixed (default: the middle one).
    kind
        Transform family (default ``'rigid'``, as serial sections are cut from one block).
    chain
        Register each section onto its aligned neighbour (towards the reference) rather than onto the reference.
    coordinate_system
        Coordinate system of the sections' elements.
    target_coordinate_system
        Coordinate system written.
    icp_kwargs
        Options of :func:`icp`.
    {key_added}
    {copy}

    Returns
    -------
    ``None`` (``copy=False``) or the updated copy; written: every section's transformation to
    ``target_coordinate_system`` and, in a new table ``key_added``, ``.uns[key_added]``: ``sections``,
    ``reference``, ``matrices`` (``(n_sections, d + 1, d + 1)``, section coordinate system -> target), ``rmse``
    (per section, to the section it was registered onto; 0 for the reference), ``params``.

    Raises
    ------
    StmapInputError
        Fewer than two sections, unknown elements/reference. Nothing is written.

    See Also
    --------
    :func:`stmap.pp.register`
        Registers one element onto another.
    :func:`stmap.pp.stack_sections`
        Stacks aligned sections into one 3D table.
    :doc:`/tutorials/impute3d`
        Tutorial.

    Examples
    --------
    Three sections as point elements: ``b`` is ``a`` rotated and shifted, ``c`` is ``b`` shifted again.

    >>> import numpy as np
    >>> import stmap as st
    >>> rng = np.random.default_rng(0)
    >>> fixed = rng.uniform(0, 100, size=(200, 2))
    >>> angle = np.deg2rad(20)
    >>> rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    >>> moving = (fixed - 50) @ rotation.T + [10.0, -5.0]  # the same points, rotated and shifted
    >>> import pandas as pd
    >>> import spatialdata as sd
    >>> from spatialdata.models import PointsModel
    >>> sections = {"a": fixed, "b": moving, "c": moving + [3.0, 4.0]}
    >>> sdata = sd.SpatialData(
    ...     points={name: PointsModel.parse(pd.DataFrame(xy, columns=["x", "y"])) for name, xy in sections.items()}
    ... )
    >>> st.pp.align_sections(sdata, ["a", "b", "c"])
    >>> record = sdata.tables["stmap_alignment"].uns["stmap_alignment"]
    >>> record["reference"], record["matrices"].shape, bool(record["rmse"].max() < 1e-6)
    ('b', (3, 3, 3), True)
    """
    if not is_spatialdata(sdata):
        raise TypeError(f"sdata must be a SpatialData, got {type(sdata).__name__}.")
    sections = list(sections)
    if len(sections) < 2 or len(set(sections)) != len(sections):
        raise StmapInputError(f"Pass at least two distinct sections, got {sections}.")
    for s in sections:
        _element_kind(sdata, s)
    if reference is None:
        reference = sections[len(sections) // 2]
    if reference not in sections:
        raise unknown_key("Reference section", reference, sections, "sections")
    _check_icp_kwargs(icp_kwargs)
    coords, css = {}, {}
    for s in sections:
        coords[s], css[s] = _coords_of(sdata, s, coordinate_system, "section")
    start = logg.info(f"aligning {len(sections)} sections onto {reference!r} ({kind})")
    mats, rmse = _chain_icp(sections, reference, coords, kind, chain, icp_kwargs or {})
    ctx, new_table = _host(sdata, None, key_added, css[reference] or Key.cs)
    res = Results(ctx, key_added, {"kind": kind, "chain": chain, "icp_kwargs": icp_kwargs or {}})
    for s in sections:
        res.transformation(s, target_coordinate_system, _composed(sdata, s, css[s] or Key.cs, mats[s]))
    res.table(key_added, new_table)
    res.uns(
        key_added,
        {
            "sections": sections,
            "reference": reference,
            "matrices": np.stack([mats[s] for s in sections]),
            "rmse": np.asarray([rmse[s] for s in sections]),
            "target_coordinate_system": target_coordinate_system,
        },
    )
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out


def _chain_icp(
    sections: list[str],
    reference: str,
    coords: dict[str, np.ndarray],
    kind: Kind,
    chain: bool,
    icp_kwargs: dict[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each section onto its aligned neighbour towards the reference (``chain``) or onto the reference."""
    r = sections.index(reference)
    d = coords[reference].shape[1]
    mats = {reference: np.eye(d + 1)}
    rmse = {reference: 0.0}
    order = [(i, i + 1) for i in range(r - 1, -1, -1)] + [(i, i - 1) for i in range(r + 1, len(sections))]
    for i, j in order:  # section i onto its neighbour j (already aligned) or onto the reference
        s = sections[i]
        tgt = sections[j] if chain else reference
        fixed_pts = apply_transform(mats[tgt], coords[tgt])
        m, info = icp(coords[s], fixed_pts, kind=kind, **icp_kwargs)
        mats[s], rmse[s] = m, info["rmse"]
    return mats, rmse
