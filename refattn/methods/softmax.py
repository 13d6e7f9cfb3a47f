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
log-sum-exp is ``-inf`` and its gradients are zero: it never yields NaN. (torch SDPA returns NaN
for such rows.) Half-precision inputs are computed in float32 and the result is cast back.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._masks import MaskSpec, _causal_offset, make_mask, mask_block
from .._primitives import exp_consuming
from .._registry import MASK_KINDS, Method, declare
from .._xp import check_positive_int, device, resolve_scale, to_working, unbroadcast, validate_qkv

__all__ = ["softmax_attention", "forward", "backward", "cost", "Residuals", "Grads", "IMPLS",
           "DEFAULT_BLOCK_Q", "DEFAULT_BLOCK_K", "AUTO_DENSE_LIMIT_BYTES"]

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


def forward(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
            scale: float | None = None, key_lengths: Any = None, impl: str = "auto",
            block_q: int | None = None, block_k: int | None = None,
            check_finite: bool = False) -> tuple[Any, Residuals]:
    """Softmax attention forward pass; returns ``(out, Residuals)``. See :func:`softmax_attention`."""
    xp, batch = validate_qkv(q, k, v, check_finite_inputs=check_finite,
                             extra={"mask": mask, "key_lengths": key_lengths})
    if impl not in IMPLS:
        msg = f"impl must be one of {IMPLS}, got {impl!r}"
        raise ValueError(msg)
    check_positive_int("block_q", block_q, allow_none=True)
    check_positive_int("block_k", block_k, allow_none=True)
    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    scale = resolve_scale(scale, d)
    dtype = q.dtype
    work, (q, k, v) = to_working(xp, q, k, v)
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m,
                     batch=batch, dtype=work)
    if impl == "auto":
        itemsize = 4 if work == xp.float32 else 8
        impl = "dense" if math.prod(batch) * n * m * itemsize <= AUTO_DENSE_LIMIT_BYTES else "blockwise"
    bq, bk = block_q or DEFAULT_BLOCK_Q, block_k or DEFAULT_BLOCK_K
    if m == 0:
        out = xp.zeros((*batch, n, v.shape[-1]), dtype=work, device=device(q))
        lse = xp.full((*batch, n), -math.inf, dtype=work, device=device(q))
    elif impl == "dense":
        out, lse = _dense_forward(xp, q, k, v, spec, scale)
    else:
        out, lse = _blockwise_forward(xp, q, k, v, spec, scale, batch, bq, bk)
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    res = Residuals(q, k, v, out, lse, spec, scale, impl, bq, bk, dtype, shapes)
    return (xp.astype(out, dtype) if work != dtype else out), res


def backward(res: Residuals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`forward`: ``Grads(dq, dk, dv)`` in the inputs' shapes and dtype."""
    xp = validate_qkv(res.q, res.k, res.v)[0]
    dout = xp.astype(dout, res.q.dtype) if dout.dtype != res.q.dtype else dout
    batch = tuple(res.out.shape[:-2])
    if res.k.shape[-2] == 0:
        dq, dk, dv = xp.zeros_like(res.q), xp.zeros_like(res.k), xp.zeros_like(res.v)
    elif res.impl == "dense":
        dq, dk, dv = _dense_backward(xp, res, dout)
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
                block_k=opts.get("block_k") or DEFAULT_BLOCK_K, dtype_bytes=s["dtype_bytes"])


@declare(Method(
    forward, backward, name="softmax",
    summary="exact softmax attention softmax(s Q K^T + B) V, dense or blockwise (online softmax)",
    masks=MASK_KINDS, cost=_closed_cost,
    error_model="refattn._oracle:softmax_error_bound", grad_error_model=True))
