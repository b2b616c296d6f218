"""Sweeps over learning rate × batch size × seed × architecture × dataset (chapter "Reproducing the paper"): every
configuration of a grid is checked before the first run, then trained and appended to the result store
(:mod:`flatcomp_tutorial.store`), skipping those already there, so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import models, robustness, runtime, training
from .checks import check_count, check_real, is_integer, is_real
from .data import load_dataset
from .history import matched_row
from .presets import grid_configs, preset_spec, resolve_config
from .store import jsonable, append_record, config_key, provenance, read_store, results_dir

__all__ = ["run_config", "SweepResult", "sweep"]


def run_config(config: Mapping, device: str = "auto", progress: bool | None = None) -> dict:
    """Train one resolved configuration (:func:`~flatcomp_tutorial.presets.resolve_config`) and return its store
    record (format: :mod:`flatcomp_tutorial.store`); ``matched`` is the run's matched-loss row
    (:func:`~flatcomp_tutorial.history.matched_row`). A configuration with a ``robustness`` section (options of
    :func:`~flatcomp_tutorial.robustness.robustness_measures`) also attacks the trained network on the test inputs,
    with the training inputs as anchors: the record then holds ``robustness`` (its row) and ``radii`` (the
    per-input arrays)."""
    data = load_dataset(**config["data"])
    opts = dict(config["model"])
    kind = opts.pop("kind")
    tr = dict(config["train"])
    model = models.make_model(kind, data.input_shape, data.n_outputs, seed=tr["seed"], **opts)
    every_epochs = tr.pop("track_every_epochs", None)
    if every_epochs is not None and tr.get("track_every") is None:
        tr["track_every"] = max(1, int(every_epochs * math.ceil(data.n_train / tr["batch_size"])))
    start = time.perf_counter()
    res = training.train(model, data, device=device, progress=progress, **tr)
    hist = res.history
    rows = hist.to_dict(orient="records")
    info = {k: res.config.get(k) for k in ("diverged_at_step", "late_start_step", "reached_threshold", "steps_done",
                                           "measure_time")}
    info["measure_errors"] = hist.attrs.get("measure_errors", {})
    rec = {"key": config_key(config), "preset": config.get("preset"), "config": dict(config), "final": rows[-1],
           "matched": matched_row(hist), "history": rows, "train_info": info,
           "diverged": res.diverged, "wall_time": None,
           "conventions": {k: v for k, v in hist.attrs.items() if k != "measure_errors"},
           "provenance": provenance(res.config["device"])}
    if config.get("robustness"):
        on = next(res.model.parameters()).device
        rob = robustness.robustness_measures(res.model, data.x_test.to(on), data.labels_test.to(on),
                                             anchors=data.x_train.to(on), **config["robustness"])
        rec.update(robustness=rob.row, radii=rob.radii)
    rec["wall_time"] = time.perf_counter() - start
    return rec


def _robustness_problems(options: Any) -> list[str]:
    """What :func:`run_config` would refuse in a configuration's ``robustness`` section, before any training."""
    if not options:
        return []
    known = {"eps", "eps_max", "steps", "bisection"}
    if not isinstance(options, Mapping) or set(options) - known or not {"eps", "eps_max"} <= set(options):
        return [f"robustness must be a dict with eps and eps_max (and optionally steps, bisection), got {options!r}"]
    try:
        eps = check_real(options["eps"], "robustness eps (the attack radius)")
        eps_max = check_real(options["eps_max"], "robustness eps_max (the largest radius searched)")
        for name in ("steps", "bisection"):
            check_count(options.get(name, 1), f"robustness {name}")
    except ValueError as err:
        return [str(err)]
    return [] if eps_max >= eps else [f"robustness eps_max ({eps_max:g}) must be >= eps ({eps:g})"]


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
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params) - set(drop)


def _train_problems(tr: Mapping[str, Any]) -> list[str]:
    """What :func:`~flatcomp_tutorial.training.train` (through :func:`run_config`) would refuse in the ``train``
    section of a resolved configuration, found without data (:func:`~flatcomp_tutorial.training.check_train_options`;
    ``track_every_epochs`` is the sweep's own option)."""
    tr = dict(tr)
    every_epochs = tr.pop("track_every_epochs", None)
    if every_epochs is not None and not (is_real(every_epochs) and every_epochs > 0):
        return [f"track_every_epochs must be a positive number or None, got {every_epochs!r}"]
    try:
        training.check_train_options(**tr)
    except (ValueError, TypeError) as err:
        return [str(err)]
    return []


