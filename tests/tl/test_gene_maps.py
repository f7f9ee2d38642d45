"""Gene maps on histology: tiling, spot pooling, storage, bad inputs, and recovery of planted expression."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd

import stmap as st

torch = pytest.importorskip("torch")

from stmap._core import invalid_values  # noqa: E402
from stmap.models import GeneMapNet, spot_means, ssim_loss  # noqa: E402
from stmap.tl import disc_means, gene_maps, predict_maps, prior_raster, train_gene_maps  # noqa: E402

GENES = ["tumor_r01", "stroma_r01", "immune_r01", "epithelium_r01"]
FAST = {"epochs": 2, "width": 4, "depth": 2, "tile_px": 64, "batch_size": 2, "scale": 4.0, "verbose": False}


def _disc_stencil(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference disc: the pixel offsets within ``radius`` of the centre pixel."""
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dx**2 + dy**2 <= radius**2
    return dy[inside], dx[inside]


@pytest.fixture(scope="module")
def tissue():
    return st.datasets.synthetic_tissue(0)


def _whole_pass(net, img: np.ndarray) -> np.ndarray:
    m = net.multiple
    _, h, w = img.shape
    x = np.pad(img, ((0, 0), (0, (-h) % m), (0, (-w) % m)), constant_values=1.0)
    with torch.no_grad():
        _, genes = net(torch.as_tensor(x[None]))
    return genes[0, :, :h, :w].numpy()


