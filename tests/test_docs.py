"""The documentation site builds with warnings as errors, and every docstring example runs.

The build needs the ``docs`` extra (skipped without Sphinx); the doctests run every ``>>>`` example of
refattn's modules on NumPy and on array-api-strict (``xp`` in the examples is the namespace).
"""

from __future__ import annotations

import copy
import doctest
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built once for this module's tests: ``(html directory, sphinx-build's result)``."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("furo")
    out = tmp_path_factory.mktemp("docs") / "html"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(out)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    return out, proc


def _check_site():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        return importlib.import_module("check_site")
    finally:
        sys.path.remove(str(ROOT / "docs"))


def test_docs_build(site):
    out, proc = site
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    methods = sorted((out / "_gen" / "methods").glob("*.html"))
    from refattn._registry import methods as registry

    assert {p.stem for p in methods} == {*registry(), "index"}
    for page in methods:
        if page.stem != "index":
            assert 'class="math notranslate nohighlight"' in page.read_text(encoding="utf-8"), page.name
    assert (out / "_static" / "mathjax" / "tex-chtml.js").exists()  # maths without network
    assert (out / "_gen" / "ledger.html").exists() and (out / "_gen" / "api" / "index.html").exists()


def test_docs_links(site):
    """Every href/src inside the built site names an existing file and anchor (docs/check_site.py)."""
    out, proc = site
    if proc.returncode != 0:
        pytest.skip("the site did not build (test_docs_build fails)")
    pages, checked, broken = _check_site().check_links(out)
    assert pages > 10 and checked > 100
    assert not broken, "\n".join(broken[:20])


def test_docs_maths_render_in_chromium(site):
    """The method pages' formulas render (MathJax, network blocked) in headless Chromium, where installed."""
    out, proc = site
    if proc.returncode != 0:
        pytest.skip("the site did not build (test_docs_build fails)")
    check = _check_site()
    chromium = check.find_chromium()
    if chromium is None:
        pytest.skip("no Chromium here (docs/check_site.py; apt-get install chromium)")
    pages = sorted((out / "_gen" / "methods").glob("*.html"))
    results = check.check_math(out, chromium, jobs=min(4, os.cpu_count() or 1), pages=pages)
    assert len(results) == len(pages) and sum(r.static for r in results) > 0
    bad = [r for r in results if not r.ok]
    assert not bad, bad


def _modules() -> list[str]:
    import refattn

    names = ["refattn"]
    for pkg in (refattn, importlib.import_module("refattn.backends"), importlib.import_module("refattn.verification")):
        names.append(pkg.__name__)
        names += [info.name for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    return sorted(set(names))


def _examples() -> list[tuple[str, doctest.DocTest]]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = []
    for name in _modules():
        if name.endswith(("cli", "__main__")):
            continue
        mod = importlib.import_module(name)
        for test in finder.find(mod, name):
            if test.examples and test.name not in {t.name for _, t in out}:
                out.append((test.name, test))  # test.globs: the module's namespace
    return out


EXAMPLES = _examples()


@pytest.mark.parametrize("namespace", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("name", [n for n, _ in EXAMPLES] or ["(none)"])
def test_docstring_examples(name, namespace):
    if name == "(none)":
        pytest.skip("no docstring examples")
    xp = pytest.importorskip(namespace)
    import numpy as np

    import refattn

    test = copy.copy(dict(EXAMPLES)[name])
    module = importlib.import_module(test.globs["__name__"])
    test.globs = {**vars(module), "np": np, "xp": xp, "refattn": refattn}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=sys.stdout.write, clear_globs=False)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, name
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed on {namespace}"
