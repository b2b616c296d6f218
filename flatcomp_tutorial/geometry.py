"""Local geometry of the input-output map: Jacobians, volume, sensitivity and dimensionality (THEORY §3).

Chapter "Measuring compression". For an input x̄ and a Jacobian J (output or representation versus input or an
internal representation) with singular values σ_1 ≥ … ≥ σ_r, r = min(rows, cols):

- local volumetric ratio   log LVR(x̄) = Σ_{j≤r} log σ_j          (always in logs; < 0 means contraction)
- maximum local sensitivity  MLS(x̄) = σ_1
- local dimensionality     D_loc(x̄) = (Σ σ_j²)² / Σ σ_j⁴ ∈ [1, r]  (invariant to J → cJ)

Layer indexing follows THEORY §1 and is 1-based: the dense layers W_1, …, W_L are
:func:`flatcomp_tutorial.checks.dense_layers` in order, ``h_{l-1}`` is the *input* of dense layer l
(captured with a forward pre-hook, so any model containing ``nn.Linear`` layers works, e.g. a CNN whose last
layers are dense) and ``h_L = f`` is the output. Inputs are flattened to d = prod(input_shape).

Every Jacobian is computed for all samples at once with ``torch.func`` (``vmap`` of ``jacrev`` or ``jacfwd``,
whichever needs fewer passes); nothing loops over samples in Python.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import torch
from torch import nn
from torch.func import jacfwd, jacrev, vmap

from .checks import check_inputs, dense_layers, measurement_mode

Point = Union[str, int]
_CHUNK_ELEMENTS = 2**24  # Jacobian entries computed at once when batch_size is None

__all__ = [
    "jacobians",
    "preactivation_jacobians",
    "local_measures",
    "measures_from_jacobians",
    "gaussian_ball_measures",
    "representations",
    "participation_ratio",
    "layerwise_measures",
]


# --------------------------------------------------------------------------------------------------------------
# internal: run the model from / to an internal point
# --------------------------------------------------------------------------------------------------------------
# A "point" in the network is (layer index l (1-based), side) with side "in" (the input h_{l-1} of dense layer l)
# or "out" (its output z_l, the pre-activation); ``None`` is the model input (source) or output (target).

def _layers(model: nn.Module) -> list[nn.Linear]:
    layers = [m for _, m in dense_layers(model)]
    if not layers:
        raise ValueError("model has no nn.Linear layer; layer-indexed measures need at least one dense layer.")
    return layers


def _run(model: nn.Module, x: torch.Tensor, src: tuple[int, str] | None, tgt: tuple[int, str] | None,
         h: torch.Tensor | None = None) -> torch.Tensor:
    """Forward ``x`` (b, *input_shape); if ``src`` is a point, replace the tensor there by ``h`` (b, m) (reshaped to
    the tensor's shape); return the tensor at ``tgt`` (or the output) flattened to (b, m_t)."""
    layers = _layers(model)
    handles = []
    captured: list[torch.Tensor] = []
    try:
        if src is not None:
            l, side = src
            if side == "in":
                handles.append(layers[l - 1].register_forward_pre_hook(
                    lambda mod, args: (h.reshape(args[0].shape),) + tuple(args[1:])))
            else:
                handles.append(layers[l - 1].register_forward_hook(lambda mod, args, out: h.reshape(out.shape)))
        if tgt is not None:
            l, side = tgt
            if side == "in":
                handles.append(layers[l - 1].register_forward_pre_hook(lambda mod, args: captured.append(args[0])))
            else:
                handles.append(layers[l - 1].register_forward_hook(lambda mod, args, out: captured.append(out)))
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    y = captured[-1] if tgt is not None else out
    return y.reshape(y.shape[0], -1)


def _source_values(model: nn.Module, x: torch.Tensor, src: tuple[int, str] | None) -> torch.Tensor:
    """The tensor at ``src`` for every sample, flattened to (n, m_s) (``x`` flattened for the model input)."""
    if src is None:
        return x.reshape(x.shape[0], -1)
    with torch.no_grad():
        return _run(model, x, None, src)


def _point(model: nn.Module, value: Point, role: str) -> tuple[int, str] | None:
    """Validate a public ``source``/``target`` argument and turn it into an internal point."""
    n_layers = len(_layers(model))
    if role == "source":
        if value == "input":
            return None
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 1 <= value <= n_layers:
            return (int(value), "in")
        raise ValueError(f"source must be 'input' or a dense-layer index l in 1..{n_layers} (meaning h_(l-1), the "
                         f"input of dense layer l), got {value!r}")
    if value == "output" or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                             and value == n_layers):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 1 <= value < n_layers:
        return (int(value) + 1, "in")
    raise ValueError(f"target must be 'output' or a layer index l in 1..{n_layers} (meaning h_l, the input of dense "
                     f"layer l+1; l = {n_layers} is the output), got {value!r}")


