"""Input validation shared by every measurement: clear errors instead of silent numbers.

Every measure in :mod:`flatcomp_tutorial.sharpness`, :mod:`flatcomp_tutorial.geometry`,
:mod:`flatcomp_tutorial.bounds` and :mod:`flatcomp_tutorial.robustness` runs inside :func:`measurement_mode`,
which refuses models whose output depends on the mode (BatchNorm in train mode, active dropout), whose parameters
are not finite or are in half precision (float16/bfloat16: call ``model.float()``), and which restores every
module's train/eval flag afterwards. :func:`check_inputs` then evaluates the model once on the inputs
(:func:`check_forward`): outputs that overflow to inf/NaN (:class:`NotFiniteError`) and forward passes that are
random (functional dropout, noise) are refused before any long computation starts.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Dropout)
LOW_PRECISION = (torch.float16, torch.bfloat16)
_DETERMINISM_SAMPLES = 4   # inputs evaluated twice to detect a random forward pass
_FORWARD_CHUNK = 4096      # inputs per forward pass when checking that the outputs are finite


class NotFiniteError(ValueError):
    """The model's outputs, loss or derivatives overflow (inf/NaN) at the given weights and inputs.

    A ``ValueError``, so callers that record a failed measure as NaN (``training.train``) catch it too."""


def all_finite(t: torch.Tensor) -> bool:
    """True when every entry of ``t`` is finite. Fast path: NaN and ±inf propagate through a sum, so a finite
    sum settles it in one reduction without a boolean temporary; only a non-finite sum (NaN/inf present, or finite
    values overflowing) is re-checked entry by entry."""
    with torch.no_grad():
        return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


# --------------------------------------------------------------------------------------------------------------
# scalar arguments
# --------------------------------------------------------------------------------------------------------------
def is_integer(value: Any) -> bool:
    """A Python or numpy integer; booleans are not integers here (``True`` is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A finite Python or numpy real number; booleans are not numbers here."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def check_flag(value: Any, name: str) -> bool:
    """``value`` as a ``bool`` (numpy booleans accepted); anything else is a ``ValueError`` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_count(value: Any, name: str, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an ``int >= minimum`` (``None`` passes when ``optional``); otherwise a ``ValueError`` naming
    ``name``. Booleans and fractional numbers are refused; numpy integers are accepted."""
    if value is None and optional:
        return None
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, "
                         f"got {value!r} ({type(value).__name__})")
    return int(value)