def softmax_attention(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
                      scale: float | None = None, key_lengths: Any = None, impl: str = "auto",
                      block_q: int | None = None, block_k: int | None = None,
                      check_finite: bool = False) -> Any:
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
        Reject NaN/inf in q, k, v with a ``ValueError`` (off by default: it costs a pass).

    Returns
    -------
    out : array ``(..., n, dv)`` in the inputs' dtype. Rows with every key masked are zero.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes, arrays of different libraries, a mask of the wrong dtype.
    ValueError
        Shapes that do not match or broadcast, a mask of the wrong shape, non-positive block sizes,
        an unknown ``impl`` or ``causal``, arrays on different devices.

    References
    ----------
    Vaswani et al. 2017; Rabe & Staats 2021 (arXiv 2112.05682); Dao et al. 2022 (FlashAttention).
    """
    return forward(q, k, v, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                   impl=impl, block_q=block_q, block_k=block_k, check_finite=check_finite)[0]


# ------------------------------------------------------------------------------------------------
# Closed-form cost
# ------------------------------------------------------------------------------------------------

MASK_KINDS = (False, True, "bool", "additive", "key_lengths")


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


class _ByteModel:
    """The bytes and allocations of the softmax code, op by op (see :func:`cost`)."""

    def __init__(self, tally: Any, b: int, d: int, dv: int, w: int, kind: Any, causal: bool) -> None:
        self.t, self.b, self.d, self.dv, self.w = tally, b, d, dv, w
        self.bool_mask = kind in (True, "bool")
        self.bias = kind == "additive"
        self.key_lengths = kind == "key_lengths"
        self.causal = causal
        # the keep mask is an array of its own (not a view of the user's mask)
        self.owns_keep = causal or self.key_lengths

    def make_mask(self, n: int, m: int) -> int:
        """Validation of the mask arguments; returns the bytes held afterwards (the cast bias)."""
        t, b, w = self.t, self.b, self.w
        if self.bias:
            for _ in range(2):  # any(isnan(mask)), any(mask == inf), each with bool()
                t.op(b * n * m, b * n * m * w)
                t.op(1, b * n * m)
                t.read(1)
            return t.op(b * n * m * w, b * n * m * w)  # astype(mask, dtype): the bias, held
        if self.key_lengths:
            for _ in range(2):  # any(key_lengths < 0), any(key_lengths > m)
                t.op(b, 8 * b)
                t.op(1, b)
                t.read(1)
        return 0

    def mask_block(self, r: int, c: int) -> int | None:
        """Returns the keep mask's bytes (None: no keep mask)."""
        t, b = self.t, self.b
        keep = b * r * c if self.bool_mask else None  # a view of the user's mask
        if self.causal:
            t.op(8 * r)  # arange(i0, i1)
            t.op(8 * c)  # arange(j0, j1)
            t.op(8 * r, 8 * r)  # i + offset
            t.op(r * c, 8 * c, 8 * r)  # j <= i + offset
            keep = r * c if keep is None else t.op(b * r * c, keep, r * c)
        if self.key_lengths:
            t.op(8 * c)  # arange(j0, j1)
            t.op(8 * b, 8 * b)  # astype(key_lengths, int64)
            t.op(b * c, 8 * c, 8 * b)  # j < lengths[..., None, None]
            keep = b * c if keep is None else t.op(b * r * c, keep, b * c)
        return keep

    def scale_q(self, rows: int) -> int:
        """``q * scale`` (the scaled queries every logits block reads); returns their bytes."""
        return self.t.op(self.b * rows * self.d * self.w, self.b * rows * self.d * self.w)

    def logits(self, r: int, c: int, keep: int | None) -> None:
        t, b, d, w = self.t, self.b, self.d, self.w
        big = b * r * c * w
        t.op(big, b * r * d * w, b * c * d * w)  # qs @ k^T
        if self.bias:
            t.op(big, big, big)  # + bias
        if keep is not None:
            t.op(big, keep, big)  # where(keep, s, -inf)

    def safe(self, rows: int) -> None:
        t, w = self.t, self.w
        t.op(rows, rows * w)  # isfinite
        t.op(rows * w, rows, rows * w)  # where

    def finish(self, r: int) -> None:
        t, b, dv, w = self.t, self.b, self.dv, self.w
        t.op(b * r, b * r * w)  # l > 0
        t.op(b * r * w, b * r, b * r * w)  # where(pos, l, 1)
        t.op(b * r * dv * w, b * r * dv * w, b * r * w)  # acc / l1
        self.safe(b * r)
        t.op(b * r * w, b * r * w)  # log(l1)
        t.op(b * r * w, b * r * w, b * r * w)  # +
        t.op(b * r * w, b * r, b * r * w)  # where(pos, ., -inf)


