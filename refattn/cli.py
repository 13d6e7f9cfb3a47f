"""The ``refattn`` command: ``verify`` (the claims ledger of the seed papers, the main job), ``check``
and ``example-inputs`` (an implementation's dumped outputs and gradients against the float64 oracle),
``cost`` (counted FLOPs, bytes and peak memory of a method), ``bench`` (timings against torch peers,
in a source checkout) and ``info`` (the backends found here, each checked against the float64 NumPy
oracle). ``refattn COMMAND --help`` describes each."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import backends
from ._cli_text import plain_parser
from ._vjp import vjp
from .methods.softmax import softmax_attention

__all__ = ["main"]


def _info_case(seed: int = 0) -> tuple[np.ndarray, ...]:
    rs = np.random.default_rng(seed)
    b, h, n, m, d, dv = 2, 4, 256, 256, 64, 64
    return (rs.standard_normal((b, h, n, d)), rs.standard_normal((b, h, m, d)),
            rs.standard_normal((b, h, m, dv)), rs.standard_normal((b, h, n, dv)))


def _run(backend: backends.Backend, host: Sequence[np.ndarray], dtype: str) -> tuple[list[np.ndarray], float]:
    q, k, v, dout = (backend.asarray(a.astype(dtype)) for a in host)
    backend.synchronize()
    t0 = time.perf_counter()
    out, pullback = vjp(softmax_attention, q, k, v, causal=True)
    grads = pullback(dout)
    backend.synchronize()
    elapsed = time.perf_counter() - t0
    return [backend.to_host(a) for a in (out, *grads)], elapsed


def cmd_info(args: argparse.Namespace) -> int:
    import refattn

    print(f"refattn {refattn.__version__}, Python {sys.version.split()[0]}")
    host = _info_case()
    oracle, _ = _run(backends.get("numpy"), host, "float64")
    rows = []
    for name in backends.names():
        try:
            be = backends.get(name)
        except (backends.BackendUnavailable, ImportError) as exc:
            print(f"  {name:<18} unavailable: {exc}")
            continue
        dtypes = ["float64", "float32"]
        if name == "array_api_strict":
            dtypes = ["float64"]
        for dtype in dtypes:
            _run(be, host, dtype)  # warm-up
            got, secs = _run(be, host, dtype)
            err = max(float(np.max(np.abs(g - o)) / max(np.max(np.abs(o)), 1e-300))
                      for g, o in zip(got, oracle))
            rows.append((name, be.version, str(be.device), dtype, err, secs))
    print("\nsoftmax attention, causal, B=2 H=4 n=m=256 d=dv=64, forward + backward "
          "vs the float64 NumPy oracle")
    print(f"  {'backend':<18}{'version':<14}{'device':<22}{'dtype':<9}{'max rel err':>12}{'time [ms]':>11}")
    for name, ver, dev, dtype, err, secs in rows:
        print(f"  {name:<18}{ver:<14}{dev[:21]:<22}{dtype:<9}{err:>12.2e}{1e3 * secs:>11.2f}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments: exit code 2 and one line (argparse's usage block is left to ``--help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="refattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="backends found here, and a forward+backward check of each")
    p.set_defaults(func=cmd_info)
    from ._cli_cost import add_parser as add_cost_parser  # `refattn cost METHOD --n N ...`

    add_cost_parser(sub)
    from ._cli_bench import add_parser as add_bench_parser  # `refattn bench [scaling] ...`: benchmarks/

    add_bench_parser(sub)
    from ._check_cli import add_subcommands as add_check_subcommands

    add_check_subcommands(sub)  # refattn check, refattn example-inputs
    from .verification.cli import add_parser as add_verify  # `refattn verify`: the claims ledger

    add_verify(sub)
    plain_parser(parser)  # help texts come from docstrings: no reST markup on the terminal
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
