"""Run a chapter notebook once per configuration with papermill and collect one result record per run.

    python -m flatcomp_tutorial.batch book/chapter.ipynb --grid lr=0.05,0.1 --grid seed=0,1 \\
        --out runs/chapter --store data/results/chapter.jsonl --workers 2

Contract with the notebook (chapter "Reproducing the paper"): its ``parameters``-tagged cell defines every grid name
plus ``results_store = None`` and ``run_key = None``; its last cell calls ``flatcomp_tutorial.store.record(
results_store, config, metrics, history, key=run_key)`` when ``results_store`` is not None (one atomic JSON line).

Per configuration the runner injects the grid values, ``results_store`` (absolute path) and ``run_key`` (a hash of
the notebook name and the configuration: its store key) as papermill parameters (JSON types kept) and runs kernel
``python3`` in the notebook's folder with ``FLATCOMP_PROGRESS=0``. The executed copy is
``OUT/<stem>-lr=0.1-seed=1.ipynb`` (:func:`output_names`): ``-name=value`` for each grid value, then each ``-p``
value, characters outside ``[A-Za-z0-9._=-]`` replaced by ``_``; ``-<run_key>`` is appended (the name cut to
:data:`NAME_LIMIT` characters) to a name that would be longer, that two configurations would share (ignoring case)
or without any parameter (it could be the notebook). Configurations whose ``run_key`` is in the store are skipped,
so an interrupted batch resumes. A run that fails or writes no record is reported (exit status 1), a failing or
timed-out (``--timeout``) cell named by its index in the notebook and its first line. Flushed progress lines go to
**stderr** (``[i/N] lr=0.1 seed=1 -> 12.3 s, record <run_key>``, ``-> skipped (in store)`` or ``-> FAILED after
3.2 s: <reason>``; ``i`` counts those ended so far), the table :meth:`BatchResult.summary` to **stdout**.

``--workers N`` (default 1) runs up to N configurations at once, each in its own kernel (threads of this process
drive papermill; its working directory never changes); records, executed copies and summary are a sequential
run's, only the progress lines come in the order the runs end. Give each kernel about 1/N of the cores. Appends to
the store from several kernels are safe on a local file system (not NFS): one ``os.write`` under ``O_APPEND`` each.

Checked before the first run, without a kernel: every grid and ``-p`` name is a parameter of the notebook (assigned
in its ``parameters`` cell), the notebook has the ``results_store``/``run_key`` hook, no configuration comes twice,
``--workers`` is an integer >= 1, ``--out`` and the store are writable, the kernel exists.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .presets import grid_configs
from .store import config_key, read_store
from .sweeps import SweepResult

_KERNEL_ENV = {"FLATCOMP_PROGRESS": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
               "FLATCOMP_CLAIMS": "warn"}  # prose claims describe default parameters: warn, do not stop
HOOK = ("results_store", "run_key")  # parameters the runner sets in every run (see the module docstring)
NAME_LIMIT = 120  # characters of an executed copy's file name, ".ipynb" included
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def parse_value(text: str):
    """``"0.05"`` -> 0.05, ``"3"`` -> 3, ``"true"`` -> True, ``"null"`` -> None (JSON), anything else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """``["lr=0.05,0.1", "seed=0,1"]`` -> ``{"lr": [0.05, 0.1], "seed": [0, 1]}``."""
    grid: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name or not values or any(not v.strip() for v in values.split(",")):
            raise ValueError(f"--grid must look like name=v1,v2,..., got {item!r}")
        if name in grid:
            raise ValueError(f"--grid {name}=... is given twice; list all its values in one name=v1,v2,...")
        grid[name] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def notebook_parameters(notebook: str | Path) -> list[str]:
    """The names assigned at the top level of the notebook's first ``parameters``-tagged cell (``a = 1``,
    ``a, b = 1, 2``, ``a: int = 1``), in order. Parsed with :mod:`ast`; no kernel is started."""
    import nbformat

    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except Exception as err:  # not JSON, not a notebook, unreadable
        raise ValueError(f"{notebook} is not a readable notebook ({type(err).__name__}: {err})") from err
    cell = next((c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{notebook} has no code cell tagged 'parameters', so no parameter can be set; tag the "
                         "cell that assigns the defaults")
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(cell.source)  # %magics and !shell lines become Python
    except ImportError:
        source = cell.source
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"the parameters cell of {notebook} is not valid Python ({err.msg}, line {err.lineno})") \
            from err

    def names(target: ast.AST) -> list[str]:
        if isinstance(target, ast.Name):
            return [target.id]
        if isinstance(target, (ast.Tuple, ast.List)):
            return [n for t in target.elts for n in names(t)]
        if isinstance(target, ast.Starred):
            return names(target.value)
        return []  # attribute or subscript assignments define no parameter

    found: list[str] = []
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] \
            if isinstance(stmt, ast.AnnAssign) else []
        found += [n for t in targets for n in names(t) if n not in found]
    return found


