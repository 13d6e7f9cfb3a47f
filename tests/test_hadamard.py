"""Fast Walsh-Hadamard transform and the WHT output projection (refattn.hadamard).

Tolerances (float64 unless stated; u = 2^-53, gamma_k = k u / (1 - k u), RECIPES.md section 0/7):

- Integer-valued inputs: every partial sum of the butterflies (and of the dense oracle ``H @ x``) is
  an integer below 2^53, so the unnormalised transform is compared for exact equality.
- Float inputs: an output of the unnormalised transform is a signed sum of the c inputs formed along
  a depth-p butterfly tree (p = log2 c), so |fl(fwht x) - H x| <= gamma_p ||x||_1 entrywise; the
  normalisation adds 2u relative (the rounding of 1/sqrt(c) and of the product). The dense oracle
  ``H @ x`` has its own error gamma_c ||x||_1. Hence ``(gamma_p + gamma_c + 2u) ||x||_1``.
- Gradient cross-checks against torch use the running-error form |fl(f) - f| <= gamma_K f_abs,
  where f_abs is the same computation on absolute values and K bounds the depth of every sum
  (stated per test).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refattn
from refattn import hadamard
from refattn.cost import measure
from refattn.hadamard import fwht, fwht_cost, hadamard_matrix, wht_cost, wht_projection
from refattn.testing import gradcheck

from .conftest import to

U = 2.0**-53


def gamma(k: int, u: float = U) -> float:
    return k * u / (1 - k * u)


@functools.cache
def host_h(c: int) -> np.ndarray:
    """Independent oracle: (H_c)_ij = (-1)^popcount(i & j), as int8."""
    i = np.arange(c, dtype=np.uint32)
    return np.where(np.bitwise_count(i[:, None] & i[None, :]) % 2 == 1, -1, 1).astype(np.int8)


@functools.cache
def int_case(c: int, rows: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued x (rows, c) in [-4, 4] and the exact H_c x: a float32 product of integers whose
    partial sums stay below 4 * 4096 < 2^24 is exact."""
    x = np.random.default_rng(seed + c).integers(-4, 5, (rows, c)).astype(np.float32)
    return x.astype(np.float64), (x @ host_h(c).astype(np.float32)).astype(np.float64)  # H symmetric


# --------------------------------------------------------------------------------------------------
# Sylvester matrices


@pytest.mark.parametrize("p", range(13))
def test_hadamard_matrix_is_sylvester(p):
    """hadamard_matrix(c) equals the popcount formula, is symmetric with entries +-1 (p <= 12)."""
    c = 2**p
    xp = refattn.backends.get("numpy").xp
    h = np.asarray(hadamard_matrix(c, xp=xp, dtype=xp.float32 if p > 10 else xp.float64))
    np.testing.assert_array_equal(h, host_h(c))


@pytest.mark.parametrize("p", range(13))
def test_gram_is_c_identity(p):
    """H_c H_c^T == c I exactly: integer sums below 2^24, so exact in float32 and float64.

    Every row is checked for p <= 10; for p = 11, 12 (a full product is 10^11 flops) 64 random rows
    are checked against all c rows (H H^T = c I iff every row has norm^2 c and is orthogonal to all
    others; by the Sylvester recursion the Gram of H_2c is diag(2 G, 2 G) with G that of H_c, so the
    full check of p <= 10 and the sampled check above are each exact statements).
    """
    c = 2**p
    h = np.asarray(hadamard_matrix(c)).astype(np.float32 if p > 10 else np.float64)
    rows = np.arange(c) if p <= 10 else np.random.default_rng(p).choice(c, 64, replace=False)
    gram = h[rows] @ h.T
    expected = np.zeros((len(rows), c))
    expected[np.arange(len(rows)), rows] = c
    np.testing.assert_array_equal(gram, expected)


def test_hadamard_matrix_on_backends(backend):
    h = hadamard_matrix(16, xp=backend.xp, device=backend.device)
    np.testing.assert_array_equal(backend.to_host(h), host_h(16))
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(12)


