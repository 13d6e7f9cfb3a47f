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

from .._checks import check_choice, check_flag, check_int
from .._masks import MaskSpec, _causal_offset, make_mask, mask_block
from .._primitives import backend_primitive, exp_consuming
from .._registry import MASK_KINDS, Method, declare
from .._xp import (
    broadcast_shapes,
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
           "IMPLS", "DEFAULT_BLOCK_Q", "DEFAULT_BLOCK_K", "AUTO_DENSE_LIMIT_BYTES"]

IMPLS = ("auto", "dense", "blockwise")
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512
AUTO_DENSE_LIMIT_BYTES = 64 * 2**20


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


class Grads(NamedTuple):
    dq: Any
    dk: Any
    dv: Any


def _logits(xp: Any, qs: Any, kb: Any, keep: Any, bias: Any) -> Any:
    """``qs K^T + B`` with masked entries ``-inf``; ``qs`` holds the queries already scaled by ``s``
    (``n d`` multiplications once instead of ``n m`` on the logits)."""
    s = qs @ xp.matrix_transpose(kb)
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = xp.where(keep, s, -math.inf)
    return s


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


def _block_skipped(spec: MaskSpec, i0: int, i1: int, j0: int) -> bool:
    """A key block starting at ``j0`` lies wholly above the causal diagonal of rows ``i0:i1``."""
    return spec.causal_offset is not None and j0 > i1 - 1 + spec.causal_offset


def _dense_forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, scale: float) -> tuple[Any, Any]:
    n, m = q.shape[-2], k.shape[-2]
    keep, bias = mask_block(xp, spec, 0, n, 0, m, device(q))
    s = _logits(xp, q * scale, k, keep, bias)
    mx = xp.max(s, axis=-1, keepdims=True)
    s -= _safe(xp, mx)
    p = exp_consuming(xp, s)
    del s  # two (n, m) arrays at most
    l = xp.sum(p, axis=-1, keepdims=True)
    return _finish(xp, p @ v, mx, l)


def _dense_backward(xp: Any, r: Residuals, dout: Any) -> tuple[Any, Any, Any]:
    q, k, v = r.q, r.k, r.v
    n, m = q.shape[-2], k.shape[-2]
    keep, bias = mask_block(xp, r.spec, 0, n, 0, m, device(q))
    qs = q * r.scale
    p = exp_consuming(xp, _sub(_logits(xp, qs, k, keep, bias), _safe(xp, r.lse)[..., None]))
    delta = xp.sum(r.out * dout, axis=-1, keepdims=True)
    dv = xp.matrix_transpose(p) @ dout
    ds = dout @ xp.matrix_transpose(v)
    ds -= delta
    ds *= p  # dS = P (dP - delta)
    del p
    dq = (ds @ k) * r.scale
    dk = xp.matrix_transpose(ds) @ qs  # s dS^T Q
    return dq, dk, dv


def _blockwise_forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, scale: float,
                       batch: tuple[int, ...], bq: int, bk: int) -> tuple[Any, Any]:
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    dev = device(q)
    qs = q * scale
    outs, lses = [], []
    for i0 in range(0, n, bq):
        i1 = min(i0 + bq, n)
        qb = qs[..., i0:i1, :]
        mx = xp.full((*batch, i1 - i0, 1), -math.inf, dtype=q.dtype, device=dev)
        l = xp.zeros((*batch, i1 - i0, 1), dtype=q.dtype, device=dev)
        acc = xp.zeros((*batch, i1 - i0, dv), dtype=q.dtype, device=dev)
        for j0 in range(0, m, bk):
            if _block_skipped(spec, i0, i1, j0):
                break
            j1 = min(j0 + bk, m)
            keep, bias = mask_block(xp, spec, i0, i1, j0, j1, dev)
            s = _logits(xp, qb, k[..., j0:j1, :], keep, bias)
            mx_new = xp.maximum(mx, xp.max(s, axis=-1, keepdims=True))
            shift = _safe(xp, mx_new)
            alpha = xp.exp(mx - shift)
            p = exp_consuming(xp, _sub(s, shift))
            l *= alpha
            l += xp.sum(p, axis=-1, keepdims=True)
            acc *= alpha
            acc += p @ v[..., j0:j1, :]
            mx = mx_new
        out, lse = _finish(xp, acc, mx, l)
        outs.append(out)
        lses.append(lse)
    if not outs:  # n == 0
        return (xp.zeros((*batch, 0, dv), dtype=q.dtype, device=dev),
                xp.zeros((*batch, 0), dtype=q.dtype, device=dev))
    return xp.concat(outs, axis=-2), xp.concat(lses, axis=-1)


