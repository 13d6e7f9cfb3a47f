"""Exact softmax attention: blockwise vs dense (time, peak memory) and dense NumPy vs torch SDPA.

    python -m benchmarks.softmax [--n 4096] [--heads 4] [--d 64] [--repeat 5]

Prints ratios measured in one process on the same inputs (float64): refattn blockwise / dense, and
refattn (NumPy) / torch.nn.functional.scaled_dot_product_attention on the CPU.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

import refattn
from refattn import backends

from ._timing import peak_bytes, timeit


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--block", type=int, default=None)
    a = p.parse_args(argv)
    rs = np.random.default_rng(0)
    shape = (1, a.heads, a.n, a.d)
    q, k, v, dout = (rs.standard_normal(shape) for _ in range(4))
    be = backends.get("numpy")

    def fwd(impl):
        return lambda: refattn.softmax_attention(q, k, v, impl=impl, block_q=a.block, block_k=a.block)

    def fwdbwd(impl):
        def run():
            out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, impl=impl, block_q=a.block, block_k=a.block)
            return pb(dout)
        return run

    print(f"softmax attention, float64, B=1 H={a.heads} n={a.n} d={a.d}, NumPy {np.__version__}")
    rows = {}
    for impl in ("dense", "blockwise"):
        t_f, s_f = timeit(fwd(impl), repeat=a.repeat)
        t_b, s_b = timeit(fwdbwd(impl), repeat=a.repeat)
        tracemalloc.start()
        m_f, m_b = peak_bytes(be, fwd(impl)), peak_bytes(be, fwdbwd(impl))
        tracemalloc.stop()
        rows[impl] = (t_f, s_f, t_b, s_b, m_f, m_b)
        print(f"  {impl:<10} fwd {1e3 * t_f:8.1f} ms (spread {s_f:.0%})  fwd+bwd {1e3 * t_b:8.1f} ms (spread {s_b:.0%})"
              f"  peak fwd {m_f / 2**20:8.1f} MiB  fwd+bwd {m_b / 2**20:8.1f} MiB")
    d, b = rows["dense"], rows["blockwise"]
    print(f"  blockwise/dense: time fwd {b[0] / d[0]:.2f}x, fwd+bwd {b[2] / d[2]:.2f}x; "
          f"peak memory fwd {d[4] / b[4]:.1f}x lower, fwd+bwd {d[5] / b[5]:.1f}x lower")
    try:
        import torch
    except ImportError:
        print("  torch not installed: no SDPA peer (pip install 'refattn[peers]')")
        return
    tq, tk, tv, tdo = (torch.from_numpy(x) for x in (q, k, v, dout))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def t_fwdbwd():
        xs = [x.clone().requires_grad_() for x in (tq, tk, tv)]
        sdpa(*xs).backward(tdo)

    with torch.no_grad():
        tt_f, ts_f = timeit(lambda: sdpa(tq, tk, tv), repeat=a.repeat)
    tt_b, ts_b = timeit(t_fwdbwd, repeat=a.repeat)
    print(f"  torch {torch.__version__} SDPA (CPU, {torch.get_num_threads()} threads): fwd {1e3 * tt_f:.1f} ms "
          f"(spread {ts_f:.0%}), fwd+bwd {1e3 * tt_b:.1f} ms (spread {ts_b:.0%})")
    print(f"  refattn dense / torch SDPA: fwd {d[0] / tt_f:.2f}x, fwd+bwd {d[2] / tt_b:.2f}x")


if __name__ == "__main__":
    main()
