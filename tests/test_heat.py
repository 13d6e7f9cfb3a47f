"""HEAT made precise: Eckart-Young, the three readings, gradients through the truncated SVD, eq. (10).

Tolerances (float64, u = 2^-53 = 1.1e-16):
- Eckart-Young values (RECIPES T7.1): |‖A - A_r‖ - tail| <= 16 max(p, c) u ‖A‖ (backward-stable SVD,
  plus the product U_r S_r V_r^T and the norm evaluations).
- "Same function, two computations" (r = full rank against exact attention, the QR-factored logits
  against a direct SVD of the logits matrix, the features reading against the literal projection
  (Q P)(K P)^T): the two logits matrices differ by at most c (n + m + d) u ‖S‖_2 (backward stability of
  QR and SVD; c = 64 is generous), and softmax rows are 1-Lipschitz from the sup norm of the logits to
  the l1 norm of the weights times 2, so |Δout| <= 2 max|ΔS| max|v|. The tests use
  tol = 2 * 64 (n + m + d) u ‖S‖_2 max|v|.
- torch autograd: the same maths in torch (torch's own SVD/QR and its SVD backward). The two
  computations differ by rounding amplified by at most the SVD's condition 1/gap: tol =
  64 (n + m + d) u (sigma_1 / gap) max|grad| with the gap asserted to be >= 1e-3 sigma_1 for the seeds
  used (so tol <= 1e-10 relative).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refattn
from refattn.cost import measure
from refattn.methods import heat
from refattn.testing import assert_allclose, gradcheck

from .conftest import host_qkv, to

torch = pytest.importorskip("torch")
U = 2.0**-53
OPTIONS = [("logits", "k"), ("features", "k"), ("features", "qk")]


def _haar(rs, p):
    g = rs.standard_normal((p, p))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))


def _with_spectrum(rs, p, c, s):
    """A = U diag(s) V^T with Haar U, V (refattn.random.orthogonal's construction, sign-fixed QR)."""
    k = min(p, c)
    return _haar(rs, p)[:, :k] @ np.diag(s) @ _haar(rs, c)[:, :k].T


def _np_softmax_attention(s, v, keep=None):
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


# --------------------------------------------------------------------------------------------
# Eckart-Young (heat-eq5): values, optimality, (non-)uniqueness
# --------------------------------------------------------------------------------------------

SPECTRA = {
    "gaps": lambda k: np.geomspace(10.0, 0.1, k),
    "ties": lambda k: np.repeat(np.linspace(5.0, 1.0, (k + 1) // 2), 2)[:k],  # pairs of equal values
}


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (20, 20), (30, 12)])
@pytest.mark.parametrize("kind", ["gaps", "ties"])
def test_eckart_young_error_equals_tail(backend, shape, kind):
    """‖A - A_r‖_2 = sigma_{r+1} and ‖A - A_r‖_F = (sum_{i>r} sigma_i^2)^(1/2), for every rank r whose
    cut does not split a tie (a split tie is rejected: the truncation is not unique there)."""
    rs = np.random.default_rng(sum(shape))
    k = min(shape)
    s = SPECTRA[kind](k)
    a = _with_spectrum(rs, *shape, s)
    tol_2 = 16 * max(shape) * U * s[0]
    tol_f = 16 * max(shape) * U * np.linalg.norm(s)
    for r in range(1, k + 1):
        if r < k and s[r - 1] == s[r]:
            with pytest.raises(ValueError, match="tied"):
                heat.truncate(backend.asarray(a), rank=r)
            continue
        ar = backend.to_host(heat.truncate(backend.asarray(a), rank=r))
        tail = s[r:]
        err2 = np.linalg.norm(a - ar, 2)
        errf = np.linalg.norm(a - ar, "fro")
        assert abs(err2 - (tail[0] if tail.size else 0.0)) <= tol_2
        assert abs(errf - np.sqrt(np.sum(tail**2))) <= tol_f
        assert np.linalg.matrix_rank(ar, tol=1e-9 * s[0]) == r


@st.composite
def _ey_case(draw):
    p = draw(st.integers(2, 9))
    c = draw(st.integers(2, 9))
    r = draw(st.integers(1, min(p, c) - 1))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["factors", "perturbed", "adversarial"]))
    t = draw(st.floats(1e-6, 1.0))
    return p, c, r, seed, kind, t


