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

from .._masks import MaskSpec, make_mask, mask_block
from .._vjp import defvjp
from .._xp import check_positive_int, compute_dtype, device, resolve_scale, unbroadcast, validate_qkv

__all__ = ["softmax_attention", "forward", "backward", "Residuals", "Grads", "IMPLS",
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


def _logits(xp: Any, qb: Any, kb: Any, scale: float, keep: Any, bias: Any) -> Any:
    s = (qb @ xp.matrix_transpose(kb)) * scale
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = xp.where(keep, s, -math.inf)
    return s


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
    s = _logits(xp, q, k, scale, keep, bias)
    mx = xp.max(s, axis=-1, keepdims=True)
    p = xp.exp(s - _safe(xp, mx))
    l = xp.sum(p, axis=-1, keepdims=True)
    return _finish(xp, p @ v, mx, l)


def _dense_backward(xp: Any, r: Residuals, dout: Any) -> tuple[Any, Any, Any]:
    q, k, v = r.q, r.k, r.v
    n, m = q.shape[-2], k.shape[-2]
    keep, bias = mask_block(xp, r.spec, 0, n, 0, m, device(q))
    s = _logits(xp, q, k, r.scale, keep, bias)
    p = xp.exp(s - _safe(xp, r.lse)[..., None])
    delta = xp.sum(r.out * dout, axis=-1, keepdims=True)
    dv = xp.matrix_transpose(p) @ dout
    ds = p * (dout @ xp.matrix_transpose(v) - delta)
    dq = (ds @ k) * r.scale
    dk = (xp.matrix_transpose(ds) @ q) * r.scale
    return dq, dk, dv


def _blockwise_forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, scale: float,
                       batch: tuple[int, ...], bq: int, bk: int) -> tuple[Any, Any]:
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    dev = device(q)
    outs, lses = [], []
    for i0 in range(0, n, bq):
        i1 = min(i0 + bq, n)
        qb = q[..., i0:i1, :]
        mx = xp.full((*batch, i1 - i0, 1), -math.inf, dtype=q.dtype, device=dev)
        l = xp.zeros((*batch, i1 - i0, 1), dtype=q.dtype, device=dev)
        acc = xp.zeros((*batch, i1 - i0, dv), dtype=q.dtype, device=dev)
        for j0 in range(0, m, bk):
            if _block_skipped(spec, i0, i1, j0):
                break
            j1 = min(j0 + bk, m)
            keep, bias = mask_block(xp, spec, i0, i1, j0, j1, dev)
            s = _logits(xp, qb, k[..., j0:j1, :], scale, keep, bias)
            mx_new = xp.maximum(mx, xp.max(s, axis=-1, keepdims=True))
            shift = _safe(xp, mx_new)
            alpha = xp.exp(mx - shift)
            p = xp.exp(s - shift)
            l = alpha * l + xp.sum(p, axis=-1, keepdims=True)
            acc = alpha * acc + p @ v[..., j0:j1, :]
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
            qb, dob = q[..., i0:i1, :], dout[..., i0:i1, :]
            p = xp.exp(_logits(xp, qb, kb, r.scale, keep, bias) - lse[..., i0:i1, :])
            dv_j = dv_j + xp.matrix_transpose(p) @ dob
            ds = p * (dob @ xp.matrix_transpose(vb) - delta[..., i0:i1, :])
            dq[b] = dq[b] + (ds @ kb) * r.scale
            dk_j = dk_j + (xp.matrix_transpose(ds) @ qb) * r.scale
        dks.append(dk_j)
        dvs.append(dv_j)
    cat = lambda xs, shape: xp.concat(xs, axis=-2) if xs else xp.zeros(shape, dtype=q.dtype, device=dev)  # noqa: E731
    return (cat(dq, (*batch, 0, d)), cat(dks, (*batch, 0, d)), cat(dvs, (*batch, 0, dvdim)))


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
    work = compute_dtype(xp, dtype)
    if work != dtype:
        q, k, v = (xp.astype(a, work) for a in (q, k, v))
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


@defvjp(forward, backward)
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
