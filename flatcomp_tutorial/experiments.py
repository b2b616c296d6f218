"""Sweeps over learning rate × batch size × seed × architecture × dataset, a resumable JSON Lines result store, and
correlation summaries between sharpness and compression (chapter "Reproducing the paper").

Store format: one JSON object per line and per finished run::

    {"key": ..., "preset": ..., "config": {...}, "final": {...}, "matched": {...} | null, "history": [{...}, ...],
     "train_info": {...}, "diverged": bool, "wall_time": s, "provenance": {...}}

and one per run that raised: ``{"key", "preset", "config", "failed": true, "error", "traceback", "wall_time",
"provenance"}``. Numbers are plain JSON numbers (tensors and numpy values are converted); NaN, +inf and -inf are
written as the tokens ``NaN``, ``Infinity``, ``-Infinity`` that Python's ``json`` writes and reads back exactly
(:func:`append_record`).

``key`` is a hash of the run's full configuration (:func:`config_key`); a sweep skips every configuration whose key
has a (non-failed) record in the store, so re-running a killed sweep resumes it. Each record is appended with ONE
``os.write`` on a file opened with ``O_APPEND`` followed by ``fsync`` (:func:`append_record`), so a crash leaves at
worst one truncated line, which :func:`read_store` skips and reports (as it does lines whose fields have the wrong
types), until the run has been redone.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import numbers
import os
import platform
import re
import subprocess
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .checks import is_integer, is_real
from .measures import SWEEP_MEASURES

__all__ = ["PRESETS", "preset", "grid_configs", "resolve_config", "config_key", "run_config", "sweep", "SweepResult",
           "append_record", "record", "read_store", "load_results", "summarize", "correlations",
           "checkpoint_correlations", "provenance", "results_dir"]

_SWEEP_MEASURES = list(SWEEP_MEASURES)

PRESETS: dict[str, dict] = {
    "cpu": {
        "description": "digits 3 vs 8 (285 train / 72 test images, 1x8x8, standardised); MSE; plain SGD; every run "
                       "trained until the full training loss < 1e-3 (matched loss; at most 400 epochs); what the "
                       "book and CI run.",
        "datasets": {"digits": dict(name="digits", classes=[3, 8])},
        "architectures": {
            "mlp": dict(kind="mlp", width=64, depth=2, activation="tanh", dataset="digits"),
            "lenet": dict(kind="lenet", channels=[6, 16], width=64, activation="tanh", dataset="digits"),
            "vit": dict(kind="vit", patch=4, dim=32, depth=2, heads=4, dataset="digits"),
        },
        "train": dict(epochs=400, loss="mse", optimizer="sgd", late_phase_steps=0, late_phase_threshold=1e-3,
                      track_every_epochs=20, measures=_SWEEP_MEASURES, measure_n=256, probes=32),
        "grid": dict(arch=["mlp"], lr=[0.05, 0.1, 0.15, 0.2], batch_size=[4, 8, 16], seed=[0, 1]),
    },
    "paper": {
        "description": "the paper's setting: 2-class FashionMNIST (T-shirt vs trouser) with an MLP 784-512-512-2, "
                       "2-class CIFAR-10 (airplane vs automobile) with VGG-11 without BatchNorm and a small ViT; MSE; "
                       "SGD without momentum or weight decay; lr {0.01, 0.02, 0.05, 0.1} x B {16, 32, 64, 128, 256}; "
                       "trained until the training loss < 1e-3 (at most 200 epochs). GPU-sized.",
        "datasets": {"fashion_mnist2": dict(name="fashion_mnist", classes=[0, 1]),
                     "cifar10_2": dict(name="cifar10", classes=[0, 1])},
        "architectures": {
            "mlp": dict(kind="mlp", width=512, depth=2, activation="relu", dataset="fashion_mnist2"),
            "vgg11": dict(kind="vgg", cfg="vgg11", hidden=[], activation="relu", dataset="cifar10_2"),
            "vit": dict(kind="vit", patch=4, dim=64, depth=4, heads=4, mlp_ratio=2, dataset="cifar10_2"),
        },
        "train": dict(epochs=200, loss="mse", optimizer="sgd", momentum=0.0, weight_decay=0.0, late_phase_steps=0,
                      late_phase_threshold=1e-3, track_every_epochs=10, measures=_SWEEP_MEASURES, measure_n=256,
                      probes=32),
        "grid": dict(arch=["mlp", "vgg11", "vit"], lr=[0.01, 0.02, 0.05, 0.1], batch_size=[16, 32, 64, 128, 256],
                     seed=[0, 1]),
    },
}
_NOT_IN_KEY = ("root", "download")  # where data lives does not change a run


def preset(name: str, **overrides: Mapping) -> dict:
    """A deep copy of ``PRESETS[name]`` with sections updated by ``overrides``, e.g.
    ``preset("paper", datasets={"fashion_mnist2": {"n_train": 20}}, train={"epochs": 1})`` (nested dicts are
    merged one level deep; ``grid`` is replaced)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    p = copy.deepcopy(PRESETS[name])
    p["name"] = name
    for section, value in overrides.items():
        if section not in p:
            raise ValueError(f"preset override {section!r} is not a section; use one of {sorted(p)}")
        if section in ("datasets", "architectures"):
            for k, v in value.items():
                p[section][k] = {**p[section].get(k, {}), **v}
        elif section == "train":
            p[section].update(value)
        else:
            p[section] = copy.deepcopy(value)
    return p


