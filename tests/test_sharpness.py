"""Specification of flatcomp_tutorial.sharpness (chapter "Measuring sharpness"): every named measure against a
dense float64 reference.

Conventions: L = (1/n) Σ_i ½ ||f(x_i) − y_i||² (MSE) or mean cross-entropy; parameters flattened in
``model.parameters()`` order. The dense references (``torch.func.hessian``, Jacobians) and the tiny networks come
from tests/problems.py; the validation contract every measure shares (NaN inputs, half precision, random forward
passes, overflow, untouched flags and parameters) is in tests/test_contract.py. Exactness tolerances are relative 1e-8 unless stated; stochastic estimates must lie
within 4 reported standard errors of the exact value.
"""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from functools import partial

import problems
from problems import (class_labels, close, dense_gauss_newton, dense_hessian, dense_relative_flatness, flat_params,
                      overflowing, param_slice, seeded_data)
from torch import nn

import flatcomp_tutorial
from flatcomp_tutorial import curvature as C
from flatcomp_tutorial import estimators as E
from flatcomp_tutorial import krylov as K
from flatcomp_tutorial import sharpness as S
from flatcomp_tutorial.layers import dense_layers

mlp = partial(problems.mlp, d=4)  # this file's networks take 4 inputs


# ------------------------------------------------------------------------------------------------ eigenvalues
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_top_eigenvalues_match_dense_eigvalsh_in_descending_order(activation):
    model = mlp(activation=activation)
    x, y = seeded_data(model, (4,))
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).numpy()[::-1][:3]
    vals = S.top_hessian_eigenvalues(model, x, y, k=3, tol=1e-10)
    assert close(vals, exact, rtol=1e-7)


def test_which_SA_gives_the_most_negative_eigenvalues_first():
    model = mlp()
    x, y = seeded_data(model, (4,))
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).numpy()[:2]
    assert exact[0] < 0  # random targets far from a minimum: H is indefinite
    assert close(S.top_hessian_eigenvalues(model, x, y, k=2, which="SA", tol=1e-10), exact, rtol=1e-7)


def test_returned_eigenvectors_satisfy_Hv_equals_lambda_v_and_matvecs_are_counted():
    model = mlp()
    x, y = seeded_data(model, (4,))
    H = dense_hessian(model, x, y).numpy()
    pairs = S.top_hessian_eigenpairs(model, x, y, k=2, tol=1e-10)
    vals, vecs, matvecs = pairs.values, pairs.vectors, pairs.matvecs
    assert vecs.shape == (H.shape[0], 2)
    assert np.allclose(H @ vecs, vecs * vals, atol=1e-7)
    assert isinstance(matvecs, int) and matvecs > 0


def test_top_eigenvalue_of_a_cnn_matches_dense(cnn):
    model, x, y, H, _ = cnn
    exact = float(torch.linalg.eigvalsh(H)[-1])
    assert close(S.top_hessian_eigenvalues(model, x, y, k=1, tol=1e-8), [exact], rtol=1e-6)


def test_cross_entropy_top_eigenvalue_matches_dense():
    model = mlp(n_out=3)
    x, _ = seeded_data(model, (4,))
    labels = class_labels(12, 3)
    exact = float(torch.linalg.eigvalsh(dense_hessian(model, x, labels, "cross_entropy"))[-1])
    assert close(S.top_hessian_eigenvalues(model, x, labels, loss="cross_entropy", tol=1e-10), [exact], rtol=1e-7)


# ------------------------------------------------------------------------------------------------ traces
@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "gn-control"])
def test_trace_estimate_is_within_four_stderr_of_the_exact_trace(method):
    model = mlp(activation="gelu")
    x, y = seeded_data(model, (4,))
    exact = float(dense_hessian(model, x, y).trace())
    est = S.hessian_trace(model, x, y, probes=60, method=method, seed=3)
    assert est.probes == 60 and est.matvecs == (120 if method == "gn-control" else 60)
    assert 0 < est.stderr and abs(est.mean - exact) <= 4 * est.stderr


def test_gauss_newton_control_variate_is_exact_at_zero_loss():
    """At interpolation R = H − G = 0, so the control-variate estimate is Tr G with zero spread."""
    model = mlp(n_out=2)
    x, _ = seeded_data(model, (4,))
    y = model(x).detach()
    est = S.hessian_trace(model, x, y, probes=4, method="gn-control")
    assert close(est.mean, float(dense_hessian(model, x, y).trace())) and est.stderr < 1e-10


