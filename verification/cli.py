"""``refattn verify``: run the claims ledger, print it, write report.json, report.md and plots.

Exit codes: 0 when the ledger ran (whatever the verdicts: a claim that fails is a finding, not an
error); 2 for bad input (an unknown paper or claim id, an unknown or unavailable backend, an
unwritable --out directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_parser", "cmd_verify", "main", "Progress"]

EXIT_BAD_INPUT = 2
DEFAULT_OUT = "refattn-verify"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``verify`` subcommand to ``refattn``'s subparsers."""
    p = sub.add_parser(
        "verify", help="check the papers' claims and print the ledger (the main job)",
        description="Run every claim check of the five seed papers (and the results they rest on) and "
                    "say which hold, which hold only under a stated condition, which fail and which "
                    "cannot be checked yet. Writes report.json, report.md and plots into --out.")
    p.add_argument("--quick", action="store_true", help="small sizes, the same verdicts (CI; 8-18 s on 2 quiet cores)")
    p.add_argument("--paper", metavar="NAME",
                   help="only one paper: 000..004, classical, or an alias (heat, survey, kernels, verma, "
                        "hadamard)")
    p.add_argument("--claim", metavar="ID", action="append",
                   help="only this claim id (repeatable; --list shows the ids)")
    p.add_argument("--backend", metavar="NAME", default="numpy",
                   help="backend the checks run on (default numpy)")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"directory for report.json, report.md and plots/ (default ./{DEFAULT_OUT})")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots")
    p.add_argument("--list", action="store_true", help="list the claim ids and their modules, run nothing")
    p.set_defaults(func=cmd_verify)
    return p


class Progress:
    """A plain-text progress bar on a stream (a redrawn line on a terminal, one line per claim else)."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int, claim_id: str, verdict: Any) -> None:
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.t0
        if verdict is None:
            if self.tty:
                self.stream.write(f"\r[{bar}] {done}/{total} {claim_id:<22.22} {elapsed:6.1f} s\033[K")
                self.stream.flush()
            return
        line = f"[{bar}] {done}/{total} {claim_id:<22.22} {verdict.status:<19} {verdict.seconds:6.2f} s"
        if self.tty:
            self.stream.write("\r" + line + "\033[K" + ("\n" if done == total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _fail(msg: str) -> int:
    print(f"refattn verify: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _writable(out: Path) -> str | None:
    """None if ``out`` can hold the report (created if needed), else the reason."""
    if out.exists() and not out.is_dir():
        return f"--out {str(out)!r} is not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create --out directory {str(out)!r}: {exc.strerror or exc}"
    try:
        fd, probe = tempfile.mkstemp(prefix=".refattn-verify-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"--out directory {str(out)!r} is not writable: {exc.strerror or exc}"
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    from refattn import backends

    from . import _select, claims_of, entries, load, module_status, resolve_paper, run
    from . import report as rep

    load()
    if args.list:
        for e in entries():
            state = module_status().get(e.module, ("missing", ""))[0]
            print(f"{e.claim_id:<22} {','.join(e.all_papers()):<14} {e.module:<16} {state:<8} {e.source}")
        return 0
    # Bad input first, before any long work.
    try:
        paper = resolve_paper(args.paper) if args.paper is not None else None
        _select(paper, args.claim)  # unknown claim ids, claim/paper mismatch: before --out is created
    except ValueError as exc:
        return _fail(str(exc))
    try:
        be = backends.get(args.backend)
    except (ValueError, backends.BackendUnavailable, ImportError) as exc:
        return _fail(f"backend {args.backend!r}: {exc}")
    out = Path(args.out)
    why = _writable(out)
    if why:
        return _fail(why)
    t0 = time.perf_counter()
    try:
        verdicts = run(quick=args.quick, backend=be, paper=paper, claim=args.claim, progress=Progress())
    except ValueError as exc:  # unknown claim id, claim/paper mismatch
        return _fail(str(exc))
    seconds = time.perf_counter() - t0

    print(f"\nrefattn verify ({'quick' if args.quick else 'full'}, backend {be.name}): "
          f"{len(verdicts)} rows ({len(claims_of(verdicts))} claims) in {seconds:.1f} s\n")
    print(rep.format_table(verdicts))
    doc = rep.build(verdicts, quick=args.quick, backend=be, seconds=seconds, paper=paper,
                    claims=args.claim, modules=module_status())
    summary = None
    if not args.no_plots:
        try:
            files, summary = rep.write_plots(doc, out)
        except ImportError:
            print(f"\n(no plots: {rep.PLOTS_HINT})")
        else:
            for v in doc["verdicts"]:
                v["plot_file"] = files.get(v["claim_id"])
    rep.write_json(doc, out / "report.json")
    rep.write_markdown(doc, out / "report.md", summary_plot=summary)
    c = doc["counts"]
    k = doc["kinds"]
    print(f"\n{c['holds']} hold, {c['holds-conditionally']} hold conditionally, {c['fails']} fail, "
          f"{c['not-checkable']} not checkable ({sum(c.values())} rows, {doc['claims']} claims; "
          f"{k['measured']} measured, {k['derived']} derived checks; {seconds:.1f} s)")
    slow = sorted(verdicts, key=lambda v: v.seconds, reverse=True)[:3]
    if slow and slow[0].seconds >= 1.0:
        print("slowest: " + ", ".join(f"{v.claim_id} {v.seconds:.1f} s" for v in slow))
    print(f"report: {out / 'report.md'}, {out / 'report.json'}"
          + (f", plots in {out / 'plots'}" if summary else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m refattn.verification.cli ...`` (the same as ``refattn verify ...``)."""
    parser = argparse.ArgumentParser(prog="refattn")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["verify", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
