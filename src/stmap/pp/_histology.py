"""Per-spot histology features from patches cut lazily around every spot, at one or several physical sizes."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from stmap._core import _logging as logg
from stmap._core._constants import Key
from stmap._core._device import resolve_verbose, torch_threads
from stmap._core._docs import inject_docs
from stmap._core._errors import StmapInputError
from stmap._core._image import intensity_range, nan_count, to_rgb_uint8, warn_nan
from stmap._core._params import Instance, Interval, validate_params
from stmap._core._patches import (
    PatchSpec,
    PatchTile,
    cut_patches,
    extract_patches,
    patch_spec,
    patch_tiles,
    read_window,
)
from stmap._core._regions import region_image, resolve_regions
from stmap._core._write import Results

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["histology_features"]


@overload
def histology_features(
    sdata: SpatialData | AnnData,
    *,
    image_key: str | dict[str, str] | None = ...,
    table_key: str | None = ...,
    extractor: str | Callable[[np.ndarray], np.ndarray] = ...,
    patch_um: float | None = ...,
    scales: tuple[float, ...] = ...,
    patch_px: int | None = ...,
    mpp: float | None = ...,
    batch_size: int = ...,
    coordinate_system: str | dict[str, str] | None = ...,
    seed: int = ...,
    device: str | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
    verbose: bool | None = ...,
) -> None: ...
@overload
def histology_features(
    sdata: SpatialData | AnnData,
    *,
    image_key: str | dict[str, str] | None = ...,
    table_key: str | None = ...,
    extractor: str | Callable[[np.ndarray], np.ndarray] = ...,
    patch_um: float | None = ...,
    scales: tuple[float, ...] = ...,
    patch_px: int | None = ...,
    mpp: float | None = ...,
    batch_size: int = ...,
    coordinate_system: str | dict[str, str] | None = ...,
    seed: int = ...,
    device: str | None = ...,
    key_added: str = ...,
    copy: Literal[True],
    verbose: bool | None = ...,
) -> SpatialData | AnnData: ...
@validate_params(
    image_key=[Instance((str, dict)), None],
    table_key=[Instance((str,)), None],
    extractor=Instance((str, Callable)),
    patch_um=[Interval(float, 0, None, "neither"), None],
    scales=Instance((tuple, list, np.ndarray, numbers.Real)),
    patch_px=[Interval(int, 1, None), None],
    mpp=[Interval(float, 0, None, "neither"), None],
    batch_size=Interval(int, 1, None),
    coordinate_system=[Instance((str, dict)), None],
    seed=Interval(int, 0, None),
    key_added=Instance((str,)),
    copy=Instance((bool,)),
    verbose=[Instance((bool,)), None],
)
@inject_docs()
def histology_features(
    sdata: SpatialData | AnnData,
    *,
    image_key: str | dict[str, str] | None = None,
    table_key: str | None = None,
    extractor: str | Callable[[np.ndarray], np.ndarray] = "handcrafted",
    patch_um: float | None = None,
    scales: tuple[float, ...] = (1,),
    patch_px: int | None = 48,
    mpp: float | None = None,
    batch_size: int = 256,
    coordinate_system: str | dict[str, str] | None = None,
    seed: int = 0,
    device: str | None = None,
    key_added: str = Key.obsm.histology,
    copy: bool = False,
    verbose: bool | None = None,
) -> SpatialData | AnnData | None:
    """Histology features of the image patch around every spot.

    Square patches centred on each spot are cut lazily from the image (the pyramid level closest to the requested
    resolution is read), at a physical side of ``patch_um * scale`` micrometres for each ``scale``, resampled to
    ``patch_px`` pixels, and streamed through the extractor ``batch_size`` patches at a time, so a whole-slide image
    never has to fit in memory. Features of all scales are concatenated.

    Parameters
    ----------
    {sdata}
    image_key
        The H&E image element (default: the only image in the coordinate system). For a table annotating several
        elements (e.g. the stack of :func:`stmap.pp.stack_sections`, one spot element per section), every spot's
        patch is cut from its own section's image, in that section's coordinate system: pass a dict
        ``{region or section: image}``, or leave ``None`` to use a stack's ``uns['stmap_stack']['section_info']``,
        else the image in each region's coordinate system. Sections without an image get NaN features (with a
        warning).
    {table_key}
    extractor
        ``'handcrafted'`` (offline default; colour, stain-deconvolved H/E statistics, texture and nuclei proxies, see
        :func:`stmap.pp.handcrafted_features`), ``'cnn'`` (a small CNN trained self-supervised on this slide's
        patches), or any callable ``patches (N, H, W, 3) uint8 -> (N, D)``, e.g. from
        :func:`stmap.pp.torch_extractor`, :func:`stmap.pp.timm_extractor` (UNI with local weights) or
        :func:`stmap.pp.torchvision_extractor`.
    patch_um
        Patch side in micrometres at scale 1. Default: the median spot diameter (over all sections of a stack).
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
        For a multi-region table, per region the only one no other region lives in (e.g. a stack's per-section
        system); a dict region -> name is accepted.
    {seed}
    {device}
    {key_added}
    {copy}
    {verbose}

    Notes
    -----
    Images are read as intensities by one rule (``stmap._core._image``): ``uint8`` as is; ``uint16`` and other
    wider integers rescaled by the dtype's range (``uint8 * 257`` gives the ``uint8`` features exactly), or read as
    8-bit when the image holds only 0..255; floats in ``[0, 1]`` or ``[0, 255]`` (else by their maximum). Grey
    (1-channel) images are replicated to RGB; NaN pixels read as white background, with a warning naming how many.

    Returns
    -------
    ``None`` (or, with ``copy=True``, the modified copy). Writes to the table:

    ``.obsm[key_added]``
        ``(n_spots, D)`` float32 features, scale blocks concatenated (NaN rows for sections without an image).
    ``.uns[key_added]``
        ``extractor``, ``patch_um``, ``scales``, ``patch_px``, ``mpp`` (micrometres per feature pixel, per scale),
        ``n_features_per_scale``, ``feature_names`` (handcrafted only), ``image_key`` (a dict region -> image
        for a multi-region table) and ``params``.

    Raises
    ------
    StmapInputError
        No image, an image not aligned to the spots (spot centres outside it), a patch larger than the image, a
        bad extractor or an extractor that returns the wrong shape or non-finite values, an image with 2 channels.
        Nothing is written.

    Warns
    -----
    UserWarning
        NaN pixels in the patches (their number and fraction; read as white background).

    See Also
    --------
    :func:`stmap.pp.handcrafted_features`
        The default extractor, on arrays of patches.
    :func:`stmap.pp.torch_extractor`
        Any torch module as the extractor.
    :func:`stmap.tl.train_ctr`
        Reads these features.
    :doc:`/tutorials/ctr`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.histology_features(sdata, table_key="spots")
    >>> spots = sdata.tables["spots"]
    >>> spots.obsm["X_histology"].shape  # 42 handcrafted features per spot
    (122, 42)
    >>> spots.uns["X_histology"]["feature_names"][:3]
    ['s1_tissue_fraction', 's1_rgb_r_mean', 's1_rgb_r_std']
    """
    whole, regions = resolve_regions(sdata, table_key, coordinate_system=coordinate_system)
    multi = len(regions) > 1 or whole.region is None
    imgs = _region_images(whole, regions, image_key) if multi else [whole.image(image_key)]  # type: ignore[arg-type]
    scales = _check_scales(scales)
    _check_extractor(extractor)
    verbose = resolve_verbose(verbose)
    todo = [(r, img) for r, img in zip(regions, imgs, strict=True) if img is not None]
    um = [r.ctx.require_um_per_unit(mpp, img) for r, img in todo]
    patch_um = _default_patch_um(todo, um) if patch_um is None else float(patch_um)
    specs_by_region = _patch_specs(todo, um, patch_um, scales, patch_px, mpp)
    specs = specs_by_region[0]

    divisors = [intensity_range(img) for _, img in todo]
    if not any(len(reg.rows) for reg, _ in todo):
        raise StmapInputError("The table has no spots to featurise.")
    start = logg.info(f"computing histology features ({_name(extractor)}, {len(scales)} scale(s))")
    with nullcontext() if extractor == "handcrafted" else torch_threads():
        fns = _extractor_fns(extractor, todo, specs_by_region, divisors, seed, device, verbose)
        blocks_by_region = [
            _by_tiles(img, reg.ctx.coords, sp, fns, batch_size, verbose, divisor=dv, name=img.name)
            for (reg, img), sp, dv in zip(todo, specs_by_region, divisors, strict=True)
        ]
    d_scale = [b.shape[1] for b in blocks_by_region[0]]
    feats = np.full((whole.adata.n_obs, sum(d_scale)), np.nan, dtype=np.float32)
    for (reg, _), blocks in zip(todo, blocks_by_region, strict=True):
        feats[reg.rows] = np.concatenate(blocks, axis=1)

    params = {"extractor": _name(extractor), "patch_um": patch_um, "scales": list(scales), "patch_px": patch_px}
    res = Results(whole, key_added, params={**params, "batch_size": batch_size, "seed": seed})
    res.obsm(key_added, feats)
    meta = {
        "extractor": _name(extractor),
        "patch_um": patch_um,
        "scales": list(scales),
        "patch_px": [int(s.out_px) for s in specs],
        "mpp": [float(s.mpp) for s in specs],
        "n_features_per_scale": d_scale,
        "image_key": todo[0][1].name if not multi else {str(r.region): i.name for r, i in todo},
    }
    if extractor == "handcrafted":
        from ._extractors import handcrafted_feature_names

        meta["feature_names"] = [f"s{s:g}_{n}" for s in scales for n in handcrafted_feature_names()]
    res.uns(key_added, meta)
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added .obsm[{key_added!r}] ({feats.shape[1]} features)")
    return out


_EXTRACTORS = ("handcrafted", "cnn")


def _check_scales(scales: Any) -> tuple[float, ...]:
    out = tuple(float(s) for s in np.atleast_1d(scales))
    if not out or any(not np.isfinite(s) or s <= 0 for s in out):
        raise StmapInputError(f"`scales` must be positive numbers, got {out!r}.")
    return out


def _check_extractor(extractor: Any) -> None:
    if isinstance(extractor, str) and extractor not in _EXTRACTORS:
        raise StmapInputError(
            f"Unknown extractor {extractor!r}; use one of {', '.join(map(repr, _EXTRACTORS))} or a callable "
            "patches (N, H, W, 3) uint8 -> (N, D) (e.g. st.pp.torch_extractor / st.pp.timm_extractor)."
        )


def _default_patch_um(todo: list, um: list[float]) -> float:
    """The median spot diameter in micrometres, over every region with an image."""
    if any(r.ctx.diameters is None for r, _ in todo):
        raise StmapInputError(
            "The spot diameter is unknown (the table annotates no circles/polygons), so the default patch size "
            "cannot be chosen; pass `patch_um=`."
        )
    return float(np.median(np.concatenate([r.ctx.diameters * u for (r, _), u in zip(todo, um, strict=True)])))


def _patch_specs(
    todo: list, um: list[float], patch_um: float, scales: tuple[float, ...], patch_px: int | None, mpp: float | None
) -> list[list[PatchSpec]]:
    """Per region, one patch spec per scale; the image checked against the spots (aligned, large enough, RGB)."""
    specs_by_region: list[list[PatchSpec]] = []
    native = patch_px
    for (reg, img), u in zip(todo, um, strict=True):
        ctx = reg.ctx
        _check_image(ctx, img, u, patch_um, scales)
        if native is None:  # native resolution (patch_px=None): that of the first image, for every section
            native = patch_spec(ctx, img, patch_um, mpp=mpp).size_px
        specs_by_region.append([patch_spec(ctx, img, patch_um * s, out_px=int(native), mpp=mpp) for s in scales])
    return specs_by_region


def _check_image(ctx: Any, img: Any, u: float, patch_um: float, scales: tuple[float, ...]) -> None:
    """Refuse an image the spots are not on, smaller than the largest patch, or with 2 channels."""
    xy = ctx.coords
    xmin, xmax, ymin, ymax = img.extent(0)
    outside = (xy[:, 0] < xmin) | (xy[:, 0] > xmax) | (xy[:, 1] < ymin) | (xy[:, 1] > ymax)
    if outside.any():
        ex = ", ".join(map(str, ctx.adata.obs_names[outside][:5]))
        raise StmapInputError(
            f"{int(outside.sum())} spot centres lie outside image {img.name!r} (e.g. {ex}): the image is not "
            "aligned to the spots. Check its transformation, or subset the table to the spots on the image."
        )
    _, h, w = img.levels[0].shape
    size_um_image = min(h, w) * img.pixel_size(0) * u
    if patch_um * max(scales) > size_um_image:
        raise StmapInputError(
            f"Patch side {patch_um * max(scales):.1f} um (patch_um={patch_um:.1f} x scale {max(scales)}) is "
            f"larger than image {img.name!r} ({size_um_image:.1f} um); use a smaller `patch_um` or `scales`."
        )
    if img.levels[0].shape[0] == 2:
        raise StmapInputError(
            f"Image {img.name!r} has 2 channels; an RGB(A) or grey H&E is needed. Pick the channels first "
            "(e.g. `sdata[image].sel(c=[...])`)."
        )


def _extractor_fns(
    extractor: Any,
    todo: list,
    specs_by_region: list[list[PatchSpec]],
    divisors: list[float],
    seed: int,
    device: str | None,
    verbose: bool,
) -> list[Callable[[np.ndarray], np.ndarray]]:
    """One feature function per scale: the handcrafted one, a given callable, or a CNN trained on this slide."""
    n_scales = len(specs_by_region[0])
    if extractor == "handcrafted":
        from ._extractors import handcrafted_features

        return [handcrafted_features] * n_scales
    if extractor != "cnn":
        return [extractor] * n_scales
    import dask

    from ._extractors import train_slide_cnn

    # one small CNN per scale, trained self-supervised on all of this slide's patches
    lazies_by_region = [
        [extract_patches(img, reg.ctx.coords, spec, fill_value=0) for spec in sp]
        for (reg, img), sp in zip(todo, specs_by_region, strict=True)
    ]
    allp = [dask.compute(*lz, scheduler="synchronous") for lz in lazies_by_region]
    return [
        train_slide_cnn(
            np.concatenate([to_rgb_uint8(np.asarray(p[k]), dv) for p, dv in zip(allp, divisors, strict=True)]),
            seed=seed,
            device=device,
            verbose=verbose,
        )
        for k in range(n_scales)
    ]


def _region_images(whole: Any, regions: list, image_key: Any) -> list:
    """The image of every region of a multi-region table (e.g. a stack of sections); ``None`` where there is none.

    ``image_key``: one name for all, a dict by region (or by section of a stack), or ``None``: a stack's
    ``uns['stmap_stack']['section_info'][section]['images']``, else the image in the region's coordinate system.
    """
    import warnings

    from ._stack import STACK_KEY

    info = (whole.adata.uns.get(STACK_KEY) or {}).get("section_info") or {}
    section_of = {str(v.get("region")): str(k) for k, v in info.items() if isinstance(v, dict)}
    out = []
    for reg in regions:
        key = image_key
        if isinstance(image_key, Mapping):
            key = image_key.get(reg.region, image_key.get(section_of.get(str(reg.region)), None))
            out.append(None if key is None else region_image(reg.ctx, key))
            continue
        if key is None and str(reg.region) in section_of:
            listed = [str(i) for i in np.atleast_1d(info[section_of[str(reg.region)]].get("images", []))]
            key = listed[0] if len(listed) == 1 else None
            if not listed:
                out.append(None)
                continue
        out.append(region_image(reg.ctx, key))
    missing = [str(r.region) for r, i in zip(regions, out) if i is None]
    if len(missing) == len(regions):
        raise StmapInputError(
            f"No region of table {whole.table_key!r} has an image ({', '.join(map(repr, missing))}): add the H&E of "
            "each section as an image element in its coordinate system, or pass `image_key=` (a dict region -> image)."
        )
    if missing:
        warnings.warn(
            f"No image for {', '.join(map(repr, missing))}: their rows of obsm get NaN features.",
            UserWarning,
            stacklevel=3,
        )
    return out


def _name(extractor: Any) -> str:
    return extractor if isinstance(extractor, str) else getattr(extractor, "name", None) or repr(extractor)[:80]


class _Opaque:
    """The image's levels, held so that dask passes them to tasks as they are (not computed whole as an argument).

    Levels up to ``_READ_WHOLE`` bytes are read once here (e.g. a JPEG-backed lazy image, which would be decoded
    again for every tile); larger ones are read tile by tile inside the tasks.
    """

    def __init__(self, image: Any, levels: list[int]) -> None:
        self.levels = list(image.levels)
        for lv in levels:
            arr = self.levels[lv]
            if hasattr(arr, "compute") and arr.nbytes <= _READ_WHOLE:
                self.levels[lv] = np.asarray(arr.compute())


#: Image levels up to this size are read whole once rather than tile by tile (bytes).
_READ_WHOLE = 2**28


def _tile_features(
    held: _Opaque,
    tile: PatchTile,
    specs: list[PatchSpec],
    fns: list[Callable],
    batch_size: int,
    divisor: float,
    name: str,
    fill_value: float = 0,
) -> tuple[list[np.ndarray], int, int]:
    """Features of one tile's patches: its windows read once, patches cut in numpy, featurised in batches."""
    windows = {lv: read_window(held, lv, w) for lv, w in tile.windows.items()}
    out, n_nan, n_px = [], 0, 0
    for spec, fn, (xs, ys) in zip(specs, fns, tile.corners, strict=True):
        blocks = []
        for s in range(0, len(xs), batch_size):
            batch = cut_patches(
                windows[spec.level], xs[s : s + batch_size], ys[s : s + batch_size], spec, fill_value=fill_value
            )
            n_nan += nan_count(batch[:, :3])
            n_px += batch[:, :3].size
            batch = to_rgb_uint8(batch, divisor, name=name)
            f = np.asarray(fn(batch), dtype=np.float32)
            if f.ndim != 2 or f.shape[0] != len(batch):
                raise StmapInputError(
                    f"The extractor returned shape {f.shape} for {len(batch)} patches; it must return (N, D)."
                )
            if not np.isfinite(f).all():
                raise StmapInputError(
                    "The extractor returned NaN or infinite features; check the extractor (and its weights)."
                )
            blocks.append(f)
        out.append(np.concatenate(blocks))
    return out, n_nan, n_px