def test_hutchinson_stderr_shrinks_with_more_probes():
    model = mlp()
    x, y = seeded_data(model, (4,))
    few = S.hessian_trace(model, x, y, probes=10, seed=1, method="hutchinson")
    many = S.hessian_trace(model, x, y, probes=250, seed=1, probe_batch=50, method="hutchinson")
    assert many.stderr < 0.5 * few.stderr  # ideal ratio is √25 = 5


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "gn-control"])
def test_trace_estimate_does_not_depend_on_how_many_probes_are_batched(method):
    """probe_batch only groups the products (None picks a group size by problem size): same probes, same answer."""
    model = mlp()
    x, y = seeded_data(model, (4,))
    ests = [S.hessian_trace(model, x, y, probes=12, seed=4, method=method, probe_batch=b) for b in (None, 1, 5, 12)]
    for est in ests[1:]:
        assert close(est.mean, ests[0].mean, rtol=1e-10) and close(est.stderr, ests[0].stderr, rtol=1e-8)


# ------------------------------------------------------------------------------------------------ traces at a target accuracy
def _near_fit(loss="mse"):
    """A small float64 net with targets near its outputs: away from a minimum (H ≠ G) but with a modest residual."""
    model = mlp()
    x, noise = seeded_data(model, (4,))
    if loss == "cross_entropy":
        return model, x, class_labels(12, 3)
    with torch.no_grad():
        return model, x, model(x) + 0.3 * noise


def test_with_rtol_the_trace_is_estimated_until_its_stderr_is_at_most_rtol_times_the_mean():
    model, x, y = _near_fit()
    est = S.hessian_trace(model, x, y, rtol=0.05, seed=1)
    assert est.stderr <= 0.05 * abs(est.mean) and est.probes >= E.MIN_PROBES
    assert abs(est.mean - float(dense_hessian(model, x, y).trace())) <= 4 * est.stderr


def test_without_probes_or_rtol_the_trace_is_estimated_to_one_percent():
    model, x, y = _near_fit()
    est = S.hessian_trace(model, x, y)
    assert est.stderr <= E.TRACE_DEFAULT_RTOL * abs(est.mean) and E.TRACE_DEFAULT_RTOL == 1e-2


def test_the_max_probes_cap_warns_and_returns_the_estimate_of_the_probes_used():
    model, x, y = _near_fit()
    with pytest.warns(RuntimeWarning, match="max_probes = 12 probes reached"):
        est = S.hessian_trace(model, x, y, rtol=1e-4, max_probes=12, seed=2)
    fixed = S.hessian_trace(model, x, y, probes=12, seed=2, method="gn-control")
    assert est.probes == 12 and close(est.mean, fixed.mean, rtol=1e-10)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_auto_uses_the_gauss_newton_control_variate_and_counts_two_products_per_probe(loss):
    model, x, y = _near_fit(loss)
    est = S.hessian_trace(model, x, y, loss=loss, probes=10)
    assert est.method == "gn-control" and (est.probes, est.matvecs) == (10, 20)
    assert abs(est.mean - float(dense_hessian(model, x, y, loss).trace())) <= 4 * est.stderr


def test_auto_on_a_parameter_block_is_the_control_variate_of_that_diagonal_block():
    model, x, y = _near_fit()
    sl = param_slice(model, "3.weight")
    est = S.hessian_trace(model, x, y, rtol=0.05, parameters=["3.weight"])
    assert est.method == "gn-control"
    assert abs(est.mean - float(dense_hessian(model, x, y)[sl, sl].trace())) <= 4 * est.stderr


def test_auto_for_the_gauss_newton_curvature_is_the_exact_trace_at_no_product():
    model, x, _ = _near_fit()
    est = S.hessian_trace(model, x, None, curvature="gauss_newton")
    assert (est.method, est.stderr, est.probes, est.matvecs) == ("exact", 0.0, 0, 0)
    assert close(est.mean, float(dense_gauss_newton(model, x).trace()))


def test_auto_without_a_gauss_newton_matrix_falls_back_to_hutch_plus_plus_or_hutchinson():
    """The documented rule for a loss without a Gauss–Newton matrix (both losses of the book have one)."""
    assert E.trace_plan("auto", 30, None, 1000, gauss_newton=False)[0] == "hutch++"
    assert E.trace_plan("auto", 2, None, 1000, gauss_newton=False)[0] == "hutchinson"
    assert E.trace_plan("auto", None, 0.1, 1000, gauss_newton=False)[0] == "hutchinson"


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "gn-control"])
def test_an_explicit_method_is_named_in_the_estimate(method):
    model, x, y = _near_fit()
    assert S.hessian_trace(model, x, y, probes=6, method=method).method == method


