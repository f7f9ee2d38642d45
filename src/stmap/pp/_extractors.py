"""Histology patch feature extractors: ``patches (N, H, W, 3) uint8 -> features (N, D) float32``.

Every extractor is a pure function of each patch (no batch statistics), so results do not depend on how patches
are batched: lazy, streamed extraction equals eager extraction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stmap._core._device import resolve_verbose, torch_threads
from stmap._core._errors import StmapInputError
from stmap._core._params import Instance, Interval, validate_params

__all__ = [
    "handcrafted_features",
    "handcrafted_feature_names",
    "torch_extractor",
    "timm_extractor",
    "torchvision_extractor",
]

#: ImageNet normalisation used by timm/torchvision backbones.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_LBP_P, _LBP_R = 8, 1
_QUANTILES = (0.1, 0.5, 0.9)


def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are tissue: neither white (glass) nor black (masked background) nor grey."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1)
    return (mx > 25) & ~((mn > 215) & (sat < 0.1))


def handcrafted_feature_names() -> list[str]:
    """Names of the columns returned by :func:`~stmap.pp.handcrafted_features` (one scale).

    :func:`~stmap.pp.histology_features` stores them per scale, prefixed ``s<scale>_``, in
    ``.uns[key_added]['feature_names']``.

    Returns
    -------
    The column names, in order.

    See Also
    --------
    :func:`stmap.pp.handcrafted_features`
        Computes them.

    Examples
    --------
    >>> import stmap as st
    >>> names = st.pp.handcrafted_feature_names()
    >>> len(names), names[:3]
    (42, ['tissue_fraction', 'rgb_r_mean', 'rgb_r_std'])
    """
    names = ["tissue_fraction"]
    names += [f"rgb_{c}_{s}" for c in "rgb" for s in ("mean", "std")]
    names += [f"od_{c}_{q}" for c in "hed" for q in ("mean", "std", *(f"q{int(100 * q)}" for q in _QUANTILES))]
    names += ["gray_mean", "gray_std", "grad_mean", "grad_std", "laplace_var"]
    names += [f"lbp_{i}" for i in range(_LBP_P + 2)]
    names += ["nuclei_fraction", "nuclei_density", "nuclei_size_mean", "nuclei_size_std", "nuclei_h_mean"]
    return names


def handcrafted_features(patches: np.ndarray) -> np.ndarray:
    """Colour, stain, texture and nuclei statistics of H&E patches (the offline default extractor).

    Per patch, over tissue pixels only (white glass and black masked background are excluded, so white- and
    black-background scans give comparable values):

    - tissue fraction; RGB mean and standard deviation;
    - hematoxylin / eosin / DAB optical densities from :func:`skimage.color.rgb2hed` (colour deconvolution):
      mean, standard deviation, 10/50/90 % quantiles;
    - texture: grey level mean/std, Sobel gradient magnitude mean/std, variance of the Laplacian, and the
      histogram of uniform local binary patterns (P=8, R=1);
    - nuclei proxies from the hematoxylin channel: pixels above the patch's tissue hematoxylin mean plus one standard
      deviation and above an absolute floor are nuclei; their fraction, the number of connected blobs per 1000
      tissue pixels, mean and standard deviation of blob size (pixels) and their mean hematoxylin density.

    Parameters
    ----------
    patches
        ``(N, H, W, 3)`` uint8 RGB patches.

    Returns
    -------
    ``(N, D)`` float32 features, columns named by :func:`~stmap.pp.handcrafted_feature_names`.

    See Also
    --------
    :func:`stmap.pp.handcrafted_feature_names`
        The names of the columns.
    :func:`stmap.pp.histology_features`
        Features of the patch around every spot of a SpatialData.

    Examples
    --------
    >>> import numpy as np
    >>> import stmap as st
    >>> patches = np.full((2, 32, 32, 3), 230, dtype=np.uint8)  # pale background
    >>> patches[1, 8:24, 8:24] = (90, 40, 120)  # a purple, hematoxylin-rich square
    >>> features = st.pp.handcrafted_features(patches)
    >>> features.shape, features.dtype
    ((2, 42), dtype('float32'))
    """
    patches = _check_patches(patches)
    out = np.zeros((patches.shape[0], len(handcrafted_feature_names())), dtype=np.float32)
    for s in range(0, len(patches), _CHUNK):
        out[s : s + _CHUNK] = _handcrafted_chunk(patches[s : s + _CHUNK])
    return out


#: Patches featurised at a time by :func:`handcrafted_features` (bounds its float64 work arrays: ~30 MB at 48 px).
_CHUNK = 256


def _masked_mean_std(x: np.ndarray, w: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per patch mean and population standard deviation of ``x`` (``(n, h, w)``) over a 0/1 mask.

    ``w``: the float mask ``(n, h * w)``; ``m``: its number of ones per patch.
    """
    x = x.reshape(len(x), -1)
    mean = np.einsum("ij,ij->i", x, w) / m
    d = x - mean[:, None]
    d *= w
    return mean, np.sqrt(np.einsum("ij,ij->i", d, d) / m)


