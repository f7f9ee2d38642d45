"""Memory the system has available, for the tools that refuse a run that would not fit before starting it."""

from __future__ import annotations

__all__ = ["available_bytes", "MEMORY_SHARE"]

#: Share of the available memory a run may plan to use (the rest: Python objects, allocator slack, other work).
MEMORY_SHARE = 0.85


def available_bytes() -> float | None:
    """Memory the system reports available to new allocations, ``None`` if it cannot be read.

    Linux ``MemAvailable`` (``/proc/meminfo``), else ``psutil`` when it is installed (the same number on Linux).
    """
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.virtual_memory().available)
