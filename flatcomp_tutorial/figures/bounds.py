"""Figures of the bounds chapters ("Flatness implies compression: the bound", "Network-wide and
reparametrization-invariant bounds") and of the rescaling experiment of "Measuring sharpness": the slack of each
step of B4, the AM–GM step for a geometric spectrum, slack across networks, and measures under a rescaling c.
Each draws given data (or a closed-form toy) and returns the figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import numpy as np
import pandas as pd

from ..toys import amgm_gap, geometric_spectrum
from ._style import LEGEND_FONTSIZE, MARKERS, SMALL_FONTSIZE, finish, new_axes, plain_log_ticks, run_colors


def plot_b4_steps(steps: dict, ax=None, title: str | None = None):
    """Stacked bars, one per network, of the slack (nats) of each link of B4's chain, from
    ``{network label: bounds.b4_step_slacks(...)}``; rows of kind "step" are stacked (they add up to B4's
    RHS − LHS, marked by a black tick), the "extra" block-trace link (Tr G_{W_1} ≤ Tr G) is drawn hatched on top."""
    fig, ax = new_axes(ax, width=max(4.2, 1.3 * len(steps) + 2.5), height=3.4)
    labels = list(steps)
    first = next(iter(steps.values()))
    names = list(first.loc[first["kind"] == "step", "step"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    for k, name in enumerate(names):
        vals = np.array([float(steps[l].set_index("step").loc[name, "slack"]) for l in labels])
        vals = np.clip(vals, 0.0, None)  # round-off can make an exact step -1e-17
        ax.bar(x, vals, bottom=bottom, color=colors[k % len(colors)], label=name, width=0.6)
        bottom += vals

    def of_kind(kind: str) -> np.ndarray:
        return np.array([float(steps[l].loc[steps[l]["kind"] == kind, "slack"].iloc[0]) for l in labels])

    ax.scatter(x, of_kind("total"), marker="_", s=400, color="k", zorder=3, label="total = B4 RHS − LHS")
    extra = first.loc[first["kind"] == "extra", "step"]
    if len(extra):
        ax.bar(x, of_kind("extra"), bottom=bottom, color="none", edgecolor="grey", hatch="//", width=0.6,
               label=f"{extra.iloc[0]} (Tr G form only)")
    ax.set_xticks(x, labels)
    ax.set(ylabel="slack of each step (nats)", xlabel="network")
    return finish(fig, ax, title, legend={"fontsize": LEGEND_FONTSIZE, "loc": "upper left"}, grid="y")


def plot_amgm(rho: float = 0.7, r: int = 10, sigma1: float = 1.0, axes=None):
    """AM–GM step of B4 for a geometric Jacobian spectrum σ_j = σ_1 ρ^{j−1} (:mod:`flatcomp_tutorial.toys`). Left:
    the spectrum. Right: log LVR and its AM–GM bound (r/2) log(Σσ²/r) as functions of ρ (current ρ marked); the gap
    closes only at ρ = 1."""
    fig, axes = new_axes(axes, ncols=2, width=4.2, height=3.2)
    ax_s, ax_b = axes
    s = geometric_spectrum(r, rho, sigma1)
    ax_s.semilogy(np.arange(1, r + 1), s, "o-")
    ax_s.set(xlabel="index j", ylabel="singular value σ_j of J_x", title=f"spectrum: r={r}, ρ={rho:.2f}")
    grid = np.linspace(0.05, 1.0, 96)
    vals = np.array([amgm_gap(geometric_spectrum(r, g, sigma1)) for g in grid])
    ax_b.plot(grid, vals[:, 0], label="log LVR = Σ log σ_j")
    ax_b.plot(grid, vals[:, 1], "--", label="AM–GM bound (r/2) log(Σσ²/r)")
    lv, bd = amgm_gap(s)
    ax_b.vlines(rho, lv, bd, color="k", lw=2, label=f"slack at ρ: {bd - lv:.2f} nats")
    ax_b.set(xlabel="decay ratio ρ = σ_{j+1}/σ_j", ylabel="log volume (nats)", title="AM–GM tightness")
    finish(fig, ax_s)
    return finish(fig, ax_b, legend={"fontsize": LEGEND_FONTSIZE})


def plot_slack_by_network(slacks: pd.DataFrame, ax=None, title: str | None = None):
    """Slack (RHS/LHS, log scale) of several bounds across networks: ``slacks`` has one row per network (index =
    network label) and one column per bound (e.g. "B1", "B2", "B6"); a dashed line marks slack 1 (a tight bound)."""
    fig, ax = new_axes(ax, width=max(4.2, 0.9 * len(slacks) + 2.5), height=3.4)
    x = np.arange(len(slacks))
    for k, col in enumerate(slacks.columns):
        ax.plot(x, slacks[col].to_numpy(dtype=float), marker=MARKERS[k % len(MARKERS)], ls="-", label=str(col))
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(i) for i in slacks.index], rotation=30, ha="right")
    ax.set(xlabel="network", ylabel="slack RHS / LHS (log scale)")
    return finish(fig, ax, title, legend={"fontsize": LEGEND_FONTSIZE, "loc": "center left",
                                          "bbox_to_anchor": (1.01, 0.5)}, which="both")


def plot_bound_sides(checkpoints: pd.DataFrame, bounds=("B2", "B6"), group: str = "method", run: str = "run",
                     axes=None, title: str | None = None):
    """Left side against right side of each bound (columns ``lhs_<b>``, ``rhs_<b>``), log-log, one panel per bound:
    each run (rows sharing ``run``, in checkpoint order) is a thin line through its checkpoints ending in a marker at
    its last one, coloured by ``group``; the dashed diagonal LHS = RHS is where the bound would be tight (every point
    lies below it)."""
    bounds = list(bounds)
    fig, axes = new_axes(axes, ncols=len(bounds), width=3.6, height=3.4)
    axes = np.atleast_1d(axes)
    colors = run_colors(checkpoints[group])
    for ax, b in zip(axes, bounds):
        lhs, rhs = f"lhs_{b}", f"rhs_{b}"
        for name, rows in checkpoints.groupby(run, sort=False):
            c = colors[rows[group].iloc[0]]
            ax.plot(rows[rhs], rows[lhs], "-", color=c, lw=0.8, alpha=0.6)
            ax.plot(rows[rhs].iloc[-1:], rows[lhs].iloc[-1:], "o", color=c, ms=5)
        lo = float(min(checkpoints[lhs].min(), checkpoints[rhs].min()))
        hi = float(max(checkpoints[lhs].max(), checkpoints[rhs].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel=f"right side of {b}", ylabel=f"left side of {b}")
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="-", label=str(g)) for g, c in colors.items()]
    handles.append(plt.Line2D([], [], color="k", ls="--", label="LHS = RHS"))
    axes[0].legend(handles=handles, fontsize=SMALL_FONTSIZE)
    return finish(fig, axes, title, which="both")


def _at_c_equal_one(table: pd.DataFrame) -> pd.Series:
    """The row of ``table`` (index: factor c) nearest to c = 1 in log c."""
    c = np.asarray(table.index, dtype=float)
    return table.iloc[int(np.argmin(np.abs(np.log(c))))]


def plot_rescaling(table: pd.DataFrame, ax=None, title: str | None = None):
    """Quantities versus a rescaling factor c, each divided by its value at c = 1, on log-log axes. ``table`` has
    one row per c (index = c) and one column per quantity (e.g. from
    :func:`~flatcomp_tutorial.invariance.rescaling_sweep`); invariant quantities lie on the line y = 1."""
    fig, ax = new_axes(ax, width=5.2, height=3.6)
    c = np.asarray(table.index, dtype=float)
    ref = _at_c_equal_one(table)
    for k, col in enumerate(table.columns):
        ax.plot(c, table[col].to_numpy(dtype=float) / float(ref[col]), marker=MARKERS[k % len(MARKERS)],
                label=str(col))
    ax.set(xscale="log", yscale="log", xlabel="rescaling factor c (W_l, b_l → cW_l, cb_l; W_{l+1} → W_{l+1}/c)",
           ylabel="value / value at c = 1")
    for axis in (ax.xaxis, ax.yaxis):    # minor-tick labels collide when c spans less than a decade
        axis.set_minor_formatter(NullFormatter())
    return finish(fig, ax, title, legend={"fontsize": LEGEND_FONTSIZE}, which="both")


def plot_rescaling_explorer(table: pd.DataFrame, log10_c: float = 0.0, columns=None, axes=None):
    """Left: :func:`plot_rescaling` of ``table[columns]`` with a marker at c = 10**log10_c (the nearest row).
    Right: the values at that c divided by those at c = 1 (bars, log scale)."""
    columns = list(columns or [k for k in table.columns if k not in ("max_output_change",)
                               and not k.endswith("stderr")])
    fig, axes = new_axes(axes, ncols=2, width=5.0, height=3.6)
    plot_rescaling(table[columns], ax=axes[0])
    c = np.asarray(table.index, dtype=float)
    i = int(np.argmin(np.abs(np.log10(c) - log10_c)))
    ref = _at_c_equal_one(table)
    axes[0].axvline(c[i], color="k", ls=":", lw=1)
    ratios = [float(table.iloc[i][k]) / float(ref[k]) for k in columns]
    axes[1].bar(range(len(columns)), ratios, color=[f"C{k}" for k in range(len(columns))])
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set(yscale="log", xticks=range(len(columns)), ylabel="value / value at c = 1",
                title=f"c = {c[i]:.3g}")
    axes[1].set_xticklabels(columns, rotation=45, ha="right", fontsize=LEGEND_FONTSIZE)
    return finish(fig, axes[1], grid="y", which="both")
