"""Dense output projection (GEMM) vs the fast Walsh-Hadamard transform, on a (B*n, c) activation.

For each width ``c`` and backend: the best-of-``repeat`` wall time of

- ``gemm``:    ``x @ W_O`` (``W_O`` a dense ``c x c`` matrix; the bias add is left out on both sides),
- ``fwht``:    ``refattn.fwht(x)`` (generic array-API butterflies: ``c log2 c`` add/sub + ``c`` scale),
- ``fwht_be``: ``refattn.fwht(x, impl="backend")`` (the backend's Kronecker-GEMM primitive, where
  there is one: ``2 c (b_1 + ... + b_k)`` flops per row with factors ``b_i <= 64``),

and the time and FLOP ratios ``gemm / fwht``. FLOPs per row follow refattn.cost's conventions:
GEMM ``2 c^2`` (a multiply-add is 2 flops); FWHT ``c log2 c + c``. 004's Figure 3 plots ``c^2`` against
``c log2 c`` (a multiply-add counted once, no normalisation), so its ratio is ``c / log2 c``; both are
printed.

c = 768 (GPT-2 base) is not a power of two: no Sylvester ``H_768`` exists, and ``c log2 c = 7361.3``
(the value Figure 3 plots) is not an operation count of any algorithm. refattn runs it with
``pad=True``: zero-pad to 1024 and transform (10 240 add/sub + 1024 scale per row; in the
projection the first 768 outputs are kept, which is not an orthogonal map). The alternative
``H_12 (x) H_64`` (Paley) would cost 13 056 add/sub per row (RECIPES.md section 7).

Run:  python benchmarks/wht_vs_gemm.py [--rows 4096] [--backends numpy torch] [--dtype float32]
Timings depend on the machine and its load; they are ratios measured in one process.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from refattn.backends._hadamard import factor_sizes

import refattn
from refattn import backends
from refattn.hadamard import is_power_of_two, next_power_of_two

SIZES = (256, 512, 768, 1024, 2048, 4096)


def best_time(fn, sync, repeat: int) -> float:
    fn()
    sync()  # warm-up (allocations, BLAS threads, cached Hadamard blocks)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def flops(c: int) -> dict[str, float]:
    cp = next_power_of_two(c)
    return {
        "gemm": 2.0 * c * c,
        "fwht": refattn.hadamard.fwht_cost(c, pad=not is_power_of_two(c)).flops,
        "fwht_be": 2.0 * cp * sum(factor_sizes(cp)) + cp,
        "fig3_dense": float(c * c),
        "fig3_fwht": c * math.log2(c),
    }


def run(backend_name: str, rows: int, sizes, dtype: str, repeat: int, seed: int = 0) -> list[dict]:
    be = backends.get(backend_name)
    rs = np.random.default_rng(seed)
    out = []
    for c in sizes:
        x = be.asarray(rs.standard_normal((rows, c)).astype(dtype))
        w = be.asarray((rs.standard_normal((c, c)) / math.sqrt(c)).astype(dtype))
        pad = not is_power_of_two(c)
        row = {"backend": backend_name, "c": c, "rows": rows, "dtype": dtype, "padded_to": next_power_of_two(c)}
        row["gemm_s"] = best_time(lambda x=x, w=w: x @ w, be.synchronize, repeat)
        row["fwht_s"] = best_time(lambda x=x, pad=pad: refattn.fwht(x, pad=pad), be.synchronize, repeat)
        if be.primitives.get("fwht") is not None:
            row["fwht_be_s"] = best_time(lambda x=x, pad=pad: refattn.fwht(x, pad=pad, impl="backend"),
                                         be.synchronize, repeat)
        f = flops(c)
        row.update({f"{k}_flops_per_row": v for k, v in f.items()})
        row["time_ratio"] = row["gemm_s"] / row["fwht_s"]
        row["time_ratio_be"] = row["gemm_s"] / row["fwht_be_s"] if "fwht_be_s" in row else None
        row["flop_ratio"] = f["gemm"] / f["fwht"]
        row["flop_ratio_be"] = f["gemm"] / f["fwht_be"]
        row["fig3_ratio"] = f["fig3_dense"] / f["fig3_fwht"]
        out.append(row)
        del x, w
    return out


def table(rows: list[dict]) -> str:
    head = (f"{'backend':<8}{'c':>6}{'gemm ms':>10}{'fwht ms':>10}{'fwht_be ms':>12}"
            f"{'t gemm/fwht':>13}{'t gemm/be':>11}{'F gemm/fwht':>13}{'F gemm/be':>11}{'Fig3 c/log2c':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        be_ms = f"{1e3 * r['fwht_be_s']:>12.2f}" if "fwht_be_s" in r else f"{'-':>12}"
        be_ratio = f"{r['time_ratio_be']:>11.1f}" if r["time_ratio_be"] is not None else f"{'-':>11}"
        mark = "*" if r["padded_to"] != r["c"] else " "
        lines.append(f"{r['backend']:<8}{r['c']:>5}{mark}{1e3 * r['gemm_s']:>10.2f}{1e3 * r['fwht_s']:>10.2f}{be_ms}"
                     f"{r['time_ratio']:>13.1f}{be_ratio}{r['flop_ratio']:>13.1f}{r['flop_ratio_be']:>11.1f}"
                     f"{r['fig3_ratio']:>14.1f}")
    lines.append("* not a power of two: transformed with pad=True at the next power of two (see the module notes)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4096, help="B*n rows of the activation (default 4096)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--backends", nargs="+", default=["numpy", "torch"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = []
    for name in args.backends:
        try:
            rows += run(name, args.rows, args.sizes, args.dtype, args.repeat)
        except backends.BackendUnavailable as exc:
            print(f"skipping {name}: {exc}")
    print(f"output projection of a ({args.rows}, c) {args.dtype} activation: best of {args.repeat}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
