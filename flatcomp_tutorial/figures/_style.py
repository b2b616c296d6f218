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

__all__ = ["GRID_ALPHA", "LEGEND_FONTSIZE", "SMALL_FONTSIZE", "MARKERS", "label", "new_axes", "grid_axes", "finish",
           "plain_log_ticks", "lr_batch_handles", "run_colors"]

GRID_ALPHA = 0.3
LEGEND_FONTSIZE = 8     # legends of one or two entries per run
SMALL_FONTSIZE = 7      # legends with many entries
MARKERS = "osD^v<>ph*"  # one marker per category (batch size, bound, quantity)


def label(column: str) -> str:
    """The axis label of a history/results ``column``: :func:`flatcomp_tutorial.measures.label` (the book's one
    table of labels); a column without an entry there: its name with spaces for underscores."""
    return measures.label(column) if column in measures.LABELS else column.replace("_", " ")


def new_axes(ax=None, ncols: int = 1, width: float = 4.2, height: float = 3.2):
    """``(figure, ax)`` of the given axes, or of a new 1 × ``ncols`` row of panels, each ``width`` × ``height``
    inches."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(1, ncols, figsize=(width * ncols, height), constrained_layout=True)
    return fig, ax


def grid_axes(axes, nrows: int, ncols: int, width: float, height: float):
    """``(figure, axes)`` of the given axes reshaped to ``nrows`` × ``ncols``, or of a new grid of panels."""
    if axes is None:
        return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), constrained_layout=True,
                            squeeze=False)
    return np.ravel(axes)[0].figure, np.asarray(axes).reshape(nrows, ncols)


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

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
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
