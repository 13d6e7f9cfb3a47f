r"""The float64 oracle against 50-digit arithmetic (issue 13, part 3).

mpmath at 50 significant digits evaluates the same formulas on the exact float64 inputs (every
binary64 number is an mpf exactly); its own error (~1e-50) is negligible. ``u = 2^-53``,
``gamma_k = k u / (1 - k u)``.

Softmax attention, forward. Derivation (tests/test_stability.py, bound (F)): the computed logits
carry absolute error ``delta_i <= gamma_{d+3} S_i`` with ``S_i = scale max_j sum_c |q_ic k_jc|``, the
weights then relative error ``e^{2 delta_i} - 1``, the exps, sums and ``P V`` add ``2 gamma_{m+3}``:

    ``|out^_ic - out_ic| <= (e^{2 delta_i} - 1 + 2 gamma_{m+3}) max|v|
                         ~= (2 (d + 3) S_i + 2 (m + 3)) u max|v|``.

The output is a convex combination of values, so the error is measured relative to ``max|v|`` (an
entry can be ~0 by cancellation: an entrywise relative bound does not exist). **The issue's 1e-13
cannot hold in general**: the rounding of a logit of size ``S`` is ``~u S`` in absolute terms and
exp turns it into a *relative* error ``~u S`` of the weights, so at ``S = 1e3`` the error is
``~1e-12 max|v|``, and it is attained (the sweep below records the worst ratio). 1e-13 holds while
``2 (d + 3) S + 2 (m + 3) <= 1e-13 / u ~= 450``, i.e. logits up to ~30 for d <= 4: tested too.

Softmax attention, backward: bound (B) of tests/test_stability.py.

Linear attention (elu+1, eps as given): all weights ``w_ij = phi(q_i) . phi(k_j) >= 0``, each term
``phi(q_ic) phi(k_jc) v_j`` rounded with relative error ``<= gamma_{d+m+2}`` through the two sums, the
normaliser likewise, so ``|out^_ic - out_ic| <= 2 gamma_{d+m+3} max|v|`` (the scale of the weights
cancels; no dependence on the size of q, k beyond the exp's own ``u``).

FWHT (``c = 2^p``): each output is ``sum_i +-x_i`` through ``p`` butterfly additions, each adding a
relative ``u`` to partial sums of absolute values, then one multiplication by ``fl(1/sqrt(c))``
(itself within ``u``): ``|y^_k - y_k| <= gamma_{p+2} ||x||_1 / sqrt(c)``.

The pullback of the FWHT is the same transform (``H`` is symmetric): the same bound with ``dy``.
Linear attention's backward: componentwise bounds in ``_linear_bounds`` (gamma_K times the
absolute-value evaluation of the gradient formulas).

The worst observed error / bound ratios and worst relative errors are printed by
``test_report_worst_cases`` (``pytest -s``) and recorded in the closing note.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import refattn

mp = mpmath.mp
U = 2.0**-53
WORST: dict[str, dict[str, float]] = {}


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def _record(name: str, ratio: float, rel: float) -> None:
    w = WORST.setdefault(name, {"ratio": 0.0, "rel": 0.0})
    w["ratio"] = max(w["ratio"], ratio)
    w["rel"] = max(w["rel"], rel)


def _mpm(a: np.ndarray) -> list:
    """Nested lists of mpf, exactly the float64 values."""
    return [[mpmath.mpf(float(x)) for x in row] for row in a]


def _mp_softmax_attention(q, k, v, dout, scale):
    """50-digit softmax attention and its gradients, 2-D (n, d), (m, d), (m, dv), (n, dv)."""
    with mpmath.workdps(50):
        n, m, d, dv = q.shape[0], k.shape[0], q.shape[1], v.shape[1]
        Q, K, V, G = _mpm(q), _mpm(k), _mpm(v), _mpm(dout)
        sc = mpmath.mpf(scale)
        S = [[sc * mpmath.fsum(Q[i][c] * K[j][c] for c in range(d)) for j in range(m)] for i in range(n)]
        P = []
        for i in range(n):
            mx = max(S[i])
            e = [mpmath.exp(s - mx) for s in S[i]]
            tot = mpmath.fsum(e)
            P.append([x / tot for x in e])
        O = [[mpmath.fsum(P[i][j] * V[j][c] for j in range(m)) for c in range(dv)] for i in range(n)]
        dP = [[mpmath.fsum(G[i][c] * V[j][c] for c in range(dv)) for j in range(m)] for i in range(n)]
        delta = [mpmath.fsum(O[i][c] * G[i][c] for c in range(dv)) for i in range(n)]
        dS = [[P[i][j] * (dP[i][j] - delta[i]) for j in range(m)] for i in range(n)]
        dq = [[sc * mpmath.fsum(dS[i][j] * K[j][c] for j in range(m)) for c in range(d)] for i in range(n)]
        dk = [[sc * mpmath.fsum(dS[i][j] * Q[i][c] for i in range(n)) for c in range(d)] for j in range(m)]
        dv_ = [[mpmath.fsum(P[i][j] * G[i][c] for i in range(n)) for c in range(dv)] for j in range(m)]
        conv = lambda A: np.array([[float(x) for x in row] for row in A])  # noqa: E731
        return conv(O), conv(dq), conv(dk), conv(dv_)


def _softmax_case(seed: int, n: int, m: int, d: int, dv: int, L: float, ties: bool = False):
    """Largest |logit| = L. ``ties``: near-duplicate keys (k_j = k_0 + O(1/L)), so that a query's
    logits are all ~L yet differ by O(1): the hard case, where the weights depend on the O(u L)
    rounding of the logits (with well-separated logits the softmax is ~one-hot and insensitive)."""
    rs = np.random.default_rng(seed)
    q, k = rs.standard_normal((n, d)), rs.standard_normal((m, d))
    if ties:
        k = k[:1] + (2.0 / L) * k
    v, dout = rs.standard_normal((m, dv)), rs.standard_normal((n, dv))
    s = np.abs(q @ k.T).max() / math.sqrt(d)
    c = math.sqrt(L / s) if s > 0 else 1.0
    return c * q, c * k, v, dout


def _softmax_bounds(q, k, v, dout, scale, nb=1):
    """Bounds (F), (B); ``nb`` key blocks add ``2 nb u`` (the online softmax's rescalings)."""
    d, m, dv = q.shape[-1], k.shape[-2], v.shape[-1]
    S = scale * np.max(np.abs(q) @ np.abs(k).T, axis=-1)                        # (n,)
    e2 = np.expm1(2 * gamma(d + 3) * S)
    vmax = np.abs(v).max()
    f = (e2 + 2 * gamma(m + 3) + 2 * nb * U) * vmax
    eta = 3 * e2 + 2 * gamma(m + dv + 3) + 2 * nb * U
    dsum = np.abs(dout).sum(-1)
    bq = 2 * eta * scale * np.abs(k).max() * dsum * vmax
    bk = 2 * eta.max() * scale * np.abs(q).max() * vmax * dsum.sum()
    bv = eta.max() * np.abs(dout).sum(0)
    return f[:, None], bq[:, None], bk, bv[None, :], S


@settings(max_examples=40)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), m=st.integers(1, 5), d=st.integers(1, 4),
       dv=st.integers(1, 3), log_l=st.floats(-2.0, 4.0), ties=st.booleans(),
       impl=st.sampled_from(["dense", "blockwise"]))
