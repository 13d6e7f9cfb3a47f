"""Exact attention as kernel tests use it (issue 25): GQA, score/mask mods, sinks, LSE, query padding,
dropout replay, merging partial results, block skipping.

References, all in the same process and float64:

- torch SDPA with ``enable_gqa=True`` and an explicit boolean mask (GQA, causal alignments);
- FlexAttention's eager forward (CPU) with the same score/mask mods, and its returned LSE;
- an explicit torch float64 formula (``_torch_ref``) differentiated by torch autograd, for every
  gradient (q, k, v, sinks) and the LSE cotangent;
- central differences (``refattn.testing.gradcheck``).

Tolerances: every reference sums the same <= m + 1 exponentials in another order; each output,
LSE and gradient entry is a ratio of such sums, so in float64 (u = 1.1e-16) they agree to ~ 8 m u
relative to the row's scale (m <= 64: ~6e-14); the bound used, 1e-12 relative to the largest entry
of the reference, leaves a margin of ~15x. Softcap's tanh adds one rounding per logit.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refattn
from refattn import mods
from refattn.testing import gradcheck

torch = pytest.importorskip("torch")
F = torch.nn.functional
TOL = 1e-12


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fin = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), fin), "non-finite entries differ"
    if not fin.any():
        return 0.0
    return float(np.max(np.abs(a[fin] - b[fin])) / max(np.max(np.abs(b[fin])), 1e-300))


# largest relative error seen against each reference (printed by test_zz_report for the closing note)
WORST: dict[str, float] = {}


def _close(name: str, a, b, tol: float = TOL) -> None:
    e = _rel(a, b)
    key = name.split(" [")[0]
    WORST[key] = max(WORST.get(key, 0.0), e)
    assert e <= tol, f"{name}: relative error {e:.3g} > {tol:g}"


# ------------------------------------------------------------------------------------------------
# The explicit torch float64 formula
# ------------------------------------------------------------------------------------------------

def _keep_np(n, m, *, causal=None, window=None, segments=None, qlen=None, klen=None, keep=None, batch=(1, 1)):
    """The kept pairs as a host boolean array (*batch, n, m), built position by position."""
    i = np.arange(n)[:, None]
    j = np.arange(m)[None, :]
    k = np.ones((n, m), bool)
    if segments is not None:  # per-segment positions, bottom-right offset L_k - L_q per segment
        cq, ck = segments
        si = np.searchsorted(cq, np.arange(n), side="right") - 1
        sj = np.searchsorted(ck, np.arange(m), side="right") - 1
        k &= si[:, None] == sj[None, :]
        li, lj = (np.arange(n) - np.asarray(cq)[si])[:, None], (np.arange(m) - np.asarray(ck)[sj])[None, :]
        br = (np.diff(ck)[si] - np.diff(cq)[si])[:, None]
    else:
        li, lj, br = i, j, m - n
    if causal is not None:
        k &= lj <= li + (br if causal == "bottom_right" else 0)
    if window is not None:
        left, right, align = window
        c = li + (br if align == "bottom_right" else 0)
        if left is not None:
            k &= lj >= c - left
        if right is not None:
            k &= lj <= c + right
    full = np.broadcast_to(k, (*batch, n, m)).copy()
    if keep is not None:
        full &= keep
    if klen is not None:
        full &= np.arange(m) < np.asarray(klen)[..., None, None]
    if qlen is not None:
        full &= (np.arange(n) < np.asarray(qlen)[..., None])[..., None]
    return full


def _torch_ref(q, k, v, *, scale, keep=None, softcap=None, slopes=None, bias=None, sinks=None, drop=None,
               p=0.0, qvalid=None):
    """out, lse by the explicit formula (float64, torch autograd): GQA by repeat_interleave, then
    scale, softcap, ALiBi, bias, mask, sinks joining the normaliser, dropout after the softmax."""
    g = q.shape[-3] // k.shape[-3]
    kk, vv = k.repeat_interleave(g, dim=-3), v.repeat_interleave(g, dim=-3)
    s = scale * q @ kk.transpose(-1, -2)
    n, m = s.shape[-2:]
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if slopes is not None:
        dist = (torch.arange(n)[:, None] - torch.arange(m)[None, :]).abs().double()
        sl = slopes[..., None, None] if slopes.ndim == 1 else slopes[..., None, None]
        s = s - sl * dist
    if bias is not None:
        s = s + bias
    keep_t = torch.ones(s.shape, dtype=torch.bool) if keep is None else torch.as_tensor(keep).expand(s.shape)
    s = torch.where(keep_t, s, -torch.inf)
    if sinks is not None:
        col = sinks.expand(s.shape[:-2])[..., None, None].expand(*s.shape[:-1], 1)
        if qvalid is not None:
            col = torch.where(torch.as_tensor(qvalid)[..., None].expand(col.shape), col, -torch.inf)
        s = torch.cat([s, col], dim=-1)
    valid = torch.isfinite(s).any(dim=-1, keepdim=True)
    s = torch.where(valid, s, 0.0)  # rows that see nothing: finite stand-in, zeroed below
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    prob = torch.exp(s - lse)
    if sinks is not None:
        prob = prob[..., :-1]
    if drop is not None:
        prob = prob * torch.as_tensor(drop) / (1 - p)
    out = torch.where(valid, prob @ vv, 0.0)
    lse = torch.where(valid, lse, -torch.inf)[..., 0]
    return out, lse


def _qkv(seed, b, hq, hkv, n, m, d=4, dv=3):
    rs = np.random.default_rng(seed)
    return rs.standard_normal((b, hq, n, d)), rs.standard_normal((b, hkv, m, d)), rs.standard_normal((b, hkv, m, dv))


def _compare(q, k, v, kw, tkw, *, tag, impl, seed=0, check_lse=True):
    """refattn (forward + pullback with (dout, dlse)) against the torch formula + autograd."""
    rs = np.random.default_rng(seed + 100)
    kw = {**kw, "return_lse": True, "impl": impl}
    if impl == "blockwise":
        kw.update(block_q=4, block_k=5)
    (out, lse), pb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
    dout = rs.standard_normal(out.shape)
    dlse = np.where(np.isfinite(lse), rs.standard_normal(lse.shape), 0.0)
    grads = pb((dout, dlse))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    leaves = [tq, tk, tv]
    sinks = tkw.pop("sinks", None)
    if sinks is not None:
        sinks = torch.tensor(sinks, requires_grad=True)
        leaves.append(sinks)
    tout, tlse = _torch_ref(tq, tk, tv, sinks=sinks, **tkw)
    _close(f"out vs torch formula [{tag}]", out, tout.detach().numpy())
    if check_lse:
        _close(f"lse vs torch formula [{tag}]", lse, tlse.detach().numpy())
    loss = (tout * torch.tensor(dout)).sum() + (torch.where(torch.isfinite(tlse), tlse, 0.0)
                                                * torch.tensor(dlse)).sum()
    tgrads = torch.autograd.grad(loss, leaves, allow_unused=True)
    names = ["dq", "dk", "dv", "dsinks"]
    for name, g, tg in zip(names, grads, tgrads):
        tg = np.zeros(np.shape(g)) if tg is None else tg.numpy()
        _close(f"{name} vs torch autograd [{tag}]", g, tg)
    return out, lse, grads


# ------------------------------------------------------------------------------------------------
# GQA against SDPA(enable_gqa=True)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["dense", "blockwise"])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
@pytest.mark.parametrize("hq,hkv", [(4, 2), (6, 3), (4, 1), (3, 3)])
def test_gqa_matches_sdpa(impl, causal, hq, hkv):
    """Query head h uses kv head h // (Hq / Hkv); dk, dv sum over each group (SDPA's enable_gqa)."""
    n, m = 13, 29
    q, k, v = _qkv(1, 2, hq, hkv, n, m)
    kw = {"causal": causal, "impl": impl, "block_q": 4, "block_k": 5}
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    dq, dk, dv = pb(dout)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    mask = None if causal is False else torch.as_tensor(
        np.tril(np.ones((n, m), bool), k=(m - n) if causal == "bottom_right" else 0))
    tout = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask, enable_gqa=True)
    tout.backward(torch.tensor(dout))
    _close("out vs SDPA(enable_gqa)", out, tout.detach().numpy())
    for name, g, t in (("dq", dq, tq), ("dk", dk, tk), ("dv", dv, tv)):
        assert g.shape == tuple(t.shape)
        _close(f"{name} vs SDPA(enable_gqa) autograd", g, t.grad.numpy())


