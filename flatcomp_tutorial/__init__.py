"""flatcomp_tutorial: helpers for the book "Flat minima imply compressed representations".

Modules, one concept each: ``losses`` (the loss convention), ``data`` (datasets), ``models`` (network builders),
``training`` (SGD with a tracked history), ``experiments`` (sweeps, results store, correlations), ``batch``
(papermill batches), ``sharpness`` (Hessian measures), ``geometry`` (Jacobian-based compression measures),
``bounds`` (flatness => compression bounds with their slack), ``robustness`` (adversarial attacks and radii),
``runtime`` (device, seeds, threads), ``checks`` (input validation), ``plotting``, ``widgets``, ``notebooks``
(executing the book: glue and claims), ``nbval_plugin`` (tolerance-aware book checks).
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .data import Dataset, load_dataset
from .models import make_model
from .runtime import configure, resolve_device
from .training import TrainResult, train
from .experiments import load_results, summarize, sweep
from . import bounds, experiments, geometry, losses, plotting, robustness, sharpness, training, widgets  # noqa: E402
# (batch and notebooks are command-line modules: import them explicitly)

try:
    __version__ = version("flatcomp-tutorial")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["Dataset", "load_dataset", "make_model", "train", "TrainResult", "sweep", "summarize", "load_results",
           "configure", "resolve_device", "__version__"]
