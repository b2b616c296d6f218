"""Figures of the first chapters: "A first network" (training curves, images), "Measuring sharpness" (trace
estimators, spectral density) and "Measuring compression" (the local ellipse, Gaussian-ball convergence, layer
profiles, per-input histograms). Each draws given data on given axes (or new ones) and returns the figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ._style import LEGEND_FONTSIZE, MAX_WIDTH, SMALL_FONTSIZE, finish, label, new_axes


def plot_history(history: pd.DataFrame, axes=None, title: str | None = None):
    """Training curves from :func:`flatcomp_tutorial.train`'s history: loss (log scale) and accuracy vs step."""
    fig, axes = new_axes(axes, ncols=2)
    ax_loss, ax_acc = axes
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(history["step"], history[f"{split}_loss"], style, label=split)
        ax_acc.plot(history["step"], 100 * history[f"{split}_acc"], style, label=split)
    ax_loss.set(yscale="log", xlabel=label("step"), ylabel=history.attrs.get("loss_label", label("loss")))
    ax_acc.set(xlabel=label("step"), ylabel=label("accuracy_percent"), ylim=(0, 101))
    return finish(fig, axes, title, legend={}, legend_on="all")


def show_images(x, labels=None, n: int = 16, ax=None, title: str | None = None):
    """A grid of the first ``n`` single-channel images ``x`` (n, 1, H, W) with their labels."""
    x = np.asarray(x[:n])
    cols = min(n, 8)
    rows = int(np.ceil(len(x) / cols))
    scale = min(1.0, MAX_WIDTH / (1.1 * cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols * scale, 1.25 * rows * scale), constrained_layout=True)
    for i, a in enumerate(np.ravel(axes)):
        a.axis("off")
        if i < len(x):
            a.imshow(x[i].reshape(x.shape[-2], x.shape[-1]), cmap="gray_r")
            if labels is not None:
                a.set_title(str(int(labels[i])), fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_trace_convergence(estimates: pd.DataFrame, exact: float | None = None, ax=None, title: str | None = None):
    """Stochastic trace estimates ± stderr versus the number of probes (log x axis), one line per ``method``.
    ``estimates`` has columns ``method``, ``probes``, ``mean``, ``stderr``; ``exact`` draws the reference value."""
    fig, ax = new_axes(ax, width=5.2, height=3.6)
    for k, (method, g) in enumerate(estimates.groupby("method", sort=False)):
        shift = 1.0 + 0.04 * k  # small horizontal offset so the error bars do not overlap
        ax.errorbar(g["probes"] * shift, g["mean"], yerr=g["stderr"], marker="o", ms=4, capsize=3, label=method)
    if exact is not None:
        ax.axhline(exact, color="k", ls="--", lw=1, label="exact (dense Hessian)")
    ax.set(xscale="log", xlabel="number of probe vectors (matrix-vector products)",
           ylabel="Tr H estimate  (loss ½-MSE)")
    return finish(fig, ax, title, legend={"fontsize": LEGEND_FONTSIZE}, which="both")


def plot_spectral_density(grid, density, eigenvalues=None, ax=None, title: str | None = None, logy: bool = True,
                          bins: int = 80):
    """SLQ spectral density φ(λ) of a Hessian; ``eigenvalues`` (exact, e.g. from a dense Hessian) are overlaid as a
    normalised histogram."""
    fig, ax = new_axes(ax, width=5.2, height=3.6)
    if eigenvalues is not None:
        ax.hist(np.asarray(eigenvalues), bins=bins, density=True, color="0.75", label="exact eigenvalues (histogram)")
    ax.plot(grid, density, color="C0", label="SLQ density")
    if logy:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-5, float(np.max(density)) * 1e-6))
    ax.set(xlabel="Hessian eigenvalue λ  (loss ½-MSE)", ylabel="density φ(λ)")
    return finish(fig, ax, title, legend={"fontsize": LEGEND_FONTSIZE})