def _data_and_model_problems(cfg: Mapping, cache: dict) -> list[str]:
    """What would fail for ``cfg`` once its data are loaded: unknown data/model options, a dataset that cannot be
    loaded, a model that cannot be built for its inputs, and ``batch_size`` larger than the training set. Each
    distinct data (and model) configuration is loaded (built) once (``cache``)."""
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
        unknown = sorted(set(opts) - known - {"dtype"}) if known is not None else []   # dtype: make_model's own
        cache[model_id] = None
        if unknown:
            cache[model_id] = f"unknown model option(s) {unknown} for kind={kind!r} (model.<option> or the " \
                              f"preset's architectures); known: {sorted(known)}"
        else:
            try:
                models.make_model(kind, data.input_shape, data.n_outputs, seed=0, **opts)
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
          max_runs: int | None = None, threads: int | None = None, executor: Any = None) -> SweepResult:
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
    are not "done" and :func:`~flatcomp_tutorial.store.load_results` leaves them out).

    ``executor``: None runs the configurations one after another in this process. Otherwise any
    ``concurrent.futures``-style executor (an object whose ``submit(fn, *args)`` returns futures with
    ``.result()``): a ``ProcessPoolExecutor``, a ``ThreadPoolExecutor`` or a ``dask.distributed.Client``. The
    workers only train and measure (``_run_remote``: ``threads`` is applied on the worker, and a run that raises
    comes back as a failure instead of raising); this process alone writes the store, appending each run as soon
    as its result arrives, so nothing is written concurrently (no shared file system is needed) and a finished run
    is never lost if this process is killed later: the next sweep skips it and submits only the rest. ``max_runs``
    caps the runs submitted. The records are those of the sequential sweep (apart from ``wall_time`` and the
    worker's ``provenance``), in the order the runs finish; ``ran`` and ``failures`` follow that order too. For
    example::

        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=2) as pool:
            sweep(grid, "cpu", executor=pool, threads=1)

        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
            sweep(grid, "cpu", executor=client, threads=1)

    On a SLURM cluster the same ``Client`` can run on batch jobs through ``dask_jobqueue.SLURMCluster``, or
    ``submitit``'s ``AutoExecutor`` can serve as the executor; the workers need this package importable (and
    the datasets reachable), the store stays on the machine that calls ``sweep``."""
    with runtime.threads(threads):
        if max_runs is not None and not (is_integer(max_runs) and max_runs >= 0):
            raise ValueError(f"max_runs must be an integer >= 0 or None (no cap), got {max_runs!r}")
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise ValueError("executor must be a concurrent.futures-style executor with .submit(fn, *args) "
                             "returning futures with .result() (e.g. concurrent.futures.ProcessPoolExecutor or a "
                             f"dask.distributed.Client), or None to run in this process; got {executor!r}")
        store, runs, done = _planned_runs(grid, preset_spec(preset), store)
        result = SweepResult(store)
        _sweep_on(_InProcess() if executor is None else executor, runs, done, result, device, threads, max_runs,
                  progress)
    return result


def _planned_runs(grid: Mapping[str, Sequence] | Sequence[Mapping] | None, spec: Mapping,
                  store: str | Path | None) -> tuple[Path, list[tuple[dict, dict, str]], set[str]]:
    """The store path, the ``(grid point, configuration, key)`` of every run of the grid, and the keys the store
    already holds, once everything that can be refused before the first run has been checked: the training
    options of every configuration, that the store can be appended to, and the data and models of the runs still
    to do (ValueError naming every problem, or OSError for the store)."""
    points = grid_configs(spec["grid"] if grid is None else grid)
    configs = [resolve_config(p, spec) for p in points]
    _raise_invalid([(p, problem) for p, cfg in zip(points, configs)
                    for problem in _train_problems(cfg["train"]) + _robustness_problems(cfg.get("robustness"))],
                   len(configs))
    store = Path(store) if store is not None else results_dir() / f"{spec['name']}.jsonl"
    _check_store_writable(store)
    done = {r["key"] for r in read_store(store)[0]}
    keys = [config_key(cfg) for cfg in configs]
    cache: dict = {}
    _raise_invalid([(p, problem) for p, cfg, key in zip(points, configs, keys) if key not in done
                    for problem in _data_and_model_problems(cfg, cache)], len(configs))
    return store, list(zip(points, configs, keys)), done


def _append_failure(point: Mapping, cfg: dict, key: str, store: Path, error: str, trace: str,
                    wall_time: float | None) -> None:
    """Append the failed record of a run and warn (the warning points at the caller of :func:`sweep`)."""
    append_record(store, {"key": key, "preset": cfg.get("preset"), "config": cfg, "failed": True,
                          "error": error, "traceback": trace, "wall_time": wall_time, "provenance": provenance()})
    warnings.warn(f"sweep: the run {key} {dict(point)} failed ({error}); recorded as failed in {store} and "
                  "left out of load_results; the sweep goes on and the next sweep retries it",
                  RuntimeWarning, stacklevel=4)


class _Deferred:
    """The future of :class:`_InProcess`: the call runs when its result is first asked for."""

    def __init__(self, fn: Any, args: tuple) -> None:
        self._fn, self._args = fn, args

    def result(self) -> Any:
        return self._fn(*self._args)

    def cancel(self) -> bool:
        return False


class _InProcess:
    """The executor of a sweep without one: ``submit`` defers the call to this process, and
    :func:`_as_completed` asks for the results in submission order, so each run is trained, measured and appended
    before the next one starts (the sequential sweep is the executor path with this executor)."""

    def submit(self, fn: Any, *args: Any) -> _Deferred:
        return _Deferred(fn, args)


def _run_remote(cfg: dict, device: str, threads: int | None) -> tuple:
    """What an executor's worker (or this process, without an executor) runs for one configuration: train and
    measure it with torch's CPU threads set to ``threads``, and return ``("ok", record)`` (the record as plain
    JSON values, so it unpickles anywhere) or, if the run raised, ``("failed", "ErrorType: message", traceback,
    wall_time)``. It never raises for a failed run and never touches the store."""
    start = time.perf_counter()
    try:
        with runtime.threads(threads):
            return "ok", jsonable(run_config(cfg, device=device, progress=False))
    except Exception as err:  # noqa: BLE001 - returned to the driver, which records it
        return "failed", f"{type(err).__name__}: {err}", traceback.format_exc()[-4000:], time.perf_counter() - start


def _sweep_on(executor: Any, runs: list[tuple[dict, dict, str]], done: set[str], result: SweepResult,
              device: str, threads: int | None, max_runs: int | None, progress: bool | None) -> None:
    """The run loop of :func:`sweep` (with :class:`_InProcess` when no executor is given): submit the runs not in
    ``done`` (at most ``max_runs``; a configuration that appears twice in the grid is submitted once and skipped
    the second time), then append each result to the store as it arrives. If this process stops here (an
    interrupt, a store that cannot be written), the runs not yet started are cancelled."""
    from tqdm.auto import tqdm

    submitted: dict[Any, tuple[dict, dict, str]] = {}
    keys: set[str] = set()
    try:
        for point, cfg, key in runs:
            if key in done or key in keys:
                result.skipped.append(key)
                continue
            if max_runs is not None and len(submitted) >= max_runs:
                break
            submitted[executor.submit(_run_remote, cfg, device, threads)] = (point, cfg, key)
            keys.add(key)
        with tqdm(total=len(submitted), desc="sweep", disable=not runtime.progress_enabled(progress)) as bar:
            for future in _as_completed(list(submitted)):
                point, cfg, key = submitted[future]
                try:
                    outcome = future.result()
                except Exception as err:  # noqa: BLE001 - the executor lost the run (a worker died, ...)
                    outcome = ("failed", f"{type(err).__name__}: {err} (raised by the executor, not the run)",
                               traceback.format_exc()[-4000:], None)
                if outcome[0] == "ok":
                    append_record(result.store, outcome[1])
                    result.ran.append(key)
                else:
                    _, error, trace, wall_time = outcome
                    _append_failure(point, cfg, key, result.store, error, trace, wall_time)
                    result.failures.append((cfg, error))
                bar.update(1)
    except BaseException:
        for future in submitted:
            future.cancel()
        raise


def _as_completed(futures: list) -> Iterable:
    """``futures`` in the order they finish: ``concurrent.futures.as_completed`` for standard-library futures,
    ``distributed.as_completed`` for dask futures (dask is imported only then); other futures are polled through
    their ``done()``, or, without one, waited for in submission order."""
    import concurrent.futures

    if all(isinstance(f, concurrent.futures.Future) for f in futures):
        yield from concurrent.futures.as_completed(futures)
        return
    if futures and all(type(f).__module__.split(".")[0] == "distributed" for f in futures):
        from distributed import as_completed

        yield from as_completed(futures)
        return
    pending = list(futures)
    if not all(callable(getattr(f, "done", None)) for f in pending):
        yield from pending
        return
    while pending:
        ready, waiting = [], []
        for f in pending:
            (ready if f.done() else waiting).append(f)
        yield from ready
        pending = waiting
        if not ready:
            time.sleep(0.05)
