"""Training with a tidy history: minibatch SGD on the loss (1/n) Σ ½||f(x_i) − y_i||² (MSE, the book's default).

One record per checkpoint (every ``track_every`` optimisation steps, plus the first and the last step) with the
full-dataset train/test loss and accuracy, evaluated in eval mode without gradient, the training ``phase`` and the
requested sharpness/compression ``measures`` (chapters "Measuring sharpness", "Measuring compression") on a
fixed, seeded measurement subset.

Variants of the dynamics of the chapter "Why SGD finds flat minima":

- ``optimizer="sgd"`` (``momentum``, ``weight_decay``) or ``"adam"``;
- ``label_noise=σ``: each step adds fresh N(0, σ²) noise to the minibatch targets (label-noise SGD; Blanc et al.
  2020, Damian et al. 2021), which keeps driving the iterate towards flatter minima after interpolation;
- ``sam_rho=ρ``: sharpness-aware minimisation (two-step SAM, Foret et al. 2021): the gradient is taken at
  θ + ρ g/||g||, g the minibatch gradient at θ, and applied at θ;
- late phase: ``late_phase_steps=K`` trains K more steps after the full training loss first falls below
  ``late_phase_threshold`` and tracks every ``late_track_every`` steps there; rows get ``phase`` "early"/"late".
"""
from __future__ import annotations

import copy
import inspect
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checks import check_count, check_real, is_integer
from .data import Dataset
from .losses import LOSSES, check_loss
from .losses import mean_loss as loss_fn  # the training loss L = (1/n) Σ_i ℓ_i (module losses)
from .runtime import resolve_device

OPTIMIZERS = ("sgd", "adam")
MeasureFn = Callable[[nn.Module, Dataset], Union[float, Mapping[str, float]]]

