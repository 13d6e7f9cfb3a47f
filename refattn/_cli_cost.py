"""``refattn cost METHOD --n N ...``: the counted cost table of a method at given sizes.

Methods are looked up by name in :data:`METHODS`; adding one is one line, e.g.::

    "linear": Method("refattn.methods.linear:linear_attention"),
    "linformer": Method("refattn.methods.linformer:linformer_attention",
                        params=lambda s, mk: (mk((s["k"], s["m"])), mk((s["k"], s["m"])))),

``params(sizes, make)`` returns the method's extra positional arrays (``make(shape)`` draws iid
N(0, 1) entries on the chosen backend; ``sizes`` holds ``batch n m d dv`` and every ``--size
NAME=INT``); ``closed(sizes, options, backward)`` returns the closed-form :class:`~refattn.cost.Cost`
printed next to the counted one.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import random as _random
from ._vjp import vjp
from .cost import Cost, _timeit, measure

__all__ = ["Method", "METHODS", "add_parser", "cmd_cost"]


@dataclass(frozen=True)
class Method:
    """How ``refattn cost`` calls a method: ``target`` is ``"module:public_function"``."""

    target: str
    params: Callable[[dict[str, Any], Callable[[tuple[int, ...]], Any]], tuple[Any, ...]] | None = None
    closed: Callable[[dict[str, Any], dict[str, Any], bool], Cost] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def function(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


def _softmax_closed(s: dict[str, Any], opts: dict[str, Any], backward: bool) -> Cost:
    from .methods import softmax

    impl = opts.get("impl", "auto")
    if impl == "auto":
        itemsize = s["dtype_bytes"]
        dense = math.prod(s["batch"]) * s["n"] * s["m"] * itemsize <= softmax.AUTO_DENSE_LIMIT_BYTES
        impl = "dense" if dense else "blockwise"
    return softmax.cost(s["batch"], s["n"], s["m"], s["d"], s["dv"], impl=impl, backward=backward,
                        causal=opts.get("causal", False),
                        block_q=opts.get("block_q") or softmax.DEFAULT_BLOCK_Q,
                        block_k=opts.get("block_k") or softmax.DEFAULT_BLOCK_K,
                        dtype_bytes=s["dtype_bytes"])


#: name -> Method. One line per method.
METHODS: dict[str, Method] = {
    "softmax": Method("refattn.methods.softmax:softmax_attention", closed=_softmax_closed),
}


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
            raise SystemExit(msg)
        out[name] = _value(val)
    return out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``cost`` subcommand to ``refattn``'s subparsers."""
    p = sub.add_parser("cost", help="counted FLOPs, bytes and peak memory of a method at given sizes",
                       description="Run METHOD once on the counting namespace (refattn.cost) and print "
                                   "where its FLOPs, bytes and memory go, with its closed form if known.")
    p.add_argument("method", help=f"one of: {', '.join(METHODS)}")
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
    if args.method not in METHODS:
        msg = f"unknown method {args.method!r}; known: {', '.join(METHODS)}"
        raise SystemExit(msg)
    entry = METHODS[args.method]
    fn = entry.function()
    m = args.n if args.m is None else args.m
    dv = args.d if args.dv is None else args.dv
    batch = (args.batch, args.heads)
    sizes: dict[str, Any] = {"batch": batch, "n": args.n, "m": m, "d": args.d, "dv": dv,
                             "dtype_bytes": 8 if args.dtype == "float64" else 4,
                             **_pairs(args.size, "--size")}
    opts: dict[str, Any] = dict(entry.options)
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
    arrays += tuple(entry.params(sizes, make)) if entry.params else ()
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
    print(f"{args.method} ({entry.target}), {what}, batch={args.batch} heads={args.heads} n={args.n} "
          f"m={m} d={args.d} dv={dv}, {args.dtype} on {args.backend}" + (f", {shown}" if shown else ""))
    print()
    print(counted.table(top=args.top))
    if entry.closed is not None:
        closed = entry.closed(sizes, opts, args.backward)
        flops_ok = "==" if closed.flops == counted.flops else "!="
        print(f"closed form: flops {closed.flops:,} ({flops_ok} counted), transcendentals "
              f"{closed.transcendentals:,}, peak bound {closed.peak_bytes:,} bytes "
              f"(counted peak is {counted.peak_bytes / max(closed.peak_bytes, 1):.0%} of it)")
    if args.timing:
        plain = _timeit(lambda: run(*arrays, **kwargs))
        with_count = _timeit(lambda: measure(run, *arrays, **kwargs))
        print(f"time (best of 3): {1e3 * plain:.2f} ms plain, {1e3 * with_count:.2f} ms counted: "
              f"counting overhead x{with_count / plain:.2f}")
    return 0
