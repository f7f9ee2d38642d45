"""Test helpers importable from every test module (``tests/`` is on ``pythonpath``)."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_dir() -> Path:
    """../shared/data, or skip (fail when STMAP_REQUIRE_SHARED_DATA=1) when it is absent."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    msg = f"real-data test: {SHARED_DATA} not found (clone the repo next to shared/ to run it)"
    if os.environ.get("STMAP_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(msg + "; STMAP_REQUIRE_SHARED_DATA=1 requires it")
    pytest.skip(msg)


def make_small_sdata(n_spots: int = 30, n_genes: int = 12, seed: int = 0, mpp: float = 2.0, with_image: bool = True):
    """A tiny SpatialData: an RGB image (pixel -> um scale ``mpp``, offset), spots as circles, a counts table.

    Spot instance ids are strings and the table rows are in a different order than the shapes, so alignment
    through the instance key is exercised.
    """
    from stmap._core import affine_matrix, make_circles, make_image, make_table, new_spatialdata

    rng = np.random.default_rng(seed)
    h, w = 120, 160
    offset = (100.0, 50.0)
    img = rng.integers(0, 255, size=(3, h, w), dtype=np.uint8)
    # spot centres in um, well inside the image
    xy = np.column_stack([rng.uniform(20, w - 20, n_spots), rng.uniform(20, h - 20, n_spots)]) * mpp + offset
    ids = [f"spot_{i}" for i in range(n_spots)]
    circles = make_circles(xy, 27.5, index=ids)
    perm = rng.permutation(n_spots)
    X = sparse.csr_matrix(rng.poisson(3.0, size=(n_spots, n_genes)).astype(np.float32))
    adata = ad.AnnData(X=X[perm])
    adata.obs_names = [ids[i] for i in perm]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    table = make_table(adata, region="spots", instance_ids=[ids[i] for i in perm])
    images = {"he": make_image(img, transform=affine_matrix(mpp, offset), scale_factors=[2])} if with_image else {}
    sdata = new_spatialdata(images=images, shapes={"spots": circles}, tables={"table": table}, units={"global": "um"})
    return sdata, {"xy": xy, "perm": perm, "img": img, "mpp": mpp, "offset": offset}
