"""Sphinx configuration of refattn's documentation site.

The API reference, the per-method pages, the ledger page, the performance page and the table of
contents are written at every build by ``_generate.py`` (into ``_gen/``, not committed) from the
method registry (:func:`refattn._registry.methods`), the modules' ``__all__`` and docstrings, the
committed ledger snapshot ``ledger/report.json`` and ``benchmarks/RESULTS.md``. Build with::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import _generate  # noqa: E402

import refattn  # noqa: E402


def _mathjax_offline():
    """The ``sphinx-mathjax-offline`` extension (the ``docs`` extra): it copies MathJax into the built
    site and points ``mathjax_path`` at it, so maths renders without network. Its package directory
    has a hyphen in its name (``sphinx-mathjax-offline``), so it is loaded from its path."""
    import importlib.metadata
    import importlib.util

    init = importlib.metadata.distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/__init__.py")
    spec = importlib.util.spec_from_file_location("sphinx_mathjax_offline", str(init))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup(app):
    _mathjax_offline().setup(app)

_generate.generate(HERE)

project = "refattn"
author = "the refattn developers"
copyright = "the refattn developers"
release = version = refattn.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "_rstguard",  # docstrings that are not valid reST are shown verbatim, not failing -W
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "ledger/*.md", "README*", "**/.ipynb_checkpoints"]

myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc Parameters sections say what each argument is
autodoc_default_options = {"show-inheritance": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"refattn {release}"
html_static_path: list[str] = []
nitpicky = False
suppress_warnings = ["myst.header"]
