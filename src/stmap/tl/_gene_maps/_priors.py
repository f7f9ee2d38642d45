"""Prior rasters fed to the network beside the H&E: inverse-distance interpolation of the spots and a histology ridge.

Both are per-pixel functions of the spots (or of the feature grid), so any window of the image can be computed on its
own and windows tile exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._features import FeatureGrid

__all__ = ["prior_raster"]

#: The priors :func:`stmap.tl.gene_maps` knows.
PRIORS = ("idw+histology", "idw", "histology", None)
#: Nearest measured spots and inverse-distance power of the spatial prior.
_PRIOR_K, _PRIOR_POWER = 8, 2.0
#: The distance channel saturates at this many spot spacings.
_PRIOR_FAR = 5.0
#: Pixels whose prior is computed at once (bounds the neighbours' values held: pixels x k x genes).
_IDW_BATCH = 32_768


def uses_idw(prior: str | None) -> bool:
    """Whether ``prior`` feeds the inverse-distance interpolation of the spots."""
    return prior in ("idw", "idw+histology")


def uses_histology(prior: str | None) -> bool:
    """Whether ``prior`` feeds the histology ridge regression."""
    return prior in ("histology", "idw+histology")


def spot_spacing(centers: np.ndarray) -> float:
    """Median nearest-neighbour distance between spot centres (pixels)."""
    from scipy.spatial import cKDTree

    if len(centers) < 2:
        return 1.0
    d, _ = cKDTree(centers).query(centers, k=2)
    return float(max(np.median(d[:, 1]), 1.0))


def idw_window(
    points: np.ndarray,
    values: np.ndarray,
    y0: int,
    x0: int,
    h: int,
    w: int,
    spacing: float,
    tree: Any = None,
    reach: list[float] | None = None,
) -> np.ndarray:
    """The prior of :func:`prior_raster` on the pixel window ``[y0, y0 + h) x [x0, x0 + w)``: ``(G + 1, h, w)``.

    ``reach``: a list to which the largest distance from a pixel to the last of its neighbours is appended (a window
    computed from a subset of the points is exact when every point left out is farther than that).
    """
    from scipy import sparse
    from scipy.spatial import cKDTree

    g = values.shape[1]
    out = np.zeros((g + 1, h, w), dtype=np.float32)
    if len(points) == 0:
        out[g] = 1.0
        if reach is not None:
            reach.append(np.inf)
        return out
    tree = cKDTree(points) if tree is None else tree
    k = min(_PRIOR_K, len(points))
    flat = out.reshape(g + 1, h * w)
    # rows of pixels at a time (bounds the pixels x k neighbour arrays); each pixel's arithmetic is the same in any
    # batch
    step = max(1, _IDW_BATCH // max(w, 1)) * w
    far = 0.0
    for s in range(0, h * w, step):
        p = np.arange(s, min(s + step, h * w))
        q = np.c_[x0 + p % w, y0 + p // w].astype(np.float64)
        d, i = tree.query(q, k=k)
        if k == 1:
            d, i = d[:, None], i[:, None]
        wt = 1.0 / np.maximum(d, 0.5) ** _PRIOR_POWER
        wt /= wt.sum(1, keepdims=True)
        # the weighted sum as a sparse (pixels x points) product: scipy's CSR kernel adds each row's k terms in order
        # (the same bits on every call, unlike BLAS) and never holds the pixels x k x G neighbour values
        rows = sparse.csr_matrix((wt.ravel(), i.ravel(), np.arange(0, wt.size + 1, k)), shape=(p.size, len(points)))
        flat[:g, s : s + p.size] = (rows @ values).T
        flat[g, s : s + p.size] = np.clip(d[:, 0] / (spacing * _PRIOR_FAR), 0.0, 1.0)
        far = max(far, float(d[:, -1].max()))
    if reach is not None:
        reach.append(far)
    return out


def lazy_idw(
    points: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, int],
    chunks: Any,
    spacing: float,
    origin: tuple[int, int] = (0, 0),
) -> Any:
    """:func:`idw_window` over a whole ``shape`` window at ``origin`` ``(y0, x0)``, lazily, with ``chunks``."""
    import dask.array as da
    from scipy.spatial import cKDTree

    tree = cKDTree(points) if len(points) else None
    g = values.shape[1]
    y0, x0 = origin

    def block(block_info: Any = None) -> np.ndarray:
        (ys, ye), (xs, xe) = block_info[None]["array-location"][1:]
        return idw_window(points, values, y0 + ys, x0 + xs, ye - ys, xe - xs, spacing, tree=tree)

    return da.map_blocks(block, dtype=np.float32, chunks=((g + 1,), *chunks), meta=np.empty((0, 0, 0), np.float32))


def prior_raster(
    points: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, int],
    *,
    spacing: float,
    origin: tuple[int, int] = (0, 0),
    chunks: Any = None,
) -> Any:
    """The spatial prior of gene maps: inverse-distance interpolation of spot values and distance to the spots.

    Channels ``0..G-1``: at every pixel, the inverse-distance interpolation (the 8 nearest spots, weights
    ``1 / max(d, 0.5)^2``) of ``values`` known at ``points``; channel ``G``: the distance to the nearest spot in units
    of ``5 * spacing``, clipped to ``[0, 1]``. Without spots the prior is 0 and the distance 1. A per-pixel function
    of the spots, so windows tile exactly: the lazy raster equals the whole one chunk for chunk.

    Parameters
    ----------
    points
        ``(n, 2)`` spot centres in pixels, ``(x, y)``.
    values
        ``(n, G)`` values at the spots (e.g. standardised expression).
    shape
        ``(h, w)`` of the window in pixels.
    spacing
        Spot spacing in pixels (e.g. the median nearest-neighbour distance).
    origin
        ``(y0, x0)``: pixel of the window's top-left corner.
    chunks
        ``None``: a NumPy array now; else ``(y chunks, x chunks)`` (dask notation): a lazy dask array.

    Returns
    -------
    ``(G + 1, h, w)`` float32.

    See Also
    --------
    :func:`stmap.tl.train_gene_maps`
        Feeds this prior to the network (``prior='idw'``).

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> spots = np.array([[10.0, 10.0], [30.0, 20.0]])  # (x, y) pixels
    >>> prior = st.tl.prior_raster(spots, np.array([[1.0], [3.0]]), (40, 50), spacing=20.0)
    >>> prior.shape  # one gene, then the distance channel
    (2, 40, 50)
    >>> [round(float(prior[0, y, x]), 3) for x, y in spots.astype(int)]  # the values at the spots
    [1.001, 2.999]
    >>> float(prior[1, 10, 10])  # the distance to the nearest spot, there 0
    0.0
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).reshape(len(points), -1)
    h, w = int(shape[0]), int(shape[1])
    y0, x0 = int(origin[0]), int(origin[1])
    if chunks is None:
        return idw_window(points, values, y0, x0, h, w, float(spacing))
    return lazy_idw(points, values, (h, w), chunks, float(spacing), origin=(y0, x0))