def _blockwise_backward(xp: Any, r: Residuals, dout: Any, batch: tuple[int, ...]) -> tuple[Any, Any, Any]:
    q, k, v, spec = r.q, r.k, r.v, r.spec
    n, m, d, dvdim = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dev = device(q)
    delta = xp.sum(r.out * dout, axis=-1, keepdims=True)
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
            if _block_skipped(spec, i0, i1, j0):
                continue
            keep, bias = mask_block(xp, spec, i0, i1, j0, j1, dev)
            qb, dob = qs[..., i0:i1, :], dout[..., i0:i1, :]
            p = exp_consuming(xp, _sub(_logits(xp, qb, kb, keep, bias), lse[..., i0:i1, :]))
            dv_j += xp.matrix_transpose(p) @ dob
            ds = dob @ xp.matrix_transpose(vb)
            ds -= delta[..., i0:i1, :]
            ds *= p
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


def options(xp: Any, batch: tuple[int, ...], n: int, m: int, d: int, work: Any, *, scale: Any = None,
            impl: Any = "auto", block_q: Any = None, block_k: Any = None,
            check_finite: Any = True) -> Options:
    """Validate and resolve softmax's options for inputs of batch shape ``batch``, ``n`` queries,
    ``m`` keys, ``d`` features and working dtype ``work`` (``"auto"`` depends on them)."""
    check_choice("impl", impl, IMPLS)
    bq = check_int("block_q", block_q, minimum=1, allow_none=True)
    bk = check_int("block_k", block_k, minimum=1, allow_none=True)
    check_flag("check_finite", check_finite)
    if impl == "auto":
        itemsize = 4 if work == xp.float32 else 8
        impl = "dense" if math.prod(batch) * n * m * itemsize <= AUTO_DENSE_LIMIT_BYTES else "blockwise"
    return Options(resolve_scale(scale, d), impl, bq or DEFAULT_BLOCK_Q, bk or DEFAULT_BLOCK_K, check_finite)


def _check_data(xp: Any, q: Any, k: Any, v: Any) -> None:
    """The data-dependent step: ``q, k, v`` must be finite (``ValueError`` naming the argument)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_finite_array(name, a, xp)


def _forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, opts: Options,
             dtype: Any = None) -> tuple[Any, Residuals]:
    """The implementation: valid working-precision ``q, k, v``, their ``MaskSpec`` and resolved
    :class:`Options`; returns ``(out, Residuals)`` with ``out`` in the working precision.
    ``dtype`` is the dtype :func:`backward` returns gradients in (default ``q.dtype``)."""
    n, m = q.shape[-2], k.shape[-2]
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if m == 0:
        out = xp.zeros((*batch, n, v.shape[-1]), dtype=q.dtype, device=device(q))
        lse = xp.full((*batch, n), -math.inf, dtype=q.dtype, device=device(q))
    elif opts.impl == "dense":
        out, lse = _dense_forward(xp, q, k, v, spec, opts.scale)
    elif (prim := backend_primitive(xp, "softmax_attention")) is not None:  # e.g. Dask's chunk-parallel graph
        out, lse = prim(q, k, v, spec, opts.scale, batch, opts.block_q, opts.block_k)
    else:
        out, lse = _blockwise_forward(xp, q, k, v, spec, opts.scale, batch, opts.block_q, opts.block_k)
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    return out, Residuals(q, k, v, out, lse, spec, opts.scale, opts.impl, opts.block_q, opts.block_k,
                          q.dtype if dtype is None else dtype, shapes)


def forward(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
            scale: float | None = None, key_lengths: Any = None, impl: str = "auto",
            block_q: int | None = None, block_k: int | None = None,
            check_finite: bool = True) -> tuple[Any, Residuals]:
    """Softmax attention forward pass; returns ``(out, Residuals)``. See :func:`softmax_attention`."""
    xp, batch = validate_qkv(q, k, v, extra={"mask": mask, "key_lengths": key_lengths})
    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    dtype = q.dtype
    work = compute_dtype(xp, dtype)
    opts = options(xp, batch, n, m, d, work, scale=scale, impl=impl, block_q=block_q, block_k=block_k,
                   check_finite=check_finite)
    if opts.check_finite:
        _check_data(xp, q, k, v)
    work, (q, k, v) = to_working(xp, q, k, v)
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=work)
    out, res = _forward(xp, q, k, v, spec, opts, dtype)
    return (xp.astype(out, dtype) if work != dtype else out), res


def backward(res: Residuals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`forward` (and of ``_forward``): ``Grads(dq, dk, dv)`` in the
    inputs' shapes and ``res.dtype``. Trusts its residuals: it validates nothing."""
    xp = namespace(res.q)
    dout = xp.astype(dout, res.q.dtype) if dout.dtype != res.q.dtype else dout
    batch = tuple(res.out.shape[:-2])
    if res.k.shape[-2] == 0:
        dq, dk, dv = xp.zeros_like(res.q), xp.zeros_like(res.k), xp.zeros_like(res.v)
    elif res.impl == "dense":
        dq, dk, dv = _dense_backward(xp, res, dout)
    elif (prim := backend_primitive(xp, "softmax_attention_backward")) is not None:
        dq, dk, dv = prim(res, dout, batch)
    else:
        dq, dk, dv = _blockwise_backward(xp, res, dout, batch)
    grads = [unbroadcast(xp, g, shape) for g, shape in zip((dq, dk, dv), res.shapes)]
    return Grads(*(xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in grads))