class TestNetwork:
    def test_tiled_equals_whole_image(self):
        torch.manual_seed(0)
        net = GeneMapNet(3, width=4, depth=2).eval()
        img = np.random.default_rng(0).random((3, 150, 230)).astype(np.float32)
        tiled = predict_maps(net, img, chunk=48).compute()
        # same arithmetic on the same windows: only float rounding of the convolutions differs
        np.testing.assert_allclose(tiled, _whole_pass(net, img), atol=1e-5)

    def test_skipped_tiles_are_nan_and_others_unchanged(self):
        torch.manual_seed(0)
        net = GeneMapNet(2, width=4, depth=2).eval()
        img = np.random.default_rng(2).random((3, 150, 230)).astype(np.float32)
        whole = predict_maps(net, img, chunk=48, reconstruct=True).compute()
        part = predict_maps(net, img, chunk=48, reconstruct=True, skip=lambda y0, y1, x0, x1: x0 >= 96).compute()
        np.testing.assert_array_equal(part[:, :, :96], whole[:, :, :96])  # the same windows run
        assert np.isnan(part[:2, :, 96:]).all() and (part[2:, :, 96:] == 1.0).all()  # genes NaN, reconstruction white

    def test_disc_means_leave_out_nan_pixels(self):
        maps = np.random.default_rng(3).random((2, 40, 40))
        maps[:, :, 20:] = np.nan
        c = np.array([[19.0, 10.0], [30.0, 30.0]])  # a disc across the NaN edge, one entirely in NaN
        got = disc_means(maps, c, radius=4.0)
        dy, dx = _disc_stencil(4.0)
        ref = np.nanmean(maps[:, 10 + dy, 19 + dx], axis=1)
        np.testing.assert_allclose(got[0], ref)
        assert np.isnan(got[1]).all()

    def test_receptive_radius_bounds_the_influence(self):
        torch.manual_seed(1)
        net = GeneMapNet(2, width=4, depth=2).eval()
        img = np.random.default_rng(1).random((3, 128, 128)).astype(np.float32)
        base = _whole_pass(net, img)
        r = net.receptive_radius
        changed = img.copy()
        changed[:, :, 64 + r + 1 :] = 0.0  # change everything farther than r to the right of column 64
        assert np.allclose(_whole_pass(net, changed)[:, :, :65], base[:, :, :65], atol=1e-6)

    def test_spot_means_is_the_disc_average(self):
        g = torch.randn(2, 3, 20, 20)
        dy, dx = _disc_stencil(3.0)
        centers = np.array([[5, 6], [12, 10], [9, 9]])  # (y, x)
        batch = np.array([0, 1, 1])
        pix = (centers[:, :1] + dy) * 20 + centers[:, 1:] + dx
        got = spot_means(g, torch.as_tensor(batch), torch.as_tensor(pix)).numpy()
        want = np.stack([g[b, :, cy + dy, cx + dx].mean(-1).numpy() for b, (cy, cx) in zip(batch, centers)])
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert len(dy) == int(np.sum(np.add.outer(np.arange(-3, 4) ** 2, np.arange(-3, 4) ** 2) <= 9))

    def test_prior_is_inverse_distance_interpolation_and_tiles_exactly(self):
        gen = np.random.default_rng(2)
        pts = gen.uniform(0, 60, size=(30, 2))
        vals = gen.normal(size=(30, 2))
        whole = prior_raster(pts, vals, (50, 70), spacing=10.0)
        # reference: the 8 nearest spots, weights 1 / d^2, at one pixel (y=17, x=33)
        d = np.hypot(pts[:, 0] - 33, pts[:, 1] - 17)
        nn = np.argsort(d)[:8]
        w = 1 / np.maximum(d[nn], 0.5) ** 2
        np.testing.assert_allclose(whole[:2, 17, 33], (w[:, None] * vals[nn]).sum(0) / w.sum(), rtol=1e-5)
        assert whole[2, 17, 33] == pytest.approx(min(d.min() / 50.0, 1.0), rel=1e-5)  # distance / (5 spacings)
        lazy = prior_raster(pts, vals, (50, 70), spacing=10.0, chunks=((16, 16, 18), (40, 30))).compute()
        np.testing.assert_array_equal(lazy, whole)  # a per-pixel function: chunks change nothing
        # and windows: a window at an origin is the same pixels of the whole raster, eager or lazy
        win = prior_raster(pts, vals, (20, 30), spacing=10.0, origin=(10, 25))
        np.testing.assert_array_equal(win, whole[:, 10:30, 25:55])
        lazy_win = prior_raster(pts, vals, (20, 30), spacing=10.0, origin=(10, 25), chunks=((7, 13), (30,)))
        np.testing.assert_array_equal(lazy_win.compute(), win)

    def test_tiled_equals_whole_image_with_prior(self):
        torch.manual_seed(0)
        net = GeneMapNet(2, width=4, depth=2, n_priors=2).eval()
        gen = np.random.default_rng(3)
        img = gen.random((3, 100, 120)).astype(np.float32)
        idw = prior_raster(gen.uniform(0, 100, (12, 2)), gen.normal(size=(12, 2)), (100, 120), spacing=20.0)
        hist = gen.normal(size=(2, 100, 120)).astype(np.float32)
        x = np.concatenate([img, idw[:2], hist, idw[2:]])  # RGB, 2 prior blocks of 2 genes, distance
        tiled = predict_maps(net, x, chunk=48).compute()
        # same windows, same arithmetic: float rounding only
        np.testing.assert_allclose(tiled, _whole_pass(net, x), atol=1e-5)

    def test_streamed_disc_means_equal_direct_means(self):
        import dask.array as da

        gen = np.random.default_rng(4)
        maps = gen.normal(size=(3, 70, 90))
        centers = np.array([[10.2, 10.0], [31.0, 29.6], [0.0, 35.0], [89.0, 69.0], [45.0, 64.0]])  # (x, y)
        got = disc_means(da.from_array(maps, chunks=(3, 32, 32)), centers, 4.0)
        dy, dx = _disc_stencil(4.0)
        for i, (cx, cy) in enumerate(centers):
            y, x = int(round(cy)) + dy, int(round(cx)) + dx
            ok = (y >= 0) & (y < 70) & (x >= 0) & (x < 90)  # pixels off the image are left out
            np.testing.assert_allclose(got[i], maps[:, y[ok], x[ok]].mean(1), rtol=1e-12)

    def test_ssim_loss_zero_for_identical(self):
        x = torch.rand(1, 3, 32, 32)
        assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
        assert float(ssim_loss(x, torch.rand(1, 3, 32, 32))) > 0.5


