"""Write results back where scverse users look for them, all at once, after everything was computed.

A tool collects its results in a :class:`Results` and calls :meth:`Results.commit` last. Nothing in the user's
object changes before that call, so an error while computing leaves it exactly as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _logging as logg
from ._constants import Key
from ._errors import StmapInputError
from ._resolve import TableContext, is_spatialdata

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["Results", "sanitize_params"]

#: In ``uns[key_added]``: what the run wrote under that key (``'obs:<key>'``, ``'element:<name>'``, ...).
_WRITTEN = "written"


def sanitize_params(params: dict[str, Any]) -> dict[str, Any]:
    """Make tool parameters storable in ``.uns`` (zarr/h5ad): scalars, strings, lists of those, or their ``repr``."""

    def conv(v: Any) -> Any:
        if v is None or isinstance(v, bool | int | float | str):
            return "None" if v is None else v
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, list | tuple) and all(isinstance(x, bool | int | float | str | np.generic) for x in v):
            return [x.item() if isinstance(x, np.generic) else x for x in v]
        if isinstance(v, np.ndarray) and v.ndim == 1 and v.size <= 10_000 and v.dtype.kind in "biufU":
            return v
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return repr(v) if len(repr(v)) < 500 else f"<{type(v).__name__}>"

    return {str(k): conv(v) for k, v in params.items()}


@dataclass
class _TableWrites:
    obs: dict[str, Any] = field(default_factory=dict)
    obsm: dict[str, Any] = field(default_factory=dict)
    obsp: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    """Results of one tool call, written to the user's object by :meth:`commit`.

    Parameters
    ----------
    ctx
        The resolved input (where ``obs``/``obsm``/``uns`` writes go by default).
    key_added
        The tool's key: parameters go to ``.uns[key_added]['params']``.
    params
        Parameters the tool ran with.
    """

    ctx: TableContext
    key_added: str
    params: dict[str, Any] = field(default_factory=dict)
    _tables: dict[int, tuple[AnnData, _TableWrites]] = field(default_factory=dict)
    _new_tables: dict[str, tuple[AnnData, str | None, Any]] = field(default_factory=dict)
    _new_elements: dict[str, Any] = field(default_factory=dict)
    _transformations: dict[str, dict[str, Any]] = field(default_factory=dict)
    _written: list[str] = field(default_factory=list)

    # -- collecting ------------------------------------------------------------------------------------------------
    def _w(self, adata: AnnData | None) -> _TableWrites:
        adata = self.ctx.adata if adata is None else adata
        if id(adata) not in self._tables:
            self._tables[id(adata)] = (adata, _TableWrites())
        return self._tables[id(adata)][1]

    def obs(self, key: str, values: Any, adata: AnnData | None = None) -> None:
        """Queue ``adata.obs[key] = values`` (default: the resolved table)."""
        target = self.ctx.adata if adata is None else adata
        _check_len(values, target.n_obs, f"obs[{key!r}]")
        self._w(adata).obs[key] = values

    def obsm(self, key: str, values: Any, adata: AnnData | None = None) -> None:
        """Queue ``adata.obsm[key] = values`` (array, sparse matrix or DataFrame indexed like ``obs``)."""
        target = self.ctx.adata if adata is None else adata
        _check_len(values, target.n_obs, f"obsm[{key!r}]")
        if isinstance(values, pd.DataFrame):
            values = values.copy()
            values.index = target.obs_names
            values.columns = values.columns.astype(str)
        self._w(adata).obsm[key] = values

    def obsp(self, key: str, values: Any, adata: AnnData | None = None) -> None:
        """Queue ``adata.obsp[key] = values``."""
        self._w(adata).obsp[key] = values

    def layer(self, key: str, values: Any, adata: AnnData | None = None) -> None:
        """Queue ``adata.layers[key] = values``."""
        self._w(adata).layers[key] = values

    def uns(self, key: str, values: Any, adata: AnnData | None = None) -> None:
        """Queue ``adata.uns[key] = values`` (merged with the parameters when ``key == key_added``)."""
        self._w(adata).uns[key] = values

    def table(self, name: str, table: AnnData, *, region: str | None = None, instance_ids: Any = None) -> None:
        """Queue a new table ``sdata.tables[name]``, annotating element ``region`` (new or existing)."""
        if table.n_obs == 0:
            raise StmapInputError(f"Refusing to write empty table {name!r}.")
        self._new_tables[name] = (table, region, instance_ids)

    def transformation(self, name: str, coordinate_system: str, transformation: Any) -> None:
        """Queue a transformation of the existing element ``name`` to ``coordinate_system`` (nothing resampled)."""
        self._transformations.setdefault(name, {})[coordinate_system] = transformation

    def element(self, name: str, element: Any) -> None:
        """Queue a new image/labels/points/shapes element (its kind is read from its spatialdata model)."""
        self._new_elements[name] = element

    # -- writing ---------------------------------------------------------------------------------------------------
    @overload
    def commit(self, copy: Literal[False] = ...) -> None: ...
    @overload
    def commit(self, copy: Literal[True]) -> SpatialData | AnnData: ...
    @overload
    def commit(self, copy: bool) -> SpatialData | AnnData | None: ...
    def commit(self, copy: bool = False) -> SpatialData | AnnData | None:
        """Write everything into the user's object (``copy=False``, returns ``None``) or into a copy (returned).

        With ``copy=True`` the returned object is one new SpatialData/AnnData whose modified tables are copies;
        unmodified elements (e.g. large images) are shared, not duplicated. Writes to AnnData objects outside it
        (e.g. a single-cell reference) are only possible in place: with ``copy=True`` a tool puts what it would
        write there into the returned object instead.

        Raises
        ------
        RuntimeError
            With ``copy=True``, when writes were queued for an object outside the returned one (a tool error).
        """
        if copy:
            outside = [a for a, _ in self._tables.values() if not self._in_target(a)]
            if outside:
                raise RuntimeError(
                    f"Internal error: {self.key_added} queued writes to {len(outside)} object(s) outside the one "
                    "copy=True returns; put those results into the returned object instead."
                )
        self._check_names()  # before anything is written: names spatialdata / zarr would refuse
        if self.ctx.sdata is not None and self.ctx.region is not None and "unit_info" not in self.ctx.__dict__:
            try:  # read before anything is written: a unit the platform records is kept for every later tool
                _ = self.ctx.unit_info
            except StmapInputError:
                self.ctx.__dict__["unit_info"] = None  # contradicting records: the tool did not need them
        target = self._copy_target() if copy else self.ctx.data
        tables_map = self._table_map(target, copy)
        stale_elements: set[str] = set()
        for adata, w in self._tables.values():
            dst = tables_map.get(id(adata), adata)
            stale_elements |= self._drop_stale(dst, w, is_main=adata is self.ctx.adata)
            self._apply(dst, w, is_main=adata is self.ctx.adata)
        if self.key_added not in {k for _, w in self._tables.values() for k in w.uns}:
            main = tables_map.get(id(self.ctx.adata), self.ctx.adata)
            self._apply(main, _TableWrites(uns={self.key_added: {}}), is_main=True)
        if self._new_elements or self._new_tables:
            if not is_spatialdata(target):
                logg.warning(
                    f"{', '.join(list(self._new_elements) + list(self._new_tables))} not written: a plain AnnData "
                    "cannot hold new elements or tables. Pass a SpatialData (e.g. `st.pp.to_spatialdata(adata)`) "
                    "to get them."
                )
            else:
                self._add_elements(target, tables_map)
        if stale_elements and is_spatialdata(target):  # made by the previous run under this key, not by this one
            for name in stale_elements - set(self._new_tables) - set(self._new_elements):
                if name in target:
                    del target[name]
                    self._written.append(f"removed {name!r} (previous run)")
        if self._transformations and is_spatialdata(target):
            self._set_transformations(target, copy)
        if is_spatialdata(target):
            self._record_units(target)
        return target if copy else None

    def _check_names(self) -> None:
        """Every key, table and element name this commit would write, checked before anything is written."""
        from ._names import check_name, sanitize_nested

        to_sdata = self.ctx.sdata is not None
        for adata, w in self._tables.values():
            for slot in ("obs", "obsm", "obsp", "layers", "uns"):
                for k, v in getattr(w, slot).items():
                    if to_sdata and self._in_target(adata):  # a plain AnnData (h5ad) takes any key
                        check_name(k, f"The key {slot}[...]")
                    if slot in ("obsm", "uns"):  # data-derived names ("T/NK") stored so that sdata.write works
                        getattr(w, slot)[k] = sanitize_nested(v, f"{slot}[{k!r}]")
        if to_sdata:
            for name in (*self._new_tables, *self._new_elements):
                check_name(name, "The new element")
            for name, (table, _, _) in self._new_tables.items():
                for slot in ("obs", "obsm", "layers", "uns"):
                    for k, v in getattr(table, slot).items():
                        check_name(k, f"The key {slot}[...] of new table {name!r}")
                        if slot in ("obsm", "uns"):
                            getattr(table, slot)[k] = sanitize_nested(v, f"{slot}[{k!r}] of new table {name!r}")

    def _drop_stale(self, adata: AnnData, w: _TableWrites, *, is_main: bool) -> set[str]:
        """Remove what the previous run under this key wrote to ``adata`` and this run does not write again.

        Returns the names of new tables/elements the previous run made (from the main table's record).
        """
        prev_meta = adata.uns.get(self.key_added)
        prev = prev_meta.get(_WRITTEN) if isinstance(prev_meta, Mapping) else None
        if prev is None:
            return set()
        now = set(self._record(w, is_main))
        stale: set[str] = set()
        for entry in map(str, list(prev)):
            if entry in now:
                continue
            slot, _, key = entry.partition(":")
            if slot in ("obs", "obsm", "obsp", "layers") and key in getattr(adata, slot):
                del getattr(adata, slot)[key]
                self._written.append(f"removed {slot}[{key!r}] (previous run)")
            elif slot == "element":
                stale.add(key)
        return stale

    def _record(self, w: _TableWrites, is_main: bool) -> list[str]:
        out = [f"{slot}:{k}" for slot in ("obs", "obsm", "obsp", "layers") for k in getattr(w, slot)]
        if is_main:
            out += [f"element:{n}" for n in (*self._new_tables, *self._new_elements)]
        return sorted(out)

    def _record_units(self, sdata: SpatialData) -> None:
        """Store a unit the tool inferred from the platform's records, so every later tool reads the same number."""
        info = self.ctx.__dict__.get("unit_info")  # read at the start of commit (cached_property)
        if info is None or info.recorded or not self.ctx.coordinate_system:
            return
        units = dict(sdata.attrs.get(Key.units_attr, {}) or {})
        units.setdefault(self.ctx.coordinate_system, info.to_attr())
        sdata.attrs[Key.units_attr] = units

    def _in_target(self, adata: AnnData) -> bool:
        if any(adata is t for t, _, _ in self._new_tables.values()):
            return True  # a queued new table (e.g. the tool's own results table) goes into the target
        data = self.ctx.data
        if isinstance(data, AnnData):
            return adata is data
        return any(adata is t for t in data.tables.values())

    def _copy_target(self) -> SpatialData | AnnData:
        data = self.ctx.data
        if not is_spatialdata(data):
            return data.copy()
        from spatialdata import SpatialData

        modified = {id(a) for a, _ in self._tables.values()} | {id(self.ctx.adata)}
        tables = {k: (t.copy() if id(t) in modified else t) for k, t in data.tables.items()}
        import copy as _copy

        return SpatialData(
            images=dict(data.images),
            labels=dict(data.labels),
            points=dict(data.points),
            shapes=dict(data.shapes),
            tables=tables,
            attrs=_copy.deepcopy(dict(data.attrs)),
        )

    def _table_map(self, target: SpatialData | AnnData, copy: bool) -> dict[int, AnnData]:
        """Map ids of the user's tables to the tables of ``target`` (themselves unless copied)."""
        if not copy:
            return {}
        if isinstance(target, AnnData) or isinstance(self.ctx.data, AnnData):  # (both, or neither)
            return {id(self.ctx.adata): target}
        src = self.ctx.data.tables
        return {id(src[k]): target.tables[k] for k in src}

    def _apply(self, adata: AnnData, w: _TableWrites, *, is_main: bool) -> None:
        for slot, items in (("obs", w.obs), ("obsm", w.obsm), ("obsp", w.obsp), ("layers", w.layers)):
            container = getattr(adata, slot)
            for k, v in items.items():
                if k in container:
                    _warn_overwrite(f"{slot}[{k!r}]")
                container[k] = v
                self._written.append(f"{slot}[{k!r}]")
        for k, v in w.uns.items():
            if is_main and k == self.key_added:
                v = {**(v or {}), Key.uns.params: sanitize_params(self.params)}
            if k == self.key_added and isinstance(v, Mapping):  # what this run wrote: a rerun replaces all of it
                v = {**v, _WRITTEN: self._record(w, is_main)}
            if k in adata.uns:
                _warn_overwrite(f"uns[{k!r}]")
            adata.uns[k] = v
            self._written.append(f"uns[{k!r}]")

    def _add_elements(self, sdata: SpatialData, tables_map: dict[int, AnnData] | None = None) -> None:
        from spatialdata.models import get_model

        from ._elements import make_table

        kinds = {"Image2DModel": "images", "Image3DModel": "images", "Labels2DModel": "labels"}
        kinds |= {"Labels3DModel": "labels", "PointsModel": "points", "ShapesModel": "shapes"}
        for name, el in self._new_elements.items():
            kind = kinds[get_model(el).__name__]
            if name in sdata:
                _warn_overwrite(f"element {name!r}")
                del sdata[name]
            getattr(sdata, kind)[name] = el
            self._written.append(f"{kind}[{name!r}]")
        for name, (table, region, ids) in self._new_tables.items():
            if name in sdata.tables:
                _warn_overwrite(f"table {name!r}")
                del sdata.tables[name]
            table = (tables_map or {}).get(id(table), table)  # the copy that received obs/uns writes
            table.uns[Key.uns.derived] = {"tool": self.key_added, "table": str(self.ctx.table_key)}
            sdata.tables[name] = make_table(table, region=region, instance_ids=ids)
            self._written.append(f"tables[{name!r}]")

    def _set_transformations(self, sdata: SpatialData, copy: bool) -> None:
        from ._elements import with_transformations

        for name, ts in self._transformations.items():
            kind = next(k for k in ("images", "labels", "points", "shapes") if name in getattr(sdata, k))
            el = with_transformations(getattr(sdata, kind)[name], ts, copy=copy)  # a copy never touches the user's
            if copy:
                getattr(sdata, kind)[name] = el
            self._written.append(f"transformations of {name!r} to {', '.join(map(repr, ts))}")

    @property
    def written(self) -> str:
        """Human-readable list of what the last :meth:`commit` wrote (for the log)."""
        return ", ".join(self._written)


def _check_len(values: Any, n: int, what: str) -> None:
    length = values.shape[0] if hasattr(values, "shape") else len(values)
    if length != n:
        raise ValueError(f"Internal error: {what} has {length} rows, the table has {n}.")


def _warn_overwrite(what: str) -> None:
    warnings.warn(f"Overwriting existing {what}.", UserWarning, stacklevel=4)