def _forward_bytes(bm: _ByteModel, n: int, m: int, impl: str,
                   blocks: list[tuple[int, list[int]]]) -> tuple[int, int]:
    """Tally the forward pass; returns ``(peak bound, bytes held by the residuals)``."""
    t, b, dv, w = bm.t, bm.b, bm.dv, bm.w
    start = t.mark()
    held = bm.make_mask(n, m)
    validation = t.since(start)
    if m == 0:
        t.op(b * n * dv * w)
        t.op(b * n * w)
        return validation + b * n * (dv + 1) * w, held + b * n * (dv + 1) * w
    if impl == "dense":
        mark = t.mark()
        keep = bm.mask_block(n, m)
        bm.scale_q(n)
        bm.logits(n, m, keep)
        big = b * n * m * w
        t.op(b * n * w, big)  # max
        bm.safe(b * n)
        t.inplace(big, b * n * w)  # s -= shift
        t.op(big, big)  # exp
        t.op(b * n * w, big)  # sum
        t.op(b * n * dv * w, big, b * m * dv * w)  # p @ v
        bm.finish(n)
        # bound: validation temporaries + everything the dense path allocates, alive at once
        return validation + held + t.since(mark), held + b * n * (dv + 1) * w
    qs = bm.scale_q(n)
    w_it = w_fin = s_prev = r_max = 0
    for r, cols in blocks:
        r_max = max(r_max, r)
        t.op(b * r * w)  # full(mx)
        t.op(b * r * w)  # zeros(l)
        t.op(b * r * dv * w)  # zeros(acc)
        for c in cols:
            mark = t.mark()
            keep = bm.mask_block(r, c)
            bm.logits(r, c, keep)
            big = b * r * c * w
            t.op(b * r * w, big)  # max(s)
            t.op(b * r * w, b * r * w, b * r * w)  # maximum
            bm.safe(b * r)
            t.op(b * r * w, b * r * w, b * r * w)  # mx - shift
            t.op(b * r * w, b * r * w)  # exp
            t.inplace(big, b * r * w)  # s -= shift
            t.op(big, big)  # exp
            t.inplace(b * r * w, b * r * w)  # l *= alpha
            t.op(b * r * w, big)  # sum(p)
            t.inplace(b * r * w, b * r * w)  # l +=
            t.inplace(b * r * dv * w, b * r * w)  # acc *= alpha
            t.op(b * r * dv * w, big, b * c * dv * w)  # p @ v
            t.inplace(b * r * dv * w, b * r * dv * w)  # acc +=
            w_it = max(w_it, t.since(mark))
            # what the loop variables still hold in the next iteration: keep, s, p, shift, alpha,
            # mx (= mx_new), l, acc
            s_prev = max(s_prev, (keep if bm.owns_keep else 0) + 2 * big + 4 * b * r * w + b * r * dv * w)
        mark = t.mark()
        bm.finish(r)
        w_fin = max(w_fin, t.since(mark))
    results = b * n * (dv + 1) * w
    if n == 0:
        t.op(0)
        t.op(0)
    else:
        t.op(b * n * dv * w, b * n * dv * w)  # concat(outs)
        t.op(b * n * w, b * n * w)  # concat(lses)
    # bound: every array alive at one time is carried (the scaled queries; the finished blocks'
    # results, counted twice for the lists and their concatenation; the current and the previous
    # query block's initial state), or made in the current inner iteration (or _finish), or held by
    # a loop variable since the previous iteration.
    init = b * r_max * (dv + 2) * w
    return validation + held + qs + 2 * results + 2 * init + s_prev + max(w_it, w_fin), held + results


