"""Specification of flatcomp_tutorial.robustness: attacks against exact answers on linear classifiers (float64).

For a linear model f(x) = W x + b the input gradient of every attack objective is known in closed form and the L2
distance from x to the region of another class is min_{c'} (f_c − f_{c'}) / ||w_c − w_{c'}||, so FGSM directions,
the PGD/bisection radius and the linearised radius are checked against formulas (relative 1e-6 unless stated).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from problems import exact_linear_radius, inputs, linear, mlp, overflowing, own_labels

from flatcomp_tutorial import geometry
from flatcomp_tutorial import robustness as R


# ------------------------------------------------------------------------------------------------ FGSM / PGD
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_zero_budget_leaves_the_inputs_unchanged(attack, norm):
    model = linear()
    x = inputs(16, 5, seed=1)
    adv = getattr(R, attack)(model, x, own_labels(model, x), 0.0, norm=norm)
    assert torch.equal(adv, x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_perturbation_stays_inside_the_ball(norm, random_start):
    model = mlp(5, 3, width=8)
    x = inputs(16, 5, seed=1)
    eps = 0.3
    adv = R.pgd(model, x, own_labels(model, x), eps, steps=7, norm=norm, random_start=random_start)
    size = (adv - x).norm(dim=1) if norm == "l2" else (adv - x).abs().amax(dim=1)
    assert (size <= eps * (1 + 1e-12)).all()


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "margin"])
def test_l2_fgsm_on_a_linear_model_moves_eps_along_the_normalised_objective_gradient(loss):
    model = linear()
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    W, b = model[0].weight.detach(), model[0].bias.detach()
    out = x @ W.T + b
    onehot = torch.nn.functional.one_hot(labels, 3).double()
    if loss == "mse":
        g_out = out - onehot
    elif loss == "cross_entropy":
        g_out = torch.softmax(out, 1) - onehot
    else:
        runner_up = out.masked_fill(onehot.bool(), -math.inf).argmax(1)
        g_out = torch.nn.functional.one_hot(runner_up, 3).double() - onehot
    g = g_out @ W  # ∂ objective / ∂x
    expected = x + 0.2 * g / g.norm(dim=1, keepdim=True)
    assert torch.allclose(R.fgsm(model, x, labels, 0.2, loss=loss), expected, rtol=1e-10, atol=1e-12)


def test_linf_fgsm_is_eps_times_the_sign_of_the_gradient():
    model = linear()
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    W, b = model[0].weight.detach(), model[0].bias.detach()
    g = ((x @ W.T + b) - torch.nn.functional.one_hot(labels, 3).double()) @ W
    assert torch.allclose(R.fgsm(model, x, labels, 0.1, norm="linf"), x + 0.1 * g.sign(), rtol=0, atol=1e-14)


def test_one_pgd_step_of_size_eps_is_fgsm():
    model = mlp(5, 3, width=8, seed=2)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    assert torch.allclose(R.pgd(model, x, labels, 0.25, steps=1, step_size=0.25, loss="mse"), R.fgsm(model, x, labels, 0.25),
                          rtol=0, atol=1e-14)


def test_per_input_radii_are_respected():
    model = linear()
    x = inputs(4, 5, seed=1)
    eps = torch.tensor([0.0, 0.1, 0.2, 0.4], dtype=torch.float64)
    adv = R.fgsm(model, x, own_labels(model, x), eps)
    assert torch.allclose((adv - x).norm(dim=1), eps, atol=1e-12)


# ------------------------------------------------------------------------------------------------ radii
def _pgd_and_exact_radius(n_out):
    model = linear(n_out=n_out)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    found = R.adversarial_radius(model, x, labels, eps_max=10.0, steps=10, bisection=30)
    return found, exact_linear_radius(model, x, labels)


def test_bisection_radius_of_a_binary_linear_classifier_is_its_distance_to_the_decision_boundary():
    found, exact = _pgd_and_exact_radius(2)
    assert np.allclose(found, exact, rtol=1e-6)


def test_bisection_radius_never_undercuts_the_true_distance_with_several_classes():
    """PGD follows the current runner-up logit, which need not be the nearest boundary: found >= exact."""
    found, exact = _pgd_and_exact_radius(3)
    assert (found >= exact * (1 - 1e-9)).all() and np.isclose(found, exact, rtol=1e-6).mean() >= 0.5


def test_linearised_radius_is_exact_for_a_linear_classifier_and_the_mls_radius_lies_below_it():
    model = linear(n_out=4)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    r = R.linear_radius(model, x, labels)
    assert np.allclose(r["linearized"], exact_linear_radius(model, x, labels), rtol=1e-10)
    assert (r["mls_bound"] <= r["linearized"] * (1 + 1e-12)).all()


def test_mls_in_the_radius_is_the_local_measure_of_the_geometry_module():
    model = mlp(5, 3, width=8, seed=3)
    x = inputs(16, 5, seed=1)
    r = R.linear_radius(model, x, own_labels(model, x))
    assert np.allclose(r["mls"], geometry.local_measures(model, x)["mls"], rtol=1e-10)
    assert (r["mls_bound"] <= r["linearized"] * (1 + 1e-12)).all() and (r["margin"] > 0).all()


def test_misclassified_inputs_have_radius_zero_and_unreachable_ones_infinity():
    model = linear(n_out=2)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    labels[0] = 1 - labels[0]  # now misclassified
    exact = exact_linear_radius(model, x, own_labels(model, x))
    eps_max = float(np.median(exact[1:]))
    r = R.adversarial_radius(model, x, labels, eps_max=eps_max, steps=10, bisection=8)
    assert r[0] == 0.0
    far = exact > eps_max * 1.001
    far[0] = False
    assert far.any() and np.isinf(r[far]).all() and np.isfinite(r[~far]).all()


def test_success_rate_is_zero_without_budget_and_one_beyond_every_boundary():
    model = linear(n_out=2)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    reach = float(exact_linear_radius(model, x, labels).max())
    assert R.attack_success_rate(model, x, labels, 0.0) == 0.0
    assert R.attack_success_rate(model, x, labels, 1.01 * reach, steps=10) == 1.0
    assert R.attack_success_rate(model, x, labels, 1.01 * reach, method="fgsm", loss="margin") > 0


def test_success_rate_counts_only_correctly_classified_inputs():
    model = linear(n_out=2)
    x = inputs(10, 5, seed=1)
    labels = 1 - own_labels(model, x)  # every input misclassified
    assert math.isnan(R.attack_success_rate(model, x, labels, 1.0))


def _mirror(model, x):
    """Reflection of each input of a binary linear classifier across its decision boundary."""
    W, b = model[0].weight.detach(), model[0].bias.detach()
    w, c = W[0] - W[1], b[0] - b[1]
    return x - 2 * ((x @ w + c) / (w @ w))[:, None] * w


def test_segment_radius_to_the_mirror_image_is_the_exact_distance_to_the_boundary():
    model = linear(n_out=2)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    r = R.segment_radius(model, x, labels, _mirror(model, x), k=16, bisection=40)  # own mirror among them
    assert np.allclose(r, exact_linear_radius(model, x, labels), rtol=1e-9)


def test_segment_radius_is_an_upper_bound_on_the_distance_to_the_boundary():
    model = linear(n_out=3)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    r = R.segment_radius(model, x, labels, inputs(200, 5, seed=5), k=3)
    assert (r >= exact_linear_radius(model, x, labels) * (1 - 1e-9)).all() and np.isfinite(r).all()


def test_segment_radius_is_zero_for_misclassified_and_infinite_without_anchors_of_another_class():
    model = linear(n_out=2)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    same = x[labels == labels[0]]
    r = R.segment_radius(model, x[labels == labels[0]], labels[labels == labels[0]], same)
    assert np.isinf(r).all()
    flipped = labels.clone()
    flipped[0] = 1 - flipped[0]
    assert R.segment_radius(model, x, flipped, _mirror(model, x))[0] == 0.0


def test_robustness_summary_takes_the_closer_of_pgd_and_segment_points():
    model = linear(n_out=2)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    result = R.robustness_measures(model, x, labels, eps=0.5, eps_max=8.0, anchors=_mirror(model, x))
    row, r = result.row, result.radii
    assert row["median_radius"] == np.median(r["empirical"]) and row["inputs_mean_mls"] == np.mean(r["mls"])
    assert row["median_radius"] <= min(row["median_pgd_radius"], row["median_segment_radius"]) * (1 + 1e-12)
    assert np.isclose(row["median_radius"], np.median(exact_linear_radius(model, x, labels)), rtol=1e-2)
    assert 0 <= row["pgd_missed"] <= 1 and 0 <= row["fgsm_success"] <= row["pgd_success"] + 1e-12


def test_robustness_measures_without_anchors_still_return_the_row_and_the_radii_it_summarises():
    model = linear(n_out=2)
    x = inputs(16, 5, seed=1)
    result = R.robustness_measures(model, x, own_labels(model, x), eps=0.5, eps_max=8.0, steps=2, bisection=2)
    assert isinstance(result, R.RobustnessMeasures)
    assert set(result.radii) == {"margin", "linearized", "mls", "mls_bound", "pgd"}
    assert result.row["median_pgd_radius"] == np.median(result.radii["pgd"]) and "median_radius" not in result.row


def test_radii_collects_the_per_input_arrays_and_the_empirical_radius_is_the_closer_one():
    model = linear(n_out=2)
    x = inputs(16, 5, seed=1)
    labels = own_labels(model, x)
    r = R.radii(model, x, labels, eps_max=8.0, anchors=_mirror(model, x))
    assert set(r) == {"margin", "linearized", "mls", "mls_bound", "pgd", "segment", "empirical"}
    assert np.array_equal(r["empirical"], np.minimum(r["pgd"], r["segment"]))
    assert np.allclose(r["empirical"], exact_linear_radius(model, x, labels), rtol=1e-2)


# ------------------------------------------------------------------------------------------------ bad input
# (NaN inputs, half precision, dropout, random forward passes, overflowing outputs and the untouched model are the
# validation contract of every measure: tests/test_contract.py)
@pytest.mark.parametrize("call, match", [
    (lambda m, x, l: R.fgsm(m, x, l, -0.1), "eps"),
    (lambda m, x, l: R.fgsm(m, x, l, float("nan")), "eps"),
    (lambda m, x, l: R.fgsm(m, x, l, torch.ones(3)), "eps"),
    (lambda m, x, l: R.fgsm(m, x, l, 0.1, norm="l1"), "norm"),
    (lambda m, x, l: R.pgd(m, x, l, 0.1, loss="hinge"), "loss"),
    (lambda m, x, l: R.pgd(m, x, l, 0.1, steps=0), "steps"),
    (lambda m, x, l: R.fgsm(m, x, l[:-1], 0.1), "labels"),
    (lambda m, x, l: R.fgsm(m, x, l + 5, 0.1), "labels"),
    (lambda m, x, l: R.fgsm(m, x, torch.nn.functional.one_hot(l, 3), 0.1), "labels"),
    (lambda m, x, l: R.attack_success_rate(m, x, l, 0.1, method="cw"), "method"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=0.0), "eps_max"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=1.0, bisection=0), "bisection"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=1.0, levels=0), "levels"),
    (lambda m, x, l: R.segment_radius(m, x, l, x[:, :3]), "anchors"),
    (lambda m, x, l: R.segment_radius(m, x, l, x, k=0), "k"),
])
def test_bad_arguments_raise_a_value_error_naming_the_argument(call, match):
    model = linear()
    x = inputs(16, 5, seed=1)
    with pytest.raises(ValueError, match=match):
        call(model, x, own_labels(model, x))


def test_an_overflowing_input_gradient_is_refused_not_returned_as_nan():
    """Finite outputs ~1e20 but a squared-error objective that overflows float32: FGSM on it would return NaN."""
    model = overflowing("loss", d=5, n_out=3, width=8)
    x = inputs(16, 5, seed=1).float()
    with pytest.raises(ValueError, match="input gradient of the 'mse' attack objective is not finite"):
        R.fgsm(model, x, own_labels(model, x), 0.1, loss="mse")


@pytest.mark.parametrize("eps_max", [np.float32(8.0), np.int64(8)])
def test_adversarial_radius_accepts_any_real_eps_max_including_numpy_scalars(eps_max):
    model = linear(n_out=2)
    x = inputs(4, 5, seed=1)
    labels = own_labels(model, x)
    kw = dict(steps=3, levels=3, bisection=3)
    r = R.adversarial_radius(model, x, labels, eps_max=eps_max, **kw)
    np.testing.assert_allclose(r, R.adversarial_radius(model, x, labels, eps_max=8.0, **kw), rtol=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=True), "eps_max"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=np.float32("nan")), "eps_max"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=float("inf")), "eps_max"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=-1.0), "eps_max"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=1.0, steps=True), "steps"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=1.0, levels=2.5), "levels"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=1.0, bisection=True), "bisection"),
    (lambda m, x, l: R.adversarial_radius(m, x, l, eps_max=1.0, norm="l1"), "norm"),
    (lambda m, x, l: R.pgd(m, x, l, 0.1, steps=True), "steps"),
    (lambda m, x, l: R.pgd(m, x, l, 0.1, steps=2.0), "steps"),
    (lambda m, x, l: R.pgd(m, x, l, 0.1, seed=True), "seed"),
    (lambda m, x, l: R.fgsm(m, x, l, True), "eps"),
    (lambda m, x, l: R.segment_radius(m, x, l, x, k=True), "k"),
    (lambda m, x, l: R.radii(m, x, l, eps_max=float("nan")), "eps_max"),
    (lambda m, x, l: R.robustness_measures(m, x, l, eps=True, eps_max=1.0), "eps"),
])
def test_boolean_fractional_and_non_finite_arguments_are_refused(call, match):
    model = linear()
    x = inputs(16, 5, seed=1)
    with pytest.raises(ValueError, match=match):
        call(model, x, own_labels(model, x))


def test_radii_refuses_a_bad_eps_max_before_computing_anything(monkeypatch):
    monkeypatch.setattr(R, "linear_radius", lambda *a, **k: pytest.fail("work started before validation"))
    model = linear()
    x = inputs(16, 5, seed=1)
    with pytest.raises(ValueError, match="eps_max"):
        R.radii(model, x, own_labels(model, x), eps_max=0.0)
