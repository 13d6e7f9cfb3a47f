"""Performance regression guard, not timed: at fixed small sizes each method's counted cost
(refattn.cost.measure on the counting namespace) must match its closed form, FLOPs exactly, and its
counted peak memory must stay under a bound.

Peak bounds: where the method's ``cost()`` models the peak (softmax, Nystromformer) the counted peak
must not exceed it. Elsewhere the bound is derived from the arrays the method keeps alive: every
array a linear-cost method holds is ``(B, n, w)`` for a width ``w`` among ``d`` (queries, keys and
their transforms), ``dv`` (values, outputs), ``F`` (features: ``d`` for elu+1, ``D`` random
features, the projected length ``k`` for Linformer, the last unit's width for trainable kernels),
or ``O(1)`` (normalisers, masks). The residuals hold about one array of each role per input side
and the largest transient set (a feature map's temporaries) about as many again; the bounds
below allow ``c (d + dv + F) + 8`` columns of ``B n`` entries with ``c`` twice that count (4 for
elementwise feature maps, 6 for random features' exponent/feature/shift triples, 8 for the cached
gated units of trainable kernels). At ``n = 512 >> d, dv, F`` one ``(B, n, n)`` array is 512 columns,
above every bound: an accidental quadratic array (or an O(n) array per query) fails the guard.
"""

import numpy as np
import pytest

import refattn
from refattn.cost import measure
from refattn.methods import heat as H
from refattn.methods import kernels as K
from refattn.methods import linear as L
from refattn.methods import linformer as LF
from refattn.methods import nystrom as N
from refattn.methods import random_features as RF
from refattn.methods import softmax as SM

B, N_LIN, N_QUAD, D, DV, FEAT, KPROJ, LANDMARKS, CHUNK, W = 2, 512, 128, 8, 8, 16, 16, 8, 32, 8


def _qkv(n):
    rs = np.random.default_rng(n)
    return tuple(rs.standard_normal((B, n, D)) for _ in range(3))


def _lin_bound(c, feat):
    """``c (d + dv + F) + 8`` columns of ``B n`` float64 entries (see the module docstring)."""
    return (c * (D + DV + feat) + 8) * B * N_LIN * W


def _linear_cases():
    n = N_LIN
    q, k, v = _qkv(n)
    rs = np.random.default_rng(1)
    e = rs.standard_normal((2, KPROJ, n)) / np.sqrt(KPROJ)
    w = rs.standard_normal((FEAT, D))
    glu = K.init_params("glu", D, rng=2)
    yield ("linear", refattn.linear_attention, (q, k, v), {}, L.cost(n, n, D, DV, batch=B), _lin_bound(4, D))
    yield ("linear-causal", refattn.linear_attention, (q, k, v), {"causal": True, "chunk": CHUNK},
           L.cost(n, n, D, DV, batch=B, causal=True, chunk=CHUNK), _lin_bound(4, D))
    yield ("efficient", refattn.efficient_attention, (q, k, v), {}, L.efficient_cost(n, n, D, DV, batch=B),
           _lin_bound(4, 0))
    yield ("linformer", refattn.linformer_attention, (q, k, v, e[0], e[1]), {},
           LF.cost(n, n, D, DV, KPROJ, batch=B), _lin_bound(4, KPROJ))
    yield ("verma", refattn.verma_attention, (q, k, v, e[0], e[1]), {}, LF.verma_cost(n, n, D, DV, KPROJ, batch=B),
           _lin_bound(4, KPROJ))
    yield ("rfa", refattn.random_feature_attention, (q, k, v, w), {}, RF.cost(n, n, D, DV, FEAT, batch=B),
           _lin_bound(6, FEAT))
    yield ("rfa-causal", refattn.random_feature_attention, (q, k, v, w), {"causal": True, "chunk": CHUNK},
           RF.cost(n, n, D, DV, FEAT, batch=B, causal=True, chunk=CHUNK), _lin_bound(6, FEAT))
    for kern in ("ffn", "glu", "oglu", "aoglu"):
        p = glu if kern == "glu" else K.init_params(kern, D, rng=2)
        yield (f"kernel-{kern}", refattn.kernel_attention, (q, k, v, *p), {"kernel": kern},
               K.cost(n, n, D, DV, kernel=kern, batch=(B,)), _lin_bound(8, D))
    yield ("kernel-glu-causal", refattn.kernel_attention, (q, k, v, *glu), {"kernel": "glu", "causal": True,
                                                                           "chunk": CHUNK},
           K.cost(n, n, D, DV, kernel="glu", batch=(B,), causal=True, chunk=CHUNK), _lin_bound(8, D))
    nys = N.cost(n, D, DV, num_landmarks=LANDMARKS, batch=(B,))
    yield ("nystrom", refattn.nystrom_attention, (q, k, v), {"num_landmarks": LANDMARKS}, nys, nys.peak_bytes)
    x = np.random.default_rng(3).standard_normal((B, n, 16))
    yield ("fwht", refattn.fwht, (x,), {}, refattn.hadamard.fwht_cost(16, batch=B * n), 4 * 16 * B * n * W)


