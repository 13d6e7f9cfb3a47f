"""Exact-attention variants (issue 25) at n = 4096 on the CPU, measured in one process:

1. counted FLOPs of blockwise causal / sliding window / document attention relative to full
   attention (the closed form, equal to the count: ``tests/test_softmax_variants_cost.py``; one
   count per case is taken here too, at H = 1);
2. wall-clock ratio of refattn's blockwise path (NumPy, float32) to torch SDPA (explicit boolean
   causal-and-window mask; SDPA has no softcap, so it computes less) and to FlexAttention eager
   (same score_mod and block mask) for causal + window 512 + softcap 30, forward pass;
3. the counted peak of blockwise attention at n = 65,536 with a window of 512 (forward and
   forward + backward, H = 1, d = 64, float32).

``python -m benchmarks.variants [--repeat R] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

import refattn
from refattn import mods
from refattn.cost import measure
from refattn.methods import softmax as sm

from ._timing import interleaved, summary


def flops_table(n: int = 4096, d: int = 64, block: int = 512) -> dict[str, float]:
    full = sm.cost(1, n, n, d, d, impl="blockwise", block_q=block, block_k=block).flops
    cu = tuple(range(0, n + 1, 512))  # 8 documents of 512
    cases = {"causal": {"causal": True}, "window512": {"mask_mod": mods.sliding_window(511, 0)},
             "causal+window512": {"causal": True, "mask_mod": mods.sliding_window(511, 0)},
             "document8x512": {"mask_mod": mods.document(cu)},
             "document8x512+causal": {"mask_mod": mods.document(cu), "causal": True}}
    out = {}
    for name, kw in cases.items():
        closed = sm.cost(1, n, n, d, d, impl="blockwise", block_q=block, block_k=block, **kw)
        out[name] = closed.flops / full
        for bk in (128,):
            c2 = sm.cost(1, n, n, d, d, impl="blockwise", block_q=bk, block_k=bk, **kw)
            f2 = sm.cost(1, n, n, d, d, impl="blockwise", block_q=bk, block_k=bk).flops
            out[f"{name} (blocks {bk})"] = c2.flops / f2
    rs = np.random.default_rng(0)
    q, k, v = (rs.standard_normal((1, 1, n, d)) for _ in range(3))
    counted = measure(lambda q, k, v: refattn.softmax_attention(q, k, v, impl="blockwise", causal=True,
                                                               mask_mod=mods.sliding_window(511, 0),
                                                               check_finite=False), q, k, v)
    closed = sm.cost(1, n, n, d, d, impl="blockwise", causal=True, mask_mod=mods.sliding_window(511, 0),
                     check_finite=False)
    assert counted.flops == closed.flops
    return out


def timing(n: int = 4096, heads: int = 4, d: int = 64, repeat: int = 5) -> dict[str, object]:
    import torch
    from torch.nn.attention import flex_attention as fa

    torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1)))
    rs = np.random.default_rng(0)
    q, k, v = (rs.standard_normal((1, heads, n, d)).astype(np.float32) for _ in range(3))
    w, cap = 512, 30.0
    kw = {"causal": True, "mask_mod": mods.sliding_window(w - 1, 0), "score_mod": mods.softcap(cap),
          "impl": "blockwise", "check_finite": False}
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    keep = torch.from_numpy((j <= i) & (j >= i - (w - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = fa.create_block_mask(lambda b, h, qi, ki: (ki <= qi) & (ki >= qi - (w - 1)), 1, heads, n, n,
                                  device="cpu")

    def ours():
        return refattn.softmax_attention(q, k, v, **kw)

    def sdpa():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=keep)

    def flex():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fa.flex_attention(tq, tk, tv, score_mod=lambda s, b, h, qi, ki: cap * torch.tanh(s / cap),
                                     block_mask=bm)

    ref = ours()
    np.testing.assert_allclose(ref, flex().numpy(), rtol=0, atol=2e-5)
    res = interleaved([ours, sdpa, flex], warmup=1, repeat=repeat)
    med = [float(np.median(t)) for t in res["times"]]
    return {"shape": [1, heads, n, d], "dtype": "float32", "window": w, "softcap": cap,
            "seconds": {"refattn_blockwise": med[0], "torch_sdpa": med[1], "flex_eager": med[2]},
            "refattn_over_sdpa": summary(res["ratios"][0]), "refattn_over_flex": summary(res["ratios"][1]),
            "load": os.getloadavg()}


def peak(n: int = 65536, d: int = 64, w: int = 512) -> dict[str, int]:
    rs = np.random.default_rng(0)
    q, k, v = (rs.standard_normal((1, 1, n, d)).astype(np.float32) for _ in range(3))
    kw = {"impl": "blockwise", "mask_mod": mods.sliding_window(w - 1, 0), "causal": True, "check_finite": False}
    t0 = time.perf_counter()
    fwd = measure(lambda q, k, v: refattn.softmax_attention(q, k, v, **kw), q, k, v)

    def both(q, k, v):
        out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
        return pb(out.__array_namespace__().ones_like(out))

    bwd = measure(both, q, k, v)
    return {"n": n, "d": d, "window": w, "forward_peak_bytes": fwd.peak_bytes,
            "forward_backward_peak_bytes": bwd.peak_bytes, "dense_logits_bytes": n * n * 4,
            "inputs_bytes": 3 * n * d * 4, "flops_forward": fwd.flops, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = {"flops_relative_to_full": flops_table(), "timing": timing(repeat=args.repeat), "peak": peak()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
