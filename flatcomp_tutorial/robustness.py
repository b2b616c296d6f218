"""Adversarial robustness of a classifier and its link to the maximum local sensitivity (chapter "Beyond the paper").

Attacks perturb the input x of a trained network f within a ball ||δ|| ≤ ε (``norm="l2"`` by default, the norm in
which MLS = σ_1(∂f/∂x) is defined; ``"linf"`` also available) to change its predicted class argmax_c f_c. Inputs are
perturbed in the space the model sees (for the book: standardised pixels), without clipping to a pixel box.

The attack maximises, per sample, one of
- ``"mse"``: ½||f(x+δ) − e_c||² (the training loss of the book, one-hot target e_c of the true class c),
- ``"cross_entropy"``: −log softmax(f(x+δ))_c,
- ``"margin"``: max_{c'≠c} f_{c'}(x+δ) − f_c(x+δ) (positive exactly when the prediction is wrong).

First-order link (derived in the chapter): flipping c to c' needs (e_c − e_c')ᵀ J δ ≈ −m_{c'} with margin
m_{c'} = f_c − f_{c'} > 0, so the linearised radius is r_lin = min_{c'} m_{c'} / ||Jᵀ(e_c − e_{c'})||, and since
||Jᵀ(e_c − e_{c'})|| ≤ √2 σ_1(J) = √2 MLS, r_lin ≥ m / (√2 MLS) with m the margin to the runner-up class. For a
linear model r_lin is the exact L2 distance to the decision boundary.

Every function validates like the sharpness measures (:mod:`flatcomp_tutorial.checks`): models in half precision
(float16/bfloat16) are refused (measure ``copy.deepcopy(model).float()``), and so are outputs that overflow to
inf/NaN at the given weights, input gradients that overflow, and random forward passes (functional dropout, noise).
Radii (``eps``, ``eps_max``, ``step_size``) are real numbers, numpy scalars included; counts (``steps``,
``bisection``, ``levels``, ``k``) are integers, never booleans.

Symbols: Appendix "Notation and conventions", entry MLS (the link to robustness radii).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checks import NotFiniteError, all_finite, check_count, check_inputs, check_real, measurement_mode
from .losses import per_sample_loss

NORMS = ("l2", "linf")
ATTACK_LOSSES = ("mse", "cross_entropy", "margin")

__all__ = ["fgsm", "pgd", "attack_success_rate", "adversarial_radius", "linear_radius", "segment_radius", "radii",
           "robustness_measures", "RobustnessMeasures", "NORMS", "ATTACK_LOSSES"]


# --------------------------------------------------------------------------------------------------------------
# checks and small pieces
# --------------------------------------------------------------------------------------------------------------
def _check_labels(model: nn.Module, x: torch.Tensor, labels) -> torch.Tensor:
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D tensor of {x.shape[0]} integer class indices (one per input in x), "
                         f"got {shape}; for one-hot targets pass y.argmax(1).")
    with torch.no_grad():
        n_out = model(x[:1]).shape[-1]
    lab = labels.to(x.device)
    if torch.is_floating_point(lab) and (lab != lab.round()).any():
        raise ValueError("labels must be integer class indices, got non-integer values.")
    lab = lab.long()
    if (lab < 0).any() or (lab >= n_out).any():
        raise ValueError(f"labels must lie in 0..{n_out - 1} for a model with {n_out} outputs.")
    if n_out < 2:
        raise ValueError("attacks need a classifier with at least 2 outputs (argmax decides the class).")
    return lab


def _check_choice(value: str, choices: tuple, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _eps_vector(eps, n: int, x: torch.Tensor, name: str = "eps") -> torch.Tensor:
    if isinstance(eps, (bool, np.bool_)) or (torch.is_tensor(eps) and eps.dtype == torch.bool):
        raise ValueError(f"{name} must be a number or one value per input, got the boolean {eps!r}")
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(n)
    if e.shape != (n,):
        raise ValueError(f"{name} must be a number or one value per input (shape ({n},)), got shape {tuple(e.shape)}")
    if not torch.isfinite(e).all() or (e < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 (the radius of the perturbation ball), got {eps!r}")
    return e


def _per_sample(e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n,) → (n, 1, 1, …) to broadcast against x."""
    return e.reshape(-1, *([1] * (x.dim() - 1)))


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _objective(out: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample quantity the attack increases (see the module docstring)."""
    if loss == "mse":
        return per_sample_loss(out, F.one_hot(labels, out.shape[-1]).to(out.dtype))
    if loss == "cross_entropy":
        return per_sample_loss(out, labels, "cross_entropy")
    true = out.gather(1, labels[:, None])[:, 0]
    other = out.masked_fill(F.one_hot(labels, out.shape[-1]).bool(), -math.inf).amax(-1)
    return other - true


def _ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm direction of steepest ascent: sign(g) for L∞, g/||g||₂ for L2 (zero where g = 0)."""
    if norm == "linf":
        return g.sign()
    return g / _per_sample(_norms(g), g).clamp_min(torch.finfo(g.dtype).tiny)


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    e = _per_sample(eps, delta)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    scale = (e / _per_sample(_norms(delta), delta).clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)
    return delta * scale


def _input_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    xx = x.detach().requires_grad_(True)
    with torch.enable_grad():
        obj = _objective(model(xx), labels, loss).sum()
        (g,) = torch.autograd.grad(obj, xx)
    if not all_finite(g):
        raise NotFiniteError(f"the input gradient of the '{loss}' attack objective is not finite at these weights "
                             f"(overflow in {g.dtype}); nothing to measure. Check the weights' scale, use "
                             "model.double(), or attack the margin (loss='margin').")
    return g


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(-1)


# --------------------------------------------------------------------------------------------------------------
# attacks
# --------------------------------------------------------------------------------------------------------------
def fgsm(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str = "l2",
         loss: str = "mse") -> torch.Tensor:
    """Fast gradient (sign) method: x_adv = x + ε u, with u = g/||g||₂ (``"l2"``) or sign(g) (``"linf"``), g the
    input gradient of the attack objective (module docstring). ``eps``: a number or one radius per input.
    Models with BatchNorm in train mode or active dropout are refused (call ``model.eval()``), as everywhere in
    the package. Chapter "Beyond the paper"."""
    _check_choice(norm, NORMS, "norm")
    _check_choice(loss, ATTACK_LOSSES, "loss")
    with measurement_mode(model):
        x = check_inputs(model, x)
        labels = _check_labels(model, x, labels)
        e = _eps_vector(eps, x.shape[0], x)
        g = _input_gradient(model, x, labels, loss)
        return (x + _per_sample(e, x) * _ascent_direction(g, norm)).detach()


def pgd(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, steps: int = 20,
        step_size: float | None = None, norm: str = "l2", loss: str = "margin", random_start: bool = False,
        seed: int = 0) -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018) on the attack objective inside ||δ|| ≤ ε.

    ``steps`` steps of size ``step_size`` (default 2.5 ε / steps, so the sphere is reachable) along the ascent
    direction, each followed by projection onto the ball. Per input, the first iterate that changes the predicted
    class is returned (so success is never lost by later steps); inputs never flipped get the last iterate.
    ``random_start``: start from a uniform point of the ball (seeded by ``seed``). The default objective is the
    margin, which targets the decision directly (ascent on the MSE can grow every logit without flipping any);
    ``steps=1``, ``step_size=ε`` and the same ``loss`` is exactly :func:`fgsm`. Chapter "Beyond the paper"."""
    _check_choice(norm, NORMS, "norm")
    _check_choice(loss, ATTACK_LOSSES, "loss")
    steps = check_count(steps, "steps")
    seed = check_count(seed, "seed", 0)
    with measurement_mode(model):
        x = check_inputs(model, x)
        labels = _check_labels(model, x, labels)
        n = x.shape[0]
        e = _eps_vector(eps, n, x)
        alpha = 2.5 * e / steps if step_size is None else _eps_vector(step_size, n, x, "step_size")
        delta = torch.zeros_like(x)
        if random_start:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            u = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            if norm == "linf":
                delta = (2 * u - 1) * _per_sample(e, x)
            else:  # uniform in the L2 ball: Gaussian direction, radius ε U^(1/d)
                z = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                d = x[0].numel()
                r = e * torch.rand(n, generator=gen, dtype=x.dtype).to(x.device) ** (1.0 / d)
                delta = _per_sample(r, x) * z / _per_sample(_norms(z), z).clamp_min(torch.finfo(x.dtype).tiny)
        best = x.clone()
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(int(steps)):
            g = _input_gradient(model, x + delta, labels, loss)
            delta = _project(delta + _per_sample(alpha, x) * _ascent_direction(g, norm), e, norm)
            flipped = (~done) & (_predict(model, x + delta) != labels)
            best[flipped] = (x + delta)[flipped]
            done |= flipped
        best[~done] = (x + delta)[~done]
        return best.detach()


def attack_success_rate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float, method: str = "pgd",
                        **kwargs) -> float:
    """Fraction of the correctly classified inputs whose predicted class the attack (``"fgsm"`` or ``"pgd"``, with
    ``kwargs`` passed on) changes within radius ``eps``. NaN if no input is classified correctly."""
    _check_choice(method, ("fgsm", "pgd"), "method")
    attack = fgsm if method == "fgsm" else pgd
    with measurement_mode(model):
        x = check_inputs(model, x)
        labels = _check_labels(model, x, labels)
        correct = _predict(model, x) == labels
        if not correct.any():
            return float("nan")
        adv = attack(model, x[correct], labels[correct], eps, **kwargs)
        return float((_predict(model, adv) != labels[correct]).double().mean())


def adversarial_radius(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_max: float, steps: int = 20,
                       bisection: int = 12, levels: int = 8, norm: str = "l2", loss: str = "margin",
                       progress: bool = False) -> np.ndarray:
    """Per-input empirical robustness radius: the smallest ε at which :func:`pgd` (``steps`` steps, objective
    ``loss``) changes the predicted class.

    PGD's success is not monotone in ε (large steps can land where tanh units saturate and the gradient
    vanishes), so the search first tries the ``levels`` radii ε_max·2^-k, k = 0 … levels−1, takes for each input
    the smallest successful one, and then bisects ``bisection`` times between it and the next smaller radius
    (a per-input ε). 0 for inputs already misclassified; ``inf`` where PGD fails at every level. The result is an
    upper bound on the true radius (PGD may miss closer adversarial points). Chapter "Beyond the paper"."""
    eps_max = check_real(eps_max, "eps_max (the largest radius searched)")
    steps, bisection, levels = (check_count(v, arg) for arg, v in (("steps", steps), ("bisection", bisection),
                                                                    ("levels", levels)))
    _check_choice(norm, NORMS, "norm")
    _check_choice(loss, ATTACK_LOSSES, "loss")
    with measurement_mode(model):
        x = check_inputs(model, x)
        labels = _check_labels(model, x, labels)

        def flips(eps_vec) -> torch.Tensor:
            adv = pgd(model, x, labels, eps_vec, steps=steps, norm=norm, loss=loss)
            return _predict(model, adv) != labels

        n = x.shape[0]
        wrong = _predict(model, x) != labels
        hi = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        rounds = range(int(levels) + int(bisection))
        if progress:
            from tqdm.auto import tqdm
            rounds = tqdm(rounds, desc="adversarial radius", leave=False)
        rounds = iter(rounds)
        for k in range(int(levels)):  # coarse: ε_max, ε_max/2, …
            next(rounds)
            eps = float(eps_max) * 2.0 ** -k
            hi = torch.where(flips(eps), torch.full_like(hi, eps), hi)
        found = torch.isfinite(hi)
        lo = torch.where(found, hi / 2, torch.zeros_like(hi))
        lo[found & (hi <= float(eps_max) * 2.0 ** -(int(levels) - 1))] = 0.0  # smallest level: bisect from 0
        hi_f = torch.where(found, hi, torch.full_like(hi, float(eps_max)))
        for _ in range(int(bisection)):
            next(rounds)
            mid = (lo + hi_f) / 2
            ok = flips(mid) & found
            hi_f = torch.where(ok, mid, hi_f)
            lo = torch.where(ok | ~found, lo, mid)
        r = hi_f.cpu().double().numpy()
        r[~found.cpu().numpy()] = np.inf
        r[wrong.cpu().numpy()] = 0.0
        return r


def linear_radius(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """First-order (linearised) L2 robustness radii from the input Jacobian J = ∂f/∂x at each input.

    Returns per-input arrays: ``margin`` m = f_c − max_{c'≠c} f_{c'} (negative if misclassified), ``linearized``
    r_lin = min_{c'≠c} (f_c − f_{c'}) / ||Jᵀ(e_c − e_{c'})|| (exact distance to the decision boundary for a linear
    model), ``mls`` = σ_1(J) and ``mls_bound`` = m / (√2 MLS) ≤ r_lin (the radius MLS alone guarantees to first
    order). Chapter "Beyond the paper"."""
    from .geometry import jacobians

    with measurement_mode(model):
        x = check_inputs(model, x)
        labels = _check_labels(model, x, labels)
        with torch.no_grad():
            out = model(x).double()
        J = jacobians(model, x).double()  # (n, N, d)
    N = out.shape[1]
    onehot = F.one_hot(labels, N).bool()
    true = out.gather(1, labels[:, None])            # (n, 1)
    gaps = true - out                                # (n, N): f_c − f_c'
    diff = J.gather(1, labels[:, None, None].expand(-1, 1, J.shape[2])) - J   # rows: ∇(f_c − f_c')
    speed = diff.norm(dim=2)                         # (n, N)
    ratio = (gaps / speed.clamp_min(torch.finfo(torch.float64).tiny)).masked_fill(onehot, math.inf)
    margin = gaps.masked_fill(onehot, math.inf).amin(1)
    mls = torch.linalg.matrix_norm(J, ord=2)
    return {"margin": margin.cpu().numpy(), "linearized": ratio.amin(1).cpu().numpy(), "mls": mls.cpu().numpy(),
            "mls_bound": (margin / (math.sqrt(2) * mls)).cpu().numpy()}


def segment_radius(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, k: int = 5,
                   bisection: int = 20) -> np.ndarray:
    """Per-input upper bound on the robustness radius that needs no gradient: along the segment from x to each of
    its ``k`` nearest ``anchors`` (e.g. training inputs) that the model assigns to another class, bisect ``bisection``
    times for a point where the prediction changes; return the smallest distance ||x − x_s|| found (``inf`` if no
    anchor is predicted differently, 0 if x is misclassified). Unlike PGD it cannot be fooled by vanishing input
    gradients (saturated units), so min(PGD radius, segment radius) is the empirical radius the book reports.
    Chapter "Beyond the paper"."""
    k = check_count(k, "k (anchors per input)")
    bisection = check_count(bisection, "bisection")
    with measurement_mode(model):
        x = check_inputs(model, x)
        labels = _check_labels(model, x, labels)
        if torch.is_tensor(anchors) and anchors.shape[1:] != x.shape[1:]:
            raise ValueError(f"anchors must have the input shape of x, {tuple(x.shape[1:])}, got "
                             f"{tuple(anchors.shape[1:])}")
        anchors = check_inputs(model, anchors, "anchors")
        n = x.shape[0]
        wrong = _predict(model, x) != labels
        pa = _predict(model, anchors)
        dist = torch.cdist(x.flatten(1), anchors.flatten(1))                          # (n, m)
        dist = dist.masked_fill(pa[None, :] == labels[:, None], math.inf)             # same predicted class: no use
        kk = min(int(k), anchors.shape[0])
        dk, idx = dist.topk(kk, dim=1, largest=False)                                 # (n, kk)
        valid = torch.isfinite(dk)
        direction = anchors[idx.clamp_min(0)] - x[:, None]                            # (n, kk, *shape)
        lo = torch.zeros(n, kk, dtype=x.dtype, device=x.device)
        hi = torch.ones_like(lo)
        lab = labels[:, None].expand(n, kk).reshape(-1)
        for _ in range(int(bisection)):
            mid = (lo + hi) / 2
            pts = x[:, None] + mid.reshape(n, kk, *([1] * (x.dim() - 1))) * direction
            flipped = (_predict(model, pts.flatten(0, 1)) != lab).reshape(n, kk)
            hi = torch.where(flipped, mid, hi)
            lo = torch.where(flipped, lo, mid)
        r = torch.where(valid, hi * dk, torch.full_like(hi, math.inf)).amin(1).cpu().double().numpy()
        r[wrong.cpu().numpy()] = 0.0
        return r


def radii(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_max: float,
          anchors: torch.Tensor | None = None, steps: int = 20, bisection: int = 8) -> dict[str, np.ndarray]:
    """Every per-input L2 robustness radius of the chapter: the :func:`linear_radius` arrays (``margin``,
    ``linearized``, ``mls``, ``mls_bound``), ``pgd`` (:func:`adversarial_radius` up to ``eps_max``) and, with
    ``anchors``, ``segment`` (:func:`segment_radius`) and ``empirical`` = min(pgd, segment), the closest adversarial
    point found. Chapter "Beyond the paper"."""
    eps_max = check_real(eps_max, "eps_max (the largest radius searched)")
    steps, bisection = check_count(steps, "steps"), check_count(bisection, "bisection")
    out = dict(linear_radius(model, x, labels))
    out["pgd"] = adversarial_radius(model, x, labels, eps_max=eps_max, steps=steps, bisection=bisection)
    if anchors is not None:
        out["segment"] = segment_radius(model, x, labels, anchors)
        out["empirical"] = np.minimum(out["pgd"], out["segment"])
    return out


@dataclass(frozen=True)
class RobustnessMeasures:
    """What :func:`robustness_measures` returns: the summary ``row`` ({column: float}, one row of a results table)
    and the per-input arrays ``radii`` of :func:`radii` it summarises."""

    row: dict[str, float]
    radii: dict[str, np.ndarray]


def robustness_measures(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float, eps_max: float,
                        anchors: torch.Tensor | None = None, steps: int = 20,
                        bisection: int = 8) -> RobustnessMeasures:
    """One row of robustness numbers for a trained classifier on inputs ``x`` (L2 throughout), in ``.row``:
    ``fgsm_success`` and ``pgd_success`` at radius ``eps`` (FGSM on the MSE training loss, PGD on the margin; over
    correctly classified inputs), ``median_pgd_radius`` (:func:`adversarial_radius` up to ``eps_max``; inf when PGD
    fails for more than half the inputs), with ``anchors`` also ``median_segment_radius`` (:func:`segment_radius`),
    ``median_radius`` (median of the per-input minimum of the two) and ``pgd_missed`` (fraction of inputs where the
    segment found an adversarial point closer than anything PGD found: gradient masking);
    ``median_linear_radius``, ``median_mls_radius`` (:func:`linear_radius`) and ``inputs_mean_mls`` (mean MLS over
    ``x``); ``.radii`` holds the per-input arrays of :func:`radii` they summarise.
    Chapter "Beyond the paper"."""
    eps = check_real(eps, "eps (the attack radius)", strict=False)
    r = radii(model, x, labels, eps_max, anchors=anchors, steps=steps, bisection=bisection)
    out = {"fgsm_success": attack_success_rate(model, x, labels, eps, method="fgsm"),
           "pgd_success": attack_success_rate(model, x, labels, eps, method="pgd", steps=steps),
           "median_pgd_radius": float(np.median(r["pgd"]))}
    if anchors is not None:
        out.update(median_segment_radius=float(np.median(r["segment"])),
                   median_radius=float(np.median(r["empirical"])),
                   pgd_missed=float(np.mean(r["segment"] < r["pgd"])))
    out.update(median_linear_radius=float(np.median(r["linearized"])),
               median_mls_radius=float(np.median(r["mls_bound"])), inputs_mean_mls=float(np.mean(r["mls"])))
    return RobustnessMeasures(out, r)
