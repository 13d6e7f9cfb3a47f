"""Linear attention (Katharopoulos et al.) and efficient attention (Shen et al.): explicit O(n^2)
forms, every causal chunk size, the shared prefix-sum kernel, masks, normalisers, gradients
(finite differences and torch autograd), cost.

Tolerances (float64, u = 2^-53, gamma_k = k u / (1 - k u)). The methods compute
phi(Q) (phi(K)^T [V, 1]) while the explicit references compute (phi(Q) phi(K)^T) [V, 1]: both are
sums of the same m * D products, so each numerator/normaliser entry differs by at most
2 gamma_{m+D} (|phi(Q)| |phi(K)|^T |V|) (resp. |phi(Q)| |phi(K)|^T 1) (Higham, Thm 3.5 per
product). The ratio's first-order error is then (dnum + |out| dden) / |den|; tests use
4 gamma_{m+D+2} (|P||V| + |out| |P| 1) / |den| per element (:func:`_explicit`), the factor 4 and
the +2 covering the final division, the eps addition and the chained reference. The prefix-sum
form reorders the same sums and is held to the same bound. torch autograd on the same maths: the
gradient entries are sums of at most m + D + dv + 2 products of O(1) factors (inputs ~N(0, 1)),
so their rounding is below gamma_64 * (sum of |terms|) ~ 1e-14 * max|grad| * 10; 1e-12 relative to
the largest gradient entry leaves a margin of 10x.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refattn
from refattn.cost import measure
from refattn.methods import linear
from refattn.methods._kernelized import kernelized_backward, kernelized_forward
from refattn.methods._prefix import causal_dot, causal_dot_backward
from refattn.testing import assert_allclose, gradcheck

from .conftest import host_qkv, to

torch = pytest.importorskip("torch")

U = 2.0**-53


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def _phi(name, x):
    if name == "elu+1":
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "identity":
        return x
    if name == "softplus":
        return np.logaddexp(0.0, x)
    raise AssertionError(name)


def _softplus_pair():
    """A user feature map (softplus) and its derivative (the logistic), array-API only."""

    def phi(x):
        xp = refattn._xp.namespace(x)
        return xp.log(1.0 + xp.exp(-xp.abs(x))) + xp.where(x > 0, x, 0.0)

    def dphi(x):
        xp = refattn._xp.namespace(x)
        return 1.0 / (1.0 + xp.exp(-x))

    return phi, dphi


def _allowed(n, m, causal, keep):
    """(..., n, m) boolean: which keys each query sees."""
    allowed = np.ones((n, m), bool)
    if causal in (True, "top_left"):
        allowed = np.tril(allowed)
    elif causal == "bottom_right":
        allowed = np.tril(allowed, k=m - n)
    if keep is not None:
        allowed = allowed & keep[..., None, :]
    return allowed


def _explicit(pq, pk, v, allowed, eps):
    """Explicit O(n^2) normalised form D^{-1} (A V), A = (phi(Q) phi(K)^T) masked; and the rounding
    bound of the difference to the linear-time form (see the module docstring)."""
    a = np.where(allowed, pq @ np.swapaxes(pk, -1, -2), 0.0)
    a_abs = np.where(allowed, np.abs(pq) @ np.swapaxes(np.abs(pk), -1, -2), 0.0)
    num = a @ v
    den = a.sum(-1) + eps
    safe = np.where(den != 0, den, 1.0)
    out = np.where((den != 0)[..., None], num / safe[..., None], 0.0)
    m, dim = pk.shape[-2], pk.shape[-1]
    bound = 4 * gamma(m + dim + 2) * (a_abs @ np.abs(v) + np.abs(out) * a_abs.sum(-1, keepdims=True))
    bound = bound / np.abs(safe)[..., None]
    return out, bound


def _check(got, want, bound, backend):
    got = backend.to_host(got)
    assert got.shape == want.shape
    err = np.abs(got - want)
    assert np.all(err <= bound + 1e-300), f"max err {err.max():.3e}, worst ratio {np.max(err / (bound + 1e-300)):.3g}"


# --------------------------------------------------------------------------------------------------
# Exactness against the explicit quadratic forms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [False, True])
def test_identity_features_equal_explicit_quadratic_form(backend, padding):
    """identity features: out = D^{-1} (Q K^T) V exactly (up to the stated rounding bound); positive
    inputs keep every normaliser away from 0 (the sign-indefinite case is tested below)."""
    rs = np.random.default_rng(0)
    q, k = rs.uniform(0.2, 1.0, (2, 3, 7, 4)), rs.uniform(0.2, 1.0, (2, 3, 9, 4))
    v = rs.standard_normal((2, 3, 9, 5))
    kw, keep = {}, None
    if padding:
        lengths = np.array([[9], [4]])
        kw = {"key_lengths": backend.asarray(lengths)}
        keep = np.arange(9) < lengths[..., None]
    out = refattn.linear_attention(*to(backend, q, k, v), feature_map="identity", eps=0.0, **kw)
    want, bound = _explicit(q, k, v, _allowed(7, 9, False, keep), 0.0)
    _check(out, want, bound, backend)


@pytest.mark.parametrize("fmap", ["elu+1", "relu", "softplus"])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
def test_feature_maps_match_explicit(backend, fmap, causal):
    q, k, v = host_qkv(1, n=7, m=9)
    feature_map = _softplus_pair() if fmap == "softplus" else fmap
    out = refattn.linear_attention(*to(backend, q, k, v), feature_map=feature_map, causal=causal,
                                   scale=0.7, eps=0.25, chunk=3)
    want, bound = _explicit(_phi(fmap, 0.7 * q), _phi(fmap, k), v, _allowed(7, 9, causal, None), 0.25)
    _check(out, want, bound, backend)


@pytest.mark.parametrize("nm", [(10, 10), (7, 10), (10, 7)])
@pytest.mark.parametrize("causal", [True, "bottom_right"])
def test_causal_chunked_equals_masked_quadratic_for_every_chunk(nm, causal):
    """Every chunk size 1..n+2 (dividing n or not, larger than n), both alignments, n != m,
    key padding: the prefix-sum form equals D~^{-1} tril(phi(Q) phi(K)^T) V."""
    n, m = nm
    q, k, v = host_qkv(2, n=n, m=m)
    lengths = np.array([[m], [m - 3]])
    keep = np.arange(m) < lengths[..., None]
    want, bound = _explicit(_phi("elu+1", q), _phi("elu+1", k), v, _allowed(n, m, causal, keep), 1e-6)
    npb = refattn.backends.get("numpy")
    for chunk in range(1, n + 3):
        out = refattn.linear_attention(q, k, v, causal=causal, chunk=chunk, key_lengths=lengths)
        _check(out, want, bound, npb)


def test_causal_on_every_backend(backend):
    q, k, v = host_qkv(3, n=9, m=9)
    out = refattn.linear_attention(*to(backend, q, k, v), causal=True, chunk=4)
    want, bound = _explicit(_phi("elu+1", q), _phi("elu+1", k), v, _allowed(9, 9, True, None), 1e-6)
    _check(out, want, bound, backend)


@pytest.mark.parametrize("reverse", [False, True])
def test_shared_causal_dot_kernel(backend, reverse):
    """The shared prefix-sum kernel: out_i = sum_{j<=i} (a_i . b_j) c_j (j >= i when reverse) for
    every chunk size, and its hand-written backward by finite differences."""
    rs = np.random.default_rng(4)
    a, b, c = rs.standard_normal((2, 8, 3)), rs.standard_normal((2, 8, 3)), rs.standard_normal((2, 8, 4))
    tri = np.triu(np.ones((8, 8))) if reverse else np.tril(np.ones((8, 8)))
    want = ((a @ np.swapaxes(b, -1, -2)) * tri) @ c
    bound = 4 * gamma(8 + 3 + 2) * ((np.abs(a) @ np.swapaxes(np.abs(b), -1, -2)) * tri) @ np.abs(c)
    args = to(backend, a, b, c)
    for chunk in (1, 3, 8, 11):
        _check(causal_dot(*args, chunk=chunk, reverse=reverse), want, bound, backend)

    def vjp(a, b, c, chunk=3):
        out = causal_dot(a, b, c, chunk=chunk, reverse=reverse)
        return out, lambda g: causal_dot_backward(a, b, c, g, chunk=chunk, reverse=reverse)

    gradcheck(lambda a, b, c, chunk=3: causal_dot(a, b, c, chunk=chunk, reverse=reverse), args, vjp=vjp)


def test_causal_extra_memory_is_not_n_d_dv():
    """The chunked prefix sums never hold (n, d, dv) prefix states. Peak memory (tracemalloc, after
    a warm-up call that pays one-off import/cache allocations) of the causal forward at n = 2048,
    d = dv = 64, chunk = 64 is bounded by the O(n (d + dv)) arrays the code holds: phi(Q), phi(K)
    (2 n d), [V, 1], the chunk outputs and their concatenation (3 n (dv + 1)), out (n dv) - with 25%
    slack for allocator rounding plus 1 MiB for the O(chunk^2 + chunk (d + dv) + d dv) chunk work.
    That is ~9 MiB, while materialised prefix states (Katharopoulos et al.'s formula) take
    n d dv * 8 bytes = 64 MiB."""
    rs = np.random.default_rng(5)
    n, d = 2048, 64
    q, k, v = (rs.standard_normal((n, d)) for _ in range(3))
    refattn.linear_attention(q[:8], k[:8], v[:8], causal=True, chunk=4)  # warm-up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        refattn.linear_attention(q, k, v, causal=True, chunk=64)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    held = 8 * n * (2 * d + 3 * (d + 1) + d)
    assert peak <= 1.25 * held + 2**20, (peak, held)
    assert 1.25 * held + 2**20 < n * d * d * 8 / 4


# --------------------------------------------------------------------------------------------------
# Normalisers, eps, masks, bad input
# --------------------------------------------------------------------------------------------------


def test_eps_placement_is_added_to_the_normaliser():
    """out = num / (den + eps) (fast-transformers' placement): eps = 0.5 against the explicit
    formula, and eps = 0 gives the paper's formula (the explicit reference takes eps as given)."""
    q, k, v = host_qkv(6, n=5, m=6)
    for eps in (0.0, 1e-6, 0.5):
        out = refattn.linear_attention(q, k, v, eps=eps)
        want, bound = _explicit(_phi("elu+1", q), _phi("elu+1", k), v, _allowed(5, 6, False, None), eps)
        _check(out, want, bound, refattn.backends.get("numpy"))


def test_zero_normalisers_give_zero_rows_and_zero_gradients(backend):
    """elu+1 of keys below -745 underflows to exactly 0, so with eps = 0 every normaliser is 0 and
    every numerator is 0: the documented result is zeros with zero gradients, never NaN. Likewise a
    batch element whose keys are all padded (key_lengths = 0), with eps = 0 and with eps > 0."""
    xp = backend.xp
    q, k, v = host_qkv(7, n=4, m=5)
    for causal in (False, True):
        args = to(backend, q, k - 800.0, v)
        out, pb = refattn.vjp(refattn.linear_attention, *args, eps=0.0, causal=causal)
        grads = pb(xp.ones_like(out))
        assert bool(xp.all(out == 0.0))
        assert all(bool(xp.all(g == 0.0)) for g in grads)
    lengths = backend.asarray(np.array([0, 5]))[:, None]
    for eps in (0.0, 1e-6):
        out, pb = refattn.vjp(refattn.linear_attention, *to(backend, q, k, v), eps=eps, key_lengths=lengths)
        dq, dk, dv = pb(xp.ones_like(out))
        assert bool(xp.all(out[0, ...] == 0.0)) and bool(xp.all(dq[0, ...] == 0.0))
        assert bool(xp.all(dk[0, ...] == 0.0)) and bool(xp.all(dv[0, ...] == 0.0))
        assert bool(xp.all(xp.isfinite(out)))


def test_nonpositive_normalisers_raise_warn_or_pass():
    """identity features on Gaussian inputs give negative normalisers: ValueError by default,
    RuntimeWarning with 'warn', and with 'ignore' the ratio as the explicit formula computes it."""
    q, k, v = host_qkv(8, n=6, m=7)
    with pytest.raises(ValueError, match="normaliser"):
        refattn.linear_attention(q, k, v, feature_map="identity")
    with pytest.warns(RuntimeWarning, match="normaliser"):
        refattn.linear_attention(q, k, v, feature_map="identity", errors="warn")
    out = refattn.linear_attention(q, k, v, feature_map="identity", errors="ignore", eps=0.0)
    want, bound = _explicit(q, k, v, _allowed(6, 7, False, None), 0.0)
    assert np.any(np.sum(q[..., :, None, :] * k[..., None, :, :], axis=(-1, -2)) < 0)
    _check(out, want, bound, refattn.backends.get("numpy"))
    with pytest.raises(ValueError, match="normaliser"):  # the causal path checks too
        refattn.linear_attention(q, k, v, feature_map="identity", causal=True)


def test_deprecated_on_nonpositive_still_works_and_warns():
    """on_nonpositive (the former name of errors) maps value for value, with a DeprecationWarning;
    giving both is an error."""
    q, k, v = host_qkv(8, n=6, m=7)
    want = refattn.linear_attention(q, k, v, feature_map="identity", errors="ignore")
    with pytest.warns(DeprecationWarning, match="on_nonpositive='ignore' is deprecated; use errors='ignore'"):
        got = refattn.linear_attention(q, k, v, feature_map="identity", on_nonpositive="ignore")
    np.testing.assert_array_equal(got, want)
    with pytest.warns(DeprecationWarning, match="use errors='raise'"), pytest.raises(ValueError, match="normaliser"):
        refattn.linear_attention(q, k, v, feature_map="identity", on_nonpositive="raise")
    with pytest.warns(DeprecationWarning), pytest.warns(RuntimeWarning, match="normaliser"):
        refattn.linear_attention(q, k, v, feature_map="identity", on_nonpositive="warn")
    with pytest.raises(TypeError, match="give the failure policy once"):
        refattn.linear_attention(q, k, v, errors="warn", on_nonpositive="warn")


def test_check_finite_default_rejects_nan_and_false_propagates():
    """check_finite=True is the default (SciPy's convention): NaN/inf inputs raise naming the
    argument; check_finite=False lets them propagate to the rows they reach."""
    q, k, v = host_qkv(8, n=4, m=5)
    bad = v.copy()
    bad.reshape(-1)[3] = np.nan
    for fn in (refattn.linear_attention, refattn.efficient_attention):
        with pytest.raises(ValueError, match="v must be finite, got 1 NaN/inf"):
            fn(q, k, bad)
        with np.errstate(invalid="ignore"):
            out = fn(q, k, bad, check_finite=False)
        assert np.isnan(out).any() and np.isfinite(out).any()
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        refattn.linear_attention(q, k, v, check_finite=1)


def test_key_padding_equals_dropping_keys(backend):
    """Boolean (..., 1, m) mask and key_lengths both give the result on the shortened sequence."""
    q, k, v = host_qkv(9, batch=(1, 2), n=5, m=8)
    keep = np.array([True, False, True, True, False, True, True, False])
    want = refattn.linear_attention(*to(backend, q, k[..., keep, :], v[..., keep, :]))
    got = refattn.linear_attention(*to(backend, q, k, v), mask=backend.asarray(keep[None, :]))
    assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    got = refattn.linear_attention(*to(backend, q, k, v), key_lengths=backend.asarray(np.array([6])))
    want = refattn.linear_attention(*to(backend, q, k[..., :6, :], v[..., :6, :]))
    assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_masks_it_cannot_honour_are_rejected(backend):
    q, k, v = to(backend, *host_qkv(10, n=5, m=6))
    per_query = backend.asarray(np.tril(np.ones((5, 6), bool)))
    for fn in (refattn.linear_attention, refattn.efficient_attention):
        with pytest.raises(ValueError, match="differs between queries"):
            fn(q, k, v, mask=per_query)
        with pytest.raises(ValueError, match="additive"):
            fn(q, k, v, mask=backend.asarray(np.zeros((5, 6))))
    with pytest.raises(ValueError, match="cannot be causal"):
        refattn.efficient_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="causal must be one of"):
        refattn.linear_attention(q, k, v, causal="diagonal")


def test_bad_input_messages():
    q, k, v = host_qkv(11, n=4, m=5)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        refattn.linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(TypeError, match="pair"):
        refattn.linear_attention(q, k, v, feature_map=(np.exp,))
    with pytest.raises(TypeError, match="pair"):
        refattn.linear_attention(q, k, v, feature_map=(np.exp, 3))
    with pytest.raises(ValueError, match="elementwise"):
        refattn.linear_attention(q, k, v, feature_map=(lambda x: x[..., :2], lambda x: x))
    for eps in (-1e-3, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps"):
            refattn.linear_attention(q, k, v, eps=eps)
    with pytest.raises(TypeError, match="eps must be a finite real number"):  # not a number: TypeError
        refattn.linear_attention(q, k, v, eps="1e-6")
    with pytest.raises(ValueError, match="chunk"):
        refattn.linear_attention(q, k, v, causal=True, chunk=0)
    with pytest.raises(ValueError, match="errors must be one of"):
        refattn.linear_attention(q, k, v, errors="clip")
    with pytest.raises(ValueError, match="on_nonpositive must be one of"):
        refattn.linear_attention(q, k, v, on_nonpositive="clip")
    with pytest.raises(ValueError, match="normalization"):
        refattn.efficient_attention(q, k, v, normalization="l2")
    with pytest.raises(ValueError, match="k must have shape"):
        refattn.linear_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="feature_map_cost"):
        linear.cost(4, 5, 4, 5, feature_map=_softplus_pair())


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------

GRAD_CASES = [
    {"feature_map": "elu+1"},
    {"feature_map": "relu", "scale": 0.5},
    {"feature_map": "identity", "errors": "ignore", "eps": 0.0},
    {"feature_map": "softplus", "causal": True, "chunk": 2},
    {"feature_map": "elu+1", "causal": True, "chunk": 3, "padding": True},
    {"feature_map": "elu+1", "causal": "bottom_right", "chunk": 2},
]


def _kw(case, backend):
    kw = dict(case)
    if kw.pop("feature_map") == "softplus":
        kw["feature_map"] = _softplus_pair()
    else:
        kw["feature_map"] = case["feature_map"]
    if kw.pop("padding", False):
        kw["key_lengths"] = backend.asarray(np.array([[6], [3]]))
    return kw


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradcheck_linear(backend, case):
    rs = np.random.default_rng(12)
    q, k, v = rs.standard_normal((2, 1, 5, 3)), rs.standard_normal((2, 1, 6, 3)), rs.standard_normal((2, 1, 6, 2))
    if case["feature_map"] == "identity":  # keep normalisers away from 0: positive features
        q, k = np.abs(q) + 0.5, np.abs(k) + 0.5
    gradcheck(refattn.linear_attention, to(backend, q, k, v), kwargs=_kw(case, backend), n_directions=3)


@pytest.mark.parametrize("normalization", ["softmax", "scaling"])
def test_gradcheck_efficient(backend, normalization):
    q, k, v = to(backend, *host_qkv(13, batch=(2, 1), n=5, m=6, d=3, dv=2))
    lengths = backend.asarray(np.array([[6], [4]]))
    gradcheck(refattn.efficient_attention, (q, k, v),
              kwargs={"normalization": normalization, "key_lengths": lengths, "scale": 1.3}, n_directions=3)


def test_broadcast_batch_dims_reduce_gradients(backend):
    rs = np.random.default_rng(14)
    q, k, v = rs.standard_normal((2, 3, 5, 4)), rs.standard_normal((2, 1, 6, 4)), rs.standard_normal((1, 6, 3))
    args = to(backend, q, k, v)
    for fn, kw in ((refattn.linear_attention, {}), (refattn.linear_attention, {"causal": True, "chunk": 2}),
                   (refattn.efficient_attention, {})):
        out, pb = refattn.vjp(fn, *args, **kw)
        assert tuple(out.shape) == (2, 3, 5, 3)
        assert [tuple(g.shape) for g in pb(backend.xp.ones_like(out))] == [(2, 3, 5, 4), (2, 1, 6, 4), (1, 6, 3)]
        gradcheck(fn, args, kwargs=kw)


def test_kernelized_core_gradients():
    """The reusable core on its own (features as inputs, as random-feature attention uses it)."""
    rs = np.random.default_rng(15)
    pq, pk, v = rs.uniform(0.1, 1, (2, 5, 7)), rs.uniform(0.1, 1, (2, 6, 7)), rs.standard_normal((2, 6, 3))
    keep = np.array([True, True, False, True, True, True])
    for causal in (False, True, "bottom_right"):
        def fn(a, b, c, causal=causal):
            return kernelized_forward(a, b, c, causal=causal, chunk=2, key_keep=keep)[0]

        def vjp(a, b, c, causal=causal):
            out, res = kernelized_forward(a, b, c, causal=causal, chunk=2, key_keep=keep)
            return out, lambda g: kernelized_backward(res, g)

        gradcheck(fn, (pq, pk, v), vjp=vjp, n_directions=3)


def _torch_linear(q, k, v, fmap, causal, eps, scale):
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    phi = {"elu+1": lambda x: torch.nn.functional.elu(x) + 1, "relu": torch.relu,
           "softplus": torch.nn.functional.softplus}[fmap]
    a = phi(scale * tq) @ phi(tk).transpose(-1, -2)
    if causal:
        a = a * torch.tril(torch.ones(a.shape[-2:], dtype=a.dtype), diagonal=0 if causal is True else
                           a.shape[-1] - a.shape[-2])
    out = (a @ tv) / (a.sum(-1, keepdim=True) + eps)
    return out, (tq, tk, tv)


@pytest.mark.parametrize("fmap", ["elu+1", "relu", "softplus"])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
def test_matches_torch_autograd(fmap, causal):
    rs = np.random.default_rng(16)
    q, k, v = rs.standard_normal((2, 3, 7, 4)), rs.standard_normal((2, 3, 9, 4)), rs.standard_normal((2, 3, 9, 5))
    dout = rs.standard_normal((2, 3, 7, 5))
    feature_map = _softplus_pair() if fmap == "softplus" else fmap
    out, pb = refattn.vjp(refattn.linear_attention, q, k, v, feature_map=feature_map, causal=causal,
                          chunk=3, eps=1e-3, scale=0.8)
    t_out, leaves = _torch_linear(q, k, v, fmap, causal, 1e-3, 0.8)
    t_out.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-12 * np.abs(out).max())
    for g, t in zip(pb(dout), leaves):
        ref = t.grad.numpy()
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("normalization", ["softmax", "scaling"])
def test_efficient_matches_torch_autograd(normalization):
    rs = np.random.default_rng(17)
    q, k, v = rs.standard_normal((2, 3, 7, 4)), rs.standard_normal((2, 3, 9, 4)), rs.standard_normal((2, 3, 9, 5))
    dout = rs.standard_normal((2, 3, 7, 5))
    keep = np.array([True] * 7 + [False] * 2)
    out, pb = refattn.vjp(refattn.efficient_attention, q, k, v, normalization=normalization, scale=1.5,
                          mask=keep[None, :])
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    tkeep = torch.from_numpy(keep)[:, None]
    if normalization == "softmax":
        rq = torch.softmax(1.5 * tq, dim=-1)
        rk = torch.softmax(tk.masked_fill(~tkeep, -torch.inf), dim=-2)
    else:
        rq, rk = 1.5 * tq / 3.0, (tk / 3.0).masked_fill(~tkeep, 0.0)
    t_out = rq @ (rk.transpose(-1, -2) @ tv)
    t_out.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-12 * np.abs(out).max())
    for g, t in zip(pb(dout), (tq, tk, tv)):
        ref = t.grad.numpy()
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