@given(_ey_case())
def test_eckart_young_no_rank_r_matrix_does_better(case):
    """For competitors B of rank <= r -- random factors X Y^T, perturbations (U_r + tG) S_r (V_r + tH)^T
    of the truncation, and "adversarial" ones after 30 gradient steps on ‖A - X Y^T‖_F^2 from a random
    start -- ‖A - B‖ >= ‖A - A_r‖ - 16 max(p, c) u ‖A‖ in the spectral and Frobenius norms (RECIPES T7.2)."""
    p, c, r, seed, kind, t = case
    rs = np.random.default_rng(seed)
    a = rs.standard_normal((p, c))
    ar = heat.truncate(a, rank=r)
    u, s, vt = np.linalg.svd(a)
    if kind == "factors":
        b = rs.standard_normal((p, r)) @ rs.standard_normal((r, c))
    elif kind == "perturbed":
        b = (u[:, :r] + t * rs.standard_normal((p, r))) @ np.diag(s[:r]) @ (vt[:r] + t * rs.standard_normal((r, c)))
    else:
        x, y = rs.standard_normal((p, r)), rs.standard_normal((c, r))
        lr = 0.5 / (s[0] ** 2 + 1.0)
        for _ in range(30):
            e = x @ y.T - a
            x, y = x - lr * e @ y, y - lr * e.T @ x
        b = x @ y.T
    assert np.linalg.matrix_rank(b) <= r
    for order in (2, "fro"):
        slack = 16 * max(p, c) * U * np.linalg.norm(a, order)
        assert np.linalg.norm(a - b, order) >= np.linalg.norm(a - ar, order) - slack


def test_spectral_minimiser_is_a_set_frobenius_is_unique():
    """Every B_eta = sum_{i<=r} (sigma_i - eta_i) u_i v_i^T with |eta_i| <= sigma_{r+1} attains the spectral
    optimum sigma_{r+1} (so "the" spectral minimiser is a set), while its Frobenius error exceeds the
    optimum by sum eta_i^2 > 0 (the Frobenius minimiser is unique when sigma_r > sigma_{r+1})."""
    rs = np.random.default_rng(3)
    s = np.array([9.0, 7.0, 4.0, 2.0, 1.0, 0.5])
    a = _with_spectrum(rs, 8, 6, s)
    u, _, vt = np.linalg.svd(a)
    r = 3
    for _ in range(10):
        eta = rs.uniform(-s[r], s[r], r)
        b = u[:, :r] @ np.diag(s[:r] - eta) @ vt[:r]
        assert abs(np.linalg.norm(a - b, 2) - s[r]) <= 16 * 8 * U * s[0]
        excess = np.linalg.norm(a - b, "fro") ** 2 - np.sum(s[r:] ** 2)
        assert abs(excess - np.sum(eta**2)) <= 64 * 8 * U * np.sum(s**2)
        assert excess > 0


# --------------------------------------------------------------------------------------------
# The readings: definitions checked against independent numpy computations
# --------------------------------------------------------------------------------------------

def _tol(q, k, v, scale):
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s2 = max(np.linalg.norm(scale * qi @ ki.T, 2) for qi, ki in zip(q.reshape(-1, n, d), k.reshape(-1, m, d)))
    return float(2 * 64 * (n + m + d) * U * s2 * np.abs(v).max())


@pytest.mark.parametrize("reading,basis", OPTIONS)
@pytest.mark.parametrize("maskkind", ["none", "causal", "bool"])
def test_full_rank_reproduces_exact_attention(backend, reading, basis, maskkind):
    """r = the structural rank: trunc_r is the identity on every reachable matrix, so each reading equals
    exact softmax attention (same mask). Shapes with d < n, m (logits rank d) and d > n (rank n)."""
    for n, m, d in [(7, 9, 4), (3, 5, 6)]:
        q, k, v = host_qkv(20 + d, n=n, m=m, d=d, dv=3)
        kw = {}
        if maskkind == "causal":
            kw["causal"] = True
        elif maskkind == "bool":
            kw["mask"] = backend.asarray(np.random.default_rng(1).random((n, m)) < 0.7)
        r = heat.structural_rank(n, m, d, reading=reading, basis=basis)
        args = to(backend, q, k, v)
        got = heat.heat_attention(*args, rank=r, reading=reading, basis=basis, **kw)
        want = refattn.softmax_attention(*args, **kw)
        assert_allclose(got, want, rtol=0, atol=_tol(q, k, v, 1 / math.sqrt(d)))


