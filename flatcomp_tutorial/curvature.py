"""Curvature operators of the training loss: H v, G v and the exact Tr G (chapter "Measuring sharpness").

Conventions are those of :mod:`flatcomp_tutorial.sharpness`: L(θ) = (1/n) Σ_i ℓ_i over ALL of ``(x, y)`` (chunks
of ``batch_size`` samples only bound the memory), θ = the trainable parameters flattened in ``model.parameters()``
order (or the block named by ``parameters``), H = ∇²_θ L = G + R with the Gauss–Newton matrix
G = (1/n) Σ_i J_iᵀ Λ_i J_i (Λ_i = I for MSE, diag(s_i) − s_i s_iᵀ with s_i = softmax f(x_i) for cross-entropy).

:func:`problem` validates (model, data, loss) once; :func:`operator` turns it into a :class:`CurvatureOperator`,
a batched product V (m, dim) ↦ C V (C = H or G, rows are vectors) that the estimators of
:mod:`flatcomp_tutorial.estimators` accept like any other matrix. :func:`hessian_operator` and
:func:`gauss_newton_operator` do both in one call; :func:`hvp` and :func:`ggnvp` are single products.

Longer than the usual ~400 lines (about 510): the exact Gauss–Newton trace (dense fast path and per-sample
Jacobian path, the last third) works on the same validated :class:`Problem` as the products, whose internals
(parameter split, chunks, functional forward) it uses throughout.

Symbols: Appendix "Notation and conventions", entries "H = G + R" and "Tr G".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

from .checks import (NotFiniteError, all_finite, check_count, check_inputs, check_targets, checked_outputs,
                     measurement_mode, require_finite_loss)
from .layers import dense_layers, weight_key
from .losses import check_loss, per_sample_loss

__all__ = ["Problem", "problem", "CurvatureOperator", "operator", "hessian_operator", "gauss_newton_operator", "hvp",
           "ggnvp", "gauss_newton_parameter_traces", "CURVATURES", "HVP_METHODS"]

CURVATURES = ("hessian", "gauss_newton")
HVP_METHODS = ("reverse-over-reverse", "forward-over-reverse")
_GN_CHUNK_ELEMENTS = 2**24  # per-sample Jacobian entries held at once by the exact Gauss–Newton trace


# --------------------------------------------------------------------------------------------------------------
# set-up: one validated, functional view of (model, data, loss)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A validated (model, data, loss): θ_block ↦ L(θ) as a pure function, evaluated in chunks of the data."""

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

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device

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

    def as_vectors(self, v, name: str = "v") -> tuple[torch.Tensor, bool]:
        """``v`` of shape (dim,) or (m, dim) as finite rows (m, dim) in the problem's dtype/device, and whether it
        was a single vector."""
        v = torch.as_tensor(v)
        single = v.dim() == 1
        if v.dim() not in (1, 2) or v.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape ({self.dim},) or (m, {self.dim}) (one entry per trainable "
                             f"parameter{' of the block' if self.fixed and self.dim else ''}, in model.parameters() "
                             f"order), got shape {tuple(v.shape)}")
        if not all_finite(v):
            raise ValueError(f"{name} contains NaN or inf.")
        v = v.to(device=self.device, dtype=self.dtype)
        return (v[None] if single else v), single


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


def problem(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, loss: str = "mse",
            batch_size: int | None = None, parameters: Sequence[str] | None = None, need_y: bool = True) -> Problem:
    """Validate and set up; call inside :func:`~flatcomp_tutorial.checks.measurement_mode`. Evaluates the model
    once on ``x``: random or overflowing outputs and (with ``need_y``) an overflowing loss are refused up front."""
    check_loss(loss)
    x = check_inputs(model, x, forward=False)
    out = checked_outputs(model, x)  # one forward pass: refuses random or overflowing outputs; reused for L below
    n_out = _n_outputs(model, x)
    yy = _targets(y, x, n_out, loss) if need_y else None
    if batch_size is None:
        batch_size = min(x.shape[0], 4096)
    batch_size = check_count(batch_size, "batch_size (a positive integer, or None for the whole data set)")
    block, fixed = _split_params(model, parameters)
    prob = Problem(model, block, fixed, x, yy, loss, n_out, batch_size)
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


# --------------------------------------------------------------------------------------------------------------
# products
# --------------------------------------------------------------------------------------------------------------
def _sum_over_chunks(prob: Problem, V: torch.Tensor, per_chunk: Callable) -> torch.Tensor:
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


def _hvp_batch_fwd_over_rev(prob: Problem, V: torch.Tensor) -> torch.Tensor:
    """H V for V of shape (m, dim): forward-over-reverse ``jvp(grad(L))`` with torch.func, vmapped over m.

    Kept as the reference alternative (the benchmark compares it); double backward is faster on CPU."""
    def per_chunk(sl: slice):
        g = grad(prob.chunk_loss(sl))
        return lambda t: jvp(g, (prob.block,), (t,))[1]

    return _sum_over_chunks(prob, V, per_chunk)


