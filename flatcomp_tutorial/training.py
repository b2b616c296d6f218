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

The options are the fields of :class:`TrainConfig`, validated when it is built. The loop is made of small parts:
the minibatch step (``_Stepper``: shuffling, label noise, SAM), the schedule (``_Schedule``: when the loss is
checked, when the late phase starts and ends, which steps are checkpoints) and the checkpoints with rollback to
the last finite state (``_Checkpoints``). They stay in this one module (over 400 lines) because nothing but
:func:`train` uses them; only :class:`TrainConfig` and :func:`check_train_options` serve other modules too.

Symbols: Appendix "Notation and conventions", entries "The loss" and "Step-size bound" (λ_max ≤ 2/η, Tr G ≤ 2B/η).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checks import check_count, check_real, is_integer
from .data import Dataset
from .history import new_history
from .losses import check_loss
from .losses import mean_loss as loss_fn  # the training loss L = (1/n) Σ_i ℓ_i (module losses)
from .measures import (MEASURE_VERSION, MeasureFn, check_measure_n, check_measure_version, measure_descriptions,
                       measure_row, measurement_subset, resolve_measures)
from .runtime import progress_enabled, resolve_device

OPTIMIZERS = ("sgd", "adam")
_REQUIRED = ("lr", "batch_size")


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