@example(seed=4, n=3, m=4, d=4, dv=2, log_l=4.0, ties=True, impl="dense")
@example(seed=4, n=3, m=4, d=4, dv=2, log_l=4.0, ties=True, impl="blockwise")
@example(seed=1, n=4, m=5, d=4, dv=3, log_l=3.0, ties=True, impl="dense")
@example(seed=2, n=4, m=5, d=1, dv=3, log_l=4.0, ties=False, impl="dense")
def test_softmax_forward_backward_vs_mpmath(seed, n, m, d, dv, log_l, ties, impl):
    """Largest logit L = 10^log_l in [0.01, 1e4], with and without near-ties: forward within (F),
    backward within (B), and the forward within 1e-13 max|v| wherever (F) is below it."""
    q, k, v, dout = _softmax_case(seed, n, m, d, dv, 10.0**log_l, ties)
    scale = 1.0 / math.sqrt(d)
    kw = {"impl": impl, "block_k": 2, "block_q": 3} if impl == "blockwise" else {"impl": impl}
    nb = math.ceil(m / 2) if impl == "blockwise" else 1
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
    got = (out, *pb(dout))
    want = _mp_softmax_attention(q, k, v, dout, scale)
    bounds = _softmax_bounds(q, k, v, dout, scale, nb)
    vmax, dsum = np.abs(v).max(), np.abs(dout).sum(-1)
    # the natural size of each result (its bound without the rounding factor): errors are
    # reported relative to it (normwise; single entries can vanish by cancellation)
    natural = {"forward": vmax, "dq": scale * np.abs(k).max() * vmax * dsum.max(),
               "dk": scale * np.abs(q).max() * vmax * dsum.sum(), "dv": np.abs(dout).sum(0).max()}
    for name, g, w, b in zip(("forward", "dq", "dk", "dv"), got, want, bounds[:4], strict=True):
        err = np.abs(g - w)
        assert np.all(err <= b), f"{name}: worst err/bound {np.max(err / b):.3g}"
        _record(f"softmax {name}", float(np.max(err / b)), float(err.max() / natural[name]))
    if np.all(bounds[0] <= 1e-13 * vmax):
        assert np.all(np.abs(out - want[0]) <= 1e-13 * vmax)


