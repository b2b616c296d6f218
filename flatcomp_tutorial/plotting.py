"""Figures used by several chapters. Each function draws on given axes (or new ones) and returns the figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


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