def _masked_quantiles(x: np.ndarray, mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per patch ``np.quantile(x[mask], _QUANTILES)`` (linear), ``(n, len(_QUANTILES))``.

    The masked values are sorted as float32 (several times faster than float64); the quantiles match numpy's on the
    float64 values to float32 precision (the features are stored as float32).
    """
    n = x.shape[0]
    v = np.where(mask, x, np.inf).reshape(n, -1).astype(np.float32)
    v.sort(axis=1)
    out = np.empty((n, len(_QUANTILES)))
    rows = np.arange(n)
    for j, q in enumerate(_QUANTILES):
        virtual = q * (m - 1)  # numpy's 'linear' method
        lo = np.floor(virtual).astype(np.int64)
        hi = np.minimum(lo + 1, m - 1).astype(np.int64)
        t = virtual - lo
        a, b = v[rows, lo].astype(np.float64), v[rows, hi].astype(np.float64)
        out[:, j] = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    return out


def _lbp_uniform(img: np.ndarray) -> np.ndarray:
    """``skimage.feature.local_binary_pattern(img, 8, 1, 'uniform')`` of every patch of an ``(n, h, w)`` stack.

    The same arithmetic as scikit-image's kernel (bilinear interpolation at the rounded circle offsets, zero outside
    the patch, ``>=`` against the centre, 0-1 changes counted without wrapping), so the codes are identical.
    """
    img = img.astype(np.float64)
    n, h, w = img.shape
    pad = np.zeros((n, h + 2, w + 2))
    pad[:, 1:-1, 1:-1] = img
    ang = 2 * np.pi * np.arange(_LBP_P, dtype=np.float64) / _LBP_P
    rp = np.round(-_LBP_R * np.sin(ang), 5)
    cp = np.round(_LBP_R * np.cos(ang), 5)
    r_idx, c_idx = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    bits = np.empty((_LBP_P, n, h, w), dtype=bool)
    top, bottom, tmp = np.empty((n, h, w)), np.empty((n, h, w)), np.empty((n, h, w))
    for i in range(_LBP_P):
        rr, cc = r_idx + rp[i], c_idx + cp[i]
        minr, minc = np.floor(rr), np.floor(cc)
        maxr, maxc = np.ceil(rr), np.ceil(cc)
        # the neighbours are the patch shifted by at most one pixel: slices of the zero-padded stack (zero outside,
        # as scikit-image reads it)
        r0, r1 = int(minr[0]) + 1, int(maxr[0]) + 1
        c0, c1 = int(minc[0]) + 1, int(maxc[0]) + 1
        tl = pad[:, r0 : r0 + h, c0 : c0 + w]
        if rp[i] == np.round(rp[i]) and cp[i] == np.round(cp[i]):  # on the grid: weights 1 and 0, the pixel itself
            bits[i] = tl >= img
            continue
        dr, dc = (rr - minr)[:, None], (cc - minc)[None, :]
        tr = pad[:, r0 : r0 + h, c1 : c1 + w]
        bl, br = pad[:, r1 : r1 + h, c0 : c0 + w], pad[:, r1 : r1 + h, c1 : c1 + w]
        # ((1 - dr) * ((1 - dc) * tl + dc * tr) + dr * ((1 - dc) * bl + dc * br)) - img, in place (same operations)
        np.multiply(tl, 1 - dc, out=top)
        np.multiply(tr, dc, out=tmp)
        top += tmp
        np.multiply(bl, 1 - dc, out=bottom)
        np.multiply(br, dc, out=tmp)
        bottom += tmp
        top *= 1 - dr
        bottom *= dr
        top += bottom
        top -= img
        np.greater_equal(top, 0, out=bits[i])
    changes = (bits[:-1] != bits[1:]).sum(0)
    return np.where(changes <= 2, bits.sum(0), _LBP_P + 1)


def _rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2hed`` of uint8 RGB with the logarithm looked up per 8-bit value (the same numbers)."""
    from skimage.color.colorconv import hed_from_rgb
    from skimage.util import img_as_float

    v = img_as_float(np.arange(256, dtype=np.uint8))
    np.maximum(v, 1e-6, out=v)
    lut = np.log(v) / np.log(1e-6)
    stains = lut[rgb] @ hed_from_rgb
    np.maximum(stains, 0, out=stains)
    return stains


