r"""Numerical stability (issue 13, part 2), each test with its derived bound.

Notation: ``u`` the unit roundoff of the working dtype (``2^-53`` float64, ``2^-24`` float32),
``gamma_k = k u / (1 - k u)`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1).

Exact softmax attention, forward
--------------------------------
The computed logit ``s^_ij = fl(fl(q_i . k_j) * scale) - max_j`` differs from the exact one by at
most ``delta_i = gamma_{d+3} S_i``, ``S_i = scale max_j sum_c |q_ic k_jc|`` (dot product ``gamma_d``,
scale and the max subtraction one rounding each, the latter of a number ``<= 2 S_i``). The weights
``p_ij = e^{s_ij} / sum_j e^{s_ij}`` are invariant to a common shift, so the perturbed weights satisfy
``p^_ij / p_ij in [e^{-2 delta_i}, e^{2 delta_i}]``; the exps, the row sum, the division and ``P V``
add relative ``gamma_{m+3}`` per term (all terms of the sums are non-negative weights times ``v``).
Hence, with ``V_max = max |v|``,

    ``|out^_ic - out_ic| <= (e^{2 delta_i} - 1 + 2 gamma_{m+3} + 2 nb u) V_max``      (F)

(``nb`` the number of key blocks: the online softmax rescales the accumulator once per block).
The reference is the same formula evaluated in float64 on the same (float32-rounded) inputs; its own
error (F with ``u = 2^-53``) is added to the bound.

Exact softmax attention, backward
---------------------------------
With ``eta_i = 3 (e^{2 delta_i} - 1) + 2 gamma_{m + dv + 3}`` and ``D_i = ||dO_i||_1``:
``dP = dO V^T`` and ``delta = rowsum(O * dO)`` are both ``<= D_i V_max`` in size, so
``|dS^_ij - dS_ij| <= p_ij eta_i D_i V_max`` and, as ``sum_j p_ij = 1``,

    ``|dq^_ic - dq_ic| <= 2 eta_i scale K_max D_i V_max``,
    ``|dk^_jc - dk_jc| <= 2 max_i(eta_i) scale Q_max V_max sum_i D_i``,
    ``|dv^_jc - dv_jc| <= max_i(eta_i) sum_i |dO_ic|``                              (B)

(the factor 2 also covers the last matmul's ``gamma_m`` relative error).
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

import refattn
from refattn.methods import nystrom
from refattn.methods import random_features as rf

U = {np.float64: 2.0**-53, np.float32: 2.0**-24}


def gamma(k: int, u: float) -> float:
    return k * u / (1 - k * u)


# ----------------------------------------------------------------------------------------------
# exact softmax attention
# ----------------------------------------------------------------------------------------------

def _ref_softmax(q, k, v, dout, scale, keep=None):
    """float64 softmax attention and its gradients (stable; the same maths as the docstring)."""
    s = scale * (q @ np.swapaxes(k, -1, -2))
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.exp(s - mx)
    den = p.sum(-1, keepdims=True)
    p = p / np.where(den > 0, den, 1.0)
    out = p @ v
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(out * dout, -1, keepdims=True))
    return out, scale * ds @ k, scale * np.swapaxes(ds, -1, -2) @ q, np.swapaxes(p, -1, -2) @ dout


def _bounds(q, k, v, dout, scale, u, nb):
    """Bounds (F) and (B) of the module docstring, elementwise-broadcastable arrays."""
    d, m, dv = q.shape[-1], k.shape[-2], v.shape[-1]
    S = scale * np.max(np.abs(q) @ np.swapaxes(np.abs(k), -1, -2), axis=-1)       # (..., n)
    delta = gamma(d + 3, u) * S
    vmax = np.abs(v).max()
    f = (np.expm1(2 * delta) + 2 * gamma(m + 3, u) + 2 * nb * u) * vmax
    eta = 3 * np.expm1(2 * delta) + 2 * gamma(m + dv + 3, u) + 2 * nb * u
    dsum = np.abs(dout).sum(-1)                                                     # (..., n)
    bq = 2 * eta * scale * np.abs(k).max() * dsum * vmax
    bk = 2 * eta.max() * scale * np.abs(q).max() * vmax * dsum.sum(-1)
    bv = eta.max() * np.abs(dout).sum(-2)
    return f[..., None], bq[..., None], bk[..., None, None], bv[..., None, :]


def _qkv_with_logits(seed, L, n=6, m=7, d=4, dv=3, batch=(2,)):
    """q, k, v with max |scale q.k| = L exactly (q, k rescaled by sqrt(L / max|s|))."""
    rs = np.random.default_rng(seed)
    q, k = rs.standard_normal((*batch, n, d)), rs.standard_normal((*batch, m, d))
    v, dout = rs.standard_normal((*batch, m, dv)), rs.standard_normal((*batch, n, dv))
    s = (q @ np.swapaxes(k, -1, -2)) / math.sqrt(d)
    c = math.sqrt(L / np.abs(s).max())
    return c * q, c * k, v, dout


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("L", [1.0, 1e2, 1e4])
@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_softmax_large_logits_forward_backward(dtype, L, impl):
    """Logits up to 1e4 in float32 and float64: finite, and within bounds (F) and (B)."""
    q, k, v, dout = (a.astype(dtype) for a in _qkv_with_logits(int(L) % 97, L))
    scale = 1.0 / math.sqrt(q.shape[-1])
    kw = {"impl": impl, "block_k": 3, "block_q": 4} if impl == "blockwise" else {"impl": "dense"}
    nb = math.ceil(k.shape[-2] / 3) if impl == "blockwise" else 1
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
    grads = pb(dout)
    got = [out, *grads]
    assert all(np.all(np.isfinite(g)) and g.dtype == dtype for g in got)
    h = [a.astype(np.float64) for a in (q, k, v, dout)]
    want = _ref_softmax(*h, scale)
    b = _bounds(*h, scale, U[dtype], nb)
    b64 = _bounds(*h, scale, U[np.float64], 1)  # the reference's own error
    for name, g, w, bb, bb64 in zip(("out", "dq", "dk", "dv"), got, want, b, b64, strict=True):
        err = np.abs(g.astype(np.float64) - w)
        assert np.all(err <= bb + bb64), f"{name}: max err/bound {np.max(err / (bb + bb64)):.3g}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_softmax_all_masked_rows_zero_and_no_nan(dtype, impl):
    """Fully masked query rows (documented: zeros, zero gradients, never NaN), even with logits 1e4."""
    q, k, v, dout = (a.astype(dtype) for a in _qkv_with_logits(3, 1e4))
    keep = np.ones(q.shape[:-1] + (k.shape[-2],), bool)
    keep[..., 1, :] = False
    keep[..., 4, :] = False
    kw = {"impl": impl, "block_k": 3} if impl == "blockwise" else {"impl": impl}
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, mask=keep, **kw)
    dq, dk, dv = pb(dout)
    for g in (out, dq, dk, dv):
        assert np.all(np.isfinite(g))
    assert not np.any(out[..., [1, 4], :]) and not np.any(dq[..., [1, 4], :])
    # every key masked for every row: all zeros
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, mask=np.zeros_like(keep), **kw)
    assert not np.any(out) and not any(np.any(g) for g in pb(dout))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_single_key_is_exact(dtype):
    """m = 1: p = exp(0) / 1 = 1 exactly, so out == v (bit for bit) at any logit size, dv == dout
    summed over queries (exact for one query), and dq, dk = s dS k, s dS^T q with
    |dS| = |dO.v - O.dO| <= gamma_dv sum|dO||v| (the two sums differ only by rounding)."""
    q, k, v, dout = (a.astype(dtype) for a in _qkv_with_logits(5, 1e4, n=4, m=1))
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v)
    np.testing.assert_array_equal(out, np.broadcast_to(v, out.shape))
    dq, dk, dv = pb(dout)
    u = U[dtype]
    ds_bound = gamma(v.shape[-1], u) * (np.abs(dout) * np.abs(v)).sum(-1)       # (..., n)
    scale = 1 / math.sqrt(q.shape[-1])
    assert np.all(np.abs(dq) <= 2 * scale * ds_bound[..., None] * np.abs(k) + 1e-300)
    assert np.all(np.abs(dk) <= 2 * scale * (ds_bound[..., None] * np.abs(q)).sum(-2, keepdims=True) + 1e-300)
    np.testing.assert_allclose(dv, dout.sum(-2, keepdims=True), rtol=gamma(q.shape[-2], u), atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_single_query(dtype):
    """n = 1 with logits up to 1e4: bounds (F), (B)."""
    q, k, v, dout = (a.astype(dtype) for a in _qkv_with_logits(6, 1e4, n=1, m=9))
    scale = 1 / math.sqrt(q.shape[-1])
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v)
    h = [a.astype(np.float64) for a in (q, k, v, dout)]
    for g, w, bb, bb64 in zip((out, *pb(dout)), _ref_softmax(*h, scale), _bounds(*h, scale, U[dtype], 1),
                              _bounds(*h, scale, U[np.float64], 1), strict=True):
        assert np.all(np.abs(g - w) <= bb + bb64)


# ----------------------------------------------------------------------------------------------
# random features with their stabiliser at large norms
# ----------------------------------------------------------------------------------------------

def _logdomain(q, k, v, w, features):
    """The positive / hyperbolic random-feature estimate, evaluated in the log domain in float64:
    A_ij = sum_l exp(a_il + b_jl) with a = [x W^T] - |x|^2/2 (hyperbolic: [x W^T, -x W^T]); the
    constant factors of the feature maps cancel between numerator and normaliser."""
    def expo(x):
        xw = x @ w.T
        if features == "hyperbolic":
            xw = np.concatenate([xw, -xw], axis=-1)
        return xw - (x * x).sum(-1, keepdims=True) / 2
    a, b = expo(q), expo(k)
    la = np.logaddexp.reduce(a[..., :, None, :] + b[..., None, :, :], axis=-1)
    p = np.exp(la - la.max(-1, keepdims=True))
    return (p @ v) / p.sum(-1, keepdims=True), float(np.abs(a).max() + np.abs(b).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("features", ["positive", "hyperbolic"])
@pytest.mark.parametrize("norm", [10.0, 100.0])
def test_random_features_stabiliser_at_large_norms(dtype, features, norm):
    """|q|, |k| ~ norm * sqrt(d): exponents E up to ~1e5 (exp under/overflows at ~700 in float64, ~88
    in float32). Without the stabiliser: NonPositiveNormalizerError (or the overflow ValueError), as
    documented. With it: finite forward and backward, and the forward within the log-domain value:
    each exponent (size <= E) is rounded with absolute error <= gamma_{d+3} E, each weight (a sum of
    D positive terms) then has relative error <= e^{2 gamma_{d+3} E} - 1 + gamma_{2D}, and the
    output, a convex combination of values, absolute error <= 2 (e^{2 gamma_{d+3} E} - 1 +
    gamma_{2D + m + 3}) max|v|; plus the float64 reference's own error (same bound, u = 2^-53)."""
    rs = np.random.default_rng(11)
    d, D, n, m = 4, 16, 5, 6
    q, k = norm * rs.standard_normal((2, n, d)), norm * rs.standard_normal((2, m, d))
    v, w, dout = rs.standard_normal((2, m, 3)), rs.standard_normal((D, d)), rs.standard_normal((2, n, 3))
    args = [a.astype(dtype) for a in (q, k, v, w)]
    if norm > 10:  # exponents ~ -1e4: exp underflows without the shift
        with pytest.raises((rf.NonPositiveNormalizerError, ValueError), match="stabilize=True"):
            refattn.random_feature_attention(*args, features=features, stabilize=False, scale=1.0)
    if norm > 10 and dtype == np.float32:
        # The shifts are per query row and per key set, so a_il + b_jl - shifts can still fall below
        # float32's exp range (-103) when the maximising features of q_i and k_j differ: documented
        # as NonPositiveNormalizerError "norms are too large for this dtype", never a silent answer.
        with pytest.raises(rf.NonPositiveNormalizerError, match="too large for this dtype"):
            refattn.random_feature_attention(*args, features=features, scale=1.0)
        return
    out, pb = refattn.vjp(refattn.random_feature_attention, *args, features=features, scale=1.0)
    grads = pb(dout.astype(dtype))
    assert all(np.all(np.isfinite(g)) for g in (out, *grads))
    h = [a.astype(np.float64) for a in args]
    want, e = _logdomain(*h, features)
    assert e > (1e3 if norm > 10 else 50)
    dd = 2 * D if features == "hyperbolic" else D

    def bound(u):
        return 2 * (math.expm1(2 * gamma(d + 3, u) * e) + gamma(2 * dd + m + 3, u)) * np.abs(v).max()
    assert np.all(np.abs(out - want) <= bound(U[dtype]) + bound(U[np.float64]))


