"""st.pp.icp / register: the default similarity ICP does not shrink into a wrong minimum, and a poor fit warns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import stmap as st
from stmap._core import StmapInputError, make_points, new_spatialdata


def _rotation(deg, t=(10.0, -5.0), scale=1.0):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]], [0, 0, 1.0]])


def _angle_scale(m):
    return float(np.rad2deg(np.arctan2(m[1, 0], m[0, 0]))), float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))


def _square(n=2000, seed=0):
    """Uniform points in a 1000 x 1000 square: no structure but the outline."""
    return np.random.default_rng(seed).uniform(0, 1000, (n, 2))


class TestDefaultKind:
    @pytest.mark.parametrize("deg", [17.0, 30.0])
    def test_plain_rotation_recovered(self, deg):
        fixed = _square()
        m = _rotation(deg)
        moving = st.pp.apply_transform(np.linalg.inv(m), fixed)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a right fit does not warn
            fit, info = st.pp.icp(moving, fixed)
        angle, scale = _angle_scale(fit)
        # before: the free scale shrank the cloud while the rotation was off (17 deg -> 40.9 deg, scale 0.801,
        # rmse 10.5 = 0.94 x the spacing); now rigid first, then similarity: exact correspondences, round-off only
        assert angle == pytest.approx(deg, abs=0.5)
        assert scale == pytest.approx(1.0, rel=0.01)
        assert info["rmse"] < 1e-6 * info["spacing"]

    def test_rotation_and_scale_recovered(self):
        fixed = _square(seed=1)
        m = _rotation(17.0, scale=0.8)
        moving = st.pp.apply_transform(np.linalg.inv(m), fixed)
        fit, _ = st.pp.icp(moving, fixed)
        np.testing.assert_allclose(fit, m, atol=1e-6 * np.abs(m).max())

    def test_affine_too(self):
        fixed = _square(seed=2)
        m = _rotation(17.0)
        fit, _ = st.pp.icp(st.pp.apply_transform(np.linalg.inv(m), fixed), fixed, kind="affine")
        np.testing.assert_allclose(fit, m, atol=1e-6 * np.abs(m).max())

    def test_register_default_kind(self):
        fixed = _square(seed=3)
        m = _rotation(17.0)
        moving = st.pp.apply_transform(np.linalg.inv(m), fixed)
        sdata = new_spatialdata(points={"atlas": make_points(fixed), "section": make_points(moving)})
        st.pp.register(sdata, "section", "atlas")
        info = sdata.tables["stmap_registration"].uns["stmap_registration"]
        angle, scale = _angle_scale(info["matrix"])
        assert angle == pytest.approx(17.0, abs=0.5)
        assert scale == pytest.approx(1.0, rel=0.01)


class TestPoorResidual:
    def test_unrelated_clouds_warn(self):
        # two independent uniform squares: no registration exists, every fit lands ~ one spacing away
        a, b = _square(seed=4), _square(seed=5)
        with pytest.warns(UserWarning, match=r"nearest-neighbour spacing.*kind='rigid'.*landmarks"):
            _, info = st.pp.icp(a, b)
        assert info["rmse"] > 0.6 * info["spacing"]

    def test_warn_false_silences(self):
        a, b = _square(seed=4), _square(seed=5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            st.pp.icp(a, b, warn=False)

    def test_register_warns(self):
        a, b = _square(seed=4), _square(seed=5)
        with pytest.warns(UserWarning, match="wrong minimum"):
            st.pp.register(None, a, b)

    @pytest.mark.parametrize(
        ("init", "match"), [(np.zeros((3, 3)), "invertible"), (np.full((3, 3), np.nan), "finite"), (np.eye(4), "init")]
    )
    def test_bad_init_raises(self, init, match):
        with pytest.raises(StmapInputError, match=match):
            st.pp.icp(_square(n=50), _square(n=50, seed=1), init=init)
