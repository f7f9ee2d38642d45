"""The public tools: :func:`train_gene_maps` (fit) and :func:`gene_maps` (apply, or fit then apply in one call)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd

from stmap._core import (
    Instance,
    Interval,
    Key,
    Options,
    StmapInputError,
    inject_docs,
    resolve_device,
    resolve_verbose,
    torch_threads,
    validate_params,
)
from stmap._core import _logging as logg

from ._genes import select_genes
from ._infer import infer
from ._mask import check_mask, section_mask
from ._model import GeneMapModel
from ._prepare import PX_PER_SPOT, model_pixel_size, prepare, resolve_section, round_tile, train_spots
from ._train import fit_model
from ._write import run_params, write

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._features import FeatureGrid
    from ._prepare import Section

__all__ = ["train_gene_maps", "gene_maps"]

_OPTIONAL_STR = [Instance((str,)), None]
#: Constraints of the parameters that choose the table, the image and the training (both tools).
_TRAINING = {
    "genes": [Interval(int, 1, None), Instance((str, list, tuple, np.ndarray, pd.Index, pd.Series))],
    "groupby": _OPTIONAL_STR,
    "image_key": _OPTIONAL_STR,
    "table_key": _OPTIONAL_STR,
    "coordinate_system": _OPTIONAL_STR,
    "layer": _OPTIONAL_STR,
    "normalize": Instance((bool,)),
    "scale": [Interval(float, 0, None, "neither"), None],
    "tile_px": Interval(int, 1, None),
    "epochs": Interval(int, 0, None),
    "warmup_epochs": [Interval(int, 0, None), None],
    "spot_weight": Interval(float, 0, None),
    "batch_size": Interval(int, 1, None),
    "width": Interval(int, 1, None),
    "depth": Interval(int, 0, None),
    "lr": Interval(float, 0, None, "neither"),
    "prior": [Options({"idw+histology", "idw", "histology"}), None],
    "train_mask": [Instance((str, list, tuple, np.ndarray, pd.Series)), None],
    "seed": Interval(int, 0, 2**32 - 1),
    "device": _OPTIONAL_STR,
    "verbose": [Instance((bool,)), None],
}
#: Constraints of the parameters of applying a model and writing.
_APPLY = {
    "model": [Instance((GeneMapModel,)), None],
    "reconstruct": Instance((bool,)),
    "dtype": Options({"float32", "float16"}),
    "lazy": [Instance((bool,)), None],
    "tissue_mask": Instance((bool, str)),
    "key_added": _OPTIONAL_STR,
    "copy": Instance((bool,)),
}

_DOCS = {
    "gm_genes": """\
genes
    Gene names, a number of most variable genes, or ``'markers'`` (the top marker of each group of
    ``obs[groupby]``).
groupby
    Spot clustering used with ``genes='markers'``.
image_key
    H&E image element; default: the RGB image in the spots' coordinate system at the finest resolution
    (full > hires > lowres).""",
    "gm_training": """\
layer
    Layer with raw counts (default ``X``).
normalize
    Targets are ``log1p(counts / total * 1e4)``; ``False`` uses the values as they are (already normalised data).
scale
    Working pixel size in coordinate-system units; default: the spot diameter / 16. Rounded to a pyramid level
    times an integer factor so the image is never resampled arbitrarily.
tile_px
    Training tile side in working pixels (at least ``4 * 2 ** depth``).
epochs
    Training epochs. An epoch draws tiles centred near training spots until they cover the training crop about
    once, in at least 4 and at most 32 steps of ``batch_size`` tiles (a whole Visium HD capture area would need
    thousands of tiles to cover; it gets 32 steps at random places per epoch, so training time is bounded).