def grid_configs(grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]]) -> list[dict]:
    """Grid points: a dict of lists is expanded to its Cartesian product (in key order), a list of dicts is taken
    as is. Keys: ``arch``, ``dataset``, any :func:`~flatcomp_tutorial.training.train` argument (``lr``,
    ``batch_size``, ``seed``, ``label_noise``, ...), ``model.<option>`` and ``data.<option>``."""
    if isinstance(grid, Mapping):
        for k, v in grid.items():
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
                raise ValueError(f"grid[{k!r}] must be a list of values, got {v!r}")
        keys = list(grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    points = [dict(p) for p in grid]
    if not all(isinstance(p, dict) for p in points):
        raise ValueError("grid must be a dict of lists or a list of dicts")
    return points


def resolve_config(point: Mapping[str, Any], spec: Mapping) -> dict:
    """The full configuration of one run: ``{"preset", "arch", "dataset", "model", "data", "train"}``."""
    point = dict(point)
    arch = point.pop("arch", None) or next(iter(spec["architectures"]))
    if arch not in spec["architectures"]:
        raise ValueError(f"arch must be one of {sorted(spec['architectures'])} for preset {spec.get('name')!r}, "
                         f"got {arch!r}")
    model = dict(spec["architectures"][arch])
    dataset = point.pop("dataset", None) or model.pop("dataset", None) or next(iter(spec["datasets"]))
    model.pop("dataset", None)
    if dataset not in spec["datasets"]:
        raise ValueError(f"dataset must be one of {sorted(spec['datasets'])} for preset {spec.get('name')!r}, "
                         f"got {dataset!r}")
    data = dict(spec["datasets"][dataset])
    train = dict(spec["train"])
    for k, v in point.items():
        if k.startswith("model."):
            model[k[6:]] = v
        elif k.startswith("data."):
            data[k[5:]] = v
        else:
            train[k] = v
    for required in ("lr", "batch_size"):
        if required not in train:
            raise ValueError(f"configuration {dict(point)} has no {required!r}; put it in the grid")
    train.setdefault("seed", 0)
    return {"preset": spec.get("name", "custom"), "arch": arch, "dataset": dataset, "model": model, "data": data,
            "train": train}


def config_key(config: Mapping) -> str:
    """16 hex digits of the sha256 of the canonical JSON of ``config`` (data location excluded)."""
    clean = json.loads(json.dumps(config, sort_keys=True, default=str))
    for k in _NOT_IN_KEY:
        clean.get("data", {}).pop(k, None)
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]


def results_dir() -> Path:
    """``<data root>/results`` (the repository's ``data/results/`` in a checkout; see ``data.default_root``)."""
    from .data import default_root

    return default_root() / "results"


def provenance(device: str | None = None) -> dict:
    """Package, torch and Python versions, the git commit of the source tree when available, host and device."""
    import torch

    from . import __version__

    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package_version": __version__, "git_commit": commit, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "platform": platform.platform(), "device": device,
            "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------------------------------------------