LINEAR = list(_linear_cases())


@pytest.mark.parametrize("name,fn,args,kw,closed,bound", LINEAR, ids=[c[0] for c in LINEAR])
def test_linear_cost_methods(name, fn, args, kw, closed, bound):
    got = measure(fn, *args, **kw)
    assert got.flops == closed.flops
    assert got.transcendentals == closed.transcendentals
    assert 0 < got.peak_bytes <= bound, f"{name}: peak {got.peak_bytes} > bound {bound}"
    assert bound < B * N_LIN * N_LIN * W  # the bound itself excludes one (B, n, n) array


@pytest.mark.parametrize("impl", ["dense", "blockwise"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backward", [False, True])
def test_softmax_within_closed_form(impl, causal, backward):
    """FLOPs and transcendentals exact; bytes, allocations and peak under the closed form's bounds,
    and the bounds tight at these sizes: bytes within 25%, allocations within 1.5x, peak within 4x
    (the dense bound counts every array the dense path writes as if none were freed: up to eight
    (n, m) arrays where the real peak holds two (forward) or three (backward); the blockwise bound
    sums the carried arrays, the largest block's writes and what the loop variables hold)."""
    n = N_QUAD
    q, k, v = _qkv(n)
    kw = {"impl": impl, "causal": causal, "block_q": 32, "block_k": 32}
    closed = SM.cost((B,), n, n, D, DV, backward=backward, **kw)
    if backward:
        dout = np.random.default_rng(4).standard_normal((B, n, DV))

        def run(q, k, v, dout):
            return refattn.vjp(refattn.softmax_attention, q, k, v, **kw)[1](dout)

        got = measure(run, q, k, v, dout)
    else:
        got = measure(refattn.softmax_attention, q, k, v, **kw)
    for f in ("flops", "transcendentals"):
        assert getattr(got, f) == getattr(closed, f), f
    for f, factor in (("bytes_read", 1.25), ("bytes_written", 1.25), ("allocations", 1.5), ("peak_bytes", 4)):
        assert getattr(got, f) <= getattr(closed, f) <= factor * getattr(got, f), f
    if impl == "dense" and not backward:
        assert got.peak_bytes <= (2 * B * n * n + 4 * B * n * (D + DV + 2)) * W  # two (n, m) arrays


@pytest.mark.parametrize("reading,rank", [("features", 4), ("logits", 4), ("hadamard", None)])
def test_heat_within_softmax_bound(reading, rank):
    """FLOPs outside the modelled QR/SVD exact. No peak model: features/logits run dense softmax on
    rank-r features, so their peak is bounded by that softmax's peak model plus the decomposition's
    (n, d)-sized arrays (8 of them); hadamard holds (block, m, d) logits and probabilities for a
    query block of 64 rows (6 such arrays)."""
    n = N_QUAD
    q, k, v = _qkv(n)
    got = measure(refattn.heat_attention, q, k, v, reading=reading, rank=rank, impl="dense")
    closed = H.cost(n, n, D, DV, reading=reading, rank=rank, batch=(B,))
    lin = lambda c: sum(x.flops for name, x in c.per_op.items() if "qr" in name or "svd" in name)  # noqa: E731
    assert got.flops - lin(got) == closed.flops - lin(closed)
    if reading == "hadamard":
        bound = 6 * B * 64 * n * D * W + 8 * B * n * D * W
    else:
        f = 2 * rank if reading == "logits" else D
        bound = SM.cost((B,), n, n, f, DV, impl="dense").peak_bytes + 8 * B * n * D * W
    assert got.peak_bytes <= bound