def test_gqa_no_materialised_repeat():
    """The grouped layout is a view: the counted peak of a GQA call stays below that of the same
    call with k, v repeated to every query head (the repeat alone would hold g copies)."""
    from refattn.cost import measure

    q, k, v = _qkv(3, 1, 8, 1, 64, 256, d=16, dv=16)
    q, k, v = q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)  # Hkv = 2, g = 4
    kw = {"impl": "blockwise", "block_q": 16, "block_k": 16, "check_finite": False}
    gqa = measure(refattn.softmax_attention, q, k, v, **kw)
    rep = measure(refattn.softmax_attention, q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), **kw)
    assert gqa.flops == rep.flops
    assert gqa.peak_bytes <= rep.peak_bytes


# ------------------------------------------------------------------------------------------------
# Every feature (and pairs of them) against the explicit torch formula with autograd
# ------------------------------------------------------------------------------------------------

N_, M_, B_, HQ, HKV = 13, 29, 2, 4, 2
CU_Q, CU_K = (0, 4, 4, 9, 13), (0, 10, 12, 20, 29)


def _feature(name, rs):
    """refattn kwargs and torch-formula kwargs (plus keep-mask ingredients) of one feature."""
    if name == "softcap":
        return {"score_mod": mods.softcap(1.5)}, {"softcap": 1.5}, {}
    if name == "alibi":
        sl = rs.random(HQ)
        return {"score_mod": mods.alibi(sl)}, {"slopes": torch.tensor(sl)}, {}
    if name == "alibi_bh":
        sl = rs.random((B_, HQ))
        return {"score_mod": mods.alibi(sl)}, {"slopes": torch.tensor(sl)}, {}
    if name == "sinks":
        sk = rs.standard_normal(HQ)
        return {"sinks": sk}, {"sinks": sk}, {}
    if name == "causal":
        return {"causal": True}, {}, {"causal": "top_left"}
    if name == "bottom_right":
        return {"causal": "bottom_right"}, {}, {"causal": "bottom_right"}
    if name == "window":
        return {"mask_mod": mods.sliding_window(3, 2)}, {}, {"window": (3, 2, "top_left")}
    if name == "window_br":
        return ({"mask_mod": mods.sliding_window(4, 0, align="bottom_right")}, {},
                {"window": (4, 0, "bottom_right")})
    if name == "document":
        return {"mask_mod": mods.document(CU_Q, CU_K)}, {}, {"segments": (CU_Q, CU_K)}
    if name == "query_lengths":
        ql = np.array([[13], [7]])
        return {"query_lengths": ql}, {}, {"qlen": ql}
    if name == "key_lengths":
        kl = np.array([[29], [11]])
        return {"key_lengths": kl}, {}, {"klen": kl}
    if name == "dropout":
        dm = rs.random((B_, HQ, N_, M_)) < 0.8
        return {"dropout_mask": dm, "dropout_p": 0.2}, {"drop": dm, "p": 0.2}, {}
    if name == "bias":
        bias = rs.standard_normal((N_, M_))
        return {"mask": bias}, {"bias": torch.tensor(bias)}, {}
    if name == "bool":
        keep = rs.random((B_, 1, N_, M_)) < 0.7
        return {"mask": keep}, {}, {"keep": keep}
    raise AssertionError(name)