def test_logits_reading_equals_direct_svd_of_the_logits():
    """The QR-factored logits path equals softmax(trunc_r(s Q K^T)) V with numpy's SVD of the n x m
    logits matrix (an independent computation), with masks applied after the truncation."""
    q, k, v = host_qkv(30, batch=(2,), n=10, m=12, d=6, dv=4)
    keep = np.random.default_rng(2).random((10, 12)) < 0.8
    for r in (1, 3, 5, 6):
        s = q @ np.swapaxes(k, -1, -2) / math.sqrt(6)
        u, sv, vt = np.linalg.svd(s)
        sr = (u[..., :r] * sv[..., None, :r]) @ vt[..., :r, :]
        for kw, kp in (({}, None), ({"mask": keep}, keep), ({"causal": True}, np.tril(np.ones((10, 12), bool)))):
            got = heat.heat_attention(q, k, v, rank=r, reading="logits", **kw)
            want = _np_softmax_attention(sr, v, kp)
            np.testing.assert_allclose(got, want, rtol=0, atol=_tol(q, k, v, 1 / math.sqrt(6)))


@pytest.mark.parametrize("basis", ["k", "qk"])
def test_features_reading_equals_literal_projection(basis):
    """softmax(s (Q P_r)(K P_r)^T) V with P_r the top-r right singular vectors of K or of [Q; K] (numpy)."""
    q, k, v = host_qkv(31, batch=(2,), n=8, m=9, d=6, dv=4)
    for r in (1, 2, 4, 6):
        x = k if basis == "k" else np.concatenate([q, k], axis=-2)
        pr = np.swapaxes(np.linalg.svd(x)[2][..., :r, :], -1, -2)
        s = (q @ pr) @ np.swapaxes(k @ pr, -1, -2) / math.sqrt(6)
        got = heat.heat_attention(q, k, v, rank=r, reading="features", basis=basis)
        np.testing.assert_allclose(got, _np_softmax_attention(s, v), rtol=0, atol=_tol(q, k, v, 1 / math.sqrt(6)))


def test_hadamard_reading_against_naive_formula_and_d1():
    """O_ic = sum_j softmax_j(s q_ic k_jc) v_jc (naive numpy, float64, relative 1e-13: m-term sums),
    with a causal mask and query blocks that do not divide n; with d = 1 it *is* softmax attention."""
    q, k, v = host_qkv(32, batch=(2,), n=7, m=7, d=5, dv=5)
    s = 0.7 * q[..., :, None, :] * k[..., None, :, :]
    keep = np.tril(np.ones((7, 7), bool))[..., None]
    for kw, kp in (({}, None), ({"causal": True}, keep)):
        ss = s if kp is None else np.where(kp, s, -np.inf)
        p = np.exp(ss - ss.max(-2, keepdims=True))
        want = np.sum(p / p.sum(-2, keepdims=True) * v[..., None, :, :], axis=-2)
        got = heat.heat_attention(q, k, v, reading="hadamard", scale=0.7, block_q=3, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
    q1, k1, v1 = host_qkv(33, n=5, m=6, d=1, dv=1)
    np.testing.assert_allclose(heat.heat_attention(q1, k1, v1, reading="hadamard", causal=True),
                               refattn.softmax_attention(q1, k1, v1, causal=True), rtol=1e-13, atol=1e-15)


def test_hadamard_fully_masked_rows_are_zero_with_zero_gradient():
    q, k, v = host_qkv(34, batch=(), n=4, m=5, d=3, dv=3)
    keep = np.ones((4, 5), bool)
    keep[2] = False
    out, pb = refattn.vjp(heat.heat_attention, q, k, v, reading="hadamard", mask=keep)
    g = pb(np.ones_like(out))
    assert np.all(out[2] == 0) and np.all(g.dq[2] == 0) and all(np.isfinite(x).all() for x in g)


# --------------------------------------------------------------------------------------------
# Gradients: finite differences and torch autograd
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reading,basis,r", [("logits", "k", 2), ("logits", "k", 4), ("features", "k", 2),
                                             ("features", "k", 4), ("features", "qk", 3), ("features", "qk", 4),
                                             ("hadamard", "k", None)])
