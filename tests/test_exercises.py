"""Exercises (sphinx-exercise): every chapter of the parts "Foundations" and "The bounds" ends with at least two
labelled exercises, each with a gated solution (``solution-start`` / ``solution-end`` Markdown cells) around
executed code cells, so that the solution code runs whenever the chapter runs (``make book``, nbval in CI)."""
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("Foundations", "The bounds")
EXERCISE = re.compile(r"^```\{exercise(?:-start)?\}[^\n]*\n:label: (\S+)", re.M)
SOLUTION_START = re.compile(r"^```\{solution-start\} (\S+)", re.M)
SOLUTION_END = re.compile(r"^```\{solution-end\}", re.M)


def part_chapters() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ROOT / "book" / f"{c['file']}.ipynb"
            for part in toc["parts"] if part["caption"] in PARTS for c in part["chapters"]]


CHAPTERS = part_chapters()


def cells(path: Path):
    return nbformat.read(path, as_version=4).cells


def markdown_matches(path: Path, pattern: re.Pattern) -> list[str]:
    return [m for c in cells(path) if c.cell_type == "markdown" for m in pattern.findall(c.source)]


def solution_blocks(path: Path) -> list[tuple[str, list]]:
    """(exercise label, cells strictly between solution-start and solution-end) for every gated solution; raises
    AssertionError on a nested start or an end without a start."""
    blocks, label, inside = [], None, []
    for c in cells(path):
        start = SOLUTION_START.search(c.source) if c.cell_type == "markdown" else None
        end = SOLUTION_END.search(c.source) if c.cell_type == "markdown" else None
        if start:
            assert label is None, f"{path.name}: solution-start {start.group(1)} inside solution {label}"
            label, inside = start.group(1), []
        elif end:
            assert label is not None, f"{path.name}: solution-end without a solution-start"
            blocks.append((label, inside))
            label = None
        elif label is not None:
            inside.append(c)
    assert label is None, f"{path.name}: solution {label} is never closed by solution-end"
    return blocks


def test_the_parts_with_exercises_are_in_the_toc():
    assert len(CHAPTERS) == 6 and all(p.exists() for p in CHAPTERS)


def test_the_book_loads_sphinx_exercise():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx_exercise" in cfg["sphinx"]["extra_extensions"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_at_least_two_labelled_exercises(path):
    assert len(markdown_matches(path, EXERCISE)) >= 2


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_exercise_has_exactly_one_solution_with_its_label(path):
    exercises = markdown_matches(path, EXERCISE)
    solved = [label for label, _ in solution_blocks(path)]
    assert sorted(solved) == sorted(exercises)
    assert len(set(exercises)) == len(exercises), "duplicate exercise labels"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_solution_contains_executed_code(path):
    for label, inside in solution_blocks(path):
        code = [c for c in inside if c.cell_type == "code"]
        assert code, f"{label}: no code cell between solution-start and solution-end"
        assert all(c.execution_count for c in code), f"{label}: solution code is not executed"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_solution_checks_its_answer_with_a_claim(path):
    for label, inside in solution_blocks(path):
        assert any("claim(" in c.source for c in inside if c.cell_type == "code"), \
            f"{label}: the solution code asserts nothing"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_solutions_are_toggled_dropdowns(path):
    starts = [c.source for c in cells(path) if c.cell_type == "markdown" and SOLUTION_START.search(c.source)]
    assert all(re.search(r"^:class: dropdown$", s, re.M) for s in starts)


def test_exercise_labels_are_unique_across_the_book():
    labels = [label for p in CHAPTERS for label in markdown_matches(p, EXERCISE)]
    assert len(labels) == len(set(labels))
