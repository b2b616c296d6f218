"""flatcomp_tutorial: helpers for the book "Flat minima imply compressed representations".

Modules, one concept each: ``data`` (datasets), ``models`` (network builders), ``training`` (SGD with
history), ``runtime`` (device, seeds, threads), ``checks`` (input validation), ``plotting``.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .data import Dataset, load_dataset
from .models import make_model
from .runtime import configure, resolve_device
from .training import train
from . import plotting, widgets  # noqa: E402  (submodule access as fc.plotting, fc.widgets)

try:
    __version__ = version("flatcomp-tutorial")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["Dataset", "load_dataset", "make_model", "train", "configure", "resolve_device", "__version__"]
