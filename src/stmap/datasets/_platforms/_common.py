"""What the platform writers share: declared parameters, the output folder, the tissue, 10x/PNG/TIFF writers."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from stmap._core._errors import StmapInputError
from stmap._core._params import Constraint, Instance, Interval

if TYPE_CHECKING:
    from anndata import AnnData

#: Name of the file holding the known answer in every folder written here (read it with
#: :func:`anndata.read_h5ad`). The spatialdata-io readers do not look at it.
TRUTH_FILE = "stmap_truth.h5ad"

SOFTWARE = "stmap-synthetic"
VISIUM_FIDUCIAL_UM = 65.0 * 144.48 / 89.44  # fiducial / spot diameter ratio of Space Ranger's scalefactors


# --------------------------------------------------------------------------------------------------------------------
# declared parameters
# --------------------------------------------------------------------------------------------------------------------
class FileName(Constraint):
    r"""A non-empty string usable as a file name: no ``'/'`` or ``'\'``, not starting with ``'.'``."""

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is a file-name-safe string."""
        return (
            isinstance(value, str) and bool(value) and not any(c in value for c in "/\\") and not value.startswith(".")
        )

    def describe(self) -> str:
        """The rule in words."""
        return "a non-empty file-name-safe string (no '/' or '\\', not starting with '.')"

    def invalid(self) -> list[Any]:
        """An empty name, a path, a hidden name and a non-string."""
        return ["", "a/b", ".hidden", 3]


#: Parameters every writer declares (``seed``: the folders are reproducible from it).
COMMON_PARAMS: dict[str, Any] = {
    "path": Instance((str, Path)),
    "seed": Interval(int, 0, None),
    "n_cells": Interval(int, 10, None),
    "n_genes": Interval(int, 6, None),
    "overwrite": Instance((bool,)),
}
POSITIVE = Interval(float, 0, None, "neither")
BLOCK = Interval(int, 1, None)
FLAG = Instance((bool,))

#: Docstring sections shared by the writers (filled in by :func:`~stmap._core._docs.inject_docs`).
DOCS = {
    "path": """\
path
    Folder to write (created; must be new or empty unless ``overwrite``).""",
    "n_genes": """\
n_genes
    Number of genes (see :func:`synthetic_tissue`).""",
    "downsample": """\
hires_downsample
    Integer block size of the hires image (``tissue_hires_scalef = 1 / block``).
lowres_downsample
    Integer block size of the lowres image (``tissue_lowres_scalef = 1 / block``).""",
    "overwrite": """\
overwrite
    Replace ``path`` if it is a folder written by these functions.""",
    "folder_returns": """\
Returns
-------
The folder's :class:`~pathlib.Path`.

Raises
------
StmapInputError
    If an argument is out of range, or ``path`` is a file or a non-empty folder (``overwrite=True`` replaces
    only a folder these functions wrote). Nothing is written then.""",
    "truth_item": """\
