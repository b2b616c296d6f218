"""The HTML book reads offline (issue 13): the CI check .ci/check_html_offline.py on small pages, and the pieces that
keep the real book passing it (bundled MathJax, a note instead of widget views, a local Colab badge). No build here:
.ci/run builds the book and runs the check on it."""
import importlib.util
from pathlib import Path

import pytest
import yaml
from docutils import nodes
from docutils.frontend import get_default_settings
from docutils.parsers.rst import Parser
from docutils.utils import new_document

from flatcomp_tutorial import notebooks as NB
from flatcomp_tutorial import widgets

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_html_offline", ROOT / ".ci" / "check_html_offline.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def urls(html):
    return [url for _, _, url in check.scan_html(html)]


@pytest.mark.parametrize("html", [
    '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>',
    '<script defer src="http://example.org/a.js"></script>',
    '<link rel="stylesheet" href="https://fonts.example.org/css">',
    '<link rel="alternate stylesheet" href="https://example.org/dark.css">',
    '<link rel="icon" href="https://example.org/favicon.ico">',
    '<link rel="preload" as="font" href="https://example.org/f.woff2">',
    '<link rel="preconnect" href="https://cdn.example.org">',
    '<link href="https://example.org/no-rel.css">',
    '<img alt="Open In Colab" src="https://colab.research.google.com/assets/colab-badge.svg">',
    '<img src="local.png" srcset="local@2x.png 2x, https://example.org/big.png 3x">',
    '<picture><source srcset="https://example.org/a.webp"></picture>',
    '<iframe src="https://www.youtube.com/embed/x"></iframe>',
    '<video poster="https://example.org/p.jpg" src="v.mp4"></video>',
    '<object data="https://example.org/x.pdf"></object>',
    '<svg><image href="https://example.org/i.png"/></svg>',
    '<svg><use xlink:href="https://example.org/sprite.svg#i"/></svg>',
    '<base href="https://example.org/">',
    '<div style="background: url(https://example.org/bg.png)"></div>',
    '<style>@import "https://example.org/theme.css";</style>',
    "<style>body { background: url('//example.org/bg.png') }</style>",
], ids=lambda h: h[:40])
def test_a_page_loading_anything_from_another_host_is_reported(html):
    assert len(urls(html)) == 1


@pytest.mark.parametrize("url", ["//cdn.example.org/a.js", "HTTPS://EXAMPLE.ORG/A.JS", "  https://example.org/a.js",
                                 "\\\\example.org/a.js", "ht\ttps://example.org/a.js", "ftp://example.org/a.js"])
def test_protocol_relative_uppercase_and_obfuscated_urls_are_remote(url):
    assert check.is_remote(url)
    assert urls(f'<SCRIPT SRC="{url}"></SCRIPT>') == [url.strip()]


@pytest.mark.parametrize("url", ["_static/mathjax/tex-chtml.js", "../_images/x.png", "/_static/a.css", "#top",
                                 "data:image/png;base64,iVBORw0KGgo=", "open-in-colab.svg", "mailto:a@b.org"])
def test_local_and_data_urls_are_fine(url):
    assert not check.is_remote(url)
    assert urls(f'<script src="{url}"></script><img src="{url}"><link rel="stylesheet" href="{url}">') == []


def test_plain_hyperlinks_and_navigational_links_may_point_anywhere():
    html = ('<a href="https://colab.research.google.com/github/x/y/blob/main/book/intro.ipynb">'
            '<img alt="Open In Colab" src="_images/open-in-colab.svg"></a>'
            '<map><area href="https://example.org/"></map>'
            '<link rel="canonical" href="https://example.org/book/intro.html">'
            '<link rel="next" title="A first network" href="https://example.org/first_network.html">'
            '<link rel="search" href="search.html">'
            '<script>const repo = "https://github.com/x/y";</script>'  # JavaScript code is not analysed
            '<p>see https://example.org/ or //example.org</p>')
    assert urls(html) == []


def test_findings_name_the_line_the_element_and_the_attribute():
    html = '<html>\n<head>\n<script src="https://cdn.example.org/m.js"></script>\n</head>\n<img src="//x.org/i.png">'
    assert check.scan_html(html) == [(3, "<script src>", "https://cdn.example.org/m.js"),
                                     (5, "<img src>", "//x.org/i.png")]


def test_stylesheets_are_scanned_outside_comments():
    css = ('/* fonts used to come from https://fonts.example.org: url(https://fonts.example.org/a.woff) */\n'
           '@font-face { src: url("fonts/a.woff2") format("woff2"); }\n'
           '@import url(https://example.org/theme.css);\n'
           '.x { background-image: url( \'https://example.org/bg.png\' ); }\n'
           '/*# sourceMappingURL=https://example.org/map */\n')
    assert check.scan_css(css) == [(3, "css url()/@import", "https://example.org/theme.css"),
                                   (4, "css url()/@import", "https://example.org/bg.png")]


