"""Build SpatialData elements (images, circles, points, tables) with correct transformations.

Transformations are handled as 3x3 affine matrices acting on ``(x, y, 1)`` column vectors: intrinsic (pixel)
coordinates -> coordinate-system coordinates. These helpers convert both ways to :mod:`spatialdata.transformations`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, cast

import numpy as np
import pandas as pd

from ._constants import Key

#: Instance ids: a sequence, array or index.
Ids: TypeAlias = Sequence[Any] | np.ndarray | pd.Index

__all__ = [
    "affine_matrix",
    "to_transformation",
    "make_image",
    "make_circles",
    "make_points",
    "make_table",
    "new_spatialdata",
    "with_transformations",
]


def affine_matrix(scale: float | Sequence[float] = 1.0, translation: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """3x3 affine ``(x, y, 1)`` matrix of ``coords = pixel * scale + translation``.

    Parameters
    ----------
    scale
        One scale for both axes, or ``(sx, sy)``.
    translation
        ``(tx, ty)`` added after scaling.

    Returns
    -------
    The matrix.
    """
    if np.isscalar(scale):
        sx = sy = cast(float, scale)
    else:
        sx, sy = cast(Sequence[float], scale)
    return np.array([[sx, 0.0, translation[0]], [0.0, sy, translation[1]], [0.0, 0.0, 1.0]], dtype=float)


def to_transformation(matrix: np.ndarray | Any):
    """Convert a 3x3 ``(x, y, 1)`` affine matrix to a spatialdata transformation (or pass one through).

    Axis-aligned matrices become ``Identity``, ``Scale``, ``Translation`` or ``Sequence([Scale, Translation])``, so
    the stored metadata stays readable; anything else becomes an ``Affine``.
    """
    from spatialdata.transformations import Affine, BaseTransformation, Identity, Scale, Sequence, Translation

    if isinstance(matrix, BaseTransformation):
        return matrix
    m = np.asarray(matrix, dtype=float)
    if m.shape != (3, 3):
        raise ValueError(f"Expected a 3x3 affine matrix for (x, y, 1), got shape {m.shape}.")
    if m[0, 1] == 0 and m[1, 0] == 0:
        s, t = (m[0, 0], m[1, 1]), (m[0, 2], m[1, 2])
        parts = []
        if s != (1.0, 1.0):
            parts.append(Scale([s[1], s[0]], axes=("y", "x")))
        if t != (0.0, 0.0):
            parts.append(Translation([t[1], t[0]], axes=("y", "x")))
        if not parts:
            return Identity()
        return parts[0] if len(parts) == 1 else Sequence(parts)
    return Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))


def make_image(
    data: Any,
    *,
    transform: np.ndarray | Any | None = None,
    coordinate_system: str = Key.cs,
    c_coords: Sequence[str] | None = None,
    scale_factors: Sequence[int] | None = None,
    chunks: int | tuple[int, ...] | None = None,
    dims: Sequence[str] = ("c", "y", "x"),
):
    """Parse an image (``c, y, x`` or ``c, z, y, x``) into a spatialdata image element.

    Parameters
    ----------
    data
        NumPy or dask array. An ``(y, x, c)`` RGB array must be given with ``dims=('y', 'x', 'c')``.
    transform
        Pixel -> coordinate-system transform (3x3 matrix or spatialdata transformation); identity if ``None``.
    coordinate_system
        Name of the coordinate system.
    c_coords
        Channel names.
    scale_factors
        Downscale factors of a multiscale pyramid, e.g. ``[2, 2]``; ``None`` for a single scale.
    chunks
        Dask chunking.
    dims
        Axis names of ``data``.

    Returns
    -------
    A :class:`xarray.DataArray` or, when multiscale, :class:`xarray.DataTree`.
    """
    from spatialdata.models import Image2DModel, Image3DModel
    from spatialdata.transformations import Identity

    t = Identity() if transform is None else to_transformation(transform)
    model = Image3DModel if "z" in dims else Image2DModel
    kwargs: dict[str, Any] = {}
    if chunks is not None:
        kwargs["chunks"] = chunks
    return model.parse(
        data,
        dims=tuple(dims),
        c_coords=None if c_coords is None else list(c_coords),
        transformations={coordinate_system: t},
        scale_factors=None if scale_factors is None else list(scale_factors),
        **kwargs,
    )


def make_circles(
    coords: np.ndarray,
    radius: float | np.ndarray,
    *,
    index: Ids | None = None,
    transform: np.ndarray | Any | None = None,
    coordinate_system: str = Key.cs,
):
    """Circles (spots) as a shapes element.

    Parameters
    ----------
    coords
        ``(n, 2)`` centres ``(x, y)`` in intrinsic units.
    radius
        One radius or ``(n,)`` radii, in the same units.
    index
        Instance ids (become the GeoDataFrame index, matched by the table's instance key).
    transform
        Intrinsic -> coordinate-system transform; identity if ``None``.
    coordinate_system
        Name of the coordinate system.

    Returns
    -------
    :class:`geopandas.GeoDataFrame` parsed by :class:`spatialdata.models.ShapesModel`.
    """
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    coords = np.asarray(coords, dtype=float)
    r = np.broadcast_to(np.asarray(radius, dtype=float), (coords.shape[0],)).copy()
    idx = pd.Index(np.arange(coords.shape[0]) if index is None else list(index))
    t = Identity() if transform is None else to_transformation(transform)
    return ShapesModel.parse(coords, geometry=0, radius=r, index=idx, transformations={coordinate_system: t})


def make_points(
    coords: np.ndarray,
    *,
    annotations: pd.DataFrame | None = None,
    feature_key: str | None = None,
    transform: np.ndarray | Any | None = None,
    coordinate_system: str = Key.cs,
):
    """Points (cells, transcripts) as a points element.

    Parameters
    ----------
    coords
        ``(n, 2)`` or ``(n, 3)`` coordinates ``(x, y[, z])``.
    annotations
        Extra columns (same length), e.g. gene or cell type.
    feature_key
        Column of ``annotations`` naming the feature (gene) of each point, if any.
    transform
        Intrinsic -> coordinate-system transform; identity if ``None``.
    coordinate_system
        Name of the coordinate system.

    Returns
    -------
    A dask DataFrame parsed by :class:`spatialdata.models.PointsModel`.
    """
    from spatialdata.models import PointsModel
    from spatialdata.transformations import Identity

    coords = np.asarray(coords, dtype=float)
    cols = ["x", "y", "z"][: coords.shape[1]]
    df = pd.DataFrame(coords, columns=cols)
    if annotations is not None:
        ann = annotations.reset_index(drop=True)
        for c in ann.columns:
            df[c] = ann[c].to_numpy()
    t = Identity() if transform is None else to_transformation(transform)
    kw: dict[str, Any] = {"coordinates": {c: c for c in cols}, "transformations": {coordinate_system: t}}
    if feature_key is not None:
        kw["feature_key"] = feature_key
    return PointsModel.parse(df, **kw)


def make_table(
    adata,
    *,
    region: str | None,
    instance_ids: Ids | None = None,
    region_key: str = Key.obs.region,
    instance_key: str = Key.obs.instance,
    row_regions: Sequence[str] | np.ndarray | None = None,
):
    """Make ``adata`` a table annotating ``region`` (or nothing when ``region`` is ``None``).

    Parameters
    ----------
    adata
        The table; modified in place (obs columns and ``uns['spatialdata_attrs']``) and returned.
    region
        Name of the annotated element.
    instance_ids
        Ids of the annotated instances, one per row; default ``0..n-1``.
    region_key, instance_key
        Column names in ``obs``.
    row_regions
        For a table annotating several elements: the element of each row (then ``region`` is ignored and the
        table annotates every element named here).

    Returns
    -------
    The parsed :class:`anndata.AnnData`.
    """
    from spatialdata.models import TableModel

    if row_regions is not None:
        regions = list(dict.fromkeys(map(str, row_regions)))
        adata.obs[region_key] = pd.Categorical(list(map(str, row_regions)), categories=regions)
        adata.obs[instance_key] = np.arange(adata.n_obs) if instance_ids is None else np.asarray(instance_ids)
        return TableModel.parse(adata, region=regions, region_key=region_key, instance_key=instance_key)
    if region is None:
        return TableModel.parse(adata)
    adata.obs[region_key] = pd.Categorical([region] * adata.n_obs)
    adata.obs[instance_key] = np.arange(adata.n_obs) if instance_ids is None else np.asarray(instance_ids)
    return TableModel.parse(adata, region=region, region_key=region_key, instance_key=instance_key)


def new_spatialdata(
    *,
    images: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
    points: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Any] | None = None,
    tables: Mapping[str, Any] | None = None,
    units: Mapping[str, str] | None = None,
):
    """Assemble a :class:`spatialdata.SpatialData`, recording the unit of each coordinate system.

    Parameters
    ----------
    images, labels, points, shapes, tables
        Elements by name.
    units
        Physical unit per coordinate system, e.g. ``{"global": "um"}``; stored in ``sdata.attrs`` and used to
        turn sizes in micrometres into coordinate units.

    Returns
    -------
    The SpatialData object.
    """
    from spatialdata import SpatialData

    attrs = {Key.units_attr: dict(units)} if units else None
    return SpatialData(
        images=dict(images or {}),
        labels=dict(labels or {}),
        points=dict(points or {}),
        shapes=dict(shapes or {}),
        tables=dict(tables or {}),
        attrs=attrs,
    )


def with_transformations(
    element: Any, transformations: Mapping[str, Any], *, copy: bool = True, replace: bool = False
) -> Any:
    """Add or replace an element's transformations to some coordinate systems; nothing is resampled.

    Parameters
    ----------
    element
        Image, labels, points or shapes element.
    transformations
        ``{coordinate_system: transformation}`` (spatialdata transformations or 3x3 ``(x, y, 1)`` matrices); the
        element's other transformations are kept.
    copy
        Return a shallow copy (data shared, transformations its own) and leave ``element`` untouched; ``False``
        modifies ``element`` in place.
    replace
        Drop the element's other transformations (keep only ``transformations``).

    Returns
    -------
    The element with the transformations.
    """
    from spatialdata.transformations import get_transformation, set_transformation

    new = {} if replace else dict(get_transformation(element, get_all=True))
    new.update({cs: to_transformation(t) for cs, t in transformations.items()})
    if copy:
        try:
            out = element.copy(deep=False)
        except TypeError:  # dask DataFrame
            out = element.copy()
        out.attrs.update({k: v for k, v in element.attrs.items() if k not in out.attrs})
    else:
        out = element
    set_transformation(out, new, set_all=True)
    return out
