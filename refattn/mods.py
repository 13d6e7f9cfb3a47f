r"""Score and mask modifications for exact attention (FlexAttention's vocabulary).

A **score mod** changes the scaled logits elementwise, ``score_mod(score, b, h, i, j) -> score'``;
a **mask mod** says which pairs are kept, ``mask_mod(b, h, i, j) -> bool`` (``True`` = keep).
``b, h, i, j`` are integer index arrays of the inputs' namespace that broadcast against the logits
block ``(..., r, c)`` being computed: ``i`` has shape ``(r, 1)`` (query positions), ``j`` shape
``(1, c)`` (key positions), ``h`` indexes axis -3 of ``q`` (the query head, shape ``(H, 1, 1)`` or,
with grouped-query heads, ``(Hkv, g, 1, 1)`` holding ``h = kv_head * g + member``), ``b`` axis -4
(shape ``(B, 1, ..., 1)``); an input without that axis gets a zero index. The blockwise path calls
a mod once per block, so a mod never sees the whole ``(n, m)`` matrix.

Order of operations (FlashAttention's ``attention_ref``): scale, then score mods in the order given
(``softcap``), then biases (``alibi``, additive masks), then masks, then the softmax. ``alibi`` is a
score mod that adds a bias; give it after ``softcap`` (``score_mod=[softcap(c), alibi(s)]``).

A user score mod is a pair ``(fn, dfn)`` of callables, ``fn(score, b, h, i, j)`` elementwise (same
shape and dtype out) and ``dfn(score, b, h, i, j) = d fn / d score`` for the backward pass (as
``linear_attention``'s user feature maps); a plain callable works in the forward pass and makes the
backward pass raise. A user mask mod is any callable returning a boolean array; wrap it with
:func:`block_sparse` to tell the blockwise path which blocks it empties (so they are skipped).

Ready-made: :func:`softcap`, :func:`alibi`, :func:`sliding_window`, :func:`document`; combinators
:func:`and_masks`, :func:`or_masks`. The ready-made mask mods also answer, in pure Python and without
touching any array, whether a block ``[i0, i1) x [j0, j1)`` is empty: the blockwise path of
:func:`refattn.softmax_attention` skips such blocks (FlexAttention's block sparsity) and its closed
cost counts only the blocks it visits.

Documents (packed variable-length sequences, FlashAttention's varlen API): ``document(cu_q, cu_k)``
keeps pairs in the same segment. Inside ``and_masks`` (or combined with ``causal=``), the causal and
sliding-window conditions are taken **per segment** in segment-local positions, and
``"bottom_right"`` aligns each segment's last query with its last key (``j_loc <= i_loc + L_k -
L_q``), as FlashAttention aligns causal varlen batches. User mask mods always see global positions.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from ._checks import check_choice, check_real

__all__ = ["ScoreMod", "MaskMod", "softcap", "alibi", "sliding_window", "document", "and_masks", "or_masks",
           "block_sparse", "ALIGNS"]

ALIGNS = ("top_left", "bottom_right")


def _ns(a: Any) -> Any:
    from ._xp import namespace

    return namespace(a)


def _gather(xp: Any, table: Any, idx: Any) -> Any:
    """``table[idx]`` for a 1-D ``table`` and an integer index array of any shape."""
    flat = xp.take(table, xp.reshape(idx, (-1,)), axis=0)
    return xp.reshape(flat, idx.shape)


# ------------------------------------------------------------------------------------ score mods

class ScoreMod:
    """A score modification with its derivative. ``mod(score, b, h, i, j)`` applies it."""

    def __call__(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
        return self.value(score, b, h, i, j)

    def value(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
        raise NotImplementedError

    def value_and_grad(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> tuple[Any, Any]:
        """``(fn(score), d fn / d score)``; the derivative is ``None`` where it is identically 1."""
        raise NotImplementedError

    #: whether the ready-made closed cost knows this mod (``_cost``)
    closed = False

    def _validate(self, xp: Any, batch: tuple[int, ...], dtype: Any) -> None:
        """Call-time checks against the inputs' leading shape ``batch`` (before any grouping)."""

    def _cost(self, batch: tuple[int, ...], r: int, c: int, grad: bool) -> tuple[int, int]:
        """``(flops, transcendentals)`` of one ``(r, c)`` block (with ``grad``: ``value_and_grad``)."""
        msg = f"{self!r} has no closed-form cost"
        raise ValueError(msg)