def _check_names(notebook: Path, names: Sequence[str], known: Sequence[str], what: str) -> None:
    """Refuse ``names`` (grid or ``-p`` names) that the notebook's parameters cell does not assign."""
    unknown = [n for n in names if n not in known]
    if unknown:
        verb = "is not a parameter" if len(unknown) == 1 else "are not parameters"
        raise ValueError(f"{what} {', '.join(map(repr, unknown))} {verb} of {notebook.name}; its parameters are "
                         f"{', '.join(n for n in known if n not in HOOK) or f'only {HOOK[0]} and {HOOK[1]}'}")
    reserved = [n for n in names if n in HOOK]
    if reserved:
        raise ValueError(f"{what} {', '.join(map(repr, reserved))}: {' and '.join(HOOK)} are set by the runner")


def _writable_folder(path: Path, what: str) -> None:
    """Create ``path`` (with parents) and check that a file can be written in it; one-line ValueError if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"{what} {str(path)!r} is not a writable folder ({err.strerror or err})") from None


def _writable_store(store: Path) -> None:
    """The store must be a file (or not exist yet) that can be appended to; it is not modified here."""
    if store.is_dir():
        raise ValueError(f"store {str(store)!r} is a folder; give the path of a JSON Lines file")
    _writable_folder(store.parent, "the folder of store")
    if store.exists():
        try:
            with open(store, "ab"):
                pass
        except OSError as err:
            raise ValueError(f"store {str(store)!r} is not writable ({err.strerror or err})") from None


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        known = sorted(KernelSpecManager().find_kernel_specs())
        raise ValueError(f"kernel {kernel!r} is not installed; installed kernels: {', '.join(known) or 'none'}") \
            from None


def _cell_label(cells: Sequence[Any], source: str | None) -> str:
    """``cell 3 ('first line')``: the index (0-based, in the notebook as given) of the code cell with ``source``."""
    source = source or ""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    index = next((i for i, c in enumerate(cells) if c.cell_type == "code" and c.source == source), None)
    return f"cell {index} ({first!r})" if index is not None else f"the injected-parameters cell ({first!r})"


def _started_last(executed: Path) -> str | None:
    """Source of the last cell papermill started in the executed copy (the one running when a timeout struck)."""
    import nbformat
    try:
        cells = nbformat.read(str(executed), as_version=4).cells
    except Exception:
        return None
    started = [c for c in cells if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1].source if started else None


def _text(value: Any) -> str:
    """A grid value as written on the command line: a string as it is, anything else as JSON (``0.1``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value)


def output_names(stem: str, points: Sequence[Mapping], keys: Sequence[str]) -> list[str]:
    """File names of the executed copies of the configurations ``points`` (all their parameters; run keys
    ``keys``), as in the module docstring: ``output_names("ch", [{"lr": 0.1, "seed": 1}], [key]) ==
    ["ch-lr=0.1-seed=1.ipynb"]``; ``-<key>`` is appended (the name cut to NAME_LIMIT characters) to a name that
    would be longer, to names several points would share (ignoring case) and to a point without parameters."""
    bases = [_UNSAFE.sub("_", "-".join([stem, *(f"{k}={_text(v)}" for k, v in p.items())])) for p in points]
    count = Counter(b.lower() for b in bases)
    return [f"{b}.ipynb" if p and len(b) + len(".ipynb") <= NAME_LIMIT and count[b.lower()] == 1 else
            f"{b[:NAME_LIMIT - len(k) - len('-.ipynb')]}-{k}.ipynb" for b, k, p in zip(bases, keys, points)]


@dataclass
class BatchRun:
    """One configuration: its grid values (``point``), run ``key``, executed copy (``target``, a path in OUT), and
    once done its ``status`` ("ran", "skipped", "failed"), ``seconds`` (None if skipped) and failure ``reason``."""
    point: dict
    key: str
    target: Path
    status: str = "pending"
    seconds: float | None = None
    reason: str | None = None

    def line(self, i: int, n: int) -> str:
        """The progress line ``[i/n] lr=0.1 seed=1 -> 12.3 s, record <key>`` (``-> skipped (in store)``, ``->
        FAILED after 3.2 s: <reason>``, the reason cut to 200 characters)."""
        reason = self.reason if len(self.reason or "") <= 200 else self.reason[:197] + "..."
        what = {"ran": f"{self.seconds or 0:.1f} s, record {self.key}", "skipped": "skipped (in store)",
                "failed": f"FAILED after {self.seconds or 0:.1f} s: {reason}"}.get(self.status, self.status)
        return f"[{i}/{n}] {' '.join(f'{k}={_text(v)}' for k, v in self.point.items()) or '(no grid)'} -> {what}"