def _handcrafted_chunk(rgb: np.ndarray) -> np.ndarray:
    """The handcrafted features of an ``(n, h, w, 3)`` uint8 stack, vectorised over patches (float64)."""
    n, h, w, _ = rgb.shape
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    mask = (mx > 25) & ~((mn > 215) & ((mx - mn) / np.maximum(mx, 1) < 0.1))  # _tissue_mask, channel by channel
    counts = mask.sum((1, 2))
    frac = counts / (h * w)
    mask[counts < 4] = True
    m = mask.sum((1, 2)).astype(np.float64)
    wts = mask.reshape(n, -1).astype(np.float64)
    cols = [frac]
    for c in range(3):
        cols += _masked_mean_std(rgb[..., c].astype(np.float64) / 255.0, wts, m)
    hed = _rgb2hed(rgb)
    stats = []
    for c in range(3):
        mean, std = _masked_mean_std(hed[..., c], wts, m)
        stats.append((mean, std))
        cols += [mean, std, *_masked_quantiles(hed[..., c], mask, m).T]
    cols += _texture(rgb.astype(np.float64).mean(-1) / 255.0, mask, wts, m)
    cols += _nuclei(hed[..., 0], *stats[0], mask, m)
    return np.stack(cols, axis=1)


def _texture(gray: np.ndarray, mask: np.ndarray, wts: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
    """Grey mean/std, Sobel magnitude mean/std, Laplacian variance and the uniform LBP histogram, per patch."""
    from scipy import ndimage
    from skimage.filters.edges import SOBEL_SMOOTH
    from skimage.restoration.uft import laplacian

    n = len(gray)
    # scikit-image's sobel and laplace, each patch on its own (kernels of shape (1, 3, 3): nothing crosses patches)
    smooth, edge = np.asarray(SOBEL_SMOOTH), np.array([1.0, 0.0, -1.0])
    sob = np.zeros(gray.shape)
    for kernel in (edge[:, None] * smooth[None, :], smooth[:, None] * edge[None, :]):
        ax = ndimage.convolve(gray, kernel[None], mode="reflect")
        ax *= ax
        sob += ax
    grad = np.sqrt(sob) / np.sqrt(2.0)
    lap = ndimage.convolve(gray, np.asarray(laplacian(2, (3, 3))[1])[None])
    cols = [*_masked_mean_std(gray, wts, m), *_masked_mean_std(grad, wts, m), _masked_mean_std(lap, wts, m)[1] ** 2]
    lbp = _lbp_uniform((gray * 255).astype(np.uint8))
    codes = (lbp + (_LBP_P + 2) * np.arange(n)[:, None, None])[mask]
    hist = np.bincount(codes, minlength=n * (_LBP_P + 2)).reshape(n, _LBP_P + 2)
    return cols + list((hist / m[:, None]).T)


def _nuclei(hmap: np.ndarray, hmean: np.ndarray, hstd: np.ndarray, mask: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
    """Nuclei proxies: connected hematoxylin-rich blobs, labelled within each patch only."""
    from scipy import ndimage

    n = len(hmap)
    nuc = (hmap > np.maximum(hmean + hstd, 0.03)[:, None, None]) & mask
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    lab, k_all = ndimage.label(nuc, structure=structure)
    n_nuc = nuc.sum((1, 2))
    k, size_mean, size_std = np.zeros(n), np.zeros(n), np.zeros(n)
    if k_all:
        flat = lab.reshape(n, -1)
        owner = np.zeros(k_all + 1, dtype=np.int64)
        pi, pj = np.nonzero(flat)
        owner[flat[pi, pj]] = pi
        sizes = np.bincount(flat.ravel(), minlength=k_all + 1)[1:].astype(np.float64)
        owner = owner[1:]
        k = np.bincount(owner, minlength=n).astype(np.float64)
        has = k > 0
        size_mean[has] = np.bincount(owner, weights=sizes, minlength=n)[has] / k[has]
        dev = sizes - size_mean[owner]
        size_std[has] = np.sqrt(np.bincount(owner, weights=dev * dev, minlength=n)[has] / k[has])
    h_nuc = np.where(n_nuc > 0, np.where(nuc, hmap, 0.0).sum((1, 2)) / np.maximum(n_nuc, 1), 0.0)
    return [n_nuc / m, 1000.0 * k / m, size_mean, size_std, h_nuc]


def _check_patches(patches: Any) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise StmapInputError(f"Patches must be (N, H, W, 3) RGB, got shape {patches.shape}.")
    if patches.dtype != np.uint8:
        raise StmapInputError(f"Patches must be uint8, got {patches.dtype}; convert the image to 8-bit RGB first.")
    return patches


# --------------------------------------------------------------------------------------------------------------------
# torch backbones with local weights
# --------------------------------------------------------------------------------------------------------------------
class TorchExtractor:
    """Callable wrapping a torch module: ``patches (N, H, W, 3) uint8 -> (N, D)`` features (eval mode, no grad).

    Patches are scaled to [0, 1], resized to ``input_px`` and normalised with ``mean``/``std`` before the forward
    pass. Built by :func:`torch_extractor`, :func:`timm_extractor` or :func:`torchvision_extractor`.
    """

    def __init__(
        self,
        module: Any,
        *,
        input_px: int | None = 224,
        mean: tuple[float, ...] = _IMAGENET_MEAN,
        std: tuple[float, ...] = _IMAGENET_STD,
        device: Any = None,
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        from stmap._core._device import resolve_device

        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.input_px, self.mean, self.std, self.batch_size = input_px, mean, std, int(batch_size)
        self.name = name or type(module).__name__

    def __repr__(self) -> str:
        return f"TorchExtractor({self.name}, input_px={self.input_px})"

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        patches = _check_patches(patches)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        outs = []
        with torch_threads(), torch.no_grad():
            for s in range(0, len(patches), self.batch_size):
                x = torch.from_numpy(patches[s : s + self.batch_size]).to(self.device)
                x = x.permute(0, 3, 1, 2).float() / 255.0
                if self.input_px is not None and x.shape[-1] != self.input_px:
                    x = F.interpolate(x, size=(self.input_px, self.input_px), mode="bilinear", align_corners=False)
                y = self.module((x - mean) / std)
                if isinstance(y, tuple | list):
                    y = y[0]
                outs.append(y.reshape(y.shape[0], -1).float().cpu().numpy())
        if not outs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32)


def _load_state_dict(module: Any, weights: str | Path | dict, strict: bool) -> None:
    import torch

    if isinstance(weights, dict):
        state = weights
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"Weights file {str(path)!r} not found. stmap never downloads weights: save the state dict locally "
                "(e.g. `torch.save(model.state_dict(), path)`) and pass its path."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=strict)
    if not strict and (missing or unexpected):
        from stmap._core import _logging as logg

        logg.warning(f"loaded weights with {len(missing)} missing and {len(unexpected)} unexpected keys")


@validate_params(
    weights=[Instance((str, Path, dict)), None],
    input_px=[Interval(int, 1, None), None],
    mean=Instance((tuple, list)),
    std=Instance((tuple, list)),
    strict=Instance((bool,)),
    device=[Instance((str,)), None],
    batch_size=Interval(int, 1, None),
)
def torch_extractor(
    module: Any,
    weights: str | Path | dict | None = None,
    *,
    input_px: int | None = 224,
    mean: tuple[float, ...] = _IMAGENET_MEAN,
    std: tuple[float, ...] = _IMAGENET_STD,
    strict: bool = True,
    device: str | None = None,
    batch_size: int = 64,
) -> TorchExtractor:
    """Wrap any :class:`torch.nn.Module` (patch -> embedding) with a LOCAL state dict as a feature extractor.

    Parameters
    ----------
    module
        The architecture (its forward maps ``(N, 3, input_px, input_px)`` float images to ``(N, D)`` or
        ``(N, ...)``, flattened).
    weights
        Path of a state dict saved with :func:`torch.save` (a ``{'state_dict': ...}`` checkpoint and a
        ``'module.'`` prefix are accepted), a state dict, or ``None`` to keep the module's weights.
    input_px
        Side patches are resized to before the forward pass (``None``: as cut).
    mean
        Per-channel mean subtracted from [0, 1] RGB (ImageNet's by default).
    std
        Per-channel standard deviation that divides it (ImageNet's by default).
    strict
        Require the state dict to match the module's keys exactly.
    device
        Torch device; ``None`` uses :attr:`stmap.settings.device`.
    batch_size
        Patches per forward pass.

    Returns
    -------
    A callable ``patches (N, H, W, 3) uint8 -> (N, D) float32`` for ``histology_features(extractor=...)``.

    See Also
    --------
    :func:`stmap.pp.timm_extractor`
        A ``timm`` architecture (e.g. UNI) with local weights.
    :func:`stmap.pp.torchvision_extractor`
        A ``torchvision`` classifier without its head.
    :func:`stmap.pp.histology_features`
        Runs the extractor on the patch around every spot.

    Examples
    --------
    Any module works; here the mean colour of each normalised patch:

    >>> import torch
    >>> import stmap as st
    >>> module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> extractor = st.pp.torch_extractor(module, input_px=32)
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.histology_features(sdata, table_key="spots", extractor=extractor)
    >>> sdata.tables["spots"].obsm["X_histology"].shape
    (122, 3)
    """
    if weights is not None:
        _load_state_dict(module, weights, strict)
    return TorchExtractor(module, input_px=input_px, mean=mean, std=std, device=device, batch_size=batch_size)


@validate_params(
    arch=Instance((str,)),
    weights=[Instance((str, Path, dict)), None],
    input_px=Interval(int, 1, None),
    strict=Instance((bool,)),
    device=[Instance((str,)), None],
    batch_size=Interval(int, 1, None),
)
def timm_extractor(
    arch: str = "vit_large_patch16_224",
    weights: str | Path | dict | None = None,
    *,
    input_px: int = 224,
    strict: bool = True,
    device: str | None = None,
    batch_size: int = 32,
    **timm_kwargs: Any,
) -> TorchExtractor:
    """A ``timm`` architecture with LOCAL weights (e.g. UNI: ``'vit_large_patch16_224'``, 1024-d) as extractor.

    The model is built with ``pretrained=False, num_classes=0`` (pooled embedding); nothing is downloaded. For UNI,
    pass ``init_values=1e-5, dynamic_img_size=True`` and the path of its ``pytorch_model.bin``.

    Parameters
    ----------
    arch
        ``timm.create_model`` name.
    weights
        Path of a local state dict (or the dict); ``None`` keeps the random initialisation.
    input_px
        Side patches are resized to before the forward pass.
    strict
        Require the state dict to match the module's keys exactly.
    device
        Torch device; ``None`` uses :attr:`stmap.settings.device`.
    batch_size
        Patches per forward pass.
    **timm_kwargs
        Passed to ``timm.create_model``.

    Returns
    -------
    A callable for ``histology_features(extractor=...)``.

    See Also
    --------
    :func:`stmap.pp.torch_extractor`
        Any torch module as the extractor.
    :func:`stmap.pp.histology_features`
        Runs the extractor on the patch around every spot.

    Examples
    --------
    Random weights here; pass ``weights='path/to/pytorch_model.bin'`` for a trained model:

    >>> import numpy as np
    >>> import stmap as st
    >>> extractor = st.pp.timm_extractor("resnet18", input_px=64)
    >>> extractor(np.zeros((2, 48, 48, 3), dtype=np.uint8)).shape
    (2, 512)
    """
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "timm_extractor needs `timm`, which is not installed: install it with the torchvision build that matches "
            "your torch (`pip install timm`), then pass local weights. Alternatively wrap any torch module with "
            "`st.pp.torch_extractor`."
        ) from e
    kwargs = {"pretrained": False, "num_classes": 0, **timm_kwargs}
    module = timm.create_model(arch, **kwargs)
    return torch_extractor(module, weights, input_px=input_px, strict=strict, device=device, batch_size=batch_size)


