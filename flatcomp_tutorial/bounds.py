"""Both sides of every flatness ⇒ compression bound of the bounds chapters, with its slack.

Chapters "Flatness implies compression: the bound" (B1-B5, first layer) and "Network-wide and
reparametrization-invariant bounds" (B6-B8, all dense layers).

Convention (printed in ``DataFrame.attrs["convention"]``): MSE loss L = (1/n) Σ_i ½||f(x_i) − y_i||², mean over
samples, sum over outputs. Every bound is stated with the Gauss–Newton matrix G = (1/n) Σ_i J_θ(x_i)ᵀ J_θ(x_i),
for which it holds at *any* parameters; G = H (so Tr G = Tr H) only at zero training loss. Dropping the ½ of the
loss would double every trace. Traces come from :func:`flatcomp_tutorial.sharpness.gauss_newton_trace`.

Notation: dense layers W_1, …, W_L (1-based, :func:`flatcomp_tutorial.layers.dense_layers`), h_{l−1} the input of
dense layer l, D_l = ∂f/∂z_l, MLS_l = ||∂f/∂h_{l−1}||_2, LVR_l = Π_{j≤r_l} σ_j(∂f/∂h_{l−1}), r_l = min(N, dim h_{l−1}).
For the first layer h_0 = x (flattened input), J_x = D_1 W_1 and the lemma gives
||J_x||_F ≤ ||W_1||_2 ||D_1||_F, (1/n) Σ_i ||D_1(x_i)||_F² ||x_i||² = Tr G_{W_1}.

Zero volume: log LVR uses the numerical rank of :mod:`flatcomp_tutorial.geometry` (σ_j ≤ σ_1 · max(rows, cols) ·
eps(dtype) count as zero), so a map of rank < r has log LVR = −inf. A log-form bound (B4, B5) whose left side is
−inf holds trivially: ``holds`` is True and ``slack`` is +inf (0 if the right side is −inf too: both sides are
log 0), and the row's description says so. Zero traces (e.g. saturated units: D_1 = 0) give log 0 = −inf on the
right side, never a "math domain error".

Precision and overflow: float16/bfloat16 models are refused (``copy.deepcopy(model).float()``: their round-off,
1e-3 to 1e-2 relative, exceeds the tolerance of ``holds`` and breaks the B8 identity); outputs, losses, traces or
Jacobians that are not finite raise :class:`~flatcomp_tutorial.checks.NotFiniteError` before any row is computed.

Symbols: Appendix "Notation and conventions", entries B1–B8 (statement, deriving chapter) and "Slack".

Longer than the usual ~400 lines: the table computes both sides of all eight bounds and their per-layer rows
from shared per-layer statistics; splitting it would scatter one derivation over modules.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from . import sharpness
from .checks import (LOW_PRECISION, NotFiniteError, check_batch_size, check_flag, check_inputs, check_targets,
                     measurement_mode, require_finite_loss)
from .geometry import measures_from_jacobians, point_jacobians
from .layers import dense_layers, first_layer_is_dense, values_at, weight_key
from .losses import mean_loss

__all__ = ["bound_table", "b4_step_slacks", "nmls", "CONVENTION"]

CONVENTION = ("MSE loss L = (1/n) Σ_i ½||f(x_i) − y_i||² (mean over samples, sum over outputs, factor ½); "
              "traces are of the Gauss–Newton matrix G = (1/n) Σ_i J_θ(x_i)ᵀ J_θ(x_i), for which every bound holds at "
              "any parameters; G = H only at zero training loss.")


G_EQUALS_H_RULE = ("G = H (zero training loss up to round-off) when L ≤ (100 eps)² · (1/n) Σ_i ¼(||f(x_i)||² + "
                   "||y_i||²), eps of the model's dtype: an RMS residual of at most 100 eps of the RMS output size")
ZERO_VOLUME = ("zero volume: log LVR = −inf (numerical rank < r), the bound holds trivially (slack = +inf, or 0 "
               "when the right side is log 0 = −inf too)")
G_EQUALS_H_ULPS = 100  # G = H when the RMS residual is at most 100 eps of the RMS output/target magnitude


def _rtol(dtype: torch.dtype) -> float:
    """Relative round-off tolerance for `holds`: 1e-9 in float64, 1e-5 in float32."""
    return 1e-9 if dtype == torch.float64 else 1e-5


def _log(v: float) -> float:
    """Natural log with log 0 = −inf (a zero trace or norm), instead of math.log's "math domain error"."""
    return -math.inf if v == 0 else math.log(v)


