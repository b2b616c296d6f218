"""Sweeps over learning rate × batch size × seed × architecture × dataset, a resumable JSON Lines result store, and
correlation summaries between sharpness and compression (THEORY §6; chapter "Reproducing the paper").

Store format: one JSON object per line and per finished run::

    {"key": ..., "preset": ..., "config": {...}, "final": {...}, "matched": {...} | null, "history": [{...}, ...],
     "train_info": {...}, "diverged": bool, "wall_time": s, "provenance": {...}}

``key`` is a hash of the run's full configuration (:func:`config_key`); a sweep skips every configuration whose key
is already in the store, so re-running a killed sweep resumes it. Each record is appended with ONE ``os.write`` on a
file opened with ``O_APPEND`` followed by ``fsync`` (:func:`append_record`), so a crash leaves at worst one
truncated line, which :func:`read_store` skips and reports.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["PRESETS", "preset", "grid_configs", "resolve_config", "config_key", "run_config", "sweep", "SweepResult",
           "append_record", "record", "read_store", "load_results", "summarize", "correlations",
           "checkpoint_correlations", "provenance", "results_dir"]

_SWEEP_MEASURES = ["lambda_max", "trace_h", "trace_g", "relative_flatness", "adaptive_sharpness", "local", "nmls",
                   "global_pr"]

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
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None  # strict JSON: NaN/inf -> null
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def append_record(store: str | Path, rec: Mapping) -> None:
    """Append ``rec`` as one JSON line: a single ``os.write`` of the whole encoded line on a file opened with
    ``O_APPEND``, then ``fsync``. If the file ends in a truncated line (a crash), the new record starts on a new
    line so that only the truncated one is lost."""
    path = Path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_jsonable(rec), allow_nan=False, separators=(",", ":")).encode() + b"\n"
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


def read_store(store: str | Path, warn: bool = True) -> tuple[list[dict], list[int]]:
    """All complete records of ``store`` and the 1-based numbers of the lines that were skipped (truncated or not
    JSON: a run killed while writing). A missing store has no records."""
    path = Path(store)
    if not path.exists():
        return [], []
    records, bad = [], []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or "key" not in rec:
                    raise ValueError("not a record")
                records.append(rec)
            except ValueError:
                bad.append(i)
    if bad and warn:
        warnings.warn(f"{path}: skipped {len(bad)} truncated or unreadable line(s) {bad} (a run killed while "
                      "writing); those runs will be redone by the next sweep", RuntimeWarning, stacklevel=2)
    return records, bad


def record(store: str | Path, config: Mapping, metrics: Mapping, history: Sequence[Mapping] | pd.DataFrame = (),
           key: str | None = None, **extra: Any) -> dict:
    """Append a run's result from anywhere (e.g. the last cell of a chapter run by :mod:`flatcomp_tutorial.batch`):
    ``{"key": key or config_key(config), "config", "final": metrics, "history", "provenance", **extra}``."""
    if isinstance(history, pd.DataFrame):
        history = history.to_dict(orient="records")
    rec = {"key": key or config_key(config), "config": dict(config), "final": dict(metrics),
           "history": list(history), "provenance": provenance(), **extra}
    append_record(store, rec)
    return rec


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
    """Keys of the runs done now (``ran``) and found in the store (``skipped``), and the store path."""

    store: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def sweep(grid: Mapping[str, Sequence] | Sequence[Mapping] | None = None, preset: str | Mapping = "cpu",
          store: str | Path | None = None, device: str = "auto", progress: bool | None = None,
          max_runs: int | None = None, threads: int | None = None) -> SweepResult:
    """Run every configuration of ``grid`` (default: the preset's grid) with ``preset``'s defaults and append each
    finished run to ``store`` (default ``results_dir()/<preset>.jsonl``). Configurations already in the store are
    skipped, so an interrupted sweep resumes where it stopped. ``max_runs`` caps the runs done in this call.
    ``threads`` fixes torch's CPU threads during the sweep (small networks run fastest, and are least disturbed by
    other processes, with 1)."""
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads}")
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return sweep(grid, preset, store, device, progress, max_runs, None)
        finally:
            torch.set_num_threads(previous)
    spec = _spec(preset)
    points = grid_configs(spec["grid"] if grid is None else grid)
    configs = [resolve_config(p, spec) for p in points]
    store = Path(store) if store is not None else results_dir() / f"{spec['name']}.jsonl"
    done = {r["key"] for r in read_store(store)[0]}
    result = SweepResult(store)
    from tqdm.auto import tqdm

    from .training import progress_enabled

    for cfg in tqdm(configs, desc="sweep", disable=not progress_enabled(progress)):
        key = config_key(cfg)
        if key in done:
            result.skipped.append(key)
            continue
        if max_runs is not None and len(result.ran) >= max_runs:
            break
        append_record(store, run_config(cfg, device=device, progress=False))
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
def load_results(store: str | Path) -> pd.DataFrame:
    """One row per run: ``key``, ``preset``, ``arch``, ``dataset``, every train option (``lr``, ``batch_size``,
    ``seed``, ...), ``diverged``, ``wall_time``, ``reached_threshold``, the final checkpoint's metrics (same names
    as the history columns) and ``history`` (a list of row dicts). ``attrs["skipped_lines"]``: unreadable lines;
    ``attrs["duplicate_keys"]``: later records of an already-seen key (left out)."""
    records, bad = read_store(store)
    rows, seen, duplicates = [], set(), []
    for r in records:
        if r["key"] in seen:  # two sweeps ran the same configuration at once: keep the first record
            duplicates.append(r["key"])
            continue
        seen.add(r["key"])
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
    df = pd.DataFrame(rows)
    df.attrs["skipped_lines"] = bad
    df.attrs["duplicate_keys"] = duplicates
    df.attrs["store"] = str(store)
    return df


PHASES = ("final", "matched", "late", "early", "all")


def _rows_for_phase(results: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Checkpoint rows used by :func:`summarize`, with a ``_run`` column (the run's position)."""
    out = []
    for i, (_, run) in enumerate(results.iterrows()):
        diverged = run.get("diverged")
        if diverged is not None and pd.notna(diverged) and bool(diverged):
            continue
        h = pd.DataFrame(run["history"])
        if h.empty:
            continue
        if phase == "final":
            h = h.iloc[[-1]]
        elif phase == "matched":
            h = h[h.phase == "late"].iloc[:1] if "phase" in h else h.iloc[:0]
        elif phase in ("late", "early"):
            h = h[h.phase == phase] if "phase" in h else h.iloc[:0]
        out.append(h.assign(_run=i))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["_run"])