@validate_params(
    arch=Instance((str,)),
    weights=[Instance((str, Path, dict)), None],
    input_px=Interval(int, 1, None),
    strict=Instance((bool,)),
    device=[Instance((str,)), None],
    batch_size=Interval(int, 1, None),
)
def torchvision_extractor(
    arch: str = "resnet50",
    weights: str | Path | dict | None = None,
    *,
    input_px: int = 224,
    strict: bool = True,
    device: str | None = None,
    batch_size: int = 64,
) -> TorchExtractor:
    """A ``torchvision`` classification architecture with LOCAL weights, its classifier head removed.

    Parameters
    ----------
    arch
        Name in ``torchvision.models.get_model`` (e.g. ``'resnet50'``, ``'densenet121'``).
    weights
        Path of a local state dict of the full model (the head's keys are dropped), or ``None``.
    input_px
        Side patches are resized to before the forward pass.
    strict
        Require the state dict to match the module's keys exactly.
    device
        Torch device; ``None`` uses :attr:`stmap.settings.device`.
    batch_size
        Patches per forward pass.

    Returns
    -------
    A callable for ``histology_features(extractor=...)``.

    See Also
    --------
    :func:`stmap.pp.torch_extractor`
        Any torch module as the extractor.
    :func:`stmap.pp.histology_features`
        Runs the extractor on the patch around every spot.

    Examples
    --------
    Random weights here; pass ``weights=`` the path of a local state dict for a trained model:

    >>> import numpy as np
    >>> import stmap as st
    >>> extractor = st.pp.torchvision_extractor("resnet18", input_px=64)
    >>> extractor(np.zeros((2, 48, 48, 3), dtype=np.uint8)).shape
    (2, 512)
    """
    try:
        import torchvision
    except ImportError as e:
        raise ImportError(
            "torchvision_extractor needs `torchvision`, which is not installed: install the torchvision build that "
            "matches your torch (`pip install torchvision==<the version paired with it>`). Alternatively wrap any "
            "torch module with "
            "`st.pp.torch_extractor`."
        ) from e
    import torch

    module = torchvision.models.get_model(arch, weights=None)
    if weights is not None:
        _load_state_dict(module, weights, strict)
    for head in ("fc", "classifier", "head", "heads"):
        if hasattr(module, head):
            setattr(module, head, torch.nn.Identity())
            break
    return TorchExtractor(module, input_px=input_px, device=device, batch_size=batch_size, name=arch)


