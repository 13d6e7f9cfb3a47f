r"""Exact scaled dot-product (softmax) attention: the dense reference and a memory-bounded blockwise form.

.. math::

    S = s\,Q K^\top + B, \qquad P = \operatorname{softmax}_{\text{row}}(S), \qquad O = P V

with ``s = 1/sqrt(d)`` by default, ``B`` the additive mask and masked entries of ``S`` set to
``-inf``. Shapes (letters as in JAX's reference attention): ``q (..., n, d)``, ``k (..., m, d)``,
``v (..., m, dv)`` -> ``out (..., n, dv)``; leading dimensions broadcast.

Backward (Dao et al. 2022, FlashAttention, appendix B; the JAX reference kernels): with the row
log-sum-exp ``L_i = log sum_j exp(S_ij)`` saved by the forward pass,

.. math::

    P = e^{S - L}, \quad dV = P^\top dO, \quad dP = dO\, V^\top, \quad
    \delta_i = \textstyle\sum_c O_{ic}\, dO_{ic}, \quad dS = P \odot (dP - \delta), \quad
    dQ = s\, dS\, K, \quad dK = s\, dS^\top Q .

(``delta_i = sum_j P_ij dP_ij = O_i . dO_i`` is the softmax Jacobian's rank-one term.)

Implementations
---------------
``dense``      forms the ``(n, m)`` logits once; the reference every other path is tested against.
``blockwise``  online softmax (Milakov & Gimelshein 2018; Rabe & Staats 2021) over query blocks of
               ``block_q`` rows and key blocks of ``block_k`` columns: forward and backward hold
               ``O(block_q * block_k)`` logits at a time (per batch element), never an ``(n, m)``
               array; backward recomputes each logits block from the saved ``L``.
``auto``       dense while the logits take at most 64 MiB, blockwise above.

Masks: see :mod:`refattn._masks` (boolean keep-masks, additive masks, ``causal`` with a stated
alignment, ``key_lengths``). A query row whose keys are all masked returns **zeros**, its saved
log-sum-exp is ``-inf`` and its gradients are zero: it never yields NaN (torch 2.13's SDPA also
returns zeros for such rows). Half-precision inputs are computed in float32 and the result is cast
back.

Validation and implementation
-----------------------------
:func:`forward` (and :func:`softmax_attention`, which is ``forward(...)[0]``) validates once: the
arrays (:func:`refattn._xp.validate_qkv`), every option into one frozen :class:`Options`
(:func:`options`), the one data-dependent step :func:`_check_data` (finiteness of ``q, k, v``, run
when ``check_finite=True``, the default) and the mask into a :class:`~refattn._masks.MaskSpec`.
Then it calls the implementation entry point

``_forward(xp, q, k, v, spec, opts, dtype=None) -> (out, Residuals)``

which assumes valid, working-precision inputs (``q.dtype`` float32 or float64), never validates
and returns ``out`` in that precision. Composite methods (HEAT, Linformer, multi-head attention)
resolve :func:`options` and the ``MaskSpec`` once themselves and call ``_forward``; :func:`backward`
is the implementation of the backward pass for every caller and never validates either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import mods as _mods
from .._checks import check_choice, check_flag, check_int, check_real
from .._masks import MaskSpec, _causal_offset, make_mask, mask_block
from .._primitives import backend_primitive, exp_consuming
from .._registry import MASK_KINDS, Method, declare
from .._xp import (
    broadcast_shapes,
    broadcasts_to,
    check_overflow,
    compute_dtype,
    device,
    namespace,
    resolve_scale,
    to_working,
    unbroadcast,
    validate_qkv,
)
from .._xp import check_finite as check_finite_array

__all__ = ["softmax_attention", "forward", "backward", "cost", "options", "Options", "Residuals", "Grads",
           "SinkGrads", "Variant",
           "IMPLS", "DEFAULT_BLOCK_Q", "DEFAULT_BLOCK_K", "AUTO_DENSE_LIMIT_BYTES"]

IMPLS = ("auto", "dense", "blockwise")
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512
AUTO_DENSE_LIMIT_BYTES = 64 * 2**20


class Variant(NamedTuple):
    """The exact-attention variants of one call (issue 25), in the layout of the computation (with
    grouped-query heads: ``(..., Hkv, g, ...)``). Every field may be absent."""

    score_mod: Any = None  # a refattn.mods.ScoreMod
    sinks: Any = None  # working precision, shape (*sinks_batch, 1, 1) in the computation's layout
    sinks_shape: tuple[int, ...] | None = None  # the user's sinks shape (gradients are returned in it)
    sinks_dtype: Any = None
    dropout_mask: Any = None  # bool, broadcastable to (*batch, n, m) in the computation's layout
    dropout_scale: float = 1.0  # 1 / (1 - p)
    return_lse: bool = False
    out_shape: tuple[int, ...] | None = None  # the public layout of out (None: the computation's)

    @property
    def active(self) -> bool:
        return self.score_mod is not None or self.sinks is not None or self.dropout_mask is not None


NO_VARIANT = Variant()


class Residuals(NamedTuple):
    """What the backward pass needs: inputs (in working precision), output, row log-sum-exp."""

    q: Any
    k: Any
    v: Any
    out: Any
    lse: Any  # (..., n); -inf for fully masked rows
    spec: MaskSpec
    scale: float
    impl: str
    block_q: int
    block_k: int
    dtype: Any  # the inputs' dtype (gradients are returned in it)
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    variant: Variant = NO_VARIANT


class Grads(NamedTuple):
    dq: Any
    dk: Any
    dv: Any


class SinkGrads(NamedTuple):
    """Gradients of a call with ``sinks``: ``dq, dk, dv`` and ``dsinks`` (in the sinks' shape)."""

    dq: Any
    dk: Any
    dv: Any
    dsinks: Any


def _logits(xp: Any, qs: Any, kb: Any, keep: Any, bias: Any) -> Any:
    """``qs K^T + B`` with masked entries ``-inf``; ``qs`` holds the queries already scaled by ``s``
    (``n d`` multiplications once instead of ``n m`` on the logits)."""
    s = qs @ xp.matrix_transpose(kb)
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = xp.where(keep, s, -math.inf)
    return s


def _scores(xp: Any, qs: Any, kb: Any, keep: Any, bias: Any, smod: Any, spec: MaskSpec, i0: int, i1: int,
            j0: int, j1: int, grad: bool) -> tuple[Any, Any]:
    """:func:`_logits` with a score mod applied before the bias and the masks (FlashAttention's order);
    with ``grad`` also the mod's derivative (``None`` where it is 1)."""
    if smod is None:
        return _logits(xp, qs, kb, keep, bias), None
    s = qs @ xp.matrix_transpose(kb)
    dev = device(qs)
    b, h = spec.index
    i = xp.arange(i0, i1, dtype=xp.int64, device=dev)[:, None]
    j = xp.arange(j0, j1, dtype=xp.int64, device=dev)[None, :]
    g = None
    if grad:
        s, g = smod.value_and_grad(s, b, h, i, j)
    else:
        s = smod.value(s, b, h, i, j)
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = xp.where(keep, s, -math.inf)
    return s, g


def _sub(s: Any, x: Any) -> Any:
    """``s - x``, in place when ``x`` broadcasts into ``s`` without enlarging it (``s`` is a fresh
    temporary; broadcast batch axes of ``q``/``k`` can make ``s`` smaller than ``x``)."""
    if len(x.shape) <= len(s.shape) and all(a in (1, b) for a, b in zip(reversed(x.shape), reversed(s.shape))):
        s -= x
        return s
    return s - x


def _safe(xp: Any, x: Any) -> Any:
    """``x`` with non-finite entries (``-inf`` maxima of fully masked rows) replaced by 0."""
    return xp.where(xp.isfinite(x), x, 0.0)


def _finish(xp: Any, acc: Any, mx: Any, l: Any) -> tuple[Any, Any]:
    """out = acc / l and lse = mx + log l, with empty rows (l == 0) giving out 0 and lse -inf."""
    pos = l > 0
    l1 = xp.where(pos, l, 1.0)
    out = acc / l1
    lse = xp.where(pos, _safe(xp, mx) + xp.log(l1), -math.inf)
    return out, lse[..., 0]


def _block_skipped(spec: MaskSpec, i0: int, i1: int, j0: int, j1: int | None = None) -> bool:
    """A key block ``[j0, j1)`` holds no kept pair for rows ``i0:i1``: it lies wholly above the causal
    diagonal, or the mask mod says it is empty (pure Python: no array is read)."""
    if spec.causal_offset is not None and j0 > i1 - 1 + spec.causal_offset:
        return True
    if spec.mask_mod is not None and j1 is not None:
        return spec.mask_mod._block_empty(i0, i1, j0, j1, spec.n, spec.m)
    return False


def _sink_rows(xp: Any, var: Variant, spec: MaskSpec, i0: int, i1: int, dev: Any) -> Any:
    """The sinks as per-row logits ``(..., r, 1)`` for rows ``i0:i1`` (``-inf`` on padded query rows,
    which see nothing), or ``None``."""
    if var.sinks is None:
        return None
    s = var.sinks
    if spec.query_lengths is not None:
        i = xp.arange(i0, i1, device=dev)[:, None]
        s = xp.where(i < xp.astype(spec.query_lengths, xp.int64)[..., None, None], s, -math.inf)
    return s


def _drop_block(var: Variant, i0: int, i1: int, j0: int, j1: int) -> Any:
    if var.dropout_mask is None:
        return None
    a = var.dropout_mask
    rows = slice(i0, i1) if a.shape[-2] != 1 else slice(None)
    cols = slice(j0, j1) if a.shape[-1] != 1 else slice(None)
    return a[..., rows, cols]


def _dense_forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, scale: float,
                   var: Variant = NO_VARIANT) -> tuple[Any, Any]:
    n, m = q.shape[-2], k.shape[-2]
    keep, bias = mask_block(xp, spec, 0, n, 0, m, device(q))
    s, _ = _scores(xp, q * scale, k, keep, bias, var.score_mod, spec, 0, n, 0, m, False)
    mx = xp.max(s, axis=-1, keepdims=True)
    srow = _sink_rows(xp, var, spec, 0, n, device(q))
    if srow is not None:
        mx = xp.maximum(mx, srow)
    s -= _safe(xp, mx)
    p = exp_consuming(xp, s)
    del s  # two (n, m) arrays at most
    l = xp.sum(p, axis=-1, keepdims=True)
    if srow is not None:
        l = l + xp.exp(srow - _safe(xp, mx))
    drop = _drop_block(var, 0, n, 0, m)
    if drop is not None:
        p = xp.where(drop, p, 0.0)
    out, lse = _finish(xp, p @ v, mx, l)
    if drop is not None:
        out *= var.dropout_scale
    return out, lse


