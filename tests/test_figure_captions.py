"""Every figure of the book is numbered, captioned and cross-referenced from its chapter's prose.

A code cell whose outputs include an image becomes a numbered figure in the HTML when its metadata holds
``mystnb.figure`` (name and caption; myst-nb); the prose refers to it with {numref}`name`. The captions and references
are applied by tools/caption_figures.py.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
NAME = re.compile(r"fig-[a-z0-9-]+")
NUMREF = re.compile(r"\{numref\}`([^`]*)`")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def text(cell: dict) -> str:
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def figure_cells(path: Path) -> list[dict]:
    """Code cells with an image/png output: what myst-nb can turn into a figure."""
    return [c for c in cells(path) if c["cell_type"] == "code"
            and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]


def figure(cell: dict) -> dict:
    return cell.get("metadata", {}).get("mystnb", {}).get("figure", {})


def numref_targets(path: Path) -> list[str]:
    """Targets of {numref}`...` roles in the chapter's Markdown cells ("Fig. %s <name>" -> "name")."""
    found = [m for c in cells(path) if c["cell_type"] == "markdown" for m in NUMREF.findall(text(c))]
    return [re.sub(r"^.*<(.*)>$", r"\1", target).strip() for target in found]


def figure_names() -> list[str]:
    return [figure(c).get("name") for path in CHAPTERS for c in figure_cells(path)]


def test_the_book_has_figures():
    assert len(figure_names()) > 0


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_cell_has_a_name_and_a_caption(path):
    missing = [text(c)[:60] for c in figure_cells(path)
               if not str(figure(c).get("name", "")).strip() or not str(figure(c).get("caption", "")).strip()]
    assert not missing, f"{path.name}: figure cells without mystnb.figure name and caption: {missing}"


def test_figure_names_are_unique_in_the_book():
    names = figure_names()
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_figure_names_are_lower_case_fig_slugs():
    bad = [n for n in figure_names() if not (isinstance(n, str) and NAME.fullmatch(n))]
    assert not bad, f"names not matching fig-[a-z0-9-]+: {bad}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_is_referenced_in_its_own_chapter(path):
    referenced = set(numref_targets(path))
    unreferenced = [figure(c).get("name") for c in figure_cells(path) if figure(c).get("name") not in referenced]
    assert not unreferenced, f"{path.name}: figures without a {{numref}} in a Markdown cell: {unreferenced}"


def test_every_numref_names_an_existing_figure():
    names = set(figure_names())
    dangling = [(path.name, t) for path in CHAPTERS for t in numref_targets(path) if t not in names]
    assert not dangling, f"{{numref}} targets that are no figure of the book: {dangling}"


def test_caption_script_has_nothing_left_to_apply():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "tools" / "caption_figures.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _explorer_cell(captioned: bool) -> dict:
    image = {"output_type": "display_data", "data": {"image/png": "iVBO", "text/plain": "<Figure>"}, "metadata": {}}
    sliders = {"output_type": "display_data", "metadata": {},
               "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "VBox()"}}
    metadata = {"mystnb": {"figure": {"name": "fig-x", "caption": "X."}}} if captioned else {}
    return {"cell_type": "code", "id": "abc", "metadata": metadata, "source": "explorer(...)",
            "outputs": [image, sliders], "execution_count": 1}


def test_html_build_moves_a_captioned_explorers_sliders_out_of_its_figure():
    from flatcomp_tutorial import widgets

    nb = {"cells": [_explorer_cell(captioned=True)]}
    assert widgets.split_captioned_widget_cells(nb) == 1
    figure_cell, sliders_cell = nb["cells"]
    assert [list(o["data"]) for o in figure_cell["outputs"]] == [["image/png", "text/plain"]]
    assert widgets.WIDGET_VIEW in sliders_cell["outputs"][0]["data"]
    assert sliders_cell["metadata"] == {"tags": ["remove-input"]} and sliders_cell["source"].strip()
    assert "mystnb" not in sliders_cell["metadata"]


def test_html_build_leaves_an_uncaptioned_explorer_cell_whole():
    from flatcomp_tutorial import widgets

    nb = {"cells": [_explorer_cell(captioned=False)]}
    assert widgets.split_captioned_widget_cells(nb) == 0
    assert len(nb["cells"]) == 1 and len(nb["cells"][0]["outputs"]) == 2
