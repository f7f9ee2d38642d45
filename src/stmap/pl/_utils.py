"""Shared plumbing of the plots: saving, showing and returning."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def finish(fig: Any, out: Any, *, own: bool, save: str | Path | None, show: bool | None, return_ax: bool) -> Any:
    """Save ``fig`` if asked, show it (default: when neither saved nor returned), close a figure the plot made.

    Returns ``out`` (the axes) with ``return_ax=True``, else ``None``.
    """
    import matplotlib.pyplot as plt

    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show or (show is None and save is None and not return_ax):
        plt.show()
    elif own and not return_ax:
        plt.close(fig)
    return out if return_ax else None
