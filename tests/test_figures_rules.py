"""The rule of flatcomp_tutorial.figures: figures only draw. No module there imports a module that computes
measures, trains or modifies models (sharpness, geometry, bounds, training, invariance, sweeps/experiments,
robustness, ...) or torch; checked on the source with ``ast``, so a new module is covered as soon as it exists."""
import ast
from pathlib import Path

import pytest

import flatcomp_tutorial
from flatcomp_tutorial import figures

FIGURES = Path(figures.__file__).parent
PACKAGE = Path(flatcomp_tutorial.__file__).parent
# the modules named by the rule, the ones split off from them (curvature, estimators, layers, stats, store, presets,
# batch) and whatever builds models or data
FORBIDDEN = {"sharpness", "geometry", "bounds", "training", "invariance", "sweeps", "experiments", "robustness",
             "curvature", "estimators", "layers", "stats", "store", "presets", "batch", "models", "data", "torch"}
MODULES = sorted(FIGURES.glob("*.py"))


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, as a dotted name relative to the package (``flatcomp_tutorial.x`` → ``x``,
    ``figures.x`` for the figures' own modules) or absolute (``torch.nn``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
                base = base[len("flatcomp_tutorial."):] if base.startswith("flatcomp_tutorial.") else base
            else:
                package = ["figures"][:max(0, 2 - node.level)]  # level 1: figures, level 2: the package
                base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}".lstrip(".") for a in node.names)  # `from .. import sharpness`
    return names


def _forbidden(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in FORBIDDEN}


def test_the_rule_check_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom .. import sharpness\nfrom ..geometry import jacobians\n"
                   "from .bounds import plot_rescaling\nfrom ..measures import label\n")
    assert _forbidden(_imported(bad)) == {"torch", "sharpness", "geometry", "geometry.jacobians"}


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_figure_modules_import_no_computing_module_and_no_torch(path):
    assert not _forbidden(_imported(path)), f"{path.name} imports {sorted(_forbidden(_imported(path)))}"


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_figure_modules_call_no_torch(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "torch" not in names


def test_every_public_drawing_function_is_re_exported_by_the_package():
    for path in MODULES:
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        public = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
        assert set(public) <= set(figures.__all__), f"{path.name}: {sorted(set(public) - set(figures.__all__))}"
        assert all(getattr(figures, name) is not None for name in public)


def test_the_old_plotting_module_is_gone():
    assert not (PACKAGE / "plotting.py").exists()