# --------------------------------------------------------------------------------------------------
# fwht == H_c x


@pytest.mark.parametrize("p", range(13))
def test_fwht_equals_dense_hadamard_every_power_of_two(backend, p):
    """fwht(x) == H_c x exactly for integer-valued x, c = 2^p up to 4096, on every backend; the
    normalised transform equals (H_c x) * (1/sqrt c) bit for bit (one rounding of the same product)."""
    c = 2**p
    x, hx = int_case(c)
    (xb,) = to(backend, x)
    np.testing.assert_array_equal(backend.to_host(fwht(xb, normalized=False)), hx)
    np.testing.assert_array_equal(backend.to_host(fwht(xb)), hx * (1.0 / math.sqrt(c)) if c > 1 else hx)


@pytest.mark.parametrize("axis", [-4, -3, -2, -1, 0, 1, 2, 3])
def test_fwht_along_any_axis(backend, axis):
    """The transform along any axis of a 4-d array == H_c applied along that axis (exact, integers)."""
    shape = [3, 4, 2, 5]
    shape[axis] = 16
    x = np.random.default_rng(1).integers(-4, 5, shape).astype(np.float64)
    expected = np.moveaxis(np.moveaxis(x, axis, -1) @ host_h(16).astype(np.float64), -1, axis)
    (xb,) = to(backend, x)
    np.testing.assert_array_equal(backend.to_host(fwht(xb, axis=axis, normalized=False)), expected)
    out, pullback = refattn.vjp(fwht, xb, axis=axis, normalized=False)
    np.testing.assert_array_equal(backend.to_host(pullback(out)[0]), 16 * x)


def test_involution_and_inverse(backend):
    """Unnormalised: fwht(fwht(x)) == c x exactly (integers). Normalised: fwht(fwht(x)) == x within
    2 (gamma_p + 2u) ||x||_1 + ... entrywise (two transforms, each with the entrywise bound)."""
    x, _ = int_case(64)
    (xb,) = to(backend, x)
    np.testing.assert_array_equal(backend.to_host(fwht(fwht(xb, normalized=False), normalized=False)), 64 * x)
    xf = np.random.default_rng(2).standard_normal((5, 64))
    (xfb,) = to(backend, xf)
    back = backend.to_host(fwht(fwht(xfb)))
    # |fwht(y) - H y/8| <= (g6 + 2u)||y||_1 with ||y||_1 <= sqrt(c)||y||_2 = 8||x||_2 <= 8||x||_1
    tol = (gamma(6) + 2 * U) * (1 + 8) * np.abs(xf).sum(axis=1, keepdims=True)
    assert np.all(np.abs(back - xf) <= tol)


def test_orthonormal_matrix(backend):
    """Q = fwht(I_c) has Q^T Q == I within gamma_c + 3u (entries are +-fl(1/sqrt c) exactly)."""
    for p in range(11):
        c = 2**p
        (eye,) = to(backend, np.eye(c))
        q = backend.to_host(fwht(eye, axis=0))
        np.testing.assert_array_equal(np.abs(q), np.full((c, c), 1.0 / math.sqrt(c) if c > 1 else 1.0))
        err = np.max(np.abs(q.T @ q - np.eye(c)))
        assert err <= gamma(c) + 3 * U, (c, err)


