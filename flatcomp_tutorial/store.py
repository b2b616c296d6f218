"""The resumable JSON Lines result store of sweeps and batch runs, with the provenance of every record (chapter
"Reproducing the paper").

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

import hashlib
import json
import numbers
import os
import platform
import re
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["config_key", "results_dir", "shipped_store", "results_store", "provenance",
           "jsonable", "append_record", "read_store", "record", "load_results"]

_NOT_IN_KEY = ("root", "download")  # where data lives does not change a run


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


def shipped_store(name: str) -> Path | None:
    """The result store ``name`` (e.g. ``"cpu_sweep.jsonl"``) shipped inside the package
    (``flatcomp_tutorial/results/``, package data), or None if the package ships no store of that name."""
    path = Path(__file__).resolve().parent / "results" / _store_name(name)
    return path if path.is_file() else None


def _store_name(name: str) -> str:
    if not isinstance(name, str) or not name.endswith(".jsonl") or Path(name).name != name or name == ".jsonl":
        raise ValueError(f"name must be a store file name ending in .jsonl, without folders (e.g. "
                         f"'cpu_sweep.jsonl'), got {name!r}; pass a full path to fc.sweep(store=...) instead")
    return name


def results_store(name: str) -> Path:
    """``results_dir() / name``, holding the book's own runs: where the package ships a store of that name
    (:func:`shipped_store`), every shipped record whose key the local store lacks is appended to it first (with
    :func:`append_record`). In a checkout the local store *is* the shipped file and nothing is copied; from an
    installed package (e.g. Colab) the chapters thus find the book's runs instead of retraining them, and new runs go
    to a writable copy under ``$FLATCOMP_DATA`` or the user cache (chapter "Running at paper scale")."""
    path = results_dir() / _store_name(name)
    shipped = shipped_store(name)
    if shipped is None or (path.exists() and path.resolve() == shipped.resolve()):
        return path
    have = {r["key"] for r in read_store(path, warn=False)[0]}
    missing = [r for r in read_store(shipped)[0] if r["key"] not in have]
    if missing:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for rec in missing:
                append_record(path, rec)
        except OSError as err:
            raise OSError(f"cannot write the result store {path} ({err}); set $FLATCOMP_DATA to a writable folder "
                          "(on Colab e.g. a folder in your mounted Google Drive)") from err
    return path


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


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: mappings -> dicts (string keys), tuples/lists -> lists, torch tensors and numpy
    arrays -> numbers (0-d) or nested lists of numbers (detached, moved to the CPU), numpy scalars -> Python
    numbers. Floats stay floats, ±inf and NaN included (written as ``Infinity``/``-Infinity``/``NaN``, see
    :func:`append_record`). Anything else that is not a number (a ``Path``, a ``torch.dtype``) is written as its
    ``str``; complex numbers are refused (TypeError)."""
    import torch

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        if obj.is_complex():
            raise TypeError(f"the result store holds real numbers only, got a complex tensor of shape "
                            f"{tuple(obj.shape)}")
        return jsonable(obj.item() if obj.dim() == 0 else obj.tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.item() if obj.ndim == 0 else obj.tolist())
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

    Encoding: tensors, numpy arrays and numpy scalars become numbers or lists of numbers (:func:`jsonable`);
    non-finite floats are written as Python's JSON extension tokens ``NaN``, ``Infinity`` and ``-Infinity``
    (``json.dumps(allow_nan=True)``), which ``json.loads`` (and so :func:`read_store`) reads back as the same
    float, so NaN and ±inf survive the round trip exactly (other JSON parsers may need an option for them).
    A record that :func:`read_store` would skip (e.g. ``final`` not an object) is refused with a ValueError."""
    path = Path(store)
    clean = jsonable(rec)
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
    written by :func:`~flatcomp_tutorial.sweeps.sweep`) are left out unless ``failed=True``.

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
    return jsonable(rec)


_RESULT_FIELDS = ("final", "matched", "history", "diverged")


def _result_id(rec: Mapping) -> str:
    """Canonical text of a record's results (``final``, ``matched``, ``history``, ``diverged``; NaN equals NaN)."""
    return json.dumps({k: rec.get(k) for k in _RESULT_FIELDS}, sort_keys=True, allow_nan=True)


def load_results(store: str | Path) -> pd.DataFrame:
    """One row per run: ``key``, ``preset``, ``arch``, ``dataset``, every train option (``lr``, ``batch_size``,
    ``seed``, ...), ``diverged``, ``wall_time``, ``reached_threshold``, the final checkpoint's metrics (same names
    as the history columns; NaN and ±inf as stored), ``measure_version`` (the estimator settings of its measures,
    :func:`~flatcomp_tutorial.measures.measure_descriptions`; 1 for records written before versions were recorded)
    and ``history`` (a list of row dicts); runs with robustness results (:func:`~flatcomp_tutorial.sweeps.run_config`)
    add their columns and ``radii`` (a dict of per-input numpy arrays).

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
        info = r.get("train_info") or {}
        row.update(diverged=r.get("diverged"), wall_time=r.get("wall_time"),
                   reached_threshold=info.get("reached_threshold"),
                   measure_version=info.get("measure_version", row.get("measure_version", 1)))
        row.update({k: (np.nan if v is None else v) for k, v in (r.get("final") or {}).items()})
        row.update({k: (np.nan if v is None else v) for k, v in (r.get("robustness") or {}).items()})
        row["history"] = r.get("history", [])
        if "radii" in r:
            row["radii"] = {k: np.asarray(v, dtype=float) for k, v in r["radii"].items()}
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
