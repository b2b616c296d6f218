"""What the paper preset costs on a device (chapter "Running at paper scale"): time the operations that dominate
a run (one SGD step of each architecture at the grid's batch sizes, one Hessian-vector product (HVP) on the
measurement subset, and one checkpoint of every tracked measure), and turn the timings into hours per run and per
grid with a stated cost model (:func:`cost_table`).

The cost model, per architecture and batch size B (n training samples, E epochs, a checkpoint every e epochs):

    training ≤ E·⌈n/B⌉ · t_step(B)          (every run assumed to use the full epoch budget: an upper bound)
    measures = (E/e + 1) · t_checkpoint

where t_checkpoint is one timed checkpoint of every tracked measure or, for an architecture whose checkpoint was
not timed, c · t_HVP with c the checkpoint's cost in Hessian-vector products measured on the architectures that
were timed. Steps at batch sizes that were not timed are interpolated linearly in B.

Command line: one measurement per call, appended as one line to a JSON Lines store (default: the data root's
``results/paper_costs.jsonl``, read by the chapter's cost table)::

    python -m flatcomp_tutorial.cost                       # the GPU if there is one, else the CPU
    python -m flatcomp_tutorial.cost --device cpu --threads 1 --store my_costs.jsonl
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .checks import check_count, is_integer
from .curvature import operator, problem
from .data import _PER_CLASS, Dataset
from .losses import mean_loss
from .measures import measure_row, resolve_measures
from .models import make_model
from .presets import preset as get_preset
from .runtime import resolve_device, threads as threads_ctx
from .store import append_record, jsonable, provenance, read_store, results_dir

__all__ = ["COST_STORE", "LABELS", "device_name", "time_paper_ops", "cost_table", "measure", "load_costs",
           "main"]

COST_STORE = "paper_costs.jsonl"
# Display names of the columns of cost_table (units included).
LABELS = {"params": "parameters", "step_ms_min": "SGD step, smallest B (ms)",
          "step_ms_max": "SGD step, largest B (ms)", "epoch_s_min": "epoch, smallest B (s)",
          "epoch_s_max": "epoch, largest B (s)", "hvp_ms": "HVP (ms)", "checkpoint_s": "checkpoint (s)",
          "checkpoint_timed": "checkpoint timed", "checkpoint_hvps": "checkpoint (HVPs)",
          "runs": "runs in the grid",
          "train_h": "training per run (h, at most)", "measure_h": "measures per run (h)", "run_h": "per run (h)",
          "grid_h": "all runs (h)"}
_INPUT_SHAPES = {"fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def device_name(device: str | torch.device) -> str:
    """A readable name of ``device``: the GPU's name (``torch.cuda.get_device_name``), else the CPU's model name
    (from ``/proc/cpuinfo`` where there is one, else ``platform.processor()``)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine() or "unknown")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _median_time(fn: Callable[[], object], dev: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call (GPU work synchronised)."""
    fn()
    _sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _check_batch_sizes(batch_sizes: Sequence[int]) -> list[int]:
    if isinstance(batch_sizes, (str, bytes)) or not hasattr(batch_sizes, "__iter__"):
        raise ValueError(f"batch_sizes must be a sequence of positive integers, got {batch_sizes!r}")
    sizes = list(batch_sizes)
    if not sizes or not all(is_integer(b) and b >= 1 for b in sizes):
        raise ValueError(f"batch_sizes must be a non-empty sequence of positive integers, got {batch_sizes!r}")
    return sorted({int(b) for b in sizes})


def time_paper_ops(device: str | torch.device = "auto", threads: int | None = None,
                   architectures: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None,
                   hvp_n: int = 256, repeats: int = 10, seed: int = 0,
                   checkpoint: Sequence[str] | None = None) -> dict:
    """Time the paper preset's dominant operations on ``device`` (float32, torch's default, as the paper preset
    trains): for each architecture of ``architectures`` (default: all of the preset's), one SGD step (forward,
    MSE loss, backward, update) on a random minibatch of each size in ``batch_sizes`` (default: the grid's), and
    one product with the Hessian of the training loss on ``hvp_n`` random inputs through a cached
    :func:`~flatcomp_tutorial.curvature.operator` (as the measures compute them: the gradient graph is built once,
    so each further product costs about one gradient). Each time is the median of ``repeats`` calls after one
    warm-up call.

    ``checkpoint``: the architectures (default: all timed ones; ``[]``: none) for which one whole measurement
    checkpoint is also timed once: every measure of the preset's ``train.measures`` at its settings, on the
    ``hvp_n`` inputs with random one-hot targets, at the initial weights (``checkpoint_s``, and ``measure_s``
    per measure). The loss is then large; a measure's cost depends on the weights (e.g. the probes Tr H needs to
    reach its accuracy), and how it changes along training is not measured here.

    Everything is checked before any work. Returns a dict of plain values (seconds) with the device, its name,
    the thread count and the settings."""
    paper = get_preset("paper")
    archs = list(paper["architectures"]) if architectures is None else list(architectures)
    unknown = [a for a in archs if a not in paper["architectures"]]
    if not archs or unknown:
        raise ValueError(f"architectures must be names of the paper preset's architectures "
                         f"{sorted(paper['architectures'])}, got {architectures!r}")
    sizes = _check_batch_sizes(paper["grid"]["batch_size"] if batch_sizes is None else batch_sizes)
    timed_ckpt = archs if checkpoint is None else list(checkpoint)
    if isinstance(checkpoint, str) or any(a not in archs for a in timed_ckpt):
        raise ValueError(f"checkpoint must be a list of the timed architectures {archs} (or None: all of them; "
                         f"[]: none), got {checkpoint!r}")
    hvp_n = check_count(hvp_n, "hvp_n (inputs in one Hessian-vector product)")
    repeats = check_count(repeats, "repeats (timed calls per operation)")
    check_count(threads, "threads (a positive number of CPU threads)", optional=True)
    dev = resolve_device(device)
    out = {"device": dev.type, "device_name": device_name(dev), "hvp_n": hvp_n, "repeats": repeats,
           "dtype": "float32", "batch_sizes": sizes, "architectures": {}}
    gen = torch.Generator().manual_seed(seed)
    with threads_ctx(threads):
        out["threads"] = torch.get_num_threads()
        for arch in archs:
            cfg = dict(paper["architectures"][arch])
            shape = _INPUT_SHAPES[paper["datasets"][cfg.pop("dataset")]["name"]]
            kind = cfg.pop("kind")
            model = make_model(kind, shape, 2, seed=seed, dtype=torch.float32, **cfg).to(dev)
            initial = copy.deepcopy(model.state_dict())
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            step_s = {}
            model.train()
            for b in sizes:
                xb = torch.randn(b, *shape, generator=gen).to(dev)
                yb = torch.randn(b, 2, generator=gen).to(dev)

                def step(xb=xb, yb=yb):
                    opt.zero_grad(set_to_none=True)
                    mean_loss(model(xb), yb).backward()
                    opt.step()
                step_s[str(b)] = _median_time(step, dev, repeats)
            model.load_state_dict(initial)           # the HVP and the checkpoint at the initial weights
            xh = torch.randn(hvp_n, *shape, generator=gen).to(dev)
            yh = torch.randn(hvp_n, 2, generator=gen).to(dev)
            model.eval()
            op = operator(problem(model, xh, yh), "hessian", cache=True)
            v = torch.randn(1, op.dim, generator=gen).to(dev)
            hvp_s = _median_time(lambda: op.matmat(v), dev, repeats)
            out["architectures"][arch] = {"params": sum(p.numel() for p in model.parameters()),
                                          "step_s": step_s, "hvp_s": hvp_s}
            if arch in timed_ckpt:
                out["architectures"][arch].update(_time_checkpoint(model, xh, gen, paper["train"], dev))
    return out


def _time_checkpoint(model: torch.nn.Module, x: torch.Tensor, gen: torch.Generator, train: Mapping,
                     dev: torch.device) -> dict:
    """Time every measure of ``train["measures"]`` once on inputs ``x`` with random one-hot targets."""
    labels = torch.randint(0, 2, (len(x),), generator=gen).to(dev)
    y = torch.nn.functional.one_hot(labels, 2).to(x.dtype)
    mdata = Dataset("random", x, y, labels, x, y, labels, 2, tuple(x.shape[1:]))
    fns = resolve_measures(train["measures"], train["loss"], None, train["measure_version"])
    per_measure, errors = {}, {}
    for name, fn in fns.items():
        _sync(dev)
        t0 = time.perf_counter()
        measure_row(model, {name: fn}, mdata, errors)
        _sync(dev)
        per_measure[name] = time.perf_counter() - t0
    return {"checkpoint_s": float(sum(per_measure.values())), "measure_s": per_measure,
            "measure_errors": errors}


def _n_train(dataset: Mapping) -> int:
    """Training samples of a preset's dataset entry: its ``n_train``, else every sample of its classes."""
    if dataset.get("n_train") is not None:
        return int(dataset["n_train"])
    return _PER_CLASS[dataset["name"]][0] * len(dataset["classes"])


