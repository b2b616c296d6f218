"""Figures of the reproduction chapters ("Reproduction I: the late phase", "Reproduction II: hyper-parameters and
architectures"): time courses with the late phase marked, correlation forest plots, and scatter plots over the runs
of a sweep. Each draws given histories or result tables and returns the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..history import late_start_step
from ._style import (LEGEND_FONTSIZE, SMALL_FONTSIZE, finish, grid_axes, is_matrix_layout, label, new_axes,
                     plain_log_ticks)

SHARPNESS_COLUMNS = ("trace_h", "trace_g", "lambda_max", "test_trace_h")  # drawn on a log axis


def _lr_over_b(results: pd.DataFrame, color: str) -> pd.DataFrame:
    """``results`` with the column ``lr_over_b`` = η/B added when it is the colour and missing."""
    df = results.copy()
    if color == "lr_over_b" and color not in df:
        df[color] = df["lr"] / df["batch_size"]
    return df


def _log_norm(c: np.ndarray):
    """A log colour scale over ``c`` when every value is positive and they are not all equal, else None."""
    from matplotlib.colors import LogNorm

    return LogNorm(c.min(), c.max()) if (c > 0).all() and c.min() < c.max() else None


def plot_late_phase(histories: dict, columns=("train_loss", "trace_h", "lambda_max", "mean_mls", "mean_log_lvr",
                                                "mean_local_dim"), axes=None, ncols: int = 2, title: str | None = None):
    """Time courses of several measures for several runs (``{label: TrainResult.history}``), one panel per column,
    x = SGD step, the start of each run's late phase marked by a dotted vertical line in the run's colour.
    ``trace_h`` is drawn with a ±1 stderr band and, where present, the exact ``trace_g`` dashed on the same panel;
    ``train_loss`` on a log scale."""
    columns = list(columns)
    fig, axes = grid_axes(axes, int(np.ceil(len(columns) / ncols)), ncols, width=4.0, height=3.0)
    axes = np.ravel(axes)
    for k, (run, h) in enumerate(histories.items()):
        color = f"C{k}"
        start = late_start_step(h)
        for ax, col in zip(axes, columns):
            if col not in h:
                continue
            ax.plot(h["step"], h[col], "-", color=color, lw=1.4, label=run)
            if col == "trace_h" and "trace_h_stderr" in h:
                ax.fill_between(h["step"], h[col] - h["trace_h_stderr"], h[col] + h["trace_h_stderr"], color=color,
                                alpha=0.2, lw=0)
                if "trace_g" in h:
                    ax.plot(h["step"], h["trace_g"], "--", color=color, lw=1.0, label=f"{run}: Tr G (exact)")
            if np.isfinite(start):
                ax.axvline(start, color=color, ls=":", lw=1.0)
    for ax, col in zip(axes, columns):
        ax.set(xlabel=label("step"), ylabel=label(col) + ("  ± stderr" if col == "trace_h" else ""))
        if col == "train_loss":
            ax.set_yscale("log")
    for ax in axes[len(columns):]:
        ax.axis("off")
    axes[min(1, len(columns) - 1)].legend(fontsize=SMALL_FONTSIZE)
    return finish(fig, axes[:len(columns)], title and title + "  (dotted: start of the late phase)")


def plot_train_test_sharpness(histories: dict, train: str = "trace_h", test: str = "test_trace_h",
                              compression: str = "mean_log_lvr", axes=None, title: str | None = None):
    """Sharpness on training versus test data over training (left, log scale; solid train, dashed test) and a
    compression measure (right), for ``{label: history}``; dotted lines mark the start of each late phase."""
    fig, axes = new_axes(axes, ncols=2, width=4.6, height=3.3)
    for k, (run, h) in enumerate(histories.items()):
        color, start = f"C{k}", late_start_step(h)
        axes[0].plot(h["step"], h[train], "-", color=color, label=f"{run}: train")
        axes[0].plot(h["step"], h[test], "--", color=color, label=f"{run}: test")
        axes[1].plot(h["step"], h[compression], "-", color=color, label=run)
        for ax in axes:
            if np.isfinite(start):
                ax.axvline(start, color=color, ls=":", lw=1.0)
    axes[0].set(xlabel=label("step"), ylabel=label(train) + "  (solid: train, dashed: test)", yscale="log")
    plain_log_ticks(axes[0].yaxis)
    axes[1].set(xlabel=label("step"), ylabel=label(compression))
    return finish(fig, axes, title, legend={"fontsize": SMALL_FONTSIZE}, legend_on="all")


def plot_correlations(table: pd.DataFrame, method: str = "spearman", group: str | None = None, ax=None,
                      title: str | None = None):
    """Forest plot of correlations with their CIs: one row per (sharpness, compression) pair of a
    :func:`~flatcomp_tutorial.experiments.summarize`-style table (``method`` rows only), one marker colour per value
    of ``group`` (a column, e.g. ``"run"`` or ``"arch"``), points at ``r``, bars from ``ci_low`` to ``ci_high``."""
    t = table[table["method"] == method]
    pairs = list(dict.fromkeys(zip(t["sharpness"], t["compression"])))
    groups = list(dict.fromkeys(t[group])) if group else [None]
    fig, ax = new_axes(ax, width=5.6, height=0.32 * len(pairs) * max(1, len(groups)) + 1.2)
    offsets = np.linspace(-0.3, 0.3, len(groups)) if len(groups) > 1 else [0.0]
    for g, (gname, off) in enumerate(zip(groups, offsets)):
        tg = t if gname is None else t[t[group] == gname]
        for i, pair in enumerate(pairs):
            row = tg[(tg["sharpness"] == pair[0]) & (tg["compression"] == pair[1])]
            if not len(row):
                continue
            r = row.iloc[0]
            y = len(pairs) - 1 - i + off
            xerr = None
            if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
                xerr = [[r["r"] - r["ci_low"]], [r["ci_high"] - r["r"]]]
            ax.errorbar(r["r"], y, xerr=xerr, fmt="o", color=f"C{g}", ms=4, capsize=2,
                        label=str(gname) if (gname is not None and i == 0) else None)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(pairs)))
    ax.set_yticklabels([f"{s} vs {c}" for s, c in pairs[::-1]], fontsize=LEGEND_FONTSIZE)
    ax.set(xlabel=f"{method.capitalize()} correlation (95% CI)", xlim=(-1.05, 1.05))
    return finish(fig, ax, title, legend={"fontsize": SMALL_FONTSIZE, "title": group} if group else None, grid="x")


def plot_sweep_scatter(results: pd.DataFrame, sharpness=("trace_h", "lambda_max", "relative_flatness"),
                       compression=("mean_mls", "mean_log_lvr", "mean_local_dim", "nmls"), color: str = "lr_over_b",
                       axes=None, title: str | None = None):
    """Grid of scatter plots, sharpness (rows) vs compression (columns), one point per run of a results table (e.g.
    its matched-loss rows), coloured by ``color`` (``"lr_over_b"``: η/B, log colour scale); sharpness on a log axis."""
    df = _lr_over_b(results, color)
    c = df[color].astype(float).to_numpy()
    norm = _log_norm(c)
    fig, axes = grid_axes(axes, len(sharpness), len(compression), width=3.1, height=2.6)
    matrix = is_matrix_layout(axes)
    sc = None
    for i, s in enumerate(sharpness):
        for j, comp in enumerate(compression):
            ax = axes[i, j]
            sc = ax.scatter(df[comp], df[s], c=c, cmap="viridis", norm=norm, s=18)
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
            if i == len(sharpness) - 1 or not matrix:
                ax.set_xlabel(label(comp))
            if j == 0 or not matrix:
                ax.set_ylabel(label(s))
    if sc is not None:
        fig.colorbar(sc, ax=axes, label=label(color), shrink=0.8)
    return finish(fig, axes, title)


def plot_vs_lr_over_batch(results: pd.DataFrame, columns=("trace_h", "mean_mls", "mean_log_lvr", "mean_local_dim"),
                          axes=None, title: str | None = None):
    """Each column versus η/B (log x axis), one point per run, marker per batch size, with the mean over runs at each
    η/B joined by a line; sharpness columns (``SHARPNESS_COLUMNS``) on a log y axis."""
    df = results.copy()
    df["lr_over_b"] = df["lr"] / df["batch_size"]
    fig, axes = new_axes(axes, ncols=len(columns), width=3.3, height=3.0)
    axes = np.atleast_1d(axes)
    markers = "os^vDP*X"
    for ax, col in zip(axes, columns):
        for k, (b, g) in enumerate(df.groupby("batch_size")):
            ax.scatter(g["lr_over_b"], g[col], marker=markers[k % len(markers)], s=20, label=f"B = {b}")
        mean = df.groupby("lr_over_b")[col].mean()
        ax.plot(mean.index, mean.values, "k-", lw=0.8, alpha=0.6)
        ax.set(xscale="log", xlabel=label("lr_over_b"), ylabel=label(col))
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.xaxis)
        if col in SHARPNESS_COLUMNS:
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
    return finish(fig, axes, title, legend={"fontsize": SMALL_FONTSIZE})


def plot_train_vs_test(results: pd.DataFrame, train: str = "trace_h", test: str = "test_trace_h",
                       color: str = "lr_over_b", ax=None, title: str | None = None):
    """Test-data sharpness against training-data sharpness, one point per run, log–log, with the diagonal."""
    from matplotlib.colors import LogNorm

    df = _lr_over_b(results, color)
    fig, ax = new_axes(ax, width=4.4, height=3.6)
    c = df[color].astype(float).to_numpy()
    sc = ax.scatter(df[train], df[test], c=c, cmap="viridis", norm=LogNorm(c.min(), c.max()) if c.min() > 0 else None,
                    s=20)
    lo = np.nanmin(np.r_[df[train], df[test]])
    hi = np.nanmax(np.r_[df[train], df[test]])
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="test = train")
    ax.set(xscale="log", yscale="log", xlabel=label(train) + " (training data)", ylabel=label(test))
    fig.colorbar(sc, ax=ax, label=label(color))
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    return finish(fig, ax, title, legend={"fontsize": SMALL_FONTSIZE})


def plot_seed_changes(table: pd.DataFrame, intervals: pd.DataFrame, pairs=(("d:trace_g", "d:mean_mls"),),
                      group: str = "arm", labels: dict | None = None, axes=None, title: str | None = None):
    """Per-run late-phase changes across seeds: one panel per ``(x, y)`` pair of columns of ``table`` (one row
    per run, :func:`~flatcomp_tutorial.late.late_phase_table`; at most two panels per row), one small point per
    seed and, per value of ``group``, its mean with the across-seed interval in both directions (bars from
    ``ci_low`` to ``ci_high`` of ``intervals``, :func:`~flatcomp_tutorial.late.seed_intervals`). Dotted lines
    mark zero change. Axis labels: ``labels[column]``, else the column name."""
    pairs = list(pairs)
    ncols = min(2, len(pairs))
    nrows = -(-len(pairs) // ncols)
    fig, grid = grid_axes(axes, nrows, ncols, width=4.6, height=3.8)
    panels = list(np.ravel(grid))
    names = labels or {}
    groups = list(dict.fromkeys(table[group]))
    iv = intervals.set_index([group, "measure"])
    for ax, (x, y) in zip(panels, pairs):
        for k, g in enumerate(groups):
            rows = table[table[group] == g]
            ax.plot(rows[x], rows[y], "o", color=f"C{k}", ms=3.5, alpha=0.45)
            cx, cy = iv.loc[(g, x)], iv.loc[(g, y)]
            ax.errorbar(cx["mean"], cy["mean"], fmt="s", color=f"C{k}", ms=6, capsize=3, label=str(g),
                        xerr=[[cx["mean"] - cx["ci_low"]], [cx["ci_high"] - cx["mean"]]],
                        yerr=[[cy["mean"] - cy["ci_low"]], [cy["ci_high"] - cy["mean"]]])
        ax.axhline(0, color="grey", ls=":", lw=1)
        ax.axvline(0, color="grey", ls=":", lw=1)
        ax.set(xlabel=names.get(x, x), ylabel=names.get(y, y))
    for ax in panels[len(pairs):]:
        ax.set_visible(False)
    # one legend for all panels, below them, so that it never hides an arm's points
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=SMALL_FONTSIZE,
               title=group)
    return finish(fig, grid if len(panels) > 1 else panels[0], title)
