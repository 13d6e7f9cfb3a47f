"""Scaling of linear attention (non-causal and causal) and Linformer (k = 256) against exact
blockwise softmax attention, on the NumPy backend.

For each sequence length n (self-attention, m = n) at B = 1, H = 4, d = dv = 64 it measures the
wall time of one call (best of ``--repeats``) and its peak memory (tracemalloc, which NumPy reports
its buffers to; the inputs are allocated before and not counted), then fits the exponents of n by
least squares on log-log axes and prints each method's time relative to
``refattn.softmax_attention(..., impl="blockwise")`` at the same n.

    python benchmarks/scaling_linear.py                     # n = 1024 .. 16384, forward, float64
    python benchmarks/scaling_linear.py --backward          # forward + hand-written backward
    python benchmarks/scaling_linear.py --n 1024 2048 4096 --dtype float32

Timings are of a reference implementation on whatever machine runs this (and whatever else runs on
it): compare ratios from one run, not absolute numbers across machines. BLAS runs single-threaded
unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS are set: on a shared, loaded
machine multi-threaded OpenBLAS makes the many small products of the chunked causal path erratic
(spin-waiting threads), and one thread keeps the comparison between methods fair.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

import refattn  # noqa: E402
from refattn.random import linformer_projection  # noqa: E402

METHODS = ("linear", "linear-causal", "linformer", "softmax-blockwise")


def _call(name: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, E: np.ndarray, F: np.ndarray,
          backward: bool, chunk: int) -> Callable[[], object]:
    fns = {
        "linear": (refattn.linear_attention, (q, k, v), {}),
        "linear-causal": (refattn.linear_attention, (q, k, v), {"causal": True, "chunk": chunk}),
        "linformer": (refattn.linformer_attention, (q, k, v, E, F), {}),
        "softmax-blockwise": (refattn.softmax_attention, (q, k, v), {"impl": "blockwise"}),
    }
    fn, args, kw = fns[name]
    if not backward:
        return lambda: fn(*args, **kw)

    def run() -> object:
        out, pullback = refattn.vjp(fn, *args, **kw)
        return pullback(np.ones_like(out))

    return run


def _time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _slope(ns: list[int], ys: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--k", type=int, default=256, help="Linformer projected length")
    p.add_argument("--chunk", type=int, default=refattn.methods._prefix.DEFAULT_CHUNK)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--repeats", type=int, default=2, help="best of this many timed calls (1 above n = 4096)")
    p.add_argument("--backward", action="store_true", help="time forward + backward (vjp) instead of forward")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = p.parse_args(argv)

    rs = np.random.default_rng(0)
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    peaks: dict[str, list[int]] = {m: [] for m in args.methods}
    shape = (args.batch, args.heads)
    # warm-up (imports, caches) at a small size
    small = [rs.standard_normal((*shape, 64, args.d)).astype(args.dtype) for _ in range(3)]
    e_small = linformer_projection(min(args.k, 64), 64, rng=0, dtype=args.dtype)
    for m in args.methods:
        _call(m, *small, e_small, e_small, args.backward, args.chunk)()
    for n in args.n:
        q, k, v = (rs.standard_normal((*shape, n, args.d)).astype(args.dtype) for _ in range(3))
        E = linformer_projection(args.k, n, rng=1, dtype=args.dtype)
        F = linformer_projection(args.k, n, rng=2, dtype=args.dtype)
        for m in args.methods:
            fn = _call(m, q, k, v, E, F, args.backward, args.chunk)
            times[m].append(_time(fn, args.repeats if n <= 4096 else 1))
            peaks[m].append(_peak(fn))
            print(f"  n={n:>6} {m:<18} {times[m][-1]:9.3f} s  {peaks[m][-1] / 2**20:9.1f} MiB", flush=True)

    what = "forward + backward" if args.backward else "forward"
    print(f"\n{what}, B={args.batch} H={args.heads} d=dv={args.d}, Linformer k={args.k}, causal chunk={args.chunk}, "
          f"{args.dtype}, numpy {np.__version__}, BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}")
    header = f"{'n':>7}" + "".join(f"{m + ' [s]':>22}" for m in args.methods)
    ref = "softmax-blockwise" if "softmax-blockwise" in args.methods else None
    if ref:
        header += "".join(f"{m + ' / softmax':>26}" for m in args.methods if m != ref)
    print(header)
    for i, n in enumerate(args.n):
        row = f"{n:>7}" + "".join(f"{times[m][i]:>22.4f}" for m in args.methods)
        if ref:
            row += "".join(f"{times[m][i] / times[ref][i]:>26.4f}" for m in args.methods if m != ref)
        print(row)
    print(f"\n{'peak MiB':>7}" + "".join(f"{m:>22}" for m in args.methods))
    for i, n in enumerate(args.n):
        print(f"{n:>7}" + "".join(f"{peaks[m][i] / 2**20:>22.2f}" for m in args.methods))
    if len(args.n) >= 2:
        print(f"\nfitted exponent of n (least squares on log-log, n = {args.n[0]}..{args.n[-1]}):")
        for m in args.methods:
            print(f"  {m:<18} time n^{_slope(args.n, times[m]):.2f}   peak memory n^{_slope(args.n, peaks[m]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
