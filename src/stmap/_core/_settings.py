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
        Default torch device for models (``"cpu"``, ``"cuda"``, ``"auto"``). Tools take ``device=`` too.
    """

    datasetdir: Path = field(default_factory=_default_data_dir)
    device: str = "cpu"


settings = _Settings()
