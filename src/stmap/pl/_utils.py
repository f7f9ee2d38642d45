"""Shared plumbing of the plots: trailing parameters, panels, µm axes cropped to the data, colour bars, finishing.

The trailing parameters are ``ax``, ``figsize``, ``dpi``, ``save``, ``show``.
Every ``st.pl`` function ends in :func:`finish` (in the style of scanpy's ``savefig_or_show``): ``save`` writes the
file with ``bbox_inches='tight'`` at ``dpi`` (default: matplotlib's ``rcParams['savefig.dpi']``); ``show=None`` shows
a figure that the plot made unless it was saved (then it is closed); ``show=False`` returns the Axes.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core import _logging as logg
from stmap._core._errors import StmapInputError
from stmap._core._params import Instance, Interval

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.figure import Figure

__all__ = ["PLOT_PARAMS", "finish", "panels", "spatial_axes", "colorbar", "quiet_rendering", "wrap"]

#: Declared constraints of the trailing parameters, shared by every ``st.pl`` function (``validate_params``).
PLOT_PARAMS: dict[str, Any] = {
    "figsize": [Instance((tuple, list)), None],
    "dpi": [Interval(float, 0, None, "neither"), None],
    "save": [Instance((str, Path)), None],
    "show": [Instance((bool,)), None],
}

#: Margin around the data when a spatial panel is cropped to it, as a fraction of the larger side of the data.
MARGIN = 0.04

#: Largest default figure width in inches: a figure wider than this, shown at the width of a documentation page or
#: notebook column, would draw its ticks, labels and legends too small to read. ``figsize`` overrides it.
MAX_WIDTH = 10.0

#: Gap between a panel and its colour bar, and the bar's width, as fractions of the panel's drawn width.
CBAR_PAD, CBAR_WIDTH = 0.04, 0.05


def panels(
    ax: Any,
    n: int,
    *,
    ncols: int = 1,
    panel: tuple[float, float] = (4.0, 3.6),
    figsize: Sequence[float] | None = None,
    dpi: float | None = None,
    what: str = "panels",
    projection: str | None = None,
) -> tuple[Figure, np.ndarray, bool]:
    """The ``n`` Axes to draw into: the ones given, or a new grid of ``ncols`` columns with constrained layout.

    Parameters
    ----------
    ax
        ``None``, one Axes (``n == 1``) or a sequence/array of at least ``n`` Axes.
    n
        Panels to draw.
    ncols
        Columns of a new grid (capped at ``n``).
    panel
        Default ``(width, height)`` of one panel in inches. The figure's default size is the grid of them, scaled
        down to at most :data:`MAX_WIDTH` wide (fonts keep their size, so they stay readable in a page column).
    figsize, dpi
        Size and resolution of a new figure.
    what
        The panels in words, for the error message.
    projection
        Projection of new Axes (e.g. ``'3d'``).

    Returns
    -------
    ``(figure, axes, own)``: the figure, a 1-D object array of the ``n`` Axes in panel order, and whether the figure
    was made here. Unused cells of a new grid are hidden.
    """
    import matplotlib.pyplot as plt

    if ax is not None:
        axs = np.ravel(np.asarray(ax, dtype=object))
        if len(axs) < n:
            raise StmapInputError(f"Pass {n} axes ({what}), got {len(axs)}.")
        return axs[0].get_figure(), axs[:n], False
    ncols = max(1, min(int(ncols), n))
    nrows = int(np.ceil(n / ncols))
    size = fit_width(panel[0] * ncols, panel[1] * nrows) if figsize is None else tuple(figsize)
    subplot_kw = None if projection is None else {"projection": projection}
    fig, grid = plt.subplots(
        nrows, ncols, figsize=size, dpi=dpi, squeeze=False, layout="constrained", subplot_kw=subplot_kw
    )
    flat = grid.ravel()
    for extra in flat[n:]:
        extra.set_axis_off()
    return fig, np.asarray(flat[:n], dtype=object), True


def fit_width(width: float, height: float) -> tuple[float, float]:
    """``(width, height)`` scaled down (aspect kept) to at most :data:`MAX_WIDTH` inches wide."""
    scale = min(1.0, MAX_WIDTH / width) if width > 0 else 1.0
    return width * scale, height * scale


def finish(fig: Figure, axes: Any, *, own: bool, save: str | Path | None, show: bool | None, dpi: float | None) -> Any:
    """Save ``fig`` if asked, then show it, close it or hand back ``axes`` (scanpy's ``savefig_or_show`` rules).

    Parameters
    ----------
    fig
        The figure drawn.
    axes
        What ``show=False`` returns: the Axes, or an array of them.
    own
        Whether the plot made the figure (``ax`` was ``None``).
    save
        Path to write the figure to (``bbox_inches='tight'``), or ``None``.
    show
        ``True``: show, return ``None``. ``False``: return ``axes`` (the figure stays open). ``None``: show a figure
        the plot made and did not save; close a saved one; return ``None``.
    dpi
        Resolution of the saved file; ``None``: ``rcParams['savefig.dpi']``.

    Returns
    -------
    ``axes`` with ``show=False``, else ``None``.
    """
    import matplotlib.pyplot as plt

    if save is not None:
        fig.savefig(save, bbox_inches="tight", dpi=dpi)  # dpi None: rcParams['savefig.dpi']
        logg.info(f"saved figure to {str(save)!r}")
    if show is False:
        return axes
    if show or (own and save is None):
        plt.show()
    elif own:
        plt.close(fig)
    return None


def wrap(text: str, width: int = 24) -> str:
    """``text`` broken into lines of at most ``width`` characters (long class names as titles)."""
    import textwrap

    return text if len(text) <= width else textwrap.fill(text, width=width, break_long_words=False)


# --------------------------------------------------------------------------------------------------------------------
# spatial axes: micrometres, cropped to the data, y down


def _scaled_locator(factor: float) -> Any:
    """A tick locator that puts ticks at round values of ``value * factor`` (e.g. round micrometres)."""
    from matplotlib.ticker import MaxNLocator

    class _Scaled(MaxNLocator):
        def tick_values(self, vmin: float, vmax: float) -> np.ndarray:  # type: ignore[override]  # stubs: Sequence
            return np.asarray(super().tick_values(vmin * factor, vmax * factor), dtype=float) / factor

    return _Scaled(nbins="auto", steps=[1, 2, 2.5, 5, 10])


def _scaled_formatter(factor: float) -> Any:
    """Tick labels showing ``value * factor`` (``%g``, so no offsets or scientific notation for common ranges)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v * factor:.6g}")