- ``stmap_truth.h5ad``: the known answer (below).""",
}


# --------------------------------------------------------------------------------------------------------------------
# the output folder
# --------------------------------------------------------------------------------------------------------------------
def _out_dir(path: str | Path, overwrite: bool) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise StmapInputError(f"{out} exists and is a file; give a folder path.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise StmapInputError(f"{out} exists and is not empty; give a new or empty folder, or pass overwrite=True.")
        if not (out / TRUTH_FILE).exists():
            raise StmapInputError(
                f"overwrite=True only replaces a folder written by stmap (one holding {TRUTH_FILE!r}); {out} is not "
                "one. Give a new or empty folder."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_folder(path: str | Path, overwrite: bool, body: Callable[..., None], *args: Any) -> Path:
    """Prepare the folder, run ``body(out, *args)``; on failure remove what was written (and the folder if new)."""
    existed = Path(path).is_dir()
    out = _out_dir(path, overwrite)
    try:
        body(out, *args)
    except BaseException:
        if existed:  # the user's (empty) folder: keep it, empty
            for p in out.iterdir():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------------------------------------------------
# the tissue and its known answer
# --------------------------------------------------------------------------------------------------------------------
def tissue(seed: int, n_cells: int, n_genes: int, mpp: float) -> dict[str, Any]:
    """Cells, H&E (y, x, 3) and region map of :func:`synthetic_tissue`, as plain arrays."""
    from .._simulate import synthetic_tissue

    sd = synthetic_tissue(seed, n_cells=n_cells, n_genes=n_genes, mpp=mpp)
    cells = sd.tables["cells"]
    he = np.ascontiguousarray(np.moveaxis(np.asarray(sd.images["he"]["scale0"]["image"].values), 0, -1))
    regions = np.asarray(sd.labels["he_regions"]["scale0"]["image"].values)
    X = sparse.csr_matrix(cells.layers["counts"]).astype(np.int64)
    X.sort_indices()
    return {
        "xy": np.asarray(cells.obsm["spatial"], dtype=np.float64),
        "cell_type": cells.obs["cell_type"].copy(),
        "region": cells.obs["region"].copy(),
        "names": cells.obs_names.copy(),
        "X": X,
        "var": cells.var.copy(),
        "he": he,
        "regions": regions,
        "region_names": list(cells.obs["region"].cat.categories),
        "mpp": mpp,
    }


def gene_ids(n: int) -> np.ndarray:
    """Ensembl-like ids ``ENSSYN00000000001`` ... of ``n`` genes."""
    return np.array([f"ENSSYN{i + 1:011d}" for i in range(n)])


def cells_frame(t: dict[str, Any]) -> pd.DataFrame:
    """The truth's cell table: centre (µm), cell type and region of each cell of the tissue ``t``."""
    return pd.DataFrame(
        {
            "x_um": t["xy"][:, 0],
            "y_um": t["xy"][:, 1],
            "cell_type": t["cell_type"].to_numpy(),
            "region": t["region"].to_numpy(),
        },
        index=pd.Index(t["names"], name=None),
    )


def truth_var(t: dict[str, Any], ids: np.ndarray) -> pd.DataFrame:
    """The truth's ``var``: gene ids and the program each gene marks."""
    return pd.DataFrame(
        {"gene_ids": ids, "program": t["var"]["program"].astype(str).to_numpy()}, index=t["var"].index.copy()
    )


def write_truth(out: Path, adata: AnnData) -> None:
    """Write the known answer beside the platform files."""
    adata.write_h5ad(out / TRUTH_FILE)


# --------------------------------------------------------------------------------------------------------------------
# file writers
# --------------------------------------------------------------------------------------------------------------------
def _bytes(values: Sequence[Any] | np.ndarray | pd.Index) -> np.ndarray:
    return np.array([str(v).encode() for v in values], dtype=f"S{max([1, *(len(str(v)) for v in values)])}")


def write_10x_h5(
    file: Path,
    X: sparse.spmatrix,
    barcodes: Sequence[str] | np.ndarray | pd.Index,
    ids: Sequence[str] | np.ndarray | pd.Index,
    names: Sequence[str] | np.ndarray | pd.Index,
    *,
    library_id: str,
    chemistry: str,
) -> None:
    """Write a 10x feature-barcode matrix (HDF5 format version 2 of Cell/Space Ranger >= 3)."""
    import h5py

    Xc = sparse.csr_matrix(X)  # barcodes x genes in CSR == genes x barcodes in CSC, as 10x stores it
    Xc.sort_indices()
    n_obs, n_var = Xc.shape
    with h5py.File(file, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["chemistry_description"] = chemistry
        f.attrs["software_version"] = SOFTWARE
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=_bytes(barcodes) if n_obs else np.array([], dtype="S1"))
        m.create_dataset("data", data=Xc.data.astype(np.int32), compression="gzip", compression_opts=1)
        m.create_dataset("indices", data=Xc.indices.astype(np.int64), compression="gzip", compression_opts=1)
        m.create_dataset("indptr", data=Xc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_var, n_obs], dtype=np.int32))
        feat = m.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feat.create_dataset("feature_type", data=_bytes(["Gene Expression"] * n_var))
        feat.create_dataset("genome", data=_bytes(["synthetic"] * n_var))
        feat.create_dataset("id", data=_bytes(ids))
        feat.create_dataset("name", data=_bytes(names))


