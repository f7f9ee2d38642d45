"""Shared docstring snippets and the :func:`inject_docs` formatter."""

from __future__ import annotations

from collections.abc import Callable
from inspect import cleandoc
from typing import Any, TypeVar

__all__ = ["d", "inject_docs"]

F = TypeVar("F", bound=Callable[..., Any])

_sdata = """\
sdata
    A :class:`spatialdata.SpatialData` object, or an :class:`anndata.AnnData` with spot/cell coordinates in
    ``.obsm['spatial']`` (and, optionally, legacy images in ``.uns['spatial']``)."""
_table_key = """\
table_key
    Name of the table in ``sdata.tables`` to use. May be omitted when ``sdata`` holds exactly one table."""
_coordinate_system = """\
coordinate_system
    Coordinate system in which coordinates, diameters and images are expressed. Default (``None``): ``'global'``
    when the element lives there, else its only one, else the one it shares with the image in its own
    full-resolution frame (a Visium sample's ``'<id>'``, not ``'<id>_downscaled_hires'``); the choice is logged.
    Micrometres per unit are read from what the platform records (Visium spot diameter, Visium HD bin size,
    Xenium/MERSCOPE micrometre elements) and stored in ``sdata.attrs['stmap_coordinate_units']``."""
_key_added = """\
key_added
    Prefix of the keys under which results are written."""
_copy = """\
copy
    If ``True``, return the result instead of writing it into ``sdata``; if ``False`` (default), write in place
    and return ``None``."""
_seed = """\
seed
    Random seed. The same seed gives the same result on CPU."""
_device = """\
device
    Torch device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, or ``'auto'`` (CUDA when available). ``None`` (default):
    :attr:`stmap.settings.device` (``'cpu'`` unless set)."""
_verbose = """\
verbose
    Show progress bars for long loops. ``None`` (default): :attr:`stmap.settings.verbose` (``True`` unless set)."""
_plot = """\
ax
    Axes to draw into, or for a figure of several panels a sequence (or array) of Axes, one per panel in panel
    order. ``None`` makes a new figure.
figsize
    Size ``(width, height)`` in inches of a new figure; default: from the number and shape of the panels.
dpi
    Dots per inch of a new figure and of the saved file; default: matplotlib's ``rcParams['figure.dpi']`` and
    ``rcParams['savefig.dpi']``.
save
    Path of a file to write the figure to (the format follows the suffix, e.g. ``.png``, ``.pdf``), cropped to its
    content (``bbox_inches='tight'``).
show
    Show the figure. ``None`` shows it unless ``ax`` or ``save`` is given (a saved figure that the plot made is
    closed). ``False`` returns the Axes instead."""
_plot_returns = """\
With ``show=False``, the :class:`~matplotlib.axes.Axes` drawn into (an array of them for a figure of several
panels); else ``None``."""


class _Snippets(dict):
    """Mapping of snippet names to dedented text; used by :func:`inject_docs`."""


d = _Snippets(
    sdata=_sdata,
    table_key=_table_key,
    coordinate_system=_coordinate_system,
    key_added=_key_added,
    copy=_copy,
    seed=_seed,
    device=_device,
    verbose=_verbose,
    plot=_plot,
    plot_returns=_plot_returns,
)


def inject_docs(**extra: str) -> Callable[[F], F]:
    """Fill ``{name}`` placeholders in a docstring with the shared snippets in :data:`d` (and ``extra``).

    Snippets are indented to the indentation of the placeholder's line, so they can be written at column 0.

    Parameters
    ----------
    **extra
        Additional snippets for this function only.

    Returns
    -------
    A decorator that rewrites ``func.__doc__`` and returns ``func``.
    """

    def decorator(func: F) -> F:
        if func.__doc__ is None:
            return func
        snippets = {**d, **extra}
        out: list[str] = []
        for line in cleandoc(func.__doc__).splitlines():
            stripped = line.strip()
            if stripped.startswith("{") and stripped.endswith("}") and stripped[1:-1] in snippets:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(indent + s if s else s for s in snippets[stripped[1:-1]].splitlines())
            else:
                out.append(line)
        func.__doc__ = "\n".join(out)
        return func

    return decorator
