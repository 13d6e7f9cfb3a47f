"""Nystromformer attention: landmarks, exact and iterative pseudoinverse, gradients, masks, cost.

Tolerances (float64, unit roundoff u = 2^-53 = 1.1e-16, gamma_k = k u / (1 - k u)):

* Same algorithm on two backends (numpy, array_api_strict, torch): the same operations in possibly
  another summation order; each entry passes through ~6 matrix products of inner size <= max(n, m),
  softmaxes and J iterations whose error is amplified by at most cond(A) (pinv) -> relative
  differences <= 64 (n + m) u cond(A); the inputs here have cond(A) < 1e3, so 1e-10 relative is a
  safe bound, and 1e-12 is used where cond(A) < 10 (stated per test).
* Identities that hold exactly in real arithmetic (m = n exactness, compaction of masked keys):
  the backward-stability bound of an SVD pseudoinverse gives |error| <= c n u cond(S) |V|; the tests
  use c = 100 with cond from the kept singular values (RECIPES.md T4.6).
* gradcheck derives its own tolerance (refattn.testing.gradcheck docstring).
"""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refattn
from refattn.cost import measure
from refattn.methods import nystrom as N
from refattn.testing import assert_allclose, gradcheck

from .conftest import host_qkv, to

U64 = 2.0**-53
U32 = 2.0**-24


def _cond(a):
    s = np.linalg.svd(np.asarray(a), compute_uv=False)
    return float(np.max(s[..., 0] / s[..., -1]))


