"""st.pp.stack_sections / spot_graph_3d / disc_iou / graph_arrays and st.datasets.simulate_stack."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from stmap._core import StmapInputError
from stmap.pp._stack import disc_iou, graph_arrays


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