# --------------------------------------------------------------------------------------------------
# Shen et al.: the identities that hold, and that it is not softmax attention
# --------------------------------------------------------------------------------------------------


def test_efficient_implied_attention_rows_sum_to_one(backend):
    """With V = I_m the output is the implied attention matrix A = rho_q(Q) rho_k(K)^T; each row sums
    to 1: |sum_j A_ij - 1| <= 4 gamma_{d+m} (the entries are non-negative, so the absolute sums are
    the sums themselves). Also each row of rho_q and each kept column of rho_k sums to 1."""
    rs = np.random.default_rng(18)
    q, k = rs.standard_normal((2, 6, 4)), rs.standard_normal((2, 8, 4))
    eye = np.broadcast_to(np.eye(8), (2, 8, 8))
    keep = np.array([True] * 6 + [False] * 2)
    xp = backend.xp
    for mask in (None, backend.asarray(keep[None, :])):
        a = refattn.efficient_attention(*to(backend, q, k, eye), mask=mask)
        rows = backend.to_host(xp.sum(a, axis=-1))
        assert np.all(np.abs(rows - 1.0) <= 4 * gamma(4 + 8)), rows
        assert np.all(backend.to_host(a) >= 0)
        if mask is not None:
            assert bool(xp.all(a[..., 6:] == 0.0))
    _, res = linear.efficient_forward(*to(backend, q, k, eye))
    assert np.all(np.abs(backend.to_host(xp.sum(res.rho_q, axis=-1)) - 1) <= 4 * gamma(4))
    assert np.all(np.abs(backend.to_host(xp.sum(res.rho_k, axis=-2)) - 1) <= 4 * gamma(8))


