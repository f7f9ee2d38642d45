"""Stack serial sections into one 3D sample, and the 3D spot graph (as in ASIGN).

Serial sections are joined into one :class:`spatialdata.SpatialData`: every section keeps its elements (nothing is
resampled), gets a coordinate system named after it, and an aligned frame ``'aligned'`` (micrometres) maps all of
them into one plane; the third axis is the section's ``z``. One table holds every spot of every section.

The 3D spot graph has three sparse parts: spots of nearby sections joined by the overlap (intersection over union,
IoU) of their registered spot discs, computed in closed form from a KD-tree radius query; spots of nearby sections
joined by the similarity of their features (e.g. histology), top-k per spot; and spots of the same section joined by
spatial kNN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import sparse

from .._core import StmapInputError, inject_docs, is_spatialdata, unknown_key
from .._core import _logging as logg
from .._core._constants import Key

__all__ = ["disc_iou", "graph_arrays", "spot_graph_3d", "stack_sections"]

STACK_KEY = "stmap_stack"
ALIGNED = "aligned"
ALIGNED_3D = "aligned_3d"


# ----------------------------------------------------------------------------------------------------------------------
# disc overlap
# ----------------------------------------------------------------------------------------------------------------------
def disc_iou(d: Any, r1: Any, r2: Any) -> np.ndarray:
    """Intersection over union of two discs, in closed form (vectorised, broadcasting).

    The intersection of two discs of radii ``r1``, ``r2`` whose centres are ``d`` apart is the lens
    ``r1^2 acos((d^2 + r1^2 - r2^2) / (2 d r1)) + r2^2 acos((d^2 + r2^2 - r1^2) / (2 d r2))
    - sqrt((-d + r1 + r2)(d + r1 - r2)(d - r1 + r2)(d + r1 + r2)) / 2``; it is exactly 0 when
    ``d >= r1 + r2`` and the smaller disc when one contains the other (``d <= |r1 - r2|``).

    Parameters
    ----------
    d
        Centre distances (``>= 0``).
    r1, r2
        Radii (``> 0``), broadcastable with ``d``.

    Returns
    -------
    IoU in ``[0, 1]``, the broadcast shape of the inputs.
    """
    d, r1, r2 = np.broadcast_arrays(
        np.asarray(d, dtype=float), np.asarray(r1, dtype=float), np.asarray(r2, dtype=float)
    )
    if (r1 <= 0).any() or (r2 <= 0).any():
        raise StmapInputError("Disc radii must be positive.")
    if (d < 0).any():
        raise StmapInputError("Centre distances must be non-negative.")
    a1, a2 = np.pi * r1**2, np.pi * r2**2
    inter = np.zeros(d.shape, dtype=float)
    contain = d <= np.abs(r1 - r2)
    inter[contain] = np.minimum(a1, a2)[contain]
    lens = ~contain & (d < r1 + r2)
    if lens.any():
        dd, p, q = d[lens], r1[lens], r2[lens]
        c1 = np.clip((dd**2 + p**2 - q**2) / (2 * dd * p), -1.0, 1.0)
        c2 = np.clip((dd**2 + q**2 - p**2) / (2 * dd * q), -1.0, 1.0)
        k = (-dd + p + q) * (dd + p - q) * (dd - p + q) * (dd + p + q)
        inter[lens] = p**2 * np.arccos(c1) + q**2 * np.arccos(c2) - 0.5 * np.sqrt(np.maximum(k, 0.0))
    union = a1 + a2 - inter
    return np.clip(inter / union, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# the graph on arrays
# ----------------------------------------------------------------------------------------------------------------------
def _layer_pairs(n_layers: int, layers_apart: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n_layers) for b in range(a + 1, min(n_layers, a + layers_apart + 1))]


def _overlap_graph(
    xy: np.ndarray, codes: np.ndarray, radius: np.ndarray, layers_apart: int, min_iou: float
) -> sparse.csr_matrix:
    from scipy.spatial import cKDTree

    n = len(xy)
    rows, cols, vals = [], [], []
    layers = np.unique(codes)
    idx = {c: np.flatnonzero(codes == c) for c in layers}
    trees = {c: cKDTree(xy[idx[c]]) for c in layers}
    for a, b in _layer_pairs(len(layers), layers_apart):
        ca, cb = layers[a], layers[b]
        ia, ib = idx[ca], idx[cb]
        rmax = float(radius[ia].max() + radius[ib].max())
        pairs = trees[ca].sparse_distance_matrix(trees[cb], rmax, output_type="ndarray")
        if len(pairs) == 0:
            continue
        i, j, dist = ia[pairs["i"]], ib[pairs["j"]], pairs["v"]
        iou = disc_iou(dist, radius[i], radius[j])
        keep = (iou > min_iou) & (iou > 0)
        rows.append(i[keep])
        cols.append(j[keep])
        vals.append(iou[keep])
    if not rows:
        return sparse.csr_matrix((n, n), dtype=np.float32)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float32)
    m = sparse.coo_matrix((v, (r, c)), shape=(n, n)).tocsr()
    return (m + m.T).tocsr()  # each unordered pair was found once (a < b): the sum is the symmetric graph


def _similarity_graph(
    features: np.ndarray, codes: np.ndarray, k: int, layers_apart: int, standardize: bool, block: int = 2048
) -> sparse.csr_matrix:
    f = np.asarray(features, dtype=np.float64)
    if standardize:
        sd = f.std(0)
        f = (f - f.mean(0)) / np.where(sd > 0, sd, 1.0)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.where(norm > 0, norm, 1.0)
    n = len(f)
    layers = np.unique(codes)
    pos = np.searchsorted(layers, codes)
    rows, cols, vals = [], [], []
    for li in range(len(layers)):
        ia = np.flatnonzero(pos == li)
        near = np.flatnonzero((np.abs(pos - li) <= layers_apart) & (pos != li))
        if len(near) == 0 or len(ia) == 0:
            continue
        kk = min(k, len(near))
        for s in range(0, len(ia), block):
            rows_i = ia[s : s + block]
            sim = f[rows_i] @ f[near].T
            top = (
                np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
                if kk < len(near)
                else np.tile(np.arange(kk), (len(rows_i), 1))
            )
            sv = np.take_along_axis(sim, top, axis=1)
            rows.append(np.repeat(rows_i, kk))
            cols.append(near[top].ravel())
            vals.append(sv.ravel())
    if not rows:
        return sparse.csr_matrix((n, n), dtype=np.float32)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    keep = v > 0  # a spot dissimilar to (negatively correlated with) all candidates gets no similarity edge
    m = sparse.coo_matrix((v[keep].astype(np.float32), (r[keep], c[keep])), shape=(n, n)).tocsr()
    return m.maximum(m.T).tocsr()


def _spatial_graph(xy: np.ndarray, codes: np.ndarray, k: int, weights: str) -> sparse.csr_matrix:
    from scipy.spatial import cKDTree

    n = len(xy)
    rows, cols, vals = [], [], []
    for c in np.unique(codes):
        ia = np.flatnonzero(codes == c)
        kk = min(k, len(ia) - 1)
        if kk < 1:
            continue
        dist, j = cKDTree(xy[ia]).query(xy[ia], k=kk + 1)
        dist, j = dist[:, 1:], j[:, 1:]  # drop self
        if weights == "gaussian":
            sigma = float(np.median(dist[:, 0])) or 1.0
            w = np.exp(-(dist**2) / (2 * sigma**2))
        else:
            w = np.ones_like(dist)
        rows.append(np.repeat(ia, kk))
        cols.append(ia[j].ravel())
        vals.append(w.ravel())
    if not rows:
        return sparse.csr_matrix((n, n), dtype=np.float32)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float32)
    m = sparse.coo_matrix((v, (r, c)), shape=(n, n)).tocsr()
    return m.maximum(m.T).tocsr()


def graph_arrays(
    xyz: np.ndarray,
    section_codes: np.ndarray,
    radius: float | np.ndarray,
    features: np.ndarray | None = None,
    *,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int = 1,
    min_iou: float = 0.0,
    spatial_weights: Literal["binary", "gaussian"] = "binary",
    standardize: bool = True,
) -> dict[str, sparse.csr_matrix]:
    """The 3D spot graph on arrays: disc overlap and feature similarity across sections, kNN within sections.

    Parameters
    ----------
    xyz
        ``(n, 2)`` or ``(n, 3)`` aligned spot centres; only ``x, y`` are used (sections are told apart by
        ``section_codes``).
    section_codes
        ``(n,)`` integer layer of each spot; layers are ordered by their code (e.g. ``obs['section'].cat.codes``).
    radius
        Spot radius (one value or one per spot), in the units of ``xyz``.
    features
        ``(n, f)`` features (e.g. histology) for the similarity part; ``None`` skips it.
    k_similar
        Most similar spots kept per spot (among spots of the other sections within ``layers_apart``).
    k_spatial
        Nearest neighbours per spot within its own section.
    layers_apart
        Sections at most this many positions apart (in the order of the codes) are joined by overlap/similarity.
    min_iou
        Overlap edges need an IoU above this (and above 0).
    spatial_weights
        ``'binary'``: every kNN edge weighs 1; ``'gaussian'``: ``exp(-d^2 / (2 s^2))`` with ``s`` the section's
        median nearest-neighbour distance.
    standardize
        Centre and scale each feature column before the cosine similarity (otherwise all-positive features, such as
        mean colours, are all nearly parallel).

    Returns
    -------
    ``{'overlap': ..., 'spatial': ...}`` plus ``'similarity'`` when ``features`` is given: symmetric
    :class:`scipy.sparse.csr_matrix` ``(n, n)`` (float32, no diagonal). ``overlap``: disc IoU between spots of
    different sections at most ``layers_apart`` apart (found with a KD-tree radius query of ``r_i + r_j``; never
    dense). ``similarity``: cosine similarity of the (standardised) features to the ``k_similar`` most similar spots
    of the other sections within ``layers_apart``, kept where positive, symmetrised by the maximum.
    ``spatial``: ``k_spatial``-nearest-neighbour graph within each section, symmetrised by the maximum.
    """
    xyz = np.asarray(xyz, dtype=float)
    if xyz.ndim != 2 or xyz.shape[1] not in (2, 3):
        raise StmapInputError(f"xyz must be an (n, 2) or (n, 3) array, got shape {xyz.shape}.")
    n = len(xyz)
    xy = xyz[:, :2]
    if not np.isfinite(xy).all():
        raise StmapInputError("xyz contains NaN or infinite coordinates; drop or fill those spots first.")
    codes = np.asarray(section_codes)
    if codes.shape != (n,):
        raise StmapInputError(f"section_codes must have one entry per spot ({n}), got shape {codes.shape}.")
    r = np.broadcast_to(np.asarray(radius, dtype=float), (n,)).astype(float)
    if not (np.isfinite(r).all() and (r > 0).all()):
        raise StmapInputError("radius must be positive and finite for every spot.")
    if layers_apart < 1:
        raise StmapInputError(f"layers_apart must be >= 1, got {layers_apart}.")
    if k_spatial < 0 or k_similar < 1:
        raise StmapInputError(f"k_spatial must be >= 0 and k_similar >= 1, got {k_spatial}, {k_similar}.")
    if spatial_weights not in ("binary", "gaussian"):
        raise StmapInputError(f"spatial_weights must be 'binary' or 'gaussian', got {spatial_weights!r}.")
    out = {"overlap": _overlap_graph(xy, codes, r, int(layers_apart), float(min_iou))}
    if features is not None:
        f = np.asarray(features)
        if f.ndim != 2 or len(f) != n:
            raise StmapInputError(f"features must be an (n, f) array with n = {n} rows, got shape {f.shape}.")
        if not np.isfinite(f).all():
            raise StmapInputError("features contain NaN or infinite values.")
        out["similarity"] = _similarity_graph(f, codes, int(k_similar), int(layers_apart), standardize)
    out["spatial"] = (
        _spatial_graph(xy, codes, int(k_spatial), spatial_weights)
        if k_spatial > 0
        else sparse.csr_matrix((n, n), dtype=np.float32)
    )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# stacking
# ----------------------------------------------------------------------------------------------------------------------
_KINDS = ("element", "images", "labels", "points", "shapes")


@dataclass
class _Section:
    name: str
    sdata: Any
    table: Any  # AnnData
    table_key: str
    region: str
    coordinate_system: str
    coords: np.ndarray  # (n, 2) in the section's coordinate system
    radius_um: np.ndarray | None
    um: float  # micrometres per coordinate unit
    elements: list[str]
    measured: bool
    shared: frozenset[str] = frozenset()  # elements common to several sections (one table split by section)


def _as_sections(sdatas: Any, sections: Sequence[str] | None) -> list[tuple[str | None, Any, str | None]]:
    """``[(name or None, sdata, table_key or None)]`` from a mapping, a sequence or one SpatialData."""
    if is_spatialdata(sdatas):
        keys = list(sdatas.tables.keys())
        if len(keys) < 2:
            raise StmapInputError(
                f"A single SpatialData with {len(keys)} table(s) and no section column holds one section at most; "
                "stacking needs at least two. Pass a list of per-section SpatialData objects, one object with one "
                "table per section, or one table whose obs[section_key] names each spot's section."
            )
        return [(None, sdatas, k) for k in keys]
    if isinstance(sdatas, Mapping):
        out = [(str(k), v, None) for k, v in sdatas.items()]
    elif isinstance(sdatas, Sequence) and not isinstance(sdatas, str):
        out = [(None, v, None) for v in sdatas]
    else:
        raise TypeError(f"Expected SpatialData objects (a list, a dict or one object), got {type(sdatas).__name__}.")
    for _, v, _ in out:
        if not is_spatialdata(v):
            raise TypeError(f"Every section must be a SpatialData object, got {type(v).__name__}.")
    return out


def _pick_table(sdata: Any, name: str | None, given: str | None) -> str:
    keys = list(sdata.tables.keys())
    if given is not None:
        if given not in keys:
            raise unknown_key("Table", given, keys, "the section's tables")
        return given
    if name is not None and name in keys:
        return name
    if len(keys) == 1:
        return keys[0]
    raise StmapInputError(
        f"Section {name!r} holds several tables ({', '.join(map(repr, keys))}) and none is named after it; pass "
        "`table_keys=` (one table key per section)."
    )


def _median_spacing(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return float("nan")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def _fit(src: np.ndarray, dst: np.ndarray, kind: str, what: str) -> tuple[np.ndarray, float]:
    from ._register import apply_transform, fit_transform

    ok = np.isfinite(src).all(1) & np.isfinite(dst).all(1)
    if ok.sum() < 3:
        raise StmapInputError(f"{what}: fewer than 3 spots/landmarks with finite coordinates; cannot fit a transform.")
    m = fit_transform(src[ok], dst[ok], kind=kind)
    rmse = float(np.sqrt(np.mean(((apply_transform(m, src[ok]) - dst[ok]) ** 2).sum(1))))
    return m, rmse


def _section_names(raw: list[tuple[str | None, Any, str | None]], sections, table_keys) -> list[str]:
    if sections is not None:
        sections = [str(s) for s in sections]
        if len(sections) != len(raw):
            raise StmapInputError(f"`sections` names {len(sections)} sections but {len(raw)} were given.")
        return sections
    names = []
    for i, (name, sdata, tk) in enumerate(raw):
        if name is not None:
            names.append(name)
        elif tk is not None:
            names.append(tk)
        else:
            given = None if table_keys is None else table_keys[i]
            names.append(given if given is not None else _pick_table(sdata, None, None) if len(sdata.tables) else "")
    return names


def _split_one_table(sdata: Any, sections: Any, table_keys: Any, section_key: str) -> tuple[dict, frozenset] | None:
    """One SpatialData whose one table holds several sections (``obs[section_key]``) -> ``{section: SpatialData}``.

    Per section: the table's rows of that section, annotating the section's spots (the annotated element subset to
    them, named ``'<section>_<element>'`` unless the element holds that section only), plus the elements whose names
    start with the section name; every other element (e.g. one image of the whole slide) is shared by all sections.
    ``None`` when the object is not one table of several sections.
    """
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.transformations import get_transformation

    from .._core._elements import make_table, with_transformations

    keys = list(sdata.tables.keys())
    if isinstance(table_keys, str):
        if table_keys not in keys:
            raise unknown_key("Table", table_keys, keys, "sdata.tables")
        table_key = table_keys
    elif table_keys is None and len(keys) == 1:
        table_key = keys[0]
    else:
        return None
    table = sdata.tables[table_key]
    if section_key not in table.obs:
        if isinstance(table_keys, str) or len(keys) == 1:
            raise unknown_key(
                "Section column", section_key, table.obs.columns, f"obs of table {table_key!r}",
                hint="One table holding several sections needs a column naming each spot's section; pass "
                "`section_key=`, or pass one SpatialData per section.",
            )  # fmt: skip
        return None
    col = table.obs[section_key]
    present = pd.unique(col.dropna().astype(str))
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = [str(c) for c in col.cat.categories if str(c) in set(present)]
    names = [str(x) for x in (sections if sections is not None else present)]
    unknown = [n for n in names if n not in set(present)]
    if unknown:
        raise unknown_key("Section", unknown[0], present, f"obs[{section_key!r}] of table {table_key!r}")
    attrs = table.uns.get(Key.uns.spatialdata_attrs) or {}
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if region_key is None or instance_key is None or attrs.get("region") is None:
        raise StmapInputError(
            f"Table {table_key!r} annotates no element; link it to the spots with "
            "`sdata.set_table_annotates_spatialelement`."
        )
    sec_values = col.astype(str).to_numpy()
    row_region = table.obs[region_key].astype(str).to_numpy()
    regions = set(row_region)
    kinds = ("images", "labels", "points", "shapes")
    own = {n: {e for k in kinds for e in getattr(sdata, k) if e not in regions and e.startswith(n)} for n in names}
    owned = set().union(*own.values())
    shared = frozenset(e for k in kinds for e in getattr(sdata, k) if e not in regions and e not in owned)
    out = {}
    for n in names:
        rows = np.flatnonzero(sec_values == n)
        regs = set(row_region[rows])
        if len(regs) != 1:
            raise StmapInputError(
                f"Section {n!r} has spots in several elements ({sorted(regs)}); one element per section is needed."
            )
        region = regs.pop()
        el = sdata[region]
        ids = table.obs[instance_key].to_numpy()[rows]
        only = bool((sec_values[row_region == region] == n).all())
        if region in sdata.labels:
            raise StmapInputError(f"Section {n!r}: its table annotates labels; stacking needs spots (shapes/points).")
        if region in sdata.shapes:
            from .._core._resolve import _get_indexer

            sub = el.iloc[_get_indexer(el.index, ids)]
        else:
            pdf = el.compute()
            sub = _points_subset(pdf.iloc[_get_indexer(pdf.index, ids)], get_transformation(el, get_all=True))
        sub = with_transformations(sub, dict(get_transformation(el, get_all=True)), copy=True, replace=True)
        name = region if only else f"{n}_{region}"
        sub_table = table[rows].copy()
        sub_table.uns.pop(Key.uns.spatialdata_attrs, None)
        sub_table = make_table(
            sub_table, region=name, instance_ids=ids, region_key=region_key, instance_key=instance_key
        )
        els = {k: {e: v for e, v in getattr(sdata, k).items() if e in own[n] | shared} for k in kinds}
        kind = "shapes" if region in sdata.shapes else "points"
        els[kind][name] = sub
        out[n] = SpatialData(**els, tables={table_key: sub_table}, attrs=dict(sdata.attrs))
    return out, shared


def _points_subset(pdf: Any, transformations: dict) -> Any:
    from spatialdata.models import PointsModel

    cols = [c for c in ("x", "y", "z") if c in pdf.columns]
    return PointsModel.parse(pdf, coordinates={c: c for c in cols}, transformations=transformations)


def _gather(
    sdatas, sections, table_keys, coordinate_system, spot_diameter, section_key=Key.obs.section
) -> list[_Section]:
    from .._core import resolve

    shared: frozenset[str] = frozenset()
    split = _split_one_table(sdatas, sections, table_keys, section_key) if is_spatialdata(sdatas) else None
    if split is not None:
        (sdatas, shared), sections, table_keys = split, None, None
    raw = _as_sections(sdatas, sections)
    if len(raw) < 2:
        raise StmapInputError(f"Stacking needs at least two sections, got {len(raw)}.")
    if isinstance(table_keys, Mapping):
        tk_list = [None] * len(raw)
    else:
        tk_list = list(table_keys) if table_keys is not None else [None] * len(raw)
        if len(tk_list) != len(raw):
            raise StmapInputError(f"`table_keys` has {len(tk_list)} entries for {len(raw)} sections.")
    names = _section_names(raw, sections, tk_list)
    if isinstance(table_keys, Mapping):
        tk_list = [table_keys.get(n) for n in names]
    if len(set(names)) != len(names) or "" in names:
        raise StmapInputError(f"Section names must be distinct and non-empty, got {names}; pass `sections=`.")
    single = is_spatialdata(sdatas)
    out = []
    for name, (_, sdata, tk), given in zip(names, raw, tk_list):
        if not len(sdata.tables):
            raise StmapInputError(f"Section {name!r} holds no table; every section needs a table of its spots.")
        table_key = tk if tk is not None else _pick_table(sdata, name, given)
        ctx = resolve(sdata, table_key, coordinate_system=coordinate_system)
        if ctx.element_type == "labels":
            raise StmapInputError(
                f"Section {name!r}: its table annotates labels; stacking needs spots (shapes/points)."
            )
        um = ctx.um_per_unit
        if um is None:
            raise StmapInputError(
                f"Section {name!r}: the unit of coordinate system {ctx.coordinate_system!r} is unknown. Record it, "
                f"e.g. `sdata.attrs['{Key.units_attr}'] = {{'{ctx.coordinate_system}': 'um'}}`."
            )
        if spot_diameter is not None:
            r = np.full(ctx.adata.n_obs, float(spot_diameter) / 2)
        else:
            d = ctx.diameters
            r = None if d is None else np.asarray(d, dtype=float) * um / 2
        if single:  # elements of this section: its region and elements named after it
            els = [ctx.region] + [
                e for kind in _KINDS[1:] for e in getattr(sdata, kind) if e != ctx.region and e.startswith(name)
            ]
        else:
            els = [e for kind in _KINDS[1:] for e in getattr(sdata, kind)]
        measured = ctx.adata.n_vars > 0
        out.append(
            _Section(
                name,
                sdata,
                ctx.adata,
                table_key,
                ctx.region,
                ctx.coordinate_system,
                ctx.coords,
                r,
                um,
                els,
                measured,
                shared,
            )  # fmt: skip
        )
    return out


def _order_by_z(secs: list[_Section], z: Any, spacing: float) -> tuple[list[_Section], np.ndarray]:
    n = len(secs)
    if z is None:
        zs = np.arange(n, dtype=float) * spacing
    elif np.isscalar(z):
        if not float(z) > 0:
            raise StmapInputError(f"z (the step between sections, um) must be positive, got {z}.")
        zs = np.arange(n, dtype=float) * float(z)
    else:
        zs = np.asarray(list(z.values()) if isinstance(z, Mapping) else z, dtype=float)
        if isinstance(z, Mapping):
            zs = np.asarray([z[s.name] for s in secs], dtype=float)
        if zs.shape != (n,) or not np.isfinite(zs).all():
            raise StmapInputError(f"z must give one finite position (um) per section ({n}), got {zs.shape}.")
        if len(np.unique(zs)) != n:
            raise StmapInputError(f"Sections must have distinct z positions, got {zs.tolist()}.")
    order = np.argsort(zs, kind="stable")
    return [secs[i] for i in order], zs[order]


def _alignments(
    secs: list[_Section],
    transforms: Any,
    *,
    warped_key: str,
    reference: str | None,
    kind: str | None,
    landmarks: Any,
    icp_kwargs: dict[str, Any] | None,
) -> tuple[list[np.ndarray], str, dict[str, float], str]:
    """Per section, the 3x3 matrix section coordinate system -> aligned frame (um); method; rmse; reference."""
    from ._register import apply_transform, icp

    names = [s.name for s in secs]
    scale = [np.diag([s.um, s.um, 1.0]) for s in secs]
    pts = [s.coords * s.um for s in secs]  # um, each section's own frame
    rmse: dict[str, float] = {}
    if transforms is None:
        return scale, "none", rmse, names[0]
    if not isinstance(transforms, str):
        if isinstance(transforms, Mapping):
            missing = [n for n in names if n not in transforms]
            if missing:
                raise StmapInputError(f"`transforms` has no matrix for sections {missing}.")
            mats = [np.asarray(transforms[n], dtype=float) for n in names]
        else:
            mats = [np.asarray(m, dtype=float) for m in transforms]
            if len(mats) != len(secs):
                raise StmapInputError(f"`transforms` has {len(mats)} matrices for {len(secs)} sections.")
        for n, m in zip(names, mats):
            if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m[:2, :2])) < 1e-12:
                raise StmapInputError(f"The transform of section {n!r} must be an invertible 3x3 matrix, got {m}.")
        return mats, "given", rmse, names[0]
    if transforms not in ("warped", "icp", "landmarks"):
        raise StmapInputError(
            f"transforms must be None, 'warped', 'icp', 'landmarks' or one 3x3 matrix per section, got {transforms!r}."
        )
    if reference is None:
        reference = names[len(names) // 2] if transforms == "icp" else names[0]
    if reference not in names:
        raise unknown_key("Reference section", reference, names, "the sections")
    r = names.index(reference)
    if transforms == "warped":
        kind = kind or "affine"
        w = []
        for s in secs:
            if warped_key not in s.table.obsm:
                raise StmapInputError(
                    f"Section {s.name!r} has no obsm[{warped_key!r}] (registered coordinates); pass `warped_key=`, or "
                    "use transforms='icp' / 'landmarks' / given matrices."
                )
            w.append(np.asarray(s.table.obsm[warped_key], dtype=float)[:, :2])
        # the warped frame -> the reference's frame (um), fitted on the reference's own spots
        to_um, _ = _fit(w[r], pts[r], "similarity", f"Section {reference!r} ({warped_key})")
        mats = []
        for s, p, ws, sc in zip(secs, pts, w, scale):
            a, rm = _fit(p, apply_transform(to_um, ws), kind, f"Section {s.name!r} ({warped_key})")
            mats.append(a @ sc)
            rmse[s.name] = rm
        return mats, "warped", rmse, reference
    if transforms == "landmarks":
        kind = kind or "similarity"
        if landmarks is None:
            raise StmapInputError(
                "transforms='landmarks' needs `landmarks=`: {section: (k, 2) array} or a points name."
            )
        lm = []
        for s in secs:
            if isinstance(landmarks, str):
                from ._register import _coords_of

                c, _ = _coords_of(s.sdata, landmarks, s.coordinate_system, f"landmarks of {s.name!r}")
            elif isinstance(landmarks, Mapping) and s.name in landmarks:
                c = np.asarray(landmarks[s.name], dtype=float)
            else:
                raise StmapInputError(f"No landmarks for section {s.name!r}; give one (k, 2) array per section.")
            lm.append(c[:, :2] * s.um)
        if len({len(c) for c in lm}) != 1:
            raise StmapInputError(
                f"Every section needs the same landmarks, in the same order; got {[len(c) for c in lm]}."
            )
        mats = []
        for s, c, sc in zip(secs, lm, scale):
            a, rm = _fit(c, lm[r], kind, f"Landmarks of section {s.name!r}")
            mats.append(a @ sc)
            rmse[s.name] = rm
        return mats, "landmarks", rmse, reference
    # icp: each section onto its already aligned neighbour towards the reference
    kind = kind or "rigid"
    al = {r: np.eye(3)}
    rmse[reference] = 0.0
    order = [(i, i + 1) for i in range(r - 1, -1, -1)] + [(i, i - 1) for i in range(r + 1, len(secs))]
    for i, j in order:
        # spot lattices look alike at many rotations: try many starts (cheap for a few thousand spots)
        kw = {"n_starts": 72, "max_points": 5000} | dict(icp_kwargs or {})
        m, info = icp(pts[i], apply_transform(al[j], pts[j]), kind=kind, **kw)
        al[i] = m
        rmse[names[i]] = float(info["rmse"])
    return [al[i] @ scale[i] for i in range(len(secs))], "icp", rmse, reference


def _overlap_fractions(xy: list[np.ndarray], spacing: float) -> list[float]:
    from scipy.spatial import cKDTree

    out = []
    for a, b in zip(xy[:-1], xy[1:]):
        fa = float(np.mean(cKDTree(b).query(a)[0] <= spacing))
        fb = float(np.mean(cKDTree(a).query(b)[0] <= spacing))
        out.append(max(fa, fb))
    return out


def _gene_union(secs: list[_Section], genes: str) -> list[str]:
    measured = [s for s in secs if s.measured]
    if not measured:
        raise StmapInputError("No section has expression (every table has 0 genes); at least one must be measured.")
    names = [list(map(str, s.table.var_names)) for s in measured]
    common = set(names[0]).intersection(*names[1:])
    if not common:
        raise StmapInputError(
            "The measured sections share no genes (disjoint var_names); use the same gene identifiers in every "
            "section (e.g. all symbols or all Ensembl ids)."
        )
    if genes == "intersection":
        return [g for g in names[0] if g in common]
    if genes == "union":
        return list(dict.fromkeys(g for n in names for g in n))
    raise StmapInputError(f"genes must be 'intersection' or 'union', got {genes!r}.")


def _counts(table: Any, genes: list[str]) -> sparse.csr_matrix:
    import pandas as pd

    x = table.layers.get(Key.layers.counts, table.X)
    x = sparse.csr_matrix(x, dtype=np.float32)
    idx = pd.Index(list(map(str, table.var_names))).get_indexer(genes)
    have = np.flatnonzero(idx >= 0)
    sub = x[:, idx[have]].tocoo()
    return sparse.csr_matrix((sub.data, (sub.row, have[sub.col])), shape=(x.shape[0], len(genes)), dtype=np.float32)


def _stack_obs(secs: list[_Section], section_key: str) -> Any:
    import pandas as pd

    frames, cats = [], {}
    for s in secs:
        attrs = s.table.uns.get(Key.uns.spatialdata_attrs) or {}
        drop = {attrs.get("region_key"), attrs.get("instance_key"), section_key, Key.obs.measured}
        o = s.table.obs[[c for c in s.table.obs.columns if c not in drop]].copy()
        for c in o.columns:
            if isinstance(o[c].dtype, pd.CategoricalDtype):
                cats.setdefault(c, []).extend(map(str, o[c].cat.categories))
        o.index = [f"{s.name}:{i}" for i in s.table.obs_names]
        frames.append(o)
    obs = pd.concat(frames, axis=0, join="outer")
    for c, cs in cats.items():
        vals = obs[c].astype(object)
        obs[c] = pd.Categorical(vals.where(vals.notna(), None).map(lambda v: None if v is None else str(v)),
                                categories=list(dict.fromkeys(cs)))  # fmt: skip
    return obs


@inject_docs()
def stack_sections(
    sdatas: Any,
    *,
    sections: Sequence[str] | None = None,
    section_key: str = Key.obs.section,
    table_keys: str | Sequence[str | None] | Mapping[str, str] | None = None,
    z: Sequence[float] | Mapping[str, float] | float | None = None,
    transforms: Literal["warped", "icp", "landmarks"] | Sequence[np.ndarray] | Mapping[str, np.ndarray] | None = None,
    warped_key: str = Key.obsm.spatial_warped,
    reference: str | None = None,
    kind: Literal["translation", "rigid", "similarity", "affine"] | None = None,
    landmarks: Mapping[str, np.ndarray] | str | None = None,
    icp_kwargs: dict[str, Any] | None = None,
    coordinate_system: str | None = None,
    spot_diameter: float | None = None,
    genes: Literal["intersection", "union"] = "intersection",
    min_overlap: float = 0.1,
    key_added: str = "stack",
) -> Any:
    """Stack serial sections into one 3D sample: every element kept, one aligned frame, one table over all spots.

    Nothing is resampled: each section's elements get a coordinate system named after the section (their original
    transformation) plus the aligned frame ``'aligned'`` (2D, micrometres) and ``'aligned_3d'`` (x, y, z in
    micrometres: the 2D alignment with the section's ``z`` as third output axis). Images stay lazy.

    Parameters
    ----------
    sdatas
        The sections: a list of SpatialData objects (one section each, e.g. :func:`stmap.datasets.her2st`), a dict
        ``{section name: SpatialData}``, one SpatialData with one table per section (then a section's elements
        are the table's region and the elements whose names start with the section name), or one SpatialData whose
        one table (or ``table_keys=<name>``) holds several sections told apart by ``obs[section_key]``: it is split
        by section first (the spots of a section in one element per section, or one element holding every
        section's spots, subset per section into ``'<section>_<element>'``); elements whose names start with a
        section name belong to it, any other element (e.g. one image of the whole slide) is kept once, in every
        section's coordinate system but not in the aligned frames.
    sections
        Section names (default: the dict keys, else the table names); for one table holding several sections, the
        sections to stack (default: all, in the order of the column's categories, else of appearance).
    section_key
        ``obs`` column of the stacked table naming each spot's section (and, for one input table holding several
        sections, the column they are split by).
    table_keys
        The table of each section (list aligned with the sections, or dict by section); default: the table named
        like the section, else the section's only table. One name: the one table holding every section.
    z
        Position of the sections along the cutting axis, in micrometres: one value per section (list or dict), or
        the step between consecutive sections (float). Default: the step is the median in-plane spot spacing
        (200 um for legacy ST), so that one layer apart weighs like one spot apart, as ASIGN treats adjacent layers.
        Sections are ordered by ``z``.
    transforms
        How sections are aligned: ``None`` (already aligned: each section's coordinate system is the aligned
        frame); ``'warped'`` (fit ``kind``, default affine, from each section's spots onto their registered
        coordinates ``obsm[warped_key]``, expressed in the reference section's frame, as HER2ST patient C provides);
        ``'icp'`` (trimmed ICP of spot positions onto the neighbouring, already aligned section, ``kind`` default
        rigid, chained from the reference, 72 starting rotations; spots on a regular lattice snap to the lattice,
        so expect errors up to half a spot spacing, and check the result); ``'landmarks'`` (fit ``kind``, default
        similarity, of corresponding ``landmarks`` onto the reference's); or one 3x3 ``(x, y, 1)`` matrix per
        section mapping its coordinate system to the aligned frame in micrometres.
    warped_key
        ``obsm`` key of registered coordinates for ``transforms='warped'`` (NaN rows are ignored in the fit).
    reference
        Section whose frame is the aligned frame (default: the middle section for ``'icp'``, else the first).
    kind
        Transform family for ``'warped'``, ``'icp'`` and ``'landmarks'`` (see :func:`stmap.pp.fit_transform`).
    landmarks
        For ``'landmarks'``: ``{section: (k, 2) array}`` in the section's coordinate system, rows corresponding
        across sections, or the name of a points element present in every section.
    icp_kwargs
        Options of :func:`stmap.pp.icp`.
    coordinate_system
        Coordinate system of the sections' elements (default ``'global'`` or the only one).
    spot_diameter
        Spot diameter in micrometres when the elements do not carry it (points) or to override it.
    genes
        ``'intersection'`` (default) or ``'union'`` (zero counts where a section lacks a gene) of the measured
        sections' genes.
    min_overlap
        Adjacent sections must overlap after alignment: at least this fraction of the spots of one of them has a
        spot of the other within one spot spacing.
    key_added
        Name of the stacked table.

    Returns
    -------
    A new :class:`spatialdata.SpatialData` (the inputs are untouched) holding every section's elements (renamed
    ``'<section>_<name>'`` only when names collide) and the table ``key_added`` annotating every section's spots:

    - ``X`` and ``layers['counts']``: counts on the shared genes (CSR float32; rows of unmeasured sections are 0).
    - ``obs_names``: ``'<section>:<original obs name>'``; every obs column of the inputs is kept.
    - ``obs[section_key]``: categorical, categories ordered by ``z``; ``obs['measured']``: the section's table has
      expression; ``obs['spot_radius_um']``: the spot radius; ``obs['region']``, ``obs['instance_id']``: the
      annotated element and instance.
    - ``obsm['spatial']``: spot centres in the section's own coordinate system; ``obsm['spatial_3d']``: ``(n, 3)``
      x, y, z in micrometres in the aligned frame; ``obsm`` arrays present in every section (e.g.
      ``spatial_warped``) are kept.
    - ``var['n_sections']``: measured sections holding the gene.
    - ``uns['stmap_stack']``: ``sections`` (ordered by z), ``z`` (um), ``transforms`` (per section, 3x3
      coordinate system -> aligned frame, um), ``method``, ``kind``, ``reference``, ``rmse_um`` (per section, of the
      fit), ``spot_radius_um`` (median), ``spot_spacing_um``, ``overlap_fraction`` (per adjacent pair),
      ``section_info`` (per section: ``table_key``, ``region``, ``coordinate_system``, ``images``, ``elements``),
      ``params``.

    Raises
    ------
    StmapInputError
        Fewer than two sections, unknown tables/keys, unknown units, no shared genes, missing registered
        coordinates or landmarks, sections that do not overlap after alignment (pass ``transforms=``).
    """
    import anndata as ad
    import pandas as pd
    from spatialdata.transformations import Affine, get_transformation
    from spatialdata.transformations import Sequence as Seq

    from .._core._elements import make_table, new_spatialdata, with_transformations
    from .._core._resolve import transform_points
    from .._core._write import sanitize_params

    params = {
        "section_key": section_key,
        "z": z,
        "transforms": transforms if transforms is None or isinstance(transforms, str) else "given",
        "warped_key": warped_key,
        "reference": reference,
        "kind": kind,
        "coordinate_system": coordinate_system,
        "spot_diameter": spot_diameter,
        "genes": genes,
        "min_overlap": min_overlap,
    }
    start = logg.info("stacking sections")
    secs = _gather(sdatas, sections, table_keys, coordinate_system, spot_diameter, section_key)
    for s in secs:
        if s.radius_um is None:
            raise StmapInputError(
                f"Section {s.name!r}: the spot size is unknown (element {s.region!r} has no radius); pass "
                "`spot_diameter=` (micrometres)."
            )
    spacing = float(np.nanmedian([_median_spacing(s.coords * s.um) for s in secs]))
    if transforms is not None and not isinstance(transforms, (str, Mapping)):
        transforms = list(transforms)  # given in the order of the inputs: key them by section before sorting by z
        if len(transforms) != len(secs):
            raise StmapInputError(f"`transforms` has {len(transforms)} matrices for {len(secs)} sections.")
        transforms = {sec.name: m for sec, m in zip(secs, transforms)}
    secs, zs = _order_by_z(secs, z, spacing)
    gene_list = _gene_union(secs, genes)
    mats, method, rmse, ref = _alignments(
        secs, transforms, warped_key=warped_key, reference=reference, kind=kind, landmarks=landmarks,
        icp_kwargs=icp_kwargs,
    )  # fmt: skip
    xy = [transform_points(m, s.coords) for m, s in zip(mats, secs)]
    fracs = _overlap_fractions(xy, spacing)
    bad = [f"{a.name}-{b.name} ({f:.0%})" for a, b, f in zip(secs[:-1], secs[1:], fracs) if f < min_overlap]
    if bad:
        raise StmapInputError(
            f"Adjacent sections do not overlap after alignment (share of spots with a spot of the other section "
            f"within one spacing, {spacing:.4g} um): {', '.join(bad)}. Align them: pass `transforms='icp'`, "
            "'landmarks', 'warped' (registered coordinates) or one 3x3 matrix per section."
        )
    med_r = np.array([np.median(s.radius_um) for s in secs])
    if np.ptp(med_r) > 0.05 * med_r.min():
        warnings.warn(
            f"Spot radii differ between sections ({dict(zip([s.name for s in secs], np.round(med_r, 3)))} um); "
            "per-spot radii are kept in obs['spot_radius_um'] and used by the overlap graph.",
            UserWarning,
            stacklevel=2,
        )

    # elements -----------------------------------------------------------------------------------------------------
    taken: dict[str, str] = {}
    collections: dict[str, dict[str, Any]] = {k: {} for k in _KINDS[1:]}
    info: dict[str, Any] = {}
    units = {ALIGNED: "um", ALIGNED_3D: "um"}
    region_of: dict[str, str] = {}
    for s, m, zz in zip(secs, mats, zs):
        t_al = Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))
        m3 = np.zeros((4, 3))
        m3[:2] = m[:2]
        m3[2, 2], m3[3, 2] = zz, 1.0
        t_al3 = Affine(m3, input_axes=("x", "y"), output_axes=("x", "y", "z"))
        src_units = dict(s.sdata.attrs.get(Key.units_attr, {}) or {})
        units[s.name] = src_units.get(s.coordinate_system, {"um_per_unit": float(s.um), "source": "inferred"})
        imgs, names = [], []
        for e in s.elements:
            kind_e = next(k for k in _KINDS[1:] if e in getattr(s.sdata, k))
            el = getattr(s.sdata, kind_e)[e]
            if s.coordinate_system not in get_transformation(el, get_all=True):
                logg.warning(f"element {e!r} of section {s.name!r} is not in {s.coordinate_system!r}; not stacked")
                continue
            t0 = get_transformation(el, to_coordinate_system=s.coordinate_system)
            if e in s.shared:  # one element common to several sections: in each one's frame, not in the aligned ones
                if e in taken:
                    with_transformations(collections[kind_e][e], {s.name: t0}, copy=False)
                else:
                    taken[e] = s.name
                    collections[kind_e][e] = with_transformations(el, {s.name: t0}, copy=True, replace=True)
                names.append(e)
                if kind_e == "images":
                    imgs.append(e)
                continue
            new_name = e if e not in taken else f"{s.name}_{e}"
            if new_name in taken:
                raise StmapInputError(f"Element name {new_name!r} occurs in several sections; rename the elements.")
            taken[new_name] = s.name
            collections[kind_e][new_name] = with_transformations(
                el, {s.name: t0, ALIGNED: Seq([t0, t_al]), ALIGNED_3D: Seq([t0, t_al3])}, copy=True, replace=True
            )
            names.append(new_name)
            if kind_e == "images":
                imgs.append(new_name)
            if e == s.region:
                region_of[s.name] = new_name
        info[s.name] = {
            "table_key": s.table_key,
            "region": region_of[s.name],
            "coordinate_system": s.coordinate_system,
            "images": imgs,
            "elements": names,
        }

    # the table ----------------------------------------------------------------------------------------------------
    x = (
        sparse.vstack(
            [
                _counts(s.table, gene_list) if s.measured else sparse.csr_matrix((s.table.n_obs, len(gene_list)))
                for s in secs
            ]  # fmt: skip
        )
        .tocsr()
        .astype(np.float32)
    )
    obs = _stack_obs(secs, section_key)
    obs[section_key] = pd.Categorical(
        np.repeat([s.name for s in secs], [s.table.n_obs for s in secs]), categories=[s.name for s in secs]
    )
    obs[Key.obs.measured] = np.repeat([s.measured for s in secs], [s.table.n_obs for s in secs])
    obs["spot_radius_um"] = np.concatenate([s.radius_um for s in secs])
    var = pd.DataFrame(index=pd.Index(gene_list, name=None))
    var["n_sections"] = np.sum(
        [pd.Index(list(map(str, s.table.var_names))).get_indexer(gene_list) >= 0 for s in secs if s.measured], axis=0
    )
    table = ad.AnnData(X=x, obs=obs, var=var)
    table.layers[Key.layers.counts] = x.copy()
    table.obsm[Key.obsm.spatial] = np.concatenate([s.coords for s in secs])
    table.obsm[Key.obsm.spatial_3d] = np.concatenate([np.c_[p, np.full(len(p), zz)] for p, zz in zip(xy, zs)])
    shared = set.intersection(*[set(s.table.obsm.keys()) for s in secs]) - {Key.obsm.spatial, Key.obsm.spatial_3d}
    for k in sorted(shared):
        vals = [s.table.obsm[k] for s in secs]
        if all(isinstance(v, pd.DataFrame) for v in vals) and len({tuple(v.columns) for v in vals}) == 1:
            df = pd.concat(vals, axis=0)
            df.index = table.obs_names
            table.obsm[k] = df
        elif all(isinstance(v, np.ndarray) and v.ndim == 2 for v in vals) and len({v.shape[1] for v in vals}) == 1:
            table.obsm[k] = np.concatenate(vals)
    instance = np.concatenate([s.table.obs[s.table.uns[Key.uns.spatialdata_attrs]["instance_key"]].to_numpy()
                               for s in secs])  # fmt: skip
    row_regions = np.repeat([region_of[s.name] for s in secs], [s.table.n_obs for s in secs])
    table.uns[STACK_KEY] = {
        "sections": [s.name for s in secs],
        "z": zs.tolist(),
        "transforms": [np.asarray(m, dtype=float).tolist() for m in mats],
        "method": method,
        "kind": kind or {"warped": "affine", "landmarks": "similarity", "icp": "rigid"}.get(method, "none"),
        "reference": ref,
        "rmse_um": [float(rmse.get(s.name, 0.0)) for s in secs],
        "spot_radius_um": float(np.median(np.concatenate([s.radius_um for s in secs]))),
        "spot_spacing_um": spacing,
        "overlap_fraction": fracs,
        "section_info": info,
        "params": sanitize_params(params),
    }
    try:
        instance = instance.astype(np.int64)
    except (TypeError, ValueError):
        instance = instance.astype(str)
    table = make_table(table, region=None, instance_ids=instance, row_regions=row_regions)
    out = new_spatialdata(**collections, tables={key_added: table}, units=units)
    logg.info(
        "    finished",
        time=start,
        deep=f"stacked {len(secs)} sections ({table.n_obs} spots x {table.n_vars} genes) into table {key_added!r}, "
        f"coordinate systems {ALIGNED!r}, {ALIGNED_3D!r} and one per section",
    )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# the graph on a stacked table
# ----------------------------------------------------------------------------------------------------------------------
@inject_docs()
def spot_graph_3d(
    sdata: Any,
    *,
    table_key: str | None = "stack",
    features_key: str | None = None,
    k_similar: int = 12,
    k_spatial: int = 6,
    layers_apart: int = 1,
    min_iou: float = 0.0,
    spatial_weights: Literal["binary", "gaussian"] = "binary",
    section_key: str = Key.obs.section,
    spatial_key: str = Key.obsm.spatial_3d,
    radius: float | None = None,
    key_added: str = "stmap_graph",
    copy: bool = False,
) -> Any:
    """The 3D spot graph of a stacked table: disc overlap and feature similarity across sections, kNN within.

    Wraps ``stmap.pp._stack.graph_arrays`` (the same graph on plain arrays) on the table made by
    :func:`stmap.pp.stack_sections` (or any table/AnnData with aligned coordinates and a categorical section column,
    categories in stacking order).

    Parameters
    ----------
    sdata
        A SpatialData holding the stacked table, or the stacked AnnData itself.
    table_key
        Name of the stacked table (ignored for an AnnData).
    features_key
        ``obsm`` key of spot features (e.g. ``'X_histology'``) for the similarity part; ``None`` skips it.
    k_similar
        Most similar spots kept per spot, among spots of other sections at most ``layers_apart`` away.
    k_spatial
        Nearest neighbours per spot within its section.
    layers_apart
        Sections at most this many positions apart (in the order of ``obs[section_key]``'s categories) are joined.
    min_iou
        Overlap edges need an IoU above this.
    spatial_weights
        ``'binary'`` (every kNN edge 1) or ``'gaussian'`` (``exp(-d^2 / 2s^2)``, ``s`` the section's median
        nearest-neighbour distance).
    section_key
        ``obs`` column of the sections.
    spatial_key
        ``obsm`` key of the aligned coordinates (``x, y`` used; micrometres for a stack).
    radius
        Spot radius in the units of ``spatial_key``; default ``obs['spot_radius_um']``, else
        ``uns['stmap_stack']['spot_radius_um']``.
    {key_added}
    {copy}

    Returns
    -------
    ``None`` (``copy=False``) or the updated copy. Written to the table: ``obsp['<key_added>_overlap']`` (disc IoU),
    ``obsp['<key_added>_spatial']`` (within-section kNN) and, with ``features_key``,
    ``obsp['<key_added>_similarity']`` (cosine similarity, top ``k_similar``; spots with NaN features, e.g. of a
    section without an image, get no similarity edges, and ``layers_apart`` then counts only the sections with
    features): symmetric CSR matrices; and
    ``uns[key_added]``: ``nnz_per_spot`` per part, ``params``.

    Raises
    ------
    StmapInputError
        Unknown table or keys, a non-categorical section column, unknown spot radius. Nothing is written.
    """
    import pandas as pd

    from .._core import Results

    ctx, adata = stack_context(sdata, table_key, spatial_key, section_key)
    sec = adata.obs[section_key]
    if not isinstance(sec.dtype, pd.CategoricalDtype):
        raise StmapInputError(
            f"obs[{section_key!r}] must be categorical with categories in stacking order, e.g. "
            f"`adata.obs[{section_key!r}] = pd.Categorical(values, categories=[...])`."
        )
    if radius is None:
        if "spot_radius_um" in adata.obs:
            radius = adata.obs["spot_radius_um"].to_numpy(dtype=float)
        elif isinstance(adata.uns.get(STACK_KEY), Mapping) and "spot_radius_um" in adata.uns[STACK_KEY]:
            radius = float(adata.uns[STACK_KEY]["spot_radius_um"])
        else:
            raise StmapInputError("The spot radius is unknown: pass `radius=` (units of the coordinates).")
    if features_key is not None and features_key not in adata.obsm:
        raise unknown_key("Features key", features_key, adata.obsm.keys(), "obsm",
                          hint="Compute features first, e.g. with `st.pp.histology_features` per section.")  # fmt: skip
    feats = None
    if features_key is not None:
        f = adata.obsm[features_key]
        feats = f.to_numpy(dtype=float) if isinstance(f, pd.DataFrame) else np.asarray(f, dtype=float)
    start = logg.info("building the 3D spot graph")
    nan_rows = None
    if feats is not None and not np.isfinite(feats).all():
        nan_rows = ~np.isfinite(feats).all(1)  # e.g. sections without an image: no similarity edges for them
        if nan_rows.all():
            raise StmapInputError(f"obsm[{features_key!r}] has no row of finite features.")
        feats = np.where(nan_rows[:, None], 0.0, feats)
    g = graph_arrays(
        np.asarray(adata.obsm[spatial_key], dtype=float),
        sec.cat.codes.to_numpy(),
        radius,
        feats,
        k_similar=k_similar,
        k_spatial=k_spatial,
        layers_apart=layers_apart,
        min_iou=min_iou,
        spatial_weights=spatial_weights,
    )
    if nan_rows is not None:  # recompute the similarity part among the spots with features only
        ok = np.flatnonzero(~nan_rows)
        sub = graph_arrays(
            np.asarray(adata.obsm[spatial_key], dtype=float)[ok], sec.cat.codes.to_numpy()[ok],
            np.broadcast_to(np.asarray(radius, dtype=float), (adata.n_obs,))[ok], feats[ok],
            k_similar=k_similar, k_spatial=0, layers_apart=layers_apart,
        )["similarity"].tocoo()  # fmt: skip
        g["similarity"] = sparse.csr_matrix(
            (sub.data, (ok[sub.row], ok[sub.col])), shape=(adata.n_obs, adata.n_obs), dtype=np.float32
        )
    params = {
        "features_key": features_key,
        "k_similar": k_similar,
        "k_spatial": k_spatial,
        "layers_apart": layers_apart,
        "min_iou": min_iou,
        "spatial_weights": spatial_weights,
        "section_key": section_key,
        "spatial_key": spatial_key,
    }
    res = Results(ctx, key_added, params)
    for part, m in g.items():
        res.obsp(f"{key_added}_{part}", m)
    res.uns(key_added, {"nnz_per_spot": {part: float(m.nnz / max(adata.n_obs, 1)) for part, m in g.items()}})
    out = res.commit(copy)
    logg.info("    finished", time=start, deep=f"added {res.written}")
    return out


def stack_context(sdata: Any, table_key: str | None, spatial_key: str, section_key: str):
    """The stacked table of ``sdata`` (a SpatialData with the stack's table, or the table itself), checked.

    Returns ``(TableContext, AnnData)``: the context writes results into the table (coordinate system
    ``'aligned'``). Raises when the table, ``obsm[spatial_key]`` or ``obs[section_key]`` is missing.
    """
    from anndata import AnnData

    from .._core import TableContext

    if isinstance(sdata, AnnData):
        adata = sdata
        ctx = TableContext(sdata, adata, None, None, None, None, None, spatial_key, spatial_key)
    elif is_spatialdata(sdata):
        if table_key not in sdata.tables:
            raise unknown_key("Table", str(table_key), sdata.tables.keys(), "sdata.tables",
                              hint="Build the stack with `st.pp.stack_sections`.")  # fmt: skip
        adata = sdata.tables[table_key]
        ctx = TableContext(sdata, adata, table_key, None, None, None, None, ALIGNED)
    else:
        raise TypeError(f"Expected a SpatialData or an AnnData, got {type(sdata).__name__}.")
    if spatial_key not in adata.obsm:
        raise unknown_key("Coordinates key", spatial_key, adata.obsm.keys(), "obsm",
                          hint="Build the stack with `st.pp.stack_sections`.")  # fmt: skip
    if section_key not in adata.obs:
        raise unknown_key("Section column", section_key, adata.obs.columns, "obs")
    return ctx, adata
