"""The book as readers and CI use it: table of contents, Colab badges, parameters cells, stored outputs,
papermill overrides, and the failure mechanism (a broken cell fails both the main job and nbval)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from flatcomp_tutorial import notebooks as NB

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("*.ipynb"))
FIGURELESS = {"api.ipynb", "paper_scale.ipynb"}  # API reference and the how-to of running at scale: text and tables
ENV = dict(os.environ, FLATCOMP_PROGRESS="0", PYDEVD_DISABLE_FILE_VALIDATION="1")


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_toc_lists_exactly_the_chapter_notebooks():
    assert CHAPTERS, "no chapters found"
    assert sorted(NB.chapters()) == CHAPTERS


def test_book_toc_is_a_link_to_the_root_toc():
    assert (BOOK / "_toc.yml").is_symlink() and (BOOK / "_toc.yml").resolve() == (ROOT / "_toc.yml").resolve()


def test_book_config_fails_on_errors_and_builds_only_toc_files():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["only_build_toc_files"] is True
    assert cfg["execute"]["allow_errors"] is False
    assert cfg["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert cfg["execute"]["timeout"] > 0
    assert cfg["repository"]["branch"] == "main" and cfg["repository"]["path_to_book"] == "book"
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert (BOOK / cfg["bibtex_bibfiles"][0]).exists()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_starts_with_a_colab_badge_for_the_configured_repository(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    assert NB.badge_markdown(path) in first.source


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_installs_the_package_only_when_it_is_missing(path):
    setup = code_cells(path)[0].source
    assert "except ImportError" in setup and f'"{NB.install_spec()}"' in setup


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_install_cell_is_collapsed_in_the_html_and_prints_nothing_there(path):
    tags = code_cells(path)[0].metadata.get("tags", [])
    assert "hide-input" in tags and "remove-output" in tags


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_a_parameters_cell_with_seed_and_threads(path):
    tagged = [c for c in code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
    assert {"seed", "threads"} <= names


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_committed_executed_top_to_bottom_without_errors(path):
    cells = code_cells(path)
    counts = [c.execution_count for c in cells]
    assert all(counts) and counts == list(range(1, len(cells) + 1))
    assert not any(o.output_type == "error" for c in cells for o in c.outputs)
    if path.name not in FIGURELESS:
        assert any(o.output_type == "display_data" and "image/png" in o.data for c in cells for o in c.outputs), \
            "every chapter shows at least one figure"


@pytest.mark.integration
def test_papermill_runs_a_chapter_with_parameter_overrides(tmp_path, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("FLATCOMP_CLAIMS", "warn")  # the prose's claims are about the default parameters

    out = tmp_path / "first_network_out.ipynb"
    pm.execute_notebook(str(BOOK / "first_network.ipynb"), str(out), parameters={"epochs": 1, "width": 8},
                        cwd=str(BOOK), kernel_name="python3", progress_bar=False)
    text = "".join(o.get("text", "") for c in code_cells(out) for o in c.outputs)
    assert "after 1 epochs" in text
    assert "Linear(in_features=64, out_features=8" in text


def _broken_copy(tmp_path):
    """A copy of the intro chapter with a failing cell right after its parameters cell (later cells dropped)."""
    nb = nbformat.read(BOOK / "intro.ipynb", as_version=4)
    k = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells = nb.cells[: k + 1] + [nbformat.v4.new_code_cell('raise RuntimeError("deliberately broken cell")')]
    path = tmp_path / "broken_chapter.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.integration
def test_a_broken_cell_fails_the_main_job(tmp_path):
    path = _broken_copy(tmp_path)
    run = subprocess.run([sys.executable, "-m", "flatcomp_tutorial.notebooks", "execute", str(path)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode != 0
    assert "deliberately broken cell" in run.stderr


@pytest.mark.integration
def test_a_broken_cell_fails_nbval(tmp_path):
    path = _broken_copy(tmp_path)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "flatcomp_tutorial.nbval_plugin",
                          "--nbval", "--nbval-current-env", str(path)], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert run.returncode != 0
    assert "deliberately broken cell" in run.stdout


@pytest.mark.integration
def test_a_stale_stored_output_fails_nbval(tmp_path):
    cell = nbformat.v4.new_code_cell("print(1 + 1)", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="3\n")]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "stale.ipynb"
    nbformat.write(nb, path)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "flatcomp_tutorial.nbval_plugin",
                          "--nbval", "--nbval-current-env", str(path)], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert run.returncode != 0 and "1 failed" in run.stdout


@pytest.mark.integration
def test_widget_explorer_runs_headless_and_leaves_a_static_figure(tmp_path):
    from nbclient import NotebookClient

    cells = [nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nimport flatcomp_tutorial as fc\n"
        "def draw(scale=1.0, kind='line'):\n"
        "    fig, ax = plt.subplots(); ax.plot([0, 1], [0, scale]); ax.set_title(kind); return fig\n"
        "fig = fc.widgets.explorer(draw, scale=(0.5, 2.0, 0.5, 1.0), kind=['line', 'other'])")]
    nb = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    assert not any(o.output_type == "error" for o in outputs)
    pngs = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(pngs) == 1, "exactly one static figure in the cell output (the interactive one lives in the widget)"
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_execute_records_the_wall_time_of_the_run_in_the_notebook_metadata(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    elapsed = NB.execute(path)
    rec = nbformat.read(path, as_version=4).metadata["flatcomp"]["execution"]
    assert rec["wall_s"] == round(elapsed, 1) and rec["cores"] == os.cpu_count()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", rec["date"]) and rec["torch"]


def test_execution_table_has_a_row_per_chapter_and_shows_a_missing_record(tmp_path):
    paths = []
    for name, record in (("done", {"wall_s": 12.5, "date": "2026-12-06", "cores": 2}), ("never", None)):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Chapter {name}\n\ntext")])
        if record:
            nb.metadata["flatcomp"] = {"execution": record}
        paths.append(tmp_path / f"{name}.ipynb")
        nbformat.write(nb, paths[-1])
    table = NB.execution_table(paths)
    assert list(table.chapter) == ["done", "never"] and list(table.title) == ["Chapter done", "Chapter never"]
    assert table.wall_s.iloc[0] == 12.5 and table.wall_s.isna().iloc[1] and pd.isna(table.date.iloc[1])


def test_every_chapter_has_an_execution_record():
    table = NB.execution_table()
    missing = table[table.wall_s.isna()].chapter.tolist()
    assert missing == [], f"chapters never run by `make execute` (python -m flatcomp_tutorial.notebooks execute): {missing}"


def test_the_api_appendix_documents_every_module_with_a_public_interface():
    import flatcomp_tutorial

    package = Path(flatcomp_tutorial.__file__).parent
    public = {".".join(p.relative_to(package.parent).with_suffix("").parts) for p in package.rglob("*.py")
              if "__pycache__" not in p.parts and "__all__" in p.read_text() and not p.name.startswith("_")}
    documented = set(re.findall(r'import_module\("([\w.]+)"\)',
                                "".join(c.source for c in code_cells(BOOK / "api.ipynb"))))
    assert public - documented == set()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_code_lines_fit_the_html_text_column(path):
    """At most 100 characters per code line: what fits the text column of a 1280-px window at the code font size
    of book/_static/flatcomp.css, so no code cell scrolls sideways."""
    long = [(i, len(line)) for i, c in enumerate(code_cells(path)) for line in c.source.splitlines()
            if len(line) > 100]
    assert long == [], f"code cells (index, length) with lines over 100 characters: {long}"
