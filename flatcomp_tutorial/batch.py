"""Run a chapter notebook once per configuration with papermill and collect one result record per run.

    python -m flatcomp_tutorial.batch book/chapter.ipynb --grid lr=0.05,0.1 --grid seed=0,1 \\
        --out runs/chapter --store data/results/chapter.jsonl

Contract with the notebook (chapter "Reproducing the paper"):

1. its ``parameters``-tagged cell defines every grid name plus ``results_store = None`` and ``run_key = None``;
2. its last cell calls ``flatcomp_tutorial.experiments.record(results_store, config, metrics, history,
   key=run_key)`` when ``results_store`` is not None (one JSON line, appended atomically).

For each configuration the runner injects the grid values, ``results_store`` (absolute path) and ``run_key`` (a hash
of the notebook name and the configuration) as papermill parameters (``papermill.execute_notebook``, the API of
``papermill -p``; values keep their Python/JSON types), executes in
kernel ``python3`` with the notebook's folder as working directory and ``FLATCOMP_PROGRESS=0``, and writes the
executed copy to ``OUT/<stem>-<run_key>.ipynb``. Configurations whose ``run_key`` is already in the store are
skipped, so an interrupted batch resumes. A run that fails or writes no record is reported (exit status 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from .experiments import SweepResult, config_key, grid_configs, read_store

_KERNEL_ENV = {"FLATCOMP_PROGRESS": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


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
        if not sep or not name.strip() or not values:
            raise ValueError(f"--grid must look like name=v1,v2,..., got {item!r}")
        grid[name.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def run_batch(notebook: str | Path, grid: Mapping[str, Sequence] | Sequence[Mapping], out: str | Path,
              store: str | Path, parameters: Mapping | None = None, kernel: str = "python3",
              timeout: int | None = None) -> SweepResult:
    """Execute ``notebook`` once per grid configuration (see the module docstring); returns the keys run now and
    the keys skipped because the store already had them. Raises ``RuntimeError`` listing the runs that failed or
    wrote no record, after trying every configuration."""
    nb = Path(notebook).resolve()
    if not nb.is_file():
        raise ValueError(f"notebook {str(notebook)!r} does not exist")
    out, store = Path(out).resolve(), Path(store).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in read_store(store)[0]}
    result, failed = SweepResult(store), []
    import papermill as pm

    saved = {k: os.environ.get(k) for k in _KERNEL_ENV}
    os.environ.update(_KERNEL_ENV)  # inherited by the kernel processes papermill starts
    try:
        for point in grid_configs(grid):
            params = {**(parameters or {}), **point}
            key = config_key({"notebook": nb.name, **params})
            if key in done:
                result.skipped.append(key)
                continue
            target = out / f"{nb.stem}-{key}.ipynb"
            try:
                pm.execute_notebook(str(nb), str(target), parameters={**params, "results_store": str(store),
                                                                      "run_key": key},
                                    kernel_name=kernel, cwd=str(nb.parent), progress_bar=False,
                                    execution_timeout=timeout)
                error = None
            except Exception as err:  # a failing cell (PapermillExecutionError), a dead kernel, ...
                error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1:] or ''}"
            done = {r["key"] for r in read_store(store, warn=False)[0]}
            if error or key not in done:
                failed.append(f"{params} -> {target}: "
                              f"{error or 'the notebook wrote no record (does its last cell call record(...)?)'}")
            else:
                result.ran.append(key)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if failed:
        raise RuntimeError("batch runs failed:\n" + "\n".join(failed))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flatcomp_tutorial.batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("--grid", action="append", default=[], help="name=v1,v2,... (repeat for a Cartesian product)")
    ap.add_argument("-p", "--param", action="append", default=[], help="name=value, the same for every run")
    ap.add_argument("--out", required=True, help="folder for the executed notebooks")
    ap.add_argument("--store", required=True, help="JSON Lines file collecting one record per run")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)
    try:
        fixed = {k: v[0] for k, v in parse_grid(args.param).items()}
        grid = parse_grid(args.grid) or [{}]
    except ValueError as err:
        ap.error(str(err))
    try:
        res = run_batch(args.notebook, grid, args.out, args.store, fixed, args.kernel, args.timeout)
    except (RuntimeError, ValueError) as err:
        print(err, file=sys.stderr)
        return 1
    print(f"ran {len(res.ran)}, skipped {len(res.skipped)} (already in {res.store})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
