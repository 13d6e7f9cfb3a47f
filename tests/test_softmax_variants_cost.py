"""Counted FLOPs and transcendentals of the exact-attention variants equal the closed form exactly
(forward, and forward + backward), dense and blockwise; block skipping shows in both."""

from __future__ import annotations

import numpy as np
import pytest

import refattn
from refattn import mods
from refattn.cost import measure
from refattn.methods import softmax as sm

B, HQ, HKV, N, M, D, DV = 2, 4, 2, 24, 40, 4, 3
CU_Q, CU_K = (0, 5, 5, 17, 24), (0, 9, 15, 30, 40)


def _inputs(seed=0):
    rs = np.random.default_rng(seed)
    return (rs.standard_normal((B, HQ, N, D)), rs.standard_normal((B, HKV, M, D)),
            rs.standard_normal((B, HKV, M, DV)), rs.standard_normal(HQ), rs.random(HQ),
            rs.random((B, HQ, N, M)) < 0.8, np.array([[N], [9]]))


# (label, refattn kwargs builder from (sinks, slopes, dropmask), closed-form kwargs)
CASES = [
    ("gqa", lambda s, sl, dm, ql: {}, {"kv_heads": HKV}),
    ("causal", lambda s, sl, dm, ql: {"causal": True}, {"kv_heads": HKV, "causal": True}),
    ("window", lambda s, sl, dm, ql: {"mask_mod": mods.sliding_window(6, 0)},
     {"kv_heads": HKV, "mask_mod": mods.sliding_window(6, 0)}),
    ("document+br", lambda s, sl, dm, ql: {"mask_mod": mods.document(CU_Q, CU_K), "causal": "bottom_right"},
     {"kv_heads": HKV, "mask_mod": mods.document(CU_Q, CU_K), "causal": "bottom_right"}),
    ("softcap+alibi", lambda s, sl, dm, ql: {"score_mod": [mods.softcap(2.0), mods.alibi(sl)]},
     {"kv_heads": HKV, "score_mod": [mods.softcap(2.0), mods.alibi(np.ones(HQ))]}),
    ("sinks+lse", lambda s, sl, dm, ql: {"sinks": s, "return_lse": True},
     {"kv_heads": HKV, "sinks": True, "return_lse": True}),
    ("dropout+qlen", lambda s, sl, dm, ql: {"dropout_mask": dm, "dropout_p": 0.25,
                                         "query_lengths": ql},
     {"kv_heads": HKV, "dropout": True, "query_lengths": True}),
    ("all", lambda s, sl, dm, ql: {"sinks": s, "return_lse": True, "score_mod": mods.softcap(3.0), "causal": True,
                               "mask_mod": mods.and_masks(mods.sliding_window(8, 0)), "dropout_mask": dm,
                               "dropout_p": 0.1},
     {"kv_heads": HKV, "sinks": True, "return_lse": True, "score_mod": mods.softcap(3.0), "causal": True,
      "mask_mod": mods.sliding_window(8, 0), "dropout": True}),
]


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("impl", ["dense", "blockwise"])
@pytest.mark.parametrize("label,build,closed_kw", CASES, ids=[c[0] for c in CASES])
def test_counted_equals_closed_form(label, build, closed_kw, impl, backward):
    q, k, v, sinks, slopes, dm, ql = _inputs()
    blk = {"block_q": 8, "block_k": 8} if impl == "blockwise" else {}

    def run(q, k, v, sinks, slopes, dm, ql):
        kw = {**build(sinks, slopes, dm, ql), "impl": impl, **blk}
        out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
        if not backward:
            return out
        o = out[0] if isinstance(out, tuple) else out
        ns = o.__array_namespace__()
        dout = ns.ones_like(o)
        return pb((dout, ns.ones_like(out[1])) if isinstance(out, tuple) else dout)

    counted = measure(run, q, k, v, sinks, slopes, dm, ql)
    closed = sm.cost((B, HQ), N, M, D, DV, impl=impl, backward=backward, **blk, **closed_kw)
    assert (counted.flops, counted.transcendentals) == (closed.flops, closed.transcendentals)


def test_block_skipping_in_counted_cost():
    """Blockwise causal / window / document visit only the blocks they keep: the counted FLOPs drop
    accordingly, and equal the closed form."""
    n, bs = 256, 32
    rs = np.random.default_rng(1)
    q, k, v = (rs.standard_normal((1, 1, n, 8)) for _ in range(3))
    full = sm.cost(1, n, n, 8, 8, impl="blockwise", block_q=bs, block_k=bs).flops
    cu = (0, 64, 96, 200, 256)
    for kw, bound in (({"causal": True}, 0.6), ({"mask_mod": mods.sliding_window(31, 0)}, 0.3),
                      ({"mask_mod": mods.document(cu), "causal": True}, 0.4)):
        counted = measure(lambda q, k, v, kw=kw: refattn.softmax_attention(q, k, v, impl="blockwise", block_q=bs,
                                                                          block_k=bs, check_finite=False, **kw),
                          q, k, v)
        closed = sm.cost(1, n, n, 8, 8, impl="blockwise", block_q=bs, block_k=bs, check_finite=False, **kw)
        assert counted.flops == closed.flops
        assert counted.flops < bound * full, (kw, counted.flops / full)


def test_visited_fraction_closed_form():
    """Causal n x n with square blocks b visits n (n + b) / 2 logits; a causal window of w keys at
    most n (w + 2 b)."""
    n, b = 4096, 512
    assert sm.visited_fraction(n, n, causal=True, block_q=b, block_k=b) == pytest.approx((n + b) / (2 * n))
    w = 512
    f = sm.visited_fraction(n, n, mask_mod=mods.sliding_window(w - 1, 0), block_q=b, block_k=b)
    assert f <= (w + 2 * b) / n