@pytest.mark.parametrize("maskkind", ["none", "causal", "additive"])
def test_gradcheck(backend, reading, basis, r, maskkind):
    q, k, v = host_qkv(40, batch=(2,), n=6, m=7, d=4, dv=4)
    kw = {"rank": r, "reading": reading, "basis": basis}
    if maskkind == "causal":
        kw["causal"] = True
    elif maskkind == "additive":
        kw["mask"] = backend.asarray(np.random.default_rng(3).standard_normal((6, 7)))
    gradcheck(heat.heat_attention, to(backend, q, k, v), kwargs=kw, n_directions=2)


def test_gradcheck_broadcast_heads_and_tall_wide_truncation():
    """k, v shared across heads (their cotangents summed), and the truncation's backward on tall, wide
    and square matrices at ranks below and at min(p, c)."""
    rs = np.random.default_rng(41)
    q = rs.standard_normal((2, 3, 5, 4))
    k, v = rs.standard_normal((2, 1, 6, 4)), rs.standard_normal((1, 6, 2))
    for reading, basis in OPTIONS:
        gradcheck(heat.heat_attention, (q, k, v), kwargs={"rank": 3, "reading": reading, "basis": basis})
    for shape in [(7, 4), (4, 7), (5, 5), (2, 3, 6, 4)]:
        a = rs.standard_normal(shape)
        for r in range(1, min(shape[-2:]) + 1):
            gradcheck(heat.truncate, (a,), kwargs={"rank": r})


def _torch_trunc(x, r):
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :], s


def _torch_heat(q, k, v, reading, basis, r, scale):
    sm = lambda logits: torch.softmax(logits, dim=-1) @ v  # noqa: E731
    if reading == "hadamard":
        p = torch.softmax(scale * q[..., :, None, :] * k[..., None, :, :], dim=-2)
        return (p * v[..., None, :, :]).sum(-2), None
    if reading == "logits":
        sr, s = _torch_trunc(scale * q @ k.transpose(-1, -2), r)
        return sm(sr), s
    if basis == "k":
        kr, s = _torch_trunc(k, r)
        return sm(scale * q @ kr.transpose(-1, -2)), s
    n = q.shape[-2]
    xr, s = _torch_trunc(torch.cat([q, k], dim=-2), r)
    return sm(scale * xr[..., :n, :] @ xr[..., n:, :].transpose(-1, -2)), s


@pytest.mark.parametrize("reading,basis,r", [("logits", "k", 2), ("logits", "k", 4), ("features", "k", 1),
                                             ("features", "k", 3), ("features", "qk", 2), ("features", "qk", 5),
                                             ("hadamard", "k", None)])
def test_torch_autograd_cross_check(reading, basis, r):
    """The definitional formula in torch (a direct SVD of the logits / features; here n, m <= d so every
    singular value of the logits is distinct and non-zero and torch's SVD backward is defined), torch
    autograd against refattn's hand-written backward."""
    n, m, d = 5, 6, 6
    q, k, v = host_qkv(50, batch=(2,), n=n, m=m, d=d, dv=6)
    dout = np.random.default_rng(51).standard_normal((2, n, 6))
    scale = 1 / math.sqrt(d)
    out, pb = refattn.vjp(heat.heat_attention, q, k, v, rank=r, reading=reading, basis=basis)
    grads = pb(dout)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    t_out, s = _torch_heat(tq, tk, tv, reading, basis, r, scale)
    t_out.backward(torch.from_numpy(dout))
    kappa = 1.0
    if s is not None:
        s = s.detach().numpy()
        gaps = np.diff(-s, axis=-1)
        assert gaps.min() >= 1e-3 * s[..., 0].max()
        kappa = s[..., 0].max() / gaps.min()
    tol = 64 * (n + m + d) * U * kappa
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=tol * np.abs(out).max())
    for g, t in zip(grads, (tq, tk, tv)):
        tg = t.grad.numpy()
        np.testing.assert_allclose(g, tg, rtol=0, atol=tol * max(np.abs(tg).max(), 1.0))