def plot_local_ellipse(ellipse, axes=None):
    """The meaning of LVR, MLS and D_loc for a map R² → R², from
    :func:`~flatcomp_tutorial.geometry.local_ellipse`: the disc of inputs of radius ``ellipse.radius`` around
    ``ellipse.x0`` (left) and its image (right, points) with the linearised image f(x0) + J_x u, an ellipse with
    semi-axes radius·σ_1 and radius·σ_2 along the left singular vectors of J_x (dashed)."""
    e = ellipse
    radius, (c1, c2), f0, U, s = e.radius, e.x0, e.f0, e.left_singular_vectors, e.singular_values
    circ = np.linspace(0, 2 * np.pi, 200)
    unit = np.stack([np.cos(circ), np.sin(circ)], 1)
    fig, axes = new_axes(axes, ncols=2, width=4.0, height=3.8)
    axes[0].scatter(e.offsets[:, 0] + c1, e.offsets[:, 1] + c2, s=4, c=e.angles, cmap="twilight")
    axes[0].plot(c1 + radius * unit[:, 0], c2 + radius * unit[:, 1], "k--", lw=1)
    axes[0].set(xlabel="input x₁", ylabel="input x₂", title=f"inputs: disc of radius {radius:g}", aspect="equal")
    axes[1].scatter(e.outputs[:, 0], e.outputs[:, 1], s=4, c=e.angles, cmap="twilight")
    ell = f0 + radius * unit @ (U * s).T
    axes[1].plot(ell[:, 0], ell[:, 1], "k--", lw=1, label="f(x̄) + J_x u, ‖u‖ = radius")
    for j in range(2):
        end = f0 + radius * s[j] * U[:, j]
        axes[1].annotate("", xy=end, xytext=f0, arrowprops=dict(arrowstyle="->", color=f"C{j + 1}", lw=2))
        axes[1].text(*end, f" radius·σ{j + 1}", color=f"C{j + 1}", fontsize=9)
    axes[1].set(xlabel="output f₁", ylabel="output f₂", aspect="equal",
                title=f"outputs: σ₁ = {s[0]:.3g}, σ₂ = {s[1]:.3g}")
    axes[1].legend(fontsize=LEGEND_FONTSIZE, loc="lower right")
    return finish(fig, axes)


def plot_ball_convergence(table: pd.DataFrame, axes=None, title: str | None = None):
    """Log-log relative error of the Monte-Carlo LVR, MLS and D_loc versus the ball variance α, one line per number
    of samples (from :func:`~flatcomp_tutorial.geometry.ball_convergence_table`)."""
    names = {"lvr": "LVR", "mls": "MLS", "local_dim": "local dim."}
    fig, axes = new_axes(axes, ncols=3, width=3.6, height=3.2)
    for ax, (col, name) in zip(axes, names.items()):
        for s, g in table.groupby("samples"):
            ax.plot(g["alpha"], g[col], marker="o", ms=3, label=f"{s} samples")
        ax.set(xscale="log", yscale="log", xlabel="ball variance α  (ε ~ N(0, αI))",
               ylabel=f"relative error of {name}", title=name)
    return finish(fig, axes, title, legend={"fontsize": LEGEND_FONTSIZE}, which="both")


def plot_layer_profiles(profiles: dict, axes=None, title: str | None = None):
    """Layerwise local measures through depth (``{label: DataFrame}`` from
    :func:`~flatcomp_tutorial.geometry.layerwise_measures`): mean log LVR, mean MLS and mean D_loc versus layer l,
    solid for h_l versus the input (``rep_*``), dashed for f versus h_{l−1} (``out_*``)."""
    cols = {"log_lvr": label("mean_log_lvr"), "mls": label("mean_mls"), "local_dim": label("mean_local_dim")}
    fig, axes = new_axes(axes, ncols=3, width=3.8, height=3.3)
    for k, (run, df) in enumerate(profiles.items()):
        for ax, (col, ylab) in zip(axes, cols.items()):
            ax.plot(df["layer"], df[f"rep_{col}"], "-o", color=f"C{k}", label=f"{run}: h_l vs input")
            ax.plot(df["layer"], df[f"out_{col}"], "--s", color=f"C{k}", label=f"{run}: f vs h_(l−1)")
            ax.set(xlabel=label("layer"), ylabel=ylab, xticks=list(df["layer"]))
    return finish(fig, axes, title, legend={"fontsize": SMALL_FONTSIZE})


def plot_measure_histograms(measures: dict, axes=None, bins: int = 40, title: str | None = None):
    """Histograms of per-input log LVR, MLS and D_loc (``{label: local_measures(...) dict}``), one colour per label.
    Inputs with zero volume (log LVR = −inf) cannot be drawn: they are counted in the legend instead."""
    fig, axes = new_axes(axes, ncols=3, width=3.8, height=3.2)
    for ax, col in zip(axes, ("log_lvr", "mls", "local_dim")):
        vals = [np.asarray(m[col], dtype=float) for m in measures.values()]
        finite = [v[np.isfinite(v)] for v in vals]
        if not any(f.size for f in finite):
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        else:
            edges = np.histogram_bin_edges(np.concatenate(finite), bins=bins)
            for k, (run, v, f) in enumerate(zip(measures, vals, finite)):
                dropped = f" ({v.size - f.size} at −inf: zero volume)" if f.size < v.size else ""
                ax.hist(f, bins=edges, alpha=0.55, color=f"C{k}", label=f"{run}{dropped}")
        ax.set(xlabel=label(col), ylabel="number of training inputs")
    # legend on the log LVR panel: the one whose labels count zero-volume inputs
    return finish(fig, axes, title, legend={"fontsize": LEGEND_FONTSIZE})