# ----------------------------------------------------------------------------------------------
# Nystrom: the iterative pseudoinverse on ill-conditioned landmark matrices
# ----------------------------------------------------------------------------------------------

def _ill_conditioned_softmax_matrix(cond_target, m=6, seed=0):
    """A = softmax(Q~ K~^T) whose landmarks are two clusters + tiny perturbations: nearly rank 2."""
    rs = np.random.default_rng(seed)
    base = rs.standard_normal((2, 4))
    ql = base[np.arange(m) % 2] + cond_target * rs.standard_normal((m, 4))
    kl = base[np.arange(m) % 2] + cond_target * rs.standard_normal((m, 4))
    s = ql @ kl.T
    p = np.exp(s - s.max(-1, keepdims=True))
    return ql, kl, p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("eps", [1e-3, 1e-6])
def test_nystrom_ill_conditioned_pinv_is_detected_and_reported(eps):
    """On a nearly singular landmark matrix (cond ~ 1/eps^2) the paper's 6 iterations do not reach
    A^+ (the small singular values are not yet inverted; module docstring). That is the method as
    published, returned silently by default; ``pinv_tol`` detects it: PinvConvergenceError whose
    message reports the residual ||I - A Z_J||_F / sqrt(m), checked here against the recomputed one.
    A start that diverges (init_scale above 2 / s_max^2) is reported by default."""
    ql, kl, a = _ill_conditioned_softmax_matrix(eps)
    s = np.linalg.svd(a, compute_uv=False)
    assert s[0] / s[-1] > 1e3
    z = nystrom.iterative_pinv(a)  # no error by default: the defined fixed-J result
    resid = np.linalg.norm(np.eye(6) - a @ z) / math.sqrt(6)
    assert resid > 1e-3  # not converged: the ill-conditioning is real
    with pytest.raises(nystrom.PinvConvergenceError, match="did not converge") as info:
        nystrom.iterative_pinv(a, pinv_tol=1e-8)
    reported = float(re.search(r"sqrt\(m\) = ([0-9.eE+-]+)", str(info.value)).group(1))
    assert reported == pytest.approx(resid, rel=1e-2)  # printed with 3 significant digits
    # through the attention: the same detection
    rs = np.random.default_rng(1)
    q, k, v = rs.standard_normal((8, 4)), rs.standard_normal((8, 4)), rs.standard_normal((8, 2))
    with pytest.raises(nystrom.PinvConvergenceError, match="did not converge"):
        refattn.nystrom_attention(q, k, v, ql, kl, scale=1.0, pinv_tol=1e-8)
    # divergence: alpha = 5 / s_max^2 puts e_0 = 1 - alpha s_max^2 = -4, and e <- e^3 (3 + e) / 4
    # gives 16, then ~1.9e4: the residual grows at once (NumPy's overflow warnings are incidental)
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(nystrom.PinvConvergenceError, match="diverged|non-finite"):
            nystrom.iterative_pinv(a, init_scale=5.0 / s[0] ** 2)
        with pytest.warns(nystrom.PinvConvergenceWarning):
            nystrom.iterative_pinv(a, init_scale=5.0 / s[0] ** 2, errors="warn")
        # Not flagged as divergence (documented: only pinv_tol catches it): alpha = 3 / s_max^2 gives
        # e_0 = -2, a fixed point of e^3 (3 + e) / 4, so the residual stays put instead of growing.
        z = nystrom.iterative_pinv(a, init_scale=3.0 / s[0] ** 2)
        assert np.linalg.norm(np.eye(6) - a @ z) > 1.0
        with pytest.raises(nystrom.PinvConvergenceError, match="did not converge"):
            nystrom.iterative_pinv(a, init_scale=3.0 / s[0] ** 2, pinv_tol=1e-3)