def test_main_names_each_offending_file_and_exits_1(tmp_path, capsys):
    (tmp_path / "_static").mkdir()
    (tmp_path / "ok.html").write_text('<script src="_static/mathjax/tex-chtml.js"></script>')
    (tmp_path / "bad.html").write_text('<p>\n<img src="https://colab.research.google.com/assets/colab-badge.svg">')
    (tmp_path / "_static" / "theme.css").write_text("@import 'https://fonts.example.org/css';")
    assert check.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bad.html:2: <img src> https://colab.research.google.com/assets/colab-badge.svg" in err
    assert "_static/theme.css:1: css url()/@import https://fonts.example.org/css" in err
    assert "ok.html" not in err


def test_main_passes_a_self_contained_build_and_refuses_an_empty_one(tmp_path, capsys):
    assert check.main([str(tmp_path)]) == 1
    assert "no HTML page" in capsys.readouterr().err
    (tmp_path / "index.html").write_text('<a href="https://github.com/x/y">repository</a><img src="_images/a.png">')
    assert check.main([str(tmp_path)]) == 0
    assert "1 pages and 0 stylesheets" in capsys.readouterr().out


def test_ci_runs_the_check_after_building_the_html():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert lines.index(".venv/bin/python .ci/check_html_offline.py") > lines.index("make html")


def test_book_bundles_mathjax_keeps_the_macros_and_loads_no_widget_javascript():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert {"sphinx-mathjax-offline", "flatcomp_tutorial.widgets", "flatcomp_tutorial.notebooks"} <= \
        set(cfg["extra_extensions"])
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.split(">=")[0].strip() == "sphinx-mathjax-offline" for line in requirements)
    assert "mathjax_path" not in cfg["config"]  # set by sphinx-mathjax-offline to its bundled copy
    assert cfg["config"]["mathjax3_config"]["tex"]["macros"]["Tr"] == "\\operatorname{Tr}"
    assert cfg["config"]["nb_ipywidgets_js"] == {}
    assert ["html", widgets.WIDGET_VIEW, None] in cfg["config"]["nb_mime_priority_overrides"]


def _document():
    return new_document("<test>", get_default_settings(Parser))


def _bundle(*mime_types):
    bundle = nodes.container(nb_element="mime_bundle")
    for mime in mime_types:
        bundle += nodes.container("", nodes.literal_block("", f"<{mime}>"), mime_type=mime)
    return bundle


def test_an_explorer_output_shows_the_static_figure_then_a_note_instead_of_the_widget_view():
    doc = _document()
    output = nodes.container(nb_element="cell_code_output")
    output += _bundle("image/png", "text/plain")  # explorer's static figure, displayed first
    output += _bundle(widgets.WIDGET_VIEW, "text/plain")  # the sliders: VBox(children=...)
    doc += output
    assert widgets.replace_widget_views(doc) == 1
    figure, note = output.children
    assert [c["mime_type"] for c in figure.children] == ["image/png", "text/plain"]
    assert isinstance(note, nodes.admonition) and "flatcomp-widget-note" in note["classes"]
    assert "Jupyter" in note.astext() and "Colab" in note.astext()
    assert widgets.WIDGET_VIEW not in doc.pformat() and widgets.replace_widget_views(doc) == 0


def test_the_widget_state_is_not_embedded_in_the_page():
    class Env:
        docname = "bounds"
        nb_metadata = {"bounds": {"js_files": {"ipywidgets_state": (None, {"body": "{}"}), "other": ("x.js", {})}}}

    class App:
        env = Env()

    widgets._drop_widget_state(App(), None)
    assert Env.nb_metadata["bounds"]["js_files"] == {"other": ("x.js", {})}
    App.env.docname = "intro"  # a page without notebook metadata
    widgets._drop_widget_state(App(), None)


def test_the_html_book_shows_the_local_colab_badge_and_keeps_the_link():
    doc = _document()
    link = nodes.reference(refuri=NB.colab_url("bounds.ipynb"))
    link += nodes.image(uri=NB.COLAB_BADGE, alt="Open In Colab")
    doc += nodes.paragraph("", "", link, nodes.image(uri="_images/figure.png"))
    assert NB.local_badges(doc) == 1
    badge, figure = doc.findall(nodes.image)
    assert badge["uri"] == NB.LOCAL_BADGE and badge["alt"] == "Open In Colab"
    assert badge.parent["refuri"].startswith("https://colab.research.google.com/github/")
    assert figure["uri"] == "_images/figure.png"


def test_the_local_badge_is_a_self_contained_svg_in_the_books_static_folder():
    svg = ROOT / "book" / NB.LOCAL_BADGE.lstrip("/")
    text = svg.read_text()
    assert text.lstrip().startswith("<svg") and "Open in Colab" in text
    # nothing to fetch: no href, no url(), no external font (the namespace URI is a name, not a request)
    assert "href" not in text and "url(" not in text and text.count("http") == 1
