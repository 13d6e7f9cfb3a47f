"""Scaling in n: time and peak memory of each method's forward pass (``--backward``: forward +
backward) for n = 1,024 ... 65,536 (B = 1, H = 4, d = dv = 64; D = k = 256, 64 landmarks), float32
and float64, on the NumPy backend; fitted log-log exponents over the upper half of the range.

    python -m benchmarks scaling [--method NAME ...] [--n-max 65536] [--out scaling.json] [--plot scaling.png]

Peak memory is what NumPy reports to :mod:`tracemalloc` during one call (inputs excluded). Time is
the best of that call and 4 untraced calls, or the traced call's own time when it took longer than
``--long`` seconds (then it ran once; the first call of a size is often slower: first-touch page
faults, BLAS threads waking). A size is skipped, with the reason, when its time predicted
from the previous size (``t * 2^p``, ``p`` the method's promised exponent) exceeds ``--budget``
seconds, or for dense softmax (and HEAT's logits and features readings, which are softmax attention
on modified logits) when its ``(n, m)`` logits would need more than ``--mem-limit`` bytes (three
``B H n^2`` arrays are alive at once): they are not run at sizes they cannot hold.
Methods that promise linear cost must show exponents <= 1.05 for time and memory. The C allocator keeps
freed memory for reuse (``--allocator reuse``, the default here; ``--allocator system`` for glibc's
defaults, see :func:`benchmarks._timing.set_allocator`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import refattn

from ._case import Case, Sizes
from ._timing import count, positive_real, set_allocator, traced_peak

#: case name -> promised exponent in n of time and memory (forward).
PROMISED = {"softmax-dense": 2, "softmax-blockwise": 2, "linear": 1, "linear-causal": 1, "efficient": 1,
            "linformer": 1, "verma": 1, "rfa": 1, "rfa-causal": 1, "nystrom": 1, "heat-logits": 2,
            "heat-features": 2, "kernel-ffn": 1, "kernel-glu": 1, "kernel-oglu": 1, "kernel-aoglu": 1,
            "kernel-glu-causal": 1}
#: blockwise softmax promises memory linear in n (time quadratic).
MEMORY_PROMISED = {**PROMISED, "softmax-blockwise": 1}
#: cases that hold ``(B, H, n, n)`` arrays (HEAT's readings are exact softmax on modified logits; its
#: "hadamard" reading, ``n m d`` work, is timed only at n = 256 by the ratio benchmark)
DENSE = ("softmax-dense", "heat-logits", "heat-features")


def dense_bytes(s: Sizes, itemsize: int) -> int:
    """Three ``(B, H, n, n)`` arrays: the logits, their exponentials and one temporary."""
    return 3 * s.batch * s.heads * s.n * s.n * itemsize


def fit(ns: Sequence[int], ys: Sequence[float]) -> float | None:
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


def _call(case: Case, s: Sizes, dtype: str, backward: bool):
    rs = np.random.default_rng(0)
    host = [a.astype(dtype) for a in case.make(rs, s)]
    if not backward:
        return lambda: case.fn(*host, **case.kwargs)
    dout = rs.standard_normal((s.batch, s.heads, s.n, s.d)).astype(dtype)

    def run():
        _, pullback = refattn.vjp(case.fn, *host, **case.kwargs)
        return pullback(dout)

    return run


def measure_case(case: Case, ns: Sequence[int], dtype: str, *, backward: bool, budget: float, long: float,
                 mem_limit: int, clock=time.perf_counter, log=print) -> dict[str, Any]:
    itemsize = np.dtype(dtype).itemsize
    p = PROMISED[case.name]
    points, skipped = [], {}
    prev = None
    for n in ns:
        s = Sizes(1, 4, n, 64, 256)
        if case.name in DENSE and dense_bytes(s, itemsize) > mem_limit:
            skipped[n] = f"logits need ~{dense_bytes(s, itemsize) / 2**30:.1f} GiB > {mem_limit / 2**30:.1f} GiB"
        elif prev is not None and prev[1] * (n / prev[0]) ** p > budget:
            skipped[n] = f"predicted {prev[1] * (n / prev[0]) ** p:.0f} s > budget {budget:.0f} s"
        if n in skipped:
            log(f"  {case.name:<18}{dtype:<9}n={n:>6}  skipped: {skipped[n]}")
            continue
        fn = _call(case, s, dtype, backward)
        peak, secs = traced_peak(fn, clock)
        how = "1 traced run"
        if secs < long:
            for _ in range(4):
                t0 = clock()
                fn()
                secs = min(secs, clock() - t0)
            how = "best of 5"
        points.append({"n": n, "seconds": secs, "peak_bytes": peak, "timing": how})
        log(f"  {case.name:<18}{dtype:<9}n={n:>6}  {secs:10.4f} s  peak {peak / 2**20:10.1f} MiB  ({how})")
        prev = (n, secs)
    lo = math.sqrt(ns[0] * ns[-1])
    upper = [q for q in points if q["n"] >= lo]
    return {"method": case.name, "dtype": dtype, "backward": backward, "points": points,
            "skipped": {str(k): v for k, v in skipped.items()},
            "upper_half": [q["n"] for q in upper],
            "time_exponent": fit([q["n"] for q in upper], [q["seconds"] for q in upper]),
            "memory_exponent": fit([q["n"] for q in upper], [q["peak_bytes"] for q in upper]),
            "promised_time": p, "promised_memory": MEMORY_PROMISED[case.name]}


def verdict(r: dict[str, Any]) -> str:
    te, me = r["time_exponent"], r["memory_exponent"]
    if te is None:
        return "too few sizes"
    ok_t = r["promised_time"] != 1 or te <= 1.05
    ok_m = r["promised_memory"] != 1 or me <= 1.05
    return "ok" if ok_t and ok_m else "FAILS <= 1.05"


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'method':<20}{'dtype':<9}{'n (upper half)':<22}{'time exp':>9}{'mem exp':>9}"
             f"{'peak at largest n':>20}  verdict"]
    for r in results:
        te = "-" if r["time_exponent"] is None else f"{r['time_exponent']:.3f}"
        me = "-" if r["memory_exponent"] is None else f"{r['memory_exponent']:.3f}"
        last = r["points"][-1] if r["points"] else None
        peak = f"{last['peak_bytes'] / 2**20:.1f} MiB @ {last['n']}" if last else "-"
        span = f"{r['upper_half'][0]}..{r['upper_half'][-1]}" if r["upper_half"] else "-"
        lines.append(f"{r['method']:<20}{r['dtype']:<9}{span:<22}{te:>9}{me:>9}{peak:>20}  {verdict(r)}")
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'refattn[plots]')")
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    methods = list(dict.fromkeys(r["method"] for r in results))
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10").colors
    for r in results:
        if not r["points"]:
            continue
        ns = [q["n"] for q in r["points"]]
        fmt = {"color": colors[methods.index(r["method"]) % len(colors)],
               "linestyle": "-" if r["dtype"] == "float64" else "--", "marker": "o", "ms": 3,
               "label": f"{r['method']} {r['dtype']}"}
        axes[0].loglog(ns, [q["seconds"] for q in r["points"]], **fmt)
        axes[1].loglog(ns, [q["peak_bytes"] for q in r["points"]], **fmt)
    for ax, what in zip(axes, ("time [s]", "peak memory [bytes]")):
        ax.set_xlabel("n")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle("refattn (NumPy), B=1 H=4 d=64: forward" + (" + backward" if results[0]["backward"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    from refattn._cli_text import plain

    from .__main__ import _common, find, machine, warn_if_busy

    p = argparse.ArgumentParser(prog="python -m benchmarks scaling", description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, allocator="reuse")
    p.add_argument("--n-min", type=count(1), default=1024)
    p.add_argument("--n-max", type=count(1), default=65536)
    p.add_argument("--backward", action="store_true", help="time forward + backward")
    p.add_argument("--budget", type=positive_real, default=400.0,
                   help="skip a size predicted to take longer (s)")
    p.add_argument("--long", type=positive_real, default=10.0, help="time a call this long once, traced (s)")
    p.add_argument("--mem-limit", type=positive_real, default=4.0,
                   help="limit for the (n, n) arrays of the dense cases (GiB)")
    p.add_argument("--plot", default=None, help="write a log-log plot here (needs matplotlib)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="wall time, or this thread's CPU time (load-immune; single-threaded runs only)")
    a = p.parse_args(argv)
    names = a.method or list(PROMISED)
    cases = [c for c in find(names) if c.name in PROMISED]
    if a.list:
        print("\n".join(c.name for c in cases))
        return 0
    n_min, n_max = (256, 2048) if a.quick else (a.n_min, a.n_max)
    ns = [n_min]
    while ns[-1] * 2 <= n_max:
        ns.append(ns[-1] * 2)
    info = machine()
    info["allocator"] = set_allocator(a.allocator)
    print(f"scaling, B=1 H=4 d=64, n = {ns[0]}..{ns[-1]}, {'forward + backward' if a.backward else 'forward'}; "
          f"NumPy {info['numpy']}; load {info['loadavg']}; {info['allocator']}")
    warn_if_busy(info, a.threads, a.clock)
    if a.clock == "thread" and a.threads != 1:
        raise SystemExit("--clock thread needs --threads 1 (and OPENBLAS_NUM_THREADS=1 in the environment)")
    clock = time.thread_time if a.clock == "thread" else time.perf_counter
    results = [measure_case(c, ns, dt, backward=a.backward, budget=a.budget, long=a.long,
                            mem_limit=int(a.mem_limit * 2**30), clock=clock) for c in cases for dt in a.dtype]
    print(summary_table(results))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"machine": info, "ns": ns, "clock": a.clock, "results": results}, fh, indent=1)
    if a.plot:
        plot(results, a.plot)
    return 0
