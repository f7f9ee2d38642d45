"""Small readers of spatialdata transformations as 3x3 ``(x, y, 1)`` matrices (a leaf module: imports no stmap)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["affine_of", "linear_scale", "element_coordinate_systems"]


def linear_scale(matrix: np.ndarray) -> float:
    """Isotropic scale of an affine matrix (square root of the absolute determinant of its linear part)."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def affine_of(element: Any, coordinate_system: str) -> np.ndarray:
    """The 3x3 ``(x, y, 1)`` matrix of ``element``'s transformation to ``coordinate_system``."""
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def element_coordinate_systems(element: Any) -> list[str]:
    """Names of the coordinate systems ``element`` has a transformation to."""
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True).keys())
