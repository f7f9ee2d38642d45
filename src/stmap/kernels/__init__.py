"""stmap.kernels."""
