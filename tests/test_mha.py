"""Multi-head attention (refattn.mha) with a dense or a WHT output projection.

Gradients: finite differences (refattn.testing.gradcheck) for every array argument, and torch
autograd on the same maths written directly in torch (explicit softmax and Hadamard matrix).

Tolerance of the torch cross-checks (float64, u = 1.1e-16): every output and gradient entry is a
chain of at most ~6 products/sums of depth K <= 16 (c, n, m, rows here) plus exp/log of the
softmax (a few ulps each). With unit-scale random inputs the forward error of either side is below
K u times the chain's amplification (< 10^2 for these sizes) ~ 2e-13 of the array's largest entry,
so both sides agree to a normwise 1e-12 (max |difference| <= 1e-12 max |reference|).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import pytest

import refattn
from refattn import mha
from refattn._xp import namespace, unbroadcast
from refattn.hadamard import hadamard_matrix
from refattn.methods import softmax
from refattn.mha import multi_head_attention, parameter_count, removed_fraction
from refattn.testing import gradcheck

from .conftest import to

torch = pytest.importorskip("torch")

B, N, M, C, CCTX, H = 2, 5, 6, 8, 6, 2


def make_params(seed: int, *, projection: str, bias: bool, cross: bool, c: int = C, c_ctx: int = CCTX,
                broadcast_ctx: bool = False) -> list[Any]:
    """Host arrays in argument order x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, context (None where
    absent). Weights scaled by 1/sqrt(fan-in) so activations stay O(1)."""
    rs = np.random.default_rng(seed)
    src = c_ctx if cross else c
    w = lambda i, o: rs.standard_normal((i, o)) / math.sqrt(i)  # noqa: E731
    x = rs.standard_normal((B, N, c))
    ctx = rs.standard_normal((1 if broadcast_ctx else B, M, c_ctx)) if cross else None
    w_o = w(c, c) if projection == "dense" else 1.0 + 0.3 * rs.standard_normal(c)
    bq, bk, bv, bo = ((rs.standard_normal(c) for _ in range(4)) if bias else (None,) * 4)
    if projection == "wht" and not bias:
        bo = rs.standard_normal(c)  # the affine shift is part of 004's projection
    return [x, w(c, c), w(src, c), w(src, c), w_o, bq, bk, bv, bo, ctx]


def to_backend(backend, host: list[Any]) -> list[Any]:
    return [None if a is None else backend.asarray(np.asarray(a, dtype=np.float64)) for a in host]


def torch_mha(args: list[Any], *, heads: int, projection: str, causal: bool, method=None):
    """The same maths in torch; ``method`` (optional) replaces the explicit softmax attention."""
    x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, ctx = args
    src = x if ctx is None else ctx
    lin = lambda a, w, b: a @ w + (0 if b is None else b)  # noqa: E731

    def split(a):
        *lead, n, width = a.shape
        return a.reshape(*lead, n, heads, width // heads).transpose(-3, -2)

    qh, kh, vh = split(lin(x, w_q, b_q)), split(lin(src, w_k, b_k)), split(lin(src, w_v, b_v))
    if method is None:
        s = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
        if causal:
            keep = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril()
            s = s.masked_fill(~keep, -math.inf)
        oh = torch.softmax(s, dim=-1) @ vh
    else:
        oh = method(qh, kh, vh)
    merged = oh.transpose(-3, -2)
    merged = merged.reshape(*merged.shape[:-2], -1)
    if projection == "dense":
        return lin(merged, w_o, b_o)
    c = merged.shape[-1]
    hn = torch.from_numpy(np.asarray(hadamard_matrix(c)) / math.sqrt(c))
    return (merged @ hn) * w_o + (0 if b_o is None else b_o)


def assert_normwise(got, ref, what):
    err, size = float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))
    assert err <= 1e-12 * size, f"{what}: max |diff| {err:.3e} > 1e-12 * {size:.3e}"


def check_grads(grads, leaves):
    """Every gradient normwise against torch's. A bias gradient is the sum over rows of the same
    per-row cotangents that form its weight's gradient (times O(1) inputs), so its rounding scale is
    max(|d b|, |d W|): this matters for d b_K under softmax, which is exactly 0 (softmax is invariant
    to adding q_i . b_K to every logit of row i) and is rounding noise on both sides."""
    weight_of = {"b_q": 1, "b_k": 2, "b_v": 3, "b_o": 4}
    for i, (g, leaf) in enumerate(zip(grads, leaves)):
        name = mha._NAMES[i]
        if leaf is None:
            assert g is None, name
            continue
        ref = leaf.grad.numpy()
        if name in weight_of:
            size = max(float(np.max(np.abs(ref))), float(np.max(np.abs(leaves[weight_of[name]].grad.numpy()))))
            err = float(np.max(np.abs(g - ref)))
            assert err <= 1e-12 * size, f"d{name}: max |diff| {err:.3e} > 1e-12 * {size:.3e}"
        else:
            assert_normwise(g, ref, "d" + name)


CONFIGS = [  # (name, cross, broadcast_ctx, bias, causal)
    ("self-causal-bias", False, False, True, True),
    ("self-nobias", False, False, False, False),
    ("cross-bias", True, False, True, False),
    ("cross-broadcast-causal", True, True, False, True),
]


@pytest.mark.parametrize("projection", ["dense", "wht"])
@pytest.mark.parametrize("name,cross,bcast,bias,causal", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_matches_torch_autograd(backend, projection, name, cross, bcast, bias, causal):
    """Output and the gradient of every argument against torch autograd (softmax inside)."""
    host = make_params(0, projection=projection, bias=bias, cross=cross, broadcast_ctx=bcast)
    args = to_backend(backend, host)
    kw = {"heads": H, "projection": projection, "method_kwargs": {"causal": causal}}
    out, pullback = refattn.vjp(multi_head_attention, *args, **kw)
    dy = np.random.default_rng(1).standard_normal(tuple(out.shape))
    grads = pullback(backend.asarray(dy))
    assert len(grads) == 10
    leaves = [None if a is None else torch.tensor(a, requires_grad=True) for a in host]
    ty = torch_mha(leaves, heads=H, projection=projection, causal=causal)
    ty.backward(torch.from_numpy(dy))
    assert_normwise(backend.to_host(out), ty.detach().numpy(), "output")
    for i, (g, leaf) in enumerate(zip(grads, leaves)):
        if leaf is None:
            assert g is None, mha._NAMES[i]
            continue
        assert tuple(g.shape) == tuple(leaf.shape), mha._NAMES[i]
    check_grads([backend.to_host(g) if g is not None else None for g in grads], leaves)


@pytest.mark.parametrize("projection", ["dense", "wht"])
@pytest.mark.parametrize("cross", [False, True])
def test_gradcheck_softmax_inside(backend, projection, cross):
    host = make_params(2, projection=projection, bias=True, cross=cross, broadcast_ctx=cross)
    gradcheck(multi_head_attention, to_backend(backend, host),
              kwargs={"heads": H, "projection": projection, "method_kwargs": {"causal": True}})


def _linear_method():
    from refattn.methods import linear

    assert linear.linear_attention in refattn.registered()
    return linear.linear_attention


class _RefattnInTorch(torch.autograd.Function):
    """A refattn method as a torch op (forward and backward are refattn's): isolates the chain rule
    of the MHA wrapper from the method's own formula, which its own tests check."""

    @staticmethod
    def forward(ctx, q, k, v, fn):
        out, pullback = refattn.vjp(fn, q.detach().numpy(), k.detach().numpy(), v.detach().numpy())
        ctx.pullback = pullback
        return torch.from_numpy(np.array(out))

    @staticmethod
    def backward(ctx, dout):
        dq, dk, dv = ctx.pullback(dout.numpy())[:3]
        return torch.from_numpy(np.array(dq)), torch.from_numpy(np.array(dk)), torch.from_numpy(np.array(dv)), None


@pytest.mark.parametrize("projection", ["dense", "wht"])
def test_linear_method_inside(projection):
    """A linear attention method inside MHA: finite differences for every argument, and torch autograd
    through the method as a torch op (the wrapper's chain rule)."""
    fn = _linear_method()
    host = make_params(3, projection=projection, bias=True, cross=False)
    args = to_backend(refattn.backends.get("numpy"), host)
    kw = {"heads": H, "projection": projection, "method": fn}
    gradcheck(multi_head_attention, args, kwargs=kw)
    out, pullback = refattn.vjp(multi_head_attention, *args, **kw)
    dy = np.random.default_rng(4).standard_normal(out.shape)
    grads = pullback(dy)
    leaves = [None if a is None else torch.tensor(a, requires_grad=True) for a in host]
    ty = torch_mha(leaves, heads=H, projection=projection, causal=False,
                   method=lambda q, k, v: _RefattnInTorch.apply(q, k, v, fn))
    ty.backward(torch.from_numpy(dy))
    assert_normwise(np.asarray(out), ty.detach().numpy(), "output")
    check_grads([None if g is None else np.asarray(g) for g in grads], leaves)


# a registered toy method with a positional parameter: softmax attention of (q * t, k, v)
class _TempGrads(NamedTuple):
    dq: Any
    dk: Any
    dv: Any
    dt: Any


def _temp_forward(q, k, v, t, /, *, causal=False):
    out, res = softmax.forward(q * t, k, v, causal=causal)
    return out, (res, q, t)


def _temp_backward(r, dout, /):
    res, q, t = r
    g = softmax.backward(res, dout)
    return _TempGrads(g.dq * t, g.dk, g.dv, unbroadcast(namespace(q), g.dq * q, tuple(t.shape)))


def temp_attention(q, k, v, t, /, *, causal=False):
    return _temp_forward(q, k, v, t, causal=causal)[0]


def test_method_with_positional_parameters(monkeypatch, backend):
    """*method_params reach the method after (q, k, v); their gradients come last in Grads."""
    monkeypatch.setitem(refattn._registry._BY_FUNCTION, temp_attention,
                        refattn._registry.Function(_temp_forward, _temp_backward))
    host = make_params(5, projection="wht", bias=True, cross=True)
    t = 1.0 + 0.2 * np.random.default_rng(6).standard_normal(C // H)
    args = [*to_backend(backend, host), backend.asarray(t)]
    kw = {"heads": H, "projection": "wht", "method": temp_attention, "method_kwargs": {"causal": True}}
    gradcheck(multi_head_attention, args, kwargs=kw)
    out, pullback = refattn.vjp(multi_head_attention, *args, **kw)
    grads = pullback(out)
    assert len(grads) == 11 and tuple(grads.dmethod_params[0].shape) == (C // H,)
    assert grads.dcontext is grads[9] and grads.dx is grads[0]
    assert "dparam0=(4,)" in repr(grads)


def test_half_precision_computed_in_float32():
    host = make_params(7, projection="wht", bias=True, cross=False)
    h16 = [None if a is None else a.astype(np.float16) for a in host]
    h32 = [None if a is None else a.astype(np.float32) for a in h16]
    out16 = multi_head_attention(*h16, heads=H, projection="wht")
    out32 = multi_head_attention(*h32, heads=H, projection="wht")
    assert out16.dtype == np.float16
    np.testing.assert_array_equal(out16, out32.astype(np.float16))
    _, pullback = refattn.vjp(multi_head_attention, *h16, heads=H, projection="wht")
    assert all(g is None or g.dtype == np.float16 for g in pullback(out16))


def test_wht_projection_option_pad():
    """c_v not a power of two: an error by default, the truncated padded transform with pad=True."""
    host = make_params(8, projection="wht", bias=True, cross=False, c=12)
    kw = {"heads": 3, "projection": "wht"}
    with pytest.raises(ValueError, match=r"c_v = w_v.shape\[1\] to be a power of two, got 12"):
        multi_head_attention(*host, **kw)
    gradcheck(multi_head_attention, host, kwargs={**kw, "projection_kwargs": {"pad": True}})


# --------------------------------------------------------------------------------------------------
# parameter counts


@pytest.mark.parametrize("projection", ["dense", "wht"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cross", [True, False])
def test_parameter_count_matches_the_arrays(projection, bias, cross):
    host = make_params(9, projection=projection, bias=bias, cross=cross)
    used = sum(a.size for a in host[1:9] if a is not None)
    shift = host[8] is not None
    count = parameter_count(C, projection=projection, bias=bias, shift=shift, c_context=CCTX if cross else None)
    assert count == used


def test_removed_fraction_vs_approximately_25_percent():
    """Fraction of a square block's parameters removed by the WHT projection, exactly (rationals):
    with biases (c - 1)/(4(c + 1)), without (c - 2)/(4c); scale-only c/(4(c + 1)), (c - 1)/(4c).
    Below 1/4 for every c, increasing in c, within 1 percentage point of 25% for c >= 64 (004:
    "approximately 25 percent"), 0.24935 at GPT-2's c = 768."""
    forms = {(True, True): lambda c: Fraction(c - 1, 4 * (c + 1)), (False, True): lambda c: Fraction(c - 2, 4 * c),
             (True, False): lambda c: Fraction(c, 4 * (c + 1)), (False, False): lambda c: Fraction(c - 1, 4 * c)}
    for (bias, shift), form in forms.items():
        previous = -1.0
        for c in [2**p for p in range(1, 14)] + [768, 1280, 1600]:
            dense = parameter_count(c, bias=bias)
            wht = parameter_count(c, projection="wht", bias=bias, shift=shift)
            assert Fraction(dense - wht, dense) == form(c)
            f = removed_fraction(c, bias=bias, shift=shift)
            assert math.isclose(f, float(form(c)), rel_tol=4 * 2.0**-53)  # 1 - a/b: two roundings
            assert f < 0.25
            if c >= 64:
                assert 0.25 - f <= 0.01
            if c in (2**p for p in range(1, 14)):
                assert f > previous
                previous = f
    assert round(removed_fraction(768), 5) == 0.24935 and round(removed_fraction(768, bias=False), 5) == 0.24935


def test_output_projection_cost():
    assert mha.output_projection_cost(10, 64).flops == 2 * 10 * 64 * 64 + 10 * 64
    assert mha.output_projection_cost(10, 64, bias=False, c_out=32).flops == 2 * 10 * 64 * 32
    assert mha.output_projection_cost(10, 64, projection="wht").flops == 10 * (64 * 6 + 64 + 2 * 64)
    assert mha.output_projection_cost(10, 768, projection="wht", pad=True).flops == 10 * (10240 + 1024 + 2 * 768)


# --------------------------------------------------------------------------------------------------
# bad input


def test_bad_input(backend):
    host = make_params(10, projection="dense", bias=True, cross=False)
    args = to_backend(backend, host)
    x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, _ = args
    rs = np.random.default_rng(11)
    arr = lambda *shape: backend.asarray(rs.standard_normal(shape))  # noqa: E731
    call = lambda *a, **kw: multi_head_attention(*a, **{"heads": H, **kw})  # noqa: E731
    cases = [
        (lambda: call(*args, heads=3), ValueError, r"heads=3 must divide the query/key width c_qk = w_q.shape\[1\]=8"),
        (lambda: call(x, arr(C, 6), arr(C, 6), w_v, w_o, heads=4), ValueError, "heads=4 must divide the query/key"),
        (lambda: call(x, w_q, w_k, arr(C, 6), arr(6, C), heads=4), ValueError, "heads=4 must divide the value width"),
        (lambda: call(*args, heads=0), ValueError, "heads must be a positive integer"),
        (lambda: call(x, arr(C + 1, C), w_k, w_v, w_o), ValueError, r"w_q must have shape \(8, 8\)"),
        (lambda: call(x, w_q, arr(C, 4), w_v, w_o), ValueError, r"w_k must have shape \(8, 8\)"),
        (lambda: call(x, w_q, w_k, w_v, arr(C + 1, C)), ValueError, r"w_o must have shape \(8, 8\)"),
        (lambda: call(x, w_q, w_k, w_v, w_o, arr(3)), ValueError, r"b_q must have shape \(8,\)"),
        (lambda: call(x, w_q, w_k, w_v, w_o, None, None, None, arr(3)), ValueError, r"b_o must have shape \(8,\)"),
        (lambda: call(x, w_q, w_k, w_v, w_o, None, None, None, None, arr(B, M, 5)), ValueError,
         r"w_k must have shape \(5, 8\) \(context width 5"),
        (lambda: call(x, w_q, w_k, w_v, w_o, None, None, None, None, arr(3, M, C)), ValueError, "do not broadcast"),
        (lambda: call(x, w_q, w_k, w_v, w_o, projection="wht"), ValueError, r"w_o must have shape \(8,\)"),
        (lambda: call(x, w_q, w_k, w_v, arr(C), None, None, None, arr(C, C), projection="wht"), ValueError,
         r"b_o must have shape \(8,\)"),
        (lambda: call(*args, projection="sparse"), ValueError, "projection must be one of"),
        (lambda: call(*args, projection_kwargs={"pad": True}), ValueError, "apply to projection='wht' only"),
        (lambda: call(*args, method=lambda q, k, v: q), TypeError, "registered vjp"),
        (lambda: call(*args, method_kwargs=[("causal", True)]), TypeError, "method_kwargs must be a mapping"),
        (lambda: call(x, w_q, w_k, w_v, None), TypeError, "w_o must be an array"),
        (lambda: call(x[0, ...][0, ...], w_q, w_k, w_v, w_o), ValueError, "x must have at least 2 dimensions"),
        (lambda: call(x, w_q[0, ...], w_k, w_v, w_o), ValueError, "w_q must have 2 dimensions"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()
    (x32,) = to(backend, host[0], dtype="float32")
    with pytest.raises(TypeError, match="w_q must have x's dtype"):
        call(x32, w_q, w_k, w_v, w_o)
    with pytest.raises(ValueError, match="projection must be one of"):
        parameter_count(8, projection="sparse")
    with pytest.raises(ValueError, match="c_out=4"):
        parameter_count(8, projection="wht", c_out=4)
    with pytest.raises(ValueError, match="c must be a positive integer"):
        parameter_count(0)


def test_softmax_heads_run_the_implementation_once(monkeypatch):
    """With the default method MHA runs softmax's implementation (never the public softmax.forward),
    validates method_kwargs once, and checks the per-head arrays for NaN/inf only when asked."""
    host = make_params(12, projection="dense", bias=True, cross=False)
    ref_y = multi_head_attention(*host, heads=H, method_kwargs={"causal": True})

    def no_public(*a, **kw):
        raise AssertionError("softmax.forward called from multi_head_attention")

    monkeypatch.setattr(softmax, "forward", no_public)
    y, pullback = refattn.vjp(multi_head_attention, *host, heads=H, method_kwargs={"causal": True})
    assert np.array_equal(y, ref_y)
    pullback(np.ones_like(y))
    bad = [np.full_like(host[0], np.nan), *host[1:]]
    with np.errstate(invalid="ignore"):
        assert np.isnan(multi_head_attention(*bad, heads=H)).all()  # propagates, as before
    with pytest.raises(ValueError, match="q must be finite"):
        multi_head_attention(*bad, heads=H, method_kwargs={"check_finite": True})
    with pytest.raises(TypeError, match="unexpected keyword argument 'causl'"):
        multi_head_attention(*host, heads=H, method_kwargs={"causl": True})
    with pytest.raises(ValueError, match="impl must be one of"):
        multi_head_attention(*host, heads=H, method_kwargs={"impl": "fast"})
    with pytest.raises(TypeError, match="takes no method_params"):
        multi_head_attention(*host, host[0], heads=H)
    with pytest.raises(ValueError, match="impl must be one of"):
        multi_head_attention(*make_params(12, projection="wht", bias=True, cross=False), heads=H, projection="wht",
                             projection_kwargs={"impl": "fast"})
