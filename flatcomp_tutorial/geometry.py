"""Local geometry of the input-output map: Jacobians, volume, sensitivity and dimensionality.

Chapter "Measuring compression". For an input x̄ and a Jacobian J (output or representation versus input or an
internal representation) with singular values σ_1 ≥ … ≥ σ_r, r = min(rows, cols):

- local volumetric ratio   log LVR(x̄) = Σ_{j≤r} log σ_j          (always in logs; < 0 means contraction)
- maximum local sensitivity  MLS(x̄) = σ_1
- local dimensionality     D_loc(x̄) = (Σ σ_j²)² / Σ σ_j⁴ ∈ [1, rank]  (invariant to J → cJ)

Numerical rank (the ``numpy.linalg.matrix_rank`` / LAPACK convention): singular values
σ_j ≤ tol = σ_1 · max(rows, cols) · eps(dtype) count as zero, eps that of the Jacobian's dtype (1.19e-7 for float32,
2.22e-16 for float64). They are reported as 0 in ``singular_values``, so a map of numerical rank < r (a hidden layer
narrower than the output, dead units, J = 0) has zero volume, log LVR = −inf, identically in float32 and float64,
instead of the log of round-off (about −60 in float32, −99 in float64 per missing direction). MLS = σ_1 stays
finite, D_loc uses the non-zero σ_j (so 1 ≤ D_loc ≤ rank) and is 0 for the zero map (σ_1 = 0). ``rank`` gives the
numerical rank per sample.

Layer indexing (module :mod:`~flatcomp_tutorial.layers`): the dense layers W_1, …, W_L are 1-based, h_l is the
input of dense layer l+1 (captured with a forward pre-hook, so any model containing ``nn.Linear`` layers works, e.g.
a CNN whose last layers are dense) and h_L = f is the output; a layer index l names h_l both as a ``source`` and as
a ``target``. Inputs are flattened to d = prod(input_shape).

Every Jacobian is computed for all samples at once with ``torch.func`` (``vmap`` of ``jacrev`` or ``jacfwd``,
whichever needs fewer passes); nothing loops over samples in Python. Jacobians (or Gaussian-ball outputs) that
are not finite although the model's outputs are raise :class:`~flatcomp_tutorial.checks.NotFiniteError`.

Symbols: Appendix "Notation and conventions", entries LVR, MLS, local dimensionality, participation ratio, Gaussian
ball.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import jacfwd, jacrev, vmap

from .checks import (LOW_PRECISION, NotFiniteError, all_finite, check_batch_size, check_count, check_inputs,
                     check_real, is_integer, measurement_mode)
from .layers import (Internal, Point, check_order, dense_layers, hooked_forward, n_dense, source_point, target_point,
                     values_at)

_CHUNK_ELEMENTS = 2**24  # Jacobian entries computed at once when batch_size is None

__all__ = [
    "jacobians",
    "preactivation_jacobians",
    "point_jacobians",
    "local_measures",
    "measures_from_jacobians",
    "gaussian_ball_measures",
    "representations",
    "participation_ratio",
    "layerwise_measures",
]


# --------------------------------------------------------------------------------------------------------------
# internal
# --------------------------------------------------------------------------------------------------------------
def _check_mode(mode: str) -> str:
    if not isinstance(mode, str) or mode not in ("auto", "rev", "fwd"):
        raise ValueError(f"mode must be 'auto', 'rev' or 'fwd', got {mode!r}")
    return mode


def _require_finite_jacobians(jac: torch.Tensor, what: str = "Jacobians") -> torch.Tensor:
    """``jac`` unchanged, or :class:`NotFiniteError` (the outputs were finite, their derivatives are not)."""
    if not all_finite(jac):
        raise NotFiniteError(
            f"the {what} are not finite (inf/NaN) at these weights and inputs although the outputs are: a derivative "
            f"overflows in {jac.dtype} or is undefined (huge weights, sqrt/log at 0, ...); nothing to measure. "
            "Check the weights' scale, or measure in float64 (model.double()).")
    return jac


def point_jacobians(model: nn.Module, x: torch.Tensor, src: Internal, tgt: Internal, batch_size: int | None = None,
                    mode: str = "auto") -> torch.Tensor:
    """Per-sample Jacobians (n, m_t, m_s) of the map between two internal points of :mod:`~flatcomp_tutorial.layers`
    (``(k, "in")`` = h_{k−1}, ``(k, "out")`` = z_k, None = input/output), for modules that address pre-activations
    (the bounds); no validation of the model, ``x`` already checked. Raises :class:`NotFiniteError` if any entry is
    inf/NaN."""
    batch_size, mode = check_batch_size(batch_size), _check_mode(mode)
    check_order(src, tgt)
    hs = values_at(model, x, src)
    with torch.no_grad():
        out_dim = hooked_forward(model, x[:1], src, tgt, hs[:1]).shape[1]
    in_dim = hs.shape[1]
    if mode == "auto":
        mode = "rev" if out_dim <= in_dim else "fwd"
    transform: Callable = jacrev if mode == "rev" else jacfwd

    def single(xi: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        if src is None:
            return hooked_forward(model, hi.reshape(xi.shape)[None], None, tgt)[0]
        return hooked_forward(model, xi[None], src, tgt, hi[None])[0]

    batched = vmap(transform(single, argnums=1))
    n = x.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, out_dim * in_dim)) if batch_size is None else batch_size
    chunks = [batched(x[i:i + step], hs[i:i + step]) for i in range(0, n, step)]
    return _require_finite_jacobians(torch.cat(chunks).detach())


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------

def jacobians(model: nn.Module, x: torch.Tensor, source: Point = "input", target: Point = "output",
              batch_size: int | None = None, mode: str = "auto") -> torch.Tensor:
    """Per-sample Jacobians ∂target/∂source, shape (n, out_dim, in_dim).

    ``source``: ``"input"`` (∂/∂x, x flattened) or l in 0..L−1 for h_l, the input of dense layer l+1 (output versus
    an internal representation, as in the network-wide bounds B6–B8). ``target``: ``"output"`` (f) or l in 0..L for
    h_l (l = L is the output). The same index names the same point h_l in both roles. ``mode``: ``"rev"`` (one backward pass per output unit),
    ``"fwd"`` (one forward-mode pass per input unit) or ``"auto"`` (the cheaper one). ``batch_size`` bounds memory
    by processing that many samples at a time (default: as many as keep about 2^24 Jacobian entries; a positive
    integer or None). Jacobians that are not finite raise :class:`~flatcomp_tutorial.checks.NotFiniteError`.
    Chapter "Measuring compression".
    """
    batch_size, mode = check_batch_size(batch_size), _check_mode(mode)
    with measurement_mode(model):
        x = check_inputs(model, x)
        return point_jacobians(model, x, source_point(model, source), target_point(model, target),
                          batch_size=batch_size, mode=mode)


def preactivation_jacobians(model: nn.Module, x: torch.Tensor, layer: int,
                            batch_size: int | None = None) -> torch.Tensor:
    """D_l(x_i) = ∂f/∂z_l, shape (n, N, m_l): the output's Jacobian with respect to the pre-activation
    z_l = W_l h_{l-1} + b_l of dense layer ``layer`` (1-based). Then ∂f/∂h_{l-1} = D_l W_l and
    ∇_{W_l} f_a = D_{l,a} h_{l-1}ᵀ (the lemma of the chapter "Flatness implies compression: the bound")."""
    batch_size = check_batch_size(batch_size)
    with measurement_mode(model):
        x = check_inputs(model, x)
        n_layers = n_dense(model)
        if not is_integer(layer) or not 1 <= layer <= n_layers:
            raise ValueError(f"layer must be a dense-layer index in 1..{n_layers}, got {layer!r}")
        return point_jacobians(model, x, (int(layer), "out"), None, batch_size=batch_size)


def _rank_tolerance(s1: torch.Tensor | float, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor | float:
    """The numerical-rank threshold tol = σ_1 · max(rows, cols) · eps(dtype) (``numpy.linalg.matrix_rank``):
    singular values σ_j ≤ tol of a (rows × cols) matrix stored in ``dtype`` count as zero."""
    return s1 * max(rows, cols) * torch.finfo(dtype).eps


def _spectrum_measures(s: torch.Tensor, tol: torch.Tensor, r: int) -> dict[str, np.ndarray]:
    """Measures from descending singular values ``s`` (n, k) in float64 (k ≥ r), those ≤ ``tol`` (n, 1) set to 0:
    log LVR = Σ_{j≤r} log σ_j (−inf when rank < r), MLS = σ_1, D_loc = (Σσ²)²/Σσ⁴ over all k (0 when all σ = 0),
    ``singular_values`` the first r, ``rank`` the number of σ_j > tol."""
    kept = torch.where(s > tol, s, torch.zeros_like(s))
    top = kept[:, :1]
    u2 = (kept / torch.where(top > 0, top, torch.ones_like(top))) ** 2  # σ_j²/σ_1²: no under/overflow in σ⁴
    sum_u2 = u2.sum(dim=1)
    local_dim = torch.where(sum_u2 > 0, sum_u2 ** 2 / (u2 * u2).sum(dim=1).clamp_min(1.0), torch.zeros_like(sum_u2))
    return {
        "log_lvr": torch.log(kept[:, :r]).sum(dim=1).cpu().numpy(),  # log 0 = −inf: zero volume, never NaN
        "mls": kept[:, 0].cpu().numpy(),
        "local_dim": local_dim.cpu().numpy(),
        "singular_values": kept[:, :r].cpu().numpy(),
        "rank": (kept > 0).sum(dim=1).cpu().numpy(),
    }


def measures_from_jacobians(jac: torch.Tensor) -> dict[str, np.ndarray]:
    """log LVR, MLS and local dimensionality of a batch of Jacobians (n, rows, cols), from batched singular values
    (computed in float64). Returns per-sample numpy arrays ``log_lvr`` = Σ_{j≤r} log σ_j, ``mls`` = σ_1,
    ``local_dim`` = (Σσ_j²)²/Σσ_j⁴, ``singular_values`` (n, r), r = min(rows, cols), and ``rank``.

    Numerical rank: σ_j ≤ σ_1 · max(rows, cols) · eps(jac.dtype) count as zero (reported as 0; pass Jacobians in
    the dtype they were computed in). Rank < r gives log LVR = −inf (zero volume); J = 0 gives log LVR = −inf,
    MLS = 0 and D_loc = 0. A Jacobian with inf/NaN raises :class:`~flatcomp_tutorial.checks.NotFiniteError`;
    float16/bfloat16 Jacobians are refused (their rank threshold would reach σ_1 itself)."""
    if not torch.is_tensor(jac) or jac.dim() != 3 or not torch.is_floating_point(jac):
        shape = tuple(jac.shape) if torch.is_tensor(jac) else type(jac).__name__
        raise ValueError(f"expected a floating-point batch of Jacobians of shape (n, rows, cols), got {shape}")
    if jac.dtype in LOW_PRECISION:
        raise ValueError(f"Jacobians in {jac.dtype} are refused: its eps makes the rank threshold σ_1 · max(rows, cols) "
                         "· eps swallow genuine singular values. Compute them from a float32 copy of the model: "
                         "copy.deepcopy(model).float().")
    _require_finite_jacobians(jac)
    _, rows, cols = jac.shape
    s = torch.linalg.svdvals(jac.detach().to(torch.float64))
    tol = _rank_tolerance(s[:, :1], rows, cols, jac.dtype)
    return _spectrum_measures(s, tol, min(rows, cols))


def local_measures(model: nn.Module, x: torch.Tensor, source: Point = "input", target: Point = "output",
                   batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Per-sample exact local measures of the map ``source`` → ``target`` (see :func:`jacobians`):
    ``log_lvr`` = Σ_{j≤r} log σ_j, ``mls`` = σ_1, ``local_dim`` = (Σσ_j²)²/Σσ_j⁴, ``singular_values`` (n, r) and
    ``rank`` (numerical rank). Singular values σ_j ≤ σ_1 · max(rows, cols) · eps(dtype) count as zero, so a map of
    rank < r (e.g. through a hidden layer narrower than the output) gives log LVR = −inf in float32 and float64
    alike (:func:`measures_from_jacobians`). Chapter "Measuring compression"."""
    return measures_from_jacobians(jacobians(model, x, source, target, batch_size=batch_size))


