"""Randomised linear algebra over ANY symmetric matrix given by its products (chapter "Measuring sharpness").

A matrix A (dim × dim) enters every function here only as ``matmat``: V (m, dim) ↦ the rows A vᵢ (m, dim), in
the dtype and on the device of V; a :class:`~flatcomp_tutorial.curvature.CurvatureOperator`'s ``matmat``, a dense
``lambda V: V @ A``, anything (as curvlinops' estimators take any linear operator). ``probe_batch`` rows go to
``matmat`` at a time; it only groups the products and never changes a number. Probes are Rademacher (±1) rows
drawn on the CPU from a ``torch.Generator`` seeded with ``seed``, so the same seed gives the same probes on every
device. Pure functions over tensors (no ``nn.Module``).

* :func:`hutchinson`: Tr A ≈ (1/m) Σ_k z_kᵀ A z_k, unbiased, ``stderr`` = sample std / √m.
* :func:`hutch_plus_plus` (Meyer et al. 2021): exact Tr(Qᵀ A Q) on a rank-m/3 sketch Q plus Hutchinson on the
  deflated rest; exact when rank A ≤ m/3.
* Accuracy on request: :func:`hutchinson` and :func:`control_variate_trace` with ``rtol`` draw probes in batches
  from the same seeded stream (so their first probes are those of a fixed-count call with that seed) until the
  standard error is at most ``rtol``·|mean| (:func:`sample_until`); every :class:`Estimate` names its ``method``.
* :func:`control_variate_trace`: Tr A = Tr B (known) + Hutchinson on A − B.
* :func:`lanczos`, :func:`gauss_quadrature`, :func:`slq`: Lanczos tridiagonals and stochastic Lanczos quadrature.
* :func:`eigenpairs`: extreme eigenpairs by implicitly restarted Lanczos (ARPACK's ``eigsh``).
* :func:`block_eigenpairs`: extreme eigenpairs by thick-restarted block Lanczos in torch (one block product per
  step), each certified to a relative accuracy ``rtol`` by its exact residual (:func:`certified_half_widths`).

Longer than the usual 400 lines (about 420): the certified block eigensolver shares the argument checks, the
ordering and the certificates with the ARPACK path, which fills the same ``residuals`` and ``bounds``.

Symbols: Appendix "Notation and conventions", entry "Estimators" (probes, standard errors).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits

from .checks import check_count, check_real, is_integer

__all__ = ["Estimate", "Eigenpairs", "Matmat", "check_probes", "check_seed", "check_eigen_options", "rademacher",
           "estimate", "quadratic_forms", "apply_in_groups", "hutchinson", "hutch_plus_plus", "control_variate_trace",
           "diagonal", "lanczos", "gauss_quadrature", "slq", "check_k", "check_block_options",
           "certified_half_widths", "block_eigenpairs", "eigenpairs", "TRACE_METHODS", "WHICH"]

Matmat = Callable[[torch.Tensor], torch.Tensor]
TRACE_METHODS = ("hutchinson", "hutch++", "gn-control")
WHICH = ("LA", "SA", "LM")
_TAU = 0.1  # Kato–Temple uses a neighbouring Ritz value only if its residual is <= _TAU × their distance


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate: ``mean`` ± ``stderr`` from ``probes`` probe vectors, costing ``matvecs`` HVPs,
    produced by ``method`` (``"hutchinson"``, ``"hutch++"``, ``"control-variate"``, ``"gn-control"``, ``"exact"``,
    ...; ``""`` when the producer did not say)."""

    mean: float
    stderr: float
    probes: int
    matvecs: int
    method: str = ""

    def __float__(self) -> float:
        return float(self.mean)


@dataclass(frozen=True)
class Eigenpairs:
    """Extreme eigenpairs A vᵢ ≈ λᵢ vᵢ: ``values`` (k,), unit ``vectors`` (dim, k) as columns, in the order of
    ``values``, and the number of products ``matvecs`` the solver used (the certifying products included).

    ``residuals`` (k,): ‖A vᵢ − λᵢ vᵢ‖ from one extra product of the returned vectors (exact up to rounding);
    ``bounds`` (k, 2): the certified interval [lower, upper] around each value (:func:`certified_half_widths`);
    ``method``: ``"arpack"`` (:func:`eigenpairs`) or ``"block-lanczos"`` (:func:`block_eigenpairs`)."""

    values: np.ndarray
    vectors: np.ndarray
    matvecs: int
    residuals: np.ndarray | None = None
    bounds: np.ndarray | None = None
    method: str = "arpack"