# store
# ----------------------------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: mappings -> dicts (string keys), tuples/lists -> lists, torch tensors and numpy
    arrays -> numbers (0-d) or nested lists of numbers (detached, moved to the CPU), numpy scalars -> Python
    numbers. Floats stay floats, ±inf and NaN included (written as ``Infinity``/``-Infinity``/``NaN``, see
    :func:`append_record`). Anything else that is not a number (a ``Path``, a ``torch.dtype``) is written as its
    ``str``; complex numbers are refused (TypeError)."""
    import torch

    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        if obj.is_complex():
            raise TypeError(f"the result store holds real numbers only, got a complex tensor of shape "
                            f"{tuple(obj.shape)}")
        return _jsonable(obj.item() if obj.dim() == 0 else obj.tolist())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.item() if obj.ndim == 0 else obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)  # ±inf and NaN included
    if isinstance(obj, numbers.Complex):
        raise TypeError(f"the result store holds real numbers only, got {obj!r}")
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


_OPTIONAL_DICTS = ("final", "matched", "train_info", "provenance", "conventions")


def _record_problem(rec: Any) -> str | None:
    """Why ``rec`` (one decoded line) is not a usable store record, or None. Checked: a dict with a non-empty
    string ``key``; ``config`` a dict (its ``train`` a dict); ``final``/``matched``/``train_info``/``provenance``/
    ``conventions`` dicts or null; ``history`` a list of dicts; ``diverged``/``failed`` booleans or null;
    ``wall_time`` a number or null; ``preset``/``error`` strings or null. Other fields are free."""
    if not isinstance(rec, dict):
        return f"not a JSON object (a {type(rec).__name__})"
    key = rec.get("key")
    if not isinstance(key, str) or not key:
        return f"'key' must be a non-empty string, got {key!r}"
    cfg = rec.get("config", {})
    if not isinstance(cfg, dict):
        return f"'config' must be a JSON object, got {type(cfg).__name__}"
    if not isinstance(cfg.get("train", {}), dict):
        return f"'config.train' must be a JSON object, got {type(cfg['train']).__name__}"
    for name in _OPTIONAL_DICTS:
        v = rec.get(name)
        if v is not None and not isinstance(v, dict):
            return f"{name!r} must be a JSON object or null, got {type(v).__name__}"
    hist = rec.get("history", [])
    if not isinstance(hist, list) or not all(isinstance(h, dict) for h in hist):
        return "'history' must be a list of JSON objects (one per checkpoint)"
    for name in ("diverged", "failed"):
        v = rec.get(name)
        if v is not None and not isinstance(v, bool):
            return f"{name!r} must be true, false or null, got {v!r}"
    wall = rec.get("wall_time")
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float))):
        return f"'wall_time' must be a number or null, got {wall!r}"
    for name in ("preset", "error"):
        v = rec.get(name)
        if v is not None and not isinstance(v, str):
            return f"{name!r} must be a string or null, got {v!r}"
    return None


_KEY_AT_START = re.compile(rb'^\s*\{\s*"key"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _key_of_broken_line(raw: bytes) -> str | None:
    """The run key of a truncated line when its ``"key"`` field (written first) survived, else None."""
    m = _KEY_AT_START.match(raw)
    if not m:
        return None
    try:
        return json.loads(b'"' + m.group(1) + b'"')
    except ValueError:
        return None


def append_record(store: str | Path, rec: Mapping) -> None:
    """Append ``rec`` as one JSON line: a single ``os.write`` of the whole encoded line on a file opened with
    ``O_APPEND``, then ``fsync``. If the file ends in a truncated line (a crash), the new record starts on a new
    line so that only the truncated one is lost.

    Encoding: tensors, numpy arrays and numpy scalars become numbers or lists of numbers (:func:`_jsonable`);
    non-finite floats are written as Python's JSON extension tokens ``NaN``, ``Infinity`` and ``-Infinity``
    (``json.dumps(allow_nan=True)``), which ``json.loads`` (and so :func:`read_store`) reads back as the same
    float, so NaN and ±inf survive the round trip exactly (other JSON parsers may need an option for them).
    A record that :func:`read_store` would skip (e.g. ``final`` not an object) is refused with a ValueError."""
    path = Path(store)
    clean = _jsonable(rec)
    problem = _record_problem(clean)
    if problem:
        raise ValueError(f"append_record: not a valid store record ({problem}); nothing was written to {path}")
    line = json.dumps(clean, allow_nan=True, separators=(",", ":")).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_store(store: str | Path, warn: bool = True, failed: bool = False) -> tuple[list[dict], list[int]]:
    """The records of finished runs in ``store`` (in file order) and the 1-based numbers of the lines skipped:
    truncated or not JSON (a run killed while writing), or JSON whose fields have the wrong types
    (:func:`_record_problem`). A missing store has no records. Records of runs that raised (``"failed": true``,
    written by :func:`sweep`) are left out unless ``failed=True``.

    With ``warn``, one RuntimeWarning lists the skipped lines whose run has no valid record anywhere in the store
    (those runs will be redone by the next sweep); a skipped line whose key has a valid record (the run was redone)
    is only listed in the returned line numbers."""
    path = Path(store)
    if not path.exists():
        return [], []
    records: list[dict] = []
    bad: list[tuple[int, str | None, str]] = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                bad.append((i, _key_of_broken_line(raw), "truncated or not JSON"))
                continue
            problem = _record_problem(rec)
            if problem:
                key = rec.get("key") if isinstance(rec, dict) and isinstance(rec.get("key"), str) else None
                bad.append((i, key, problem))
            elif failed or not rec.get("failed"):
                records.append(rec)
    done = {r["key"] for r in records if not r.get("failed")}
    pending = [(i, why) for i, key, why in bad if key is None or key not in done]
    if pending and warn:
        lines = "; ".join(f"line {i}: {why}" for i, why in pending[:10]) + ("; ..." if len(pending) > 10 else "")
        warnings.warn(f"{path}: skipped {len(pending)} truncated or unreadable line(s) {[i for i, _ in pending]} "
                      f"({lines}); a run killed while writing leaves a truncated line; those runs will be redone by "
                      "the next sweep", RuntimeWarning, stacklevel=2)
    return records, [i for i, _, _ in bad]


def record(store: str | Path, config: Mapping, metrics: Mapping, history: Sequence[Mapping] | pd.DataFrame = (),
           key: str | None = None, **extra: Any) -> dict:
    """Append a run's result from anywhere (e.g. the last cell of a chapter run by :mod:`flatcomp_tutorial.batch`):
    ``{"key": key or config_key(config), "config", "final": metrics, "history", "provenance", **extra}`` with the
    encoding of :func:`append_record` (tensors and arrays as numbers, NaN/±inf kept). Raises ValueError, writing
    nothing, if ``config``/``metrics`` are not mappings or ``history`` is not a sequence of mappings."""
    if isinstance(history, pd.DataFrame):
        history = history.to_dict(orient="records")
    for name, value in (("config", config), ("metrics", metrics)):
        if not isinstance(value, Mapping):
            raise ValueError(f"record: {name} must be a mapping (dict), got {type(value).__name__}")
    if isinstance(history, (str, bytes, Mapping)) or not all(isinstance(h, Mapping) for h in history):
        raise ValueError("record: history must be a DataFrame or a sequence of dicts (one per checkpoint)")
    rec = {"key": key or config_key(config), "config": dict(config), "final": dict(metrics),
           "history": [dict(h) for h in history], "provenance": provenance(), **extra}
    append_record(store, rec)
    return _jsonable(rec)


# ----------------------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------------------
def run_config(config: Mapping, device: str = "auto", progress: bool | None = None) -> dict:
    """Train one resolved configuration (:func:`resolve_config`) and return its store record."""
    from .data import load_dataset
    from .models import make_model
    from .training import train

    data = load_dataset(**config["data"])
    opts = dict(config["model"])
    kind = opts.pop("kind")
    tr = dict(config["train"])
    model = make_model(kind, data.input_shape, data.n_outputs, seed=tr["seed"], **opts)
    every_epochs = tr.pop("track_every_epochs", None)
    if every_epochs is not None and tr.get("track_every") is None:
        tr["track_every"] = max(1, int(every_epochs * math.ceil(data.n_train / tr["batch_size"])))
    start = time.perf_counter()
    res = train(model, data, device=device, progress=progress, **tr)
    hist = res.history
    rows = hist.to_dict(orient="records")
    late = hist[hist.phase == "late"]
    info = {k: res.config.get(k) for k in ("diverged_at_step", "late_start_step", "reached_threshold", "steps_done",
                                           "measure_time")}
    info["measure_errors"] = hist.attrs.get("measure_errors", {})
    return {"key": config_key(config), "preset": config.get("preset"), "config": dict(config), "final": rows[-1],
            "matched": late.iloc[0].to_dict() if len(late) else None, "history": rows, "train_info": info,
            "diverged": res.diverged, "wall_time": time.perf_counter() - start,
            "conventions": {k: v for k, v in hist.attrs.items() if k != "measure_errors"},
            "provenance": provenance(res.config["device"])}


@dataclass
class SweepResult:
    """Keys of the runs done now (``ran``) and found in the store (``skipped``), the runs that raised now
    (``failures``: ``(configuration, "ErrorType: message")``; recorded as failed in the store and retried by the next
    sweep), and the store path."""

    store: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[dict, str]] = field(default_factory=list)


def _keyword_names(fn: Any, drop: Iterable[str] = ()) -> set[str] | None:
    """The keyword parameters of ``fn`` less ``drop``; None if it takes ``**kwargs`` (any name is accepted)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params) - set(drop)