FEATURES = ["softcap", "alibi", "alibi_bh", "sinks", "causal", "bottom_right", "window", "window_br", "document",
            "query_lengths", "key_lengths", "dropout", "bias", "bool"]
_EXCLUSIVE = [{"causal", "bottom_right"}, {"window", "window_br", "document"}, {"bias", "bool"},
              {"alibi", "alibi_bh"}]


def _combos():
    out = [(f,) for f in FEATURES]
    for a, b in itertools.combinations(FEATURES, 2):
        if not any({a, b} <= ex for ex in _EXCLUSIVE):
            out.append((a, b))
    return out


COMBOS = _combos()


def _build(combo, seed=0):
    rs = np.random.default_rng(seed)
    kw, tkw, kk = {}, {}, {}
    mask_mods = []
    for f in combo:
        a, b, c = _feature(f, rs)
        if "mask_mod" in a:
            mask_mods.append(a.pop("mask_mod"))
        if "score_mod" in a:
            kw.setdefault("score_mod", []).append(a.pop("score_mod"))
        kw.update(a)
        tkw.update(b)
        kk.update(c)
    if mask_mods:
        kw["mask_mod"] = mask_mods[0] if len(mask_mods) == 1 else mods.and_masks(*mask_mods)
    if "score_mod" in kw:  # softcap before alibi (FlashAttention's order)
        kw["score_mod"] = sorted(kw["score_mod"], key=lambda m: repr(m).startswith("alibi"))
    keep = _keep_np(N_, M_, batch=(B_, HQ), **kk)
    tkw["keep"] = keep
    if "qlen" in kk:
        tkw["qvalid"] = np.broadcast_to(np.arange(N_) < np.asarray(kk["qlen"])[..., None], (B_, HQ, N_)).copy()
    return kw, tkw, keep