def _closed_cost(s: Any, opts: Any, backward: bool) -> Any:
    impl = opts.get("impl", "auto")
    if impl == "auto":
        dense = math.prod(s["batch"]) * s["n"] * s["m"] * s["dtype_bytes"] <= AUTO_DENSE_LIMIT_BYTES
        impl = "dense" if dense else "blockwise"
    return cost(s["batch"], s["n"], s["m"], s["d"], s["dv"], impl=impl, backward=backward,
                causal=opts.get("causal", False), block_q=opts.get("block_q") or DEFAULT_BLOCK_Q,
                block_k=opts.get("block_k") or DEFAULT_BLOCK_K, dtype_bytes=s["dtype_bytes"],
                check_finite=opts.get("check_finite", True))


@declare(Method(
    forward, backward, name="softmax",
    summary="exact softmax attention softmax(s Q K^T + B) V, dense or blockwise (online softmax)",
    masks=MASK_KINDS, cost=_closed_cost,
    error_model="refattn._oracle:softmax_error_bound", grad_error_model=True))
def softmax_attention(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
                      scale: float | None = None, key_lengths: Any = None, impl: str = "auto",
                      block_q: int | None = None, block_k: int | None = None,
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
                   impl=impl, block_q=block_q, block_k=block_k, check_finite=check_finite)[0]


# ------------------------------------------------------------------------------------------------
# Closed-form cost: exact FLOPs, stated bounds on bytes, allocations and peak
# ------------------------------------------------------------------------------------------------

#: the kinds of ``mask`` / ``key_lengths`` argument :func:`cost` distinguishes
COST_MASKS = (False, True, "bool", "additive", "key_lengths")


def _visited_blocks(n: int, m: int, bq: int, bk: int, offset: int | None) -> list[tuple[int, list[int]]]:
    """``[(rows, [cols of each key block visited]) for each query block]``, as the loops run."""
    spec = MaskSpec(None, None, offset, None, n, m)
    out = []
    for i0 in range(0, n, bq):
        i1 = min(i0 + bq, n)
        cols = []
        for j0 in range(0, m, bk):
            if _block_skipped(spec, i0, i1, j0):
                break
            cols.append(min(j0 + bk, m) - j0)
        out.append((i1 - i0, cols))
    return out


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
    bias = b * n * m * w if kind == "additive" else 0
    if kind == "additive":  # any(isnan), any(== inf), astype: the bias (held to the end)
        val += _Bounds(2 * bias + 2 * b * n * m + 2 + bias, 2 * b * n * m + 2 + bias, 5)
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
         check_finite: bool = True) -> Any:
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
    (``check_finite``), an additive mask is read five times in all (``isnan``, ``== inf``, the cast)
    and its cast written once. Each per-pair bound is linear in ``(r c, r, c, 1)``, so the total over
    the pairs is the same expression in ``(A, R, C, P)``. ``allocations`` is bounded the same way
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
    offset = _causal_offset(causal, n, m)
    beta = 1 if masked == "additive" else 0
    if impl == "dense":
        blocks = [(n, [m])]  # one pair (also at n == 0: the dense path still runs its ops on empty arrays)
    else:
        blocks = _visited_blocks(n, m, block_q, block_k, offset)
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
    kind = "bool" if masked is True else masked
    io, peak = _bounds(b, n, m, d, dv, dtype_bytes, kind, offset is not None, impl, blocks, check_finite, backward)
    return Cost(flops=b * flops, transcendentals=b * trans, bytes_read=io.read, bytes_written=io.write,
                allocations=io.alloc, peak_bytes=peak)
