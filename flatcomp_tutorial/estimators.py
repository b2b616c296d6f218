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

Lanczos, stochastic Lanczos quadrature and the extreme eigenpairs are in :mod:`~flatcomp_tutorial.krylov`.

Symbols: Appendix "Notation and conventions", entry "Estimators" (probes, standard errors).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import check_count, check_real

__all__ = ["Estimate", "Matmat", "check_probes", "check_seed", "rademacher", "estimate", "quadratic_forms",
           "apply_in_groups", "hutchinson", "hutch_plus_plus", "control_variate_trace", "diagonal", "TRACE_METHODS"]

Matmat = Callable[[torch.Tensor], torch.Tensor]
TRACE_METHODS = ("hutchinson", "hutch++", "gn-control")


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
def probes_or_rtol(probes, rtol, max_probes, min_probes) -> tuple[int | None, float | None, int, int]:
    """Validated ``(probes, rtol, max_probes, min_probes)``: a fixed count or a target, not both; neither → 100."""
    if probes is not None and rtol is not None:
        raise ValueError(f"give either probes (a fixed count) or rtol (a target accuracy), not both; got "
                         f"probes={probes!r}, rtol={rtol!r}")
    max_probes, min_probes = check_probe_budget(max_probes, min_probes)
    if rtol is not None:
        return None, check_rtol(rtol), max_probes, min_probes
    return check_probes(100 if probes is None else probes), None, max_probes, min_probes


__all__ += ["probes_or_rtol", "trace_plan", "TRACE_DEFAULT_RTOL", "TRACE_MAX_PROBES"]
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
    probes, rtol, max_probes, _ = probes_or_rtol(probes, rtol, max_probes, MIN_PROBES)
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
    probes, rtol, max_probes, min_probes = probes_or_rtol(probes, rtol, max_probes, min_probes)
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
                          min_probes: int = MIN_PROBES,
                          base_forms: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Estimate:
    """Tr A = Tr B + Tr(A − B): the known ``base_trace`` = Tr B plus Hutchinson on A − B (2 products per probe,
    counted in ``matvecs``; the cost of Tr B is not). Pays off when A − B is small, e.g. A = H, B = G near a
    minimum. ``base_forms`` (optional): V ↦ (vᵢᵀ B vᵢ)ᵢ when cheaper than B's products (for G: one jvp per probe,
    counted as one product). ``probes`` / ``rtol`` / ``max_probes`` / ``min_probes`` as in :func:`hutchinson`; with
    ``rtol`` the target is stderr <= ``rtol``·|Tr B + mean|."""
    probes, rtol, max_probes, min_probes = probes_or_rtol(probes, rtol, max_probes, min_probes)
    seed, probe_batch = check_seed(seed), check_count(probe_batch, "probe_batch")
    gen = torch.Generator().manual_seed(seed)

    def forms(Z: torch.Tensor) -> torch.Tensor:  # zᵀ (A − B) z for every row z
        if base_forms is None:
            return quadratic_forms(lambda V: matmat(V) - base_matmat(V), Z, probe_batch)
        return torch.cat([(Zg * matmat(Zg)).sum(-1) - base_forms(Zg) for Zg in Z.split(probe_batch)])

    if rtol is not None:
        s = sample_until(forms, dim, rtol, max_probes, min_probes, gen, dtype, device, offset=base_trace,
                         what="control_variate_trace")
        return estimate(s, s.numel(), 2 * s.numel(), offset=base_trace, method="control-variate")
    Z = rademacher(probes, dim, gen, dtype, device)
    samples = forms(Z)
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
