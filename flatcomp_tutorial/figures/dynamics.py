"""Figures of the chapters "Why SGD finds flat minima" (GD on a quadratic, edge of stability, the learning-rate ×
batch-size grid) and "Local dimensionality is not controlled by sharpness" (measure trajectories, weight scaling,
sharpness against compression across runs). Each draws given data and returns the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..history import late_start_step
from ..toys import quadratic_gd
from ._style import (LEGEND_FONTSIZE, MARKERS, SMALL_FONTSIZE, finish, label, lr_batch_handles, new_axes,
                     plain_log_ticks)
from .bounds import plot_rescaling


def plot_quadratic_gd(lam: float = 1.0, lrs=(0.5, 1.5, 1.9, 2.1), steps: int = 30, axes=None):
    """Linear stability of GD on L(θ) = ½λθ² (iterates from :func:`~flatcomp_tutorial.toys.quadratic_gd`). Left:
    |θ_t| versus step for each learning rate η (log scale); right: the per-step factor |1 − ηλ| versus ηλ, which
    exceeds 1 (divergence) exactly when ηλ > 2."""
    fig, axes = new_axes(axes, ncols=2, width=4.4, height=3.3)
    for k, lr in enumerate(lrs):
        th = np.abs(quadratic_gd(lam, lr, steps=steps))
        axes[0].plot(np.arange(steps + 1), np.maximum(th, 1e-300), "-o", ms=3, color=f"C{k}",
                     label=f"ηλ = {lr * lam:g}")
    axes[0].set(yscale="log", xlabel="GD step t", ylabel="|θ_t| (θ_0 = 1)", title=f"GD on ½λθ², λ = {lam:g}")
    el = np.linspace(0, 3, 301)
    axes[1].plot(el, np.abs(1 - el), "k-")
    axes[1].axhline(1, color="grey", ls=":")
    axes[1].axvline(2, color="C3", ls="--", label="ηλ = 2  (λ = 2/η)")
    for k, lr in enumerate(lrs):
        axes[1].plot(lr * lam, abs(1 - lr * lam), "o", color=f"C{k}")
    axes[1].set(xlabel="ηλ (learning rate × curvature)", ylabel="contraction factor |1 − ηλ| per step",
                title="stable iff |1 − ηλ| ≤ 1")
    finish(fig, axes[0], legend={"fontsize": LEGEND_FONTSIZE}, which="both")
    return finish(fig, axes[1], legend={"fontsize": LEGEND_FONTSIZE})


def plot_edge_of_stability(histories: dict, column: str = "lambda_max", axes=None, title: str | None = None):
    """Full-batch GD runs ``{learning rate η: history}``: left, ``column`` (λ_max of the training-loss Hessian) versus
    step with the stability threshold 2/η dashed in the same colour; right, the training loss (log scale)."""
    fig, axes = new_axes(axes, ncols=2, width=4.6, height=3.4)
    for k, (lr, h) in enumerate(histories.items()):
        axes[0].plot(h["step"], h[column], "-", marker=".", color=f"C{k}", label=f"η = {lr:g}")
        axes[0].axhline(2.0 / lr, color=f"C{k}", ls="--", lw=1, label=f"2/η = {2.0 / lr:g}")
        axes[1].plot(h["step"], h["train_loss"], "-", color=f"C{k}", label=f"η = {lr:g}")
    axes[0].set(xlabel="GD step (full batch)", ylabel=label(column) + ", training loss")
    axes[1].set(yscale="log", xlabel="GD step (full batch)", ylabel=label("train_loss"))
    return finish(fig, axes, title, legend={"fontsize": SMALL_FONTSIZE}, legend_on="all", which="both")


def plot_lr_batch_grid(table: pd.DataFrame, compression: str = "mean_mls", axes=None, title: str | None = None):
    """SGD runs over a learning-rate × batch-size grid (``table`` columns ``lr``, ``batch_size``, ``trace_g`` and
    ``compression``). Left: Tr G versus the toy stability bound 2B/η (log-log, the line y = x dashed: points below it
    satisfy Tr G ≤ 2B/η); right: ``compression`` versus Tr G. Colour = learning rate, marker = batch size."""
    fig, axes = new_axes(axes, ncols=2, width=4.6, height=3.5)
    lrs = sorted(table["lr"].unique())
    bss = sorted(table["batch_size"].unique())
    for _, row in table.iterrows():
        c = f"C{lrs.index(row['lr'])}"
        m = MARKERS[bss.index(row["batch_size"]) % len(MARKERS)]
        axes[0].plot(2 * row["batch_size"] / row["lr"], row["trace_g"], m, color=c, ms=7)
        axes[1].plot(row["trace_g"], row[compression], m, color=c, ms=7)
    bound = 2 * table["batch_size"] / table["lr"]
    lim = np.array([min(table["trace_g"].min(), bound.min()) / 2, bound.max() * 2])
    axes[0].plot(lim, lim, "k--", lw=1, label="Tr G = 2B/η")
    matched = label("trace_g") + " at matched training loss"
    axes[0].set(xscale="log", yscale="log", xlabel="toy stability bound 2B/η", ylabel=matched)
    axes[1].set(xlabel=matched, ylabel=label(compression) + " (training inputs)")
    axes[0].legend(handles=lr_batch_handles(lrs, bss) + axes[0].get_legend_handles_labels()[0],
                   fontsize=SMALL_FONTSIZE)
    return finish(fig, axes, title, which="both")


def plot_measure_trajectories(histories: dict, columns: dict, x: str = "step", axes=None, title: str | None = None,
                              logy=()):
    """Tracked measures of several runs (``{run label: history}``) versus ``x``, one panel per entry of
    ``columns`` (``{history column: axis label}``); a dotted vertical line marks the start of each run's late phase
    (its first late checkpoint, :func:`~flatcomp_tutorial.history.late_start_step`). Columns named in ``logy`` get
    a log y axis."""
    fig, axes = new_axes(axes, ncols=len(columns), width=3.9, height=3.3)
    axes = np.atleast_1d(axes)
    for k, (run, h) in enumerate(histories.items()):
        start = late_start_step(h, x)
        for ax, col in zip(axes, columns):
            ax.plot(h[x], h[col], "-", marker=".", color=f"C{k}", label=run)
            if np.isfinite(start):
                ax.axvline(start, color=f"C{k}", ls=":", lw=1)
    for ax, (col, ylab) in zip(axes, columns.items()):
        ax.set(xlabel=label(x), ylabel=ylab, yscale="log" if col in logy else "linear")
        if col in logy:
            plain_log_ticks(ax.yaxis)
    return finish(fig, axes, title, legend={"fontsize": LEGEND_FONTSIZE}, which="both")


def plot_weight_scaling(table: pd.DataFrame, ax=None, title: str | None = None):
    """Quantities versus a global weight scale c (every weight matrix W_l → cW_l of a bias-free ReLU network, so
    f → c^L f), each divided by its value at c = 1, on log-log axes (``table``: index c, one column per positive
    quantity, e.g. from :func:`~flatcomp_tutorial.invariance.weight_scaling_table`). Scale-invariant quantities lie
    on y = 1."""
    fig = plot_rescaling(table, ax=ax, title=title)
    fig.axes[0].set_xlabel("weight scale c (every W_l → cW_l, no biases)")
    return fig


def plot_sharpness_vs_compression(results: pd.DataFrame, sharpness: str, compression: dict, axes=None,
                                  title: str | None = None):
    """Scatter of each compression measure (``{column: axis label}``) against ``sharpness`` across runs, colour =
    learning rate ``lr``, marker = batch size ``batch_size`` (one point per run)."""
    fig, axes = new_axes(axes, ncols=len(compression), width=3.9, height=3.4)
    axes = np.atleast_1d(axes)
    lrs = sorted(results["lr"].unique())
    bss = sorted(results["batch_size"].unique())
    for ax, (col, ylab) in zip(axes, compression.items()):
        for _, row in results.iterrows():
            ax.plot(row[sharpness], row[col], MARKERS[bss.index(row["batch_size"]) % len(MARKERS)],
                    color=f"C{lrs.index(row['lr'])}", ms=7)
        ax.set(xlabel=label(sharpness), ylabel=ylab)
    axes[0].legend(handles=lr_batch_handles(lrs, bss), fontsize=SMALL_FONTSIZE)
    return finish(fig, axes, title)
