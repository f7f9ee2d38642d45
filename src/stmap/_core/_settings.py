"""Package-wide settings (verbosity follows :mod:`scanpy` settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["settings"]


def _default_data_dir() -> Path:
    env = os.environ.get("STMAP_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "stmap"


@dataclass
class _Settings:
    """Global options of :mod:`stmap`.

    Attributes
    ----------
    datasetdir
        Where :mod:`stmap.datasets` looks for (and downloads) public data. Defaults to ``$STMAP_DATA_DIR`` or
        ``~/.cache/stmap``.
    device
        Torch device of every model when a tool is called with ``device=None`` (the default): ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
    n_threads
        Torch CPU threads while a tool runs (``torch.set_num_threads``), restored afterwards. ``None`` leaves torch's
        default (one per core). On small machines 1-2 threads are often fastest.
    verbose
        Progress bars and step logs when a tool is called with ``verbose=None`` (the default).
    """

    datasetdir: Path = field(default_factory=_default_data_dir)
    device: str = "cpu"
    n_threads: int | None = None
    verbose: bool = True


settings = _Settings()
