"""The rules of the house (README "Layout"), checked on the source: who may import whom, one name per idea, and
module size. Imports are read with ``ast``, so a rule breach fails here before it confuses a reader."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import flatcomp_tutorial

PACKAGE = Path(flatcomp_tutorial.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

MEASURE_MODULES = ("curvature", "estimators", "krylov", "sharpness", "geometry", "bounds", "robustness", "invariance")
NOT_FOR_MEASURES = {"training", "sweeps", "store", "presets", "figures", "widgets", "batch"}
NOT_FOR_TRAINING = {"sweeps", "store", "presets", "figures", "widgets", "batch"}
LONG_MODULES = ("curvature", "training", "data", "bounds", "sharpness")  # over ~400 lines, each says why in its docstring
MAX_LINES = 400


def imported(path: Path) -> set[str]:
    """Every package module ``path`` imports, as a name relative to the package (``flatcomp_tutorial.x.y`` → ``x``,
    ``from . import x`` → ``x``, ``from .. import x`` inside figures/ → ``x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("flatcomp_tutorial")]
            found |= {n.split(".")[1] for n in names if "." in n}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("flatcomp_tutorial"):
                continue
            module = (node.module or "").removeprefix("flatcomp_tutorial").lstrip(".")
            if module:
                found.add(module.split(".")[0])
            else:
                found |= {a.name for a in node.names}
    return found


def test_the_import_reader_sees_every_form_of_import(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import flatcomp_tutorial.store\nfrom . import sweeps\nfrom .figures import x\n"
                   "from flatcomp_tutorial.presets import preset\nimport numpy\n")
    assert imported(src) == {"store", "sweeps", "figures", "presets"}


@pytest.mark.parametrize("name", MEASURE_MODULES)
def test_measures_never_import_training_sweeps_store_or_figures(name):
    assert not imported(PACKAGE / f"{name}.py") & NOT_FOR_MEASURES


def test_training_never_imports_sweeps_or_store():
    assert not imported(PACKAGE / "training.py") & NOT_FOR_TRAINING


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_short_or_say_why(path):
    lines = len(path.read_text().splitlines())
    if path.stem in LONG_MODULES and path.parent == PACKAGE:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "400 lines" in doc, f"{path.name} is long ({lines} lines): its docstring must say why"
    else:
        assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it or state the reason (LONG_MODULES)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_cites_a_document_outside_the_book(path):
    assert "THEORY" not in path.read_text()
