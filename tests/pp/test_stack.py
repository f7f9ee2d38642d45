"""st.pp.stack_sections / spot_graph_3d / disc_iou / graph_arrays and st.datasets.simulate_stack."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from stmap._core import StmapInputError
from stmap._core._params import invalid_values
from stmap.pp import disc_iou, graph_arrays


class TestDiscIou:
    def test_against_shapely_polygons(self):
        shapely = pytest.importorskip("shapely")
        rng = np.random.default_rng(0)
        d = np.r_[rng.uniform(0, 3, 60), 0.0, 2.0, 0.5]
        r1 = np.r_[rng.uniform(0.3, 1.5, 60), 1.0, 1.0, 1.0]
        r2 = np.r_[rng.uniform(0.3, 1.5, 60), 0.4, 1.0, 1.0]
        ours = disc_iou(d, r1, r2)
        ref = []
        for di, a, b in zip(d, r1, r2):
            p = shapely.Point(0, 0).buffer(a, quad_segs=512)
            q = shapely.Point(di, 0).buffer(b, quad_segs=512)
            ref.append(p.intersection(q).area / p.union(q).area)
        # 2048-gon areas differ from the discs' by ~pi^3/(3*2048^2) ~ 2.5e-6 relative: 1e-4 absolute covers it
        np.testing.assert_allclose(ours, ref, atol=1e-4)

    def test_exact_cases(self):
        # disjoint and touching discs: exactly 0; concentric / contained: exactly (r_small / r_big)^2; identical: 1
        assert disc_iou(2.0, 1.0, 1.0) == 0.0
        assert disc_iou(5.0, 1.0, 2.0) == 0.0
        assert disc_iou(0.0, 1.0, 2.0) == pytest.approx(0.25, abs=1e-15)
        assert disc_iou(0.5, 1.0, 2.0) == pytest.approx(0.25, abs=1e-15)
        assert disc_iou(0.0, 1.5, 1.5) == 1.0
        # symmetric in the radii; broadcasting
        d = np.linspace(0, 3, 31)
        np.testing.assert_allclose(disc_iou(d, 0.7, 1.2), disc_iou(d, 1.2, 0.7), rtol=1e-12)  # round-off only
        assert disc_iou(d[:, None], 1.0, np.array([0.5, 1.0])).shape == (31, 2)

    def test_monotone_in_distance(self):
        # a lens shrinks as the centres move apart
        assert np.all(np.diff(disc_iou(np.linspace(0, 2, 200), 1.0, 1.0)) <= 0)

    def test_bad_radii(self):
        with pytest.raises(StmapInputError, match="positive"):
            disc_iou(1.0, 0.0, 1.0)


def _two_grids(shift=(30.0, 0.0), n=6, spacing=200.0, layers=3):
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2) * spacing
    xy = np.concatenate([g + np.multiply(shift, i) for i in range(layers)])
    codes = np.repeat(np.arange(layers), len(g))
    xyz = np.c_[xy, codes * 100.0]
    return xyz, codes, len(g)


class TestGraphArrays:
    def test_overlap_matches_brute_force(self):
        rng = np.random.default_rng(1)
        xyz, codes, m = _two_grids(shift=(37.0, -21.0))
        xyz[:, :2] += rng.normal(0, 10, (len(xyz), 2))
        r = rng.uniform(45, 55, len(xyz))
        g = graph_arrays(xyz, codes, r, layers_apart=1)["overlap"]
        # dense reference on this small example: IoU of every pair of adjacent-layer spots
        d = np.linalg.norm(xyz[:, None, :2] - xyz[None, :, :2], axis=-1)
        ref = disc_iou(d, r[:, None], r[None, :])
        ref[np.abs(codes[:, None] - codes[None, :]) != 1] = 0
        np.testing.assert_allclose(g.toarray(), ref, atol=1e-6)  # float32 storage
        assert sparse.isspmatrix_csr(g)
        assert (g != g.T).nnz == 0
        assert g.diagonal().sum() == 0

    def test_max_overlaps_keeps_each_spots_nearest(self):
        rng = np.random.default_rng(2)
        xyz, codes, m = _two_grids(shift=(37.0, -21.0))
        xyz[:, :2] += rng.normal(0, 10, (len(xyz), 2))
        full = graph_arrays(xyz, codes, 120.0, layers_apart=2)["overlap"]
        # a cap above every spot's overlaps per section: the same graph
        big = graph_arrays(xyz, codes, 120.0, layers_apart=2, max_overlaps=10_000)["overlap"]
        assert (big != full).nnz == 0
        k = 3
        g = graph_arrays(xyz, codes, 120.0, layers_apart=2, max_overlaps=k)["overlap"]
        assert (g != g.T).nnz == 0 and g.diagonal().sum() == 0
        # kept edges are overlaps with their uncapped weights; every kept pair is among the k nearest of one end
        np.testing.assert_array_equal(g.toarray()[g.toarray() > 0], full.toarray()[g.toarray() > 0])
        d = np.linalg.norm(xyz[:, None, :2] - xyz[None, :, :2], axis=-1)
        dense = full.toarray()
        for c in np.unique(codes):
            for i in range(len(xyz)):
                other = np.flatnonzero((codes == c) & (dense[i] > 0))
                if codes[i] == c or len(other) == 0:
                    continue
                near = other[np.argsort(d[i, other], kind="stable")[:k]]
                assert (g[i, near].toarray() > 0).all()  # its k nearest overlaps are kept
                kept = np.flatnonzero(g[i].toarray().ravel() > 0)
                kept = kept[codes[kept] == c]
                for j in kept:  # any other kept one is among the k nearest of j
                    if j in near:
                        continue
                    mine = np.flatnonzero((codes == codes[i]) & (dense[j] > 0))
                    assert i in mine[np.argsort(d[j, mine], kind="stable")[:k]]
        assert g.nnz < full.nnz

    def test_layers_apart_and_min_iou(self):
        xyz, codes, m = _two_grids(shift=(20.0, 0.0))
        g1 = graph_arrays(xyz, codes, 50.0, layers_apart=1)["overlap"]
        g2 = graph_arrays(xyz, codes, 50.0, layers_apart=2)["overlap"]
        # layer 0 -> layer 2 edges appear only with layers_apart=2
        assert g1[:m, 2 * m :].nnz == 0
        assert g2[:m, 2 * m :].nnz > 0
        # shift 20 between adjacent layers: IoU of matched spots = disc_iou(20, 50, 50); 40 for layers 0-2
        assert g2[0, 2 * m] == pytest.approx(disc_iou(40.0, 50, 50), abs=1e-6)
        g3 = graph_arrays(xyz, codes, 50.0, layers_apart=2, min_iou=float(disc_iou(30.0, 50, 50)))["overlap"]
        assert g3[:m, 2 * m :].nnz == 0 and g3[:m, m : 2 * m].nnz == m

    def test_spatial_knn_within_sections(self):
        xyz, codes, m = _two_grids()
        g = graph_arrays(xyz, codes, 50.0, k_spatial=4)["spatial"]
        assert (g != g.T).nnz == 0
        # no spatial edge crosses sections
        same = codes[g.tocoo().row] == codes[g.tocoo().col]
        assert same.all()
        # on a square lattice, the 4 nearest neighbours are the lattice neighbours: interior degree is exactly 4
        deg = np.diff(g.indptr)
        assert deg.min() >= 4
        assert set(np.unique(g.data)) == {1.0}
        gg = graph_arrays(xyz, codes, 50.0, k_spatial=4, spatial_weights="gaussian")["spatial"]
        # gaussian weights with sigma = the lattice spacing: neighbours at one spacing weigh exp(-1/2)
        assert gg.data.max() == pytest.approx(np.exp(-0.5), rel=1e-6)

    def test_similarity_topk_other_sections(self):
        rng = np.random.default_rng(3)
        xyz, codes, m = _two_grids(layers=3)
        feat = rng.normal(size=(len(xyz), 5))
        feat[m : 2 * m] = feat[:m] + rng.normal(0, 1e-3, (m, 5))  # layer 1 copies layer 0's features
        g = graph_arrays(xyz, codes, 50.0, feat, k_similar=3)["similarity"]
        assert (g != g.T).nnz == 0
        coo = g.tocoo()
        # only between different sections, at most one layer apart
        assert (codes[coo.row] != codes[coo.col]).all()
        assert (np.abs(codes[coo.row] - codes[coo.col]) <= 1).all()
        # each layer-0 spot's best match is its copy in layer 1
        best = np.asarray(g[:m].argmax(axis=1)).ravel()
        np.testing.assert_array_equal(best, np.arange(m) + m)
        # top-k per spot before symmetrising: every row has at least k entries unless dissimilar to all
        assert np.diff(g.indptr).max() >= 3
        assert (g.data > 0).all() and (g.data <= 1 + 1e-6).all()

    def test_similarity_in_candidate_blocks_equals_at_once(self, monkeypatch):
        # large stacks compare each spot with the other sections' spots block by block (memory bounded): the same
        # top-k as all candidates at once
        from stmap.pp._stack import _graph

        rng = np.random.default_rng(4)
        xyz, codes, _ = _two_grids(n=12, layers=4)
        feat = rng.normal(size=(len(xyz), 6))
        once = graph_arrays(xyz, codes, 50.0, feat, k_similar=5, layers_apart=2)["similarity"]
        monkeypatch.setattr(_graph, "_SIM_BLOCK", 700)  # blocks of 5 candidates per row instead of up to 432
        blocks = graph_arrays(xyz, codes, 50.0, feat, k_similar=5, layers_apart=2)["similarity"]
        assert once.nnz == blocks.nnz > 0
        assert (once != blocks).nnz == 0  # the same pairs and values (measured: identical)

    def test_bad_inputs(self):
        xyz, codes, m = _two_grids()
        with pytest.raises(StmapInputError, match="section_codes"):
            graph_arrays(xyz, codes[:-1], 50.0)
        with pytest.raises(StmapInputError, match="radius"):
            graph_arrays(xyz, codes, 0.0)
        bad = xyz.copy()
        bad[0, 0] = np.nan
        with pytest.raises(StmapInputError, match="NaN"):
            graph_arrays(bad, codes, 50.0)
        with pytest.raises(StmapInputError, match="features"):
            graph_arrays(xyz, codes, 50.0, np.ones((3, 2)))

    @pytest.mark.parametrize("name", sorted(graph_arrays.__stmap_params__))
    def test_declared_parameters_reject_invalid_values(self, name):
        xyz, codes, _ = _two_grids()
        bad = invalid_values(graph_arrays.__stmap_params__[name])
        assert bad
        for v in bad:
            with pytest.raises(StmapInputError, match=rf"graph_arrays: {name} must be"):
                graph_arrays(xyz, codes, 50.0, **{name: v})


# ----------------------------------------------------------------------------------------------------------------------
# stacking
# ----------------------------------------------------------------------------------------------------------------------
import warnings  # noqa: E402

import spatialdata as sd  # noqa: E402
from spatialdata.transformations import get_transformation  # noqa: E402

import stmap as st  # noqa: E402


@pytest.fixture(scope="module")
def sim():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return st.datasets.simulate_stack(4, n_genes=12, seed=0, grid=10)


def _rigid_residual(tab):
    """Largest distance between aligned and true positions after the best global rigid map (alignment is up to one)."""
    xy, tr = tab.obsm["spatial_3d"][:, :2], tab.obsm["spatial_true"]
    m = st.pp.fit_transform(xy, tr, kind="rigid")
    return np.linalg.norm(st.pp.apply_transform(m, xy) - tr, axis=1)


def _snapshot(sdatas):
    return [
        (
            {k: dict(get_transformation(s[k], get_all=True)) for k in list(s.shapes) + list(s.images)},
            {k: (t.shape, t.X.sum(), list(t.obs.columns), list(t.obsm)) for k, t in s.tables.items()},
        )
        for s in sdatas
    ]


class TestSimulateStack:
    def test_shape_and_truth(self, sim):
        assert len(sim) == 4
        t = sim[1].tables["S1"]
        assert {"S1_he", "S1_spots"} <= set(sim[1].images) | set(sim[1].shapes)
        # own frame = inverse true transform of the aligned positions
        m = np.asarray(t.uns["stmap"]["true_transform"])
        np.testing.assert_allclose(st.pp.apply_transform(m, t.obsm["spatial"]), t.obsm["spatial_true"], atol=1e-9)
        # Poisson counts around the truth: the total count matches the total mean within 5 sigma
        tot, mu = float(t.X.sum()), float(t.layers["truth"].sum())
        assert abs(tot - mu) < 5 * np.sqrt(mu)

    def test_same_seed_same_data(self):
        a = st.datasets.simulate_stack(2, n_genes=5, seed=3, grid=6, image=False)
        b = st.datasets.simulate_stack(2, n_genes=5, seed=3, grid=6, image=False)
        np.testing.assert_array_equal(a[1].tables["S1"].X.toarray(), b[1].tables["S1"].X.toarray())


class TestStackSections:
    def test_warped_recovers_truth_and_layout(self, sim):
        before = _snapshot(sim)
        s = st.pp.stack_sections(sim, transforms="warped")
        tab = s.tables["stack"]
        # warped = true aligned coordinates: the affine fit is exact up to round-off
        assert _rigid_residual(tab).max() < 1e-6
        assert list(tab.obs["section"].cat.categories) == ["S0", "S1", "S2", "S3"]
        assert tab.n_obs == sum(x.tables[f"S{i}"].n_obs for i, x in enumerate(sim))
        assert tab.obs_names[0].startswith("S0:")
        assert tab.obs["measured"].all()
        u = tab.uns["stmap_stack"]
        assert u["method"] == "warped" and len(u["transforms"]) == 4
        np.testing.assert_allclose(np.diff(u["z"]), 200.0)  # default step = the lattice spacing
        np.testing.assert_allclose(
            tab.obsm["spatial_3d"][:, 2], np.repeat(u["z"], tab.obs["section"].value_counts(sort=False))
        )
        # counts kept exactly
        np.testing.assert_array_equal(tab[tab.obs["section"] == "S2"].X.toarray(), sim[2].tables["S2"].X.toarray())
        # every element is in its own section's coordinate system and in the aligned frames
        for name in ("S1_he", "S1_spots"):
            assert set(get_transformation(s[name], get_all=True)) == {"S1", "aligned", "aligned_3d"}
        assert _snapshot(sim) == before  # inputs untouched

    def test_aligned_frame_places_spots(self, sim):
        s = st.pp.stack_sections(sim, transforms="warped")
        tab = s.tables["stack"]
        # the spatialdata transformation to 'aligned' maps each section's circles onto obsm['spatial_3d'][:, :2]
        for sec in ("S0", "S3"):
            pts = sd.transform(s[f"{sec}_spots"], to_coordinate_system="aligned")
            xy = np.c_[pts.geometry.x, pts.geometry.y]
            rows = tab.obs["section"] == sec
            np.testing.assert_allclose(xy, tab.obsm["spatial_3d"][rows.to_numpy(), :2], atol=1e-6)

    def test_given_transforms_and_z(self, sim):
        mats = [np.asarray(x.tables[f"S{i}"].uns["stmap"]["true_transform"]) for i, x in enumerate(sim)]
        s = st.pp.stack_sections(sim, transforms=mats, z=[30.0, 10.0, 20.0, 0.0])
        tab = s.tables["stack"]
        # the true transforms reproduce the true positions exactly
        np.testing.assert_allclose(tab.obsm["spatial_3d"][:, :2], tab.obsm["spatial_true"], atol=1e-9)
        assert list(tab.obs["section"].cat.categories) == ["S3", "S1", "S2", "S0"]  # ordered by z

    def test_icp_within_half_a_spacing(self, sim):
        s = st.pp.stack_sections(sim, transforms="icp")
        # lattice spots: ICP can snap to the lattice, so up to half the 200 um spacing (+ slack for rotation)
        assert np.median(_rigid_residual(s.tables["stack"])) < 100.0

    def test_landmarks(self, sim):
        lm = {}
        for i, x in enumerate(sim):
            t = x.tables[f"S{i}"]
            inv = np.linalg.inv(np.asarray(t.uns["stmap"]["true_transform"]))
            true_lm = np.array([[100.0, 200.0], [1500.0, 300.0], [800.0, 1600.0], [400.0, 900.0]])
            lm[f"S{i}"] = st.pp.apply_transform(inv, true_lm)
        s = st.pp.stack_sections(sim, transforms="landmarks", landmarks=lm, kind="rigid")
        # exact landmarks -> exact rigid transforms
        assert _rigid_residual(s.tables["stack"]).max() < 1e-6

    def test_zarr_round_trip(self, sim, tmp_path):
        s = st.pp.stack_sections(sim[1:3], transforms="warped")  # two sections: every kind of element, less I/O
        st.pp.spot_graph_3d(s, features_key="histology_true")
        s.write(tmp_path / "stack.zarr")
        r = sd.read_zarr(tmp_path / "stack.zarr")
        a, b = s.tables["stack"], r.tables["stack"]
        np.testing.assert_allclose(b.obsm["spatial_3d"], a.obsm["spatial_3d"])
        assert list(b.obs["section"].cat.categories) == list(a.obs["section"].cat.categories)
        np.testing.assert_allclose(
            np.asarray(b.uns["stmap_stack"]["transforms"]), np.asarray(a.uns["stmap_stack"]["transforms"])
        )
        for k in ("stmap_graph_overlap", "stmap_graph_similarity", "stmap_graph_spatial"):
            assert (b.obsp[k] != a.obsp[k]).nnz == 0
        for name in ("S2_he", "S2_spots"):
            for cs in ("S2", "aligned", "aligned_3d"):
                ma = get_transformation(s[name], to_coordinate_system=cs).to_affine_matrix(("x", "y"), ("x", "y"))
                mb = get_transformation(r[name], to_coordinate_system=cs).to_affine_matrix(("x", "y"), ("x", "y"))
                np.testing.assert_allclose(mb, ma)
        # the 3D frame keeps z
        m3 = get_transformation(r["S2_spots"], to_coordinate_system="aligned_3d").to_affine_matrix(
            ("x", "y"), ("x", "y", "z")
        )
        assert m3[2, 2] == pytest.approx(a.uns["stmap_stack"]["z"][1])

    def test_one_section(self, sim):
        with pytest.raises(StmapInputError, match="at least two"):
            st.pp.stack_sections(sim[:1])

    def test_no_overlap(self, sim):
        far = [np.eye(3), np.array([[1, 0, 1e6], [0, 1, 0], [0, 0, 1.0]])]
        before = _snapshot(sim[:2])
        with pytest.raises(StmapInputError, match="do not overlap"):
            st.pp.stack_sections(sim[:2], transforms=far)
        assert _snapshot(sim[:2]) == before

    def test_disjoint_genes(self, sim):
        other = sd.deepcopy(sim[1])
        other.tables["S1"].var_names = [f"x{i}" for i in range(other.tables["S1"].n_vars)]
        with pytest.raises(StmapInputError, match="share no genes"):
            st.pp.stack_sections([sim[0], other])

    def test_differing_radii_warn(self, sim):
        other = sd.deepcopy(sim[1])
        other["S1_spots"]["radius"] = 30.0
        with pytest.warns(UserWarning, match="radii differ"):
            s = st.pp.stack_sections([sim[0], other], transforms="warped")
        r = s.tables["stack"].obs["spot_radius_um"]
        assert set(np.unique(r)) == {30.0, 50.0}

    def test_declared_parameters_reject_invalid_values(self, sim):
        spec = st.pp.stack_sections.__stmap_params__
        assert {"transforms", "z", "kind", "genes", "min_overlap", "key_added"} <= set(spec)
        before = _snapshot(sim[:2])
        for name, rules in spec.items():
            bad = invalid_values(rules)
            assert bad, name
            for v in bad:
                with pytest.raises(StmapInputError, match=rf"stack_sections: {name} must be"):
                    st.pp.stack_sections(sim[:2], **{name: v})
        assert _snapshot(sim[:2]) == before

    def test_missing_warped(self, sim):
        other = sd.deepcopy(sim[1])
        del other.tables["S1"].obsm["spatial_warped"]
        with pytest.raises(StmapInputError, match="spatial_warped"):
            st.pp.stack_sections([sim[0], other], transforms="warped")


class TestSpotGraph3d:
    def test_table_wrapper_matches_arrays(self, sim):
        s = st.pp.stack_sections(sim, transforms="warped")
        tab = s.tables["stack"]
        out = st.pp.spot_graph_3d(s, features_key="histology_true", copy=True)
        assert "stmap_graph_overlap" not in tab.obsp  # copy=True leaves the input alone
        g = out.tables["stack"].obsp
        ref = graph_arrays(
            tab.obsm["spatial_3d"], tab.obs["section"].cat.codes.to_numpy(), 50.0, tab.obsm["histology_true"]
        )
        for part in ("overlap", "similarity", "spatial"):
            assert (g[f"stmap_graph_{part}"] != ref[part]).nnz == 0
        u = out.tables["stack"].uns["stmap_graph"]
        assert u["params"]["k_similar"] == 12
        assert u["nnz_per_spot"]["overlap"] == pytest.approx(ref["overlap"].nnz / tab.n_obs)

    def test_declared_parameters_reject_invalid_values(self, sim):
        s = st.pp.stack_sections(sim[:2], transforms="warped")
        tab = s.tables["stack"]
        spec = st.pp.spot_graph_3d.__stmap_params__
        assert {"k_similar", "k_spatial", "layers_apart", "min_iou", "spatial_weights", "radius", "copy"} <= set(spec)
        for name, rules in spec.items():
            for v in invalid_values(rules):
                with pytest.raises(StmapInputError, match=rf"spot_graph_3d: {name} must be"):
                    st.pp.spot_graph_3d(s, **{name: v})
        assert not tab.obsp and "stmap_graph" not in tab.uns  # nothing written

    def test_unknown_features(self, sim):
        s = st.pp.stack_sections(sim, transforms="warped")
        with pytest.raises(StmapInputError, match="X_nope"):
            st.pp.spot_graph_3d(s, features_key="X_nope")
        assert not s.tables["stack"].obsp


def test_her2st_patient_c(shared_data):
    # three of the six sections (reading the files dominates the time); C1 (no image, the registration's reference
    # frame) behaves the same way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs = [st.datasets.her2st(f"C{i}", path=shared_data, load_image=False) for i in range(2, 5)]
    s = st.pp.stack_sections(secs, transforms="warped")
    tab = s.tables["stack"]
    assert list(tab.obs["section"].cat.categories) == [f"C{i}" for i in range(2, 5)]
    assert tab.n_vars > 10_000 and "cluster" in tab.obs and "cancer" in tab.obs
    st.pp.spot_graph_3d(s)
    g = tab.obsp["stmap_graph_overlap"]
    codes = tab.obs["section"].cat.codes.to_numpy()
    # the published registration is an affine map of the pixel coordinates: fitted up to the files' rounding of
    # coordinates to 0.01 px (~0.007 um), so the residual stays below 0.01 um
    assert max(tab.uns["stmap_stack"]["rmse_um"]) < 0.01
    # most spots overlap (IoU > 0) a spot of an adjacent layer: for two 100 um / 200 um lattices at a random offset
    # a spot overlaps with probability pi * 100^2 / 200^2 ~ 0.79 inside the tissue, less at its edges (measured:
    # 0.62 for C1, 0.76-0.97 for the others); 0.5 fails a registration that is off by a spot or more
    has = np.diff(g.indptr) > 0
    for c in range(3):
        frac = has[codes == c].mean()
        assert frac > 0.5, (c, frac)
    assert (g != g.T).nnz == 0


def _one_table(secs, single_element, shared_image=False):
    """The sections of ``secs`` in ONE SpatialData with ONE table (obs['section']): one spot element per section, or
    a single element holding every section's spots (each in its own section frame)."""
    import anndata as ad

    from stmap._core import make_circles, make_table, new_spatialdata

    tabs, shapes, imgs, regs, ids, xy, rad, off = [], {}, {}, [], [], [], [], 0
    for i, x in enumerate(secs):
        t = x.tables[f"S{i}"].copy()
        t.obs["section"] = f"S{i}"
        el = x.shapes[f"S{i}_spots"]
        inst = t.obs["instance_id"].to_numpy()
        if single_element:
            pos = el.index.get_indexer(inst)
            xy.append(np.c_[el.geometry.x, el.geometry.y][pos])
            rad.append(el["radius"].to_numpy()[pos])
            ids.append(np.arange(len(inst)) + off)
            off += len(inst)
        else:
            shapes[f"S{i}_spots"] = el
            ids.append(inst)
        regs += ["spots" if single_element else f"S{i}_spots"] * t.n_obs
        if f"S{i}_he" in x.images and not shared_image:
            imgs[f"S{i}_he"] = x.images[f"S{i}_he"]
        tabs.append(t)
    if shared_image:
        imgs["slide"] = secs[0].images["S0_he"]
    tab = ad.concat(tabs, index_unique=None, merge="same")
    tab.uns.pop("spatialdata_attrs", None)
    ids = np.concatenate(ids)
    if single_element:
        shapes["spots"] = make_circles(np.concatenate(xy), np.concatenate(rad), index=ids)
    tab = make_table(tab, region=None, instance_ids=ids, row_regions=regs)
    return new_spatialdata(shapes=shapes, images=imgs, tables={"all": tab}, units={"global": "um"})