# What each named measure computes and on which data (copied into history.attrs["measures"]).
MEASURES: dict[str, str] = {
    "lambda_max": "λ_max(H) of the training loss on the measurement subset (Lanczos, sharpness.top_hessian_eigenvalues, "
                  "k=1, tol=1e-4, seed 0)",
    "trace_h": "Tr H on the measurement subset (Hutchinson, sharpness.hessian_trace, `probes` Rademacher probes, "
               "probe seed 0) -> trace_h, trace_h_stderr",
    "trace_g": "exact Tr G on the measurement subset (sharpness.gauss_newton_trace) -> trace_g and trace_g_W<l>, "
               "Tr G_{W_l} of the weight block of dense layer l (1-based, checks.dense_layers order, "
               "as in the bounds chapters)",
    "relative_flatness": "relative flatness κ_L of the LAST dense layer on the measurement subset "
                         "(sharpness.relative_flatness, exact, Hessian)",
    "adaptive_sharpness": "adaptive sharpness Σ θ_j² H_jj on the measurement subset (Hutchinson, `probes` probes, seed 0)",
    "test_lambda_max": "λ_max(H) of the loss on the test measurement subset (same size, seeded)",
    "test_trace_h": "Tr H of the loss on the test measurement subset (Hutchinson) -> test_trace_h, test_trace_h_stderr",
    "local": "input->output local measures on the measurement subset inputs (geometry.local_measures) -> "
             "mean_log_lvr, median_log_lvr, mean_mls, mean_local_dim",
    "nmls": "NMLS, left side of B6, over all dense layers on the measurement subset inputs (bounds.nmls); "
            "NaN for weight-sharing dense layers (ViT)",
    "bounds": "bounds.bound_table (B1-B8, identity rows skipped; B1-B5 only for a dense first layer) on the "
              "measurement subset -> bounds_hold (1 if every bound holds) and slack_<bound> (RHS/LHS, or RHS-LHS for "
              "the log forms B4, B5; the smallest over layers for B8)",
    "global_pr": "participation ratio of the last hidden representation (input of the last dense layer) over the "
                 "measurement subset inputs (geometry.participation_ratio)",
}
DEFAULT_MEASURES = ("lambda_max", "trace_h", "trace_g", "relative_flatness", "local", "nmls")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, loss: str = "mse",
             batch_size: int = 4096) -> tuple[float, float]:
    """Full-dataset (loss, accuracy) in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])
        total += loss_fn(out, y[i : i + batch_size], loss).item() * len(out)
        pred = out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0).long()
        correct += (pred == labels[i : i + batch_size]).sum().item()
    model.train(was_training)
    return total / len(x), correct / len(x)


def progress_enabled(progress: bool | None) -> bool:
    """``None`` means: show progress bars unless ``$CI`` is set or ``$FLATCOMP_PROGRESS=0`` (the book's executor
    and the test suite set it so stored outputs and logs stay clean)."""
    if progress is not None:
        return progress
    return not os.environ.get("CI") and os.environ.get("FLATCOMP_PROGRESS", "1") != "0"


@dataclass
class TrainResult:
    """``model`` (trained, or its last finite state if training diverged), ``history`` (one row per checkpoint),
    ``diverged``, ``config`` and ``wall_time`` in seconds (``config["measure_time"]``: the part spent on measures)."""

    model: nn.Module
    history: pd.DataFrame
    diverged: bool
    config: dict = field(default_factory=dict)
    wall_time: float = 0.0


# ----------------------------------------------------------------------------------------------------------------
# measures
# ----------------------------------------------------------------------------------------------------------------
def measurement_subset(data: Dataset, measure_n: int | None = 256, seed: int = 0) -> Dataset:
    """The fixed subset every measure uses: ``min(measure_n, n)`` training and test samples drawn without
    replacement by a generator seeded with ``seed`` (independent of the training seed, so every run of a sweep
    is measured on the same inputs). ``measure_n=None``: the whole sets, in order."""
    _check_measure_n(measure_n)
    check_count(seed, "measure_seed", 0)

    def pick(n: int) -> torch.Tensor:
        if measure_n is None or measure_n >= n:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:measure_n].sort().values

    tr, te = pick(data.n_train), pick(data.n_test)
    dev = data.x_train.device
    tr, te = tr.to(dev), te.to(dev)
    return Dataset(f"{data.name}[measure]", data.x_train[tr], data.y_train[tr], data.labels_train[tr],
                   data.x_test[te], data.y_test[te], data.labels_test[te], data.n_classes, data.input_shape,
                   data.classes, dict(data.meta, measure_n=measure_n, measure_seed=seed))


def _check_measure_n(measure_n) -> None:
    if measure_n is not None and (not is_integer(measure_n) or measure_n < 2):
        raise ValueError(f"measure_n must be >= 2 (an integer) or None (all samples), got {measure_n!r}")


def _named_measure(name: str, loss: str, probes: int) -> MeasureFn:
    from . import bounds, geometry, sharpness
    from .checks import dense_layers

    def last_layer(model):
        return len(dense_layers(model))

    def trace(x, y, prefix):
        def fn(model, m):
            est = sharpness.hessian_trace(model, getattr(m, x), getattr(m, y), loss=loss, probes=probes, seed=0)
            return {prefix: est.mean, f"{prefix}_stderr": est.stderr}
        return fn

    def lam(x, y):
        return lambda model, m: float(sharpness.top_hessian_eigenvalues(model, getattr(m, x), getattr(m, y), k=1,
                                                                        loss=loss, tol=1e-4, seed=0)[0])

    def trace_g(model, m):
        tr = sharpness.gauss_newton_trace(model, m.x_train, loss=loss, per_layer=True)
        total = tr.pop("total")
        return {"trace_g": total, **{f"trace_g_W{l}": tr[name] for l, (name, _) in enumerate(dense_layers(model), 1)}}

    def local(model, m):
        r = geometry.local_measures(model, m.x_train)
        return {"mean_log_lvr": float(np.mean(r["log_lvr"])), "median_log_lvr": float(np.median(r["log_lvr"])),
                "mean_mls": float(np.mean(r["mls"])), "mean_local_dim": float(np.mean(r["local_dim"]))}

    def bound_measure(model, m):
        from .checks import first_layer_is_dense

        t = bounds.bound_table(model, m.x_train, m.y_train, first_layer=first_layer_is_dense(model),
                               identity_check=False)
        slacks = t.groupby("name").slack.min()
        return {"bounds_hold": float(t.holds.all()), **{f"slack_{k.replace(' ', '_')}": float(v)
                                                        for k, v in slacks.items()}}

    fns: dict[str, MeasureFn] = {
        "bounds": bound_measure,
        "lambda_max": lam("x_train", "y_train"),
        "test_lambda_max": lam("x_test", "y_test"),
        "trace_h": trace("x_train", "y_train", "trace_h"),
        "test_trace_h": trace("x_test", "y_test", "test_trace_h"),
        "trace_g": trace_g,
        "relative_flatness": lambda model, m: sharpness.relative_flatness(model, m.x_train, m.y_train,
                                                                          layer=last_layer(model), loss=loss),
        "adaptive_sharpness": lambda model, m: sharpness.adaptive_sharpness(model, m.x_train, m.y_train, loss=loss,
                                                                            probes=probes, seed=0),
        "local": local,
        "nmls": lambda model, m: bounds.nmls(model, m.x_train),
        "global_pr": lambda model, m: geometry.participation_ratio(
            geometry.representations(model, m.x_train, last_layer(model) - 1)),
    }
    return fns[name]


def resolve_measures(measures: Sequence[str] | Mapping[str, MeasureFn] | None, loss: str = "mse",
                     probes: int = 32) -> dict[str, MeasureFn]:
    """``measures`` as ``{name: fn(model, measure_data) -> float | {column: float}}``. Names from ``MEASURES``
    map to the colleagues' functions; ``"default"`` expands to ``DEFAULT_MEASURES``; a dict may mix names
    (value ``None``) and callables."""
    if measures is None:
        return {}
    if isinstance(measures, str):
        measures = [measures]
    items = measures.items() if isinstance(measures, Mapping) else [(m, None) for m in measures]
    out: dict[str, MeasureFn] = {}
    for name, fn in items:
        if fn is None and name == "default":
            out.update({n: _named_measure(n, loss, probes) for n in DEFAULT_MEASURES})
        elif fn is None:
            if name not in MEASURES:
                raise ValueError(f"measures: unknown measure {name!r}; use one of {sorted(MEASURES)}, 'default', "
                                 "or pass {name: callable(model, data)} for your own")
            out[name] = _named_measure(name, loss, probes)
        elif callable(fn):
            out[name] = fn
        else:
            raise ValueError(f"measures: the value for {name!r} must be a callable(model, data) or None, got {fn!r}")
    return out


def _measure_row(model: nn.Module, fns: dict[str, MeasureFn], mdata: Dataset, errors: dict[str, str]) -> dict:
    """Evaluate every measure in eval mode; a measure that raises ValueError gives NaN (message kept in ``errors``).

    This includes :class:`~flatcomp_tutorial.checks.NotFiniteError` (a ``ValueError``): when the outputs, loss or
    curvature products overflow at a checkpoint, the measure is NaN there, the reason is recorded, and training
    goes on."""
    was_training = model.training
    model.eval()
    row: dict[str, float] = {}
    try:
        for name, fn in fns.items():
            try:
                val = fn(model, mdata)
            except ValueError as err:
                errors.setdefault(name, str(err))
                row[name] = float("nan")
                continue
            if isinstance(val, Mapping):
                prefix = "" if name in MEASURES else f"{name}_"
                row.update({f"{prefix}{k}" if prefix and not str(k).startswith(prefix) else str(k): float(v)
                            for k, v in val.items()})
            else:
                row[name] = float(val)
    finally:
        model.train(was_training)
    return row


# ----------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------
def _make_optimizer(model: nn.Module, optimizer: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if momentum:
        raise ValueError(f"momentum is an SGD option; with optimizer='adam' leave momentum=0 (got {momentum})")
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def _sam_perturb(params: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """Move θ to θ + ρ g/||g|| in place (g = current .grad); return the perturbations to undo."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    scale = rho / (norm + 1e-12)
    eps = [g * scale for g in grads]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    return eps