@given(p=st.integers(0, 10), rows=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_property_orthogonal_and_norm_preserving(p, rows, seed, scale):
    """Hypothesis: the normalised transform preserves norms and inner products, and matches the dense
    matrix, within the float64 bounds derived in the module docstring:

    |fwht(x) - H x/sqrt c| <= (gamma_p + gamma_c + 2u) ||x||_1 / sqrt c   (vs the dense oracle)
    | ||y|| - ||x|| |      <= e_x + gamma_c (||x|| + ||y||),  e_x = (gamma_p + 2u) ||x||_1
    |<y, w> - <x, z>|      <= ||x|| e_z + e_x ||z|| + e_x e_z + gamma_c (||y|| ||w|| + ||x|| ||z||)
    """
    c = 2**p
    rs = np.random.default_rng(seed)
    x, z = scale * rs.standard_normal((rows, c)), rs.standard_normal((rows, c))
    y, w = np.asarray(fwht(x)), np.asarray(fwht(z))
    l1x, l1z = np.abs(x).sum(1), np.abs(z).sum(1)
    dense = x @ host_h(c).astype(np.float64) / math.sqrt(c)
    assert np.all(np.abs(y - dense) <= ((gamma(p) + gamma(c) + 2 * U) * l1x / math.sqrt(c))[:, None])
    nx, ny, nz, nw = (np.linalg.norm(a, axis=1) for a in (x, y, z, w))
    ex, ez = (gamma(p) + 2 * U) * l1x, (gamma(p) + 2 * U) * l1z
    assert np.all(np.abs(ny - nx) <= ex + gamma(c) * (nx + ny))
    ip_tol = nx * ez + ex * nz + ex * ez + gamma(c) * (ny * nw + nx * nz)
    assert np.all(np.abs((y * w).sum(1) - (x * z).sum(1)) <= ip_tol)


def test_float32_and_half_precision(backend32):
    """float32: |fwht(x) - H x/sqrt c| <= (gamma_p + 2u32) ||x||_1/sqrt c (float64 oracle, exact enough:
    its own error is 2^-29 smaller). float16: computed in float32 and cast back, bit for bit."""
    u32 = 2.0**-24
    x = np.random.default_rng(3).standard_normal((4, 256))
    (xb,) = to(backend32, x, dtype="float32")
    y = fwht(xb)
    assert str(y.dtype).endswith("float32")
    ref = x.astype(np.float32).astype(np.float64) @ host_h(256).astype(np.float64) / 16
    tol = (gamma(8, u32) + 2 * u32) * np.abs(x.astype(np.float32)).sum(1, keepdims=True) / 16
    assert np.all(np.abs(backend32.to_host(y).astype(np.float64) - ref) <= tol)
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(np.asarray(fwht(x16)), np.asarray(fwht(x16.astype(np.float32))).astype(np.float16))


# --------------------------------------------------------------------------------------------------
# backward


def test_fwht_backward_is_the_transform(backend):
    """The vjp of fwht is fwht itself (H symmetric): bit for bit, normalised or not, any axis."""
    rs = np.random.default_rng(4)
    x, dy = to(backend, rs.standard_normal((3, 32, 2)), rs.standard_normal((3, 32, 2)))
    for normalized in (True, False):
        _, pullback = refattn.vjp(fwht, x, axis=1, normalized=normalized)
        (dx,) = pullback(dy)
        np.testing.assert_array_equal(backend.to_host(dx), backend.to_host(fwht(dy, axis=1, normalized=normalized)))


def test_adjoint_identity():
    """<fwht(x), y> == <x, fwht(y)> within the bound of the two inner products (symmetry of H)."""
    rs = np.random.default_rng(5)
    x, y = rs.standard_normal(1024), rs.standard_normal(1024)
    a, b = float(np.dot(np.asarray(fwht(x)), y)), float(np.dot(x, np.asarray(fwht(y))))
    ex, ey = (gamma(10) + 2 * U) * np.abs(x).sum(), (gamma(10) + 2 * U) * np.abs(y).sum()
    tol = ex * np.linalg.norm(y) + ey * np.linalg.norm(x) + 2 * gamma(1024) * np.linalg.norm(x) * np.linalg.norm(y)
    assert abs(a - b) <= tol


@pytest.mark.parametrize("pad", [False, True])
def test_gradcheck_fwht_and_projection(backend, pad):
    rs = np.random.default_rng(6)
    c = 12 if pad else 16
    x, scale, shift = to(backend, rs.standard_normal((2, 4, c)), rs.standard_normal(c), rs.standard_normal(c))
    gradcheck(fwht, (x,), kwargs={"axis": -1, "pad": pad})
    gradcheck(fwht, (x,), kwargs={"axis": 1 if not pad else -1, "pad": pad, "normalized": False})
    gradcheck(wht_projection, (x, scale, shift), kwargs={"pad": pad})
    gradcheck(wht_projection, (x, scale), kwargs={"pad": pad, "normalized": False})


@pytest.mark.parametrize("shift", [True, False])
def test_wht_projection_matches_torch_autograd(backend, shift):
    """Output and all gradients of y = scale * (x H / sqrt c) + shift against torch autograd with the
    explicit matrix. Bound: |fl(f) - f| <= gamma_K f_abs for both sides, K = c + rows + 8 (the
    deepest sum: c terms of the dense product or rows terms of the scale/shift reductions, plus a few
    roundings), f_abs the same computation on absolute values."""
    torch = pytest.importorskip("torch")
    rs = np.random.default_rng(7)
    c, lead = 32, (2, 5)
    x, dy = rs.standard_normal((*lead, c)), rs.standard_normal((*lead, c))
    s, b = rs.standard_normal(c), rs.standard_normal(c)
    args = to(backend, x, s, b) if shift else to(backend, x, s)
    out, pullback = refattn.vjp(wht_projection, *args)
    grads = pullback(backend.asarray(dy))
    hn = host_h(c).astype(np.float64) / math.sqrt(c)
    tx, ts, tb = (torch.tensor(a, requires_grad=True) for a in (x, s, b))
    ty = (tx @ torch.tensor(hn)) * ts + (tb if shift else 0)
    ty.backward(torch.tensor(dy))
    K = c + 10 + 8
    ax, ah, adh = np.abs(x), np.abs(hn), np.abs(dy)
    t_abs = ax @ ah
    abs_out = t_abs * np.abs(s) + (np.abs(b) if shift else 0)
    abs_dx = (adh * np.abs(s)) @ ah
    abs_ds = (adh * t_abs).sum((0, 1))
    checks = [(out, ty.detach().numpy(), abs_out), (grads.dx, tx.grad.numpy(), abs_dx),
              (grads.dscale, ts.grad.numpy(), abs_ds)]
    if shift:
        checks.append((grads.dshift, tb.grad.numpy(), adh.sum((0, 1))))
    else:
        assert grads.dshift is None
    for got, ref, fabs in checks:
        assert np.all(np.abs(backend.to_host(got) - ref) <= 2 * gamma(K) * fabs)


# --------------------------------------------------------------------------------------------------
# padding


def test_non_power_of_two_raises_by_default(backend):
    (x,) = to(backend, np.ones((2, 768)))
    with pytest.raises(ValueError, match=r"power-of-two length.*got 768.*pad=True.*1024"):
        fwht(x)
    with pytest.raises(ValueError, match="power-of-two"):
        wht_projection(x, *to(backend, np.ones(768), np.ones(768)))


def test_padding_semantics(backend):
    """fwht(x, pad=True) == fwht([x, 0]) bit for bit (length c', normalised by 1/sqrt c'); its vjp is
    fwht(dy)[:c]; wht_projection(pad=True) applies the leading c x c block M of H_c'/sqrt c'."""
    rs = np.random.default_rng(8)
    c, cp = 12, 16
    x = rs.standard_normal((3, c, 2))
    (xb,) = to(backend, x)
    y = fwht(xb, axis=1, pad=True)
    assert tuple(y.shape) == (3, cp, 2)
    (xpad,) = to(backend, np.concatenate([x, np.zeros((3, cp - c, 2))], axis=1))
    np.testing.assert_array_equal(backend.to_host(y), backend.to_host(fwht(xpad, axis=1)))
    dy = rs.standard_normal((3, cp, 2))
    _, pullback = refattn.vjp(fwht, xb, axis=1, pad=True)
    (dx,) = pullback(backend.asarray(dy))
    np.testing.assert_array_equal(backend.to_host(dx), backend.to_host(fwht(backend.asarray(dy), axis=1))[:, :c])
    # projection: explicit block M (bound: gamma_K f_abs with K = c' + 8 on both sides)
    m = host_h(cp).astype(np.float64)[:c, :c] / math.sqrt(cp)
    x2, s, b = rs.standard_normal((4, c)), rs.standard_normal(c), rs.standard_normal(c)
    got = backend.to_host(wht_projection(*to(backend, x2, s, b), pad=True))
    ref = (x2 @ m) * s + b
    assert np.all(np.abs(got - ref) <= 2 * gamma(cp + 8) * ((np.abs(x2) @ np.abs(m)) * np.abs(s) + np.abs(b)))


def test_padded_projection_block_is_not_orthogonal():
    """The documented caveat: at c = 12 (c' = 16), as at GPT-2's 768 (c' = 1024), the leading block of
    H_c'/sqrt c' has singular values in [1/2, 1], so norms are not preserved (exact: the block is
    [[A, B], [B^T, -C]] built from H_8 and H_4 blocks; computed singular values to 1e-12)."""
    c = 12
    eye = np.eye(c)
    m = np.asarray(wht_projection(eye, np.ones(c), None, pad=True))  # rows: M e_i
    sv = np.linalg.svd(m, compute_uv=False)
    assert abs(sv.max() - 1.0) < 1e-12 and abs(sv.min() - 0.5) < 1e-12


# --------------------------------------------------------------------------------------------------
# backend primitive


def test_backend_primitive_matches_generic(backend):
    """impl="backend" (where the backend registers an fwht primitive) == the generic oracle: bit for
    bit on integer-valued inputs (every partial sum exact), and within (gamma_p + gamma_S) ||x||_1
    for float inputs (S = sum of the Kronecker factor sizes, the depth of the GEMM sums)."""
    from refattn.backends._hadamard import factor_sizes

    prim = backend.primitives.get("fwht")
    if prim is None:
        (x,) = to(backend, np.ones((2, 8)))
        with pytest.raises(ValueError, match="primitive"):
            fwht(x, impl="backend")
        np.testing.assert_array_equal(backend.to_host(fwht(x, impl="auto")), backend.to_host(fwht(x)))
        pytest.skip(f"backend {backend.name} registers no fwht primitive (generic used by impl='auto')")
    for p in range(13):
        c = 2**p
        x, hx = int_case(c)
        (xb,) = to(backend, x)
        np.testing.assert_array_equal(backend.to_host(fwht(xb, impl="backend", normalized=False)), hx)
        xf = np.random.default_rng(p).standard_normal((3, c))
        (xfb,) = to(backend, xf)
        diff = np.abs(backend.to_host(fwht(xfb, impl="backend")) - backend.to_host(fwht(xfb)))
        tol = (gamma(p) + gamma(sum(factor_sizes(c))) + 4 * U) * np.abs(xf).sum(1, keepdims=True) / math.sqrt(c)
        assert np.all(diff <= tol), c
    for axis in (0, 1, 2):  # any axis, and the backward through the primitive
        shape = [3, 5, 2]
        shape[axis] = 128
        x = np.random.default_rng(axis).integers(-4, 5, shape).astype(np.float64)
        (xb,) = to(backend, x)
        np.testing.assert_array_equal(backend.to_host(fwht(xb, axis=axis, impl="backend", normalized=False)),
                                      backend.to_host(fwht(xb, axis=axis, normalized=False)))
        out, pullback = refattn.vjp(fwht, xb, axis=axis, impl="auto", normalized=False)
        np.testing.assert_array_equal(backend.to_host(pullback(out)[0]), 128 * x)  # H H x = c x


def test_backend_primitive_float32(backend32):
    prim = backend32.primitives.get("fwht")
    if prim is None:
        pytest.skip(f"backend {backend32.name} registers no fwht primitive")
    x, hx = int_case(1024)
    (xb,) = to(backend32, x, dtype="float32")  # integer sums < 2^24: exact in float32
    got = fwht(xb, impl="backend", normalized=False)
    assert str(got.dtype).endswith("float32")
    np.testing.assert_array_equal(backend32.to_host(got).astype(np.float64), hx)


# --------------------------------------------------------------------------------------------------
# cost


def test_closed_form_cost():
    for p in range(13):
        c = 2**p
        assert fwht_cost(c, normalized=False).flops == c * p
        assert fwht_cost(c, batch=7).flops == 7 * (c * p + (c if c > 1 else 0))
    assert fwht_cost(768, pad=True, normalized=False).flops == 1024 * 10
    assert wht_cost(1024, batch=3).flops == 3 * (1024 * 10 + 1024 + 2 * 1024)
    assert wht_cost(768, pad=True, shift=False).flops == 1024 * 10 + 1024 + 768
    assert fwht_cost(64).transcendentals == 0
    with pytest.raises(ValueError, match="power-of-two"):
        fwht_cost(768)


@pytest.mark.parametrize("c,pad,normalized", [(1, False, True), (2, False, False), (256, False, False),
                                              (256, False, True), (768, True, True), (4096, False, False)])
def test_counted_flops_equal_closed_form(c, pad, normalized):
    """Counted additions of fwht == c log2 c per vector (+ c multiplications when normalised)."""
    x = np.random.default_rng(9).standard_normal((3, c))
    counted = measure(fwht, x, pad=pad, normalized=normalized)
    expected = fwht_cost(c, batch=3, pad=pad, normalized=normalized)
    assert counted.flops == expected.flops and counted.transcendentals == expected.transcendentals == 0
    s, b = np.ones(c), np.zeros(c)
    counted = measure(wht_projection, x, s, b, pad=pad, normalized=normalized)
    assert counted.flops == wht_cost(c, batch=3, pad=pad, normalized=normalized).flops


# --------------------------------------------------------------------------------------------------
# bad input


def test_bad_input(backend):
    (x,) = to(backend, np.ones((2, 8)))
    s, b = to(backend, np.ones(8), np.ones(8))
    cases = [
        (lambda: fwht(x, axis=2), ValueError, "axis 2 is out of range"),
        (lambda: fwht(x, axis=-3), ValueError, "out of range"),
        (lambda: fwht(x, axis=1.0), TypeError, "axis must be an integer"),
        (lambda: fwht(x, axis=True), TypeError, "axis must be an integer"),
        (lambda: fwht(x, normalized=1), TypeError, "normalized must be True or False"),
        (lambda: fwht(x, pad="yes"), TypeError, "pad must be True or False"),
        (lambda: fwht(x, impl="fast"), ValueError, "impl must be one of"),
        (lambda: fwht(to(backend, np.ones((2, 0)))[0]), ValueError, "length >= 1"),
        (lambda: fwht(to(backend, np.ones((2, 6)))[0], axis=1), ValueError, "power-of-two length.*got 6"),
        (lambda: wht_projection(x, to(backend, np.ones(9))[0], b), ValueError, r"scale must have shape \(8,\)"),
        (lambda: wht_projection(x, to(backend, np.ones((1, 8)))[0], b), ValueError, "scale must have shape"),
        (lambda: wht_projection(x, s, to(backend, np.ones(4))[0]), ValueError, r"shift must have shape \(8,\)"),
        (lambda: wht_projection(x, to(backend, np.ones(8), dtype="float32")[0], b), TypeError, "scale must have"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()


def test_bad_input_types():
    with pytest.raises(TypeError, match="real floating"):
        fwht(np.ones((2, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="at least 1 dimensions"):
        fwht(np.float64(1.0).reshape(()))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        wht_projection(np.ones((2, 8)), torch.ones(8, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="positive integer"):
        fwht_cost(0)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(0)
    assert hadamard.next_power_of_two(768) == 1024 and hadamard.next_power_of_two(1) == 1
    assert not hadamard.is_power_of_two(0) and hadamard.is_power_of_two(4096)