@pytest.mark.parametrize("kwargs, match", [
    (dict(probes=10, rtol=0.1), "either probes .* or rtol"),
    (dict(method="hutch++", rtol=0.1), "hutch\\+\\+' takes a fixed probe count"),
    (dict(rtol=0.0), "rtol"), (dict(rtol=1.5), "rtol"), (dict(rtol=float("inf")), "rtol"), (dict(rtol="1%"), "rtol"),
    (dict(rtol=0.1, max_probes=4), "max_probes"), (dict(max_probes=True), "max_probes"),
    (dict(curvature="fisher"), "curvature"),
])
def test_bad_accuracy_options_are_refused_before_any_product(monkeypatch, kwargs, match):
    model, x, y = _near_fit()
    monkeypatch.setattr(C, "operator", lambda *a, **k: pytest.fail("a product was started"))
    monkeypatch.setattr(C, "gauss_newton_parameter_traces", lambda *a, **k: pytest.fail("Tr G was started"))
    with pytest.raises(ValueError, match=match):
        S.hessian_trace(model, x, y, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(rtol=0.05), dict(probes=16), dict(probes=16, method="hutchinson")],
                         ids=["auto-rtol", "auto-fixed", "hutchinson-fixed"])
def test_the_error_bars_are_honest_over_fifty_seeds(kwargs):
    """Away from a minimum (H ≠ G), the exact Tr H (dense) lies within 2 reported stderr in >= 90 % of 50 seeds
    (measured over 400 seeds: 92 % adaptive gn-control, 93-95 % fixed counts; 95 % for Gaussian errors)."""
    model, x, y = _near_fit()
    exact = float(dense_hessian(model, x, y).trace())
    ests = [S.hessian_trace(model, x, y, seed=seed, **kwargs) for seed in range(50)]
    covered = np.mean([abs(e.mean - exact) <= 2 * e.stderr for e in ests])
    assert covered >= 0.9, covered


def test_eigensolver_leaves_the_blas_thread_settings_as_it_found_them():
    """ARPACK's BLAS runs single-threaded during eigsh (its spinning threads starve torch); restored afterwards."""
    from threadpoolctl import threadpool_info

    before = [(d["filepath"], d["num_threads"]) for d in threadpool_info()]
    model = mlp()
    x, y = seeded_data(model, (4,))
    S.top_hessian_eigenvalues(model, x, y, k=2, tol=1e-6)
    assert [(d["filepath"], d["num_threads"]) for d in threadpool_info()] == before


def test_hutch_plus_plus_has_smaller_stderr_than_hutchinson_at_equal_budget():
    model = mlp(width=4, depth=1)  # P = 35: a budget of 90 products sketches 30 directions
    x, y = seeded_data(model, (4,))
    hutch = S.hessian_trace(model, x, y, probes=90, seed=2, method="hutchinson")
    hpp = S.hessian_trace(model, x, y, probes=90, seed=2, method="hutch++")
    assert hpp.stderr < hutch.stderr


def test_block_trace_is_within_four_stderr_of_the_diagonal_block_trace():
    model = mlp()
    x, y = seeded_data(model, (4,))
    H = dense_hessian(model, x, y)
    sl = param_slice(model, "3.weight")
    est = S.hessian_trace(model, x, y, probes=200, parameters=["3.weight"], method="hutchinson")
    assert abs(est.mean - float(H[sl, sl].trace())) <= 4 * est.stderr


def test_trace_of_a_single_parameter_block_with_full_sketch_is_exact():
    """hutch++ with a sketch as large as the block recovers the trace exactly (zero residual)."""
    model = mlp(width=3, depth=1, n_out=2)
    x, y = seeded_data(model, (4,))
    sl = param_slice(model, "3.bias")  # 2 entries
    est = S.hessian_trace(model, x, y, probes=6, parameters=["3.bias"], method="hutch++")
    assert close(est.mean, float(dense_hessian(model, x, y)[sl, sl].trace()))


# ------------------------------------------------------------------------------------------------ Gauss–Newton
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gauss_newton_trace_equals_trace_of_dense_gauss_newton(loss):
    model = mlp(n_out=3, activation="relu")
    x, _ = seeded_data(model, (4,), n=9)
    assert close(S.gauss_newton_trace(model, x, loss=loss), float(dense_gauss_newton(model, x, loss).trace()))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gauss_newton_trace_of_a_cnn_equals_trace_of_dense_gauss_newton(cnn, loss):
    model, x, _, _, J = cnn
    assert close(S.gauss_newton_trace(model, x, loss=loss), float(dense_gauss_newton(model, x, loss, J).trace()))


def test_fast_dense_path_and_generic_jacobian_path_agree():
    model = mlp(n_out=10, width=5)
    x, _ = seeded_data(model, (4,))
    fast = S.gauss_newton_block_traces(model, x)
    slow = S.gauss_newton_block_traces(model, x, fast=False, batch_size=5)
    assert fast.keys() == slow.keys() and all(close(fast[k], slow[k]) for k in fast)