def _check_output_width(model: nn.Module, d: Dataset, loss: str) -> None:
    """Refuse a model whose output width does not fit the targets, before any step: with MSE an output of width 1
    against one-hot targets of width 2 would broadcast silently and train on a different loss."""
    if d.y_train.dim() != 2:
        raise ValueError(f"data.y_train must have shape (n, n_outputs), got {tuple(d.y_train.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(d.x_train[:2])
    finally:
        model.train(was_training)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != min(2, d.n_train):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"model must map inputs (n, *input_shape) to outputs (n, N); got {shape} for "
                         f"{min(2, d.n_train)} inputs")
    width, targets = out.shape[1], d.y_train.shape[1]
    if loss == "mse" and width != targets:
        raise ValueError(f"the model's output width is {width} but the targets' width is {targets} (data.y_train "
                         f"has shape {tuple(d.y_train.shape)}); the MSE loss compares them entry by entry. Build the "
                         f"model with n_out={targets} (data.n_outputs).")
    if loss == "cross_entropy":
        if targets < 2:
            raise ValueError(f"loss='cross_entropy' needs one-hot class targets with at least 2 columns; "
                             f"data.y_train has width {targets} (regression targets?): use loss='mse'.")
        if width != targets:
            raise ValueError(f"the model's output width is {width} but the data have {targets} classes (one-hot "
                             f"targets of width {targets}); cross_entropy needs one output (logit) per class. "
                             f"Build the model with n_out={targets}.")


