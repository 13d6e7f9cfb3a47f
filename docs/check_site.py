"""Checks a built documentation site: every link inside it resolves, and its formulas render.

Usage (from the repository root)::

    python docs/check_site.py                     # build into docs/_build/html (-W --keep-going), then check
    python docs/check_site.py --html DIR          # check an already built site
    python docs/check_site.py --no-browser        # links only (no Chromium needed)

Two checks, each printing one summary line (exit status 1 if either finds a fault):

- **links**: every ``href`` and ``src`` of every built ``*.html`` page that points inside the site (not
  ``http:``, ``https:``, ``mailto:``, ``data:``, ``javascript:``) must name an existing file, and its
  ``#fragment`` (if any) an ``id`` or ``name`` on the target page. A relative link that climbs out
  of the site counts as broken: it works from a checkout but not from a served site.
- **maths**: every method page (``_gen/methods/*.html``) and every other page with maths is opened in
  headless Chromium (``chromium`` from the system's packages, or ``$CHROMIUM``) with the network
  blocked, given time for MathJax to run (``--virtual-time-budget``), and its DOM is dumped; every
  maths element (``class="math"``) of the page must hold MathJax output (``mjx-container``) with no
  TeX error (``mjx-merror``), and no raw ``\\(`` / ``\\[`` delimiter may be left in the page's text.
  MathJax is the copy the site ships in ``_static/mathjax`` (``sphinx-mathjax-offline``); the blocked
  network shows that it renders offline.

The maths check takes 2-4 s of Chromium per page (about 45 s for the site's 21 pages with maths on a
loaded 2-core machine), so CI runs this script's checks from ``tests/test_docs.py`` on the site that
test builds: the link check always (about 2 s), the maths check on the method pages only and only
where Chromium is installed (skipped otherwise).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
EXTERNAL = ("http", "https", "mailto", "data", "javascript", "ftp", "tel")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# ------------------------------------------------------------------------------------------------
# links
# ------------------------------------------------------------------------------------------------

class _Refs(HTMLParser):
    """The ``href``/``src`` values and the anchor names (``id``, ``name``) of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("href", "src"):
                self.refs.append(value)
            elif name == "id" or (name == "name" and tag == "a"):
                self.anchors.add(value)

    handle_startendtag = handle_starttag


def _parse(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8", errors="replace"))
    return p


def check_links(html: Path) -> tuple[int, int, list[str]]:
    """``(pages, links checked, broken)`` for the site in ``html``; each broken entry names the page,
    the link and why."""
    html = html.resolve()
    pages = sorted(html.rglob("*.html"))
    parsed = {page: _parse(page) for page in pages}
    checked, broken = 0, []
    for page, p in parsed.items():
        for ref in p.refs:
            parts = urlsplit(ref)
            if parts.scheme in EXTERNAL or parts.netloc or ref.startswith("//"):
                continue
            if parts.scheme:  # file: or an unknown scheme: not a link inside the site
                broken.append(f"{page.relative_to(html)}: {ref} (scheme {parts.scheme}:)")
                continue
            checked += 1
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(html)}: {ref}"
            if target != html and html not in target.parents:
                broken.append(f"{where} (outside the site)")
                continue
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{where} (no file {target.relative_to(html)})")
                continue
            frag = unquote(parts.fragment)
            if frag and target.suffix == ".html":
                anchors = (parsed.get(target) or _parse(target)).anchors
                if frag not in anchors:
                    broken.append(f"{where} (no anchor #{frag} in {target.relative_to(html)})")
    return len(pages), checked, broken


# ------------------------------------------------------------------------------------------------
# maths in a browser
# ------------------------------------------------------------------------------------------------