def _grad_graph(prob: Problem, sl: slice):
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


def _hvp_operator(prob: Problem, cache: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """V (m, dim) ↦ H V by double backward (reverse-over-reverse autograd).

    When the data fit in one chunk and ``cache`` is set, the graph of ∇L is built once and every product costs
    a single extra backward pass (about one gradient); otherwise the gradient graph is rebuilt per chunk."""
    chunks = list(prob.chunks())
    cached = _grad_graph(prob, chunks[0]) if cache and len(chunks) == 1 else None

    def matmat(V: torch.Tensor) -> torch.Tensor:
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

    return matmat


def _ce_lambda(out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Λ u with Λ = diag(s) − s sᵀ, s = softmax(out), row-wise."""
    s = torch.softmax(out, dim=-1)
    return s * u - s * (s * u).sum(-1, keepdim=True)


def _ggnvp_batch(prob: Problem, V: torch.Tensor) -> torch.Tensor:
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


def _ggn_forms(prob: Problem, V: torch.Tensor) -> torch.Tensor:
    """vᵀ G v = (1/n) Σ_i (J_i v)ᵀ Λ_i (J_i v) for every row v of V (shape (m,)): one jvp per vector and no vjp,
    about half the cost of a product G v."""
    def per_chunk(sl: slice):
        xb = prob.x[sl]

        def one(t):
            fx, jv = jvp(lambda p: prob.forward(p, xb), (prob.block,), (t,))
            u = jv if prob.loss == "mse" else _ce_lambda(fx, jv)
            return (jv * u).sum() / prob.n

        return one

    total = torch.zeros(V.shape[0], dtype=V.dtype, device=V.device)
    for sl in prob.chunks():
        one = per_chunk(sl)
        total += one(prob.unflatten(V[0]))[None] if V.shape[0] == 1 else vmap(one)(prob.unflatten(V))
    return _require_finite_products(total, "Gauss–Newton")


# --------------------------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvatureOperator:
    """A symmetric curvature matrix C (dim × dim) as a batched product ``matmat(V) = V Cᵀ = (C vᵢ)ᵢ`` for V of
    shape (m, dim) in ``dtype`` on ``device``. ``probe_batch``: how many products are worth computing together
    here. ``problem``: the validated set-up it was built from (weights as they were at construction). ``forms``
    (G only): the quadratic forms vᵢᵀ C vᵢ without the full products (one jvp per vector)."""

    matmat: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    dtype: torch.dtype
    device: torch.device
    probe_batch: int
    problem: Problem
    forms: Callable[[torch.Tensor], torch.Tensor] | None = None  # V (m, dim) -> vᵢᵀ C vᵢ (m,), when cheaper


def _default_probe_batch(prob: Problem) -> int:
    """Batch on accelerators (32); on CPU batch only small problems, since batched double backward costs more per
    vector than one-at-a-time products once n·P is large (measured on 2 cores: 32 per call is 6× faster at
    n·P ≈ 2e5, 2× slower at n·P ≈ 1e7)."""
    if prob.device.type != "cpu":
        return 32
    work = prob.n * sum(p.numel() for p in prob.model.parameters())
    return int(min(32, max(1, round(8e6 / max(work, 1)))))


def operator(prob: Problem, curvature: str = "hessian", cache: bool = True,
             method: str = "reverse-over-reverse") -> CurvatureOperator:
    """H (``curvature="hessian"``) or G (``"gauss_newton"``) of a :func:`problem` as a :class:`CurvatureOperator`.

    H V by double backward (``method="reverse-over-reverse"``; with ``cache`` and data in one chunk the gradient
    graph is built once, so each further product costs about one gradient) or by ``"forward-over-reverse"``
    ``jvp(grad(L))``; G V by a jvp, Λ and a vjp per vector."""
    if curvature == "hessian":
        if method not in HVP_METHODS:
            raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
        mv = _hvp_operator(prob, cache) if method == HVP_METHODS[0] else \
            (lambda V: _require_finite_products(_hvp_batch_fwd_over_rev(prob, V)))
    elif curvature == "gauss_newton":
        mv = (lambda V: _ggnvp_batch(prob, V))
        return CurvatureOperator(mv, prob.dim, prob.dtype, prob.device, _default_probe_batch(prob), prob,
                                 lambda V: _ggn_forms(prob, V))
    else:
        raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}")
    return CurvatureOperator(mv, prob.dim, prob.dtype, prob.device, _default_probe_batch(prob), prob)


def hessian_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                     batch_size: int | None = None, parameters: Sequence[str] | None = None, cache: bool = True,
                     method: str = "reverse-over-reverse") -> CurvatureOperator:
    """H = ∇²_θ L over all of ``x`` as a batched product V (m, P) ↦ H V, for any estimator of
    :mod:`flatcomp_tutorial.estimators` (see :func:`operator`). Chapter "Measuring sharpness"."""
    with measurement_mode(model):
        return operator(problem(model, x, y, loss, batch_size, parameters), "hessian", cache, method)


def gauss_newton_operator(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, loss: str = "mse",
                          batch_size: int | None = None,
                          parameters: Sequence[str] | None = None) -> CurvatureOperator:
    """G = (1/n) Σ_i J_iᵀ Λ_i J_i as a batched product V (m, P) ↦ G V (G ignores the targets: ``y`` may be None).
    Chapter "Measuring sharpness"."""
    with measurement_mode(model):
        return operator(problem(model, x, y, loss, batch_size, parameters, need_y=y is not None), "gauss_newton")


def hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, loss: str = "mse",
        batch_size: int | None = None, parameters: Sequence[str] | None = None) -> torch.Tensor:
    """Hessian-vector product H v, H = ∇²_θ L over all of ``x`` (chapter "Measuring sharpness").

    ``v``: flat vector of length P (or a batch of shape (m, P), processed together, ``is_grads_batched``).
    Computed by double backward (∂/∂θ of ∇L·v), which on CPU beats forward-over-reverse ``jvp(grad(L))`` (see
    benchmarks/bench_sharpness.py); one product costs about two gradients, and repeated products through a
    :class:`CurvatureOperator` reuse the gradient graph (about one gradient each). ``parameters``
    restricts θ to a block (the product with the diagonal block H_bb, ``v`` then has the block's length).
    """
    with measurement_mode(model):
        prob = problem(model, x, y, loss, batch_size, parameters)
        V, single = prob.as_vectors(v)
        out = operator(prob, "hessian", cache=False).matmat(V)
    return out[0] if single else out


def ggnvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, v: torch.Tensor, loss: str = "mse",
          batch_size: int | None = None, parameters: Sequence[str] | None = None) -> torch.Tensor:
    """Gauss–Newton-vector product G v = (1/n) Σ_i J_iᵀ Λ_i J_i v (Λ = I for MSE, softmax Hessian for CE).

    G does not depend on the targets, so ``y`` may be ``None``. Chapter "Measuring sharpness".
    """
    with measurement_mode(model):
        prob = problem(model, x, y, loss, batch_size, parameters, need_y=y is not None)
        V, single = prob.as_vectors(v)
        out = operator(prob, "gauss_newton").matmat(V)
    return out[0] if single else out


# --------------------------------------------------------------------------------------------------------------
# exact Gauss–Newton trace
# --------------------------------------------------------------------------------------------------------------
def _lambda_trace(sm: torch.Tensor | None, gram: torch.Tensor) -> torch.Tensor:
    """Per sample Tr(Λ_i gram_i) for gram (B, N, N); Λ = I (sm None, MSE) or diag(s) − s sᵀ (cross-entropy)."""
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    if sm is None:
        return diag.sum(-1)
    return (sm * diag).sum(-1) - torch.einsum("ba,bac,bc->b", sm, gram, sm)


def _gn_traces_jacrev(prob: Problem, names: list[str], acc: dict[str, torch.Tensor]) -> None:
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


def _gn_traces_dense(prob: Problem, acc: dict[str, torch.Tensor]) -> set[str]:
    """Fast exact path for ``nn.Linear`` layers called once on 2-D inputs h (B, m_in):
    ∇_W f_a(x_i) = D_{a,i} h_iᵀ and ∇_b f_a(x_i) = D_{a,i} with D = ∂f/∂z, so
    Tr G_W = (1/n) Σ_i Tr(Λ_i D_i D_iᵀ) ||h_i||² and Tr G_b = (1/n) Σ_i Tr(Λ_i D_i D_iᵀ).
    D_i for all samples at once from N batched backward passes (samples are independent in measurement mode).
    Returns the parameter names it handled."""
    mods = {}
    for name, lin in dense_layers(prob.model):
        if weight_key(name) in prob.block:
            mods[name] = (lin, weight_key(name))
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


def gauss_newton_parameter_traces(prob: Problem, fast: bool = True) -> dict[str, float]:
    """EXACT {parameter name: Tr G_bb = (1/n) Σ_i Tr(J_{i,b}ᵀ Λ_i J_{i,b})} for every parameter b of the block.

    Dense layers (``fast``): ||∇_W f_a(x_i)||² = ||D_{a,i}||² ||h_i||² from N batched backward passes; other
    parameters: per-sample Jacobians with ``vmap(jacrev)`` in chunks of about 2^24 entries. Chapter "Measuring
    sharpness"."""
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