# --------------------------------------------------------------------------------------------------------------
# arguments and building blocks
# --------------------------------------------------------------------------------------------------------------
def check_probes(probes, method: str = "hutchinson") -> int:
    """``probes`` as an int: >= 3 for ``"hutch++"`` (sketch, projection, residual), >= 1 for every other method."""
    if method == "hutch++":
        return check_count(probes, "probes (hutch++ needs >= 3: sketch, projection, residual)", 3)
    return check_count(probes, "probes")


def check_seed(seed) -> int:
    """``seed`` as an int >= 0 (numpy integers accepted, booleans refused)."""
    return check_count(seed, "seed", 0)


def rademacher(m: int, dim: int, gen: torch.Generator, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """m independent Rademacher rows z ∈ {−1, +1}^dim (E[z zᵀ] = I), drawn on the CPU from ``gen``."""
    z = torch.randint(0, 2, (m, dim), generator=gen, dtype=torch.int8)
    return (2 * z - 1).to(device=device, dtype=dtype)


def estimate(samples: torch.Tensor, probes: int, matvecs: int, offset: float = 0.0,
             method: str = "hutchinson") -> Estimate:
    """``offset`` + the mean of ``samples`` ± their standard error (sample std / √m; NaN for one sample)."""
    s = samples.double()
    stderr = float(s.std(unbiased=True) / math.sqrt(s.numel())) if s.numel() > 1 else float("nan")
    return Estimate(mean=offset + float(s.mean()), stderr=stderr, probes=probes, matvecs=matvecs, method=method)


__all__ += ["check_rtol", "check_probe_budget", "sample_until", "MIN_PROBES"]
MIN_PROBES = 8  # fewest probes before a stopping test: below that the sample std (hence stderr) is itself too noisy


def check_rtol(rtol) -> float:
    """``rtol`` (the target standard error relative to |mean|) as a finite float in (0, 1)."""
    name = "rtol (the target stderr / |mean|; in (0, 1))"
    rtol = check_real(rtol, name)
    if not rtol < 1:
        raise ValueError(f"{name} must be a finite number < 1, got {rtol!r}")
    return rtol


def check_probe_budget(max_probes, min_probes=MIN_PROBES) -> tuple[int, int]:
    """``(max_probes, min_probes)`` as ints with ``MIN_PROBES`` <= min_probes <= max_probes."""
    min_probes = check_count(min_probes, f"min_probes (probes before the first stopping test; >= {MIN_PROBES} so "
                                         "that the standard error itself is usable)", MIN_PROBES)
    max_probes = check_count(max_probes, f"max_probes (the cap on probes with rtol; >= min_probes = {min_probes})",
                             min_probes)
    return max_probes, min_probes


def sample_until(forms: Callable[[torch.Tensor], torch.Tensor], dim: int, rtol: float, max_probes: int,
                 min_probes: int, gen: torch.Generator, dtype: torch.dtype, device, offset: float = 0.0,
                 what: str = "trace") -> torch.Tensor:
    """The samples ``forms(Z)`` (one per row of Z) of Rademacher batches Z drawn in turn from ``gen``, until their
    standard error is <= ``rtol`` · |``offset`` + mean| (tested first after ``min_probes`` probes) or ``max_probes``
    probes are used (then a ``RuntimeWarning`` names the relative error reached).

    Batches: ``min_probes`` first; then the number the current mean and std predict (×1.1), at most doubling the
    count so far (a noisy early std cannot order a huge batch) and never beyond ``max_probes``. Consecutive draws
    from one generator give the rows of one large draw, so the probes are those of a fixed-count call."""
    parts: list[torch.Tensor] = []
    n, size = 0, min_probes
    while True:
        parts.append(forms(rademacher(size, dim, gen, dtype, device)).double())
        n += size
        s = torch.cat(parts)
        std, mean = float(s.std(unbiased=True)), offset + float(s.mean())
        target = rtol * abs(mean)
        if std / math.sqrt(n) <= target:
            return s
        if n >= max_probes:
            rel = std / math.sqrt(n) / abs(mean) if mean != 0 else float("inf")
            warnings.warn(f"{what}: max_probes = {max_probes} probes reached with relative standard error "
                          f"{rel:.3g} > rtol = {rtol:g}; returning the estimate of these probes (raise max_probes "
                          "or loosen rtol for the requested accuracy)", RuntimeWarning, stacklevel=3)
            return s
        need = math.ceil(1.1 * (std / target) ** 2) if target > 0 else math.inf
        size = int(min(max_probes - n, n, max(need - n, 1)))


def quadratic_forms(matmat: Matmat, V: torch.Tensor, probe_batch: int) -> torch.Tensor:
    """vᵢᵀ A vᵢ for every row vᵢ of V, ``probe_batch`` rows per product call."""
    return torch.cat([(Vg * matmat(Vg)).sum(-1) for Vg in V.split(probe_batch)])


def apply_in_groups(matmat: Matmat, V: torch.Tensor, probe_batch: int) -> torch.Tensor:
    """The rows A vᵢ of every row vᵢ of V, ``probe_batch`` rows per product call."""
    return torch.cat([matmat(V[i:i + probe_batch]) for i in range(0, V.shape[0], probe_batch)], dim=0)


# --------------------------------------------------------------------------------------------------------------
# traces and diagonals
# --------------------------------------------------------------------------------------------------------------
def _probes_or_rtol(probes, rtol, max_probes, min_probes) -> tuple[int | None, float | None, int, int]:
    """Validated ``(probes, rtol, max_probes, min_probes)``: a fixed count or a target, not both; neither → 100."""
    if probes is not None and rtol is not None:
        raise ValueError(f"give either probes (a fixed count) or rtol (a target accuracy), not both; got "
                         f"probes={probes!r}, rtol={rtol!r}")
    max_probes, min_probes = check_probe_budget(max_probes, min_probes)
    if rtol is not None:
        return None, check_rtol(rtol), max_probes, min_probes
    return check_probes(100 if probes is None else probes), None, max_probes, min_probes


__all__ += ["trace_plan", "TRACE_DEFAULT_RTOL", "TRACE_MAX_PROBES"]
TRACE_DEFAULT_RTOL = 1e-2  # the accuracy of a trace call that gives neither probes nor rtol
TRACE_MAX_PROBES = 1000


def trace_plan(method: str, probes, rtol, max_probes, curvature: str = "hessian",
               gauss_newton: bool = True) -> tuple[str, int | None, float | None, int]:
    """Validated ``(method, probes, rtol, max_probes)`` of a trace of H (``curvature="hessian"``) or G, before any
    product. ``probes`` (a fixed count) and ``rtol`` (a target) exclude each other; neither → ``rtol`` =
    ``TRACE_DEFAULT_RTOL`` (``probes=100`` for ``"hutch++"``, which takes no ``rtol``). ``method="auto"`` becomes
    the lowest-variance valid estimator: ``"exact"`` for G; ``"gn-control"`` for H when the loss has a
    Gauss–Newton matrix (``gauss_newton``); otherwise ``"hutch++"`` at a fixed count of >= 3 probes, else
    ``"hutchinson"``."""
    if method not in ("auto",) + TRACE_METHODS:
        raise ValueError(f"method must be 'auto', 'hutchinson', 'hutch++' or 'gn-control', got {method!r}")
    if curvature not in ("hessian", "gauss_newton"):
        raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}")
    if method == "gn-control" and curvature != "hessian":
        raise ValueError("method='gn-control' estimates Tr H as exact Tr G + Hutchinson on H − G; it needs "
                         "curvature='hessian' (for Tr G itself use gauss_newton_trace, which is exact).")
    if method == "hutch++" and rtol is not None:
        raise ValueError("method='hutch++' takes a fixed probe count (its sketch size is a third of the budget), "
                         "not rtol; use method='hutchinson' or 'gn-control' (or 'auto') with rtol.")
    if probes is None and rtol is None:
        probes, rtol = (100, None) if method == "hutch++" else (None, TRACE_DEFAULT_RTOL)
    probes, rtol, max_probes, _ = _probes_or_rtol(probes, rtol, max_probes, MIN_PROBES)
    if method == "auto":
        method = ("exact" if curvature == "gauss_newton" else "gn-control" if gauss_newton
                  else "hutch++" if probes is not None and probes >= 3 else "hutchinson")
    return method, (check_probes(probes, method) if probes is not None else None), rtol, max_probes


