"""Sharpness of the training loss in parameter space (book chapter "Measuring sharpness").

Conventions (printed next to every number in the book):

* Loss. ``loss="mse"``: L(θ) = (1/n) Σ_i ½ ||f(x_i) − y_i||²  (mean over samples, SUM over outputs,
  factor ½; dropping the ½ doubles every trace and eigenvalue below). ``loss="cross_entropy"``:
  L(θ) = (1/n) Σ_i CE(f(x_i), c_i) with c_i the integer label, or ``argmax`` of a one-hot float target.
* The loss is over the FULL given data ``(x, y)``; chunks of ``batch_size`` samples are only a memory device
  (chunk results are combined with size-weighted means, so the numbers do not depend on ``batch_size``).
* Parameters: all parameters with ``requires_grad=True``, flattened and concatenated in
  ``model.parameters()`` order; P is their total number. ``parameters=[names]`` (qualified names as in
  ``model.named_parameters()``) restricts a measure to that diagonal block of the Hessian.
* H = ∇²_θ L = G + R, with the Gauss–Newton matrix G = (1/n) Σ_i J_iᵀ Λ_i J_i, J_i = ∂f(x_i)/∂θ (N × P),
  Λ_i = I for MSE and Λ_i = diag(s_i) − s_i s_iᵀ (softmax Hessian, s_i = softmax f(x_i)) for cross-entropy.
* Everything is computed on the model's device and in its dtype (use ``model.double()`` for exactness
  checks); eigen-solvers work in float64 on the CPU side.
* Every public function runs inside :func:`flatcomp_tutorial.checks.measurement_mode` (refuses BatchNorm in
  train mode, active dropout, non-finite parameters and half-precision models; restores train/eval flags) and
  validates ``x``/``y``. Before any product it evaluates the model once on ``x`` and refuses outputs or a loss
  that overflow to inf/NaN and random forward passes (functional dropout, noise); products that overflow later
  raise the same :class:`~flatcomp_tutorial.checks.NotFiniteError` instead of returning NaN.
* Precision: float16/bfloat16 models are refused (round-off about 1e-3/1e-2 relative swamps second
  derivatives); measure a float32 copy, ``copy.deepcopy(model).float()``.
* Counts (``k``, ``probes``, ``n_vectors``, ``lanczos_steps``, ``batch_size``, ...) must be integers (numpy
  integers too); booleans and fractions are refused.

Reparametrisation (ReLU nets): W_l, b_l → cW_l, cb_l and W_{l+1} → W_{l+1}/c leaves f unchanged but
changes Tr H and λ_max. The relative flatness κ is unchanged for BOTH layers involved (κ_l and κ_{l+1}; with G
in place of H see identity B8), and so is the adaptive sharpness S_ad. Under neuron-wise rescaling (a different
c_s per hidden unit s: row s of W_l, b_l times c_s, column s of W_{l+1} divided by c_s) S_ad and κ_l (the layer
whose rows are rescaled) stay invariant, but κ_{l+1} changes (verified numerically in tests/test_sharpness.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

from .checks import (NotFiniteError, all_finite, check_count, check_inputs, check_real, check_targets,
                     checked_outputs, dense_layers, measurement_mode, require_finite_loss)
from .losses import LOSSES, check_loss, per_sample_loss

__all__ = [
    "Estimate",
    "hvp",
    "ggnvp",
    "top_hessian_eigenvalues",
    "hessian_trace",
    "gauss_newton_trace",
    "slq_nodes_weights",
    "hessian_spectral_density",
    "relative_flatness",
    "adaptive_sharpness",
    "LOSSES",
]

_GN_CHUNK_ELEMENTS = 2**24  # per-sample Jacobian entries held at once by gauss_newton_trace


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate: ``mean`` ± ``stderr`` from ``probes`` probe vectors, costing ``matvecs`` HVPs."""

    mean: float
    stderr: float
    probes: int
    matvecs: int

    def __float__(self) -> float:
        return float(self.mean)


