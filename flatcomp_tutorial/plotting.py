"""Figures used by several chapters. Each function draws on given axes (or new ones) and returns the figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .history import late_start_step
from .measures import label as axis_label


def _axes(ax, ncols=1, width=4.2, height=3.2):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(1, ncols, figsize=(width * ncols, height), constrained_layout=True)
    return fig, ax


def plot_history(history: pd.DataFrame, axes=None, title: str | None = None):
    """Training curves from :func:`flatcomp_tutorial.train`'s history: loss (log scale) and accuracy vs step."""
    fig, axes = _axes(axes, ncols=2)
    ax_loss, ax_acc = axes
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(history["step"], history[f"{split}_loss"], style, label=split)
        ax_acc.plot(history["step"], 100 * history[f"{split}_acc"], style, label=split)
    ax_loss.set(yscale="log", xlabel="SGD step", ylabel=history.attrs.get("loss_label", "loss  (mean ½‖f−y‖²)"))
    ax_acc.set(xlabel="SGD step", ylabel="accuracy (%)", ylim=(0, 101))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def show_images(x, labels=None, n: int = 16, ax=None, title: str | None = None):
    """A grid of the first ``n`` single-channel images ``x`` (n, 1, H, W) with their labels."""
    x = np.asarray(x[:n])
    cols = min(n, 8)
    rows = int(np.ceil(len(x) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.25 * rows), constrained_layout=True)
    for i, a in enumerate(np.ravel(axes)):
        a.axis("off")
        if i < len(x):
            a.imshow(x[i].reshape(x.shape[-2], x.shape[-1]), cmap="gray_r")
            if labels is not None:
                a.set_title(str(int(labels[i])), fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Bounds chapters ("Flatness implies compression: the bound", "Network-wide and reparametrization-invariant bounds")
# ---------------------------------------------------------------------------------------------------------------
def plot_b4_steps(steps: dict, ax=None, title: str | None = None):
    """Stacked bars, one per network, of the slack (nats) of each link of B4's chain, from
    ``{network label: bounds.b4_step_slacks(...)}``; rows of kind "step" are stacked (they add up to B4's
    RHS − LHS, marked by a black tick), the "extra" block-trace link (Tr G_{W_1} ≤ Tr G) is drawn hatched on top."""
    fig, ax = _axes(ax, width=max(4.2, 1.3 * len(steps) + 2.5), height=3.4)
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
    totals = np.array([float(steps[l].loc[steps[l]["kind"] == "total", "slack"].iloc[0]) for l in labels])
    ax.scatter(x, totals, marker="_", s=400, color="k", zorder=3, label="total = B4 RHS − LHS")
    extra = first.loc[first["kind"] == "extra", "step"]
    if len(extra):
        ev = np.array([float(steps[l].loc[steps[l]["kind"] == "extra", "slack"].iloc[0]) for l in labels])
        ax.bar(x, ev, bottom=bottom, color="none", edgecolor="grey", hatch="//", width=0.6,
               label=f"{extra.iloc[0]} (Tr G form only)")
    ax.set_xticks(x, labels)
    ax.set(ylabel="slack of each step (nats)", xlabel="network")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title)
    return fig


def geometric_spectrum(r: int, rho: float, sigma1: float = 1.0) -> np.ndarray:
    """Singular values σ_j = σ_1 ρ^{j−1}, j = 1..r (a geometric spectrum; ρ = 1: all equal)."""
    return sigma1 * float(rho) ** np.arange(int(r))


def amgm_gap(sigma: np.ndarray) -> tuple[float, float]:
    """(log LVR, its AM–GM bound): Σ_j log σ_j and (r/2) log(Σ_j σ_j² / r) for singular values ``sigma``."""
    sigma = np.asarray(sigma, dtype=float)
    r = sigma.size
    return float(np.log(sigma).sum()), float(0.5 * r * np.log((sigma ** 2).sum() / r))


def plot_amgm(rho: float = 0.7, r: int = 10, sigma1: float = 1.0, axes=None):
    """AM–GM step of B4 for a geometric Jacobian spectrum σ_j = σ_1 ρ^{j−1}. Left: the spectrum. Right: log LVR and
    its AM–GM bound (r/2) log(Σσ²/r) as functions of ρ (current ρ marked); the gap closes only at ρ = 1."""
    fig, axes = _axes(axes, ncols=2, width=4.2, height=3.2)
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
    for ax in axes:
        ax.grid(alpha=0.3)
    ax_b.legend(fontsize=8)
    return fig


