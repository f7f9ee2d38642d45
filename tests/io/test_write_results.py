"""``st.io.write_results``: results saved into the store they came from, never losing data when interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from anndata import AnnData
from geopandas import GeoDataFrame
from shapely.geometry import Point
from spatialdata.models import Image2DModel, ShapesModel, TableModel

import stmap as st
from stmap.io._write import _STAGING

# ---- a tiny store: one image, spots (shapes) and their counts table ----------------------------------------------


def _tiny() -> sd.SpatialData:
    rng = np.random.default_rng(0)
    image = Image2DModel.parse(rng.integers(0, 255, (3, 16, 16)).astype(np.uint8), dims=("c", "y", "x"))
    circles = ShapesModel.parse(
        GeoDataFrame({"radius": np.full(6, 2.0)}, geometry=[Point(2.0 * i + 2, 5.0) for i in range(6)])
    )
    counts = rng.poisson(3.0, (6, 4)).astype(np.float32)
    obs = pd.DataFrame(
        {"region": pd.Categorical(["spots"] * 6), "spot_id": np.arange(6)}, index=[f"s{i}" for i in range(6)]
    )
    table = TableModel.parse(AnnData(counts, obs=obs), region="spots", region_key="region", instance_key="spot_id")
    return sd.SpatialData(images={"he": image}, shapes={"spots": circles}, tables={"counts": table})


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "sample.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _tiny().write(path)
    return path


def _read(path: Path) -> sd.SpatialData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.read_zarr(path)


def _image(sdata: sd.SpatialData) -> np.ndarray:
    return np.asarray(sdata.images["he"].values)


# What the crashed writer (and the in-process tests) change: a new obsm on the counts table, a new table, the image
# doubled lazily, and one attribute. Everything else is left as it was.
_CHANGE = """
import numpy as np, spatialdata as sd, stmap as st, warnings
warnings.simplefilter("ignore")
from spatialdata.models import Image2DModel, TableModel
sdata = sd.read_zarr({path!r})
t = sdata.tables["counts"]
t.obsm["stmap_new"] = np.arange(t.n_obs * 2, dtype=float).reshape(t.n_obs, 2)
sdata.tables["extra"] = TableModel.parse(t[:, :2].copy())
sdata.images["he"] = Image2DModel.parse(sdata.images["he"].data * 2, dims=("c", "y", "x"))
sdata.attrs["stmap_coordinate_units"] = {{"global": "um"}}
"""


def _change(path: Path) -> sd.SpatialData:
    scope: dict = {}
    exec(_CHANGE.format(path=str(path)), scope)  # the same code the killed subprocess runs
    return scope["sdata"]


def _snapshot(path: Path) -> dict[str, np.ndarray]:
    """The stored counts and image as arrays (a lazy image would read whatever the files hold later)."""
    sdata = _read(path)
    return {"counts": np.asarray(sdata.tables["counts"].X).copy(), "he": _image(sdata).copy()}


def _assert_old_or_new(path: Path, before: dict[str, np.ndarray]) -> dict[str, str]:
    """The store reads, and every element is complete in its old or its new version; returns which."""
    after = _read(path)
    counts = after.tables["counts"]
    np.testing.assert_array_equal(counts.X, before["counts"])  # the original counts, always
    state = {"counts": "new" if "stmap_new" in counts.obsm else "old"}
    if state["counts"] == "new":
        np.testing.assert_array_equal(counts.obsm["stmap_new"], np.arange(12, dtype=float).reshape(6, 2))
    state["extra"] = "new" if "extra" in after.tables else "old"
    if state["extra"] == "new":
        np.testing.assert_array_equal(after.tables["extra"].X, before["counts"][:, :2])
    img, old = _image(after), before["he"]
    state["he"] = "old" if np.array_equal(img, old) else "new"
    if state["he"] == "new":
        np.testing.assert_array_equal(img, old * 2)  # uint8: wraps like the lazy product
    state["attrs"] = "new" if "stmap_coordinate_units" in after.attrs else "old"
    return state


class TestWriteResults:
    def test_round_trip_map_cells(self, tmp_path: Path):
        path = tmp_path / "tissue.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st.datasets.synthetic_tissue(0).write(path)
        sdata = _read(path)
        image_files = {p: p.stat().st_mtime_ns for p in (path / "images").rglob("*") if p.is_file()}
        st.tl.map_cells(sdata, sdata.tables["cells"].copy(), table_key="spots")
        sdata.attrs["stmap_test"] = {"saved": True}
        assert set(sdata.tables) - set(_read(path).tables)  # map_cells added a table

        st.io.write_results(sdata)

        again = _read(path)
        assert set(again.tables) == set(sdata.tables)
        assert set(again.points) == set(sdata.points)
        spots = again.tables["spots"]
        assert set(spots.obsm) == set(sdata.tables["spots"].obsm)
        assert set(spots.uns) == set(sdata.tables["spots"].uns)
        pd.testing.assert_frame_equal(
            pd.DataFrame(spots.obsm["stmap_cell_type_fractions"]),
            pd.DataFrame(sdata.tables["spots"].obsm["stmap_cell_type_fractions"]),
        )
        assert again.attrs["stmap_test"] == {"saved": True}
        assert again.attrs["stmap_coordinate_units"] == sdata.attrs["stmap_coordinate_units"]
        # the image was read unchanged, so its files were not rewritten
        assert {p: p.stat().st_mtime_ns for p in (path / "images").rglob("*") if p.is_file()} == image_files
        assert not (path / _STAGING).exists()
        assert "consolidated_metadata" in json.loads((path / "zarr.json").read_text())

    def test_changed_elements_and_attrs(self, store: Path):
        before = _snapshot(store)
        sdata = _change(store)
        st.io.write_results(sdata)
        assert set(_assert_old_or_new(store, before).values()) == {"new"}
        # the saved image is read back from its new files, so the object stays usable
        np.testing.assert_array_equal(_image(sdata), before["he"] * 2)
        assert sdata.images["he"].data.name == _read(store).images["he"].data.name

    def test_names_limit_what_is_written(self, store: Path):
        before = _snapshot(store)
        sdata = _change(store)
        st.io.write_results(sdata, "counts")
        state = _assert_old_or_new(store, before)
        assert state == {"counts": "new", "extra": "old", "he": "old", "attrs": "new"}

    def test_new_store_from_memory(self, tmp_path: Path):
        sdata = _tiny()
        sdata.attrs["stmap_coordinate_units"] = {"global": "um"}
        path = tmp_path / "new.zarr"
        st.io.write_results(sdata, path=path)
        assert Path(sdata.path) == path
        again = _read(path)
        assert set(again.tables) == {"counts"} and set(again.images) == {"he"}
        assert again.attrs == {"stmap_coordinate_units": {"global": "um"}}
        assert not any(p.name.endswith(_STAGING) for p in tmp_path.iterdir())

    def test_not_backed_without_path(self):
        with pytest.raises(st.StmapInputError, match="not backed by a zarr store.*path="):
            st.io.write_results(_tiny())

    def test_remote_store(self):
        with pytest.raises(st.StmapInputError, match="local stores only"):
            st.io.write_results(_tiny(), path="s3://bucket/sample.zarr")

    def test_unknown_name_lists_elements(self, store: Path):
        sdata = _change(store)
        files = sorted((p, p.stat().st_mtime_ns) for p in store.rglob("*"))
        with pytest.raises(st.StmapKeyError, match=r"'nope' not found.*'counts', 'extra', 'he', 'spots'"):
            st.io.write_results(sdata, ["counts", "nope"])
        assert sorted((p, p.stat().st_mtime_ns) for p in store.rglob("*")) == files  # nothing written

    def test_not_a_store(self, tmp_path: Path):
        (tmp_path / "plain").mkdir()
        with pytest.raises(st.StmapInputError, match="not a zarr store"):
            st.io.write_results(_tiny(), path=tmp_path / "plain")

    def test_lazy_dependent_left_out(self, store: Path):
        sdata = _read(store)
        sdata.images["he2"] = Image2DModel.parse(sdata.images["he"].data + 1, dims=("c", "y", "x"))
        sdata.images["he"] = Image2DModel.parse(sdata.images["he"].data * 2, dims=("c", "y", "x"))
        with pytest.raises(st.StmapInputError, match="'he2' is computed lazily.*names="):
            st.io.write_results(sdata, "he")
        st.io.write_results(sdata, ["he", "he2"])  # both together is fine: all copies are staged before any swap
        again = _read(store)
        np.testing.assert_array_equal(_image(again), _image(_tiny()) * 2)


# ---- kill -9 mid-write -----------------------------------------------------------------------------------------------

_STEPS_BEFORE_COMMIT = ["staged"]
_STEPS_AFTER_COMMIT = ["journal", "swap-1", "swap-3", "metadata", "journal-removed"]


def _killed_write(path: Path, step: str, *, exchange: bool = True) -> None:
    code = _CHANGE.format(path=str(path)) + "st.io.write_results(sdata)\n"
    env = {**os.environ, "STMAP_IO_KILL_AT": step}
    if not exchange:
        env["STMAP_IO_NO_EXCHANGE"] = "1"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, f"the writer was not killed at {step!r}:\n{proc.stderr[-2000:]}"


class TestKilledWrite:
    @pytest.mark.parametrize(
        ("step", "exchange"),
        [(s, True) for s in _STEPS_BEFORE_COMMIT + _STEPS_AFTER_COMMIT] + [("moved-old", False)],
    )
    def test_store_reads_and_recover_finishes(self, store: Path, step: str, exchange: bool):
        before = _snapshot(store)
        _killed_write(store, step, exchange=exchange)
        assert (store / _STAGING).exists()

        if step == "moved-old":
            # without an atomic exchange (some filesystems), the old image was moved aside and the new one not yet
            # in: the one moment an element is absent; the store still reads, and the journal brings it back
            assert "he" not in _read(store).images
        else:
            state = _assert_old_or_new(store, before)  # readable right after the kill, nothing half-written
        if step in _STEPS_BEFORE_COMMIT:
            assert set(state.values()) == {"old"}

        outcome = st.io.recover(store)
        assert outcome == ("rolled back" if step in _STEPS_BEFORE_COMMIT else "completed")
        assert not (store / _STAGING).exists()
        final = _assert_old_or_new(store, before)
        assert set(final.values()) == {"old" if step in _STEPS_BEFORE_COMMIT else "new"}
        assert "consolidated_metadata" in json.loads((store / "zarr.json").read_text())
        assert st.io.recover(store) is None

    def test_next_write_finishes_the_interrupted_one(self, store: Path):
        before = _snapshot(store)
        _killed_write(store, "swap-1")
        sdata = _read(store)
        sdata.tables["counts"].obs["note"] = "later"
        st.io.write_results(sdata, "counts")
        assert not (store / _STAGING).exists()
        state = _assert_old_or_new(store, before)
        assert state["extra"] == "new" and state["he"] == "new"  # finished from the journal
        assert list(_read(store).tables["counts"].obs["note"].unique()) == ["later"]