@pytest.mark.parametrize("impl", ["dense", "blockwise"])
@pytest.mark.parametrize("combo", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_features_match_torch_formula(combo, impl):
    """Every feature and every compatible pair, GQA (Hq = 4, Hkv = 2), n = 13, m = 29: outputs, LSE
    and every gradient (q, k, v, sinks; with an LSE cotangent) against torch autograd."""
    q, k, v = _qkv(7, B_, HQ, HKV, N_, M_)
    kw, tkw, keep = _build(combo)
    tkw["scale"] = 1 / np.sqrt(q.shape[-1])
    out, lse, grads = _compare(q, k, v, kw, tkw, tag="+".join(combo), impl=impl)
    seen = keep.any(-1)
    if "sinks" in combo:
        seen = seen | True
        if "query_lengths" in combo:
            seen = seen & tkw["qvalid"]
    # rows that see nothing: zeros, lse -inf, zero gradient (with a sink: lse = sink, out = 0)
    assert not np.any(out[~seen]) and np.all(np.isneginf(lse[~seen]))
    assert not np.any(grads[0][~seen])


# ------------------------------------------------------------------------------------------------
# FlexAttention (eager, CPU) with the same mods, and its LSE
# ------------------------------------------------------------------------------------------------

def _flex():
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError:  # pragma: no cover
        pytest.skip("torch.nn.attention.flex_attention does not import here")
    return fa


def _flex_run(fa, q, k, v, score_mod, mask_mod):
    tq, tk, tv = (torch.tensor(a) for a in (q, k, v))
    b, h, n, m = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = None if mask_mod is None else fa.create_block_mask(mask_mod, b, h, n, m, device="cpu")
        out, aux = fa.flex_attention(tq, tk, tv, score_mod=score_mod, block_mask=bm, enable_gqa=True,
                                     return_aux=fa.AuxRequest(lse=True))
    return out.numpy(), aux.lse.numpy()


FLEX_CASES = ["softcap", "alibi", "window", "causal+window+softcap", "document+causal", "document"]


@pytest.mark.parametrize("case", FLEX_CASES)
@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_matches_flex_attention(case, impl):
    """FlexAttention's eager forward on CPU in float64 with the same score/mask mods, and its LSE.
    Equal query and key layouts (FlexAttention has no per-segment alignment of its own)."""
    fa = _flex()
    n = m = 29
    q, k, v = _qkv(11, 2, 4, 2, n, m)
    sl = np.random.default_rng(3).random(4)
    cu = (0, 7, 7, 20, 29)
    segs = torch.as_tensor(np.searchsorted(cu, np.arange(n), side="right") - 1)
    t_soft = lambda s, b, h, i, j: 1.5 * torch.tanh(s / 1.5)  # noqa: E731
    t_alibi = lambda s, b, h, i, j: s - torch.as_tensor(sl)[h] * (i - j).abs()  # noqa: E731
    t_win = lambda b, h, i, j: (j >= i - 5) & (j <= i + 2)  # noqa: E731
    t_causal = lambda b, h, i, j: j <= i  # noqa: E731
    t_doc = lambda b, h, i, j: segs[i] == segs[j]  # noqa: E731
    table = {
        "softcap": ({"score_mod": mods.softcap(1.5)}, t_soft, None),
        "alibi": ({"score_mod": mods.alibi(sl)}, t_alibi, None),
        "window": ({"mask_mod": mods.sliding_window(5, 2)}, None, t_win),
        "causal+window+softcap": ({"causal": True, "mask_mod": mods.sliding_window(5, 2),
                                   "score_mod": mods.softcap(1.5)}, t_soft,
                                  lambda b, h, i, j: t_causal(b, h, i, j) & t_win(b, h, i, j)),
        "document+causal": ({"mask_mod": mods.document(cu), "causal": True}, None,
                            lambda b, h, i, j: t_doc(b, h, i, j) & t_causal(b, h, i, j)),
        "document": ({"mask_mod": mods.document(cu)}, None, t_doc),
    }
    kw, smod, mmod = table[case]
    out, lse = refattn.softmax_attention(q, k, v, return_lse=True, impl=impl, block_q=8, block_k=8, **kw)
    fout, flse = _flex_run(fa, q, k, v, smod, mmod)
    _close("out vs FlexAttention", out, fout)
    _close("lse vs FlexAttention", lse, flse)


# ------------------------------------------------------------------------------------------------
# Central differences
# ------------------------------------------------------------------------------------------------

GC_CASES = [("softcap", "alibi"), ("sinks", "window"), ("document", "causal"), ("dropout", "query_lengths"),
            ("sinks", "softcap")]


@pytest.mark.parametrize("impl", ["dense", "blockwise"])
@pytest.mark.parametrize("combo", GC_CASES, ids=["+".join(c) for c in GC_CASES])
def test_gradcheck(combo, impl):
    """Central differences (float64) for q, k, v (and the sinks, as a positional wrapper), and for
    the LSE output with its own cotangent."""
    q, k, v = _qkv(5, B_, HQ, HKV, N_, M_)
    kw, _, _ = _build(combo, seed=2)
    kw.update(impl=impl, block_q=4, block_k=5)
    sinks = kw.pop("sinks", None)
    if sinks is None:
        gradcheck(refattn.softmax_attention, [q, k, v], kwargs=kw)
    else:
        def vjp_sinks(q, k, v, s, **kw):
            out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, sinks=s, **kw)
            return out, pb

        gradcheck(lambda q, k, v, s, **kw: refattn.softmax_attention(q, k, v, sinks=s, **kw), [q, k, v, sinks],
                  kwargs=kw, vjp=vjp_sinks)

    def vjp_lse(q, k, v, **kw):  # the LSE as the output: cotangent (0, dlse)
        (out, lse), pb = refattn.vjp(refattn.softmax_attention, q, k, v, sinks=sinks, return_lse=True, **kw)
        return lse, lambda u: pb((np.zeros_like(out), u))[:3]

    def lse_only(q, k, v, **kw):
        return refattn.softmax_attention(q, k, v, sinks=sinks, return_lse=True, **kw)[1]

    if "query_lengths" not in combo:  # padded rows have lse = -inf: no central difference there
        gradcheck(lse_only, [q, k, v], kwargs=kw, vjp=vjp_lse)


