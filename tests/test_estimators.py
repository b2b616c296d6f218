"""Specification of flatcomp_tutorial.estimators (chapter "Measuring sharpness"): every estimator on dense float64
matrices, where the exact trace, diagonal and spectrum are known.

The estimators see a matrix A only through ``matmat(V) = V @ A`` (A symmetric, so the rows are A vᵢ). Exactness
tolerances are relative 1e-10 unless stated; stochastic estimates must lie within 4 reported standard errors.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import problems
import pytest
import torch
from problems import F64, matmat, psd, symmetric, with_spectrum

from flatcomp_tutorial import estimators as E


close = partial(problems.close, rtol=1e-10, atol=1e-12)  # exact linear algebra: tighter than the networks' 1e-8


# ------------------------------------------------------------------------------------------------ building blocks
def test_rademacher_rows_are_plus_or_minus_one_and_reproducible_from_the_seed():
    Z = E.rademacher(50, 20, torch.Generator().manual_seed(3))
    assert Z.shape == (50, 20) and Z.dtype == F64 and set(Z.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(Z.float(), E.rademacher(50, 20, torch.Generator().manual_seed(3), torch.float32))


def test_an_estimate_from_one_sample_has_no_standard_error():
    est = E.estimate(torch.tensor([2.5]), probes=1, matvecs=1, offset=1.0)
    assert est.mean == 3.5 and np.isnan(est.stderr) and float(est) == 3.5
    assert repr(est) == "Estimate(mean=3.5, stderr=nan, probes=1, matvecs=1, method='hutchinson')"


def test_quadratic_forms_are_the_rows_vt_a_v():
    A = symmetric()
    V = torch.randn(7, 30, dtype=F64)
    assert close(E.quadratic_forms(matmat(A), V, 3), torch.einsum("md,de,me->m", V, A, V))


def test_diagonal_is_the_exact_diagonal():
    A = symmetric()
    assert close(E.diagonal(matmat(A), 30, probe_batch=7), A.diagonal())


# ------------------------------------------------------------------------------------------------ traces
@pytest.mark.parametrize("A", [symmetric(), psd()], ids=["symmetric", "psd"])
def test_hutchinson_is_within_four_standard_errors_of_the_trace(A):
    est = E.hutchinson(matmat(A), 30, probes=200, seed=1)
    assert (est.probes, est.matvecs) == (200, 200)
    assert 0 < est.stderr and abs(est.mean - float(A.trace())) <= 4 * est.stderr


def test_hutchinson_is_unbiased_over_many_seeds():
    """The mean over 40 independent 25-probe estimates is within 4 of its standard errors of Tr A."""
    A = symmetric(dim=20, seed=4)
    means = np.array([E.hutchinson(matmat(A), 20, probes=25, seed=s).mean for s in range(40)])
    assert abs(means.mean() - float(A.trace())) <= 4 * means.std(ddof=1) / np.sqrt(len(means))


def test_hutchinson_variance_per_probe_is_twice_the_off_diagonal_frobenius_norm():
    """Var(zᵀ A z) = 2 Σ_{i≠j} A_ij² for Rademacher z; 4000 probes pin it to about 5%."""
    A = symmetric(dim=10, seed=2)
    est = E.hutchinson(matmat(A), 10, probes=4000, seed=0, probe_batch=1000)
    off = A - torch.diag(A.diagonal())
    assert close(est.stderr ** 2 * est.probes, 2 * float((off ** 2).sum()), rtol=0.15)


def test_hutchinson_of_a_diagonal_matrix_is_exact_with_zero_spread():
    D = torch.diag(torch.arange(1.0, 11.0, dtype=F64))
    est = E.hutchinson(matmat(D), 10, probes=5)
    assert close(est.mean, 55.0) and est.stderr == 0.0


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_hutch_plus_plus_is_exact_for_matrices_of_rank_at_most_a_third_of_the_probes(rank):
    A = psd(dim=40, rank=rank, seed=rank)
    est = E.hutch_plus_plus(matmat(A), 40, probes=15, seed=0)  # sketch of 15 // 3 = 5 directions
    assert close(est.mean, float(A.trace())) and est.stderr <= 1e-10 * float(A.trace())
    assert (est.probes, est.matvecs) == (15, 15)


def test_hutch_plus_plus_beats_hutchinson_at_equal_budget_on_a_decaying_spectrum():
    A = with_spectrum(1.0 / np.arange(1, 41) ** 2, seed=1)
    budget = 30
    hutch = E.hutchinson(matmat(A), 40, probes=budget, seed=2)
    hpp = E.hutch_plus_plus(matmat(A), 40, probes=budget, seed=2)
    assert abs(hpp.mean - float(A.trace())) <= 4 * hpp.stderr and hpp.stderr < hutch.stderr


def test_hutch_plus_plus_needs_three_probes():
    with pytest.raises(ValueError, match=r"probes \(hutch\+\+ needs >= 3"):
        E.hutch_plus_plus(matmat(symmetric()), 30, probes=2)


def test_control_variate_with_the_matrix_itself_as_base_is_exact():
    A = symmetric()
    est = E.control_variate_trace(matmat(A), matmat(A), float(A.trace()), 30, probes=6)
    assert est.mean == float(A.trace()) and est.stderr == 0.0 and (est.probes, est.matvecs) == (6, 12)


def test_control_variate_is_within_four_standard_errors_and_tighter_than_hutchinson():
    """A = B + R with a small R: the estimate is Tr B + Hutchinson on R, whose spread is that of R alone."""
    B, R = psd(seed=1), 0.01 * symmetric(seed=2)
    A = B + R
    est = E.control_variate_trace(matmat(A), matmat(B), float(B.trace()), 30, probes=20, seed=3)
    plain = E.hutchinson(matmat(A), 30, probes=20, seed=3)
    assert abs(est.mean - float(A.trace())) <= 4 * est.stderr and est.stderr < 0.1 * plain.stderr


# ------------------------------------------------------------------------------------------------ accuracy on request
def test_with_rtol_hutchinson_draws_probes_until_the_stderr_is_at_most_rtol_times_the_mean():
    A = psd(seed=3)
    est = E.hutchinson(matmat(A), 30, rtol=0.02, seed=1)
    assert est.stderr <= 0.02 * abs(est.mean) and est.probes >= E.MIN_PROBES and est.matvecs == est.probes
    assert est.method == "hutchinson" and abs(est.mean - float(A.trace())) <= 4 * est.stderr


def test_an_adaptive_call_uses_the_first_probes_of_the_fixed_count_call_with_the_same_seed():
    A = psd(seed=3)
    adaptive = E.hutchinson(matmat(A), 30, rtol=0.02, seed=5, probe_batch=7)
    fixed = E.hutchinson(matmat(A), 30, probes=adaptive.probes, seed=5)
    assert close(adaptive.mean, fixed.mean, rtol=1e-12) and close(adaptive.stderr, fixed.stderr, rtol=1e-10)


def test_with_rtol_the_control_variate_counts_two_products_per_probe_and_aims_at_the_full_trace():
    B, R = psd(seed=1), 0.05 * symmetric(seed=2)
    est = E.control_variate_trace(matmat(B + R), matmat(B), float(B.trace()), 30, rtol=1e-3, seed=3)
    assert est.stderr <= 1e-3 * abs(est.mean) and est.matvecs == 2 * est.probes
    assert est.method == "control-variate" and abs(est.mean - float((B + R).trace())) <= 4 * est.stderr


def test_a_zero_variance_estimate_stops_after_the_minimum_number_of_probes():
    D = torch.diag(torch.arange(1.0, 11.0, dtype=F64))
    est = E.hutchinson(matmat(D), 10, rtol=1e-6)
    assert est.probes == E.MIN_PROBES and close(est.mean, 55.0) and est.stderr == 0.0


def test_the_max_probes_cap_warns_with_the_relative_error_reached_and_returns_its_estimate():
    A = symmetric(seed=4)
    with pytest.warns(RuntimeWarning, match=r"max_probes = 20 probes reached with relative standard error"):
        est = E.hutchinson(matmat(A), 30, rtol=1e-4, max_probes=20, seed=2)
    assert est.probes == 20 and close(est.mean, E.hutchinson(matmat(A), 30, probes=20, seed=2).mean, rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(probes=10, rtol=0.1), "either probes .* or rtol"),
    (dict(rtol=0.0), "rtol"), (dict(rtol=1.0), "rtol"), (dict(rtol=float("nan")), "rtol"), (dict(rtol=True), "rtol"),
    (dict(rtol=0.1, min_probes=4), "min_probes"), (dict(rtol=0.1, max_probes=7), "max_probes"),
    (dict(rtol=0.1, max_probes=2.5), "max_probes"),
])
def test_bad_accuracy_options_are_refused_before_any_product(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.hutchinson(lambda V: pytest.fail("a product was started"), 30, **kwargs)


@pytest.mark.parametrize("estimator", ["hutchinson", "hutch_plus_plus", "control_variate_trace"])
def test_probe_batch_groups_the_products_without_changing_the_estimate(estimator):
    A, B = symmetric(), psd()
    fn = getattr(E, estimator)
    args = (matmat(A), matmat(B), float(B.trace())) if estimator == "control_variate_trace" else (matmat(A),)
    ests = [fn(*args, 30, probes=12, seed=4, probe_batch=b) for b in (1, 5, 12, 100)]
    for est in ests[1:]:
        assert close(est.mean, ests[0].mean, rtol=1e-12) and close(est.stderr, ests[0].stderr, rtol=1e-10)


def test_estimators_call_the_matvec_in_the_requested_dtype():
    A = symmetric().float()
    seen = set()

    def mv(V):
        seen.add(V.dtype)
        return V @ A

    est = E.hutchinson(mv, 30, probes=10, dtype=torch.float32)
    E.hutch_plus_plus(mv, 30, probes=9, dtype=torch.float32)
    assert seen == {torch.float32} and isinstance(est.mean, float)


@pytest.mark.parametrize("call, match", [
    (lambda: E.hutchinson(matmat(symmetric()), 30, probes=0), "probes must be"),
    (lambda: E.hutchinson(matmat(symmetric()), 30, probes=True), "probes must be an integer"),
    (lambda: E.hutchinson(matmat(symmetric()), 30, probes=4, seed=-1), "seed"),
    (lambda: E.hutchinson(matmat(symmetric()), 30, probes=4, probe_batch=0), "probe_batch"),
    (lambda: E.eigenpairs(matmat(symmetric()), 30, k=30), "k must"),
    (lambda: E.eigenpairs(matmat(symmetric()), 30, which="BE"), "which must be"),
])
def test_bad_counts_and_choices_are_refused_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------ Lanczos and SLQ
def test_full_lanczos_from_any_start_vector_has_the_eigenvalues_as_ritz_values():
    A = symmetric(dim=25, seed=3)
    (alpha, beta), = E.lanczos(matmat(A), torch.randn(1, 25, dtype=F64), steps=100)
    nodes, _ = E.gauss_quadrature(alpha, beta)
    assert len(alpha) == 25 and close(np.sort(nodes), np.linalg.eigvalsh(A.numpy()), rtol=1e-8, atol=1e-10)


def test_a_few_lanczos_steps_find_a_well_separated_top_eigenvalue():
    values = np.concatenate([np.linspace(0.0, 1.0, 59), [10.0]])
    A = with_spectrum(values, seed=5)
    (alpha, beta), = E.lanczos(matmat(A), torch.ones(1, 60, dtype=F64), steps=20)
    assert close(E.gauss_quadrature(alpha, beta)[0].max(), 10.0, rtol=1e-10)


def test_lanczos_stops_when_the_krylov_space_is_exhausted():
    A = with_spectrum([1.0] * 10 + [2.0] * 10 + [5.0] * 10, seed=6)  # three distinct eigenvalues
    (alpha, beta), = E.lanczos(matmat(A), torch.randn(1, 30, dtype=F64), steps=20)
    assert len(alpha) == 3 and len(beta) == 2
    assert close(np.sort(E.gauss_quadrature(alpha, beta)[0]), [1.0, 2.0, 5.0])


def test_slq_quadrature_reproduces_the_moments_of_each_start_vector():
    """Σ_k τ_k θ_k^p = qᵀ A^p q exactly for p ≤ 2·steps − 1 (here steps = 4, p ≤ 7)."""
    A = symmetric(dim=20, seed=7) / 5
    V = torch.randn(3, 20, dtype=F64, generator=torch.Generator().manual_seed(5))
    for v, (nodes, weights) in zip(V, E.slq(matmat(A), V, steps=4)):
        q = v / v.norm()
        assert close(weights.sum(), 1.0)
        for p in range(8):
            assert close((weights * nodes ** p).sum(), float(q @ torch.linalg.matrix_power(A, p) @ q), rtol=1e-9)


def test_slq_over_the_unit_basis_with_full_steps_gives_the_exact_trace_of_f_of_a():
    """Σ_i e_iᵀ f(A) e_i = Tr f(A): with every unit vector and full Lanczos the quadrature is exact for any f."""
    A = symmetric(dim=15, seed=8) / 4
    nw = E.slq(matmat(A), torch.eye(15, dtype=F64), steps=15)
    eig = np.linalg.eigvalsh(A.numpy())
    for f in (np.exp, np.abs, lambda t: t ** 2):
        assert close(sum((w * f(t)).sum() for t, w in nw), f(eig).sum(), rtol=1e-8)


def test_slq_with_rademacher_vectors_estimates_the_trace_of_f_of_a():
    """dim · Σ_k τ_k θ_k² = zᵀ A² z: a Hutchinson sample of Tr A², unbiased within 4 standard errors."""
    A = symmetric(dim=30, seed=9)
    Z = E.rademacher(60, 30, torch.Generator().manual_seed(0))
    samples = np.array([30 * (w * t ** 2).sum() for t, w in E.slq(matmat(A), Z, steps=5)])
    exact = float((A @ A).trace())
    assert abs(samples.mean() - exact) <= 4 * samples.std(ddof=1) / np.sqrt(len(samples))


# ------------------------------------------------------------------------------------------------ eigenpairs
@pytest.mark.parametrize("which, pick", [("LA", lambda e: e[::-1][:3]), ("SA", lambda e: e[:3]),
                                         ("LM", lambda e: e[np.argsort(-np.abs(e))][:3])])
def test_eigenpairs_match_eigvalsh_in_the_documented_order(which, pick):
    A = symmetric(dim=40, seed=10)
    pairs = E.eigenpairs(matmat(A), 40, k=3, which=which, tol=1e-12)
    assert close(pairs.values, pick(np.linalg.eigvalsh(A.numpy())), rtol=1e-9)
    assert pairs.vectors.shape == (40, 3) and np.allclose(A.numpy() @ pairs.vectors, pairs.vectors * pairs.values,
                                                          atol=1e-8)
    assert isinstance(pairs.matvecs, int) and pairs.matvecs > 0


def test_eigenpairs_are_reproducible_from_the_seed():
    A = symmetric(dim=40, seed=11)
    a, b = (E.eigenpairs(matmat(A), 40, k=2, seed=3) for _ in range(2))
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
        pairs = E.block_eigenpairs(matmat(A), 50, k=k, which=which, rtol=1e-3, block_size=block_size, seed=seed,
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
    a, b = (E.block_eigenpairs(matmat(A), 50, k=2, rtol=1e-9, seed=5) for _ in range(2))
    assert np.array_equal(a.values, b.values) and a.matvecs == b.matvecs
    assert close(a.values, np.linalg.eigvalsh(A.numpy())[::-1][:2], rtol=1e-9)


def test_kato_temple_needs_fewer_products_than_the_residual_bound_for_a_separated_top_eigenvalue():
    A = with_spectrum(np.r_[np.linspace(0.0, 1.0, 59), [10.0]], seed=2)
    plain = E.block_eigenpairs(matmat(A), 60, rtol=1e-6, block_size=2)
    kt = E.block_eigenpairs(matmat(A), 60, rtol=1e-6, block_size=2, kato_temple=True)
    assert kt.matvecs < plain.matvecs and kt.bounds[0, 0] <= 10.0 <= kt.bounds[0, 1]


def test_certified_half_widths_use_kato_temple_only_with_a_resolved_neighbour():
    theta, eps = np.array([5.0, 1.0]), np.array([0.1, 0.01])
    assert close(E.certified_half_widths(theta, eps, True, False), [0.1 ** 2 / (5.0 - 1.01), 0.01])
    assert close(E.certified_half_widths(theta, np.array([0.1, 1.0]), True, False), [0.1, 1.0])  # 1.0 > 0.1·gap


def test_block_eigenpairs_warn_with_the_residuals_when_maxiter_is_reached():
    with pytest.warns(RuntimeWarning, match=r"not certified to rtol=1e-08.*relative residuals"):
        pairs = E.block_eigenpairs(matmat(symmetric(dim=60, seed=1)), 60, rtol=1e-8, maxiter=3)
    assert pairs.matvecs == 4 and pairs.residuals[0] > 0


def test_eigsh_path_reports_residuals_and_bounds_from_one_extra_product():
    A = symmetric(dim=40, seed=10)
    pairs = E.eigenpairs(matmat(A), 40, k=2, tol=1e-10)
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
        E.block_eigenpairs(lambda V: calls.append(V) or V, 30, **kwargs)
    assert calls == []
