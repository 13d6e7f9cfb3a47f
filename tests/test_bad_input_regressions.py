"""Regression tests of the defects of issue 21, one (or a few) per defect, in the order the issue lists
them. The generated catalogue (tests/test_bad_input_catalogue.py) covers the classes; these pin the
named examples."""

from __future__ import annotations

import numpy as np
import pytest

import refattn
from refattn.methods import kernels
from refattn.methods.nystrom import PinvConvergenceError

RS = np.random.default_rng(21)
Q, K, V = RS.standard_normal((2, 3, 5, 4)), RS.standard_normal((2, 3, 5, 4)), RS.standard_normal((2, 3, 5, 2))
E = RS.standard_normal((3, 5)) / 5 ** 0.5
F = RS.standard_normal((3, 5)) / 5 ** 0.5
GLU = [np.asarray(w) for w in kernels.init_params("glu", 4, rng=0)]


def _f32(*a):
    return [x.astype(np.float32) for x in a]


CALLS = {
    "softmax": lambda q, k, v: refattn.softmax_attention(q, k, v),
    "softmax_blockwise": lambda q, k, v: refattn.softmax_attention(q, k, v, impl="blockwise", block_k=2),
    "linear": lambda q, k, v: refattn.linear_attention(q, k, v),
    "linformer": lambda q, k, v: refattn.linformer_attention(q, k, v, *(a.astype(q.dtype) for a in (E, F))),
    "kernel": lambda q, k, v: refattn.kernel_attention(q, k, v, *(w.astype(q.dtype) for w in GLU)),
    "heat": lambda q, k, v: refattn.heat_attention(q, k, v, rank=1),
    "heat_features": lambda q, k, v: refattn.heat_attention(q, k, v, rank=1, reading="features"),
    "nystrom": lambda q, k, v: refattn.nystrom_attention(q, k, v, num_landmarks=2),
}


# ---------------------------------------------------------------- hang; finite inputs, NaN output

HEAT_HANG = """
import numpy as np, refattn
rs = np.random.default_rng(21)
q, k, v = (rs.standard_normal(s).astype("{dtype}") for s in ((2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 2)))
f = np.{dtype}({factor})
try:
    refattn.heat_attention(q * f, k * f, v, rank=1)
except ValueError as exc:
    print("ValueError", exc)
"""


@pytest.mark.parametrize("dtype,factor", [("float64", 1e154), ("float32", 1e19)])
def test_heat_svd_of_overflowing_logits_raises_before_decomposing(dtype, factor):
    """Was a hang (the SVD spins on partly infinite logits): run in a subprocess with a time limit."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", HEAT_HANG.format(dtype=dtype, factor=factor)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ValueError") and "rescale q and k" in run.stdout, run.stdout


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("dtype,factor", [(np.float32, 1e20), (np.float64, 1e154)])
def test_huge_finite_inputs_raise_instead_of_nan(name, dtype, factor):
    q, k, v = (a.astype(dtype) for a in (Q, K, V))
    call = CALLS[name]
    with np.errstate(all="ignore"):
        try:
            out = call(q * dtype(factor), k * dtype(factor), v)
        except (ValueError, PinvConvergenceError) as exc:  # the latter: nystrom docstring
            assert any(w in str(exc) for w in ("rescale", "landmark", "overflow")), str(exc)
            return
    assert np.all(np.isfinite(out)), f"{name}: finite inputs gave NaN/inf without an error"


def test_huge_finite_inputs_check_finite_false_returns_the_overflow():
    """The documented escape: check_finite=False returns what the arithmetic gives."""
    q, k, v = _f32(Q, K, V)
    with np.errstate(all="ignore"):
        out = refattn.softmax_attention(q * np.float32(1e20), k * np.float32(1e20), v, check_finite=False)
    assert not np.all(np.isfinite(out))


def test_additive_mask_beyond_the_working_dtype_raises():
    q, k, v = _f32(Q, K, V)
    with pytest.raises(ValueError, match="mask"), np.errstate(over="ignore"):  # NumPy warns on the cast
        refattn.softmax_attention(q, k, v, mask=np.full((5, 5), 1e300))
    # -1e300 becomes -inf: "remove the key", as documented; a finite result
    with np.errstate(over="ignore"):
        out = refattn.softmax_attention(q, k, v, mask=np.where(np.eye(5, dtype=bool), 0.0, -1e300))
    np.testing.assert_allclose(out, np.broadcast_to(v, out.shape), rtol=1e-6)


# ---------------------------------------------------------------- NaN turned into numbers; -inf limits

@pytest.mark.parametrize("where", ["q", "k"])
def test_relu_feature_map_propagates_nan(where):
    q, k = Q.copy(), K.copy()
    (q if where == "q" else k)[0, 0, 1, :] = np.nan
    with np.errstate(all="ignore"):
        out = refattn.linear_attention(q, k, V, feature_map="relu", check_finite=False)
    assert not np.all(np.isfinite(out))


@pytest.mark.parametrize("fn", ["linear", "efficient", "verma"])
def test_minus_inf_is_the_documented_limit(fn):
    """-inf in q (check_finite=False): the feature maps elu+1, relu, exp send it to 0 (their limit),
    so the output is the finite limit; documented in refattn._xp's input contract."""
    q = Q.copy()
    q[0, 0, 1, 0] = -np.inf
    call = {"linear": refattn.linear_attention, "efficient": refattn.efficient_attention,
            "verma": lambda a, b, c, **kw: refattn.verma_attention(a, b, c, E, F, **kw)}[fn]
    with np.errstate(all="ignore"):
        out = call(q, K, V, check_finite=False)
    assert np.all(np.isfinite(out))
    doc = refattn._xp.__doc__
    assert "-inf" in doc and "limit" in doc