def test_torch_cross_check_logits_rank_below_length():
    """n, m > d: the logits have rank d < min(n, m); the torch reference factors through QR (as refattn)
    so that torch's SVD backward never meets the exactly-zero tail."""
    n, m, d, r = 9, 8, 4, 2
    q, k, v = host_qkv(52, batch=(2,), n=n, m=m, d=d, dv=3)
    dout = np.random.default_rng(53).standard_normal((2, n, 3))
    out, pb = refattn.vjp(heat.heat_attention, q, k, v, rank=r, causal=True)
    grads = pb(dout)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    qq, rq = torch.linalg.qr(tq)
    qk, rk = torch.linalg.qr(tk)
    cr, s = _torch_trunc(rq @ rk.transpose(-1, -2) / math.sqrt(d), r)
    logits = qq @ cr @ qk.transpose(-1, -2)
    logits = logits.masked_fill(~torch.tril(torch.ones(n, m, dtype=torch.bool)), -math.inf)
    t_out = torch.softmax(logits, -1) @ tv
    t_out.backward(torch.from_numpy(dout))
    s = s.detach().numpy()
    kappa = s[..., 0].max() / np.diff(-s, axis=-1).min()
    assert kappa < 1e3
    tol = 64 * (n + m + d) * U * kappa
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=tol)
    for g, t in zip(grads, (tq, tk, tv)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=0, atol=tol * np.abs(t.grad.numpy()).max())


# --------------------------------------------------------------------------------------------
# Precision, dtypes, degenerate gaps
# --------------------------------------------------------------------------------------------

def test_float32_and_half(backend32):
    """float32 on every device (incl. array_api_strict without float64) against the float64 oracle:
    SVD/QR backward error ~ 64 (n + m + d) u32 ‖S‖ with u32 = 6e-8, gaps >= 1e-2 sigma_1 for this seed,
    so 1e-3 absolute is ample; float16 is computed in float32 and rounded back (u16 = 4.9e-4)."""
    q, k, v = host_qkv(60, batch=(), n=8, m=8, d=4, dv=4)
    for reading, basis in [*OPTIONS, ("hadamard", "k")]:
        r = None if reading == "hadamard" else 2
        want = heat.heat_attention(q, k, v, rank=r, reading=reading, basis=basis)
        got = heat.heat_attention(*to(backend32, q, k, v, dtype="float32"), rank=r, reading=reading, basis=basis)
        assert got.dtype == backend32.xp.float32
        np.testing.assert_allclose(backend32.to_host(got), want, rtol=0, atol=1e-3)
    out16 = heat.heat_attention(*(a.astype(np.float16) for a in (q, k, v)), rank=2)
    assert out16.dtype == np.float16
    np.testing.assert_allclose(out16.astype(np.float64), heat.heat_attention(q, k, v, rank=2), rtol=0, atol=1e-2)