def block_mean(rgb: np.ndarray, k: int) -> np.ndarray:
    """Downsample ``(y, x, c)`` by the mean over ``k x k`` blocks (edges padded with the image's background)."""
    if k == 1:
        return rgb.copy()
    h, w = rgb.shape[:2]
    H, W = -(-h // k) * k, -(-w // k) * k
    pad = np.pad(rgb.astype(np.float64), ((0, H - h), (0, W - w), (0, 0)), mode="edge")
    out = pad.reshape(H // k, k, W // k, k, rgb.shape[2]).mean(axis=(1, 3))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_png(file: Path, rgb: np.ndarray) -> None:
    """Write an RGB ``uint8`` image as PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(file, compress_level=1)


def write_tif(file: Path, rgb: np.ndarray, mpp: float) -> None:
    """Write an RGB image as TIFF with its resolution (``mpp`` µm per pixel)."""
    import tifffile

    tifffile.imwrite(file, rgb, photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


def write_images(spatial: Path, he: np.ndarray, k_hi: int, k_lo: int) -> np.ndarray:
    """Write Space Ranger's ``tissue_hires_image.png`` and ``tissue_lowres_image.png``; return the hires image."""
    hires = block_mean(he, k_hi)
    write_png(spatial / "tissue_hires_image.png", hires)
    write_png(spatial / "tissue_lowres_image.png", block_mean(he, k_lo))
    return hires


# --------------------------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------------------------
def pixel_colour(img: np.ndarray, xy_px: np.ndarray) -> np.ndarray:
    """Colour of the pixel containing each (x, y) pixel coordinate (pixel i spans [i, i + 1))."""
    j = np.clip(np.floor(xy_px[:, 0]).astype(np.int64), 0, img.shape[1] - 1)
    i = np.clip(np.floor(xy_px[:, 1]).astype(np.int64), 0, img.shape[0] - 1)
    return img[i, j]


def majority_region(
    member_spot: np.ndarray, cell_region: np.ndarray, n_spots: int, n_regions: int, fallback: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Majority region of each spot's cells; spots without cells or with a tie take ``fallback`` (the centre's)."""
    rc = np.zeros((n_spots, n_regions))
    inn = member_spot >= 0
    np.add.at(rc, (member_spot[inn], cell_region[inn]), 1.0)
    maj = rc.argmax(axis=1)
    unclear = (rc.sum(axis=1) == 0) | ((rc == rc.max(axis=1, keepdims=True)).sum(axis=1) > 1)
    use = unclear & (fallback >= 0)
    maj[use] = fallback[use]
    return maj, rc


def type_counts(member: np.ndarray, cell_type: pd.Series, n_units: int, index: pd.Index) -> pd.DataFrame:
    """Cells of each type per spot/bin (``member``: the unit of each cell, -1 for none)."""
    cats = list(cell_type.cat.categories)
    codes = cell_type.cat.codes.to_numpy()
    tc = np.zeros((n_units, len(cats)), dtype=np.int64)
    inn = member >= 0
    np.add.at(tc, (member[inn], codes[inn]), 1)
    return pd.DataFrame(tc, index=index, columns=cats)


def molecules(
    gen: np.random.Generator, X: sparse.csr_matrix, xy: np.ndarray, radius: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per molecule: (cell, gene, x, y), uniform in a disc of ``radius[cell]`` around the cell centre."""
    coo = X.tocoo()
    reps = np.round(coo.data).astype(np.int64)
    cell = np.repeat(coo.row.astype(np.int64), reps)
    gene = np.repeat(coo.col.astype(np.int64), reps)
    r = radius[cell] * np.sqrt(gen.random(cell.size))
    th = gen.uniform(0.0, 2.0 * np.pi, cell.size)
    pos = xy[cell] + np.column_stack([r * np.cos(th), r * np.sin(th)])
    return cell, gene, pos