def test_nystrom_ill_conditioned_converges_with_enough_iterations():
    """cond(A) ~ 1e6 (not singular): about log_3.25(1 / (alpha s_min^2)) + 4 iterations reach A^+;
    the residual then sits at the rounding level, ||I - A Z|| <= c m u cond(A) (c = 10 here, the
    Newton-Schulz-type iteration's attainable accuracy)."""
    _, _, a = _ill_conditioned_softmax_matrix(1e-3, seed=2)
    s = np.linalg.svd(a, compute_uv=False)
    alpha = 1 / (np.abs(a).sum(0).max() * np.abs(a).sum(1).max())
    j = math.ceil(math.log(1 / (alpha * s[-1] ** 2)) / math.log(3.25)) + 4
    z = nystrom.iterative_pinv(a, iterations=j, pinv_tol=10 * 6 * U[np.float64] * s[0] / s[-1])
    np.testing.assert_allclose(z, np.linalg.inv(a), rtol=0,
                               atol=10 * 6 * U[np.float64] * (s[0] / s[-1]) * np.abs(np.linalg.inv(a)).max())


# ----------------------------------------------------------------------------------------------
# linear attention with tiny normalisers
# ----------------------------------------------------------------------------------------------

def _linear_logdomain(q, k, v):
    """elu+1 linear attention for q, k < 0 (phi = exp): w_ij = sum_c exp(q_ic + k_jc), log domain."""
    la = np.logaddexp.reduce(q[..., :, None, :] + k[..., None, :, :], axis=-1)
    p = np.exp(la - la.max(-1, keepdims=True))
    return (p @ v) / p.sum(-1, keepdims=True), la


