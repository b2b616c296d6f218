"""Shared test problems (as BackPACK's): small float64 networks, seeded inputs, targets and labels, and the dense
float64 references every exact test compares against. Used by every test file; nothing here is a test.

Every exact test compares an estimator or a closed form with a dense float64 computation on one of these networks,
so the problems are tiny (tens to a few hundred parameters) and deterministic (seeded generators; the only network
built from the global RNG, :func:`linear`, forks it so the caller's stream is untouched). Import them as
``from problems import mlp, inputs, dense_hessian, ...``.

Conventions of the dense references: L = (1/n) Σ_i ½ ||f(x_i) − y_i||² (MSE) or mean cross-entropy; parameters
flattened in ``model.parameters()`` order; Jacobians are J[i, a, p] = ∂f_a(x_i)/∂θ_p.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

import flatcomp_tutorial as fc
from flatcomp_tutorial.models import make_model

F64 = torch.float64


# ------------------------------------------------------------------------------------------------ networks
def mlp(d: int | tuple = 5, n_out: int = 3, width: int = 6, depth: int = 2, activation: str = "tanh", seed: int = 0,
        dtype: torch.dtype = F64, **kw) -> torch.nn.Module:
    """An MLP ``d → width^depth → n_out`` (``make_model("mlp", ...)``; ``d`` may be an input shape), float64 unless
    ``dtype`` says otherwise (built in float32 and converted, so the weights do not depend on ``dtype``)."""
    shape = tuple(d) if isinstance(d, tuple) else (d,)
    return make_model("mlp", shape, n_out, width=width, depth=depth, activation=activation, seed=seed, dtype=dtype,
                      **kw)


def lenet(seed: int = 0, n_out: int = 2) -> torch.nn.Module:
    """A float64 LeNet on 1×8×8 images with 2 and 3 channels and a dense head of width 8 (convolutions first)."""
    return make_model("lenet", (1, 8, 8), n_out, channels=(2, 3), width=8, seed=seed, dtype=F64)


def linear(d: int = 5, n_out: int = 3, seed: int = 0) -> nn.Sequential:
    """A float64 linear classifier ``nn.Sequential(nn.Linear(d, n_out))`` (default init under ``torch.manual_seed
    (seed)``, the global RNG forked): every attack objective and the distance to another class are closed-form."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, n_out)).double()


def narrow_digits_mlp(dtype: torch.dtype = F64, seed: int = 0) -> torch.nn.Module:
    """A 10-class digits-shaped MLP (64 inputs) whose hidden layer (width 8) is narrower than the output: rank
    J_x ≤ 8 < 10, zero volume (log LVR = −inf)."""
    return mlp(64, 10, width=8, depth=1, seed=seed, dtype=dtype)


def overflowing(where: str = "outputs", d: int = 5, n_out: int = 3, width: int = 6) -> torch.nn.Module:
    """A float32 ReLU MLP (depth 2) with finite weights whose forward pass overflows: ``"outputs"`` (every
    parameter × 1e20: outputs ~1e60, inf/NaN) or ``"loss"`` (last layer × 1e20: outputs ~1e20 are finite, their
    squares are not)."""
    model = mlp(d, n_out, width=width, depth=2, activation="relu", dtype=torch.float32)
    with torch.no_grad():
        for p in (model.parameters() if where == "outputs" else model[-1].parameters()):
            p.mul_(1e20)
    return model


class RandomForward(nn.Module):
    """``d → 8 → n_out`` (tanh) with randomness no module check can see: ``"dropout"`` written as a function call
    that stays on in eval mode, or ``"noise"`` injected into the hidden layer. Build it after
    ``torch.manual_seed``."""

    def __init__(self, kind: str = "dropout", d: int = 4, n_out: int = 3):
        super().__init__()
        self.kind, self.a, self.b = kind, nn.Linear(d, 8), nn.Linear(8, n_out)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.kind == "dropout":
            h = nn.functional.dropout(h, 0.5, training=True)
        else:
            h = h + 1e-3 * torch.rand_like(h)
        return self.b(h)


