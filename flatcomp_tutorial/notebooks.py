"""Executing and checking the book's chapter notebooks (used by ``make book`` and the tests).

``python -m flatcomp_tutorial.notebooks execute book/*.ipynb`` runs every chapter top to bottom in a fresh kernel
(working directory ``book/``, progress bars off) and writes the outputs back into the notebook, so that the HTML
book, GitHub and the first Colab view all show the results of one run. Any cell error fails the command.

``python -m flatcomp_tutorial.notebooks badges`` rewrites every chapter's "Open in Colab" badge and install cell
from the repository URL in ``_config.yml`` (the one place it is configured).
The HTML book shows a local copy of the badge image (:func:`setup`, a Sphinx extension): it loads nothing remote.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# What the HTML book shows instead (Sphinx: a leading "/" is the book's source folder book/): a local copy, so the
# badge never depends on the network; the notebooks keep COLAB_BADGE (GitHub, Jupyter and Colab show that one).
LOCAL_BADGE = "/_static/open-in-colab.svg"


def repository() -> dict:
    """The ``repository`` section of ``_config.yml``: ``url``, ``branch``, ``path_to_book``."""
    import yaml

    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    return cfg["repository"]


def colab_url(notebook: str | Path, repo: dict | None = None) -> str:
    repo = repo or repository()
    slug = repo["url"].removeprefix("https://github.com/").rstrip("/")
    return f"https://colab.research.google.com/github/{slug}/blob/{repo['branch']}/{repo['path_to_book']}/{Path(notebook).name}"


def badge_markdown(notebook: str | Path, repo: dict | None = None) -> str:
    return f"[![Open In Colab]({COLAB_BADGE})]({colab_url(notebook, repo)})"


def local_badges(document) -> int:
    """Point every image of a docutils ``document`` whose URI is :data:`COLAB_BADGE` at :data:`LOCAL_BADGE` (the
    link around it, to Colab, is unchanged); return how many. The HTML book's Sphinx extension, :func:`setup`."""
    from docutils import nodes

    images = [img for img in document.findall(nodes.image) if img.get("uri") == COLAB_BADGE]
    for img in images:
        img["uri"] = LOCAL_BADGE
    return len(images)


