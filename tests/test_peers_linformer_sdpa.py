"""refattn against lucidrains' linformer (its own LinformerSelfAttention) and torch's
scaled_dot_product_attention in float64, and the two pitfalls met while mapping peers.

linformer: ``dim = h dh``; ``to_q``, ``to_k``, ``to_v`` and ``to_out`` are set to the identity (bias 0),
queries come from ``x`` and keys and values from ``context`` (so ``k = v = context`` and the peer's
``dcontext`` is refattn's ``dk + dv``). The peer's ``proj_k``, ``proj_v`` are ``(seq_len, k)``:
refattn's ``E = proj_k[:m].T``, ``F = proj_v[:m].T`` (``(k, m)``). torch SDPA: no mask, causal, a
boolean and an additive mask, and key padding. Tolerance 1e-12 relative (non-iterative).
"""

from __future__ import annotations

import numpy as np
import pytest

import refattn

from ._peers import compare, refattn_vjp, torch_grads

torch = pytest.importorskip("torch")

TOL = 1e-12
SEEDS = range(4)


def _linformer(dim, seq_len, kproj, heads, e, f):
    lf = pytest.importorskip("linformer")
    mod = lf.LinformerSelfAttention(dim=dim, seq_len=seq_len, k=kproj, heads=heads).double()
    with torch.no_grad():
        eye = torch.eye(dim, dtype=torch.float64)
        for lin in (mod.to_q, mod.to_k, mod.to_v, mod.to_out):
            lin.weight.copy_(eye)
        mod.to_out.bias.zero_()
    mod.proj_k = torch.nn.Parameter(torch.tensor(e))
    mod.proj_v = torch.nn.Parameter(torch.tensor(f))
    return mod


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [6, 8])  # m < seq_len = 8: the peer slices proj[:m]
def test_matches_linformer(seed, m):
    b, h, dh, n, kproj, seq_len = 2, 2, 3, 5, 4, 8
    dim = h * dh
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, n, dim))
    ctx = rng.standard_normal((b, m, dim))
    e, f = rng.standard_normal((seq_len, kproj)), rng.standard_normal((seq_len, kproj))
    dout_tok = rng.standard_normal((b, n, dim))
    mod = _linformer(dim, seq_len, kproj, h, e, f)
    tx, tc = torch.tensor(x, requires_grad=True), torch.tensor(ctx, requires_grad=True)
    out_t = mod(tx, context=tc)
    dx, dctx, de, df = torch_grads(torch, out_t, (tx, tc, mod.proj_k, mod.proj_v), dout_tok)

    def heads(t):  # (b, L, h dh) -> (b, h, L, dh)
        return np.swapaxes(t.reshape(t.shape[0], t.shape[1], h, dh), 1, 2)

    def tokens(t):
        return np.swapaxes(t, 1, 2).reshape(t.shape[0], t.shape[2], -1)

    q, kv = heads(x), heads(ctx)
    E, F = e[:m].T.copy(), f[:m].T.copy()
    out, (dq, dk, dv, dE, dF) = refattn_vjp(refattn.linformer_attention, (q, kv, kv, E, F), heads(dout_tok))
    compare("linformer", f"self-attention with context, m={m} of seq_len={seq_len}",
            ("out", "dq", "dk+dv (k = v = context)", "dE", "dF"),
            (tokens(out), tokens(dq), tokens(dk + dv), dE, dF),
            (out_t.detach().numpy(), dx, dctx, de[:m].T, df[:m].T), TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive", "key_lengths"])
def test_matches_torch_sdpa(seed, mask_kind):
    F = torch.nn.functional
    b, h, n, m, d = 2, 3, 5, 5, 4
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal(s) for s in ((b, h, n, d), (b, h, m, d), (b, h, m, d), (b, h, n, d)))
    kw, tkw = {}, {}
    if mask_kind == "causal":
        kw, tkw = {"causal": True}, {"is_causal": True}
    elif mask_kind == "bool":
        mask = rng.random((b, 1, n, m)) < 0.7
        mask[..., 0] = True
        kw, tkw = {"mask": mask}, {"attn_mask": torch.tensor(mask)}
    elif mask_kind == "additive":
        bias = rng.standard_normal((b, h, n, m))
        kw, tkw = {"mask": bias}, {"attn_mask": torch.tensor(bias)}
    elif mask_kind == "key_lengths":
        lengths = rng.integers(1, m + 1, size=(b, 1))
        kw = {"key_lengths": lengths}
        tkw = {"attn_mask": torch.tensor((np.arange(m) < lengths)[:, None, None, :])}
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out_t = F.scaled_dot_product_attention(tq, tk, tv, **tkw)
    grads_t = torch_grads(torch, out_t, (tq, tk, tv), dout)
    out, grads = refattn_vjp(refattn.softmax_attention, (q, k, v), dout, **kw)
    compare("torch SDPA", mask_kind, ("out", "dq", "dk", "dv"), (out, *grads),
            (out_t.detach().numpy(), *grads_t), TOL)


def test_key_lengths_of_lower_rank_is_rejected():
    """A (b,) key_lengths against a (b, h) batch would broadcast against the heads (silently wrong
    when b == h): rejected, naming the axes; (b, 1) is the unambiguous spelling."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 4, 3)) for _ in range(3))
    with pytest.raises(ValueError, match=r"ambiguous against the batch shape \(2, 2\).*e\.g\. shape \(2, 1\)"):
        refattn.softmax_attention(q, k, v, key_lengths=np.array([1, 4]))
    out = refattn.softmax_attention(q, k, v, key_lengths=np.array([[1], [4]]))
    ref = refattn.softmax_attention(q[:1], k[:1, :, :1], v[:1, :, :1])
    np.testing.assert_allclose(out[:1], ref, rtol=1e-14)
    refattn.softmax_attention(q, k, v, key_lengths=np.array(3))  # a scalar is unambiguous


def test_linformer_square_projection_is_documented():
    doc = refattn.linformer_attention.__doc__ + refattn.methods.linformer.__doc__
    assert "(seq_len, k)" in doc and "square" in doc
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 6, 3)) for _ in range(3))
    with pytest.raises(ValueError, match=r"lucidrains.*\(seq_len, k\)"):
        refattn.linformer_attention(q, k, v, np.ones((6, 4)), np.ones((6, 4)))