class TestOneTableSeveralSections:
    @pytest.mark.parametrize("single_element", [False, True])
    def test_same_stack_as_a_list(self, sim, single_element):
        ref = st.pp.stack_sections(sim, transforms="warped").tables["stack"]
        one = _one_table(sim, single_element)
        before = (dict(one.tables["all"].obs.dtypes), one.tables["all"].n_obs, set(one.shapes))
        s = st.pp.stack_sections(one, transforms="warped")
        tab = s.tables["stack"]
        # split by obs['section'], then the same path: identical positions, counts, sections
        np.testing.assert_allclose(tab.obsm["spatial_3d"], ref.obsm["spatial_3d"], atol=1e-9)
        assert (tab.X != ref.X).nnz == 0
        assert list(tab.obs["section"].cat.categories) == ["S0", "S1", "S2", "S3"]
        # one spot element per section, each placed in the aligned frame by its own transform
        for sec in ("S0", "S3"):
            pts = sd.transform(s[f"{sec}_spots"], to_coordinate_system="aligned")
            rows = (tab.obs["section"] == sec).to_numpy()
            pos = pts.index.get_indexer(tab.obs["instance_id"].to_numpy()[rows])
            np.testing.assert_allclose(np.c_[pts.geometry.x, pts.geometry.y][pos], tab.obsm["spatial_3d"][rows, :2])
            info = tab.uns["stmap_stack"]["section_info"][sec]
            assert info["region"] == f"{sec}_spots" and info["images"] == [f"{sec}_he"]
        assert (dict(one.tables["all"].obs.dtypes), one.tables["all"].n_obs, set(one.shapes)) == before

    def test_shared_image_and_section_subset(self, sim):
        one = _one_table(sim[:3], single_element=True, shared_image=True)
        s = st.pp.stack_sections(one, sections=["S2", "S0"], transforms="warped")
        assert list(s.tables["stack"].obs["section"].cat.categories) == ["S2", "S0"]
        # an element of no section in particular: kept once, in every section's frame, not in the aligned ones
        assert set(get_transformation(s["slide"], get_all=True)) == {"S0", "S2"}
        assert s.tables["stack"].uns["stmap_stack"]["section_info"]["S0"]["images"] == ["slide"]

    def test_errors(self, sim):
        one = _one_table(sim[:2], single_element=False)
        with pytest.raises(StmapInputError, match="nope"):
            st.pp.stack_sections(one, section_key="nope")
        with pytest.raises(StmapInputError, match="S7"):
            st.pp.stack_sections(one, sections=["S0", "S7"])


def test_spot_graph_similarity_skips_nan_features(sim):
    s = st.pp.stack_sections(sim, transforms="warped")
    tab = s.tables["stack"]
    f = np.asarray(tab.obsm["histology_true"], dtype=float).copy()
    rows1 = (tab.obs["section"] == "S1").to_numpy()
    f[rows1] = np.nan  # a section without an image
    tab.obsm["feat"] = f
    st.pp.spot_graph_3d(s, features_key="feat")
    g = tab.obsp["stmap_graph_similarity"]
    # no edge touches the featureless section; the rest is the graph of the spots with features alone
    assert g[rows1].nnz == 0 and g[:, rows1].nnz == 0
    ok = ~rows1
    codes = tab.obs["section"].cat.codes.to_numpy()
    ref = graph_arrays(tab.obsm["spatial_3d"][ok], codes[ok], 50.0, f[ok])["similarity"]
    assert (g[ok][:, ok] != ref).nnz == 0