warmup_epochs
    Epochs (default ``epochs // 5``) at the start that train the image head only.
spot_weight
    Weight ``lambda`` of the spot loss.
batch_size
    Tiles per step.
width
    Channels of the U-Net's first level (doubled at each level down).
depth
    Number of 2x down-samplings of the U-Net.
lr
    Adam learning rate.
prior
    Estimates of the (standardised) expression fed to the network beside the H&E, per gene, which its gene head
    adds with learnt per-gene gains; the network learns how to weigh them and the departure from them that the
    histology shows:

    - ``'idw'``: the expression interpolated from the nearest training spots (inverse distance, see
      :func:`stmap.tl.prior_raster`), with a channel saying how far they are. The maps then honour the measured
      spots. During training this prior hides the spots around a random spot of most tiles, so the network also
      learns what to do far from any spot.
    - ``'histology'``: a ridge regression of the expression on handcrafted features
      (:func:`stmap.pp.handcrafted_features`) of patches one and two spot diameters wide (the spot's tissue and
      its neighbourhood) on a grid every half spot (coarser if that would exceed 40,000 points), interpolated to
      each pixel. Training tiles see the regression fitted
      without their spatial block (5 k-means blocks of the training spots), as a held-out region would.
    - ``'idw+histology'`` (default): both.
    - ``None``: the H&E alone (the published model).

    A model trained with ``'idw'`` needs the new table's expression of its genes (it re-interpolates them);
    to predict a section without expression use ``'histology'`` or ``None``.
train_mask
    Spots used for training (boolean ``obs`` column or array); default all. Held-out spots still get map
    averages (for validation).""",
}


def _train_section(
    sdata: Any,
    *,
    genes: int | str | Sequence[str],
    groupby: str | None,
    image_key: str | None,
    table_key: str | None,
    coordinate_system: str | None,
    layer: str | None,
    normalize: bool,
    scale: float | None,
    tile_px: int,
    epochs: int,
    warmup_epochs: int | None,
    spot_weight: float,
    batch_size: int,
    width: int,
    depth: int,
    lr: float,
    prior: str | None,
    train_mask: Any,
    seed: int,
    device: Any,
    verbose: bool,
) -> tuple[Section, GeneMapModel, FeatureGrid | None]:
    """Prepare the section and train on it: the section, the model and the feature grid (reused by inference)."""
    ctx, img, diam = resolve_section(sdata, table_key, coordinate_system, image_key)
    tile = round_tile(tile_px, depth)
    gene_list = select_genes(ctx.adata, genes, groupby)
    train = train_spots(ctx, train_mask)
    if train.sum() < 2:
        raise StmapInputError("Fewer than 2 training spots; train_mask must select spots with expression.")
    px = float(np.median(diam)) / PX_PER_SPOT if scale is None else float(scale)
    sec = prepare(ctx, img, diam, genes=gene_list, train=train, layer=layer, normalize=normalize, px=px, tile=tile)
    fit: dict[str, Any] = {
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "spot_weight": spot_weight,
        "batch_size": batch_size,
    }
    fit |= {"width": width, "depth": depth, "lr": lr, "prior": prior, "seed": seed}
    record: dict[str, Any] = {
        "genes": gene_list if isinstance(genes, int | str) else "list",
        "groupby": groupby,
        "layer": layer,
    }
    record |= {"normalize": normalize, "tile_px": tile, **fit}
    with torch_threads():
        model, grid = fit_model(sec, **fit, device=device, verbose=verbose, params=record)
    return sec, model, grid


def _model_section(
    sdata: Any,
    model: GeneMapModel,
    *,
    image_key: str | None,
    table_key: str | None,
    coordinate_system: str | None,
    layer: str | None,
    scale: float | None,
    tile_px: int,
    depth: int,
    train_mask: Any,
) -> Section:
    """Prepare the section for a trained model: its genes, working resolution, tile and normalisation."""
    ctx, img, diam = resolve_section(sdata, table_key, coordinate_system, image_key)
    tile = round_tile(tile_px, depth) if model.tile_px is None else int(model.tile_px)
    if train_mask is not None:
        raise StmapInputError("train_mask has no use with a trained model (nothing is trained); drop one of them.")
    px = model_pixel_size(model, ctx) if scale is None else float(scale)
    every = np.ones(ctx.adata.n_obs, dtype=bool)
    sec = prepare(
        ctx, img, diam, genes=list(model.genes), train=every, layer=layer, normalize=model.normalize, px=px, tile=tile
    )
    if sec.missing:
        warnings.warn(
            f"{len(sec.missing)} model genes are not in the table (e.g. {sec.missing[:5]}); no spot Pearson for them.",
            UserWarning,
            stacklevel=4,
        )
    return sec


@validate_params(**_TRAINING)
@inject_docs(**_DOCS)
def train_gene_maps(
    sdata: SpatialData,
    *,
    genes: int | Sequence[str] | Literal["markers"] = 20,
    groupby: str | None = None,
    image_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    scale: float | None = None,
    tile_px: int = 128,
    epochs: int = 30,
    warmup_epochs: int | None = None,
    spot_weight: float = 1.0,
    batch_size: int = 8,
    width: int = 16,
    depth: int = 3,
    lr: float = 2e-3,
    prior: Literal["idw+histology", "idw", "histology"] | None = "idw+histology",
    train_mask: str | Sequence[bool] | np.ndarray | None = None,
    seed: int = 0,
    device: str | None = None,
    verbose: bool | None = None,
) -> GeneMapModel:
    """Train a gene-map network on a section's H&E and spots; apply it with :func:`stmap.tl.gene_maps`.

    A U-Net :cite:p:`ronneberger2015unet` learns to reconstruct the H&E (``1 - SSIM`` :cite:p:`wang2004ssim`)
    and, in one extra channel per gene, maps whose average over each spot's disc matches the spot's expression
    (MSE on per-gene standardised ``log1p`` counts per 10^4). The first ``warmup_epochs`` train the image head
    only; then both. Nothing is written to ``sdata``.

    ``st.tl.gene_maps(sdata, model=st.tl.train_gene_maps(sdata, ...))`` gives the maps of
    ``st.tl.gene_maps(sdata, ...)`` (training every spot; up to float32 rounding of the convolutions).

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with a spot table (spots with a size) and an H&E image.
    {gm_genes}
    {table_key}
    {coordinate_system}
    {gm_training}
    {seed}
    {device}
    {verbose}

    Returns
    -------
    The trained :class:`~stmap.tl.GeneMapModel` (save it with :meth:`~stmap.tl.GeneMapModel.save`).

    Raises
    ------
    StmapInputError
        Not a SpatialData, spots without a size, unknown genes, an image without 1, 3 or 4 channels, spots smaller
        than a working pixel or off the image, fewer than 2 training spots, or an invalid parameter.

    See Also
    --------
    :func:`stmap.tl.gene_maps`
        Applies the model (or trains and applies in one call).
    :class:`stmap.models.GeneMapNet`
        The network.
    :func:`stmap.pl.gene_maps`
        Draws the maps over the H&E.
    :doc:`/tutorials/gene_maps`
        Tutorial.

    Examples
    --------
    Two genes at a coarse working resolution, a small network and two epochs, for speed:

    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> model = st.tl.train_gene_maps(
    ...     sdata,
    ...     table_key="spots",
    ...     genes=["tumor_m01", "T_cell_m01"],
    ...     prior="idw",
    ...     scale=5.0,
    ...     tile_px=32,
    ...     width=4,
    ...     depth=2,
    ...     epochs=2,
    ... )
    >>> model
    GeneMapModel(2 genes, prior='idw', pixel_size=4.012, 2 epochs)
    >>> st.tl.gene_maps(sdata, table_key="spots", model=model)
    >>> sdata.images["he_gene_maps"].shape  # (genes, y, x) at the working resolution
    (2, 166, 166)
    """
    start = logg.info("training gene maps")
    _, model, _ = _train_section(
        sdata,
        genes=genes,
        groupby=groupby,
        image_key=image_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
        layer=layer,
        normalize=normalize,
        scale=scale,
        tile_px=tile_px,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        spot_weight=spot_weight,
        batch_size=batch_size,
        width=width,
        depth=depth,
        lr=lr,
        prior=prior,
        train_mask=train_mask,
        seed=seed,
        device=resolve_device(device),
        verbose=resolve_verbose(verbose),
    )
    logg.info("    finished", time=start, deep=f"trained {model!r}")
    return model


@overload
def gene_maps(
    sdata: SpatialData,
    *,
    genes: int | Sequence[str] | Literal["markers"] = ...,
    groupby: str | None = ...,
    image_key: str | None = ...,
    table_key: str | None = ...,
    coordinate_system: str | None = ...,
    layer: str | None = ...,
    normalize: bool = ...,
    scale: float | None = ...,
    tile_px: int = ...,
    epochs: int = ...,
    warmup_epochs: int | None = ...,
    spot_weight: float = ...,
    batch_size: int = ...,
    width: int = ...,
    depth: int = ...,
    lr: float = ...,
    prior: Literal["idw+histology", "idw", "histology"] | None = ...,
    train_mask: str | Sequence[bool] | np.ndarray | None = ...,
    model: GeneMapModel | None = ...,
    reconstruct: bool = ...,
    dtype: Literal["float32", "float16"] = ...,
    lazy: bool | None = ...,
    tissue_mask: bool | str = ...,
    seed: int = ...,
    device: str | None = ...,
    key_added: str | None = ...,
    verbose: bool | None = ...,
    copy: Literal[False] = ...,
) -> None: ...
@overload
def gene_maps(
    sdata: SpatialData,
    *,
    genes: int | Sequence[str] | Literal["markers"] = ...,
    groupby: str | None = ...,
    image_key: str | None = ...,
    table_key: str | None = ...,
    coordinate_system: str | None = ...,
    layer: str | None = ...,
    normalize: bool = ...,
    scale: float | None = ...,
    tile_px: int = ...,
    epochs: int = ...,
    warmup_epochs: int | None = ...,
    spot_weight: float = ...,
    batch_size: int = ...,
    width: int = ...,
    depth: int = ...,
    lr: float = ...,
    prior: Literal["idw+histology", "idw", "histology"] | None = ...,
    train_mask: str | Sequence[bool] | np.ndarray | None = ...,
    model: GeneMapModel | None = ...,
    reconstruct: bool = ...,
    dtype: Literal["float32", "float16"] = ...,
    lazy: bool | None = ...,
    tissue_mask: bool | str = ...,
    seed: int = ...,
    device: str | None = ...,
    key_added: str | None = ...,
    verbose: bool | None = ...,
    copy: Literal[True],
) -> SpatialData: ...
@validate_params(**_TRAINING, **_APPLY)
@inject_docs(**_DOCS)
def gene_maps(
    sdata: SpatialData,
    *,
    genes: int | Sequence[str] | Literal["markers"] = 20,
    groupby: str | None = None,
    image_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    scale: float | None = None,
    tile_px: int = 128,
    epochs: int = 30,
    warmup_epochs: int | None = None,
    spot_weight: float = 1.0,
    batch_size: int = 8,
    width: int = 16,
    depth: int = 3,
    lr: float = 2e-3,
    prior: Literal["idw+histology", "idw", "histology"] | None = "idw+histology",
    train_mask: str | Sequence[bool] | np.ndarray | None = None,
    model: GeneMapModel | None = None,
    reconstruct: bool = False,
    dtype: Literal["float32", "float16"] = "float32",
    lazy: bool | None = None,
    tissue_mask: bool | str = True,
    seed: int = 0,
    device: str | None = None,
    key_added: str | None = None,
    verbose: bool | None = None,
    copy: bool = False,
) -> SpatialData | None:
    """Predict per-pixel gene expression on the H&E: a new image element with one channel per gene.

    With ``model`` (from :func:`stmap.tl.train_gene_maps`, or :meth:`stmap.tl.GeneMapModel.load`), the model's
    genes are predicted on this section or image and nothing is trained: ``genes``, ``normalize`` and the training
    settings (``tile_px`` to ``lr``, ``prior``) are the model's, those given here are not used; ``layer`` names this
    table's counts, ``scale`` defaults to the model's working pixel size, and the priors come from this table's
    spots. Without a model, one is trained on this section first (:func:`stmap.tl.train_gene_maps` with the same
    parameters), then applied.
    The maps are predicted over the whole image, streamed through overlapping tiles
    (:func:`stmap.tl.predict_maps`); with ``tissue_mask`` on, tiles without tissue are not run (NaN).

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with a spot table (spots with a size) and an H&E image.
    {gm_genes}
    {table_key}
    {coordinate_system}
    {gm_training}
    model
        A trained :class:`~stmap.tl.GeneMapModel` (e.g. from another section, or loaded from disk): no training,
        its genes are predicted (``train_mask`` is then refused).
    reconstruct
        Also write the reconstructed H&E as ``"<element>_reconstruction"``.
    dtype
        Storage type of the maps.
    lazy
        Keep the maps as a lazy dask array (computed when written or read: use it for images too large for memory;
        ``sdata.write`` streams the tiles). Default: computed now unless larger than 2 GiB.
    tissue_mask
        The maps are NaN off the tissue: beyond the tissue the network extrapolates (e.g. a tumour gene brightest on
        empty glass), which is no prediction. ``True``: the image's mask ``'<image>_tissue'``
        (:func:`stmap.pp.detect_tissue`) if there is one, else the same mask computed now (not written); a string:
        that labels element; ``False``: the whole image. The spot averages use the unmasked maps.
    {seed}
    {device}
    key_added
        Name of the image element and of the table keys; default: element ``"<image>_gene_maps"`` and table keys
        ``"stmap_gene_maps"``.
    {verbose}
    {copy}

    Returns
    -------
    ``None``, or with ``copy=True`` the modified copy. Writes:

    - image element ``"<image>_gene_maps"`` (``c, y, x``; channels = genes, units of the targets; NaN off the
      tissue unless ``tissue_mask=False``), with the
      working resolution's transformation to the image's coordinate system, so it overlays the H&E;
    - ``table.obsm['stmap_gene_maps']``: DataFrame (spots x genes) of the maps averaged over each spot's disc;
    - ``table.obs['stmap_gene_maps_train']``: whether the spot was used for training (fed the priors);
    - ``table.uns['stmap_gene_maps']``: ``params``, ``genes``, ``element``, per-gene ``mean``/``std``, ``loss``
      history, ``pixel_size``, and the per-gene Pearson correlation of the spot averages with the spots'
      expression, ``spot_pearson_train`` and ``spot_pearson_heldout``.

    Raises
    ------
    StmapInputError
        As :func:`stmap.tl.train_gene_maps`, and ``train_mask`` with a model. Nothing is written.

    See Also
    --------
    :func:`stmap.tl.train_gene_maps`
        Trains a model to apply to other sections.
    :func:`stmap.pl.gene_maps`
        Draws the maps over the H&E.
    :doc:`/tutorials/gene_maps`
        Tutorial.

    Examples
    --------
    Train and apply in one call (two genes, a small network and two epochs, for speed):

    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.tl.gene_maps(
    ...     sdata,
    ...     table_key="spots",
    ...     genes=["tumor_m01", "T_cell_m01"],
    ...     prior="idw",
    ...     scale=5.0,
    ...     tile_px=32,
    ...     width=4,
    ...     depth=2,
    ...     epochs=2,
    ... )
    >>> sdata.images["he_gene_maps"].shape  # (genes, y, x) at the working resolution
    (2, 166, 166)
    >>> sdata.tables["spots"].obsm["stmap_gene_maps"].shape  # the maps averaged over each spot
    (122, 2)
    """
    start = logg.info("computing gene maps")
    dev, verbose = resolve_device(device), resolve_verbose(verbose)
    check_mask(sdata, tissue_mask)
    grid = None
    if model is None:
        sec, model, grid = _train_section(
            sdata,
            genes=genes,
            groupby=groupby,
            image_key=image_key,
            table_key=table_key,
            coordinate_system=coordinate_system,
            layer=layer,
            normalize=normalize,
            scale=scale,
            tile_px=tile_px,
            epochs=epochs,
            warmup_epochs=warmup_epochs,
            spot_weight=spot_weight,
            batch_size=batch_size,
            width=width,
            depth=depth,
            lr=lr,
            prior=prior,
            train_mask=train_mask,
            seed=seed,
            device=dev,
            verbose=verbose,
        )
    else:
        sec = _model_section(
            sdata,
            model,
            image_key=image_key,
            table_key=table_key,
            coordinate_system=coordinate_system,
            layer=layer,
            scale=scale,
            tile_px=tile_px,
            depth=depth,
            train_mask=train_mask,
        )
    mask = section_mask(sec, tissue_mask)
    with torch_threads():
        maps = infer(
            sec, model, grid, device=dev, reconstruct=reconstruct, dtype=dtype, lazy=lazy, verbose=verbose, mask=mask
        )
    keys = Key.gene_map_keys(sec.img.name, key_added)
    params = run_params(sec, model, layer=layer, device=dev, dtype=dtype) | {"tissue_mask": tissue_mask}
    out, written = write(sec, model, maps, keys, params, copy)
    logg.info("    finished", time=start, deep=f"added image {keys.element!r} and {written}")
    return out
