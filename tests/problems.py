"""Shared test problems (as BackPACK's): small float64 networks, seeded inputs and targets, used by every test file.

Every exact test compares an estimator or a closed form with a dense float64 computation on one of these networks,
so the problems are tiny (tens to a few hundred parameters) and deterministic (seeded generators, never the global
RNG). Import them as ``from problems import mlp, lenet, inputs, targets``.
"""
from __future__ import annotations

import torch

from flatcomp_tutorial.models import make_model

F64 = torch.float64


def mlp(d: int = 5, n_out: int = 3, width: int = 6, depth: int = 2, activation: str = "tanh", seed: int = 0,
        **kw) -> torch.nn.Module:
    """A float64 MLP ``d → width^depth → n_out`` (``make_model("mlp", ...)``)."""
    return make_model("mlp", (d,), n_out, width=width, depth=depth, activation=activation, seed=seed, dtype=F64,
                      **kw)


def lenet(seed: int = 0, n_out: int = 2) -> torch.nn.Module:
    """A float64 LeNet on 1×8×8 images with 2 and 3 channels and a dense head of width 8 (convolutions first)."""
    return make_model("lenet", (1, 8, 8), n_out, channels=(2, 3), width=8, seed=seed, dtype=F64)


def inputs(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    """``n`` standard-normal float64 inputs of the given shape from a generator seeded with ``seed``."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def targets(model: torch.nn.Module, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Standard-normal float64 regression targets of the model's output width (a loss far from zero, so H ≠ G)."""
    with torch.no_grad():
        n_out = model(x[:1]).shape[1]
    return torch.randn(x.shape[0], n_out, generator=torch.Generator().manual_seed(seed), dtype=F64)