def gaussian_ball_measures(model: nn.Module, x: torch.Tensor, alpha: float, samples: int, seed: int = 0,
                           source: Point = "input", target: Point = "output",
                           batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Monte-Carlo local measures: for each input x̄, push ``samples`` points x̄+ε, ε ~ N(0, αI) through the map
    ``source`` → ``target`` and use the eigenvalues λ_1 ≥ λ_2 ≥ … of the sample covariance of the outputs.

    Since Cov[f(x̄+ε)] = α J Jᵀ + O(α²), λ_j/α estimates σ_j²: ``log_lvr`` = ½ Σ_{j≤r} log(λ_j/α),
    ``mls`` = sqrt(λ_1/α), ``local_dim`` = (Σλ)²/Σλ² over all eigenvalues; ``singular_values`` = sqrt(λ_j/α),
    j ≤ r, and ``rank`` the number of non-zero estimates. The estimates converge to :func:`local_measures` as
    α → 0 and ``samples`` → ∞ (bias O(α) from the curvature of the map, relative noise O(1/sqrt(samples))). Use
    float64 models for small α. ``seed`` fixes ε, so different α reuse the same directions. One forward pass over
    all n·samples points (in chunks of ``batch_size`` points if given). Chapter "Measuring compression".

    The λ_j come from the singular values of the centred outputs (never squared into a covariance matrix first).
    Numerical rank, as for the exact measures but with the outputs' own round-off as a floor: an estimate
    sqrt(λ_j/α) ≤ max(in, out) · eps(dtype) · max(sqrt(λ_1/α), max|y|/sqrt(α)), max|y| the largest output entry
    on the ball around x̄, counts as zero (round-off of size eps·|y| in the outputs alone gives sqrt(λ/α) of
    order eps·|y|/sqrt(α)). So a map of rank < r gives log LVR = −inf, as :func:`local_measures` does.

    Arguments are checked before any work: ``alpha`` a finite number > 0, ``samples`` an integer ≥ r + 1,
    ``seed`` an integer ≥ 0, ``batch_size`` a positive integer or None. Outputs on the ball that are not finite
    raise :class:`~flatcomp_tutorial.checks.NotFiniteError`.
    """
    alpha = check_real(alpha, "alpha (the variance of the Gaussian ball)", 0.0)
    samples = check_count(samples, "samples (points per Gaussian ball)", 2)
    seed = check_count(seed, "seed", 0)
    batch_size = check_batch_size(batch_size)
    with measurement_mode(model):
        x = check_inputs(model, x)
        src, tgt = source_point(model, source), target_point(model, target)
        check_order(src, tgt)
        hs = values_at(model, x, src)
        n, m_s = hs.shape
        with torch.no_grad():
            m_t = hooked_forward(model, x[:1], src, tgt, hs[:1]).shape[1]
        r = min(m_s, m_t)
        if samples < r + 1:
            raise ValueError(f"samples must be an integer >= r + 1 = {r + 1} (the sample covariance needs that many "
                             f"points to have rank r = min(in, out) = {r}), got {samples!r}")
        gen = torch.Generator(device=hs.device).manual_seed(seed)
        eps = torch.randn(n, samples, m_s, generator=gen, device=hs.device, dtype=hs.dtype)
        points = (hs[:, None, :] + math.sqrt(alpha) * eps).reshape(n * samples, m_s)
        xs = x.repeat_interleave(samples, dim=0)
        step = n * samples if batch_size is None else batch_size
        with torch.no_grad():
            if src is None:
                outs = [hooked_forward(model, points[i:i + step].reshape((-1,) + tuple(x.shape[1:])), None, tgt)
                        for i in range(0, n * samples, step)]
            else:
                outs = [hooked_forward(model, xs[i:i + step], src, tgt, points[i:i + step]) for i in range(0, n * samples, step)]
        y = torch.cat(outs)
        if not all_finite(y):
            raise NotFiniteError(f"the outputs on the Gaussian balls (alpha={alpha:g}) are not finite (inf/NaN; "
                                 f"overflow in {y.dtype}); nothing to measure. Use a smaller alpha, check the weights' "
                                 "scale, or measure in float64 (model.double()).")
        y = y.reshape(n, samples, m_t).to(torch.float64)
        yc = y - y.mean(dim=1, keepdim=True)
        sig = torch.linalg.svdvals(yc) / math.sqrt((samples - 1) * alpha)  # sqrt(λ_j/α), descending
        floor = y.abs().amax(dim=(1, 2))[:, None] / math.sqrt(alpha)
        tol = _rank_tolerance(torch.maximum(sig[:, :1], floor), m_s, m_t, hs.dtype)
        return _spectrum_measures(sig, tol, r)


def representations(model: nn.Module, x: torch.Tensor, layer: Point) -> torch.Tensor:
    """h_l for every sample, flattened to (n, m_l): the input of dense layer l+1 for l = 0, …, L-1 (h_0 is the
    input of the first dense layer, the flattened x for an MLP) and the output f for l = L or ``"output"``.
    An internal representation that overflows (inf/NaN) raises :class:`~flatcomp_tutorial.checks.NotFiniteError`
    even where a saturating unit makes the outputs finite."""
    with measurement_mode(model):
        x = check_inputs(model, x)
        try:
            tgt = target_point(model, layer)
        except ValueError:
            n_layers = n_dense(model)
            raise ValueError(f"layer must be 'output' or an integer in 0..{n_layers} (h_l is the input of dense layer "
                             f"l+1; l = {n_layers} is the output), got {layer!r}") from None
        with torch.no_grad():
            h = hooked_forward(model, x, None, tgt).detach()
        if not all_finite(h):
            raise NotFiniteError(f"the representation h_{layer} is not finite (inf/NaN; overflow in {h.dtype}) at "
                                 "these weights and inputs; check the weights' scale, or use model.double().")
        return h


def participation_ratio(features: torch.Tensor | np.ndarray) -> float:
    """Global dimensionality PR = (Σλ)²/Σλ² of the eigenvalues λ of the centred covariance of ``features``
    (n, k): ≈ k for isotropic data, 1 for data on a line. Not a claim of the paper: local ≠ global compression
    (chapter "Measuring compression"). Features whose spread max|f − mean| is at most
    max(n, k) · eps(dtype) · max|f| (constant up to round-off) raise a ``ValueError``: PR would measure round-off."""
    f = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (n, k) with n >= 2, got shape {tuple(f.shape)}")
    eps = torch.finfo(f.dtype if torch.is_floating_point(f) else torch.float64).eps
    f = f.detach().to(torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or inf.")
    fc = f - f.mean(dim=0, keepdim=True)
    if float(fc.abs().max()) <= max(f.shape) * eps * float(f.abs().max()):
        raise ValueError("features are constant across samples (zero covariance, up to round-off); the participation "
                         "ratio is undefined.")
    gram = fc.T @ fc if fc.shape[1] <= fc.shape[0] else fc @ fc.T  # same non-zero spectrum
    tr, fro2 = torch.trace(gram), (gram * gram).sum()
    return float(tr * tr / fro2)


def layerwise_measures(model: nn.Module, x: torch.Tensor, batch_size: int | None = None):
    """Per-layer sample means of log LVR, MLS and D_loc, as a pandas DataFrame with one row per dense layer l:
    columns ``rep_*`` for h_l versus the input (l = L: f versus the input) and ``out_*`` for f versus h_{l−1}
    (the maps of the network-wide bounds). A layer whose map has zero volume at some sample (numerical rank < r,
    see :func:`local_measures`) has mean log LVR = −inf. Chapter "Measuring compression"."""
    import pandas as pd

    batch_size = check_batch_size(batch_size)
    rows = []
    names = [name for name, _ in dense_layers(model)]
    for l, name in enumerate(names, start=1):
        rep = local_measures(model, x, "input", l, batch_size=batch_size)
        out = local_measures(model, x, l - 1, "output", batch_size=batch_size)
        rows.append({"layer": l, "module": name,
                     **{f"rep_{k}": float(np.mean(rep[k])) for k in ("log_lvr", "mls", "local_dim")},
                     **{f"out_{k}": float(np.mean(out[k])) for k in ("log_lvr", "mls", "local_dim")}})
    return pd.DataFrame(rows)


__all__ += ["LocalEllipse", "local_ellipse", "ball_convergence_table"]


@dataclass(frozen=True)
class LocalEllipse:
    """A small disc of inputs around ``x0`` in R² and its image under a map R² → R² (:func:`local_ellipse`):
    ``offsets`` u (n, 2) of the sampled inputs x0 + u, their polar ``angles`` (n,), the ``outputs`` f(x0 + u)
    (n, 2), ``f0`` = f(x0), and the SVD J_x = U diag(σ) Vᵀ of the Jacobian at x0 (``left_singular_vectors`` U,
    ``singular_values`` σ_1 ≥ σ_2)."""

    x0: np.ndarray
    radius: float
    offsets: np.ndarray
    angles: np.ndarray
    outputs: np.ndarray
    f0: np.ndarray
    left_singular_vectors: np.ndarray
    singular_values: np.ndarray


def local_ellipse(model: nn.Module, x0, radius: float = 0.1, n_points: int = 400, seed: int = 0) -> LocalEllipse:
    """The image of a disc of inputs under a map R² → R²: ``n_points`` inputs x0 + u drawn uniformly from the disc
    ‖u‖ ≤ ``radius`` (numpy generator seeded with ``seed``), their outputs f(x0 + u) (model in eval mode), and the
    Jacobian's SVD at x0. To first order the image is the ellipse f(x0) + J_x u with semi-axes radius·σ_1 and
    radius·σ_2, so LVR = σ_1σ_2 is its area ratio and MLS = σ_1 its longest stretch (chapter "Measuring
    compression")."""
    x0 = torch.as_tensor(x0, dtype=next(model.parameters()).dtype).reshape(1, 2)
    J = jacobians(model, x0)[0].double().numpy()
    U, s, _ = np.linalg.svd(J)
    rng = np.random.default_rng(seed)
    r = radius * np.sqrt(rng.uniform(size=n_points))
    t = rng.uniform(0, 2 * np.pi, size=n_points)
    pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    with measurement_mode(model), torch.no_grad():
        out = model(x0 + torch.as_tensor(pts, dtype=x0.dtype)).double().numpy()
        f0 = model(x0).double().numpy()[0]
    return LocalEllipse(x0=x0[0].double().numpy(), radius=radius, offsets=pts, angles=t, outputs=out, f0=f0,
                        left_singular_vectors=U, singular_values=s)


def ball_convergence_table(model: nn.Module, x: torch.Tensor, alphas, samples=(1000, 10000), seed: int = 0):
    """Relative error of the Gaussian-ball Monte-Carlo measures (:func:`gaussian_ball_measures`) against the exact
    Jacobian values (:func:`local_measures`), median over the inputs ``x``: a pandas DataFrame with one row per
    (alpha, samples) and columns ``lvr`` (|LVR_mc/LVR − 1| = |exp(log LVR_mc − log LVR) − 1|), ``mls``
    (|MLS_mc/MLS − 1|) and ``local_dim`` (|D_mc/D − 1|) (chapter "Measuring compression")."""
    import pandas as pd

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
