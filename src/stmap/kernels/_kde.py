"""Gaussian kernel density estimation on regular 2D/3D grids: linear binning + separable Gaussian convolution.

The grid has ``shape[a]`` nodes along axis ``a`` at ``lo[a] + i * step[a]`` (node-centred, like
``np.linspace(lo, hi, n)``); arrays are indexed in the order of the coordinate columns (``[ix, iy(, iz)]``).

Binning distributes each point's weight over the ``2**d`` surrounding nodes with linear (cloud-in-cell) weights
(Wand 1994), so the binned KDE is second-order accurate in the grid step. It runs in parallel without races: the
first grid axis is split into row blocks, one per thread, and every thread adds only into its own rows. Each node
receives its contributions in the order of the points whatever the number of threads, so the parallel result is
bit-for-bit the serial one.

Smoothing is separable: a truncated, sampled Gaussian FIR filter along each axis (in place, per-thread buffers), or,
when the kernel is long (``sigma / step`` large), a zero-padded FFT convolution along that axis
(:func:`scipy.fft.rfft`), so the cost does not grow with the bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numba
import numpy as np
from numba import njit, prange

from stmap._core._params import Instance, Interval, Options, validate_params

__all__ = ["linear_binning", "gaussian_smooth", "kde_grid", "kde_direct", "gaussian_kernel_1d", "estimate_grid_bytes"]

Norm = Literal["density", "counts", "cells_per_voxel"]

#: Kernels longer than this many taps (per side) are convolved by FFT.
FFT_RADIUS = 48
#: Below this much work (voxel x taps for a smoothing pass) kernels run on one thread: a parallel launch costs more
#: than it saves, a lot more on a busy machine where a thread may wait for a core.
PARALLEL_MIN_WORK = 5e7
#: Points are binned on several threads only from this many points and 4 threads up (each thread scans all points).
PARALLEL_MIN_POINTS = 4_000_000


@contextmanager
def _threads(n: int):
    """Run numba parallel regions inside on at most ``n`` threads."""
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), old)))
    try:
        yield
    finally:
        numba.set_num_threads(old)


# ---------------------------------------------------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------------------------------------------------
@njit(cache=True)
def _base(u: float, n: int) -> tuple[int, float]:
    """Lower node and fractional offset of grid coordinate ``u`` in ``[0, n - 1]``."""
    i = int(math.floor(u))
    if i >= n - 1:
        i = n - 2
    return i, u - i


@njit(cache=True)
def _row_histogram(coords, lo, inv, shape):
    """Per-row count of points (by lower node along axis 0) and the number of points outside the grid."""
    n, d = coords.shape
    hist = np.zeros(shape[0], dtype=np.int64)
    dropped = 0
    for p in range(n):
        ok = True
        for a in range(d):
            u = (coords[p, a] - lo[a]) * inv[a]
            if not (u >= 0.0 and u <= shape[a] - 1):  # also False for NaN
                ok = False
                break
        if not ok:
            dropped += 1
            continue
        i, _ = _base((coords[p, 0] - lo[0]) * inv[0], shape[0])
        hist[i] += 1
    return hist, dropped


@njit(parallel=True, cache=True)
def _bin2d(coords, weights, use_w, lo, inv, starts, out):
    nx, ny = out.shape
    nb = starts.size - 1
    for b in prange(nb):
        r0 = starts[b]
        r1 = starts[b + 1]
        for p in range(coords.shape[0]):
            ux = (coords[p, 0] - lo[0]) * inv[0]
            uy = (coords[p, 1] - lo[1]) * inv[1]
            if not (ux >= 0.0 and ux <= nx - 1 and uy >= 0.0 and uy <= ny - 1):
                continue
            i, fx = _base(ux, nx)
            if i + 1 < r0 or i >= r1:
                continue
            j, fy = _base(uy, ny)
            w = weights[p] if use_w else 1.0
            if i >= r0:
                wx = w * (1.0 - fx)
                out[i, j] += wx * (1.0 - fy)
                out[i, j + 1] += wx * fy
            if i + 1 < r1:
                wx = w * fx
                out[i + 1, j] += wx * (1.0 - fy)
                out[i + 1, j + 1] += wx * fy


@njit(parallel=True, cache=True)
def _bin3d(coords, weights, use_w, lo, inv, starts, out):
    nx, ny, nz = out.shape
    nb = starts.size - 1
    for b in prange(nb):
        r0 = starts[b]
        r1 = starts[b + 1]
        for p in range(coords.shape[0]):
            ux = (coords[p, 0] - lo[0]) * inv[0]
            uy = (coords[p, 1] - lo[1]) * inv[1]
            uz = (coords[p, 2] - lo[2]) * inv[2]
            if not (ux >= 0.0 and ux <= nx - 1 and uy >= 0.0 and uy <= ny - 1 and uz >= 0.0 and uz <= nz - 1):
                continue
            i, fx = _base(ux, nx)
            if i + 1 < r0 or i >= r1:
                continue
            j, fy = _base(uy, ny)
            k, fz = _base(uz, nz)
            w = weights[p] if use_w else 1.0
            for s in range(2):
                ii = i + s
                if ii < r0 or ii >= r1:
                    continue
                wx = w * (fx if s == 1 else 1.0 - fx)
                w00 = wx * (1.0 - fy)
                w01 = wx * fy
                out[ii, j, k] += w00 * (1.0 - fz)
                out[ii, j, k + 1] += w00 * fz
                out[ii, j + 1, k] += w01 * (1.0 - fz)
                out[ii, j + 1, k + 1] += w01 * fz


def _row_blocks(hist: np.ndarray, n_blocks: int) -> np.ndarray:
    """Split the rows into ``n_blocks`` contiguous blocks holding about the same number of points."""
    n = hist.size
    n_blocks = max(1, min(n_blocks, n))
    if n_blocks == 1:
        return np.array([0, n], dtype=np.int64)
    cum = np.cumsum(hist)
    targets = cum[-1] * np.arange(1, n_blocks) / n_blocks
    cuts = np.searchsorted(cum, targets, side="left") + 1
    starts = np.unique(np.concatenate([[0], np.clip(cuts, 1, n - 1), [n]])).astype(np.int64)
    return starts


@validate_params(
    weights=[Instance((np.ndarray,)), None],
    out=[Instance((np.ndarray,)), None],
    n_blocks=[Interval(int, 1, None), None],
)
def linear_binning(
    coords: np.ndarray,
    lo: Sequence[float],
    step: Sequence[float],
    shape: Sequence[int],
    *,
    weights: np.ndarray | None = None,
    dtype: Any = np.float64,
    out: np.ndarray | None = None,
    n_blocks: int | None = None,
) -> tuple[np.ndarray, int]:
    """Linear (cloud-in-cell) binning of points onto the nodes of a regular 2D or 3D grid.

    Parameters
    ----------
    coords
        ``(n, d)`` point coordinates, ``d`` in ``{2, 3}``.
    lo
        Position of the grid's first node along each axis: the grid has ``shape[a]`` nodes at
        ``lo[a] + i * step[a]`` along axis ``a``.
    step
        Node spacing along each axis (positive).
    shape
        Number of nodes along each axis (``shape[a] >= 2``).
    weights
        ``(n,)`` point weights; ``None`` for 1.
    dtype
        ``float32`` or ``float64`` accumulator (ignored when ``out`` is given).
    out
        Grid to add into (``shape``, C-contiguous); a new zero grid if ``None``.
    n_blocks
        Number of row blocks (threads); default: numba's thread count for at least ``PARALLEL_MIN_POINTS``
        points and 4 threads, else 1 (every block scans all points). The result does not depend on it.

    Returns
    -------
    ``(grid, n_dropped)``: the binned weights (sum = total weight of the points inside the grid) and the number of
    points outside the grid (or with NaN coordinates), which were skipped.

    See Also
    --------
    :func:`stmap.kernels.kde_grid`
        Binning and smoothing in one call.
    :func:`stmap.tl.density`
        Density maps of a SpatialData's points.

    Examples
    --------
    >>> import numpy as np
    >>> from stmap import kernels
    >>> coords = np.array([[0.25, 0.5], [1.0, 1.0]])
    >>> grid, n_dropped = kernels.linear_binning(coords, lo=(0.0, 0.0), step=(1.0, 1.0), shape=(3, 3))
    >>> grid  # indexed [ix, iy]: the first point is shared by its four surrounding nodes
    array([[0.375, 0.375, 0.   ],
           [0.125, 1.125, 0.   ],
           [0.   , 0.   , 0.   ]])
    >>> float(grid.sum()), n_dropped
    (2.0, 0)
    """
    coords = np.ascontiguousarray(coords, dtype=np.float64)
    d = coords.shape[1]
    if d not in (2, 3) or len(shape) != d:
        raise ValueError(f"Expected 2 or 3 coordinate columns matching the grid, got {d} and grid {tuple(shape)}.")
    shape_arr = np.asarray(shape, dtype=np.int64)
    if (shape_arr < 2).any():
        raise ValueError(f"Every grid axis needs at least 2 nodes, got {tuple(shape)}.")
    lo_arr = np.asarray(lo, dtype=np.float64)
    inv = 1.0 / np.asarray(step, dtype=np.float64)
    if out is None:
        out = np.zeros(tuple(shape_arr), dtype=dtype)
    use_w = weights is not None
    w = np.ascontiguousarray(weights, dtype=np.float64) if use_w else np.empty(0)
    hist, dropped = _row_histogram(coords, lo_arr, inv, shape_arr)
    if n_blocks is None:
        nt = numba.get_num_threads()
        n_blocks = nt if nt >= 4 and coords.shape[0] >= PARALLEL_MIN_POINTS else 1
    starts = _row_blocks(hist, n_blocks)
    with _threads(starts.size - 1):
        (_bin2d if d == 2 else _bin3d)(coords, w, use_w, lo_arr, inv, starts, out)
    return out, int(dropped)


# ---------------------------------------------------------------------------------------------------------------------
# smoothing
# ---------------------------------------------------------------------------------------------------------------------
@validate_params(
    sigma=Interval(float, 0, None, "neither"),
    step=Interval(float, 0, None, "neither"),
    truncate=Interval(float, 0, None, "neither"),
)
def gaussian_kernel_1d(sigma: float, step: float, truncate: float = 4.0, dtype: Any = np.float64) -> np.ndarray:
    """Half of a sampled Gaussian density ``k[m] = N(m * step; 0, sigma**2)``, ``m = 0..ceil(truncate*sigma/step)``.

    Parameters
    ----------
    sigma
        Standard deviation, in coordinate units.
    step
        Sample spacing, in coordinate units.
    truncate
        Support in standard deviations.
    dtype
        Output dtype.

    Returns
    -------
    ``k[0..r]``, ``r = max(1, ceil(truncate * sigma / step))`` (the kernel is symmetric: ``k[-m] = k[m]``).

    See Also
    --------
    :func:`stmap.kernels.gaussian_smooth`
        Convolves a grid with these kernels, one axis at a time.

    Examples
    --------
    >>> from stmap import kernels
    >>> kernels.gaussian_kernel_1d(1.0, 0.5, truncate=2.0).round(4)  # taps at 0, 0.5, 1, 1.5, 2
    array([0.3989, 0.3521, 0.242 , 0.1295, 0.054 ])
    """
    s = sigma / step
    r = max(1, int(math.ceil(truncate * s)))
    m = np.arange(r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (m / s) ** 2) / (math.sqrt(2.0 * math.pi) * sigma)
    return k.astype(dtype)


@njit(parallel=True, cache=True)
def _fir_lines(a, k):
    """In-place symmetric FIR along the last axis of a 2D ``(lines, n)`` array.

    Blocks of lines are transposed into a ``(n + 2r, width)`` buffer so the tap loop runs over contiguous columns
    (SIMD), as in :func:`_fir_middle`.
    """
    n_lines, n = a.shape
    r = k.size - 1
    width = 64
    n_tasks = (n_lines + width - 1) // width
    for t in prange(n_tasks):
        l0 = t * width
        bw = min(width, n_lines - l0)
        buf = np.zeros((n + 2 * r, bw), dtype=a.dtype)
        res = np.empty((n, bw), dtype=a.dtype)
        for c in range(bw):
            for i in range(n):
                buf[r + i, c] = a[l0 + c, i]
        k0 = k[0]
        for i in range(n):
            ci = r + i
            for c in range(bw):
                res[i, c] = k0 * buf[ci, c]
            for m in range(1, r + 1):
                km = k[m]
                for c in range(bw):
                    res[i, c] += km * (buf[ci - m, c] + buf[ci + m, c])
        for c in range(bw):
            for i in range(n):
                a[l0 + c, i] = res[i, c]


@njit(parallel=True, cache=True)
def _fir_middle(a, k, width):
    """In-place symmetric FIR along axis 1 of a 3D ``(pre, n, post)`` array, ``width`` columns per task."""
    pre, n, post = a.shape
    r = k.size - 1
    n_col = (post + width - 1) // width
    for t in prange(pre * n_col):
        p = t // n_col
        c0 = (t % n_col) * width
        bw = min(width, post - c0)
        buf = np.zeros((n + 2 * r, bw), dtype=a.dtype)
        tmp = np.empty(bw, dtype=a.dtype)
        for i in range(n):
            for c in range(bw):
                buf[r + i, c] = a[p, i, c0 + c]
        for i in range(n):
            ci = r + i
            k0 = k[0]
            for c in range(bw):
                tmp[c] = k0 * buf[ci, c]
            for m in range(1, r + 1):
                km = k[m]
                for c in range(bw):
                    tmp[c] += km * (buf[ci - m, c] + buf[ci + m, c])
            for c in range(bw):
                a[p, i, c0 + c] = tmp[c]


def _fft_axis(a: np.ndarray, k: np.ndarray, axis: int, workers: int) -> None:
    """In-place linear (zero-padded) convolution with the symmetric kernel ``k`` along ``axis`` by FFT."""
    import scipy.fft as sfft

    n = a.shape[axis]
    r = min(k.size - 1, n - 1)  # taps further than the axis length never meet data
    L = sfft.next_fast_len(n + r, real=True)
    g = np.zeros(L, dtype=np.float64)
    g[: r + 1] = k[: r + 1]
    g[L - r :] = k[1 : r + 1][::-1]
    kf = sfft.rfft(g).real.astype(a.dtype)  # a symmetric kernel has a real spectrum
    shape = [1] * a.ndim
    shape[axis] = kf.size
    kf = kf.reshape(shape)
    # process slabs along another axis so the complex workspace stays small (~64 MB)
    other = 0 if axis != 0 else 1
    per = a.nbytes // a.shape[other] * 2 * L // n
    chunk = max(1, int(64e6 // max(per, 1)))
    for s in range(0, a.shape[other], chunk):
        sl = tuple(slice(s, s + chunk) if ax == other else slice(None) for ax in range(a.ndim))
        f = sfft.rfft(a[sl], n=L, axis=axis, workers=workers)
        f *= kf
        res = sfft.irfft(f, n=L, axis=axis, workers=workers)
        a[sl] = np.take(res, np.arange(n), axis=axis)


@validate_params(
    truncate=Interval(float, 0, None, "neither"),
    method=Options({"auto", "fir", "fft"}),
    scale=Interval(float, None, None),
)
def gaussian_smooth(
    grid: np.ndarray,
    sigma: float | Sequence[float] | np.ndarray,
    step: float | Sequence[float] = 1.0,
    *,
    truncate: float = 4.0,
    method: Literal["auto", "fir", "fft"] = "auto",
    scale: float = 1.0,
) -> np.ndarray:
    """Convolve a grid in place with a separable (axis-aligned, possibly anisotropic) Gaussian density.

    Outside the grid the signal is taken as zero, so for binned points the result is the KDE at the grid nodes
    (not renormalised at the edges).

    Parameters
    ----------
    grid
        2D or 3D float32/float64 C-contiguous array, modified in place.
    sigma
        Standard deviation per axis (one value: isotropic), in the units of ``step``; ``0`` leaves an axis alone.
    step
        Grid step per axis.
    truncate
        Kernel support in standard deviations.
    method
        ``'fir'``: truncated sampled kernel; ``'fft'``: FFT along each axis; ``'auto'``: FFT for kernels longer than
        ``FFT_RADIUS`` taps per side.
    scale
        Factor applied to the result (folded into the first kernel: no extra pass).

    Returns
    -------
    ``grid`` (the same array), smoothed; its values are multiplied by the kernel's ``1 / step`` per axis so a
    grid of counts becomes counts per unit volume.

    See Also
    --------
    :func:`stmap.kernels.linear_binning`
        Makes the grid of binned points this smooths.
    :func:`stmap.kernels.kde_grid`
        Binning and smoothing in one call.

    Examples
    --------
    >>> import numpy as np
    >>> from stmap import kernels
    >>> grid = np.zeros((21, 21))
    >>> grid[10, 10] = 1.0  # one point at the centre node
    >>> smoothed = kernels.gaussian_smooth(grid, 2.0)
    >>> round(float(smoothed.sum()), 4), round(float(smoothed[10, 10]), 4)  # peak 1 / (2 pi sigma^2)
    (1.0, 0.0398)
    """
    if not (isinstance(grid, np.ndarray) and grid.flags.c_contiguous and grid.dtype.kind == "f"):
        raise ValueError("grid must be a C-contiguous float32/float64 numpy array.")
    d = grid.ndim
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (d,))
    stp = np.broadcast_to(np.asarray(step, dtype=np.float64), (d,))
    workers = numba.get_num_threads()
    pending = float(scale)
    for ax in range(d):
        if sig[ax] == 0:
            continue
        k = gaussian_kernel_1d(sig[ax], stp[ax], truncate, dtype=np.float64) * pending
        k = k.astype(grid.dtype)
        pending = 1.0
        use_fft = method == "fft" or (method == "auto" and k.size - 1 > FFT_RADIUS)
        if use_fft:
            _fft_axis(grid, k, ax, workers)
            continue
        pre = int(np.prod(grid.shape[:ax], dtype=np.int64))
        post = int(np.prod(grid.shape[ax + 1 :], dtype=np.int64))
        with _threads(workers if grid.size * k.size >= PARALLEL_MIN_WORK else 1):
            if post == 1:
                _fir_lines(grid.reshape(pre, grid.shape[ax]), k)
            else:
                _fir_middle(grid.reshape(pre, grid.shape[ax], post), k, 256)
    if pending != 1.0:  # every axis had sigma 0
        grid *= grid.dtype.type(pending)
    return grid


# ---------------------------------------------------------------------------------------------------------------------
# KDE
# ---------------------------------------------------------------------------------------------------------------------
@validate_params(n_grids=Interval(int, 0, None))
def estimate_grid_bytes(shape: Sequence[int], dtype: Any = np.float64, n_grids: int = 1) -> int:
    """Bytes needed to hold ``n_grids`` grids of ``shape`` plus the working grids of :func:`kde_grid`.

    Those are three: the sum of the blocks, one block's partial grid, and the copy cropped from the padded grid
    (the padding, at most the kernel's support, is not counted).
    """
    return int(np.prod(shape, dtype=np.float64) * np.dtype(dtype).itemsize * (n_grids + 3))


#: Points per block: arrays of points are binned block by block (partial grids summed in block order), here or on
#: the workers of an active dask.distributed client, so the result does not depend on where the blocks ran.
BLOCK_POINTS = 1 << 22


@njit(cache=True)
def _extent(coords, weights, use_w):
    """Per-axis min/max of the finite points, their number and total weight (one pass)."""
    n, d = coords.shape
    mins = np.full(d, np.inf)
    maxs = np.full(d, -np.inf)
    n_ok = 0
    wsum = 0.0
    for p in range(n):
        ok = True
        for a in range(d):
            if not math.isfinite(coords[p, a]):
                ok = False
                break
        if not ok:
            continue
        n_ok += 1
        wsum += weights[p] if use_w else 1.0
        for a in range(d):
            v = coords[p, a]
            if v < mins[a]:
                mins[a] = v
            if v > maxs[a]:
                maxs[a] = v
    return mins, maxs, n_ok, wsum


def _bin_block(
    coords: Any, weights: Any, lo: Sequence[float], step: Sequence[float], shape: Sequence[int], dtype: Any
) -> tuple[np.ndarray, int, int, float]:
    """One block of points binned onto a new grid: ``(grid, n_points, n_finite, finite_weight)``."""
    c = np.ascontiguousarray(np.asarray(coords), dtype=np.float64)
    w = None if weights is None else np.ascontiguousarray(np.asarray(weights), dtype=np.float64)
    grid = np.zeros(tuple(shape), dtype=dtype)
    linear_binning(c, lo, step, shape, weights=w, out=grid)
    _, _, n_ok, wsum = _extent(c, w if w is not None else np.empty(0), w is not None)
    return grid, int(c.shape[0]), int(n_ok), float(wsum)


def _client() -> Any:
    """The active dask.distributed client, or ``None`` (distributed is not imported unless the user did)."""
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import get_client, get_worker

    try:
        get_worker()
        return None  # called inside a task on a worker: bin there (waiting on new tasks could block the worker)
    except ValueError:
        pass
    try:
        return get_client()
    except ValueError:
        return None


def _blocks(coords: Any, weights: Any) -> list[tuple[Any, Any]]:
    """Blocks of (coordinates, weights): a dask array's row chunks, or slices of ``BLOCK_POINTS`` rows."""
    if type(coords).__module__.startswith("dask"):
        if coords.numblocks[1] != 1:
            coords = coords.rechunk({1: -1})
        cb = coords.to_delayed().ravel()
        if weights is None:
            return [(c, None) for c in cb]
        if not type(weights).__module__.startswith("dask"):
            import dask.array as da

            weights = da.from_array(np.asarray(weights), chunks=(coords.chunks[0],))
        else:
            weights = weights.rechunk((coords.chunks[0],))
        return list(zip(cb, weights.to_delayed().ravel(), strict=True))
    n = int(coords.shape[0])
    sl = [slice(s, s + BLOCK_POINTS) for s in range(0, max(n, 1), BLOCK_POINTS)]
    return [(coords[s], None if weights is None else weights[s]) for s in sl]


def _bin_all(
    coords: Any, weights: Any, lo: Sequence[float], step: Sequence[float], shape: Sequence[int], dtype: Any
) -> tuple[np.ndarray, int, int, float]:
    """Bin every block and sum the partial grids in block order: ``(grid, n_points, n_finite, finite_weight)``.

    With an active dask.distributed client the blocks are binned on its workers (each returns a partial grid, at
    most two blocks per worker in flight); otherwise here, one block at a time (memory: one block and two grids,
    whatever the number of points). The partial grids are added in the same order either way, so both give the
    same grid bit for bit.
    """
    blocks = _blocks(coords, weights)
    client = _client()
    lazy = type(coords).__module__.startswith("dask")
    if client is not None:

        def _remote():
            import collections

            import dask

            # at most two blocks per worker in flight: the workers hold a few partial grids, not one per block
            window = max(2, 2 * len(client.scheduler_info().get("workers", {})))
            pending: collections.deque = collections.deque()
            for c, w in blocks:
                if lazy:
                    pending.append(client.compute(dask.delayed(_bin_block)(c, w, lo, step, shape, dtype)))
                else:
                    pending.append(client.submit(_bin_block, c, w, lo, step, shape, dtype, pure=False))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

        results = _remote()
    else:

        def _local():
            for c, w in blocks:
                if lazy:
                    c = c.compute()
                    w = None if w is None else w.compute()
                yield _bin_block(c, w, lo, step, shape, dtype)

        results = _local()
    grid: np.ndarray | None = None
    n_all = n_ok = 0
    wsum = 0.0
    for g, n, k, ws in results:
        if grid is None:
            grid = g
        else:
            grid += g
        n_all, n_ok, wsum = n_all + n, n_ok + k, wsum + ws
    assert grid is not None
    return grid, n_all, n_ok, wsum


def _support_nodes(sig: np.ndarray, step: np.ndarray, truncate: float) -> np.ndarray:
    """Padding per axis that holds every point reaching the grid: the kernel's taps plus one binning node.

    The taps are those of :func:`gaussian_kernel_1d`; a point binned beyond them reaches no node of the grid.
    """
    r = [0 if s == 0 else max(1, int(math.ceil(truncate * s / h))) + 1 for s, h in zip(sig, step, strict=True)]
    return np.asarray(r, dtype=np.int64)


@validate_params(
    norm=Options({"density", "counts", "cells_per_voxel"}),
    truncate=Interval(float, 0, None, "neither"),
    method=Options({"auto", "fir", "fft"}),
    bias_correction=Instance((bool,)),
)
def kde_grid(
    coords: Any,
    bandwidth: float | Sequence[float],
    lo: Sequence[float],
    step: Sequence[float],
    shape: Sequence[int],
    *,
    weights: Any = None,
    norm: Norm = "density",
    dtype: Any = np.float64,
    truncate: float = 4.0,
    method: Literal["auto", "fir", "fft"] = "auto",
    bias_correction: bool = True,
) -> tuple[np.ndarray, int, float]:
    """Gaussian KDE of points at the nodes of a regular grid (binned, second-order accurate in the grid step).

    Points outside the grid count: the grid is padded by the kernel's support (``truncate`` standard deviations,
    only as far as the points reach), the points are binned onto the padded grid, smoothed, and the padding is
    cropped, so a point just outside the bounds adds the part of its kernel that falls inside. Points farther than
    the support from every node contribute nothing to any node, exactly as with the truncated kernel inside the
    grid; they still count in the normalisation (``norm='density'`` divides by the total weight of all points).

    Points are binned in blocks (a dask array's row chunks, or ``BLOCK_POINTS`` rows of an array), one partial
    grid per block, summed in block order; with an active dask.distributed client the blocks are binned on its
    workers. Memory: one block and two grids (padded), whatever the number of points.

    Parameters
    ----------
    coords
        ``(n, d)`` coordinates (numpy, or a dask array chunked along rows: each chunk is read and binned once).
    bandwidth
        Gaussian standard deviation, one value or one per axis (coordinate units).
    lo
        Position of the grid's first node along each axis (the nodes are ``lo[a] + i * step[a]``).
    step
        Node spacing along each axis (positive).
    shape
        Number of nodes along each axis (``shape[a] >= 2``).
    weights
        Point weights (an array, or a dask array for dask coordinates).
    norm
        ``'density'``: integrates to 1 over space (units 1/volume); ``'counts'``: total weight x density (points per
        unit volume); ``'cells_per_voxel'``: expected number of points per voxel (``counts * prod(step)``).
    dtype
        ``float32`` or ``float64`` grid.
    truncate
        Kernel support in standard deviations (see :func:`gaussian_smooth`).
    method
        ``'fir'``, ``'fft'`` or ``'auto'`` convolution (see :func:`gaussian_smooth`).
    bias_correction
        Linear binning spreads a point at fraction ``f`` of a cell over its nodes with variance ``f (1 - f) step**2``,
        ``step**2 / 6`` on average: smooth with ``sigma**2 - step**2 / 6`` per axis instead (when positive) so the
        average kernel width is exactly ``sigma``. Cuts the error vs exact summation 3-8x at equal cost; the
        estimate stays second-order accurate.

    Returns
    -------
    ``(grid, n_dropped, total_weight)``: the estimate, the number of points skipped for non-finite coordinates,
    and the total weight of the other points (all of them, inside the grid or not), which ``norm='density'``
    divides by.

    See Also
    --------
    :func:`stmap.kernels.kde_direct`
        The exact estimate (direct summation) this is checked against.
    :func:`stmap.tl.density`
        The same on a SpatialData's points, one map per group, written as an image.
    :doc:`/tutorials/density`
        Tutorial.

    Examples
    --------
    >>> import numpy as np
    >>> from stmap import kernels
    >>> points = np.random.default_rng(0).normal(size=(500, 2))
    >>> grid, n_dropped, total = kernels.kde_grid(points, 0.5, lo=(-4.0, -4.0), step=(0.1, 0.1), shape=(81, 81))
    >>> grid.shape, n_dropped, total
    ((81, 81), 0, 500.0)
    >>> round(float(grid.sum()) * 0.1 * 0.1, 2)  # integrates to 1
    1.0
    >>> exact = kernels.kde_direct(points, np.array([[0.0, 0.0]]), 0.5)
    >>> bool(abs(grid[40, 40] - exact[0]) < 1e-3)  # node (0, 0)
    True

    Half of the grid: the points beyond its edge still add their kernels' mass inside it.

    >>> half, _, _ = kernels.kde_grid(points, 0.5, lo=(-4.0, -4.0), step=(0.1, 0.1), shape=(41, 81))
    >>> float(np.abs(half - grid[:41]).max()) < 1e-12
    True
    """
    shape = tuple(int(s) for s in shape)
    d = len(shape)
    stp = np.broadcast_to(np.asarray(step, dtype=np.float64), (d,)).copy()
    lo_arr = np.broadcast_to(np.asarray(lo, dtype=np.float64), (d,)).copy()
    sig = np.broadcast_to(np.asarray(bandwidth, dtype=np.float64), (d,)).copy()
    if bias_correction:
        var = sig**2 - stp**2 / 6.0
        sig = np.where(var > 0, np.sqrt(np.maximum(var, 0)), sig)
    full = _support_nodes(sig, stp, truncate)
    lazy = type(coords).__module__.startswith("dask")
    if lazy:  # one pass over the points: pad by the whole support
        pad_lo = pad_hi = full
    else:
        coords = np.asarray(coords)  # float32 stays float32: blocks are converted one at a time
        if coords.dtype.kind != "f":
            coords = coords.astype(np.float64)
        if coords.ndim != 2 or coords.shape[1] != d:
            raise ValueError(f"Expected {d} coordinate columns matching the grid, got array of shape {coords.shape}.")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
        mins, maxs, n_ok, _ = _extent(coords, np.empty(0), False)
        hi_arr = lo_arr + (np.asarray(shape) - 1) * stp
        if n_ok:  # pad only as far as the points reach
            pad_lo = np.clip(np.ceil((lo_arr - mins) / stp), 0, full).astype(np.int64)
            pad_hi = np.clip(np.ceil((maxs - hi_arr) / stp), 0, full).astype(np.int64)
        else:
            pad_lo = pad_hi = np.zeros(d, dtype=np.int64)
    shape_p = tuple(int(s) for s in np.asarray(shape) + pad_lo + pad_hi)
    lo_p = tuple(float(v) for v in lo_arr - pad_lo * stp)
    grid, n_all, n_ok, wsum = _bin_all(coords, weights, lo_p, tuple(stp), shape_p, dtype)
    total = float(n_ok) if weights is None else float(wsum)
    scale = 1.0
    if norm == "density" and total > 0:
        scale = 1.0 / total
    elif norm == "cells_per_voxel":
        scale = float(np.prod(stp))
    gaussian_smooth(grid, sig, tuple(stp), truncate=truncate, method=method, scale=scale)  # normalised in the pass
    if (pad_lo > 0).any() or (pad_hi > 0).any():
        crop = tuple(slice(int(a), int(a) + n) for a, n in zip(pad_lo, shape, strict=True))
        grid = np.ascontiguousarray(grid[crop])
    return grid, n_all - n_ok, total


@njit(parallel=True, cache=True)
def _direct(coords, weights, use_w, nodes, inv_bw, norm_c, out):
    n_nodes, d = nodes.shape
    for g in prange(n_nodes):
        acc = 0.0
        for p in range(coords.shape[0]):
            q = 0.0
            for a in range(d):
                t = (nodes[g, a] - coords[p, a]) * inv_bw[a]
                q += t * t
            e = math.exp(-0.5 * q)
            acc += weights[p] * e if use_w else e
        out[g] = acc * norm_c


def kde_direct(
    coords: np.ndarray,
    nodes: np.ndarray,
    bandwidth: float | Sequence[float],
    *,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Exact Gaussian KDE (direct summation, O(points x nodes)): the reference for the binned estimate.

    Parameters
    ----------
    coords
        ``(n, d)`` points.
    nodes
        ``(m, d)`` evaluation points.
    bandwidth
        Standard deviation, one value or one per axis.
    weights
        Point weights (normalised to sum 1); ``None`` for equal weights.

    Returns
    -------
    ``(m,)`` density values (integral 1).

    See Also
    --------
    :func:`stmap.kernels.kde_grid`
        The fast binned estimate on a grid.

    Examples
    --------
    >>> import numpy as np
    >>> from stmap import kernels
    >>> kernels.kde_direct(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [1.0, 0.0]]), 1.0).round(4)
    array([0.1592, 0.0965])
    """
    coords = np.ascontiguousarray(coords, dtype=np.float64)
    nodes = np.ascontiguousarray(nodes, dtype=np.float64)
    d = coords.shape[1]
    bw = np.broadcast_to(np.asarray(bandwidth, dtype=np.float64), (d,))
    use_w = weights is not None
    w = np.ascontiguousarray(weights, dtype=np.float64) if use_w else np.empty(0)
    total = w.sum() if use_w else float(coords.shape[0])
    norm_c = 1.0 / (total * (2 * math.pi) ** (d / 2) * float(np.prod(bw)))
    out = np.empty(nodes.shape[0], dtype=np.float64)
    _direct(coords, w, use_w, nodes, 1.0 / bw, norm_c, out)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# map comparison
# ---------------------------------------------------------------------------------------------------------------------
def grid_stats(a: np.ndarray) -> tuple[float, float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Sum, maximum and the three axis marginals of a ``(nx, ny, nz)`` grid.

    Parameters
    ----------
    a
        ``(nx, ny, nz)`` array (a 2D map as ``(nx, ny, 1)``).

    Returns
    -------
    ``(total, maximum, (marginal_x, marginal_y, marginal_z))``; marginals in float64 (summed in the array's dtype
    with numpy's pairwise summation, relative error ~ ``eps * log2(n)``).
    """
    pxy = a.sum(axis=2)  # one pass over the grid; the rest works on the (nx, ny) and (nx, nz) partials
    pz = a.sum(axis=1)
    mx = pxy.sum(axis=1, dtype=np.float64)
    return float(mx.sum()), float(a.max()), (mx, pxy.sum(axis=0, dtype=np.float64), pz.sum(axis=0, dtype=np.float64))