def data_limits(xy: np.ndarray, radius: float | np.ndarray | None = None) -> tuple[float, float, float, float]:
    """``(xmin, xmax, ymin, ymax)`` of points (discs of ``radius``) plus :data:`MARGIN` of the larger side."""
    xy = np.asarray(xy, dtype=float)[:, :2]
    ok = np.isfinite(xy).all(axis=1)
    if not ok.any():
        return 0.0, 1.0, 0.0, 1.0
    r = np.zeros(len(xy)) if radius is None else np.broadcast_to(np.asarray(radius, dtype=float), len(xy))
    r = np.where(np.isfinite(r), r, 0.0)[ok]
    lo, hi = (xy[ok] - r[:, None]).min(axis=0), (xy[ok] + r[:, None]).max(axis=0)
    pad = MARGIN * max(float(np.max(hi - lo)), 1e-9)
    return float(lo[0] - pad), float(hi[0] + pad), float(lo[1] - pad), float(hi[1] + pad)


def spatial_axes(
    ax: Axes, um_per_unit: float | None, limits: Sequence[float] | None = None, *, labels: bool = True
) -> None:
    """Equal aspect, y down, limits ``(xmin, xmax, ymin, ymax)``, and axes labelled in µm when the unit is known.

    Drawing stays in coordinate-system units; ticks are placed at round micrometres and labelled in micrometres
    (``um_per_unit`` µm per unit). Without a known unit the axes say so: ``x (coordinate units)``.
    """
    if limits is not None:
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[3], limits[2])  # y down, like images
    elif not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_aspect("equal")
    if um_per_unit is not None and np.isfinite(um_per_unit) and um_per_unit > 0:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(_scaled_locator(float(um_per_unit)))
            axis.set_major_formatter(_scaled_formatter(float(um_per_unit)))
        xl, yl = "x (µm)", "y (µm)"
    else:
        xl, yl = "x (coordinate units)", "y (coordinate units)"
    ax.set_xlabel(xl if labels else "")
    ax.set_ylabel(yl if labels else "")


