"""Complexity instrumentation (refattn.cost): the counting namespace, measure/count, the closed-form
cost of exact softmax attention, fitted exponents, the CLI, and the performance regression guard.

Every count here is an integer produced by deterministic code, so comparisons are exact (``==``),
not within a tolerance; the only inequalities are the documented upper bounds (peak bytes) and the
fitted exponents, whose intervals are derived in the tests' docstrings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refattn
import refattn.cost as rc
from refattn.cli import main as cli_main
from refattn.cost import Cost, assert_counted_matches, count, fit_exponent, linalg_flops, measure
from refattn.methods import softmax as sm

from .conftest import _get

STRICT_OR_NUMPY = ["numpy", "array_api_strict"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _inputs(seed, batch, n, m, d, dv, masked):
    """Host q, k, v, dout and the mask keyword arguments of the kind the closed form assumes
    (full-shape boolean / additive masks, int64 key_lengths of the batch shape)."""
    rs = np.random.default_rng(seed)
    q, k = rs.standard_normal((*batch, n, d)), rs.standard_normal((*batch, m, d))
    v, dout = rs.standard_normal((*batch, m, dv)), rs.standard_normal((*batch, n, dv))
    kw = {}
    if masked in (True, "bool"):
        kw["mask"] = rs.random((*batch, n, m)) < 0.7
    elif masked == "additive":
        bias = rs.standard_normal((*batch, n, m))
        bias[rs.random((*batch, n, m)) < 0.2] = -np.inf
        kw["mask"] = bias
    elif masked == "key_lengths":
        kw["key_lengths"] = rs.integers(0, m + 1, size=batch).astype(np.int64)
    return (q, k, v, dout), kw


def _fwd_bwd(q, k, v, dout, **kw):
    """forward then backward on its residuals (what refattn.vjp + pullback run)."""
    return sm.backward(sm.forward(q, k, v, **kw)[1], dout)


def _to_host(backend, x):
    return np.asarray(backend.to_host(x))


def _same_bits(a, b):
    """Bit-for-bit equality of two host arrays: dtype, shape, and every entry (NaN == NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# ---------------------------------------------------------------------------------------------
# counted == closed form for exact softmax (hypothesis sweep)
# ---------------------------------------------------------------------------------------------

@settings(max_examples=60)
@given(
    batch=st.sampled_from([(), (2,), (2, 3)]),
    n=st.integers(0, 9), m=st.integers(0, 9), d=st.integers(1, 4), dv=st.integers(1, 4),
    impl=st.sampled_from(["dense", "blockwise"]),
    causal=st.sampled_from([False, True, "bottom_right"]),
    masked=st.sampled_from([False, "bool", "additive", "key_lengths"]),
    block_q=st.integers(1, 5), block_k=st.integers(1, 5), backward=st.booleans(), check_finite=st.booleans(),
)
def test_softmax_counted_equals_closed_form(batch, n, m, d, dv, impl, causal, masked, block_q, block_k,
                                            backward, check_finite):
    """flops and transcendentals are exact for every shape, mask and block size; bytes read and
    written, allocations and the peak never exceed the closed form's stated bounds (under its
    shape assumptions, which these inputs satisfy)."""
    (q, k, v, dout), mkw = _inputs(0, batch, n, m, d, dv, masked)
    kw = dict(impl=impl, causal=causal, block_q=block_q, block_k=block_k, check_finite=check_finite, **mkw)
    closed = sm.cost(batch, n, m, d, dv, impl=impl, backward=backward, causal=causal, masked=masked,
                     block_q=block_q, block_k=block_k, dtype_bytes=8, check_finite=check_finite)
    fn, args = (_fwd_bwd, (q, k, v, dout)) if backward else (refattn.softmax_attention, (q, k, v))
    assert_counted_matches(fn, args, kw, closed, exact=("flops", "transcendentals"),
                           upper=("bytes_read", "bytes_written", "allocations", "peak_bytes"))


@pytest.mark.parametrize("backend_name", ["array_api_strict", "torch"])
def test_softmax_counts_do_not_depend_on_the_backend(backend_name):
    """The conventions are backend-independent: the same run counts the same on every backend."""
    be = _get(backend_name)
    (q, k, v, dout), mkw = _inputs(1, (2, 2), 11, 13, 4, 3, "key_lengths")
    kw = dict(impl="blockwise", causal=True, block_q=4, block_k=5)
    ref = measure(_fwd_bwd, q, k, v, dout, **kw, key_lengths=mkw["key_lengths"])
    got = measure(_fwd_bwd, *(be.asarray(a) for a in (q, k, v, dout)), **kw,
                  key_lengths=be.asarray(mkw["key_lengths"]))
    for f in ("flops", "transcendentals", "bytes_read", "bytes_written", "allocations", "peak_bytes"):
        assert getattr(got, f) == getattr(ref, f), f


def test_softmax_closed_form_float32_and_half():
    """dtype_bytes scales the byte bounds (float32 counts stay under the float32 bounds and above the
    float32 bounds of half the item size); float16 inputs are computed in float32, so their flops are
    the float32 flops (the casts cost no flops)."""
    (q, k, v, _), _ = _inputs(2, (2,), 6, 7, 3, 2, False)
    c32 = measure(refattn.softmax_attention, q.astype(np.float32), k.astype(np.float32), v.astype(np.float32))
    closed = sm.cost((2,), 6, 7, 3, 2, dtype_bytes=4)
    assert c32.flops == closed.flops
    assert c32.bytes_read <= closed.bytes_read and c32.bytes_written <= closed.bytes_written
    assert c32.bytes_read < sm.cost((2,), 6, 7, 3, 2, dtype_bytes=8).bytes_read
    c16 = measure(refattn.softmax_attention, q.astype(np.float16), k.astype(np.float16), v.astype(np.float16))
    assert (c16.flops, c16.transcendentals) == (closed.flops, closed.transcendentals)


# ---------------------------------------------------------------------------------------------
# fitted exponents
# ---------------------------------------------------------------------------------------------

def _qkv_of(n, d=8, batch=(1,)):
    rs = np.random.default_rng(n)
    return tuple(rs.standard_normal((*batch, n, d)) for _ in range(3))


def test_dense_softmax_flop_exponent_in_n():
    """FLOPs of dense softmax with m = n are 2 n^2 (d + dv) + 4 n^2 + n dv - n per batch element:
    the log-log slope over n in 32..256 is 2 minus a lower-order correction of order
    (dv - 1) / (n (2 (d + dv) + 4)) < 0.01, so it lies in [1.95, 2.05]."""
    flops_slope, peak_slope = fit_exponent(lambda q, k, v: refattn.softmax_attention(q, k, v, impl="dense"),
                                           [32, 64, 128, 256], _qkv_of)
    assert 1.95 <= flops_slope <= 2.05
    assert peak_slope >= 1.9


def test_peak_exponent_blockwise_vs_dense():
    """With fixed blocks (32 x 32), the blockwise forward keeps O(n dv) results plus O(block^2)
    working arrays, so its peak grows at most linearly in n (slope <= 1.1; a constant term makes it
    smaller); the dense forward holds (n, n) logits, so its peak grows like n^2 (slope >= 1.9)."""
    sizes = [64, 128, 256, 512]
    _, block_slope = fit_exponent(
        lambda q, k, v: refattn.softmax_attention(q, k, v, impl="blockwise", block_q=32, block_k=32),
        sizes, _qkv_of)
    _, dense_slope = fit_exponent(lambda q, k, v: refattn.softmax_attention(q, k, v, impl="dense"),
                                  sizes, _qkv_of)
    assert block_slope <= 1.1
    assert dense_slope >= 1.9
    # the closed forms agree: their peak bounds have the same growth
    bounds = [sm.cost(1, s, s, 8, 8, impl="blockwise", block_q=32, block_k=32).peak_bytes for s in sizes]
    assert rc._slope([math.log(s) for s in sizes], [math.log(b) for b in bounds]) <= 1.1


def test_fit_exponent_accepts_args_kwargs_pairs():
    def make(s):
        return (np.ones((s, s)),), {}

    flops, peak = fit_exponent(lambda a: a @ a, [4, 8, 16], make)
    assert flops == pytest.approx(3.0) and peak == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# performance regression guard (issue 12, item 5)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["dense", "blockwise"])
@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_regression_guard_softmax(impl, backward, causal):
    """At fixed sizes the counted FLOPs, transcendentals, bytes and peak bytes of softmax must not
    grow past its closed form (a change to the code that adds work or memory fails here; a change
    that removes some must update the closed form, which the exact sweep above enforces)."""
    batch, n, d = (1, 2), 96, 16
    (q, k, v, dout), _ = _inputs(3, batch, n, n, d, d, False)
    kw = dict(impl=impl, causal=causal, block_q=32, block_k=32)
    closed = sm.cost(batch, n, n, d, d, impl=impl, backward=backward, causal=causal, block_q=32, block_k=32)
    fn, args = (_fwd_bwd, (q, k, v, dout)) if backward else (refattn.softmax_attention, (q, k, v))
    assert_counted_matches(fn, args, kw, closed, exact=(),
                           upper=("flops", "transcendentals", "bytes_read", "bytes_written", "peak_bytes"))


# ---------------------------------------------------------------------------------------------
# the counting namespace: conformance (bit for bit) under numpy and array_api_strict
# ---------------------------------------------------------------------------------------------

def _conformance_cases(xp):
    """(name, function of (xp, arrays...) , host inputs). Inputs keep every op in its domain."""
    rs = np.random.default_rng(7)
    x = rs.uniform(0.1, 0.9, (3, 4))
    y = rs.uniform(0.1, 0.9, (3, 4))
    sq = rs.standard_normal((4, 4))
    spd = sq @ sq.T + 4 * np.eye(4)
    ints = np.array([3, 1, 2, 1, 3], dtype=np.int64)
    bools = rs.random((3, 4)) < 0.5
    cases = []
    for name in ("abs", "negative", "square", "sign", "floor", "ceil", "round", "trunc", "exp", "expm1",
                 "log", "log1p", "log2", "log10", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan",
                 "sinh", "cosh", "tanh", "asinh", "atanh", "isfinite", "isnan", "isinf", "signbit",
                 "positive"):
        cases.append((name, lambda xp, a, name=name: getattr(xp, name)(a), (x,)))
    cases.append(("acosh", lambda xp, a: xp.acosh(1.0 + a), (x,)))
    if hasattr(xp, "reciprocal"):
        cases.append(("reciprocal", lambda xp, a: xp.reciprocal(a), (x,)))
    for name in ("add", "subtract", "multiply", "divide", "maximum", "minimum", "pow", "atan2", "hypot",
                 "logaddexp", "copysign", "floor_divide", "remainder", "equal", "not_equal", "less",
                 "less_equal", "greater", "greater_equal", "nextafter"):
        cases.append((name, lambda xp, a, b, name=name: getattr(xp, name)(a, b), (x, y)))
    for name in ("logical_and", "logical_or", "logical_xor"):
        cases.append((name, lambda xp, a, b, name=name: getattr(xp, name)(a, b), (bools, ~bools)))
    cases += [
        ("logical_not", lambda xp, a: xp.logical_not(a), (bools,)),
        ("bitwise", lambda xp, a: (xp.bitwise_and(a, 1), xp.bitwise_or(a, 4), xp.bitwise_xor(a, 2),
                                   xp.bitwise_invert(a), xp.bitwise_left_shift(a, 1),
                                   xp.bitwise_right_shift(a, 1)), (ints,)),
        ("where", lambda xp, c, a, b: xp.where(c, a, b), (bools, x, y)),
        ("where scalar", lambda xp, c, a: xp.where(c, a, -math.inf), (bools, x)),
        ("clip", lambda xp, a: xp.clip(a, 0.2, 0.7), (x,)),
        ("reductions", lambda xp, a: (xp.sum(a), xp.sum(a, axis=0), xp.prod(a, axis=1, keepdims=True),
                                      xp.max(a, axis=-1), xp.min(a), xp.mean(a, axis=0),
                                      xp.var(a, axis=1), xp.std(a, correction=1), xp.argmax(a, axis=1),
                                      xp.argmin(a), xp.cumulative_sum(a, axis=1)), (x,)),
        ("any all", lambda xp, c: (xp.any(c), xp.all(c, axis=0)), (bools,)),
        ("manipulation", lambda xp, a, b: (
            xp.concat([a, b], axis=0), xp.stack([a, b], axis=1), xp.flip(a, axis=1), xp.roll(a, 1, axis=0),
            xp.reshape(a, (4, 3)), xp.permute_dims(a, (1, 0)), xp.expand_dims(a, axis=0),
            xp.squeeze(xp.expand_dims(a, axis=0), axis=0), xp.moveaxis(a, 0, 1),
            xp.broadcast_to(a[:1, :], (3, 4)), *xp.broadcast_arrays(a, b[:1, :]),
            *xp.unstack(a, axis=0), xp.matrix_transpose(a), xp.tile(a, (2, 1)),
            xp.repeat(a, 2, axis=0)), (x, y)),
        ("creation", lambda xp, a: (
            xp.arange(5, device=a.device), xp.zeros((2, 3), dtype=a.dtype, device=a.device),
            xp.ones((2,), device=a.device), xp.full((2, 2), 3.5, device=a.device),
            xp.eye(3, k=1, device=a.device), xp.linspace(0.0, 1.0, 7, device=a.device),
            *xp.meshgrid(xp.arange(3, device=a.device), xp.arange(2, device=a.device)),
            xp.tril(a), xp.triu(a, k=1), xp.zeros_like(a), xp.ones_like(a), xp.full_like(a, 2.0),
            xp.asarray(a, copy=True), xp.empty((2, 0), device=a.device)), (x,)),
        ("astype", lambda xp, a: (xp.astype(a, xp.float32), xp.astype(a, xp.int64), xp.astype(a, a.dtype)), (x,)),
        ("sort search", lambda xp, a, i: (xp.sort(a, axis=1), xp.argsort(a, axis=0),
                                          xp.searchsorted(xp.sort(a[0, ...]), a[1, ...]),
                                          xp.take(a, i[:3], axis=1),
                                          xp.take_along_axis(a, xp.argsort(a, axis=1), axis=1),
                                          *xp.nonzero(a > 0.5), xp.unique_values(i),
                                          *xp.unique_counts(i)), (x, ints)),
        ("matmul family", lambda xp, a, b: (xp.matmul(a, xp.matrix_transpose(b)), a @ b.mT,
                                            xp.tensordot(a, b, axes=2), xp.tensordot(a, b.mT, axes=1),
                                            xp.vecdot(a, b), xp.linalg.outer(a[0, ...], b[1, ...]),
                                            xp.linalg.vecdot(a, b, axis=-2)), (x, y)),
        ("linalg", lambda xp, s, g: (
            xp.linalg.cholesky(s), xp.linalg.inv(s), xp.linalg.solve(s, g), xp.linalg.det(s),
            *xp.linalg.slogdet(s), *xp.linalg.qr(g), *xp.linalg.eigh(s), xp.linalg.eigvalsh(s),
            *xp.linalg.svd(g, full_matrices=False), xp.linalg.svdvals(g), xp.linalg.pinv(g),
            xp.linalg.matrix_rank(g), xp.linalg.matrix_power(s, 3), xp.linalg.trace(s),
            xp.linalg.diagonal(s), xp.linalg.vector_norm(g, axis=1), xp.linalg.vector_norm(g, ord=1),
            xp.linalg.vector_norm(g, ord=math.inf), xp.linalg.vector_norm(g, ord=3),
            xp.linalg.matrix_norm(g), xp.linalg.matrix_norm(g, ord="nuc"), xp.linalg.matrix_norm(g, ord=1),
            xp.linalg.matrix_norm(g, ord=-math.inf), xp.linalg.matrix_norm(g, ord=2),
            xp.linalg.cross(g[..., :3], g[..., 1:])), (spd, sq)),
        ("operators", lambda xp, a, b: (
            a + b, a - b, a * b, a / b, a // b, a % b, a ** 2, -a, +a, abs(a), a @ b.mT, 2.0 + a,
            1.0 - a, 3.0 * a, 1.0 / a, 2.0 ** a, a < b, a <= 0.5, a > b, a >= b, a == b, a != b,
            (a < b) & (a > 0.2), (a < b) | (b < 0.3), (a < b) ^ (b < 0.3), ~(a < b), a.T, a.mT,
            a[0, ...], a[..., 1:3], a[None, :, ::2], a[a > 0.5],
            a[xp.asarray([2, 0], device=a.device), xp.asarray([1, 3], device=a.device)]),
         (x, y)),
    ]
    if hasattr(xp.linalg, "norm"):  # NumPy's norm (not in the standard): counted as what it computes
        cases.append(("linalg.norm", lambda xp, g: (xp.linalg.norm(g), xp.linalg.norm(g, axis=1),
                                                    xp.linalg.norm(g, ord=1, axis=0),
                                                    xp.linalg.norm(g, ord="fro")), (sq,)))
    return cases


def _flatten(res):
    return list(res) if isinstance(res, (tuple, list)) else [res]


@pytest.mark.parametrize("backend_name", STRICT_OR_NUMPY)
def test_conformance_bit_for_bit(backend_name):
    """Every op through the counting namespace equals the unwrapped backend's result bit for bit
    (same dtype, shape, and bytes), and returns counted arrays of the counting namespace."""
    be = _get(backend_name)
    xp = be.xp
    for name, fn, host in _conformance_cases(xp):
        raw = [be.asarray(h) for h in host]
        expected = _flatten(fn(xp, *raw))
        with count() as c:
            wrapped = c.wrap(raw)
            got = _flatten(fn(c.namespace(xp), *wrapped))
        assert len(got) == len(expected), name
        for g, e in zip(got, expected):
            assert isinstance(g, rc.CountedArray), f"{name}: {type(g)}"
            assert refattn._xp.namespace(g) is c.namespace(xp)
            _same_bits(_to_host(be, rc.unwrap(g)), _to_host(be, e))


@pytest.mark.parametrize("backend_name", STRICT_OR_NUMPY)
def test_conformance_in_place_and_setitem(backend_name):
    be = _get(backend_name)
    xp = be.xp
    host = np.arange(12.0).reshape(3, 4)
    raw = be.asarray(host.copy())
    raw += 1.5
    raw *= raw
    raw[0, ...] = 7.0
    raw[:, 1] = be.asarray(np.array([1.0, 2.0, 3.0]))
    with count() as c:
        w = c.wrap(be.asarray(host.copy()))
        w += 1.5
        w *= w
        w[0, ...] = 7.0
        w[:, 1] = c.wrap(be.asarray(np.array([1.0, 2.0, 3.0])))
        assert float(w[1, 1]) == 2.0 and int(w[2, 1]) == 3 and bool(w[0, 0] == 7.0)
    _same_bits(_to_host(be, rc.unwrap(w)), _to_host(be, raw))
    ops = c.cost.per_op
    # in place: no allocation, 12 flops each; the two assignments write 4 and 3 elements
    assert ops["add (in-place)"].flops == 12 and ops["add (in-place)"].allocations == 0
    assert ops["multiply (in-place)"].flops == 12
    assert ops["setitem"].bytes_written == (4 + 3) * 8 and ops["setitem"].calls == 2
    assert xp is not None


@pytest.mark.parametrize("backend_name", STRICT_OR_NUMPY)
def test_softmax_and_causal_dot_through_the_counting_namespace(backend_name):
    """The unchanged method code runs on counted arrays and gives the backend's output bit for bit."""
    be = _get(backend_name)
    (q, k, v, dout), mkw = _inputs(4, (2, 3), 7, 9, 4, 5, "bool")
    args = [be.asarray(a) for a in (q, k, v)]
    for kw in ({"impl": "dense"}, {"impl": "blockwise", "block_q": 3, "block_k": 4, "causal": True},
               {"impl": "dense", "mask": be.asarray(mkw["mask"])}):
        expected = refattn.softmax_attention(*args, **kw)
        cost, got = measure(refattn.softmax_attention, *args, **kw, return_output=True)
        _same_bits(_to_host(be, got), _to_host(be, expected))
        assert cost.flops > 0
    expected = refattn.vjp(refattn.softmax_attention, *args, impl="blockwise", block_q=4, block_k=3)[1](
        be.asarray(dout))
    _, got = measure(lambda q, k, v, g: refattn.vjp(refattn.softmax_attention, q, k, v, impl="blockwise",
                                                     block_q=4, block_k=3)[1](g),
                     *args, be.asarray(dout), return_output=True)
    for g, e in zip(got, expected):
        _same_bits(_to_host(be, g), _to_host(be, e))
    a, b, cc = (be.asarray(h) for h in _qkv_of(10, d=3, batch=(2,)))
    for reverse in (False, True):
        expected = refattn.causal_dot(a, b, cc, chunk=4, reverse=reverse)
        cost, got = measure(refattn.causal_dot, a, b, cc, chunk=4, reverse=reverse, return_output=True)
        _same_bits(_to_host(be, got), _to_host(be, expected))
        flips = cost.per_op["flip"].calls if "flip" in cost.per_op else 0
        assert flips == (4 if reverse else 0)  # a, b, c and the output


def test_standard_function_names_are_all_supported():
    """Every function and constant of the array API standard (2023.12) and its linalg extension has a
    counting rule (so methods never meet NotImplementedError for a standard function)."""
    standard = """abs acos acosh add asin asinh atan atan2 atanh bitwise_and bitwise_left_shift
    bitwise_invert bitwise_or bitwise_right_shift bitwise_xor ceil clip conj copysign cos cosh divide
    equal exp expm1 floor floor_divide greater greater_equal hypot imag isfinite isinf isnan less
    less_equal log log1p log2 log10 logaddexp logical_and logical_not logical_or logical_xor maximum
    minimum multiply negative not_equal positive pow real remainder round sign signbit sin sinh square
    sqrt subtract tan tanh trunc arange asarray empty empty_like eye from_dlpack full full_like linspace
    meshgrid ones ones_like tril triu zeros zeros_like astype can_cast finfo iinfo isdtype result_type
    broadcast_arrays broadcast_to concat expand_dims flip moveaxis permute_dims repeat reshape roll
    squeeze stack tile unstack argmax argmin nonzero searchsorted where unique_all unique_counts
    unique_inverse unique_values argsort sort cumulative_sum max mean min prod std sum var all any
    matmul matrix_transpose tensordot vecdot take e inf nan newaxis pi""".split()
    linalg = """cholesky cross det diagonal eigh eigvalsh inv matmul matrix_norm matrix_power matrix_rank
    matrix_transpose outer pinv qr slogdet solve svd svdvals tensordot trace vecdot vector_norm""".split()
    missing = [n for n in standard if n not in rc.SUPPORTED]
    missing += [f"linalg.{n}" for n in linalg if f"linalg.{n}" not in rc.SUPPORTED]
    assert not missing


# ---------------------------------------------------------------------------------------------
# counting rules and storage accounting
# ---------------------------------------------------------------------------------------------

def test_counting_rules():
    rs = np.random.default_rng(0)
    a, b = rs.standard_normal((2, 3, 5)), rs.standard_normal((2, 5, 4))
    with count() as c:
        xp = c.namespace(refattn._xp.namespace(a))
        x, y = c.wrap((a, b))
        z = x @ y  # 2 * (2*3*4) * 5
        xp.exp(z)  # 24 transcendentals
        xp.sum(z, axis=-1)  # 2*3 outputs of 4: 6 * 3
        xp.mean(z)  # 23 + 1
        xp.var(z, axis=0)  # 4 * 24
        i = xp.arange(10)
        i + 3  # integer: 0 flops
        xp.linalg.qr(xp.ones((2, 6, 4)))
    ops = c.cost.per_op
    assert ops["matmul"].flops == 2 * 24 * 5
    assert ops["exp"].transcendentals == 24 and ops["exp"].flops == 0
    assert ops["sum"].flops == 6 * 3
    assert ops["mean"].flops == 24
    assert ops["var"].flops == 4 * 24
    assert ops["add"].flops == 0 and ops["add"].bytes_written == 80
    # Golub & Van Loan, Householder: R costs 2 m n^2 - 2 n^3 / 3 and the thin Q as much again
    qr_flops = round(2 * (2 * 6 * 4**2 - 2 * 4**3 / 3))
    assert ops["linalg.qr"].flops == 2 * qr_flops == 2 * linalg_flops("qr", 6, 4)[0]  # a stack of 2
    assert ops["linalg.qr"].transcendentals == 2 * 4  # one sqrt per Householder vector
    assert c.cost.flops == sum(op.flops for op in ops.values())


def test_linalg_flop_conventions():
    """The documented formulas, spot-checked (Golub & Van Loan)."""
    assert linalg_flops("cholesky", 6) == (72, 6)
    assert linalg_flops("inv", 5) == (250, 0)
    assert linalg_flops("qr", 6, 4, mode="r")[0] == round(2 * 6 * 16 - 2 * 64 / 3)
    full_q = 4 * (36 * 4 - 6 * 16 + 64 / 3)  # 4 (m^2 n - m n^2 + n^3 / 3)
    assert linalg_flops("qr", 6, 4, mode="complete")[0] == round(2 * 6 * 16 - 2 * 64 / 3 + full_q)
    assert linalg_flops("qr", 4, 6, mode="r") == linalg_flops("qr", 6, 4, mode="r")  # symmetric R cost
    assert linalg_flops("svd", 8, 3, full_matrices=False)[0] == 6 * 8 * 9 + 20 * 27
    assert linalg_flops("pinv", 8, 3)[0] == 6 * 8 * 9 + 20 * 27 + 2 * 8 * 3 * 3 + 3 * 3 + 3
    assert linalg_flops("matrix_power", 4, p=5)[0] == 3 * 2 * 64  # x^2, x^4, x^4 x
    with pytest.raises(NotImplementedError, match="lstsq"):
        linalg_flops("lstsq", 3)


def test_views_storage_and_peak():
    """Views share storage (counted once, freed with the last view); inputs count no live bytes;
    temporaries die with the expression; the peak is the largest live total."""
    host = np.zeros(100)
    with count() as c:
        xp = c.namespace(refattn._xp.namespace(host))
        x = c.wrap(host)
        v = x[10:20]  # view of an input: nothing
        a = xp.ones((1000,))  # 8000
        view = a[:10]  # a view: no new storage
        del a  # storage kept alive by the view
        assert c.cost.peak_bytes == 8000
        b = xp.exp(xp.ones((500,)))  # 4000 temporary + 4000 result: live 16000 at the peak
        del view  # frees 8000
        e = b + 1.0  # live 4000 + 4000
        del b, e
        assert c._counter.live == 0
    assert c.cost.peak_bytes == 16000
    assert c.cost.allocations == 4
    assert c.cost.per_op["getitem"].bytes_read == 0
    assert v.shape == (10,)


def test_count_with_a_backend_and_host_conversions():
    """count(backend).namespace() creates counted arrays; host data enters by asarray / refattn.random
    .like (a creation, not a mix); to_device to the array's own device hands back the array itself
    in NumPy, which the conventions count as no new array."""
    be = refattn.backends.get("numpy")
    with count(be) as c:
        xp = c.namespace()
        z = xp.zeros((3, 4))
        h = refattn.random.like(np.ones((3, 4)), z)
        moved = h.to_device(h.device)
        norms = xp.linalg.norm(moved, axis=1)
    assert isinstance(h, rc.CountedArray) and isinstance(norms, rc.CountedArray)
    ops = c.cost.per_op
    assert ops["asarray"].allocations == 1 and ops["asarray"].bytes_written == 96
    assert ops["to_device"].bytes_written == 0 and ops["to_device"].allocations == 0 and moved is h
    assert ops["linalg.norm"].flops == 12 + 3 * 3 and ops["linalg.norm"].transcendentals == 3


def test_cost_table_and_addition():
    c = measure(lambda q, k, v: refattn.softmax_attention(q, k, v, impl="dense"), *_qkv_of(16))
    text = str(c)
    assert "matmul" in text and "TOTAL" in text and "% flops" in text
    assert f"{c.flops:,}" in text
    both = c + c
    assert both.flops == 2 * c.flops and both.peak_bytes == c.peak_bytes
    assert both.per_op["matmul"].calls == 2 * c.per_op["matmul"].calls
    assert Cost(flops=3) == Cost(flops=3, calls=9)  # calls and per_op do not take part in equality


def test_count_context_running_total_and_return_output():
    q, k, v = _qkv_of(8)
    with count() as c:
        out = refattn.softmax_attention(*c.wrap((q, k, v)))
        running = c.cost
        assert running.flops > 0
    assert c.cost.flops == running.flops
    assert isinstance(out, rc.CountedArray)
    cost, host_out = measure(refattn.softmax_attention, q, k, v, return_output=True)
    assert isinstance(host_out, np.ndarray) and cost.flops == c.cost.flops


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_mixing_counted_and_uncounted_arrays_names_the_argument():
    q, k, v = _qkv_of(6)
    with count() as c:
        xp = c.namespace(refattn._xp.namespace(q))
        cq = c.wrap(q)
        with pytest.raises(TypeError, match=r"'other'.*uncounted array \(numpy.ndarray"):
            cq + k
        with pytest.raises(TypeError, match=r"'other'.*uncounted"):
            k * cq
        with pytest.raises(TypeError, match=r"where: argument 'x2'"):
            xp.where(cq > 0, cq, k)
        with pytest.raises(TypeError, match=r"concat: argument arrays\[1\]"):
            xp.concat([cq, k])
        with pytest.raises(TypeError, match=r"index\[0\]"):
            cq[np.array([0, 1]), ...]
        with pytest.raises(TypeError, match="CountedArray"):
            refattn.softmax_attention(cq, k, v)  # the library's own check: two array libraries
    with pytest.raises(TypeError, match=r"matmul: argument 'other'"):
        measure(lambda q: q @ k, q)  # a captured, uncounted array
    with count() as c1, count() as c2:
        with pytest.raises(TypeError, match="another count context"):
            c1.wrap(q) + c2.wrap(q)


def test_unsupported_ops_raise_not_implemented_naming_them():
    q = _qkv_of(4)[0]
    with count() as c:
        xp = c.namespace(refattn._xp.namespace(q))
        x = c.wrap(q)
        with pytest.raises(NotImplementedError, match="einsum"):
            xp.einsum("...ij->...ji", x)
        with pytest.raises(NotImplementedError, match="fft"):
            xp.fft.fft(x)
        with pytest.raises(NotImplementedError, match=r"linalg.lstsq"):
            xp.linalg.lstsq(x[0, ...], x[0, ...])
        with pytest.raises(NotImplementedError, match=r"vector_norm\(ord=0\)"):
            xp.linalg.vector_norm(x, ord=0)
        with pytest.raises(NotImplementedError, match="__dlpack__"):
            x.__dlpack__()
        with pytest.raises(AttributeError):
            xp.no_such_function  # noqa: B018
        with pytest.raises(TypeError, match="iterating"):
            list(x)
    with pytest.raises(NotImplementedError, match="einsum"):
        measure(lambda a: refattn._xp.namespace(a).einsum("ij->ji", a), q[0, ...])


def test_bad_arguments_of_the_helpers():
    q, k, v = _qkv_of(8)
    with pytest.raises(ValueError, match="sizes must hold at least two distinct"):
        fit_exponent(refattn.softmax_attention, [8], _qkv_of)
    with pytest.raises(ValueError, match="field names"):
        assert_counted_matches(refattn.softmax_attention, (q, k, v), {}, Cost(), exact=("nope",))
    with pytest.raises(AssertionError, match=r"flops: counted .* != closed form 0(.|\n)*matmul"):
        assert_counted_matches(refattn.softmax_attention, (q, k, v), {}, Cost())
    for kwargs, match in (({"n": -1}, "n must be"), ({"impl": "auto"}, "impl must be"),
                          ({"masked": "nope"}, "masked must be"), ({"block_q": 0}, "block_q"),
                          ({"batch": (2, -1)}, "batch must be"), ({"causal": "diag"}, "causal must be")):
        args = {"batch": 1, "n": 4, "m": 4, "d": 2, "dv": 2, **kwargs}
        with pytest.raises(ValueError, match=match):
            sm.cost(args.pop("batch"), args.pop("n"), args.pop("m"), args.pop("d"), args.pop("dv"), **args)
    with pytest.raises(TypeError, match="needs an array namespace"):
        count().namespace()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_cost_table(capsys):
    assert cli_main(["cost", "softmax", "--n", "32", "--d", "8", "--heads", "2", "--impl", "blockwise",
                     "--block-q", "8", "--block-k", "16", "--causal", "--backward", "--timing"]) == 0
    text = capsys.readouterr().out
    assert "matmul" in text and "TOTAL" in text
    closed = sm.cost((1, 2), 32, 32, 8, 8, impl="blockwise", backward=True, causal=True, block_q=8, block_k=16)
    assert f"closed form: flops {closed.flops:,} (== counted)" in text
    assert "counting overhead" in text
    assert cli_main(["cost", "nope", "--n", "8"]) == 2  # one line on stderr (tests/test_cli_bad_input.py)
    assert "unknown method" in capsys.readouterr().err


#: options a method needs beyond its defaults to be called at all (HEAT's default reading truncates
#: to a rank, Nystrom needs a landmark count); every other method runs on its public defaults
_CLI_OPTIONS = {"heat": ["--option", "rank=2"], "nystrom": ["--option", "num_landmarks=4"]}


@pytest.mark.parametrize("name", sorted(refattn._registry.methods()))
def test_cli_cost_every_registered_method(name, capsys):
    """`refattn cost METHOD` knows every declared method, and its closed-form FLOPs equal the counted ones."""
    assert cli_main(["cost", name, "--n", "16", "--d", "4", *_CLI_OPTIONS.get(name, [])]) == 0
    text = capsys.readouterr().out
    assert "TOTAL" in text
    assert "(== counted)" in text, text


def test_cli_cost_method_error_is_one_line(capsys):
    assert cli_main(["cost", "heat", "--n", "16", "--d", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refattn cost: error: heat: ") and "rank" in err[0]
