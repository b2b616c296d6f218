"""Specification of flatcomp_tutorial.krylov over dense float64 matrices: Lanczos and SLQ reproduce eigenvalues and
moments, ARPACK and the certified block Lanczos return the extreme eigenpairs in the documented order, and every
certified interval contains the exact eigenvalue (over many seeds and spectra)."""
from __future__ import annotations

from functools import partial

import numpy as np
import problems
import pytest
import torch
from problems import F64, matmat, symmetric, with_spectrum

from flatcomp_tutorial import estimators as E
from flatcomp_tutorial import krylov as K

close = partial(problems.close, rtol=1e-10, atol=1e-12)  # exact linear algebra: tighter than the networks' 1e-8


@pytest.mark.parametrize("call, match", [
    (lambda: K.eigenpairs(matmat(symmetric()), 30, k=30), "k must"),
    (lambda: K.eigenpairs(matmat(symmetric()), 30, which="BE"), "which must be"),
])
def test_bad_counts_and_choices_are_refused_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------ Lanczos and SLQ
def test_full_lanczos_from_any_start_vector_has_the_eigenvalues_as_ritz_values():
    A = symmetric(dim=25, seed=3)
    (alpha, beta), = K.lanczos(matmat(A), torch.randn(1, 25, dtype=F64), steps=100)
    nodes, _ = K.gauss_quadrature(alpha, beta)
    assert len(alpha) == 25 and close(np.sort(nodes), np.linalg.eigvalsh(A.numpy()), rtol=1e-8, atol=1e-10)


def test_a_few_lanczos_steps_find_a_well_separated_top_eigenvalue():
    values = np.concatenate([np.linspace(0.0, 1.0, 59), [10.0]])
    A = with_spectrum(values, seed=5)
    (alpha, beta), = K.lanczos(matmat(A), torch.ones(1, 60, dtype=F64), steps=20)
    assert close(K.gauss_quadrature(alpha, beta)[0].max(), 10.0, rtol=1e-10)


def test_lanczos_stops_when_the_krylov_space_is_exhausted():
    A = with_spectrum([1.0] * 10 + [2.0] * 10 + [5.0] * 10, seed=6)  # three distinct eigenvalues
    (alpha, beta), = K.lanczos(matmat(A), torch.randn(1, 30, dtype=F64), steps=20)
    assert len(alpha) == 3 and len(beta) == 2
    assert close(np.sort(K.gauss_quadrature(alpha, beta)[0]), [1.0, 2.0, 5.0])


def test_slq_quadrature_reproduces_the_moments_of_each_start_vector():
    """Σ_k τ_k θ_k^p = qᵀ A^p q exactly for p ≤ 2·steps − 1 (here steps = 4, p ≤ 7)."""
    A = symmetric(dim=20, seed=7) / 5
    V = torch.randn(3, 20, dtype=F64, generator=torch.Generator().manual_seed(5))
    for v, (nodes, weights) in zip(V, K.slq(matmat(A), V, steps=4)):
        q = v / v.norm()
        assert close(weights.sum(), 1.0)
        for p in range(8):
            assert close((weights * nodes ** p).sum(), float(q @ torch.linalg.matrix_power(A, p) @ q), rtol=1e-9)


def test_slq_over_the_unit_basis_with_full_steps_gives_the_exact_trace_of_f_of_a():
    """Σ_i e_iᵀ f(A) e_i = Tr f(A): with every unit vector and full Lanczos the quadrature is exact for any f."""
    A = symmetric(dim=15, seed=8) / 4
    nw = K.slq(matmat(A), torch.eye(15, dtype=F64), steps=15)
    eig = np.linalg.eigvalsh(A.numpy())
    for f in (np.exp, np.abs, lambda t: t ** 2):
        assert close(sum((w * f(t)).sum() for t, w in nw), f(eig).sum(), rtol=1e-8)


