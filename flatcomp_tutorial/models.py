"""Network builders. Every model maps ``x`` of shape ``(n, *input_shape)`` to outputs ``(n, n_out)``.

The MLP is ``Flatten -> [Linear -> act] x depth -> Linear``: its first parameterised layer is dense, as the
first-layer bounds of THEORY §4 assume (chapter "Flatness implies compression: the bound").
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}
KINDS = ("mlp", "lenet")


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def mlp(input_shape: Sequence[int], n_out: int, width: int = 64, depth: int = 2, activation: str = "tanh",
        bias: bool = True) -> nn.Sequential:
    """Fully connected network with ``depth`` hidden layers of ``width`` units (PyTorch default init)."""
    if depth < 0 or width < 1:
        raise ValueError(f"depth must be >= 0 and width >= 1, got depth={depth}, width={width}")
    d = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(d if i == 0 else width, width, bias=bias), _activation(activation)]
    layers.append(nn.Linear(d if depth == 0 else width, n_out, bias=bias))
    return nn.Sequential(*layers)


def lenet(input_shape: Sequence[int], n_out: int, channels: Sequence[int] = (6, 16), width: int = 64,
          activation: str = "tanh") -> nn.Sequential:
    """LeNet-style CNN: two (conv 3x3 -> act -> 2x2 max-pool) stages, then two dense layers."""
    if len(input_shape) != 3:
        raise ValueError(f"lenet needs image inputs (channels, height, width), got input_shape={tuple(input_shape)}")
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for c_out in channels:
        layers += [nn.Conv2d(c, c_out, 3, padding=1), _activation(activation), nn.MaxPool2d(2)]
        c, h, w = c_out, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"input_shape={tuple(input_shape)} is too small for {len(channels)} pooling stages")
    layers += [nn.Flatten(), nn.Linear(c * h * w, width), _activation(activation), nn.Linear(width, n_out)]
    return nn.Sequential(*layers)


def make_model(kind: str, input_shape: Sequence[int], n_out: int, seed: int = 0, dtype: torch.dtype | None = None,
               **options) -> nn.Module:
    """Build a model of ``kind`` (``"mlp"``, ``"lenet"``) with weights drawn from ``seed``.

    The same ``(kind, input_shape, n_out, options, seed)`` always gives the same weights.
    """
    builders = {"mlp": mlp, "lenet": lenet}
    if kind not in builders:
        raise ValueError(f"kind must be one of {list(builders)}, got {kind!r}")
    if n_out < 1:
        raise ValueError(f"n_out must be >= 1, got {n_out}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builders[kind](tuple(input_shape), n_out, **options)
    if dtype is not None:
        model = model.to(dtype)
    return model
