"""Input validation shared by every measurement: clear errors instead of silent numbers.

Every measure in :mod:`flatcomp_tutorial.sharpness`, :mod:`flatcomp_tutorial.geometry` and
:mod:`flatcomp_tutorial.bounds` runs inside :func:`measurement_mode`, which refuses models whose output
depends on the mode (BatchNorm in train mode, active dropout) or whose parameters are not finite, and which
restores every module's train/eval flag afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Dropout)


def all_finite(t: torch.Tensor) -> bool:
    """True when every entry of ``t`` is finite. Fast path: NaN and ±inf propagate through a sum, so a finite
    sum settles it in one reduction without a boolean temporary; only a non-finite sum (NaN/inf present, or finite
    values overflowing) is re-checked entry by entry."""
    with torch.no_grad():
        return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def dense_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's dense layers ``(qualified name, nn.Linear)`` in registration (= forward, for the
    package's models) order. These are the layers W_1, ..., W_L of THEORY §1."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def first_layer_is_dense(model: nn.Module) -> bool:
    """True when the first parameterised module is an ``nn.Linear`` (needed by the first-layer bounds B1-B5)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return True
        if any(True for _ in m.parameters(recurse=False)):
            return False
    return False


def check_model(model: nn.Module) -> None:
    """Raise ``ValueError`` if the model's output depends on its mode or its parameters are not finite."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"model: BatchNorm layer '{name}' is in train mode, so its output depends on the batch and the "
                "Hessian/Jacobians are not those of a fixed function. Call model.eval() before measuring."
            )
        if m.training and isinstance(m, _MODE_DEPENDENT[1:]) and getattr(m, "p", 0) > 0:
            raise ValueError(
                f"model: dropout layer '{name}' is active (train mode, p={m.p}), so the network is random. "
                "Call model.eval() before measuring."
            )
    for name, p in model.named_parameters():
        if not all_finite(p):
            raise ValueError(f"model: parameter '{name}' contains NaN or inf (diverged training?); nothing to measure.")


def check_inputs(model: nn.Module, x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Return ``x`` as a tensor on the model's device and dtype; raise if it is empty, 1-D or not finite."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, *input_shape), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, *input_shape) with n >= 1, got shape {tuple(x.shape)}")
    if not all_finite(x):
        raise ValueError(f"{name} contains NaN or inf; clean or re-standardise the data first.")
    p = next(model.parameters(), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    return x


def check_targets(y: torch.Tensor, x: torch.Tensor, n_out: int, name: str = "y") -> torch.Tensor:
    """Return targets of shape (n, n_out) matching ``x``; raise a ``ValueError`` naming the mismatch."""
    if not torch.is_tensor(y):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, n_outputs), got {type(y).__name__}")
    if y.dim() == 1 and n_out == 1:
        y = y[:, None]
    if y.shape != (x.shape[0], n_out):
        raise ValueError(
            f"{name} has shape {tuple(y.shape)} but the model maps {x.shape[0]} inputs to {n_out} outputs; "
            f"expected ({x.shape[0]}, {n_out}) (one-hot float targets for the MSE loss)."
        )
    if not all_finite(y):
        raise ValueError(f"{name} contains NaN or inf.")
    return y.to(device=x.device, dtype=x.dtype)


@contextmanager
def measurement_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Validate ``model`` for measurement and restore every module's train/eval flag on exit."""
    check_model(model)
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
