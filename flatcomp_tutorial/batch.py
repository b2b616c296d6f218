"""Run a chapter notebook once per configuration with papermill and collect one result record per run.

    python -m flatcomp_tutorial.batch book/chapter.ipynb --grid lr=0.05,0.1 --grid seed=0,1 \\
        --out runs/chapter --store data/results/chapter.jsonl

Contract with the notebook (chapter "Reproducing the paper"):

1. its ``parameters``-tagged cell defines every grid name plus ``results_store = None`` and ``run_key = None``;
2. its last cell calls ``flatcomp_tutorial.store.record(results_store, config, metrics, history,
   key=run_key)`` when ``results_store`` is not None (one JSON line, appended atomically).

For each configuration the runner injects the grid values, ``results_store`` (absolute path) and ``run_key`` (a hash
of the notebook name and the configuration) as papermill parameters (``papermill.execute_notebook``, the API of
``papermill -p``; values keep their Python/JSON types), executes in
kernel ``python3`` with the notebook's folder as working directory and ``FLATCOMP_PROGRESS=0``, and writes the
executed copy to ``OUT/<stem>-<run_key>.ipynb``. Configurations whose ``run_key`` is already in the store are
skipped, so an interrupted batch resumes. A run that fails or writes no record is reported (exit status 1): a
failing cell or a cell that exceeds ``--timeout`` is named by its index in the notebook and its first line.

Everything that can be checked without a kernel is checked before the first run: every grid and ``-p`` name must
be a parameter of the notebook (an assignment in its ``parameters`` cell), the notebook must declare the
``results_store`` and ``run_key`` hook, the ``--out`` folder and the store must be writable, the kernel must exist.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .presets import grid_configs
from .store import config_key, read_store
from .sweeps import SweepResult

_KERNEL_ENV = {"FLATCOMP_PROGRESS": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
               "FLATCOMP_CLAIMS": "warn"}  # prose claims describe default parameters: warn, do not stop
HOOK = ("results_store", "run_key")  # parameters the runner sets in every run (see the module docstring)


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


def run_batch(notebook: str | Path, grid: Mapping[str, Sequence] | Sequence[Mapping], out: str | Path,
              store: str | Path, parameters: Mapping | None = None, kernel: str = "python3",
              timeout: int | None = None) -> SweepResult:
    """Execute ``notebook`` once per grid configuration (see the module docstring); returns the keys run now and
    the keys skipped because the store already had them. ``timeout``: seconds per cell (``None``: no limit).

    Raises ``ValueError`` before any run for an unknown grid or parameter name, a notebook without the
    ``results_store`` / ``run_key`` hook, an empty grid, an unwritable ``out`` or ``store``, a bad ``timeout`` or
    an unknown kernel. Raises ``RuntimeError`` listing the runs that failed (naming the failing or timed-out cell),
    timed out or wrote no record, after trying every configuration."""
    nb = Path(notebook).resolve()
    if not nb.is_file():
        raise ValueError(f"notebook {str(notebook)!r} does not exist")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise ValueError(f"timeout must be a positive integer (seconds per cell) or None, got {timeout!r}")
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
    _check_kernel(kernel)
    out, store = Path(out).resolve(), Path(store).resolve()
    _writable_folder(out, "out")
    _writable_store(store)
    done = {r["key"] for r in read_store(store)[0]}
    result, failed = SweepResult(store), []
    import nbformat
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    cells = nbformat.read(str(nb), as_version=4).cells

    saved = {k: os.environ.get(k) for k in _KERNEL_ENV}
    os.environ.update(_KERNEL_ENV)  # inherited by the kernel processes papermill starts
    try:
        for point in points:
            params = {**parameters, **point}
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
            except PapermillExecutionError as err:
                evalue = next(iter(str(err.evalue).strip().splitlines()), "")
                error = f"{_cell_label(cells, err.source)} of {nb} raised {err.ename}: {evalue}"
            except CellTimeoutError:
                error = (f"{_cell_label(cells, _started_last(target))} of {nb} timed out after {timeout} s "
                         "(raise --timeout / timeout=)")
            except Exception as err:  # a dead kernel, ...
                last = str(err).strip().splitlines()[-1:]
                error = f"{type(err).__name__}: {last[0] if last else ''}"
            done = {r["key"] for r in read_store(store, warn=False)[0]}
            if error or key not in done:
                error = error or "the notebook wrote no record (does its last cell call record(..., key=run_key)?)"
                failed.append(f"{params}: {error} (executed copy: {target})")
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
        fixed = parse_grid(args.param)
        several = [k for k, v in fixed.items() if len(v) > 1]
        if several:
            raise ValueError(f"-p {several[0]}=... takes one value; use --grid for several")
        fixed = {k: v[0] for k, v in fixed.items()}
        grid = parse_grid(args.grid) or [{}]
    except ValueError as err:
        ap.error(str(err))
    try:
        res = run_batch(args.notebook, grid, args.out, args.store, fixed, args.kernel, args.timeout)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"ran {len(res.ran)}, skipped {len(res.skipped)} (already in {res.store})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
