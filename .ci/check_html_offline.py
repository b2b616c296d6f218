#!/usr/bin/env python3
"""Fail if a page of the built HTML book loads anything from another host (the book must read offline).

usage: python .ci/check_html_offline.py [BUILD]     (BUILD defaults to _build/html at the repository root)

Scans every ``*.html`` under BUILD for resources the browser fetches by itself: ``<script src>``, ``<img src|srcset>``,
``<link href>`` (stylesheets, icons, preloads: every relation except navigational ones such as canonical or next),
``<iframe|embed|video|audio|source|track|input src>``, ``<object data>``, ``<video poster>``, SVG ``<image|use href>``,
``<base href>``, ``url()`` and ``@import`` in ``style`` attributes and ``<style>`` elements; and every ``*.css`` under
BUILD for ``url()`` and ``@import``. Remote means ``http://``, ``https://``, ``ftp://``, ``ws(s)://`` or
protocol-relative ``//``. Plain hyperlinks (``<a href>``, ``<area href>``) may point anywhere: following one is the
reader's choice. JavaScript code is not analysed (a script that fetches a URL itself is not seen).
Exit status 1 naming each file, line and URL found (or when BUILD has no page), 0 otherwise.
"""
from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUILD = ROOT / "_build" / "html"

# Attributes whose URL the browser loads without a click, per element (lower case, as HTMLParser reports them).
LOADING = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "link": ("href", "imagesrcset"),
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "input": ("src",),
    "image": ("href", "xlink:href"),
    "use": ("href", "xlink:href"),
    "feimage": ("href", "xlink:href"),
    "base": ("href",),
    "body": ("background",),
    "table": ("background",),
    "td": ("background",),
    "th": ("background",),
}
SRCSET = {"srcset", "imagesrcset"}
# <link rel=...> values that only describe a relation (nothing is fetched): such a link may point anywhere.
NAVIGATIONAL_RELS = {"alternate", "author", "bookmark", "canonical", "external", "first", "help", "home", "index",
                     "last", "license", "me", "next", "nofollow", "noopener", "noreferrer", "prev", "previous",
                     "search", "start", "contents", "glossary", "copyright", "top", "up", "edit", "shortlink"}
_REMOTE = re.compile(r"^(?:(?:https?|ftp|wss?):|//)", re.IGNORECASE)
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"\s]*))\s*\)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)


def is_remote(url: str) -> bool:
    """True for a URL on another host: a network scheme or protocol-relative ``//host`` (browsers drop leading
    spaces and control characters, read ``\\`` as ``/`` and ignore tabs and newlines inside a URL)."""
    cleaned = re.sub(r"[\t\n\r]", "", url).lstrip(" \x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c"
                                                   "\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a"
                                                   "\x1b\x1c\x1d\x1e\x1f").replace("\\", "/")
    return bool(_REMOTE.match(cleaned))


def css_urls(css: str) -> list[str]:
    """The URLs a stylesheet (or a ``style`` attribute) loads: ``url(...)`` and ``@import "..."``, outside comments."""
    css = _CSS_COMMENT.sub("", css)
    found = [next(g for g in m.groups() if g is not None) for m in _CSS_URL.finditer(css)]
    found += [next(g for g in m.groups() if g is not None) for m in _CSS_IMPORT.finditer(css)]
    return found


def _srcset_urls(value: str) -> list[str]:
    return [part.split()[0] for part in value.split(",") if part.split()]


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, str, str]] = []  # (line, what, url)
        self._in_style = False

    def _report(self, what: str, url: str) -> None:
        if is_remote(url):
            self.found.append((self.getpos()[0], what, url.strip()))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        names = LOADING.get(tag, ())
        if tag == "link":
            rels = set(values.get("rel", "").lower().split())
            if rels and rels <= NAVIGATIONAL_RELS:
                names = ()
        for name in names:
            if name in values:
                for url in _srcset_urls(values[name]) if name in SRCSET else [values[name]]:
                    self._report(f"<{tag} {name}>", url)
        if "style" in values:
            for url in css_urls(values["style"]):
                self._report(f"<{tag} style>", url)
        if tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            for url in css_urls(data):
                self._report("<style>", url)


def scan_html(html: str) -> list[tuple[int, str, str]]:
    """Every remote resource a page loads, as ``(line, what, url)``: ``what`` names the element and attribute."""
    scanner = _Scanner()
    scanner.feed(html)
    scanner.close()
    return scanner.found


def scan_css(css: str) -> list[tuple[int, str, str]]:
    """Every remote ``url()`` / ``@import`` of a stylesheet, as ``(line, 'css', url)``."""
    found = []
    for number, line in enumerate(_CSS_COMMENT.sub(lambda m: "\n" * m.group().count("\n"), css).splitlines(), 1):
        found += [(number, "css url()/@import", url) for url in css_urls(line) if is_remote(url)]
    return found


def check(build: Path) -> tuple[int, int, dict[Path, list[tuple[int, str, str]]]]:
    """Scan a build folder: ``(pages, stylesheets, {file: findings})`` for the files that load something remote."""
    pages = sorted(build.rglob("*.html"))
    sheets = sorted(build.rglob("*.css"))
    problems = {}
    for path, scan in [(p, scan_html) for p in pages] + [(s, scan_css) for s in sheets]:
        found = scan(path.read_text(encoding="utf-8", errors="replace"))
        if found:
            problems[path] = found
    return len(pages), len(sheets), problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 1
    build = Path(args[0]) if args else DEFAULT_BUILD
    pages, sheets, problems = check(build)
    if not pages:
        print(f"check_html_offline: no HTML page under {build} (build the book first: make html)", file=sys.stderr)
        return 1
    if problems:
        print(f"check_html_offline: {len(problems)} file(s) under {build} load resources from other hosts "
              f"(offline readers get none of them):", file=sys.stderr)
        for path, found in problems.items():
            for line, what, url in found:
                print(f"  {path.relative_to(build)}:{line}: {what} {url}", file=sys.stderr)
        return 1
    print(f"check_html_offline: {pages} pages and {sheets} stylesheets under {build} load nothing from other hosts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