def plot_slack_by_network(slacks: pd.DataFrame, ax=None, title: str | None = None):
    """Slack (RHS/LHS, log scale) of several bounds across networks: ``slacks`` has one row per network (index =
    network label) and one column per bound (e.g. "B1", "B2", "B6"); a dashed line marks slack 1 (a tight bound)."""
    fig, ax = _axes(ax, width=max(4.2, 0.9 * len(slacks) + 2.5), height=3.4)
    x = np.arange(len(slacks))
    markers = "osD^v<>ph"
    for k, col in enumerate(slacks.columns):
        ax.plot(x, slacks[col].to_numpy(dtype=float), marker=markers[k % len(markers)], ls="-", label=str(col))
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(i) for i in slacks.index], rotation=30, ha="right")
    ax.set(xlabel="network", ylabel="slack RHS / LHS (log scale)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return fig


def plot_rescaling(table: pd.DataFrame, ax=None, title: str | None = None):
    """Quantities versus a rescaling factor c, each divided by its value at c = 1, on log-log axes. ``table`` has
    one row per c (index = c) and one column per quantity; invariant quantities lie on the line y = 1."""
    fig, ax = _axes(ax, width=5.2, height=3.6)
    c = np.asarray(table.index, dtype=float)
    ref = table.iloc[int(np.argmin(np.abs(np.log(c))))]
    markers = "osD^v<>ph*"
    for k, col in enumerate(table.columns):
        ax.plot(c, table[col].to_numpy(dtype=float) / float(ref[col]), marker=markers[k % len(markers)], label=str(col))
    ax.set(xscale="log", yscale="log", xlabel="rescaling factor c (W_l, b_l → cW_l, cb_l; W_{l+1} → W_{l+1}/c)",
           ylabel="value / value at c = 1")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Chapters "Measuring sharpness" and "Measuring compression"
# ---------------------------------------------------------------------------------------------------------------
def rescale_layer(model, layer: int, c: float):
    """A copy of ``model`` with dense layer ``layer`` (1-based) rescaled, W_l, b_l → cW_l, cb_l, and the next dense
    layer W_{l+1} → W_{l+1}/c (its bias unchanged). For a ReLU network (positive homogeneity) the function f is
    unchanged; the Hessian of the loss is not (chapter "Measuring sharpness")."""
    import copy

    import torch
    from torch import nn

    if not c > 0:
        raise ValueError(f"c must be > 0 (ReLU is only positively homogeneous), got {c!r}")
    new = copy.deepcopy(model)
    lins = [m for m in new.modules() if isinstance(m, nn.Linear)]
    if not 1 <= layer < len(lins):
        raise ValueError(f"layer must be in 1..{len(lins) - 1} (it needs a following dense layer), got {layer!r}")
    with torch.no_grad():
        lins[layer - 1].weight.mul_(c)
        if lins[layer - 1].bias is not None:
            lins[layer - 1].bias.mul_(c)
        lins[layer].weight.div_(c)
    return new


def rescaling_sweep(model, x, y, factors, layer: int = 1, probes: int = 32, seed: int = 0) -> pd.DataFrame:
    """Sharpness measures of :func:`rescale_layer` copies of ``model``, one row per factor c (index ``c``):
    ``max_output_change`` (max |f_c − f| on x), ``lambda_max`` (Lanczos, tol 1e-4), ``trace_h`` ± ``trace_h_stderr``
    (Hutchinson with the Gauss–Newton control variate, ``probes`` probes), ``trace_g`` (exact), relative flatness
    ``kappa_l`` and ``kappa_{l+1}`` and adaptive sharpness ``adaptive`` (Hutchinson, ``probes`` probes; with the same
    probe seed these estimators are exactly invariant, not only in expectation). Loss: MSE (1/n) Σ ½||f − y||²."""
    import torch

    from . import sharpness as S

    rows = []
    with torch.no_grad():
        f0 = model.eval()(x)
    for c in factors:
        m = rescale_layer(model, layer, float(c)).eval()
        with torch.no_grad():
            change = float((m(x) - f0).abs().max())
        tr = S.hessian_trace(m, x, y, probes=probes, seed=seed, method="gn-control")
        rows.append({
            "c": float(c), "max_output_change": change,
            "lambda_max": float(S.top_hessian_eigenvalues(m, x, y, k=1, tol=1e-4, seed=seed)[0]),
            "trace_h": tr.mean, "trace_h_stderr": tr.stderr,
            "trace_g": S.gauss_newton_trace(m, x),
            f"kappa_{layer}": S.relative_flatness(m, x, y, layer, method="hutchinson", probes=probes, seed=seed),
            f"kappa_{layer + 1}": S.relative_flatness(m, x, y, layer + 1, method="hutchinson", probes=probes, seed=seed),
            "adaptive": S.adaptive_sharpness(m, x, y, probes=probes, seed=seed),
        })
    return pd.DataFrame(rows).set_index("c")


def plot_rescaling_explorer(table: pd.DataFrame, log10_c: float = 0.0, columns=None, axes=None):
    """Left: :func:`plot_rescaling` of ``table[columns]`` with a marker at c = 10**log10_c (the nearest row).
    Right: the values at that c divided by those at c = 1 (bars, log scale)."""
    columns = list(columns or [k for k in table.columns if k not in ("max_output_change",) and not k.endswith("stderr")])
    fig, axes = _axes(axes, ncols=2, width=5.0, height=3.6)
    plot_rescaling(table[columns], ax=axes[0])
    c = np.asarray(table.index, dtype=float)
    i = int(np.argmin(np.abs(np.log10(c) - log10_c)))
    ref = table.iloc[int(np.argmin(np.abs(np.log(c))))]
    axes[0].axvline(c[i], color="k", ls=":", lw=1)
    ratios = [float(table.iloc[i][k]) / float(ref[k]) for k in columns]
    axes[1].bar(range(len(columns)), ratios, color=[f"C{k}" for k in range(len(columns))])
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set(yscale="log", xticks=range(len(columns)), ylabel="value / value at c = 1",
                title=f"c = {c[i]:.3g}")
    axes[1].set_xticklabels(columns, rotation=45, ha="right", fontsize=8)
    axes[1].grid(alpha=0.3, axis="y", which="both")
    return fig


def plot_trace_convergence(estimates: pd.DataFrame, exact: float | None = None, ax=None, title: str | None = None):
    """Stochastic trace estimates ± stderr versus the number of probes (log x axis), one line per ``method``.
    ``estimates`` has columns ``method``, ``probes``, ``mean``, ``stderr``; ``exact`` draws the reference value."""
    fig, ax = _axes(ax, width=5.2, height=3.6)
    for k, (method, g) in enumerate(estimates.groupby("method", sort=False)):
        shift = 1.0 + 0.04 * k  # small horizontal offset so the error bars do not overlap
        ax.errorbar(g["probes"] * shift, g["mean"], yerr=g["stderr"], marker="o", ms=4, capsize=3, label=method)
    if exact is not None:
        ax.axhline(exact, color="k", ls="--", lw=1, label="exact (dense Hessian)")
    ax.set(xscale="log", xlabel="number of probe vectors (matrix-vector products)",
           ylabel="Tr H estimate  (loss ½-MSE)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return fig


def plot_spectral_density(grid, density, eigenvalues=None, ax=None, title: str | None = None, logy: bool = True,
                          bins: int = 80):
    """SLQ spectral density φ(λ) of a Hessian; ``eigenvalues`` (exact, e.g. from a dense Hessian) are overlaid as a
    normalised histogram."""
    fig, ax = _axes(ax, width=5.2, height=3.6)
    if eigenvalues is not None:
        ax.hist(np.asarray(eigenvalues), bins=bins, density=True, color="0.75", label="exact eigenvalues (histogram)")
    ax.plot(grid, density, color="C0", label="SLQ density")
    if logy:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-5, float(np.max(density)) * 1e-6))
    ax.set(xlabel="Hessian eigenvalue λ  (loss ½-MSE)", ylabel="density φ(λ)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def plot_local_ellipse(model, x0, radius: float = 0.1, n_points: int = 400, seed: int = 0, axes=None):
    """The meaning of LVR, MLS and D_loc for a map R² → R²: a disc of inputs of radius ``radius`` around ``x0``
    (left) and its image under ``model`` (right, points) with the linearised image f(x0) + J_x u, an ellipse with
    semi-axes radius·σ_1 and radius·σ_2 along the left singular vectors of J_x (dashed)."""
    import torch

    from .geometry import jacobians

    x0 = torch.as_tensor(x0, dtype=next(model.parameters()).dtype).reshape(1, 2)
    J = jacobians(model, x0)[0].double().numpy()
    U, s, _ = np.linalg.svd(J)
    rng = np.random.default_rng(seed)
    r = radius * np.sqrt(rng.uniform(size=n_points))
    t = rng.uniform(0, 2 * np.pi, size=n_points)
    pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    with torch.no_grad():
        out = model.eval()(x0 + torch.as_tensor(pts, dtype=x0.dtype)).double().numpy()
        f0 = model(x0).double().numpy()[0]
    circ = np.linspace(0, 2 * np.pi, 200)
    unit = np.stack([np.cos(circ), np.sin(circ)], 1)
    fig, axes = _axes(axes, ncols=2, width=4.0, height=3.8)
    axes[0].scatter(pts[:, 0] + x0[0, 0].item(), pts[:, 1] + x0[0, 1].item(), s=4, c=t, cmap="twilight")
    axes[0].plot(x0[0, 0].item() + radius * unit[:, 0], x0[0, 1].item() + radius * unit[:, 1], "k--", lw=1)
    axes[0].set(xlabel="input x₁", ylabel="input x₂", title=f"inputs: disc of radius {radius:g}", aspect="equal")
    axes[1].scatter(out[:, 0], out[:, 1], s=4, c=t, cmap="twilight")
    ell = f0 + radius * unit @ (U * s).T
    axes[1].plot(ell[:, 0], ell[:, 1], "k--", lw=1, label="f(x̄) + J_x u, ‖u‖ = radius")
    for j in range(2):
        end = f0 + radius * s[j] * U[:, j]
        axes[1].annotate("", xy=end, xytext=f0, arrowprops=dict(arrowstyle="->", color=f"C{j + 1}", lw=2))
        axes[1].text(*end, f" radius·σ{j + 1}", color=f"C{j + 1}", fontsize=9)
    axes[1].set(xlabel="output f₁", ylabel="output f₂", aspect="equal",
                title=f"outputs: σ₁ = {s[0]:.3g}, σ₂ = {s[1]:.3g}")
    axes[1].legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def ball_convergence_table(model, x, alphas, samples=(1000, 10000), seed: int = 0) -> pd.DataFrame:
    """Relative error of the Gaussian-ball Monte-Carlo measures (:func:`~flatcomp_tutorial.geometry.gaussian_ball_measures`)
    against the exact Jacobian values (:func:`~flatcomp_tutorial.geometry.local_measures`), median over the inputs
    ``x``: one row per (alpha, samples) with columns ``lvr`` (|LVR_mc/LVR − 1|), ``mls`` and ``local_dim``."""
    from .geometry import gaussian_ball_measures, local_measures

    exact = local_measures(model, x)
    rows = []
    for s in samples:
        for a in alphas:
            mc = gaussian_ball_measures(model, x, float(a), int(s), seed=seed)
            rows.append({"alpha": float(a), "samples": int(s),
                         "lvr": float(np.median(np.abs(np.expm1(mc["log_lvr"] - exact["log_lvr"])))),
                         "mls": float(np.median(np.abs(mc["mls"] / exact["mls"] - 1))),
                         "local_dim": float(np.median(np.abs(mc["local_dim"] / exact["local_dim"] - 1)))})
    return pd.DataFrame(rows)


def plot_ball_convergence(table: pd.DataFrame, axes=None, title: str | None = None):
    """Log-log relative error of the Monte-Carlo LVR, MLS and D_loc versus the ball variance α, one line per number
    of samples (from :func:`ball_convergence_table`)."""
    names = {"lvr": "LVR", "mls": "MLS", "local_dim": "local dim."}
    fig, axes = _axes(axes, ncols=3, width=3.6, height=3.2)
    for ax, (col, label) in zip(axes, names.items()):
        for s, g in table.groupby("samples"):
            ax.plot(g["alpha"], g[col], marker="o", ms=3, label=f"{s} samples")
        ax.set(xscale="log", yscale="log", xlabel="ball variance α  (ε ~ N(0, αI))",
               ylabel=f"relative error of {label}", title=label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_layer_profiles(profiles: dict, axes=None, title: str | None = None):
    """Layerwise local measures through depth (``{label: DataFrame}`` from
    :func:`~flatcomp_tutorial.geometry.layerwise_measures`): mean log LVR, mean MLS and mean D_loc versus layer l, solid
    for h_l versus the input (``rep_*``), dashed for f versus h_{l−1} (``out_*``)."""
    cols = {"log_lvr": "mean log LVR", "mls": "mean MLS", "local_dim": "mean local dimensionality"}
    fig, axes = _axes(axes, ncols=3, width=3.8, height=3.3)
    for k, (label, df) in enumerate(profiles.items()):
        for ax, (col, ylab) in zip(axes, cols.items()):
            ax.plot(df["layer"], df[f"rep_{col}"], "-o", color=f"C{k}", label=f"{label}: h_l vs input")
            ax.plot(df["layer"], df[f"out_{col}"], "--s", color=f"C{k}", label=f"{label}: f vs h_(l−1)")
            ax.set(xlabel="dense layer l", ylabel=ylab, xticks=list(df["layer"]))
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_measure_histograms(measures: dict, axes=None, bins: int = 40, title: str | None = None):
    """Histograms of per-input log LVR, MLS and D_loc (``{label: local_measures(...) dict}``), one colour per label.
    Inputs with zero volume (log LVR = −inf) cannot be drawn: they are counted in the legend instead."""
    cols = {"log_lvr": "log LVR  (Σ_j log σ_j)", "mls": "MLS  (σ_1)", "local_dim": "local dimensionality"}
    fig, axes = _axes(axes, ncols=3, width=3.8, height=3.2)
    for ax, (col, xlab) in zip(axes, cols.items()):
        vals = [np.asarray(m[col], dtype=float) for m in measures.values()]
        finite = [v[np.isfinite(v)] for v in vals]
        if not any(f.size for f in finite):
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        else:
            edges = np.histogram_bin_edges(np.concatenate(finite), bins=bins)
            for k, (label, v, f) in enumerate(zip(measures, vals, finite)):
                dropped = f" ({v.size - f.size} at −inf: zero volume)" if f.size < v.size else ""
                ax.hist(f, bins=edges, alpha=0.55, color=f"C{k}", label=f"{label}{dropped}")
        ax.set(xlabel=xlab, ylabel="number of training inputs")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)  # log LVR: the panel whose labels count zero-volume inputs
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Reproduction chapters ("Reproduction I: the late phase", "Reproduction II: hyper-parameters and architectures")
# ---------------------------------------------------------------------------------------------------------------
def _plain_log_ticks(axis):
    """Plain-number labels (e.g. 0.01, 30) on a log-scaled ``axis`` and no minor-tick labels (they overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_late_phase(histories: dict, columns=("train_loss", "trace_h", "lambda_max", "mean_mls", "mean_log_lvr",
                                                "mean_local_dim"), axes=None, ncols: int = 3, title: str | None = None):
    """Time courses of several measures for several runs (``{label: TrainResult.history}``), one panel per column,
    x = SGD step, the start of each run's late phase marked by a dotted vertical line in the run's colour.
    ``trace_h`` is drawn with a ±1 stderr band and, where present, the exact ``trace_g`` dashed on the same panel;
    ``train_loss`` on a log scale."""
    columns = list(columns)
    if axes is None:
        nrows = int(np.ceil(len(columns) / ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows), constrained_layout=True,
                                 squeeze=False)
    else:
        fig = np.ravel(axes)[0].figure
    axes = np.ravel(axes)
    for k, (label, h) in enumerate(histories.items()):
        color = f"C{k}"
        start = late_start_step(h)
        for ax, col in zip(axes, columns):
            if col not in h:
                continue
            ax.plot(h["step"], h[col], "-", color=color, lw=1.4, label=label)
            if col == "trace_h" and "trace_h_stderr" in h:
                ax.fill_between(h["step"], h[col] - h["trace_h_stderr"], h[col] + h["trace_h_stderr"], color=color,
                                alpha=0.2, lw=0)
                if "trace_g" in h:
                    ax.plot(h["step"], h["trace_g"], "--", color=color, lw=1.0, label=f"{label}: Tr G (exact)")
            if np.isfinite(start):
                ax.axvline(start, color=color, ls=":", lw=1.0)
    for ax, col in zip(axes, columns):
        ax.set(xlabel="SGD step", ylabel=axis_label(col) + ("  ± stderr" if col == "trace_h" else ""))
        if col == "train_loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[len(columns):]:
        ax.axis("off")
    axes[min(1, len(columns) - 1)].legend(fontsize=7)
    if title:
        fig.suptitle(title + "  (dotted: start of the late phase)")
    return fig


def plot_train_test_sharpness(histories: dict, train: str = "trace_h", test: str = "test_trace_h",
                              compression: str = "mean_log_lvr", axes=None, title: str | None = None):
    """Sharpness on training versus test data over training (left, log scale; solid train, dashed test) and a
    compression measure (right), for ``{label: history}``; dotted lines mark the start of each late phase."""
    fig, axes = _axes(axes, ncols=2, width=4.6, height=3.3)
    for k, (label, h) in enumerate(histories.items()):
        color, start = f"C{k}", late_start_step(h)
        axes[0].plot(h["step"], h[train], "-", color=color, label=f"{label}: train")
        axes[0].plot(h["step"], h[test], "--", color=color, label=f"{label}: test")
        axes[1].plot(h["step"], h[compression], "-", color=color, label=label)
        for ax in axes:
            if np.isfinite(start):
                ax.axvline(start, color=color, ls=":", lw=1.0)
    axes[0].set(xlabel="SGD step", ylabel=axis_label(train) + "  (solid: train, dashed: test)",
                yscale="log")
    _plain_log_ticks(axes[0].yaxis)
    axes[1].set(xlabel="SGD step", ylabel=axis_label(compression))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_correlations(table: pd.DataFrame, method: str = "spearman", group: str | None = None, ax=None,
                      title: str | None = None):
    """Forest plot of correlations with their CIs: one row per (sharpness, compression) pair of a
    :func:`~flatcomp_tutorial.experiments.summarize`-style table (``method`` rows only), one marker colour per value
    of ``group`` (a column, e.g. ``"run"`` or ``"arch"``), points at ``r``, bars from ``ci_low`` to ``ci_high``."""
    t = table[table["method"] == method]
    pairs = list(dict.fromkeys(zip(t["sharpness"], t["compression"])))
    groups = list(dict.fromkeys(t[group])) if group else [None]
    fig, ax = _axes(ax, width=5.6, height=0.32 * len(pairs) * max(1, len(groups)) + 1.2)
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
    ax.set_yticklabels([f"{s} vs {c}" for s, c in pairs[::-1]], fontsize=8)
    ax.set(xlabel=f"{method.capitalize()} correlation (95% CI)", xlim=(-1.05, 1.05))
    ax.grid(alpha=0.3, axis="x")
    if group:
        ax.legend(fontsize=7, title=group)
    if title:
        ax.set_title(title)
    return fig


def plot_sweep_scatter(results: pd.DataFrame, sharpness=("trace_h", "lambda_max", "relative_flatness"),
                       compression=("mean_mls", "mean_log_lvr", "mean_local_dim", "nmls"), color: str = "lr_over_b",
                       axes=None, title: str | None = None):
    """Grid of scatter plots, sharpness (rows) vs compression (columns), one point per run of a results table (e.g.
    its matched-loss rows), coloured by ``color`` (``"lr_over_b"``: η/B, log colour scale); sharpness on a log axis."""
    from matplotlib.colors import LogNorm

    df = results.copy()
    if color == "lr_over_b" and color not in df:
        df[color] = df["lr"] / df["batch_size"]
    c = df[color].astype(float).to_numpy()
    norm = LogNorm(c.min(), c.max()) if (c > 0).all() and c.min() < c.max() else None
    if axes is None:
        fig, axes = plt.subplots(len(sharpness), len(compression), figsize=(3.1 * len(compression),
                                 2.6 * len(sharpness)), constrained_layout=True, squeeze=False)
    else:
        fig = np.ravel(axes)[0].figure
        axes = np.asarray(axes).reshape(len(sharpness), len(compression))
    sc = None
    for i, s in enumerate(sharpness):
        for j, comp in enumerate(compression):
            ax = axes[i, j]
            sc = ax.scatter(df[comp], df[s], c=c, cmap="viridis", norm=norm, s=18)
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
            ax.grid(alpha=0.3)
            if i == len(sharpness) - 1:
                ax.set_xlabel(axis_label(comp), fontsize=8)
            if j == 0:
                ax.set_ylabel(axis_label(s), fontsize=8)
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="η/B" if color == "lr_over_b" else color, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def plot_vs_lr_over_batch(results: pd.DataFrame, columns=("trace_h", "mean_mls", "mean_log_lvr", "mean_local_dim"),
                          axes=None, title: str | None = None):
    """Each column versus η/B (log x axis), one point per run, marker per batch size, with the mean over runs at each
    η/B joined by a line."""
    df = results.copy()
    df["lr_over_b"] = df["lr"] / df["batch_size"]
    fig, axes = _axes(axes, ncols=len(columns), width=3.3, height=3.0)
    axes = np.atleast_1d(axes)
    markers = "os^vDP*X"
    for ax, col in zip(axes, columns):
        for k, (b, g) in enumerate(df.groupby("batch_size")):
            ax.scatter(g["lr_over_b"], g[col], marker=markers[k % len(markers)], s=20, label=f"B = {b}")
        mean = df.groupby("lr_over_b")[col].mean()
        ax.plot(mean.index, mean.values, "k-", lw=0.8, alpha=0.6)
        ax.set(xscale="log", xlabel="η/B  (learning rate / batch size)", ylabel=axis_label(col))
        _plain_log_ticks(ax.xaxis)
        if col in ("trace_h", "trace_g", "lambda_max", "test_trace_h"):
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_train_vs_test(results: pd.DataFrame, train: str = "trace_h", test: str = "test_trace_h",
                       color: str = "lr_over_b", ax=None, title: str | None = None):
    """Test-data sharpness against training-data sharpness, one point per run, log–log, with the diagonal."""
    from matplotlib.colors import LogNorm

    df = results.copy()
    if color == "lr_over_b" and color not in df:
        df[color] = df["lr"] / df["batch_size"]
    fig, ax = _axes(ax, width=4.4, height=3.6)
    c = df[color].astype(float).to_numpy()
    sc = ax.scatter(df[train], df[test], c=c, cmap="viridis", norm=LogNorm(c.min(), c.max()) if c.min() > 0 else None,
                    s=20)
    lo = np.nanmin(np.r_[df[train], df[test]])
    hi = np.nanmax(np.r_[df[train], df[test]])
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="test = train")
    ax.set(xscale="log", yscale="log", xlabel=axis_label(train) + " (training data)",
           ylabel=axis_label(test))
    fig.colorbar(sc, ax=ax, label="η/B" if color == "lr_over_b" else color)
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Chapters "Why SGD finds flat minima" and "Local dimensionality is not controlled by sharpness"
# ---------------------------------------------------------------------------------------------------------------
def quadratic_gd(lam: float, lr: float, theta0: float = 1.0, steps: int = 30) -> np.ndarray:
    """Iterates θ_t = (1 − ηλ)^t θ_0 of gradient descent on the quadratic L(θ) = ½λθ², t = 0..steps."""
    return theta0 * (1.0 - lr * lam) ** np.arange(steps + 1)


def plot_quadratic_gd(lam: float = 1.0, lrs=(0.5, 1.5, 1.9, 2.1), steps: int = 30, axes=None):
    """Linear stability of GD on L(θ) = ½λθ². Left: |θ_t| versus step for each learning rate η (log scale);
    right: the per-step factor |1 − ηλ| versus ηλ, which exceeds 1 (divergence) exactly when ηλ > 2."""
    fig, axes = _axes(axes, ncols=2, width=4.4, height=3.3)
    for k, lr in enumerate(lrs):
        th = np.abs(quadratic_gd(lam, lr, steps=steps))
        axes[0].plot(np.arange(steps + 1), np.maximum(th, 1e-300), "-o", ms=3, color=f"C{k}",
                     label=f"ηλ = {lr * lam:g}")
    axes[0].set(yscale="log", xlabel="GD step t", ylabel="|θ_t| (θ_0 = 1)", title=f"GD on ½λθ², λ = {lam:g}")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3, which="both")
    el = np.linspace(0, 3, 301)
    axes[1].plot(el, np.abs(1 - el), "k-")
    axes[1].axhline(1, color="grey", ls=":")
    axes[1].axvline(2, color="C3", ls="--", label="ηλ = 2  (λ = 2/η)")
    for k, lr in enumerate(lrs):
        axes[1].plot(lr * lam, abs(1 - lr * lam), "o", color=f"C{k}")
    axes[1].set(xlabel="ηλ (learning rate × curvature)", ylabel="contraction factor |1 − ηλ| per step",
                title="stable iff |1 − ηλ| ≤ 1")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    return fig


def plot_edge_of_stability(histories: dict, column: str = "lambda_max", axes=None, title: str | None = None):
    """Full-batch GD runs ``{learning rate η: history}``: left, ``column`` (λ_max of the training-loss Hessian) versus
    step with the stability threshold 2/η dashed in the same colour; right, the training loss (log scale)."""
    fig, axes = _axes(axes, ncols=2, width=4.6, height=3.4)
    for k, (lr, h) in enumerate(histories.items()):
        axes[0].plot(h["step"], h[column], "-", marker=".", color=f"C{k}", label=f"η = {lr:g}")
        axes[0].axhline(2.0 / lr, color=f"C{k}", ls="--", lw=1, label=f"2/η = {2.0 / lr:g}")
        axes[1].plot(h["step"], h["train_loss"], "-", color=f"C{k}", label=f"η = {lr:g}")
    axes[0].set(xlabel="GD step (full batch)", ylabel="λ_max(H), training loss")
    axes[1].set(yscale="log", xlabel="GD step (full batch)", ylabel="training loss (1/n)Σ½‖f−y‖²")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_lr_batch_grid(table: pd.DataFrame, compression: str = "mean_mls", axes=None, title: str | None = None):
    """SGD runs over a learning-rate × batch-size grid (``table`` columns ``lr``, ``batch_size``, ``trace_g`` and
    ``compression``). Left: Tr G versus the toy stability bound 2B/η (log-log, the line y = x dashed: points below it
    satisfy Tr G ≤ 2B/η); right: ``compression`` versus Tr G. Colour = learning rate, marker = batch size."""
    fig, axes = _axes(axes, ncols=2, width=4.6, height=3.5)
    lrs = sorted(table["lr"].unique())
    bss = sorted(table["batch_size"].unique())
    markers = "osD^v<>ph*"
    for _, row in table.iterrows():
        c = f"C{lrs.index(row['lr'])}"
        m = markers[bss.index(row["batch_size"]) % len(markers)]
        axes[0].plot(2 * row["batch_size"] / row["lr"], row["trace_g"], m, color=c, ms=7)
        axes[1].plot(row["trace_g"], row[compression], m, color=c, ms=7)
    lim = np.array([min(table["trace_g"].min(), (2 * table["batch_size"] / table["lr"]).min()) / 2,
                    (2 * table["batch_size"] / table["lr"]).max() * 2])
    axes[0].plot(lim, lim, "k--", lw=1, label="Tr G = 2B/η")
    axes[0].set(xscale="log", yscale="log", xlabel="toy stability bound 2B/η", ylabel="Tr G at matched training loss")
    axes[1].set(xlabel="Tr G at matched training loss", ylabel=compression.replace("_", " ") + " (training inputs)")
    handles = [plt.Line2D([], [], color=f"C{k}", marker="o", ls="", label=f"η = {lr:g}") for k, lr in enumerate(lrs)]
    handles += [plt.Line2D([], [], color="grey", marker=markers[k % len(markers)], ls="", label=f"B = {b:g}")
                for k, b in enumerate(bss)]
    axes[0].legend(handles=handles + axes[0].get_legend_handles_labels()[0], fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    return fig


def plot_measure_trajectories(histories: dict, columns: dict, x: str = "step", axes=None, title: str | None = None,
                              logy=()):
    """Tracked measures of several runs (``{run label: history}``) versus ``x``, one panel per entry of
    ``columns`` (``{history column: axis label}``); a dotted vertical line marks the start of each run's late phase
    (first row with ``phase == "late"``). Columns named in ``logy`` get a log y axis."""
    fig, axes = _axes(axes, ncols=len(columns), width=3.9, height=3.3)
    axes = np.atleast_1d(axes)
    for k, (label, h) in enumerate(histories.items()):
        late = h.loc[h["phase"] == "late", x] if "phase" in h else pd.Series(dtype=float)
        for ax, col in zip(axes, columns):
            ax.plot(h[x], h[col], "-", marker=".", color=f"C{k}", label=label)
            if len(late):
                ax.axvline(late.iloc[0], color=f"C{k}", ls=":", lw=1)
    for ax, (col, ylab) in zip(axes, columns.items()):
        ax.set(xlabel="SGD step" if x == "step" else x, ylabel=ylab, yscale="log" if col in logy else "linear")
        if col in logy:
            _plain_log_ticks(ax.yaxis)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_weight_scaling(table: pd.DataFrame, ax=None, title: str | None = None):
    """Quantities versus a global weight scale c (every weight matrix W_l → cW_l of a bias-free ReLU network, so
    f → c^L f), each divided by its value at c = 1, on log-log axes (``table``: index c, one column per positive
    quantity). Scale-invariant quantities lie on y = 1."""
    fig = plot_rescaling(table, ax=ax, title=title)
    fig.axes[0].set_xlabel("weight scale c (every W_l → cW_l, no biases)")
    return fig


def plot_sharpness_vs_compression(results: pd.DataFrame, sharpness: str, compression: dict, axes=None,
                                  title: str | None = None):
    """Scatter of each compression measure (``{column: axis label}``) against ``sharpness`` across runs, colour =
    learning rate ``lr``, marker = batch size ``batch_size`` (one point per run)."""
    fig, axes = _axes(axes, ncols=len(compression), width=3.9, height=3.4)
    axes = np.atleast_1d(axes)
    lrs = sorted(results["lr"].unique())
    bss = sorted(results["batch_size"].unique())
    markers = "osD^v<>ph*"
    for ax, (col, ylab) in zip(axes, compression.items()):
        for _, row in results.iterrows():
            ax.plot(row[sharpness], row[col], markers[bss.index(row["batch_size"]) % len(markers)],
                    color=f"C{lrs.index(row['lr'])}", ms=7)
        ax.set(xlabel=sharpness.replace("_", " "), ylabel=ylab)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=f"C{k}", marker="o", ls="", label=f"η = {lr:g}") for k, lr in enumerate(lrs)]
    handles += [plt.Line2D([], [], color="grey", marker=markers[k % len(markers)], ls="", label=f"B = {b:g}")
                for k, b in enumerate(bss)]
    axes[0].legend(handles=handles, fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def scale_weights(model, c: float):
    """A copy of ``model`` with every parameter multiplied by ``c``. For a bias-free ReLU MLP with L dense layers
    (positive homogeneity) f → c^L f, so J_x → c^L J_x and ∂f/∂W_l → c^{L−1} ∂f/∂W_l (chapter "Local
    dimensionality is not controlled by sharpness")."""
    import copy

    import torch

    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(c)
    return scaled


def weight_scaling_table(model, x, y, factors) -> pd.DataFrame:
    """Sharpness, bound left-hand sides and compression of :func:`scale_weights` copies of ``model`` on inputs
    ``x`` (targets ``y``), one row per factor c (index ``c``): ``train_loss`` ((1/n) Σ ½||f − y||²), exact
    ``trace_g``, ``mean_mls_sq`` ((1/n) Σ MLS², left side of B1), ``gm_lvr`` (exp of the mean log LVR, left side
    of B4), ``nmls`` (left side of B6) and ``mean_local_dim``."""
    import torch

    from . import bounds, geometry, sharpness, training

    rows = []
    for c in factors:
        m = scale_weights(model, c).eval()
        with torch.no_grad():
            loss = float(training.loss_fn(m(x), y))
        loc = geometry.local_measures(m, x)
        rows.append({"c": float(c), "train_loss": loss, "trace_g": float(sharpness.gauss_newton_trace(m, x)),
                     "mean_mls_sq": float(np.mean(loc["mls"] ** 2)), "gm_lvr": float(np.exp(np.mean(loc["log_lvr"]))),
                     "nmls": float(bounds.nmls(m, x)), "mean_local_dim": float(np.mean(loc["local_dim"]))})
    return pd.DataFrame(rows).set_index("c")


def plot_group_bars(table: pd.DataFrame, columns: dict, group: str = "method", axes=None, title: str | None = None,
                    logy=()):
    """One panel per entry of ``columns`` (``{column: axis label}``): a bar per value of ``group`` (in order of
    appearance) at the mean over its rows, with every row (e.g. every seed) as a black dot. Columns named in
    ``logy`` get a log y axis."""
    fig, axes = _axes(axes, ncols=len(columns), width=3.3, height=3.4)
    axes = np.atleast_1d(axes)
    groups = list(dict.fromkeys(table[group]))
    for ax, (col, ylab) in zip(axes, columns.items()):
        for k, g in enumerate(groups):
            vals = table.loc[table[group] == g, col].astype(float).to_numpy()
            ax.bar(k, np.mean(vals), color=f"C{k}", alpha=0.75)
            ax.plot(np.full(len(vals), k), vals, "k.", ms=5)
        ax.set_xticks(range(len(groups)), groups, rotation=40, ha="right", fontsize=8)
        ax.set(ylabel=ylab, yscale="log" if col in logy else "linear")
        ax.grid(alpha=0.3, axis="y", which="both")
    if title:
        fig.suptitle(title)
    return fig


def plot_group_scatter(table: pd.DataFrame, x: str, columns: dict, group: str = "method", axes=None,
                       xlabel: str | None = None, title: str | None = None, logx: bool = False, logy=()):
    """Scatter of each column in ``columns`` (``{column: axis label}``) against ``x`` over the rows of ``table``
    (one point per run), colour = ``group``. Columns named in ``logy`` get a log y axis."""
    fig, axes = _axes(axes, ncols=len(columns), width=3.9, height=3.4)
    axes = np.atleast_1d(axes)
    groups = list(dict.fromkeys(table[group]))
    for ax, (col, ylab) in zip(axes, columns.items()):
        for k, g in enumerate(groups):
            rows = table[table[group] == g]
            ax.plot(rows[x], rows[col], "o", color=f"C{k}", label=str(g), ms=6, alpha=0.85)
        ax.set(xlabel=xlabel or x.replace("_", " "), ylabel=ylab, xscale="log" if logx else "linear",
               yscale="log" if col in logy else "linear")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_radii(table: pd.DataFrame, mls: str = "inputs_mean_mls", group: str = "method", ax=None,
               title: str | None = None):
    """Robustness radii of each run against its mean MLS (log–log): the first-order radius that MLS guarantees,
    margin/(√2 MLS) (open markers), and the empirical radius min(PGD, segment) (filled), both medians over the
    attacked inputs (``robustness.robustness_measures`` columns); grey line: the median segment radius over all
    runs, the scale set by the data (about half the distance to the other class)."""
    fig, ax = _axes(ax, width=5.2, height=3.8)
    groups = list(dict.fromkeys(table[group]))
    for k, g in enumerate(groups):
        rows = table[table[group] == g]
        ax.plot(rows[mls], rows["median_mls_radius"], "o", mfc="none", color=f"C{k}", ms=7)
        ax.plot(rows[mls], rows["median_radius"], "o", color=f"C{k}", ms=6, label=str(g))
    ax.axhline(float(np.median(table["median_segment_radius"])), color="grey", lw=1, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="mean MLS on the attacked inputs",
           ylabel="median L2 radius (input units)")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    handles = ax.get_legend_handles_labels()[0]
    handles += [plt.Line2D([], [], color="k", marker="o", mfc="none", ls="", label="first order: margin/(√2 MLS)"),
                plt.Line2D([], [], color="k", marker="o", ls="", label="empirical: min(PGD, segment)"),
                plt.Line2D([], [], color="grey", ls="--", label="median segment radius")]
    ax.legend(handles=handles, fontsize=7)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return fig


def plot_headline(history: pd.DataFrame, sharpness: str = "trace_g", compression: str = "mean_mls", axes=None,
                  title: str | None = None, sharpness_label: str | None = None, compression_label: str | None = None):
    """The book's result in one figure, from one run's history: (left) ``sharpness`` and ``compression`` against
    the SGD step, each divided by its value at the first late-phase checkpoint (dotted line: start of the late
    phase); (right) ``compression`` against ``sharpness`` over the late-phase checkpoints, coloured by step."""
    fig, axes = _axes(axes, ncols=2, width=4.6, height=3.5)
    left, right = axes
    late = history[history["phase"] == "late"] if "phase" in history else history
    ref = late.iloc[0] if len(late) else history.iloc[0]
    s_label = sharpness_label or sharpness.replace("_", " ")
    c_label = compression_label or compression.replace("_", " ")
    for k, (col, label) in enumerate(((sharpness, "sharpness: " + s_label), (compression, "compression: " + c_label))):
        left.plot(history["step"], history[col] / ref[col], "-", marker=".", color=f"C{k}", label=label)
    if len(late):
        left.axvline(late["step"].iloc[0], color="grey", ls=":", lw=1)
    left.set(xlabel="SGD step", ylabel="value / value at the late-phase start")
    left.legend(fontsize=8)
    sc = right.scatter(late[sharpness], late[compression], c=late["step"], cmap="viridis", s=25)
    fig.colorbar(sc, ax=right, label="SGD step")
    right.set(xlabel=s_label, ylabel=c_label)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_radius_scatter(radii: dict, ax=None, title: str | None = None):
    """Per-input first-order radius margin/(√2 MLS) (x) against the empirical radius min(PGD, segment) (y), one
    colour per run (``{label: (first_order, empirical)}`` arrays), log–log with the diagonal y = x: points below it
    are inputs whose first-order radius overstates the distance to an actual adversarial example."""
    fig, ax = _axes(ax, width=4.8, height=4.0)
    lo, hi = np.inf, 0.0
    for k, (label, (first, emp)) in enumerate(radii.items()):
        first, emp = np.asarray(first, float), np.asarray(emp, float)
        ok = np.isfinite(first) & np.isfinite(emp) & (first > 0) & (emp > 0)
        ax.plot(first[ok], emp[ok], "o", color=f"C{k}", ms=4, alpha=0.7, label=label)
        if ok.any():
            lo, hi = min(lo, first[ok].min(), emp[ok].min()), max(hi, first[ok].max(), emp[ok].max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xscale="log", yscale="log", xlabel="first-order radius margin/(√2 MLS)",
           ylabel="empirical radius min(PGD, segment)")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return fig
