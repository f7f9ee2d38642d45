"""Core benchmark: lazy patch extraction around spots vs loading the whole image and cropping with NumPy.

The image is a 3 x 12000 x 12000 uint8 H&E-sized array stored as zarr on disk; 2000 spots, 100 um patches at
0.5 um/px (200 px). Both methods must give identical patches (checked); we report time and peak memory.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import measure, report

import stmap._core as core


def main(size: int = 12000, n_spots: int = 2000, mpp: float = 0.5, patch_um: float = 100.0) -> None:
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    img = da.random.default_rng(0).integers(0, 255, size=(3, size, size), chunks=(3, 2048, 2048), dtype=np.uint8)
    da.to_zarr(img, tmp / "img.zarr")
    lazy = da.from_zarr(tmp / "img.zarr")
    xy = rng.uniform(200, size - 200, size=(n_spots, 2)) * mpp
    import anndata as ad

    a = ad.AnnData(np.ones((n_spots, 1)), obsm={"spatial": xy})
    a.uns["stmap"] = {"mpp": 1.0}  # obsm units are micrometres
    ctx = core.resolve(a)
    image = core.ImageContext("he", [lazy], [core.affine_matrix(mpp)], ctx.coordinate_system)
    spec = core.patch_spec(ctx, image, patch_um)
    s = spec.size_px
    px = image.to_pixels(xy)
    x0 = np.floor(px[:, 0] - s / 2 + 0.5).astype(int)
    y0 = np.floor(px[:, 1] - s / 2 + 0.5).astype(int)

    def ours():
        return core.extract_patches(image, xy, spec).compute()

    def eager():
        full = np.asarray(lazy)
        return np.stack([full[:, y : y + s, x : x + s] for x, y in zip(x0, y0)])

    ref = {}

    def score(out):
        if "ref" not in ref:
            ref["ref"] = out
        return {"identical": float(np.array_equal(out, ref["ref"]))}

    runs = [measure("12k_image_2k_spots", "numpy_load_all", eager, score)]
    runs.append(measure("12k_image_2k_spots", "stmap", ours, score))
    report("patches", runs, higher_is_better={"identical": True})


if __name__ == "__main__":
    main()