def test_gauss_newton_trace_equals_hessian_trace_at_exact_zero_loss():
    model = mlp(n_out=2, activation="tanh")
    x, _ = seeded_data(model, (4,))
    y = model(x).detach()  # interpolation: the network fits its own outputs
    assert close(S.gauss_newton_trace(model, x), float(dense_hessian(model, x, y).trace()))


def test_gauss_newton_differs_from_hessian_trace_away_from_zero_loss():
    model = mlp(n_out=2)
    x, y = seeded_data(model, (4,))
    assert not close(S.gauss_newton_trace(model, x), float(dense_hessian(model, x, y).trace()), rtol=1e-3)


def test_per_layer_gauss_newton_traces_are_the_weight_blocks_and_sum_below_total():
    model = mlp(n_out=2, activation="gelu")
    x, _ = seeded_data(model, (4,))
    G = dense_gauss_newton(model, x)
    per = S.gauss_newton_block_traces(model, x)
    names = [n for n, _ in dense_layers(model)]
    assert list(per) == names + ["total"]
    for name in names:
        sl = param_slice(model, f"{name}.weight")
        assert close(per[name], float(G[sl, sl].trace()))
    assert close(per["total"], float(G.trace()))
    assert sum(per[n] for n in names) <= per["total"]


def test_per_layer_gauss_newton_traces_on_a_cnn_cover_its_dense_layers(cnn):
    model, x, _, _, J = cnn
    G = dense_gauss_newton(model, x, J=J)
    per = S.gauss_newton_block_traces(model, x)
    assert list(per) == [n for n, _ in dense_layers(model)] + ["total"]
    sl = param_slice(model, "7.weight")
    assert close(per["7"], float(G[sl, sl].trace())) and close(per["total"], float(G.trace()))


# ------------------------------------------------------------------------------------------------ SLQ
def test_slq_quadrature_reproduces_the_moments_of_each_start_vector():
    """Σ_k τ_k θ_k^p = vᵀ H^p v / ||v||² exactly for p ≤ 2·steps − 1 (here steps = 4, p ≤ 4)."""
    model = mlp()
    x, y = seeded_data(model, (4,))
    H = dense_hessian(model, x, y)
    V = torch.randn(3, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    nw = S.slq_nodes_weights(model, x, y, lanczos_steps=4, start_vectors=V)
    for v, (nodes, weights) in zip(V, nw):
        u = v / v.norm()
        assert close(weights.sum(), 1.0)
        for p in range(5):
            exact = float(u @ torch.linalg.matrix_power(H, p) @ u)
            assert close((weights * nodes ** p).sum(), exact, rtol=1e-7, atol=1e-9)


def test_slq_with_full_lanczos_has_the_exact_eigenvalues_as_nodes():
    model = mlp(width=3, depth=1, n_out=1)  # P = 19
    x, y = seeded_data(model, (4,))
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).numpy()
    nodes, weights = S.slq_nodes_weights(model, x, y, n_vectors=1, lanczos_steps=100)[0]
    assert len(nodes) == len(exact) and close(np.sort(nodes), exact, rtol=1e-6, atol=1e-8)


def test_spectral_density_integrates_to_one_and_has_the_first_two_moments_of_the_spectrum():
    """With 100 Rademacher vectors the density's mean and second moment match Tr H / P and Tr H² / P within
    10% of the spectrum's RMS² (Monte-Carlo error ≈ 3%; Gaussian smoothing adds σ² to the second moment)."""
    model = mlp(width=4, depth=1, n_out=2)
    x, y = seeded_data(model, (4,))
    eig = torch.linalg.eigvalsh(dense_hessian(model, x, y)).numpy()
    grid, dens = S.hessian_spectral_density(model, x, y, n_vectors=100, lanczos_steps=20, sigma=1e-3, grid=2001)
    assert close(np.trapezoid(dens, grid), 1.0)
    scale = np.mean(eig ** 2)
    m1 = np.trapezoid(grid * dens, grid)
    m2 = np.trapezoid(grid ** 2 * dens, grid)
    assert abs(m1 - eig.mean()) <= 0.1 * np.sqrt(scale)
    assert abs(m2 - scale) <= 0.1 * scale


# ------------------------------------------------------------------------------------------------ relative flatness
@pytest.mark.parametrize("layer,name", [(1, "1"), (2, "3"), ("5", "5")])
def test_exact_relative_flatness_matches_dense_hessian(layer, name):
    model = mlp(d=5, n_out=2, width=4)  # layer 1 is wider than tall: exercises the Gram-factor path
    x, y = seeded_data(model, (5,))
    H = dense_hessian(model, x, y)
    assert close(S.relative_flatness(model, x, y, layer), dense_relative_flatness(model, H, name))


