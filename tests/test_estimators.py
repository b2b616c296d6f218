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
])
def test_bad_counts_and_choices_are_refused_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_control_variate_with_base_forms_equals_the_one_with_base_products():
    """Giving the quadratic forms zᵀBz instead of the products Bz changes the cost, not the estimate."""
    A, B = symmetric(dim=30, seed=1), psd(dim=30, seed=2)
    by_products = E.control_variate_trace(matmat(A), matmat(B), float(B.trace()), 30, probes=16, seed=3)
    by_forms = E.control_variate_trace(matmat(A), matmat(B), float(B.trace()), 30, probes=16, seed=3,
                                       base_forms=lambda Z: ((Z @ B) * Z).sum(1))
    assert close(by_forms.mean, by_products.mean) and close(by_forms.stderr, by_products.stderr)
    assert by_forms.matvecs == by_products.matvecs
