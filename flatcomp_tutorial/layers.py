"""Network anatomy: the dense layers W_1, …, W_L, their parameter keys, the points between them, a hooked forward.

Notation of the bounds chapters and the notation appendix: the dense layers (every ``nn.Linear``, in registration
order, which is the forward order for the package's models) are W_1, …, W_L, 1-based; ``h_l`` is the input of dense
layer l+1 (l = 0, …, L−1; captured with a forward pre-hook, so a CNN whose last layers are dense works too) and
``h_L = f`` is the output. A layer index l names the SAME point h_l wherever it is a source or a target of a map:
``source=l`` differentiates with respect to h_l, ``target=l`` differentiates h_l. ``"input"`` is the model's input
x (equal to h_0 for an MLP) and ``"output"`` is f = h_L.

Internally a point is ``(k, side)``: the input (``"in"``) or output (``"out"``: the pre-activation z_k) of dense
layer k; ``None`` is the model input (as a source) or output (as a target).

Symbols: Appendix "Notation and conventions", entry "Symbols" (W_l, h_l, z_l).
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .checks import is_integer

Point = Union[str, int]
Internal = Union[tuple[int, str], None]


def dense_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's dense layers ``(qualified name, nn.Linear)`` in registration (= forward, for the package's
    models) order: the layers W_1, …, W_L of the bounds chapters."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def first_layer_is_dense(model: nn.Module) -> bool:
    """True when the first parameterised module is an ``nn.Linear`` (needed by the first-layer bounds B1–B5)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return True
        if any(True for _ in m.parameters(recurse=False)):
            return False
    return False


def n_dense(model: nn.Module) -> int:
    """L, the number of dense layers; a model without any raises (layer-indexed measures need one)."""
    n = len(dense_layers(model))
    if not n:
        raise ValueError("model has no nn.Linear layer; layer-indexed measures need at least one dense layer.")
    return n


def dense_layer(model: nn.Module, layer: int | str) -> tuple[str, nn.Linear]:
    """Dense layer W_l by 1-based index l or by qualified module name: ``(name, nn.Linear)``."""
    layers = dense_layers(model)
    names = [n for n, _ in layers]
    if is_integer(layer):
        if not 1 <= layer <= len(layers):
            raise ValueError(f"layer index must be 1..{len(layers)} (1-based, dense layers {names}), got {layer}")
        return layers[int(layer) - 1]
    if isinstance(layer, str) and layer in names:
        return layers[names.index(layer)]
    raise ValueError(f"layer must be a 1-based index or one of the dense layer names {names}, got {layer!r}")


def weight_key(name: str) -> str:
    """The ``named_parameters`` key of a dense layer's weight matrix (``"weight"`` for a bare ``nn.Linear``)."""
    return f"{name}.weight" if name else "weight"


def source_point(model: nn.Module, value: Point) -> Internal:
    """A public ``source`` (``"input"`` or l in 0..L−1, meaning h_l) as an internal point."""
    n_layers = n_dense(model)
    if isinstance(value, str) and value == "input":
        return None
    if is_integer(value) and 0 <= value < n_layers:
        return (int(value) + 1, "in")
    raise ValueError(f"source must be 'input' or a layer index l in 0..{n_layers - 1} (meaning h_l, the input of "
                     f"dense layer l+1), got {value!r}")


def target_point(model: nn.Module, value: Point) -> Internal:
    """A public ``target`` (``"output"`` or l in 0..L, meaning h_l; l = L is the output) as an internal point."""
    n_layers = n_dense(model)
    if (isinstance(value, str) and value == "output") or (is_integer(value) and value == n_layers):
        return None
    if is_integer(value) and 0 <= value < n_layers:
        return (int(value) + 1, "in")
    raise ValueError(f"target must be 'output' or a layer index l in 0..{n_layers} (meaning h_l, the input of dense "
                     f"layer l+1; l = {n_layers} is the output), got {value!r}")


def check_order(src: Internal, tgt: Internal) -> None:
    """Raise unless ``src`` lies strictly before ``tgt`` in the forward pass."""
    def rank(p: Internal, default: int) -> int:
        return default if p is None else 2 * p[0] + (p[1] == "out")

    if rank(src, -1) >= rank(tgt, 10**9):
        raise ValueError(f"source must come before target in the forward pass; got source point {src} and target "
                         f"point {tgt} (dense layer, side). E.g. source=l (h_l) needs target > l or 'output'.")


def hooked_forward(model: nn.Module, x: torch.Tensor, src: Internal, tgt: Internal,
                   h: torch.Tensor | None = None) -> torch.Tensor:
    """Forward ``x`` (b, *input_shape); if ``src`` is a point, replace the tensor there by ``h`` (b, m) (reshaped to
    the tensor's shape); return the tensor at ``tgt`` (or the output) flattened to (b, m_t)."""
    layers = [m for _, m in dense_layers(model)]
    handles = []
    captured: list[torch.Tensor] = []
    try:
        if src is not None:
            k, side = src
            if side == "in":
                handles.append(layers[k - 1].register_forward_pre_hook(
                    lambda mod, args: (h.reshape(args[0].shape),) + tuple(args[1:])))
            else:
                handles.append(layers[k - 1].register_forward_hook(lambda mod, args, out: h.reshape(out.shape)))
        if tgt is not None:
            k, side = tgt
            if side == "in":
                handles.append(layers[k - 1].register_forward_pre_hook(lambda mod, args: captured.append(args[0])))
            else:
                handles.append(layers[k - 1].register_forward_hook(lambda mod, args, out: captured.append(out)))
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    y = captured[-1] if tgt is not None else out
    return y.reshape(y.shape[0], -1)


def values_at(model: nn.Module, x: torch.Tensor, point: Internal) -> torch.Tensor:
    """The tensor at ``point`` for every sample, flattened to (n, m) (``x`` flattened for the model input)."""
    if point is None:
        return x.reshape(x.shape[0], -1)
    with torch.no_grad():
        return hooked_forward(model, x, None, point)