def test_degenerate_gap_raises_or_warns():
    """sigma_r = sigma_{r+1}: the truncation is not unique, its derivative undefined."""
    rs = np.random.default_rng(61)
    a = _with_spectrum(rs, 6, 5, np.array([4.0, 2.0, 2.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="tied"):
        heat.truncate(a, rank=2)
    with pytest.warns(RuntimeWarning, match="tied"):
        heat.truncate(a, rank=2, errors="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heat.truncate(a, rank=2, errors="ignore")
    heat.truncate(a, rank=1)  # the tie is inside the tail: fine
    heat.truncate(a, rank=3)  # ... inside the top: fine
    # K of numerical rank 2 asked for rank 3 < min(m, d) = 4: sigma_3 = sigma_4 = 0 (to rounding)
    q, k, v = host_qkv(62, batch=(), n=5, m=6, d=4, dv=2)
    k2 = k[:, :2] @ rs.standard_normal((2, 4))
    with pytest.raises(ValueError, match="numerical rank"):
        heat.heat_attention(q, k2, v, rank=3, reading="features")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heat.heat_attention(q, k2, v, rank=2, reading="features")


def test_on_degenerate_is_deprecated_but_works():
    """on_degenerate (heat_attention and truncate) still works, warns DeprecationWarning, and
    cannot be combined with errors."""
    rs = np.random.default_rng(61)
    a = _with_spectrum(rs, 6, 5, np.array([4.0, 2.0, 2.0, 1.0, 0.5]))
    with pytest.warns(DeprecationWarning, match="on_degenerate='warn' is deprecated; use errors='warn'"):
        with pytest.warns(RuntimeWarning, match="tied"):
            heat.truncate(a, rank=2, on_degenerate="warn")
    with pytest.warns(DeprecationWarning, match="on_degenerate='raise' is deprecated"):
        with pytest.raises(ValueError, match="tied"):
            heat.truncate(a, rank=2, on_degenerate="raise")
    q, k, v = host_qkv(62, batch=(), n=5, m=6, d=4, dv=2)
    k2 = k[:, :2] @ rs.standard_normal((2, 4))
    with pytest.warns(DeprecationWarning, match="on_degenerate"):
        with pytest.warns(RuntimeWarning, match="numerical rank"):
            out = heat.heat_attention(q, k2, v, rank=3, reading="features", on_degenerate="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = heat.heat_attention(q, k2, v, rank=3, reading="features", errors="ignore")
    assert np.array_equal(out, same)
    with pytest.raises(TypeError, match="give the failure policy once"):
        heat.heat_attention(q, k2, v, rank=3, reading="features", errors="warn", on_degenerate="warn")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_input():
    q, k, v = host_qkv(70, batch=(), n=5, m=6, d=4, dv=3)
    h = heat.heat_attention
    with pytest.raises(ValueError, match="at most the rank available"):
        h(q, k, v, rank=5)  # logits rank <= min(5, 6, 4) = 4
    with pytest.raises(ValueError, match="at most the rank available"):
        h(q, k, v, rank=5, reading="features")
    with pytest.raises(ValueError, match="at most the rank available"):
        h(q, k, v, rank=5, reading="features", basis="qk")
    with pytest.raises(ValueError, match="positive integer"):
        h(q, k, v, rank=0)
    with pytest.raises(ValueError, match="positive integer"):
        h(q, k, v, rank=-2, reading="features")
    with pytest.raises(TypeError, match="rank must be a positive integer"):
        h(q, k, v, rank=2.0)
    with pytest.raises(TypeError, match="needs rank"):
        h(q, k, v)
    with pytest.raises(ValueError, match="takes no rank"):
        h(q, k, np.zeros((6, 4)), rank=2, reading="hadamard")
    with pytest.raises(ValueError, match="must have d = 4 channels"):
        h(q, k, v, reading="hadamard")
    with pytest.raises(ValueError, match="reading must be one of"):
        h(q, k, v, rank=2, reading="dot")
    with pytest.raises(ValueError, match="basis must be one of"):
        h(q, k, v, rank=2, reading="features", basis="q")
    with pytest.raises(ValueError, match="on_degenerate"):
        h(q, k, v, rank=2, on_degenerate="ignore")
    with pytest.raises(ValueError, match="errors must be one of"):
        h(q, k, v, rank=2, errors="skip")
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        h(q, k, v, rank=2, check_finite=1)
    with pytest.raises(ValueError, match="gap_rtol"):
        h(q, k, v, rank=2, gap_rtol=-1.0)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="q must be finite"):
        h(bad, k, v, rank=2)
    with pytest.raises(ValueError, match="k must be finite"):
        h(q, np.where(k > 1, np.inf, k), v, rank=2, reading="features")
    with pytest.raises(ValueError, match="v must be finite"):
        h(q, k, np.full_like(v, np.nan), rank=2, check_finite=True)
    with pytest.raises(TypeError, match="share one dtype"):
        h(q, k.astype(np.float32), v, rank=2)
    with pytest.raises(ValueError, match="impl must be one of"):
        h(q, k, np.zeros((6, 4)), reading="hadamard", impl="fast")
    with pytest.raises(ValueError, match="block_q"):
        h(q, k, np.zeros((6, 4)), reading="hadamard", block_q=0)
    with pytest.raises(ValueError, match="at most the rank available"):
        heat.truncate(np.ones((3, 4)), rank=4)
    with pytest.raises(TypeError, match="real floating"):
        heat.truncate(np.ones((3, 4), dtype=np.int64), rank=1)
    with pytest.raises(ValueError, match="must be finite"):
        heat.truncate(np.full((3, 4), np.nan), rank=1)


# --------------------------------------------------------------------------------------------
# eq. (10): A (x . y) = (A x) . (A y)
# --------------------------------------------------------------------------------------------

def _eq10_gap(a, x, y):
    return a @ (x * y) - (a @ x) * (a @ y)


@st.composite
def _low_rank_integer_case(draw):
    """A = F G^T with integer factors and rank r < min(p, c) (the paper's hypothesis), integer x, y."""
    p = draw(st.integers(2, 4))
    c = draw(st.integers(2, 4))
    r = draw(st.integers(1, min(p, c) - 1))
    ints = st.integers(-3, 3)
    f = draw(hnp.arrays(np.int64, (p, r), elements=ints))
    g = draw(hnp.arrays(np.int64, (c, r), elements=ints))
    x = draw(hnp.arrays(np.int64, c, elements=ints))
    y = draw(hnp.arrays(np.int64, c, elements=ints))
    return (f @ g.T).astype(float), x.astype(float), y.astype(float)


def test_eq10_fails_shrunk_counterexample():
    """hypothesis searches low-rank integer A (rank < min(p, c), as eq. (10) assumes) and integer x, y for
    a violation and shrinks it; integer arithmetic is exact in float64 here (|entries| <= 3^4 * 16)."""
    from hypothesis import find

    a, x, y = find(_low_rank_integer_case(), lambda c: bool(np.any(_eq10_gap(*c) != 0)),
                   settings=settings(database=None, derandomize=True, max_examples=500))
    assert np.linalg.matrix_rank(a) < min(a.shape)
    assert np.any(_eq10_gap(a, x, y) != 0)
    assert not heat.eq10_holds(a)
    print(f"shrunk counterexample: A = {a.tolist()}, x = {x.tolist()}, y = {y.tolist()}")


def test_eq10_fails_for_random_low_rank_gaussian_a():
    """For Gaussian rank-r A the two sides differ by O(1) relative to their size (here > 0.1), far above
    rounding (~ 4 c u)."""
    rs = np.random.default_rng(80)
    for p, c, r in [(4, 6, 2), (8, 8, 3), (5, 3, 1)]:
        a = rs.standard_normal((p, r)) @ rs.standard_normal((r, c))
        x, y = rs.standard_normal(c), rs.standard_normal(c)
        lhs, rhs = a @ (x * y), (a @ x) * (a @ y)
        assert np.abs(lhs - rhs).max() > 0.1 * max(np.abs(lhs).max(), np.abs(rhs).max())


@st.composite
def _selection_matrix(draw):
    """Rows that are zero or a standard basis vector e_j^T (duplicates allowed: low rank is possible)."""
    p = draw(st.integers(1, 6))
    c = draw(st.integers(1, 6))
    cols = draw(st.lists(st.integers(-1, c - 1), min_size=p, max_size=p))
    a = np.zeros((p, c))
    for i, j in enumerate(cols):
        if j >= 0:
            a[i, j] = 1.0
    return a


@given(_selection_matrix(), st.integers(0, 2**32 - 1))
def test_eq10_holds_exactly_for_selection_matrices(a, seed):
    """If every row of A has at most one non-zero, equal to 1, then A (x . y) == (A x) . (A y) bitwise for
    any real x, y: each side is x_j y_j rounded once (products by 1 and sums with exact zeros are exact)."""
    assert heat.eq10_holds(a)
    rs = np.random.default_rng(seed)
    x, y = rs.standard_normal(a.shape[1]) * 1e3, rs.standard_normal(a.shape[1])
    assert np.array_equal(a @ (x * y), (a @ x) * (a @ y))


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)),
                  elements=st.sampled_from([-2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5, 3.0])))