def test_softmax_large_logit_worst_case_exceeds_1e13():
    """Concrete cases (logits ~1e4 with O(1) gaps) where the float64 forward is off by more than
    1e-13 max|v|, so the issue's 1e-13 cannot be promised at large logits, yet within bound (F)."""
    worst = 0.0
    for seed in range(6):
        q, k, v, dout = _softmax_case(seed, 3, 4, 4, 2, 1e4, ties=True)
        out = refattn.softmax_attention(q, k, v)
        want = _mp_softmax_attention(q, k, v, dout, 0.5)[0]
        f = _softmax_bounds(q, k, v, dout, 0.5)[0]
        err = np.abs(out - want)
        assert np.all(err <= f)
        worst = max(worst, float(err.max() / np.abs(v).max()))
    _record("softmax forward, L = 1e4 near-ties", 0.0, worst)
    assert worst > 1e-13


# ----------------------------------------------------------------------------------------------
# linear attention (elu+1)
# ----------------------------------------------------------------------------------------------

def _mp_linear(q, k, v, dout, eps):
    """50-digit elu+1 linear attention and its gradients (module docstring's formulas)."""
    with mpmath.workdps(50):
        def phi(x):
            return x + 1 if x > 0 else mpmath.exp(x)

        def dphi(x):
            return mpmath.mpf(1) if x > 0 else mpmath.exp(x)
        Qx, Kx = _mpm(q), _mpm(k)
        Q = [[phi(x) for x in row] for row in Qx]
        K = [[phi(x) for x in row] for row in Kx]
        V, G = _mpm(v), _mpm(dout)
        n, m, d, dv = len(Q), len(K), q.shape[1], v.shape[1]
        W = [[mpmath.fsum(Q[i][c] * K[j][c] for c in range(d)) for j in range(m)] for i in range(n)]
        den = [mpmath.fsum(W[i]) + mpmath.mpf(float(eps)) for i in range(n)]
        O = [[mpmath.fsum(W[i][j] * V[j][c] for j in range(m)) / den[i] for c in range(dv)] for i in range(n)]
        # dW_ij = (v_j - out_i) . G_i / den_i
        dW = [[mpmath.fsum((V[j][c] - O[i][c]) * G[i][c] for c in range(dv)) / den[i] for j in range(m)]
              for i in range(n)]
        dq = [[dphi(Qx[i][c]) * mpmath.fsum(dW[i][j] * K[j][c] for j in range(m)) for c in range(d)]
              for i in range(n)]
        dk = [[dphi(Kx[j][c]) * mpmath.fsum(dW[i][j] * Q[i][c] for i in range(n)) for c in range(d)]
              for j in range(m)]
        dv_ = [[mpmath.fsum(W[i][j] * G[i][c] / den[i] for i in range(n)) for c in range(dv)] for j in range(m)]
        conv = lambda A: np.array([[float(x) for x in row] for row in A])  # noqa: E731
        return conv(O), conv(dq), conv(dk), conv(dv_)


