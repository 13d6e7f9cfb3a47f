"""``refattn cost METHOD --n N ...``: the counted cost table of a method at given sizes.

Every method declared in the registry (:mod:`refattn._registry`) is available: its parameter arrays
come from its declaration (``--size NAME=INT`` sets the size symbols their shapes use, e.g.
Linformer's ``k``), and its closed-form :class:`~refattn.cost.Cost` (where declared) is printed next
to the counted one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import random as _random
from ._checks import check_int
from ._registry import methods
from ._vjp import vjp
from .backends import BackendUnavailable
from .cost import _timeit, measure

__all__ = ["add_parser", "cmd_cost"]


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        name, sep, val = item.partition("=")
        if not sep or not name:
            msg = f"{what} must look like NAME=VALUE, got {item!r}"
            raise ValueError(msg)
        out[name] = _value(val)
    return out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``cost`` subcommand to ``refattn``'s subparsers."""
    p = sub.add_parser("cost", help="counted FLOPs, bytes and peak memory of a method at given sizes",
                       description="Run METHOD once on the counting namespace (refattn.cost) and print "
                                   "where its FLOPs, bytes and memory go, with its closed form if known.")
    p.add_argument("method", help=f"one of: {', '.join(methods())}")
    p.add_argument("--n", type=int, required=True, help="query length")
    p.add_argument("--m", type=int, default=None, help="key length (default: n)")
    p.add_argument("--d", type=int, default=64, help="query/key head dimension (default 64)")
    p.add_argument("--dv", type=int, default=None, help="value head dimension (default: d)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--heads", type=int, default=1, help="number of heads (default 1)")
    p.add_argument("--causal", nargs="?", const=True, default=False,
                   help="causal mask (optionally top_left or bottom_right)")
    p.add_argument("--impl", default=None, help="implementation option of the method (e.g. dense, blockwise)")
    p.add_argument("--block-q", type=int, default=None)
    p.add_argument("--block-k", type=int, default=None)
    p.add_argument("--backward", action="store_true", help="count forward + backward (refattn.vjp)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--backend", default="numpy", help="backend that runs the counted ops (default numpy)")
    p.add_argument("--size", action="append", default=[], metavar="NAME=INT",
                   help="further size variables for the method's parameters (e.g. k=64)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="further keyword options passed to the method")
    p.add_argument("--top", type=int, default=None, help="show only the TOP ops by flops")
    p.add_argument("--timing", action="store_true",
                   help="also time the call with and without counting (best of 3) and print the overhead")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cost)
    return p


def cmd_cost(args: argparse.Namespace) -> int:
    """``refattn cost``: exit code 0, or 2 with one line on stderr for bad input (an unknown method or
    backend, a negative size, an option the method refuses)."""
    try:
        return _cost(args)
    except (TypeError, ValueError, ArithmeticError, ImportError, BackendUnavailable) as exc:
        print(f"refattn cost: error: {args.method}: {exc}", file=sys.stderr)
        return 2


def _cost(args: argparse.Namespace) -> int:
    table = methods()
    if args.method not in table:
        msg = f"unknown method {args.method!r}; known: {', '.join(table)}"
        raise ValueError(msg)
    for name in ("n", "m", "d", "dv", "batch", "heads"):
        check_int(f"--{name}", getattr(args, name), minimum=0, allow_none=True)
    for name in ("top",):
        check_int(f"--{name}", getattr(args, name), minimum=1, allow_none=True)
    entry = table[args.method]
    fn = entry.function
    m = args.n if args.m is None else args.m
    dv = args.d if args.dv is None else args.dv
    batch = (args.batch, args.heads)
    sizes: dict[str, Any] = entry.resolve_sizes({
        "batch": batch, "n": args.n, "m": m, "d": args.d, "dv": dv,
        "dtype_bytes": 8 if args.dtype == "float64" else 4, **_pairs(args.size, "--size")})
    opts: dict[str, Any] = {}
    if args.causal is not False:
        opts["causal"] = True if args.causal is True else args.causal
    for name, val in (("impl", args.impl), ("block_q", args.block_q), ("block_k", args.block_k)):
        if val is not None:
            opts[name] = val
    opts.update(_pairs(args.option, "--option"))
    rng = _random.default_rng(args.seed)

    def make(shape: tuple[int, ...]) -> Any:
        return _random.normal(tuple(shape), rng=rng, backend=args.backend, dtype=args.dtype)

    arrays = (make((*batch, args.n, args.d)), make((*batch, m, args.d)), make((*batch, m, dv)))
    arrays += tuple(entry.make_params(sizes, rng, args.backend, args.dtype, opts).values())
    kwargs: dict[str, Any] = dict(opts)
    if args.backward:
        kwargs = {"dout": make((*batch, args.n, dv))}

        def run(*arrs: Any, dout: Any) -> Any:
            out, pullback = vjp(fn, *arrs, **opts)
            return pullback(dout)
    else:
        run = fn
    counted = measure(run, *arrays, **kwargs)
    what = "forward + backward" if args.backward else "forward"
    shown = ", ".join(f"{k}={v}" for k, v in opts.items())
    print(f"{args.method} ({fn.__module__}:{fn.__name__}), {what}, batch={args.batch} heads={args.heads} n={args.n} "
          f"m={m} d={args.d} dv={dv}, {args.dtype} on {args.backend}" + (f", {shown}" if shown else ""))
    print()
    print(counted.table(top=args.top))
    closed = entry.closed_cost(sizes, opts, args.backward)
    if closed is not None:
        flops_ok = "==" if closed.flops == counted.flops else "!="
        peak = (f"peak bound {closed.peak_bytes:,} bytes (counted peak is "
                f"{counted.peak_bytes / closed.peak_bytes:.0%} of it)") if closed.peak_bytes else "peak not modelled"
        print(f"closed form: flops {closed.flops:,} ({flops_ok} counted), transcendentals "
              f"{closed.transcendentals:,}, {peak}")
    else:
        print("closed form: none declared for this call" + (" (forward only)" if args.backward else ""))
    if args.timing:
        plain = _timeit(lambda: run(*arrays, **kwargs))
        with_count = _timeit(lambda: measure(run, *arrays, **kwargs))
        print(f"time (best of 3): {1e3 * plain:.2f} ms plain, {1e3 * with_count:.2f} ms counted: "
              f"counting overhead x{with_count / plain:.2f}")
    return 0
