"""``import stmap`` stays light: heavy back-ends load on first use, not at import."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_load_torch_or_numba():
    code = (
        "import sys, stmap, stmap.tl, stmap.pp, stmap.pl, stmap.datasets, stmap.metrics\n"
        "heavy = sorted(m for m in ('torch', 'numba', 'torch_geometric', 'tangram', 'ot') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import stmap loaded {out.stdout.strip()}; import them inside functions"