def test_efficient_scaling_normalisation_is_dot_product_attention(backend):
    """normalization='scaling': (sQ/sqrt(m)) ((K/sqrt(m))^T V) == (s Q K^T / m) V, associativity;
    bound 4 gamma_{d+m} (|Q||K|^T|V|) s / m."""
    q, k, v = host_qkv(19, n=6, m=8)
    out = refattn.efficient_attention(*to(backend, q, k, v), normalization="scaling", scale=0.9)
    want = (0.9 * q @ np.swapaxes(k, -1, -2) / 8) @ v
    bound = 4 * gamma(4 + 8) * 0.9 / 8 * (np.abs(q) @ np.swapaxes(np.abs(k), -1, -2)) @ np.abs(v)
    _check(out, want, bound, backend)


def test_efficient_attention_is_not_softmax_attention():
    """Counterexample (deterministic): adding c = 1 to a query row leaves Shen's output unchanged
    (softmax over features is shift-invariant; change <= 4 gamma_d |out|) but changes
    softmax(QK^T/sqrt(d))V by more than 1e-3 (keys have unequal coordinate sums); and Shen's output
    has rank <= d < min(n, dv) while exact softmax attention's has full rank min(n, dv)."""
    q, k, v = host_qkv(20, batch=(), n=12, m=12, d=3, dv=8)
    q2 = q.copy()
    q2[0] += 1.0
    e1, e2 = refattn.efficient_attention(q, k, v), refattn.efficient_attention(q2, k, v)
    assert np.all(np.abs(e1 - e2) <= 4 * gamma(3 + 12) * np.abs(e1).max())
    s1, s2 = refattn.softmax_attention(q, k, v), refattn.softmax_attention(q2, k, v)
    assert np.abs(s1[0] - s2[0]).max() > 1e-3
    sv_e, sv_s = np.linalg.svd(e1, compute_uv=False), np.linalg.svd(s1, compute_uv=False)
    assert np.sum(sv_e > 1e-12 * sv_e[0]) <= 3
    assert np.sum(sv_s > 1e-12 * sv_s[0]) == 8