class TestGeneMaps:
    def test_writes_overlaying_element_and_round_trips(self, tissue, tmp_path):
        out = gene_maps(tissue, genes=GENES, table_key="spots", copy=True, **FAST)
        el = out.images["he_gene_maps"]
        assert list(el.coords["c"].values) == GENES
        # the map covers the H&E's extent in the same coordinate system (it overlays it exactly)
        ext_he = sd.get_extent(tissue.images["he"], coordinate_system="global")
        ext_map = sd.get_extent(el, coordinate_system="global")
        for ax in ("x", "y"):
            assert abs(ext_map[ax][0] - ext_he[ax][0]) < 1e-6
            assert abs(ext_map[ax][1] - ext_he[ax][1]) <= 4.0  # at most one 4-um working pixel trimmed
        ad = out.tables["spots"]
        assert list(ad.obsm["stmap_gene_maps"].columns) == GENES
        assert ad.uns["stmap_gene_maps"]["element"] == "he_gene_maps"
        assert "he_gene_maps" not in tissue.images  # copy=True left the input alone
        path = tmp_path / "maps.zarr"
        out.write(path)
        back = sd.read_zarr(path)
        np.testing.assert_allclose(back.images["he_gene_maps"].values, el.values, rtol=1e-6)
        np.testing.assert_allclose(
            back.tables["spots"].obsm["stmap_gene_maps"].values, ad.obsm["stmap_gene_maps"].values
        )

    def test_spot_averages_match_training_targets(self, tissue):
        # every spot trains and feeds the prior: the maps must honour the measured spots
        out = gene_maps(tissue, genes=GENES, table_key="spots", copy=True, **{**FAST, "epochs": 6})
        ad = out.tables["spots"]
        r = np.asarray(ad.uns["stmap_gene_maps"]["spot_pearson_train"])
        # the inverse-distance prior alone gives r = 0.98-0.99 at these spots (a spot's own disc dominates its
        # interpolation), the H&E alone -0.2..0.5; the default mix (half each at the start) gives 0.93-0.97 after six
        # epochs. Below 0.9 the maps would no longer honour the measured spots.
        assert np.nanmin(r) > 0.9, r

    def test_deterministic(self, tissue):
        a = gene_maps(tissue, genes=GENES[:2], table_key="spots", copy=True, seed=3, **FAST)
        b = gene_maps(tissue, genes=GENES[:2], table_key="spots", copy=True, seed=3, **FAST)
        # the same training, step for step; the same maps up to float32 rounding (oneDNN's convolutions may round
        # differently with the memory layout of a tile, which depends on what ran before in the process)
        np.testing.assert_allclose(
            a.tables["spots"].uns["stmap_gene_maps"]["loss"],
            b.tables["spots"].uns["stmap_gene_maps"]["loss"],
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            a.images["he_gene_maps"].values, b.images["he_gene_maps"].values, rtol=1e-5, atol=1e-5
        )

    def test_saved_model_predicts_identically(self, tissue, tmp_path):
        model = train_gene_maps(tissue, genes=GENES[:2], table_key="spots", **FAST)
        out = gene_maps(tissue, table_key="spots", model=model, copy=True, verbose=False)
        model.save(tmp_path / "m.pt")
        back = st.tl.GeneMapModel.load(tmp_path / "m.pt")
        again = gene_maps(tissue, table_key="spots", model=back, copy=True, verbose=False)
        np.testing.assert_allclose(again.images["he_gene_maps"].values, out.images["he_gene_maps"].values, atol=1e-6)
        # what inference needs travels with the file
        assert (back.genes, back.prior, back.tile_px, back.normalize) == (model.genes, model.prior, 64, True)
        assert back.params == model.params and back.params["epochs"] == 2
        np.testing.assert_array_equal(back.ridge_coef, model.ridge_coef)
        with pytest.raises(st.StmapInputError, match="trained model"):  # nothing is trained, so a mask is a mistake
            gene_maps(tissue, table_key="spots", model=model, train_mask=[True] * tissue.tables["spots"].n_obs)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"genes": ["nope"]}, "not in the spot table"),
            ({"genes": "markers"}, "groupby"),
            ({"scale": 100.0}, "smaller than a pixel"),
            ({"image_key": "missing"}, "missing"),
            ({"train_mask": [True] * 3}, "one per spot"),
        ],
    )
    def test_bad_input_leaves_object_unchanged(self, tissue, kwargs, match):
        before = tissue.tables["spots"].copy()
        opts = {**FAST, "genes": GENES[:1], **kwargs}
        with pytest.raises((st.StmapInputError, st.StmapKeyError), match=match):
            gene_maps(tissue, table_key="spots", **opts)
        assert set(tissue.images) == {"he"}
        assert set(tissue.tables["spots"].obsm) == set(before.obsm)
        assert set(tissue.tables["spots"].uns) == set(before.uns)

    def test_anndata_is_refused_with_a_fix(self):
        import anndata as ad

        with pytest.raises(st.StmapInputError, match="to_spatialdata"):
            gene_maps(ad.AnnData(np.ones((3, 2))), genes=["0"])

    def test_constant_gene_warns(self, tissue):
        t = sd.deepcopy(tissue)
        t.tables["spots"].X[:, 0] = 0
        t.tables["spots"].layers["counts"] = t.tables["spots"].X.copy()
        with pytest.warns(UserWarning, match="constant"):
            gene_maps(t, genes=[str(t.tables["spots"].var_names[0]), GENES[0]], table_key="spots", **FAST)


