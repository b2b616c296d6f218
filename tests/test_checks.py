"""Specification of flatcomp_tutorial.checks: the validation every measure runs before it computes anything."""
from functools import partial

import numpy as np
import pytest
import torch
from problems import RandomForward, inputs, mlp, overflowing
from torch import nn

from flatcomp_tutorial.checks import (NotFiniteError, all_finite, check_count, check_forward, check_inputs,
                                      checked_outputs,
                                      check_model, check_real, measurement_mode)


@pytest.mark.parametrize("values, expected", [
    ([1.0, -2.0, 3.0], True),
    ([1.0, float("nan"), 3.0], False),
    ([1.0, float("inf"), 3.0], False),
    ([float("inf"), float("-inf")], False),      # the sum is NaN: still caught
    ([3e38, 3e38], True),                         # finite values whose float32 sum overflows: re-checked exactly
])
def test_all_finite_agrees_with_an_elementwise_check(values, expected):
    t = torch.tensor(values, dtype=torch.float32)
    assert all_finite(t) is expected and bool(torch.isfinite(t).all()) is expected


def test_all_finite_accepts_integer_and_empty_tensors():
    assert all_finite(torch.arange(5)) and all_finite(torch.empty(0))


# ------------------------------------------------------------------------------------------------ scalar arguments
@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3)])
def test_check_count_accepts_python_and_numpy_integers(value):
    assert check_count(value, "probes") == 3 and type(check_count(value, "probes")) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.5, 3.0, 0, -1, "3", None])
def test_check_count_refuses_booleans_fractions_and_non_positive_values_naming_the_argument(value):
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        check_count(value, "probes")


def test_check_count_lets_none_pass_only_when_optional_and_honours_the_minimum():
    assert check_count(None, "ncv", optional=True) is None
    assert check_count(0, "seed", minimum=0) == 0
    with pytest.raises(ValueError, match="grid must be an integer >= 2"):
        check_count(1, "grid", minimum=2)


@pytest.mark.parametrize("value", [1, 1.0, np.float32(1.0), np.float64(1.0), np.int64(1)])
def test_check_real_accepts_python_and_numpy_reals(value):
    np.testing.assert_allclose(check_real(value, "eps_max"), 1.0, rtol=1e-7)


@pytest.mark.parametrize("value", [True, np.bool_(True), float("nan"), float("inf"), np.float32("-inf"), 0.0, -1.0,
                                   "1.0", None, torch.tensor(1.0)])
def test_check_real_refuses_booleans_non_finite_and_non_positive_values(value):
    with pytest.raises(ValueError, match="eps_max must be a finite number > 0"):
        check_real(value, "eps_max")


def test_check_real_non_strict_accepts_the_minimum():
    assert check_real(0, "tol", 0.0, strict=False) == 0.0


# ------------------------------------------------------------------------------------------------ models
_mlp = partial(mlp, 4, 3, width=8, depth=1)  # 4 → 8 → 3, tanh


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_refused_with_the_float32_advice(dtype):
    with pytest.raises(ValueError, match=rf"{dtype}; the measures need float32 or float64.*\.float\(\)"):
        check_model(_mlp(dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_and_double_precision_models_pass(dtype):
    check_model(_mlp(dtype=dtype))


@pytest.mark.parametrize("kind", ["dropout", "noise"])
def test_measurement_mode_with_checked_inputs_refuses_a_random_forward_pass(kind):
    torch.manual_seed(0)
    model = RandomForward(kind).double().eval()
    x = inputs(10, 4)
    check_model(model)  # nothing for the module check to see
    with pytest.raises(ValueError, match="two forward passes on the same inputs differ"):
        with measurement_mode(model):
            check_inputs(model, x)


def test_a_deterministic_model_passes_the_forward_check_and_costs_few_evaluations():
    model = _mlp()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    check_forward(model, inputs(10, 4))
    assert seen == [4, 4, 6]  # a few inputs twice, then the rest once


def test_overflowing_outputs_raise_a_not_finite_error_that_is_a_value_error():
    model = overflowing("outputs", d=4)  # finite weights, outputs ~1e60: inf in float32
    with pytest.raises(NotFiniteError, match=r"not finite \(inf/NaN\) at these weights \(overflow"):
        check_inputs(model, inputs(6, 4).float())
    assert issubclass(NotFiniteError, ValueError)


def test_outputs_overflowing_only_past_the_first_inputs_are_refused():
    model = nn.Sequential(nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.fill_(1e30)
        model[0].bias.zero_()
    x = torch.ones(8, 1)
    x[6] = 1e10  # 1e40 overflows float32 only for this input, outside the determinism slice
    with pytest.raises(NotFiniteError):
        check_forward(model, x)


def test_checked_outputs_are_the_models_outputs_on_every_input():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3)).double()
    x = torch.randn(9, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(checked_outputs(model, x), model(x), rtol=1e-12, atol=1e-14)

