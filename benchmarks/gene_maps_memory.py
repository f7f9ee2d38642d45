"""Peak memory of gene-map inference on lazy images of growing size (a quick proxy of gene_maps_scale.py (b)).

A small model (4 region genes, width 4, depth 2, 4 um working pixels, 2 epochs: the network's size does not change
how memory scales) is trained on ``synthetic_tissue(0)`` and saved. Then, each in a fresh subprocess, the tissue's H&E
is tiled lazily (:func:`dask.array.tile`) to S x S px, ``gene_maps(model=..., lazy=True, dtype='float16')`` runs and
the maps element is streamed to zarr. Peak RSS (``ru_maxrss``) above the RSS after the imports is reported beside the
size of the image as float32. Each size runs twice: ``tissue_mask=False`` (the network runs on every tile: the
streaming of the inference itself), then ``tissue_mask=True`` (the mask computed on the fly from the lazy image at
<= 1e6 px; tiles without tissue are skipped: at 25,000 px the tiled tissue's pieces are smaller than ``min_area`` of
the coarse image, so no tile runs and the row measures the mask). Writes ``results/gene_maps_memory.json``.

Bar (issue 13): peak < 4 GB and flat in the side up to 25,000 x 25,000 px. Before 40b3c72 the peak above the imports
grew with the side (350 / 603 / 1002 MB at 2000 / 8000 / 16000 px): the network's input windows were upstream dask
tasks (overlap of the lazy input) that the threaded scheduler read ahead and held while the tiles waited for the
network; each tile now reads its window inside its own task, and the inverse-distance prior of a tile is computed in
batches of pixels. What remains grows only until the 2 threads each hold a tile (one tile in all at 2000 px, whose
working image is a single tile) and with glibc's per-thread malloc arenas: unlocked development runs gave 278 / 335 /
438 MB above the imports at 2000 / 4000 / 8000 px, and 149 / 257 / 296 MB with ``MALLOC_ARENA_MAX=1``. The
on-the-fly tissue mask read the image ahead too (+1679 MB at 25,000 px; now read window by window, +87 MB). After
both fixes, unlocked development runs: ``tissue_mask=False`` 370 / 372 MB above the imports at 6250 / 12,500 px
(18 / 85 s); ``tissue_mask=True`` at 25,000 px 153 MB (20 s, no tile runs: see above).

Usage::

    flock /tmp/stmap_heavy.lock python benchmarks/gene_maps_memory.py [2000 8000 16000 25000]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
GENES = ["tumor_r01", "stroma_r01", "immune_r01", "epithelium_r01"]
MODEL = Path(tempfile.gettempdir()) / "stmap_gene_maps_memory_model.pt"


def train() -> None:
    import stmap as st

    t = st.datasets.synthetic_tissue(0)
    fast = {"epochs": 2, "width": 4, "depth": 2, "tile_px": 64, "scale": 4.0}
    m = st.tl.train_gene_maps(t, genes=GENES, table_key="spots", image_key="he", verbose=False, **fast)
    m.save(MODEL)


def infer(size: int, mask: bool) -> dict:
    import dask.array as da
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    import stmap as st
    from stmap._core import make_image

    t = st.datasets.synthetic_tissue(0)
    m = st.tl.GeneMapModel.load(MODEL)
    he = t.images["he"]
    lv = he if hasattr(he, "dtype") else he["scale0"].ds["image"]
    reps = int(np.ceil(size / lv.shape[1]))
    big = da.tile(lv.data, (1, reps, reps))[:, :size, :size].rechunk((3, 1024, 1024))
    T = get_transformation(lv, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    t.images["he"] = make_image(big, transform=T, c_coords=["r", "g", "b"], chunks=(3, 1024, 1024))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    st.tl.gene_maps(
        t, model=m, table_key="spots", lazy=True, dtype="float16", verbose=False, image_key="he", tissue_mask=mask
    )
    with tempfile.TemporaryDirectory() as d:
        sd.SpatialData(images={"maps": t.images["he_gene_maps"]}).write(Path(d) / "m.zarr")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "size": size,
        "tissue_mask": mask,
        "seconds": time.time() - t0,
        "rss_before_mb": base,
        "peak_mb": peak,
        "peak_above_mb": peak - base,
        "image_float32_mb": 3 * size**2 * 4 / 2**20,
        "maps_shape": list(t.images["he_gene_maps"].shape),
    }


def main(argv: list[str]) -> None:
    if argv[:1] == ["--train"]:
        return train()
    if argv[:1] == ["--infer"]:
        print(json.dumps(infer(int(argv[1]), argv[2:3] == ["mask"])))
        return None
    sizes = [int(a) for a in argv] or [2000, 8000, 16000, 25000]
    subprocess.run([sys.executable, __file__, "--train"], check=True)
    rows = []
    for mask in (False, True):
        for size in sizes:
            cmd = [sys.executable, __file__, "--infer", str(size), *(["mask"] if mask else [])]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    res = Path(__file__).parent / "results" / "gene_maps_memory.json"
    print(f"{'side px':>8} {'mask':>5} {'seconds':>8} {'peak MB':>8} {'above imports MB':>17} {'image f32 MB':>13}")
    for r in rows:
        print(
            f"{r['size']:>8} {r['tissue_mask']!s:>5} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} "
            f"{r['peak_above_mb']:>17.0f} {r['image_float32_mb']:>13.0f}"
        )
    res.write_text(json.dumps({"benchmark": "gene_maps_memory", "runs": rows}, indent=2))
    print("wrote", res)
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
