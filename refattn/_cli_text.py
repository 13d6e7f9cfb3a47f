"""Plain terminal text from the reST of docstrings, for ``--help`` (argparse prints text verbatim).

``plain`` turns inline literals (````x````) into ``x``, roles (``:func:`~a.b```) into the name they
show (``b``), and ``**strong**`` / ``*emphasis*`` into their text; where a literal stood before a run
of two or more spaces (a column of an aligned table) the run is widened by the characters removed,
so the columns stay aligned. ``plain_parser`` applies it to a parser's description, epilog and every
help text, its subcommands' included.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["plain", "plain_parser"]

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)(?:\s*<([^`>]*)>)?`")
_TOKEN = re.compile(r"``([^`]+)``|\*\*([^*\s][^*]*)\*\*|(?<![\w*])\*([^*\s](?:[^*]*[^*\s])?)\*(?![\w*])| {2,}")


def _role(m: re.Match[str]) -> str:
    tilde, text, target = m.groups()
    if target is not None and text:
        return text  # :ref:`words <label>`
    return text.rsplit(".", 1)[-1] if tilde else text


def _line(line: str) -> str:
    out, owed, pos = [], 0, 0
    for m in _TOKEN.finditer(line):
        out.append(line[pos:m.start()])
        inner = next((g for g in m.groups() if g is not None), None)
        if inner is None:  # a run of spaces: pay back what the literals before it removed
            out.append(m.group(0) + " " * owed)
            owed = 0
        else:
            out.append(inner)
            owed += len(m.group(0)) - len(inner)
        pos = m.end()
    out.append(line[pos:])
    return "".join(out)


def plain(text: str | None) -> str | None:
    """``text`` without reST inline markup (see the module docstring); ``None`` stays ``None``."""
    if not text:
        return text
    text = _ROLE.sub(lambda m: "``" + _role(m) + "``", text)
    return "\n".join(_line(line) for line in text.split("\n"))


def plain_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Apply :func:`plain` to ``parser``'s description, epilog and help texts, recursively."""
    parser.description = plain(parser.description)
    parser.epilog = plain(parser.epilog)
    for action in parser._actions:
        if isinstance(action.help, str) and action.help is not argparse.SUPPRESS:
            action.help = plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help)
            for sub in set(action.choices.values()):
                plain_parser(sub)
    return parser
