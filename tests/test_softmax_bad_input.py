"""Every bad argument of softmax attention raises a clear error naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import refattn

from .conftest import host_qkv

Q, K, V = host_qkv(0, batch=(2, 3), n=4, m=5, d=3, dv=2)
sa = refattn.softmax_attention

CASES = [
    ("rank", (Q[0, 0, 0], K, V), {}, ValueError, "q must have at least 2 dimensions"),
    ("d mismatch", (Q, K[..., :2], V), {}, ValueError, r"k must have shape \(\.\.\., m, 3\)"),
    ("m mismatch", (Q, K, V[..., :4, :]), {}, ValueError, r"v must have shape \(\.\.\., 5, dv\)"),
    ("batch mismatch", (Q, K[:, :2], V[:, :2]), {}, ValueError, "do not broadcast"),
    ("integer q", (Q.astype(np.int64), K, V), {}, TypeError, "q must have a real floating dtype"),
    ("bool v", (Q, K, V > 0), {}, TypeError, "v must have a real floating dtype"),
    ("complex k", (Q, K.astype(complex), V), {}, TypeError, "k must have a real floating dtype"),
    ("mixed widths", (Q.astype(np.float32), K, V), {}, TypeError, "must share one dtype"),
    ("list input", (Q.tolist(), K, V), {}, TypeError, "one array library|must be an array"),
    ("mask shape", (Q, K, V), {"mask": np.ones((4, 4), bool)}, ValueError, r"mask must be broadcastable to \(\.\.\., n, m\)"),
    ("mask enlarges", (Q, K, V), {"mask": np.ones((7, 2, 3, 4, 5), bool)}, ValueError, "without enlarging"),
    ("mask dtype", (Q, K, V), {"mask": np.ones((4, 5), np.int32)}, TypeError, "mask must have dtype bool"),
    ("mask nan", (Q, K, V), {"mask": np.full((4, 5), np.nan)}, ValueError, "must not contain NaN or \\+inf"),
    ("mask +inf", (Q, K, V), {"mask": np.full((4, 5), np.inf)}, ValueError, "must not contain NaN or \\+inf"),
    ("causal value", (Q, K, V), {"causal": "diagonal"}, ValueError, "causal must be one of"),
    ("key_lengths dtype", (Q, K, V), {"key_lengths": np.array([2.0, 3.0])[:, None]}, TypeError, "key_lengths must be an integer"),
    ("key_lengths range", (Q, K, V), {"key_lengths": np.array([[6], [1]])}, ValueError, r"key_lengths must lie in \[0, m\]"),
    ("key_lengths shape", (Q, K, V), {"key_lengths": np.array([1, 2, 3, 4])}, ValueError, "key_lengths must be broadcastable"),
    ("block_q zero", (Q, K, V), {"block_q": 0}, ValueError, "block_q must be a positive integer"),
    ("block_k negative", (Q, K, V), {"block_k": -2, "impl": "blockwise"}, ValueError, "block_k must be a positive integer"),
    ("block float", (Q, K, V), {"block_k": 2.5}, ValueError, "block_k must be a positive integer"),
    ("impl", (Q, K, V), {"impl": "flash"}, ValueError, "impl must be one of"),
    ("scale nan", (Q, K, V), {"scale": float("nan")}, ValueError, "scale must be a finite real number"),
    ("scale str", (Q, K, V), {"scale": "0.5"}, TypeError, "scale must be a finite real number"),
    ("nan input", (np.where(Q > 1, np.nan, Q), K, V), {"check_finite": True}, ValueError, "q must be finite"),
]


@pytest.mark.parametrize("args,kwargs,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sa(*args, **kwargs)


def test_mixed_namespaces():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        sa(Q, torch.from_numpy(K), V)


def test_mixed_devices_and_mask_namespace():
    xp = pytest.importorskip("array_api_strict")
    q, k, v = (xp.asarray(a) for a in (Q, K, V))
    k1 = xp.asarray(K, device=xp.Device("device1"))
    with pytest.raises(ValueError, match="k must be on the same device as q"):
        sa(q, k1, v)
    with pytest.raises(TypeError, match="mask must be an array of the same library as q"):
        sa(q, k, v, mask=np.ones((4, 5), bool))


def test_inputs_are_not_modified():
    q, k, v = Q.copy(), K.copy(), V.copy()
    mask = np.ones((4, 5), bool)
    for impl in ("dense", "blockwise"):
        out, pb = refattn.vjp(sa, q, k, v, mask=mask, causal=True, impl=impl, block_k=2)
        pb(np.ones_like(out))
    for a, b in ((q, Q), (k, K), (v, V)):
        np.testing.assert_array_equal(a, b)


def test_check_finite_default_and_opt_out():
    """check_finite=True by default (ValueError naming the argument); False lets NaN propagate; a
    flag accepts only True/False."""
    bad_v = np.where(V > 1, np.nan, V)
    with pytest.raises(ValueError, match="v must be finite"):
        refattn.softmax_attention(Q, K, bad_v)
    out = refattn.softmax_attention(Q, K, bad_v, check_finite=False)
    assert np.isnan(out).any()
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        refattn.softmax_attention(Q, K, V, check_finite=1)


def test_composites_call_the_implementation(monkeypatch):
    """HEAT's truncating readings run softmax's implementation, not the public softmax.forward, and
    softmax.backward validates nothing (it trusts its residuals)."""
    from refattn.methods import softmax as sm

    want = refattn.heat_attention(Q, K, V, rank=2, reading="features")

    def no_public(*a, **kw):
        raise AssertionError("public softmax.forward called by a composite")

    monkeypatch.setattr(sm, "forward", no_public)
    monkeypatch.setattr(sm, "validate_qkv", no_public)
    for reading in ("logits", "features"):
        out, pullback = refattn.vjp(refattn.heat_attention, Q, K, V, rank=2, reading=reading)
        pullback(np.ones_like(out))
    assert np.array_equal(refattn.heat_attention(Q, K, V, rank=2, reading="features"), want)
