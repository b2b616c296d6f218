"""flatcomp_tutorial: helpers for the book "Flat minima imply compressed representations".

One concept per module. Conventions: ``losses`` (the loss), ``layers`` (network anatomy: dense layers, the points
h_l between them), ``checks`` (input validation), ``runtime`` (device, seeds, threads, progress bars).
Data and networks: ``data``, ``models``. Measures (never import training, sweeps, store or figures): ``curvature``
(Hessian and Gauss–Newton operators, exact Tr G), ``estimators`` (Hutchinson, Hutch++, Lanczos, SLQ over any
matvec), ``sharpness`` (the named sharpness measures), ``geometry`` (Jacobian-based compression measures),
``bounds`` (flatness ⇒ compression bounds with their slack), ``robustness`` (attacks and radii), ``invariance``
(function-preserving reparametrisations), ``toys`` (closed-form examples). Tracking: ``measures`` (the registry of
tracked measures and their labels), ``training`` (SGD with a tracked history), ``history`` (phases of a history).
Experiments: ``presets``, ``store`` (JSON Lines results and provenance), ``sweeps``, ``stats`` (correlations,
partial correlations, bootstrap CIs), ``late`` (the late phase summarised per run and over seeds). Drawing only:
``figures``, ``widgets``. Command-line tools: ``batch`` (papermill batches), ``cost`` (what the paper preset costs
on a device), ``notebooks`` (executing the book: glue and claims), ``nbval_plugin`` (tolerance-aware checks).
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .data import Dataset, load_dataset
from .models import make_model
from .runtime import configure, resolve_device
from .training import TrainResult, train
from .store import load_results
from .stats import summarize
from .sweeps import sweep
from . import (bounds, checks, curvature, data, estimators, figures, geometry, history, invariance,  # noqa: E402
               late, layers, losses, measures, models, presets, robustness, runtime, sharpness, stats, store,
               sweeps, toys, training, widgets)
# (batch, cost and notebooks are command-line modules: import them explicitly)

try:
    __version__ = version("flatcomp-tutorial")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["Dataset", "load_dataset", "make_model", "train", "TrainResult", "sweep", "summarize", "load_results",
           "configure", "resolve_device", "__version__"]
