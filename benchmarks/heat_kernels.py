"""HEAT and trainable kernels: the figures of issue 8's closing note.

1. Relative error ‖out − exact‖_F / ‖exact‖_F of each HEAT reading against exact softmax attention as
   the rank r varies (n = 512, d = 64, one fixed Gaussian input, seed 0).
2. Fitted exponents in n of each method's forward FLOPs (refattn.cost.measure where it exists, else the
   closed forms ``refattn.methods.heat.cost`` / ``refattn.methods.kernels.cost``).
3. Wall-time ratio of each trainable kernel against plain elu+1 linear attention (Katharopoulos et al.
   2020; a minimal reference below, same normalised assembly, non-causal and causal through
   refattn.causal_dot) at n = 4096, forward and forward+backward, NumPy float64.

Usage::

    python benchmarks/heat_kernels.py            # full (n = 512 errors, n = 4096 timings)
    python benchmarks/heat_kernels.py --quick    # small sizes, for a smoke run

On a shared machine run it with ``OMP_NUM_THREADS=1`` (BLAS threads competing with other processes
make single timings vary several-fold); the timings interleave the elu+1 baseline and each kernel and
report the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import refattn
from refattn.methods import heat
from refattn.methods import kernels as K

KERNELS = ["ffn", "glu", "oglu", "aoglu", ("glu", "glu"), ("oglu", "oglu"), ("aoglu", "aoglu", "aoglu")]


def _name(kernel):
    return kernel if isinstance(kernel, str) else f"{len(kernel)}x{kernel[0]}"


# ------------------------------------------------------------------------------------------------
# Minimal elu+1 linear attention (forward and hand-written backward), NumPy
# ------------------------------------------------------------------------------------------------

def elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def elu1_grad(x):
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))


def linear_attention(q, k, v, causal=False, chunk=128):
    fq, fk = elu1(q), elu1(k)
    vaug = np.concatenate([v, np.ones((*v.shape[:-1], 1))], axis=-1)
    nd = refattn.causal_dot(fq, fk, vaug, chunk=chunk) if causal else fq @ (np.swapaxes(fk, -1, -2) @ vaug)
    return nd[..., :-1] / nd[..., -1:], (q, k, fq, fk, vaug, nd)


def linear_attention_backward(res, dout, causal=False, chunk=128):
    q, k, fq, fk, vaug, nd = res
    den = nd[..., -1:]
    out = nd[..., :-1] / den
    g = np.concatenate([dout / den, -np.sum(dout * out, -1, keepdims=True) / den], axis=-1)
    if causal:
        dfq, dfk, dva = refattn.causal_dot_backward(fq, fk, vaug, g, chunk=chunk)
    else:
        s = np.swapaxes(fk, -1, -2) @ vaug
        ds = np.swapaxes(fq, -1, -2) @ g
        dfq, dfk, dva = g @ np.swapaxes(s, -1, -2), vaug @ np.swapaxes(ds, -1, -2), fk @ ds
    return dfq * elu1_grad(q), dfk * elu1_grad(k), dva[..., :-1]


def _paired(base, fn, repeats):
    """Interleaved timing: each repeat times ``base`` then ``fn``; returns the median times and the median
    of the per-repeat ratios (robust to the slow load drift of a shared machine)."""
    base()
    fn()
    tb, tf, ratios = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tb.append(t1 - t0)
        tf.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(tb), statistics.median(tf), statistics.median(ratios)


# ------------------------------------------------------------------------------------------------

def heat_errors(n, d, seed=0):
    rs = np.random.default_rng(seed)
    q, k, v = (rs.standard_normal((n, d)) for _ in range(3))
    exact = refattn.softmax_attention(q, k, v)
    ranks = sorted({1, 2, 4, 8, d // 8, d // 4, d // 2, 3 * d // 4, d - 4, d - 1, d})
    table = {}
    for reading, basis in (("logits", "k"), ("features", "k"), ("features", "qk")):
        name = reading if reading == "logits" else f"features-{basis}"
        table[name] = {r: float(np.linalg.norm(heat.heat_attention(q, k, v, rank=r, reading=reading, basis=basis)
                                               - exact) / np.linalg.norm(exact)) for r in ranks}
    had = heat.heat_attention(q, k, v, reading="hadamard")
    table["hadamard (no rank)"] = float(np.linalg.norm(had - exact) / np.linalg.norm(exact))
    return ranks, table


def exponents(ns, d=64, r=16):
    measure = getattr(refattn.cost, "measure", None)
    source = "refattn.cost.measure" if measure is not None else "closed forms (refattn.cost.measure not landed)"
    out = {}
    fits = {}
    for reading, basis, rr in (("logits", "k", r), ("features", "k", r), ("features", "qk", r),
                               ("hadamard", "k", None)):
        name = f"heat-{reading}" if reading != "features" else f"heat-features-{basis}"
        fits[name] = [heat.cost(n, n, d, d, rank=rr, reading=reading, basis=basis).flops for n in ns]
    fits["exact softmax"] = [heat._softmax_dense_flops(n, n, d, d, False)[0] for n in ns]
    for kernel in KERNELS:
        for causal in (False, True):
            fits[f"{_name(kernel)}{' causal' if causal else ''}"] = [
                K.cost(n, n, d, d, kernel=kernel, causal=causal).flops for n in ns]
    for name, fl in fits.items():
        out[name] = float(np.polyfit(np.log(ns), np.log(fl), 1)[0])
    return source, out


def timings(n, d, heads, repeats):
    rs = np.random.default_rng(1)
    q, k, v = (rs.standard_normal((1, heads, n, d)) for _ in range(3))
    dout = rs.standard_normal((1, heads, n, d))
    rows = {}
    for causal in (False, True):
        def base_f(causal=causal):
            linear_attention(q, k, v, causal)

        def base_fb(causal=causal):
            _, res = linear_attention(q, k, v, causal)
            linear_attention_backward(res, dout, causal)

        for kernel in KERNELS:
            params = K.init_params(kernel, d, rng=2)

            def f(kernel=kernel, params=params, causal=causal):
                K.kernel_attention(q, k, v, *params, kernel=kernel, causal=causal)

            def fb(kernel=kernel, params=params, causal=causal):
                _, pb = refattn.vjp(K.kernel_attention, q, k, v, *params, kernel=kernel, causal=causal)
                pb(dout)

            tb, tf, rf = _paired(base_f, f, repeats)
            tbb, tfb, rfb = _paired(base_fb, fb, repeats)
            rows[f"{_name(kernel)}{' causal' if causal else ''}"] = (tb, tf, rf, tbb, tfb, rfb)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-error", type=int, default=512)
    ap.add_argument("--n-time", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args(argv)
    n_err, n_time, repeats = (128, 512, 2) if args.quick else (args.n_error, args.n_time, args.repeats)
    d = 64

    ranks, table = heat_errors(n_err, d)
    print(f"# 1. HEAT relative error vs exact softmax attention (n = {n_err}, d = {d}, Gaussian, seed 0)")
    print("reading          " + " ".join(f"r={r:<5d}" for r in ranks))
    for name, errs in table.items():
        if isinstance(errs, dict):
            print(f"{name:16s} " + " ".join(f"{errs[r]:<7.2g}" for r in ranks))
        else:
            print(f"{name:16s} {errs:.3g}")

    ns_small, ns_big = [256, 512, 1024, 2048, 4096], [4096, 8192, 16384, 32768, 65536]
    source, e_small = exponents(ns_small)
    _, e_big = exponents(ns_big)
    print(f"\n# 2. fitted exponent of forward FLOPs in n (d = 64, r = 16; {source})")
    print(f"{'method':22s} n=256..4096  n=4096..65536")
    for name in e_small:
        print(f"{name:22s} {e_small[name]:10.3f}  {e_big[name]:10.3f}")

    rows = timings(n_time, d, args.heads, repeats)
    print(f"\n# 3. time vs elu+1 linear attention (n = {n_time}, d = dv = {d}, {args.heads} heads, float64, "
          f"interleaved, median of {repeats} per-repeat ratios; run with OMP_NUM_THREADS=1 on a shared machine)")
    print(f"{'kernel':18s} {'elu+1 fwd':>10s} {'fwd':>8s} {'ratio':>6s} {'elu+1 f+b':>10s} {'f+b':>8s} {'ratio':>6s}")
    for name, (tb, tf, rf, tbb, tfb, rfb) in rows.items():
        print(f"{name:18s} {tb:10.4f} {tf:8.4f} {rf:6.2f} {tbb:10.4f} {tfb:8.4f} {rfb:6.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"errors": {k: (v if not isinstance(v, dict) else {str(r): e for r, e in v.items()})
                                  for k, v in table.items()},
                       "exponents": {"source": source, "n256_4096": e_small, "n4096_65536": e_big},
                       "timings": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
