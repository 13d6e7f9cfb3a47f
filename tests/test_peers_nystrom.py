"""refattn against lucidrains' nystrom-attention (its own NystromAttention module) in float64.

The module takes a token stream ``x (b, n, dim)``; with ``dim = 3 h dh``, ``to_qkv`` set to the identity
and ``to_out`` to the selection ``[I; 0]`` (bias 0), ``x = [q | k | v]`` per token and the first
``h dh`` output features are the attention output, so ``dx`` splits into ``dq, dk, dv``. The residual
conv's weight ``(h, 1, K, 1)`` is refattn's ``conv_weight (h, K, 1)``.

Preset ``lucidrains`` (``refattn.get_method("nystrom").presets``): ``pinv_init="global"`` (Z_0's maxima
over the batch and all heads), ``segments="front_pad"`` (zero rows prepended when ``m`` does not divide
``n``), 6 iterations.

Tolerance (iterative pseudoinverse, derived): the two implementations differ only in rounding order
(``(F Z)(B V)`` against ``F (Z (B V))``, sums then division against means, ``q`` scaled before the
logits). A relative perturbation ``delta`` of ``A`` reaches ``Z_6`` amplified by at most the condition
number of the iteration's Jacobian, ``<= prod_j ||dZ_{j+1}/dZ_j|| ~ (13/4)^6 ~ 1.2e3`` before
convergence, times ``kappa(A)`` once converged; ``delta ~ m * 2^-52``. The bound used is
``TOL = 1e3 * kappa_2(A) * m * eps`` per case (about ``1e-11`` on these sizes), computed from the
landmark matrices the peer returns; the measured errors are far below it.
"""

from __future__ import annotations

import numpy as np
import pytest

import refattn
from refattn._registry import get_method

from ._peers import compare, refattn_vjp, torch_grads

torch = pytest.importorskip("torch")
na = pytest.importorskip("nystrom_attention")

PRESET = get_method("nystrom").presets["lucidrains"]
SEEDS = range(3)
EPS = np.finfo(np.float64).eps


def _peer(h, dh, m, ksize):
    inner = h * dh
    mod = na.NystromAttention(dim=3 * inner, dim_head=dh, heads=h, num_landmarks=m, pinv_iterations=6,
                              residual=ksize is not None, residual_conv_kernel=ksize or 33).double()
    with torch.no_grad():
        mod.to_qkv.weight.copy_(torch.eye(3 * inner, dtype=torch.float64))
        sel = torch.zeros((3 * inner, inner), dtype=torch.float64)
        sel[:inner] = torch.eye(inner, dtype=torch.float64)
        mod.to_out[0].weight.copy_(sel)
        mod.to_out[0].bias.zero_()
    return mod


def _to_tokens(q, k, v):  # (b, h, n, dh) x3 -> (b, n, 3 h dh) as 'b n (h d)' per chunk
    return np.concatenate([np.swapaxes(t, 1, 2).reshape(t.shape[0], t.shape[2], -1) for t in (q, k, v)], axis=-1)


def _from_tokens(x, h):  # inverse of _to_tokens
    b, n, _ = x.shape
    return [np.swapaxes(c.reshape(b, n, h, -1), 1, 2) for c in np.split(x, 3, axis=-1)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [9, 7, 8])  # m = 3 divides 9; 7 and 8 are front-padded to 9
@pytest.mark.parametrize("ksize", [None, 3])
def test_matches_nystrom_attention(seed, n, ksize):
    b, h, dh, m = 2, 2, 3, 3
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, h, n, dh)) for _ in range(3))
    dout = rng.standard_normal((b, h, n, dh))
    mod = _peer(h, dh, m, ksize)
    params = ()
    if ksize is not None:
        wconv = rng.standard_normal((h, 1, ksize, 1))
        with torch.no_grad():
            mod.res_conv.weight.copy_(torch.tensor(wconv))
        params = (wconv.reshape(h, ksize, 1),)
    x = torch.tensor(_to_tokens(q, k, v), requires_grad=True)
    out_t, (attn1, attn2_inv, attn3) = mod(x, return_attn_matrices=True)
    inner = h * dh
    dout_tok = np.zeros(tuple(out_t.shape))
    dout_tok[..., :inner] = np.swapaxes(dout, 1, 2).reshape(b, n, inner)
    wrt = (x,) + ((mod.res_conv.weight,) if ksize is not None else ())
    grads_t = torch_grads(torch, out_t, wrt, dout_tok)
    out_p = np.swapaxes(out_t.detach().numpy()[..., :inner].reshape(b, n, h, dh), 1, 2)
    dq_p, dk_p, dv_p = _from_tokens(grads_t[0], h)
    peer = [out_p, dq_p, dk_p, dv_p] + ([grads_t[1].reshape(h, ksize, 1)] if ksize is not None else [])

    opts = {**PRESET, "num_landmarks": m, **({"conv_kernel_size": ksize} if ksize is not None else {})}
    out, grads = refattn_vjp(refattn.nystrom_attention, (q, k, v, *params), dout, **opts)
    # the peer's landmark matrix: the pseudoinverse's conditioning sets the tolerance
    a = torch.linalg.pinv(attn2_inv.detach()).numpy()
    kappa = float(np.max(np.linalg.cond(a)))
    tol = 1e3 * kappa * m * EPS
    names = ("out", "dq", "dk", "dv") + (("dconv_weight",) if ksize is not None else ())
    option = f"lucidrains, n={n} m={m}" + (f", conv {ksize}" if ksize else "")
    compare("nystrom-attention", option, names, (out, *grads), peer, tol)


def test_global_init_couples_heads():
    """With the peer's global Z_0 scale, changing one head's inputs changes another head's output."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 6, 3)) for _ in range(3))
    base = np.asarray(refattn.nystrom_attention(q, k, v, num_landmarks=3, **PRESET))
    q2 = q.copy()
    q2[0, 1] *= 3.0
    moved = np.asarray(refattn.nystrom_attention(q2, k, v, num_landmarks=3, **PRESET))
    assert np.max(np.abs(moved[0, 0] - base[0, 0])) > 0.0
    local = {**PRESET, "pinv_init": "per_matrix"}
    b0 = np.asarray(refattn.nystrom_attention(q, k, v, num_landmarks=3, **local))
    b1 = np.asarray(refattn.nystrom_attention(q2, k, v, num_landmarks=3, **local))
    assert np.array_equal(b0[0, 0], b1[0, 0])
