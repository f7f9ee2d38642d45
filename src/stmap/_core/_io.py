"""Small file helpers shared by the dataset readers: data roots, clear missing-file errors, lazy images, counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "data_root",
    "require_files",
    "lazy_image",
    "read_image",
    "to_csr",
    "counts_adata",
]


def data_root(path: str | Path | None) -> Path:
    """Root folder of the public data: ``path`` or :attr:`stmap.settings.datasetdir` (``$STMAP_DATA_DIR``)."""
    from ._settings import settings

    return Path(settings.datasetdir if path is None else path).expanduser()


def require_files(root: Path, relpaths: Sequence[str], dataset: str, hint: str = "") -> list[Path]:
    """Return ``root / p`` for each relative path, or raise :class:`FileNotFoundError` naming the first missing one.

    Parameters
    ----------
    root
        Data root folder.
    relpaths
        File paths relative to ``root``.
    dataset
        Name of the data set, used in the message.
    hint
        Extra sentence appended to the message (e.g. how to download).

    Returns
    -------
    The absolute paths, in order.
    """
    out = []
    for rel in relpaths:
        p = root / rel
        if not p.exists():
            msg = (
                f"{dataset}: file {str(p)!r} not found (expected '<root>/{rel}' with root {str(root)!r}). "
                "Pass `path=` the folder that holds the data, or set the environment variable STMAP_DATA_DIR "
                "(or `stmap.settings.datasetdir`)."
            )
            if hint:
                msg += f" {hint}"
            raise FileNotFoundError(msg)
        out.append(p)
    return out


def _pil_open(path: Path):
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # whole-slide H&E JPEGs exceed PIL's decompression-bomb guard
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def read_image(path: str | Path, mode: str | None = "RGB") -> np.ndarray:
    """Decode a PNG/JPEG/TIFF to a ``(y, x[, c])`` NumPy array (``mode`` converts with PIL; ``None`` keeps it)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    with _pil_open(path) as im:
        if mode is not None and im.mode != mode:
            im = im.convert(mode)
        return np.asarray(im)


def lazy_image(path: str | Path, mode: str = "RGB", *, mask: tuple[slice, slice] | None = None, fill: int = 0):
    """A lazy ``(y, x, c)`` dask array of an image file; nothing is decoded until computed.

    Parameters
    ----------
    path
        PNG or JPEG file.
    mode
        PIL mode to convert to (``'RGB'``, ``'L'``).
    mask
        ``(rows, cols)`` slices set to ``fill`` after decoding (e.g. to blank an inset).
    fill
        Value written into ``mask``.

    Returns
    -------
    :class:`dask.array.Array` of dtype ``uint8``.
    """
    import dask
    import dask.array as da

    path = Path(path)
    with _pil_open(path) as im:
        w, h = im.size
    nc = len(mode) if mode != "L" else 1

    def _load() -> np.ndarray:
        a = read_image(path, mode)
        if a.ndim == 2:
            a = a[..., None]
        if mask is not None:
            a = a.copy()
            a[mask[0], mask[1]] = fill
        return a

    return da.from_delayed(dask.delayed(_load)(), shape=(h, w, nc), dtype=np.uint8)


def to_csr(x: Any, dtype: Any = np.float32):
    """Convert a dense frame/array (or sparse matrix) to a CSR matrix of ``dtype``."""
    from scipy import sparse

    if isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    return sparse.csr_matrix(x, dtype=dtype)


def counts_adata(counts: Any, obs_names: Sequence[str], var_names: Sequence[str], obs: pd.DataFrame | None = None):
    """AnnData of raw counts: CSR float32 ``X`` and the same matrix in ``layers['counts']``, unique gene names.

    Parameters
    ----------
    counts
        ``(n_obs, n_vars)`` dense or sparse counts.
    obs_names, var_names
        Row and column names (gene names are made unique with ``-1``, ``-2``, ... suffixes).
    obs
        Extra obs columns (same row order).

    Returns
    -------
    :class:`anndata.AnnData`.
    """
    import anndata as ad

    from ._constants import Key

    X = to_csr(counts)
    o = pd.DataFrame(index=pd.Index([str(s) for s in obs_names]))
    if obs is not None:
        for c in obs.columns:
            o[c] = obs[c].values  # keeps categoricals
    adata = ad.AnnData(X=X, obs=o, var=pd.DataFrame(index=pd.Index([str(g) for g in var_names])))
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    adata.layers[Key.layers.counts] = X.copy()
    return adata
