"""Image blocks read as intensities: one rule for every tool that reads an H&E (or any image) as values in [0, 1].

The rule (:func:`intensity_range`): the raw value read as full intensity (1.0, white in a brightfield image) is

- ``uint8``: 255; ``bool``: 1;
- wider integers (``uint16``, ``int16``, ``uint32``, ...): the dtype's maximum (a 16-bit scan keeps its contrast:
  ``uint8 * 257`` reads exactly as the ``uint8`` image), except when the image holds only values ``0..255``: 8-bit
  data in a wider container, read as 8-bit (dividing by 65535 would make it black);
- floats: 1 when the image's maximum is <= 1 (already ``[0, 1]``), 255 when it is <= 255 (8-bit values stored as
  floats), else the maximum.

The maximum is that of the coarsest pyramid level (cheap, one value per image, so every patch and tile of an image
is scaled alike). Values outside ``[0, 1]`` after scaling are clipped. NaN pixels (floats only) read as background,
white (1.0) by default: brightfield slides are white where there is no tissue; the tools that read them warn with
the number and fraction of NaN pixels (:func:`warn_nan`). Grey (1-channel) images are replicated to three channels
where an RGB is needed (:func:`rgb_channels`); RGBA drops alpha.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._errors import StmapInputError

__all__ = ["intensity_range", "rgb_channels", "to_unit", "to_rgb_uint8", "nan_count", "warn_nan"]


def intensity_range(image: Any) -> float:
    """Raw value read as full intensity (1.0) for an image (an ``ImageContext``, a list of levels or an array).

    See the module docstring for the rule; floats and wider integers look at the coarsest level's maximum.
    """
    levels = getattr(image, "levels", image)
    if not isinstance(levels, (list, tuple)):
        levels = [levels]
    dt = np.dtype(levels[0].dtype)
    if dt == np.uint8:
        return 255.0
    if dt == np.bool_:
        return 1.0
    if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise StmapInputError(f"Image values of dtype {dt} cannot be read as intensities; use integers or floats.")
    import dask.array as da

    coarse = levels[-1]
    hi = float(da.nanmax(da.asarray(coarse)).compute()) if np.prod(coarse.shape) else 0.0
    if np.issubdtype(dt, np.integer):
        return 255.0 if hi <= 255 else float(np.iinfo(dt).max)
    if not np.isfinite(hi) or hi <= 1.0:  # all NaN, or [0, 1]
        return 1.0
    return 255.0 if hi <= 255.0 else hi


def rgb_channels(block: Any, axis: int = 0, *, name: str = "image") -> Any:
    """Three channels along ``axis``: grey replicated, RGB kept, the first three of RGBA (or more) kept.

    Works on numpy and dask arrays. Two channels raise: neither grey nor RGB.
    """
    c = block.shape[axis]
    if c == 1:
        if hasattr(block, "dask"):
            import dask.array as da

            return da.concatenate([block] * 3, axis=axis)
        return np.repeat(block, 3, axis=axis)
    if c < 3:
        raise StmapInputError(
            f"Image {name!r} has {c} channels; an RGB(A) or grey H&E is needed. Pick the channels first "
            "(e.g. `sdata[image].sel(c=[...])`)."
        )
    if c == 3:
        return block
    idx = [slice(None)] * block.ndim
    idx[axis] = slice(0, 3)
    return block[tuple(idx)]


def to_unit(block: Any, divisor: float, *, nan_value: float = 1.0) -> Any:
    """``float32`` intensities in ``[0, 1]``: ``block / divisor``, clipped; NaN -> ``nan_value`` (numpy or dask)."""
    dt = np.dtype(block.dtype)
    out = block.astype(np.float32) / np.float32(divisor) if divisor != 1.0 else block.astype(np.float32)
    if dt == np.uint8 and divisor == 255.0:
        return out  # already in [0, 1], no NaN (the uint8 path stays as it always was)
    if np.issubdtype(dt, np.floating):
        out = out.clip(0, 1)  # NaN passes clip
        if hasattr(out, "dask"):
            import dask.array as da

            return da.where(da.isnan(out), np.float32(nan_value), out)
        return np.where(np.isnan(out), np.float32(nan_value), out)
    return out.clip(0, 1)


def to_rgb_uint8(patches: np.ndarray, divisor: float = 255.0, *, name: str = "image") -> np.ndarray:
    """``(n, c, h, w)`` patches -> ``(n, h, w, 3)`` uint8 RGB for extractors (grey replicated, NaN white)."""
    p = rgb_channels(np.asarray(patches), axis=1, name=name)
    if p.dtype != np.uint8 or divisor != 255.0:
        p = np.round(to_unit(p, divisor) * np.float32(255.0)).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(p, 1, -1))


def nan_count(block: Any) -> int:
    """Number of NaN values (0 for integer dtypes)."""
    if not np.issubdtype(np.dtype(block.dtype), np.floating):
        return 0
    return int(np.isnan(np.asarray(block)).sum())


def warn_nan(name: str, n_nan: int, n_total: int, where: str, *, stacklevel: int = 3) -> None:
    """Warn that ``n_nan`` of ``n_total`` pixel values were NaN and read as background (white)."""
    if n_nan <= 0:
        return
    warnings.warn(
        f"Image {name!r}: {n_nan} NaN pixel value(s) ({n_nan / max(n_total, 1):.2%} of the {where}) read as "
        "background (white). Crop the image to the tissue, or fill the NaNs yourself, if that is not what they mean.",
        UserWarning,
        stacklevel=stacklevel,
    )
