"""Linformer and Verma's modified Linformer: explicit formulas, E = F = I is exact attention, key
padding before projection, bad input, gradients (finite differences, torch autograd), the
Johnson-Lindenstrauss properties of refattn.random.linformer_projection, Linformer Theorem 1, the
decrease of the error with k, Verma's two evaluation orders and delta, cost.

Tolerances: float64, u = 2^-53, gamma_k = k u / (1 - k u). Where refattn and a reference evaluate
the same products in the same association (the explicit formulas, torch autograd) the entries are
ratios of sums of at most k (m + d + dv) terms of O(1) inputs, so they agree to a few gamma_{k m},
~1e-13 relative here; 1e-12 relative (to the largest entry) leaves a margin of 10x. Statistical
tests use the false-alarm budget alpha = 1e-6 per assertion (RECIPES.md section 0) and say how.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import refattn
from refattn.cost import measure
from refattn.methods import linformer
from refattn.random import linformer_projection
from refattn.testing import assert_allclose, gradcheck

from .conftest import host_qkv, to

torch = pytest.importorskip("torch")

U = 2.0**-53
ALPHA = 1e-6


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _case(seed=0, batch=(2, 3), n=7, m=9, d=4, dv=5, k=4, shared_f=True):
    q, kk, v = host_qkv(seed, batch=batch, n=n, m=m, d=d, dv=dv)
    rs = np.random.default_rng(seed + 100)
    E = rs.standard_normal((batch[-1], k, m)) / np.sqrt(k)  # per head
    F = rs.standard_normal((k, m) if shared_f else (batch[-1], k, m)) / np.sqrt(k)
    return q, kk, v, E, F


def _linformer_np(q, k, v, E, F, scale):
    return _softmax(scale * q @ np.swapaxes(E @ k, -1, -2)) @ (F @ v)


def _verma_np(q, k, v, E, F, scale):
    h = _softmax(scale * q, -1)
    l = _softmax(scale * np.swapaxes(E @ k, -1, -2), -1)
    return h @ (l @ (F @ v))


# --------------------------------------------------------------------------------------------------
# Forward: explicit formulas and exact special cases
# --------------------------------------------------------------------------------------------------


def test_linformer_matches_explicit_formula(backend):
    q, k, v, E, F = _case(0)
    out = refattn.linformer_attention(*to(backend, q, k, v, E, F), scale=0.6)
    np.testing.assert_allclose(backend.to_host(out), _linformer_np(q, k, v, E, F, 0.6), rtol=1e-12, atol=1e-13)


def test_verma_matches_explicit_formula_in_both_orders(backend):
    q, k, v, E, F = _case(1)
    want = _verma_np(q, k, v, E, F, 0.5)
    for order in linformer.ORDERS:
        out = refattn.verma_attention(*to(backend, q, k, v, E, F), order=order)
        np.testing.assert_allclose(backend.to_host(out), want, rtol=1e-12, atol=1e-13)


def test_identity_projections_give_exact_softmax_attention(backend):
    """E = F = I_m (k = m): E K = K and F V = V exactly (products with 1, sums with exact zeros), so
    the output is bitwise the dense softmax attention of (q, k, v)."""
    q, k, v, _, _ = _case(2, m=9)
    eye = np.eye(9)
    out = refattn.linformer_attention(*to(backend, q, k, v, eye, eye))
    want = refattn.softmax_attention(*to(backend, q, k, v), impl="dense")
    assert bool(backend.xp.all(out == want))


def test_verma_orders_agree_and_hl_is_row_stochastic(backend):
    """H(LX) == (HL)X up to rounding, |diff| <= 4 gamma_{d+k} (|H||L||X|); HL is row-stochastic
    (rows of H and of L sum to 1), |rowsum - 1| <= 4 gamma_{d+k}, so each output row is a convex
    combination of the rows of X = F V."""
    xp = backend.xp
    q, k, v, E, F = _case(3, n=11, m=13, d=6, dv=3, k=5)
    args = to(backend, q, k, v, E, F)
    a, res_a = linformer.verma_forward(*args, order="H(LX)")
    b, res_b = linformer.verma_forward(*args, order="(HL)X")
    h, l, x = (backend.to_host(t) for t in (res_a.h, res_a.l, res_a.x))
    bound = 4 * gamma(6 + 5) * (np.abs(h) @ np.abs(l) @ np.abs(x))
    assert np.all(np.abs(backend.to_host(a) - backend.to_host(b)) <= bound)
    rows = backend.to_host(xp.sum(res_b.mid, axis=-1))
    assert np.all(np.abs(rows - 1.0) <= 4 * gamma(6 + 5))
    lo, hi = x.min(-2, keepdims=True), x.max(-2, keepdims=True)
    out = backend.to_host(b)
    assert np.all(out >= lo - 4 * gamma(11) * np.abs(x).max()) and np.all(out <= hi + 4 * gamma(11) * np.abs(x).max())


def test_shared_and_per_head_projections_broadcast(backend):
    """E (k, m) shared; E (H, k, m) per head; E (B, 1, k, m) per batch element; q without batch
    dims taking the batch from E. Each equals the explicit formula with numpy broadcasting."""
    q, k, v, _, _ = _case(4)
    rs = np.random.default_rng(5)
    for eshape in [(4, 9), (3, 4, 9), (2, 1, 4, 9)]:
        E, F = rs.standard_normal(eshape), rs.standard_normal((4, 9))
        out = refattn.linformer_attention(*to(backend, q, k, v, E, F))
        np.testing.assert_allclose(backend.to_host(out), _linformer_np(q, k, v, E, F, 0.5), rtol=1e-12, atol=1e-13)
    E = rs.standard_normal((2, 3, 4, 9))
    out = refattn.linformer_attention(*to(backend, q[0, 0], k[0, 0], v[0, 0], E, F))
    assert tuple(out.shape) == (2, 3, 7, 5)


@pytest.mark.parametrize("fn", [refattn.linformer_attention, refattn.verma_attention])
def test_key_padding_is_applied_before_projection(backend, fn):
    """Padding keys j >= L equals dropping them from K, V and the columns of E, F (their rows are
    zeroed before the projection); the boolean (..., 1, m) form gives the same. A batch element
    with every key padded returns zeros with zero gradients."""
    xp = backend.xp
    q, k, v, E, F = _case(6, batch=(1, 3))
    want = fn(*to(backend, q, k[..., :6, :], v[..., :6, :], E[..., :6], F[..., :6]))
    got = fn(*to(backend, q, k, v, E, F), key_lengths=backend.asarray(np.array([6])))
    assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    keep = backend.asarray((np.arange(9) < 6)[None, :])
    assert_allclose(fn(*to(backend, q, k, v, E, F), mask=keep), want, rtol=1e-12, atol=1e-14)
    q2, k2, v2, E2, F2 = _case(7)
    out, pb = refattn.vjp(fn, *to(backend, q2, k2, v2, E2, F2), key_lengths=backend.asarray(np.array([[0], [9]])))
    grads = pb(xp.ones_like(out))
    assert bool(xp.all(out[0, ...] == 0.0))
    assert all(bool(xp.all(g[0, ...] == 0.0)) for g in grads[:3])


@given(n=st.integers(1, 8), m=st.integers(1, 8), kfrac=st.floats(0.0, 1.0), d=st.integers(1, 4),
       dv=st.integers(1, 3), heads=st.integers(1, 3), per_head=st.booleans(), pad=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_matches_explicit(n, m, kfrac, d, dv, heads, per_head, pad, seed):
    """Any shapes with 1 <= k <= m, shared or per-head E, F, optional key padding: Linformer and
    both Verma orders equal the explicit formulas on the padded-and-zeroed K, V (1e-12 relative,
    the module docstring's bound)."""
    k = 1 + int(kfrac * (m - 1))
    rs = np.random.default_rng(seed)
    q, kk, v = (rs.standard_normal((2, heads, r, c)) for r, c in ((n, d), (m, d), (m, dv)))
    pshape = (heads, k, m) if per_head else (k, m)
    E, F = rs.standard_normal(pshape), rs.standard_normal(pshape)
    kw, kz, vz = {}, kk, v
    if pad:
        lengths = rs.integers(0, m + 1, size=(2, 1))
        keep = np.arange(m) < lengths[..., None]
        kw = {"key_lengths": lengths}
        kz, vz = np.where(keep[..., None], kk, 0.0), np.where(keep[..., None], v, 0.0)
    s = 1 / np.sqrt(d)
    got = refattn.linformer_attention(q, kk, v, E, F, **kw)
    np.testing.assert_allclose(got, _linformer_np(q, kz, vz, E, F, s), rtol=1e-12, atol=1e-12)
    want = _verma_np(q, kz, vz, E, F, s)
    for order in linformer.ORDERS:
        np.testing.assert_allclose(refattn.verma_attention(q, kk, v, E, F, order=order, **kw), want,
                                   rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [refattn.linformer_attention, refattn.verma_attention])
def test_bad_input(backend, fn):
    q, k, v, E, F = (backend.asarray(a) for a in _case(8))
    Eh, Fh = _case(8)[3:]
    with pytest.raises(ValueError, match="must not exceed the number of keys"):
        fn(q, k, v, *to(backend, np.ones((10, 9)), np.ones((10, 9))))
    with pytest.raises(ValueError, match=r"\(m, k\) matrix"):
        fn(q, k, v, *to(backend, np.ones((9, 4)), np.ones((9, 4))))
    with pytest.raises(ValueError, match=r"E must have shape \(\.\.\., k, m\)"):
        fn(q, k, v, *to(backend, np.ones((4, 8)), np.ones((4, 9))))
    with pytest.raises(ValueError, match="F must have shape"):
        fn(q, k, v, E, backend.asarray(np.ones((3, 9))))
    with pytest.raises(ValueError, match="at least 1"):
        fn(q, k, v, *to(backend, np.ones((0, 9)), np.ones((0, 9))))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fn(q, k, v, backend.asarray(np.ones(9)), F)
    with pytest.raises(TypeError, match="dtype"):
        fn(q, k, v, backend.asarray(Eh.astype(np.float32)), F)
    with pytest.raises(TypeError):
        fn(q, k, v, Eh.tolist(), F)
    with pytest.raises(ValueError, match="do not broadcast"):
        fn(q, k, v, backend.asarray(np.ones((5, 4, 9))), F)
    with pytest.raises(ValueError, match="cannot be causal"):
        fn(q, k, v, E, F, causal=True)
    with pytest.raises(ValueError, match="differs between queries"):
        fn(q, k, v, E, F, mask=backend.asarray(np.ones((7, 9), bool)))
    with pytest.raises(ValueError, match="additive"):
        fn(q, k, v, E, F, mask=backend.asarray(np.zeros((1, 9))))
    with pytest.raises(ValueError, match="must be finite"):
        fn(q, k, v, backend.asarray(np.full((4, 9), np.nan)), F, check_finite=True)


def test_bad_options():
    q, k, v, E, F = _case(9)
    with pytest.raises(ValueError, match="order"):
        refattn.verma_attention(q, k, v, E, F, order="HLX")
    with pytest.raises(ValueError, match="delta"):
        linformer.verma_projections(E, delta=math.inf)
    with pytest.raises(TypeError):
        linformer.verma_projections([[1.0]], delta=0.5)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        linformer_projection(0, 4, rng=0)
    with pytest.raises(ValueError, match="rng must be given"):
        linformer_projection(2, 4, rng=None)
    with pytest.raises(ValueError, match="batch"):
        linformer_projection(2, 4, rng=0, batch=(-1,))


def test_verma_projections_helper(backend):
    r = linformer_projection(3, 8, rng=1, backend=backend)
    E, F = linformer.verma_projections(r, delta=0.25)
    np.testing.assert_array_equal(backend.to_host(E), 0.25 * backend.to_host(r))
    np.testing.assert_array_equal(backend.to_host(F), math.exp(-0.25) * backend.to_host(r))


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linformer", "H(LX)", "(HL)X"])
@pytest.mark.parametrize("padding", [False, True])
def test_gradcheck_every_input_and_parameter(backend, kind, padding):
    q, k, v, E, F = _case(10, batch=(2, 2), n=5, m=6, d=3, dv=2, k=3, shared_f=False)
    kw = {"key_lengths": backend.asarray(np.array([[6], [4]]))} if padding else {}
    if kind == "linformer":
        fn = refattn.linformer_attention
        kw["scale"] = 0.8
    else:
        fn = refattn.verma_attention
        kw["order"] = kind
    args = to(backend, q, k, v, E, F)
    out, pb = refattn.vjp(fn, *args, **kw)
    assert [tuple(g.shape) for g in pb(backend.xp.ones_like(out))] == [tuple(a.shape) for a in args]
    gradcheck(fn, args, kwargs=kw, n_directions=3)


def _torch_case(q, k, v, E, F, keep):
    leaves = [torch.from_numpy(a).requires_grad_() for a in (q, k, v, E, F)]
    tq, tk, tv, tE, tF = leaves
    tkeep = torch.from_numpy(keep)[..., None]
    return leaves, tq, tk.masked_fill(~tkeep, 0.0), tv.masked_fill(~tkeep, 0.0), tE, tF


@pytest.mark.parametrize("kind", ["linformer", "H(LX)", "(HL)X"])
def test_matches_torch_autograd(kind):
    q, k, v, E, F = _case(11, n=7, m=9)
    keep = np.arange(9) < np.array([9, 5])[:, None, None]
    dout = np.random.default_rng(12).standard_normal((2, 3, 7, 5))
    leaves, tq, tk, tv, tE, tF = _torch_case(q, k, v, E, F, keep)
    if kind == "linformer":
        out, pb = refattn.vjp(refattn.linformer_attention, q, k, v, E, F, mask=keep[..., None, :])
        t_out = torch.softmax(0.5 * tq @ (tE @ tk).transpose(-1, -2), dim=-1) @ (tF @ tv)
    else:
        out, pb = refattn.vjp(refattn.verma_attention, q, k, v, E, F, mask=keep[..., None, :], order=kind)
        h = torch.softmax(0.5 * tq, dim=-1)
        l = torch.softmax(0.5 * (tE @ tk).transpose(-1, -2), dim=-1)
        t_out = h @ (l @ (tF @ tv)) if kind == "H(LX)" else (h @ l) @ (tF @ tv)
    t_out.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=1e-12 * np.abs(out).max())
    for g, t in zip(pb(dout), leaves):
        ref = t.grad.numpy()
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_float32_and_half(backend32):
    """float32 on every device (incl. strict's device without float64): relative error ~ (m + d) u32;
    float16 inputs computed in float32 and cast back (error ~ u16 = 4.9e-4)."""
    q, k, v, E, F = _case(13, n=16, m=16, d=8, dv=8, k=6)
    for fn in (refattn.linformer_attention, refattn.verma_attention):
        want = fn(q, k, v, E, F)
        out = fn(*to(backend32, q, k, v, E, F, dtype="float32"))
        assert out.dtype == backend32.xp.float32
        np.testing.assert_allclose(backend32.to_host(out), want, rtol=1e-5, atol=1e-5)
        half = [a.astype(np.float16) for a in (q, k, v, E, F)]
        out16 = fn(*half)
        assert out16.dtype == np.float16
        np.testing.assert_allclose(out16.astype(np.float64), fn(*(a.astype(np.float64) for a in half)),
                                   rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------------------------------
# The sampler and the Johnson-Lindenstrauss statements
# --------------------------------------------------------------------------------------------------


def test_sampler_same_numbers_on_every_backend(backend):
    r = linformer_projection(5, 12, rng=3, batch=(2,), backend=backend)
    host = (1.0 / np.sqrt(5)) * np.random.default_rng(3).standard_normal((2, 5, 12))  # the sampler's expression
    assert tuple(r.shape) == (2, 5, 12) and r.dtype == backend.xp.float64
    np.testing.assert_array_equal(backend.to_host(r), host)
    r32 = linformer_projection(5, 12, rng=3, batch=(2,), backend=backend, dtype="float32")
    assert r32.dtype == backend.xp.float32


def _jl_draws(k, m, x, n_draws, rng):
    """q_i = k ||R_i x||^2 / ||x||^2 over n_draws independent R_i from the sampler (batches of 500);
    x (m,) or several vectors as the columns of x (m, c)."""
    out = []
    gen = np.random.default_rng(rng)
    for start in range(0, n_draws, 500):
        r = linformer_projection(k, m, rng=gen, batch=(min(500, n_draws - start),))
        out.append(k * np.sum((r @ x) ** 2, axis=-2 if x.ndim == 2 else -1) / np.sum(x**2, axis=0))
    return np.concatenate(out)


def test_jl_arriaga_vempala_tail_and_distribution():
    """jl-av: R iid N(0, 1/k) (k = 64, m = 64, eps = 0.3, N = 4000 draws), for four fixed x
    (e_1, the all-ones vector, a Gaussian and a Cauchy draw).

    (i) Bound: X = #{|q_i/k - 1| > eps} must not exceed binom.isf(1e-6, N, B),
        B = 2 exp(-(eps^2 - eps^3) k / 4) = 0.730 (the claim; false alarm < 1e-6 if it holds).
    (ii) Calibration (so the test can fail): k ||Rx||^2/||x||^2 ~ chi^2_k exactly, so X ~ Bin(N, p0),
        p0 = P(chi2_k > (1+eps)k) + P(chi2_k < (1-eps)k) = 0.086; X must lie in the two-sided
        alpha = 1e-6 binomial acceptance interval. N p0 = 345, so a scale error (N(0, 1) entries,
        q ~ k chi2) or shared rows changes X far beyond the interval.
    (iii) Whole law: KS distance to chi^2_k <= DKW t = sqrt(ln(2/alpha) / (2N)) = 0.0426.
    """
    k, m, eps, n_draws = 64, 64, 0.3, 4000
    rs = np.random.default_rng(20)
    xs = {"e1": np.eye(m)[0], "ones": np.ones(m), "gauss": rs.standard_normal(m), "cauchy": rs.standard_cauchy(m)}
    bound = 2 * math.exp(-(eps**2 - eps**3) * k / 4)
    p0 = stats.chi2.sf((1 + eps) * k, k) + stats.chi2.cdf((1 - eps) * k, k)
    lo, hi = stats.binom.ppf(ALPHA / 2, n_draws, p0), stats.binom.isf(ALPHA / 2, n_draws, p0)
    t_dkw = math.sqrt(math.log(2 / ALPHA) / (2 * n_draws))
    draws = _jl_draws(k, m, np.stack(list(xs.values()), axis=-1), n_draws, 100)  # one set of R for all x
    for i, name in enumerate(xs):
        q = draws[:, i]
        exceed = int(np.sum(np.abs(q / k - 1) > eps))
        assert exceed <= stats.binom.isf(ALPHA, n_draws, bound), name
        assert lo <= exceed <= hi, (name, exceed, lo, hi)
        ks = stats.kstest(q, stats.chi2(k).cdf).statistic
        assert ks <= t_dkw, (name, ks)


def test_linformer_theorem1_additive_form():
    """Linformer Theorem 1 in the form its proof supports (RECIPES.md T1.4 (b)): for fixed Q, K, V
    (n = 256, d = 16, Gaussian), w the first column of V, eps = 0.5 and k = ceil(5 ln n / (eps^2 -
    eps^3)) = 222 <= n, the union bound over the n rows of the inner-product JL lemma (read as the
    additive bound eps ||u_i|| ||w||) gives P(any row i: |u_i R^T R w - u_i . w| > eps ||u_i|| ||w||)
    <= 2 n exp(-(eps^2 - eps^3) k / 4) = 0.497. Over N = 50 draws the number of failing draws must
    not exceed binom.isf(1e-6, 50, 0.497) = 41. P = softmax(QK^T/sqrt(d)) comes from
    refattn.softmax_attention(Q, K, I_n). A sampler with N(0, 1) entries fails every draw.

    Why not the printed relative form ||P~w - Pw|| < eps ||Pw||: it is false (next test)."""
    n, d, eps = 256, 16, 0.5
    k = math.ceil(5 * math.log(n) / (eps**2 - eps**3))
    assert k == 222 and k <= n
    q, kk, v = host_qkv(21, batch=(), n=n, m=n, d=d, dv=1)
    P = refattn.softmax_attention(q, kk, np.eye(n))
    w = v[:, 0]
    gen = np.random.default_rng(22)
    r = linformer_projection(k, n, rng=gen, batch=(50,))
    approx = (P @ np.swapaxes(r, -1, -2)) @ (r @ w)[..., None]
    err = np.abs(approx[..., 0] - P @ w)
    fails = np.any(err > eps * np.linalg.norm(P, axis=-1) * np.linalg.norm(w), axis=-1)
    claimed = 2 * n * math.exp(-(eps**2 - eps**3) * k / 4)
    assert abs(claimed - 0.497) < 1e-3
    assert int(fails.sum()) <= stats.binom.isf(ALPHA, 50, claimed)
    bad = np.sqrt(k) * r[0]  # N(0, 1) entries: the wrong scaling is caught
    bad_err = np.abs(P @ bad.T @ (bad @ w) - P @ w)
    assert np.any(bad_err > eps * np.linalg.norm(P, axis=-1) * np.linalg.norm(w))


def test_linformer_theorem1_relative_form_counterexample():
    """The printed form P(||P~ w - P w|| < eps ||P w||) > 1 - o(1) fails: Q = 0 gives P = 11^T/n;
    w = e_1 - e_2 gives P w = 0 exactly, while P~ w = P R^T R w = (1/n) 1 (1^T R^T R w) != 0 almost
    surely, so the strict inequality fails for every one of 20 draws (probability 0, not 1 - o(1))."""
    n, k = 64, 32
    P = refattn.softmax_attention(np.zeros((n, 4)), np.random.default_rng(23).standard_normal((n, 4)), np.eye(n))
    w = np.eye(n)[0] - np.eye(n)[1]
    assert np.all(P @ w == 0.0)
    r = linformer_projection(k, n, rng=24, batch=(20,))
    approx = (P @ np.swapaxes(r, -1, -2)) @ (r @ w)[..., None]
    assert np.all(np.linalg.norm(approx[..., 0], axis=-1) > 0)


def test_linformer_error_decreases_with_k():
    """Linformer's output error against exact softmax attention, E = F = a uniformly random
    selection of k of the m keys (rows of I_m; the projection for which Linformer is a consistent
    estimator: the output is then the ratio estimator sum_S e^{l_j} v_j / sum_S e^{l_j}). Its
    relative MSE is, to first order, c (m - k) / ((m - 1) k) (sampling without replacement), so the
    fitted slope of log(RMSE / sqrt((m - k)/(m - 1))) against log k is -1/2.

    Setup: m = 512 keys, n = 64 queries, d = dv = 16, logits s q.k with s = 1/8 (std 0.5, weight
    CV^2 = e^0.25 - 1 = 0.28), k in {16, 32, 64, 128}, N = 40 draws per k. Tolerance: the slope's
    standard error from the per-k sample variances (delta method on log mean, propagated through
    the least-squares weights), times 4.9 (two-sided normal alpha = 1e-6), plus 0.02 for the
    second-order O(CV^2 / k) terms of the ratio estimator (<= 0.28/16 = 0.018 in log MSE at k = 16,
    smaller above). Gaussian E = F = R do not converge (see claim lin-thm2 in verification)."""
    rs = np.random.default_rng(25)
    m, n, d, n_draws, scale = 512, 64, 16, 40, 0.125
    q, kk, v = rs.standard_normal((n, d)), rs.standard_normal((m, d)), rs.standard_normal((m, d))
    exact = refattn.softmax_attention(q, kk, v, scale=scale)
    ks = np.array([16, 32, 64, 128])
    log_rmse, se = [], []
    for k in ks:
        idx = np.sort(np.argsort(rs.random((n_draws, m)), axis=-1)[:, :k], axis=-1)
        E = np.zeros((n_draws, k, m))
        E[np.arange(n_draws)[:, None], np.arange(k)[None, :], idx] = 1.0
        out = refattn.linformer_attention(q, kk, v, E, E, scale=scale)
        rel = np.sum((out - exact) ** 2, axis=(-1, -2)) / np.sum(exact**2)
        log_rmse.append(0.5 * np.log(rel.mean() * (m - 1) / (m - k)))
        se.append(0.5 * rel.std(ddof=1) / (rel.mean() * math.sqrt(n_draws)))
    x = np.log(ks)
    slope = np.polyfit(x, log_rmse, 1)[0]
    xc = x - x.mean()
    se_slope = math.sqrt(np.sum((xc / np.sum(xc**2)) ** 2 * np.array(se) ** 2))
    assert abs(slope + 0.5) <= 4.9 * se_slope + 0.02, (slope, se_slope)
    assert np.all(np.diff(log_rmse) < 0)


def test_delta_two_to_minus_n_makes_the_output_independent_of_the_input():
    """verma-delta / lin-thm2: with E = delta R, delta = 2^-n (n = 256), every logit is below 2^-200
    in magnitude, so exp rounds to exactly 1, the softmax over k is exactly uniform and every
    output row of Linformer is bitwise the mean of the rows of F V; Verma's L is exactly uniform."""
    n = 256
    q, k, v = host_qkv(26, batch=(), n=n, m=n, d=16, dv=8)
    r = linformer_projection(32, n, rng=27)
    E, F = linformer.verma_projections(r, delta=2.0**-n)
    out = refattn.linformer_attention(q, k, v, E, F)
    assert np.all(out == out[0])
    _, res = linformer.verma_forward(q, k, v, E, F)
    assert np.all(res.l == res.l[0, 0])


# --------------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linformer", "H(LX)", "(HL)X"])
def test_closed_form_cost_equals_counted(kind):
    q, k, v, E, F = _case(28, n=7, m=9, k=4)
    E = np.broadcast_to(E, (2, 3, 4, 9)).copy()
    F = np.broadcast_to(F, (2, 3, 4, 9)).copy()
    if kind == "linformer":
        counted = measure(refattn.linformer_attention, q, k, v, E, F)
        closed = linformer.cost(7, 9, 4, 5, 4, batch=6)
    else:
        counted = measure(refattn.verma_attention, q, k, v, E, F, order=kind)
        closed = linformer.verma_cost(7, 9, 4, 5, 4, batch=6, order=kind)
    assert counted.flops == closed.flops
    assert counted.transcendentals == closed.transcendentals


@pytest.mark.parametrize("n,m,d,dv,k", [(7, 9, 4, 5, 4), (16, 16, 8, 3, 1), (5, 12, 2, 6, 12)])
def test_module_docstring_cost_formula_is_what_cost_counts(n, m, d, dv, k):
    """The total the module docstring states, 2 k m (d + dv) + 2 n k (d + dv) + 3 n k + n d + n dv - n,
    is cost() exactly and what the counting namespace counts (the docstring once left out 3 n k + n d)."""
    formula = 2 * k * m * (d + dv) + 2 * n * k * (d + dv) + 3 * n * k + n * d + n * dv - n
    assert "2 k m (d + d_v) + 2 n k (d + d_v) + 3 n k + n d + n d_v - n" in linformer.__doc__
    assert linformer.cost(n, m, d, dv, k).flops == formula
    q, kk, v = host_qkv(31, batch=(), n=n, m=m, d=d, dv=dv)
    rs = np.random.default_rng(32)
    E, F = rs.standard_normal((2, k, m))
    assert measure(refattn.linformer_attention, q, kk, v, E, F).flops == formula


@pytest.mark.parametrize("fn", [refattn.linformer_attention, refattn.verma_attention])
def test_check_finite_default_and_flag(fn):
    """check_finite=True by default (NaN in any input raises naming it); False lets NaN propagate;
    only True/False are accepted."""
    q, k, v, E, F = _case(33)
    bad = q.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="q must be finite"):
        fn(bad, k, v, E, F)
    badF = F.copy()
    badF[0, 0] = np.inf
    with pytest.raises(ValueError, match="F must be finite"):
        fn(q, k, v, E, badF)
    with np.errstate(invalid="ignore"):
        out = fn(bad, k, v, E, F, check_finite=False)
    assert np.isnan(out[0, 0, 0]).all() and np.isfinite(out[1]).all()
    for flag in (1, "yes", None):
        with pytest.raises(TypeError, match="check_finite must be True or False"):
            fn(q, k, v, E, F, check_finite=flag)


def test_verma_total_cost_grows_with_k():
    """The whole modified Linformer (E K and F V included) is not independent of k: its closed-form
    FLOPs increase by exactly 2 m (d + dv) + 2 d dv + 5 d per unit of k (order H(LX))."""
    n, d = 4096, 64
    c = [linformer.verma_cost(n, n, d, d, k).flops for k in (64, 128, 256)]
    per_k = 2 * n * (d + d) + 2 * d * d + 5 * d
    assert c[1] - c[0] == 64 * per_k and c[2] - c[1] == 128 * per_k