def hutchinson(matmat: Matmat, dim: int, probes: int | None = None, seed: int = 0, probe_batch: int = 32,
               dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
               rtol: float | None = None, max_probes: int = 1000, min_probes: int = MIN_PROBES) -> Estimate:
    """Tr A ≈ (1/m) Σ_k z_kᵀ A z_k with m = ``probes`` Rademacher z (Var = 2 Σ_{i≠j} A_ij² per probe; default
    100 probes). With ``rtol`` instead: probes in batches until stderr <= ``rtol``·|mean| (:func:`sample_until`;
    at least ``min_probes``, at most ``max_probes``, with a ``RuntimeWarning`` at the cap)."""
    probes, rtol, max_probes, min_probes = _probes_or_rtol(probes, rtol, max_probes, min_probes)
    seed, probe_batch = check_seed(seed), check_count(probe_batch, "probe_batch")
    gen = torch.Generator().manual_seed(seed)
    if rtol is not None:
        s = sample_until(lambda Z: quadratic_forms(matmat, Z, probe_batch), dim, rtol, max_probes, min_probes, gen,
                         dtype, device, what="hutchinson")
        return estimate(s, s.numel(), s.numel())
    Z = rademacher(probes, dim, gen, dtype, device)
    return estimate(quadratic_forms(matmat, Z, probe_batch), probes, probes)


