"""Conversion of a plain (scanpy/squidpy-style) AnnData into SpatialData."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from .._core import Key, StmapInputError, affine_matrix, make_circles, make_image, make_table, new_spatialdata, resolve
from .._core._params import Instance, Interval, validate_params
from .._core._resolve import _legacy_library

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["to_spatialdata"]


@validate_params(
    adata=Instance((AnnData,)),
    spatial_key=Instance((str,)),
    library_id=[Instance((str,)), None],
    mpp=[Interval(float, 0, None, "neither"), None],
    spot_diameter=[Interval(float, 0, None, "neither"), None],
    table_key=Instance((str,)),
    region=Instance((str,)),
)
def to_spatialdata(
    adata: AnnData,
    *,
    spatial_key: str = Key.obsm.spatial,
    library_id: str | None = None,
    mpp: float | None = None,
    spot_diameter: float | None = None,
    table_key: str = "table",
    region: str = "spots",
) -> SpatialData:
    """Turn an AnnData with ``obsm['spatial']`` (and legacy ``uns['spatial']`` images) into a SpatialData.

    Spots become circles (diameter from ``uns['spatial'][library_id]['scalefactors']['spot_diameter_fullres']`` or
    ``spot_diameter``), each legacy image (``hires``, ``lowres``) becomes an image element placed with its scale factor,
    and a copy of ``adata`` becomes the table annotating the spots. ``adata`` itself is not modified.

    Parameters
    ----------
    adata
        AnnData with coordinates in ``obsm[spatial_key]`` (full-resolution pixels for Visium).
    spatial_key
        ``obsm`` key of the coordinates.
    library_id
        Library in ``uns['spatial']``; needed only when there are several.
    mpp
        Micrometres per ``obsm[spatial_key]`` unit. When given, the ``'global'`` coordinate system is in micrometres
        (and recorded as such); otherwise it is in the units of ``obsm[spatial_key]``, with no unit recorded.
    spot_diameter
        Spot diameter in ``obsm[spatial_key]`` units, when the scale factors do not give it.
    table_key
        Name of the new table.
    region
        Name of the new shapes element of the spots.

    Returns
    -------
    :class:`spatialdata.SpatialData` with shapes ``region``, table ``table_key`` and images ``'<library_id>_hires'``
    / ``'<library_id>_lowres'`` when present.

    Raises
    ------
    StmapInputError
        Duplicated obs names (fix: ``adata.obs_names_make_unique()``), no spot diameter, an invalid ``mpp``;
        ``adata`` is untouched.

    See Also
    --------
    :func:`stmap.pp.coordinate_units`
        The micrometres per unit every tool reads.
    :doc:`/tutorials/your_own_data`
        Tutorial.

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import stmap as st
    >>> adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    >>> adata.obsm["spatial"] = np.array([[0.0, 0.0], [100.0, 0.0], [50.0, 86.6]])  # micrometres here
    >>> sdata = st.pp.to_spatialdata(adata, spot_diameter=55.0, mpp=1.0)
    >>> list(sdata.shapes), list(sdata.tables)
    (['spots'], ['table'])
    >>> st.pp.coordinate_units(sdata)
    1.0
    """
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()
        raise StmapInputError(
            f"adata has {int(adata.obs_names.duplicated().sum())} duplicated obs name(s) (e.g. "
            f"{', '.join(repr(str(d)) for d in dup[:5])}); each spot becomes one shape keyed by its obs name, so "
            "they must be unique: call `adata.obs_names_make_unique()` first."
        )
    ctx = resolve(adata, spatial_key=spatial_key)
    lib = _legacy_library(adata, library_id)
    meta = lib[1] if lib is not None else {}
    sf = meta.get("scalefactors", {}) if isinstance(meta, dict) else {}
    diameter = spot_diameter if spot_diameter is not None else sf.get("spot_diameter_fullres")
    if diameter is None:
        raise StmapInputError(
            "Spot diameter unknown: adata.uns['spatial'][library]['scalefactors'] has no 'spot_diameter_fullres'; "
            "pass `spot_diameter=` in obsm['spatial'] units."
        )
    scale = 1.0 if mpp is None else float(mpp)
    table = adata.copy()
    ids = np.asarray(table.obs_names)
    circles = make_circles(ctx.coords, float(diameter) / 2.0, index=ids, transform=affine_matrix(scale))
    images = {}
    if lib is not None:
        for name, arr in (meta.get("images") or {}).items():
            scalef = sf.get(f"tissue_{name}_scalef")
            if scalef is None:
                continue
            arr = np.asarray(arr)
            if arr.dtype.kind == "f" and arr.max() <= 1.0:
                arr = np.round(arr * 255).astype(np.uint8)
            arr = arr[..., None] if arr.ndim == 2 else arr
            images[f"{lib[0]}_{name}"] = make_image(
                arr, dims=("y", "x", "c"), transform=affine_matrix(scale / float(scalef))
            )
    table.uns.pop(Key.uns.spatial, None)
    table.uns[Key.uns.stmap] = {"mpp": scale if mpp is not None else "unknown", "spot_diameter": float(diameter)}
    table = make_table(table, region=region, instance_ids=ids)
    units = {Key.cs: "um"} if mpp is not None else None
    return new_spatialdata(images=images, shapes={region: circles}, tables={table_key: table}, units=units)