# --------------------------------------------------------------------------------------------------
# Precision, property sweep, cost
# --------------------------------------------------------------------------------------------------


def test_float32_on_every_device(backend32):
    """float32 (including the strict device without float64) against the float64 oracle; relative
    error ~ (m + d) u32 ~ 2e-6 for these sizes (positive features, no cancellation)."""
    q, k, v = host_qkv(21, n=16, m=16, d=8, dv=8)
    for fn, kw in ((refattn.linear_attention, {"causal": True, "chunk": 5}), (refattn.linear_attention, {}),
                   (refattn.efficient_attention, {})):
        want = fn(q, k, v, **kw)
        out = fn(*to(backend32, q, k, v, dtype="float32"), **kw)
        assert out.dtype == backend32.xp.float32 and out.device == backend32.device
        np.testing.assert_allclose(backend32.to_host(out), want, rtol=2e-5, atol=2e-5)


def test_half_precision_is_computed_in_float32():
    q, k, v = host_qkv(22, n=16, m=16, d=8, dv=8)
    q16, k16, v16 = (a.astype(np.float16) for a in (q, k, v))
    for fn in (refattn.linear_attention, refattn.efficient_attention):
        out = fn(q16, k16, v16)
        assert out.dtype == np.float16
        want = fn(*(a.astype(np.float64) for a in (q16, k16, v16)))
        np.testing.assert_allclose(out.astype(np.float64), want, rtol=2e-3, atol=2e-3)


