"""Input errors: each names the problem and the fix, and is raised before anything is modified."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["StmapInputError", "unknown_key"]


class StmapInputError(ValueError):
    """Raised when the input cannot be used as given; the message says what is wrong and how to fix it."""


class StmapKeyError(StmapInputError, KeyError):
    """A named key/element/table does not exist; the message lists what exists."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


StmapInputError.__module__ = StmapKeyError.__module__ = "stmap"  # public as st.StmapInputError / st.StmapKeyError


def unknown_key(what: str, key: str, available: Iterable[str], where: str = "", hint: str = "") -> StmapKeyError:
    """Build the error for an unknown key, listing what exists."""
    avail = sorted(map(str, available))
    listing = ", ".join(repr(a) for a in avail[:50]) + (", ..." if len(avail) > 50 else "") if avail else "none"
    loc = f" in {where}" if where else ""
    msg = f"{what} {key!r} not found{loc}. Available: {listing}."
    if hint:
        msg += f" {hint}"
    return StmapKeyError(msg)