def setup(app):
    """Sphinx extension (``sphinx.extra_extensions`` in ``_config.yml``): the chapters' Colab badge is the local
    SVG in the HTML book, so an offline reader sees the badge, not a broken image. Runs while each page is read,
    before Sphinx collects its images (the SVG is copied to ``_images/`` like any local image)."""
    from sphinx.transforms import SphinxTransform

    class LocalColabBadge(SphinxTransform):
        default_priority = 500

        def apply(self, **kwargs) -> None:
            local_badges(self.document)

    app.add_transform(LocalColabBadge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def install_spec(repo: dict | None = None) -> str:
    repo = repo or repository()
    return f"flatcomp-tutorial @ git+{repo['url'].rstrip('/')}@{repo['branch']}"


def execute(path: str | Path, timeout: int = 600, kernel_name: str = "python3") -> float:
    """Execute notebook ``path`` in place (cwd = its folder) and return the wall time in seconds.

    Raises ``nbclient.exceptions.CellExecutionError`` naming the failing cell if any cell raises.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ["FLATCOMP_PROGRESS"] = "0"  # inherited by the kernel: no progress bars in stored outputs
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata["flatcomp"] = {"execution": execution_record(elapsed, load)}
    nbformat.write(nb, path)
    return elapsed


def execution_record(wall_s: float, load: float | None = None) -> dict:
    """What :func:`execute` stores in a notebook's ``metadata["flatcomp"]["execution"]``: the wall time of the
    whole run in seconds, the UTC date, the CPU threads (``$OMP_NUM_THREADS``; the chapters fix their own with
    ``threads``), the cores of the machine, its 1-minute load average when the run started (a shared machine slows
    every chapter) and the torch version."""
    import platform

    import torch

    return {"wall_s": round(float(wall_s), 1), "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"), "cores": os.cpu_count(),
            "load_at_start": None if load is None else round(float(load), 2),
            "machine": platform.machine(), "torch": torch.__version__}


def execution_table(paths: list[Path] | None = None):
    """One row per chapter (default: every chapter of ``_toc.yml`` with a recorded execution): ``chapter``,
    ``title`` (its first heading) and the fields of :func:`execution_record` from its last run of :func:`execute`.
    Chapters never executed by :func:`execute` get a row of NaN/None, so that a missing record is visible."""
    import nbformat
    import pandas as pd

    rows = []
    for p in paths or chapters():
        nb = nbformat.read(p, as_version=4)
        title = next((line.lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown"
                      for line in c.source.splitlines() if line.startswith("# ")), p.stem)
        rec = nb.metadata.get("flatcomp", {}).get("execution", {})
        rows.append({"chapter": p.stem, "title": title, **{k: rec.get(k) for k in _EXECUTION_FIELDS}})
    return pd.DataFrame(rows, columns=["chapter", "title", *_EXECUTION_FIELDS])


_EXECUTION_FIELDS = ("wall_s", "date", "omp_threads", "cores", "load_at_start", "machine", "torch")


def glue(name: str, value, display: bool = False) -> None:
    """Store ``value`` under ``name`` for the prose: ``{glue:text}`name:.3f``` in a Markdown cell prints it, so a
    number in the text always comes from the computation (myst-nb's ``glue``). numpy scalars and 0-d tensors are
    glued as Python numbers (their repr would not format). Without myst-nb (e.g. on Colab) nothing is stored."""
    if hasattr(value, "item") and getattr(value, "ndim", getattr(value, "dim", lambda: 1)) in (0, ()):
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)


def claim(holds, statement: str) -> None:
    """Check a claim the chapter's prose makes about its run: print ``claim holds: <statement>`` or raise
    ``AssertionError`` naming it, so text and outputs cannot disagree. The prose describes the chapter's default
    parameters; with ``FLATCOMP_CLAIMS=warn`` (set by the batch command-line tool, or by hand when running a chapter
    with other parameters) a failed claim warns instead of stopping the notebook."""
    is_bool = isinstance(holds, bool) or (str(getattr(holds, "dtype", "")) in ("bool", "torch.bool")
                                          and getattr(holds, "ndim", getattr(holds, "dim", lambda: 1)) in (0, ()))
    if not is_bool:
        raise TypeError(f"claim: holds must be a bool (the result of a comparison), got {type(holds).__name__}")
    if bool(holds):
        print(f"claim holds: {statement}")
        return
    if os.environ.get("FLATCOMP_CLAIMS", "error") == "warn":
        import warnings

        warnings.warn(f"claim does not hold for these parameters: {statement}", stacklevel=2)
        print(f"claim does NOT hold: {statement}")
        return
    raise AssertionError(f"claim does not hold: {statement} (the prose states it for the default parameters; "
                         "set FLATCOMP_CLAIMS=warn when running with other parameters)")


def rewrite_badges(paths: list[Path]) -> list[Path]:
    """Point every badge and install cell at the repository in ``_config.yml``; return the notebooks changed."""
    import nbformat

    repo, changed = repository(), []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        for cell in nb.cells:
            cell.source = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)", badge_markdown(path, repo), cell.source)
            cell.source = re.sub(r'"flatcomp-tutorial @ git\+[^"]*"', f'"{install_spec(repo)}"', cell.source)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def chapters() -> list[Path]:
    """The chapter notebooks listed in ``_toc.yml``, in book order."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for entry in toc.get("chapters", []) + [c for p in toc.get("parts", []) for c in p.get("chapters", [])]:
        files.append(entry["file"])
    book = ROOT / "book"
    return [book / f"{f}.ipynb" for f in files if (book / f"{f}.ipynb").exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flatcomp_tutorial.notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute notebooks in place (default: every chapter in _toc.yml)")
    ex.add_argument("notebooks", nargs="*", type=Path)
    ex.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    sub.add_parser("badges", help="rewrite Colab badges and install cells from _config.yml")
    args = parser.parse_args(argv)

    if args.command == "badges":
        for p in rewrite_badges(chapters()):
            print(f"updated {p}")
        return 0
    paths = args.notebooks or chapters()
    total = 0.0
    for p in paths:
        print(f"executing {p} ...", flush=True)
        try:
            elapsed = execute(p, timeout=args.timeout)
        except Exception as err:  # CellExecutionError, timeouts, dead kernels
            print(f"FAILED: {p}\n{err}", file=sys.stderr)
            return 1
        total += elapsed
        print(f"  done in {elapsed:.1f} s", flush=True)
    print(f"executed {len(paths)} notebook(s) in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def api_reference(module) -> str:
    """Markdown reference of a module's public functions: signature and docstring, in source order (the book's
    appendix renders this, so the reference is regenerated whenever the book is executed)."""
    import inspect

    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    items = []
    for name in names:
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, "__module__", "") != module.__name__:
            continue
        try:
            line = inspect.getsourcelines(obj)[1]
        except (OSError, TypeError):
            line = 0
        items.append((line, name, obj))
    parts = [f"### `{module.__name__}`\n", (inspect.getdoc(module) or "").split("\n\n")[0] + "\n"]
    for _, name, obj in sorted(items, key=lambda t: t[0]):
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = "(...)"
        doc = inspect.getdoc(obj) or "(no docstring)"
        parts.append(f"#### `{name}`\n\n```python\n{name}{sig}\n```\n\n```text\n{doc}\n```\n")
    return "\n".join(parts)
