"""Inference: the network input over the whole image (H&E and priors, lazily), tiled prediction, spot averages."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core import StmapInputError

from ._mask import masked
from ._prepare import disc_stencil
from ._priors import histology_values, lazy_idw, lazy_window, spot_spacing, uses_histology, uses_idw
from ._train import section_grid

if TYPE_CHECKING:
    from ._features import FeatureGrid
    from ._model import GeneMapModel
    from ._prepare import Section

__all__ = ["predict_maps", "disc_means"]

_TORCH_LOCK = threading.Lock()  # see predict_maps
#: Maps larger than this are kept lazy by default (``lazy=None``).
_LAZY_BYTES = 2 * 1024**3


@dataclass
class Maps:
    """What inference produced for one section."""

    #: ``(G, y, x)`` maps in the targets' units and the storage dtype (dask; persisted unless ``lazy``).
    genes: Any
    #: ``(3, y, x)`` uint8 reconstructed H&E, or ``None``.
    reconstruction: Any
    #: ``(n, G)`` maps averaged over each spot's disc (NaN for spots off the image).
    spots: np.ndarray


def predict_maps(
    net: Any,
    image: Any,
    *,
    chunk: int = 512,
    halo: int | None = None,
    device: Any = None,
    reconstruct: bool = False,
    skip: Callable[[int, int, int, int], bool] | None = None,
) -> Any:
    """Run a gene-map network over a whole image in overlapping tiles (lazy dask in, lazy dask out).

    Each chunk is extended by ``halo`` pixels (a multiple of the network's size multiple, at least its receptive
    radius), padded at the image's bottom/right edge to the size multiple exactly as a whole-image pass would be,
    run, and trimmed: the result equals a whole-image pass up to floating-point rounding, with one chunk (plus halo)
    in memory per worker.

    Parameters
    ----------
    net
        A gene-map network (``GeneMapNet``, e.g. ``GeneMapModel.net``).
    image
        ``(C, y, x)`` float image (NumPy or dask): RGB in ``[0, 1]``, then the network's prior channels, if any.
    chunk
        Side of the tiles in pixels (rounded up to the network's size multiple).
    halo
        Overlap in pixels on each side; default the network's receptive radius.
    device
        Torch device; default :attr:`stmap.settings.device`.
    reconstruct
        Also return the reconstructed RGB.
    skip
        ``skip(y0, y1, x0, x1)`` true: the tile ``[y0, y1) x [x0, x1)`` is not run (e.g. no tissue in it); its genes
        are NaN and its reconstruction white.

    Returns
    -------
    Lazy ``(n_genes [+3], y, x)`` float32 array (gene channels in standardised units, then the reconstruction).

    See Also
    --------
    :func:`stmap.tl.gene_maps`
        Predicts the maps of a trained model over a SpatialData's H&E.
    :func:`stmap.tl.disc_means`
        Averages the maps over the spots.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> from stmap import models
    >>> net = models.GeneMapNet(n_genes=2, width=4, depth=2)
    >>> image = np.random.default_rng(0).random((3, 100, 80), dtype=np.float32)  # RGB in [0, 1]
    >>> maps = st.tl.predict_maps(net, image, chunk=64)  # lazy
    >>> maps.shape, maps.dtype
    ((2, 100, 80), dtype('float32'))
    """
    import dask.array as da

    from stmap._core import resolve_device

    mult = net.multiple
    halo = int(math.ceil((net.receptive_radius if halo is None else halo) / mult) * mult)
    chunk = max(mult, int(math.ceil(chunk / mult) * mult), halo)
    img = image if isinstance(image, np.ndarray) else da.asarray(image)
    _, h, w = img.shape
    chunks = (_split(h, chunk, halo), _split(w, chunk, halo))
    n_out = net.n_genes + (3 if reconstruct else 0)
    dev = resolve_device(device)
    net = net.to(dev).eval()

    def block_fn(block_info: Any = None) -> np.ndarray:
        # each tile reads its own window, extended by `halo` pixels on each side that is not an image edge (every
        # chunk but the last is followed by at least `halo` pixels): the padding to the size multiple then happens at
        # the image's bottom/right edge only, as in a whole-image pass. Reading the window inside the tile's task
        # (not as upstream dask tasks) keeps one window per worker in memory: the scheduler cannot run ahead reading
        # and holding the input of tiles that wait for the network
        (ys, ye), (xs, xe) = block_info[None]["array-location"][1:]
        if skip is not None and skip(ys, ye, xs, xe):
            out = np.full((n_out, ye - ys, xe - xs), np.nan, dtype=np.float32)
            out[net.n_genes :] = 1.0
            return out
        y0, x0, y1, x1 = max(0, ys - halo), max(0, xs - halo), min(h, ye + halo), min(w, xe + halo)
        win = img[:, y0:y1, x0:x1]
        if not isinstance(win, np.ndarray):
            win = win.compute(scheduler="synchronous")
        out = _run(net, np.asarray(win, dtype=np.float32), mult, dev, reconstruct)
        return out[:, ys - y0 : ye - y0, xs - x0 : xe - x0]

    return da.map_blocks(block_fn, dtype=np.float32, chunks=((n_out,), *chunks), meta=np.empty((0, 0, 0), np.float32))


def _split(n: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunks of ``chunk`` pixels; a remainder shorter than ``halo`` joins the last chunk.

    Every chunk must be at least ``halo`` long, and chunk starts stay multiples of the size multiple so that pooling
    windows line up with a whole-image pass.
    """
    parts = [chunk] * (n // chunk)
    rest = n - sum(parts)
    if rest and parts and rest < halo:
        parts[-1] += rest
    elif rest:
        parts.append(rest)
    return tuple(parts)


def _run(net: Any, block: np.ndarray, mult: int, dev: Any, reconstruct: bool) -> np.ndarray:
    """One block through the network, padded with white at its bottom/right to the size multiple, then trimmed."""
    import torch

    from stmap._core import torch_threads

    _, bh, bw = block.shape
    x = np.pad(block, ((0, 0), (0, (-bh) % mult), (0, (-bw) % mult)), constant_values=1.0)
    # one tile at a time through torch (it threads each tile itself): tiles run concurrently from dask's threads
    # would share the thread pool unpredictably and round differently from run to run; st.settings.n_threads also
    # holds when lazy maps are computed later (e.g. by sdata.write)
    with _TORCH_LOCK, torch_threads(), torch.no_grad():
        recon, genes = net(torch.tensor(x[None]).to(dev))  # own aligned copy (as in training)
    out = genes if not reconstruct else torch.cat([genes, recon], dim=1)
    return out[0, :, :bh, :bw].float().cpu().numpy()


def disc_means(maps: Any, centers: np.ndarray, radius: float) -> np.ndarray:
    """Mean of an image over discs around points, streamed block by block (bounded memory on huge images).

    Each block adds its pixels' values to the sums of the discs it holds, so only one block (per worker) is in
    memory. A disc holds the pixels within ``radius`` of the pixel nearest its centre; pixels off the image and NaN
    pixels are left out of the mean.

    Parameters
    ----------
    maps
        ``(C, y, x)`` image (dask or NumPy), e.g. gene maps.
    centers
        ``(n, 2)`` disc centres in pixels, ``(x, y)``.
    radius
        Disc radius in pixels.

    Returns
    -------
    ``(n, C)`` float64 means (NaN for a disc entirely off the image or NaN).

    See Also
    --------
    :func:`stmap.tl.predict_maps`
        Makes the maps.
    :func:`stmap.models.spot_means`
        The same average inside the network's training tiles (torch).

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> maps = np.stack([np.ones((50, 50)), np.arange(2500.0).reshape(50, 50)])  # 2 channels
    >>> st.tl.disc_means(maps, np.array([[10.0, 10.0], [25.0, 30.0]]), radius=3.0).tolist()
    [[1.0, 510.0], [1.0, 1525.0]]
    """
    import dask
    import dask.array as da

    maps = da.asarray(maps)
    g, h, w = maps.shape
    r = int(math.floor(radius))
    cy, cx = np.rint(centers[:, 1]).astype(np.int64), np.rint(centers[:, 0]).astype(np.int64)
    ybounds, xbounds = np.cumsum((0, *maps.chunks[1])), np.cumsum((0, *maps.chunks[2]))
    blocks = maps.to_delayed()[0]
    tasks = []
    # each block's task gets the spots whose disc's bounding box meets it and lists their pixels itself: nothing of
    # size spots x disc pixels is built here (16-um Visium HD: 160,000 bins x ~200 pixels)
    for iy in range(len(ybounds) - 1):
        rows = np.flatnonzero((cy + r >= ybounds[iy]) & (cy - r < ybounds[iy + 1]))
        for ix in range(len(xbounds) - 1):
            sel = rows[(cx[rows] + r >= xbounds[ix]) & (cx[rows] - r < xbounds[ix + 1])]
            if sel.size:
                ly, lx = cy[sel] - ybounds[iy], cx[sel] - xbounds[ix]
                tasks.append(dask.delayed(_block_sums)(blocks[iy, ix], ly, lx, sel, radius))
    sums = np.zeros((len(centers), g), dtype=np.float64)
    n = np.zeros((len(centers), g), dtype=np.float64)
    for u, part, count in dask.compute(*tasks):
        sums[u] += part
        n[u] += count
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / n


def _block_sums(
    block: np.ndarray, cy: np.ndarray, cx: np.ndarray, spots: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spots ``u`` with disc pixels in this block, the sums of their finite pixels' values and their counts.

    ``cy, cx``: the spots' centre pixels in the block's pixels; ``spots``: their indices.
    """
    dy, dx = disc_stencil(radius)
    _, bh, bw = block.shape
    yy, xx = (cy[:, None] + dy[None, :]).ravel(), (cx[:, None] + dx[None, :]).ravel()
    sp = np.repeat(spots, dy.size)
    inside = (yy >= 0) & (yy < bh) & (xx >= 0) & (xx < bw)
    ly, lx, sp = yy[inside], xx[inside], sp[inside]
    u, inv = np.unique(sp, return_inverse=True)
    vals = np.asarray(block[:, ly, lx], dtype=np.float64).T
    ok = np.isfinite(vals)
    sums = np.zeros((u.size, block.shape[0]), dtype=np.float64)
    counts = np.zeros((u.size, block.shape[0]), dtype=np.float64)
    np.add.at(sums, inv, np.where(ok, vals, 0.0))
    np.add.at(counts, inv, ok.astype(np.float64))
    return u, sums, counts


def _col(v: np.ndarray) -> np.ndarray:
    """A ``(c, 1, 1)`` float32 array for broadcasting over ``(c, y, x)``."""
    return np.asarray(v, dtype=np.float32)[:, None, None]


def network_input(sec: Section, model: GeneMapModel, grid: FeatureGrid | None, verbose: bool) -> Any:
    """The whole working image and the model's priors, lazily: ``(3 [+ priors], H, W)``.

    The spot prior comes from the section's training spots (with a trained model: every spot of the table on the
    image); the histology prior from the model's ridge on this image's features (``grid``, computed when ``None``).
    """
    import dask.array as da

    m_idw, m_hist = uses_idw(model.prior), uses_histology(model.prior)
    if not (m_idw or m_hist):
        return sec.work
    wk = sec.work.rechunk((3, 512, 512))
    parts, chunks = [wk], wk.chunks[1:]
    src = np.flatnonzero(sec.train & sec.inside)
    Z = ((sec.Y - model.mean[None, :]) / model.std[None, :]).astype(np.float32)
    if sec.missing:
        Z[:, [sec.genes.index(g) for g in sec.missing]] = 0.0
    spacing = spot_spacing(sec.centers[src])
    prior = lazy_idw(sec.centers[src], Z[src] if m_idw else Z[src, :0], sec.shape, chunks, spacing)
    if m_idw:
        parts.append(prior[:-1])
    if m_hist:
        if model.ridge_coef is None or model.ridge_intercept is None:
            raise StmapInputError(f"The model was trained with prior={model.prior!r} but holds no ridge weights.")
        grid = section_grid(sec, verbose) if grid is None else grid
        hv = histology_values(grid, model.ridge_coef, model.ridge_intercept)
        parts.append(lazy_window(grid.shifted(sec.box[0], sec.box[1]), hv, sec.shape, chunks))
    parts.append(prior[-1:])
    return da.concatenate(parts)


def infer(
    sec: Section,
    model: GeneMapModel,
    grid: FeatureGrid | None,
    *,
    device: Any,
    reconstruct: bool,
    dtype: str,
    lazy: bool | None,
    verbose: bool,
    mask: tuple[np.ndarray, np.ndarray] | None = None,
) -> Maps:
    """Maps of ``model``'s genes over the whole section, in ``dtype``, and their average over every spot disc.

    ``mask`` (from :func:`._mask.section_mask`): the maps are NaN off the tissue; the spot averages are those of the
    unmasked maps (a spot on the tissue's edge keeps its whole disc).
    """
    skip = None
    if mask is not None:  # tiles without tissue are not run (their maps would be NaN anyway)
        from stmap.pp._tissue import tissue_window

        lab, to_lab = mask

        def skip(y0: int, y1: int, x0: int, x1: int) -> bool:
            return not tissue_window(lab, to_lab, y0, x0, y1 - y0, x1 - x0).any()

    net_in = network_input(sec, model, grid, verbose)
    maps = predict_maps(model.net, net_in, device=device, reconstruct=reconstruct, skip=skip)
    n_genes = len(sec.genes)
    genes = (maps[:n_genes] * _col(model.std) + _col(model.mean)).astype(dtype)
    keep_lazy = (int(np.prod(genes.shape)) * np.dtype(dtype).itemsize > _LAZY_BYTES) if lazy is None else bool(lazy)
    if not keep_lazy:
        genes = genes.persist()
    spots = disc_means(genes, sec.centers, sec.radius)  # in the stored units
    spots[sec.outside] = np.nan
    if mask is not None:
        genes = masked(genes, mask)
        genes = genes if keep_lazy else genes.persist()
    rec = None
    if reconstruct:
        rec = (maps[n_genes:].clip(0, 1) * 255).round().astype(np.uint8)
        rec = rec if keep_lazy else rec.persist()
    return Maps(genes=genes, reconstruction=rec, spots=spots)