def cost_table(timings: Mapping, preset: str | Mapping = "paper", hvp_equivalents: float | None = None
               ) -> pd.DataFrame:
    """Hours per run and per grid of ``preset`` (default ``"paper"``) on the device ``timings`` was measured on
    (:func:`time_paper_ops`), with the cost model of this module's docstring: one row per timed architecture.

    A checkpoint that was not timed costs ``hvp_equivalents`` Hessian-vector products (default: the median of
    ``checkpoint_s / hvp_s`` over the architectures whose checkpoint was timed; a ValueError if there is none).

    Columns: ``params``; ``step_ms_min``/``step_ms_max`` (one SGD step at the smallest and the largest grid batch
    size), ``epoch_s_min``/``epoch_s_max`` (one epoch there), ``hvp_ms``; ``checkpoint_s`` (one checkpoint of
    every measure), ``checkpoint_timed`` (timed, or from the HVP equivalents), ``checkpoint_hvps``
    (``checkpoint_s`` in HVPs); ``runs`` (the grid's runs of this architecture); ``train_h`` (training per run,
    mean over the grid's batch sizes, full epoch budget), ``measure_h`` (measures per run), ``run_h`` (their
    sum) and ``grid_h`` (all runs of this architecture);
    :data:`LABELS` gives display names."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    grid, tr = p["grid"], p["train"]
    checkpoints = tr["epochs"] // tr["track_every_epochs"] + 1
    per_size = len(grid["lr"]) * len(grid["seed"])
    archs = timings["architectures"]
    unknown = [a for a in archs if a not in p["architectures"]]
    if unknown:
        raise ValueError(f"timings hold architecture(s) {unknown}, which preset {p.get('name')!r} does not have")
    if hvp_equivalents is None:
        ratios = [t["checkpoint_s"] / t["hvp_s"] for t in archs.values() if t.get("checkpoint_s") is not None]
        if not ratios and any(t.get("checkpoint_s") is None for t in archs.values()):
            raise ValueError("cost_table: no architecture of these timings has a timed checkpoint; time one "
                             "(time_paper_ops(checkpoint=[...])) or pass hvp_equivalents (HVPs per checkpoint)")
        hvp_equivalents = float(np.median(ratios)) if ratios else None
    elif not (isinstance(hvp_equivalents, (int, float)) and hvp_equivalents > 0):
        raise ValueError(f"hvp_equivalents must be a positive number of HVPs per checkpoint, got {hvp_equivalents!r}")
    rows = []
    for arch, t in archs.items():
        n = _n_train(p["datasets"][p["architectures"][arch]["dataset"]])
        timed = sorted((int(b), s) for b, s in t["step_s"].items())
        sizes = np.array([b for b, _ in timed], dtype=float)
        secs = np.array([s for _, s in timed])
        step = {b: float(np.interp(b, sizes, secs)) for b in grid["batch_size"]}
        train_s = {b: tr["epochs"] * math.ceil(n / b) * step[b] for b in grid["batch_size"]}
        has_ckpt = t.get("checkpoint_s") is not None
        ckpt_s = t["checkpoint_s"] if has_ckpt else hvp_equivalents * t["hvp_s"]
        measure_s = checkpoints * ckpt_s
        run_s = [train_s[b] + measure_s for b in grid["batch_size"]]
        rows.append({"architecture": arch, "params": int(t["params"]),
                     "step_ms_min": 1e3 * step[min(grid["batch_size"])],
                     "step_ms_max": 1e3 * step[max(grid["batch_size"])],
                     "epoch_s_min": train_s[min(grid["batch_size"])] / tr["epochs"],
                     "epoch_s_max": train_s[max(grid["batch_size"])] / tr["epochs"], "hvp_ms": 1e3 * t["hvp_s"],
                     "checkpoint_s": ckpt_s, "checkpoint_timed": has_ckpt, "checkpoint_hvps": ckpt_s / t["hvp_s"],
                     "runs": per_size * len(grid["batch_size"]),
                     "train_h": float(np.mean(list(train_s.values()))) / 3600, "measure_h": measure_s / 3600,
                     "run_h": float(np.mean(run_s)) / 3600, "grid_h": per_size * float(np.sum(run_s)) / 3600})
    return pd.DataFrame(rows).set_index("architecture")


def _record_key(timings: Mapping, prov: Mapping) -> str:
    blob = json.dumps([jsonable(timings), prov.get("time"), prov.get("platform")], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure(store: str | Path | None = None, **options) -> dict:
    """:func:`time_paper_ops` with ``options``, appended to ``store`` (default ``results_dir()/paper_costs.jsonl``)
    as one record ``{"key", "config", "timings", "provenance"}``; returns the record."""
    path = Path(store) if store is not None else results_dir() / COST_STORE
    path.parent.mkdir(parents=True, exist_ok=True)
    timings = time_paper_ops(**options)
    prov = provenance(timings["device"])
    prov["threads"] = timings["threads"]
    rec = {"key": _record_key(timings, prov),
           "config": {k: timings[k] for k in ("device", "device_name", "threads", "hvp_n", "repeats", "dtype",
                                              "batch_sizes")},
           "timings": timings, "provenance": prov}
    append_record(path, rec)
    return rec


def load_costs(store: str | Path) -> pd.DataFrame:
    """Every measurement in a cost store as :func:`cost_table` rows of the paper preset, one per (measurement,
    architecture), with ``device_name``, ``threads``, ``torch`` and ``measured`` (date) in front. A measurement
    without a timed checkpoint uses the median HVP equivalents of the store's timed checkpoints (ValueError if
    the store has none)."""
    recs = [r for r in read_store(store)[0] if "timings" in r]
    ratios = [t["checkpoint_s"] / t["hvp_s"] for r in recs for t in r["timings"]["architectures"].values()
              if t.get("checkpoint_s") is not None]
    frames = []
    for rec in recs:
        timed = any(t.get("checkpoint_s") is not None for t in rec["timings"]["architectures"].values())
        if not timed and not ratios:
            raise ValueError(f"load_costs: no measurement in {store} has a timed checkpoint, so the cost of the "
                             "measures is unknown; run python -m flatcomp_tutorial.cost without --checkpoint once")
        table = cost_table(rec["timings"], hvp_equivalents=None if timed else float(np.median(ratios)))
        table = table.reset_index()
        prov = rec.get("provenance") or {}
        table.insert(0, "measured", str(prov.get("time", ""))[:10])
        table.insert(0, "torch", prov.get("torch_version"))
        table.insert(0, "threads", rec["timings"]["threads"])
        table.insert(0, "device_name", rec["timings"]["device_name"])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["device_name", "threads", "torch", "measured", "architecture"])
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flatcomp_tutorial.cost", description=(
        "Time the paper preset's SGD steps and Hessian-vector products on this machine, append the measurement "
        "to a cost store and print the estimated hours per run and per grid."))
    parser.add_argument("--device", default="auto", help="'auto' (a GPU if there is one), 'cpu', 'cuda', ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--architectures", nargs="+", default=None, help="default: mlp vgg11 vit")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: the grid's")
    parser.add_argument("--hvp-n", type=int, default=256, help="inputs per Hessian-vector product")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per operation (median)")
    parser.add_argument("--checkpoint", nargs="*", default=None,
                        help="architectures whose whole measurement checkpoint is timed once (default: all; "
                             "give the option with no names for none)")
    parser.add_argument("--store", default=None, help=f"JSON Lines store (default: <data root>/results/{COST_STORE})")
    args = parser.parse_args(argv)
    rec = measure(args.store, device=args.device, threads=args.threads, architectures=args.architectures,
                  batch_sizes=args.batch_sizes, hvp_n=args.hvp_n, repeats=args.repeats, checkpoint=args.checkpoint)
    t = rec["timings"]
    print(f"{t['device_name']} ({t['device']}, {t['threads']} thread(s)); paper preset, float32; training is an "
          "upper bound (full epoch budget)")
    try:
        table = cost_table(t).rename(columns=LABELS)
    except ValueError as err:
        table = f"(no cost table: {err})"
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(table)
    print(f"appended record {rec['key']} to {args.store or results_dir() / COST_STORE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