@dataclass
class TrainResult:
    """``model`` (trained, or its last finite state if training diverged), ``history`` (one row per checkpoint),
    ``diverged``, ``config`` and ``wall_time`` in seconds (``config["measure_time"]``: the part spent on measures)."""

    model: nn.Module
    history: pd.DataFrame
    diverged: bool
    config: dict = field(default_factory=dict)
    wall_time: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """The options of :func:`train` with their defaults (``lr`` and ``batch_size`` are required), validated when
    built (:meth:`check`). Give exactly one of ``epochs`` and ``steps``; ``None`` for ``track_every``,
    ``late_track_every`` and ``check_every`` means the defaults that :func:`train` states."""

    lr: float
    batch_size: int
    epochs: int | None = None
    steps: int | None = None
    loss: str = "mse"
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    label_noise: float = 0.0
    sam_rho: float = 0.0
    seed: int = 0
    track_every: int | None = None
    measures: Sequence[str] | Mapping[str, MeasureFn | None] | None = None
    measure_n: int | None = 256
    measure_seed: int = 0
    probes: int | None = None
    measure_version: int = MEASURE_VERSION
    late_phase_steps: int | None = None
    late_phase_threshold: float = 1e-3
    late_track_every: int | None = None
    check_every: int | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self, n_train: int | None = None) -> None:
        """Raise ValueError for an option :func:`train` would refuse (:func:`check_train_options`)."""
        _check_values({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, n_train)


def _check_values(o: Mapping[str, Any], n_train: int | None) -> None:
    """The checks of :func:`check_train_options` on a complete set of options ``o``."""
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
    if o["probes"] is not None:
        check_count(o["probes"], "probes")
    check_measure_version(o["measure_version"])
    k = o["late_phase_steps"]
    if k is not None and (not is_integer(k) or k < 0):
        raise ValueError(f"late_phase_steps must be >= 0 (an integer; or None: no late phase), got {k!r}")
    check_real(o["late_phase_threshold"], "late_phase_threshold")
    for arg in ("track_every", "late_track_every", "check_every"):
        v = o[arg]
        if v is not None and (not is_integer(v) or v < 1):
            raise ValueError(f"{arg} must be a positive number of steps (an integer) or None (the default), "
                             f"got {v!r}")
    if resolve_measures(o["measures"], o["loss"], o["probes"], o["measure_version"]):
        check_measure_n(o["measure_n"])


def _check_names(options: Mapping[str, Any], required: bool = True) -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    missing = [k for k in _REQUIRED if k not in options] if required else []
    if missing:
        raise ValueError(f"missing training option(s) {missing}")


def _merged(config: TrainConfig | None, options: Mapping[str, Any], n_train: int | None = None) -> dict:
    """Every option: the defaults, then ``config``'s fields, then ``options``; checked (n_train: see
    :func:`check_train_options`)."""
    if config is not None and not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig (or None, with the options as keywords: lr=..., "
                         f"batch_size=...), got {type(config).__name__}")
    _check_names(options, required=config is None)
    fields = dataclasses.fields(TrainConfig)
    o = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    o.update({f.name: getattr(config, f.name) for f in fields} if config is not None else {})
    o.update(options)
    _check_values(o, n_train)
    return o


def check_train_options(n_train: int | None = None, **options: Any) -> None:
    """Raise ValueError if :func:`train` would refuse these keyword ``options`` (the fields of
    :class:`TrainConfig`): unknown names, loss/optimizer, counts (integers; numpy integers accepted, booleans and
    fractions refused), rates, measure names. ``lr`` and ``batch_size`` are required; ``batch_size`` is checked
    against ``n_train`` when given. Used by :func:`train` and by sweeps to check a whole grid before any run."""
    _merged(None, options, n_train)


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


class _Stepper:
    """The minibatch step: minibatches from a permutation of the training set drawn at every epoch start (generator
    seeded by ``seed``), targets plus N(0, σ²) label noise (a second generator, seeded by ``seed + 7919``), and an
    SGD/Adam step on the minibatch loss, taken with the gradient at θ + ρ g/||g|| when ``sam_rho = ρ > 0``."""

    def __init__(self, model: nn.Module, d: Dataset, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.model, self.d, self.cfg, self.steps_per_epoch = model, d, cfg, steps_per_epoch
        self.batch_size = int(cfg.batch_size)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = _make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self.perm: torch.Tensor | None = None

    def _minibatch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = step % self.steps_per_epoch
        if pos == 0:
            self.perm = torch.randperm(self.d.n_train, generator=self.gen).to(self.d.x_train.device)
        idx = self.perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        xb, yb = self.d.x_train[idx], self.d.y_train[idx]
        if self.cfg.label_noise > 0:
            noise = torch.randn(yb.shape, generator=self.noise_gen, dtype=yb.dtype)
            yb = yb + self.cfg.label_noise * noise.to(yb.device)
        return xb, yb

    def __call__(self, step: int) -> bool:
        """Take optimisation step ``step + 1``; False (no step taken) if the minibatch loss is not finite."""
        xb, yb = self._minibatch(step)
        loss, opt = self.cfg.loss, self.opt
        opt.zero_grad(set_to_none=True)
        batch_loss = loss_fn(self.model(xb), yb, loss)
        if not torch.isfinite(batch_loss):
            return False
        batch_loss.backward()
        if self.cfg.sam_rho > 0:
            eps = _sam_perturb(self.params, self.cfg.sam_rho)
            opt.zero_grad(set_to_none=True)
            loss_fn(self.model(xb), yb, loss).backward()
            with torch.no_grad():
                for p, e in zip(self.params, eps):
                    p.sub_(e)
        opt.step()
        return True


class _Schedule:
    """When to check the loss, when the late phase starts, when to stop and which steps are checkpoints.

    Early phase: a checkpoint every ``track_every`` steps (default ``max(1, total // 50)``) and at the budget's
    end; with a late phase requested, the full training loss is checked every ``check_every`` steps (default: once
    per epoch) and at the end. At the first check below ``late_phase_threshold``, step s, the late phase starts:
    training ends at s + ``late_phase_steps``, with checkpoints at s, every ``late_track_every`` steps after it
    (default ``max(1, late_phase_steps // 50)``) and at the end."""

    def __init__(self, cfg: TrainConfig, total: int, steps_per_epoch: int) -> None:
        self.late_steps, self.threshold = cfg.late_phase_steps, cfg.late_phase_threshold
        self.track_every = cfg.track_every or max(1, total // 50)
        self.late_track_every = cfg.late_track_every or max(1, (cfg.late_phase_steps or 0) // 50)
        self.check_every = cfg.check_every or steps_per_epoch
        self.late_start: int | None = None
        self.end = total

    @property
    def phase(self) -> str:
        return "early" if self.late_start is None else "late"

    def checks_loss(self, step: int) -> bool:
        """Whether the full training loss is compared with the threshold after ``step`` steps."""
        return self.late_start is None and self.late_steps is not None and (step % self.check_every == 0
                                                                            or step == self.end)

    def start_late(self, step: int) -> None:
        self.late_start, self.end = step, step + self.late_steps

    def is_checkpoint(self, step: int) -> bool:
        """Whether a history row is recorded after ``step`` steps (always at the start of the late phase)."""
        every = self.track_every if self.late_start is None else self.late_track_every
        since = step if self.late_start is None else step - self.late_start
        return since % every == 0 or step == self.end


class _Checkpoints:
    """The history rows (full-set losses and accuracies, the measures on the measurement subset) and the last
    state whose full training loss was finite, which :meth:`roll_back` restores after a divergence."""

    def __init__(self, model: nn.Module, d: Dataset, mdata: Dataset, fns: Mapping[str, MeasureFn], loss: str,
                 steps_per_epoch: int) -> None:
        self.model, self.d, self.mdata, self.fns, self.loss = model, d, mdata, fns, loss
        self.steps_per_epoch = steps_per_epoch
        self.rows: list[dict] = []
        self.errors: dict[str, str] = {}
        self.measure_time = 0.0
        self.last_good = copy.deepcopy(model.state_dict())

    def train_loss(self) -> float:
        return evaluate(self.model, self.d.x_train, self.d.y_train, self.d.labels_train, self.loss)[0]

    def record(self, step: int, phase: str) -> bool:
        """Record the row of ``step`` and keep the weights as the last good state; False (nothing recorded or kept)
        if the full training loss is not finite."""
        d = self.d
        tr_loss, tr_acc = evaluate(self.model, d.x_train, d.y_train, d.labels_train, self.loss)
        if not math.isfinite(tr_loss):
            return False
        te_loss, te_acc = evaluate(self.model, d.x_test, d.y_test, d.labels_test, self.loss)
        row = dict(step=step, epoch=step / self.steps_per_epoch, train_loss=tr_loss, train_acc=tr_acc,
                   test_loss=te_loss, test_acc=te_acc, phase=phase)
        t0 = time.perf_counter()
        row.update(measure_row(self.model, self.fns, self.mdata, self.errors))
        self.measure_time += time.perf_counter() - t0
        self.rows.append(row)
        self.last_good = copy.deepcopy(self.model.state_dict())
        return True

    def roll_back(self) -> None:
        self.model.load_state_dict(self.last_good)


def _run_steps(step_fn: _Stepper, schedule: _Schedule, checkpoints: _Checkpoints, bar: Any) -> tuple[int, bool]:
    """Step until the schedule ends: ``(steps done, diverged)``; diverged when a minibatch loss or the full
    training loss at a checkpoint is not finite."""
    step = 0
    while step < schedule.end:
        if not step_fn(step):
            return step, True
        step += 1
        bar.update(1)
        if schedule.checks_loss(step) and checkpoints.train_loss() < schedule.threshold:
            schedule.start_late(step)
            bar.total = schedule.end
            bar.refresh()
        if schedule.is_checkpoint(step):
            if not checkpoints.record(step, schedule.phase):
                return step, True
            bar.set_postfix(train_loss=f"{checkpoints.rows[-1]['train_loss']:.3g}")
    return step, False


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


def train(model: nn.Module, data: Dataset, config: TrainConfig | None = None, *, device: str = "auto",
          progress: bool | None = None, **options: Any) -> TrainResult:
    """Train ``model`` on ``data`` with minibatch SGD or Adam (``batch_size = n_train`` is full-batch GD).

    Options: a :class:`TrainConfig` and/or its fields as keywords, ``train(model, data, lr=0.1, batch_size=32,
    epochs=5)``; keywords given with a ``config`` override its fields.

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
    result adds one column per key. The stochastic sharpness measures run to the accuracy of ``measure_version``
    (default 2: Tr H to a 1 % standard error, λ_max certified to 1e-3 relative; 1: the fixed counts of earlier
    stores; :func:`~flatcomp_tutorial.measures.measure_descriptions`), or with exactly ``probes`` probes if given.
    ``history.attrs`` states the
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
    cfg = TrainConfig(**_merged(config, options, data.n_train))
    n = data.n_train
    batch_size = int(cfg.batch_size)
    steps_per_epoch = math.ceil(n / batch_size)
    total = int(cfg.steps) if cfg.steps is not None else int(cfg.epochs) * steps_per_epoch
    schedule = _Schedule(cfg, total, steps_per_epoch)
    fns = resolve_measures(cfg.measures, cfg.loss, cfg.probes, cfg.measure_version)

    dtype = next(model.parameters()).dtype
    dev = resolve_device(device, dtype)
    d = data.to(dev, dtype)
    model.to(dev)
    _check_output_width(model, d, cfg.loss)
    mdata = measurement_subset(d, cfg.measure_n, cfg.measure_seed) if fns else d
    step_fn = _Stepper(model, d, cfg, steps_per_epoch)
    checkpoints = _Checkpoints(model, d, mdata, fns, cfg.loss, steps_per_epoch)
    info = dict(lr=cfg.lr, batch_size=batch_size, steps=total, loss=cfg.loss, optimizer=cfg.optimizer,
                momentum=cfg.momentum, weight_decay=cfg.weight_decay, label_noise=cfg.label_noise,
                sam_rho=cfg.sam_rho, seed=cfg.seed, dataset=data.name, n_train=n, device=str(dev),
                late_phase_steps=cfg.late_phase_steps, late_phase_threshold=cfg.late_phase_threshold,
                measures=list(fns), measure_n=cfg.measure_n, measure_seed=cfg.measure_seed,
                measure_version=cfg.measure_version, probes=cfg.probes)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    model.train()
    checkpoints.record(0, schedule.phase)
    with tqdm(total=total, disable=not progress_enabled(progress), desc="training", leave=False) as bar:
        step, diverged = _run_steps(step_fn, schedule, checkpoints, bar)
    if diverged:
        info["diverged_at_step"] = step
        checkpoints.roll_back()
    reached = schedule.late_start is not None if cfg.late_phase_steps is not None else None
    info.update(late_start_step=schedule.late_start, reached_threshold=reached, steps_done=step,
                measure_time=checkpoints.measure_time)
    known = measure_descriptions(cfg.measure_version, cfg.probes)
    described = {name: known.get(name, "user-supplied callable(model, measure_data)") for name in fns}
    history = new_history(checkpoints.rows, cfg.loss, described, cfg.measure_n, cfg.measure_seed, checkpoints.errors,
                          cfg.late_phase_threshold if cfg.late_phase_steps is not None else None, schedule.check_every, cfg.measure_version)
    return TrainResult(model, history, diverged, info, time.perf_counter() - start)