def check_train_options(n_train: int | None = None, **options: Any) -> None:
    """Raise ValueError if :func:`train` would refuse these keyword ``options`` (all but ``model``, ``data``,
    ``device``, ``progress``): unknown names, loss/optimizer, counts (integers; numpy integers accepted, booleans and
    fractions refused), rates, measure names. ``lr`` and ``batch_size`` are required; ``batch_size`` is checked
    against ``n_train`` when given. Used by :func:`train` and by sweeps to check a whole grid before any run."""
    params = inspect.signature(train).parameters
    known = set(params) - {"model", "data", "device", "progress"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    missing = [k for k in ("lr", "batch_size") if k not in options]
    if missing:
        raise ValueError(f"missing training option(s) {missing}")
    o = {k: p.default for k, p in params.items() if k in known and p.default is not inspect.Parameter.empty}
    o.update(options)
    check_loss(o["loss"])
    if o["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {o['optimizer']!r}")
    if (o["epochs"] is None) == (o["steps"] is None):
        raise ValueError("give exactly one of epochs= or steps=")
    for arg in ("epochs", "steps"):
        if o[arg] is not None:
            check_count(o[arg], arg)
    lr = o["lr"]
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    for arg in ("label_noise", "sam_rho", "momentum", "weight_decay"):
        v = o[arg]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{arg} must be a finite number >= 0, got {v!r}")
    bs = o["batch_size"]
    if not is_integer(bs) or bs < 1 or (n_train is not None and bs > n_train):
        limit = f"between 1 and n_train={n_train}" if n_train is not None else "a positive integer"
        raise ValueError(f"batch_size must be {limit} (an integer number of samples), got {bs!r}")
    check_count(o["seed"], "seed", 0)
    check_count(o["measure_seed"], "measure_seed", 0)
    check_count(o["probes"], "probes")
    k = o["late_phase_steps"]
    if k is not None and (not is_integer(k) or k < 0):
        raise ValueError(f"late_phase_steps must be >= 0 (an integer; or None: no late phase), got {k!r}")
    check_real(o["late_phase_threshold"], "late_phase_threshold")
    for arg in ("track_every", "late_track_every", "check_every"):
        v = o[arg]
        if v is not None and (not is_integer(v) or v < 1):
            raise ValueError(f"{arg} must be a positive number of steps (an integer) or None (the default), "
                             f"got {v!r}")
    if resolve_measures(o["measures"], o["loss"], o["probes"]):
        _check_measure_n(o["measure_n"])


def train(model: nn.Module, data: Dataset, lr: float, batch_size: int, epochs: int | None = None,
          steps: int | None = None, loss: str = "mse", optimizer: str = "sgd", momentum: float = 0.0,
          weight_decay: float = 0.0, label_noise: float = 0.0, sam_rho: float = 0.0, seed: int = 0,
          track_every: int | None = None,
          measures: Sequence[str] | Mapping[str, MeasureFn | None] | None = None, measure_n: int | None = 256,
          measure_seed: int = 0, probes: int = 32, device: str = "auto", progress: bool | None = None,
          late_phase_steps: int | None = None, late_phase_threshold: float = 1e-3,
          late_track_every: int | None = None, check_every: int | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with minibatch SGD or Adam (``batch_size = n_train`` is full-batch GD).

    Give exactly one of ``epochs`` and ``steps`` (the step budget). Minibatches are reshuffled every epoch from a
    generator seeded by ``seed``; label noise comes from a second generator seeded by ``seed``; so the same
    configuration and seed give an identical history on CPU. A non-finite loss stops training; the result is then
    marked ``diverged`` and holds the last finite state (no exception).

    Late phase: with ``late_phase_steps=K`` the full training loss is evaluated every ``check_every`` steps
    (default: once per epoch); when it first falls below ``late_phase_threshold`` a checkpoint is recorded there
    (the first "late" row: the matched-loss point of a sweep) and training continues for exactly K more steps,
    whatever the budget, with checkpoints every ``late_track_every`` steps (default ``max(1, K // 50)``). If the
    threshold is never reached, training stops at the budget (``config["reached_threshold"] = False``).
    ``late_phase_steps=0`` therefore means "train until the loss falls below the threshold".

    ``measures``: names from ``MEASURES`` (or ``"default"``) and/or ``{name: fn(model, measure_data)}``, computed
    in eval mode at every checkpoint on :func:`measurement_subset` ``(data, measure_n, measure_seed)``; a dict
    result adds one column per key. Hutchinson estimators use ``probes`` probes. ``history.attrs`` states the
    conventions and which data each measure used. A measure that fails at a checkpoint (inapplicable, or outputs
    and loss overflowing there) is NaN in that row, with the reason in ``history.attrs["measure_errors"]``.

    Everything is validated before the first step: the model's output width must equal the targets' width
    (``data.n_outputs``) for MSE, or the number of classes for cross-entropy; counts (``batch_size``, ``epochs``,
    ``steps``, ``probes``, ``track_every``, ...) are integers (numpy integers accepted, booleans and fractions
    refused); ``lr`` is a positive finite number. ``device="auto"`` never picks MPS for a float64 model (no
    float64 there; :func:`~flatcomp_tutorial.runtime.resolve_device`).
    """
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise ValueError(f"model must be a torch.nn.Module with parameters, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a flatcomp_tutorial.data.Dataset (load_dataset(...)), "
                         f"got {type(data).__name__}")
    check_train_options(data.n_train, lr=lr, batch_size=batch_size, epochs=epochs, steps=steps, loss=loss,
                        optimizer=optimizer, momentum=momentum, weight_decay=weight_decay, label_noise=label_noise,
                        sam_rho=sam_rho, seed=seed, track_every=track_every, measures=measures, measure_n=measure_n,
                        measure_seed=measure_seed, probes=probes, late_phase_steps=late_phase_steps,
                        late_phase_threshold=late_phase_threshold, late_track_every=late_track_every,
                        check_every=check_every)
    n = data.n_train
    batch_size = int(batch_size)
    steps_per_epoch = math.ceil(n / batch_size)
    total = int(steps) if steps is not None else int(epochs) * steps_per_epoch
    track_every = track_every or max(1, total // 50)
    late_track_every = late_track_every or max(1, (late_phase_steps or 0) // 50)
    check_every = check_every or steps_per_epoch
    fns = resolve_measures(measures, loss, probes)

    dtype = next(model.parameters()).dtype
    dev = resolve_device(device, dtype)
    d = data.to(dev, dtype)
    model.to(dev)
    _check_output_width(model, d, loss)
    mdata = measurement_subset(d, measure_n, measure_seed) if fns else d
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 7919)
    config = dict(lr=lr, batch_size=batch_size, steps=total, loss=loss, optimizer=optimizer, momentum=momentum,
                  weight_decay=weight_decay, label_noise=label_noise, sam_rho=sam_rho, seed=seed, dataset=data.name,
                  n_train=n, device=str(dev), late_phase_steps=late_phase_steps,
                  late_phase_threshold=late_phase_threshold, measures=list(fns), measure_n=measure_n,
                  measure_seed=measure_seed)

    records: list[dict] = []
    errors: dict[str, str] = {}
    diverged, last_good = False, copy.deepcopy(model.state_dict())
    late_start: int | None = None
    end = total
    measure_time = [0.0]

    def checkpoint(step: int) -> bool:
        """Record a row; False (and nothing recorded) if the full training loss is not finite."""
        tr_loss, tr_acc = evaluate(model, d.x_train, d.y_train, d.labels_train, loss)
        if not math.isfinite(tr_loss):
            return False
        te_loss, te_acc = evaluate(model, d.x_test, d.y_test, d.labels_test, loss)
        row = dict(step=step, epoch=step / steps_per_epoch, train_loss=tr_loss, train_acc=tr_acc,
                   test_loss=te_loss, test_acc=te_acc, phase="early" if late_start is None else "late")
        t0 = time.perf_counter()
        row.update(_measure_row(model, fns, mdata, errors))
        measure_time[0] += time.perf_counter() - t0
        records.append(row)
        return True

    from tqdm.auto import tqdm

    start = time.perf_counter()
    model.train()
    checkpoint(0)
    step, perm = 0, None
    with tqdm(total=total, disable=not progress_enabled(progress), desc="training", leave=False) as bar:
        while step < end:
            pos = step % steps_per_epoch
            if pos == 0:
                perm = torch.randperm(n, generator=gen).to(dev)
            idx = perm[pos * batch_size : (pos + 1) * batch_size]
            xb, yb = d.x_train[idx], d.y_train[idx]
            if label_noise > 0:
                yb = yb + label_noise * torch.randn(yb.shape, generator=noise_gen, dtype=yb.dtype).to(dev)
            opt.zero_grad(set_to_none=True)
            batch_loss = loss_fn(model(xb), yb, loss)
            if not torch.isfinite(batch_loss):
                diverged = True
                break
            batch_loss.backward()
            if sam_rho > 0:
                eps = _sam_perturb(params, sam_rho)
                opt.zero_grad(set_to_none=True)
                loss_fn(model(xb), yb, loss).backward()
                with torch.no_grad():
                    for p, e in zip(params, eps):
                        p.sub_(e)
            opt.step()
            step += 1
            bar.update(1)
            if late_start is None and late_phase_steps is not None and (step % check_every == 0 or step == end):
                tr_loss = evaluate(model, d.x_train, d.y_train, d.labels_train, loss)[0]
                if tr_loss < late_phase_threshold:
                    late_start, end = step, step + late_phase_steps
                    bar.total = end
                    bar.refresh()
                    if not checkpoint(step):
                        diverged = True
                        break
                    last_good = copy.deepcopy(model.state_dict())
                    continue
            every = track_every if late_start is None else late_track_every
            since = step if late_start is None else step - late_start
            if since % every == 0 or step == end:
                if not checkpoint(step):
                    diverged = True
                    break
                last_good = copy.deepcopy(model.state_dict())
                bar.set_postfix(train_loss=f"{records[-1]['train_loss']:.3g}")
    if diverged:
        config["diverged_at_step"] = step
        model.load_state_dict(last_good)
    config.update(late_start_step=late_start, reached_threshold=late_start is not None if late_phase_steps is not None
                  else None, steps_done=step, measure_time=measure_time[0])
    history = pd.DataFrame.from_records(records)
    history.attrs["loss_convention"] = ("mean over samples of 1/2 sum over outputs of (f - y)^2" if loss == "mse"
                                        else "mean cross-entropy")
    history.attrs["measures"] = {name: MEASURES.get(name, "user-supplied callable(model, measure_data)")
                                 for name in fns}
    history.attrs["measure_data"] = (f"fixed subset: min({measure_n}, n) training and test samples drawn by a generator "
                                     f"seeded with {measure_seed} (flatcomp_tutorial.training.measurement_subset); "
                                     "model in eval mode; full-set losses/accuracies in train_*/test_*")
    history.attrs["measure_errors"] = errors
    history.attrs["phase"] = (f"'late' from the first step at which the full training loss < {late_phase_threshold} "
                              f"(checked every {check_every} steps)" if late_phase_steps is not None
                              else "no late phase requested: every row is 'early'")
    return TrainResult(model, history, diverged, config, time.perf_counter() - start)
