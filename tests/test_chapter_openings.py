"""Every chapter opens with its learning objectives and its measured run time (tools/chapter_openings.py), and the
script that inserts them can be re-run safely after other branches change the notebooks."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
PARTS = ("Foundations", "The bounds", "Reproducing the paper")


def _load_script():
    spec = importlib.util.spec_from_file_location("chapter_openings", ROOT / "tools" / "chapter_openings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CO = _load_script()


def _part_chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [c["file"] for p in toc["parts"] if p["caption"] in PARTS for c in p["chapters"]]


def _first_markdown(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    source = next(c["source"] for c in nb["cells"] if c["cell_type"] == "markdown")
    return source if isinstance(source, str) else "".join(source)


def _opening(text: str) -> str:
    """The admonition that follows the title line, up to its closing fence."""
    match = re.search(r"^# [^\n]*\n\n(```\{admonition\}.*?\n```)\n", text, flags=re.M | re.S)
    assert match, "no admonition right after the '# ' title line"
    return match.group(1)


def test_the_script_has_objectives_for_exactly_the_chapters_of_the_three_parts():
    assert sorted(CO.OBJECTIVES) == sorted(_part_chapters())


@pytest.mark.parametrize("stem", _part_chapters())
def test_chapter_opens_with_at_least_three_objectives_and_its_own_run_time(stem):
    block = _opening(_first_markdown(BOOK / f"{stem}.ipynb"))
    assert block.startswith("```{admonition} In this chapter\n:class: tip\nYou will learn to\n")
    assert len(re.findall(r"^- \S", block, flags=re.M)) >= 3
    assert f"{{glue:text}}`execution.ipynb::exec_{stem}_s:.0f` s" in block
    assert "{doc}`execution`" in block


def test_intro_opens_with_its_run_time_line():
    block = _opening(_first_markdown(BOOK / "intro.ipynb"))
    assert "{glue:text}`execution.ipynb::exec_intro_s:.0f` s" in block
    assert "{doc}`execution`" in block


@pytest.mark.parametrize("stem", ["intro", *_part_chapters()])
def test_opening_lines_are_at_most_118_characters(stem):
    assert max(len(line) for line in _opening(_first_markdown(BOOK / f"{stem}.ipynb")).split("\n")) <= 118


def test_running_the_script_twice_changes_nothing(tmp_path):
    for stem in ["intro", *CO.OBJECTIVES]:
        shutil.copy(BOOK / f"{stem}.ipynb", tmp_path)
    CO.main([str(tmp_path)])
    once = {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")}
    CO.main([str(tmp_path)])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.ipynb")} == once


def _notebook(tmp_path: Path, stem: str, first: str) -> Path:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": first.splitlines(keepends=True)},
             {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": ["x = 1"]},
             {"cell_type": "markdown", "metadata": {}, "source": ["# Not the first cell"]}]
    path = tmp_path / f"{stem}.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1))
    return path


def test_opening_goes_after_the_title_and_nothing_else_changes(tmp_path):
    path = _notebook(tmp_path, "sweep", "[![badge](x)](y)\n\n# Reproduction II\n\nFirst paragraph.")
    before = json.loads(path.read_text())
    assert CO.update_notebook(path) is True
    after = json.loads(path.read_text())
    text = "".join(after["cells"][0]["source"])
    assert text.startswith("[![badge](x)](y)\n\n# Reproduction II\n\n```{admonition} In this chapter\n")
    assert text.endswith("```\n\nFirst paragraph.")
    assert after["cells"][1:] == before["cells"][1:] and after["metadata"] == before["metadata"]
    assert path.read_text().endswith("}\n")
    assert CO.update_notebook(path) is False


def test_chapter_without_a_title_line_is_refused(tmp_path):
    path = _notebook(tmp_path, "sweep", "No title here.\n\n## A section")
    with pytest.raises(ValueError, match="sweep.*no title line"):
        CO.update_notebook(path)