def test_eq10_characterisation_both_directions(a):
    """eq10_holds(A) iff the identity holds for all x, y. '=>' : exact equality on random x, y; '<=' (the
    contrapositive): when the characterisation fails, the witness it names (x = e_j, y = e_l for two
    non-zeros of a row; x = y = e_j for a single non-zero != 1) violates the identity, exactly."""
    p, c = a.shape
    eye = np.eye(c)
    if heat.eq10_holds(a):
        rs = np.random.default_rng(0)
        x, y = rs.standard_normal(c), rs.standard_normal(c)
        assert np.array_equal(a @ (x * y), (a @ x) * (a @ y))
        return
    bad_rows = [i for i in range(p) if np.count_nonzero(a[i]) > 1 or
                (np.count_nonzero(a[i]) == 1 and a[i][a[i] != 0][0] != 1)]
    assert bad_rows
    row = a[bad_rows[0]]
    nz = np.flatnonzero(row)
    x, y = (eye[nz[0]], eye[nz[1]]) if nz.size > 1 else (eye[nz[0]], eye[nz[0]])
    assert _eq10_gap(a, x, y)[bad_rows[0]] != 0


# --------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reading,basis,r", [("logits", "k", 2), ("logits", "k", 4), ("features", "k", 3),
                                             ("features", "qk", 4), ("hadamard", "k", None)])