def _dense_backward(xp: Any, r: Residuals, dout: Any, delta: Any) -> tuple[Any, Any, Any]:
    q, k, v, var = r.q, r.k, r.v, r.variant
    n, m = q.shape[-2], k.shape[-2]
    keep, bias = mask_block(xp, r.spec, 0, n, 0, m, device(q))
    qs = q * r.scale
    s, g = _scores(xp, qs, k, keep, bias, var.score_mod, r.spec, 0, n, 0, m, True)
    p = exp_consuming(xp, _sub(s, _safe(xp, r.lse)[..., None]))
    del s
    drop = _drop_block(var, 0, n, 0, m)
    if drop is None:
        dv = xp.matrix_transpose(p) @ dout
        ds = dout @ xp.matrix_transpose(v)
    else:  # dout already carries the 1 / (1 - p) scale
        dv = xp.matrix_transpose(xp.where(drop, p, 0.0)) @ dout
        ds = xp.where(drop, dout @ xp.matrix_transpose(v), 0.0)
    ds -= delta
    ds *= p  # dS = P (dP - delta)
    del p
    if g is not None:
        ds *= g  # through the score mod
    dq = (ds @ k) * r.scale
    dk = xp.matrix_transpose(ds) @ qs  # s dS^T Q
    return dq, dk, dv


def _blockwise_forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, scale: float,
                       batch: tuple[int, ...], bq: int, bk: int,
                       var: Variant = NO_VARIANT) -> tuple[Any, Any]:
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    dev = device(q)
    qs = q * scale
    outs, lses = [], []
    for i0 in range(0, n, bq):
        i1 = min(i0 + bq, n)
        qb = qs[..., i0:i1, :]
        srow = _sink_rows(xp, var, spec, i0, i1, dev)
        if srow is None:
            mx = xp.full((*batch, i1 - i0, 1), -math.inf, dtype=q.dtype, device=dev)
            l = xp.zeros((*batch, i1 - i0, 1), dtype=q.dtype, device=dev)
        else:  # the sink is the initial state: max = sink, l = e^0 (0 on padded rows)
            mx = xp.broadcast_to(srow, (*batch, i1 - i0, 1))
            l = xp.astype(xp.broadcast_to(xp.isfinite(srow), (*batch, i1 - i0, 1)), q.dtype)
        acc = xp.zeros((*batch, i1 - i0, dv), dtype=q.dtype, device=dev)
        for j0 in range(0, m, bk):
            j1 = min(j0 + bk, m)
            if _block_skipped(spec, i0, i1, j0, j1):
                continue
            keep, bias = mask_block(xp, spec, i0, i1, j0, j1, dev)
            s, _ = _scores(xp, qb, k[..., j0:j1, :], keep, bias, var.score_mod, spec, i0, i1, j0, j1, False)
            mx_new = xp.maximum(mx, xp.max(s, axis=-1, keepdims=True))
            shift = _safe(xp, mx_new)
            alpha = xp.exp(mx - shift)
            p = exp_consuming(xp, _sub(s, shift))
            l *= alpha
            l += xp.sum(p, axis=-1, keepdims=True)
            acc *= alpha
            drop = _drop_block(var, i0, i1, j0, j1)
            if drop is not None:
                p = xp.where(drop, p, 0.0)
            acc += p @ v[..., j0:j1, :]
            mx = mx_new
        out, lse = _finish(xp, acc, mx, l)
        if var.dropout_mask is not None:
            out *= var.dropout_scale
        outs.append(out)
        lses.append(lse)
    if not outs:  # n == 0
        return (xp.zeros((*batch, 0, dv), dtype=q.dtype, device=dev),
                xp.zeros((*batch, 0), dtype=q.dtype, device=dev))
    return xp.concat(outs, axis=-2), xp.concat(lses, axis=-1)


def _blockwise_backward(xp: Any, r: Residuals, dout: Any, batch: tuple[int, ...],
                        delta: Any) -> tuple[Any, Any, Any]:
    q, k, v, spec, var = r.q, r.k, r.v, r.spec, r.variant
    n, m, d, dvdim = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dev = device(q)
    lse = _safe(xp, r.lse)[..., None]
    qs = q * r.scale
    q_blocks = [(i0, min(i0 + r.block_q, n)) for i0 in range(0, n, r.block_q)]
    dq = [xp.zeros((*batch, i1 - i0, d), dtype=q.dtype, device=dev) for i0, i1 in q_blocks]
    dks, dvs = [], []
    for j0 in range(0, m, r.block_k):
        j1 = min(j0 + r.block_k, m)
        kb, vb = k[..., j0:j1, :], v[..., j0:j1, :]
        dk_j = xp.zeros((*batch, j1 - j0, d), dtype=q.dtype, device=dev)
        dv_j = xp.zeros((*batch, j1 - j0, dvdim), dtype=q.dtype, device=dev)
        for b, (i0, i1) in enumerate(q_blocks):
            if _block_skipped(spec, i0, i1, j0, j1):
                continue
            keep, bias = mask_block(xp, spec, i0, i1, j0, j1, dev)
            qb, dob = qs[..., i0:i1, :], dout[..., i0:i1, :]
            s, g = _scores(xp, qb, kb, keep, bias, var.score_mod, spec, i0, i1, j0, j1, True)
            p = exp_consuming(xp, _sub(s, lse[..., i0:i1, :]))
            del s
            drop = _drop_block(var, i0, i1, j0, j1)
            if drop is None:
                dv_j += xp.matrix_transpose(p) @ dob
                ds = dob @ xp.matrix_transpose(vb)
            else:  # dout already carries the 1 / (1 - p) scale
                dv_j += xp.matrix_transpose(xp.where(drop, p, 0.0)) @ dob
                ds = xp.where(drop, dob @ xp.matrix_transpose(vb), 0.0)
            ds -= delta[..., i0:i1, :]
            ds *= p
            if g is not None:
                ds *= g
            dq[b] += ds @ kb  # scaled by s once, after the loops
            dk_j += xp.matrix_transpose(ds) @ qb
        dks.append(dk_j)
        dvs.append(dv_j)
    cat = lambda xs, shape: xp.concat(xs, axis=-2) if xs else xp.zeros(shape, dtype=q.dtype, device=dev)  # noqa: E731
    return (cat(dq, (*batch, 0, d)) * r.scale, cat(dks, (*batch, 0, d)), cat(dvs, (*batch, 0, dvdim)))