# --------------------------------------------------------------------------------------------------------------
# internal set-up: one validated, functional view of (model, data, loss)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Problem:
    model: nn.Module
    block: dict[str, torch.Tensor]  # parameters we differentiate with respect to (detached)
    fixed: dict[str, torch.Tensor]  # frozen parameters, other parameters outside the block, buffers
    x: torch.Tensor
    y: torch.Tensor | None  # float targets (mse) or long labels (cross-entropy); None when not needed
    loss: str
    n_out: int
    batch_size: int

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.block.values())

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def chunks(self):
        for s in range(0, self.n, self.batch_size):
            yield slice(s, min(s + self.batch_size, self.n))

    def forward(self, block: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**self.fixed, **block}, (xb,))

    def outputs_loss(self, out: torch.Tensor, sl: slice) -> torch.Tensor:
        """(1/n) Σ_{i in chunk} ℓ_i from the chunk's outputs: chunk losses add up to the full-data loss L."""
        return per_sample_loss(out, self.y[sl], self.loss).sum() / self.n

    def chunk_loss(self, sl: slice) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """θ_block ↦ (1/n) Σ_{i in chunk} ℓ_i(θ)."""
        xb = self.x[sl]
        return lambda p: self.outputs_loss(self.forward(p, xb), sl)

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., dim) → {name: (..., *shape)} in block order."""
        out, i = {}, 0
        for name, p in self.block.items():
            out[name] = v[..., i:i + p.numel()].reshape(*v.shape[:-1], *p.shape)
            i += p.numel()
        return out

    def flatten(self, d: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        return torch.cat([d[k].reshape(*d[k].shape[:batch_dims], -1) for k in self.block], dim=-1)

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device


def _n_outputs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        out = model(x[:1])
    if out.dim() != 2 or out.shape[0] != 1:
        raise ValueError(f"model must map x of shape (n, *input_shape) to outputs (n, N); got output shape "
                         f"{tuple(out.shape)} for one input")
    return out.shape[1]


def _targets(y: torch.Tensor, x: torch.Tensor, n_out: int, loss: str) -> torch.Tensor:
    if loss == "mse":
        return check_targets(y, x, n_out)
    if torch.is_tensor(y) and y.dim() == 1 and (not torch.is_floating_point(y) or n_out > 1):
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} inputs; pass one integer label "
                             "per input or one-hot targets of shape (n, N).")
        labels = y.to(device=x.device).long()
        if (labels < 0).any() or (labels >= n_out).any() or (torch.is_floating_point(y) and (y != labels).any()):
            raise ValueError(f"y: integer class labels must lie in 0..{n_out - 1} for a model with {n_out} outputs.")
        return labels
    return check_targets(y, x, n_out).argmax(dim=1)


def _split_params(model: nn.Module, parameters: Sequence[str] | None):
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters (requires_grad=True); nothing to differentiate.")
    if parameters is None:
        wanted = [k for k, _ in named]
    else:
        if isinstance(parameters, str):
            parameters = [parameters]
        known = {k for k, _ in named}
        unknown = [k for k in parameters if k not in known]
        if unknown or len(parameters) == 0:
            raise ValueError(f"parameters: unknown or frozen parameter name(s) {unknown or '[] (empty)'}; "
                             f"choose from {sorted(known)}")
        wanted = list(parameters)
    wanted_set = set(wanted)
    block = {k: p.detach() for k, p in named if k in wanted_set}  # model order, not the caller's order
    fixed = {k: p.detach() for k, p in model.named_parameters() if k not in wanted_set}
    fixed.update({k: b for k, b in model.named_buffers()})
    return block, fixed


def _problem(model, x, y, loss, batch_size=None, parameters=None, need_y=True) -> _Problem:
    check_loss(loss)
    x = check_inputs(model, x, forward=False)
    out = checked_outputs(model, x)  # one forward pass: refuses random or overflowing outputs; reused for L below
    n_out = _n_outputs(model, x)
    yy = _targets(y, x, n_out, loss) if need_y else None
    if batch_size is None:
        batch_size = min(x.shape[0], 4096)
    batch_size = check_count(batch_size, "batch_size (a positive integer, or None for the whole data set)")
    block, fixed = _split_params(model, parameters)
    prob = _Problem(model, block, fixed, x, yy, loss, n_out, batch_size)
    if need_y:
        with torch.no_grad():  # L(θ) on all of x from those outputs: an overflowing loss is refused up front
            require_finite_loss(float(prob.outputs_loss(out, slice(None)).double()))
    return prob


def _require_finite_products(out: torch.Tensor, what: str = "Hessian") -> torch.Tensor:
    """``out`` unchanged, or :class:`NotFiniteError` when a curvature product overflowed (a NaN would otherwise
    flow silently into every estimate, or make ARPACK fail with a Fortran error code)."""
    if not all_finite(out):
        raise NotFiniteError(f"the {what}-vector products are not finite at these weights (overflow in the second "
                             f"derivatives, {out.dtype}); nothing to measure. Check the weights' scale, or use "
                             "model.double().")
    return out


def _as_vectors(prob: _Problem, v, name="v") -> tuple[torch.Tensor, bool]:
    v = torch.as_tensor(v)
    single = v.dim() == 1
    if v.dim() not in (1, 2) or v.shape[-1] != prob.dim:
        raise ValueError(f"{name} must have shape ({prob.dim},) or (m, {prob.dim}) (one entry per trainable "
                         f"parameter{' of the block' if prob.fixed and prob.dim else ''}, in model.parameters() "
                         f"order), got shape {tuple(v.shape)}")
    if not all_finite(v):
        raise ValueError(f"{name} contains NaN or inf.")
    v = v.to(device=prob.device, dtype=prob.dtype)
    return (v[None] if single else v), single


def _probe_group(prob: _Problem, probe_batch: int | None) -> int:
    """How many products to compute together. ``None``: batch on accelerators (32); on CPU batch only small
    problems, since batched double backward costs more per vector than one-at-a-time products once n·P is large
    (measured on 2 cores: 32 per call is 6× faster at n·P ≈ 2e5, 2× slower at n·P ≈ 1e7)."""
    if probe_batch is not None:
        return _check_probes(probe_batch, 1, "probe_batch")
    if prob.device.type != "cpu":
        return 32
    work = prob.n * sum(p.numel() for p in prob.model.parameters())
    return int(min(32, max(1, round(8e6 / max(work, 1)))))


def _check_probes(probes, minimum=1, name="probes") -> int:
    """A count such as ``probes``: an integer >= ``minimum`` (numpy integers accepted, booleans refused)."""
    return check_count(probes, name, minimum)


def _check_seed(seed) -> int:
    return check_count(seed, "seed", 0)


def _rademacher(m: int, dim: int, gen: torch.Generator, prob: _Problem) -> torch.Tensor:
    z = torch.randint(0, 2, (m, dim), generator=gen, dtype=torch.int8)
    return (2 * z - 1).to(device=prob.device, dtype=prob.dtype)


# --------------------------------------------------------------------------------------------------------------
# matrix-vector products
# --------------------------------------------------------------------------------------------------------------
def _hvp_batch_fwd_over_rev(prob: _Problem, V: torch.Tensor) -> torch.Tensor:
    """H V for V of shape (m, dim): forward-over-reverse ``jvp(grad(L))`` with torch.func, vmapped over m.

    Kept as the reference alternative (the benchmark compares it); :func:`_hvp_operator` is faster on CPU."""
    def per_chunk(sl: slice):
        g = grad(prob.chunk_loss(sl))
        return lambda t: jvp(g, (prob.block,), (t,))[1]

    return _sum_over_chunks(prob, V, per_chunk)


def _sum_over_chunks(prob: _Problem, V: torch.Tensor, per_chunk: Callable) -> torch.Tensor:
    """Σ over data chunks of a per-vector product ``per_chunk(slice)(t)`` (t a parameter dict), applied to every
    row of V (m, dim) with vmap (a plain call when m = 1)."""
    out = torch.zeros_like(V)
    for sl in prob.chunks():
        one = per_chunk(sl)
        if V.shape[0] == 1:
            out += prob.flatten(one(prob.unflatten(V[0])))[None]
        else:
            out += prob.flatten(vmap(one)(prob.unflatten(V)), batch_dims=1)
    return out


def _grad_graph(prob: _Problem, sl: slice):
    """Leaves for the block parameters and ∇L_chunk built with ``create_graph=True``.

    When the block is every parameter of the model, the model's own parameters are the leaves and the model is
    called directly (``torch.autograd.grad`` never touches ``.grad``); otherwise detached copies go through
    ``functional_call``, whose parameter swapping costs about a tenth of a small network's HVP."""
    own = dict(prob.model.named_parameters())
    if all(k not in own for k in prob.fixed) and all(own[k].requires_grad for k in prob.block):
        leaves = [own[k] for k in prob.block]
        with torch.enable_grad():
            loss = prob.outputs_loss(prob.model(prob.x[sl]), sl)
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True, materialize_grads=True)
        return leaves, grads
    leaves = [t.detach().requires_grad_(True) for t in prob.block.values()]
    with torch.enable_grad():
        loss = prob.chunk_loss(sl)(dict(zip(prob.block, leaves)))
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True, materialize_grads=True)
    return leaves, grads


