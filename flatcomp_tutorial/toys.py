"""Closed-form examples the chapters draw: a geometric Jacobian spectrum and the slack of the AM–GM step of B4
(chapter "Flatness implies compression: the bound"), and gradient descent on a one-dimensional quadratic (chapter
"Why SGD finds flat minima"). Plain numpy, no model."""
from __future__ import annotations

import numpy as np


def geometric_spectrum(r: int, rho: float, sigma1: float = 1.0) -> np.ndarray:
    """Singular values σ_j = σ_1 ρ^{j−1}, j = 1..r (a geometric spectrum; ρ = 1: all equal)."""
    return sigma1 * float(rho) ** np.arange(int(r))


def amgm_gap(sigma: np.ndarray) -> tuple[float, float]:
    """(log LVR, its AM–GM bound): Σ_j log σ_j and (r/2) log(Σ_j σ_j² / r) for singular values ``sigma``
    (chapter "Flatness implies compression: the bound"); equal iff all σ_j are equal."""
    sigma = np.asarray(sigma, dtype=float)
    r = sigma.size
    return float(np.log(sigma).sum()), float(0.5 * r * np.log((sigma ** 2).sum() / r))


def quadratic_gd(lam: float, lr: float, theta0: float = 1.0, steps: int = 30) -> np.ndarray:
    """Iterates θ_t = (1 − ηλ)^t θ_0 of gradient descent on the quadratic L(θ) = ½λθ², t = 0..steps; |θ_t| → 0 iff
    0 < ηλ < 2 (chapter "Why SGD finds flat minima")."""
    return theta0 * (1.0 - lr * lam) ** np.arange(steps + 1)
