"""stmap.kernels: numba kernels on plain arrays (KDE binning + separable Gaussian convolution, capacity assignment).

Names are imported on first use, so that ``import stmap`` does not load numba.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "linear_binning": "._kde",
    "gaussian_smooth": "._kde",
    "gaussian_kernel_1d": "._kde",
    "kde_grid": "._kde",
    "kde_direct": "._kde",
    "capacity_assign": "._assign",
    "largest_remainder": "._assign",
    "fill_slots": "._fill",
    "search_candidates": "._fill",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