def _backward_bytes(bm: _ByteModel, n: int, m: int, impl: str,
                    blocks: list[tuple[int, list[int]]], bk: int) -> int:
    """Tally the backward pass; returns the bound on its own peak (residuals excluded)."""
    t, b, d, dv, w = bm.t, bm.b, bm.d, bm.dv, bm.w
    mark0 = t.mark()
    if m == 0:
        t.op(b * n * d * w)
        t.op(0)
        t.op(0)
        return t.since(mark0)
    if impl == "dense":
        keep = bm.mask_block(n, m)
        bm.scale_q(n)
        bm.logits(n, m, keep)
        big = b * n * m * w
        bm.safe(b * n)  # _safe(lse)
        t.inplace(big, b * n * w)  # s -= lse
        t.op(big, big)  # exp
        t.op(b * n * dv * w, b * n * dv * w, b * n * dv * w)  # out * dout
        t.op(b * n * w, b * n * dv * w)  # sum -> delta
        t.op(b * m * dv * w, big, b * n * dv * w)  # p^T @ dout
        t.op(big, b * n * dv * w, b * m * dv * w)  # dout @ v^T
        t.inplace(big, b * n * w)  # ds -= delta
        t.inplace(big, big)  # ds *= p
        t.op(b * n * d * w, big, b * m * d * w)  # ds @ k
        t.op(b * n * d * w, b * n * d * w)  # * scale
        t.op(b * m * d * w, big, b * n * d * w)  # ds^T @ qs
        return t.since(mark0)
    t.op(b * n * dv * w, b * n * dv * w, b * n * dv * w)  # out * dout
    t.op(b * n * w, b * n * dv * w)  # sum -> delta
    bm.safe(b * n)  # _safe(lse)
    bm.scale_q(n)
    carried = t.since(mark0)
    for r, _ in blocks:
        t.op(b * r * d * w)  # zeros dq blocks
    key_cols = [min(j0 + bk, m) - j0 for j0 in range(0, m, bk)]
    # the key blocks each query block visits, as the backward's key-major loops meet them
    visits = [[r for r, cols in blocks if j < len(cols)] for j in range(len(key_cols))]
    w_it = c_max = s_prev = 0
    for c, rows in zip(key_cols, visits):
        c_max = max(c_max, c)
        t.op(b * c * d * w)  # zeros dk_j
        t.op(b * c * dv * w)  # zeros dv_j
        for r in rows:
            mark = t.mark()
            keep = bm.mask_block(r, c)
            bm.logits(r, c, keep)
            big = b * r * c * w
            t.inplace(big, b * r * w)  # s -= lse
            t.op(big, big)  # exp
            t.op(b * c * dv * w, big, b * r * dv * w)  # p^T @ dout
            t.inplace(b * c * dv * w, b * c * dv * w)  # dv_j +=
            t.op(big, b * r * dv * w, b * c * dv * w)  # dout @ v^T
            t.inplace(big, b * r * w)  # ds -= delta
            t.inplace(big, big)  # ds *= p
            t.op(b * r * d * w, big, b * c * d * w)  # ds @ k
            t.inplace(b * r * d * w, b * r * d * w)  # dq[b] +=
            t.op(b * c * d * w, big, b * r * d * w)  # ds^T @ qs
            t.inplace(b * c * d * w, b * c * d * w)  # dk_j +=
            w_it = max(w_it, t.since(mark))
            # held by loop variables into the next iteration: keep, p, ds, dk_j, dv_j
            s_prev = max(s_prev, (keep if bm.owns_keep else 0) + 2 * big + b * c * (d + dv) * w)
    grads = b * (n * d + m * d + m * dv) * w
    t.op(b * n * d * w, b * n * d * w) if n else t.op(0)  # concat(dq)
    t.op(b * n * d * w, b * n * d * w)  # * scale
    t.op(b * m * d * w, b * m * d * w)  # concat(dks)
    t.op(b * m * dv * w, b * m * dv * w)  # concat(dvs)
    # bound: carried (delta and its temporaries, the scaled queries; the gradient blocks, counted
    # twice for the lists and their concatenations, plus the scaled dq; the current key block's
    # zero-initialised accumulators), one inner iteration's allocations, and what loop variables
    # hold since the previous iteration.
    return carried + 2 * grads + b * n * d * w + b * c_max * (d + dv) * w + s_prev + w_it


