"""Network builders. Every model maps ``x`` of shape ``(n, *input_shape)`` to outputs ``(n, n_out)``.

Kinds (the architectures the paper describes; chapter "Reproduction II"):

- ``"mlp"``: ``Flatten -> [Linear -> act] x depth -> Linear``; its first parameterised layer is dense, as the
  first-layer bounds assume (chapter "Flatness implies compression: the bound").
- ``"lenet"``: two conv/pool stages, then two dense layers.
- ``"vgg"``: VGG-style stack of 3x3 convolutions (``cfg``, "M" = 2x2 max-pool), no BatchNorm unless
  ``batch_norm=True``, then a dense classifier. ``cfg="vgg11"`` is the paper's VGG-11 layout for 32x32 CIFAR-10.
- ``"vit"``: patch embedding (a strided convolution), pre-norm transformer blocks (multi-head self-attention
  written with plain matrix products so that ``torch.func`` Hessian/Jacobian transforms work), class token or
  mean pooling, LayerNorm, linear head.

Every model ends in ``nn.Linear`` layers (the network-wide bounds B6-B8 and the relative flatness use dense
layers; for CNN and ViT the book tests correlations, not bounds, because their weights are shared: chapter
"Flatness implies compression: the bound").
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import torch
from torch import nn

from .checks import float_dtype

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}
KINDS = ("mlp", "lenet", "vgg", "vit")
VGG_CFGS: dict[str, list] = {
    "tiny": [8, "M", 16, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


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


def _dense_head(d: int, hidden: Sequence[int], n_out: int, activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for w in hidden:
        layers += [nn.Linear(d, w), _activation(activation)]
        d = w
    return layers + [nn.Linear(d, n_out)]


def vgg(input_shape: Sequence[int], n_out: int, cfg: str | Sequence[int | str] = "tiny", depth: int | None = None,
        hidden: Sequence[int] = (32,), activation: str = "relu", batch_norm: bool = False) -> nn.Sequential:
    """VGG-style CNN: for each entry of ``cfg`` a 3x3 convolution (padding 1) with that many channels
    [-> BatchNorm] -> act, or ``"M"`` a 2x2 max-pool; then Flatten -> [Linear -> act] per ``hidden`` -> Linear.

    ``cfg`` is a list or a name in ``VGG_CFGS`` (``"tiny"`` for 1x8x8 digits, ``"vgg11"`` = the paper's
    ``[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]`` for 32x32 CIFAR-10). ``depth=11`` or ``13`` is a
    shortcut for ``cfg="vgg11"``/``"vgg13"``. No BatchNorm by default (as in the paper's VGG-11).
    """
    if len(input_shape) != 3:
        raise ValueError(f"vgg needs image inputs (channels, height, width), got input_shape={tuple(input_shape)}")
    if depth is not None:
        if f"vgg{depth}" not in VGG_CFGS:
            raise ValueError(f"depth must be one of {[int(k[3:]) for k in VGG_CFGS if k != 'tiny']} (VGG-depth), "
                             f"got {depth}; or pass cfg= explicitly")
        cfg = f"vgg{depth}"
    if isinstance(cfg, str):
        if cfg not in VGG_CFGS:
            raise ValueError(f"cfg must be a list of channel counts and 'M' or one of {sorted(VGG_CFGS)}, got {cfg!r}")
        cfg = VGG_CFGS[cfg]
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            if h < 2 or w < 2:
                raise ValueError(f"cfg has more 'M' (2x2 max-pool) stages than input_shape={tuple(input_shape)} "
                                 "allows; use fewer 'M' or a larger input (vgg11 needs 32x32)")
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(_activation(activation))
            c = v
        else:
            raise ValueError(f"cfg entries must be positive channel counts or 'M', got {v!r}")
    return nn.Sequential(*layers, nn.Flatten(), *_dense_head(c * h * w, hidden, n_out, activation))


class _Attention(nn.Module):
    """Multi-head self-attention softmax(Q Kᵀ/√d_h) V with plain matrix products (torch.func-friendly)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, activation: str):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), _activation(activation), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer: patches -> tokens (+ class token, + learned positions) -> blocks -> pool -> LN -> head."""

    def __init__(self, input_shape: Sequence[int], n_out: int, patch: int, dim: int, depth: int, heads: int,
                 mlp_ratio: int, pool: str, activation: str):
        super().__init__()
        c, h, w = input_shape
        self.pool = pool
        self.embed = nn.Conv2d(c, dim, patch, stride=patch)
        tokens = (h // patch) * (w // patch) + (pool == "cls")
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_ratio, activation) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.blocks(t + self.pos)
        return self.head(self.norm(t[:, 0] if self.cls is not None else t.mean(dim=1)))


def vit(input_shape: Sequence[int], n_out: int, patch: int = 4, dim: int = 32, depth: int = 2, heads: int = 4,
        mlp_ratio: int = 2, pool: str = "cls", activation: str = "gelu") -> ViT:
    """Small vision transformer (defaults: tiny, for 1x8x8 digits: 4 patches of 4x4, dim 32, 2 blocks, 4 heads).

    ``pool``: ``"cls"`` (class token) or ``"mean"`` (mean over patch tokens). The head is ``nn.Linear``.
    """
    if len(input_shape) != 3:
        raise ValueError(f"vit needs image inputs (channels, height, width), got input_shape={tuple(input_shape)}")
    _, h, w = input_shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch must divide the image size {h}x{w}, got patch={patch}")
    if dim < 1 or heads < 1 or dim % heads:
        raise ValueError(f"dim must be a positive multiple of heads, got dim={dim}, heads={heads}")
    if depth < 0 or mlp_ratio < 1:
        raise ValueError(f"depth must be >= 0 and mlp_ratio >= 1, got depth={depth}, mlp_ratio={mlp_ratio}")
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
    _activation(activation)
    return ViT(input_shape, n_out, patch, dim, depth, heads, mlp_ratio, pool, activation)


_SEEDED_BUILD = threading.Lock()


def make_model(kind: str, input_shape: Sequence[int], n_out: int, seed: int = 0,
               dtype: torch.dtype | str | None = None, **options) -> nn.Module:
    """Build a model of ``kind`` (``"mlp"``, ``"lenet"``, ``"vgg"``, ``"vit"``) with weights drawn from ``seed``,
    in ``dtype`` (a floating torch dtype or its name, ``"float64"``; None: torch's default).

    The same ``(kind, input_shape, n_out, options, seed)`` always gives the same weights, also when models are built
    in several threads at once.
    """
    builders = {"mlp": mlp, "lenet": lenet, "vgg": vgg, "vit": vit}
    if kind not in builders:
        raise ValueError(f"kind must be one of {list(builders)}, got {kind!r}")
    if n_out < 1:
        raise ValueError(f"n_out must be >= 1, got {n_out}")
    if dtype is not None:
        dtype = float_dtype(dtype)
    # torch's default generator is global: the lock keeps builds in other threads (a thread-pool sweep) from drawing
    # from it between the seeding and the initialisation
    with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builders[kind](tuple(input_shape), n_out, **options)
    if dtype is not None:
        model = model.to(dtype)
    return model