@given(n=st.integers(1, 9), m=st.integers(1, 9), d=st.integers(1, 4), dv=st.integers(1, 3),
       chunk=st.integers(1, 10), causal=st.sampled_from([False, True, "bottom_right"]),
       fmap=st.sampled_from(["elu+1", "relu"]), seed=st.integers(0, 2**16))
def test_property_matches_explicit(n, m, d, dv, chunk, causal, fmap, seed):
    rs = np.random.default_rng(seed)
    q, k, v = rs.standard_normal((2, n, d)), rs.standard_normal((2, m, d)), rs.standard_normal((2, m, dv))
    out = refattn.linear_attention(q, k, v, feature_map=fmap, causal=causal, chunk=chunk)
    want, bound = _explicit(_phi(fmap, q), _phi(fmap, k), v, _allowed(n, m, causal, None), 1e-6)
    _check(out, want, bound, refattn.backends.get("numpy"))


COST_CASES = [
    ("linear", {}), ("linear", {"feature_map": "relu", "scale": 0.5}), ("linear", {"feature_map": "identity"}),
    ("linear", {"causal": True, "chunk": 3}), ("linear", {"causal": "bottom_right", "chunk": 4}),
    ("efficient", {}), ("efficient", {"normalization": "scaling", "scale": 2.0}),
]


