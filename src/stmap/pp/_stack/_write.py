"""Write the stack: every section's elements in its own and the aligned frames, one table over all spots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ..._core import StmapInputError
from ..._core import _logging as logg
from ..._core._constants import Key
from ._sections import KINDS, Section

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData

ALIGNED = Key.cs_aligned
ALIGNED_3D = Key.cs_aligned_3d


@dataclass
class Elements:
    """The stacked elements by kind, per section what it contributed, and the units of every coordinate system."""

    collections: dict[str, dict[str, Any]]
    info: dict[str, Any]
    units: dict[str, Any]
    region_of: dict[str, str]


def _frames(m: np.ndarray, z: float) -> tuple[Any, Any]:
    """The aligned 2D transformation (``m``) and its 3D version (``z`` as third output axis)."""
    from spatialdata.transformations import Affine

    m3 = np.zeros((4, 3))
    m3[:2] = m[:2]
    m3[2, 2], m3[3, 2] = z, 1.0
    t_al = Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))
    return t_al, Affine(m3, input_axes=("x", "y"), output_axes=("x", "y", "z"))


def _add_section(s: Section, m: np.ndarray, z: float, out: Elements, taken: dict[str, str]) -> None:
    """Add one section's elements (renamed ``'<section>_<name>'`` on collision) to ``out``."""
    from spatialdata.transformations import Sequence as Seq
    from spatialdata.transformations import get_transformation

    from ..._core._elements import with_transformations

    t_al, t_al3 = _frames(m, z)
    src_units = dict(s.sdata.attrs.get(Key.units_attr, {}) or {})
    out.units[s.name] = src_units.get(s.coordinate_system, {"um_per_unit": float(s.um), "source": "inferred"})
    imgs, names = [], []
    for e in s.elements:
        kind = next(k for k in KINDS if e in getattr(s.sdata, k))
        el = getattr(s.sdata, kind)[e]
        if s.coordinate_system not in get_transformation(el, get_all=True):
            logg.warning(f"element {e!r} of section {s.name!r} is not in {s.coordinate_system!r}; not stacked")
            continue
        t0 = get_transformation(el, to_coordinate_system=s.coordinate_system)
        if e in s.shared:  # one element common to several sections: in each one's frame, not in the aligned ones
            if e in taken:
                with_transformations(out.collections[kind][e], {s.name: t0}, copy=False)
            else:
                taken[e] = s.name
                out.collections[kind][e] = with_transformations(el, {s.name: t0}, copy=True, replace=True)
            new_name = e
        else:
            new_name = e if e not in taken else f"{s.name}_{e}"
            if new_name in taken:
                raise StmapInputError(f"Element name {new_name!r} occurs in several sections; rename the elements.")
            taken[new_name] = s.name
            frames = {s.name: t0, ALIGNED: Seq([t0, t_al]), ALIGNED_3D: Seq([t0, t_al3])}
            out.collections[kind][new_name] = with_transformations(el, frames, copy=True, replace=True)
            if e == s.region:
                out.region_of[s.name] = new_name
        names.append(new_name)
        if kind == "images":
            imgs.append(new_name)
    out.info[s.name] = {
        "table_key": s.table_key,
        "region": out.region_of[s.name],
        "coordinate_system": s.coordinate_system,
        "images": imgs,
        "elements": names,
    }


def stack_elements(secs: list[Section], mats: list[np.ndarray], zs: np.ndarray) -> Elements:
    """Every section's elements, each in its section's coordinate system and in ``'aligned'`` / ``'aligned_3d'``."""
    out = Elements({k: {} for k in KINDS}, {}, {ALIGNED: "um", ALIGNED_3D: "um"}, {})
    taken: dict[str, str] = {}
    for s, m, z in zip(secs, mats, zs):
        _add_section(s, m, float(z), out, taken)
    return out


def _counts(table: AnnData, genes: list[str]) -> sparse.csr_matrix:
    """The section's counts on ``genes`` (CSR float32, canonical; zero columns for genes it lacks)."""
    import pandas as pd

    x = table.layers.get(Key.layers.counts, table.X)
    x = sparse.csr_matrix(x, dtype=np.float32)
    idx = pd.Index(list(map(str, table.var_names))).get_indexer(genes)
    have = np.flatnonzero(idx >= 0)
    if len(have) == len(genes):  # every gene: select (and order) the columns, no coordinate round trip
        if np.array_equal(idx, np.arange(x.shape[1])) and x.has_canonical_format:
            return x
        out = x[:, idx]
        out.sum_duplicates()  # canonical: sorted indices, as a COO -> CSR conversion gives them
        return out
    sub = x[:, idx[have]].tocoo()
    return sparse.csr_matrix((sub.data, (sub.row, have[sub.col])), shape=(x.shape[0], len(genes)), dtype=np.float32)