# ------------------------------------------------------------------------------------------------
# Hypothesis: shapes, alignments, GQA ratios, segment layouts, feature pairs; dense == blockwise ==
# the torch formula
# ------------------------------------------------------------------------------------------------

@st.composite
def _cases(draw):
    hkv = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 3]))
    n = draw(st.integers(1, 17))
    m = draw(st.integers(1, 23))
    nseg = draw(st.integers(1, 4))
    cq = sorted(draw(st.lists(st.integers(0, n), min_size=nseg - 1, max_size=nseg - 1)))
    ck = sorted(draw(st.lists(st.integers(0, m), min_size=nseg - 1, max_size=nseg - 1)))
    feats = draw(st.lists(st.sampled_from(["softcap", "alibi", "sinks", "causal", "bottom_right", "window",
                                           "window_br", "document", "query_lengths", "dropout"]),
                          max_size=2, unique=True))
    bq, bk = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    return hkv, g, n, m, (0, *cq, n), (0, *ck, m), feats, bq, bk, draw(st.integers(0, 2**16))


@given(_cases())
def test_hypothesis_variants(case):
    hkv, g, n, m, cq, ck, feats, bq, bk, seed = case
    if {"causal", "bottom_right"} <= set(feats) or {"window", "window_br", "document"} & set(feats) == {
            "window", "window_br"}:
        feats = feats[:1]
    rs = np.random.default_rng(seed)
    hq, b = hkv * g, 2
    q, k, v = _qkv(seed, b, hq, hkv, n, m)
    kw, tkw, kk, mms, smods = {}, {"scale": 0.5}, {}, [], []
    for f in feats:
        if f == "softcap":
            smods.append(mods.softcap(1.0))
            tkw["softcap"] = 1.0
        elif f == "alibi":
            sl = rs.random(hq)
            smods.append(mods.alibi(sl))
            tkw["slopes"] = torch.tensor(sl)
        elif f == "sinks":
            kw["sinks"] = tkw["sinks"] = rs.standard_normal(hq)
        elif f in ("causal", "bottom_right"):
            kw["causal"] = True if f == "causal" else "bottom_right"
            kk["causal"] = "top_left" if f == "causal" else "bottom_right"
        elif f in ("window", "window_br"):
            al = "top_left" if f == "window" else "bottom_right"
            mms.append(mods.sliding_window(2, 1, align=al))
            kk["window"] = (2, 1, al)
        elif f == "document":
            mms.append(mods.document(cq, ck))
            kk["segments"] = (cq, ck)
        elif f == "query_lengths":
            ql = rs.integers(0, n + 1, size=(b, 1))
            kw["query_lengths"] = kk["qlen"] = ql
            tkw["qvalid"] = np.broadcast_to(np.arange(n) < ql[..., None], (b, hq, n)).copy()
        elif f == "dropout":
            dm = rs.random((b, hq, n, m)) < 0.7
            kw.update(dropout_mask=dm, dropout_p=0.3)
            tkw.update(drop=dm, p=0.3)
    if smods:
        kw["score_mod"] = sorted(smods, key=lambda s: repr(s).startswith("alibi"))
    if mms:
        kw["mask_mod"] = mms[0] if len(mms) == 1 else mods.and_masks(*mms)
    if "segments" in kk and "window" in kk:
        pass  # per-segment windows: the formula takes them per segment too
    tkw["keep"] = _keep_np(n, m, batch=(b, hq), **kk)
    dense = refattn.softmax_attention(q, k, v, impl="dense", return_lse=True, scale=0.5, **kw)
    block = refattn.softmax_attention(q, k, v, impl="blockwise", block_q=bq, block_k=bk, return_lse=True,
                                      scale=0.5, **kw)
    tout, tlse = _torch_ref(*(torch.tensor(a) for a in (q, k, v)),
                            **{**tkw, "sinks": None if "sinks" not in tkw else torch.tensor(tkw["sinks"])})
    for got in (dense, block):
        _close("out vs torch formula (hypothesis)", got[0], tout.numpy())
        _close("lse vs torch formula (hypothesis)", got[1], tlse.numpy())


