"""The chunked paths run unchanged under a dask.distributed client and give the single-process results.

A ``LocalCluster`` of two worker processes stands in for a cluster (dask-jobqueue, Kubernetes): every chunk these
tools hand to dask is pickled, shipped to a worker process and computed there. Results must equal the results of
the same call without a client (same arrays, bit for bit where the chunk computation is deterministic).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import stmap as st

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.xdist_group("distributed")  # one cluster at a time on a 2-core machine


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        )
        cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


def _blob_image(seed: int = 0, size: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for y, x in rng.uniform(20, size - 20, size=(60, 2)):
        img += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 4.0**2))
    return img + rng.normal(0, 0.02, img.shape).astype(np.float32)


def _pixels(el) -> np.ndarray:
    arr = el["scale0"]["image"] if hasattr(el, "keys") and "scale0" in el else el
    return np.asarray(arr.data.compute() if hasattr(arr.data, "compute") else arr.values)


def test_detect_blobs_chunks_on_workers(client):
    import dask.array as da

    img = da.from_array(_blob_image(), chunks=200)
    with client.as_current(), distributed.get_task_stream(client) as ts:
        on_cluster = st.pp.detect_blobs(img, sigma=4.0, chunk_size=200)
    local = st.pp.detect_blobs(img, sigma=4.0, chunk_size=200)
    assert len(ts.data) >= 9  # the 3 x 3 chunks ran as tasks on the workers
    assert len(local) > 40
    np.testing.assert_array_equal(on_cluster[["y", "x"]].to_numpy(), local[["y", "x"]].to_numpy())
    np.testing.assert_array_equal(on_cluster["area"].to_numpy(), local["area"].to_numpy())


def test_density_on_workers_equals_local(client):
    sdata = st.datasets.synthetic_tissue(seed=0)
    kw = {"points_key": "cell_points", "groupby": "cell_type", "bandwidth": 25.0, "voxel_size": 8.0}
    local = st.tl.density(sdata, key_added="d_local", copy=True, **kw)
    with client.as_current(), distributed.get_task_stream(client) as ts:
        remote = st.tl.density(sdata, key_added="d_local", copy=True, **kw)
    assert len(ts.data) >= 6  # one binning task per cell type ran on the workers
    np.testing.assert_array_equal(_pixels(local.images["d_local"]), _pixels(remote.images["d_local"]))


def test_density_point_blocks_on_workers_equal_local(client):
    import dask.array as da

    rng = np.random.default_rng(0)
    xy = rng.normal(size=(60_000, 2)) * [3.0, 2.0]
    pts = da.from_array(xy, chunks=(7_000, 2))  # 9 blocks of points, some outside the bounds
    w = da.from_array(rng.uniform(0.5, 2.0, 60_000), chunks=7_000)
    kw = {"bandwidth": 0.4, "grid_shape": (96, 80), "bounds": ((-6, 6), (-5, 5))}
    local = st.tl.density(pts, weights=w.compute(), **kw)
    with client.as_current(), distributed.get_task_stream(client) as ts:
        remote = st.tl.density(pts, weights=w.compute(), **kw)
    keys = [str(t["key"]) for t in ts.data]
    assert sum("bin_block" in k for k in keys) >= 9  # every block of points was binned on a worker
    np.testing.assert_array_equal(local, remote)  # partial grids of the same blocks, added in the same order
    whole = st.tl.density(xy, weights=w.compute(), **kw)  # one block of points, in memory
    np.testing.assert_allclose(local, whole, rtol=1e-9, atol=1e-12 * whole.max())


def test_density_called_in_a_task_bins_on_its_worker(client):
    xy = np.random.default_rng(1).normal(size=(5_000, 2))
    kw = {"bandwidth": 0.4, "grid_shape": (64, 64), "bounds": ((-3, 3), (-3, 3))}
    # one-thread workers: a task that waited on tasks of its own would block its worker; it bins in place instead
    remote = client.submit(st.tl.density, xy, **kw).result(timeout=60)
    np.testing.assert_array_equal(remote, st.tl.density(xy, **kw))


@pytest.mark.slow
def test_gene_map_inference_on_workers_equals_local(client):
    import torch

    sdata = st.datasets.synthetic_tissue(seed=0)
    spots = "spots"
    torch.set_num_threads(1)
    model = st.tl.train_gene_maps(
        sdata,
        genes=["tumor_r01", "stroma_r01"],
        table_key=spots,
        image_key="he",
        epochs=1,
        width=8,
        depth=2,
        tile_px=64,
        scale=4.0,
        verbose=False,
    )
    local = st.tl.gene_maps(sdata, model=model, table_key=spots, image_key="he", lazy=True, copy=True, verbose=False)
    with client.as_current():
        remote = st.tl.gene_maps(
            sdata, model=model, table_key=spots, image_key="he", lazy=True, copy=True, verbose=False
        )
        b = _pixels(remote.images["he_gene_maps"])  # computed here, on the workers
    a = _pixels(local.images["he_gene_maps"])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # the same weights on the same tiles
