"""What every figure shares: new-or-given axes, the grid/legend/title tail, log-axis tick labels, marker and font
sizes, and axis labels (looked up in the one table, :data:`flatcomp_tutorial.measures.LABELS`)."""
from __future__ import annotations

from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import measures

__all__ = ["GRID_ALPHA", "MAX_WIDTH", "MAX_COLS", "LEGEND_FONTSIZE", "SMALL_FONTSIZE", "MARKERS", "RC",
           "label", "new_axes", "grid_axes", "finish",
           "plain_log_ticks", "lr_batch_handles", "run_colors",
           "is_matrix_layout"]

GRID_ALPHA = 0.3
# Legible at the width the book shows a figure (about 680 px): figures are at most MAX_WIDTH inches wide at 100 dpi,
# at most MAX_COLS panels per row, and no text is smaller than 9 pt.
MAX_WIDTH = 6.8         # inches
MAX_COLS = 2
LEGEND_FONTSIZE = 9     # legends of one or two entries per run
SMALL_FONTSIZE = 9      # legends with many entries
MARKERS = "osD^v<>ph*"  # one marker per category (batch size, bound, quantity)
RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
      "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11, "figure.dpi": 100,
      "savefig.dpi": 200}
plt.rcParams.update(RC)   # the book's figure style, set once when the figures are imported


def _sharp_inline_figures() -> None:
    """In a Jupyter kernel, figures are shown as 2x PNG at their logical size ("retina"): sharp on dense screens
    and in the HTML book, which keeps the logical width."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and "inline" in str(plt.get_backend()):
        set_matplotlib_formats("retina")


_sharp_inline_figures()


def label(column: str) -> str:
    """The axis label of a history/results ``column``: :func:`flatcomp_tutorial.measures.label` (the book's one
    table of labels); a column without an entry there: its name with spaces for underscores."""
    return measures.label(column) if column in measures.LABELS else column.replace("_", " ")


def _panels(n: int, width: float, height: float):
    """A new figure of ``n`` panels, at most :data:`MAX_COLS` per row (row-major), each ``width`` × ``height``
    inches scaled down so that the figure is at most :data:`MAX_WIDTH` wide; ``(figure, flat array of n axes)``."""
    cols = min(n, MAX_COLS)
    rows = -(-n // cols)
    scale = min(1.0, MAX_WIDTH / (width * cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols * scale, height * rows * scale),
                             constrained_layout=True, squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


def new_axes(ax=None, ncols: int = 1, width: float = 4.2, height: float = 3.2):
    """``(figure, ax)`` of the given axes, or of ``ncols`` new panels of ``width`` × ``height`` inches (at most
    :data:`MAX_COLS` per row, scaled to :data:`MAX_WIDTH`): one Axes for ``ncols=1``, else an array of ``ncols``."""
    if ax is not None:
        return ax.figure, ax
    fig, axes = _panels(ncols, width, height)
    return fig, (axes[0] if ncols == 1 else axes)


def grid_axes(axes, nrows: int, ncols: int, width: float, height: float):
    """``(figure, axes)``: the given axes, or ``nrows`` × ``ncols`` new panels laid out at most :data:`MAX_COLS` per
    row (panel ``[i, j]`` is the ``i * ncols + j``-th in reading order); ``axes`` is an ``nrows`` × ``ncols`` array."""
    if axes is None:
        fig, flat = _panels(nrows * ncols, width, height)
        return fig, flat.reshape(nrows, ncols)
    return np.ravel(axes)[0].figure, np.asarray(axes).reshape(nrows, ncols)


def is_matrix_layout(axes) -> bool:
    """Whether a 2-d ``axes`` array is drawn as the matrix it indexes (then only the outer panels need axis labels)
    or was reflowed to :data:`MAX_COLS` per row (then every panel needs its own)."""
    axes = np.asarray(axes)
    if axes.ndim != 2 or axes.size < 2:
        return True
    grid = [ax.get_subplotspec() for ax in axes.ravel()]
    return all(g is not None and g.colspan.start == j for g, j in zip(grid, np.tile(np.arange(axes.shape[1]),
                                                                                        axes.shape[0])))


def finish(fig: Figure, axes, title: str | None = None, legend: dict | None = None, legend_on: str = "first",
           which: str = "major", grid: str = "both") -> Figure:
    """The tail every figure shares: a light grid on every panel (``which`` ticks, along ``grid`` = "both", "x" or
    "y"), a legend (``legend``: its keyword arguments, e.g. ``{"fontsize": 8}``; None: none) on the first panel or
    on ``legend_on="all"`` panels, and ``title``: the panel's title for a single Axes, else the figure's."""
    single = isinstance(axes, Axes)
    panels = [axes] if single else list(np.ravel(axes))
    for ax in panels:
        ax.grid(alpha=GRID_ALPHA, which=which, axis=grid)
    if legend is not None:
        for ax in panels if legend_on == "all" else panels[:1]:
            ax.legend(**legend)
    if title:
        if single:
            axes.set_title(title)
        else:
            fig.suptitle(title)
    return fig


def plain_log_ticks(axis) -> None:
    """Plain-number labels (e.g. 0.01, 30) on a log-scaled ``axis`` and no minor-tick labels (they overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))   # 1-2-5: with 3 as well, 2 and 3 collide
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def lr_batch_handles(lrs: Sequence[float], batch_sizes: Sequence[float]) -> list[Line2D]:
    """Legend entries of the learning-rate × batch-size figures: colour C<k> = k-th learning rate, marker = batch
    size (``MARKERS``)."""
    handles = [Line2D([], [], color=f"C{k}", marker="o", ls="", label=f"η = {lr:g}") for k, lr in enumerate(lrs)]
    handles += [Line2D([], [], color="grey", marker=MARKERS[k % len(MARKERS)], ls="", label=f"B = {b:g}")
                for k, b in enumerate(batch_sizes)]
    return handles


def run_colors(labels: Iterable) -> dict:
    """``{label: "C<k>"}`` in order of first appearance (one colour per run or group)."""
    return {g: f"C{k}" for k, g in enumerate(dict.fromkeys(labels))}