def check_real(value: Any, name: str, minimum: float = 0.0, strict: bool = True) -> float:
    """``value`` as a finite ``float`` that is > ``minimum`` (``strict``) or >= ``minimum``; Python and numpy
    reals (``np.float32(1.0)``) are accepted, booleans, NaN and ±inf refused with a ``ValueError`` naming
    ``name``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value) \
        and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"{'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r} ({type(value).__name__})")
    return float(value)


def float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """A floating torch dtype, given as one (``torch.float64``) or by name (``"float64"`` or ``"torch.float64"``:
    the form a result store's configuration keeps); anything else is refused with a ValueError naming ``name``."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating torch dtype such as torch.float32 or 'float64', got {dtype!r}")
    return dtype


def check_batch_size(batch_size: Any) -> int | None:
    """``batch_size`` (samples processed at once): a positive integer (numpy integers too) or ``None`` (automatic
    chunks); booleans and fractions are refused."""
    return check_count(batch_size, "batch_size (samples processed at once; a positive integer, or None for "
                                   "automatic chunks)", 1, optional=True)


# --------------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------------
def check_model(model: nn.Module) -> None:
    """Raise ``ValueError`` if the model's output depends on its mode, or its parameters are not finite or in half
    precision (float16/bfloat16: second derivatives and log-determinants drown in its round-off)."""
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
        if p.dtype in LOW_PRECISION:
            raise ValueError(
                f"model: parameter '{name}' is {p.dtype}; the measures need float32 or float64 (half-precision "
                "round-off, about 1e-3 relative for float16 and 1e-2 for bfloat16, swamps second derivatives and "
                "Jacobian log-determinants). Measure a float32 copy: copy.deepcopy(model).float() "
                "(or .double() for exactness checks)."
            )
        if not all_finite(p):
            raise ValueError(f"model: parameter '{name}' contains NaN or inf (diverged training?); nothing to measure.")


def check_forward(model: nn.Module, x: torch.Tensor, name: str = "x") -> None:
    """Refuse what no measure can use (:func:`checked_outputs`, outputs discarded)."""
    checked_outputs(model, x, name)


def checked_outputs(model: nn.Module, x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """The outputs of ``model`` (in its current mode, without gradient) on ``x``, after refusing what no measure
    can use:

    * outputs that are not finite (overflow: huge weights or inputs) → :class:`NotFiniteError`;
    * a random forward pass: the first few inputs (at most 4) evaluated twice must give the same outputs to
      within 100 ulp of their largest entry; dropout written functionally (``F.dropout(h, p, training=True)``)
      or injected noise makes every Hessian and Jacobian a random matrix → ``ValueError``.

    Costs one forward pass over ``x`` (chunks of 4096) plus one more over 4 inputs."""
    with torch.no_grad():
        k = min(x.shape[0], _DETERMINISM_SAMPLES)
        first, again = model(x[:k]), model(x[:k])
        outs = [first]
        if torch.is_tensor(first) and torch.is_floating_point(first):
            _require_finite_outputs(first, name)
            diff = float((first - again).abs().max()) if first.numel() else 0.0
            scale = float(first.abs().max()) if first.numel() else 0.0
            if not diff <= 100 * torch.finfo(first.dtype).eps * max(scale, 1.0):
                raise ValueError(
                    f"model: two forward passes on the same inputs differ (by up to {diff:.3g}), so the network is "
                    "random (functional dropout such as F.dropout(h, p, training=True), injected noise, ...) and "
                    "its Hessian/Jacobians are random too. Make the forward pass deterministic for measuring, e.g. "
                    "F.dropout(h, p, training=self.training) and model.eval()."
                )
        for s in range(k, x.shape[0], _FORWARD_CHUNK):
            out = model(x[s:s + _FORWARD_CHUNK])
            if torch.is_tensor(out) and torch.is_floating_point(out):
                _require_finite_outputs(out, name)
            outs.append(out)
    return torch.cat(outs) if all(torch.is_tensor(o) for o in outs) else outs[0]


def _require_finite_outputs(out: torch.Tensor, name: str) -> None:
    if not all_finite(out):
        raise NotFiniteError(
            f"model: the outputs on {name} are not finite (inf/NaN) at these weights (overflow in {out.dtype}); "
            "nothing to measure. Check the weights' scale (diverged or rescaled training?) and the inputs' scale."
        )


def require_finite_loss(loss: torch.Tensor | float, what: str = "loss") -> None:
    """Raise :class:`NotFiniteError` if the (already computed) ``loss`` is inf/NaN although the outputs are finite:
    the squared errors overflow at these weights."""
    if not math.isfinite(float(loss)):
        raise NotFiniteError(
            f"the {what} is not finite at these weights (overflow: the outputs are too large for their dtype); "
            "nothing to measure. Check the weights' scale (diverged or rescaled training?), or use model.double()."
        )


def check_inputs(model: nn.Module, x: torch.Tensor, name: str = "x", forward: bool = True) -> torch.Tensor:
    """Return ``x`` as a tensor on the model's device and dtype; raise if it is empty, 1-D or not finite, or (with
    ``forward``; callers that evaluate :func:`checked_outputs` themselves pass False) if the model's outputs on it
    are not finite or not deterministic (:func:`check_forward`)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, *input_shape), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, *input_shape) with n >= 1, got shape {tuple(x.shape)}")
    if not all_finite(x):
        raise ValueError(f"{name} contains NaN or inf; clean or re-standardise the data first.")
    p = next(model.parameters(), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    if forward:
        check_forward(model, x, name)
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