def test_slq_with_rademacher_vectors_estimates_the_trace_of_f_of_a():
    """dim · Σ_k τ_k θ_k² = zᵀ A² z: a Hutchinson sample of Tr A², unbiased within 4 standard errors."""
    A = symmetric(dim=30, seed=9)
    Z = E.rademacher(60, 30, torch.Generator().manual_seed(0))
    samples = np.array([30 * (w * t ** 2).sum() for t, w in K.slq(matmat(A), Z, steps=5)])
    exact = float((A @ A).trace())
    assert abs(samples.mean() - exact) <= 4 * samples.std(ddof=1) / np.sqrt(len(samples))


# ------------------------------------------------------------------------------------------------ eigenpairs
@pytest.mark.parametrize("which, pick", [("LA", lambda e: e[::-1][:3]), ("SA", lambda e: e[:3]),
                                         ("LM", lambda e: e[np.argsort(-np.abs(e))][:3])])
def test_eigenpairs_match_eigvalsh_in_the_documented_order(which, pick):
    A = symmetric(dim=40, seed=10)
    pairs = K.eigenpairs(matmat(A), 40, k=3, which=which, tol=1e-12)
    assert close(pairs.values, pick(np.linalg.eigvalsh(A.numpy())), rtol=1e-9)
    assert pairs.vectors.shape == (40, 3) and np.allclose(A.numpy() @ pairs.vectors, pairs.vectors * pairs.values,
                                                          atol=1e-8)
    assert isinstance(pairs.matvecs, int) and pairs.matvecs > 0


def test_eigenpairs_are_reproducible_from_the_seed():
    A = symmetric(dim=40, seed=11)
    a, b = (K.eigenpairs(matmat(A), 40, k=2, seed=3) for _ in range(2))
    assert np.array_equal(a.values, b.values) and a.matvecs == b.matvecs


# ------------------------------------------------------------------------------------------------ certified eigenpairs
def _separated(seed: int) -> torch.Tensor:
    """A 50×50 matrix whose top and bottom three eigenvalues are simple and separated from the rest (no clusters:
    a single-vector method can confuse eigenvalues closer together than its residual)."""
    r = np.random.default_rng(seed)
    return with_spectrum(np.r_[r.uniform(-1, 1, 44), [-6.0, -4.5, -3.0, 3.0, 4.5, 6.0] * r.uniform(0.9, 1.1, 6)],
                         seed=seed)


@pytest.mark.parametrize("which, k, block_size, kato_temple", [
    ("LA", 1, None, False), ("LA", 3, 3, False), ("SA", 2, None, False), ("LA", 2, 4, True), ("LM", 2, None, False)])
def test_block_eigenpairs_certified_intervals_contain_the_exact_eigenvalues_over_many_seeds(which, k, block_size,
                                                                                          kato_temple):
    """Over 20 problems: every returned interval contains the exact eigenvalue of its rank (eigvalsh), the
    half-width is at most rtol·|θ| and the returned residuals are those of the returned vectors."""
    for seed in range(20):
        A = _separated(seed)
        exact = np.linalg.eigvalsh(A.numpy())
        want = {"LA": exact[::-1], "SA": exact, "LM": exact[np.argsort(-np.abs(exact))]}[which][:k]
        pairs = K.block_eigenpairs(matmat(A), 50, k=k, which=which, rtol=1e-3, block_size=block_size, seed=seed,
                                   kato_temple=kato_temple)
        assert pairs.method == "block-lanczos" and pairs.bounds.shape == (k, 2) and pairs.vectors.shape == (50, k)
        assert ((pairs.bounds[:, 0] <= want) & (want <= pairs.bounds[:, 1])).all(), (seed, pairs, want)
        assert (pairs.bounds[:, 1] - pairs.values <= 1e-3 * np.abs(pairs.values)).all()
        res = np.linalg.norm(A.numpy() @ pairs.vectors - pairs.vectors * pairs.values, axis=0)
        assert close(pairs.residuals, res, rtol=1e-6, atol=1e-12)
        if not kato_temple:
            assert (pairs.residuals <= 1e-3 * np.abs(pairs.values)).all()


