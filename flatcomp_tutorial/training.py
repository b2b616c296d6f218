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
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checks import check_count, check_real, is_integer
from .data import Dataset
from .losses import check_loss
from .losses import mean_loss as loss_fn  # the training loss L = (1/n) Σ_i ℓ_i (module losses)
from .measures import MEASURES, MeasureFn, check_measure_n, measure_row, measurement_subset, resolve_measures
from .runtime import resolve_device

OPTIMIZERS = ("sgd", "adam")



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
        check_measure_n(o["measure_n"])


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
        row.update(measure_row(model, fns, mdata, errors))
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
                                     f"seeded with {measure_seed} (flatcomp_tutorial.measures.measurement_subset); "
                                     "model in eval mode; full-set losses/accuracies in train_*/test_*")
    history.attrs["measure_errors"] = errors
    history.attrs["phase"] = (f"'late' from the first step at which the full training loss < {late_phase_threshold} "
                              f"(checked every {check_every} steps)" if late_phase_steps is not None
                              else "no late phase requested: every row is 'early'")
    return TrainResult(model, history, diverged, config, time.perf_counter() - start)
