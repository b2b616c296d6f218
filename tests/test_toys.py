"""Specification of flatcomp_tutorial.toys: the closed-form examples of the chapters "Flatness implies compression:
the bound" (AM–GM step for a geometric spectrum) and "Why SGD finds flat minima" (GD on a quadratic)."""
import numpy as np
import pytest

from flatcomp_tutorial import toys


def test_geometric_spectrum_is_sigma1_times_powers_of_rho():
    np.testing.assert_allclose(toys.geometric_spectrum(3, 0.5, 2.0), [2.0, 1.0, 0.5])


def test_amgm_gap_is_zero_for_equal_singular_values_and_positive_otherwise():
    lv, bd = toys.amgm_gap(toys.geometric_spectrum(8, 1.0, 0.5))
    assert bd - lv == pytest.approx(0.0, abs=1e-12)
    assert lv == pytest.approx(8 * np.log(0.5))
    lv, bd = toys.amgm_gap(toys.geometric_spectrum(8, 0.5))
    assert bd - lv > 0


def test_quadratic_gd_is_stable_iff_lr_lambda_below_two():
    assert abs(toys.quadratic_gd(2.0, 0.9, steps=200)[-1]) < 1e-6      # ηλ = 1.8
    assert abs(toys.quadratic_gd(2.0, 1.1, steps=200)[-1]) > 1e6       # ηλ = 2.2
    assert np.allclose(np.abs(toys.quadratic_gd(1.0, 2.0, steps=5)), 1.0)  # ηλ = 2: oscillates, constant size


def test_quadratic_gd_starts_at_theta0_and_has_steps_plus_one_iterates():
    th = toys.quadratic_gd(1.0, 0.5, theta0=3.0, steps=4)
    np.testing.assert_allclose(th, 3.0 * 0.5 ** np.arange(5))
