"""Figures of the appendix "Execution statistics": the wall time of each chapter's last run against the book's
budget. Draws a given table (:func:`flatcomp_tutorial.notebooks.execution_table`) and returns the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._style import finish, new_axes


def plot_run_times(table: pd.DataFrame, budget_s: float | None = None, ax=None, title: str | None = None):
    """Horizontal bars, one per chapter (``table`` columns ``chapter`` and ``wall_s``, book order from the top), the
    wall time in seconds of the chapter's last recorded run; a dashed vertical line at ``budget_s`` if given."""
    rows = table.dropna(subset=["wall_s"])
    fig, ax = new_axes(ax, width=5.6, height=0.3 * len(rows) + 1.2)
    y = np.arange(len(rows))[::-1]
    ax.barh(y, rows["wall_s"].to_numpy(dtype=float), color="C0")
    ax.set_yticks(y, rows["chapter"].astype(str).tolist())
    if budget_s is not None:
        ax.axvline(budget_s, color="k", ls="--", lw=1, label=f"budget {budget_s:g} s per chapter")
    ax.set(xlabel="wall time of the last run (s)")
    return finish(fig, ax, title, legend={} if budget_s is not None else None, grid="x")
