"""The public tools: :func:`train_impute_3d` (fit) and :func:`impute_3d` (apply, or fit then apply in one call)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd

from stmap._core import (
    Instance,
    Interval,
    Key,
    inject_docs,
    resolve_device,
    resolve_verbose,
    torch_threads,
    validate_params,
)
from stmap._core import _logging as logg
from stmap._core._params import Constraint

from ._arrays import Problem
from ._config import EDGE_TYPES, GraphParams, TrainParams, graph_params
from ._model import Impute3DModel
from ._predict import predict_arrays
from ._prepare import Inputs, prepare
from ._train import train_arrays
from ._write import run_params, write

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["train_impute_3d", "impute_3d"]


@dataclass(frozen=True)
class _EdgeTypes(Constraint):
    """A tuple or list of edge types of the 3D spot graph."""

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is a tuple/list of known edge types."""
        return isinstance(value, (tuple, list)) and all(isinstance(v, str) and v in EDGE_TYPES for v in value)

    def describe(self) -> str:
        """The rule in words."""
        return "a tuple of edge types among " + ", ".join(map(repr, EDGE_TYPES))

    def invalid(self) -> list[Any]:
        """A bare string and an unknown edge type."""
        return ["overlap", ("overlap", "nope")]


@dataclass(frozen=True)
class _Multiple(Constraint):
    """A positive integer multiple of ``k``."""

    k: int

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is a positive integer multiple of ``k``."""
        return Interval(int, self.k, None).ok(value) and value % self.k == 0

    def describe(self) -> str:
        """The rule in words."""
        return f"a positive integer multiple of {self.k} (the attention heads)"

    def invalid(self) -> list[Any]:
        """A non-number, a boolean, 0, a non-multiple and a fraction."""
        return ["x", True, 0, self.k + 1, 1.5]


_STR = Instance((str,))
#: Constraints of the parameters that read the table (both tools).
_READ = {
    "table_key": _STR,
    "measured": [Instance((str, list, tuple, np.ndarray)), None],
    "genes": [Interval(int, 1, None), Instance((list, tuple, np.ndarray, pd.Index))],
    "features_key": [_STR, None],
    "n_scales": [Interval(int, 1, None), None],
    "feature_scales": Instance((tuple, list)),
    "feature_kwargs": [Instance((dict,)), None],
    "layer": [_STR, None],
    "section_key": _STR,
    "spatial_key": _STR,
    "batch_size": [Interval(int, 1, None), None],
    "seed": Interval(int, 0, None),
    "device": [_STR, None],
    "verbose": [Instance((bool,)), None],
}
#: Constraints of the graph and training parameters (both tools; the model's own when ``impute_3d`` gets one).
_TRAINING = {
    "graph": _EdgeTypes(),
    "propagate": Instance((bool,)),
    "epochs": Interval(int, 1, None),
    "hidden": _Multiple(TrainParams.heads),
    "mask_fraction": Interval(float, 0, 1, "right"),
    "disc_scale": Interval(float, 0, None, "neither"),
    "k_similar": Interval(int, 1, None),
    "k_spatial": Interval(int, 0, None),
    "layers_apart": [Interval(int, 1, None), None],
}
#: Constraints of the parameters of applying a model and writing.
_APPLY = {"model": [Instance((Impute3DModel,)), None], "key_added": _STR, "copy": Instance((bool,))}

_DOCS = {
    "imp_sdata": """\
sdata
    The stack from :func:`stmap.pp.stack_sections` (or an AnnData with ``obs[section_key]``,
    ``obsm[spatial_key]``).""",
    "imp_read": """\
table_key
    The stacked table.
measured
    Which spots have measured expression: ``None`` uses ``obs['measured']``; an obs column name (bool); or a list
    of section names.
genes
    Top-n genes by mean count over the measured spots, or a list of genes.
features_key
    ``obsm`` key of histology features (rows of spots without an image: NaN), split into blocks, one per patch
    scale, following ``uns[features_key]['n_features_per_scale']`` when present. When the key is absent and
    ``sdata`` is a SpatialData, the features are computed here with :func:`stmap.pp.histology_features` on the
    stacked table (each spot's patches from its own section's image, at ``feature_scales``; NaN rows, with a
    warning, for sections without an image). If no section has an image (or ``sdata`` is a plain AnnData without
    the key): expression and graph only, with a warning. ``None``: no histology, no warning.
n_scales
    Number of equal-width patch-scale blocks in ``obsm[features_key]`` (default: from its ``uns`` entry, else 1).
