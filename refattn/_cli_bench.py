"""``refattn bench [scaling] ...``: the benchmarks of a source checkout (``benchmarks/`` next to the
``refattn`` package; ``python -m benchmarks`` there is the same command)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        msg = (f"refattn bench runs the benchmarks/ directory of a source checkout; none next to {root / 'refattn'} "
               "(clone the repository and install it editable: pip install -e '.[peers]')")
        print(f"refattn bench: error: {msg}", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks.__main__").main(args.bench_args)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand; its arguments are those of ``python -m benchmarks`` (``--help`` there)."""
    # prefix_chars="+": every option after `bench` (--quick...) is passed through, not parsed here
    p = sub.add_parser("bench", add_help=False, prefix_chars="+",
                       help="time every method against its torch peer (benchmarks/ of a source checkout; "
                            "refattn bench --help for its options)",
                       description="refattn against torch peers; arguments as for python -m benchmarks "
                                   "(refattn bench --help lists them)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return p