def _stack_counts(secs: list[Section], genes: list[str]) -> sparse.csr_matrix:
    """Counts on ``genes`` of every section, stacked (rows of unmeasured sections are 0)."""
    blocks = [
        _counts(s.table, genes) if s.measured else sparse.csr_matrix((s.table.n_obs, len(genes)), dtype=np.float32)
        for s in secs
    ]
    return sparse.vstack(blocks, format="csr", dtype=np.float32)


def _stack_obs(secs: list[Section], section_key: str) -> pd.DataFrame:
    """Every obs column of the inputs (categories merged), rows named ``'<section>:<obs name>'``."""
    import pandas as pd

    frames = []
    cats: dict[str, list[str]] = {}
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
        vals = vals.where(vals.notna(), None).map(lambda v: None if v is None else str(v))
        obs[c] = pd.Categorical(vals, categories=list(dict.fromkeys(cs)))
    return obs


def _shared_obsm(secs: list[Section], table: AnnData) -> None:
    """``obsm`` entries present in every section with one layout (same DataFrame columns or array width)."""
    import pandas as pd

    shared = set.intersection(*[set(s.table.obsm.keys()) for s in secs]) - {Key.obsm.spatial, Key.obsm.spatial_3d}
    for k in sorted(shared):
        vals = [s.table.obsm[k] for s in secs]
        if all(isinstance(v, pd.DataFrame) for v in vals) and len({tuple(v.columns) for v in vals}) == 1:
            df = pd.concat(vals, axis=0)
            df.index = table.obs_names
            table.obsm[k] = df
        elif all(isinstance(v, np.ndarray) and v.ndim == 2 for v in vals) and len({v.shape[1] for v in vals}) == 1:
            table.obsm[k] = np.concatenate(vals)


def stack_table(
    secs: list[Section], genes: list[str], xy: list[np.ndarray], zs: np.ndarray, section_key: str
) -> AnnData:
    """The table over every section's spots (not yet annotating the elements)."""
    import anndata as ad
    import pandas as pd

    names, sizes = [s.name for s in secs], [s.table.n_obs for s in secs]
    x = _stack_counts(secs, genes)
    obs = _stack_obs(secs, section_key)
    obs[section_key] = pd.Categorical(np.repeat(names, sizes), categories=names)
    obs[Key.obs.measured] = np.repeat([s.measured for s in secs], sizes)
    obs[Key.obs.spot_radius_um] = np.concatenate([s.radius_um for s in secs])
    var = pd.DataFrame(index=pd.Index(genes, name=None))
    var["n_sections"] = np.sum(
        [pd.Index(list(map(str, s.table.var_names))).get_indexer(genes) >= 0 for s in secs if s.measured], axis=0
    )
    table = ad.AnnData(X=x, obs=obs, var=var)
    table.layers[Key.layers.counts] = x.copy()
    table.obsm[Key.obsm.spatial] = np.concatenate([s.coords for s in secs])
    table.obsm[Key.obsm.spatial_3d] = np.concatenate([np.c_[p, np.full(len(p), z)] for p, z in zip(xy, zs)])
    _shared_obsm(secs, table)
    return table


def annotate(table: AnnData, secs: list[Section], region_of: dict[str, str]) -> AnnData:
    """The stacked table annotating each section's spots (instance ids as integers when they all are)."""
    from ..._core._elements import make_table

    ids = np.concatenate([s.table.obs[s.table.uns[Key.uns.spatialdata_attrs]["instance_key"]].to_numpy() for s in secs])
    row_regions = np.repeat([region_of[s.name] for s in secs], [s.table.n_obs for s in secs])
    try:
        ids = ids.astype(np.int64)
    except (TypeError, ValueError):
        ids = ids.astype(str)
    return make_table(table, region=None, instance_ids=ids, row_regions=row_regions.tolist())


def new_stack(els: Elements, table: AnnData, key_added: str) -> SpatialData:
    """The new SpatialData of the stack."""
    from ..._core._elements import new_spatialdata

    return new_spatialdata(**els.collections, tables={key_added: table}, units=els.units)
