"""Torch device resolution and seeding (torch is imported lazily)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["resolve_device", "resolve_verbose", "torch_threads", "seed_everything", "rng"]


def resolve_device(device: Any = None):
    """Turn ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'auto'`` or a :class:`torch.device` into a :class:`torch.device`.

    Parameters
    ----------
    device
        ``None`` uses :attr:`stmap.settings.device`. ``'auto'`` picks CUDA when available, else CPU.

    Returns
    -------
    The :class:`torch.device`.

    Raises
    ------
    ValueError
        If the string is not a device, or CUDA is asked for but not available.
    """
    import torch

    from ._settings import settings

    if device is None:
        device = settings.device
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "pass device='cpu' or device='auto'."
        )
    return dev


def seed_everything(seed: int | None) -> np.random.Generator:
    """Seed Python, NumPy and (if imported) torch; return a :class:`numpy.random.Generator` for the caller.

    Parameters
    ----------
    seed
        The seed. ``None`` leaves global generators alone and returns a fresh, unseeded generator.

    Returns
    -------
    A generator seeded with ``seed``.
    """
    if seed is None:
        return np.random.default_rng()
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return np.random.default_rng(seed)


def rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` from a seed or a generator (passed through)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def resolve_verbose(verbose: bool | None) -> bool:
    """``verbose`` as given, or :attr:`stmap.settings.verbose` when ``None``."""
    from ._settings import settings

    return bool(settings.verbose if verbose is None else verbose)


@contextmanager
def torch_threads(n_threads: int | None = None) -> Iterator[None]:
    """Run the block with ``n_threads`` torch CPU threads (default :attr:`stmap.settings.n_threads`), then restore.

    ``None`` in both places leaves torch's thread count alone.
    """
    from ._settings import settings

    n = settings.n_threads if n_threads is None else n_threads
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_threads must be a positive integer or None; got {n!r}.")
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
