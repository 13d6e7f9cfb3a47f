"""Backends, vjp, the causal prefix-sum kernel, refattn.testing, random, purity and the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import refattn
from refattn import backends
from refattn.methods import causal_dot, causal_dot_backward
from refattn.testing import assert_allclose, gradcheck

from .conftest import to


# ---------------------------------------------------------------- backends
def test_registry_names_and_default():
    assert {"numpy", "array_api_strict", "torch", "cupy"} <= set(backends.names())
    be = backends.get()
    assert be.name == "numpy" and "numpy" in backends.available()
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        backends.get("nope")


def test_missing_backend_names_the_extra(monkeypatch):
    from refattn.backends import _cupy

    monkeypatch.setattr(_cupy, "is_available", lambda: False)
    monkeypatch.setattr(_cupy, "why_unavailable", lambda: "cupy is not installed")
    with pytest.raises(backends.BackendUnavailable, match=r"refattn\[gpu\]"):
        backends.get("cupy")
    assert "cupy" not in backends.available()


def test_third_party_registration():
    numpy_backend = backends.get("numpy")
    backends.register("mine", lambda device=None: numpy_backend)
    try:
        assert backends.get("mine") is numpy_backend and "mine" in backends.names()
    finally:
        backends._REGISTERED.pop("mine")


def test_backend_round_trip_and_same_numbers_for_same_seed(backend):
    host = refattn.random.normal((3, 4), rng=42)
    arr = refattn.random.normal((3, 4), rng=42, backend=backend)
    assert refattn._xp.device(arr) == backend.device
    np.testing.assert_array_equal(backend.to_host(arr), host)
    backend.synchronize()


def test_numpy_peak_memory_sees_an_allocation():
    be = backends.get("numpy")
    be.reset_peak_memory()
    a = np.ones(2**20)  # 8 MiB
    peak = be.peak_memory()
    del a
    assert peak >= 8 * 2**20


def test_rng_is_required_and_orthogonal_is_orthogonal():
    with pytest.raises(ValueError, match="rng must be given"):
        refattn.random.normal((2,), rng=None)
    w = refattn.random.orthogonal((8, 5), rng=1)
    np.testing.assert_allclose(w.T @ w, np.eye(5), atol=1e-14)  # QR: orthonormal to rounding


# ---------------------------------------------------------------- vjp
def test_vjp_rejects_unregistered_and_bad_cotangents():
    q = np.ones((2, 3))
    with pytest.raises(TypeError, match="registered vjp"):
        refattn.vjp(np.sum, q)
    out, pb = refattn.vjp(refattn.softmax_attention, q, q, q)
    with pytest.raises(ValueError, match="dout must match"):
        pb(np.ones((3, 3)))
    with pytest.raises(TypeError, match="dout must be an array of the same library"):
        pb([[1.0] * 3] * 2)
    assert refattn.softmax_attention in refattn.registered()


# ---------------------------------------------------------------- causal prefix-sum kernel
def _naive_causal_dot(a, b, c, reverse=False):
    w = a @ np.swapaxes(b, -1, -2)
    n = w.shape[-1]
    tri = np.triu(np.ones((n, n), bool)) if reverse else np.tril(np.ones((n, n), bool))
    return np.where(tri, w, 0.0) @ c


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("reverse", [False, True])
def test_causal_dot_equals_masked_quadratic_form(backend, chunk, reverse):
    rs = np.random.default_rng(0)
    a, b, c = rs.standard_normal((2, 7, 3)), rs.standard_normal((1, 7, 3)), rs.standard_normal((2, 7, 4))
    got = causal_dot(*to(backend, a, b, c), chunk=chunk, reverse=reverse)
    # float64: sums of <= 7 products of O(1) numbers, reordered: error << 1e-13.
    np.testing.assert_allclose(backend.to_host(got), _naive_causal_dot(a, b, c, reverse), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reverse", [False, True])
def test_causal_dot_backward_gradcheck(backend, reverse):
    rs = np.random.default_rng(1)
    args = to(backend, rs.standard_normal((2, 6, 3)), rs.standard_normal((2, 6, 3)), rs.standard_normal((2, 6, 2)))

    def vjp(a, b, c):
        out = causal_dot(a, b, c, chunk=4, reverse=reverse)
        return out, lambda g: causal_dot_backward(a, b, c, g, chunk=4, reverse=reverse)

    gradcheck(lambda a, b, c: causal_dot(a, b, c, chunk=4, reverse=reverse), args, vjp=vjp, n_directions=3)


# ---------------------------------------------------------------- testing helpers
def test_assert_allclose_checks_metadata_then_values():
    a = np.array([1.0, 2.0, np.nan, np.inf])
    assert_allclose(a, a.copy())
    with pytest.raises(AssertionError, match="dtypes differ"):
        assert_allclose(a, a.astype(np.float32))
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_allclose(a, a[:2])
    with pytest.raises(AssertionError, match=r"1 of 4 elements .* worst at index \(1,\)"):
        assert_allclose(a, np.array([1.0, 2.1, np.nan, np.inf]), rtol=1e-3)
    with pytest.raises(AssertionError, match="namespaces differ"):
        torch = pytest.importorskip("torch")
        assert_allclose(a, torch.from_numpy(a))


def test_gradcheck_catches_a_wrong_gradient():
    rs = np.random.default_rng(2)
    q, k, v = rs.standard_normal((4, 2)), rs.standard_normal((4, 2)), rs.standard_normal((4, 3))

    def wrong_vjp(q, k, v):
        out, pb = refattn.vjp(refattn.softmax_attention, q, k, v)
        return out, lambda g: (lambda gr: (gr.dq, -gr.dk, gr.dv))(pb(g))  # a sign error on dk

    with pytest.raises(AssertionError, match="gradcheck of softmax_attention failed"):
        gradcheck(refattn.softmax_attention, (q, k, v), vjp=wrong_vjp)


# ---------------------------------------------------------------- purity and CLI
def test_methods_never_import_numpy_under_array_api_strict():
    """Run every method under array_api_strict in a fresh interpreter; refattn.methods' modules
    must not hold numpy (or any array library) in their globals."""
    code = textwrap.dedent("""
        import sys, types
        import array_api_strict as xp
        import refattn, refattn.methods as methods
        q = xp.reshape(xp.arange(24, dtype=xp.float64), (2, 3, 4)) / 10
        out, pb = refattn.vjp(refattn.softmax_attention, q, q, q, causal=True, impl="blockwise", block_k=2)
        pb(out)
        bad = []
        for name, mod in list(sys.modules.items()):
            if name.startswith("refattn.methods") or name in ("refattn._xp", "refattn._masks", "refattn._vjp"):
                for gname, val in vars(mod).items():
                    if isinstance(val, types.ModuleType) and val.__name__.split(".")[0] in ("numpy", "cupy", "torch"):
                        bad.append(f"{name}.{gname}")
        print("BAD" if bad else "CLEAN", bad)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("CLEAN"), res.stdout + res.stderr


def test_cli_info_runs():
    res = subprocess.run([sys.executable, "-m", "refattn.cli", "info"], capture_output=True, text=True,
                         check=True, timeout=300)
    assert "numpy" in res.stdout and "max rel err" in res.stdout
