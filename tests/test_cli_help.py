"""``refattn --help`` and every subcommand's ``--help`` are plain text: no reST markup from the
docstrings they come from, no stale text."""

import re

import pytest

from refattn._cli_text import plain
from refattn.cli import main

MARKUP = re.compile(r"``|:(func|mod|class|meth|ref|attr|data):`")


def _help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["info"], ["cost"], ["check"], ["example-inputs"], ["verify"]])
def test_help_is_plain(command, capsys):
    text = _help([*command, "--help"], capsys)
    assert not MARKUP.search(text), text
    assert "Later subcommands" not in text


def test_bench_help_is_plain(capsys):
    pytest.importorskip("torch")
    text = _help(["bench", "--help"], capsys)
    assert not MARKUP.search(text), text
    assert "--allocator" in text


def test_plain():
    assert plain("The ``refattn`` command, :func:`~refattn.cost.measure`, :mod:`refattn.cost`") == (
        "The refattn command, measure, refattn.cost")
    assert plain(":ref:`the ledger <ledger>` **strong** *em*; every *.md and *.rst") == (
        "the ledger strong em; every *.md and *.rst")
    table = "    ``q`` (..., n, d)   required\n    ``mask``            optional"
    lines = plain(table).split("\n")
    assert lines[0].index("required") == lines[1].index("optional") == table.split("\n")[0].index("required")