@dataclass(frozen=True)
class Options:
    """The resolved options of one call: ``impl`` is ``"dense"`` or ``"blockwise"`` (``"auto"``
    resolved), the block sizes are set, ``scale`` is a float."""

    scale: float
    impl: str
    block_q: int
    block_k: int
    check_finite: bool = True
    dropout_p: float = 0.0
    return_lse: bool = False


def options(xp: Any, batch: tuple[int, ...], n: int, m: int, d: int, work: Any, *, scale: Any = None,
            impl: Any = "auto", block_q: Any = None, block_k: Any = None,
            check_finite: Any = True, dropout_p: Any = 0.0, return_lse: Any = False) -> Options:
    """Validate and resolve softmax's options for inputs of batch shape ``batch``, ``n`` queries,
    ``m`` keys, ``d`` features and working dtype ``work`` (``"auto"`` depends on them)."""
    check_choice("impl", impl, IMPLS)
    bq = check_int("block_q", block_q, minimum=1, allow_none=True)
    bk = check_int("block_k", block_k, minimum=1, allow_none=True)
    check_flag("check_finite", check_finite)
    check_flag("return_lse", return_lse)
    p = check_real("dropout_p", dropout_p, minimum=0.0, maximum=1.0, open_max=True)
    if impl == "auto":
        itemsize = 4 if work == xp.float32 else 8
        impl = "dense" if math.prod(batch) * n * m * itemsize <= AUTO_DENSE_LIMIT_BYTES else "blockwise"
    return Options(resolve_scale(scale, d), impl, bq or DEFAULT_BLOCK_Q, bk or DEFAULT_BLOCK_K, check_finite,
                   p, return_lse)


def _check_data(xp: Any, q: Any, k: Any, v: Any, sinks: Any = None) -> None:
    """The data-dependent step: ``q, k, v`` (and ``sinks``) must be finite (``ValueError`` naming the
    argument)."""
    for name, a in (("q", q), ("k", k), ("v", v), ("sinks", sinks)):
        if a is not None:
            check_finite_array(name, a, xp)


def _forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, opts: Options,
             dtype: Any = None, variant: Variant | None = None) -> tuple[Any, Residuals]:
    """The implementation: valid working-precision ``q, k, v``, their ``MaskSpec`` and resolved
    :class:`Options`; returns ``(out, Residuals)`` with ``out`` in the working precision.
    ``dtype`` is the dtype :func:`backward` returns gradients in (default ``q.dtype``). ``variant``
    holds the exact-attention variants (:class:`Variant`), already in the layout of ``q, k, v``."""
    var = NO_VARIANT if variant is None else variant
    n, m = q.shape[-2], k.shape[-2]
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if m == 0:
        out = xp.zeros((*batch, n, v.shape[-1]), dtype=q.dtype, device=device(q))
        srow = _sink_rows(xp, var, spec, 0, n, device(q))
        if srow is None:
            lse = xp.full((*batch, n), -math.inf, dtype=q.dtype, device=device(q))
        else:  # only the sink: out = 0, lse = sink
            lse = xp.astype(xp.broadcast_to(srow, (*batch, n, 1))[..., 0], q.dtype, copy=True)
    elif opts.impl == "dense":
        out, lse = _dense_forward(xp, q, k, v, spec, opts.scale, var)
    elif _plain(spec, var) and (prim := backend_primitive(xp, "softmax_attention")) is not None:
        out, lse = prim(q, k, v, spec, opts.scale, batch, opts.block_q, opts.block_k)  # e.g. Dask's graph
    else:
        out, lse = _blockwise_forward(xp, q, k, v, spec, opts.scale, batch, opts.block_q, opts.block_k, var)
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    return out, Residuals(q, k, v, out, lse, spec, opts.scale, opts.impl, opts.block_q, opts.block_k,
                          q.dtype if dtype is None else dtype, shapes, var)


def _plain(spec: MaskSpec, var: Variant) -> bool:
    """No variant and no per-row or per-block mask rule: the inputs a backend primitive (Dask's
    chunk-parallel graph) takes; other calls run the generic blockwise loop."""
    return not var.active and var.out_shape is None and spec.query_lengths is None and spec.mask_mod is None


