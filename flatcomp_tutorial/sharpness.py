"""Sharpness of the training loss in parameter space (book chapter "Measuring sharpness").

The named measures, each a short composition of a curvature operator (:mod:`flatcomp_tutorial.curvature`: H v,
G v, the exact Tr G) and an estimator over any matrix-vector product (:mod:`flatcomp_tutorial.estimators`:
Hutchinson, Hutch++, control variate; :mod:`flatcomp_tutorial.krylov`: Lanczos, SLQ, eigensolvers). Every public
function returns one type.

Conventions (printed next to every number in the book):

* Loss. ``loss="mse"``: L(θ) = (1/n) Σ_i ½ ||f(x_i) − y_i||²  (mean over samples, SUM over outputs,
  factor ½; dropping the ½ doubles every trace and eigenvalue below). ``loss="cross_entropy"``:
  L(θ) = (1/n) Σ_i CE(f(x_i), c_i) with c_i the integer label, or ``argmax`` of a one-hot float target.
* The loss is over the FULL given data ``(x, y)``; chunks of ``batch_size`` samples are only a memory device
  (chunk results are combined with size-weighted means, so the numbers do not depend on ``batch_size``).
* Parameters: all parameters with ``requires_grad=True``, flattened and concatenated in
  ``model.parameters()`` order; P is their total number. ``parameters=[names]`` (qualified names as in
  ``model.named_parameters()``) restricts a measure to that diagonal block of the Hessian.
* H = ∇²_θ L = G + R, with the Gauss–Newton matrix G = (1/n) Σ_i J_iᵀ Λ_i J_i, J_i = ∂f(x_i)/∂θ (N × P),
  Λ_i = I for MSE and Λ_i = diag(s_i) − s_i s_iᵀ (softmax Hessian, s_i = softmax f(x_i)) for cross-entropy.
* Everything is computed on the model's device and in its dtype (use ``model.double()`` for exactness
  checks); eigen-solvers work in float64 on the CPU side.
* Every public function runs inside :func:`flatcomp_tutorial.checks.measurement_mode` (refuses BatchNorm in
  train mode, active dropout, non-finite parameters and half-precision models; restores train/eval flags) and
  validates ``x``/``y``. Before any product it evaluates the model once on ``x`` and refuses outputs or a loss
  that overflow to inf/NaN and random forward passes (functional dropout, noise); products that overflow later
  raise the same :class:`~flatcomp_tutorial.checks.NotFiniteError` instead of returning NaN.
* Precision: float16/bfloat16 models are refused (round-off about 1e-3/1e-2 relative swamps second
  derivatives); measure a float32 copy, ``copy.deepcopy(model).float()``.
* Counts (``k``, ``probes``, ``n_vectors``, ``lanczos_steps``, ``batch_size``, ...) must be integers (numpy
  integers too); booleans and fractions are refused.

Reparametrisation (ReLU nets; appendix entry "Reparametrisation"): rescaling W_l, b_l → cW_l, cb_l and
W_{l+1} → W_{l+1}/c changes Tr H and λ_max but not κ_l, κ_{l+1} (identity B8 with G) nor S_ad (tests/test_sharpness.py).

Slightly longer than the usual 400 lines: every named sharpness measure of the book lives here, each with the
conventions its docstring must state; the machinery is in curvature, estimators and krylov.

Symbols: Appendix "Notation and conventions", entries λ_max, Tr H, Tr G, block traces, relative flatness κ_l,
adaptive sharpness, spectral density.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import curvature as C
from . import estimators as E
from . import krylov as K
from .checks import NotFiniteError, check_count, check_real, measurement_mode
from .curvature import ggnvp, hvp  # re-exported: the chapters call sharpness.hvp
from .estimators import Estimate
from .krylov import Eigenpairs
from .layers import dense_layer, dense_layers, weight_key
from .losses import LOSSES

__all__ = [
    "Estimate",
    "Eigenpairs",
    "hvp",
    "ggnvp",
    "top_hessian_eigenvalues",
    "top_hessian_eigenpairs",
    "hessian_trace",
    "gauss_newton_trace",
    "gauss_newton_block_traces",
    "slq_nodes_weights",
    "hessian_spectral_density",
    "relative_flatness",
    "relative_flatness_estimate",
    "adaptive_sharpness",
    "adaptive_sharpness_estimate",
    "LOSSES",
]


def _operator(prob: C.Problem, curvature: str, probe_batch: int | None) -> tuple[C.CurvatureOperator, int]:
    """The curvature operator of ``prob`` and how many products to compute together: ``probe_batch``, or for
    ``None`` the operator's choice by problem size and device (batched autograd pays off only for small n·P on
    CPU)."""
    if probe_batch is not None:
        probe_batch = check_count(probe_batch, "probe_batch")
    op = C.operator(prob, curvature)
    return op, op.probe_batch if probe_batch is None else probe_batch


# --------------------------------------------------------------------------------------------------------------
# eigenvalues (Lanczos)
# --------------------------------------------------------------------------------------------------------------
def top_hessian_eigenpairs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 1, loss: str = "mse",
                           which: str = "LA", tol: float | None = None, seed: int = 0, batch_size: int | None = None,
                           parameters: Sequence[str] | None = None, ncv: int | None = None,
                           maxiter: int | None = None, rtol: float | None = None, block_size: int | None = None,
                           kato_temple: bool = False) -> Eigenpairs:
    """The k extreme eigenpairs H vᵢ = λᵢ vᵢ, each with a certified interval.

    ``which="LA"``: largest algebraic, returned in descending order (λ_max first); ``"SA"``: most negative,
    returned ascending (most negative first); ``"LM"``: largest magnitude, by descending |λ|.

    * ``tol`` given: implicitly restarted Lanczos (ARPACK's ``eigsh``, ``tol`` its relative accuracy, ``ncv``).
    * otherwise: block Lanczos (:func:`~flatcomp_tutorial.krylov.block_eigenpairs`) over batched HVPs that
      reuse one cached gradient graph, ``block_size`` vectors per product (default k), until each value is
      certified to relative accuracy ``rtol`` (default 1e-3): ‖H v − θ v‖ ≤ rtol·|θ|, or with ``kato_temple``
      the sharper ‖r‖²/gap (assumes no unresolved eigenvalue between neighbouring Ritz values).

    Default (neither ``tol`` nor ``rtol``): rtol = 1e-3 by block Lanczos; on the trained digits MLP of
    benchmarks/bench_sharpness.py λ_max is certified to ≤ 1e-3 with an actual error about 1e-6 (of order ‖r‖²/gap).
    The certificate holds for SOME eigenvalue; that it is λᵢ assumes no eigenvalue was missed (probability ~1 from a
    random start; eigenvalues closer than the residual can be confused: use ``block_size`` ≥ the cluster size).
    ``maxiter`` caps the products (a RuntimeWarning states the residuals reached).

    Returns :class:`~flatcomp_tutorial.krylov.Eigenpairs`: ``values`` (k,), unit ``vectors`` (P, k), the
    number of HVPs ``matvecs``, ``residuals`` ‖H vᵢ − λᵢ vᵢ‖ (one extra product), ``bounds`` (k, 2) and
    ``method``. Chapter "Measuring sharpness".
    """
    k, which, tol, rtol, block_size, kato_temple, seed, ncv, maxiter = K.eigen_plan(
        k, which, tol, rtol, block_size, kato_temple, seed, ncv, maxiter)
    with measurement_mode(model):
        op = C.operator(C.problem(model, x, y, loss, batch_size, parameters))
        if tol is not None:
            return K.eigenpairs(op.matmat, op.dim, k, which, tol, seed, ncv, maxiter, op.dtype, op.device)
        return K.block_eigenpairs(op.matmat, op.dim, k, which, rtol, block_size, seed, maxiter, kato_temple,
                                  op.dtype, op.device)


def top_hessian_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 1, loss: str = "mse",
                            which: str = "LA", tol: float | None = None, seed: int = 0,
                            batch_size: int | None = None, parameters: Sequence[str] | None = None,
                            ncv: int | None = None, maxiter: int | None = None, rtol: float | None = None,
                            block_size: int | None = None, kato_temple: bool = False) -> np.ndarray:
    """The k extreme eigenvalues of H (shape (k,)), ordered as in :func:`top_hessian_eigenpairs`, whose
    ``values`` they are (same arguments; use it for the eigenvectors, the certified ``bounds`` and the HVP count).
    Default: certified to 1e-3 relative. Chapter "Measuring sharpness"."""
    return top_hessian_eigenpairs(model, x, y, k, loss, which, tol, seed, batch_size, parameters, ncv,
                                  maxiter, rtol, block_size, kato_temple).values


# --------------------------------------------------------------------------------------------------------------
# traces
# --------------------------------------------------------------------------------------------------------------
def hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                  probes: int | None = None, seed: int = 0, method: str = "auto", rtol: float | None = None,
                  max_probes: int = E.TRACE_MAX_PROBES, parameters: Sequence[str] | None = None,
                  batch_size: int | None = None, probe_batch: int | None = None,
                  curvature: str = "hessian") -> Estimate:
    """Stochastic trace of H (or of its diagonal block for ``parameters``) with Rademacher probes z, at a fixed
    probe count or at the accuracy asked for; the :class:`~flatcomp_tutorial.estimators.Estimate` names the
    ``method`` used and counts its ``probes`` and curvature products ``matvecs``.

    Methods. ``"hutchinson"``: Tr H ≈ (1/m) Σ zᵀ H z, ``stderr`` = sample std / √m. ``"hutch++"`` (Meyer et al.
    2021): with the same budget of m = ``probes`` products, Tr(Qᵀ H Q) on a rank-m/3 sketch Q of H plus
    Hutchinson on the deflated residual (I − QQᵀ) H (I − QQᵀ); ``stderr`` is that of the residual part; fixed
    counts only (its sketch size comes from the budget, so ``rtol`` is refused). ``"gn-control"``: Tr H = Tr G
    (exact, :func:`gauss_newton_trace`, also for a ``parameters`` block) + Hutchinson on R = H − G (control
    variate; each probe costs 2 products, both counted in ``matvecs``; the exact Tr G, about one backward pass
    per output over the data, is not). Near a minimum R is small, so its variance 2||R||_F² (off-diagonal) is far
    below that of H: on the trained digits MLP the per-probe std drops about 25×. ``"auto"`` (default): the
    lowest-variance valid estimator (:func:`~flatcomp_tutorial.estimators.trace_plan`): ``"gn-control"`` for
    ``curvature="hessian"`` (both losses have a Gauss–Newton matrix); for ``curvature="gauss_newton"`` the EXACT
    Tr G (``method="exact"``, ``stderr`` 0, ``probes`` 0, ``matvecs`` 0).

    Accuracy. ``probes=m``: exactly m probes (the numbers of earlier versions for an explicit ``method``).
    ``rtol``: probes in batches from the same seeded stream (the first m are those of ``probes=m``) until
    ``stderr`` <= ``rtol``·|mean| (at least 8 probes; at most ``max_probes``, with a ``RuntimeWarning`` naming the
    relative error reached, and the estimate of those probes returned). Not both. Neither: ``rtol=1e-2``
    (``probes=100`` for ``"hutch++"``). Measured on the trained digits MLP of benchmarks/bench_sharpness.py
    (P = 26 122, n = 1797, float32, 2 CPU threads): the default call (auto → gn-control, rtol 1e-2) stops at the
    minimum of 8 probes, 16 products, with a relative stderr of 0.18 % in 1.6 s (0.3 s of it the exact Tr G);
    100-probe Hutchinson takes 6.0 s for 1.1 % (about 130 probes for 1 %). Far from a minimum R is not small: on
    the same network at initialisation the default needs 374 probes (85 s) for 1 % (Hutchinson: 2.4 % from 100
    probes in 5.8 s), so pass ``probes`` or a looser ``rtol`` there for a quick number. The error bars are honest:
    over 50 seeds the exact value lies within 2 stderr in at least 90 % of the estimates (tests/test_sharpness.py).

    ``probe_batch`` products are computed together (batched autograd; ``None`` picks by problem size and device).
    ``curvature="gauss_newton"`` estimates Tr G instead. Every argument is validated before any product.
    Chapter "Measuring sharpness".
    """
    method, probes, rtol, max_probes = E.trace_plan(method, probes, rtol, max_probes, curvature)
    seed = E.check_seed(seed)
    if probe_batch is not None:
        check_count(probe_batch, "probe_batch")
    with measurement_mode(model):
        prob = C.problem(model, x, y, loss, batch_size, parameters, need_y=curvature == "hessian")
        if method == "exact":
            return Estimate(float(sum(C.gauss_newton_parameter_traces(prob).values())), 0.0, 0, 0, "exact")
        op, probe_batch = _operator(prob, curvature, probe_batch)
        args = (probes, seed, probe_batch, op.dtype, op.device)
        budget = dict(rtol=rtol, max_probes=max_probes)
        if method == "hutchinson":
            return E.hutchinson(op.matmat, op.dim, *args, **budget)
        if method == "hutch++":
            return E.hutch_plus_plus(op.matmat, op.dim, *args)
        tr_g = sum(C.gauss_newton_parameter_traces(prob).values())
        gn = C.operator(prob, "gauss_newton")
        est = E.control_variate_trace(op.matmat, gn.matmat, tr_g, op.dim, *args, **budget, base_forms=gn.forms)
        return replace(est, method="gn-control")


def _gauss_newton_traces(model: nn.Module, x: torch.Tensor, loss: str, batch_size: int | None,
                         fast: bool) -> tuple[dict[str, float], float]:
    """({parameter name: exact Tr G_bb}, Tr G) over all trainable parameters; an overflow raises."""
    with measurement_mode(model):
        traces = C.gauss_newton_parameter_traces(C.problem(model, x, None, loss, batch_size, need_y=False), fast)
    total = float(sum(traces.values()))
    if not math.isfinite(total):
        raise NotFiniteError("gauss_newton_trace: Tr G is not finite at these weights (overflow in the Jacobians); "
                             "nothing to measure. Check the weights' scale, or use model.double().")
    return traces, total


def gauss_newton_trace(model: nn.Module, x: torch.Tensor, loss: str = "mse", batch_size: int | None = None,
                       fast: bool = True) -> float:
    """EXACT Tr G = (1/n) Σ_i ||J_θ(x_i)||_F² (MSE) or (1/n) Σ_i Tr(J_iᵀ Λ_i J_i) (cross-entropy).

    Dense layers (``nn.Linear`` called once on 2-D inputs; ``fast=True``): ∇_W f_a(x_i) = D_{a,i} h_iᵀ, so
    ||∇_W f_a(x_i)||² = ||D_{a,i}||² ||h_i||², with D = ∂f/∂z for all samples from N batched backward passes.
    Other parameters (convolutions, ...): per-sample Jacobians with ``vmap(jacrev)``, in chunks (about 2^24
    Jacobian entries at a time). Never a Python loop over samples. At zero MSE loss Tr G = Tr H
    (interpolation identity). Per dense layer: :func:`gauss_newton_block_traces`. Chapter "Measuring sharpness".
    """
    return _gauss_newton_traces(model, x, loss, batch_size, fast)[1]


def gauss_newton_block_traces(model: nn.Module, x: torch.Tensor, loss: str = "mse", batch_size: int | None = None,
                              fast: bool = True) -> dict[str, float]:
    """EXACT ``{dense-layer name: Tr G_{W_l}}`` for every layer of :func:`~flatcomp_tutorial.layers.dense_layers`
    (weight block only, no bias; each must be trainable) plus ``"total"`` = Tr G over all trainable parameters
    (:func:`gauss_newton_trace`, same method). Chapter "Measuring sharpness".
    """
    traces, total = _gauss_newton_traces(model, x, loss, batch_size, fast)
    result: dict[str, float] = {}
    for name, _ in dense_layers(model):
        if weight_key(name) not in traces:
            raise ValueError(
                f"the weight of dense layer '{name}' is frozen (requires_grad=False), so its block trace "
                "Tr G_W (needed per dense layer by gauss_newton_block_traces, by the bounds and by the trace_g "
                "measure of training) is not among the differentiated parameters. Make it trainable before "
                "measuring: model.requires_grad_(True) (freezing does not change the function). For a partly "
                "frozen model only the total over the trainable parameters is available: gauss_newton_trace(model, x).")
        result[name] = traces[weight_key(name)]
    result["total"] = total
    return result


# --------------------------------------------------------------------------------------------------------------
# spectral density (stochastic Lanczos quadrature)
# --------------------------------------------------------------------------------------------------------------
def slq_nodes_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                      n_vectors: int = 10, lanczos_steps: int = 80, seed: int = 0,
                      start_vectors: torch.Tensor | None = None, batch_size: int | None = None,
                      parameters: Sequence[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gauss-quadrature nodes and weights of stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each (normalised Rademacher, or given) start vector v, ``lanczos_steps`` Lanczos steps with full
    reorthogonalisation give a tridiagonal T = U diag(θ) Uᵀ; nodes θ_k, weights τ_k = U_{0k}² (sum to 1).
    Σ_k τ_k θ_k^p = vᵀ H^p v / ||v||² exactly for p ≤ 2·steps − 1, so the p-th moment of the density is
    E ≈ Tr(H^p)/P. Returns a list of ``(nodes, weights)``, one per vector. Chapter "Measuring sharpness".
    """
    lanczos_steps = check_count(lanczos_steps, "lanczos_steps")
    seed = E.check_seed(seed)
    if start_vectors is None:
        n_vectors = check_count(n_vectors, "n_vectors")
    with measurement_mode(model):
        prob = C.problem(model, x, y, loss, batch_size, parameters)
        if start_vectors is None:
            V0 = E.rademacher(n_vectors, prob.dim, torch.Generator().manual_seed(seed), prob.dtype, prob.device)
        else:
            V0, _ = prob.as_vectors(start_vectors, "start_vectors")
            if (V0.norm(dim=1) == 0).any():
                raise ValueError("start_vectors must be non-zero.")
        return K.slq(C.operator(prob).matmat, V0, lanczos_steps)


def hessian_spectral_density(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                             n_vectors: int = 10, lanczos_steps: int = 80, grid: np.ndarray | int | None = None,
                             sigma: float | None = None, seed: int = 0, batch_size: int | None = None,
                             parameters: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed spectral density of H by stochastic Lanczos quadrature.

    φ(t) ∝ (1/n_vectors) Σ_v Σ_k τ_k N(t; θ_k, σ²), normalised numerically to integrate to 1 (trapezoid)
    on the grid. Defaults: ``sigma`` = 1% of the Ritz-value range; ``grid`` (or an int = number of points,
    default 1000) spans the Ritz values ± 5σ. Returns ``(grid, density)``. Chapter "Measuring sharpness".
    """
    if sigma is not None:
        sigma = check_real(sigma, "sigma (the Gaussian smoothing width)")
    if isinstance(grid, (bool, np.bool_)):
        raise ValueError(f"grid must be an increasing 1-D array, the number of points (an integer >= 2) or None, "
                         f"got {grid!r}")
    if isinstance(grid, (int, np.integer)):
        check_count(grid, "grid (the number of points)", 2)
    nw = slq_nodes_weights(model, x, y, loss, n_vectors, lanczos_steps, seed, None, batch_size, parameters)
    nodes = np.concatenate([t for t, _ in nw])
    weights = np.concatenate([w for _, w in nw]) / len(nw)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(1e-3 * abs(hi), 1e-8)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if grid is None or isinstance(grid, (int, np.integer)):
        num = 1000 if grid is None else int(grid)
        if num < 2:
            raise ValueError(f"grid must have at least 2 points, got {num}")
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be an increasing 1-D array with at least 2 points (or the number of points).")
    dens = (weights[None, :] * np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)).sum(1)
    dens /= sigma * math.sqrt(2 * math.pi)
    area = np.trapezoid(dens, grid)
    if not area > 0:
        raise ValueError("grid does not cover the spectrum (the density vanishes on it); widen it or pass grid=None.")
    return grid, dens / area


# --------------------------------------------------------------------------------------------------------------
# reparametrisation-invariant sharpness
# --------------------------------------------------------------------------------------------------------------
def relative_flatness_estimate(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, layer: int | str,
                               loss: str = "mse", method: str = "exact", curvature: str = "hessian",
                               probes: int = 100, seed: int = 0, batch_size: int | None = None,
                               probe_batch: int | None = None) -> Estimate:
    """Relative flatness κ_l = Σ_{s,s'} ⟨w_s, w_{s'}⟩ Tr(H_{s,s'}) of dense layer ``layer`` (Petzka et al. 2021),
    with its standard error and cost as an :class:`~flatcomp_tutorial.estimators.Estimate`.

    w_s are the rows of W_l (incoming weights of unit s), H_{s,s'} = ∂²L/∂w_s∂w_{s'}. ``"exact"``: with
    A Aᵀ = W Wᵀ (A = W, or W Wᵀ's eigen-factor when that is smaller), κ = Σ_k Σ_j (a_k ⊗ e_j)ᵀ H (a_k ⊗ e_j),
    rank(W)·cols(W) block products (``stderr`` 0, ``probes`` 0). ``"hutchinson"``: κ = E[vᵀ H v], v = W Z on the
    W block, Z Rademacher (cols × cols). ``curvature="gauss_newton"`` uses G (then
    κ_l = (1/n) Σ_i ||∂f/∂h_{l−1}||_F² ||h_{l−1}||², identity B8 of the chapter "Network-wide and
    reparametrization-invariant bounds"; ``y`` may be None). Invariant to W_l → cW_l, W_{l+1} → W_{l+1}/c (ReLU),
    for both layers; under neuron-wise rescaling only κ_l (rows rescaled) is invariant, κ_{l+1} is not.
    Chapter "Measuring sharpness".
    """
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    if curvature not in C.CURVATURES:
        raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}")
    seed = E.check_seed(seed)
    if method == "hutchinson":
        probes = E.check_probes(probes)
    with measurement_mode(model):
        key = weight_key(dense_layer(model, layer)[0])
        prob = C.problem(model, x, y, loss, batch_size, [key], need_y=curvature == "hessian")
        op, probe_batch = _operator(prob, curvature, probe_batch)
        W = prob.block[key]
        m_out, m_in = W.shape
        if method == "exact":
            if m_in <= m_out:
                A = W
            else:
                lam, U = torch.linalg.eigh(W.double() @ W.double().T)
                A = (U * lam.clamp_min(0).sqrt()).to(W.dtype)  # (m_out, m_out), A Aᵀ = W Wᵀ
            r = A.shape[1]
            V = torch.zeros(r, m_in, m_out, m_in, dtype=W.dtype, device=W.device)
            for j in range(m_in):
                V[:, j, :, j] = A.T
            V = V.reshape(r * m_in, m_out * m_in)
            kappa = float(E.quadratic_forms(op.matmat, V, probe_batch).double().sum())
            return Estimate(kappa, 0.0, 0, V.shape[0], "exact")
        Z = E.rademacher(probes, m_in * m_in, torch.Generator().manual_seed(seed), op.dtype, op.device)
        V = (W[None] @ Z.reshape(probes, m_in, m_in)).reshape(probes, -1)
        return E.estimate(E.quadratic_forms(op.matmat, V, probe_batch), probes, probes)


def relative_flatness(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, layer: int | str,
                      loss: str = "mse", method: str = "exact", curvature: str = "hessian", probes: int = 100,
                      seed: int = 0, batch_size: int | None = None, probe_batch: int | None = None) -> float:
    """Relative flatness κ_l of dense layer ``layer`` (Petzka et al. 2021): the ``mean`` of
    :func:`relative_flatness_estimate` (same arguments; exact by default). Chapter "Measuring sharpness"."""
    return relative_flatness_estimate(model, x, y, layer, loss, method, curvature, probes, seed, batch_size,
                                      probe_batch).mean


def adaptive_sharpness_estimate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                                method: str = "hutchinson", probes: int | None = None, seed: int = 0,
                                batch_size: int | None = None, probe_batch: int | None = None,
                                parameters: Sequence[str] | None = None, rtol: float | None = None,
                                max_probes: int = E.TRACE_MAX_PROBES) -> Estimate:
    """Adaptive (elementwise) sharpness S_ad = Σ_j θ_j² H_jj = Tr(diag(θ) H diag(θ)) as an
    :class:`~flatcomp_tutorial.estimators.Estimate`.

    ``"hutchinson"``: E[(θ∘z)ᵀ H (θ∘z)] with Rademacher z, either ``probes`` of them (default 100) or, with
    ``rtol``, probes in batches until ``stderr`` <= ``rtol``·|mean| (at least 8, at most ``max_probes``, with a
    ``RuntimeWarning`` at the cap; the first m probes are those of ``probes=m``); ``"exact"``: the diagonal of H
    from P unit-vector products (small nets only; ``stderr`` 0). Invariant to neuron-wise rescaling of ReLU units
    (θ_j² scales like 1/H_jj). Chapter "Measuring sharpness".
    """
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    seed = E.check_seed(seed)
    if method == "hutchinson":
        probes, rtol, max_probes, min_probes = E.probes_or_rtol(probes, rtol, max_probes, E.MIN_PROBES)
    with measurement_mode(model):
        prob = C.problem(model, x, y, loss, batch_size, parameters)
        op, probe_batch = _operator(prob, "hessian", probe_batch)
        theta = prob.flatten(prob.block)
        if method == "exact":
            diag = E.diagonal(op.matmat, op.dim, probe_batch, op.dtype, op.device).double()
            total = sum(float((t ** 2 * d).sum()) for t, d in zip(theta.double().split(probe_batch),
                                                                   diag.split(probe_batch)))
            return Estimate(total, 0.0, 0, op.dim, "exact")
        gen = torch.Generator().manual_seed(seed)

        def forms(Z: torch.Tensor) -> torch.Tensor:
            return E.quadratic_forms(op.matmat, Z * theta[None], probe_batch)

        if rtol is not None:
            s = E.sample_until(forms, op.dim, rtol, max_probes, min_probes, gen, op.dtype, op.device,
                               what="adaptive_sharpness")
            return E.estimate(s, s.numel(), s.numel())
        return E.estimate(forms(E.rademacher(probes, op.dim, gen, op.dtype, op.device)), probes, probes)


def adaptive_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                       method: str = "hutchinson", probes: int | None = None, seed: int = 0,
                       batch_size: int | None = None, probe_batch: int | None = None,
                       parameters: Sequence[str] | None = None, rtol: float | None = None,
                       max_probes: int = E.TRACE_MAX_PROBES) -> float:
    """Adaptive sharpness S_ad = Σ_j θ_j² H_jj: the ``mean`` of :func:`adaptive_sharpness_estimate` (same
    arguments). Chapter "Measuring sharpness"."""
    return adaptive_sharpness_estimate(model, x, y, loss, method, probes, seed, batch_size, probe_batch,
                                       parameters, rtol, max_probes).mean
