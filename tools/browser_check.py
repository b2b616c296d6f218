#!/usr/bin/env python3
"""Read the built HTML book the way an offline reader's browser shows it (issue "A book readers can use anywhere").

usage: python tools/browser_check.py [HTML_DIR] [--shots DIR]      (HTML_DIR defaults to _build/html)

Every page is opened in headless Chromium **with networking disabled** (``unshare -n``: the browser runs in a
network namespace with no interfaces but loopback, so nothing can load from another host, not even by mistake);
after MathJax has had 20 s of virtual time, the rendered DOM is read back (``--dump-dom``) and checked:

- maths: every ``.math`` element (inline and display) holds a rendered ``mjx-container`` (no raw TeX left);
- figures: every ``<figure>`` has a numbered caption (``Fig. N``) and an image whose file exists;
- widgets: no widget view is left (an empty area without a kernel); each explorer shows the note instead
  (``flatcomp-widget-note``);
- the Colab badge is the local image.

A page screenshot (1280 px wide, the first ``--height`` pixels) is written to ``--shots`` for a person to look at.
Exit status 1 if any page fails a check. Needs ``chromium`` and ``unshare`` (util-linux; root or user namespaces);
this is a maintainer's check of the built book, not part of CI (which checks the same pages without a browser in
``.ci/check_html_offline.py``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"genindex.html", "search.html"}
CHROMIUM = ["unshare", "-n", "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--virtual-time-budget=20000"]


def rendered_dom(page: Path) -> str:
    """The page's DOM after its scripts ran, offline."""
    out = subprocess.run(CHROMIUM + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    if out.returncode != 0 or "<html" not in out.stdout:
        raise RuntimeError(f"chromium could not render {page.name}: {out.stderr[-500:]}")
    return out.stdout


def screenshot(page: Path, target: Path, height: int) -> None:
    subprocess.run(CHROMIUM + [f"--window-size=1280,{height}", f"--screenshot={target}", page.as_uri()],
                   capture_output=True, timeout=180, check=True)


def page_problems(page: Path, dom: str) -> tuple[dict, list[str]]:
    """Counts for the report, and what is wrong on the page."""
    soup = BeautifulSoup(dom, "html.parser")
    problems = []
    maths = soup.select(".math")
    raw = [m.get_text()[:60] for m in maths if not m.find("mjx-container")]
    if raw:
        problems.append(f"{len(raw)} formulas not rendered, e.g. {raw[0]!r}")
    figures = soup.select("figure")
    for fig in figures:
        name = fig.get("id", "?")
        caption = fig.find("figcaption")
        if caption is None or not caption.get_text(" ", strip=True).startswith("Fig."):
            problems.append(f"figure {name} has no numbered caption")
        imgs = fig.find_all("img")
        if not imgs or not all((page.parent / img.get("src", "")).is_file() for img in imgs):
            problems.append(f"figure {name}: image missing")
    views = soup.select(".jupyter-widgets, [data-mime-type*='widget-view'], script[type*='widget-view']")
    if views:
        problems.append(f"{len(views)} widget views left (blank without a kernel)")
    badges = [img.get("src", "") for a in soup.select("a[href*='colab.research.google.com']")
              for img in a.find_all("img")]
    if any(src.startswith("http") for src in badges):
        problems.append("the Colab badge loads from the network")
    counts = {"formulas": len(maths), "figures": len(figures),
              "widget notes": len(soup.select(".flatcomp-widget-note")), "images": len(soup.find_all("img"))}
    return counts, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", nargs="?", default=ROOT / "_build" / "html", type=Path)
    parser.add_argument("--shots", type=Path, default=Path(tempfile.gettempdir()) / "flatcomp-shots")
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    pages = sorted(p for p in args.html.glob("*.html") if p.name not in SKIP)
    if not pages:
        print(f"no pages in {args.html}; build the book first (jupyter-book build book/)")
        return 1
    args.shots.mkdir(parents=True, exist_ok=True)
    failed = 0
    for page in pages:
        counts, problems = page_problems(page, rendered_dom(page))
        screenshot(page, args.shots / f"{page.stem}.png", args.height)
        status = "ok" if not problems else "FAIL"
        failed += bool(problems)
        print(f"{status:4} {page.name:24} " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        for p in problems:
            print(f"       - {p}")
    print(f"{len(pages) - failed} of {len(pages)} pages pass offline; screenshots in {args.shots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