# ------------------------------------------------------------------------------------------------
# merge_attention
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stacked", [True, False])
def test_merge_equals_full_attention(stacked):
    """Attention over disjoint key parts merged by LSE == attention over all keys, forward and
    backward (the merge's pullback, then each part's pullback with (do_s, dL_s)); a part that a
    row does not see (causal) has lse = -inf and weight 0."""
    q, k, v = _qkv(21, 2, 4, 2, 13, 29)
    cuts = [0, 5, 17, 29]
    kw = {"causal": "bottom_right"}
    full, pb_full = refattn.vjp(refattn.softmax_attention, q, k, v, return_lse=True, **kw)
    parts, pbs = [], []
    for a, b in zip(cuts, cuts[1:]):
        keep = np.tril(np.ones((13, 29), bool), k=29 - 13)[:, a:b]
        r, pb = refattn.vjp(refattn.softmax_attention, q, k[..., a:b, :], v[..., a:b, :], mask=keep,
                            return_lse=True)
        parts.append(r)
        pbs.append(pb)
    outs = [p[0] for p in parts]
    lses = [p[1] for p in parts]
    args = (np.stack(outs), np.stack(lses)) if stacked else (outs, lses)
    (out, lse), pbm = refattn.vjp(refattn.merge_attention, *args)
    _close("merge out vs full attention", out, full[0])
    _close("merge lse vs full attention", lse, full[1])
    rs = np.random.default_rng(0)
    dout, dlse = rs.standard_normal(out.shape), rs.standard_normal(lse.shape)
    douts, dlses = pbm((dout, dlse))
    dq = sum(pb((douts[s], dlses[s]))[0] for s, pb in enumerate(pbs))
    _close("merge-chained dq vs full attention", dq, pb_full((dout, dlse))[0])


