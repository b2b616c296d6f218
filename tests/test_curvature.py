"""Specification of flatcomp_tutorial.curvature (chapter "Measuring sharpness"): every product against a dense
float64 reference.

Conventions: L = (1/n) Σ_i ½ ||f(x_i) − y_i||² (MSE) or mean cross-entropy; parameters flattened in
``model.parameters()`` order. Dense references use ``torch.func.hessian`` / ``torch.autograd.functional.jacobian``
on tiny networks (P of a few hundred), from tests/problems.py (the ``cnn`` fixture is in tests/conftest.py).
Exactness tolerances are relative 1e-8 unless stated.
"""
from __future__ import annotations

from functools import partial

import problems
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import class_labels, close, dense_gauss_newton, dense_hessian, flat_params, param_slice, seeded_data
from torch import nn

from flatcomp_tutorial import curvature as C
from flatcomp_tutorial import sharpness as S
from flatcomp_tutorial.checks import measurement_mode


mlp = partial(problems.mlp, d=4)  # this file's networks take 4 inputs


# ------------------------------------------------------------------------------------------------ hvp / ggnvp
@pytest.mark.parametrize("activation,n_out,width", [("tanh", 1, 5), ("relu", 2, 7), ("gelu", 10, 4)])
def test_hvp_equals_dense_hessian_times_v(activation, n_out, width):
    model = mlp(d=5, n_out=n_out, width=width, activation=activation)
    x, y = seeded_data(model, (5,), n=15)
    H = dense_hessian(model, x, y)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert close(C.hvp(model, x, y, v), H @ v)


@pytest.mark.parametrize("onehot", [False, True])
def test_cross_entropy_hvp_equals_dense_hessian(onehot):
    model = mlp(n_out=3)
    x, _ = seeded_data(model, (4,))
    labels = class_labels(12, 3)
    y = nn.functional.one_hot(labels, 3).double() if onehot else labels
    H = dense_hessian(model, x, labels, "cross_entropy")
    v = torch.randn(H.shape[0], dtype=torch.float64)
    assert close(C.hvp(model, x, y, v, loss="cross_entropy"), H @ v)


def test_hvp_does_not_depend_on_batch_size():
    model = mlp()
    x, y = seeded_data(model, (4,), n=13)
    v = torch.randn(flat_params(model).numel(), dtype=torch.float64)
    assert close(C.hvp(model, x, y, v, batch_size=4), C.hvp(model, x, y, v))


def test_hvp_of_a_batch_of_vectors_equals_rowwise_products():
    model = mlp()
    x, y = seeded_data(model, (4,))
    V = torch.randn(3, flat_params(model).numel(), dtype=torch.float64)
    batched = C.hvp(model, x, y, V)
    assert close(batched, torch.stack([C.hvp(model, x, y, v) for v in V]))


def test_hvp_on_a_parameter_block_is_the_diagonal_block_product():
    model = mlp()
    x, y = seeded_data(model, (4,))
    H = dense_hessian(model, x, y)
    sl = param_slice(model, "3.weight")
    v = torch.randn(sl.stop - sl.start, dtype=torch.float64)
    assert close(C.hvp(model, x, y, v, parameters=["3.weight"]), H[sl, sl] @ v)


def test_hvp_on_a_cnn_equals_dense_hessian_times_v(cnn):
    model, x, y, H, _ = cnn
    v = torch.randn(H.shape[0], dtype=torch.float64)
    assert close(C.hvp(model, x, y, v), H @ v)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_ggnvp_equals_dense_gauss_newton_times_v(loss):
    model = mlp(n_out=3, activation="gelu")
    x, y = seeded_data(model, (4,))
    G = dense_gauss_newton(model, x, loss)
    v = torch.randn(G.shape[0], dtype=torch.float64)
    assert close(C.ggnvp(model, x, None, v, loss=loss), G @ v)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_hvp_is_symmetric_bilinear(seed):
    """uᵀ(Hv) = vᵀ(Hu) for any u, v (H is symmetric), to 1e-10 relative."""
    model = mlp(width=4, depth=1, activation="tanh")
    x, y = seeded_data(model, (4,), n=8)
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(2, flat_params(model).numel(), dtype=torch.float64, generator=g)
    a, b = u @ C.hvp(model, x, y, v), v @ C.hvp(model, x, y, u)
    assert abs(float(a - b)) <= 1e-10 * (1 + abs(float(a)))


def test_computation_stays_in_the_model_dtype():
    model = mlp(n_out=2, width=5, depth=1, dtype=torch.float32)
    x = problems.inputs(6, 4)  # float64, converted to the model's float32
    y = problems.inputs(6, 2, seed=1).float()
    assert C.hvp(model, x, y, torch.ones(sum(p.numel() for p in model.parameters()))).dtype == torch.float32



