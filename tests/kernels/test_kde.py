"""Numba KDE kernels: exactness vs direct summation, convergence order, weights, 2D/3D, parallel == serial."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from stmap.kernels import gaussian_kernel_1d, gaussian_smooth, kde_direct, kde_grid, linear_binning


def _nodes(lo, step, shape):
    axes = [lo[a] + np.arange(shape[a]) * step[a] for a in range(len(shape))]
    return np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _fine_case(pts, bw, per_bw=6.0):
    """A grid with bw/step = per_bw covering the points +- 5 bandwidths."""
    lo = pts.min(0) - 5 * np.asarray(bw)
    hi = pts.max(0) + 5 * np.asarray(bw)
    step = np.asarray(bw) / per_bw * np.ones(pts.shape[1])
    shape = tuple(int(np.ceil((h - lo_) / s)) + 1 for lo_, h, s in zip(lo, hi, step, strict=True))
    return tuple(lo), tuple(step), shape


class TestKDEGrid:
    @settings(max_examples=15, deadline=None)
    @given(
        n=hst.integers(10, 60),
        bw=hst.floats(0.5, 3.0),
        seed=hst.integers(0, 2**31 - 1),
        weighted=hst.booleans(),
    )
    def test_matches_direct_sum(self, n, bw, seed, weighted):
        rng = np.random.default_rng(seed)
        pts = rng.uniform(0, 10, size=(n, 2))
        w = rng.uniform(0.1, 2.0, n) if weighted else None
        lo, step, shape = _fine_case(pts, bw, per_bw=10.0)
        grid, dropped, total = kde_grid(pts, bw, lo, step, shape, weights=w)
        exact = kde_direct(pts, _nodes(lo, step, shape), bw, weights=w).reshape(shape)
        assert dropped == 0
        assert total == pytest.approx(n if w is None else w.sum())
        # the bar on a fine grid (10 nodes per bandwidth): with the binning-variance correction the error is
        # ~(f(1-f) - 1/6) (step/bw)^2 / 2 per point, averaged over >= 10
        # points (one point on a node: 1.2e-3); 4-sigma truncation adds ~1e-4
        assert _rel_l2(grid, exact) <= 1e-3

    def test_second_order_convergence(self):
        rng = np.random.default_rng(0)
        pts = rng.normal(size=(300, 2))
        errs = []
        for n in (33, 65, 129):
            lo, step, shape = (-5.0, -5.0), (10 / (n - 1),) * 2, (n, n)
            g, _, _ = kde_grid(pts, 0.4, lo, step, shape)
            errs.append(_rel_l2(g, kde_direct(pts, _nodes(lo, step, shape), 0.4).reshape(shape)))
        rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
        # linear binning is O(step^2): halving the step divides the error by ~4 (rate 2; allow 1.8 for noise)
        assert (rates > 1.8).all(), (errs, rates)

    def test_3d_anisotropic(self):
        rng = np.random.default_rng(1)
        pts = rng.normal(size=(200, 3)) * [1.0, 2.0, 0.5]
        bw = (0.6, 0.9, 0.45)
        lo, step, shape = _fine_case(pts, bw, per_bw=5.0)
        g, _, _ = kde_grid(pts, bw, lo, step, shape)
        exact = kde_direct(pts, _nodes(lo, step, shape), bw).reshape(shape)
        # 5 nodes per bandwidth on every axis, 200 points: residual binning error ~1e-3 (measured 2.4e-3 uncorrected)
        assert _rel_l2(g, exact) <= 1e-3
        # integral 1: all mass inside a grid that covers +- 5 bandwidths
        assert g.sum() * np.prod(step) == pytest.approx(1.0, rel=5e-4)  # 4-sigma truncation drops ~6e-5 per axis

    def test_integer_weights_equal_duplicates(self):
        rng = np.random.default_rng(2)
        pts = rng.uniform(0, 5, size=(30, 2))
        k = rng.integers(1, 4, 30)
        lo, step, shape = (-2.0, -2.0), (0.1, 0.1), (91, 91)
        a, _, _ = kde_grid(pts, 0.5, lo, step, shape, weights=k.astype(float), norm="counts")
        b, _, _ = kde_grid(np.repeat(pts, k, axis=0), 0.5, lo, step, shape, norm="counts")
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)  # same sums, different rounding order only

    def test_norms(self):
        pts = np.random.default_rng(3).uniform(2, 8, size=(50, 2))
        args = ((0.0, 0.0), (0.1, 0.2), (101, 51))
        d, _, _ = kde_grid(pts, 0.7, *args, norm="density")
        c, _, _ = kde_grid(pts, 0.7, *args, norm="counts")
        v, _, _ = kde_grid(pts, 0.7, *args, norm="cells_per_voxel")
        np.testing.assert_allclose(c, 50 * d, rtol=1e-12)  # exact rescaling
        np.testing.assert_allclose(v, c * 0.02, rtol=1e-12)
        assert v.sum() == pytest.approx(50, rel=1e-3)  # expected cells per voxel sum to the count (mass inside)

    def test_float32_close_to_float64(self):
        pts = np.random.default_rng(4).normal(size=(500, 3))
        args = (0.5, (-4.0,) * 3, (0.1,) * 3, (81, 81, 81))
        a, _, _ = kde_grid(pts, *args, dtype=np.float32)
        b, _, _ = kde_grid(pts, *args, dtype=np.float64)
        assert a.dtype == np.float32
        assert _rel_l2(a.astype(float), b) < 1e-5  # float32 has ~7 significant digits; sums of ~50 terms per node

    def test_fir_equals_fft(self):
        pts = np.random.default_rng(5).normal(size=(300, 3))
        args = (0.4, (-4.0,) * 3, (0.1, 0.12, 0.15), (81, 67, 54))
        a, _, _ = kde_grid(pts, *args, method="fir")
        b, _, _ = kde_grid(pts, *args, method="fft")
        # same sampled kernel, only the summation differs: FFT round-off ~1e-15 relative to the maximum
        np.testing.assert_allclose(a, b, atol=1e-12 * a.max())

    def test_wide_kernel_fft_matches_direct(self):
        pts = np.random.default_rng(6).normal(size=(100, 2))
        lo, step, shape = (-6.0, -6.0), (0.05, 0.05), (241, 241)
        g, _, _ = kde_grid(pts, 1.5, lo, step, shape)  # 120 taps per side: the FFT path
        exact = kde_direct(pts, _nodes(lo, step, shape), 1.5).reshape(shape)
        assert _rel_l2(g, exact) <= 1e-3  # 30 nodes per bandwidth: binning error ~1e-4; truncation dominates

    def test_dask_equals_numpy(self):
        da = pytest.importorskip("dask.array")
        pts = np.random.default_rng(7).normal(size=(1000, 2))
        w = np.random.default_rng(8).uniform(size=1000)
        args = (0.3, (-4.0, -4.0), (0.1, 0.1), (81, 81))
        a, _, _ = kde_grid(pts, *args, weights=w)
        b, _, _ = kde_grid(da.from_array(pts, chunks=(170, 2)), *args, weights=da.from_array(w, chunks=170))
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)  # chunked sums differ only in rounding order


class TestPointsOutsideTheGrid:
    """Pad-and-crop: points beyond the bounds add their kernels' mass inside; the density counts every point."""

    @staticmethod
    def _case(d, seed, n, length=12.0, bw=1.0):
        rng = np.random.default_rng(seed)
        pts = rng.uniform(0, length, size=(n, d))
        k = max(2, n // 100)  # 1 % of the points just outside (within 2 bandwidths of a face) ...
        near = rng.uniform(0, length, size=(k, d))
        beyond = np.where(rng.random(k) < 0.5, -rng.uniform(0, 2 * bw, k), length + rng.uniform(0, 2 * bw, k))
        near[np.arange(k), rng.integers(0, d, k)] = beyond
        far = rng.uniform(0, length, size=(k, d))  # ... and 1 % far beyond the kernel's support
        far[:, 0] = length + 50 * bw
        return np.concatenate([pts, near, far])

    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize(("d", "n"), [(2, 400), (3, 200)])
    def test_matches_exact_sum_of_all_points(self, d, n, seed):
        pts = self._case(d, seed, n)
        lo, step, shape = (0.0,) * d, (1.0 / 6,) * d, (73,) * d  # bounds [0, 12] per axis, 6 nodes per bandwidth
        grid, dropped, total = kde_grid(pts, 1.0, lo, step, shape)
        exact = kde_direct(pts, _nodes(lo, step, shape), 1.0).reshape(shape)  # every point, normalised by all
        assert dropped == 0 and total == len(pts)
        # the bar: rel. L2 <= 1e-3 (measured 2.1-2.5e-4 in 2D, 6.6-7.4e-4 in 3D: binning error at 6 nodes per
        # bandwidth; dropping the outside points instead gave 2.0e-2 / 2.2-2.8e-2)
        assert _rel_l2(grid, exact) <= 1e-3

    def test_far_points_contribute_nothing_and_count(self):
        pts = np.random.default_rng(3).normal(size=(200, 2))
        args = (0.5, (-4.0, -4.0), (0.1, 0.1), (81, 81))
        a, _, ta = kde_grid(pts, *args)
        far = np.full((200, 2), 1e6)  # beyond the support of every node
        b, _, tb = kde_grid(np.concatenate([pts, far]), *args)
        assert (ta, tb) == (200.0, 400.0)
        np.testing.assert_allclose(b, a / 2, rtol=1e-12)  # same kernels, half the normalisation
        c, _, _ = kde_grid(np.concatenate([pts, far]), *args, norm="counts")
        np.testing.assert_allclose(c, a * 200, rtol=1e-12)

    def test_crop_equals_larger_grid(self):
        # a window of a grid that holds every point equals the grid of that window computed alone
        pts = np.random.default_rng(4).normal(size=(300, 3))
        g, _, _ = kde_grid(pts, 0.4, (-4.0,) * 3, (0.1,) * 3, (81, 81, 81))
        w, _, _ = kde_grid(pts, 0.4, (-1.0, -4.0, 0.5), (0.1,) * 3, (41, 81, 30))
        np.testing.assert_allclose(w, g[30:71, :, 45:75], rtol=1e-9, atol=1e-12 * g.max())

    def test_wide_kernel_fft_padding(self):
        pts = np.random.default_rng(5).normal(size=(100, 2)) * 2
        lo, step, shape = (-1.0, -1.0), (0.05, 0.05), (41, 41)  # 120 taps per side: padded FFT path
        g, _, _ = kde_grid(pts, 1.5, lo, step, shape)
        exact = kde_direct(pts, _nodes(lo, step, shape), 1.5).reshape(shape)
        assert _rel_l2(g, exact) <= 1e-3

    def test_non_finite_skipped_not_counted(self):
        pts = np.random.default_rng(6).normal(size=(50, 2))
        pts[:3] = np.nan
        g, dropped, total = kde_grid(pts, 0.5, (-4.0, -4.0), (0.1, 0.1), (81, 81))
        assert (dropped, total) == (3, 47.0)
        ref, _, _ = kde_grid(pts[3:], 0.5, (-4.0, -4.0), (0.1, 0.1), (81, 81))
        np.testing.assert_array_equal(g, ref)


class TestBinning:
    def test_parallel_equals_serial_bitwise(self):
        rng = np.random.default_rng(9)
        pts = rng.normal(size=(20000, 3))
        w = rng.uniform(size=20000)
        args = ((-4.0,) * 3, (0.2,) * 3, (41, 41, 41))
        serial, _ = linear_binning(pts, *args, weights=w, n_blocks=1)
        for nb in (2, 3, 7):
            par, _ = linear_binning(pts, *args, weights=w, n_blocks=nb)
            np.testing.assert_array_equal(par, serial)  # every node sums its points in the same order
        old = numba.get_num_threads()
        try:
            numba.set_num_threads(1)
            one, _ = linear_binning(pts, *args, weights=w)
        finally:
            numba.set_num_threads(old)
        np.testing.assert_array_equal(one, serial)

    def test_matches_reference_and_drops(self):
        rng = np.random.default_rng(10)
        pts = rng.uniform(-1, 11, size=(3000, 2))
        pts[:5] = np.nan
        lo, step, shape = (0.0, 0.0), (0.5, 0.25), (21, 41)
        g, dropped = linear_binning(pts, lo, step, shape)
        u = (pts - lo) / step
        inside = np.all((u >= 0) & (u <= np.array(shape) - 1), axis=1)
        assert dropped == int((~inside).sum())
        ref = np.zeros(shape)
        for x, y in u[inside]:  # reference cloud-in-cell with np.add.at
            i, j = min(int(x), shape[0] - 2), min(int(y), shape[1] - 2)
            fx, fy = x - i, y - j
            np.add.at(
                ref,
                ([i, i, i + 1, i + 1], [j, j + 1, j, j + 1]),
                [(1 - fx) * (1 - fy), (1 - fx) * fy, fx * (1 - fy), fx * fy],
            )
        np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-12)
        # linear binning conserves mass and the first moment exactly
        assert g.sum() == pytest.approx(inside.sum())
        xs = lo[0] + np.arange(shape[0]) * step[0]
        assert (g.sum(1) * xs).sum() == pytest.approx(pts[inside, 0].sum(), rel=1e-12)

    def test_smooth_rejects_non_contiguous(self):
        with pytest.raises(ValueError, match="C-contiguous"):
            gaussian_smooth(np.zeros((10, 10))[:, ::2], 1.0)


