"""st.pp.register / align_sections / fit_transform / icp: recover known transforms, written without resampling."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.transformations import get_transformation

import stmap as st
from stmap._core import StmapInputError, affine_matrix, make_image, make_points, new_spatialdata


def _similarity(angle=0.6, scale=1.3, t=(40.0, -25.0)):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]], [0, 0, 1.0]])


def _cloud(n=600, seed=0):
    """An asymmetric 2D cloud (three blobs of different sizes and an arc), so the rotation is identifiable."""
    rng = np.random.default_rng(seed)
    a = rng.normal((0, 0), 8, size=(n // 3, 2))
    b = rng.normal((60, 10), 4, size=(n // 4, 2))
    ang = rng.uniform(0, 2.5, n - n // 3 - n // 4)
    c = np.c_[30 + 45 * np.cos(ang), 50 + 45 * np.sin(ang)] + rng.normal(0, 1.5, (len(ang), 2))
    return np.concatenate([a, b, c])


class TestFitTransform:
    @pytest.mark.parametrize("kind", ["translation", "rigid", "similarity", "affine"])
    def test_exact_recovery_2d(self, kind):
        rng = np.random.default_rng(0)
        m = {
            "translation": affine_matrix(1.0, (3.0, -7.0)),
            "rigid": _similarity(scale=1.0),
            "similarity": _similarity(),
            "affine": np.array([[1.2, 0.3, 5.0], [-0.2, 0.8, 1.0], [0, 0, 1.0]]),
        }[kind]
        src = rng.uniform(-50, 50, size=(12, 2))
        dst = st.pp.apply_transform(m, src)
        # noiseless pairs: the least-squares solution is the transform itself (float round-off only)
        np.testing.assert_allclose(st.pp.fit_transform(src, dst, kind=kind), m, atol=1e-9)

    def test_3d_similarity_and_no_reflection(self):
        rng = np.random.default_rng(1)
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))  # proper rotation
        m = np.eye(4)
        m[:3, :3] = 0.7 * q
        m[:3, 3] = [1.0, 2.0, 3.0]
        src = rng.normal(size=(20, 3))
        np.testing.assert_allclose(st.pp.fit_transform(src, st.pp.apply_transform(m, src)), m, atol=1e-9)
        # a mirrored target: the rigid fit stays a proper rotation (det +1)
        mirrored = src * [1, 1, -1]
        r = st.pp.fit_transform(src, mirrored, kind="rigid")
        assert np.linalg.det(r[:3, :3]) == pytest.approx(1.0)

    def test_least_squares_with_noise(self):
        rng = np.random.default_rng(2)
        m = _similarity()
        src = rng.uniform(-50, 50, size=(200, 2))
        dst = st.pp.apply_transform(m, src) + rng.normal(0, 0.5, (200, 2))
        fit = st.pp.fit_transform(src, dst, kind="similarity")
        # 200 pairs, noise 0.5 over a 100-wide field: parameter error ~ 0.5 / sqrt(200) / 50 ~ 1e-3
        np.testing.assert_allclose(fit[:2, :2], m[:2, :2], atol=5e-3)

    @pytest.mark.parametrize(
        ("src", "dst", "kind", "match"),
        [
            (np.zeros((2, 2)), np.zeros((3, 2)), "rigid", "matching"),
            (np.ones((2, 2)), np.ones((2, 2)), "affine", "at least 3"),
            (np.c_[np.arange(5.0), np.arange(5.0)], np.ones((5, 2)), "affine", "collinear"),
            (np.ones((3, 2)), np.ones((3, 2)), "shear", "kind"),
        ],
    )
    def test_bad_input(self, src, dst, kind, match):
        with pytest.raises(StmapInputError, match=match):
            st.pp.fit_transform(src, dst, kind=kind)


class TestICP:
    def test_recovers_similarity_with_partial_overlap(self):
        rng = np.random.default_rng(3)
        fixed = _cloud()
        m = _similarity()
        inv = np.linalg.inv(m)
        moving = st.pp.apply_transform(inv, fixed[rng.permutation(len(fixed))[:500]]) + rng.normal(0, 0.3, (500, 2))
        fit, info = st.pp.icp(moving, fixed, kind="similarity")
        # 500 noisy points (0.3 / 1.3 in moving units): matrix entries within 1e-2, trimmed residual ~ noise
        np.testing.assert_allclose(fit, m, atol=2e-2 * np.abs(m).max())
        assert info["rmse"] < 1.0

    def test_3d_rigid(self):
        rng = np.random.default_rng(4)
        fixed = np.c_[_cloud(seed=4), rng.normal(0, 5, 600)]
        m = np.eye(4)
        a = 0.3
        m[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
        m[:3, 3] = [5.0, -3.0, 2.0]
        moving = st.pp.apply_transform(np.linalg.inv(m), fixed)
        fit, _ = st.pp.icp(moving, fixed, kind="rigid")
        # exact correspondences exist: ICP converges to the transform
        np.testing.assert_allclose(fit, m, atol=1e-3)


def _sections():
    fixed = _cloud(seed=5)
    m = _similarity()
    moving = st.pp.apply_transform(np.linalg.inv(m), fixed)
    img = make_image(np.zeros((1, 50, 60), dtype=np.float32), transform=affine_matrix(2.0, (-20.0, -20.0)))
    sdata = new_spatialdata(
        points={"atlas": make_points(fixed), "section": make_points(moving)},
        images={"section_he": img},
        units={"global": "um"},
    )
    return sdata, m


class TestRegister:
    def test_landmarks_and_roundtrip(self, tmp_path):
        sdata, m = _sections()
        lm_moving = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 40.0], [30.0, 30.0]])
        lm_fixed = st.pp.apply_transform(m, lm_moving)
        st.pp.register(sdata, "section", "atlas", landmarks=(lm_moving, lm_fixed), elements=["section", "section_he"])
        # the moving points land on the atlas points in the new coordinate system; the atlas is there unchanged
        a = sd.transform(sdata.points["section"], to_coordinate_system="aligned").compute()[["x", "y"]].to_numpy()
        b = sd.transform(sdata.points["atlas"], to_coordinate_system="aligned").compute()[["x", "y"]].to_numpy()
        np.testing.assert_allclose(a, b, atol=1e-8)
        # the image is moved by composition: pixel -> global -> aligned, nothing resampled
        t = get_transformation(sdata.images["section_he"], to_coordinate_system="aligned")
        np.testing.assert_allclose(t.to_affine_matrix(("x", "y"), ("x", "y")), m @ affine_matrix(2.0, (-20.0, -20.0)))
        assert sdata.images["section_he"].shape == (1, 50, 60)
        info = sdata.tables["stmap_registration"].uns["stmap_registration"]
        np.testing.assert_allclose(info["matrix"], m, atol=1e-9)
        assert info["method"] == "landmarks" and info["rmse"] < 1e-9
        sdata.write(tmp_path / "r.zarr")
        back = sd.read_zarr(tmp_path / "r.zarr")
        a2 = sd.transform(back.points["section"], to_coordinate_system="aligned").compute()[["x", "y"]].to_numpy()
        np.testing.assert_allclose(a2, a)

    def test_icp_copy_leaves_input(self):
        sdata, m = _sections()
        out = st.pp.register(sdata, "section", "atlas", copy=True)
        assert "aligned" not in get_transformation(sdata.points["section"], get_all=True)
        assert "stmap_registration" not in sdata.tables
        t = get_transformation(out.points["section"], to_coordinate_system="aligned")
        # exact correspondences: ICP recovers the planted similarity
        np.testing.assert_allclose(t.to_affine_matrix(("x", "y"), ("x", "y")), m, atol=1e-3 * np.abs(m).max())

    def test_arrays(self):
        fixed = _cloud(seed=6)
        m = _similarity(angle=-1.0)
        mat, summary = st.pp.register(None, st.pp.apply_transform(np.linalg.inv(m), fixed), fixed)
        np.testing.assert_allclose(mat, m, atol=1e-3 * np.abs(m).max())
        assert summary["method"] == "icp"

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"moving": "nope", "fixed": "atlas"}, "nope"),
            ({"moving": "section"}, "fixed"),
            ({"moving": "section", "fixed": "atlas", "kind": "warp"}, "kind"),
            ({"moving": "section", "landmarks": (np.ones((3, 2)), np.ones((4, 2)))}, "shape"),
            ({"moving": "section", "fixed": "atlas", "elements": ["ghost"]}, "ghost"),
        ],
    )
    def test_bad_input_leaves_object_unchanged(self, kwargs, match):
        sdata, _ = _sections()
        before = {n: dict(get_transformation(el, get_all=True)) for _, n, el in sdata.gen_spatial_elements()}
        with pytest.raises(StmapInputError, match=match):
            st.pp.register(sdata, **kwargs)
        after = {n: dict(get_transformation(el, get_all=True)) for _, n, el in sdata.gen_spatial_elements()}
        assert {k: list(v) for k, v in before.items()} == {k: list(v) for k, v in after.items()}
        assert list(sdata.tables) == []


class TestAlignSections:
    def test_stack_recovers_rigid_offsets(self):
        rng = np.random.default_rng(7)
        base = _cloud(seed=7)
        mats, pts = [], {}
        for i in range(3):
            m = _similarity(angle=0.25 * (i - 1), scale=1.0, t=(10.0 * (i - 1), -5.0 * i))
            mats.append(m)
            sub = base[rng.permutation(len(base))[:450]]
            pts[f"s{i}"] = make_points(st.pp.apply_transform(np.linalg.inv(m), sub))
        sdata = new_spatialdata(points=pts, units={"global": "um"})
        st.pp.align_sections(sdata, ["s0", "s1", "s2"], reference="s1")
        # each section's transform composed with the reference's inverse planted one maps it back onto the base
        for i in range(3):
            t = get_transformation(sdata.points[f"s{i}"], to_coordinate_system="aligned")
            got = t.to_affine_matrix(("x", "y"), ("x", "y"))
            expect = np.linalg.inv(mats[1]) @ mats[i]
            # different point subsets (450 of 600) per section: nearest-neighbour pairs are not exact matches
            np.testing.assert_allclose(got, expect, atol=0.05 * np.abs(expect).max())
        info = sdata.tables["stmap_alignment"].uns["stmap_alignment"]
        assert info["reference"] == "s1" and info["matrices"].shape == (3, 3, 3) and info["rmse"][1] == 0

    def test_bad_input(self):
        sdata, _ = _sections()
        with pytest.raises(StmapInputError, match="two"):
            st.pp.align_sections(sdata, ["section"])
        with pytest.raises(StmapInputError, match="zz"):
            st.pp.align_sections(sdata, ["section", "atlas"], reference="zz")
        assert list(sdata.tables) == []


def _cases(func):
    """Every invalid value generated from the tool's declared constraints, with a stable test id."""
    from stmap._core import invalid_values

    return [
        pytest.param(name, value, id=f"{name}-{i}")
        for name, spec in func.__stmap_params__.items()
        for i, value in enumerate(invalid_values(spec))
    ]


