"""Backend primitives other than ``fwht`` (refattn._primitives): ``exp_``, NumPy's in-place
exponential. Its contract is equality with ``xp.exp`` element for element, so the tests ask for bit
identity, and that it never writes into an array it was not given to overwrite."""

from __future__ import annotations

import numpy as np
import pytest

import refattn
from refattn import backends, cost
from refattn._primitives import backend_primitive, exp_consuming

NUMPY = backends.get("numpy")
EXP_ = NUMPY.primitives["exp_"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exp_primitive_equals_numpy_exp_bit_for_bit_in_place(dtype):
    rs = np.random.default_rng(0)
    for size in [0, 1, 63, 1000, 1 << 17]:
        # the whole range of exp: underflow to 0 and subnormals, |x| < 1, overflow to inf
        x = (rs.standard_normal(size) * rs.choice([0.1, 10.0, 800.0], size)).astype(dtype)
        with np.errstate(over="ignore", under="ignore"):
            want = np.exp(x)
            got = EXP_(x)
        assert got is x and got.dtype == x.dtype
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=str(size))


def test_exp_primitive_on_views_and_read_only_arrays():
    x = np.linspace(-5.0, 5.0, 60).reshape(3, 20)
    y = x.copy()
    strided = y[:, ::2]
    assert EXP_(strided) is strided  # a writeable view: in place, through the view
    np.testing.assert_array_equal(y[:, ::2], np.exp(x[:, ::2]))
    np.testing.assert_array_equal(y[:, 1::2], x[:, 1::2])
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(EXP_(ro), np.exp(x))
    np.testing.assert_array_equal(ro, x)  # left alone
    assert EXP_(np.float64(0.5)) == np.exp(0.5)  # a NumPy scalar


def test_exp_consuming_uses_the_primitive_only_where_a_backend_has_one():
    assert backend_primitive(NUMPY.xp, "exp_") is EXP_
    strict = backends.get("array_api_strict")
    assert backend_primitive(strict.xp, "exp_") is None
    x = strict.asarray(np.linspace(-3.0, 3.0, 7))
    np.testing.assert_array_equal(strict.to_host(exp_consuming(strict.xp, x)), np.exp(np.linspace(-3.0, 3.0, 7)))


def test_counting_namespaces_count_every_exponential_and_look_nothing_up():
    """The counting namespace of refattn.cost lists no primitives (the counts are of the maths, not
    of a backend's shortcut): the lookup neither scans the registered backends for it (slow: entry
    points) nor remembers its many short-lived namespaces."""
    from refattn import _primitives

    q, k, v = (np.random.default_rng(i).standard_normal((1, 2, 16, 8)) for i in range(3))
    refattn.softmax_attention(q, k, v)  # the numpy lookup, remembered
    before = dict(_primitives._PRIMITIVE_CACHE)
    with cost.count() as counted:
        refattn.softmax_attention(*counted.wrap((q, k, v)), impl="blockwise", block_q=4, block_k=4)
        xp = counted.namespace(NUMPY.xp)
    assert backend_primitive(xp, "exp_") is None and backend_primitive(xp, "fwht") is None
    assert counted.cost.transcendentals == 2 * 16 * 16 + 2 * 16 * 4 + 2 * 16  # logits, rescalings, logs
    assert _primitives._PRIMITIVE_CACHE == before


@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_softmax_attention_with_and_without_the_primitive(monkeypatch, impl):
    """The in-place exponential changes no bit of a method's output or gradients, and leaves its
    inputs untouched."""
    from refattn import _primitives

    rs = np.random.default_rng(5)
    q, k, v, dout = (rs.standard_normal((2, 4, 192, 32)) for _ in range(4))
    copies = [a.copy() for a in (q, k, v, dout)]
    calls = []

    def counted_exp_(x):
        calls.append(x.shape)
        return EXP_(x)

    results = []
    for prim in (counted_exp_, None):
        monkeypatch.setitem(_primitives._PRIMITIVE_CACHE, (NUMPY.xp.__name__, "exp_"), prim)
        out, pullback = refattn.vjp(refattn.softmax_attention, q, k, v, impl=impl, causal=True)
        results.append([out, *pullback(dout)])
    assert len(calls) >= 2  # forward and backward went through the primitive once at least
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    for a, b in zip((q, k, v, dout), copies):
        np.testing.assert_array_equal(a, b)