def test_merge_gradcheck_and_empty_rows():
    rs = np.random.default_rng(4)
    outs, lses = rs.standard_normal((3, 2, 5, 4)), rs.standard_normal((3, 2, 5))
    lses[:, 0, 1] = -np.inf  # a row no part sees
    lses[1, 1, 2] = -np.inf  # a row one part does not see
    (out, lse), pb = refattn.vjp(refattn.merge_attention, outs, lses)
    assert not np.any(out[0, 1]) and np.isneginf(lse[0, 1])
    douts, dlses = pb((np.ones_like(out), np.ones_like(lse)))
    assert not np.any(douts[:, 0, 1]) and not np.any(dlses[:, 0, 1])
    lses[:, 0, 1] = lses[1, 1, 2] = 0.0  # central differences need finite inputs
    gradcheck(lambda o, l_: refattn.merge_attention(o, l_)[0], [outs, lses],
              vjp=lambda o, l_: (lambda r: (r[0][0], lambda u: r[1]((u, None))))(refattn.vjp(
                  refattn.merge_attention, o, l_)))
    gradcheck(lambda o, l_: refattn.merge_attention(o, l_)[1], [outs, lses],
              vjp=lambda o, l_: (lambda r: (r[0][1], lambda u: r[1]((np.zeros_like(r[0][0]), u))))(refattn.vjp(
                  refattn.merge_attention, o, l_)))


# ------------------------------------------------------------------------------------------------
# Bad input: each error names the argument
# ------------------------------------------------------------------------------------------------

