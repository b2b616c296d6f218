"""Krylov methods over ANY symmetric matrix given by its products (chapter "Measuring sharpness"): Lanczos
tridiagonals, stochastic Lanczos quadrature (the spectral density) and the extreme eigenpairs.

``matmat`` is as in :mod:`~flatcomp_tutorial.estimators`: V (m, dim) ↦ the rows A vᵢ, in the dtype and on the device
of V. Pure functions over tensors (no ``nn.Module``).

* :func:`lanczos`, :func:`gauss_quadrature`, :func:`slq`: Lanczos tridiagonals and stochastic Lanczos quadrature.
* :func:`eigenpairs`: extreme eigenpairs by implicitly restarted Lanczos (ARPACK's ``eigsh``).
* :func:`block_eigenpairs`: extreme eigenpairs by thick-restarted block Lanczos in torch (one block product per
  step), each certified to a relative accuracy ``rtol`` by its exact residual (:func:`certified_half_widths`).

Symbols: Appendix "Notation and conventions", entries "Estimators" and λ_max.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits

from .checks import check_count, check_flag, check_real, is_integer
from .estimators import Matmat, check_seed

__all__ = ["Eigenpairs", "lanczos", "gauss_quadrature", "slq", "check_eigen_options", "check_k",
           "check_block_options", "eigen_plan", "certified_half_widths", "block_eigenpairs", "eigenpairs", "WHICH"]

WHICH = ("LA", "SA", "LM")
_TAU = 0.1  # Kato–Temple uses a neighbouring Ritz value only if its residual is <= _TAU × their distance


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


def eigen_plan(k, which, tol, rtol, block_size, kato_temple, seed, ncv, maxiter) -> tuple:
    """Every option of the extreme-eigenpair solvers validated before any product: ``tol`` selects ARPACK
    (:func:`eigenpairs`, with ``ncv``); otherwise the certified block Lanczos (:func:`block_eigenpairs`) with
    ``rtol`` (default 1e-3), ``block_size`` and ``kato_temple``. Returns ``(k, which, tol, rtol, block_size,
    kato_temple, seed, ncv, maxiter)``; ``k`` against the dimension is checked by the solvers."""
    kato_temple = check_flag(kato_temple, "kato_temple")
    if tol is not None and (rtol is not None or block_size is not None or kato_temple):
        raise ValueError("tol selects ARPACK's eigsh; rtol, block_size and kato_temple select the certified block "
                         "Lanczos solver. Pass one or the other.")
    if tol is not None:
        which, tol, seed, ncv, maxiter = check_eigen_options(which, tol, seed, ncv, maxiter)
        return k, which, tol, None, None, False, seed, ncv, maxiter
    if ncv is not None:
        raise ValueError("ncv is ARPACK's (pass tol to use eigsh); the block solver takes block_size.")
    k = check_k(k, 2 ** 62)
    which, rtol, block_size, seed, maxiter = check_block_options(k, which, 1e-3 if rtol is None else rtol,
                                                                 block_size, seed, maxiter)
    return k, which, None, rtol, block_size, kato_temple, seed, None, maxiter


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
    residual with ``kato_temple=False``) is at most ``rtol``·|θ|. The residuals need no extra product: A x = Yᵀ(A Q)
    from the stored products is exact up to their rounding, which the half-widths' rounding floor (64 ulp of the
    products' dtype times max|θ|) covers. Past ``maxiter`` block products
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
        res = eps[:k]
        hw = _half_widths(th[:k], res, (th[k:], eps[k:]), which, dtype, norm_a, kato_temple)
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
