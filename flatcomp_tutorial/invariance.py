"""Reparametrisations that leave the function unchanged, and how measures move under them.

For a ReLU network (positive homogeneity, ReLU(cz) = c ReLU(z) for c > 0) the layer rescaling
W_l, b_l → cW_l, cb_l, W_{l+1} → W_{l+1}/c leaves f unchanged but not the Hessian of the loss: λ_max, Tr H and
Tr G move, relative flatness κ and adaptive sharpness do not (chapters "Measuring sharpness" and "Network-wide and
reparametrization-invariant bounds"). The global weight scaling W_l → cW_l of a bias-free ReLU network changes
f → c^L f and moves every scale-carrying measure by a power of c while the local dimensionality stays put
(chapter "Local dimensionality is not controlled by sharpness").

Symbols: Appendix "Notation and conventions", entry "Reparametrisation".
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import bounds, geometry, sharpness
from .checks import is_integer
from .layers import dense_layers
from .losses import mean_loss


def rescale_layer(model: nn.Module, layer: int, c: float) -> nn.Module:
    """A copy of ``model`` with dense layer ``layer`` (1-based, counting every ``nn.Linear`` in module order)
    rescaled, W_l, b_l → cW_l, cb_l, and the next dense layer W_{l+1} → W_{l+1}/c (its bias unchanged). For a ReLU
    network (positive homogeneity) the function f is unchanged; the Hessian of the loss is not (chapter "Measuring
    sharpness")."""
    if not c > 0:
        raise ValueError(f"c must be > 0 (ReLU is only positively homogeneous), got {c!r}")
    new = copy.deepcopy(model)
    lins = [m for _, m in dense_layers(new)]
    if not is_integer(layer) or not 1 <= layer < len(lins):
        raise ValueError(f"layer must be in 1..{len(lins) - 1} (it needs a following dense layer), got {layer!r}")
    with torch.no_grad():
        lins[layer - 1].weight.mul_(c)
        if lins[layer - 1].bias is not None:
            lins[layer - 1].bias.mul_(c)
        lins[layer].weight.div_(c)
    return new


def rescaling_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, factors: Iterable[float], layer: int = 1,
                    probes: int = 32, seed: int = 0) -> pd.DataFrame:
    """Sharpness measures of :func:`rescale_layer` copies of ``model``, one row per factor c (index ``c``):
    ``max_output_change`` (max |f_c − f| on x), ``lambda_max`` (Lanczos, tol 1e-4), ``trace_h`` ± ``trace_h_stderr``
    (Hutchinson with the Gauss–Newton control variate, ``probes`` probes), ``trace_g`` (exact), relative flatness
    ``kappa_l`` and ``kappa_{l+1}`` and adaptive sharpness ``adaptive`` (Hutchinson, ``probes`` probes; with the same
    probe seed these estimators are exactly invariant, not only in expectation). Loss: MSE (1/n) Σ ½||f − y||²."""
    rows = []
    with torch.no_grad():
        f0 = model.eval()(x)
    for c in factors:
        m = rescale_layer(model, layer, float(c)).eval()
        with torch.no_grad():
            change = float((m(x) - f0).abs().max())
        tr = sharpness.hessian_trace(m, x, y, probes=probes, seed=seed, method="gn-control")

        def kappa(l: int) -> float:
            return sharpness.relative_flatness(m, x, y, l, method="hutchinson", probes=probes, seed=seed)

        rows.append({
            "c": float(c), "max_output_change": change,
            "lambda_max": float(sharpness.top_hessian_eigenvalues(m, x, y, k=1, tol=1e-4, seed=seed)[0]),
            "trace_h": tr.mean, "trace_h_stderr": tr.stderr,
            "trace_g": sharpness.gauss_newton_trace(m, x),
            f"kappa_{layer}": kappa(layer), f"kappa_{layer + 1}": kappa(layer + 1),
            "adaptive": sharpness.adaptive_sharpness(m, x, y, probes=probes, seed=seed),
        })
    return pd.DataFrame(rows).set_index("c")


def scale_weights(model: nn.Module, c: float) -> nn.Module:
    """A copy of ``model`` with every parameter multiplied by ``c``. For a bias-free ReLU MLP with L dense layers
    (positive homogeneity) f → c^L f, so J_x → c^L J_x and ∂f/∂W_l → c^{L−1} ∂f/∂W_l (chapter "Local
    dimensionality is not controlled by sharpness")."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(c)
    return scaled


def weight_scaling_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, factors: Iterable[float]) -> pd.DataFrame:
    """Sharpness, bound left-hand sides and compression of :func:`scale_weights` copies of ``model`` on inputs
    ``x`` (targets ``y``), one row per factor c (index ``c``): ``train_loss`` ((1/n) Σ ½||f − y||²), exact
    ``trace_g``, ``mean_mls_sq`` ((1/n) Σ MLS², left side of B1), ``gm_lvr`` (exp of the mean log LVR, left side
    of B4), ``nmls`` (left side of B6) and ``mean_local_dim`` (chapter "Local dimensionality is not controlled by
    sharpness")."""
    rows = []
    for c in factors:
        m = scale_weights(model, c).eval()
        with torch.no_grad():
            loss = float(mean_loss(m(x), y))
        loc = geometry.local_measures(m, x)
        rows.append({"c": float(c), "train_loss": loss, "trace_g": float(sharpness.gauss_newton_trace(m, x)),
                     "mean_mls_sq": float(np.mean(loc["mls"] ** 2)), "gm_lvr": float(np.exp(np.mean(loc["log_lvr"]))),
                     "nmls": float(bounds.nmls(m, x)), "mean_local_dim": float(np.mean(loc["local_dim"]))})
    return pd.DataFrame(rows).set_index("c")