def _train_problems(tr: Mapping[str, Any]) -> list[str]:
    """What :func:`~flatcomp_tutorial.training.train` (through :func:`run_config`) would refuse in the ``train``
    section of a resolved configuration, found without data (:func:`~flatcomp_tutorial.training.check_train_options`;
    ``track_every_epochs`` is the sweep's own option)."""
    from .training import check_train_options

    tr = dict(tr)
    every_epochs = tr.pop("track_every_epochs", None)
    if every_epochs is not None and not (is_real(every_epochs) and every_epochs > 0):
        return [f"track_every_epochs must be a positive number or None, got {every_epochs!r}"]
    try:
        check_train_options(**tr)
    except (ValueError, TypeError) as err:
        return [str(err)]
    return []


def _data_and_model_problems(cfg: Mapping, cache: dict) -> list[str]:
    """What would fail for ``cfg`` once its data are loaded: unknown data/model options, a dataset that cannot be
    loaded, a model that cannot be built for its inputs, and ``batch_size`` larger than the training set. Each
    distinct data (and model) configuration is loaded (built) once (``cache``)."""
    from . import models
    from .data import load_dataset
    from .models import make_model

    problems = []
    data_id = json.dumps(cfg["data"], sort_keys=True, default=str)
    if data_id not in cache:
        known = _keyword_names(load_dataset)
        unknown = sorted(set(cfg["data"]) - known) if known is not None else []
        if unknown:
            cache[data_id] = f"unknown data option(s) {unknown} (data.<option> or the preset's datasets); " \
                             f"known: {sorted(known)}"
        else:
            try:
                cache[data_id] = load_dataset(**cfg["data"])
            except (ValueError, TypeError, OSError) as err:
                cache[data_id] = f"the dataset {cfg['data']} cannot be loaded: {type(err).__name__}: {err}"
    data = cache[data_id]
    if isinstance(data, str):
        return [data]
    bs = cfg["train"].get("batch_size")
    if is_integer(bs) and bs > data.n_train:
        problems.append(f"batch_size={bs} is larger than the {data.n_train} training samples of dataset "
                        f"{cfg['dataset']!r}; use at most {data.n_train} (full-batch GD) or more data "
                        "(data.n_train)")
    opts = dict(cfg["model"])
    kind = opts.pop("kind", None)
    model_id = json.dumps([cfg["model"], data.input_shape, data.n_outputs], sort_keys=True, default=str)
    if model_id not in cache:
        builder = getattr(models, str(kind), None) if kind in ("mlp", "lenet", "vgg", "vit") else None
        known = _keyword_names(builder, drop=("input_shape", "n_out")) if callable(builder) else None
        unknown = sorted(set(opts) - known) if known is not None else []
        cache[model_id] = None
        if unknown:
            cache[model_id] = f"unknown model option(s) {unknown} for kind={kind!r} (model.<option> or the " \
                              f"preset's architectures); known: {sorted(known)}"
        else:
            try:
                make_model(kind, data.input_shape, data.n_outputs, seed=0, **opts)
            except (ValueError, TypeError) as err:
                cache[model_id] = f"the model {cfg['model']} cannot be built for inputs {tuple(data.input_shape)}: " \
                                  f"{type(err).__name__}: {err}"
    if cache[model_id]:
        problems.append(cache[model_id])
    return problems