def test_hutchinson_relative_flatness_is_within_four_stderr_of_exact():
    model = mlp()
    x, y = seeded_data(model, (4,))
    exact = S.relative_flatness(model, x, y, 2)
    est = S.relative_flatness_estimate(model, x, y, 2, method="hutchinson", probes=200)
    assert abs(est.mean - exact) <= 4 * est.stderr


def test_gauss_newton_relative_flatness_equals_the_B8_feature_formula():
    """κ_l(G) = (1/n) Σ_i ||∂f/∂h_{l−1}(x_i)||_F² ||h_{l−1}(x_i)||² (identity B8 of the chapter "Network-wide and
    reparametrization-invariant bounds"), for the hidden layer l = 2."""
    model = mlp(n_out=3, activation="tanh")
    x, _ = seeded_data(model, (4,))
    h = model[:3](x).detach()  # h_1, the input of the second dense layer "3"
    J = torch.func.vmap(torch.func.jacrev(lambda hi: model[3:](hi[None])[0]))(h).detach()  # (n, N, m)
    b8 = float((J.pow(2).sum((1, 2)) * h.pow(2).sum(1)).mean())
    assert close(S.relative_flatness(model, x, None, 2, curvature="gauss_newton"), b8)


def test_relative_flatness_with_gauss_newton_equals_hessian_at_zero_loss():
    model = mlp(n_out=2)
    x, _ = seeded_data(model, (4,))
    y = model(x).detach()
    assert close(S.relative_flatness(model, x, y, 1, curvature="gauss_newton"), S.relative_flatness(model, x, y, 1))


# ------------------------------------------------------------------------------------------------ adaptive sharpness
def test_exact_adaptive_sharpness_matches_dense_diagonal():
    model = mlp(activation="gelu")
    x, y = seeded_data(model, (4,))
    H = dense_hessian(model, x, y)
    exact = float((flat_params(model) ** 2 * H.diagonal()).sum())
    assert close(S.adaptive_sharpness(model, x, y, method="exact"), exact)


def test_hutchinson_adaptive_sharpness_is_within_four_stderr_of_exact():
    model = mlp()
    x, y = seeded_data(model, (4,))
    exact = S.adaptive_sharpness(model, x, y, method="exact")
    est = S.adaptive_sharpness_estimate(model, x, y, probes=200)
    assert abs(est.mean - exact) <= 4 * est.stderr


def test_adaptive_sharpness_with_rtol_stops_at_the_asked_standard_error_and_covers_exact():
    model = mlp()
    x, y = seeded_data(model, (4,))
    exact = S.adaptive_sharpness(model, x, y, method="exact")
    est = S.adaptive_sharpness_estimate(model, x, y, rtol=0.2)
    assert est.stderr <= 0.2 * abs(est.mean) and est.probes >= 8 and est.matvecs == est.probes
    assert abs(est.mean - exact) <= 4 * est.stderr


def test_adaptive_sharpness_with_rtol_draws_the_probes_of_a_fixed_count_call():
    model = mlp()
    x, y = seeded_data(model, (4,))
    est = S.adaptive_sharpness_estimate(model, x, y, rtol=0.2, seed=3)
    fixed = S.adaptive_sharpness_estimate(model, x, y, probes=est.probes, seed=3)
    assert close(est.mean, fixed.mean, rtol=1e-12) and close(est.stderr, fixed.stderr, rtol=1e-12)


def test_adaptive_sharpness_warns_at_max_probes_and_refuses_probes_with_rtol():
    model = mlp()
    x, y = seeded_data(model, (4,))
    with pytest.warns(RuntimeWarning, match="max_probes = 8 probes reached"):
        est = S.adaptive_sharpness_estimate(model, x, y, rtol=1e-6, max_probes=8)
    assert est.probes == 8
    with pytest.raises(ValueError, match="either probes .* or rtol"):
        S.adaptive_sharpness_estimate(model, x, y, probes=10, rtol=0.1)


# ------------------------------------------------------------------------------------------------ rescaling
def _rescaled(model, c):
    """ReLU MLP: row s of (W1, b1) times c_s, column s of W2 divided by c_s; f is unchanged."""
    m = copy.deepcopy(model)
    c = torch.as_tensor(c, dtype=torch.float64)
    with torch.no_grad():
        m[1].weight.mul_(c.reshape(-1, 1) if c.dim() else c)
        m[1].bias.mul_(c)
        m[3].weight.div_(c.reshape(1, -1) if c.dim() else c)
    return m