def cost(batch: int | tuple[int, ...], n: int, m: int, d: int, dv: int, *, impl: str = "dense",
         backward: bool = False, causal: bool | str = False, masked: Any = False,
         block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K, dtype_bytes: int = 8) -> Any:
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
        The kind of ``mask`` / ``key_lengths`` argument. For the byte model a boolean or additive
        mask has the full shape ``(*batch, n, m)``, ``key_lengths`` the shape ``batch`` and dtype
        int64.
    block_q, block_k : int
        Block sizes of the blockwise path.
    dtype_bytes : int
        Item size of the working dtype (8 for float64, 4 for float32; half-precision inputs are
        computed in float32, and their casts are not modelled).

    Returns
    -------
    Cost
        ``flops`` and ``transcendentals`` **exact**: equal to the counted run for every shape, mask
        and block size (the tests check it over a hypothesis sweep). ``bytes_read``,
        ``bytes_written`` and ``allocations`` are **exact** under the shape assumptions above
        (they are tallied op by op, mirroring the code; also tested). ``peak_bytes`` is an **upper
        bound** derived below (the tests check ``counted <= bound``).

    Notes
    -----
    **Blocks.** The blockwise path visits the pairs ``(I, J)`` of a query block of ``r_I`` rows and
    a key block of ``c_J`` columns that are not wholly above the causal diagonal (all pairs without
    ``causal``; the dense path is the single pair ``(n, m)``). Let

    .. math:: A = \sum_{(I,J)} r_I c_J, \qquad R = \sum_{(I,J)} r_I, \qquad C = \sum_{(I,J)} c_J

    (without ``causal``: ``A = n m``, ``R = n \lceil m / b_k \rceil``, ``C = m \lceil n / b_q \rceil``),
    and ``beta = 1`` for an additive mask (the ``+ bias``), else 0. Boolean, causal and key-length
    masks cost no flops (``where`` and comparisons). Every count is per batch element; multiply by
    ``B``. If ``m == 0`` both passes only create zeros: 0 flops.

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

    **Peak (upper bound).** Dense: the validation temporaries plus every array the dense path
    allocates or overwrites in place, as if none were freed (the real peak holds two ``(n, m)``
    arrays in the forward pass and three in the backward; the bound counts four to six). Blockwise: every array
    alive at one time is carried from before the loops, or was made in the current inner iteration
    (or ``_finish``), or is still held by a loop variable from the previous iteration. The bound is
    the sum of the three: the carried arrays (finished blocks' results, counted twice for the lists
    and their concatenation; the current and previous query block's initial state; the additive
    mask's cast bias; in the backward pass ``delta``, the gradient blocks and the key block's
    zero-initialised accumulators), the largest inner iteration's (or ``_finish``'s) allocations,
    and the largest set held by loop variables (forward: ``keep, s, p, shift, alpha, mx, l, acc``;
    backward: ``keep, p, ds, dK_J, dV_J``). It grows like ``B n (d_v + 1)`` (forward) or
    ``B (n + m)(d + d_v)`` (backward) plus ``O(B b_q b_k)``: linearly in ``n`` for fixed blocks.
    With ``backward=True`` the peak is the larger of the forward's and the backward's plus the
    residuals it keeps (``out``, ``lse``, the bias).
    """
    from ..cost import Cost, Tally

    for name, val in (("n", n), ("m", m), ("d", d), ("dv", dv)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            msg = f"{name} must be a non-negative integer, got {val!r}"
            raise ValueError(msg)
    shape = (batch,) if isinstance(batch, int) and not isinstance(batch, bool) else tuple(batch)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
        msg = f"batch must be a non-negative integer or a tuple of them, got {batch!r}"
        raise ValueError(msg)
    if impl not in ("dense", "blockwise"):
        msg = f"impl must be 'dense' or 'blockwise' (resolve 'auto' first), got {impl!r}"
        raise ValueError(msg)
    if masked not in MASK_KINDS:
        msg = f"masked must be one of {MASK_KINDS}, got {masked!r}"
        raise ValueError(msg)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    check_positive_int("dtype_bytes", dtype_bytes)
    b = math.prod(shape)
    offset = _causal_offset(causal, n, m)
    beta = 1 if masked == "additive" else 0
    if impl == "dense":
        blocks = [(n, [m])] if n else []
        bq, bk = max(n, 1), max(m, 1)
    else:
        bq, bk = block_q, block_k
        blocks = _visited_blocks(n, m, bq, bk, offset)
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
    tally = Tally()
    bm = _ByteModel(tally, b, d, dv, dtype_bytes, masked, offset is not None)
    peak, residuals = _forward_bytes(bm, n, m, impl, blocks)
    if backward:
        peak = max(peak, residuals + _backward_bytes(bm, n, m, impl, blocks, bk))
    return Cost(flops=b * flops, transcendentals=b * trans, bytes_read=tally.bytes_read,
                bytes_written=tally.bytes_written, allocations=tally.allocations, peak_bytes=peak)