def fit_ridge(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge of ``Y`` on ``X`` (features already standardised), penalty per gene by efficient leave-one-out CV.

    Returns weights ``(P, G)`` and intercepts ``(G,)``.
    """
    from sklearn.linear_model import RidgeCV

    m = RidgeCV(alphas=np.logspace(-1, 5, 13), alpha_per_target=True).fit(X, Y)
    return np.asarray(m.coef_, dtype=np.float64).T.reshape(X.shape[1], -1), np.atleast_1d(m.intercept_)


def histology_values(grid: FeatureGrid, coef: np.ndarray, icpt: np.ndarray) -> np.ndarray:
    """Per-gene ridge prediction on the feature grid: ``(G, gh, gw)``."""
    p, gh, gw = grid.feats.shape
    if coef.shape[0] != p:
        from stmap._core import StmapInputError

        raise StmapInputError(
            f"The model's histology prior expects {coef.shape[0]} features per grid point, but this version of "
            f"stmap computes {p} (the model was trained by another version); retrain it with "
            "st.tl.train_gene_maps."
        )
    return (np.tensordot(coef, grid.feats.reshape(p, -1), axes=(0, 0)) + icpt[:, None]).reshape(-1, gh, gw)


def cross_fitted(
    grid: FeatureGrid,
    X: np.ndarray,
    Z: np.ndarray,
    idx: np.ndarray,
    xy: np.ndarray,
    n_obs: int,
    whole: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Training fold of every spot (-1: not training) and, per fold, the grid of ridge values fitted without it.

    ``X`` ``(len(idx), P)`` are the disc features and ``Z`` ``(len(idx), G)`` the targets of the training spots
    ``idx``, ``xy`` their centres and ``whole`` the ridge of all of them. Folds are 5 spatial blocks (k-means on the
    centres) when there are at least 25 training spots, else one fold (the ridge of all spots).
    """
    folds = np.full(n_obs, -1)
    if idx.size < 25:
        folds[idx] = 0
        return folds, [histology_values(grid, *whole)]
    from sklearn.cluster import KMeans

    folds[idx] = KMeans(5, n_init=3, random_state=seed).fit_predict(xy)
    own = folds[idx]
    return folds, [histology_values(grid, *fit_ridge(X[own != f], Z[own != f])) for f in range(5)]


def lazy_window(grid: FeatureGrid, values: np.ndarray, shape: tuple[int, int], chunks: Any) -> Any:
    """:meth:`FeatureGrid.window` of ``values`` over a whole ``shape`` image, lazily."""
    import dask.array as da

    def block(block_info: Any = None) -> np.ndarray:
        (ys, ye), (xs, xe) = block_info[None]["array-location"][1:]
        return grid.window(values, ys, xs, ye - ys, xe - xs)

    return da.map_blocks(
        block, dtype=np.float32, chunks=((values.shape[0],), *chunks), meta=np.empty((0, 0, 0), np.float32)
    )