def test_mismatched_target_shape_is_refused():
    model = mlp(n_out=3)
    x, y = seeded_data(model, (4,))
    with pytest.raises(ValueError, match="expected"):
        C.hvp(model, x, y[:, :2], torch.zeros(flat_params(model).numel(), dtype=torch.float64))


def test_sharpness_re_exports_the_products():
    assert S.hvp is C.hvp and S.ggnvp is C.ggnvp


# ------------------------------------------------------------------------------------------------ operators
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_hessian_operator_multiplies_every_row_by_the_dense_hessian(loss):
    model = mlp(activation="gelu")
    x, y = seeded_data(model, (4,))
    y = y if loss == "mse" else class_labels(12, 3)
    H = dense_hessian(model, x, y, loss)
    op = C.hessian_operator(model, x, y, loss=loss)
    V = torch.randn(4, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert (op.dim, op.dtype, op.device.type) == (H.shape[0], torch.float64, "cpu")
    assert close(op.matmat(V), V @ H) and close(op.matmat(V[:1]), V[:1] @ H)


@pytest.mark.parametrize("cache", [True, False])
def test_forward_over_reverse_and_double_backward_give_the_same_products(cache):
    model = mlp()
    x, y = seeded_data(model, (4,), n=13)
    V = torch.randn(3, flat_params(model).numel(), dtype=torch.float64)
    fwd = C.hessian_operator(model, x, y, batch_size=5, method="forward-over-reverse")
    rev = C.hessian_operator(model, x, y, batch_size=5, cache=cache)
    assert close(fwd.matmat(V), rev.matmat(V))


def test_hessian_operator_on_a_parameter_block_has_the_block_dimension():
    model = mlp()
    x, y = seeded_data(model, (4,))
    sl = param_slice(model, "3.weight")
    op = C.hessian_operator(model, x, y, parameters=["3.weight"])
    V = torch.randn(2, sl.stop - sl.start, dtype=torch.float64)
    assert op.dim == sl.stop - sl.start and close(op.matmat(V), V @ dense_hessian(model, x, y)[sl, sl])


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gauss_newton_operator_multiplies_by_the_dense_gauss_newton_matrix_without_targets(loss):
    model = mlp(n_out=3, activation="gelu")
    x, _ = seeded_data(model, (4,))
    G = dense_gauss_newton(model, x, loss)
    V = torch.randn(3, G.shape[0], dtype=torch.float64)
    assert close(C.gauss_newton_operator(model, x, loss=loss).matmat(V), V @ G)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gauss_newton_quadratic_forms_equal_the_dense_forms(loss):
    """forms(V) = (vᵢᵀ G vᵢ)ᵢ from one jvp per vector, for one vector and for a batch."""
    model = mlp()
    x, _ = seeded_data(model, (4,))
    G = dense_gauss_newton(model, x, loss)
    V = torch.randn(5, G.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    forms = C.gauss_newton_operator(model, x, loss=loss).forms
    assert close(forms(V), ((V @ G) * V).sum(1)) and close(forms(V[:1]), ((V[:1] @ G) * V[:1]).sum(1))


def test_operator_probe_batch_is_a_positive_group_size():
    model = mlp()
    x, y = seeded_data(model, (4,))
    assert 1 <= C.hessian_operator(model, x, y).probe_batch <= 32


@pytest.mark.parametrize("kwargs, match", [({"method": "finite-differences"}, "method must be"),
                                           ({"curvature": "fisher"}, "curvature must be")])
def test_unknown_operator_kinds_are_refused(kwargs, match):
    model = mlp()
    x, y = seeded_data(model, (4,))
    with measurement_mode(model):
        prob = C.problem(model, x, y)
    with pytest.raises(ValueError, match=match):
        C.operator(prob, **kwargs)


def test_problem_refuses_vectors_of_the_wrong_length_naming_the_argument():
    model = mlp()  # P = 83
    x, y = seeded_data(model, (4,))
    with measurement_mode(model):
        prob = C.problem(model, x, y)
    with pytest.raises(ValueError, match="start_vectors must have shape"):
        prob.as_vectors(torch.zeros(2, 5), "start_vectors")


# ------------------------------------------------------------------------------------------------ exact Tr G
@pytest.mark.parametrize("fast", [True, False])
def test_gauss_newton_parameter_traces_are_the_dense_diagonal_block_traces(cnn, fast):
    model, x, _, _, J = cnn
    G = dense_gauss_newton(model, x, J=J)
    with measurement_mode(model):
        traces = C.gauss_newton_parameter_traces(C.problem(model, x, None, need_y=False), fast)
    assert list(traces) == [k for k, _ in model.named_parameters()]
    for name, tr in traces.items():
        sl = param_slice(model, name)
        assert close(tr, float(G[sl, sl].trace()))
