"""Nystromformer: accuracy against exact attention and time against exact blockwise softmax.

Run:  python benchmarks/nystrom.py [--backend numpy] [--sizes 4096 16384] [--repeats 3] [--json out.json]

1. Relative error ||out - softmax(QK^T/sqrt(d))V||_F / ||softmax(...)V||_F for m in {8, 16, 32, 64, 128}
   at n = 1024, d = dv = 64, on one fixed input (seed 0): Gaussian q, k, v (N(0, 1) entries), and a
   second, low-rank input whose tokens vary smoothly along the sequence (3 Fourier modes). Both the
   iterative pseudoinverse (6 iterations, the paper's) and the exact one (xp.linalg.pinv).
2. Forward time of nystrom_attention (m = 64, 6 iterations) over refattn.softmax_attention(impl="blockwise")
   at n = 4096 and 16384 (d = dv = 64, one head), median of --repeats runs; a size whose exact run is
   predicted (quadratic extrapolation) to exceed a minute is skipped, and one predicted to exceed a
   minute over all repeats is run once.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

import refattn
from refattn import backends


def _inputs(kind: str, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rs = np.random.default_rng(seed)
    if kind == "gaussian":
        return rs.standard_normal((n, d)), rs.standard_normal((n, d)), rs.standard_normal((n, d))
    t = np.arange(n)[:, None] / n
    basis = np.concatenate([fn(2 * np.pi * f * t) for fn in (np.sin, np.cos) for f in (1, 2, 3)], 1)
    return (0.3 * basis @ rs.standard_normal((6, d)), 0.3 * basis @ rs.standard_normal((6, d)),
            rs.standard_normal((n, d)))


def accuracy(backend, n: int = 1024, d: int = 64, ms=(8, 16, 32, 64, 128)) -> dict:
    out = {}
    for kind in ("gaussian", "smooth-low-rank"):
        q, k, v = (backend.asarray(a) for a in _inputs(kind, n, d))
        want = backend.to_host(refattn.softmax_attention(q, k, v))
        rows = {}
        for pinv in ("iterative", "exact"):
            errs = []
            for m in ms:
                got = backend.to_host(refattn.nystrom_attention(q, k, v, num_landmarks=m, pinv=pinv))
                errs.append(float(np.linalg.norm(got - want) / np.linalg.norm(want)))
            rows[pinv] = errs
        _, res = refattn.methods.nystrom.forward(q, k, v, num_landmarks=64, pinv="exact")
        rows["cond(A) at m=64"] = float(np.linalg.cond(backend.to_host(res.a)))
        out[kind] = rows
    return out


def _time(fn, backend, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        backend.synchronize()
        t0 = time.perf_counter()
        fn()
        backend.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timing(backend, sizes=(4096, 16384), d: int = 64, m: int = 64, repeats: int = 3, budget_s: float = 60.0) -> dict:
    out = {}
    t_exact_prev, n_prev = None, None
    for n in sizes:
        reps = repeats
        if t_exact_prev is not None:
            predicted = t_exact_prev * (n / n_prev) ** 2
            if predicted > budget_s:
                out[n] = {"skipped": f"exact attention predicted at {predicted:.0f} s per run (> {budget_s:.0f} s)"}
                continue
            if predicted * repeats > budget_s:
                reps = 1
        q, k, v = (backend.asarray(a) for a in _inputs("gaussian", n, d))
        refattn.nystrom_attention(q, k, v, num_landmarks=m)  # warm-up
        t_nys = _time(lambda q=q, k=k, v=v: refattn.nystrom_attention(q, k, v, num_landmarks=m), backend, reps)
        t_ex = _time(lambda q=q, k=k, v=v: refattn.softmax_attention(q, k, v, impl="blockwise"), backend, reps)
        out[n] = {"nystrom_s": t_nys, "blockwise_s": t_ex, "ratio": t_nys / t_ex, "repeats": reps}
        t_exact_prev, n_prev = t_ex, n
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy")
    p.add_argument("--sizes", type=int, nargs="*", default=[4096, 16384])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    backend = backends.get(args.backend)
    acc = accuracy(backend)
    print("relative error vs exact attention, n = 1024, d = 64, m = 8 16 32 64 128:")
    for kind, rows in acc.items():
        for pinv in ("iterative", "exact"):
            print(f"  {kind:16s} {pinv:9s} " + " ".join(f"{e:9.3g}" for e in rows[pinv]))
        print(f"  {kind:16s} cond(A) at m = 64: {rows['cond(A) at m=64']:.3g}")
    tim = timing(backend, args.sizes, repeats=args.repeats)
    print("forward time, m = 64, 6 iterations, vs softmax_attention(impl='blockwise'), d = 64:")
    for n, row in tim.items():
        if "skipped" in row:
            print(f"  n = {n}: skipped ({row['skipped']})")
        else:
            print(f"  n = {n}: nystrom {row['nystrom_s']:.3f} s, blockwise {row['blockwise_s']:.3f} s, "
                  f"ratio {row['ratio']:.3f}")
    result = {"accuracy": acc, "timing": {str(n): r for n, r in tim.items()}, "backend": args.backend,
              "log2_sizes": [math.log2(n) for n in args.sizes]}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