def _bad_cases():
    q, k, v = _qkv(0, 2, 4, 2, 5, 6)
    k3, v3 = _qkv(0, 2, 4, 3, 5, 6)[1:]
    return [
        ("kv heads do not divide", (q, k3, v3), {}, ValueError, "k"),
        ("v heads differ from k", (q, k, v3), {}, ValueError, "v"),
        ("slopes wrong shape", (q, k, v), {"score_mod": mods.alibi(np.ones(3))}, ValueError, "slopes"),
        ("slopes wrong rank", None, lambda: mods.alibi(np.ones((2, 3, 4))), ValueError, "slopes"),
        ("sinks wrong shape", (q, k, v), {"sinks": np.ones(3)}, ValueError, "sinks"),
        ("sinks integer", (q, k, v), {"sinks": np.ones(4, int)}, TypeError, "sinks"),
        ("sinks nan", (q, k, v), {"sinks": np.array([0, np.nan, 0, 0])}, ValueError, "sinks"),
        ("cu not increasing", None, lambda: mods.document([0, 3, 2, 5]), ValueError, "cu_seqlens_q"),
        ("cu not from 0", None, lambda: mods.document([1, 3, 5]), ValueError, "cu_seqlens_q"),
        ("cu wrong end", (q, k, v), {"mask_mod": mods.document([0, 2, 4])}, ValueError, "cu_seqlens_q"),
        ("cu_k wrong end", (q, k, v), {"mask_mod": mods.document([0, 2, 5], [0, 3, 5])}, ValueError, "cu_seqlens_k"),
        ("cu_k count", None, lambda: mods.document([0, 2, 5], [0, 6]), ValueError, "cu_seqlens_k"),
        ("window negative", None, lambda: mods.sliding_window(-1, 0), ValueError, "left"),
        ("window right negative", None, lambda: mods.sliding_window(2, -3), ValueError, "right"),
        ("window align", None, lambda: mods.sliding_window(2, 0, align="center"), ValueError, "align"),
        ("softcap zero", None, lambda: mods.softcap(0.0), ValueError, "cap"),
        ("dropout_p 1", (q, k, v), {"dropout_p": 1.0, "dropout_mask": np.ones((5, 6), bool)}, ValueError,
         "dropout_p"),
        ("dropout_p negative", (q, k, v), {"dropout_p": -0.1, "dropout_mask": np.ones((5, 6), bool)}, ValueError,
         "dropout_p"),
        ("dropout_p without mask", (q, k, v), {"dropout_p": 0.1}, ValueError, "dropout_mask"),
        ("dropout mask shape", (q, k, v), {"dropout_mask": np.ones((5, 7), bool)}, ValueError, "dropout_mask"),
        ("dropout mask dtype", (q, k, v), {"dropout_mask": np.ones((5, 6))}, TypeError, "dropout_mask"),
        ("score_mod changes shape", (q, k, v), {"score_mod": lambda s, b, h, i, j: s[..., :1]}, ValueError,
         "score_mod"),
        ("score_mod changes dtype", (q, k, v), {"score_mod": lambda s, b, h, i, j: s.astype(np.float32)},
         ValueError, "score_mod"),
        ("score_mod not callable", (q, k, v), {"score_mod": 3}, TypeError, "score_mod"),
        ("mask_mod non-boolean", (q, k, v), {"mask_mod": lambda b, h, i, j: (i - j) * 1.0}, TypeError, "mask_mod"),
        ("mask_mod wrong shape", (q, k, v), {"mask_mod": lambda b, h, i, j: np.ones((3, 3, 3, 3, 3), bool)},
         ValueError, "mask_mod"),
        ("query_lengths float", (q, k, v), {"query_lengths": np.ones(2)}, TypeError, "query_lengths"),
        ("query_lengths too big", (q, k, v), {"query_lengths": np.array([[6]])}, ValueError, "query_lengths"),
        ("return_lse not bool", (q, k, v), {"return_lse": 1}, TypeError, "return_lse"),
        ("merge lses shape", "merge", (np.ones((2, 3, 4)), np.ones((2, 4))), ValueError, "lses"),
        ("merge lses nan", "merge", (np.ones((2, 3, 4)), np.full((2, 3), np.nan)), ValueError, "lses"),
        ("merge mixed kinds", "merge", (np.ones((2, 3, 4)), [np.ones(3), np.ones(3)]), TypeError, "lses"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("args,kw,exc,name", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(args, kw, exc, name):
    import re

    with pytest.raises(exc) as info:
        if args is None:
            kw()
        elif args == "merge":
            refattn.merge_attention(*kw)
        else:
            refattn.softmax_attention(*args, **kw)
    assert re.search(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", str(info.value)), str(info.value)


def test_plain_score_mod_has_no_backward():
    q, k, v = _qkv(0, 1, 2, 2, 5, 6)
    out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, score_mod=lambda s, b, h, i, j: s * 0.5)
    assert np.allclose(out, refattn.softmax_attention(q, k, v, scale=0.25))
    with pytest.raises(ValueError, match="score_mod"):
        pb(np.ones_like(out))


def test_zz_report(capsys):
    """Print the largest relative error seen against each reference (for the closing note)."""
    with capsys.disabled():
        for name, e in sorted(WORST.items()):
            print(f"\n  {name}: {e:.2e}", end="")
        print()


def test_every_backend_agrees(backend):
    """All features at once, blockwise, on every backend: the same numbers as NumPy's (1e-12)."""
    rs = np.random.default_rng(0)
    q, k, v = _qkv(0, 2, 4, 2, 13, 29)
    sk, sl, dm = rs.standard_normal(4), rs.random(4), rs.random((2, 4, 13, 29)) < 0.8

    def run(be):
        c = be.asarray
        kw = {"sinks": c(sk), "score_mod": [mods.softcap(2.0), mods.alibi(c(sl))], "causal": "bottom_right",
              "mask_mod": mods.and_masks(mods.document([0, 4, 13], [0, 10, 29]), mods.sliding_window(5, 1)),
              "dropout_mask": c(dm), "dropout_p": 0.2, "query_lengths": c(np.array([[13], [8]])),
              "return_lse": True, "impl": "blockwise", "block_q": 4, "block_k": 5}
        (o, lse), pb = refattn.vjp(refattn.softmax_attention, c(q), c(k), c(v), **kw)
        g = pb((c(np.ones(tuple(o.shape))), c(np.ones(tuple(lse.shape)))))
        return [be.to_host(x) for x in (o, lse, *g)]

    for got, want in zip(run(backend), run(refattn.backends.get("numpy")), strict=True):
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
        fin = np.isfinite(want)
        assert np.max(np.abs(got[fin] - want[fin]), initial=0.0) <= 1e-12 * max(np.max(np.abs(want[fin])), 1.0)