def _raise_invalid(problems: list[tuple[Mapping, str]], n_configs: int) -> None:
    """One ValueError naming every distinct problem and (up to 3 of) the grid points that have it."""
    if not problems:
        return
    by_problem: dict[str, list[Mapping]] = {}
    for point, problem in problems:
        by_problem.setdefault(problem, []).append(point)
    n_bad = len({json.dumps(p, sort_keys=True, default=str) for p, _ in problems})
    lines = [f"  - {problem}\n      in {len(points)} configuration(s), e.g. {[dict(p) for p in points[:3]]}"
             for problem, points in by_problem.items()]
    raise ValueError(f"sweep: {n_bad} of {n_configs} configuration(s) are invalid; nothing was run:\n"
                     + "\n".join(lines))


def _check_store_writable(store: Path) -> None:
    """Create the store's folder and open the store for appending (creating it empty), or raise OSError."""
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    except OSError as err:
        raise OSError(f"sweep: the result store {store} cannot be opened for appending ({type(err).__name__}: "
                      f"{err}); pass store= a writable file path. Nothing was run.") from err


def sweep(grid: Mapping[str, Sequence] | Sequence[Mapping] | None = None, preset: str | Mapping = "cpu",
          store: str | Path | None = None, device: str = "auto", progress: bool | None = None,
          max_runs: int | None = None, threads: int | None = None) -> SweepResult:
    """Run every configuration of ``grid`` (default: the preset's grid) with ``preset``'s defaults and append each
    finished run to ``store`` (default ``results_dir()/<preset>.jsonl``). Configurations already in the store are
    skipped, so an interrupted sweep resumes where it stopped. ``max_runs`` caps the runs tried in this call.
    ``threads`` fixes torch's CPU threads during the sweep (small networks run fastest, and are least disturbed by
    other processes, with 1).

    Before the first run: every configuration is checked (unknown option names, types and ranges of the training
    options; for the configurations still to run, that the data load, the model builds for them and
    ``batch_size`` is at most the number of training samples, an error rather than a silent clip) and the store
    is opened for appending; any problem raises (ValueError, or OSError for the store) with nothing run. A run that
    raises at run time is appended as ``{"key", "config", "failed": true, "error", "traceback", ...}``, warned
    about and listed in ``SweepResult.failures``; the sweep goes on, and the next sweep retries it (failed records
    are not "done" and :func:`load_results` leaves them out)."""
    import torch

    if threads is not None:
        if not (is_integer(threads) and threads >= 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return sweep(grid, preset, store, device, progress, max_runs, None)
        finally:
            torch.set_num_threads(previous)
    if max_runs is not None and not (is_integer(max_runs) and max_runs >= 0):
        raise ValueError(f"max_runs must be an integer >= 0 or None (no cap), got {max_runs!r}")
    spec = _spec(preset)
    points = grid_configs(spec["grid"] if grid is None else grid)
    configs = [resolve_config(p, spec) for p in points]
    _raise_invalid([(p, problem) for p, cfg in zip(points, configs) for problem in _train_problems(cfg["train"])],
                   len(configs))
    store = Path(store) if store is not None else results_dir() / f"{spec['name']}.jsonl"
    _check_store_writable(store)
    done = {r["key"] for r in read_store(store)[0]}
    keys = [config_key(cfg) for cfg in configs]
    cache: dict = {}
    _raise_invalid([(p, problem) for p, cfg, key in zip(points, configs, keys) if key not in done
                    for problem in _data_and_model_problems(cfg, cache)], len(configs))
    cache.clear()
    result = SweepResult(store)
    from tqdm.auto import tqdm

    from .training import progress_enabled

    for point, cfg, key in tqdm(list(zip(points, configs, keys)), desc="sweep", disable=not progress_enabled(progress)):
        if key in done:
            result.skipped.append(key)
            continue
        if max_runs is not None and len(result.ran) + len(result.failures) >= max_runs:
            break
        start = time.perf_counter()
        try:
            rec = run_config(cfg, device=device, progress=False)
        except Exception as err:  # noqa: BLE001 - any run-time failure is recorded and the sweep goes on
            error = f"{type(err).__name__}: {err}"
            append_record(store, {"key": key, "preset": cfg.get("preset"), "config": cfg, "failed": True,
                                  "error": error, "traceback": traceback.format_exc()[-4000:],
                                  "wall_time": time.perf_counter() - start, "provenance": provenance()})
            warnings.warn(f"sweep: the run {key} {dict(point)} failed ({error}); recorded as failed in {store} and "
                          "left out of load_results; the sweep goes on and the next sweep retries it",
                          RuntimeWarning, stacklevel=2)
            result.failures.append((cfg, error))
            continue
        append_record(store, rec)
        done.add(key)
        result.ran.append(key)
    return result


def _spec(p: str | Mapping) -> dict:
    """A preset by name, or an already-built preset dict (from :func:`preset`)."""
    if isinstance(p, str):
        return preset(p)
    spec = dict(p)
    spec.setdefault("name", "custom")
    for section in ("datasets", "architectures", "train"):
        if section not in spec:
            raise ValueError(f"preset dict is missing the {section!r} section; build it with preset(name, ...)")
    spec.setdefault("grid", {})
    return spec


# ----------------------------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------------------------
_RESULT_FIELDS = ("final", "matched", "history", "diverged")


def _result_id(rec: Mapping) -> str:
    """Canonical text of a record's results (``final``, ``matched``, ``history``, ``diverged``; NaN equals NaN)."""
    return json.dumps({k: rec.get(k) for k in _RESULT_FIELDS}, sort_keys=True, allow_nan=True)


def load_results(store: str | Path) -> pd.DataFrame:
    """One row per run: ``key``, ``preset``, ``arch``, ``dataset``, every train option (``lr``, ``batch_size``,
    ``seed``, ...), ``diverged``, ``wall_time``, ``reached_threshold``, the final checkpoint's metrics (same names
    as the history columns; NaN and ±inf as stored) and ``history`` (a list of row dicts).

    ``attrs``: ``skipped_lines`` (unreadable or ill-typed lines, see :func:`read_store`); ``duplicate_keys``: later
    records of an already-seen key (left out: the FIRST record of a key is used); ``conflicting_keys``: those of
    them whose results differ from the first record's (warned about); ``failed_keys``: runs whose only records
    are failures (``"failed": true``; left out, warned about)."""
    records, bad = read_store(store, failed=True)
    ok = {r["key"] for r in records if not r.get("failed")}
    failed = list(dict.fromkeys(r["key"] for r in records if r.get("failed") and r["key"] not in ok))
    rows, first, duplicates, conflicts = [], {}, [], {}
    for r in records:
        if r.get("failed"):
            continue
        if r["key"] in first:  # two sweeps ran the same configuration at once: keep the first record
            duplicates.append(r["key"])
            if _result_id(r) != _result_id(first[r["key"]]):
                conflicts[r["key"]] = conflicts.get(r["key"], 0) + 1
            continue
        first[r["key"]] = r
        cfg = r.get("config", {})
        row = {"key": r["key"], "preset": r.get("preset") or cfg.get("preset"), "arch": cfg.get("arch"),
               "dataset": cfg.get("dataset")}
        row.update({k: v for k, v in cfg.get("train", {}).items() if not isinstance(v, (list, dict))})
        if "train" not in cfg:
            row.update({k: v for k, v in cfg.items() if not isinstance(v, (list, dict))})
        row.update(diverged=r.get("diverged"), wall_time=r.get("wall_time"),
                   reached_threshold=(r.get("train_info") or {}).get("reached_threshold"))
        row.update({k: (np.nan if v is None else v) for k, v in (r.get("final") or {}).items()})
        row["history"] = r.get("history", [])
        rows.append(row)
    if conflicts:
        warnings.warn(f"{store}: {len(conflicts)} key(s) have records with different results "
                      f"({', '.join(f'{k!r}: {n} later record(s)' for k, n in conflicts.items())}); load_results "
                      "uses the FIRST record of each key in the file (attrs['conflicting_keys'])", RuntimeWarning,
                      stacklevel=2)
    if failed:
        warnings.warn(f"{store}: {len(failed)} run(s) {failed} only have failed records (the run raised); they are "
                      "left out (attrs['failed_keys']) and the next sweep retries them", RuntimeWarning, stacklevel=2)
    df = pd.DataFrame(rows)
    df.attrs["skipped_lines"] = bad
    df.attrs["duplicate_keys"] = duplicates
    df.attrs["conflicting_keys"] = list(conflicts)
    df.attrs["failed_keys"] = failed
    df.attrs["store"] = str(store)
    return df


PHASES = ("final", "matched", "late", "early", "all")


def _rows_for_phase(results: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Checkpoint rows used by :func:`summarize`, with a ``_run`` column (the run's position). Diverged runs and
    runs whose ``history`` is not a list of dicts (or a DataFrame) are left out; the latter with a warning."""
    out, unusable = [], []
    for i, (_, run) in enumerate(results.iterrows()):
        diverged = run.get("diverged")
        if diverged is not None and pd.notna(diverged) and bool(diverged):
            continue
        hist = run.get("history")
        if isinstance(hist, pd.DataFrame):
            h = hist
        elif isinstance(hist, (list, tuple)) and all(isinstance(r, Mapping) for r in hist):
            h = pd.DataFrame(list(hist))
        else:
            unusable.append(run.get("key", i))
            continue
        if h.empty:
            continue
        if phase == "final":
            h = h.iloc[[-1]]
        elif phase == "matched":
            h = h[h.phase == "late"].iloc[:1] if "phase" in h else h.iloc[:0]
        elif phase in ("late", "early"):
            h = h[h.phase == phase] if "phase" in h else h.iloc[:0]
        out.append(h.assign(_run=i))
    if unusable:
        warnings.warn(f"summarize: {len(unusable)} run(s) {unusable[:10]} left out: their history is not a list of "
                      "checkpoint dicts", RuntimeWarning, stacklevel=3)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["_run"])


def _pearson(m: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of the columns of m (NaN where a column is constant)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.atleast_2d(np.corrcoef(m, rowvar=False))


def _spearman(m: np.ndarray) -> np.ndarray:
    """Spearman correlation matrix: Pearson of the column ranks (ties: average ranks; -inf ranks lowest, +inf
    highest)."""
    from scipy.stats import rankdata

    return _pearson(rankdata(m, axis=0))


#: (method, which values it can use, correlation matrix): Pearson needs finite values; Spearman only needs an order,
#: so ±inf (e.g. the log volume of a rank-deficient map, -inf) are valid extreme ranks; NaN is never usable.
_METHODS = (("pearson", np.isfinite, _pearson), ("spearman", lambda a: ~np.isnan(a), _spearman))


def _warn_non_finite(m: np.ndarray, cols: Sequence[str]) -> None:
    """One warning per column holding NaN or ±inf, with the counts and what each method does with them."""
    for k, c in enumerate(cols):
        v = m[:, k]
        counts = {"-inf": int(np.sum(v == -np.inf)), "+inf": int(np.sum(v == np.inf)), "NaN": int(np.isnan(v).sum())}
        if not any(counts.values()):
            continue
        what = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        warnings.warn(f"correlations: column {c!r} has {what} of {len(v)} value(s): NaN rows are left out of both "
                      "methods; ±inf rows are left out of Pearson and ranked lowest (-inf) / highest (+inf) by "
                      "Spearman (counts per pair in n_excluded)", RuntimeWarning, stacklevel=3)


def _estimate(m: np.ndarray, g: np.ndarray, corr: Any, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlation matrix of the columns of m (NaN if fewer than 3 rows) and ``n_boot`` bootstrap matrices from
    resampling whole groups ``g`` with replacement (NaN if fewer than 3 groups)."""
    k = m.shape[1]
    group_ids = np.unique(g)
    r = corr(m) if len(m) >= 3 else np.full((k, k), np.nan)
    boots = np.full((n_boot, k, k), np.nan)
    if len(group_ids) >= 3:
        idx_of = {gid: np.flatnonzero(g == gid) for gid in group_ids}
        rng = np.random.default_rng(seed)
        for b in range(n_boot):
            pick = np.concatenate([idx_of[gid] for gid in rng.choice(group_ids, size=len(group_ids))])
            boots[b] = corr(m[pick])
    return r, boots


def correlations(table: pd.DataFrame, x: Sequence[str], y: Sequence[str], groups: str | None = None,
                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Pearson and Spearman correlations of every column in ``x`` with every column in ``y`` over the rows of
    ``table``, each with a percentile bootstrap CI from ``n_boot`` resamples of the rows, or of whole ``groups``
    (e.g. runs) when a group column is named.

    Non-finite values, per (x, y) pair and method: a row with NaN in x or y is left out of both methods; a row with
    ±inf (e.g. ``mean_log_lvr = -inf``: a rank-deficient map has zero volume) is left out of Pearson (no finite
    mean) but kept by Spearman, which ranks -inf lowest and +inf highest. ``n_excluded`` counts the rows left out,
    and one warning per column names its NaN/±inf counts. Columns: ``x``, ``y``, ``method``, ``r``, ``ci_low``,
    ``ci_high``, ``n`` (rows used), ``n_groups``, ``n_excluded``. r is NaN, with a warning, where fewer than 3 rows
    remain or a column is constant over them; the CI is NaN, with a warning, where fewer than 3 groups remain.
    Chapters "Reproduction II" and "Beyond the paper"."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    missing = [c for c in (*x, *y, *([groups] if groups else [])) if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; available: {list(table.columns)}")
    cols = list(dict.fromkeys([*x, *y]))
    m = table[cols].astype(float).to_numpy()
    g_all = table[groups].to_numpy() if groups else np.arange(len(m))
    _warn_non_finite(m, cols)
    pairs = [(a, c) for a in x for c in y]
    lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    found: dict[tuple[str, str, str], dict] = {}
    few_rows, few_groups, undefined = [], [], []
    for method, usable, corr in _METHODS:
        ok = usable(m)
        by_mask: dict[bytes, tuple[np.ndarray, list[tuple[str, str]]]] = {}
        for a, c in pairs:
            mask = ok[:, cols.index(a)] & ok[:, cols.index(c)]
            by_mask.setdefault(mask.tobytes(), (mask, []))[1].append((a, c))
        for mask, same in by_mask.values():  # pairs that use the same rows are computed together
            sub_cols = list(dict.fromkeys(name for pair in same for name in pair))
            sub = m[mask][:, [cols.index(name) for name in sub_cols]]
            g = g_all[mask]
            n_groups = len(np.unique(g))
            r, boots = _estimate(sub, g, corr, n_boot, seed)
            for a, c in same:
                i, j = sub_cols.index(a), sub_cols.index(c)
                bs = boots[:, i, j]
                bs = bs[np.isfinite(bs)]
                if len(sub) < 3:
                    few_rows.append(f"{a}/{c} {method}: {len(sub)}")
                elif not np.isfinite(r[i, j]):
                    undefined.append(f"{a}/{c} {method}")
                elif n_boot and n_groups < 3:
                    few_groups.append(f"{a}/{c} {method}: {n_groups}")
                found[a, c, method] = {"x": a, "y": c, "method": method, "r": float(r[i, j]),
                                       "ci_low": float(np.percentile(bs, lo)) if len(bs) else np.nan,
                                       "ci_high": float(np.percentile(bs, hi)) if len(bs) else np.nan,
                                       "n": int(len(sub)), "n_groups": int(n_groups),
                                       "n_excluded": int(len(m) - len(sub))}
    if few_rows:
        warnings.warn(f"correlations: too few usable rows for {few_rows}; r needs at least 3 (NaN returned).",
                      stacklevel=2)
    if undefined:
        warnings.warn(f"correlations: r is undefined (NaN returned) for {undefined}: a column is constant over the "
                      "rows used.", stacklevel=2)
    if few_groups:
        warnings.warn(f"correlations: only {few_groups} {'group' if groups else 'row'}(s) to resample for these "
                      "pairs; the bootstrap needs at least 3 (CI returned as NaN).", stacklevel=2)
    out = [found[a, c, method] for a, c in pairs for method, _, _ in _METHODS]
    df = pd.DataFrame(out, columns=["x", "y", "method", "r", "ci_low", "ci_high", "n", "n_groups", "n_excluded"])
    df.attrs.update(n_boot=n_boot, ci=ci, resampling=f"bootstrap over {'groups ' + repr(groups) if groups else 'rows'}"
                    " (percentile interval)")
    return df


def summarize(results: pd.DataFrame, sharpness: Sequence[str] = ("lambda_max", "trace_h", "relative_flatness",
                                                                 "adaptive_sharpness"),
              compression: Sequence[str] = ("mean_log_lvr", "mean_mls", "mean_local_dim", "nmls"),
              phase: str = "matched", n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Pearson and Spearman correlations between every (sharpness, compression) pair, with bootstrap CIs.

    ``phase`` chooses the checkpoints (one point per run unless stated): ``"matched"`` the first checkpoint with
    training loss below the run's ``late_phase_threshold`` (matched training loss; runs that never reached it are
    left out), ``"final"`` the last checkpoint, ``"late"``/``"early"``/``"all"`` every checkpoint of that phase of
    every run (several points per run). Diverged runs are left out. The CI is the percentile interval of
    ``n_boot`` bootstrap resamples of RUNS (all of a run's checkpoints move together; :func:`correlations`).
    NaN and ±inf values (a log volume of -inf) are handled per pair as in :func:`correlations`: left out of Pearson
    (±inf, NaN) or Spearman (NaN only), counted in ``n_excluded`` and warned about.
    Columns: ``sharpness``, ``compression``, ``method``, ``r``, ``ci_low``, ``ci_high``, ``n`` (checkpoints),
    ``n_runs``, ``n_excluded`` (checkpoints left out), ``phase``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    rows = _rows_for_phase(results, phase)
    missing = [c for c in (*sharpness, *compression) if c not in rows.columns]
    s_cols = [c for c in sharpness if c in rows.columns]
    c_cols = [c for c in compression if c in rows.columns]
    columns = ["sharpness", "compression", "method", "r", "ci_low", "ci_high", "n", "n_runs", "n_excluded", "phase"]
    if s_cols and c_cols and len(rows):
        df = correlations(rows, s_cols, c_cols, groups="_run", n_boot=n_boot, seed=seed, ci=ci)
        df = df.rename(columns={"x": "sharpness", "y": "compression", "n_groups": "n_runs"}).assign(phase=phase)
        df = df[columns]
    else:
        df = pd.DataFrame(columns=columns)
    df.attrs.update(phase=phase, missing_columns=missing, n_boot=n_boot, ci=ci,
                    resampling="bootstrap over runs (percentile interval)",
                    excluded_runs=int(len(results) - (rows["_run"].nunique() if len(rows) else 0)))
    return df


def checkpoint_correlations(history: pd.DataFrame, phase: str = "late",
                            sharpness: Sequence[str] = ("trace_g", "trace_h", "lambda_max"),
                            compression: Sequence[str] = ("mean_mls", "mean_log_lvr", "mean_local_dim"),
                            n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Correlations over the checkpoints of ONE run's history (rows with ``phase == phase``; ``"all"``: every row),
    with a percentile bootstrap over checkpoints (:func:`correlations`). Checkpoints of one trajectory are
    autocorrelated, so these intervals are optimistic (too narrow): they measure how stable the rank order along
    the trajectory is, not independent replication (for that, :func:`summarize` over runs). NaN and ±inf
    checkpoints are handled as in :func:`correlations` (counted in ``n_excluded``, warned about). Columns as
    :func:`summarize`, with ``n_checkpoints``. Chapter "Reproduction I, the late phase"."""
    if phase != "all" and phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    h = history if phase == "all" else history[history["phase"] == phase]
    s_cols = [c for c in sharpness if c in h.columns]
    c_cols = [c for c in compression if c in h.columns]
    out = correlations(h, s_cols, c_cols, n_boot=n_boot, seed=seed)
    return (out.rename(columns={"x": "sharpness", "y": "compression", "n": "n_checkpoints"})
               .drop(columns="n_groups").assign(phase=phase))
