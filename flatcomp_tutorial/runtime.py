"""Device, seeds and threads: the three things every chapter fixes before it computes anything; and whether to
show progress bars."""
from __future__ import annotations

import os
import random
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .checks import check_count, is_integer

SCALES = ("cpu", "paper")
# Hours one run of each paper-preset architecture takes on one core of the CPU that built the book (2-class data,
# full epoch budget, every measure): the cost model of module ``cost`` applied to the shipped measurement
# (``results/paper_costs.jsonl``, chapter "Running at paper scale"; a test keeps them within a factor of 2).
PAPER_CPU_HOURS = {"mlp": 0.3, "vit": 14.0, "vgg11": 70.0}
PAPER_MLP_CPU_HOURS = PAPER_CPU_HOURS["mlp"]

# Accelerator backends without float64 arithmetic (Apple's Metal Performance Shaders).
_NO_FLOAT64 = ("mps",)


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> torch.device:
    """``"auto"`` -> CUDA if available, else Apple MPS if available, else CPU; anything else is passed to torch.

    ``dtype``: the floating dtype the work needs. MPS has no float64, so with ``dtype=torch.float64`` ``"auto"``
    skips MPS and falls back to the CPU with a ``UserWarning`` saying why, and an explicit MPS device raises a
    ``ValueError`` (the exactness checks of several chapters are float64)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (e.g. torch.float64) or None, got {dtype!r}")
    needs64 = dtype == torch.float64
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            if needs64:
                warnings.warn("device='auto': Apple MPS is available but has no float64 support, and this work "
                              "needs float64; using the CPU instead.", UserWarning, stacklevel=2)
                return torch.device("cpu")
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from err
    if needs64 and dev.type in _NO_FLOAT64:
        raise ValueError(f"device {str(dev)!r} has no float64 support, and this work needs float64; use "
                         "device='cpu' (or 'auto', which then picks CUDA or the CPU).")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    if not is_integer(seed):
        raise ValueError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure(seed: int = 0, device: str = "auto", threads: int | None = None,
              dtype: torch.dtype | None = None) -> torch.device:
    """Seed everything, fix the number of CPU threads (timings and bitwise reproducibility depend on it) and
    return the resolved device (:func:`resolve_device`; pass ``dtype=torch.float64`` when the chapter computes in
    float64, so that ``"auto"`` never picks MPS). Every chapter calls this right after its ``parameters`` cell.
    All arguments are validated before anything is changed."""
    if not is_integer(seed):
        raise ValueError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
    threads = check_count(threads, "threads (a positive number of CPU threads)", optional=True)
    dev = resolve_device(device, dtype)
    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)
    return dev


def check_scale(scale: str, device: torch.device | str, runs: int = 1) -> str:
    """``scale`` if it is ``"cpu"`` or ``"paper"`` (ValueError otherwise). With ``"paper"`` on a CPU device a
    RuntimeWarning gives the estimated time, ``runs`` × :data:`PAPER_MLP_CPU_HOURS` hours or more, and asks for a GPU
    (on Colab: Runtime → Change runtime type); the chapter then goes on. Every chapter calls this in its setup cell,
    before any data are loaded."""
    if scale not in SCALES:
        raise ValueError(f"scale must be 'cpu' or 'paper', got {scale!r}")
    runs = check_count(runs, "runs (the number of paper-scale training runs the chapter does)")
    if scale == "paper" and torch.device(device).type == "cpu":
        hours = runs * PAPER_MLP_CPU_HOURS
        warnings.warn(f"scale='paper' on a CPU: this chapter trains {runs} paper-scale run(s), about "
                      f"{PAPER_MLP_CPU_HOURS:g} h each for the MLP on one CPU core (a ViT run about "
                      f"{PAPER_CPU_HOURS['vit']:g} h, a VGG-11 run about {PAPER_CPU_HOURS['vgg11']:g} h), so expect "
                      f"{hours:.2g} h or more. Use a GPU: on Colab choose "
                      "Runtime -> Change runtime type -> GPU and run the chapter again (device='auto' picks it); "
                      "or keep scale='cpu'.", RuntimeWarning, stacklevel=2)
    return scale


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with torch's CPU thread count set to ``n`` (``torch.set_num_threads``) and restore the previous
    count afterwards, also when the block raises. ``None`` leaves the thread count unchanged. ``n`` is checked
    before anything changes (a positive integer; numpy integers accepted, booleans and fractions refused)."""
    if n is not None and not (is_integer(n) and n >= 1):
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def progress_enabled(progress: bool | None) -> bool:
    """``None`` means: show progress bars unless ``$CI`` is set or ``$FLATCOMP_PROGRESS=0`` (the book's executor
    and the test suite set it so stored outputs and logs stay clean)."""
    if progress is not None:
        return progress
    return not os.environ.get("CI") and os.environ.get("FLATCOMP_PROGRESS", "1") != "0"