def colorbar(fig: Any, mappable: Any, ax: Any, label: str, *, factor: float = 1.0, **kw: Any) -> Colorbar:
    """A colour bar beside ``ax`` (seen by the layout engine) with ``label`` and ticks at round ``value * factor``.

    For one Axes the bar is an inset of it, just right of the panel as drawn (after equal aspect shrinks it), so it
    stays beside its panel however wide the grid cell is and never reaches above the panel into its title; the
    layout engine makes room for it. For a sequence of Axes (a bar shared by a grid) it is the figure's colour bar
    beside the whole grid. ``factor`` converts the drawn values to the unit of the label (e.g. per µm² -> per mm²)
    without touching the data.
    """
    from matplotlib.axes import Axes as _Axes

    shrink = float(kw.pop("shrink", 0.85))
    if isinstance(ax, _Axes):
        cax = ax.inset_axes((1.0 + CBAR_PAD, (1.0 - shrink) / 2, CBAR_WIDTH, shrink))
        cb = fig.colorbar(mappable, cax=cax, **kw)
    else:
        cb = fig.colorbar(mappable, ax=ax, shrink=shrink, **kw)
    if factor != 1.0:
        cb.locator = _scaled_locator(factor)
        cb.formatter = _scaled_formatter(factor)
    else:
        from matplotlib.ticker import ScalarFormatter

        fmt = ScalarFormatter(useMathText=True)
        fmt.set_powerlimits((-3, 4))
        cb.formatter = fmt
    cb.set_label(label)
    cb.update_ticks()
    return cb


def readable_factor(vmax: float) -> tuple[float, str]:
    """A power of ten bringing ``vmax`` into ``[1, 1000)`` and its name for a label (``''``, ``'10⁻⁵ '``)."""
    if not np.isfinite(vmax) or vmax <= 0 or 1 <= vmax < 1000:
        return 1.0, ""
    e = int(np.floor(np.log10(vmax)))
    e = e - e % 3 if e > 0 else e
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    return 10.0 ** (-e), f"10{str(e).translate(sup)} "


# --------------------------------------------------------------------------------------------------------------------
# third-party noise


class _DropRecords(logging.Filter):
    """Drop spatialdata-plot log records that are advice or restate what the plot already says."""

    _NOISE = ("Annotating points with", "NaN values in color data", "Found 0 NaN")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.getMessage())
        return not any(n in msg for n in self._NOISE)


@contextlib.contextmanager
def quiet_rendering() -> Iterator[None]:
    """Silence the known, non-actionable messages of the libraries the plots render with (and only those).

    spatialdata-plot advises moving annotations into the points' files and reports NaN colour values (drawn in the
    NaN colour, as documented); it also triggers deprecation notices of matplotlib and anndata that are its own to
    fix. Real problems (e.g. a palette shorter than the categories) still come through.
    """
    drop = _DropRecords()
    loggers = [logging.getLogger(n) for n in ("spatialdata_plot._logging", "spatialdata_plot")]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*set_bad function will be deprecated", category=Warning)
            warnings.filterwarnings("ignore", message=r".*dtype argument is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"No data for colormapping provided", category=UserWarning)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)