# ------------------------------------------------------------------------------------------------ data
def inputs(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    """``n`` standard-normal float64 inputs of the given shape from a generator seeded with ``seed``."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def digit_inputs(n: int, dtype: torch.dtype = F64, seed: int = 0) -> torch.Tensor:
    """``n`` standard-normal digits-shaped inputs (64 features) for :func:`narrow_digits_mlp`."""
    return inputs(n, 64, seed=seed).to(dtype)


def targets(model: torch.nn.Module, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Standard-normal float64 regression targets of the model's output width (a loss far from zero, so H ≠ G)."""
    with torch.no_grad():
        n_out = model(x[:1]).shape[1]
    return torch.randn(x.shape[0], n_out, generator=torch.Generator().manual_seed(seed), dtype=F64)


def seeded_data(model: torch.nn.Module, shape: tuple, n: int = 12, seed: int = 0,
                n_out: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 inputs of ``shape`` and standard-normal regression targets of width ``n_out`` (default: the
    model's), both from one generator seeded with ``seed`` (inputs first)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=F64)
    n_out = n_out if n_out is not None else model(x[:1]).shape[1]
    return x, torch.randn(n, n_out, generator=g, dtype=F64)


def class_labels(n: int, n_classes: int) -> torch.Tensor:
    """Labels 0, 1, …, n_classes − 1, 0, 1, … for ``n`` samples (every class present)."""
    return torch.arange(n) % n_classes


def own_labels(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own predicted classes on ``x`` (every input correctly classified)."""
    with torch.no_grad():
        return model(x).argmax(1)


def small_digits():
    """Digits 0 and 1 (64 training and 32 test images): the small real dataset the training tests train on."""
    return fc.load_dataset("digits", classes=(0, 1), n_train=64, n_test=32)


# ------------------------------------------------------------------------------------------------ parameters
def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """The parameters as one detached vector, in ``model.parameters()`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(model: torch.nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat vector ``theta`` as ``{name: tensor}`` shaped like ``model.named_parameters()`` (for
    ``functional_call``)."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


def param_slice(model: torch.nn.Module, name: str) -> slice:
    """The entries of parameter ``name`` in the flat vector."""
    i = 0
    for k, p in model.named_parameters():
        if k == name:
            return slice(i, i + p.numel())
        i += p.numel()
    raise KeyError(name)


def linear_positions(model: nn.Sequential) -> list[int]:
    """Index in the Sequential of each dense layer (reference slicing, independent of the package's hooks)."""
    return [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------------------ dense references
def dense_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse"):
    """θ ↦ L(θ) on (x, y) as a function of the flat parameter vector (``y`` labels or one-hot for cross-entropy)."""
    def L(theta):
        out = functional_call(model, unflatten(model, theta), (x,))
        if loss == "mse":
            return 0.5 * ((out - y) ** 2).sum() / x.shape[0]
        labels = y if y.dim() == 1 else y.argmax(1)
        return nn.functional.cross_entropy(out, labels)
    return L


def dense_hessian(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """The loss Hessian H (P × P) by ``torch.func.hessian``."""
    return torch.func.hessian(dense_loss(model, x, y, loss))(flat_params(model))


def dense_jacobian(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The parameter Jacobian J[i, a, p] = ∂f_a(x_i)/∂θ_p."""
    return torch.autograd.functional.jacobian(lambda t: functional_call(model, unflatten(model, t), (x,)),
                                              flat_params(model), vectorize=True)


def dense_gauss_newton(model: torch.nn.Module, x: torch.Tensor, loss: str = "mse",
                       J: torch.Tensor | None = None) -> torch.Tensor:
    """The Gauss–Newton matrix G = (1/n) Σ_i J_iᵀ Λ_i J_i (Λ = I for MSE, softmax covariance for cross-entropy)."""
    J = dense_jacobian(model, x) if J is None else J
    if loss == "mse":
        return torch.einsum("iap,iaq->pq", J, J) / x.shape[0]
    s = model(x).detach().softmax(-1)
    lam = torch.diag_embed(s) - s[:, :, None] * s[:, None, :]
    return torch.einsum("iap,iab,ibq->pq", J, lam, J) / x.shape[0]


def dense_cnn() -> tuple:
    """The small LeNet (seed 1) on 6 seeded inputs with targets, its dense Hessian and parameter Jacobian:
    ``(model, x, y, H, J)`` (the conftest fixture ``cnn`` computes it once per session)."""
    model = lenet(seed=1)
    x, y = seeded_data(model, (1, 8, 8), n=6)
    return model, x, y, dense_hessian(model, x, y), dense_jacobian(model, x)


def dense_relative_flatness(model: torch.nn.Module, H: torch.Tensor, name: str) -> float:
    """κ_l = Σ_{s,s'} (W Wᵀ)_{s s'} Tr H_{s,s'} of dense layer ``name`` from the dense Hessian H."""
    W = dict(model.named_parameters())[f"{name}.weight"].detach()
    sl = param_slice(model, f"{name}.weight")
    m_out, m_in = W.shape
    Hb = H[sl, sl].reshape(m_out, m_in, m_out, m_in)
    tr = torch.einsum("sjtj->st", Hb)  # Tr H_{s,s'}
    return float(((W @ W.T) * tr).sum())


def autograd_jacobians(fn, inputs_flat: torch.Tensor) -> torch.Tensor:
    """Reference per-sample input Jacobians: one ``torch.autograd.functional.jacobian`` of ``fn`` per row."""
    return torch.stack([torch.autograd.functional.jacobian(fn, v) for v in inputs_flat])


def exact_linear_radius(model: nn.Sequential, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """L2 distance from each x_i to the region of another class of a :func:`linear` classifier:
    min_{c'} (f_c − f_{c'}) / ||w_c − w_{c'}||."""
    W, b = model[0].weight.detach(), model[0].bias.detach()
    out = x @ W.T + b
    r = []
    for i, c in enumerate(labels.tolist()):
        r.append(min(float((out[i, c] - out[i, k]) / (W[c] - W[k]).norm()) for k in range(W.shape[0]) if k != c))
    return np.array(r)


# ------------------------------------------------------------------------------------------------ dense matrices
def symmetric(dim: int = 30, seed: int = 0) -> torch.Tensor:
    """A random symmetric (indefinite) float64 matrix."""
    B = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return (B + B.T) / 2


def psd(dim: int = 30, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    """A random positive semi-definite float64 matrix B Bᵀ of the given rank (full by default)."""
    B = torch.randn(dim, rank or dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return B @ B.T


def with_spectrum(values, seed: int = 0) -> torch.Tensor:
    """Q diag(values) Qᵀ for a random orthogonal Q."""
    values = torch.as_tensor(values, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=torch.Generator().manual_seed(seed),
                                       dtype=F64))
    return (Q * values) @ Q.T


def matmat(A: torch.Tensor):
    """The product the estimators see: V ↦ V @ A (rows A vᵢ for symmetric A)."""
    return lambda V: V @ A


def close(a, b, rtol: float = 1e-8, atol: float = 1e-10) -> bool:
    """``np.allclose`` of two float arrays/scalars/tensors (relative 1e-8 by default: the exactness tolerance)."""
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=atol)