def _order(src: tuple[int, str] | None, tgt: tuple[int, str] | None) -> None:
    """Raise unless ``src`` lies strictly before ``tgt`` in the forward pass."""
    rank = lambda p, default: default if p is None else 2 * p[0] + (p[1] == "out")  # noqa: E731
    if rank(src, -1) >= rank(tgt, 10**9):
        raise ValueError(f"source must come before target in the forward pass; got source point {src} and target "
                         f"point {tgt} (layer, side). E.g. source=l (h_(l-1)) needs target >= l or 'output'.")


def _jacobians(model: nn.Module, x: torch.Tensor, src: tuple[int, str] | None, tgt: tuple[int, str] | None,
               batch_size: int | None = None, mode: str = "auto") -> torch.Tensor:
    """Per-sample Jacobians (n, m_t, m_s) of the map src → tgt (no validation of the model; x already checked)."""
    _order(src, tgt)
    hs = _source_values(model, x, src)
    with torch.no_grad():
        out_dim = _run(model, x[:1], src, tgt, hs[:1]).shape[1]
    in_dim = hs.shape[1]
    if mode == "auto":
        mode = "rev" if out_dim <= in_dim else "fwd"
    if mode not in ("rev", "fwd"):
        raise ValueError(f"mode must be 'auto', 'rev' or 'fwd', got {mode!r}")
    transform: Callable = jacrev if mode == "rev" else jacfwd

    def single(xi: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        if src is None:
            return _run(model, hi.reshape(xi.shape)[None], None, tgt)[0]
        return _run(model, xi[None], src, tgt, hi[None])[0]

    batched = vmap(transform(single, argnums=1))
    n = x.shape[0]
    step = max(1, _CHUNK_ELEMENTS // (out_dim * in_dim)) if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    chunks = [batched(x[i:i + step], hs[i:i + step]) for i in range(0, n, step)]
    return torch.cat(chunks).detach()


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------

def jacobians(model: nn.Module, x: torch.Tensor, source: Point = "input", target: Point = "output",
              batch_size: int | None = None, mode: str = "auto") -> torch.Tensor:
    """Per-sample Jacobians ∂target/∂source, shape (n, out_dim, in_dim).

    ``source``: ``"input"`` (∂/∂x, x flattened) or l ≥ 1 for h_{l-1}, the input of dense layer l (output versus an
    internal representation, as in the network-wide bounds B6-B8). ``target``: ``"output"`` (f) or l for h_l, the
    input of dense layer l+1 (l = L is the output). ``mode``: ``"rev"`` (one backward pass per output unit),
    ``"fwd"`` (one forward-mode pass per input unit) or ``"auto"`` (the cheaper one). ``batch_size`` bounds memory
    by processing that many samples at a time (default: as many as keep about 2^24 Jacobian entries). Chapter "Measuring compression".
    """
    with measurement_mode(model):
        x = check_inputs(model, x)
        return _jacobians(model, x, _point(model, source, "source"), _point(model, target, "target"),
                          batch_size=batch_size, mode=mode)


def preactivation_jacobians(model: nn.Module, x: torch.Tensor, layer: int,
                            batch_size: int | None = None) -> torch.Tensor:
    """D_l(x_i) = ∂f/∂z_l, shape (n, N, m_l): the output's Jacobian with respect to the pre-activation
    z_l = W_l h_{l-1} + b_l of dense layer ``layer`` (1-based). Then ∂f/∂h_{l-1} = D_l W_l and
    ∇_{W_l} f_a = D_{l,a} h_{l-1}ᵀ (the lemma of THEORY §4; chapter "Flatness implies compression: the bound")."""
    with measurement_mode(model):
        x = check_inputs(model, x)
        n_layers = len(_layers(model))
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= n_layers:
            raise ValueError(f"layer must be a dense-layer index in 1..{n_layers}, got {layer!r}")
        return _jacobians(model, x, (int(layer), "out"), None, batch_size=batch_size)


def measures_from_jacobians(jac: torch.Tensor) -> dict[str, np.ndarray]:
    """log LVR, MLS and local dimensionality of a batch of Jacobians (n, rows, cols), from batched singular values
    (computed in float64). Returns per-sample numpy arrays ``log_lvr``, ``mls``, ``local_dim`` and
    ``singular_values`` (n, r), r = min(rows, cols)."""
    if jac.dim() != 3:
        raise ValueError(f"expected a batch of Jacobians of shape (n, rows, cols), got shape {tuple(jac.shape)}")
    s = torch.linalg.svdvals(jac.detach().to(torch.float64))
    s2 = s * s
    with torch.no_grad():
        log_lvr = torch.log(s).sum(dim=1)
        local_dim = s2.sum(dim=1) ** 2 / (s2 * s2).sum(dim=1)
    return {
        "log_lvr": log_lvr.cpu().numpy(),
        "mls": s[:, 0].cpu().numpy(),
        "local_dim": local_dim.cpu().numpy(),
        "singular_values": s.cpu().numpy(),
    }


def local_measures(model: nn.Module, x: torch.Tensor, source: Point = "input", target: Point = "output",
                   batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Per-sample exact local measures of the map ``source`` → ``target`` (see :func:`jacobians`):
    ``log_lvr`` = Σ_{j≤r} log σ_j, ``mls`` = σ_1, ``local_dim`` = (Σσ_j²)²/Σσ_j⁴ and ``singular_values`` (n, r).
    A zero singular value gives log LVR = -inf. Chapter "Measuring compression"."""
    return measures_from_jacobians(jacobians(model, x, source, target, batch_size=batch_size))


def gaussian_ball_measures(model: nn.Module, x: torch.Tensor, alpha: float, samples: int, seed: int = 0,
                           source: Point = "input", target: Point = "output",
                           batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Monte-Carlo local measures: for each input x̄, push ``samples`` points x̄+ε, ε ~ N(0, αI) through the map
    ``source`` → ``target`` and use the eigenvalues λ_1 ≥ λ_2 ≥ … of the sample covariance of the outputs.

    Since Cov[f(x̄+ε)] = α J Jᵀ + O(α²), λ_j/α estimates σ_j²: ``log_lvr`` = ½ Σ_{j≤r} log(λ_j/α),
    ``mls`` = sqrt(λ_1/α), ``local_dim`` = (Σλ)²/Σλ² over all eigenvalues; ``singular_values`` = sqrt(λ_j/α),
    j ≤ r. The estimates converge to :func:`local_measures` as α → 0 and ``samples`` → ∞ (bias O(α) from the
    curvature of the map, relative noise O(1/sqrt(samples))). Use float64 models for small α. ``seed`` fixes ε,
    so different α reuse the same directions. One forward pass over all n·samples points (in chunks of
    ``batch_size`` points if given). Chapter "Measuring compression".
    """
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha (the variance of the Gaussian ball) must be a positive finite number, got {alpha!r}")
    with measurement_mode(model):
        x = check_inputs(model, x)
        src, tgt = _point(model, source, "source"), _point(model, target, "target")
        _order(src, tgt)
        hs = _source_values(model, x, src)
        n, m_s = hs.shape
        with torch.no_grad():
            m_t = _run(model, x[:1], src, tgt, hs[:1]).shape[1]
        r = min(m_s, m_t)
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < r + 1:
            raise ValueError(f"samples must be an integer >= r + 1 = {r + 1} (the sample covariance needs that many "
                             f"points to have rank r = min(in, out) = {r}), got {samples!r}")
        gen = torch.Generator(device=hs.device).manual_seed(int(seed))
        eps = torch.randn(n, samples, m_s, generator=gen, device=hs.device, dtype=hs.dtype)
        points = (hs[:, None, :] + math.sqrt(alpha) * eps).reshape(n * samples, m_s)
        xs = x.repeat_interleave(samples, dim=0)
        step = n * samples if batch_size is None else int(batch_size)
        with torch.no_grad():
            if src is None:
                outs = [_run(model, points[i:i + step].reshape((-1,) + tuple(x.shape[1:])), None, tgt)
                        for i in range(0, n * samples, step)]
            else:
                outs = [_run(model, xs[i:i + step], src, tgt, points[i:i + step]) for i in range(0, n * samples, step)]
        y = torch.cat(outs).reshape(n, samples, m_t).to(torch.float64)
        yc = y - y.mean(dim=1, keepdim=True)
        gram = yc.transpose(1, 2) @ yc if m_t <= samples else yc @ yc.transpose(1, 2)
        lam = torch.linalg.eigvalsh(gram / (samples - 1)).flip(-1).clamp_min(0.0)
        sig2 = lam[:, :r] / alpha
        return {
            "log_lvr": (0.5 * torch.log(sig2).sum(dim=1)).cpu().numpy(),
            "mls": torch.sqrt(sig2[:, 0]).cpu().numpy(),
            "local_dim": (lam.sum(dim=1) ** 2 / (lam * lam).sum(dim=1)).cpu().numpy(),
            "singular_values": torch.sqrt(sig2).cpu().numpy(),
        }


def representations(model: nn.Module, x: torch.Tensor, layer: Point) -> torch.Tensor:
    """h_l for every sample, flattened to (n, m_l): the input of dense layer l+1 for l = 0, …, L-1 (h_0 is the
    input of the first dense layer, the flattened x for an MLP) and the output f for l = L or ``"output"``."""
    with measurement_mode(model):
        x = check_inputs(model, x)
        n_layers = len(_layers(model))
        if layer == "output" or (not isinstance(layer, bool) and isinstance(layer, (int, np.integer))
                                 and layer == n_layers):
            tgt = None
        elif not isinstance(layer, bool) and isinstance(layer, (int, np.integer)) and 0 <= layer < n_layers:
            tgt = (int(layer) + 1, "in")
        else:
            raise ValueError(f"layer must be 'output' or an integer in 0..{n_layers} (h_l is the input of dense layer "
                             f"l+1; l = {n_layers} is the output), got {layer!r}")
        with torch.no_grad():
            return _run(model, x, None, tgt).detach()


def participation_ratio(features: torch.Tensor | np.ndarray) -> float:
    """Global dimensionality PR = (Σλ)²/Σλ² of the eigenvalues λ of the centred covariance of ``features``
    (n, k): ≈ k for isotropic data, 1 for data on a line. Not a claim of the paper: local ≠ global compression
    (chapter "Measuring compression")."""
    f = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (n, k) with n >= 2, got shape {tuple(f.shape)}")
    f = f.detach().to(torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or inf.")
    fc = f - f.mean(dim=0, keepdim=True)
    gram = fc.T @ fc if fc.shape[1] <= fc.shape[0] else fc @ fc.T  # same non-zero spectrum
    tr, fro2 = torch.trace(gram), (gram * gram).sum()
    if fro2 == 0:
        raise ValueError("features are constant across samples (zero covariance); the participation ratio is undefined.")
    return float(tr * tr / fro2)


def layerwise_measures(model: nn.Module, x: torch.Tensor, batch_size: int | None = None):
    """Per-layer sample means of log LVR, MLS and D_loc, as a pandas DataFrame with one row per dense layer l:
    columns ``rep_*`` for h_l versus the input (l = L: f versus the input) and ``out_*`` for f versus h_{l-1}
    (the maps of the network-wide bounds). Chapter "Measuring compression"."""
    import pandas as pd

    rows = []
    names = [name for name, _ in dense_layers(model)]
    for l, name in enumerate(names, start=1):
        rep = local_measures(model, x, "input", l, batch_size=batch_size)
        out = local_measures(model, x, l, "output", batch_size=batch_size)
        rows.append({"layer": l, "module": name,
                     **{f"rep_{k}": float(np.mean(rep[k])) for k in ("log_lvr", "mls", "local_dim")},
                     **{f"out_{k}": float(np.mean(out[k])) for k in ("log_lvr", "mls", "local_dim")}})
    return pd.DataFrame(rows)