@njit(parallel=True, cache=True, fastmath=False)
def map_scores(s, q, s_thr, q_floor, s_tot, q_tot, floor_u, q_plogp):
    """One fused pass over two flat maps: the sums every ranking score needs.

    Parameters
    ----------
    s, q
        Flat class and query maps (float32/float64).
    s_thr
        CellMap2D relevant region: ``s > s_thr``.
    q_floor
        CellMap2D penalty: ``q < q_floor``.
    s_tot, q_tot
        Sums of the maps (for the normalised distributions of JS/KL).
    floor_u
        Added to the normalised class map in KL.
    q_plogp
        ``sum p log p`` of the normalised query map (computed once per query).

    Returns
    -------
    ``(n_region, sse_region, s_region, s_missed, sum_s, sum_ss, sum_sq, sum_qq, sum_q, js2, kl)`` where ``js2`` is
    twice the Jensen-Shannon divergence.

    Notes
    -----
    Two logarithms per voxel: ``log(sn + u)`` and ``log(m)``, ``m = (pn + sn) / 2``. ``KL = sum p log p - sum p
    log(sn + u)`` and ``2 JS = sum p log p + sum sn log sn - sum 2 m log m``, with ``sum sn log sn`` taken as ``sum
    sn log(sn + u)``: the two differ by at most ``sum sn * u / sn = n u`` (``log1p(x) <= x``), i.e. by the ``eps``
    of :func:`stmap.tl.density_scores` (1e-12).
    """
    n = s.size
    n_region = 0
    sse = 0.0
    s_region = 0.0
    s_missed = 0.0
    sum_s = 0.0
    sum_ss = 0.0
    sum_sq = 0.0
    sum_qq = 0.0
    sum_q = 0.0
    slogs = 0.0
    mlogm = 0.0
    plogs = 0.0
    inv_s = 1.0 / s_tot if s_tot > 0 else 0.0
    inv_q = 1.0 / q_tot
    for i in prange(n):
        sv = np.float64(s[i])
        qv = np.float64(q[i])
        sum_s += sv
        sum_ss += sv * sv
        sum_sq += sv * qv
        sum_qq += qv * qv
        sum_q += qv
        if sv > s_thr:
            n_region += 1
            d = sv - qv
            sse += d * d
            s_region += sv
            if qv < q_floor:
                s_missed += sv
        pn = qv * inv_q
        sn = sv * inv_s
        ls = math.log(sn + floor_u)
        plogs += pn * ls
        slogs += sn * ls
        m = pn + sn
        if m > 0:
            mlogm += m * math.log(0.5 * m)
    js2 = q_plogp + slogs - mlogm
    kl = q_plogp - plogs
    if js2 < 0.0:
        js2 = 0.0
    return n_region, sse, s_region, s_missed, sum_s, sum_ss, sum_sq, sum_qq, sum_q, js2, kl


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def map_sums(s, q, pn, s_thr, q_floor, inv_s, floor_u, a_buf, h_buf):
    """The log-free sums of :func:`map_scores` in one serial pass, and the arguments of its two logarithms.

    Parameters
    ----------
    s, q
        Flat class and query maps.
    pn
        The query map normalised to sum 1 (float64, computed once per query).
    s_thr, q_floor
        As in :func:`map_scores`.
    inv_s
        ``1 / sum(s)`` (0 for an empty class map).
    floor_u
        Added to the normalised class map in KL.
    a_buf, h_buf
        float64 buffers of ``s.size``, filled with ``sn + floor_u`` and ``max((pn + sn) / 2, tiny)`` (``sn = s *
        inv_s``) for :func:`numpy.log` (SIMD) to take in place before :func:`map_log_sums`.

    Returns
    -------
    ``(n_region, sse_region, s_region, s_missed, sum_s, sum_ss, sum_sq)``.

    Notes
    -----
    Serial and ``nogil``: the caller runs one class per thread.
    """
    n = s.size
    n_region = 0.0
    sse = 0.0
    s_region = 0.0
    s_missed = 0.0
    sum_s = 0.0
    sum_ss = 0.0
    sum_sq = 0.0
    tiny = 1e-300
    for i in range(n):
        sv = np.float64(s[i])
        qv = np.float64(q[i])
        sum_s += sv
        sum_ss += sv * sv
        sum_sq += sv * qv
        r = 1.0 if sv > s_thr else 0.0  # branch-free: the loop vectorises
        d = sv - qv
        n_region += r
        sse += r * d * d
        s_region += r * sv
        s_missed += (r * sv) if qv < q_floor else 0.0
        sn = sv * inv_s
        a_buf[i] = sn + floor_u
        h = 0.5 * (pn[i] + sn)
        h_buf[i] = max(h, tiny)
    return int(n_region), sse, s_region, s_missed, sum_s, sum_ss, sum_sq


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def map_log_sums(s, pn, inv_s, log_a, log_h):
    """``(sum pn log a, sum sn log a, sum m log h)``, ``m = pn + sn = 2 h``, from the logs of :func:`map_sums`' buffers.

    ``m`` is recomputed; ``m = 0`` adds 0, as ``m log m`` at ``m = 0`` in :func:`map_scores`.
    """
    plogs = 0.0
    slogs = 0.0
    mlogm = 0.0
    for i in range(s.size):
        sn = np.float64(s[i]) * inv_s
        p = pn[i]
        la = log_a[i]
        plogs += p * la
        slogs += sn * la
        mlogm += (p + sn) * log_h[i]  # m = 0 where h was floored to 1e-300: adds 0 * log(1e-300) = 0
    return plogs, slogs, mlogm
