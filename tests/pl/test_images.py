"""Image comparison of every ``st.pl`` figure (as squidpy's ``tests/plotting``).

Each case draws a small seeded figure (``conftest.py``: hand-written tool results on the synthetic tissue, no
training) and compares it with the PNG of the same name in ``tests/pl/baseline/``. After an intended change of a
figure, regenerate the baselines and look at every one before committing them::

    STMAP_UPDATE_BASELINES=1 pytest tests/pl/test_images.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.testing.compare import compare_images

pytestmark = pytest.mark.filterwarnings("error")

BASELINE = Path(__file__).parent / "baseline"
UPDATE = os.environ.get("STMAP_UPDATE_BASELINES", "") == "1"
DPI = 50
#: ``compare_images``' tolerance: the RMS of the pixel difference, in grey levels (0-255), over the whole image.
#: Measured on these figures: drawing every glyph without anti-aliasing (a far larger change than another FreeType
#: build's anti-aliasing of the same bundled DejaVu Sans) gives RMS 16-29; the defects these tests guard against
#: give RMS 48-80: the ranking bars gone on a log axis (48.6), a legend missing (58-79), the 17-type palette shifted
#: by the unused categories (60.6), a colour bar missing (76.7). 15 passes rendering noise and fails every defect.
TOL = 15

#: ``case -> (plot, keyword arguments)``; data and base arguments in ``conftest.PLOTS``.
CASES = {
    "spatial_categorical": ("spatial", {"figsize": (4.6, 3.6)}),
    "spatial_gene": ("spatial", {"color": "tumor_r01", "cmap": "magma", "figsize": (4.4, 3.6)}),
    "mapping": ("mapping", {"figsize": (12.0, 3.4)}),
    "ctr": ("ctr", {"figsize": (7.0, 5.6)}),  # the default layout: two panels per row
    "density": ("density", {"figsize": (6.0, 2.8)}),
    "density_ranking": ("density_ranking", {"figsize": (5.6, 4.0)}),
    "gene_maps": ("gene_maps", {"figsize": (6.0, 5.4)}),
    "sections_3d": ("sections_3d", {"figsize": (7.0, 3.8)}),
    "sections_3d_3d": ("sections_3d", {"mode": "3d", "figsize": (4.4, 4.0)}),
}


@pytest.fixture(autouse=True)
def _style():
    """matplotlib's defaults (bundled DejaVu Sans), whatever the user's or another test's settings."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "font.family": "DejaVu Sans"})
        yield
    plt.close("all")


@pytest.mark.parametrize("case", list(CASES))
def test_image(case, plot_call, tmp_path):
    name, kw = CASES[case]
    out = plot_call(name, dpi=DPI, show=False, **kw)
    fig = np.ravel(np.asarray(out, dtype=object))[0].figure
    actual = tmp_path / f"{case}.png"
    fig.savefig(actual, dpi=DPI)  # no tight bounding box here: the size is figsize x dpi, the same on every machine
    expected = BASELINE / f"{case}.png"
    if UPDATE:
        BASELINE.mkdir(exist_ok=True)
        shutil.copyfile(actual, expected)
        return
    assert expected.exists(), f"no baseline {expected.name}; write it with STMAP_UPDATE_BASELINES=1 and look at it"
    err = compare_images(str(expected), str(actual), tol=TOL)
    assert err is None, err
