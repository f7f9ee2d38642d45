"""The separable linear resize of patch stacks equals scikit-image's resize (bit for bit on 8-bit values)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import resize

from stmap._core._patches import _bilinear, _cut_batch


@pytest.mark.parametrize(
    ("size", "out"), [(29, 48), (20, 48), (5, 48), (30, 31), (58, 48), (100, 48), (96, 48), (2, 3)]
)
@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_bilinear_equals_skimage(size, out, kind):
    rng = np.random.default_rng(size * 100 + out)
    x = rng.integers(0, 256, (40, size, size)) if kind == "uint8" else rng.normal(0.5, 0.3, (40, size, size))
    x = x.astype(np.float32)
    ref = resize(x, (40, out, out), order=1, anti_aliasing=out < size, preserve_range=True)
    got = _bilinear(x, out, block=7)
    if kind == "uint8":  # the patches of 8-bit images: bit for bit
        np.testing.assert_array_equal(got, ref)
    else:  # arbitrary floats: a handful of values per million differ by one float32 ulp
        np.testing.assert_allclose(got, ref, rtol=2e-7, atol=0)
        assert (got != ref).sum() <= 2


def test_cut_batch_equals_4d_resize():
    # the cut patches resized as (n, c, h, w) by scikit-image, as extract_patches did before
    rng = np.random.default_rng(0)
    window = rng.integers(0, 256, (3, 90, 80), dtype=np.uint8)
    xs, ys = rng.integers(-10, 75, 30), rng.integers(-10, 85, 30)
    got = _cut_batch(window, xs, ys, 29, 48, 0)
    raw = _cut_batch(window, xs, ys, 29, 29, 0)
    ref = resize(raw.astype(np.float32), (30, 3, 48, 48), order=1, anti_aliasing=False, preserve_range=True)
    np.testing.assert_array_equal(got, np.clip(np.round(ref), 0, 255).astype(np.uint8))