@pytest.mark.parametrize(("which", "kw"), COST_CASES)
def test_closed_form_cost_equals_counted(which, kw):
    rs = np.random.default_rng(23)
    q, k, v = np.abs(rs.standard_normal((2, 3, 7, 4))), rs.standard_normal((2, 3, 9, 4)), rs.standard_normal(
        (2, 3, 9, 5))
    if which == "linear":
        run_kw = {**kw, "errors": "ignore"} if kw.get("feature_map") == "identity" else kw
        counted = measure(refattn.linear_attention, q, k, v, **run_kw)
        closed = linear.cost(7, 9, 4, 5, batch=6, **kw)
    else:
        counted = measure(refattn.efficient_attention, q, k, v, **kw)
        closed = linear.efficient_cost(7, 9, 4, 5, batch=6, **kw)
    assert counted.flops == closed.flops
    assert counted.transcendentals == closed.transcendentals


def test_closed_form_cost_is_linear_in_n():
    """The closed forms grow linearly in n at fixed d, dv (ratio of doubling -> 2)."""
    for fn, kw in ((linear.cost, {}), (linear.cost, {"causal": True}), (linear.efficient_cost, {})):
        c1, c2 = fn(4096, 4096, 64, 64, **kw).flops, fn(8192, 8192, 64, 64, **kw).flops
        assert abs(c2 / c1 - 2) < 1e-3