@dataclass
class BatchResult(SweepResult):
    """A :class:`~flatcomp_tutorial.sweeps.SweepResult` (all in grid order) with a :class:`BatchRun` per
    configuration (``runs``), the ``workers`` used and the ``wall`` seconds."""
    runs: list[BatchRun] = field(default_factory=list)
    workers: int = 1
    wall: float = 0.0

    def summary(self) -> str:
        """The CLI's table: a row per configuration (grid values, status, seconds, executed copy), then totals."""
        names = list(dict.fromkeys(k for r in self.runs for k in r.point))
        rows = [[*names, "status", "seconds", "output"]] + [
            [*(_text(r.point[k]) if k in r.point else "" for k in names), r.status,
             "-" if r.seconds is None else f"{r.seconds:.1f}", r.target.name if r.target.exists() else "-"]
            for r in self.runs]
        widths = [max(len(x) for x in col) for col in zip(*rows)]
        n = Counter(r.status for r in self.runs)
        return "\n".join(["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows] + [
            f"{len(self.runs)} configuration(s): {n['ran']} ran, {n['skipped']} skipped (already in the store), "
            f"{n['failed']} failed; {sum(r.seconds or 0 for r in self.runs):.1f} s of runs in {self.wall:.1f} s "
            f"with {self.workers} worker(s); records in {self.store}"])


class BatchFailed(RuntimeError):
    """Runs of a batch failed (the message lists them); ``result``: the :class:`BatchResult` of the whole batch."""
    def __init__(self, message: str, result: BatchResult):
        super().__init__(message)
        self.result = result


