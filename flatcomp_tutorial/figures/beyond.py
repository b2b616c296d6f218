"""Figures of the chapter "Beyond the paper" (runs grouped by training method: bars, scatter plots, robustness
radii) and the headline figure of the introduction "Flat minima, compressed representations". Each draws given
tables and returns the figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..history import phase_rows
from ._style import LEGEND_FONTSIZE, SMALL_FONTSIZE, finish, label, new_axes, plain_log_ticks


def plot_group_bars(table: pd.DataFrame, columns: dict, group: str = "method", axes=None, title: str | None = None,
                    logy=()):
    """One panel per entry of ``columns`` (``{column: axis label}``): a bar per value of ``group`` (in order of
    appearance) at the mean over its rows, with every row (e.g. every seed) as a black dot. Columns named in
    ``logy`` get a log y axis."""
    fig, axes = new_axes(axes, ncols=len(columns), width=3.3, height=3.4)
    axes = np.atleast_1d(axes)
    groups = list(dict.fromkeys(table[group]))
    for ax, (col, ylab) in zip(axes, columns.items()):
        for k, g in enumerate(groups):
            vals = table.loc[table[group] == g, col].astype(float).to_numpy()
            ax.bar(k, np.mean(vals), color=f"C{k}", alpha=0.75)
            ax.plot(np.full(len(vals), k), vals, "k.", ms=5)
        ax.set_xticks(range(len(groups)), groups, rotation=40, ha="right", fontsize=LEGEND_FONTSIZE)
        ax.set(ylabel=ylab, yscale="log" if col in logy else "linear")
    return finish(fig, axes, title, grid="y", which="both")


def plot_group_scatter(table: pd.DataFrame, x: str, columns: dict, group: str = "method", axes=None,
                       xlabel: str | None = None, title: str | None = None, logx: bool = False, logy=()):
    """Scatter of each column in ``columns`` (``{column: axis label}``) against ``x`` over the rows of ``table``
    (one point per run), colour = ``group``. Columns named in ``logy`` get a log y axis."""
    fig, axes = new_axes(axes, ncols=len(columns), width=3.9, height=3.4)
    axes = np.atleast_1d(axes)
    groups = list(dict.fromkeys(table[group]))
    for ax, (col, ylab) in zip(axes, columns.items()):
        for k, g in enumerate(groups):
            rows = table[table[group] == g]
            ax.plot(rows[x], rows[col], "o", color=f"C{k}", label=str(g), ms=6, alpha=0.85)
        ax.set(xlabel=xlabel or label(x), ylabel=ylab, xscale="log" if logx else "linear",
               yscale="log" if col in logy else "linear")
    # one legend for all panels, below them, so that it never hides a run
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=SMALL_FONTSIZE)
    return finish(fig, axes, title, which="both")


def plot_radii(table: pd.DataFrame, mls: str = "inputs_mean_mls", group: str = "method", ax=None,
               title: str | None = None):
    """Robustness radii of each run against its mean MLS (log–log): the first-order radius that MLS guarantees,
    margin/(√2 MLS) (open markers), and the empirical radius min(PGD, segment) (filled), both medians over the
    attacked inputs (``robustness.robustness_measures`` columns); grey line: the median segment radius over all
    runs, the scale set by the data (about half the distance to the other class)."""
    fig, ax = new_axes(ax, width=5.2, height=3.8)
    groups = list(dict.fromkeys(table[group]))
    for k, g in enumerate(groups):
        rows = table[table[group] == g]
        ax.plot(rows[mls], rows["median_mls_radius"], "o", mfc="none", color=f"C{k}", ms=7)
        ax.plot(rows[mls], rows["median_radius"], "o", color=f"C{k}", ms=6, label=str(g))
    ax.axhline(float(np.median(table["median_segment_radius"])), color="grey", lw=1, ls="--")
    ax.set(xscale="log", yscale="log", xlabel=label(mls), ylabel="median L2 radius (input units)")
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    handles = ax.get_legend_handles_labels()[0]
    handles += [plt.Line2D([], [], color="k", marker="o", mfc="none", ls="", label="first order: margin/(√2 MLS)"),
                plt.Line2D([], [], color="k", marker="o", ls="", label="empirical: min(PGD, segment)"),
                plt.Line2D([], [], color="grey", ls="--", label="median segment radius")]
    return finish(fig, ax, title, legend={"handles": handles, "fontsize": SMALL_FONTSIZE}, which="both")


def plot_headline(history: pd.DataFrame, sharpness: str = "trace_g", compression: str = "mean_mls", axes=None,
                  title: str | None = None, sharpness_label: str | None = None, compression_label: str | None = None):
    """The book's result in one figure, from one run's history: (left) ``sharpness`` and ``compression`` against
    the SGD step, each divided by its value at the first late-phase checkpoint (dotted line: start of the late
    phase); (right) ``compression`` against ``sharpness`` over the late-phase checkpoints, coloured by step (a
    history without a ``phase`` column counts as all late). Axis labels: ``sharpness_label`` and
    ``compression_label``, else the column names with spaces for underscores."""
    fig, axes = new_axes(axes, ncols=2, width=4.6, height=3.5)
    left, right = axes
    late = phase_rows(history, "late") if "phase" in history else history
    ref = late.iloc[0] if len(late) else history.iloc[0]
    s_label = sharpness_label or sharpness.replace("_", " ")
    c_label = compression_label or compression.replace("_", " ")
    for k, (col, name) in enumerate(((sharpness, "sharpness: " + s_label), (compression, "compression: " + c_label))):
        left.plot(history["step"], history[col] / ref[col], "-", marker=".", color=f"C{k}", label=name)
    if len(late):
        left.axvline(late["step"].iloc[0], color="grey", ls=":", lw=1)
    left.set(xlabel=label("step"), ylabel="value / value at the late-phase start")
    left.legend(fontsize=LEGEND_FONTSIZE)
    sc = right.scatter(late[sharpness], late[compression], c=late["step"], cmap="viridis", s=25)
    fig.colorbar(sc, ax=right, label=label("step"))
    right.set(xlabel=s_label, ylabel=c_label)
    return finish(fig, axes, title)


def plot_radius_scatter(radii: dict, ax=None, title: str | None = None):
    """Per-input first-order radius margin/(√2 MLS) (x) against the empirical radius min(PGD, segment) (y), one
    colour per run (``{label: (first_order, empirical)}`` arrays), log–log with the diagonal y = x: points below it
    are inputs whose first-order radius overstates the distance to an actual adversarial example."""
    fig, ax = new_axes(ax, width=4.8, height=4.0)
    lo, hi = np.inf, 0.0
    for k, (run, (first, emp)) in enumerate(radii.items()):
        first, emp = np.asarray(first, float), np.asarray(emp, float)
        ok = np.isfinite(first) & np.isfinite(emp) & (first > 0) & (emp > 0)
        ax.plot(first[ok], emp[ok], "o", color=f"C{k}", ms=4, alpha=0.7, label=run)
        if ok.any():
            lo, hi = min(lo, first[ok].min(), emp[ok].min()), max(hi, first[ok].max(), emp[ok].max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xscale="log", yscale="log", xlabel="first-order radius margin/(√2 MLS)",
           ylabel="empirical radius min(PGD, segment)")
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    return finish(fig, ax, title, legend={"fontsize": LEGEND_FONTSIZE}, which="both")
