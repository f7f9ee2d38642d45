"""Names of what the simulators write, and their shared declared parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from stmap._core._params import Instance, Interval

#: Name of the spot table made by :func:`simulate_spots` / :func:`synthetic_tissue`.
SPOTS = "spots"
#: Name of the cell (truth) table.
CELLS = "cells"
#: Name of the circles (shapes) element annotated by the spot table.
SPOT_CIRCLES = "spot_circles"
#: Name of the points element annotated by the cell table.
CELL_POINTS = "cell_points"
#: Name of the H&E image element of :func:`synthetic_tissue`.
HE = "he"
#: Name of the region labels element of :func:`synthetic_tissue`.
REGIONS = "he_regions"
#: ``obs`` column naming the element a simulated table annotates (spatialdata ``region_key``). Not ``'region'``,
#: which in simulated data holds the tissue region (tumour, stroma, ...).
ELEMENT_KEY = "element"

UNS_SPOTS = "stmap_simulate_spots"
UNS_TISSUE = "stmap_simulate_tissue"
UNS_SYNTH = "stmap_synthetic_tissue"

#: ``seed``: a non-negative integer, a :class:`numpy.random.Generator` (used as is) or ``None`` (fresh entropy).
SEED = [Interval(int, 0, None), Instance((np.random.Generator,)), None]
#: A positive, finite number.
POSITIVE = Interval(float, 0, None, "neither")
#: A probability in ``(0, 1]``.
RATE = Interval(float, 0, 1, "right")
KEY = Instance((str,))


def seed_record(seed: Any) -> int | str:
    """How a seed is recorded in ``uns``: the integer, ``'generator'`` or ``'None'``."""
    return int(seed) if isinstance(seed, int | np.integer) else "generator" if seed is not None else "None"