def _regroup(xp: Any, a: Any, tail: int, hq: int, hkv: int) -> Any:
    """``a`` (head axis at ``-(tail + 1)``, size ``hq`` or 1, or absent) in the grouped layout
    ``(..., hkv, hq // hkv, *tail)`` of grouped-query attention."""
    if a is None or a.ndim <= tail:
        return a
    ax = a.ndim - tail - 1
    if a.shape[ax] == 1:
        return xp.expand_dims(a, axis=ax)
    return xp.reshape(a, (*a.shape[:ax], hkv, hq // hkv, *a.shape[ax + 1:]))


def _gqa(q: Any, k: Any, v: Any) -> tuple[int, int] | None:
    """``(Hq, Hkv)`` when ``k, v`` have fewer heads on axis -3 than ``q`` (grouped-query attention),
    else ``None``; ``ValueError`` naming ``k`` (or ``v``) when the head counts do not divide."""
    if q.ndim < 3 or k.ndim < 3:
        return None
    hq, hkv = q.shape[-3], k.shape[-3]
    if hkv in (1, hq) or hq == 1:
        return None
    if hkv > hq or hq % hkv:
        msg = (f"leading (batch/head) dimensions of q, k, v do not broadcast: k must have a number of heads "
               f"(axis -3) that divides q's {hq} (grouped-query attention), or 1, got {hkv} "
               f"(q shape {tuple(q.shape)}, k shape {tuple(k.shape)})")
        raise ValueError(msg)
    if v.ndim < 3 or v.shape[-3] != hkv:
        msg = f"v must have k's {hkv} heads on axis -3 (grouped-query attention), got shape {tuple(v.shape)}"
        raise ValueError(msg)
    return hq, hkv


def _index(xp: Any, batch: tuple[int, ...], group: tuple[int, int] | None, dev: Any) -> tuple[Any, Any]:
    """The ``(b, h)`` index arrays mods see, broadcastable against ``(*batch, r, c)`` in the layout of
    the computation (``batch`` is the user's leading shape)."""
    if not batch:
        z = xp.zeros((1, 1), dtype=xp.int64, device=dev)
        return z, z
    hq = batch[-1]
    h = xp.arange(hq, dtype=xp.int64, device=dev)
    h = xp.reshape(h, (group[1], hq // group[1], 1, 1) if group else (hq, 1, 1))
    if len(batch) < 2:
        return xp.zeros((1, 1), dtype=xp.int64, device=dev), h
    nb = batch[-2]
    return xp.reshape(xp.arange(nb, dtype=xp.int64, device=dev), (nb, *([1] * h.ndim))), h


def _probe(xp: Any, score_mod: Any, mask_mod: Any, idx: tuple[Any, Any], batch: tuple[int, ...],
           n: int, m: int, work: Any, dev: Any) -> None:
    """Validate user mods on a small block: a score mod keeps shape and dtype, a mask mod returns
    booleans broadcastable to the logits."""
    r, c = min(n, 2), min(m, 2)
    if r == 0 or c == 0:
        return
    b, h = idx
    i = xp.arange(r, dtype=xp.int64, device=dev)[:, None]
    j = xp.arange(c, dtype=xp.int64, device=dev)[None, :]
    target = (*batch, r, c)
    if score_mod is not None and _mods.user_in(score_mod):
        score = xp.zeros(target, dtype=work, device=dev)
        outs = [("score_mod", score_mod.value(score, b, h, i, j))]
        fn = getattr(score_mod, "dfn", None)
        if fn is not None:
            outs.append(("score_mod's derivative", fn(score, b, h, i, j)))
        for what, out in outs:
            if not hasattr(out, "shape") or tuple(out.shape) != target or out.dtype != work:
                got = (tuple(out.shape), out.dtype) if hasattr(out, "shape") else type(out).__name__
                msg = (f"score_mod must return an array of the score's shape and dtype {(target, work)}; "
                       f"{what} returned {got}")
                raise ValueError(msg)
    if mask_mod is not None and _mods.user_in(mask_mod):
        keep = mask_mod._keep(b, h, i, j, (i, j, m - n))
        if not hasattr(keep, "dtype") or keep.dtype != xp.bool:
            got = getattr(keep, "dtype", type(keep).__name__)
            msg = f"mask_mod must return a boolean array (True = keep), got {got}"
            raise TypeError(msg)
        if not broadcasts_to(keep.shape, target):
            msg = (f"mask_mod must return booleans broadcastable to the logits block {target}, "
                   f"got shape {tuple(keep.shape)}")
            raise ValueError(msg)


def _check_extra(xp: Any, name: str, a: Any, batch: tuple[int, ...], tail: tuple[int, ...], what: str) -> None:
    target = (*batch, *tail)
    if not broadcasts_to(a.shape, target):
        msg = f"{name} must be broadcastable to {what} {target} without enlarging it, got shape {tuple(a.shape)}"
        raise ValueError(msg)


def forward(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
            scale: float | None = None, key_lengths: Any = None, query_lengths: Any = None,
            score_mod: Any = None, mask_mod: Any = None, sinks: Any = None, dropout_mask: Any = None,
            dropout_p: float = 0.0, return_lse: bool = False, impl: str = "auto",
            block_q: int | None = None, block_k: int | None = None,
            check_finite: bool = True) -> tuple[Any, Residuals]:
    """Softmax attention forward pass; returns ``(out, Residuals)`` (``((out, lse), Residuals)`` with
    ``return_lse=True``). See :func:`softmax_attention`."""
    group = _gqa(q, k, v) if all(hasattr(a, "shape") for a in (q, k, v)) else None
    extra = {"mask": mask, "key_lengths": key_lengths, "query_lengths": query_lengths, "sinks": sinks,
             "dropout_mask": dropout_mask}
    if group is None:
        xp, batch = validate_qkv(q, k, v, extra=extra)
        gbatch = batch
    else:  # validate in the grouped layout: q (..., Hkv, g, n, d), k and v (..., Hkv, 1, m, .)
        hq, hkv = group
        xp0 = namespace(q, k, v)
        qg = xp0.reshape(q, (*q.shape[:-3], hkv, hq // hkv, *q.shape[-2:]))
        xp, gbatch = validate_qkv(qg, xp0.expand_dims(k, axis=-3), xp0.expand_dims(v, axis=-3), extra=extra)
        batch = (*gbatch[:-2], hq)
    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    dtype = q.dtype
    work = compute_dtype(xp, dtype)
    opts = options(xp, gbatch, n, m, d, work, scale=scale, impl=impl, block_q=block_q, block_k=block_k,
                   check_finite=check_finite, dropout_p=dropout_p, return_lse=return_lse)
    smod = _mods.as_score_mod(score_mod)
    mmod = _mods.as_mask_mod(mask_mod)
    if sinks is not None:
        if not hasattr(sinks, "dtype") or not xp.isdtype(sinks.dtype, "real floating"):
            got = getattr(sinks, "dtype", type(sinks).__name__)
            msg = f"sinks must be a real floating array of shape (H,) (broadcastable to {batch}), got {got}"
            raise TypeError(msg)
        _check_extra(xp, "sinks", sinks, batch, (), "the (batch, heads) shape")
    if dropout_mask is not None:
        if not hasattr(dropout_mask, "dtype") or dropout_mask.dtype != xp.bool:
            msg = (f"dropout_mask must be a boolean keep mask (True = keep), got "
                   f"{getattr(dropout_mask, 'dtype', type(dropout_mask).__name__)}")
            raise TypeError(msg)
        _check_extra(xp, "dropout_mask", dropout_mask, batch, (n, m), "the attention matrix")
    elif opts.dropout_p != 0.0:
        msg = "dropout_p needs dropout_mask: refattn draws no random numbers (pass the kernel's keep mask)"
        raise ValueError(msg)
    if smod is not None:
        smod._validate(xp, batch, work)
    if mmod is not None:
        mmod._validate(n, m)
    if opts.check_finite:
        _check_data(xp, q, k, v, sinks)
    work, (q, k, v) = to_working(xp, q, k, v)
    if mmod is not None and causal is not False and _mods.has_document(mmod):
        _causal_offset(causal, n, m)  # validates
        mmod = _mods.with_causal(mmod, "bottom_right" if causal == "bottom_right" else "top_left")
        causal = False  # taken per segment, inside the mask mod
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=work,
                     query_lengths=query_lengths)
    dev = device(q)
    idx = _index(xp, batch, group, dev) if (smod is not None or mmod is not None) else None
    if smod is not None or mmod is not None:
        _probe(xp, smod, mmod, idx, gbatch, n, m, work, dev)
    sk = None
    if sinks is not None:
        sk = sinks if sinks.dtype == work else xp.astype(sinks, work)
        sk = sk[..., None, None]
    if group is not None:
        hq, hkv = group
        spec = spec._replace(keep=_regroup(xp, spec.keep, 2, hq, hkv), bias=_regroup(xp, spec.bias, 2, hq, hkv),
                             key_lengths=_regroup(xp, spec.key_lengths, 0, hq, hkv),
                             query_lengths=_regroup(xp, spec.query_lengths, 0, hq, hkv))
        sk = _regroup(xp, sk, 2, hq, hkv)
        dropout_mask = _regroup(xp, dropout_mask, 2, hq, hkv)
    spec = spec._replace(mask_mod=mmod, index=idx)
    var = Variant(smod, sk, None if sinks is None else tuple(sinks.shape), None if sinks is None else sinks.dtype,
                  dropout_mask, 1.0 / (1.0 - opts.dropout_p), opts.return_lse,
                  None if group is None else (*gbatch[:-2], group[0], n, v.shape[-1]))
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))  # the user's (gradients come back in them)
    if group is not None:
        hq, hkv = group
        q = xp.reshape(q, (*q.shape[:-3], hkv, hq // hkv, *q.shape[-2:]))
        k, v = xp.expand_dims(k, axis=-3), xp.expand_dims(v, axis=-3)
    out, res = _forward(xp, q, k, v, spec, opts, dtype, var)
    if opts.check_finite:  # huge finite q, k: the logits overflow (inf - inf = NaN)
        check_overflow(xp, out, "softmax_attention")
    if group is not None:
        res = res._replace(shapes=shapes)
        out = xp.reshape(out, var.out_shape)
    out = xp.astype(out, dtype) if work != dtype else out
    if not opts.return_lse:
        return out, res
    lse = res.lse if group is None else xp.reshape(res.lse, var.out_shape[:-1])
    return (out, lse), res


def backward(res: Residuals, dout: Any, /) -> Grads | SinkGrads:
    """Hand-written backward of :func:`forward` (and of ``_forward``): ``Grads(dq, dk, dv)`` in the
    inputs' shapes and ``res.dtype`` (``SinkGrads(dq, dk, dv, dsinks)`` with ``sinks``). With
    ``return_lse=True`` the cotangent is the pair ``(dout, dlse)`` (``dlse`` may be ``None``).
    Trusts its residuals: it validates nothing."""
    xp = namespace(res.q)
    var = res.variant
    dlse = None
    if isinstance(dout, (tuple, list)):
        dout, dlse = dout
    dout = xp.astype(dout, res.q.dtype) if dout.dtype != res.q.dtype else dout
    if tuple(dout.shape) != tuple(res.out.shape):  # grouped-query heads: (..., Hq, ...) -> (..., Hkv, g, ...)
        dout = xp.reshape(dout, res.out.shape)
    batch = tuple(res.out.shape[:-2])
    delta = xp.sum(res.out * dout, axis=-1, keepdims=True)
    if dlse is not None:
        dlse = xp.astype(dlse, res.q.dtype) if dlse.dtype != res.q.dtype else dlse
        delta = delta - xp.reshape(dlse, res.lse.shape)[..., None]  # d lse / d S = P
    if var.dropout_mask is not None:
        dout = dout * var.dropout_scale
    if res.k.shape[-2] == 0:
        dq, dk, dv = xp.zeros_like(res.q), xp.zeros_like(res.k), xp.zeros_like(res.v)
    elif res.impl == "dense":
        dq, dk, dv = _dense_backward(xp, res, dout, delta)
    elif (dlse is None and _plain(res.spec, var)
          and (prim := backend_primitive(xp, "softmax_attention_backward")) is not None):
        dq, dk, dv = prim(res, dout, batch)
    else:
        dq, dk, dv = _blockwise_backward(xp, res, dout, batch, delta)
    grads = []
    for g, a, shape in zip((dq, dk, dv), (res.q, res.k, res.v), res.shapes):
        g = unbroadcast(xp, g, a.shape)
        grads.append(xp.reshape(g, shape) if tuple(a.shape) != tuple(shape) else g)
    grads = [xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in grads]
    if var.sinks is None:
        return Grads(*grads)
    # d sink = sum_i e^{sink - L_i} (dlse_i - delta_i): the sink is a key with a zero value
    srow = _sink_rows(xp, var, res.spec, 0, res.q.shape[-2], device(res.q))
    ps = xp.exp(srow - _safe(xp, res.lse)[..., None])
    ds = xp.sum(ps * delta, axis=(-2, -1))
    ds = -unbroadcast(xp, ds, var.sinks.shape[:-2])
    ds = xp.reshape(ds, var.sinks_shape) if tuple(ds.shape) != var.sinks_shape else ds
    ds = xp.astype(ds, var.sinks_dtype) if ds.dtype != var.sinks_dtype else ds
    return SinkGrads(*grads, ds)


def _closed_cost(s: Any, opts: Any, backward: bool) -> Any:
    impl = opts.get("impl", "auto")
    if impl == "auto":
        dense = math.prod(s["batch"]) * s["n"] * s["m"] * s["dtype_bytes"] <= AUTO_DENSE_LIMIT_BYTES
        impl = "dense" if dense else "blockwise"
    return cost(s["batch"], s["n"], s["m"], s["d"], s["dv"], impl=impl, backward=backward,
                causal=opts.get("causal", False), block_q=opts.get("block_q") or DEFAULT_BLOCK_Q,
                block_k=opts.get("block_k") or DEFAULT_BLOCK_K, dtype_bytes=s["dtype_bytes"],
                check_finite=opts.get("check_finite", True), sinks=opts.get("sinks") is not None,
                return_lse=bool(opts.get("return_lse", False)), dropout=opts.get("dropout_mask") is not None,
                score_mod=opts.get("score_mod"), mask_mod=opts.get("mask_mod"),
                query_lengths=opts.get("query_lengths") is not None)


@declare(Method(
    forward, backward, name="softmax",
    summary="exact softmax attention softmax(s Q K^T + B) V, dense or blockwise (online softmax)",
    masks=MASK_KINDS, cost=_closed_cost,
    error_model="refattn._oracle:softmax_error_bound", grad_error_model=True))
def softmax_attention(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
                      scale: float | None = None, key_lengths: Any = None, query_lengths: Any = None,
                      score_mod: Any = None, mask_mod: Any = None, sinks: Any = None,
                      dropout_mask: Any = None, dropout_p: float = 0.0, return_lse: bool = False,
                      impl: str = "auto", block_q: int | None = None, block_k: int | None = None,
                      check_finite: bool = True) -> Any:
    r"""Exact softmax attention ``softmax(s Q K^T + B) V``.

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
        Real floating, one dtype, one namespace and device; leading dimensions broadcast.
    mask : array, optional
        Boolean (``True`` = keep) or additive float, broadcastable to ``(..., n, m)``.
    causal : bool or {"top_left", "bottom_right"}
        ``True`` = ``"top_left"``: query ``i`` sees keys ``j <= i`` (torch SDPA's ``is_causal``);
        ``"bottom_right"``: ``j <= i + m - n`` (FlashAttention 2, KV-cache decoding).
    scale : float, optional
        Logit scale ``s``; ``1/sqrt(d)`` by default.
    key_lengths : integer array, optional
        Per batch element number of valid keys (key padding), broadcastable to the batch shape.
    query_lengths : integer array, optional
        Per batch element number of valid queries (query padding): padded rows give zero output,
        ``lse = -inf`` and zero gradients (also with sinks).
    score_mod : refattn.mods score mod, pair ``(fn, dfn)``, callable, or a list of them (applied in order)
        Elementwise modification of the scaled logits, before biases and masks (``mods.softcap``,
        ``mods.alibi``); see :mod:`refattn.mods`.
    mask_mod : callable ``(b, h, i, j) -> bool`` or refattn.mods mask mod
        AND-ed with the other masks (``mods.sliding_window``, ``mods.document``, ``mods.and_masks``,
        ``mods.or_masks``, ``mods.block_sparse``); the blockwise path skips the blocks a mask mod
        says are empty. With a ``document``, ``causal`` is taken per segment.
    sinks : array ``(H,)`` (broadcastable to the batch shape), optional
        Per-head logits joining the softmax normaliser, carrying no value:
        ``out_i = sum_j e^{s_ij} v_j / (e^{sink} + sum_j e^{s_ij})``; their gradient is returned
        (``SinkGrads.dsinks``).
    dropout_mask : boolean array broadcastable to ``(..., n, m)``, optional; ``dropout_p`` in [0, 1)
        Replays a kernel's dropout: ``P * mask / (1 - p)`` after the softmax (the LSE is unchanged).
    return_lse : bool
        Return ``(out, lse)`` with ``lse = log sum_j e^{s_ij}`` (natural log, sinks included),
        ``(..., n)``, ``-inf`` for rows that see nothing; the pullback then takes ``(dout, dlse)``.

    Grouped-query heads: ``k, v`` may have fewer heads (axis -3) than ``q``, dividing it; query head
    ``h`` uses kv head ``h // (Hq / Hkv)`` (SDPA's ``enable_gqa``); ``dk, dv`` sum over each group.
    Order of operations (FlashAttention's reference): scale, score mods, biases, masks, softmax,
    dropout.
    impl : {"auto", "dense", "blockwise"}
    block_q, block_k : int, optional
        Block sizes of the blockwise path (default 512 each); any positive size, dividing n or not.
    check_finite : bool
        ``True`` (default): reject NaN/inf in q, k, v with a ``ValueError`` naming the argument
        (one extra pass over the inputs). ``False``: skip the pass; non-finite values propagate to
        the rows they reach.

    Returns
    -------
    out : array ``(..., n, dv)`` in the inputs' dtype. Rows with every key masked are zero.
        With ``return_lse=True``: ``(out, lse)``.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes, arrays of different libraries, a mask of the wrong dtype, a
        ``check_finite`` that is not ``True``/``False``.
    ValueError
        Shapes that do not match or broadcast, a mask of the wrong shape, non-positive block sizes,
        an unknown ``impl`` or ``causal``, arrays on different devices, NaN/inf in q, k or v
        (``check_finite=True``).

    References
    ----------
    Vaswani et al. 2017; Rabe & Staats 2021 (arXiv 2112.05682); Dao et al. 2022 (FlashAttention).
    """
    return forward(q, k, v, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                   query_lengths=query_lengths, score_mod=score_mod, mask_mod=mask_mod, sinks=sinks,
                   dropout_mask=dropout_mask, dropout_p=dropout_p, return_lse=return_lse,
                   impl=impl, block_q=block_q, block_k=block_k, check_finite=check_finite)[0]


# ------------------------------------------------------------------------------------------------
# Closed-form cost: exact FLOPs, stated bounds on bytes, allocations and peak
# ------------------------------------------------------------------------------------------------

#: the kinds of ``mask`` / ``key_lengths`` argument :func:`cost` distinguishes
COST_MASKS = (False, True, "bool", "additive", "key_lengths")


def _visited_blocks(n: int, m: int, bq: int, bk: int, offset: int | None,
                    mask_mod: Any = None) -> list[tuple[int, list[int]]]:
    """``[(rows, [cols of each key block visited]) for each query block]``, as the loops run (the
    same :func:`_block_skipped` test: causal diagonal and the mask mod's empty blocks)."""
    spec = MaskSpec(None, None, offset, None, n, m, mask_mod=mask_mod)
    out = []
    for i0 in range(0, n, bq):
        i1 = min(i0 + bq, n)
        cols = []
        for j0 in range(0, m, bk):
            j1 = min(j0 + bk, m)
            if _block_skipped(spec, i0, i1, j0, j1):
                continue
            cols.append(j1 - j0)
        out.append((i1 - i0, cols))
    return out


def visited_fraction(n: int, m: int, *, causal: bool | str = False, mask_mod: Any = None,
                     block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K) -> float:
    """The fraction ``A / (n m)`` of the logits the blockwise path computes (block sparsity)."""
    mm = _mods.as_mask_mod(mask_mod)
    if mm is not None and causal is not False and _mods.has_document(mm):
        mm, causal = _mods.with_causal(mm, "bottom_right" if causal == "bottom_right" else "top_left"), False
    blocks = _visited_blocks(n, m, block_q, block_k, _causal_offset(causal, n, m), mm)
    return sum(r * c for r, cols in blocks for c in cols) / max(n * m, 1)


class _Bounds(NamedTuple):
    """Byte bounds of one block of work: reads, writes (= bytes allocated or overwritten), allocations."""

    read: int
    write: int
    alloc: int

    def __add__(self, o: Any) -> _Bounds:  # type: ignore[override]
        return _Bounds(self.read + o.read, self.write + o.write, self.alloc + o.alloc)


def _pair(b: int, d: int, dv: int, w: int, kind: Any, causal: bool, rc: int, r: int, c: int, one: int,
          backward: bool) -> _Bounds:
    """Bounds for the visited block pairs: linear in ``(r c, r, c, 1)``, so it gives one pair's bounds
    with ``(r c, r, c, 1)`` and the sum over all pairs with ``(A, R, C, P)`` (see :func:`cost`)."""
    big, row = b * rc * w, b * r * w
    bias, keep_kl = kind == "additive", kind == "key_lengths"
    keep = causal or keep_kl or kind in (True, "bool")
    # the keep mask of the block: causal index arithmetic, key-length comparison, their AND
    idx = (16 * r + 8 * c + 2 * b * rc) * causal + ((8 + b) * c + 16 * b * one + 2 * b * rc) * keep_kl
    # the logits (s Q) K^T [+ B] [where(keep)]
    lg = _Bounds(b * (r + c) * d * w + 2 * big * bias + (big + b * rc) * keep,
                 big * (1 + bias + keep), one * (1 + bias + keep))
    mask = _Bounds(idx, idx, one * (5 * causal + 4 * keep_kl))
    if not backward:  # 5 reads and 2 writes of (r, c) arrays, 14 / 9 row vectors, acc 3 / 3, V once
        rest = _Bounds(5 * big + 14 * row + b * (3 * r + c) * dv * w, 2 * big + 9 * row + 3 * b * r * dv * w,
                       11 * one)
    else:  # 8 / 5 (r, c) arrays; dQ, dK, dV blocks read and written by products and accumulations
        rest = _Bounds(8 * big + 2 * row + 3 * b * (r + c) * d * w + b * (2 * r + 3 * c) * dv * w,
                       5 * big + 2 * b * (r + c) * d * w + 2 * b * c * dv * w, 6 * one)
    return lg + mask + rest


def _bounds(b: int, n: int, m: int, d: int, dv: int, w: int, kind: Any, causal: bool, impl: str,
            blocks: list[tuple[int, list[int]]], check_finite: bool,
            backward: bool) -> tuple[_Bounds, int]:
    """Bytes read, written and allocations (upper bounds) and the peak bound of :func:`cost`."""
    blockwise = impl == "blockwise"
    pairs = [(r, c) for r, cols in blocks for c in cols]
    agg = (sum(r * c for r, c in pairs), sum(r for r, _ in pairs), sum(c for _, c in pairs), len(pairs))
    big_r = max((r for r, _ in pairs), default=0)
    big_c = max((c for _, c in pairs), default=0)
    rows_out = b * n * (dv + 1) * w  # out and lse
    # validation: the finiteness pass (isfinite, ~, any per input) and the mask's own checks
    e = b * (n * d + m * d + m * dv)
    val = _Bounds(e * w + 2 * e + 3, 2 * e + 3, 9) if check_finite else _Bounds(0, 0, 0)
    o = b * n * dv
    val += _Bounds(o * w + o + 1, o + 1, 2) if check_finite else _Bounds(0, 0, 0)  # the output's check
    bias = b * n * m * w if kind == "additive" else 0
    if kind == "additive":  # any(isnan), any(== inf), astype, any(cast == inf): the bias (held to the end)
        val += _Bounds(3 * bias + 3 * b * n * m + 3 + bias, 3 * b * n * m + 3 + bias, 7)
    elif kind == "key_lengths":
        val += _Bounds(18 * b + 2, 2 * b + 2, 4)
    if m == 0:
        fwd, fpeak = val + _Bounds(0, rows_out, 2), val.write + rows_out
    else:
        # per query block: initial state (blockwise) and _finish: 12 / 9 row vectors, acc once / twice
        per_q = lambda r: _Bounds(12 * b * r * w + b * r * dv * w, 9 * b * r * w + 2 * b * r * dv * w, 11)  # noqa: E731
        once = _Bounds(b * n * d * w, b * n * d * w, 1)  # s Q
        if blockwise:
            once += _Bounds(rows_out, rows_out, 2)  # concatenations
        fwd = val + once + _pair(b, d, dv, w, kind, causal, *agg, False)
        for r, _ in blocks:
            fwd += per_q(r)
        one_pair = _pair(b, d, dv, w, kind, causal, big_r * big_c, big_r, big_c, 1, False)
        if not blockwise:  # everything the dense path writes, as if nothing were freed
            fpeak = val.write + bias + (fwd.write - val.write)
        else:  # carried (s Q, results twice, two blocks' initial state) + held by loop variables
            held_prev = b * big_r * big_c + 2 * b * big_r * big_c * w + b * big_r * (dv + 4) * w
            fpeak = (val.write + bias + b * n * d * w + 2 * rows_out + 2 * b * big_r * (dv + 2) * w
                     + held_prev + max(one_pair.write, per_q(big_r).write))
    if not backward:
        return fwd, fpeak
    grads = b * (n * d + m * d + m * dv) * w
    if m == 0:
        return fwd + _Bounds(0, b * n * d * w, 3), max(fpeak, bias + rows_out + b * n * d * w)
    # delta = sum(out * dout), _safe(lse), s Q, the concatenations and the scaling of dQ
    once = _Bounds(3 * b * n * dv * w + 3 * b * n * w + 3 * b * n * d * w + b * m * (d + dv) * w,
                   b * n * dv * w + 3 * b * n * w + 3 * b * n * d * w + b * m * (d + dv) * w, 9)
    zeros = _Bounds(0, grads, len(blocks) + 2 * -(-m // max(big_c, 1))) if blockwise else _Bounds(0, 0, 0)
    bwd = once + zeros + _pair(b, d, dv, w, kind, causal, *agg, True)
    if not blockwise:
        bpeak = bwd.write
    else:  # carried + the gradient blocks + current accumulators + held by loop variables + one pair
        one_pair = _pair(b, d, dv, w, kind, causal, big_r * big_c, big_r, big_c, 1, True)
        held_prev = b * big_r * big_c + 2 * b * big_r * big_c * w + b * big_c * (d + dv) * w
        bpeak = once.write + grads + b * big_c * (d + dv) * w + held_prev + one_pair.write
    return fwd + bwd, max(fpeak, bias + rows_out + bpeak)


def cost(batch: int | tuple[int, ...], n: int, m: int, d: int, dv: int, *, impl: str = "dense",
         backward: bool = False, causal: bool | str = False, masked: Any = False,
         block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K, dtype_bytes: int = 8,
         check_finite: bool = True, kv_heads: int | None = None, sinks: bool = False,
         return_lse: bool = False, dropout: bool = False, score_mod: Any = None, mask_mod: Any = None,
         query_lengths: bool = False) -> Any:
    r"""Closed-form cost of :func:`forward` (and, with ``backward=True``, of :func:`forward` followed
    by :func:`backward`), per the conventions of :mod:`refattn.cost`.

    Parameters
    ----------
    batch : int or tuple of int
        The leading (batch, heads) shape or its product ``B``; ``q``, ``k``, ``v`` (and ``dout``)
        are assumed to have it in full (no broadcasting).
    n, m, d, dv : int
        ``q (B, n, d)``, ``k (B, m, d)``, ``v (B, m, dv)``.
    impl : {"dense", "blockwise"}
    backward : bool
        Add the backward pass (run on the forward's residuals, as ``refattn.vjp`` does).
    causal : bool or {"top_left", "bottom_right"}
    masked : {False, True or "bool", "additive", "key_lengths"}
        The kind of ``mask`` / ``key_lengths`` argument. For the byte bounds a boolean or additive
        mask has the full shape ``(*batch, n, m)``, ``key_lengths`` the shape ``batch`` and dtype
        int64.
    block_q, block_k : int
        Block sizes of the blockwise path.
    dtype_bytes : int
        Item size ``w`` of the working dtype (8 for float64, 4 for float32; half-precision inputs
        are computed in float32, and their casts are not modelled).
    check_finite : bool
        Whether the call runs the finiteness pass over ``q, k, v`` (bytes only: it costs no flops).
    kv_heads, sinks, return_lse, dropout, score_mod, mask_mod, query_lengths
        The exact-attention variants (see :func:`softmax_attention`): ``kv_heads`` the number of kv
        heads of grouped-query attention (``batch[-1]`` is then the number of query heads),
        ``sinks`` per-head sinks of shape ``(H,)``, ``return_lse`` (with ``backward``: an LSE
        cotangent is given), ``dropout`` a dropout mask, ``score_mod`` a ready-made score mod of
        :mod:`refattn.mods` (or a list of them), ``mask_mod`` any mask mod (its empty blocks are
        skipped), ``query_lengths`` query padding. Their FLOPs are exact (see "Variants" below);
        the byte and peak bounds are those of the base call (not modelled for the variants).

    Returns
    -------
    Cost
        ``flops`` and ``transcendentals`` **exact**: equal to the counted run for every shape, mask
        and block size (the tests check it over a hypothesis sweep). ``bytes_read``,
        ``bytes_written``, ``allocations`` and ``peak_bytes`` are **upper bounds** (derived below;
        the tests check ``counted <= bound`` and that each bound is within a stated factor of the
        count).

    Notes
    -----
    **Blocks.** The blockwise path visits the pairs ``(I, J)`` of a query block of ``r_I`` rows and
    a key block of ``c_J`` columns that are not wholly above the causal diagonal (all pairs without
    ``causal``; the dense path is the single pair ``(n, m)``). Let

    .. math:: A = \sum_{(I,J)} r_I c_J, \qquad R = \sum_{(I,J)} r_I, \qquad C = \sum_{(I,J)} c_J

    (without ``causal``: ``A = n m``, ``R = n \lceil m / b_k \rceil``, ``C = m \lceil n / b_q \rceil``),
    ``P`` the number of visited pairs, and ``beta = 1`` for an additive mask (the ``+ bias``), else
    0. Boolean, causal and key-length masks cost no flops (``where`` and comparisons). Every count
    is per batch element; multiply by ``B``. If ``m == 0`` both passes only create zeros: 0 flops.

    *Dense forward.* ``n d`` (``s Q``: the scale is folded into the queries) ``+ 2 n m d``
    (``(sQ) K^T``) ``+ beta n m`` (bias) ``+ n (m - 1)`` (row max) ``+ n m`` (``S -= max``, in
    place) ``+ n (m - 1)`` (row sum) ``+ 2 n m d_v`` (``P V``) ``+ n d_v + n`` (``_finish``:
    ``acc / l`` and ``max + log l``):

    .. math:: F = 2 n m (d + d_v) + (3 + \beta) n m + n d + n d_v - n, \qquad T = n m + n

    transcendentals (``exp`` of the logits, ``log l``).

    *Blockwise forward.* ``s Q`` once (``n d``), then per visited block ``2 r c (d + d_v) + (3 +
    beta) r c`` as above, plus the online-softmax rescaling ``r`` (``maximum``) ``+ r`` (``m_old -
    m_new``) ``+ 2 r`` (``l *= alpha; l += sum``) ``+ 2 r d_v`` (``acc *= alpha; acc += P V``) minus
    ``2 r`` (the two row reductions give ``c - 1`` per row); ``_finish`` once per query block:

    .. math:: F = 2 A (d + d_v) + (3 + \beta) A + 2 R (1 + d_v) + n (d_v + 1) + n d, \qquad
              T = A + R + n

    (``exp`` of each block's logits and of ``m_old - m_new``, ``log l``).

    *Dense backward.* Logits again ``n d + 2 n m d + beta n m``, ``S -= L`` ``n m``, ``delta =
    sum(O * dO)`` ``n d_v + n max(d_v - 1, 0)``, ``dV = P^T dO`` and ``dP = dO V^T`` ``2 n m d_v``
    each, ``dS = P (dP - delta)`` ``2 n m`` (in place), ``dQ = s dS K`` ``2 n m d + n d``, ``dK =
    dS^T (s Q)`` ``2 n m d``:

    .. math:: F = 6 n m d + 4 n m d_v + (3 + \beta) n m + n d_v + n \max(d_v - 1, 0) + 2 n d,
              \qquad T = n m .

    *Blockwise backward.* ``delta`` and ``s Q`` once, then per visited block the dense terms with
    ``(r, c)`` (no scaling inside the loop) and the in-place accumulations ``dQ_I +=`` (``r d``),
    ``dK_J +=`` (``c d``), ``dV_J +=`` (``c d_v``); ``dQ`` is scaled by ``s`` once at the end:

    .. math:: F = 6 A d + 4 A d_v + (3 + \beta) A + R d + C (d + d_v) + 2 n d + n d_v
              + n \max(d_v - 1, 0), \qquad T = A .

    **Variants** (totals over the batch; ``b = B``, ``E_{IJ} = B r_I c_J`` the logits of a pair).
    Block sparsity: the visited pairs are those no causal diagonal and no mask mod empties (the
    mask mod's pure-Python ``_block_empty``, the same test the loops use), so ``A, R, C`` above shrink:
    a causal ``n x n`` call with ``b_q = b_k = b_s`` visits ``A = n (n + b_s) / 2`` logits (half for
    ``n >> b_s``); a window of ``w = left + right + 1`` keys ``A <= n (w + 2 b_s)``, i.e.
    ``O(n w d)`` FLOPs; a document of segments ``L_s`` about ``sum_s (L_s + b_s)^2``. Mask mods,
    query padding and the index arithmetic of mods cost no flops (integer and boolean ops).
    Score mods per visited pair (forward; the backward recomputes them with their derivative):
    ``softcap`` ``2 E`` flops and ``E`` transcendentals forward, ``4 E + E`` (``ds *= f'``) and ``E``
    backward; ``alibi`` ``(S + B) r c`` flops (``S = H`` or ``B H`` gathered slopes) both ways.
    Sinks: dense forward ``3 b n`` flops and ``b n`` transcendentals (``max``, ``sink - max``, ``+``),
    blockwise forward 0 (the sink is the online softmax's initial state); backward ``3 b n`` and
    ``b n``. An LSE cotangent: ``b n`` (``delta - dL``). Dropout: ``b n d_v`` forward (``out *=
    1/(1-p)``) and ``b n d_v`` backward (``dO / (1 - p)``); the masked products are ``where``s.
    Grouped-query heads (``g = H / H_kv``): the backward sums ``dK, dV`` over each group,
    ``(b / g)(g - 1) m (d + d_v)`` flops.

    **Bytes (upper bounds).** Counted bytes are the ``nbytes`` every op reads and writes
    (:mod:`refattn.cost`). Rather than replaying the code, the bound counts, per kind of array,
    at most how many times one block of work reads or writes it (``w`` the item size; "a logits
    array" is ``B r c w`` bytes, "a row vector" ``B r w``; a boolean array of ``B r c`` entries
    counts as ``B r c`` bytes): per visited pair the logits product reads the ``r`` query and the
    ``c`` key rows and writes one logits array, ``+ B`` reads two and writes one, ``where(keep)``
    reads one and the keep mask and writes one; then the forward reads at most 5 and writes 2
    logits arrays (max, shift, exp, sum, ``P V``), reads 14 and writes 9 row vectors (the online
    statistics and their guards), reads the accumulator 3 times and the value block once and
    writes the accumulator 3 times; the backward reads 8 and writes 5 logits arrays (shift, exp,
    ``P^T dO``, ``dO V^T``, ``- delta``, ``* P``, ``dS K``, ``dS^T Q``), reads 2 row vectors and
    at most ``3 (r + c) d + (2 r + 3 c) d_v`` and writes ``2 (r + c) d + 2 c d_v`` entries of
    the gradient blocks. The causal keep mask adds at most ``16 r + 8 c + 2 B r c`` bytes read and
    as many written per pair, key lengths ``(8 + B) c + 16 B + 2 B r c``. Per query block ``_finish``
    (and the blockwise initial state) reads 12 and writes 9 row vectors, reads the accumulator
    once and writes it twice. Once per call: ``s Q`` (``B n d w`` read and written), the
    blockwise concatenations (``out``, ``lse``; in the backward ``dQ, dK, dV`` and ``s dQ``), the
    backward's ``delta`` and ``_safe(L)`` (``3 B n (d_v + 1) w`` read), and the validation: the
    finiteness pass reads each input once and writes two boolean arrays of its size
    (``check_finite``), and the output's overflow check reads ``out`` once and writes one boolean
    array of its size; an additive mask is read seven times in all (``isnan``, ``== inf``, the cast,
    ``== inf`` of the cast) and its cast written once. Each per-pair bound is linear in ``(r c, r, c, 1)``,
    so the total over the pairs is the same expression in ``(A, R, C, P)``. ``allocations`` is bounded the same way
    (at most 14 ops that allocate per pair in the forward, 9 in the backward, plus 9 for the mask
    per pair, 11 per query block and a fixed number per call). The bounds exceed the counts by the
    row vectors' boolean guards (counted at full width) and by the terms a path does not take
    (the dense path is bounded as one block of the blockwise one); the tests state the factor.

    **Peak (upper bound).** Dense: the validation's writes, the bias, and everything the dense path
    writes, as if nothing were freed (the real peak holds two ``(n, m)`` arrays in the forward pass
    and three in the backward; the bound counts up to eight). Blockwise: every array alive at one
    time is carried from before the loops, or was made in the current inner iteration (or
    ``_finish``), or is still held by a loop variable from the previous iteration. The bound is
    the sum: the carried arrays (``s Q``, the finished blocks' results counted twice for the lists
    and their concatenation, the current and previous query block's initial state, the bias; in
    the backward pass ``delta``, ``_safe(L)``, the gradient blocks and the current key block's
    accumulators), the largest block's write bound, and the largest set held by loop variables
    (forward: ``keep, s, p`` and six row vectors and ``acc``; backward: ``keep, p, ds, dK_J,
    dV_J``). It grows like ``B n (d_v + 1)`` (forward) or ``B (n + m)(d + d_v)`` (backward) plus
    ``O(B b_q b_k)``: linearly in ``n`` for fixed blocks. With ``backward=True`` the peak is the
    larger of the forward's and the backward's plus the residuals it keeps (``out``, ``lse``, the
    bias).
    """
    from ..cost import Cost

    for name, val in (("n", n), ("m", m), ("d", d), ("dv", dv)):
        check_int(name, val, minimum=0)
    shape = (batch,) if isinstance(batch, int) and not isinstance(batch, bool) else tuple(batch)
    try:
        for s_ in shape:
            check_int("batch", s_, minimum=0)
    except ValueError:
        msg = f"batch must be a non-negative integer or a tuple of them, got {batch!r}"
        raise ValueError(msg) from None
    if impl not in ("dense", "blockwise"):
        msg = f"impl must be 'dense' or 'blockwise' (resolve 'auto' first), got {impl!r}"
        raise ValueError(msg)
    if masked not in COST_MASKS:
        msg = f"masked must be one of {COST_MASKS}, got {masked!r}"
        raise ValueError(msg)
    for name, val in (("block_q", block_q), ("block_k", block_k), ("dtype_bytes", dtype_bytes)):
        check_int(name, val, minimum=1)
    check_flag("check_finite", check_finite)
    b = math.prod(shape)
    mmod = _mods.as_mask_mod(mask_mod)
    smod = _mods.as_score_mod(score_mod)
    if smod is not None and not smod.closed:
        msg = f"score_mod must be a ready-made refattn.mods score mod for the closed form, got {score_mod!r}"
        raise ValueError(msg)
    if mmod is not None and causal is not False and _mods.has_document(mmod):
        mmod = _mods.with_causal(mmod, "bottom_right" if causal == "bottom_right" else "top_left")
        causal = False
    offset = _causal_offset(causal, n, m)
    beta = 1 if masked == "additive" else 0
    if impl == "dense":
        blocks = [(n, [m])]  # one pair (also at n == 0: the dense path still runs its ops on empty arrays)
    else:
        blocks = _visited_blocks(n, m, block_q, block_k, offset, mmod)
    big_a = sum(r * c for r, cols in blocks for c in cols)
    big_r = sum(r * len(cols) for r, cols in blocks)
    big_c = sum(sum(cols) for _, cols in blocks)
    flops = trans = 0
    if m > 0:
        if impl == "dense":
            flops = 2 * n * m * (d + dv) + (3 + beta) * n * m + n * d + n * dv - n
            trans = n * m + n
        else:
            flops = 2 * big_a * (d + dv) + (3 + beta) * big_a + 2 * big_r * (1 + dv) + n * (dv + 1) + n * d
            trans = big_a + big_r + n
        if backward:
            flops += n * dv + n * max(dv - 1, 0)
            if impl == "dense":
                flops += 6 * n * m * d + 4 * n * m * dv + (3 + beta) * n * m + 2 * n * d
                trans += n * m
            else:
                flops += (6 * big_a * d + 4 * big_a * dv + (3 + beta) * big_a + big_r * d + big_c * (d + dv)
                          + 2 * n * d)
                trans += big_a
    extra_f = extra_t = 0  # the variants, as totals over the batch
    if m > 0:
        pairs = [(r, c) for r, cols in blocks for c in cols]
        if smod is not None:
            for r, c in pairs:
                f_, t_ = smod._cost(shape, r, c, False)
                extra_f, extra_t = extra_f + f_, extra_t + t_
                if backward:
                    f_, t_ = smod._cost(shape, r, c, True)
                    extra_f += f_ + (b * r * c if _mods.score_has_grad(smod) else 0)
                    extra_t += t_
        if sinks:
            if impl == "dense":
                extra_f, extra_t = extra_f + 3 * b * n, extra_t + b * n
            if backward:
                extra_f, extra_t = extra_f + 3 * b * n, extra_t + b * n
        if dropout:
            extra_f += b * n * dv * (2 if backward else 1)
    elif sinks and backward:
        extra_f, extra_t = extra_f + 3 * b * n, extra_t + b * n
    if backward and return_lse:
        extra_f += b * n
    if backward and kv_heads is not None and shape:
        g = shape[-1] // kv_heads
        extra_f += (b // g) * (g - 1) * m * (d + dv)
    kind = "bool" if masked is True else masked
    io, peak = _bounds(b, n, m, d, dv, dtype_bytes, kind, offset is not None, impl, blocks, check_finite, backward)
    return Cost(flops=b * flops + extra_f, transcendentals=b * trans + extra_t, bytes_read=io.read,
                bytes_written=io.write,
                allocations=io.alloc, peak_bytes=peak)
