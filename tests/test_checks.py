"""Specification of flatcomp_tutorial.checks.all_finite: the fast summed check never changes the verdict."""
import pytest
import torch

from flatcomp_tutorial.checks import all_finite


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