def _transforms(sdata):
    return {n: sorted(get_transformation(el, get_all=True)) for _, n, el in sdata.gen_spatial_elements()}


class TestParameters:
    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.register))
    def test_register_invalid_value_raises_untouched(self, name, value):
        sdata, _ = _sections()
        before = _transforms(sdata)
        kw = {"moving": "section", "fixed": "atlas", name: value}
        with pytest.raises(StmapInputError, match=f"register: {name} must be"):
            st.pp.register(sdata, **kw)
        assert _transforms(sdata) == before and list(sdata.tables) == []

    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.align_sections))
    def test_align_sections_invalid_value_raises_untouched(self, name, value):
        sdata, _ = _sections()
        before = _transforms(sdata)
        with pytest.raises(StmapInputError, match=f"align_sections: {name} must be"):
            st.pp.align_sections(sdata, **{"sections": ["section", "atlas"], name: value})
        assert _transforms(sdata) == before and list(sdata.tables) == []

    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.icp))
    def test_icp_invalid_value_raises(self, name, value):
        a, b = _cloud(60, seed=1), _cloud(60, seed=2)
        a0, b0 = a.copy(), b.copy()
        with pytest.raises(StmapInputError, match=f"icp: {name} must be"):
            st.pp.icp(a, b, **{name: value})
        np.testing.assert_array_equal(a, a0)
        np.testing.assert_array_equal(b, b0)

    @pytest.mark.parametrize(("name", "value"), _cases(st.pp.fit_transform))
    def test_fit_transform_invalid_value_raises(self, name, value):
        src = np.random.default_rng(0).uniform(size=(5, 2))
        with pytest.raises(StmapInputError, match=f"fit_transform: {name} must be"):
            st.pp.fit_transform(src, src + 1, **{name: value})

    def test_unknown_icp_option(self):
        sdata, _ = _sections()
        with pytest.raises(StmapInputError, match=r"icp_kwargs has unknown options \['n_start'\]"):
            st.pp.register(sdata, "section", "atlas", icp_kwargs={"n_start": 2})
        assert list(sdata.tables) == []