def test_block_eigenpairs_reach_tight_rtol_and_are_reproducible_from_the_seed():
    A = _separated(3)
    a, b = (K.block_eigenpairs(matmat(A), 50, k=2, rtol=1e-9, seed=5) for _ in range(2))
    assert np.array_equal(a.values, b.values) and a.matvecs == b.matvecs
    assert close(a.values, np.linalg.eigvalsh(A.numpy())[::-1][:2], rtol=1e-9)


def test_kato_temple_needs_fewer_products_than_the_residual_bound_for_a_separated_top_eigenvalue():
    A = with_spectrum(np.r_[np.linspace(0.0, 1.0, 59), [10.0]], seed=2)
    plain = K.block_eigenpairs(matmat(A), 60, rtol=1e-6, block_size=2)
    kt = K.block_eigenpairs(matmat(A), 60, rtol=1e-6, block_size=2, kato_temple=True)
    assert kt.matvecs < plain.matvecs and kt.bounds[0, 0] <= 10.0 <= kt.bounds[0, 1]


def test_certified_half_widths_use_kato_temple_only_with_a_resolved_neighbour():
    theta, eps = np.array([5.0, 1.0]), np.array([0.1, 0.01])
    assert close(K.certified_half_widths(theta, eps, True, False), [0.1 ** 2 / (5.0 - 1.01), 0.01])
    assert close(K.certified_half_widths(theta, np.array([0.1, 1.0]), True, False), [0.1, 1.0])  # 1.0 > 0.1·gap


def test_block_eigenpairs_warn_with_the_residuals_when_maxiter_is_reached():
    """Three block products (block size 1), no certifying extra product: the residuals come from the stored A Q."""
    with pytest.warns(RuntimeWarning, match=r"not certified to rtol=1e-08.*relative residuals"):
        pairs = K.block_eigenpairs(matmat(symmetric(dim=60, seed=1)), 60, rtol=1e-8, maxiter=3)
    assert pairs.matvecs == 3 and pairs.residuals[0] > 0


def test_eigsh_path_reports_residuals_and_bounds_from_one_extra_product():
    A = symmetric(dim=40, seed=10)
    pairs = K.eigenpairs(matmat(A), 40, k=2, tol=1e-10)
    exact = np.linalg.eigvalsh(A.numpy())[::-1][:2]
    assert pairs.method == "arpack" and ((pairs.bounds[:, 0] <= exact) & (exact <= pairs.bounds[:, 1])).all()
    assert (pairs.residuals < 1e-7).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(rtol=0.0), "rtol"), (dict(rtol=1.0), "rtol"), (dict(rtol=float("nan")), "rtol"),
    (dict(k=2, block_size=1), "block_size"), (dict(block_size=2.0), "block_size"), (dict(maxiter=0), "maxiter"),
    (dict(which="BE"), "which must be"), (dict(k=30), "k must"), (dict(seed=-1), "seed")])
def test_block_eigenpairs_refuse_bad_arguments_before_any_product(kwargs, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        K.block_eigenpairs(lambda V: calls.append(V) or V, 30, **kwargs)
    assert calls == []


def test_block_residuals_from_the_stored_products_equal_a_fresh_product():
    A = symmetric(dim=50, seed=4)
    pairs = K.block_eigenpairs(matmat(A), 50, k=2, rtol=1e-6, seed=2)
    V = torch.from_numpy(pairs.vectors)
    fresh = (A @ V - V * torch.from_numpy(pairs.values)).norm(dim=0).numpy()
    assert np.allclose(pairs.residuals, fresh, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(10))
def test_certified_intervals_hold_when_the_products_are_float32(seed):
    """Products rounded to float32 (as a float32 network's HVPs): the rounding floor keeps every interval valid."""
    A = with_spectrum(np.concatenate([[10.0, 6.0], np.linspace(-1.0, 3.0, 38)]), seed=seed)
    pairs = K.block_eigenpairs(lambda V: (V.float() @ A.float()).double(), 40, k=2, rtol=1e-4, seed=seed,
                               dtype=torch.float32)
    exact = np.linalg.eigvalsh(A.numpy())[::-1][:2]
    assert ((pairs.bounds[:, 0] <= exact) & (exact <= pairs.bounds[:, 1])).all()