# ---------------------------------------------------------------- wrong exception type

@pytest.mark.parametrize("shape", [(5,), ()])
@pytest.mark.parametrize("fn", ["softmax", "heat"])
def test_one_and_zero_dimensional_masks_broadcast(shape, fn):
    mask = np.ones(shape, bool)
    call = {"softmax": refattn.softmax_attention,
            "heat": lambda *a, **kw: refattn.heat_attention(*a, rank=1, **kw)}[fn]
    np.testing.assert_array_equal(call(Q, K, V, mask=mask), call(Q, K, V))


def test_nystrom_zero_dimensional_mask_keeps_every_key():
    out = refattn.nystrom_attention(Q, K, V, num_landmarks=2, mask=np.array(True))  # was: "leaves 1 kept key"
    np.testing.assert_allclose(out, refattn.nystrom_attention(Q, K, V, num_landmarks=2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad", [1.0, None, [[1.0]]])
@pytest.mark.parametrize("name", sorted(refattn._registry.methods()))
def test_non_array_q_raises_type_error(name, bad):
    m = refattn._registry.get_method(name)
    params = list(m.make_params({"batch": (2, 3), "n": 5, "m": 5, "d": 4, "dv": 2}, 0).values())
    with pytest.raises(TypeError, match=r"\bq\b"):
        m.function(bad, K, V, *params)


@pytest.mark.parametrize("fn", ["efficient", "verma"])
def test_zero_features_raise_value_error(fn):
    call = {"efficient": refattn.efficient_attention,
            "verma": lambda a, b, c: refattn.verma_attention(a, b, c, E, F)}[fn]
    with pytest.raises(ValueError, match=r"\bq\b.*d >= 1"):
        call(Q[..., :0], K[..., :0], V)


def test_empty_inputs_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    q, k, v = (xs.asarray(a[..., :0, :]) for a in (Q, K, V))
    assert refattn.causal_dot(q, k, v).shape == (2, 3, 0, 2)
    assert refattn.linear_attention(q, k, v, causal=True).shape == (2, 3, 0, 2)
    w = xs.asarray(RS.standard_normal((6, 4)))
    assert refattn.random_feature_attention(q, k, v, w, causal=True).shape == (2, 3, 0, 2)
    assert refattn.kernel_attention(q, k, v, *(xs.asarray(x) for x in GLU), causal=True).shape == (2, 3, 0, 2)


def test_huge_scale_and_numpy_scale():
    with pytest.raises(ValueError, match="scale"):
        refattn.softmax_attention(Q, K, V, scale=10 ** 400)
    np.testing.assert_array_equal(refattn.softmax_attention(Q, K, V, scale=np.float32(0.5)),
                                  refattn.softmax_attention(Q, K, V, scale=0.5))


def test_pullback_of_none_is_a_type_error():
    _, pb = refattn.vjp(refattn.softmax_attention, Q, K, V)
    with pytest.raises(TypeError, match="dout"):
        pb(None)


# ---------------------------------------------------------------- wrong acceptance or refusal

def test_string_flags_are_refused():
    w = RS.standard_normal((6, 4))
    with pytest.raises(TypeError, match="stabilize"):
        refattn.random_feature_attention(Q, K, V, w, stabilize="no")
    with pytest.raises(TypeError, match="reverse"):
        refattn.causal_dot(Q, K, V, reverse="yes")


def test_kernel_head_wise_weights_take_masks_of_the_output_batch():
    q, k, v = Q[0], K[0], V[0]  # batch (3,)
    w = [np.broadcast_to(x, (2, 1, *x.shape)).copy() for x in GLU]  # batch (2, 1): output (2, 3)
    assert refattn.kernel_attention(q, k, v, *w).shape == (2, 3, 5, 2)
    mask = np.ones((2, 3, 1, 5), bool)
    mask[..., -1] = False
    got = refattn.kernel_attention(q, k, v, *w, mask=mask)
    np.testing.assert_array_equal(got, refattn.kernel_attention(q, k, v, *w, key_lengths=np.full((2, 3), 4)))
    np.testing.assert_array_equal(got, refattn.kernel_attention(q, k[:, :4], v[:, :4], *w))


# ---------------------------------------------------------------- aliasing and overflow (fwht)

def test_fwht_of_length_one_is_a_copy():
    x = RS.standard_normal((3, 1))
    before = x.copy()
    y = refattn.fwht(x)
    assert not np.shares_memory(x, y)
    y[...] = 7.0
    np.testing.assert_array_equal(x, before)
    _, pb = refattn.vjp(refattn.fwht, x)
    g = pb(np.ones((3, 1)))[0]
    g[...] = 3.0
    np.testing.assert_array_equal(x, before)


def test_fwht_near_the_float_range_is_finite():
    y = refattn.fwht(np.full((1, 8), 5e307))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0, 0], 5e307 * 8 ** 0.5, rtol=1e-15)
    np.testing.assert_array_equal(y[0, 1:], 0.0)


# ---------------------------------------------------------------- blockwise contract (layouts)

LAYOUTS = {
    "fortran": np.asfortranarray,
    "transposed": lambda a: np.swapaxes(np.swapaxes(a, -1, -2).copy(), -1, -2),
    "negative_stride": lambda a: np.flip(np.flip(a, -1).copy(), -1),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_softmax_views_are_bit_identical(layout, impl):
    rs = np.random.default_rng(0)
    q, k, v = (rs.standard_normal((2, 3, 37, 8)) for _ in range(3))
    kw = {"impl": impl, "block_k": 7} if impl == "blockwise" else {"impl": impl}
    ref = refattn.softmax_attention(q, k, v, **kw)
    f = LAYOUTS[layout]
    np.testing.assert_array_equal(refattn.softmax_attention(f(q), f(k), f(v), **kw), ref)