def _by_tiles(
    image: Any,
    centers: np.ndarray,
    specs: list[PatchSpec],
    fns: list[Callable],
    batch_size: int,
    verbose: bool,
    *,
    divisor: float = 255.0,
    name: str | None = "image",
    fill_value: float = 0,
) -> list[np.ndarray]:
    """Featurise every spot's patches tile by tile (:func:`stmap._core._patches.patch_tiles`), one dask task a tile.

    The tasks run on dask's current scheduler (threads by default, the workers of a ``dask.distributed`` client when
    one is active); each reads its tile's windows once and writes ``(n_tile, D)`` blocks, placed into preallocated
    float32 arrays. Memory is bounded by a tile per worker, whatever the number of spots.

    ``divisor``: the image's intensity range (``stmap._core._image.intensity_range``); NaN pixels read as white, with a
    warning naming the image ``name`` (none when ``name`` is ``None``: the caller warned already). ``fill_value``:
    the pixels of patches beyond the image's edge.
    """
    import dask

    n = len(centers)
    if n == 0:
        return [np.zeros((0, 0), dtype=np.float32) for _ in specs]
    tiles = patch_tiles(image, centers, specs)
    held = dask.delayed(_Opaque(image, sorted({s.level for s in specs})), pure=False)  # one key, sent once
    task = dask.delayed(_tile_features, pure=False)
    jobs = [task(held, t, specs, fns, batch_size, divisor, name or "image", fill_value) for t in tiles]
    with _progress(verbose, len(jobs)):
        results = dask.compute(*jobs)
    dims = [r.shape[1] for r in results[0][0]]
    out = [np.empty((n, d), dtype=np.float32) for d in dims]
    n_nan = n_px = 0
    for tile, (blocks, nn, npx) in zip(tiles, results, strict=True):
        for o, b in zip(out, blocks, strict=True):
            o[tile.rows] = b
        n_nan, n_px = n_nan + nn, n_px + npx
    if name is not None:
        warn_nan(name, n_nan, n_px, "patches' pixel values", stacklevel=4)
    return out


def _progress(verbose: bool, total: int) -> Any:
    """A tqdm bar over finished dask tasks (local schedulers); nothing when not verbose."""
    if not verbose:
        return nullcontext()
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    class _Bar(Callback):
        outer: int | None = None  # the tiles' computation (tasks read their windows in nested ones)

        def _start(self, dsk: Any) -> None:
            if self.outer is None:
                self.outer = id(dsk)
                self.bar = tqdm(total=total, desc="histology features (tiles)", leave=False)

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if str(key).startswith("_tile_features"):
                self.bar.update(1)

        def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
            if id(dsk) == self.outer:
                self.bar.close()

    return _Bar()