def _dense_reference(q, k, v, m, *, pinv="exact", iterations=6, scale=None):
    """Plain NumPy statement of the formula (segment means by explicit loops over segment_bounds)."""
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    qt = np.stack([q[..., a:b, :].mean(-2) for a, b in N.segment_bounds(q.shape[-2], m)], -2)
    kt = np.stack([k[..., a:b, :].mean(-2) for a, b in N.segment_bounds(k.shape[-2], m)], -2)

    def sm(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    t = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
    f, a, b = sm(s * q @ t(kt)), sm(s * qt @ t(kt)), sm(s * qt @ t(k))
    if pinv == "exact":
        z = np.linalg.pinv(a)
    else:
        alpha = 1 / (np.abs(a).sum(-2).max(-1) * np.abs(a).sum(-1).max(-1))
        z = np.swapaxes(a, -1, -2) * alpha[..., None, None]
        eye = np.eye(a.shape[-1])
        for _ in range(iterations):
            x = a @ z
            z = 0.25 * z @ (13 * eye - x @ (15 * eye - x @ (7 * eye - x)))
    return f @ z @ b @ v, a


# ----------------------------------------------------------------------------- landmarks

@pytest.mark.parametrize(("n", "m"), [(12, 4), (12, 12), (13, 4), (7, 3), (5, 1), (10, 7)])
def test_segment_means_are_means_of_balanced_segments(backend, n, m):
    """Eq. 16 as intended: landmark j is the mean of the l_j rows of segment j; balanced split
    (sizes differ by at most one, larger ones first) when m does not divide n; equals the paper
    code's reshape-mean when it does. Tolerance: a mean of l terms, relative error <= l u."""
    bounds = N.segment_bounds(n, m)
    sizes = [b - a for a, b in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == n and all(bounds[i][1] == bounds[i + 1][0] for i in range(m - 1))
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    x = np.random.default_rng(0).standard_normal((2, n, 3))
    got = backend.to_host(N.segment_means(*to(backend, x), m))
    want = np.stack([x[:, a:b].sum(1) / (b - a) for a, b in bounds], 1)
    np.testing.assert_allclose(got, want, rtol=4 * n * U64, atol=4 * n * U64)
    if n % m == 0:
        np.testing.assert_allclose(got, x.reshape(2, m, n // m, 3).mean(2), rtol=4 * n * U64)


def test_eq16_as_printed_differs_from_the_segment_mean():
    """Eq. 16 as printed sums x_{(j-1)l+1} .. x_{(j-1)l+m} and divides by m: for l != m that is not
    the segment mean (and for j = m runs past the end when m > l); refattn uses the l-term mean."""
    n, m = 12, 3  # l = 4
    x = np.arange(n, dtype=float)[:, None] ** 2
    l = n // m
    printed = np.stack([x[j * l:j * l + m].sum(0) / m for j in range(m)])
    intended = N.segment_means(x, m)
    assert np.all(np.abs(printed - intended) > 1.0)


# ----------------------------------------------------------------------------- exactness (Lemma 2)

@given(n=st.integers(1, 24), d=st.integers(1, 6), log_scale=st.floats(-3, 1.5), seed=st.integers(0, 2**16))
def test_exact_pinv_with_m_equal_n_is_exact_attention(n, d, log_scale, seed):
    """m = n: segments of one row, Q~ = Q, K~ = K, so out = S S^+ S V = S V for ANY inputs
    (A A^+ A = A). Float64 bound (backward stability of the SVD pseudoinverse; RECIPES T4.6):
    |out - SV|_max <= 100 n u cond_eff(S) |V|_max + rtol s_max |V|_2, where cond_eff uses the
    singular values that pinv keeps (> rtol s_max, rtol = n eps) and the second term is the
    truncated part ||S - S_k||_2 <= rtol s_max."""
    rs = np.random.default_rng(seed)
    q, k = 10**log_scale * rs.standard_normal((n, d)), 10**log_scale * rs.standard_normal((n, d))
    v = rs.standard_normal((n, 3))
    out = refattn.nystrom_attention(q, k, v, num_landmarks=n, pinv="exact")
    want = refattn.softmax_attention(q, k, v)
    s = np.linalg.svd(refattn.softmax_attention(q, k, np.eye(n)), compute_uv=False)
    rtol = n * 2.0**-52
    kept = s[s > rtol * s[0]]
    tol = 100 * n * U64 * (s[0] / kept[-1]) * np.abs(v).max() + rtol * s[0] * np.linalg.norm(v, 2)
    assert np.abs(out - want).max() <= tol


def test_iterative_pinv_with_m_equal_n_converges_to_exact_attention():
    """With the iteration, m = n converges as J grows: the error falls to rounding level once J
    exceeds ~log_3.25(1/(alpha s_min^2)) + log_3(53) (the slow phase, then the cubic one)."""
    q, k, v = host_qkv(1, batch=(2,), n=8, m=8, d=4, dv=3)
    want = refattn.softmax_attention(q, k, v)
    errs = [np.abs(refattn.nystrom_attention(q, k, v, num_landmarks=8, iterations=j) - want).max()
            for j in (0, 2, 4, 8, 30)]
    assert errs[0] > 1e-2 and errs[-1] < 1e3 * 8 * U64
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errs, errs[1:])), errs


# ----------------------------------------------------------------------------- the iteration

def _softmax_matrix(rs, m, d, scale=1.0):
    s = scale * rs.standard_normal((m, d)) @ rs.standard_normal((d, m)) / math.sqrt(d)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _matrix_with_cond(rs, m, cond, rank=None):
    u, _ = np.linalg.qr(rs.standard_normal((m, m)))
    w, _ = np.linalg.qr(rs.standard_normal((m, m)))
    s = np.geomspace(1.0, 1.0 / cond, m)
    if rank is not None:
        s[rank:] = 0.0
    return (u * s) @ w.T


@pytest.mark.parametrize("kind", ["gaussian", "softmax", "rank_deficient"])
def test_residual_recurrence(kind):
    """E_{j+1} = E_j^3 (3I + E_j) / 4 for E_j = I - A Z_j, any square A and any Z_j (RECIPES T4.1).
    Rounding: ~4 chained products of size m -> 8 gamma_{4m} (|A| |Z_{j+1}| + (1 + |E_j|)^4) in norm."""
    rs = np.random.default_rng(3)
    m = 9
    a = {"gaussian": rs.standard_normal((m, m)), "softmax": _softmax_matrix(rs, m, 4),
         "rank_deficient": _matrix_with_cond(rs, m, 10.0, rank=5)}[kind]
    z = rs.standard_normal((m, m))
    z *= 1.5 / np.linalg.norm(np.eye(m) - a @ z, 2) if np.linalg.norm(np.eye(m) - a @ z, 2) > 2 else 1.0
    e = np.eye(m) - a @ z
    z1 = N.pinv_iterates(a, iterations=1, init_scale=0.0)  # smoke: init only
    assert np.all(z1[0] == 0) and np.allclose(z1[1], 0)
    x = a @ z
    z_next = 0.25 * z @ (13 * np.eye(m) - x @ (15 * np.eye(m) - x @ (7 * np.eye(m) - x)))
    # the library step, fed with this z
    lib = N._iterate_step(refattn.backends.get("numpy").xp, a, z, N._eyes(refattn.backends.get("numpy").xp, m,
                                                                         a.dtype, "cpu"))[0]
    np.testing.assert_allclose(lib, z_next, rtol=1e-13, atol=1e-13 * np.abs(z_next).max())
    lhs = np.eye(m) - a @ lib
    rhs = e @ e @ e @ (3 * np.eye(m) + e) / 4
    gam = 4 * m * U64 / (1 - 4 * m * U64)
    tol = 8 * gam * (np.linalg.norm(a, 2) * np.linalg.norm(lib, 2) + (1 + np.linalg.norm(e, 2)) ** 4)
    assert np.abs(lhs - rhs).max() <= tol


def _residuals(a, iterations):
    zs = N.pinv_iterates(a, iterations=iterations)
    return [np.linalg.norm(np.eye(a.shape[-1]) - a @ z, 2) for z in zs], zs


def test_order_three_fitted_from_successive_residuals():
    """nys-order (RECIPES T4.3): for cond(A) <= 10 the condition ||I - A Z_0||_2 < 1 holds (checked),
    and the slope of log r_{j+1} against log r_j over 1e-4 < r_j < 0.3 is 3 +- 0.1; also
    r_{j+1} <= r_j^3 (1 + 1e-6) while r_j < 1 (||E^3 (3I + E)/4|| <= r^3 (3 + r)/4 <= r^3) and r_{j+1}
    is above the rounding floor."""
    rs = np.random.default_rng(4)
    slopes = []
    for trial in range(4):
        if trial % 2:
            a = _matrix_with_cond(rs, 12, 10.0)
        else:  # a well-conditioned softmax matrix: dominant diagonal logits
            s = 4 * np.eye(12) + 0.3 * rs.standard_normal((12, 12))
            a = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
        assert _cond(a) <= 10 * (1 + 1e-9)
        r, _ = _residuals(a, 12)
        assert r[0] < 1
        # below the rounding floor of ||I - A Z||_2 (|fl(A Z) - A Z| <= gamma_n |A| |Z|, so about
        # n u cond(A) with ||Z|| ~ ||A^+||) the residuals measure rounding, not the iteration
        floor = a.shape[0] * _cond(a) * np.finfo(np.float64).eps
        for r0, r1 in zip(r, r[1:]):
            if r0 < 1 and r1 > floor:
                assert r1 <= r0**3 * (1 + 1e-6)
        pts = [(math.log(r0), math.log(r1)) for r0, r1 in zip(r, r[1:]) if 1e-4 < r0 < 0.3]
        assert len(pts) >= 2
        x, y = np.array(pts).T
        slopes.append(np.polyfit(x, y, 1)[0])
    assert all(2.9 <= s <= 3.1 for s in slopes), slopes


@pytest.mark.parametrize(("cond", "rank", "iterations"), [(10.0, None, 10), (1e4, None, 30), (10.0, 6, 12)])
def test_iterates_converge_to_pinv_and_follow_the_spectral_prediction(cond, rank, iterations):
    """RECIPES T4.2: with Z_0 = alpha A^T each singular value s carries e_0 = 1 - alpha s^2 and
    e <- e^3 (3 + e)/4, so ||Z_j - A^+||_2 = max_i |e_ij| / s_i (exactly, in real arithmetic).
    Asserted within 1e-8 ||A^+||_2 (cond <= 1e4; the float error of the iterates is ~ cond u ||A^+||),
    and Z_J -> pinv(A) for well-, ill-conditioned and singular A (to 1e-8 relative; the singular case
    stops at 12 iterations, before the null-space rounding growth of the next test matters)."""
    rs = np.random.default_rng(5)
    m = 10
    a = _matrix_with_cond(rs, m, cond, rank)
    zs = N.pinv_iterates(a, iterations=iterations)
    s = np.linalg.svd(a, compute_uv=False)
    s = s[s > 1e-12 * s[0]]
    alpha = 1 / (np.abs(a).sum(0).max() * np.abs(a).sum(1).max())
    e = 1 - alpha * s**2
    ap = np.linalg.pinv(a, rcond=1e-12)
    norm_ap = np.linalg.norm(ap, 2)
    for j, z in enumerate(zs):
        predicted = np.max(np.abs(e) / s)
        assert abs(np.linalg.norm(z - ap, 2) - predicted) <= 1e-8 * norm_ap, (j, predicted)
        e = e**3 * (3 + e) / 4
    assert np.linalg.norm(zs[-1] - ap, 2) <= 1e-8 * norm_ap


def test_paper_initialisation_satisfies_the_condition():
    """RECIPES T4.4: ||A||_2^2 <= ||A||_1 ||A||_inf, hence ||I - alpha A A^T||_2 <= 1 (< 1 for
    non-singular A) on random Gaussian and softmax matrices (tolerance 8 m u ||A||_2^2)."""
    rs = np.random.default_rng(6)
    for trial in range(200):
        m = int(rs.integers(1, 40))
        a = _softmax_matrix(rs, m, int(rs.integers(1, 9)), 10 ** rs.uniform(-1, 1)) if trial % 2 else \
            rs.standard_normal((m, m))
        n2 = np.linalg.norm(a, 2) ** 2
        assert n2 <= np.abs(a).sum(0).max() * np.abs(a).sum(1).max() + 8 * m * U64 * n2
        z0 = N.pinv_iterates(a, iterations=0)[0]
        assert np.linalg.norm(np.eye(m) - a @ z0, 2) <= 1 + 8 * m * U64


@pytest.mark.parametrize("init_scale_factor", [-0.5, 5.0])
def test_failure_mode_when_the_condition_is_violated(init_scale_factor):
    """Z_0 = c A^T gives e_0 = 1 - c s^2 per singular value and e <- f(e) = e^3 (3 + e)/4.
    ||I - A Z_0|| < 1 (e_0 in (-1, 1)) suffices; e_0 > 1 (c < 0) or e_0 < -3.13 (f(e_0) > 1; here
    c s_max^2 = 5, e_0 = -4, f = 16) diverges: the residual grows at every step and the iterates blow
    up; iterative_pinv reports it (error by default, warning on request, silence only if asked)."""
    rs = np.random.default_rng(7)
    a = _matrix_with_cond(rs, 6, 5.0)
    c = init_scale_factor / np.linalg.norm(a, 2) ** 2
    assert np.linalg.norm(np.eye(6) - c * a @ a.T, 2) > 1
    r = [np.linalg.norm(np.eye(6) - a @ z, 2) for z in N.pinv_iterates(a, iterations=4, init_scale=c)]
    assert all(r1 > r0 for r0, r1 in zip(r, r[1:])) and r[-1] > 10 * r[0]
    with pytest.raises(N.PinvConvergenceError, match="diverged"):
        N.iterative_pinv(a, iterations=4, init_scale=c)
    with pytest.warns(N.PinvConvergenceWarning, match="diverged"):
        N.iterative_pinv(a, iterations=4, init_scale=c, errors="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        N.iterative_pinv(a, iterations=4, init_scale=c, errors="ignore")
    with pytest.raises(N.PinvConvergenceError, match="non-finite"), np.errstate(all="ignore"):
        N.iterative_pinv(a, iterations=60, init_scale=c)


def test_singular_matrix_null_space_rounding_growth_is_harmless_at_six_iterations():
    """Documented limitation: for singular A, rounding components of Z in null(A) x null(A^T) grow
    by 13/4 per step and are invisible to I - A Z (so not reported). At the default 6 iterations
    they stay below 1e-10 ||A^+||; after 45 iterations they have grown by more than 1e4."""
    rs = np.random.default_rng(8)
    a = _matrix_with_cond(rs, 6, 2.0, rank=2)
    ap = np.linalg.pinv(a, rcond=1e-10)
    zs = N.pinv_iterates(a, iterations=45)
    errs = [np.linalg.norm(z - ap, 2) / np.linalg.norm(ap, 2) for z in zs]
    assert errs[6] < 1e-10 and min(errs) < 1e-13
    assert errs[45] > 1e4 * min(errs)
    N.iterative_pinv(a, iterations=45)  # not reported: the residual I - A Z does not see it


# ----------------------------------------------------------------------------- classical Nystrom

@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_classical_nystrom_of_a_psd_kernel_matrix(sigma):
    """The core approximation C W^+ C^T for a symmetric PSD kernel matrix G (RBF Gram of 200 Gaussian
    points in R^5; I a random index set, C = G[:, I], W = G[I, I]; W^+ by refattn's exact_pinv), the
    deterministic facts of RECIPES T4.7: (i) G - G~ is PSD (generalised Schur complement);
    (ii) G~[:, I] = C (interpolation); (iii) rank G~ <= c, so ||G - G~||_2 >= lambda_(c+1),
    ||G - G~||_F >= (sum_(i>c) lambda_i^2)^(1/2), tr(G - G~) >= sum_(i>c) lambda_i (Eckart-Young,
    Ky Fan); (iv) I in J => G - G~_J <= G - G~_I (Loewner); (v) I = all => G~ = G.
    Tolerance tol = 100 n u cond(W) ||G||_2 (float error of W^+ ~ cond(W) u relative, propagated
    through products of size <= n), and 100 n u cond(G) ||G||_2 for (v); cond(W) <= 1e6 here.
    (The Drineas-Mahoney sampling bound is not tested: its constants are unconfirmed, RECIPES 4.1.)"""
    rs = np.random.default_rng(30)
    n = 200
    x = rs.standard_normal((n, 5))
    g = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * sigma**2))
    lam = np.linalg.eigvalsh(g)[::-1]
    gnorm = lam[0]

    def approx(idx):
        c, w = g[:, idx], g[np.ix_(idx, idx)]
        cond = np.linalg.cond(w)
        assert cond <= 1e6
        return c @ N.exact_pinv(w) @ c.T, 100 * n * U64 * cond * gnorm

    perm = rs.permutation(n)
    previous = None
    for c in (5, 20, 50):
        idx = perm[:c]  # nested index sets: perm[:5] in perm[:20] in perm[:50]
        gt, tol = approx(idx)
        resid = g - gt
        assert np.linalg.eigvalsh((resid + resid.T) / 2)[0] >= -tol  # (i)
        assert np.abs(gt[:, idx] - g[:, idx]).max() <= 100 * c * U64 * np.linalg.cond(g[np.ix_(idx, idx)]) * g.max()
        assert np.linalg.norm(resid, 2) >= lam[c] - tol  # (iii)
        assert np.linalg.norm(resid) >= np.sqrt((lam[c:] ** 2).sum()) - math.sqrt(n) * tol
        assert np.trace(resid) >= lam[c:].sum() - n * tol
        if previous is not None:  # (iv): G - G~_J <= G - G~_I
            prev_resid, prev_tol = previous
            diff = prev_resid - resid
            assert np.linalg.eigvalsh((diff + diff.T) / 2)[0] >= -(tol + prev_tol)
        previous = (resid, tol)
    full = g @ N.exact_pinv(g) @ g  # (v)
    assert np.abs(full - g).max() <= 100 * n * U64 * (lam[0] / lam[-1]) * gnorm


# ----------------------------------------------------------------------------- attention values

@pytest.mark.parametrize("pinv", ["exact", "iterative"])
@pytest.mark.parametrize(("n", "mk", "m"), [(12, 12, 4), (13, 11, 4), (9, 9, 9), (10, 7, 3)])
def test_matches_the_formula_on_every_backend(backend, pinv, n, mk, m):
    """Against a plain NumPy statement of the formula. Same operations up to order: relative
    difference <= 64 (n + m) u cond(A) (cond measured; < 1e4 here so the check is tight)."""
    q, k, v = host_qkv(10, batch=(2,), n=n, m=mk, d=4, dv=3)
    want, a = _dense_reference(q, k, v, m, pinv=pinv)
    cond = _cond(a)
    assert cond < 1e4
    tol = 64 * (n + m) * U64 * cond
    out = refattn.nystrom_attention(*to(backend, q, k, v), num_landmarks=m, pinv=pinv)
    np.testing.assert_allclose(backend.to_host(out), want, rtol=tol, atol=tol * np.abs(want).max())


def test_error_against_exact_attention_decreases_with_landmarks_on_low_rank_inputs():
    """Data, not a theorem (fixed seeds 0-2): tokens varying smoothly along the sequence (3 Fourier
    modes, rank 6, amplitude 0.3, n = 256, d = 16) have informative segment means, and the relative
    error ||out - SV||_F / ||SV||_F falls strictly over m = 4, 8, 16, 32 in both modes; with the
    exact pinv by at least 100x, with 6 iterations it levels off at the iteration's own floor
    (~1e-2: A is not yet inverted on its small singular values). Outside this range the trend can
    break (m = 2; and at m = 64 the exact mode's error rises again as cond(A) amplifies rounding):
    see benchmarks/nystrom.py. The figures are in the assertion message."""
    n, d = 256, 16
    t = np.arange(n)[:, None] / n
    basis = np.concatenate([fn(2 * np.pi * f * t) for fn in (np.sin, np.cos) for f in (1, 2, 3)], 1)
    for seed in range(3):
        rs = np.random.default_rng(seed)
        q, k = 0.3 * basis @ rs.standard_normal((6, d)), 0.3 * basis @ rs.standard_normal((6, d))
        v = rs.standard_normal((n, 8))
        want = refattn.softmax_attention(q, k, v)
        for pinv in ("exact", "iterative"):
            errs = [np.linalg.norm(refattn.nystrom_attention(q, k, v, num_landmarks=m, pinv=pinv) - want)
                    / np.linalg.norm(want) for m in (4, 8, 16, 32)]
            assert all(b < a for a, b in zip(errs, errs[1:])), (seed, pinv, errs)
            if pinv == "exact":
                assert errs[-1] < 1e-2 * errs[0], (seed, pinv, errs)


def test_broadcast_batch_dims_and_explicit_landmarks(backend):
    """k, v shared across heads (B, 1, m, d); explicit landmarks shared across the batch: gradients
    come back un-broadcast, and explicit landmarks equal to the segment means reproduce the default."""
    rs = np.random.default_rng(12)
    q, k, v = rs.standard_normal((2, 3, 8, 4)), rs.standard_normal((2, 1, 8, 4)), rs.standard_normal((1, 8, 3))
    args = to(backend, q, k, v)
    out, pb = refattn.vjp(refattn.nystrom_attention, *args, num_landmarks=4)
    assert tuple(out.shape) == (2, 3, 8, 3)
    g = pb(backend.xp.ones_like(out))
    assert type(g) is N.Grads and [tuple(x.shape) for x in g] == [(2, 3, 8, 4), (2, 1, 8, 4), (1, 8, 3)]
    qt, kt = N.segment_means(args[0], 4), N.segment_means(args[1], 4)
    out2, pb2 = refattn.vjp(refattn.nystrom_attention, *args, qt, kt)
    assert_allclose(out2, out, rtol=1e-12, atol=1e-14)
    g2 = pb2(backend.xp.ones_like(out))
    assert type(g2) is N.GradsLandmarks and tuple(g2.dq_landmarks.shape) == (2, 3, 4, 4)
    shared = to(backend, rs.standard_normal((4, 4)), rs.standard_normal((1, 1, 4, 4)))
    g3 = refattn.vjp(refattn.nystrom_attention, *args, *shared)[1](backend.xp.ones_like(out))
    assert [tuple(x.shape) for x in g3[3:]] == [(4, 4), (1, 1, 4, 4)]


def test_conv_skip_matches_torch_conv1d_and_zeroes_masked_values():
    """The skip is torch's conv1d (cross-correlation, zero padding K//2) applied per head with one
    filter per head (c = 1, the paper code's grouped Conv2d) or per feature (c = dv); masked values
    enter as zeros. Pure sums of K products: 1e-13 relative."""
    torch = pytest.importorskip("torch")
    rs = np.random.default_rng(13)
    q, k, v = host_qkv(13, batch=(2, 3), n=9, m=9, d=4, dv=5)
    keep = np.ones((2, 1, 1, 9), bool)
    keep[0, ..., [1, 4]] = False
    for c in (1, 5):
        w = rs.standard_normal((3, 5, c))
        base = refattn.nystrom_attention(q, k, v, num_landmarks=3, mask=keep)
        out = refattn.nystrom_attention(q, k, v, w, num_landmarks=3, mask=keep, conv_kernel_size=5)
        vm = torch.from_numpy(np.where(keep[..., 0, :, None], v, 0.0))  # (2, 3, 9, 5)
        x = vm.permute(0, 1, 3, 2).reshape(2, 15, 9)
        wt = torch.from_numpy(np.broadcast_to(w.transpose(0, 2, 1), (3, 5, 5)).reshape(15, 1, 5).copy())
        skip = torch.nn.functional.conv1d(x, wt, padding=2, groups=15).reshape(2, 3, 5, 9).permute(0, 1, 3, 2)
        np.testing.assert_allclose(out - base, skip.numpy(), rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("pinv", ["exact", "iterative"])
@pytest.mark.parametrize("variant", ["segments", "uneven", "explicit", "conv", "explicit+conv", "masked"])
def test_gradcheck(pinv, variant):
    """Central differences along random directions for q, k, v and every positional parameter."""
    rs = np.random.default_rng(14)
    q, k, v = host_qkv(14, batch=(2, 1), n=8, m=8, d=3, dv=2)
    kw = {"pinv": pinv, "num_landmarks": 4}
    args = [q, k, v]
    if variant == "uneven":
        kw["num_landmarks"] = 3
    if "explicit" in variant:
        args += [rs.standard_normal((4, 3)), rs.standard_normal((2, 1, 4, 3))]
    if "conv" in variant:
        args.append(rs.standard_normal((3, 1)))
        kw["conv_kernel_size"] = 3
    if variant == "masked":
        kw["key_lengths"] = np.array([[8], [6]])
    gradcheck(refattn.nystrom_attention, args, kwargs=kw, n_directions=2)


@pytest.mark.parametrize("kind", ["well", "ill", "gaussian"])
def test_gradcheck_of_the_pseudoinverses(kind):
    """Both pinv pullbacks on their own: the Golub-Pereyra adjoint (non-singular A, so the rank is
    locally constant) and the reverse sweep through the iterations including alpha's derivative.
    (Not at a softmax matrix: its row sums tie at 1, so max row sum has a kink in a general direction
    of A; through the attention the softmax keeps row sums at 1 and the kink is never crossed.)"""
    rs = np.random.default_rng(15)
    a = {"well": _matrix_with_cond(rs, 5, 3.0), "ill": _matrix_with_cond(rs, 5, 1e3),
         "gaussian": rs.standard_normal((5, 5))}[kind]
    gradcheck(N.exact_pinv, (a,))
    gradcheck(N.iterative_pinv, (a,), kwargs={"iterations": 5})
    gradcheck(N.iterative_pinv, (a,), kwargs={"iterations": 3, "init_scale": 0.1})


def _torch_nystrom(torch, q, k, v, *, m=None, qt=None, kt=None, pinv, iterations=6, w=None, keep=None):
    """The same maths written directly in torch: autograd differentiates torch.linalg.pinv (exact)
    or the unrolled iteration with alpha = 1/(max col sum * max row sum) (iterative)."""
    s = 1 / math.sqrt(q.shape[-1])
    if qt is None:
        qt = torch.stack([q[..., a:b, :].mean(-2) for a, b in N.segment_bounds(q.shape[-2], m)], -2)
        kt = torch.stack([k[..., a:b, :].mean(-2) for a, b in N.segment_bounds(k.shape[-2], m)], -2)
    f = torch.softmax(s * q @ kt.transpose(-1, -2), -1)
    a = torch.softmax(s * qt @ kt.transpose(-1, -2), -1)
    b = torch.softmax(s * qt @ k.transpose(-1, -2), -1)
    if pinv == "exact":
        z = torch.linalg.pinv(a)
    else:
        c = a.abs().sum(-2).max(-1).values * a.abs().sum(-1).max(-1).values
        z = a.transpose(-1, -2) / c[..., None, None]
        eye = torch.eye(a.shape[-1], dtype=a.dtype)
        for _ in range(iterations):
            x = a @ z
            z = 0.25 * z @ (13 * eye - x @ (15 * eye - x @ (7 * eye - x)))
    out = (f @ z) @ (b @ v)
    if w is not None:  # w (H, K, 1): one filter per head
        hh, kk = w.shape[0], w.shape[1]
        x = v.transpose(-1, -2).reshape(v.shape[0], hh * v.shape[-1], v.shape[-2])
        wt = w[:, :, 0][:, None, None, :].expand(hh, v.shape[-1], 1, kk).reshape(-1, 1, kk)
        skip = torch.nn.functional.conv1d(x, wt, padding=kk // 2, groups=hh * v.shape[-1])
        out = out + skip.reshape(v.shape[0], hh, v.shape[-1], v.shape[-2]).transpose(-1, -2)
    return out


@pytest.mark.parametrize("pinv", ["exact", "iterative"])
@pytest.mark.parametrize("variant", ["segments", "uneven", "explicit", "conv"])
def test_torch_autograd_cross_check(pinv, variant):
    """Outputs and all gradients against torch autograd on the same maths. Relative tolerance
    16 (n + m) u cond(A) (cond(A) measured, < 1e3; ~1e-12 here): the two SVD pseudoinverses differ
    by ~cond(A) u relative (first-order perturbation of A^+, also for the products Z ... Z of the
    pullback), plus (n + m) u for the chained products; the iterative mode is the same arithmetic
    in another order. Measured differences are ~1e-14."""
    torch = pytest.importorskip("torch")
    rs = np.random.default_rng(16)
    n, d, dv, hh = 12, 4, 3, 2
    q, k, v = host_qkv(16, batch=(2, hh), n=n, m=n, d=d, dv=dv, scale=1.5)
    m = 3 if variant == "uneven" else 4
    args, kw, tkw = [q, k, v], {"pinv": pinv}, {"pinv": pinv}
    if variant == "explicit":
        args += [rs.standard_normal((hh, m, d)), rs.standard_normal((2, hh, m, d))]
    else:
        kw["num_landmarks"] = tkw["m"] = m
    if variant == "conv":
        args.append(rs.standard_normal((hh, 3, 1)))
        kw["conv_kernel_size"] = 3
    out, res = N.forward(*args, **kw)
    cond = _cond(res.a)
    assert cond < 1e3
    dout = rs.standard_normal(out.shape)
    grads = N.backward(res, dout)
    leaves = [torch.tensor(a, requires_grad=True) for a in args]
    if variant == "explicit":
        tkw.update(qt=leaves[3], kt=leaves[4])
    if variant == "conv":
        tkw["w"] = leaves[3]
    t_out = _torch_nystrom(torch, *leaves[:3], **tkw)
    t_out.backward(torch.from_numpy(dout))
    rtol = 16 * (n + m) * U64 * cond
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=rtol, atol=rtol * np.abs(out).max())
    assert len(grads) == len(leaves)
    for g, t in zip(grads, leaves):
        want = t.grad.numpy()
        np.testing.assert_allclose(g, want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_gradients_on_every_backend(backend):
    """vjp on numpy / array_api_strict / torch agree with the numpy result (same algorithm, cond(A)
    < 1e3 -> 1e-10 relative), with the conv skip and a key mask (the masked-landmark path)."""
    rs = np.random.default_rng(17)
    q, k, v = host_qkv(17, batch=(2, 3), n=11, m=11, d=4, dv=5)
    w = rs.standard_normal((3, 3, 1))
    keep = np.ones((2, 1, 1, 11), bool)
    keep[1, ..., [2, 7, 9]] = False
    dout = rs.standard_normal((2, 3, 11, 5))
    for pinv in ("iterative", "exact"):
        kw = {"num_landmarks": 4, "pinv": pinv, "conv_kernel_size": 3}
        o0, pb0 = refattn.vjp(refattn.nystrom_attention, q, k, v, w, mask=keep, **kw)
        g0 = pb0(dout)
        o1, pb1 = refattn.vjp(refattn.nystrom_attention, *to(backend, q, k, v, w), mask=backend.asarray(keep), **kw)
        g1 = pb1(backend.asarray(dout))
        for got, want in zip((o1, *g1), (o0, *g0)):
            np.testing.assert_allclose(backend.to_host(got), want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("pinv", ["exact", "iterative"])
@pytest.mark.parametrize("how", ["key_lengths", "bool"])
def test_masked_keys_are_removed_keys(backend, pinv, how):
    """For every batch element, the masked result equals the unmasked result on the sequence with
    the masked keys and values deleted (landmarks over kept keys, B's columns dropped). Real-
    arithmetic identity; rounding differs by the landmark sums' order: 100 mk u cond(A) relative."""
    rs = np.random.default_rng(18)
    q, k, v = host_qkv(18, batch=(3,), n=7, m=13, d=4, dv=3)
    keep = np.ones((3, 13), bool)
    if how == "key_lengths":
        lengths = np.array([13, 9, 5])
        keep = np.arange(13) < lengths[:, None]
        kw = {"key_lengths": backend.asarray(lengths)}
    else:
        keep[1, [0, 3, 4, 12]] = False
        keep[2, rs.permutation(13)[:7]] = False
        kw = {"mask": backend.asarray(keep[:, None, :])}
    out, res = N.forward(*to(backend, q, k, v), num_landmarks=4, pinv=pinv, **kw)
    cond = _cond(backend.to_host(res.a))
    for i in range(3):
        want = refattn.nystrom_attention(q[i], k[i][keep[i]], v[i][keep[i]], num_landmarks=4, pinv=pinv)
        tol = 100 * 13 * U64 * cond
        np.testing.assert_allclose(backend.to_host(out)[i], want, rtol=tol, atol=tol * np.abs(want).max())
    full = refattn.nystrom_attention(*to(backend, q, k, v), num_landmarks=4, pinv=pinv,
                                     mask=backend.asarray(np.ones((1, 13), bool)))
    plain = refattn.nystrom_attention(*to(backend, q, k, v), num_landmarks=4, pinv=pinv)
    assert_allclose(full, plain, rtol=1e-12, atol=1e-14)


def test_explicit_landmarks_with_every_key_masked_give_zeros_not_nan(backend):
    xp = backend.xp
    rs = np.random.default_rng(19)
    q, k, v = host_qkv(19, batch=(2,), n=5, m=6, d=3, dv=2)
    qt, kt = rs.standard_normal((3, 3)), rs.standard_normal((3, 3))
    lengths = backend.asarray(np.array([0, 6]))
    for pinv in ("exact", "iterative"):
        out, pb = refattn.vjp(refattn.nystrom_attention, *to(backend, q, k, v, qt, kt), key_lengths=lengths, pinv=pinv)
        g = pb(xp.ones_like(out))
        assert bool(xp.all(out[0, ...] == 0)) and bool(xp.all(xp.isfinite(out)))
        assert bool(xp.all(g.dv[0, ...] == 0)) and bool(xp.all(g.dk[0, ...] == 0))
        assert all(bool(xp.all(xp.isfinite(x))) for x in g)


def test_masks_it_cannot_honour(backend):
    q, k, v = to(backend, *host_qkv(20, batch=(2,), n=6, m=6, d=3, dv=2))
    per_query = backend.asarray(np.ones((6, 6), bool))
    with pytest.raises(ValueError, match="differs between queries"):
        refattn.nystrom_attention(q, k, v, num_landmarks=2, mask=per_query)
    with pytest.raises(ValueError, match="additive"):
        refattn.nystrom_attention(q, k, v, num_landmarks=2, mask=backend.asarray(np.zeros((1, 6))))
    with pytest.raises(ValueError, match="fewer than num_landmarks=3"):
        refattn.nystrom_attention(q, k, v, num_landmarks=3, key_lengths=backend.asarray(np.array([6, 2])))
    for causal in (True, "top_left", "bottom_right"):
        with pytest.raises(ValueError, match="no causal form"):
            refattn.nystrom_attention(q, k, v, num_landmarks=2, causal=causal)


# ----------------------------------------------------------------------------- bad input

def test_bad_landmark_arguments(backend):
    q, k, v = to(backend, *host_qkv(21, batch=(2,), n=6, m=5, d=3, dv=2))
    rs = np.random.default_rng(21)
    cases = [
        ({"num_landmarks": 7}, (), ValueError, "at most min"),
        ({"num_landmarks": 6}, (), ValueError, "at most min"),  # m > mk = 5
        ({"num_landmarks": 0}, (), ValueError, "positive integer"),
        ({"num_landmarks": -2}, (), ValueError, "positive integer"),
        ({"num_landmarks": 2.0}, (), ValueError, "positive integer"),
        ({}, (), ValueError, "num_landmarks must be given"),
        ({}, to(backend, rs.standard_normal((3, 4)), rs.standard_normal((3, 3))), ValueError, r"\(\.\.\., m, 3\)"),
        ({}, to(backend, rs.standard_normal((3, 3)), rs.standard_normal((2, 3))), ValueError, "same m"),
        ({}, to(backend, rs.standard_normal((0, 3)), rs.standard_normal((0, 3))), ValueError, "m >= 1"),
        ({"num_landmarks": 2}, to(backend, rs.standard_normal((3, 3)), rs.standard_normal((3, 3))), ValueError,
         "does not match"),
        ({}, to(backend, rs.standard_normal((3, 3))), TypeError, "0 or 2 landmark arrays"),
        ({}, to(backend, rs.standard_normal((5, 3, 3)), rs.standard_normal((3, 3))), ValueError, "without enlarging"),
        ({}, (*to(backend, rs.standard_normal((3, 3))), *to(backend, rs.standard_normal((3, 3)), dtype="float32")),
         TypeError, "dtype of q"),
    ]
    for kw, params, exc, match in cases:
        with pytest.raises(exc, match=match):
            refattn.nystrom_attention(q, k, v, *params, **kw)


def test_bad_options(backend):
    q, k, v = to(backend, *host_qkv(22, batch=(2,), n=6, m=6, d=3, dv=2))
    w = to(backend, np.ones((3, 1)))[0]
    cases = [
        ({"iterations": -1}, (), ValueError, "non-negative integer"),
        ({"iterations": 2.5}, (), ValueError, "non-negative integer"),
        ({"iterations": True}, (), ValueError, "non-negative integer"),
        ({"pinv": "svd"}, (), ValueError, "pinv must be one of"),
        ({"errors": "print"}, (), ValueError, "errors must be one of"),
        ({"on_divergence": "print"}, (), ValueError, "on_divergence must be one of"),
        ({"errors": "warn", "on_divergence": "warn"}, (), TypeError, "give the failure policy once"),
        ({"check_finite": 1}, (), TypeError, "check_finite must be True or False"),
        ({"pinv_tol": 0.0}, (), ValueError, "pinv_tol"),
        ({"pinv_tol": "1e-3"}, (), TypeError, "pinv_tol"),
        ({"pinv_rtol": -1.0}, (), ValueError, "pinv_rtol"),
        ({"conv_kernel_size": 4}, (w,), ValueError, "odd"),
        ({"conv_kernel_size": 5}, (w,), ValueError, r"\(\.\.\., 5, c\)"),
        ({"conv_kernel_size": 3}, (), TypeError, "0 or 2 landmark arrays"),
        ({"conv_kernel_size": 3}, to(backend, np.ones((3, 4))), ValueError, "c in"),
    ]
    for kw, params, exc, match in cases:
        with pytest.raises(exc, match=match):
            refattn.nystrom_attention(q, k, v, *params, **{"num_landmarks": 2, **kw})
    q2, k2, v2 = to(backend, *host_qkv(22, batch=(2,), n=6, m=5, d=3, dv=2))
    with pytest.raises(ValueError, match="n == mk"):
        refattn.nystrom_attention(q2, k2, v2, w, num_landmarks=2, conv_kernel_size=3)


def test_on_divergence_is_deprecated_for_errors():
    """on_divergence= still works (same results, same reports) with a DeprecationWarning naming
    errors=, in nystrom_attention, forward, iterative_pinv and cost; errors= alone does not warn."""
    rs = np.random.default_rng(7)
    a = _matrix_with_cond(rs, 6, 5.0)
    c = 5.0 / np.linalg.norm(a, 2) ** 2
    with pytest.warns(DeprecationWarning, match="on_divergence='ignore' is deprecated; use errors='ignore'") as rec:
        z_old = N.iterative_pinv(a, iterations=4, init_scale=c, on_divergence="ignore")
    assert rec[0].filename == __file__  # attributed to the caller, so Python's default filters show it
    np.testing.assert_array_equal(z_old, N.iterative_pinv(a, iterations=4, init_scale=c, errors="ignore"))
    with pytest.warns(DeprecationWarning, match="use errors='warn'"), \
            pytest.warns(N.PinvConvergenceWarning, match="diverged"):
        N.iterative_pinv(a, iterations=4, init_scale=c, on_divergence="warn")
    with pytest.warns(DeprecationWarning, match="use errors='raise'"), pytest.raises(N.PinvConvergenceError):
        N.iterative_pinv(a, iterations=4, init_scale=c, on_divergence="raise")
    with pytest.raises(TypeError, match="give the failure policy once"):
        N.iterative_pinv(a, errors="raise", on_divergence="raise")
    q, k, v = host_qkv(29, batch=(2,), n=8, m=8, d=3, dv=2)
    want = refattn.nystrom_attention(q, k, v, num_landmarks=3, errors="ignore")
    for fn in (refattn.nystrom_attention, lambda *a, **kw: N.forward(*a, **kw)[0]):
        with pytest.warns(DeprecationWarning, match="use errors='ignore'") as rec:
            got = fn(q, k, v, num_landmarks=3, on_divergence="ignore")
        np.testing.assert_array_equal(got, want)
        assert rec[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="use errors='ignore'"):
        old = N.cost(8, 3, 2, num_landmarks=3, on_divergence="ignore")
    assert old == N.cost(8, 3, 2, num_landmarks=3, errors="ignore") != N.cost(8, 3, 2, num_landmarks=3)


def test_pinv_option_checks():
    """The shared validators name the argument: init_scale, iterations, pinv_tol, rtol, errors."""
    a = np.eye(3)
    for kw, exc, match in [({"init_scale": "1"}, TypeError, "init_scale"),
                           ({"init_scale": math.nan}, ValueError, "init_scale"),
                           ({"iterations": -1}, ValueError, "iterations must be a non-negative integer"),
                           ({"pinv_tol": -1.0}, ValueError, "pinv_tol"),
                           ({"errors": "print"}, ValueError, "errors must be one of")]:
        with pytest.raises(exc, match=match):
            N.iterative_pinv(a, **kw)
    with pytest.raises(ValueError, match="rtol"):
        N.exact_pinv(a, rtol=-1.0)
    with pytest.raises(ValueError, match="iterations"):
        N.pinv_iterates(a, iterations=-1)
    with pytest.raises(ValueError, match="positive integer"):
        N.segment_means(a, 0)
    np.testing.assert_array_equal(N.segment_means(a, np.int64(3)), a)  # NumPy integers are integers


def test_check_finite_default():
    """check_finite=True by default: NaN/inf in q, k, v or a positional parameter raise naming it;
    check_finite=False lets them reach the pseudoinverse, which reports non-finite iterates."""
    q, k, v = host_qkv(30, batch=(), n=8, m=8, d=3, dv=2)
    rs = np.random.default_rng(30)
    qt, kt = rs.standard_normal((2, 3, 3))
    bad = kt.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="k_landmarks must be finite"):
        refattn.nystrom_attention(q, k, v, qt, bad)
    with pytest.raises(N.PinvConvergenceError, match="non-finite"), np.errstate(all="ignore"):
        refattn.nystrom_attention(q, k, v, qt, bad, check_finite=False)
    with np.errstate(all="ignore"):
        out = refattn.nystrom_attention(q, k, v, qt, bad, check_finite=False, errors="ignore")
    assert np.isnan(out).all()


def test_singular_or_badly_scaled_landmark_matrix():
    """Singular A (duplicated explicit landmarks): the exact mode returns F A^+ B V with the
    SVD cut-off (finite; equals numpy's pinv formula); the iterative mode converges on range(A)
    and stays finite. Badly scaled logits (scale 1e-7: A = 11^T/m + O(1e-7), cond ~ 1e13): exact
    pinv truncates nothing harmful, the iteration does not converge in 6 steps, which pinv_tol
    turns into an error naming the cure; non-finite inputs make the iteration report non-finite
    iterates instead of returning NaN silently."""
    rs = np.random.default_rng(23)
    q, k, v = host_qkv(23, batch=(), n=10, m=10, d=3, dv=2)
    base_q, base_k = rs.standard_normal((2, 3)), rs.standard_normal((2, 3))
    qt, kt = np.concatenate([base_q, base_q[:1]]), np.concatenate([base_k, base_k[:1]])
    out, res = N.forward(q, k, v, qt, kt, pinv="exact")
    assert np.linalg.matrix_rank(res.a) == 2
    z = np.linalg.pinv(res.a, rcond=3 * 2.0**-52)
    np.testing.assert_allclose(out, res.f @ z @ res.b @ v, rtol=1e-12, atol=1e-12)
    out_cut, res_cut = N.forward(q, k, v, num_landmarks=5, pinv="exact", pinv_rtol=1e-3)
    z_cut = np.linalg.pinv(res_cut.a, rcond=1e-3)  # numpy's rcond is relative to s_max, as rtol
    np.testing.assert_allclose(out_cut, res_cut.f @ z_cut @ res_cut.b @ v, rtol=1e-12, atol=1e-12)
    out_it = refattn.nystrom_attention(q, k, v, qt, kt, iterations=30)
    np.testing.assert_allclose(out_it, out, rtol=1e-9, atol=1e-9)
    refattn.nystrom_attention(q, k, v, num_landmarks=5, scale=1e-7)
    with pytest.raises(N.PinvConvergenceError, match="did not converge"):
        refattn.nystrom_attention(q, k, v, num_landmarks=5, scale=1e-7, pinv_tol=1e-6)
    refattn.nystrom_attention(q, k, v, num_landmarks=5, iterations=60, pinv_tol=1e-6)
    bad = q.copy()
    bad[0, 0] = np.inf
    with pytest.raises(N.PinvConvergenceError, match="non-finite"), np.errstate(all="ignore"):
        refattn.nystrom_attention(bad, k, v, num_landmarks=5, check_finite=False)
    with pytest.raises(ValueError, match="q must be finite"):
        refattn.nystrom_attention(bad, k, v, num_landmarks=5)  # check_finite=True by default


# ----------------------------------------------------------------------------- precision

def test_float32_on_every_device(backend32):
    """float32 (incl. array_api_strict's device without float64) against the float64 run: error
    ~ 64 (n + m) u32 cond(A) relative (cond(A) measured, < 1e3)."""
    q, k, v = host_qkv(24, batch=(2,), n=16, m=16, d=8, dv=4)
    for pinv in ("iterative", "exact"):
        want, res = N.forward(q, k, v, num_landmarks=4, pinv=pinv)
        cond = _cond(res.a)
        assert cond < 1e3
        out = refattn.nystrom_attention(*to(backend32, q, k, v, dtype="float32"), num_landmarks=4, pinv=pinv)
        assert out.dtype == backend32.xp.float32
        tol = 64 * 20 * U32 * cond
        np.testing.assert_allclose(backend32.to_host(out), want, rtol=tol, atol=tol * np.abs(want).max())


def test_half_precision_is_computed_in_float32():
    """float16 inputs run in float32 and the result is cast back (error: float16 rounding of the
    output, u16 = 4.9e-4, plus the float32 error above)."""
    q, k, v = (a.astype(np.float16) for a in host_qkv(25, batch=(), n=16, m=16, d=8, dv=4))
    out, pb = refattn.vjp(refattn.nystrom_attention, q, k, v, num_landmarks=4)
    assert out.dtype == np.float16 and all(g.dtype == np.float16 for g in pb(np.ones_like(out)))
    want = refattn.nystrom_attention(*(a.astype(np.float64) for a in (q, k, v)), num_landmarks=4)
    np.testing.assert_allclose(out.astype(np.float64), want, rtol=4e-3, atol=4e-3)


# ----------------------------------------------------------------------------- cost

COST_CASES = [
    ({"pinv": "iterative"}, 4, 0),
    ({"pinv": "iterative", "iterations": 0}, 4, 0),
    ({"pinv": "iterative", "errors": "ignore"}, 3, 0),
    ({"pinv": "iterative", "pinv_tol": 5.0}, 4, 0),  # r_J / sqrt(m) <= 1 always: never raises
    ({"pinv": "iterative", "iterations": 0, "pinv_tol": 5.0}, 4, 0),
    ({"pinv": "iterative", "conv_kernel_size": 3}, 4, 3),
    ({"pinv": "exact"}, 5, 0),
]


@pytest.mark.parametrize(("kw", "m", "ksize"), COST_CASES)
def test_counted_cost_equals_closed_form(kw, m, ksize):
    """Counted (refattn.cost.measure) == closed form, flops and transcendentals exactly (the exact
    mode's xp.linalg.pinv by refattn.cost's linalg convention, exact_pinv_flops); the modelled peak
    bytes are an upper bound of the counted peak."""
    q, k, v = host_qkv(26, batch=(2, 3), n=10, m=10, d=4, dv=3)
    args = [q, k, v] + ([np.ones((ksize, 1))] if ksize else [])
    counted = measure(refattn.nystrom_attention, *args, num_landmarks=m, **kw)
    closed = N.cost(10, 4, 3, num_landmarks=m, batch=(2, 3), **kw)
    assert counted.flops == closed.flops
    assert counted.transcendentals == closed.transcendentals
    assert counted.peak_bytes <= closed.peak_bytes


def test_cost_is_linear_in_n_at_fixed_m():
    """nys-on: closed-form flops and the modelled peak bytes grow linearly in n at fixed m = 64:
    local log-log slope between n and 2n is 1 - O(m^2 / n) (the J m^3 pinv term is constant)."""
    for n in (2**13, 2**15):
        c1, c2 = N.cost(n, 64, 64, num_landmarks=64), N.cost(2 * n, 64, 64, num_landmarks=64)
        for f in ("flops", "transcendentals", "peak_bytes"):
            slope = math.log2(getattr(c2, f) / getattr(c1, f))
            assert 0.95 <= slope <= 1.0 + 1e-12, (f, n, slope)
    c = N.cost(128, 8, 8, num_landmarks=8, pinv="exact")
    assert c.per_op["linalg.pinv"].flops == N.exact_pinv_flops(8) == 28 * 8**3 + 8**2 + 8


def test_counted_peak_bytes_are_linear_in_n():
    """Counted peak of the forward pass at m = 16, d = dv = 8, n = 256 -> 1024: a ratio below 4.6
    (linear growth gives ~4, an n^2 term ~16), and the model bounds the count."""
    peaks = []
    for n in (256, 1024):
        q, k, v = host_qkv(28, batch=(), n=n, m=n, d=8, dv=8)
        c = measure(refattn.nystrom_attention, q, k, v, num_landmarks=16)
        assert c.peak_bytes <= N.cost(n, 8, 8, num_landmarks=16).peak_bytes
        peaks.append(c.peak_bytes)
    assert peaks[1] / peaks[0] < 4.6, peaks


def test_measured_peak_memory_is_linear_in_n():
    """tracemalloc peak of the numpy forward pass at fixed m = 16 for n = 512 and 2048 (d = dv = 8):
    the ratio stays below 4.6 (linear growth gives ~4; an n^2 term would give ~16)."""
    b = refattn.backends.get("numpy")
    was_tracing = tracemalloc.is_tracing()
    peaks = []
    try:
        for n in (512, 2048):
            q, k, v = host_qkv(27, batch=(), n=n, m=n, d=8, dv=8)
            b.reset_peak_memory()
            refattn.nystrom_attention(q, k, v, num_landmarks=16)
            peaks.append(b.peak_memory())
    finally:
        if not was_tracing:  # tracemalloc slows every later allocation: leave it as found
            tracemalloc.stop()
    assert peaks[1] / peaks[0] < 4.6, peaks
