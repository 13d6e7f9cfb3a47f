"""Docstrings that are not valid reStructuredText are shown verbatim instead of failing the build.

refattn's docstrings are read as numpydoc/reStructuredText, but many are written as plain text with
``literals`` (``|x|`` norms, aligned continuation lines). With ``sphinx-build -W`` one such docstring,
written by anyone, would fail the build; instead :func:`problems` parses each docstring on its own
(after napoleon) and a docstring with a parse error or warning is shown as a literal block, with the
count of such docstrings printed at the end of the build (``python docs/_rstguard.py`` lists them).
Pipes outside literals and maths are escaped first (refattn never uses substitutions), which fixes
the most common case (``|x|``) without falling back.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from typing import Any

FALLBACKS: list[str] = []
_RAW_START = re.compile(r"^(\s*)(?:\.\. [\w:-]+::.*|.*::)\s*$")
_INLINE = re.compile(r"(``.+?``|:[\w:.+-]+:`[^`]*`|`[^`]*`_?_?|\$[^$]+\$)")


def escape_pipes(lines: list[str]) -> list[str]:
    """``|`` outside inline literals, roles, raw blocks (``::``, ``.. math::``) and tables escaped."""
    out = []
    raw_indent: int | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if raw_indent is not None:
            if not stripped or indent > raw_indent:
                out.append(line)
                continue
            raw_indent = None
        if _RAW_START.match(line):
            raw_indent = indent
            if stripped.startswith(".. math::"):
                out.append(line)
                continue
        if stripped.startswith(("+-", "|", "===", "+=")) or stripped.startswith(".. "):
            out.append(line)
            continue
        parts = _INLINE.split(line)
        out.append("".join(p if i % 2 else re.sub(r"(?<!\\)\|", r"\\|", p) for i, p in enumerate(parts)))
    return out


#: directives whose content is not reST (anything else unknown to docutils is parsed as reST)
RAW_DIRECTIVES = {"code-block", "sourcecode", "highlight", "doctest", "testcode", "testoutput", "literalinclude",
                  "autofunction", "autoclass", "automodule", "autodata", "graphviz", "plot"}


def _plain_docutils() -> None:
    """Make plain docutils accept Sphinx's directives and roles, still checking what they contain:
    an unknown directive parses its options as inline text and its content as reST; an unknown role
    is an inline literal."""
    from docutils import nodes
    from docutils.parsers.rst import Directive, directives, roles

    class AnyOptions(dict):
        def __contains__(self, key: object) -> bool:
            return True

        def __getitem__(self, key: str) -> Any:
            return directives.unchanged

    class Generic(Directive):
        optional_arguments = 20
        final_argument_whitespace = True
        has_content = True
        option_spec = AnyOptions(any=None)  # non-empty: docutils reads options only if there is a spec

        def run(self) -> list[Any]:
            node = nodes.container()
            for value in self.options.values():
                if value:
                    _, msgs = self.state.inline_text(value, self.lineno)
                    node += msgs
            if self.name not in RAW_DIRECTIVES:
                self.state.nested_parse(self.content, self.content_offset, node)
            return [node]

    def generic_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
                     content: Any = None) -> Any:
        return [nodes.literal(rawtext, text)], []

    known_directive, known_role = directives.directive, roles.role

    def directive(name: str, language: Any, document: Any) -> Any:
        found, msgs = known_directive(name, language, document)
        return (found or Generic), []

    def role(name: str, language: Any, lineno: int, reporter: Any) -> Any:
        found, msgs = known_role(name, language, lineno, reporter)
        return (found or generic_role), []

    directives.directive, roles.role = directive, role
    import docutils.parsers.rst.states as states

    states.directives, states.roles = directives, roles


def _parse(text: str) -> list[str]:
    """The docutils messages (warnings and errors) of ``text`` parsed on its own."""
    from docutils import nodes
    from docutils.core import publish_doctree

    stream = io.StringIO()
    overrides = {"report_level": 2, "halt_level": 5, "warning_stream": stream, "file_insertion_enabled": False,
                 "raw_enabled": False, "traceback": True}
    try:
        doc = publish_doctree(text, settings_overrides=overrides)
    except Exception as exc:
        return [f"{type(exc).__name__}: {exc}"]
    msgs = [m.astext() for m in doc.findall(nodes.system_message) if m["level"] >= 2]
    msgs += [line for line in stream.getvalue().splitlines() if re.search(r"\((WARNING|ERROR|SEVERE)/", line)]
    return msgs


_WORKER: Any = None


def problems(text: str) -> list[str]:
    """:func:`_parse` run in a separate process with plain docutils: inside a Sphinx build docutils'
    registries hold Sphinx's directives and roles, which need a document being read (and would
    register the objects a docstring describes a second time)."""
    global _WORKER
    if _WORKER is None or _WORKER.poll() is not None:
        _WORKER = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, encoding="utf-8")
    _WORKER.stdin.write(json.dumps(text) + "\n")
    _WORKER.stdin.flush()
    return json.loads(_WORKER.stdout.readline())


def _worker() -> None:
    _plain_docutils()
    for line in sys.stdin:
        sys.stdout.write(json.dumps(_parse(json.loads(line))) + "\n")
        sys.stdout.flush()


def verbatim(lines: list[str]) -> list[str]:
    return ["::", ""] + ["    " + line if line.strip() else "" for line in lines] + [""]


def blocks(lines: list[str]) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of ``lines``: cut before every unindented line that follows a
    blank one (so a directive keeps its indented content, across blank lines)."""
    cuts = [0] + [i for i in range(1, len(lines))
                  if lines[i].strip() and not lines[i][:1].isspace() and not lines[i - 1].strip()]
    return list(zip(cuts, cuts[1:] + [len(lines)]))


def guard(lines: list[str], where: str) -> list[str]:
    """``lines`` with pipes escaped; each block that still does not parse cleanly shown verbatim (the
    whole docstring verbatim if the clean blocks together still do not)."""
    fixed = escape_pipes(lines)
    if not problems("\n".join(fixed)):
        return fixed
    FALLBACKS.append(where)
    out: list[str] = []
    for start, stop in blocks(fixed):
        block = fixed[start:stop]
        if problems("\n".join(block)):
            body = lines[start:stop]
            while body and not body[-1].strip():
                body.pop()
            out += verbatim(body)
        else:
            out += block + ([""] if block[-1].strip() else [])
    if problems("\n".join(out)):
        return verbatim(lines)
    return out


def process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    new = guard(list(lines), f"{what} {name}")
    lines[:] = new


def report(app: Any, exc: Any) -> None:
    if FALLBACKS:
        from sphinx.util import logging

        logging.getLogger(__name__).info(f"{len(FALLBACKS)} docstrings shown verbatim (not valid reST): "
                                         + ", ".join(sorted(set(FALLBACKS))))


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", process_docstring, priority=900)
    app.connect("build-finished", report)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
