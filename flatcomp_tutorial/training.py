"""Training with a tidy history: minibatch SGD on the loss (1/n) Σ ½||f(x_i) − y_i||² (MSE, the book's default).

One record per checkpoint (every ``track_every`` optimisation steps, plus the first and the last step) with the
full-dataset train/test loss and accuracy, evaluated in eval mode without gradient.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .data import Dataset
from .runtime import resolve_device

LOSSES = ("mse", "cross_entropy")


def loss_fn(out: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """``"mse"``: mean over samples of ½ Σ_outputs (f − y)²; ``"cross_entropy"``: mean CE against argmax(y)."""
    if loss == "mse":
        return 0.5 * (out - y).pow(2).sum(dim=1).mean()
    if loss == "cross_entropy":
        return nn.functional.cross_entropy(out, y.argmax(dim=1) if y.dim() == 2 else y)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


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
    ``diverged``, ``config`` and ``wall_time`` in seconds."""

    model: nn.Module
    history: pd.DataFrame
    diverged: bool
    config: dict = field(default_factory=dict)
    wall_time: float = 0.0


def train(model: nn.Module, data: Dataset, lr: float, batch_size: int, epochs: int | None = None,
          steps: int | None = None, loss: str = "mse", momentum: float = 0.0, weight_decay: float = 0.0,
          seed: int = 0, track_every: int | None = None, device: str = "auto",
          progress: bool | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with minibatch SGD (``batch_size = n_train`` is full-batch gradient descent).

    Give exactly one of ``epochs`` and ``steps``. Minibatches are reshuffled every epoch from a generator seeded by
    ``seed``, so the same configuration and seed give an identical history on CPU. A non-finite loss stops
    training; the result is then marked ``diverged`` and holds the last finite state.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    n = data.n_train
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and n_train={n}, got {batch_size}")
    steps_per_epoch = math.ceil(n / batch_size)
    total = steps if steps is not None else epochs * steps_per_epoch
    if total < 1:
        raise ValueError(f"nothing to do: {'steps' if steps is not None else 'epochs'} must be >= 1")
    track_every = track_every or max(1, total // 50)

    dev = resolve_device(device)
    dtype = next(model.parameters()).dtype
    d = data.to(dev, dtype)
    model.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    config = dict(lr=lr, batch_size=batch_size, steps=total, loss=loss, momentum=momentum,
                  weight_decay=weight_decay, seed=seed, dataset=data.name, n_train=n, device=str(dev))

    records, diverged, last_good = [], False, copy.deepcopy(model.state_dict())

    def checkpoint(step: int) -> None:
        tr_loss, tr_acc = evaluate(model, d.x_train, d.y_train, d.labels_train, loss)
        te_loss, te_acc = evaluate(model, d.x_test, d.y_test, d.labels_test, loss)
        records.append(dict(step=step, epoch=step / steps_per_epoch, train_loss=tr_loss, train_acc=tr_acc,
                            test_loss=te_loss, test_acc=te_acc))

    from tqdm.auto import tqdm

    start = time.perf_counter()
    model.train()
    checkpoint(0)
    step, perm = 0, None
    with tqdm(total=total, disable=not progress_enabled(progress), desc="training", leave=False) as bar:
        while step < total:
            pos = step % steps_per_epoch
            if pos == 0:
                perm = torch.randperm(n, generator=gen).to(dev)
            idx = perm[pos * batch_size : (pos + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            batch_loss = loss_fn(model(d.x_train[idx]), d.y_train[idx], loss)
            if not torch.isfinite(batch_loss):
                diverged = True
                config["diverged_at_step"] = step
                model.load_state_dict(last_good)
                break
            batch_loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % track_every == 0 or step == total:
                checkpoint(step)
                if not math.isfinite(records[-1]["train_loss"]):
                    diverged = True
                    config["diverged_at_step"] = step
                    records.pop()
                    model.load_state_dict(last_good)
                    break
                last_good = copy.deepcopy(model.state_dict())
                bar.set_postfix(train_loss=f"{records[-1]['train_loss']:.3g}")
    history = pd.DataFrame.from_records(records)
    history.attrs["loss_convention"] = ("mean over samples of 1/2 sum over outputs of (f - y)^2" if loss == "mse"
                                        else "mean cross-entropy")
    return TrainResult(model, history, diverged, config, time.perf_counter() - start)
