"""Names a tool will create, checked before anything is written, so ``SpatialData.write`` never fails afterwards.

spatialdata accepts element names and the top-level keys of a table's ``obs``/``obsm``/``obsp``/``layers``/``uns``
made of letters, digits, ``_``, ``-`` and ``.`` (not starting with ``__``); zarr and HDF5 refuse a ``/`` in any key,
also in nested ``uns`` dictionaries and in the columns of ``obsm`` DataFrames (e.g. a cell type ``"T/NK"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import StmapInputError

__all__ = ["check_name", "sanitize_nested", "safe_key", "valid_name"]


def valid_name(name: Any) -> bool:
    """Whether ``name`` is a valid SpatialData element / table key name."""
    return (
        isinstance(name, str)
        and len(name) > 0
        and name not in (".", "..")
        and not name.startswith("__")
        and all(c.isalnum() or c in "_-." for c in name)
    )


def check_name(name: Any, what: str) -> None:
    """Raise when ``name`` cannot be a SpatialData element or table key (``what`` says where it comes from)."""
    if valid_name(name):
        return
    suggestion = "".join(c if (c.isalnum() or c in "_-.") else "_" for c in str(name)).lstrip("_") or "result"
    raise StmapInputError(
        f"{what} {name!r} is not a valid name for SpatialData (use letters, digits, '_', '-' and '.', not starting "
        f"with '__'); e.g. {suggestion!r}."
    )


def safe_key(name: Any) -> str:
    """``name`` as it can be stored as a nested key by zarr and HDF5: every ``/`` becomes ``_``."""
    return str(name).replace("/", "_")


def sanitize_nested(value: Any, what: str, _depth: int = 0) -> Any:
    """``value`` with every ``/`` in nested keys (dict keys, DataFrame columns) replaced by ``_`` (:func:`safe_key`).

    Such names come from the data (e.g. a cell type ``"CD4+/CD25 T Reg"`` as a column of the fractions) and zarr /
    HDF5 cannot store them, so ``sdata.write`` would fail and leave an unreadable store. A warning lists the renames;
    stmap's own readers of these results (e.g. :func:`stmap.tl.project_genes`, :func:`stmap.pl.mapping`) apply the
    same renaming, so they keep working. ``value`` itself is not modified.
    """
    import pandas as pd

    from . import _logging as logg

    if _depth > 8:
        return value
    if isinstance(value, pd.DataFrame):
        bad = [c for c in value.columns if "/" in str(c)]
        if not bad:
            return value
        new = [safe_key(c) if "/" in str(c) else c for c in value.columns]
        if len(set(map(str, new))) < len(new):
            raise StmapInputError(
                f"{what}: the names {bad[:5]} hold a '/', which zarr and HDF5 cannot store, and replacing it by '_' "
                "would make two names equal. Rename them first, e.g. for categories "
                "`adata.obs[key] = adata.obs[key].cat.rename_categories(lambda c: c.replace('/', '_'))`."
            )
        logg.warning(f"{what}: names {bad[:5]} are stored with '_' for '/' (zarr and HDF5 cannot store a '/')")
        out = value.copy()
        out.columns = new
        out.attrs.update(value.attrs)
        return out
    if isinstance(value, Mapping):
        changed = {}
        for k, v in value.items():
            nv = sanitize_nested(v, f"{what}[{k!r}]", _depth + 1)
            nk = safe_key(k) if isinstance(k, str) and "/" in k else k
            if nk in changed:
                raise StmapInputError(
                    f"{what}: the key {k!r} holds a '/', which zarr and HDF5 cannot store, and {nk!r} exists already; "
                    "rename it first."
                )
            changed[nk] = nv
        renamed = [k for k in value if isinstance(k, str) and "/" in k]
        if renamed:
            logg.warning(f"{what}: keys {renamed[:5]} are stored with '_' for '/' (zarr and HDF5 cannot store a '/')")
        if not renamed and all(changed[k] is value[k] for k in value):
            return value
        return type(value)(changed) if isinstance(value, dict) else changed
    return value