def _backward_hvp(leaves, grads, V_parts: list[torch.Tensor], batched: bool) -> list[torch.Tensor]:
    """Second backward pass: (∂/∂θ)(∇L · v). Gradients that are constant in θ contribute zero."""
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    if not live:
        return [torch.zeros_like(v) for v in V_parts]
    gs, vs = [grads[i] for i in live], [V_parts[i] for i in live]
    if not batched:
        parts = torch.autograd.grad(gs, leaves, grad_outputs=vs, retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
        return list(parts)
    try:
        parts = torch.autograd.grad(gs, leaves, grad_outputs=vs, retain_graph=True, allow_unused=True,
                                    materialize_grads=True, is_grads_batched=True)
        return list(parts)
    except RuntimeError:  # no batching rule for some backward op: one vector at a time
        rows = [torch.autograd.grad(gs, leaves, grad_outputs=[v[j] for v in vs], retain_graph=True,
                                    allow_unused=True, materialize_grads=True) for j in range(vs[0].shape[0])]
        return [torch.stack([r[t] for r in rows]) for t in range(len(leaves))]


def _hvp_operator(prob: _Problem, cache: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """V (m, dim) ↦ H V by double backward (reverse-over-reverse autograd).

    When the data fit in one chunk and ``cache`` is set, the graph of ∇L is built once and every product costs
    a single extra backward pass (about one gradient); otherwise the gradient graph is rebuilt per chunk."""
    chunks = list(prob.chunks())
    cached = _grad_graph(prob, chunks[0]) if cache and len(chunks) == 1 else None

    def matvec(V: torch.Tensor) -> torch.Tensor:
        batched = V.shape[0] > 1
        parts = list(prob.unflatten(V if batched else V[0]).values())
        out = None
        for sl in chunks:
            leaves, grads = cached if cached is not None else _grad_graph(prob, sl)
            res = _backward_hvp(leaves, grads, parts, batched)
            part = prob.flatten(dict(zip(prob.block, res)), batch_dims=1) if batched else \
                prob.flatten(dict(zip(prob.block, res)))[None]
            out = part if out is None else out + part
        return _require_finite_products(out)

    return matvec


def _hvp_batch(prob: _Problem, V: torch.Tensor) -> torch.Tensor:
    return _hvp_operator(prob, cache=False)(V)


def _ce_lambda(out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Λ u with Λ = diag(s) − s sᵀ, s = softmax(out), row-wise."""
    s = torch.softmax(out, dim=-1)
    return s * u - s * (s * u).sum(-1, keepdim=True)


def _ggnvp_batch(prob: _Problem, V: torch.Tensor) -> torch.Tensor:
    """G V = (1/n) Σ Jᵀ Λ J V: jvp for J v, Λ, then vjp; vmapped over the m vectors."""
    def per_chunk(sl: slice):
        xb = prob.x[sl]

        def f(p):
            return prob.forward(p, xb)

        fx, vjp_fn = vjp(f, prob.block)

        def one(t):
            jv = jvp(f, (prob.block,), (t,))[1]
            u = jv if prob.loss == "mse" else _ce_lambda(fx, jv)
            return vjp_fn(u / prob.n)[0]

        return one

    return _require_finite_products(_sum_over_chunks(prob, V, per_chunk), "Gauss–Newton")


def _matvec_fn(prob: _Problem, curvature: str):
    if curvature == "hessian":
        return _hvp_operator(prob)
    if curvature == "gauss_newton":
        return lambda V: _ggnvp_batch(prob, V)
    raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}")


def _apply_in_groups(mv, V: torch.Tensor, group: int) -> torch.Tensor:
    return torch.cat([mv(V[i:i + group]) for i in range(0, V.shape[0], group)], dim=0)


def hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, loss: str = "mse",
        batch_size: int | None = None, parameters: Sequence[str] | None = None) -> torch.Tensor:
    """Hessian-vector product H v, H = ∇²_θ L over all of ``x`` (chapter "Measuring sharpness").

    ``v``: flat vector of length P (or a batch of shape (m, P), processed together, ``is_grads_batched``).
    Computed by double backward (∂/∂θ of ∇L·v), which on CPU beats forward-over-reverse ``jvp(grad(L))`` (see
    benchmarks/bench_sharpness.py); one product costs about two gradients, and repeated products inside the
    estimators below reuse the gradient graph (about one gradient each). ``parameters``
    restricts θ to a block (the product with the diagonal block H_bb, ``v`` then has the block's length).
    """
    with measurement_mode(model):
        prob = _problem(model, x, y, loss, batch_size, parameters)
        V, single = _as_vectors(prob, v)
        out = _hvp_batch(prob, V)
    return out[0] if single else out


def ggnvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, v: torch.Tensor, loss: str = "mse",
          batch_size: int | None = None, parameters: Sequence[str] | None = None) -> torch.Tensor:
    """Gauss–Newton-vector product G v = (1/n) Σ_i J_iᵀ Λ_i J_i v (Λ = I for MSE, softmax Hessian for CE).

    G does not depend on the targets, so ``y`` may be ``None``. Chapter "Measuring sharpness".
    """
    with measurement_mode(model):
        prob = _problem(model, x, y, loss, batch_size, parameters, need_y=y is not None)
        V, single = _as_vectors(prob, v)
        out = _ggnvp_batch(prob, V)
    return out[0] if single else out


# --------------------------------------------------------------------------------------------------------------
# exact Gauss–Newton trace (first so that the bounds module can use it)
# --------------------------------------------------------------------------------------------------------------
def _lambda_trace(sm: torch.Tensor | None, gram: torch.Tensor) -> torch.Tensor:
    """Per sample Tr(Λ_i gram_i) for gram (B, N, N); Λ = I (sm None, MSE) or diag(s) − s sᵀ (cross-entropy)."""
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    if sm is None:
        return diag.sum(-1)
    return (sm * diag).sum(-1) - torch.einsum("ba,bac,bc->b", sm, gram, sm)


def _gn_traces_jacrev(prob: _Problem, names: list[str], acc: dict[str, torch.Tensor]) -> None:
    """Generic path: per-sample Jacobians of the parameters ``names`` with vmap(jacrev), in chunks."""
    sub = {k: prob.block[k] for k in names}
    fixed = {**prob.fixed, **{k: v for k, v in prob.block.items() if k not in sub}}

    def f_single(p, xi):
        out = functional_call(prob.model, {**fixed, **p}, (xi[None],))[0]
        return out, out

    jac_fn = vmap(jacrev(f_single, has_aux=True), in_dims=(None, 0))
    dim = sum(v.numel() for v in sub.values())
    chunk = max(1, min(prob.batch_size, _GN_CHUNK_ELEMENTS // max(1, prob.n_out * dim)))
    for s in range(0, prob.n, chunk):
        jac, out = jac_fn(sub, prob.x[s:s + chunk])
        sm = None if prob.loss == "mse" else torch.softmax(out.double(), dim=-1)
        for k, j in jac.items():
            jm = j.reshape(j.shape[0], j.shape[1], -1).double()
            acc[k] += _lambda_trace(sm, jm @ jm.transpose(1, 2)).sum()


def _gn_traces_dense(prob: _Problem, acc: dict[str, torch.Tensor]) -> set[str]:
    """Fast exact path for ``nn.Linear`` layers called once on 2-D inputs h (B, m_in):
    ∇_W f_a(x_i) = D_{a,i} h_iᵀ and ∇_b f_a(x_i) = D_{a,i} with D = ∂f/∂z, so
    Tr G_W = (1/n) Σ_i Tr(Λ_i D_i D_iᵀ) ||h_i||² and Tr G_b = (1/n) Σ_i Tr(Λ_i D_i D_iᵀ).
    D_i for all samples at once from N batched backward passes (samples are independent in measurement mode).
    Returns the parameter names it handled."""
    mods = {}
    for name, lin in dense_layers(prob.model):
        wkey = f"{name}.weight" if name else "weight"
        if wkey in prob.block:
            mods[name] = (lin, wkey)
    if not mods:
        return set()
    handled: set[str] | None = None
    for s in range(0, prob.n, prob.batch_size):
        xb = prob.x[s:s + prob.batch_size]
        B = xb.shape[0]
        records: dict[str, list] = {name: [] for name in mods}
        hooks = [lin.register_forward_hook(lambda m, i, o, _n=name: records[_n].append((i[0], o)))
                 for name, (lin, _) in mods.items()]
        try:
            with torch.enable_grad():
                params = {k: v.detach().requires_grad_(True) for k, v in prob.block.items()}
                out = prob.forward(params, xb)
        finally:
            for h in hooks:
                h.remove()
        ok = [n for n, r in records.items()
              if len(r) == 1 and r[0][0].dim() == 2 and r[0][0].shape[0] == B and r[0][1].requires_grad]
        if handled is None:
            handled = set(ok)
        ok = [n for n in ok if n in handled]
        handled &= set(ok)
        if not ok:
            return set()
        zs = [records[n][0][1] for n in ok]
        N = out.shape[1]
        eye = torch.eye(N, dtype=out.dtype, device=out.device)[:, None, :].expand(N, B, N)
        try:
            Ds = torch.autograd.grad(out, zs, grad_outputs=eye, is_grads_batched=True)
        except RuntimeError:  # an op without a batching rule: loop over the N outputs instead
            per_a = [torch.autograd.grad(out, zs, grad_outputs=eye[a], retain_graph=True) for a in range(N)]
            Ds = [torch.stack([g[t] for g in per_a]) for t in range(len(zs))]
        sm = None if prob.loss == "mse" else torch.softmax(out.detach().double(), dim=-1)
        for n, D in zip(ok, Ds):
            D = D.double()  # (N, B, m_out)
            t = _lambda_trace(sm, torch.einsum("aim,bim->iab", D, D))  # (B,)
            h = records[n][0][0].detach().double()
            lin, wkey = mods[n]
            acc[wkey] += (t * h.pow(2).sum(-1)).sum()
            bkey = wkey[: -len("weight")] + "bias"
            if lin.bias is not None and bkey in prob.block:
                acc[bkey] += t.sum()
    handled = handled or set()
    names = set()
    for n in handled:
        lin, wkey = mods[n]
        names.add(wkey)
        bkey = wkey[: -len("weight")] + "bias"
        if lin.bias is not None and bkey in prob.block:
            names.add(bkey)
    return names


def _gn_block_traces(prob: _Problem, fast: bool = True) -> dict[str, float]:
    """{param name: (1/n) Σ_i Tr(J_{i,b}ᵀ Λ_i J_{i,b})} for every trainable parameter b."""
    acc = {k: torch.zeros((), dtype=torch.float64, device=prob.device) for k in prob.block}
    done = set()
    if fast:
        tmp = {k: v.clone() for k, v in acc.items()}
        done = _gn_traces_dense(prob, tmp)
        for k in done:
            acc[k] = tmp[k]
    rest = [k for k in prob.block if k not in done]
    if rest:
        _gn_traces_jacrev(prob, rest, acc)
    return {k: float(v) / prob.n for k, v in acc.items()}


def gauss_newton_trace(model: nn.Module, x: torch.Tensor, loss: str = "mse", per_layer: bool = False,
                       batch_size: int | None = None, fast: bool = True) -> float | dict[str, float]:
    """EXACT Tr G = (1/n) Σ_i ||J_θ(x_i)||_F² (MSE) or (1/n) Σ_i Tr(J_iᵀ Λ_i J_i) (cross-entropy).

    Dense layers (``nn.Linear`` called once on 2-D inputs; ``fast=True``): ∇_W f_a(x_i) = D_{a,i} h_iᵀ, so
    ||∇_W f_a(x_i)||² = ||D_{a,i}||² ||h_i||², with D = ∂f/∂z for all samples from N batched backward passes.
    Other parameters (convolutions, ...): per-sample Jacobians with ``vmap(jacrev)``, in chunks (about 2^24
    Jacobian entries at a time). Never a Python loop over samples. At zero MSE loss Tr G = Tr H
    (interpolation identity). ``per_layer=True`` returns ``{dense-layer name: Tr G_{W_l}}`` for every layer of
    :func:`~flatcomp_tutorial.checks.dense_layers` (weight block only, no bias; each must be trainable) plus
    ``"total"`` = Tr G over all trainable parameters. Chapter "Measuring sharpness".
    """
    with measurement_mode(model):
        prob = _problem(model, x, None, loss, batch_size, need_y=False)
        traces = _gn_block_traces(prob, fast)
        total = float(sum(traces.values()))
        if not math.isfinite(total):
            raise NotFiniteError("gauss_newton_trace: Tr G is not finite at these weights (overflow in the Jacobians); "
                                 "nothing to measure. Check the weights' scale, or use model.double().")
        if not per_layer:
            return total
        result: dict[str, float] = {}
        for name, layer in dense_layers(model):
            key = f"{name}.weight" if name else "weight"
            if key not in traces:
                raise ValueError(
                    f"the weight of dense layer '{name}' is frozen (requires_grad=False), so its block trace "
                    "Tr G_W (needed per dense layer by gauss_newton_trace(per_layer=True), by the bounds and by the "
                    "trace_g measure of training) is not among the differentiated parameters. Make it trainable "
                    "before measuring: model.requires_grad_(True) (freezing does not change the function). For "
                    "a partly frozen model only the total over the trainable parameters is available: "
                    "gauss_newton_trace(model, x) with the default per_layer=False.")
            result[name] = traces[key]
        result["total"] = total
    return result


# --------------------------------------------------------------------------------------------------------------
# eigenvalues (Lanczos)
# --------------------------------------------------------------------------------------------------------------
def top_hessian_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 1, loss: str = "mse",
                            which: str = "LA", tol: float = 1e-6, seed: int = 0, return_matvecs: bool = False,
                            return_eigenvectors: bool = False, batch_size: int | None = None,
                            parameters: Sequence[str] | None = None, ncv: int | None = None,
                            maxiter: int | None = None):
    """The k extreme eigenvalues of H by implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``).

    ``which="LA"``: largest algebraic, returned in descending order (λ_max first); ``"SA"``: most negative,
    returned ascending (most negative first); ``"LM"``: largest magnitude, by descending |λ|. ``tol`` is
    eigsh's relative accuracy. Returns ``vals`` or a tuple ``(vals[, vecs (P, k)][, matvecs])``.
    Chapter "Measuring sharpness".
    """
    if which not in ("LA", "SA", "LM"):
        raise ValueError(f"which must be 'LA' (largest), 'SA' (most negative) or 'LM' (largest |λ|), got {which!r}")
    tol = check_real(tol, "tol (eigsh's relative accuracy; 0 means machine precision)", 0.0, strict=False)
    seed = _check_seed(seed)
    ncv = check_count(ncv, "ncv", optional=True)
    maxiter = check_count(maxiter, "maxiter", optional=True)
    with measurement_mode(model):
        prob = _problem(model, x, y, loss, batch_size, parameters)
        P = prob.dim
        if not (isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))) or not 1 <= k < P:
            raise ValueError(f"k must be an integer with 1 <= k < P = {P} (Lanczos cannot return all "
                             f"eigenvalues; use a dense eigensolver for that), got {k!r}")
        count = [0]
        mv = _hvp_operator(prob)

        def matvec(v: np.ndarray) -> np.ndarray:
            count[0] += 1
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(prob.device, prob.dtype)
            return mv(t[None])[0].double().cpu().numpy()

        op = LinearOperator((P, P), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(P)
        # ARPACK's BLAS threads spin after each call and starve torch's threads during the next matvec (twice the
        # wall time on 2 cores, benchmarks/results.md); ARPACK's own vector work is tiny, so it gets one thread.
        with threadpool_limits(limits=1, user_api="blas"):
            vals, vecs = eigsh(op, k=int(k), which=which, tol=tol, v0=v0, ncv=ncv, maxiter=maxiter,
                               return_eigenvectors=True)
    order = {"LA": np.argsort(-vals), "SA": np.argsort(vals), "LM": np.argsort(-np.abs(vals))}[which]
    vals, vecs = vals[order], vecs[:, order]
    out: list = [vals]
    if return_eigenvectors:
        out.append(vecs)
    if return_matvecs:
        out.append(count[0])
    return out[0] if len(out) == 1 else tuple(out)


# --------------------------------------------------------------------------------------------------------------
# trace estimators
# --------------------------------------------------------------------------------------------------------------
def _estimate(samples: torch.Tensor, probes: int, matvecs: int, offset: float = 0.0) -> Estimate:
    s = samples.double()
    stderr = float(s.std(unbiased=True) / math.sqrt(s.numel())) if s.numel() > 1 else float("nan")
    return Estimate(mean=offset + float(s.mean()), stderr=stderr, probes=probes, matvecs=matvecs)


def _quad_forms(mv, V: torch.Tensor, group: int) -> torch.Tensor:
    return torch.cat([(Vg * mv(Vg)).sum(-1) for Vg in V.split(group)])


def hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse", probes: int = 100,
                  seed: int = 0, method: str = "hutchinson", parameters: Sequence[str] | None = None,
                  batch_size: int | None = None, probe_batch: int | None = None,
                  curvature: str = "hessian") -> Estimate:
    """Stochastic trace of H (or of its diagonal block for ``parameters``) with Rademacher probes z.

    ``"hutchinson"``: Tr H ≈ (1/m) Σ zᵀ H z, ``stderr`` = sample std / √m. ``"hutch++"`` (Meyer et al. 2021):
    with the same budget of m = ``probes`` products, Tr(Qᵀ H Q) on a rank-m/3 sketch Q of H plus Hutchinson on
    the deflated residual (I − QQᵀ) H (I − QQᵀ); ``stderr`` is that of the residual part. ``"gn-control"``:
    Tr H = Tr G (exact, :func:`gauss_newton_trace`) + Hutchinson on R = H − G (control variate; each probe costs
    2 products, counted in ``matvecs``). Near a minimum R is small, so its variance 2||R||_F² (off-diagonal) is far
    below that of H: on the trained digits MLP the per-probe std drops about 25×. ``probe_batch``
    products are computed together (batched autograd; ``None`` picks by problem size and device).
    ``curvature="gauss_newton"`` estimates Tr G instead.
    Chapter "Measuring sharpness".
    """
    if method not in ("hutchinson", "hutch++", "gn-control"):
        raise ValueError(f"method must be 'hutchinson', 'hutch++' or 'gn-control', got {method!r}")
    if method == "gn-control" and curvature != "hessian":
        raise ValueError("method='gn-control' estimates Tr H as exact Tr G + Hutchinson on H − G; it needs "
                         "curvature='hessian' (for Tr G itself use gauss_newton_trace, which is exact).")
    seed = _check_seed(seed)
    probes = _check_probes(probes, 3 if method == "hutch++" else 1,
                           "probes" + (" (hutch++ needs >= 3: sketch, projection, residual)"
                                       if method == "hutch++" else ""))
    with measurement_mode(model):
        prob = _problem(model, x, y, loss, batch_size, parameters, need_y=curvature == "hessian")
        probe_batch = _probe_group(prob, probe_batch)
        mv = _matvec_fn(prob, curvature)
        gen = torch.Generator().manual_seed(seed)
        if method == "hutchinson":
            Z = _rademacher(probes, prob.dim, gen, prob)
            return _estimate(_quad_forms(mv, Z, probe_batch), probes, probes)
        if method == "gn-control":
            tr_g = sum(_gn_block_traces(prob).values())
            Z = _rademacher(probes, prob.dim, gen, prob)
            residual = lambda V: mv(V) - _ggnvp_batch(prob, V)  # noqa: E731  (H − G) V = R V
            return _estimate(_quad_forms(residual, Z, probe_batch), probes, 2 * probes, offset=tr_g)
        k = min(probes // 3, prob.dim)
        S = _rademacher(k, prob.dim, gen, prob)
        Q, _ = torch.linalg.qr(_apply_in_groups(mv, S, probe_batch).T.double())  # (dim, k)
        Qt = Q.T.to(prob.dtype)
        low = float((Qt * _apply_in_groups(mv, Qt, probe_batch)).sum())
        m_res = probes - 2 * k
        G = _rademacher(m_res, prob.dim, gen, prob).double()
        R = (G - (G @ Q) @ Q.T).to(prob.dtype)
        if m_res == 0:
            return Estimate(low, 0.0, probes, 2 * k)
        return _estimate(_quad_forms(mv, R, probe_batch), probes, probes, offset=low)


# --------------------------------------------------------------------------------------------------------------
# spectral density (stochastic Lanczos quadrature)
# --------------------------------------------------------------------------------------------------------------
def _lanczos(mv, V0: torch.Tensor, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batched Lanczos with full reorthogonalisation (twice, in float64) for each row of V0.

    Returns, per start vector, the Ritz values (Gauss nodes) and squared first components (weights).
    """
    m, dim = V0.shape
    dt = V0.dtype
    Q = torch.zeros(m, steps + 1, dim, dtype=torch.float64, device=V0.device)
    Q[:, 0] = V0.double() / V0.double().norm(dim=1, keepdim=True)
    alpha = torch.zeros(m, steps, dtype=torch.float64)
    beta = torch.zeros(m, steps, dtype=torch.float64)
    active = torch.ones(m, dtype=torch.bool)
    length = torch.full((m,), steps, dtype=torch.long)
    for j in range(steps):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        w = mv(Q[idx, j].to(dt)).double()
        a = (w * Q[idx, j]).sum(-1)
        alpha[idx, j] = a.cpu()
        for _ in range(2):  # full reorthogonalisation against q_0..q_j
            Qi = Q[idx, : j + 1]
            w = w - torch.einsum("mkd,mk->md", Qi, torch.einsum("mkd,md->mk", Qi, w))
        b = w.norm(dim=1)
        beta[idx, j] = b.cpu()
        scale = alpha[idx, : j + 1].abs().max(dim=1).values.to(b.device) + 1e-300
        stop = (b <= 1e-10 * scale) | (j + 1 == steps)
        stop = stop.cpu()
        done, go = idx[stop], idx[~stop]
        active[done] = False
        length[done] = j + 1
        Q[go.to(Q.device), j + 1] = w[~stop.to(w.device)] / b[~stop.to(b.device), None]
    result = []
    for i in range(m):
        L = int(length[i])
        T = np.diag(alpha[i, :L].numpy()) + np.diag(beta[i, : L - 1].numpy(), 1) + np.diag(beta[i, : L - 1].numpy(), -1)
        theta, U = np.linalg.eigh(T)
        result.append((theta, U[0] ** 2))
    return result


def slq_nodes_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                      n_vectors: int = 10, lanczos_steps: int = 80, seed: int = 0,
                      start_vectors: torch.Tensor | None = None, batch_size: int | None = None,
                      parameters: Sequence[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gauss-quadrature nodes and weights of stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each (normalised Rademacher, or given) start vector v, ``lanczos_steps`` Lanczos steps with full
    reorthogonalisation give a tridiagonal T = U diag(θ) Uᵀ; nodes θ_k, weights τ_k = U_{0k}² (sum to 1).
    Σ_k τ_k θ_k^p = vᵀ H^p v / ||v||² exactly for p ≤ 2·steps − 1, so the p-th moment of the density is
    E ≈ Tr(H^p)/P. Returns a list of ``(nodes, weights)``, one per vector. Chapter "Measuring sharpness".
    """
    lanczos_steps = _check_probes(lanczos_steps, 1, "lanczos_steps")
    seed = _check_seed(seed)
    if start_vectors is None:
        n_vectors = _check_probes(n_vectors, 1, "n_vectors")
    with measurement_mode(model):
        prob = _problem(model, x, y, loss, batch_size, parameters)
        steps = min(lanczos_steps, prob.dim)
        if start_vectors is None:
            V0 = _rademacher(n_vectors, prob.dim, torch.Generator().manual_seed(seed), prob)
        else:
            V0, _ = _as_vectors(prob, start_vectors, "start_vectors")
            if (V0.norm(dim=1) == 0).any():
                raise ValueError("start_vectors must be non-zero.")
        return _lanczos(_hvp_operator(prob), V0, steps)


def hessian_spectral_density(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                             n_vectors: int = 10, lanczos_steps: int = 80, grid: np.ndarray | int | None = None,
                             sigma: float | None = None, seed: int = 0, batch_size: int | None = None,
                             parameters: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed spectral density of H by stochastic Lanczos quadrature.

    φ(t) ∝ (1/n_vectors) Σ_v Σ_k τ_k N(t; θ_k, σ²), normalised numerically to integrate to 1 (trapezoid)
    on the grid. Defaults: ``sigma`` = 1% of the Ritz-value range; ``grid`` (or an int = number of points,
    default 1000) spans the Ritz values ± 5σ. Returns ``(grid, density)``. Chapter "Measuring sharpness".
    """
    if sigma is not None:
        sigma = check_real(sigma, "sigma (the Gaussian smoothing width)")
    if isinstance(grid, (bool, np.bool_)):
        raise ValueError(f"grid must be an increasing 1-D array, the number of points (an integer >= 2) or None, "
                         f"got {grid!r}")
    if isinstance(grid, (int, np.integer)):
        check_count(grid, "grid (the number of points)", 2)
    nw = slq_nodes_weights(model, x, y, loss, n_vectors, lanczos_steps, seed, None, batch_size, parameters)
    nodes = np.concatenate([t for t, _ in nw])
    weights = np.concatenate([w for _, w in nw]) / len(nw)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(1e-3 * abs(hi), 1e-8)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if grid is None or isinstance(grid, (int, np.integer)):
        num = 1000 if grid is None else int(grid)
        if num < 2:
            raise ValueError(f"grid must have at least 2 points, got {num}")
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be an increasing 1-D array with at least 2 points (or the number of points).")
    dens = (weights[None, :] * np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)).sum(1)
    dens /= sigma * math.sqrt(2 * math.pi)
    area = np.trapezoid(dens, grid)
    if not area > 0:
        raise ValueError("grid does not cover the spectrum (the density vanishes on it); widen it or pass grid=None.")
    return grid, dens / area


# --------------------------------------------------------------------------------------------------------------
# reparametrisation-invariant sharpness
# --------------------------------------------------------------------------------------------------------------
def _resolve_layer(model: nn.Module, layer: int | str) -> tuple[str, nn.Linear]:
    layers = dense_layers(model)
    names = [n for n, _ in layers]
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not 1 <= layer <= len(layers):
            raise ValueError(f"layer index must be 1..{len(layers)} (1-based, dense layers {names}), got {layer}")
        return layers[layer - 1]
    if isinstance(layer, str) and layer in names:
        return layers[names.index(layer)]
    raise ValueError(f"layer must be a 1-based index or one of the dense layer names {names}, got {layer!r}")


def relative_flatness(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, layer: int | str,
                      loss: str = "mse", method: str = "exact", curvature: str = "hessian", probes: int = 100,
                      seed: int = 0, batch_size: int | None = None, probe_batch: int | None = None,
                      return_estimate: bool = False) -> float | Estimate:
    """Relative flatness κ_l = Σ_{s,s'} ⟨w_s, w_{s'}⟩ Tr(H_{s,s'}) of dense layer ``layer`` (Petzka et al. 2021).

    w_s are the rows of W_l (incoming weights of unit s), H_{s,s'} = ∂²L/∂w_s∂w_{s'}. ``"exact"``: with
    A Aᵀ = W Wᵀ (A = W, or W Wᵀ's eigen-factor when that is smaller), κ = Σ_k Σ_j (a_k ⊗ e_j)ᵀ H (a_k ⊗ e_j),
    rank(W)·cols(W) block products. ``"hutchinson"``: κ = E[vᵀ H v], v = W Z on the W block, Z Rademacher
    (cols × cols). ``curvature="gauss_newton"`` uses G (then κ_l = (1/n) Σ_i ||∂f/∂h_{l−1}||_F² ||h_{l−1}||²,
    identity B8 of the chapter "Network-wide and reparametrization-invariant bounds"; ``y`` may be None).
    Invariant to W_l → cW_l, W_{l+1} → W_{l+1}/c (ReLU), for both layers; under neuron-wise rescaling only κ_l
    (rows rescaled) is invariant, κ_{l+1} is not.
    Chapter "Measuring sharpness".
    """
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    if curvature not in ("hessian", "gauss_newton"):
        raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}")
    seed = _check_seed(seed)
    if method == "hutchinson":
        probes = _check_probes(probes)
    with measurement_mode(model):
        name, lin = _resolve_layer(model, layer)
        key = f"{name}.weight" if name else "weight"
        prob = _problem(model, x, y, loss, batch_size, [key], need_y=curvature == "hessian")
        probe_batch = _probe_group(prob, probe_batch)
        mv = _matvec_fn(prob, curvature)
        W = prob.block[key]
        m_out, m_in = W.shape
        if method == "exact":
            if m_in <= m_out:
                A = W
            else:
                lam, U = torch.linalg.eigh(W.double() @ W.double().T)
                A = (U * lam.clamp_min(0).sqrt()).to(W.dtype)  # (m_out, m_out), A Aᵀ = W Wᵀ
            r = A.shape[1]
            V = torch.zeros(r, m_in, m_out, m_in, dtype=W.dtype, device=W.device)
            for j in range(m_in):
                V[:, j, :, j] = A.T
            V = V.reshape(r * m_in, m_out * m_in)
            kappa = float(_quad_forms(mv, V, probe_batch).double().sum())
            return Estimate(kappa, 0.0, 0, V.shape[0]) if return_estimate else kappa
        probes = _check_probes(probes)
        gen = torch.Generator().manual_seed(seed)
        Z = _rademacher(probes, m_in * m_in, gen, prob).reshape(probes, m_in, m_in)
        V = (W[None] @ Z).reshape(probes, -1)
        est = _estimate(_quad_forms(mv, V, probe_batch), probes, probes)
    return est if return_estimate else est.mean


def adaptive_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                       method: str = "hutchinson", probes: int = 100, seed: int = 0,
                       batch_size: int | None = None, probe_batch: int | None = None,
                       parameters: Sequence[str] | None = None, return_estimate: bool = False) -> float | Estimate:
    """Adaptive (elementwise) sharpness S_ad = Σ_j θ_j² H_jj = Tr(diag(θ) H diag(θ)).

    ``"hutchinson"``: E[(θ∘z)ᵀ H (θ∘z)] with Rademacher z; ``"exact"``: the diagonal of H from P unit-vector
    products (small nets only). Invariant to neuron-wise rescaling of ReLU units (θ_j² scales like 1/H_jj).
    Chapter "Measuring sharpness".
    """
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    seed = _check_seed(seed)
    if method == "hutchinson":
        probes = _check_probes(probes)
    with measurement_mode(model):
        prob = _problem(model, x, y, loss, batch_size, parameters)
        probe_batch = _probe_group(prob, probe_batch)
        theta = prob.flatten(prob.block)
        if method == "exact":
            P = prob.dim
            total = 0.0
            mv = _hvp_operator(prob)
            for s in range(0, P, probe_batch):
                idx = torch.arange(s, min(s + probe_batch, P), device=prob.device)
                E = torch.zeros(idx.numel(), P, dtype=prob.dtype, device=prob.device)
                E[torch.arange(idx.numel()), idx] = 1.0
                diag = mv(E)[torch.arange(idx.numel()), idx]
                total += float((theta[idx].double() ** 2 * diag.double()).sum())
            return Estimate(total, 0.0, 0, P) if return_estimate else total
        probes = _check_probes(probes)
        Z = _rademacher(probes, prob.dim, torch.Generator().manual_seed(seed), prob) * theta[None]
        est = _estimate(_quad_forms(_hvp_operator(prob), Z, probe_batch), probes, probes)
    return est if return_estimate else est.mean