class _Softcap(ScoreMod):
    closed = True

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __repr__(self) -> str:
        return f"softcap({self.cap!r})"

    def value(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
        xp = _ns(score)
        return xp.tanh(score / self.cap) * self.cap

    def value_and_grad(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> tuple[Any, Any]:
        xp = _ns(score)
        t = xp.tanh(score / self.cap)
        return t * self.cap, 1.0 - t * t

    def _cost(self, batch: tuple[int, ...], r: int, c: int, grad: bool) -> tuple[int, int]:
        e = math.prod(batch) * r * c
        return ((4 if grad else 2) * e, e)


def softcap(cap: float) -> ScoreMod:
    r"""Logit soft-capping ``cap * tanh(s / cap)`` (Gemma 2; FlashAttention's ``softcap``), derivative
    ``1 - tanh^2(s / cap)``. ``cap`` must be a finite positive number (it is a constant: no gradient).
    """
    return _Softcap(check_real("cap", cap, minimum=0.0, open_min=True))


class _Alibi(ScoreMod):
    closed = True

    def __init__(self, slopes: Any) -> None:
        self.slopes = slopes

    def __repr__(self) -> str:
        return f"alibi(slopes of shape {tuple(self.slopes.shape)})"

    def _validate(self, xp: Any, batch: tuple[int, ...], dtype: Any) -> None:
        from ._xp import namespace

        try:
            same = namespace(self.slopes) is xp
        except TypeError:
            same = False
        if not same:
            msg = f"slopes must be an array of the inputs' library, got {type(self.slopes).__name__}"
            raise TypeError(msg)
        want = batch[-self.slopes.ndim:] if len(batch) >= self.slopes.ndim else None
        ok = want is not None and all(s in (1, w) for s, w in zip(self.slopes.shape, want))
        if not ok:
            expect = "(H,) or (B, H)"
            msg = (f"slopes must have shape {expect} broadcastable to the inputs' (batch, heads) "
                   f"{tuple(batch[-2:])}, got {tuple(self.slopes.shape)}")
            raise ValueError(msg)

    def _bias(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
        xp = _ns(score)
        sl = xp.astype(self.slopes, score.dtype)
        if sl.ndim == 1:
            idx = h if sl.shape[0] > 1 else h * 0
            g = _gather(xp, sl, idx)
        else:
            hh = h if sl.shape[1] > 1 else h * 0
            bb = b if sl.shape[0] > 1 else b * 0
            flat = bb * sl.shape[1] + hh
            g = _gather(xp, xp.reshape(sl, (-1,)), flat)
        dist = xp.astype(xp.abs(i - j), score.dtype)
        return g * dist

    def value(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
        return score - self._bias(score, b, h, i, j)

    def value_and_grad(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> tuple[Any, Any]:
        return self.value(score, b, h, i, j), None

    def _cost(self, batch: tuple[int, ...], r: int, c: int, grad: bool) -> tuple[int, int]:
        # the gathered slopes have the shape of the head (and batch) index arrays: H (or B H) entries
        slopes = math.prod(batch[-self.slopes.ndim:])
        return (slopes * r * c + math.prod(batch) * r * c, 0)


def alibi(slopes: Any) -> ScoreMod:
    r"""ALiBi (Press et al. 2022): adds ``-slope_h |i - j|`` to the logits; ``slopes`` an array of shape
    ``(H,)`` or ``(B, H)`` (FlashAttention's ``alibi_slopes``), in the inputs' namespace; a constant
    (no gradient). FlashAttention's convention with ``causal`` keys left of the diagonal is the
    same up to a per-row constant, which the softmax removes; this is the symmetric ``|i - j|``."""
    if not hasattr(slopes, "shape") or not hasattr(slopes, "dtype") or slopes.ndim not in (1, 2):
        msg = f"slopes must be an array of shape (H,) or (B, H), got {getattr(slopes, 'shape', type(slopes).__name__)}"
        raise ValueError(msg)
    xp = _ns(slopes)
    if not xp.isdtype(slopes.dtype, "real floating"):
        msg = f"slopes must have a real floating dtype, got {slopes.dtype}"
        raise TypeError(msg)
    return _Alibi(slopes)


class _UserScore(ScoreMod):
    def __init__(self, fn: Callable[..., Any], dfn: Callable[..., Any] | None) -> None:
        self.fn, self.dfn = fn, dfn

    def __repr__(self) -> str:
        return f"score_mod({getattr(self.fn, '__name__', self.fn)!r})"

    def value(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
        return self.fn(score, b, h, i, j)

    def value_and_grad(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> tuple[Any, Any]:
        if self.dfn is None:
            msg = ("score_mod was given as a plain callable, without its derivative: pass a pair "
                   "(fn, dfn) to differentiate through it")
            raise ValueError(msg)
        return self.fn(score, b, h, i, j), self.dfn(score, b, h, i, j)


class _Chain(ScoreMod):
    def __init__(self, mods: tuple[ScoreMod, ...]) -> None:
        self.mods = mods
        self.closed = all(m.closed for m in mods)

    def __repr__(self) -> str:
        return f"[{', '.join(map(repr, self.mods))}]"

    def _validate(self, xp: Any, batch: tuple[int, ...], dtype: Any) -> None:
        for m in self.mods:
            m._validate(xp, batch, dtype)

    def value(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> Any:
        for m in self.mods:
            score = m.value(score, b, h, i, j)
        return score

    def value_and_grad(self, score: Any, b: Any, h: Any, i: Any, j: Any) -> tuple[Any, Any]:
        g = None
        for m in self.mods:
            score, gm = m.value_and_grad(score, b, h, i, j)
            if gm is not None:
                g = gm if g is None else g * gm
        return score, g

    def _cost(self, batch: tuple[int, ...], r: int, c: int, grad: bool) -> tuple[int, int]:
        f = t = 0
        grads = 0
        for m in self.mods:
            fm, tm = m._cost(batch, r, c, grad)
            f, t = f + fm, t + tm
            grads += isinstance(m, _Softcap)
        if grad and grads > 1:
            f += (grads - 1) * math.prod(batch) * r * c
        return f, t

    @property
    def has_grad(self) -> bool:
        return any(isinstance(m, _Softcap) or (isinstance(m, _UserScore)) for m in self.mods)


def as_score_mod(score_mod: Any) -> ScoreMod | None:
    """Normalise the ``score_mod`` option: ``None``, a :class:`ScoreMod`, a pair ``(fn, dfn)``, a plain
    callable, or a list of these applied in order."""
    if score_mod is None or isinstance(score_mod, ScoreMod):
        return score_mod
    if callable(score_mod):
        return _UserScore(score_mod, None)
    if isinstance(score_mod, tuple) and len(score_mod) == 2 and all(callable(f) for f in score_mod):
        return _UserScore(*score_mod)
    if isinstance(score_mod, (list, tuple)) and score_mod:
        mods = tuple(as_score_mod(m) for m in score_mod)
        return mods[0] if len(mods) == 1 else _Chain(mods)  # type: ignore[arg-type]
    msg = (f"score_mod must be a refattn.mods score mod, a pair (fn, dfn) of callables, a callable, or a "
           f"list of these, got {score_mod!r}")
    raise TypeError(msg)


def score_has_grad(mod: ScoreMod | None) -> bool:
    """Whether the backward pass multiplies by a derivative (``False``: it is identically 1)."""
    if mod is None or isinstance(mod, _Alibi):
        return False
    if isinstance(mod, _Chain):
        return mod.has_grad
    return True


# ------------------------------------------------------------------------------------ mask mods

class MaskMod:
    """A mask modification. ``mod(b, h, i, j)`` is its boolean keep mask in global positions."""

    def __call__(self, b: Any, h: Any, i: Any, j: Any) -> Any:
        return self._keep(b, h, i, j, (i, j, 0))

    def _keep(self, b: Any, h: Any, i: Any, j: Any, loc: tuple[Any, Any, Any]) -> Any:
        """``loc = (i_local, j_local, bottom_right_offset)``: the positions the causal/window
        conditions use (global ones and ``m - n`` outside a document)."""
        raise NotImplementedError

    def _block_empty(self, i0: int, i1: int, j0: int, j1: int, n: int, m: int) -> bool:
        """Whether no pair of ``[i0, i1) x [j0, j1)`` is kept (pure Python; ``False`` = unknown)."""
        return False

    def _validate(self, n: int, m: int) -> None:
        """Call-time checks against the sequence lengths."""

    def _documents(self) -> list[_Document]:
        return []


class _Causal(MaskMod):
    """The ``causal=`` condition as a mask mod (used inside documents: per segment)."""

    def __init__(self, align: str) -> None:
        self.align = align

    def __repr__(self) -> str:
        return f"causal({self.align!r})"

    def _keep(self, b: Any, h: Any, i: Any, j: Any, loc: tuple[Any, Any, Any]) -> Any:
        li, lj, br = loc
        return lj <= li + (br if self.align == "bottom_right" else 0)

    def _block_empty(self, i0: int, i1: int, j0: int, j1: int, n: int, m: int) -> bool:
        off = m - n if self.align == "bottom_right" else 0
        return j0 > i1 - 1 + off


class _Window(MaskMod):
    def __init__(self, left: int | None, right: int | None, align: str) -> None:
        self.left, self.right, self.align = left, right, align

    def __repr__(self) -> str:
        return f"sliding_window({self.left!r}, {self.right!r}, align={self.align!r})"

    def __call__(self, b: Any, h: Any, i: Any, j: Any) -> Any:
        if self.align == "bottom_right":
            msg = ("sliding_window(..., align='bottom_right') depends on the sequence lengths; "
                   "evaluate it through softmax_attention(mask_mod=...)")
            raise ValueError(msg)
        return super().__call__(b, h, i, j)

    def _keep(self, b: Any, h: Any, i: Any, j: Any, loc: tuple[Any, Any, Any]) -> Any:
        li, lj, br = loc
        c = li + br if self.align == "bottom_right" else li
        keep = None
        if self.left is not None:
            keep = lj >= c - self.left
        if self.right is not None:
            r = lj <= c + self.right
            keep = r if keep is None else keep & r
        if keep is None:  # both unbounded
            keep = (lj >= 0) | (lj < 0)
        return keep

    def _block_empty(self, i0: int, i1: int, j0: int, j1: int, n: int, m: int) -> bool:
        off = m - n if self.align == "bottom_right" else 0
        if self.left is not None and j1 - 1 < i0 + off - self.left:
            return True
        return self.right is not None and j0 > i1 - 1 + off + self.right


def _window_size(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        msg = f"{name} must be a non-negative integer or None (unbounded), got {value!r}"
        raise ValueError(msg)
    return int(value)


def sliding_window(left: int | None, right: int | None = 0, align: str = "top_left") -> MaskMod:
    r"""Keep keys ``i - left <= j <= i + right`` (``None``: unbounded on that side; FlashAttention's
    ``window_size=(left, right)`` with ``-1`` for unbounded). ``align="bottom_right"`` shifts ``i`` by
    ``m - n`` as FlashAttention does (per segment inside a :func:`document`). ``sliding_window(w - 1,
    0)`` is a causal window of ``w`` keys."""
    check_choice("align", align, ALIGNS)
    return _Window(_window_size("left", left), _window_size("right", right), align)


def _cu(name: str, cu: Any) -> tuple[int, ...]:
    if hasattr(cu, "shape") and hasattr(cu, "dtype"):
        xp = _ns(cu)
        if cu.ndim != 1 or not xp.isdtype(cu.dtype, "integral"):
            msg = (f"{name} must be a 1-D integer array or sequence of ints, got shape {tuple(cu.shape)}, "
                   f"dtype {cu.dtype}")
            raise ValueError(msg)
        vals = [int(x) for x in cu]  # one host read at construction (FlashAttention reads max_seqlen too)
    elif isinstance(cu, Sequence) and not isinstance(cu, str) and all(
            isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in cu):
        vals = [int(x) for x in cu]
    else:
        msg = f"{name} must be a 1-D integer array or sequence of ints, got {cu!r}"
        raise ValueError(msg)
    if len(vals) < 2 or vals[0] != 0:
        msg = f"{name} must start at 0 and have at least two entries (one segment), got {vals}"
        raise ValueError(msg)
    if any(b < a for a, b in zip(vals, vals[1:])):
        msg = f"{name} must be non-decreasing, got {vals}"
        raise ValueError(msg)
    return tuple(vals)


class _Document(MaskMod):
    def __init__(self, cu_q: tuple[int, ...], cu_k: tuple[int, ...]) -> None:
        self.cu_q, self.cu_k = cu_q, cu_k

    def __repr__(self) -> str:
        return f"document({list(self.cu_q)}, {list(self.cu_k)})"

    def _validate(self, n: int, m: int) -> None:
        if self.cu_q[-1] != n:
            msg = f"cu_seqlens_q must end at the number of queries n = {n}, got {self.cu_q[-1]}"
            raise ValueError(msg)
        if self.cu_k[-1] != m:
            name = "cu_seqlens_k" if self.cu_k is not self.cu_q else "cu_seqlens_q (used for the keys too)"
            msg = f"{name} must end at the number of keys m = {m}, got {self.cu_k[-1]}"
            raise ValueError(msg)

    def _documents(self) -> list[_Document]:
        return [self]

    def _local(self, i: Any, j: Any) -> tuple[Any, Any, Any, Any]:
        """``(same segment, i_local, j_local, L_k - L_q of the query's segment)``."""
        xp = _ns(i)
        from ._xp import device

        dev = device(i)
        cq = xp.asarray(self.cu_q, dtype=xp.int64, device=dev)
        ck = xp.asarray(self.cu_k, dtype=xp.int64, device=dev)
        si = xp.reshape(xp.searchsorted(cq, xp.reshape(i, (-1,)), side="right"), i.shape) - 1
        sj = xp.reshape(xp.searchsorted(ck, xp.reshape(j, (-1,)), side="right"), j.shape) - 1
        si = xp.minimum(si, len(self.cu_q) - 2)
        sj = xp.minimum(sj, len(self.cu_k) - 2)
        li = i - _gather(xp, cq, si)
        lj = j - _gather(xp, ck, sj)
        br = (_gather(xp, ck, si + 1) - _gather(xp, ck, si)) - (_gather(xp, cq, si + 1) - _gather(xp, cq, si))
        return si == sj, li, lj, br

    def _keep(self, b: Any, h: Any, i: Any, j: Any, loc: tuple[Any, Any, Any]) -> Any:
        return self._local(i, j)[0]

    def _seg(self, cu: tuple[int, ...], x: int) -> int:
        return min(bisect.bisect_right(cu, x) - 1, len(cu) - 2)

    def _block_empty(self, i0: int, i1: int, j0: int, j1: int, n: int, m: int) -> bool:
        a0, a1 = self._seg(self.cu_q, i0), self._seg(self.cu_q, i1 - 1)
        c0, c1 = self._seg(self.cu_k, j0), self._seg(self.cu_k, j1 - 1)
        return a1 < c0 or c1 < a0


def document(cu_seqlens_q: Any, cu_seqlens_k: Any = None) -> MaskMod:
    r"""Packed variable-length sequences: query ``i`` and key ``j`` are kept iff they lie in the same
    segment ``[cu_seqlens_q[s], cu_seqlens_q[s+1])`` x ``[cu_seqlens_k[s], cu_seqlens_k[s+1])``
    (FlashAttention's ``cu_seqlens``; ``cu_seqlens_k`` defaults to ``cu_seqlens_q``). Each must be a
    1-D integer array or sequence, start at 0, be non-decreasing and end at ``n`` (``m``); both must
    have the same number of segments. The offsets are read to the host once, here. Combined with
    ``causal=`` or a :func:`sliding_window` (in :func:`and_masks`) those apply per segment."""
    cq = _cu("cu_seqlens_q", cu_seqlens_q)
    ck = cq if cu_seqlens_k is None else _cu("cu_seqlens_k", cu_seqlens_k)
    if len(ck) != len(cq):
        msg = (f"cu_seqlens_k must have as many entries as cu_seqlens_q ({len(cq)}, one segment each), "
               f"got {len(ck)}")
        raise ValueError(msg)
    return _Document(cq, ck)


class _UserMask(MaskMod):
    def __init__(self, fn: Callable[..., Any], empty: Callable[[int, int, int, int], bool] | None = None) -> None:
        self.fn, self.empty = fn, empty

    def __repr__(self) -> str:
        return f"mask_mod({getattr(self.fn, '__name__', self.fn)!r})"

    def __call__(self, b: Any, h: Any, i: Any, j: Any) -> Any:
        return self.fn(b, h, i, j)

    def _keep(self, b: Any, h: Any, i: Any, j: Any, loc: tuple[Any, Any, Any]) -> Any:
        return self.fn(b, h, i, j)

    def _block_empty(self, i0: int, i1: int, j0: int, j1: int, n: int, m: int) -> bool:
        return bool(self.empty(i0, i1, j0, j1)) if self.empty is not None else False


def block_sparse(mask_mod: Callable[..., Any], block_empty: Callable[[int, int, int, int], bool]) -> MaskMod:
    """A user mask mod with its block mask: ``block_empty(i0, i1, j0, j1) -> bool`` (Python ints) says
    that ``mask_mod`` keeps no pair of the block ``[i0, i1) x [j0, j1)``; the blockwise path then
    skips it. It must be right: a block it calls empty is never computed."""
    if not callable(mask_mod) or not callable(block_empty):
        msg = "block_sparse takes a mask_mod callable and a block_empty(i0, i1, j0, j1) callable"
        raise TypeError(msg)
    return _UserMask(mask_mod, block_empty)


def as_mask_mod(mask_mod: Any) -> MaskMod | None:
    if mask_mod is None or isinstance(mask_mod, MaskMod):
        return mask_mod
    if callable(mask_mod):
        return _UserMask(mask_mod)
    msg = f"mask_mod must be a callable (b, h, i, j) -> bool array or a refattn.mods mask mod, got {mask_mod!r}"
    raise TypeError(msg)


class _And(MaskMod):
    def __init__(self, mods: tuple[MaskMod, ...]) -> None:
        flat: list[MaskMod] = []
        for m in mods:
            flat.extend(m.mods if isinstance(m, _And) else (m,))
        self.mods = tuple(flat)
        docs = [m for m in self.mods if isinstance(m, _Document)]
        if len(docs) > 1:
            msg = "and_masks takes at most one document(...) mask mod"
            raise ValueError(msg)
        self.doc = docs[0] if docs else None

    def __repr__(self) -> str:
        return f"and_masks({', '.join(map(repr, self.mods))})"

    def _validate(self, n: int, m: int) -> None:
        for c in self.mods:
            c._validate(n, m)

    def _documents(self) -> list[_Document]:
        return [d for c in self.mods for d in c._documents()]

    def _keep(self, b: Any, h: Any, i: Any, j: Any, loc: tuple[Any, Any, Any]) -> Any:
        keep = None
        if self.doc is not None:
            keep, li, lj, br = self.doc._local(i, j)
            loc = (li, lj, br)
        for c in self.mods:
            if c is self.doc:
                continue
            kc = c._keep(b, h, i, j, loc)
            keep = kc if keep is None else keep & kc
        return keep

    def _block_empty(self, i0: int, i1: int, j0: int, j1: int, n: int, m: int) -> bool:
        if self.doc is None:
            return any(c._block_empty(i0, i1, j0, j1, n, m) for c in self.mods)
        if self.doc._block_empty(i0, i1, j0, j1, n, m):
            return True
        if self.doc.cu_q != self.doc.cu_k:  # per-segment windows differ from global ones: unknown
            return any(c._block_empty(i0, i1, j0, j1, n, m) for c in self.mods if isinstance(c, _UserMask))
        # equal layouts: segment-local conditions with L_k = L_q are the global ones (n = m)
        return any(c._block_empty(i0, i1, j0, j1, n, m) for c in self.mods if c is not self.doc)


class _Or(MaskMod):
    def __init__(self, mods: tuple[MaskMod, ...]) -> None:
        self.mods = mods

    def __repr__(self) -> str:
        return f"or_masks({', '.join(map(repr, self.mods))})"

    def _validate(self, n: int, m: int) -> None:
        for c in self.mods:
            c._validate(n, m)

    def _keep(self, b: Any, h: Any, i: Any, j: Any, loc: tuple[Any, Any, Any]) -> Any:
        keep = None
        for c in self.mods:
            kc = c._keep(b, h, i, j, loc)
            keep = kc if keep is None else keep | kc
        return keep

    def _block_empty(self, i0: int, i1: int, j0: int, j1: int, n: int, m: int) -> bool:
        return all(c._block_empty(i0, i1, j0, j1, n, m) for c in self.mods)


def _mods(name: str, mods: tuple[Any, ...]) -> tuple[MaskMod, ...]:
    if not mods:
        msg = f"{name} needs at least one mask mod"
        raise ValueError(msg)
    return tuple(as_mask_mod(m) for m in mods)  # type: ignore[misc]


def and_masks(*mask_mods: Any) -> MaskMod:
    """Keep a pair iff every mask mod keeps it (FlexAttention's ``and_masks``)."""
    return _And(_mods("and_masks", mask_mods))


def or_masks(*mask_mods: Any) -> MaskMod:
    """Keep a pair iff some mask mod keeps it (FlexAttention's ``or_masks``)."""
    return _Or(_mods("or_masks", mask_mods))


def with_causal(mod: MaskMod, align: str) -> MaskMod:
    """``mod`` AND the causal condition taken per segment (used when ``mod`` holds a document)."""
    return _And((mod, _Causal(align)))


def has_document(mod: MaskMod | None) -> bool:
    """Whether ``mod`` is a document or an ``and_masks`` holding one (segment-local conditions)."""
    return isinstance(mod, _Document) or (isinstance(mod, _And) and mod.doc is not None)


def user_in(mod: Any) -> bool:
    """Whether ``mod`` holds a user callable (whose output the forward pass checks once)."""
    if isinstance(mod, (_UserScore, _UserMask)):
        return True
    return isinstance(mod, (_Chain, _And, _Or)) and any(user_in(m) for m in mod.mods)