@pytest.fixture(scope="module")
def relu_pair():
    model = mlp(n_out=2, width=5, activation="relu")
    x, y = seeded_data(model, (4,))
    return model, x, y


def test_rescaling_a_relu_layer_pair_keeps_f_but_changes_the_hessian_trace(relu_pair):
    model, x, y = relu_pair
    scaled = _rescaled(model, 3.0)
    assert torch.allclose(scaled(x), model(x), atol=1e-12)
    assert float(dense_hessian(scaled, x, y).trace()) > 1.5 * float(dense_hessian(model, x, y).trace())


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_relative_flatness_of_every_layer_is_invariant_to_uniform_rescaling(relu_pair, layer):
    model, x, y = relu_pair
    scaled = _rescaled(model, 3.0)
    assert close(S.relative_flatness(scaled, x, y, layer), S.relative_flatness(model, x, y, layer))


def test_neuron_wise_rescaling_keeps_kappa_of_the_rescaled_rows_but_not_of_the_next_layer(relu_pair):
    model, x, y = relu_pair
    scaled = _rescaled(model, [0.5, 2.0, 3.0, 1.0, 4.0])
    assert torch.allclose(scaled(x), model(x), atol=1e-12)
    assert close(S.relative_flatness(scaled, x, y, 1), S.relative_flatness(model, x, y, 1))
    assert not close(S.relative_flatness(scaled, x, y, 2), S.relative_flatness(model, x, y, 2), rtol=1e-2)


@pytest.mark.parametrize("c", [3.0, [0.5, 2.0, 3.0, 1.0, 4.0]])
def test_adaptive_sharpness_is_invariant_to_uniform_and_neuron_wise_rescaling(relu_pair, c):
    model, x, y = relu_pair
    assert close(S.adaptive_sharpness(_rescaled(model, c), x, y, method="exact"),
                 S.adaptive_sharpness(model, x, y, method="exact"))


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("k", [0, 10_000])
def test_bad_k_is_refused(k):
    model = mlp()
    x, y = seeded_data(model, (4,))
    with pytest.raises(ValueError, match="k must"):
        S.top_hessian_eigenvalues(model, x, y, k=k)


@pytest.mark.parametrize("call,match", [
    (lambda m, x, y: S.hvp(m, x, y, torch.zeros(3, dtype=torch.float64)), "v must have shape"),
    (lambda m, x, y: S.hessian_trace(m, x, y, loss="hinge"), "loss must be"),
    (lambda m, x, y: S.hessian_trace(m, x, y, method="girard"), "method must be"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=0), "probes must be"),
    (lambda m, x, y: S.hessian_trace(m, x, y, parameters=["nope.weight"]), "parameters"),
    (lambda m, x, y: S.relative_flatness(m, x, y, 7), "layer"),
    (lambda m, x, y: S.relative_flatness(m, x, y, "nope"), "layer"),
    (lambda m, x, y: S.top_hessian_eigenvalues(m, x, y, which="BE"), "which must be"),
    (lambda m, x, y: S.hvp(m, x, y, torch.zeros(83, dtype=torch.float64), batch_size=0), "batch_size"),
    (lambda m, x, y: S.hvp(m, x, torch.full((12,), 5), torch.zeros(83, dtype=torch.float64),
                           loss="cross_entropy"), "labels"),
])
def test_bad_arguments_raise_a_value_error_naming_the_argument(call, match):
    model = mlp()  # P = 83
    x, y = seeded_data(model, (4,))
    with pytest.raises(ValueError, match=match):
        call(model, x, y)


# ------------------------------------------------------------------------------------------------ overflow
def test_overflow_is_refused_up_front_before_any_hessian_product(monkeypatch):
    model = overflowing("loss", d=4)
    x, y = seeded_data(model, (4,), n_out=3)
    monkeypatch.setattr(C, "operator", lambda *a, **k: pytest.fail("a product was started"))
    with pytest.raises(ValueError, match="overflow"):
        S.top_hessian_eigenvalues(model, x, y)


