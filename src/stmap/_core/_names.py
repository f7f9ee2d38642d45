"""Names a tool will create, checked before anything is written, so ``SpatialData.write`` never fails afterwards.

spatialdata accepts element names and the top-level keys of a table's ``obs``/``obsm``/``obsp``/``layers``/``uns``
made of letters, digits, ``_``, ``-`` and ``.`` (not starting with ``__``); zarr and HDF5 refuse a ``/`` in any key,
also in nested ``uns`` dictionaries and in the columns of ``obsm`` DataFrames (e.g. a cell type ``"T/NK"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import StmapInputError

__all__ = ["check_name", "check_nested_names", "valid_name"]


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


def check_nested_names(value: Any, what: str, _depth: int = 0) -> None:
    """Warn when a nested key (a dict key, a DataFrame column) holds a ``/``, which zarr and HDF5 cannot store.

    Such names come from the data (e.g. a cell type ``"CD4+/CD25 T Reg"``) and are valid in memory, so the tool's
    result is kept; the warning names the fix before ``sdata.write`` would fail.
    """
    import pandas as pd

    from . import _logging as logg

    if _depth > 8:
        return
    keys: list[Any] = []
    if isinstance(value, pd.DataFrame):
        keys = list(value.columns)
    elif isinstance(value, Mapping):
        keys = list(value.keys())
        for k, v in value.items():
            check_nested_names(v, f"{what}[{k!r}]", _depth + 1)
    bad = [k for k in keys if "/" in str(k)]
    if bad:
        logg.warning(
            f"{what} holds the names {bad[:5]}: zarr and HDF5 cannot store a '/' in a name, so `sdata.write` will "
            "fail. Rename them first, e.g. for categories "
            "`adata.obs[key] = adata.obs[key].cat.rename_categories(lambda c: c.replace('/', '_'))`."
        )
