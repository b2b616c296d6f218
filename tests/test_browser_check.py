"""Specification of tools/browser_check.py, the offline reading check of the built HTML: what it counts as a
problem on a page's rendered DOM (the browser itself is not needed here)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("browser_check", ROOT / "tools" / "browser_check.py")
browser_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(browser_check)

RENDERED_MATH = '<span class="math"><mjx-container>x</mjx-container></span>'
FIGURE = ('<figure id="fig-a"><img src="a.png"><figcaption><p><span>Fig. 1 </span>'
          '<span>A caption.</span></p></figcaption></figure>')


@pytest.fixture
def page(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    return tmp_path / "p.html"


def problems(page, body):
    return browser_check.page_problems(page, f"<html><body>{body}</body></html>")[1]


def test_a_page_with_rendered_maths_and_a_captioned_figure_passes(page):
    assert problems(page, RENDERED_MATH + FIGURE) == []


def test_raw_tex_left_by_mathjax_is_a_problem(page):
    assert "formulas not rendered" in problems(page, r'<span class="math">\(x^2\)</span>')[0]


def test_a_figure_without_a_numbered_caption_or_its_image_file_is_a_problem(page):
    found = problems(page, '<figure id="fig-b"><img src="missing.png"></figure>')
    assert found == ["figure fig-b has no numbered caption", "figure fig-b: image missing"]


def test_a_widget_view_left_in_the_page_is_a_problem(page):
    assert "widget views left" in problems(page, '<div class="jupyter-widgets"></div>')[0]


def test_a_colab_badge_loaded_from_the_network_is_a_problem(page):
    badge = '<a href="https://colab.research.google.com/x"><img src="https://colab.x/badge.svg"></a>'
    assert problems(page, badge) == ["the Colab badge loads from the network"]