def _log_gap(upper: np.ndarray | float, lower: np.ndarray | float) -> np.ndarray | float:
    """upper − lower for log-scale quantities, with −inf − (−inf) = 0 (both sides zero: equality), not NaN."""
    upper, lower = np.asarray(upper, dtype=float), np.asarray(lower, dtype=float)
    both = np.isneginf(upper) & np.isneginf(lower)
    with np.errstate(invalid="ignore"):
        gap = np.where(both, 0.0, upper - lower)
    return gap if gap.ndim else float(gap)


def _check_precision(model: nn.Module, what: str) -> None:
    """Refuse float16/bfloat16 models (before any work): measure a float32 copy instead."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    low = {str(p.dtype) for p in model.parameters() if p.dtype in LOW_PRECISION}
    if low:
        raise ValueError(f"{what}: the model is in {', '.join(sorted(low))}; its round-off (1e-3 to 1e-2 relative) "
                         "exceeds the tolerance of `holds` and breaks the B8 identity. Measure a float32 copy: "
                         "copy.deepcopy(model).float() (or .double() for exact checks).")


def _check_weights_nonzero(model: nn.Module) -> None:
    """The normalised measures of B6/B7 divide by ||W_l||_2; a zero weight matrix makes them 0/0."""
    zero = [l for l, (_, lin) in enumerate(dense_layers(model), start=1) if not bool(lin.weight.detach().any())]
    if zero:
        raise ValueError(f"dense layers {zero} have W_l = 0, so the normalised measures of B6/B7 "
                         "(||h||² MLS_l² / ||W_l||_2²) are 0/0; nothing to bound.")


def _layer_stats(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> list[dict]:
    """Per dense layer l: name, ||W_l||_2, and per sample ||h_{l−1}||², ||∂f/∂h_{l−1}||_F² and the measures of
    ∂f/∂h_{l−1} (log LVR_l, MLS_l), r_l. ``x`` already validated, inside measurement_mode."""
    stats = []
    for l, (name, lin) in enumerate(dense_layers(model), start=1):
        h = values_at(model, x, (l, "in"))
        jac = point_jacobians(model, x, (l, "in"), None, batch_size=batch_size)
        meas = measures_from_jacobians(jac)
        stats.append({
            "layer": l,
            "name": name,
            "w_spec": float(torch.linalg.matrix_norm(lin.weight.detach().double(), ord=2)),
            "h_norm2": h.double().pow(2).sum(dim=1).cpu().numpy(),
            "h": h,
            "fro2": jac.double().pow(2).sum(dim=(1, 2)).cpu().numpy(),
            "log_lvr": meas["log_lvr"],
            "mls": meas["mls"],
            "r": meas["singular_values"].shape[1],
        })
    return stats


def _check_no_weight_sharing(model: nn.Module, x: torch.Tensor) -> None:
    """Each dense layer must see one vector per sample (no nn.Linear applied along extra axes, e.g. per token):
    otherwise its weight is shared and the lemma and B6-B8 do not apply (the weight-sharing caveat of the chapter
    "Network-wide and reparametrization-invariant bounds")."""
    shapes: dict[str, tuple[int, ...]] = {}
    def record(name: str):
        def hook(mod, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    handles = [lin.register_forward_pre_hook(record(name)) for name, lin in dense_layers(model)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    shared = {name: shape for name, shape in shapes.items() if len(shape) != 2}
    if shared:
        raise ValueError(f"dense layers {shared} are applied to inputs with extra axes (shapes shown for one sample), "
                         "i.e. their weights are shared; the bounds assume one input vector per layer.")


def _require_dense_first_layer(model: nn.Module) -> None:
    if not first_layer_is_dense(model):
        raise ValueError("first-layer bounds B1-B5 need the first parameterised layer to be dense (z_1 = W_1 x + b_1); "
                         "this model starts with another parameterised layer (e.g. a convolution, whose weight sharing "
                         "breaks the lemma). Pass first_layer=False to compute only B6-B8 over its dense layers.")


def _check_first_layer(model: nn.Module, x: torch.Tensor, stats: list[dict]) -> None:
    """The first-layer bounds need z_1 = W_1 x + b_1 with x the flattened input, and ||x_i|| > 0."""
    _require_dense_first_layer(model)
    h0 = stats[0]["h"]
    xf = x.reshape(x.shape[0], -1)
    if h0.shape != xf.shape or not torch.equal(h0, xf):
        raise ValueError("first-layer bounds B1-B5 need the input of the first dense layer to be the flattened input "
                         "x, but a parameter-free transform precedes it. Pass first_layer=False to skip B1-B5.")
    zero = np.flatnonzero(stats[0]["h_norm2"] == 0)
    if zero.size:
        raise ValueError(f"first-layer bounds divide by ||x_i||² (min and geometric-mean forms) but samples "
                         f"{zero[:10].tolist()} have ||x_i|| = 0; drop them or pass first_layer=False.")


def _first_layer_D_fro2(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> np.ndarray:
    """||D_1(x_i)||_F² = ||∂f/∂z_1||_F² per sample."""
    d1 = point_jacobians(model, x, (1, "out"), None, batch_size=batch_size)
    return d1.double().pow(2).sum(dim=(1, 2)).cpu().numpy()


_CHUNK_ELEMENTS = 2**23  # per-sample weight-gradient entries held in memory at once


def _n_outputs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).reshape(1, -1).shape[1])


def _kappa_weight_form(model: nn.Module, x: torch.Tensor, name: str, batch_size: int | None) -> float:
    """κ_l(G) = Σ_{s,s'} ⟨w_s, w_{s'}⟩ Tr G_{s,s'} = (1/n) Σ_{i,a} ||W_lᵀ ∇_{W_l} f_a(x_i)||_F², computed from
    per-sample weight gradients (an autograd path independent of ∂f/∂h_{l−1}). Products and sums in float64, so
    large float32 weights do not overflow; a non-finite result raises :class:`NotFiniteError`."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    key = weight_key(name)
    W = params[key]
    m, k = W.shape

    def f_single(w: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, ({**params, key: w}, buffers), (xi[None],))[0]

    per_sample = vmap(jacrev(f_single), in_dims=(None, 0))
    n, n_out = x.shape[0], _n_outputs(model, x)
    step = max(1, _CHUNK_ELEMENTS // (n_out * m * k)) if batch_size is None else batch_size
    Wd = W.double()
    M = Wd @ Wd.T
    total = torch.zeros((), dtype=torch.float64, device=W.device)
    for s in range(0, n, step):
        g = per_sample(W, x[s:s + step]).double()  # (b, N, m, k)
        if k <= m:
            total += (Wd.T @ g).pow(2).sum()  # ||Wᵀ g||_F², cost m k² per (i, a)
        else:
            total += ((M @ g) * g).sum()  # Tr(gᵀ W Wᵀ g), cost m² k per (i, a)
    kappa = float(total) / n
    if not math.isfinite(kappa):
        raise NotFiniteError(f"bound_table: κ_l(G) of dense layer '{name}' from weight gradients is not finite at "
                             "these weights (overflow); nothing to compare. Check the weights' scale, or use "
                             "model.double().")
    return kappa


def _row(name, layer, description, lhs, rhs, rhs_block, log_form, rtol, identity=False):
    """One row. Slack: RHS/LHS (+inf when LHS = 0 < RHS, 1 when both sides are 0), or RHS − LHS for a
    log form (+inf when LHS = −inf: zero volume, the bound holds trivially and the description says so; 0 when both
    sides are −inf)."""
    lhs, rhs, rhs_block = float(lhs), float(rhs), float(rhs_block)
    if identity:
        holds = abs(lhs - rhs) <= 1e-8 * max(abs(rhs), abs(lhs)) if rtol <= 1e-9 else \
            abs(lhs - rhs) <= 1e-4 * max(abs(rhs), abs(lhs))
        slack = rhs / lhs if lhs != 0 else (1.0 if rhs == 0 else math.inf)
        kind = "ratio (identity: 1)"
    elif log_form and lhs == -math.inf:
        holds, slack, kind = True, _log_gap(rhs, lhs), "difference (log units)"
        description = f"{description}; {ZERO_VOLUME}"
    elif log_form:
        holds = lhs <= rhs + (rtol * max(1.0, abs(rhs)) if math.isfinite(rhs) else 0.0)
        slack, kind = rhs - lhs, "difference (log units)"
    else:
        holds = lhs <= rhs * (1 + rtol)
        slack, kind = (rhs / lhs if lhs > 0 else (1.0 if rhs == 0 else math.inf)), "ratio"
    return {"name": name, "layer": layer, "description": description, "lhs": lhs, "rhs": rhs, "rhs_block": rhs_block,
            "slack": slack, "slack_kind": kind, "holds": bool(holds)}


def _train_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """MSE loss L = (1/n) Σ ½||f(x_i) − y_i||² (in float64) and the G = H tolerance
    (100 eps)² (1/n) Σ ¼(||f||² + ||y||²): the loss convention's ½ times the mean squared size ½(||f||² + ||y||²).
    Raises :class:`NotFiniteError` if L overflows."""
    with torch.no_grad():
        out = model(x).reshape(x.shape[0], -1).double()
        yd = y.double()
        loss = float(mean_loss(out, yd))
        scale = float(0.25 * (out.pow(2).sum(dim=1) + yd.pow(2).sum(dim=1)).mean())
    require_finite_loss(loss, "MSE training loss")
    return loss, (G_EQUALS_H_ULPS * torch.finfo(x.dtype).eps) ** 2 * scale


def bound_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, first_layer: bool = True,
                identity_check: bool = True, batch_size: int | None = None) -> pd.DataFrame:
    """Both sides of bounds B1-B7 and identity B8 of the bounds chapters on the samples ``x``; one row per bound.

    Columns: ``name``, ``layer`` (1 for B1-B5, "all" for B6-B7, l for the per-layer rows of B8), ``description``,
    ``lhs``, ``rhs`` (the book's right-hand side), ``rhs_block`` (the same with only the weight-block traces:
    Tr G_{W_1} for B1-B5, Σ_l Tr G_{W_l} for B6-B7, i.e. the tighter middle quantity), ``slack`` (RHS/LHS, or
    RHS − LHS for the log-form bounds B4 and B5; see ``slack_kind``) and ``holds`` (LHS ≤ RHS up to a relative
    round-off tolerance, 1e-9 in float64 and 1e-5 in float32; for the B8 identity rows: both sides agree to 1e-8
    relative in float64, 1e-4 in float32).

    Zero volume: log LVR uses the numerical rank (σ_j ≤ σ_1 · max(rows, cols) · eps count as zero, see
    :func:`flatcomp_tutorial.geometry.measures_from_jacobians`). If a map has rank < r (e.g. a hidden layer narrower
    than the output), B4's LHS is −inf (and B5's when every sample has zero volume): the bound holds trivially,
    ``holds`` is True, ``slack`` is +inf (0 when the right side is log 0 = −inf too, e.g. D_1 = 0 for saturated
    units) and the description ends with "zero volume: log LVR = −inf ...". LVR_l = 0 in B7. A ratio-form row
    with LHS = 0 has slack +inf (1 when both sides are 0, e.g. saturated units).

    B8 has two rows per dense layer: "B8 identity" compares (1/n) Σ_i ||∂f/∂h_{l−1}||_F² ||h_{l−1}||² (lhs) with
    κ_l(G) computed from per-sample weight gradients (rhs; skipped when ``identity_check=False``), and "B8" is the
    bound (1/n) Σ_i ||h_{l−1}||² MLS_l² ≤ κ_l(G).

    ``first_layer=False`` skips B1-B5 (needed for a CNN: they require a dense first layer). If targets ``y`` are
    given, ``attrs["train_loss"]`` holds the MSE training loss and ``attrs["G_equals_H"]`` says whether it is zero
    up to round-off, the rule in ``attrs["G_equals_H_rule"]``: L ≤ (100 eps)² · (1/n) Σ_i ½(||f(x_i)||² + ||y_i||²)
    (``attrs["G_equals_H_tol"]``), i.e. an RMS residual of at most 100 eps of the RMS output size, eps of the
    model's dtype; only then are the traces of G also those of H.
    ``attrs`` also gives the convention, Tr G, the per-layer Tr G_{W_l} and the tolerance.

    Refused before the Jacobians are computed: float16/bfloat16 models (measure ``copy.deepcopy(model).float()``),
    outputs or a loss that are not finite (:class:`~flatcomp_tutorial.checks.NotFiniteError`, e.g. ReLU weights
    scaled by 1e20), a zero weight matrix (B6/B7 divide by ||W_l||_2), non-boolean ``first_layer`` /
    ``identity_check`` and a ``batch_size`` that is not a positive integer or None. Jacobians, traces or κ_l(G)
    that overflow later raise :class:`~flatcomp_tutorial.checks.NotFiniteError` instead of giving NaN.
    The identity rows need per-sample weight gradients (n·N·m·k numbers, in chunks; ~10 s for 1000 digits through a
    64-128-128-10 MLP on 2 CPU cores); ``identity_check=False`` skips them (the rest takes well under a second).
    Chapters "Flatness implies compression: the bound", "Network-wide and reparametrization-invariant bounds".
    """
    first_layer = check_flag(first_layer, "first_layer")
    identity_check = check_flag(identity_check, "identity_check")
    batch_size = check_batch_size(batch_size)
    _check_precision(model, "bound_table")
    with measurement_mode(model), np.errstate(divide="ignore"):  # log 0 = -inf for dead-ReLU samples
        x = check_inputs(model, x)
        loss = g_h_tol = None
        if y is not None:
            y = check_targets(y, x, _n_outputs(model, x))
            loss, g_h_tol = _train_loss(model, x, y)
        if first_layer:
            _require_dense_first_layer(model)
        if not dense_layers(model):
            raise ValueError("model has no nn.Linear layer; the bounds are about dense layers.")
        _check_no_weight_sharing(model, x)
        _check_weights_nonzero(model)
        stats = _layer_stats(model, x, batch_size)
        if first_layer:
            _check_first_layer(model, x, stats)
        traces = sharpness.gauss_newton_block_traces(model, x)
        tr_g = float(traces["total"])
        tr_blocks = {s["name"]: float(traces[s["name"]]) for s in stats}
        if not all(math.isfinite(t) for t in [tr_g, *tr_blocks.values()]):
            raise NotFiniteError("bound_table: Tr G is not finite at these weights (overflow); nothing to bound. "
                                 "Check the weights' scale, or use model.double().")
        sum_blocks = sum(tr_blocks.values())
        rtol = _rtol(x.dtype)
        n = x.shape[0]
        rows = []

        if first_layer:
            s0 = stats[0]
            w2 = s0["w_spec"] ** 2
            tr1 = tr_blocks[s0["name"]]
            xn2 = s0["h_norm2"]
            mls2 = s0["mls"] ** 2
            r = s0["r"]
            log_gm_x2 = float(np.mean(np.log(xn2)))
            rows.append(_row("B1", 1, "MLS, min form: (1/n) Σ MLS² ≤ ||W_1||_2² Tr G_{W_1} / min ||x||²",
                             mls2.mean(), w2 * tr1 / xn2.min(), w2 * tr1 / xn2.min(), False, rtol))
            rows.append(_row("B2", 1, "MLS, weighted: (1/n) Σ ||x||² MLS² ≤ ||W_1||_2² Tr G_{W_1}",
                             (xn2 * mls2).mean(), w2 * tr1, w2 * tr1, False, rtol))
            gm_mls2 = float(np.exp(np.mean(np.log(mls2))))
            rows.append(_row("B3", 1, "MLS, geometric mean: GM(MLS²) ≤ ||W_1||_2² Tr G_{W_1} / GM(||x||²)",
                             gm_mls2, w2 * tr1 / math.exp(log_gm_x2), w2 * tr1 / math.exp(log_gm_x2), False, rtol))
            b4 = lambda t: 0.5 * r * _log(w2 * t / r) - 0.5 * r * log_gm_x2  # noqa: E731
            rows.append(_row("B4", 1, "log LVR, geometric mean: (1/n) Σ log LVR ≤ (r/2) log(||W_1||_2² Tr G_{W_1}/r) "
                             "− (r/2n) Σ log ||x||²", np.mean(s0["log_lvr"]), b4(tr1), b4(tr1), True, rtol))
            log_lvr2 = 2.0 * torch.as_tensor(s0["log_lvr"], dtype=torch.float64)
            b5 = lambda t: r * _log(n * w2 * t / (r * xn2.min()))  # noqa: E731
            rows.append(_row("B5", 1, "LVR, sum form (log of both sides): log Σ LVR² ≤ r log(n ||W_1||_2² Tr G / "
                             "(r min ||x||²))", float(torch.logsumexp(log_lvr2, 0)), b5(tr_g), b5(tr1), True, rtol))

        nmls_terms = [s["h_norm2"] * s["mls"] ** 2 / s["w_spec"] ** 2 for s in stats]
        nvr_terms = [s["h_norm2"] * s["r"] * np.exp(2.0 * s["log_lvr"] / s["r"]) / s["w_spec"] ** 2 for s in stats]
        rows.append(_row("B6", "all", "NMLS: (1/n) Σ_i Σ_l ||h_{l−1}||² MLS_l² / ||W_l||_2² ≤ Σ_l Tr G_{W_l} ≤ Tr G",
                         np.mean(sum(nmls_terms)), tr_g, sum_blocks, False, rtol))
        rows.append(_row("B7", "all", "NVR: (1/n) Σ_i Σ_l ||h_{l−1}||² r_l LVR_l^{2/r_l} / ||W_l||_2² ≤ Σ_l Tr G_{W_l} "
                         "≤ Tr G (LVR_l = 0 where rank < r_l)", np.mean(sum(nvr_terms)), tr_g, sum_blocks, False,
                         rtol))
        for s in stats:
            kappa_h = float(np.mean(s["fro2"] * s["h_norm2"]))
            if identity_check:
                kappa_w = _kappa_weight_form(model, x, s["name"], batch_size)
                rows.append(_row("B8 identity", s["layer"], "κ_l(G): (1/n) Σ ||∂f/∂h_{l−1}||_F² ||h_{l−1}||² (lhs) = "
                                 "Σ_{s,s'} ⟨w_s,w_s'⟩ Tr G_{s,s'} (rhs, from weight gradients)",
                                 kappa_h, kappa_w, kappa_w, False, rtol, identity=True))
            rows.append(_row("B8", s["layer"], "(1/n) Σ ||h_{l−1}||² MLS_l² ≤ κ_l(G)",
                             np.mean(s["h_norm2"] * s["mls"] ** 2), kappa_h, kappa_h, False, rtol))

        df = pd.DataFrame(rows)
        df.attrs.update({
            "convention": CONVENTION,
            "trace_G": tr_g,
            "trace_G_blocks": tr_blocks,
            "n": n,
            "rtol": rtol,
            "train_loss": loss,
            "G_equals_H": None if loss is None else bool(loss <= g_h_tol),
            "G_equals_H_tol": g_h_tol,
            "G_equals_H_rule": G_EQUALS_H_RULE,
        })
        return df


def b4_step_slacks(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> pd.DataFrame:
    """The slack of each link of B4's chain, in log units (nats), per-sample terms averaged over samples:

    (1/n) Σ_i Σ_{j≤r} log σ_j(x_i)
      ≤ (1/n) Σ_i (r/2) log(Σ_{j≤r} σ_j² / r)            [AM–GM on σ_1², …, σ_r²; tight iff all σ_j equal]
      = (1/n) Σ_i (r/2) log(||J_x(x_i)||_F² / r)          [Σ_{j≤r} σ_j² = ||J_x||_F² since rank J_x ≤ r; slack 0]
      ≤ (1/n) Σ_i (r/2) log(||W_1||_2² ||D_1||_F² / r)    [||D_1 W_1||_F ≤ ||D_1||_F ||W_1||_2]
      ≤ (r/2) log(||W_1||_2² Tr G_{W_1} / r) − (r/2n) Σ_i log ||x_i||²
                        [Jensen: mean_i log(||D_1||_F² ||x_i||²) ≤ log mean_i(...) = log Tr G_{W_1} (lemma)].

    Rows with ``kind == "step"`` add up to the ``"total"`` row (= B4's RHS − LHS, as in :func:`bound_table`).
    The ``"extra"`` row is the block-trace link Tr G_{W_1} ≤ Tr G, which only the Tr G form of B4 uses. The
    spectral-versus-Frobenius inequality of B1-B3 does not enter B4 (the Frobenius norm appears exactly).
    Zero volume (rank J_x < r at some sample: log LVR = −inf) makes the AM–GM step and the total +inf; a link whose
    two sides are both log 0 = −inf (e.g. J_x = 0, or D_1 = 0) has slack 0, never NaN. Refused like
    :func:`bound_table` (half precision, non-finite values, bad ``batch_size``).
    Chapter "Flatness implies compression: the bound".
    """
    batch_size = check_batch_size(batch_size)
    _check_precision(model, "b4_step_slacks")
    with measurement_mode(model), np.errstate(divide="ignore"):  # log 0 = -inf for dead-ReLU samples
        x = check_inputs(model, x)
        _require_dense_first_layer(model)
        _check_no_weight_sharing(model, x)
        stats = _layer_stats(model, x, batch_size)[:1]
        _check_first_layer(model, x, stats)
        s0 = stats[0]
        r, w2, xn2 = s0["r"], s0["w_spec"] ** 2, s0["h_norm2"]
        traces = sharpness.gauss_newton_block_traces(model, x)
        tr1, tr_g = float(traces[s0["name"]]), float(traces["total"])
        jac = point_jacobians(model, x, (1, "in"), None, batch_size=batch_size)
        sv2 = torch.linalg.svdvals(jac.double()).pow(2).cpu().numpy()
        d_fro2 = _first_layer_D_fro2(model, x, batch_size)
        half = 0.5 * r
        lhs = s0["log_lvr"]                                        # Σ_j log σ_j per sample
        a = half * np.log(sv2.sum(axis=1) / r)                     # AM of σ_j²
        b = half * np.log(s0["fro2"] / r)                          # Frobenius norm of J_x
        c = half * np.log(w2 * d_fro2 / r)                         # ||W_1||_2² ||D_1||_F²
        rhs = half * _log(w2 * tr1 / r) - half * float(np.mean(np.log(xn2)))
        steps = [
            ("AM–GM on σ_j²", "Σ_j log σ_j ≤ (r/2) log(Σ_j σ_j²/r)", np.mean(_log_gap(a, lhs))),
            ("Frobenius identity", "Σ_{j≤r} σ_j² = ||J_x||_F² (rank J_x ≤ r): equality", np.mean(_log_gap(b, a))),
            ("||DW||_F ≤ ||D||_F ||W||_2", "||D_1 W_1||_F ≤ ||D_1||_F ||W_1||_2", np.mean(_log_gap(c, b))),
            ("Jensen over samples", "mean_i log(||D_1||_F² ||x_i||²) ≤ log Tr G_{W_1}", _log_gap(rhs, np.mean(c))),
        ]
        rows = [{"step": s, "inequality": ineq, "slack": float(v), "kind": "step"} for s, ineq, v in steps]
        rows.append({"step": "total (B4)", "inequality": "RHS − LHS of B4", "slack": _log_gap(rhs, np.mean(lhs)),
                     "kind": "total"})
        rows.append({"step": "block trace", "inequality": "Tr G_{W_1} ≤ Tr G (only in the Tr G form of B4)",
                     "slack": half * _log_gap(_log(tr_g), _log(tr1)), "kind": "extra"})
        df = pd.DataFrame(rows)
        df.attrs.update({"convention": CONVENTION, "r": r, "units": "nats (natural log)"})
        return df


def nmls(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> float:
    """NMLS = (1/n) Σ_i Σ_l ||h_{l−1}(x_i)||² MLS_l(x_i)² / ||W_l||_2², the left side of B6 (≤ Σ_l Tr G_{W_l} ≤ Tr G).
    A zero weight matrix (0/0), half precision and non-finite values are refused as in :func:`bound_table`.
    Chapter "Network-wide and reparametrization-invariant bounds"."""
    batch_size = check_batch_size(batch_size)
    _check_precision(model, "nmls")
    with measurement_mode(model):
        x = check_inputs(model, x)
        _check_no_weight_sharing(model, x)
        _check_weights_nonzero(model)
        stats = _layer_stats(model, x, batch_size)
        return float(np.mean(sum(s["h_norm2"] * s["mls"] ** 2 / s["w_spec"] ** 2 for s in stats)))