def _execute(nb: Path, run: BatchRun, common: dict, kernel: str, timeout: int | None, cells: Sequence[Any]) \
        -> tuple[float, str | None, str | None]:
    """Run one configuration with the parameters ``common`` (``-p`` values and ``results_store``) and its own: its
    seconds, and where (a cell label or None) and how it failed (None: it did not)."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    start, where, what = time.perf_counter(), None, None
    try:  # the kernel starts in the notebook's folder; papermill's cwd= would os.chdir this (threaded) process
        pm.execute_notebook(str(nb), str(run.target), parameters={**common, **run.point, "run_key": run.key},
                            kernel_name=kernel, progress_bar=False, execution_timeout=timeout,
                            resources={"metadata": {"path": str(nb.parent)}})
    except PapermillExecutionError as err:
        where = _cell_label(cells, err.source)
        what = f"raised {err.ename}: {(str(err.evalue).strip().splitlines() or [''])[0]}"
    except CellTimeoutError:
        where = _cell_label(cells, _started_last(run.target))
        what = f"timed out after {timeout} s (raise --timeout / timeout=)"
    except Exception as err:  # a dead kernel, ...
        what = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}"
    return time.perf_counter() - start, where, what


def run_batch(notebook: str | Path, grid: Mapping[str, Sequence] | Sequence[Mapping], out: str | Path,
              store: str | Path, parameters: Mapping | None = None, kernel: str = "python3",
              timeout: int | None = None, workers: int = 1, log: Callable[[str], None] | None = None) -> BatchResult:
    """Execute ``notebook`` once per grid configuration, up to ``workers`` at once (module docstring); returns the
    :class:`BatchResult` (keys run now, keys skipped because the store had them, a :class:`BatchRun` per
    configuration). ``timeout``: seconds per cell (``None``: no limit). ``log``: called with each progress line.

    Raises ``ValueError`` before any run for an unknown grid or parameter name, a notebook without the
    ``results_store`` / ``run_key`` hook, an empty grid, a configuration listed twice, an unwritable ``out`` or
    ``store``, a bad ``timeout`` or ``workers`` or an unknown kernel; after trying every configuration,
    :class:`BatchFailed` (a ``RuntimeError`` carrying the ``result``) listing the runs that failed (naming the
    failing or timed-out cell) or wrote no record."""
    nb = Path(notebook).resolve()
    if not nb.is_file():
        raise ValueError(f"notebook {str(notebook)!r} does not exist")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise ValueError(f"timeout must be a positive integer (seconds per cell) or None, got {timeout!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers (--workers) must be an integer >= 1, got {workers!r}")
    points = grid_configs(grid)
    if not points:
        raise ValueError("the grid has no configuration (a name with an empty list of values?)")
    parameters = dict(parameters or {})
    known = notebook_parameters(nb)
    missing = [h for h in HOOK if h not in known]
    if missing:
        raise ValueError(f"{nb.name} has no {' and no '.join(missing)} parameter, so its runs cannot write records "
                         f"to the store: add {', '.join(f'{h} = None' for h in missing)} to its parameters cell and "
                         "call store.record(results_store, ..., key=run_key) in its last cell")
    _check_names(nb, list(parameters), known, "parameter name (-p)")
    _check_names(nb, list(dict.fromkeys(k for p in points for k in p)), known, "grid name")
    both = sorted(set(parameters) & {k for p in points for k in p})
    if both:
        raise ValueError(f"{', '.join(map(repr, both))} given both as a fixed parameter and as a grid name")
    keys = [config_key({"notebook": nb.name, **parameters, **p}) for p in points]
    twice = [p for p, k in zip(points, keys) if keys.count(k) > 1]
    if twice:
        raise ValueError(f"the grid lists the configuration {twice[0]} more than once")
    _check_kernel(kernel)
    out, store = Path(out).resolve(), Path(store).resolve()
    _writable_folder(out, "out")
    _writable_store(store)
    done = {r["key"] for r in read_store(store)[0]}
    names = output_names(nb.stem, [{**p, **parameters} for p in points], keys)
    runs = [BatchRun(p, k, out / name) for p, k, name in zip(points, keys, names)]
    result, full, started = BatchResult(store, runs=runs, workers=workers), {}, time.perf_counter()
    import nbformat
    import papermill  # noqa: F401  (imported here once, not by several worker threads at a time)
    cells = nbformat.read(str(nb), as_version=4).cells

    def finish(run: BatchRun, status: str) -> None:
        run.status = status
        if log is not None:
            log(run.line(sum(r.status != "pending" for r in runs), len(runs)))

    saved = {k: os.environ.get(k) for k in _KERNEL_ENV}
    os.environ.update(_KERNEL_ENV)  # inherited by the kernel processes papermill starts
    pool = ThreadPoolExecutor(max_workers=workers)  # threads start as runs need them
    try:
        for run in (r for r in runs if r.key in done):
            finish(run, "skipped")
        common = {**parameters, "results_store": str(store)}
        jobs = {pool.submit(_execute, nb, r, common, kernel, timeout, cells): r for r in runs if r.key not in done}
        for job in as_completed(jobs):
            run = jobs[job]
            run.seconds, where, what = job.result()
            if not what and run.key not in {r["key"] for r in read_store(store, warn=False)[0]}:
                what = "the notebook wrote no record (does its last cell call record(..., key=run_key)?)"
            run.reason = (f"{where} {what}" if where else what) if what else None
            full[run.key] = f"{where} of {nb} {what}" if where else what
            finish(run, "failed" if what else "ran")
    finally:  # after Ctrl-C too: start no queued run, wait for the running ones
        pool.shutdown(cancel_futures=True)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        for k in [k for k, v in saved.items() if v is None]:
            os.environ.pop(k, None)
    result.wall = time.perf_counter() - started
    result.ran, result.skipped = ([r.key for r in runs if r.status == s] for s in ("ran", "skipped"))
    failed = [r for r in runs if r.status == "failed"]
    result.failures = [({**parameters, **r.point}, r.reason) for r in failed]
    if failed:
        raise BatchFailed("batch runs failed:\n" + "\n".join(f"{cfg}: {full[r.key]} (executed copy: {r.target})"
                                                              for (cfg, _), r in zip(result.failures, failed)), result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring): progress lines on stderr, the summary table on stdout; exit status 0,
    or 1 when a check refused the batch or a run failed (2: bad command-line syntax, from argparse)."""
    ap = argparse.ArgumentParser(prog="python -m flatcomp_tutorial.batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("--grid", action="append", default=[], help="name=v1,v2,... (repeat for a Cartesian product)")
    ap.add_argument("-p", "--param", action="append", default=[], help="name=value, the same for every run")
    ap.add_argument("--out", required=True, help="folder for the executed notebooks")
    ap.add_argument("--store", required=True, help="JSON Lines file collecting one record per run")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--workers", default="1", help="configurations run at once, each in its own kernel (default 1)")
    args = ap.parse_args(argv)
    try:
        fixed = parse_grid(args.param)
        several = [k for k, v in fixed.items() if len(v) > 1]
        if several:
            raise ValueError(f"-p {several[0]}=... takes one value; use --grid for several")
        fixed = {k: v[0] for k, v in fixed.items()}
        grid = parse_grid(args.grid) or [{}]
    except ValueError as err:
        ap.error(str(err))
    workers = int(args.workers) if args.workers.strip().isdecimal() else 0
    if workers < 1:
        ap.error(f"--workers must be an integer >= 1 (configurations run at once), got {args.workers!r}")
    try:
        res = run_batch(args.notebook, grid, args.out, args.store, fixed, args.kernel, args.timeout, workers,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    except (RuntimeError, ValueError) as err:
        if isinstance(err, BatchFailed):
            print(err.result.summary(), flush=True)
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(res.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
