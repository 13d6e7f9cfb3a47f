"""Random-feature attention: error vs number of features D, and time against exact blockwise softmax.

    python benchmarks/random_features.py [--n-err 128] [--seeds 16] [--sizes 4096 16384] [--repeat 3]

1. Error vs D on one fixed input (B = 1, n = m = ``--n-err``, d = dv = 16, logit scale 1/sqrt(d), q and k
   with N(0, ``--qk-scale``^2) entries; at scale 1 the positive estimator's relative variance
   ~ exp(|q_hat + k_hat|^2) ~ e^8 makes D = 4096 still far from converged):
   relative error ||out_D - out_exact||_F / ||out_exact||_F over ``--seeds`` independent projections, for
   positive features with iid and with block-orthogonal (chi norms) projections, and trigonometric
   features (iid; rows whose normaliser is <= 0 are returned as zeros and counted). Prints D, mean,
   standard deviation, min and max, and the fitted log-log slope of the mean (theory: -1/2).
2. Time ratio (float64, NumPy, one process, same inputs): random-feature attention (positive features,
   orthogonal W, D = 256, d = dv = 64, non-causal) / exact blockwise softmax attention, forward and
   forward + backward, at each n in ``--sizes`` (a size whose softmax forward would exceed ``--budget``
   seconds, extrapolated as n^2 from the previous size, is skipped).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import refattn
from refattn import random as rr
from refattn.methods import random_features as rf


def timeit(fn, *, warmup: int = 1, repeat: int = 3) -> tuple[float, float]:
    """Median wall time in seconds and relative spread (max - min) / median."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return med, (max(times) - min(times)) / med


def error_vs_d(n: int, seeds: int, dims: list[int], qk_scale: float) -> None:
    d = dv = 16
    rs = np.random.default_rng(0)
    q, k = qk_scale * rs.standard_normal((2, n, d))
    v = rs.standard_normal((n, dv))
    exact = refattn.softmax_attention(q, k, v)
    norm = np.linalg.norm(exact)
    kinds = {
        "positive-iid": ("positive", rr.gaussian_projection),
        "positive-orthogonal": ("positive", rr.orthogonal_projection),
        "trig-iid": ("trig", rr.gaussian_projection),
    }
    print(f"error vs D: n = m = {n}, d = dv = {d}, q, k entries N(0, {qk_scale}^2), v N(0, 1), scale 1/sqrt(d), "
          f"{seeds} projections per D; relative Frobenius error")
    for name, (features, sampler) in kinds.items():
        print(f"\n  {name}")
        print(f"  {'D':>6} {'mean':>10} {'std':>10} {'min':>10} {'max':>10} {'zeroed rows':>12}")
        means = []
        for n_freq in dims:
            errs, zeroed = [], 0
            for s in range(seeds):
                w = sampler(n_freq, d, rng=1000 * n_freq + s)
                out, res = rf.forward(q, k, v, w, features=features, invalid_normalizer="zero")
                zeroed += 0 if res.ok is None else int(np.sum(~res.ok))
                errs.append(np.linalg.norm(out - exact) / norm)
            errs = np.array(errs)
            means.append(errs.mean())
            print(f"  {n_freq:>6} {errs.mean():>10.4g} {errs.std(ddof=1):>10.3g} {errs.min():>10.4g} "
                  f"{errs.max():>10.4g} {zeroed:>12}")
        slope = np.polyfit(np.log(dims), np.log(means), 1)[0]
        tail = np.polyfit(np.log(dims[-4:]), np.log(means[-4:]), 1)[0]
        print(f"  fitted slope of log(mean error) vs log D: {slope:.3f} (all D), {tail:.3f} (largest four D)")


def _time_size(n: int, n_freq: int, d: int, repeat: int, budget: float) -> tuple[float, float, str]:
    rs = np.random.default_rng(n)
    q, k, v, dout = (rs.standard_normal((n, d)) for _ in range(4))
    w = rr.orthogonal_projection(n_freq, d, rng=1)

    def sm_f():
        return refattn.softmax_attention(q, k, v, impl="blockwise")

    def rf_f():
        return refattn.random_feature_attention(q, k, v, w)

    def sm_fb():
        return refattn.vjp(refattn.softmax_attention, q, k, v, impl="blockwise")[1](dout)

    def rf_fb():
        return refattn.vjp(refattn.random_feature_attention, q, k, v, w)[1](dout)

    reps = repeat if n <= 4096 else 1
    t_sm, _ = timeit(sm_f, warmup=0 if n > 4096 else 1, repeat=reps)
    t_rf, _ = timeit(rf_f, repeat=repeat)
    if t_sm * 3 <= budget:
        t_smb, _ = timeit(sm_fb, warmup=0, repeat=reps)
        t_rfb, _ = timeit(rf_fb, repeat=repeat)
        fb = f"{t_smb:>16.3f} {t_rfb:>11.4f} {t_rfb / t_smb:>8.4f}"
    else:
        fb = f"{'(skipped)':>16}"
    return t_sm, t_rf, fb


def timing(sizes: list[int], n_freq: int, d: int, repeat: int, budget: float) -> None:
    print(f"\ntime ratio, float64 NumPy {np.__version__}: random-feature attention (positive, orthogonal W, "
          f"D = {n_freq}) / exact blockwise softmax, d = dv = {d}, B = H = 1")
    print(f"  {'n':>6} {'softmax fwd [s]':>16} {'RF fwd [s]':>11} {'ratio':>8} "
          f"{'softmax f+b [s]':>16} {'RF f+b [s]':>11} {'ratio':>8}")
    last = None
    for n in sizes:
        if last is not None and last[1] * (n / last[0]) ** 2 > budget:
            print(f"  {n:>6} skipped: softmax forward extrapolated to {last[1] * (n / last[0]) ** 2:.0f} s "
                  f"> budget {budget:.0f} s")
            continue
        t_sm, t_rf, fb = _time_size(n, n_freq, d, repeat, budget)
        print(f"  {n:>6} {t_sm:>16.3f} {t_rf:>11.4f} {t_rf / t_sm:>8.4f} {fb}")
        last = (n, t_sm)
    c_rf = rf.cost(4096, 4096, d, d, n_freq)
    print(f"  closed-form FLOPs of the RF forward at n = 4096: {c_rf.flops:.3e} "
          f"(exact softmax forward ~ 4 n^2 d = {4 * 4096**2 * d:.3e})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-err", type=int, default=128)
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--qk-scale", type=float, default=0.5, help="std of the entries of q and k")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--budget", type=float, default=60.0, help="seconds allowed for one softmax forward")
    p.add_argument("--skip-error", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    a = p.parse_args(argv)
    if not a.skip_error:
        error_vs_d(a.n_err, a.seeds, a.dims, a.qk_scale)
    if not a.skip_timing:
        timing(a.sizes, a.features, a.d, a.repeat, a.budget)


if __name__ == "__main__":
    main()