def test_counted_cost_equals_closed_form(reading, basis, r):
    """Counted (refattn.cost.measure) == closed form, exactly, for flops and transcendentals: QR and
    SVD follow the refattn.cost.linalg_flops convention on both sides (QR's square roots are
    transcendentals), and the per-op QR/SVD records agree too."""
    q, k, v = host_qkv(90, batch=(2,), n=6, m=7, d=4, dv=4)
    got = measure(heat.heat_attention, q, k, v, rank=r, reading=reading, basis=basis, impl="dense")
    want = heat.cost(6, 7, 4, 4, rank=r, reading=reading, basis=basis, batch=(2,))
    assert got.flops == want.flops
    assert got.transcendentals == want.transcendentals
    for name in ("linalg.qr", "linalg.svd"):
        g, w = got.per_op.get(name), want.per_op.get(name)
        assert (g is None) == (w is None), name
        if g is not None:
            assert (g.flops, g.transcendentals) == (w.flops, w.transcendentals), name


def test_truncate_counted_cost_equals_closed_form():
    """heat.truncate_cost == the counted run of heat.truncate, exactly (flops; no transcendentals)."""
    a = np.random.default_rng(91).standard_normal((2, 7, 5))
    for rank in (2, 5):
        got = measure(heat.truncate, a, rank=rank)
        want = heat.truncate_cost(7, 5, rank=rank, batch=(2,))
        assert (got.flops, got.transcendentals) == (want.flops, want.transcendentals), rank


def test_closed_form_cost_exponent_is_two_for_every_reading():
    """Fitted log-log slope of the closed-form flops in n (n = m, d = 64, r = 16) over n = 2^12..2^16:
    2 to within 0.05 for every reading (the n^2 softmax dominates; at smaller n the O(n d^2) QR/SVD
    terms of the logits reading flatten the local slope) -- none is O(n)."""
    ns = 2 ** np.arange(12, 17)
    for reading, basis, r in [("logits", "k", 16), ("features", "k", 16), ("features", "qk", 16),
                              ("hadamard", "k", None)]:
        fl = [heat.cost(n, n, 64, 64, rank=r, reading=reading, basis=basis).flops for n in ns]
        slope = np.polyfit(np.log(ns), np.log(fl), 1)[0]
        assert abs(slope - 2) < 0.05, (reading, basis, slope)


@pytest.mark.parametrize("reading,basis", OPTIONS)
def test_blockwise_softmax_path_and_key_lengths(reading, basis):
    """The readings pass impl/blocks/masks to refattn.softmax_attention: the blockwise path equals the dense
    one (same sums regrouped: 1e-13 relative, see test_softmax.py), and gradients hold with key_lengths."""
    q, k, v = host_qkv(95, batch=(2,), n=7, m=9, d=4, dv=3)
    kw = {"rank": 2, "reading": reading, "basis": basis, "causal": "bottom_right"}
    a = heat.heat_attention(q, k, v, impl="blockwise", block_q=3, block_k=4, **kw)
    np.testing.assert_allclose(a, heat.heat_attention(q, k, v, impl="dense", **kw), rtol=1e-13, atol=1e-15)
    gradcheck(heat.heat_attention, (q, k, v), kwargs={"rank": 2, "reading": reading, "basis": basis,
                                                      "impl": "blockwise", "block_q": 3, "block_k": 4,
                                                      "key_lengths": np.array([5, 9])})