class _Amplified(nn.Module):
    """f(x) = 1e30 · (W x + b) with W, b ~ 1e-28: outputs ~1e2 and a finite loss, but ∂f/∂θ ~ 1e30, so
    H ≈ JᵀJ ~ 1e60 overflows float32."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.lin.parameters():
                p.mul_(1e-28)

    def forward(self, x):
        return 1e30 * self.lin(x)


_PRODUCT_MEASURES = {
    "hvp": lambda m, x, y: S.hvp(m, x, y, torch.ones(flat_params(m).numel())),
    "ggnvp": lambda m, x, y: S.ggnvp(m, x, y, torch.ones(flat_params(m).numel())),
    "hessian_trace": lambda m, x, y: S.hessian_trace(m, x, y, probes=4),
    "top_hessian_eigenvalues": lambda m, x, y: S.top_hessian_eigenvalues(m, x, y, k=1),
    "slq_nodes_weights": lambda m, x, y: S.slq_nodes_weights(m, x, y, n_vectors=2, lanczos_steps=4),
}


@pytest.mark.parametrize("measure", sorted(_PRODUCT_MEASURES))
def test_overflowing_hessian_products_raise_instead_of_returning_nan(measure):
    """Finite outputs and loss, overflowing second derivatives: the check on every product catches what the
    forward check cannot (today's alternative: NaN, or an ARPACK error code)."""
    model = _Amplified()
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="(Hessian|Gauss–Newton)-vector products are not finite at these weights"):
        _PRODUCT_MEASURES[measure](model, x, y)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: S.top_hessian_eigenvalues(m, x, y, k=True), "k must be an integer"),
    (lambda m, x, y: S.top_hessian_eigenvalues(m, x, y, k=1.0), "k must be an integer"),
    (lambda m, x, y: S.top_hessian_eigenvalues(m, x, y, tol=float("nan")), "tol"),
    (lambda m, x, y: S.top_hessian_eigenvalues(m, x, y, ncv=True), "ncv"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=True), "probes must be an integer"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=4.0), "probes must be an integer"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=-3), "probes must be an integer"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=4, probe_batch=True), "probe_batch"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=4, seed=True), "seed"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=4, batch_size=2.5), "batch_size"),
    (lambda m, x, y: S.hessian_trace(m, x, y, probes=4, batch_size=True), "batch_size"),
    (lambda m, x, y: S.adaptive_sharpness(m, x, y, probes=False), "probes"),
    (lambda m, x, y: S.relative_flatness(m, x, y, 1, method="hutchinson", probes=True), "probes"),
    (lambda m, x, y: S.slq_nodes_weights(m, x, y, n_vectors=True), "n_vectors"),
    (lambda m, x, y: S.slq_nodes_weights(m, x, y, lanczos_steps=2.5), "lanczos_steps"),
    (lambda m, x, y: S.hessian_spectral_density(m, x, y, grid=True), "grid"),
    (lambda m, x, y: S.hessian_spectral_density(m, x, y, sigma=float("inf")), "sigma"),
])
def test_boolean_and_fractional_counts_are_refused(call, match):
    model = mlp()
    x, y = seeded_data(model, (4,))
    with pytest.raises(ValueError, match=match):
        call(model, x, y)


def test_numpy_integer_counts_are_accepted():
    model = mlp()
    x, y = seeded_data(model, (4,))
    a = S.hessian_trace(model, x, y, probes=np.int64(6), seed=np.int32(2), batch_size=np.int64(5))
    b = S.hessian_trace(model, x, y, probes=6, seed=2)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10)
    assert S.top_hessian_eigenvalues(model, x, y, k=np.int64(2)).shape == (2,)


def _partly_frozen():
    model = mlp()
    dense_layers(model)[0][1].weight.requires_grad_(False)
    return model


def test_per_layer_traces_of_a_partly_frozen_model_give_advice_that_works():
    model = _partly_frozen()
    x, _ = seeded_data(model, (4,))
    with pytest.raises(ValueError, match=r"frozen.*model\.requires_grad_\(True\)") as err:
        S.gauss_newton_block_traces(model, x)
    assert "use per_layer=False" not in str(err.value)
    assert S.gauss_newton_trace(model, x) > 0                    # the advertised total over trainable parameters
    model.requires_grad_(True)                                   # the advertised fix
    per = S.gauss_newton_block_traces(model, x)
    assert set(per) == {name for name, _ in dense_layers(model)} | {"total"}


# ------------------------------------------------------------------------------------------------ one return type
def test_top_hessian_eigenvalues_are_the_values_of_the_eigenpairs():
    model = mlp()
    x, y = seeded_data(model, (4,))
    vals = S.top_hessian_eigenvalues(model, x, y, k=2, tol=1e-10)
    pairs = S.top_hessian_eigenpairs(model, x, y, k=2, tol=1e-10)
    assert isinstance(vals, np.ndarray) and vals.shape == (2,) and np.array_equal(vals, pairs.values)
    assert isinstance(pairs, K.Eigenpairs) and pairs.vectors.shape == (flat_params(model).numel(), 2)


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_relative_flatness_is_a_float_and_the_mean_of_its_estimate(method):
    model = mlp()
    x, y = seeded_data(model, (4,))
    kappa = S.relative_flatness(model, x, y, 2, method=method, probes=8)
    est = S.relative_flatness_estimate(model, x, y, 2, method=method, probes=8)
    assert type(kappa) is float and isinstance(est, S.Estimate) and kappa == est.mean
    assert est.probes == (0 if method == "exact" else 8)


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_adaptive_sharpness_is_a_float_and_the_mean_of_its_estimate(method):
    model = mlp()
    x, y = seeded_data(model, (4,))
    s_ad = S.adaptive_sharpness(model, x, y, method=method, probes=8)
    est = S.adaptive_sharpness_estimate(model, x, y, method=method, probes=8)
    assert type(s_ad) is float and isinstance(est, S.Estimate) and s_ad == est.mean