feature_scales
    Patch sizes, as multiples of the spot patch, of the features computed when ``obsm[features_key]`` is absent
    (spot / region / global context, ASIGN's 224 / 512 / 1024 px patches).
feature_kwargs
    Further arguments of :func:`stmap.pp.histology_features` for those features (e.g. ``patch_um``,
    ``patch_px``, ``extractor``, ``image_key``).
layer
    Layer of raw counts, used as given (default: ``layers['counts']`` if present, else ``X``, which must then
    hold whole numbers: a normalised ``X`` is an error that names the fix). Only the measured spots' counts are
    read and checked (numeric, finite, non-negative); the sections to impute may hold anything (e.g. 0 or NaN).
section_key
    Section column (categorical, in stacking order).
spatial_key
    Aligned ``(x, y, z)`` coordinates (micrometres).
batch_size
    Target spots per training step (twice as many per prediction batch), each read with the spots whose edges
    reach it, so memory is bounded by the batch, not the stack. ``None``: the whole graph at once when it has at most
    1,000,000 edges (all types; e.g. legacy ST or Visium serial sections), else in batches on a graph whose overlap
    edges join each spot to at most its 8 nearest spots of every other section (kept when either end has the other
    among its 8; a model records this and applies it with the same graph), as many spots per step as read about
    50,000 edges (256 to 4096; e.g. about 1600 for 16 um Visium HD bins). So the edges per spot, the time of every
    step and the number of steps (``epochs``) do not grow with the stack: time grows linearly with the spots (graph,
    propagation, prediction). In batches an epoch is one step on ``batch_size`` masked spots in a few compact
    regions (and the held-out spots there), sampled anew; 2 masks are propagated instead of 20; the target,
    propagation and prior are float32, and the prior is fitted on at most 50,000 spots. A given ``batch_size``
    keeps every overlap; prediction in batches then gives the numbers of the whole graph (to float32 round-off).""",
    "imp_training": """\
graph
    Edge types used by the propagation and the graph attention: any of ``'overlap'``, ``'similarity'``,
    ``'spatial'`` (types left out are written as empty matrices).
propagate
    Label propagation and mixing (``False``: the network alone).
epochs
    Training length (epochs).
hidden
    Token width of the network (a multiple of its 4 attention heads).
mask_fraction
    Fraction of the measured spots (outside the held-out quarter) hidden from the propagation per epoch.
disc_scale
    Factor on the spot radius for the overlap graph.
k_similar
    Neighbours of the similarity graph.
k_spatial
    Neighbours of the spatial graph.
layers_apart
    Sections at most this many positions apart (stacking order) are joined by overlap/similarity edges
    (``None``: every pair of sections).""",
}


def _feature_compute(feature_scales: Any, feature_kwargs: Any, seed: int, dev: Any, verbose: bool) -> dict:
    """How features absent from the table are computed (:func:`stmap.pp.histology_features` arguments)."""
    return {"scales": feature_scales, "kwargs": feature_kwargs, "seed": seed, "device": str(dev), "verbose": verbose}


def _fit(
    inp: Inputs, pb: Problem, gp: GraphParams, tp: TrainParams, seed: int, dev: Any, verbose: bool
) -> Impute3DModel:
    """Train on the prepared table (torch threads from the settings)."""
    with torch_threads():
        return train_arrays(pb, gp, tp, genes=inp.genes, seed=seed, dev=dev, verbose=verbose)


@validate_params(**_READ, **_TRAINING)
@inject_docs(**_DOCS)
def train_impute_3d(
    sdata: SpatialData | AnnData,
    *,
    table_key: str = Key.table.stack,
    measured: str | Sequence[str] | None = None,
    genes: int | Sequence[str] = 250,
    features_key: str | None = Key.obsm.histology,
    n_scales: int | None = None,
    feature_scales: Sequence[float] = (1, 2.3, 4.6),
    feature_kwargs: dict[str, Any] | None = None,
    layer: str | None = None,
    section_key: str = Key.obs.section,
    spatial_key: str = Key.obsm.spatial_3d,
    batch_size: int | None = None,
    graph: Sequence[str] = ("overlap",),
    propagate: bool = True,
    epochs: int = 100,
    hidden: int = 32,
    mask_fraction: float = 0.3,
    disc_scale: float = 3.0,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int | None = None,
    seed: int = 0,
    device: str | None = None,
    verbose: bool | None = None,
) -> Impute3DModel:
    """Train a 3D imputation model (ASIGN) on a stack's measured sections; apply it with :func:`stmap.tl.impute_3d`.

    The method is ASIGN's :cite:p:`zhu2024asign`.

    The model is the one :func:`stmap.tl.impute_3d` trains when called without ``model=`` (see there for the
    method): ``impute_3d(sdata, model=train_impute_3d(sdata, ...))`` writes the same numbers as
    ``impute_3d(sdata, ...)``. Nothing is written to ``sdata``.

    Parameters
    ----------
    {imp_sdata}
    {imp_read}
    {imp_training}
    {seed}
    {device}
    {verbose}

    Returns
    -------
    The trained :class:`stmap.tl.Impute3DModel` (its genes, scaling, histology prior, network, and the graph and
    training parameters it was trained with).

    Raises
    ------
    StmapInputError
        No measured spot, a single section, unknown genes/keys, features of the wrong shape, measured counts that are
        NaN/infinite, negative or non-numeric, a normalised ``X`` without ``layers['counts']``, a parameter of the
        wrong type or out of range, or a run that would not fit in the available memory (estimated before anything
        is built; the message names the knobs: ``genes``, ``disc_scale``, ``batch_size``, ``graph``).

    See Also
    --------
    :func:`stmap.tl.impute_3d`
        Applies the model (or trains and applies in one call).
    :class:`stmap.models.ASIGNNet`
        The network.
    :doc:`/tutorials/impute3d`
        Tutorial.

    Examples
    --------
    Section ``S1`` measured, ``S0`` and ``S2`` to impute (expression and graph only, two epochs, for speed):

    >>> import stmap as st
    >>> sections = st.datasets.simulate_stack(3, n_genes=20, grid=8, seed=0)  # three serial sections
    >>> stack = st.pp.stack_sections(sections, transforms="warped")
    >>> model = st.tl.train_impute_3d(stack, measured=["S1"], genes=10, features_key=None, epochs=2)
    >>> len(model.genes), len(model.history)
    (10, 2)
    >>> st.tl.impute_3d(stack, model=model, measured=["S1"], features_key=None)
    >>> stack.tables["stack"].obsm["stmap_impute3d"].shape  # every spot, the model's genes
    (67, 10)
    """
    dev, verbose = resolve_device(device), resolve_verbose(verbose)
    gp = GraphParams(
        tuple(graph),
        propagate,
        k_similar=k_similar,
        k_spatial=k_spatial,
        layers_apart=layers_apart,
        disc_scale=disc_scale,
    )
    inp = prepare(
        sdata,
        table_key=table_key,
        measured=measured,
        genes=genes,
        features_key=features_key,
        n_scales=n_scales,
        compute=_feature_compute(feature_scales, feature_kwargs, seed, dev, verbose),
        layer=layer,
        section_key=section_key,
        spatial_key=spatial_key,
    )
    start = logg.info(f"train_impute_3d: {int(inp.measured.sum())} measured spots, {len(inp.genes)} genes")
    gp = inp.resolve_graph(gp, batch_size, training=True)
    inp.check_memory(gp, batch_size)
    pb = inp.problem(gp, batch_size)
    tp = TrainParams(epochs, hidden, mask_fraction=mask_fraction, batch_size=pb.batch_size)
    model = _fit(inp, pb, gp, tp, seed, dev, verbose)
    logg.info("    finished", time=start, deep=f"trained on {len(inp.genes)} genes, {epochs} epochs")
    return model


@overload
def impute_3d(
    sdata: SpatialData | AnnData,
    *,
    model: Impute3DModel | None = ...,
    table_key: str = ...,
    measured: str | Sequence[str] | None = ...,
    genes: int | Sequence[str] = ...,
    features_key: str | None = ...,
    n_scales: int | None = ...,
    feature_scales: Sequence[float] = ...,
    feature_kwargs: dict[str, Any] | None = ...,
    layer: str | None = ...,
    section_key: str = ...,
    spatial_key: str = ...,
    batch_size: int | None = ...,
    graph: Sequence[str] = ...,
    propagate: bool = ...,
    epochs: int = ...,
    hidden: int = ...,
    mask_fraction: float = ...,
    disc_scale: float = ...,
    k_similar: int = ...,
    k_spatial: int = ...,
    layers_apart: int | None = ...,
    seed: int = ...,
    device: str | None = ...,
    key_added: str = ...,
    copy: Literal[False] = ...,
    verbose: bool | None = ...,
) -> None: ...
@overload
def impute_3d(
    sdata: SpatialData | AnnData,
    *,
    model: Impute3DModel | None = ...,
    table_key: str = ...,
    measured: str | Sequence[str] | None = ...,
    genes: int | Sequence[str] = ...,
    features_key: str | None = ...,
    n_scales: int | None = ...,
    feature_scales: Sequence[float] = ...,
    feature_kwargs: dict[str, Any] | None = ...,
    layer: str | None = ...,
    section_key: str = ...,
    spatial_key: str = ...,
    batch_size: int | None = ...,
    graph: Sequence[str] = ...,
    propagate: bool = ...,
    epochs: int = ...,
    hidden: int = ...,
    mask_fraction: float = ...,
    disc_scale: float = ...,
    k_similar: int = ...,
    k_spatial: int = ...,
    layers_apart: int | None = ...,
    seed: int = ...,
    device: str | None = ...,
    key_added: str = ...,
    copy: Literal[True],
    verbose: bool | None = ...,
) -> SpatialData | AnnData: ...
@validate_params(**_READ, **_TRAINING, **_APPLY)
@inject_docs(**_DOCS)
def impute_3d(
    sdata: SpatialData | AnnData,
    *,
    model: Impute3DModel | None = None,
    table_key: str = Key.table.stack,
    measured: str | Sequence[str] | None = None,
    genes: int | Sequence[str] = 250,
    features_key: str | None = Key.obsm.histology,
    n_scales: int | None = None,
    feature_scales: Sequence[float] = (1, 2.3, 4.6),
    feature_kwargs: dict[str, Any] | None = None,
    layer: str | None = None,
    section_key: str = Key.obs.section,
    spatial_key: str = Key.obsm.spatial_3d,
    batch_size: int | None = None,
    graph: Sequence[str] = ("overlap",),
    propagate: bool = True,
    epochs: int = 100,
    hidden: int = 32,
    mask_fraction: float = 0.3,
    disc_scale: float = 3.0,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int | None = None,
    seed: int = 0,
    device: str | None = None,
    key_added: str = Key.default.impute_3d,
    copy: bool = False,
    verbose: bool | None = None,
) -> SpatialData | AnnData | None:
    """Impute expression on unmeasured serial sections from measured ones and every section's histology (ASIGN).

    The method of ASIGN :cite:p:`zhu2024asign`, on the sections stacked by :func:`stmap.pp.stack_sections`.

    A 3D spot graph joins spots of different sections by the overlap (closed-form IoU) of their registered discs,
    enlarged ``disc_scale`` times so that spots one spacing apart still connect, optionally also by the similarity of
    their histology features (top ``k_similar``) and spots of one section by spatial kNN
    (:func:`stmap.pp.spot_graph_3d`; ``graph=``). The measured expression is propagated over this graph (20
    iterations, measured spots clamped). A network encodes the histology features of each patch scale (blocks of
    ``obsm[features_key]``, e.g. spot / region / global context from ``st.pp.histology_features(..., scales=(1, 2.3,
    4.6))``), fuses them with the propagated expression by cross-attention, aggregates neighbours by graph attention
    and combines the scales with a transformer layer. The output mixes, with learnt per-gene weights, the propagated
    expression, a linear histology prior (ridge regression of expression on the features) and the network.

    Training, on the measured spots only: a held-out quarter is never shown to the network nor to the propagation;
    on the rest, a random ``mask_fraction`` is hidden from the propagation each epoch and predicted by the network
    (loss ``0.75 MSE + 0.25 (1 - PCC)`` plus the same for each scale's own head); the mixing weights are fitted on
    the held-out quarter (shrunk towards their mean across genes), so they judge the sources on spots no part of the
    model has seen. With all labels in one section the network still overrates itself (it interpolates within the
    measured section better than it transfers to others). The overlap-only default graph was first chosen from an
    ablation scored on HER2ST's imputed sections; ``benchmarks/impute3d.py`` now checks it by validation inside the
    measured sections only (each section left out in turn, a measured neighbour with H&E hidden too and imputed by
    each candidate graph; the left-out section is never looked at) and reports the graph that validation picks
    (``stmap_selected``) next to the default.

    Fit and apply apart, as :func:`~stmap.tl.train_ctr` / :func:`~stmap.tl.detect_ctr`: with ``model`` (from
    :func:`stmap.tl.train_impute_3d` or :meth:`stmap.tl.Impute3DModel.load`) nothing is trained: the model's genes
    are imputed with the graph and training parameters it was trained with (``graph`` to ``layers_apart`` given here
    are not used). Without a model, one is trained first (:func:`stmap.tl.train_impute_3d` with the same
    parameters), then applied.

    The target is ASIGN's: ``ln((c + 1) / sum(c + 1))`` over the imputed genes, from counts
    (:func:`stmap.tl.asign_target`).

    Parameters
    ----------
    {imp_sdata}
    model
        A trained :class:`stmap.tl.Impute3DModel` to apply instead of training (the table must give the same
        feature layout).
    {imp_read}
    {imp_training}
    {seed}
    {device}
    key_added
        Key of the results; the imputed layer is ``'imputed'`` for the default key, ``'<key_added>_imputed'``
        otherwise, so runs under different keys do not overwrite each other.
    {copy}
    {verbose}

    Returns
    -------
    ``None``, or with ``copy=True`` the modified copy. Writes to the table:

    ``.layers['imputed']`` (``'<key_added>_imputed'`` for another ``key_added``)
        ``ln((c + 1) / sum(c + 1))`` of the imputed genes for every spot (measured spots: their own values); NaN in
        the other genes' columns. Beyond 2.5 x 10^8 values (spots x genes of the table) a lazy dask array, computed
        block by block when read or written.
    ``.obsm[key_added]``
        The same for the imputed genes only (DataFrame, columns = genes).
    ``.obs[key_added + '_measured']``
        Which spots were measured.
    ``.obsp[key_added + '_overlap' | '_similarity' | '_spatial']``
        The graph (sparse).
    ``.obsm[features_key]``, ``.uns[features_key]``
        Only when the features were computed here: the histology features and their metadata, as written by
        :func:`stmap.pp.histology_features`.
    ``.uns[key_added]``
        ``genes``, ``mixing_weights`` (``(3, n_genes)``: weights of the propagated expression, the histology prior
        and the network), ``loss`` (per epoch), ``target``, ``histology`` (whether image features were used) and
        ``params``.

    Raises
    ------
    StmapInputError
        As :func:`stmap.tl.train_impute_3d`, and a model whose feature blocks the table does not give. Nothing is
        written.

    See Also
    --------
    :func:`stmap.tl.train_impute_3d`
        Trains a model to apply to other stacks.
    :func:`stmap.pp.stack_sections`
        Makes the stack.
    :func:`stmap.pl.sections_3d`
        Draws the imputed sections.
    :doc:`/tutorials/impute3d`
        Tutorial.

    Examples
    --------
    Section ``S1`` measured, ``S0`` and ``S2`` imputed from it and every section's histology (two epochs, for speed):

    >>> import stmap as st
    >>> sections = st.datasets.simulate_stack(3, n_genes=20, grid=8, seed=0)  # three serial sections
    >>> stack = st.pp.stack_sections(sections, transforms="warped")
    >>> st.tl.impute_3d(stack, measured=["S1"], genes=10, epochs=2)
    >>> table = stack.tables["stack"]
    >>> table.layers["imputed"].shape, table.obsm["stmap_impute3d"].shape
    ((67, 20), (67, 10))
    >>> int(table.obs["stmap_impute3d_measured"].sum())  # the spots of S1
    23
    """
    dev, verbose = resolve_device(device), resolve_verbose(verbose)
    inp = prepare(
        sdata,
        table_key=table_key,
        measured=measured,
        genes=genes,
        features_key=features_key,
        n_scales=n_scales,
        compute=_feature_compute(feature_scales, feature_kwargs, seed, dev, verbose),
        layer=layer,
        section_key=section_key,
        spatial_key=spatial_key,
        model=model,
    )
    n_meas = int(inp.measured.sum())
    start = logg.info(f"impute_3d: {n_meas} measured -> {len(inp.measured) - n_meas} spots, {len(inp.genes)} genes")
    pretrained = model is not None
    if model is None:  # train first, on the same graph
        gp = GraphParams(
            tuple(graph),
            propagate,
            k_similar=k_similar,
            k_spatial=k_spatial,
            layers_apart=layers_apart,
            disc_scale=disc_scale,
        )
    else:  # the graph the model was trained with
        gp = graph_params(model.params)
    gp = inp.resolve_graph(gp, batch_size, training=not pretrained)
    inp.check_memory(gp, batch_size)
    pb = inp.problem(gp, batch_size)
    if model is None:
        tp = TrainParams(epochs, hidden, mask_fraction=mask_fraction, batch_size=pb.batch_size)
        model = _fit(inp, pb, gp, tp, seed, dev, verbose)
    with torch_threads():
        pred = predict_arrays(pb, model, gp, dev=dev, batch_size=pb.batch_size)
    params = run_params(
        inp, model, gp, features_key=features_key, device=str(dev), pretrained=pretrained, batch_size=pb.batch_size
    )
    out, written = write(inp, pred, pb.graphs, model, params, features_key=features_key, key_added=key_added, copy=copy)
    logg.info("    finished", time=start, deep=f"added {written}")
    return out