def _cases(*funcs):
    """Every invalid value generated from the functions' declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(f, name, value, id=f"{f.__name__}-{name}-{i}")
        for f in funcs
        for name, spec in f.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


class TestParameters:
    @pytest.mark.parametrize(
        ("func", "name", "value"), _cases(kde_grid, gaussian_smooth, linear_binning, gaussian_kernel_1d)
    )
    def test_invalid_value_raises_untouched(self, func, name, value):
        from stmap import StmapInputError

        pts = np.random.default_rng(0).normal(size=(30, 2))
        grid = np.zeros((8, 9))
        args = {
            kde_grid: (pts, 1.0, (-3.0, -3.0), (0.75, 0.75), (9, 9)),
            gaussian_smooth: (grid, 1.0),
            linear_binning: (pts, (-3.0, -3.0), (0.75, 0.75), (9, 9)),
            gaussian_kernel_1d: (1.0, 0.5),
        }[func]
        before = [np.array(a, copy=True) for a in args]
        kw = {name: value}
        if func is gaussian_kernel_1d and name in ("sigma", "step"):
            args, kw = (), {"sigma": 1.0, "step": 0.5, name: value}
        with pytest.raises(StmapInputError, match=f"{func.__name__}: {name} must be"):
            func(*args, **kw)
        for a, b in zip(args, before, strict=False):
            np.testing.assert_array_equal(a, b)