def test_kernelized_positive_rule_empty_invalid_rows_and_report_hook():
    """The core's "positive" normaliser rule (used by random features): rows that see no kept key by
    construction (all keys padded; bottom-right causal rows before the first key) are zeros without
    a report; a row whose normaliser underflowed to 0 is invalid: zeros, zero gradient, reported
    through the hook (or a ValueError), while the "nonzero" rule treats it as an empty row."""
    rs = np.random.default_rng(77)
    a = np.abs(rs.standard_normal((2, 5, 3)))
    b = np.abs(rs.standard_normal((2, 4, 3)))
    c = rs.standard_normal((2, 4, 2))
    keep = np.array([[True] * 4, [False] * 4])
    out, res = kernelized_forward(a, b, c, key_keep=keep, eps=0.0, normalizer="positive")
    assert np.all(out[1] == 0) and not np.any(res.valid[1]) and np.all(res.valid[0])
    out, res = kernelized_forward(a, b, c, causal="bottom_right", eps=0.0, normalizer="positive")
    assert np.all(out[:, 0] == 0) and np.all(res.valid[:, 1:]) and not np.any(res.valid[:, 0])
    a2 = a.copy()
    a2[0, 2] = 0.0  # phi(q) underflowed: normaliser exactly 0 although keys are kept
    seen = []

    def message(xp, bad, r):
        seen.append(np.argwhere(bad).tolist())
        return "caller's wording"

    with pytest.warns(RuntimeWarning, match="caller's wording"):
        out, res = kernelized_forward(a2, b, c, eps=0.0, normalizer="positive", errors="warn", message=message)
    assert seen == [[[0, 2]]] and np.all(out[0, 2] == 0)
    with pytest.raises(KeyError, match="caller's wording"):  # the caller's exception
        kernelized_forward(a2, b, c, eps=0.0, normalizer="positive", message=message, error=KeyError)
    dq, dk, dv = kernelized_backward(res, np.ones_like(out))
    assert np.all(dq[0, 2] == 0) and np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))
    with pytest.raises(ValueError, match="not positive and finite"):
        kernelized_forward(a2, b, c, eps=0.0, normalizer="positive")
    out_nz, _ = kernelized_forward(a2, b, c, eps=0.0)  # "nonzero": 0 / 0 is an empty row, silently
    np.testing.assert_array_equal(out_nz, out)
    # the fallback: zero_invalid=False returns the ratio as computed (0 / 0 rows stay zeros)
    out_r, res_r = kernelized_forward(a2, b, c, eps=0.0, normalizer="positive", errors="ignore",
                                      zero_invalid=False)
    np.testing.assert_array_equal(out_r, out)
    assert res_r.valid[0, 2] == np.False_
