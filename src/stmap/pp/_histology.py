"""Per-spot histology features from patches cut lazily around every spot, at one or several physical sizes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError
from stmap._core._patches import extract_patches, patch_spec
from stmap._core._resolve import resolve
from stmap._core._write import Results

__all__ = ["histology_features"]

_EXTRACTORS = ("handcrafted", "cnn")


@inject_docs()
def histology_features(
    sdata: Any,
    *,
    image_key: str | None = None,
    table_key: str | None = None,
    extractor: str | Callable[[np.ndarray], np.ndarray] = "handcrafted",
    patch_um: float | None = None,
    scales: tuple[float, ...] = (1,),
    patch_px: int | None = 48,
    mpp: float | None = None,
    batch_size: int = 256,
    coordinate_system: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    key_added: str = Key.obsm.histology,
    copy: bool = False,
    verbose: bool = False,
) -> Any:
    """Histology features of the image patch around every spot.

    Square patches centred on each spot are cut lazily from the image (the pyramid level closest to the requested
    resolution is read), at a physical side of ``patch_um * scale`` micrometres for each ``scale``, resampled to
    ``patch_px`` pixels, and streamed through the extractor ``batch_size`` patches at a time, so a whole-slide image
    never has to fit in memory. Features of all scales are concatenated.

    Parameters
    ----------
    {sdata}
    image_key
        The H&E image element (default: the only image in the coordinate system).
    {table_key}
    extractor
        ``'handcrafted'`` (offline default; colour, stain-deconvolved H/E statistics, texture and nuclei proxies, see
        :func:`stmap.pp.handcrafted_features`), ``'cnn'`` (a small CNN trained self-supervised on this slide's
        patches), or any callable ``patches (N, H, W, 3) uint8 -> (N, D)``, e.g. from
        :func:`stmap.pp.torch_extractor`, :func:`stmap.pp.timm_extractor` (UNI with local weights) or
        :func:`stmap.pp.torchvision_extractor`.
    patch_um
        Patch side in micrometres at scale 1. Default: the median spot diameter.
    scales
        Multiples of ``patch_um``; one block of features per scale (e.g. ``(1, 2.3, 4.6)`` for spot, neighbourhood and
        region context).
    patch_px
        Side in pixels patches are resampled to, the same for every image, so sections scanned at different
        resolutions give comparable features. ``None`` keeps the native resolution at scale 1 (larger scales are
        resampled to the same number of pixels).
    mpp
        Micrometres per full-resolution image pixel, when the coordinate system's unit is not recorded.
    batch_size
        Patches read and featurised at a time.
    {coordinate_system}
    {seed}
    {device}
    {key_added}
    {copy}
    {verbose}

    Returns
    -------
    ``None`` (or, with ``copy=True``, the modified copy). Writes to the table:

    ``.obsm[key_added]``
        ``(n_spots, D)`` float32 features, scale blocks concatenated.
    ``.uns[key_added]``
        ``extractor``, ``patch_um``, ``scales``, ``patch_px``, ``mpp`` (micrometres per feature pixel, per scale),
        ``n_features_per_scale``, ``feature_names`` (handcrafted only), ``image_key`` and ``params``.

    Raises
    ------
    StmapInputError
        No image, an image not aligned to the spots (spot centres outside it), a patch larger than the image, a
        bad extractor or an extractor that returns the wrong shape or non-finite values. Nothing is written.
    """
    import dask

    ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
    img = ctx.image(image_key)
    scales = tuple(float(s) for s in np.atleast_1d(scales))
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise StmapInputError(f"`scales` must be positive numbers, got {scales!r}.")
    if batch_size < 1:
        raise StmapInputError(f"`batch_size` must be >= 1, got {batch_size}.")
    if isinstance(extractor, str) and extractor not in _EXTRACTORS:
        raise StmapInputError(
            f"Unknown extractor {extractor!r}; use one of {', '.join(map(repr, _EXTRACTORS))} or a callable "
            "patches (N, H, W, 3) uint8 -> (N, D) (e.g. st.pp.torch_extractor / st.pp.timm_extractor)."
        )
    if not isinstance(extractor, str) and not callable(extractor):
        raise StmapInputError(f"`extractor` must be a name or a callable, got {type(extractor).__name__}.")
    um_per_unit = ctx.require_um_per_unit(mpp, img)
    if patch_um is None:
        if ctx.diameters is None:
            raise StmapInputError(
                "The spot diameter is unknown (the table annotates no circles/polygons), so the default patch size "
                "cannot be chosen; pass `patch_um=`."
            )
        patch_um = float(np.median(ctx.diameters)) * um_per_unit
    patch_um = float(patch_um)
    xy = ctx.coords
    xmin, xmax, ymin, ymax = img.extent(0)
    outside = (xy[:, 0] < xmin) | (xy[:, 0] > xmax) | (xy[:, 1] < ymin) | (xy[:, 1] > ymax)
    if outside.any():
        ex = ", ".join(map(str, ctx.adata.obs_names[outside][:5]))
        raise StmapInputError(
            f"{int(outside.sum())} spot centres lie outside image {img.name!r} (e.g. {ex}): the image is not aligned "
            "to the spots. Check its transformation, or subset the table to the spots on the image."
        )
    _, h, w = img.levels[0].shape
    size_um_image = min(h, w) * img.pixel_size(0) * um_per_unit
    if patch_um * max(scales) > size_um_image:
        raise StmapInputError(
            f"Patch side {patch_um * max(scales):.1f} um (patch_um={patch_um:.1f} x scale {max(scales)}) is larger "
            f"than image {img.name!r} ({size_um_image:.1f} um); use a smaller `patch_um` or `scales`."
        )
    if img.levels[0].shape[0] < 3:
        raise StmapInputError(f"Image {img.name!r} has {img.levels[0].shape[0]} channel(s); an RGB H&E is needed.")

    specs = []
    for s in scales:
        out = patch_px
        if patch_px is None:
            out = patch_spec(ctx, img, patch_um, mpp=mpp).size_px
        specs.append(patch_spec(ctx, img, patch_um * s, out_px=int(out), mpp=mpp))

    start = logg.info(f"computing histology features ({_name(extractor)}, {len(scales)} scale(s))")
    lazies = [extract_patches(img, xy, spec, fill_value=0, chunk_size=batch_size) for spec in specs]
    if extractor == "cnn":  # one small CNN per scale, trained self-supervised on all of this slide's patches
        from ._extractors import train_slide_cnn

        allp = dask.compute(*lazies, scheduler="synchronous")
        fns = [train_slide_cnn(_to_rgb_uint8(np.asarray(p)), seed=seed, device=device, verbose=verbose) for p in allp]
    elif extractor == "handcrafted":
        from ._extractors import handcrafted_features

        fns = [handcrafted_features] * len(specs)
    else:
        fns = [extractor] * len(specs)
    blocks = _stream(lazies, fns, batch_size, verbose, dask)
    feats = np.concatenate(blocks, axis=1).astype(np.float32)
    d_scale = [b.shape[1] for b in blocks]

    params = {"extractor": _name(extractor), "patch_um": patch_um, "scales": list(scales), "patch_px": patch_px}
    res = Results(ctx, key_added, params={**params, "batch_size": batch_size, "seed": seed})
    res.obsm(key_added, feats)
    meta = {
        "extractor": _name(extractor),
        "patch_um": patch_um,
        "scales": list(scales),
        "patch_px": [int(s.out_px) for s in specs],
        "mpp": [float(s.mpp) for s in specs],
        "n_features_per_scale": d_scale,
        "image_key": img.name,
    }
    if extractor == "handcrafted":
        from ._extractors import handcrafted_feature_names

        meta["feature_names"] = [f"s{s:g}_{n}" for s in scales for n in handcrafted_feature_names()]
    res.uns(key_added, meta)
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added .obsm[{key_added!r}] ({feats.shape[1]} features)")
    return out


def _name(extractor: Any) -> str:
    return extractor if isinstance(extractor, str) else getattr(extractor, "name", None) or repr(extractor)[:80]


def _to_rgb_uint8(patches: np.ndarray) -> np.ndarray:
    """``(n, c, h, w)`` -> ``(n, h, w, 3)`` uint8 (first three channels; floats in [0, 1] are scaled)."""
    p = np.moveaxis(patches[:, :3], 1, -1)
    if p.dtype != np.uint8:
        if np.issubdtype(p.dtype, np.floating) and np.nanmax(p, initial=0) <= 1.0:
            p = p * 255.0
        p = np.clip(np.round(p), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(p)


def _stream(lazies: list, fns: list[Callable], batch_size: int, verbose: bool, dask: Any) -> list[np.ndarray]:
    """Featurise patches batch by batch; the patches of all scales of a batch are read in one dask computation."""
    from tqdm.auto import tqdm

    n = lazies[0].shape[0]
    if n == 0:
        raise StmapInputError("The table has no spots to featurise.")
    out: list[list[np.ndarray]] = [[] for _ in lazies]
    for s in tqdm(range(0, n, batch_size), desc="histology features", disable=not verbose, leave=False):
        batches = dask.compute(*[lz[s : s + batch_size] for lz in lazies], scheduler="synchronous")
        for k, (fn, batch) in enumerate(zip(fns, batches, strict=True)):
            batch = _to_rgb_uint8(np.asarray(batch))
            f = np.asarray(fn(batch), dtype=np.float32)
            if f.ndim != 2 or f.shape[0] != len(batch):
                raise StmapInputError(
                    f"The extractor returned shape {f.shape} for {len(batch)} patches; it must return (N, D)."
                )
            if not np.isfinite(f).all():
                raise StmapInputError(
                    "The extractor returned NaN or infinite features; check the extractor (and its weights)."
                )
            out[k].append(f)
    return [np.concatenate(o) for o in out]
