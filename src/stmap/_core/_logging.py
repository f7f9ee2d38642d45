"""Scanpy-style logging: ``st.*`` output looks like ``sc.*`` output and obeys ``sc.settings.verbosity``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["info", "warning", "debug", "hint"]


def _logg():
    from scanpy import logging as logg  # scanpy is heavy; import on first log

    return logg


def info(msg: str, *, time: datetime | None = None, deep: str | None = None) -> datetime:
    """Log at info level; returns the current time, to be passed back as ``time=`` to report a duration."""
    return _logg().info(msg, time=time, deep=deep)


def warning(msg: str, **kwargs: Any) -> datetime:
    """Log a warning (printed at default verbosity)."""
    return _logg().warning(msg, **kwargs)


def hint(msg: str, **kwargs: Any) -> datetime:
    """Log a hint."""
    return _logg().hint(msg, **kwargs)


def debug(msg: str, **kwargs: Any) -> datetime:
    """Log at debug level."""
    return _logg().debug(msg, **kwargs)