@dataclass
class _MathDom(HTMLParser):
    """Walks a rendered DOM: each ``class="math"`` element, whether MathJax output is inside it, TeX
    errors, and raw TeX delimiters left in the text outside scripts and styles."""

    elements: int = 0
    rendered: int = 0
    errors: int = 0
    raw: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._stack: list[str] = []
        self._math_depth: int | None = None  # stack depth of the open maths element
        self._got_mjx = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        self._stack.append(tag)
        classes = (dict(attrs).get("class") or "").split()
        if self._math_depth is None and "math" in classes:
            self._math_depth, self._got_mjx = len(self._stack), False
            self.elements += 1
        if self._math_depth is not None and tag == "mjx-container":
            self._got_mjx = True
        if tag == "mjx-merror" or any(name == "data-mjx-error" for name, _ in attrs):
            self.errors += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or tag not in self._stack:
            return
        while self._stack:
            top = self._stack.pop()
            if self._math_depth is not None and len(self._stack) < self._math_depth:
                self.rendered += self._got_mjx
                self._math_depth = None
            if top == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1] in ("script", "style", "textarea"):
            return
        for delim in ("\\(", "\\["):
            if delim in data:
                i = data.index(delim)
                self.raw.append(data[max(0, i - 20):i + 40].strip())


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def dump_dom(chromium: str, page: Path, budget_ms: int = 15000, timeout: float = 120.0) -> str:
    """The DOM of ``page`` after its scripts ran for ``budget_ms`` of virtual time, network blocked."""
    with tempfile.TemporaryDirectory(prefix="refattn-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--disable-background-networking",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
               "--allow-file-access-from-files", f"--virtual-time-budget={budget_ms}",
               "--dump-dom", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium failed on {page} (exit {proc.returncode}): {proc.stderr[-1000:]}")
    return proc.stdout


def math_pages(html: Path) -> list[Path]:
    """The method pages and every other page with a maths element."""
    methods = set((html / "_gen" / "methods").glob("*.html"))
    with_math = {p for p in html.rglob("*.html") if 'class="math' in p.read_text(encoding="utf-8", errors="replace")}
    return sorted(methods | with_math)


@dataclass
class PageResult:
    page: str
    elements: int
    rendered: int
    errors: int
    raw: list[str]
    static: int  # maths elements in the built HTML, before MathJax

    @property
    def ok(self) -> bool:
        return self.rendered == self.elements == self.static and not self.errors and not self.raw


def check_page(chromium: str, html: Path, page: Path) -> PageResult:
    static = _MathDom()
    static.feed(page.read_text(encoding="utf-8", errors="replace"))
    dom = _MathDom()
    dom.feed(dump_dom(chromium, page))
    return PageResult(str(page.relative_to(html)), dom.elements, dom.rendered, dom.errors, dom.raw[:3],
                      static.elements)


def check_math(html: Path, chromium: str, jobs: int = 2, pages: list[Path] | None = None) -> list[PageResult]:
    """Open ``pages`` (default :func:`math_pages`) of the site in ``html`` in Chromium, ``jobs`` at once."""
    html = html.resolve()
    pages = math_pages(html) if pages is None else [p.resolve() for p in pages]
    if not (html / "_static" / "mathjax" / "tex-chtml.js").is_file():
        raise SystemExit(f"{html}: no _static/mathjax/tex-chtml.js (the site must ship MathJax to render offline)")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda p: check_page(chromium, html, p), pages))


# ------------------------------------------------------------------------------------------------

def build(out: Path) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise SystemExit(f"sphinx-build failed (exit {proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/check_site.py",
                                description="Check a built documentation site: internal links, and maths "
                                            "rendered by MathJax in headless Chromium (network blocked).")
    p.add_argument("--html", type=Path, default=None,
                   help="a built site (default: build docs/ into docs/_build/html first)")
    p.add_argument("--no-browser", action="store_true", help="check the links only")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="Chromium processes at once")
    a = p.parse_args(argv)
    html = a.html
    if html is None:
        html = DOCS / "_build" / "html"
        print(f"built {html} in {build(html):.1f} s (sphinx-build -W --keep-going)")
    failed = False
    t0 = time.perf_counter()
    pages, checked, broken = check_links(html)
    print(f"links: {pages} pages, {checked} links inside the site checked, {len(broken)} broken "
          f"({time.perf_counter() - t0:.1f} s)")
    for b in broken:
        print(f"  broken: {b}")
    failed |= bool(broken)
    if not a.no_browser:
        chromium = find_chromium()
        if chromium is None:
            print("maths: no Chromium found (apt-get install chromium, or set $CHROMIUM); use --no-browser to skip")
            return 1
        t0 = time.perf_counter()
        results = check_math(html, chromium, a.jobs)
        for r in results:
            flag = "ok" if r.ok else "FAIL"
            extra = f"; raw TeX left: {r.raw}" if r.raw else ""
            print(f"  {flag:<4} {r.page:<40} {r.rendered}/{r.elements} formulas rendered "
                  f"({r.static} in the HTML), {r.errors} TeX errors{extra}")
        bad = [r for r in results if not r.ok]
        print(f"maths: {len(results)} pages opened in {Path(chromium).name} (network blocked), "
              f"{sum(r.rendered for r in results)}/{sum(r.static for r in results)} formulas rendered, "
              f"{len(bad)} pages failing ({time.perf_counter() - t0:.1f} s)")
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