def test_gauss_newton_trace_is_a_float_and_the_total_of_the_block_traces():
    model = mlp()
    x, _ = seeded_data(model, (4,))
    total = S.gauss_newton_trace(model, x)
    assert type(total) is float and total == S.gauss_newton_block_traces(model, x)["total"]


# ------------------------------------------------------------------------------------------------ module boundaries
_MEASURE_MODULES = ("curvature", "estimators", "sharpness")
_NOT_FOR_MEASURES = {"training", "experiments", "sweeps", "store", "figures", "plotting", "widgets"}


def _imported_modules(name: str) -> set[str]:
    """Every module the package module ``name`` imports (relative imports resolved inside the package)."""
    tree = ast.parse((Path(flatcomp_tutorial.__file__).parent / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, ["flatcomp_tutorial" if node.level else "", node.module or ""]))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("name", _MEASURE_MODULES)
def test_measure_modules_import_no_training_sweeps_store_or_figures(name):
    parts = {part for module in _imported_modules(name) for part in module.split(".")}
    assert not parts & _NOT_FOR_MEASURES


def test_estimators_know_nothing_of_networks_or_curvature():
    """The estimators take any matvec: no torch.nn, no curvature, no model in sight."""
    imported = _imported_modules("estimators")
    assert not any(m.startswith("torch.nn") or m.endswith("curvature") or m.endswith("models") for m in imported)


# ------------------------------------------------------------------------------------------------ certified eigenvalues
def test_certified_top_eigenvalues_contain_the_dense_eigenvalues_on_twenty_networks():
    """Block Lanczos (the default solver): over 20 small networks (tanh/relu/gelu MLPs, seeds), each certified
    interval holds the exact eigenvalue of its rank and the residual is at most rtol·|θ|."""
    for seed in range(20):
        model = mlp(activation=("tanh", "relu", "gelu")[seed % 3], seed=seed)
        x, y = seeded_data(model, (4,), seed=seed)
        exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).numpy()[::-1][:2]
        pairs = S.top_hessian_eigenpairs(model, x, y, k=2, rtol=1e-4, seed=seed)
        assert pairs.method == "block-lanczos"
        assert ((pairs.bounds[:, 0] <= exact) & (exact <= pairs.bounds[:, 1])).all(), (seed, pairs.bounds, exact)
        assert (pairs.residuals <= 1e-4 * np.abs(pairs.values)).all()


def test_default_eigenvalues_are_certified_to_one_in_a_thousand():
    model = mlp()
    x, y = seeded_data(model, (4,))
    exact = float(torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1])
    vals = S.top_hessian_eigenvalues(model, x, y, k=1, rtol=1e-3)
    pairs = S.top_hessian_eigenpairs(model, x, y)
    assert isinstance(vals, np.ndarray) and vals.shape == (1,) and np.array_equal(vals, pairs.values)
    assert abs(vals[0] - exact) <= 1e-3 * exact and pairs.bounds[0, 0] <= exact <= pairs.bounds[0, 1]


def test_tol_still_selects_eigsh_with_bounds():
    model = mlp()
    x, y = seeded_data(model, (4,))
    pairs = S.top_hessian_eigenpairs(model, x, y, k=2, tol=1e-10)
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).numpy()[::-1][:2]
    assert pairs.method == "arpack" and ((pairs.bounds[:, 0] <= exact) & (exact <= pairs.bounds[:, 1])).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(rtol=0.0), "rtol"), (dict(rtol=1.5), "rtol"), (dict(k=2, block_size=1), "block_size"),
    (dict(tol=1e-6, rtol=1e-3), "one or the other"), (dict(ncv=8), "ncv"), (dict(kato_temple=1), "kato_temple"),
    (dict(rtol=1e-3, maxiter=0), "maxiter")])
def test_bad_certified_eigenvalue_arguments_are_refused(kwargs, match):
    model = mlp()
    x, y = seeded_data(model, (4,))
    with pytest.raises(ValueError, match=match):
        S.top_hessian_eigenvalues(model, x, y, **kwargs)