def _corr(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman correlation matrices of the columns of m (NaN where a column is constant)."""
    from scipy.stats import rankdata

    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(m, rowvar=False), np.corrcoef(rankdata(m, axis=0), rowvar=False)


def correlations(table: pd.DataFrame, x: Sequence[str], y: Sequence[str], groups: str | None = None,
                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Pearson and Spearman correlations of every column in ``x`` with every column in ``y`` over the rows of
    ``table`` (rows with a non-finite value in any of these columns are dropped), each with a percentile bootstrap
    CI from ``n_boot`` resamples of the rows, or of whole ``groups`` (e.g. runs) when a group column is named.
    Columns: ``x``, ``y``, ``method``, ``r``, ``ci_low``, ``ci_high``, ``n`` (rows), ``n_groups``. NaN where fewer
    than 3 rows (r) or groups (CI) remain. Chapters "Reproduction II" and "Beyond the paper"."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    missing = [c for c in (*x, *y, *([groups] if groups else [])) if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; available: {list(table.columns)}")
    cols = list(dict.fromkeys([*x, *y]))
    m = table[cols].astype(float).to_numpy()
    keep = np.isfinite(m).all(axis=1)
    m = m[keep]
    g = table[groups].to_numpy()[keep] if groups else np.arange(len(m))
    group_ids = np.unique(g)
    idx_of = {r: np.flatnonzero(g == r) for r in group_ids}
    if len(m) < 3:
        warnings.warn(f"correlations: only {len(m)} row(s) with finite {cols}; r needs at least 3 (NaN returned).",
                      stacklevel=2)
    elif n_boot and len(group_ids) < 3:
        warnings.warn(f"correlations: only {len(group_ids)} {'group' if groups else 'row'}(s) to resample; the "
                      "bootstrap needs at least 3 (CI returned as NaN).", stacklevel=2)
    pear, spear = _corr(m) if len(m) >= 3 else (np.full((len(cols),) * 2, np.nan),) * 2
    rng = np.random.default_rng(seed)
    boots = np.full((n_boot, 2, len(cols), len(cols)), np.nan)
    if len(group_ids) >= 3:
        for b in range(n_boot):
            pick = np.concatenate([idx_of[r] for r in rng.choice(group_ids, size=len(group_ids))])
            boots[b] = _corr(m[pick])
    lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    out = []
    for a in x:
        for c in y:
            i, j = cols.index(a), cols.index(c)
            for k, (method, mat) in enumerate((("pearson", pear), ("spearman", spear))):
                bs = boots[:, k, i, j]
                bs = bs[np.isfinite(bs)]
                out.append({"x": a, "y": c, "method": method, "r": float(mat[i, j]),
                            "ci_low": float(np.percentile(bs, lo)) if len(bs) else np.nan,
                            "ci_high": float(np.percentile(bs, hi)) if len(bs) else np.nan,
                            "n": int(len(m)), "n_groups": int(len(group_ids))})
    df = pd.DataFrame(out, columns=["x", "y", "method", "r", "ci_low", "ci_high", "n", "n_groups"])
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
    Columns: ``sharpness``, ``compression``, ``method``, ``r``, ``ci_low``, ``ci_high``, ``n`` (checkpoints),
    ``n_runs``, ``phase``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    rows = _rows_for_phase(results, phase)
    missing = [c for c in (*sharpness, *compression) if c not in rows.columns]
    s_cols = [c for c in sharpness if c in rows.columns]
    c_cols = [c for c in compression if c in rows.columns]
    columns = ["sharpness", "compression", "method", "r", "ci_low", "ci_high", "n", "n_runs", "phase"]
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
    the trajectory is, not independent replication (for that, :func:`summarize` over runs). Columns as
    :func:`summarize`, with ``n_checkpoints``. Chapter "Reproduction I, the late phase"."""
    if phase != "all" and phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    h = history if phase == "all" else history[history["phase"] == phase]
    s_cols = [c for c in sharpness if c in h.columns]
    c_cols = [c for c in compression if c in h.columns]
    out = correlations(h, s_cols, c_cols, n_boot=n_boot, seed=seed)
    return (out.rename(columns={"x": "sharpness", "y": "compression", "n": "n_checkpoints"})
               .drop(columns="n_groups").assign(phase=phase))
