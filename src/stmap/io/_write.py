"""Save results into the zarr store a SpatialData was read from, so that an interruption never loses data.

``sdata.delete_element_from_disk(name)`` + ``sdata.write_element(name)`` leaves a window in which the element
exists nowhere on disk. :func:`~stmap.io.write_results` instead writes the new versions into a staging folder inside the
store (``<store>/.stmap_write/new``, a SpatialData store written by spatialdata's own writer; spatialdata's reader
skips hidden names), records a journal, and then swaps each element in with one atomic rename. The journal makes the
swap resumable: :func:`~stmap.io.recover` (also run at the start of every :func:`~stmap.io.write_results`) rolls
an interrupted write forward when the journal exists, and back (deletes the staging folder) when it does not.

Steps (``<stage>`` = ``<store>/.stmap_write``):

1. write the new elements to ``<stage>/new`` and fsync them -- a crash leaves the store untouched;
2. write ``<stage>/journal.json`` atomically -- the commit point;
3. drop the consolidated metadata from the root ``zarr.json`` (atomic rewrite), so readers list the folders
   instead of trusting a listing that is about to go stale;
4. per element: exchange ``<stage>/new/<type>/<name>`` with ``<store>/<type>/<name>`` in one
   ``renameat2(RENAME_EXCHANGE)`` (Linux; ``renamex_np(RENAME_SWAP)`` on macOS), or move a new element in with one
   rename; where the filesystem cannot exchange, the old version is first moved to ``<stage>/old`` (the only
   moment an element is absent from the store; the journal restores it);
5. write the root attributes (``sdata.attrs``) and consolidate the metadata again (both atomic rewrites);
6. rename the journal to ``done.json``, then delete the staging folder (which now holds the old versions).

Which version sits at a path is told by the folder's inode, recorded in the journal. Two environment variables
serve the tests only: ``STMAP_IO_KILL_AT=<step>`` kills the process with SIGKILL right after that step
(``staged``, ``journal``, ``unconsolidated``, ``moved-old``, ``swap-<i>``, ``metadata``, ``journal-removed``) and
``STMAP_IO_NO_EXCHANGE=1`` forces the two-rename fallback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._core import _logging as logg
from .._core._errors import StmapInputError, unknown_key

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["recover", "write_results"]

_STAGING = ".stmap_write"
_JOURNAL = "journal.json"
_DONE = "done.json"
_NEW = "new"
_OLD = "old"
_TMP_SUFFIX = ".stmap-tmp"
_TYPES = ("images", "labels", "points", "shapes", "tables")
_LAZY = ("images", "labels", "points")  # read lazily from the store; tables and shapes live in memory
_KILL_ENV = "STMAP_IO_KILL_AT"
_NO_EXCHANGE_ENV = "STMAP_IO_NO_EXCHANGE"


# ---------------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------------


def write_results(
    sdata: SpatialData,
    names: str | Iterable[str] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
) -> None:
    """Save elements and ``sdata.attrs`` into a zarr store so that an interruption can never lose data.

    Every element is written beside its old version inside the store and swapped in only once the new version is
    complete, so after a crash the store holds, for each element, either the old or the new version, and
    :func:`spatialdata.read_zarr` reads it. The next :func:`~stmap.io.write_results` (or
    :func:`~stmap.io.recover`) finishes an interrupted write.

    Parameters
    ----------
    sdata
        The object whose elements to save, usually read with :func:`spatialdata.read_zarr` and changed by
        ``st.tl`` tools.
    names
        Name(s) of the elements (images, labels, points, shapes, tables) to save. By default, every element that
        may differ from the store: elements the store does not have, all tables and shapes (held in memory, so
        possibly changed), and images, labels and points that are not read unchanged from their own files in the
        store (computed lazily, or with changed transformations). Elements only on disk are kept, never deleted.
    path
        The local zarr store to write into. Defaults to ``sdata.path``. A path that does not exist yet becomes a
        new store holding the selected elements (all of them by default).

    Returns
    -------
    ``None``. ``sdata.attrs`` is saved in the store's root metadata. Saved images, labels and points are
    replaced in ``sdata`` by their lazy copies read back from the store, and ``sdata.path`` is set if it was
    unset.

    Raises
    ------
    stmap.StmapInputError
        No store (``sdata`` not backed and no ``path``), a remote store, a store that is not a SpatialData zarr v3
        store, or a lazy element not saved that would lose the files it is computed from.
    stmap.StmapKeyError
        An unknown name; the message lists the elements.

    See Also
    --------
    :func:`stmap.io.recover`
        Finishes or undoes an interrupted write.
    :doc:`/saving`
        How the swap works and what survives an interruption.

    Examples
    --------
    Compute a result on a store read from disk and save it into that store:

    >>> import spatialdata as sd
    >>> import stmap as st
    >>> st.datasets.synthetic_tissue(seed=0).write("tissue.zarr")
    >>> sdata = sd.read_zarr("tissue.zarr")
    >>> st.tl.density(sdata, points_key="cell_points", groupby="cell_type", bandwidth=20.0)
    >>> st.io.write_results(sdata, ["stmap_density", "cells"])  # the image and the table holding its record
    >>> sorted(sd.read_zarr("tissue.zarr").images)
    ['he', 'stmap_density']

    Without ``names``, every element that may differ from the store is saved.
    """
    start = logg.info("writing results")
    target = _target_path(sdata, path)
    requested = _check_names(sdata, names)
    exists = target.exists()
    if exists:
        _check_store(target)
        with _lock(target):
            _recover_locked(target)
            selected = _select(sdata, requested, target)
            _check_dependents(sdata, selected, target)
            _update_store(sdata, selected, target)
    else:
        selected = _select(sdata, requested, None)
        _new_store(sdata, selected, target)
    _reload(sdata, selected, target)
    logg.info(
        f"    wrote {len(selected)} element(s) and the attrs to {str(target)!r}",
        time=start,
        deep="saved: " + (", ".join(f"{t}/{n}" for t, n in selected) or "attrs only"),
    )


def recover(path: str | os.PathLike[str]) -> Literal["completed", "rolled back"] | None:
    """Finish or undo a :func:`~stmap.io.write_results` that was interrupted (killed, power loss).

    A write that had staged all its new elements is completed (every element gets its new version); one that had
    not is rolled back (the store keeps its old versions, the staging folder is deleted). The store can be read in
    between, so calling this is only needed to tidy up; :func:`~stmap.io.write_results` calls it first anyway.

    Parameters
    ----------
    path
        The local zarr store.

    Returns
    -------
    ``'completed'`` or ``'rolled back'`` if an interrupted write was found, else ``None``.

    See Also
    --------
    :func:`stmap.io.write_results`
        The write this finishes or undoes.
    :doc:`/saving`
        How the swap works and what survives an interruption.

    Examples
    --------
    >>> import stmap as st
    >>> st.datasets.synthetic_tissue(seed=0, n_cells=300).write("small.zarr")
    >>> st.io.recover("small.zarr") is None  # no interrupted write
    True
    """
    store = _local_path(path)
    if not store.exists():
        sibling = _new_store_staging(store)
        if sibling.exists():
            shutil.rmtree(sibling)
            return "rolled back"
        return None
    _check_store(store)
    with _lock(store):
        return _recover_locked(store)


# ---------------------------------------------------------------------------------------------------------------------
# validation and selection
# ---------------------------------------------------------------------------------------------------------------------


def _local_path(path: Any) -> Path:
    protocol = getattr(path, "protocol", None)  # universal_pathlib's UPath
    if isinstance(protocol, tuple | list):
        protocol = protocol[0] if protocol else ""
    text = str(path)
    remote = (protocol not in (None, "", "file", "local")) or ("://" in text and not text.startswith("file://"))
    if remote:
        raise StmapInputError(
            f"write_results writes to local stores only, got {text!r}. Write to a local path and upload the store, "
            "or use `sdata.write_element` on the remote store."
        )
    return Path(text.removeprefix("file://")).expanduser().absolute()


def _target_path(sdata: Any, path: Any) -> Path:
    from spatialdata import SpatialData

    if not isinstance(sdata, SpatialData):
        raise StmapInputError(
            f"write_results needs a spatialdata.SpatialData, got {type(sdata).__name__}. For an AnnData, use "
            "`adata.write_zarr(path)` or `st.pp.to_spatialdata(adata)` first."
        )
    if path is None:
        path = sdata.path
    if path is None:
        raise StmapInputError(
            "The SpatialData object is not backed by a zarr store, so there is nowhere to write. Pass "
            "`path=` (a new or existing local .zarr store), or read the data with `spatialdata.read_zarr(path)`."
        )
    return _local_path(path)


def _check_names(sdata: SpatialData, names: str | Iterable[str] | None) -> list[str] | None:
    if names is None:
        return None
    names = [names] if isinstance(names, str) else list(names)
    available = [n for _, n, _ in sdata.gen_elements()]
    for name in names:
        if not isinstance(name, str) or name not in available:
            raise unknown_key(
                "Element",
                str(name),
                available,
                where="the SpatialData object",
                hint="write_results saves elements held in memory; elements only on disk stay as they are.",
            )
    return list(dict.fromkeys(names))


def _check_store(store: Path) -> None:
    meta_path = store / "zarr.json"
    if not store.is_dir() or not meta_path.is_file():
        if (store / ".zgroup").is_file():
            raise StmapInputError(
                f"{str(store)!r} is a zarr v2 store (an older SpatialData format); write_results updates zarr v3 "
                "stores only. Write the data to a new location with `sdata.write(new_path)` first."
            )
        raise StmapInputError(
            f"{str(store)!r} exists but is not a zarr store; pass `path=` naming a SpatialData .zarr store or a "
            "path that does not exist yet."
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("zarr_format") != 3 or "spatialdata_attrs" not in meta.get("attributes", {}):
        raise StmapInputError(
            f"{str(store)!r} is not a SpatialData zarr v3 store (no 'spatialdata_attrs' in its root metadata). "
            "Write the data to a new location with `sdata.write(new_path)` first."
        )


def _on_disk(store: Path) -> dict[str, str]:
    """``{name: element type}`` of the elements in the store."""
    found: dict[str, str] = {}
    for t in _TYPES:
        folder = store / t
        if folder.is_dir():
            for child in folder.iterdir():
                if not child.name.startswith(".") and (child / "zarr.json").is_file():
                    found[child.name] = t
    return found


def _select(sdata: SpatialData, requested: list[str] | None, store: Path | None) -> list[tuple[str, str]]:
    elements = [(t, n, e) for t, n, e in sdata.gen_elements()]
    if store is None:
        return [(t, n) for t, n, _ in elements if requested is None or n in requested]
    disk = _on_disk(store)
    for t, n, _ in elements:
        if (requested is None or n in requested) and n in disk and disk[n] != t:
            raise StmapInputError(
                f"Element {n!r} is in the store as {disk[n]} but in memory as {t}; rename the in-memory element "
                f"(`sdata.{t}[new_name] = sdata.{t}.pop({n!r})`) or delete the stored one first."
            )
    if requested is not None:
        return [(t, n) for t, n, _ in elements if n in requested]
    lazy_on_disk = tuple(t for t in _LAZY if any(disk.get(n) == t for tt, n, _ in elements if tt == t))
    stored = _read(store, lazy_on_disk) if lazy_on_disk else None
    selected = []
    for t, n, e in elements:
        unchanged = t in _LAZY and n in disk and stored is not None and _same_lazy(e, getattr(stored, t).get(n))
        if not unchanged:
            selected.append((t, n))
    return selected


def _read(store: Path, types: tuple[str, ...]) -> SpatialData:
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.read_zarr(store, selection=types)


def _same_lazy(element: Any, stored: Any) -> bool:
    """Whether a lazy element is its stored version read unchanged (same dask graphs, coordinates, transforms)."""
    if stored is None:
        return False
    try:
        from spatialdata.transformations import get_transformation

        if get_transformation(element, get_all=True) != get_transformation(stored, get_all=True):
            return False
        if hasattr(element, "npartitions"):  # points: a dask DataFrame
            return element._name == stored._name and element.attrs == stored.attrs
        a, b = _arrays(element), _arrays(stored)
        if len(a) != len(b):
            return False
        import numpy as np

        for x, y in zip(a, b, strict=True):
            if getattr(x.data, "name", None) is None or x.data.name != getattr(y.data, "name", None):
                return False
            if x.dims != y.dims or set(x.coords) != set(y.coords):
                return False
            if any(not np.array_equal(x.coords[c].values, y.coords[c].values) for c in x.coords):
                return False
        return True
    except Exception:  # noqa: BLE001 - anything unexpected: save it, to be safe
        return False


def _arrays(element: Any) -> list[Any]:
    if hasattr(element, "children"):  # DataTree: one DataArray per scale
        return [next(iter(element[k].ds.data_vars.values())) for k in sorted(element.children)]
    return [element]


def _check_dependents(sdata: SpatialData, selected: list[tuple[str, str]], store: Path) -> None:
    """Refuse when a lazy element left out would lose the files it is computed from."""
    from spatialdata._io._utils import get_dask_backing_files

    replaced = {n: store / t / n for t, n in selected if (store / t / n).exists()}
    chosen = {n for _, n in selected}
    for t, n, e in sdata.gen_elements():
        if n in chosen or t not in _LAZY:
            continue
        for f in get_dask_backing_files(e):
            for name, folder in replaced.items():
                if Path(f).absolute().is_relative_to(folder):
                    raise StmapInputError(
                        f"{t[:-1] if t != 'labels' else 'labels'} {n!r} is computed lazily from the stored files of "
                        f"{name!r}, which write_results would replace. Save both: `names=[{name!r}, {n!r}]`."
                    )


# ---------------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------------


def _sub(sdata: SpatialData, selected: list[tuple[str, str]]) -> SpatialData:
    from spatialdata import SpatialData

    parts: dict[str, dict[str, Any]] = {t: {} for t in _TYPES}
    for t, n in selected:
        parts[t][n] = getattr(sdata, t)[n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tables annotating elements outside the subset
        return SpatialData(**parts, attrs=dict(sdata.attrs))


def _write_staged(sdata: SpatialData, selected: list[tuple[str, str]], where: Path) -> None:
    sub = _sub(sdata, selected)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="zarr.*")
        warnings.filterwarnings("ignore", module="ome_zarr.*")
        sub.write(where, consolidate_metadata=False, update_sdata_path=False)


def _update_store(sdata: SpatialData, selected: list[tuple[str, str]], store: Path) -> None:
    stage = store / _STAGING
    stage.mkdir()
    try:
        _write_staged(sdata, selected, stage / _NEW)
        _fsync_tree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # nothing in the store changed yet
        raise
    _checkpoint("staged")
    new_root = json.loads((stage / _NEW / "zarr.json").read_text())
    journal = {
        "format": 1,
        "elements": [
            {
                "type": t,
                "name": n,
                "old_inode": _inode(store / t / n),
                "new_inode": _inode(stage / _NEW / t / n),
            }
            for t, n in selected
        ],
        "attributes": new_root.get("attributes", {}),
        "consolidate": "consolidated_metadata" in _root_meta(store),
    }
    _atomic_write(stage / _JOURNAL, json.dumps(journal, indent=2).encode())
    _checkpoint("journal")
    _finish(store, journal)


def _new_store(sdata: SpatialData, selected: list[tuple[str, str]], target: Path) -> None:
    staging = _new_store_staging(target)
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted call
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_staged(sdata, selected, staging)
        _consolidate(staging)
        _fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _checkpoint("staged")
    os.rename(staging, target)
    _fsync_dir(target.parent)


def _new_store_staging(target: Path) -> Path:
    return target.parent / f".{target.name}{_STAGING}"


def _finish(store: Path, journal: dict[str, Any]) -> None:
    """Steps 3-6, idempotent: run by the write itself and again by recovery."""
    stage = store / _STAGING
    meta = _root_meta(store)
    if "consolidated_metadata" in meta:
        meta.pop("consolidated_metadata")
        _atomic_write(store / "zarr.json", json.dumps(meta, indent=2).encode())
    _checkpoint("unconsolidated")
    for i, entry in enumerate(journal["elements"], 1):
        _swap_in(store, stage, entry)
        _checkpoint(f"swap-{i}")
    meta = _root_meta(store)
    meta["attributes"] = journal["attributes"]
    _atomic_write(store / "zarr.json", json.dumps(meta, indent=2).encode())
    if journal["consolidate"]:
        _consolidate(store)
    _checkpoint("metadata")
    os.replace(stage / _JOURNAL, stage / _DONE)
    _fsync_dir(stage)
    _checkpoint("journal-removed")
    _remove_stage(stage)


def _swap_in(store: Path, stage: Path, entry: dict[str, Any]) -> None:
    t, n = entry["type"], entry["name"]
    dst, new, old = store / t / n, stage / _NEW / t / n, stage / _OLD / t / n
    _ensure_group(store, stage, t)
    here = _inode(dst)
    if here is not None and here == entry["new_inode"]:
        pass  # already swapped
    elif here is None:
        if entry["old_inode"] is not None and _inode(old) != entry["old_inode"]:
            raise _unrecoverable(store, f"the old version of {t}/{n} is neither in the store nor staged")
        if _inode(new) != entry["new_inode"]:
            raise _unrecoverable(store, f"the new version of {t}/{n} is missing from the staging folder")
        os.rename(new, dst)
        _fsync_dir(dst.parent)
    elif here != entry["old_inode"] or _inode(new) != entry["new_inode"]:
        raise _unrecoverable(store, f"{t}/{n} was changed by someone else during the write")
    elif _exchange(new, dst):
        _fsync_dir(dst.parent)
        _fsync_dir(new.parent)
    else:
        old.parent.mkdir(parents=True, exist_ok=True)
        os.rename(dst, old)
        _fsync_dir(dst.parent)
        _checkpoint("moved-old")
        os.rename(new, dst)
        _fsync_dir(dst.parent)
    if t == "labels":  # ome-zarr lists the labels in the group's attributes
        meta_path = store / t / "zarr.json"
        meta = json.loads(meta_path.read_text())
        listed = meta.setdefault("attributes", {}).setdefault("ome", {}).setdefault("labels", [])
        if n not in listed:
            listed.append(n)
            _atomic_write(meta_path, json.dumps(meta, indent=2).encode())


def _ensure_group(store: Path, stage: Path, element_type: str) -> None:
    if (store / element_type / "zarr.json").is_file():
        return
    tmp = stage / f"group-{element_type}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copyfile(stage / _NEW / element_type / "zarr.json", tmp / "zarr.json")
    _fsync_tree(tmp)
    os.rename(tmp, store / element_type)  # replaces nothing or an empty folder
    _fsync_dir(store)


def _unrecoverable(store: Path, why: str) -> StmapInputError:
    return StmapInputError(
        f"Cannot finish the interrupted write into {str(store)!r}: {why}. Nothing was deleted; the staged "
        f"versions are in {str(store / _STAGING)!r}."
    )


def _recover_locked(store: Path) -> Literal["completed", "rolled back"] | None:
    for tmp in store.glob(f"*{_TMP_SUFFIX}"):
        tmp.unlink()
    stage = store / _STAGING
    if not stage.exists():
        return None
    journal_path = stage / _JOURNAL
    if (stage / _DONE).exists():  # interrupted while deleting the old versions
        _remove_stage(stage)
        return "completed"
    if not journal_path.exists():  # interrupted before the commit point
        shutil.rmtree(stage)
        logg.warning(f"removed the staging folder of an interrupted write in {str(store)!r}; the store is unchanged")
        return "rolled back"
    _finish(store, json.loads(journal_path.read_text()))
    logg.warning(f"finished an interrupted write into {str(store)!r}")
    return "completed"


def _remove_stage(stage: Path) -> None:
    """Delete the staging folder, ``done.json`` last, so an interrupted delete is still known to be complete."""
    for child in stage.iterdir():
        if child.name != _DONE:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    (stage / _DONE).unlink(missing_ok=True)
    stage.rmdir()


def _reload(sdata: SpatialData, selected: list[tuple[str, str]], target: Path) -> None:
    """Point saved lazy elements at their new files: their old files are gone."""
    if sdata.path is None:
        sdata.path = target
    if _local_path(sdata.path) != target:
        return
    types = tuple(t for t in _LAZY if any(tt == t for tt, _ in selected))
    if not types:
        return
    stored = _read(target, types)
    for t, n in selected:
        if t in types:
            getattr(sdata, t)[n] = getattr(stored, t)[n]


# ---------------------------------------------------------------------------------------------------------------------
# filesystem helpers
# ---------------------------------------------------------------------------------------------------------------------


def _checkpoint(step: str) -> None:
    if os.environ.get(_KILL_ENV) == step:  # tests: a crash right after this step
        os.kill(os.getpid(), signal.SIGKILL)


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def _root_meta(store: Path) -> dict[str, Any]:
    return json.loads((store / "zarr.json").read_text())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _consolidate(store: Path) -> None:
    """Consolidate the metadata like spatialdata does, but replace the root ``zarr.json`` atomically."""
    import zarr
    from zarr.storage import LocalStore

    class _AtomicLocalStore(LocalStore):
        async def set(self, key: str, value: Any) -> None:
            if not self._is_open:
                await self._open()
            self._check_writable()
            _atomic_write(self.root / key, value.to_bytes())

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # zarr: consolidated metadata is not in the v3 spec
        zarr.consolidate_metadata(_AtomicLocalStore(store))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step; ``False`` where the platform or filesystem cannot."""
    if os.environ.get(_NO_EXCHANGE_ENV):
        return False
    import ctypes

    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "renameat2"):
            return False
        at_fdcwd, rename_exchange = -100, 2
        rc = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    elif sys.platform == "darwin":
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "renamex_np"):
            return False
        rename_swap = 2
        rc = libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), str(b))


@contextlib.contextmanager
def _lock(store: Path) -> Iterator[None]:
    """One writer per store: an advisory lock on the store folder, released when the process dies."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(store, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StmapInputError(
                f"Another process is writing into {str(store)!r}; wait for it to finish and try again."
            ) from None
        yield
    finally:
        os.close(fd)