def _linear_bounds(q, k, v, dout, eps):
    """Forward 2 gamma_{d+m+3} max|v|; backward gamma_K times the absolute-value evaluation, with
    A_ij = (sum_c |v_jc G_ic| + max|v| ||G_i||_1) / (r_i + eps) (the second term covers the error of
    out_i inside dW_ij = (v_j - out_i) . G_i / (r_i + eps)) and K = d + 2m + n + 2dv + 10 roundings
    on the longest path (r_i, out_i, dW, the sums over j or i, the product with phi')."""
    n, d = q.shape
    m, dv = v.shape
    phi = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))  # noqa: E731
    dphi = lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))  # noqa: E731
    fq, fk = phi(q), phi(k)
    w = fq @ fk.T
    den = w.sum(-1) + eps
    vmax = np.abs(v).max()
    a = (np.abs(dout) @ np.abs(v).T + vmax * np.abs(dout).sum(-1, keepdims=True)) / den[:, None]  # (n, m)
    g = gamma(d + 2 * m + n + 2 * dv + 10)
    bq = g * dphi(q) * (a @ fk)
    bk = g * dphi(k) * (a.T @ fq)
    bv = g * (w / den[:, None]).T @ np.abs(dout)
    return 2 * gamma(d + m + 3) * vmax, bq, bk, bv


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), m=st.integers(1, 5), d=st.integers(1, 4),
       dv=st.integers(1, 3), log_scale=st.floats(-1.0, 2.0), eps=st.sampled_from([0.0, 1e-6]))
def test_linear_attention_vs_mpmath(seed, n, m, d, dv, log_scale, eps):
    """elu+1 linear attention, inputs of size up to 100: forward within 2 gamma_{d+m+3} max|v|,
    gradients within the componentwise bounds of ``_linear_bounds``."""
    rs = np.random.default_rng(seed)
    c = 10.0**log_scale
    q, k, v = c * rs.standard_normal((n, d)), c * rs.standard_normal((m, d)), rs.standard_normal((m, dv))
    dout = rs.standard_normal((n, dv))
    out, pb = refattn.vjp(refattn.linear_attention, q, k, v, eps=eps)
    got = (out, *pb(dout))
    want = _mp_linear(q, k, v, dout, eps)
    bounds = _linear_bounds(q, k, v, dout, eps)
    for name, g, w, b in zip(("forward", "dq", "dk", "dv"), got, want, bounds, strict=True):
        err = np.abs(g - w)
        assert np.all(err <= b), f"{name}: worst err/bound {np.max(err / b):.3g}"
        # natural size: the absolute-value evaluation (the bound without its gamma_K factor)
        natural = np.abs(v).max() if name == "forward" else max(
            float(np.max(b)) / gamma(d + 2 * m + n + 2 * dv + 10), 1e-300)
        _record(f"linear_attention elu+1 {name}", float(np.max(err / np.maximum(b, 1e-300))),
                float(err.max() / natural))


# ----------------------------------------------------------------------------------------------
# FWHT
# ----------------------------------------------------------------------------------------------

def _mp_fwht(x):
    c = x.shape[-1]
    with mpmath.workdps(50):
        X = _mpm(x)
        r = 1 / mpmath.sqrt(c)
        out = []
        for row in X:
            out.append([float(r * mpmath.fsum(((-1) ** bin(i & j).count("1")) * row[j] for j in range(c)))
                        for i in range(c)])
        return np.array(out)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), p=st.integers(0, 6), log_scale=st.floats(-3.0, 3.0))
def test_fwht_vs_mpmath(seed, p, log_scale):
    """Normalised FWHT of c = 2^p <= 64 entries: within gamma_{p+2} ||x||_1 / sqrt(c)."""
    c = 2**p
    x = 10.0**log_scale * np.random.default_rng(seed).standard_normal((3, c))
    dy = np.random.default_rng(seed + 1).standard_normal((3, c))
    y, pb = refattn.vjp(refattn.fwht, x)
    (dx,) = pb(dy)
    # the pullback is the same transform (H symmetric): same bound with dy for x
    for name, got, inp in (("forward", y, x), ("backward", dx, dy)):
        want = _mp_fwht(inp)
        b = gamma(p + 2) * np.abs(inp).sum(-1, keepdims=True) / math.sqrt(c)
        err = np.abs(got - want)
        assert np.all(err <= b), f"{name}: worst err/bound {np.max(err / b):.3g}"
        _record(f"fwht {name}", float(np.max(err / b)), float(np.max(err / np.abs(want).max())))


def test_report_worst_cases(capsys):
    """Print the worst observed error/bound ratio and relative error per method (closing note)."""
    with capsys.disabled():
        for name, w in sorted(WORST.items()):
            print(f"\nmpmath oracle: {name}: worst err/bound = {w['ratio']:.3g}, worst rel. err = {w['rel']:.3g}")
    assert all(w["ratio"] <= 1.0 for w in WORST.values())