def _unchanged(tissue, before) -> None:
    assert set(tissue.images) == {"he"}
    assert set(tissue.tables["spots"].obsm) == set(before.obsm)
    assert set(tissue.tables["spots"].obs) == set(before.obs)
    assert set(tissue.tables["spots"].uns) == set(before.uns)


class TestFitApply:
    @pytest.mark.parametrize(
        "kwargs",
        [{"genes": GENES[:2], "seed": 3}, {"genes": GENES[2:], "prior": "idw", "normalize": False, "layer": "counts"}],
    )
    def test_train_then_apply_equals_one_call(self, tissue, kwargs):
        before = tissue.tables["spots"].copy()
        one = gene_maps(tissue, table_key="spots", copy=True, **FAST, **kwargs)
        model = train_gene_maps(tissue, table_key="spots", **FAST, **kwargs)
        _unchanged(tissue, before)  # training writes nothing
        two = gene_maps(tissue, table_key="spots", model=model, layer=kwargs.get("layer"), copy=True, verbose=False)
        a, b = one.tables["spots"], two.tables["spots"]
        # the same training step for step (the same losses) and the same inference: the maps agree up to float32
        # rounding of the convolutions (oneDNN's may differ with a tile's memory layout), as in test_deterministic
        np.testing.assert_allclose(a.uns["stmap_gene_maps"]["loss"], b.uns["stmap_gene_maps"]["loss"], rtol=1e-6)
        np.testing.assert_allclose(
            one.images["he_gene_maps"].values, two.images["he_gene_maps"].values, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(a.obsm["stmap_gene_maps"].values, b.obsm["stmap_gene_maps"].values, atol=1e-5)
        for k in ("mean", "std", "spot_pearson_train"):
            np.testing.assert_allclose(a.uns["stmap_gene_maps"][k], b.uns["stmap_gene_maps"][k], atol=1e-5)
        assert dict(a.uns["stmap_gene_maps"]["params"]) == dict(b.uns["stmap_gene_maps"]["params"])

    def test_model_applies_to_another_section(self, tissue):
        model = train_gene_maps(tissue, genes=GENES[:2], table_key="spots", **FAST)
        other = st.datasets.synthetic_tissue(1)
        out = gene_maps(other, table_key="spots", model=model, copy=True, verbose=False)
        assert isinstance(out, sd.SpatialData)  # copy=True returns one object
        assert list(out.images["he_gene_maps"].coords["c"].values) == GENES[:2]
        # the model's working pixel size (4 um) carried to the new section
        from spatialdata.transformations import get_transformation

        T = get_transformation(out.images["he_gene_maps"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
        assert abs(np.sqrt(abs(np.linalg.det(T[:2, :2]))) - model.pixel_size) < 1e-9
        # its priors come from the new section's spots, so the maps follow that section's measured spots: measured
        # r = 0.91/0.92 here after 2 epochs, whereas the same network without priors (prior=None) gives 0.71/-0.61
        r = np.asarray(out.tables["spots"].uns["stmap_gene_maps"]["spot_pearson_train"])
        assert np.all(r > 0.8), r


@pytest.mark.parametrize(
    ("func", "name", "value"),
    [
        (func, name, value)
        for func in (train_gene_maps, gene_maps)
        for name, spec in func.__stmap_params__.items()
        for value in invalid_values(spec)
    ],
    ids=lambda v: getattr(v, "__name__", repr(v))[:30],
)
def test_invalid_parameter_is_refused_and_nothing_changes(tissue, func, name, value):
    before = tissue.tables["spots"].copy()
    with pytest.raises(st.StmapInputError, match=name):
        func(tissue, **{"table_key": "spots", **FAST, name: value})
    _unchanged(tissue, before)


@pytest.fixture(scope="module")
def model(tissue):
    return train_gene_maps(tissue, genes=GENES[:2], table_key="spots", **FAST)


class TestTissueMask:
    def _maps(self, tissue, model, **kw):
        out = gene_maps(tissue, table_key="spots", model=model, copy=True, verbose=False, **kw)
        return np.asarray(out.images["he_gene_maps"].values), out.tables["spots"].obsm["stmap_gene_maps"].to_numpy()

    def test_nan_off_tissue_only(self, tissue, model):
        full, spots_full = self._maps(tissue, model, tissue_mask=False)
        part, spots_part = self._maps(tissue, model)
        assert np.isfinite(full).all()
        off = np.isnan(part)
        assert off.any(0).tolist() == off.all(0).tolist()  # the same pixels in every gene
        # synthetic_tissue(0): the tissue covers about half of the image (the planted regions: 52%)
        assert 0.3 < off[0].mean() < 0.7
        np.testing.assert_array_equal(part[~off], full[~off])  # on the tissue: the same maps
        np.testing.assert_array_equal(spots_part, spots_full)  # spot averages: from the unmasked maps

    def test_stored_and_named_masks(self, tissue, model):
        t = sd.deepcopy(tissue)
        fly, _ = self._maps(t, model)
        st.pp.detect_tissue(t, "he")
        stored, _ = self._maps(t, model)
        np.testing.assert_array_equal(np.isnan(stored), np.isnan(fly))  # the stored mask is the on-the-fly one
        from spatialdata.models import Labels2DModel
        from spatialdata.transformations import get_transformation

        half = np.zeros(t.labels["he_tissue"].shape, dtype=np.int32)
        half[:, : half.shape[1] // 2] = 1
        tr = get_transformation(t.labels["he_tissue"], get_all=True)
        t.labels["left"] = Labels2DModel.parse(half, dims=("y", "x"), transformations=tr)
        left, _ = self._maps(t, model, tissue_mask="left")
        w = left.shape[2]
        assert np.isfinite(left[:, :, : w // 2 - 1]).all() and np.isnan(left[:, :, w // 2 + 1 :]).all()

    def test_unknown_mask_refused_before_training(self, tissue):
        before = tissue.tables["spots"].copy()
        with pytest.raises(st.StmapKeyError, match="nope"):
            gene_maps(tissue, genes=GENES[:1], table_key="spots", tissue_mask="nope", **FAST)
        _unchanged(tissue, before)


class TestHistologyPrior:
    def test_feature_grid_equals_patches_cut_directly(self, tissue):
        """The grid's features are those of 1x and 2x spot-diameter patches cut one by one (white off the image)."""
        from stmap._core._image import intensity_range, to_rgb_uint8
        from stmap._core._patches import extract_patches, patch_spec
        from stmap.pp import handcrafted_features
        from stmap.tl._gene_maps._features import FEATURE_SCALES, feature_grid
        from stmap.tl._gene_maps._prepare import resolve_section

        ctx, img, diam = resolve_section(tissue, "spots", None, None)
        d = float(np.median(diam))
        px = d / 8
        # working pixels of size px, the crop starting a spot diameter before the image: the first points' patches
        # reach beyond the image's edge
        T = np.array([[px, 0.0, -d], [0.0, px, -d], [0.0, 0.0, 1.0]])
        grid = feature_grid(ctx, img, T, (0, 0, 40, 56), 8.0, d, False)
        ys, xs = np.arange(4.0, 40, 8), np.arange(4.0, 56, 8)
        assert grid.feats.shape[1:] == (len(ys), len(xs)) and (grid.oy, grid.ox, grid.stride) == (4.0, 4.0, 8.0)
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        pts = np.c_[gx.ravel() * px - d, gy.ravel() * px - d]
        u = ctx.um_per_unit if ctx.um_per_unit is not None else 1.0
        mpp = None if ctx.um_per_unit is not None else img.pixel_size(0)
        white = intensity_range(img)
        ref = []
        for s in FEATURE_SCALES:
            spec = patch_spec(ctx, img, d * u * s, out_px=48, mpp=mpp)
            patches = np.asarray(extract_patches(img, pts, spec, fill_value=white).compute())
            ref.append(handcrafted_features(to_rgb_uint8(patches, white)))
        f = np.concatenate(ref, axis=1)
        f = (f - f.mean(0)) / np.where(f.std(0) > 1e-8, f.std(0), 1.0)
        np.testing.assert_allclose(grid.feats.reshape(grid.feats.shape[0], -1).T, f, atol=1e-4)

    def test_epochs_are_capped_for_large_crops(self):
        from stmap.tl._gene_maps._train import MAX_STEPS_PER_EPOCH, _Tiles

        def tiles(side: int, batch: int) -> _Tiles:
            g = np.random.default_rng(0)
            centers = g.uniform(8, side - 8, size=(50, 2))
            image = np.ones((3, side, side), dtype=np.float32)
            z, w = np.zeros((50, 1), np.float32), np.ones(50, np.float32)
            return _Tiles(image, centers, z, w, 3.0, tile=16, batch_size=batch, seed=0, idw=False, histology=None)

        assert tiles(32, 4).n == 4 * 4  # 4 tiles would cover it: at least 4 steps
        assert tiles(160, 4).n == 100  # covered once: (160 / 16) ** 2
        assert MAX_STEPS_PER_EPOCH * 4 < 625
        assert tiles(400, 4).n == MAX_STEPS_PER_EPOCH * 4  # 625 tiles would cover it
        assert tiles(400, 4).plan(0)[0].size == MAX_STEPS_PER_EPOCH * 4

    def test_model_with_another_feature_set_is_refused(self, tissue):
        model = train_gene_maps(tissue, genes=GENES[:2], table_key="spots", prior="histology", **FAST)
        model.ridge_coef = np.vstack([model.ridge_coef, model.ridge_coef[:1]])
        before = tissue.tables["spots"].copy()
        with pytest.raises(st.StmapInputError, match="retrain"):
            gene_maps(tissue, table_key="spots", model=model, verbose=False)
        _unchanged(tissue, before)
        assert "he_gene_maps" not in tissue.images

    def test_training_that_would_not_fit_is_refused_first(self, tissue, monkeypatch):
        from stmap._core import _memory
        from stmap.tl._gene_maps._prepare import resolve_section

        # the estimate holds at least the crop as float32 RGB: 3 x 4 bytes a working pixel of the spots' box
        ctx, _, _ = resolve_section(tissue, "spots", None, None)
        span = np.ptp(ctx.coords, axis=0) / FAST["scale"]
        monkeypatch.setattr(_memory, "available_bytes", lambda: 12.0 * span.prod() / 2)
        before = tissue.tables["spots"].copy()
        with pytest.raises(st.StmapInputError, match="scale="):
            gene_maps(tissue, genes=GENES[:2], table_key="spots", **FAST)
        _unchanged(tissue, before)
        assert "he_gene_maps" not in tissue.images
        monkeypatch.setattr(_memory, "available_bytes", lambda: None)  # unknown: nothing is refused
        assert gene_maps(tissue, genes=GENES[:2], table_key="spots", copy=True, **FAST) is not None

    def test_tile_prior_from_nearby_spots_equals_all_spots(self, monkeypatch):
        """With many spots a tile's spatial prior comes from the spots near it: the same as from all of them."""
        from stmap.tl._gene_maps._priors import idw_window
        from stmap.tl._gene_maps._train import _LOCAL_IDW_SPOTS, _Tiles

        g = np.random.default_rng(1)
        side = 900
        yy, xx = np.mgrid[4:side:10, 4:side:10]
        centers = np.c_[xx.ravel(), yy.ravel()].astype(float) + g.uniform(-2, 2, size=(xx.size, 2))
        hole = np.hypot(centers[:, 0] - 450, centers[:, 1] - 450) < 120  # no spots there: the fallback
        centers = centers[~hole]
        assert len(centers) > _LOCAL_IDW_SPOTS
        z = g.normal(size=(len(centers), 3)).astype(np.float32)
        image = np.ones((3, side, side), dtype=np.float32)
        w = np.ones(len(centers), np.float32)
        tiles = _Tiles(image, centers, z, w, 3.0, tile=64, batch_size=2, seed=0, idw=True, histology=None)
        from stmap.tl._gene_maps import _train

        used = []  # spots of each idw_window call

        def counted(points, *args, **kwargs):
            used.append(len(points))
            return idw_window(points, *args, **kwargs)

        monkeypatch.setattr(_train, "idw_window", counted)
        cases = [(100, 100, (130, 130), 0.0, True), (300, 600, (630, 330), 35.0, True), (420, 420, None, 0.0, False)]
        for y0, x0, centre_xy, hide, local in cases:  # the tile inside the hole falls back to all spots
            used.clear()
            keep = tiles.train_idx
            if hide:
                c = np.argmin(np.hypot(*(centers - centre_xy).T))
                keep = np.delete(keep, tiles.tree.query_ball_point(centers[c], hide))
            got = tiles._idw(keep, y0, x0, 3 * tiles.spacing + hide)
            ref = idw_window(centers[keep], z[keep], y0, x0, 64, 64, tiles.spacing)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
            assert (len(used) == 1 and used[0] < len(keep) / 10) if local else used[-1] == len(keep)

    @pytest.mark.parametrize("grid_shape", [(1, 1), (1, 5), (7, 9), (40, 30)])
    def test_feature_window_equals_pointwise_interpolation(self, grid_shape):
        from scipy.ndimage import map_coordinates

        from stmap.tl._gene_maps._features import FeatureGrid

        v = np.random.default_rng(0).normal(size=(6, *grid_shape)).astype(np.float32)
        grid = FeatureGrid(feats=v, oy=3.5, ox=-2.0, stride=8.0)
        for y0, x0, h, w in [(0, 0, 64, 64), (-30, -40, 20, 50), (200, 250, 33, 17), (10, 5, 1, 1)]:
            yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
            gy, gx = (yy - 3.5) / 8.0, (xx + 2.0) / 8.0
            ref = np.stack([map_coordinates(c, [gy, gx], order=1, mode="nearest") for c in v])
            got = grid.window(v, y0, x0, h, w)
            np.testing.assert_allclose(got, ref, atol=1e-5)
            # the same bits whatever the memory layout (a BLAS product may round differently between calls)
            np.testing.assert_array_equal(grid.window(np.asfortranarray(v), y0, x0, h, w), got)

    @pytest.mark.parametrize(
        ("grid_shape", "stride", "radius"),
        [((1, 1), 3.0, 2.0), ((1, 5), 2.0, 3.5), ((25, 25), 1.0, 4.2), ((40, 30), 7.0, 7.3)],
    )
    def test_disc_features_equal_the_mean_of_interpolated_disc_pixels(self, grid_shape, stride, radius):
        from scipy.ndimage import map_coordinates

        from stmap.tl._gene_maps._features import FeatureGrid, disc_features

        rng = np.random.default_rng(1)
        v = rng.normal(size=(5, *grid_shape)).astype(np.float32)
        grid = FeatureGrid(feats=v, oy=3.5, ox=2.0, stride=stride)
        # centres inside, between and beyond the grid points (where the edge values hold)
        centers = rng.uniform(-20.0, max(grid_shape) * stride + 20.0, size=(700, 2))
        dy, dx = _disc_stencil(radius)
        gy = (np.rint(centers[:, 1])[:, None] + dy - 3.5) / stride
        gx = (np.rint(centers[:, 0])[:, None] + dx - 2.0) / stride
        ref = np.stack([map_coordinates(c.astype(np.float64), [gy, gx], order=1, mode="nearest").mean(1) for c in v], 1)
        got = disc_features(grid, centers, radius, chunk=4000)  # several chunks
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(disc_features(grid, centers[::-1], radius)[::-1], got)  # per spot, any order
