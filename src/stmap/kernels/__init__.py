"""stmap.kernels: numba kernels on plain arrays (KDE binning + separable Gaussian convolution, capacity assignment)."""

from ._assign import capacity_assign, largest_remainder
from ._kde import gaussian_kernel_1d, gaussian_smooth, kde_direct, kde_grid, linear_binning

__all__ = [
    "linear_binning",
    "gaussian_smooth",
    "gaussian_kernel_1d",
    "kde_grid",
    "kde_direct",
    "capacity_assign",
    "largest_remainder",
]
