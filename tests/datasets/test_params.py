"""Every declared parameter of the dataset functions refuses each invalid value, naming it, with nothing changed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import stmap as st
from stmap._core import StmapInputError, invalid_values

WRITERS = ("synthetic_visium", "synthetic_visium_hd", "synthetic_xenium")
SIMULATORS = ("simulate_spots", "simulate_tissue", "synthetic_tissue")
READERS = (
    "her2st",
    "her2st_deconvolution",
    "squidpy_visium",
    "visium_dentate_gyrus",
    "cosmx_lung",
    "vizgen_brain",
    "spacexr",
    "starmap_cells",
    "bdtnp_atlas",
)


def _cells() -> ad.AnnData:
    rs = np.random.default_rng(0)
    a = ad.AnnData(rs.poisson(2.0, size=(40, 5)).astype(np.float32))
    a.obs["cell_type"] = pd.Categorical(np.repeat(["x", "y"], 20))
    a.obsm["spatial"] = rs.uniform(0, 300, size=(40, 2))
    return a


def _valid(name: str, tmp_path: Path) -> tuple[dict[str, Any], ad.AnnData | None]:
    """Valid arguments of ``name`` and the object that must stay unchanged (``None`` if it makes its own)."""
    if name in WRITERS:
        return {"path": tmp_path / "out", "n_cells": 10}, None
    if name == "simulate_spots":
        cells = _cells()
        return {"cells": cells, "spot_diameter": 55.0}, cells
    if name == "simulate_tissue":
        ref = _cells()
        return {"reference": ref, "n_cells": 20}, ref
    if name == "synthetic_tissue":
        return {"n_cells": 20, "n_genes": 10}, None
    if name == "spacexr":
        return {"name": "cerebellum_slideseq", "path": tmp_path}, None
    return {"path": tmp_path}, None


def _cases() -> list[Any]:
    out = []
    for name in (*WRITERS, *SIMULATORS, *READERS):
        spec = getattr(st.datasets, name).__stmap_params__
        for param, rule in spec.items():
            for i, bad in enumerate(invalid_values(rule)):
                out.append(pytest.param(name, param, bad, id=f"{name}-{param}-{i}"))
    return out


@pytest.mark.parametrize(("name", "param", "bad"), _cases())
def test_invalid_value_refused(name, param, bad, tmp_path):
    kwargs, data = _valid(name, tmp_path)
    before = None if data is None else copy.deepcopy(data)
    with pytest.raises(StmapInputError, match=rf"\b{param} must be"):
        getattr(st.datasets, name)(**{**kwargs, param: bad})
    assert not (tmp_path / "out").exists()  # nothing written
    if before is not None:  # the input is untouched
        np.testing.assert_array_equal(np.asarray(data.X), np.asarray(before.X))
        pd.testing.assert_frame_equal(data.obs, before.obs)
        np.testing.assert_array_equal(data.obsm["spatial"], before.obsm["spatial"])
        assert list(data.layers) == list(before.layers) and list(data.uns) == list(before.uns)


@pytest.mark.parametrize("name", [*WRITERS, *SIMULATORS, *READERS])
def test_declared(name):
    """Sizes, seeds, rates, keys and paths are declared (so the test above feeds them bad values)."""
    spec = getattr(st.datasets, name).__stmap_params__
    expected = {
        "synthetic_visium": {"path", "seed", "n_cells", "n_genes", "um_per_px", "dataset_id", "hires_downsample"},
        "synthetic_visium_hd": {"path", "seed", "n_cells", "n_genes", "um_per_px", "spread_um", "lowres_downsample"},
        "synthetic_xenium": {"path", "seed", "n_cells", "n_genes", "pixel_size", "he_image", "overwrite"},
        "simulate_spots": {"cells", "spot_diameter", "spacing", "capture_rate", "min_cells", "seed", "counts_layer"},
        "simulate_tissue": {"reference", "n_cells", "n_domains", "cell_spacing", "concentration", "seed"},
        "synthetic_tissue": {"seed", "n_cells", "n_genes", "mpp", "spot_diameter", "capture_rate", "dispersion"},
        "spacexr": {"name", "path"},
    }.get(name, {"path"})
    assert expected <= set(spec)


def test_messages_name_the_rule(tmp_path):
    with pytest.raises(StmapInputError, match=r"synthetic_visium: n_cells must be an integer >= 10; got 3"):
        st.datasets.synthetic_visium(tmp_path / "v", n_cells=3)
    with pytest.raises(StmapInputError, match=r"capture_rate must be a finite number in \(0, 1\]; got 0.0"):
        st.datasets.simulate_spots(_cells(), spot_diameter=55.0, capture_rate=0.0)
    with pytest.raises(StmapInputError, match=r"dataset_id must be a non-empty file-name-safe string"):
        st.datasets.synthetic_visium_hd(tmp_path / "h", dataset_id="a/b")
    with pytest.raises(StmapInputError, match=r"name must be one of .*'hypothalamus_merfish'"):
        st.datasets.spacexr("nope")
    assert not any(tmp_path.iterdir())