def hutch_plus_plus(matmat: Matmat, dim: int, probes: int = 100, seed: int = 0, probe_batch: int = 32,
                    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Estimate:
    """Hutch++ with m = ``probes`` products: Q = orth(A S) for k = m/3 Rademacher columns S, then
    Tr A ≈ Tr(Qᵀ A Q) + Hutchinson on (I − QQᵀ) A (I − QQᵀ) with the remaining m − 2k probes; ``stderr`` is that
    of the residual part (zero, and the trace exact, when rank A ≤ k)."""
    probes, seed = check_probes(probes, "hutch++"), check_seed(seed)
    probe_batch = check_count(probe_batch, "probe_batch")
    gen = torch.Generator().manual_seed(seed)
    k = min(probes // 3, dim)
    S = rademacher(k, dim, gen, dtype, device)
    Q, _ = torch.linalg.qr(apply_in_groups(matmat, S, probe_batch).T.double())  # (dim, k)
    Qt = Q.T.to(dtype)
    low = float((Qt * apply_in_groups(matmat, Qt, probe_batch)).sum())
    m_res = probes - 2 * k
    G = rademacher(m_res, dim, gen, dtype, device).double()
    R = (G - (G @ Q) @ Q.T).to(dtype)
    if m_res == 0:
        return Estimate(low, 0.0, probes, 2 * k, "hutch++")
    return estimate(quadratic_forms(matmat, R, probe_batch), probes, probes, offset=low, method="hutch++")


def control_variate_trace(matmat: Matmat, base_matmat: Matmat, base_trace: float, dim: int,
                          probes: int | None = None, seed: int = 0, probe_batch: int = 32,
                          dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                          rtol: float | None = None, max_probes: int = 1000,
                          min_probes: int = MIN_PROBES) -> Estimate:
    """Tr A = Tr B + Tr(A − B): the known ``base_trace`` = Tr B plus Hutchinson on A − B (2 products per probe,
    counted in ``matvecs``; the cost of Tr B is not). Pays off when A − B is small, e.g. A = H, B = G near a
    minimum. ``probes`` / ``rtol`` / ``max_probes`` / ``min_probes`` as in :func:`hutchinson`; with ``rtol`` the
    target is stderr <= ``rtol``·|Tr B + mean|."""
    probes, rtol, max_probes, min_probes = _probes_or_rtol(probes, rtol, max_probes, min_probes)
    seed, probe_batch = check_seed(seed), check_count(probe_batch, "probe_batch")
    gen = torch.Generator().manual_seed(seed)
    residual = lambda V: matmat(V) - base_matmat(V)  # noqa: E731  (A − B) V
    if rtol is not None:
        s = sample_until(lambda Z: quadratic_forms(residual, Z, probe_batch), dim, rtol, max_probes, min_probes,
                         gen, dtype, device, offset=base_trace, what="control_variate_trace")
        return estimate(s, s.numel(), 2 * s.numel(), offset=base_trace, method="control-variate")
    Z = rademacher(probes, dim, gen, dtype, device)
    samples = quadratic_forms(residual, Z, probe_batch)
    return estimate(samples, probes, 2 * probes, offset=base_trace, method="control-variate")


def diagonal(matmat: Matmat, dim: int, probe_batch: int = 32, dtype: torch.dtype = torch.float64,
             device: torch.device | str | None = None) -> torch.Tensor:
    """The exact diagonal A_jj from ``dim`` unit-vector products (small matrices only)."""
    probe_batch = check_count(probe_batch, "probe_batch")
    parts = []
    for s in range(0, dim, probe_batch):
        idx = torch.arange(s, min(s + probe_batch, dim), device=device)
        E = torch.zeros(idx.numel(), dim, dtype=dtype, device=device)
        E[torch.arange(idx.numel()), idx] = 1.0
        parts.append(matmat(E)[torch.arange(idx.numel()), idx])
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------------------------
# Lanczos and stochastic Lanczos quadrature
# --------------------------------------------------------------------------------------------------------------
def lanczos(matmat: Matmat, start_vectors: torch.Tensor, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batched Lanczos with full reorthogonalisation (twice, in float64) from each row of ``start_vectors``.

    Returns, per start vector v, the tridiagonal T = Qᵀ A Q of its Krylov basis (q_0 = v/||v||) as
    ``(alpha, beta)``: diagonal (L,) and off-diagonal (L−1,), L = min(steps, dim) or fewer when the Krylov space
    is exhausted (β below 1e-10 of the largest |α|)."""
    m, dim = start_vectors.shape
    steps = min(steps, dim)
    dt = start_vectors.dtype
    Q = torch.zeros(m, steps + 1, dim, dtype=torch.float64, device=start_vectors.device)
    Q[:, 0] = start_vectors.double() / start_vectors.double().norm(dim=1, keepdim=True)
    alpha = torch.zeros(m, steps, dtype=torch.float64)
    beta = torch.zeros(m, steps, dtype=torch.float64)
    active = torch.ones(m, dtype=torch.bool)
    length = torch.full((m,), steps, dtype=torch.long)
    for j in range(steps):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        w = matmat(Q[idx, j].to(dt)).double()
        a = (w * Q[idx, j]).sum(-1)
        alpha[idx, j] = a.cpu()
        for _ in range(2):  # full reorthogonalisation against q_0..q_j
            Qi = Q[idx, : j + 1]
            w = w - torch.einsum("mkd,mk->md", Qi, torch.einsum("mkd,md->mk", Qi, w))
        b = w.norm(dim=1)
        beta[idx, j] = b.cpu()
        scale = alpha[idx, : j + 1].abs().max(dim=1).values.to(b.device) + 1e-300
        stop = (b <= 1e-10 * scale) | (j + 1 == steps)
        stop = stop.cpu()
        done, go = idx[stop], idx[~stop]
        active[done] = False
        length[done] = j + 1
        Q[go.to(Q.device), j + 1] = w[~stop.to(w.device)] / b[~stop.to(b.device), None]
    return [(alpha[i, :int(length[i])].numpy(), beta[i, :int(length[i]) - 1].numpy()) for i in range(m)]


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes θ_k and weights τ_k = U_{0k}² of T = U diag(θ) Uᵀ (weights sum to 1):
    Σ_k τ_k θ_k^p = qᵀ A^p q exactly for p ≤ 2L − 1."""
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    theta, U = np.linalg.eigh(T)
    return theta, U[0] ** 2


def slq(matmat: Matmat, start_vectors: torch.Tensor, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019): ``(nodes, weights)`` of :func:`gauss_quadrature`
    for each start vector. With Rademacher start vectors, the average of Σ_k τ_k f(θ_k) estimates Tr f(A) / dim."""
    return [gauss_quadrature(a, b) for a, b in lanczos(matmat, start_vectors, steps)]


# --------------------------------------------------------------------------------------------------------------
# extreme eigenpairs
# --------------------------------------------------------------------------------------------------------------
def check_eigen_options(which: str, tol: float, seed: int, ncv: int | None, maxiter: int | None):
    """``(which, tol, seed, ncv, maxiter)`` validated for :func:`eigenpairs`."""
    if which not in WHICH:
        raise ValueError(f"which must be 'LA' (largest), 'SA' (most negative) or 'LM' (largest |λ|), got {which!r}")
    tol = check_real(tol, "tol (eigsh's relative accuracy; 0 means machine precision)", 0.0, strict=False)
    return (which, tol, check_seed(seed), check_count(ncv, "ncv", optional=True),
            check_count(maxiter, "maxiter", optional=True))


def check_k(k, dim: int) -> int:
    """``k`` as an int with 1 <= k < dim."""
    if not is_integer(k) or not 1 <= k < dim:
        raise ValueError(f"k must be an integer with 1 <= k < P = {dim} (Lanczos cannot return all "
                         f"eigenvalues; use a dense eigensolver for that), got {k!r}")
    return int(k)


def check_block_options(k: int, which: str, rtol: float, block_size: int | None, seed: int, maxiter: int | None):
    """``(which, rtol, block_size, seed, maxiter)`` validated for :func:`block_eigenpairs` (``k`` already an int;
    ``block_size=None`` stays None)."""
    if which not in WHICH:
        raise ValueError(f"which must be 'LA' (largest), 'SA' (most negative) or 'LM' (largest |λ|), got {which!r}")
    rtol = check_real(rtol, "rtol (the certified relative accuracy of each eigenvalue)", 0.0)
    if not rtol < 1:
        raise ValueError(f"rtol (the certified relative accuracy of each eigenvalue) must lie in (0, 1), got {rtol!r}")
    block_size = check_count(block_size, f"block_size (at least k = {k})", k, optional=True)
    return which, rtol, block_size, check_seed(seed), check_count(maxiter, "maxiter", optional=True)


def certified_half_widths(theta: np.ndarray, eps: np.ndarray, top_open: bool, bottom_open: bool,
                          floor: float = 0.0) -> np.ndarray:
    """Half-widths wᵢ of the intervals [θᵢ − wᵢ, θᵢ + wᵢ] certified for Ritz values ``theta`` (descending) with
    residual norms ``eps`` (unit Ritz vectors), plus ``floor`` (rounding in the products).

    Residual bound: some eigenvalue lies within εᵢ of θᵢ. Kato–Temple: if the only eigenvalue in (a, b) ∋ θᵢ is λ,
    then θᵢ − εᵢ²/(b − θᵢ) ≤ λ ≤ θᵢ + εᵢ²/(θᵢ − a); wᵢ = min(εᵢ, εᵢ²/δᵢ), δᵢ = min(θᵢ − a, b − θᵢ) > 0, with
    a = θᵢ₊₁ + εᵢ₊₁ and b = θᵢ₋₁ − εᵢ₋₁ from the neighbouring Ritz values (b = +∞ above the largest when
    ``top_open``, a = −∞ below the smallest when ``bottom_open``; otherwise the residual bound alone). ASSUMED, not
    certified: the Ritz values match the extreme eigenvalues in order (no eigenvalue missed by the subspace), which
    Krylov methods from a random start achieve with probability ~1; under it, each interval holds λᵢ itself."""
    w = eps.astype(float).copy()
    m = len(theta)
    for i in range(m):
        a = theta[i + 1] + eps[i + 1] if i + 1 < m and eps[i + 1] <= _TAU * (theta[i] - theta[i + 1]) else \
            (-math.inf if bottom_open and i + 1 == m else None)
        b = theta[i - 1] - eps[i - 1] if i > 0 and eps[i - 1] <= _TAU * (theta[i - 1] - theta[i]) else \
            (math.inf if top_open and i == 0 else None)
        if a is None or b is None or (math.isinf(a) and math.isinf(b)):
            continue
        gap = min(theta[i] - a, b - theta[i])
        if gap > 0:
            w[i] = min(eps[i], eps[i] ** 2 / gap)
    return w + floor


def _order(theta: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of ``theta`` in the order of ``which`` (LA descending, SA ascending, LM by descending |θ|)."""
    return {"LA": lambda t: torch.argsort(-t), "SA": torch.argsort,
            "LM": lambda t: torch.argsort(-t.abs())}[which](theta)


def _certify(matmat: Matmat, X: torch.Tensor, theta: torch.Tensor, others: tuple, which: str, dtype,
             scale: float, kato_temple: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(residual norms ‖A x − θ x‖ from ONE product of the rows X, half-widths); ``others`` = (Ritz values,
    residual norms) of the rest of the subspace for Kato–Temple's gaps (empty: only the returned values)."""
    AX = matmat(X.to(dtype)).double()
    eps = (AX - theta[:, None] * X).norm(dim=1).cpu().numpy()
    return eps, _half_widths(theta.cpu().numpy(), eps, others, which, dtype, scale, kato_temple)


def _half_widths(th: np.ndarray, eps: np.ndarray, others: tuple, which: str, dtype, scale: float,
                 kato_temple: bool) -> np.ndarray:
    """:func:`certified_half_widths` of the values ``th`` (any order) among ``others``; rounding floor 64 ulp of
    ``dtype`` times max(|θ|, ``scale``)."""
    th_all, ep_all = np.concatenate([th, others[0]]), np.concatenate([eps, others[1]])
    floor = 64 * torch.finfo(dtype).eps * max(scale, float(np.abs(th_all).max()))
    if not kato_temple:
        return eps + floor
    desc = np.argsort(-th_all, kind="stable")
    both = len(others[0]) > 0 and which == "LM"  # a complete subspace: its extremes at both ends are wanted
    w = np.empty_like(th_all)
    w[desc] = certified_half_widths(th_all[desc], ep_all[desc], which == "LA" or both, which == "SA" or both, floor)
    return w[:len(th)]


def _orthonormal_rows(W: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Rows spanning W's part orthogonal to the rows of Q, orthonormal; directions lost to rank deficiency (norm
    below 1e-10 of W's) are dropped (two rounds of projection and SVQB: W ← diag(s)^{-½} Uᵀ W from W Wᵀ = U s Uᵀ)."""
    scale = float(W.norm(dim=1).max()) if W.numel() else 0.0
    for _ in range(2):
        if Q.shape[0]:
            W = W - (W @ Q.T) @ Q
        s, U = torch.linalg.eigh(W @ W.T)
        keep = s > (1e-10 * scale) ** 2
        W = (U[:, keep] / s[keep].sqrt()).T @ W
    return W


def block_eigenpairs(matmat: Matmat, dim: int, k: int = 1, which: str = "LA", rtol: float = 1e-3,
                     block_size: int | None = None, seed: int = 0, maxiter: int | None = None,
                     kato_temple: bool = False, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> Eigenpairs:
    """The k extreme eigenpairs of A, each CERTIFIED to relative accuracy ``rtol``, by thick-restarted block
    Lanczos: one product of a block of ``block_size`` (default k) vectors per iteration.

    The basis Q (orthonormal rows, float64 on ``device``) starts from ``block_size`` N(0, I) vectors (CPU generator
    seeded with ``seed``) and grows by the orthonormalised residuals A x − θ x of the wanted, not yet certified Ritz
    vectors (they span the next block Krylov space); A Q is kept, so Rayleigh–Ritz is explicit and exact to
    rounding. At 24 vectors (or 4·block_size) the basis is restarted with its best half. A pair is certified when
    the half-width of :func:`certified_half_widths` (Kato–Temple where a gap is known, else the residual; only the
    residual with ``kato_temple=False``) is at most ``rtol``·|θ|; then ONE extra product of the k Ritz vectors
    gives the exact residuals, which the returned ``residuals`` and ``bounds`` use. Past ``maxiter`` block products
    (default 300) it returns what it has with a RuntimeWarning. ``which`` as in :func:`eigenpairs`."""
    k = check_k(k, dim)
    which, rtol, block_size, seed, maxiter = check_block_options(k, which, rtol, block_size, seed, maxiter)
    b = min(block_size or k, dim)
    maxiter = 300 if maxiter is None else maxiter
    basis = min(dim, max(24, 4 * b, 2 * k + 2 * b))
    gen = torch.Generator().manual_seed(seed)
    Q = AQ = torch.zeros(0, dim, dtype=torch.float64, device=device)
    W = torch.randn(b, dim, generator=gen, dtype=torch.float64).to(device)
    products, certified, norm_a = 0, False, 0.0
    for it in range(maxiter):
        W = _orthonormal_rows(W, Q)
        if W.shape[0] == 0:  # invariant subspace: continue from fresh random directions
            W = _orthonormal_rows(torch.randn(b, dim, generator=gen, dtype=torch.float64).to(device), Q)
        AW = matmat(W.to(dtype)).double()
        products += W.shape[0]
        Q, AQ = torch.cat([Q, W]), torch.cat([AQ, AW])
        T = Q @ AQ.T
        theta, Y = torch.linalg.eigh((T + T.T) / 2)
        idx = _order(theta, which)
        theta, Y = theta[idx], Y[:, idx]
        X, AX = Y.T @ Q, Y.T @ AQ
        R = AX - theta[:, None] * X
        eps = R.norm(dim=1).cpu().numpy()
        th = theta.cpu().numpy()
        norm_a = max(norm_a, float(np.abs(th).max()))
        done = _half_widths(th[:k], eps[:k], (th[k:], eps[k:]), which, dtype, norm_a, kato_temple) \
            <= rtol * np.abs(th[:k])
        if (done[:k].all() or Q.shape[0] == dim) and it + 1 < maxiter:
            res, hw = _certify(matmat, X[:k], theta[:k], (th[k:], eps[k:]), which, dtype, norm_a, kato_temple)
            products += k
            done = hw <= rtol * np.abs(th[:k])
            if done.all() or Q.shape[0] == dim:
                certified = True
                break
        nxt = [i for i in range(len(th)) if i >= k or not done[i]][:b]
        if Q.shape[0] + len(nxt) > basis:  # thick restart: keep the best Ritz vectors
            keep = max(k + b, basis // 2)
            Q, AQ = X[:keep], AX[:keep]
        W = R[nxt]
    if not certified:
        res, hw = _certify(matmat, X[:k], theta[:k], (th[k:], eps[k:]), which, dtype, norm_a, kato_temple)
        products += k
    if not (hw <= rtol * np.abs(th[:k])).all():
        warnings.warn(f"block_eigenpairs: not certified to rtol={rtol:g} after {products} products (maxiter={maxiter} "
                      f"blocks, or rounding in a complete subspace); "
                      f"relative residuals ‖Av − θv‖/|θ| = {np.array2string(res / np.abs(th[:k]), precision=3)}, "
                      f"certified relative half-widths {np.array2string(hw / np.abs(th[:k]), precision=3)}.",
                      RuntimeWarning, stacklevel=2)
    bounds = np.stack([th[:k] - hw, th[:k] + hw], axis=1)
    return Eigenpairs(th[:k].copy(), X[:k].T.cpu().numpy(), products, res, bounds, "block-lanczos")


def eigenpairs(matmat: Matmat, dim: int, k: int = 1, which: str = "LA", tol: float = 1e-6, seed: int = 0,
               ncv: int | None = None, maxiter: int | None = None, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> Eigenpairs:
    """The k extreme eigenpairs of A by implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``, start vector
    N(0, I) from ``seed``; products in ``dtype`` on ``device``, ARPACK in float64).

    ``which="LA"``: largest algebraic, descending; ``"SA"``: most negative, ascending; ``"LM"``: largest
    magnitude, by descending |λ|. ``tol`` is eigsh's relative accuracy. ``residuals`` and ``bounds`` come from one
    extra product of the k vectors (counted in ``matvecs``); Kato–Temple only between returned values."""
    which, tol, seed, ncv, maxiter = check_eigen_options(which, tol, seed, ncv, maxiter)
    k = check_k(k, dim)
    count = [0]

    def matvec(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(device=device, dtype=dtype)
        return matmat(t[None])[0].double().cpu().numpy()

    op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    # ARPACK's BLAS threads spin after each call and starve torch's threads during the next matvec (twice the
    # wall time on 2 cores, benchmarks/results.md); ARPACK's own vector work is tiny, so it gets one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        vals, vecs = eigsh(op, k=k, which=which, tol=tol, v0=v0, ncv=ncv, maxiter=maxiter,
                           return_eigenvectors=True)
    order = {"LA": np.argsort(-vals), "SA": np.argsort(vals), "LM": np.argsort(-np.abs(vals))}[which]
    vals, vecs = vals[order], vecs[:, order]
    X = torch.from_numpy(np.ascontiguousarray(vecs.T)).to(device)
    res, hw = _certify(matmat, X, torch.from_numpy(vals).to(device), (np.zeros(0), np.zeros(0)), which, dtype, 0.0)
    return Eigenpairs(vals, vecs, count[0] + k, res, np.stack([vals - hw, vals + hw], axis=1), "arpack")
