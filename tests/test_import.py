"""``import stmap`` stays light: heavy back-ends load on first use, not at import."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numba", "torch_geometric", "tangram", "ot")


def _heavy_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m for m in out.stdout.strip().split(",") if m}


def test_import_does_not_load_torch_or_numba():
    # What the required stack loads by itself is not stmap's doing: with the optional `sparse` package installed
    # (cell2location's stack brings it), `import dask.array` loads numba.
    baseline = _heavy_after("import spatialdata, anndata, scanpy, dask.array")
    loaded = _heavy_after("import stmap, stmap.tl, stmap.pp, stmap.pl, stmap.datasets, stmap.metrics")
    extra = sorted(loaded - baseline)
    assert extra == [], f"import stmap loaded {extra}; import them inside functions"


def test_import_check_detects_a_heavy_import():
    # The check itself can fail: importing a kernel module loads numba beyond the baseline.
    baseline = _heavy_after("import spatialdata, anndata, scanpy, dask.array")
    loaded = _heavy_after("import stmap.kernels._kde")
    if "numba" in baseline:
        pytest.skip("numba is already loaded by the required stack here (optional `sparse` installed)")
    assert "numba" in loaded - baseline