# --------------------------------------------------------------------------------------------------------------------
# small self-supervised CNN trained on the slide
# --------------------------------------------------------------------------------------------------------------------
def _small_cnn(dim: int):
    import torch.nn as nn

    def block(i: int, o: int) -> list:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    layers = [*block(3, 16), *block(16, 32), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, dim)]
    return nn.Sequential(*layers)


def _augment(x, g):
    """Random flips, 90 degree rotations and brightness/contrast jitter of a (B, 3, H, W) batch in [0, 1]."""
    import torch

    b = x.shape[0]
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(-1)
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(-2)
    x = torch.rot90(x, int(torch.randint(0, 4, (1,), generator=g)), dims=(-2, -1))
    scale = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    shift = 0.1 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
    return (x * scale + shift).clamp(0, 1)


@validate_params(
    dim=Interval(int, 1, None),
    epochs=Interval(int, 0, None),
    batch_size=Interval(int, 1, None),
    max_patches=Interval(int, 1, None),
    seed=Interval(int, 0, None),
    verbose=[Instance((bool,)), None],
)
def train_slide_cnn(
    patches: np.ndarray,
    *,
    dim: int = 32,
    epochs: int = 15,
    batch_size: int = 128,
    max_patches: int = 4000,
    seed: int = 0,
    device: Any = None,
    verbose: bool | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """Train a small CNN self-supervised (SimCLR-style, two augmented views, InfoNCE, tau 0.1) on a slide's patches.

    Parameters
    ----------
    patches
        ``(N, H, W, 3)`` uint8 patches of the slide (a random subset of ``max_patches`` is used for training).
    dim
        Embedding size.
    epochs, batch_size
        Training schedule.
    max_patches
        Largest number of patches trained on.
    seed
        Random seed (deterministic on CPU).
    device
        Torch device; ``None`` uses :attr:`stmap.settings.device`.
    verbose
        Progress bar; ``None`` uses :attr:`stmap.settings.verbose`.

    Returns
    -------
    A ``TorchExtractor`` (patches -> ``(N, dim)``), inputs scaled to [0, 1] and centred at 0.5.
    """
    import torch
    import torch.nn.functional as F

    from stmap._core._device import resolve_device, seed_everything
    from stmap.models._train import fit

    patches = _check_patches(patches)
    gen = seed_everything(seed)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    if len(patches) > max_patches:
        patches = patches[np.sort(gen.choice(len(patches), max_patches, replace=False))]
    x_all = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div(255.0)
    net = _small_cnn(dim)
    g = torch.Generator().manual_seed(seed)

    def step(model, idx, epoch):
        x = x_all[idx]
        v1 = _augment(x, g).to(dev) - 0.5
        v2 = _augment(x, g).to(dev) - 0.5
        z = F.normalize(torch.cat([model(v1), model(v2)]), dim=1)
        sim = z @ z.T / 0.1
        sim.fill_diagonal_(-1e9)
        n = len(idx)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(dev)
        return F.cross_entropy(sim, target)

    drop_last = len(x_all) > batch_size
    with torch_threads():
        fit(
            net,
            step,
            len(x_all),
            epochs=epochs,
            batch_size=batch_size,
            lr=1e-3,
            seed=seed,
            device=dev,
            verbose=resolve_verbose(verbose),
            desc="slide CNN",
            drop_last=drop_last,
        )
    return TorchExtractor(net, input_px=None, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0), device=dev, name="slide_cnn")