@pytest.mark.parametrize("dtype,shift", [(np.float64, -5.0), (np.float64, -300.0), (np.float64, -345.0),
                                         (np.float32, -35.0), (np.float32, -41.0)])
def test_linear_attention_tiny_normalisers(dtype, shift):
    """q, k shifted to large negative values: phi = elu + 1 = exp, normalisers phi(q_i).sum_j phi(k_j)
    down to ~1e-300 (float64) / ~1e-36 (float32), still normal numbers. With eps = 0 all terms are
    positive, so numerator and normaliser have relative error <= gamma_{d+m+2} and the output (a
    convex combination of values) absolute error <= 2 gamma_{d+m+3} max|v| (no cancellation, the
    tiny scale cancels in the ratio). The float64 log-domain reference rounds q_ic + k_jc (size
    <= E = max|q| + max|k|) with absolute error u E, so its own error is <= 2 expm1(3 u E) max|v|.
    With the default eps = 1e-6 the output is biased by the
    documented factor r/(r + eps): checked exactly against that formula."""
    rs = np.random.default_rng(4)
    n, m, d = 5, 7, 3
    q = (rs.standard_normal((2, n, d)) - 1 + shift).astype(dtype)
    k = (rs.standard_normal((2, m, d)) - 1 + shift).astype(dtype)
    v = rs.standard_normal((2, m, 2)).astype(dtype)
    h = [a.astype(np.float64) for a in (q, k, v)]
    want, la = _linear_logdomain(*h)
    r = np.exp(np.logaddexp.reduce(la, axis=-1))                       # the exact normaliser
    tiny = np.finfo(dtype).tiny
    assert np.all(r >= tiny) and r.max() < 1e-2
    out = refattn.linear_attention(q, k, v, eps=0.0)
    u = U[dtype]
    e = np.abs(h[0]).max() + np.abs(h[1]).max()
    ref_err = 2 * math.expm1(3 * U[np.float64] * e) * np.abs(v).max()
    assert np.all(np.abs(out - want) <= 2 * gamma(d + m + 3, u) * np.abs(v).max() + ref_err)
    with np.errstate(under="ignore"):
        out_eps = refattn.linear_attention(q, k, v)                    # eps = 1e-6 (fast-transformers)
    biased = want * (r / (r + 1e-6))[..., None]
    assert np.all(np.abs(out_eps - biased) <= 2 * gamma(d + m + 4, u) * np.abs(v).max() + ref_err + tiny)


def test_linear_attention_underflowing_normalisers_documented():
    """Below the normal range the normaliser is subnormal (relative accuracy lost) and then 0: with
    eps = 0 a fully underflowed row comes back as zeros, like a query that sees no key (linear module
    docstring, "Tiny normalisers"). This test pins that documented limit."""
    rs = np.random.default_rng(4)
    q = rs.standard_normal((5, 3)) - 400.0
    k = rs.standard_normal((7, 3)) - 400.0
    v = rs.standard_normal((7, 2))
    with warnings.catch_warnings(), np.errstate(under="ignore"):
        out = refattn.linear_attention(q, k, v, eps=0.0)
    assert not np.any(out)
    want, _ = _linear_logdomain(q, k, v)
    assert np.all(np.abs(want) > 0)  # the true answer is not zero: a limit, documented
