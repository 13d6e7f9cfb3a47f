r"""Merging partial attention results by their log-sum-exps (split-KV decoding, ring attention).

Attention over a key set that is the disjoint union of parts ``K_1, ..., K_S`` is a convex
combination of the attention over each part (Milakov & Gimelshein 2018; FlashAttention's split-KV
kernels, flashinfer's ``merge_state``): with ``o_s, L_s`` the output and row log-sum-exp of part ``s``,

.. math::

    L = \log \sum_s e^{L_s}, \qquad w_s = e^{L_s - L}, \qquad o = \sum_s w_s\, o_s .

A row that no part sees (every ``L_s = -inf``) gives ``o = 0`` and ``L = -inf`` with zero gradients,
as :func:`refattn.softmax_attention` does for a fully masked row.

Backward: ``do_s = w_s\, do`` and, since ``\partial w_s / \partial L_t = w_s (\delta_{st} - w_t)``
and ``\partial L / \partial L_t = w_t``,

.. math:: dL_t = w_t \big( (o_t - o) \cdot do + dL \big).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from .._registry import Function, declare
from .._xp import check_float_array, check_same_namespace_device, is_lazy, namespace

__all__ = ["merge_attention", "forward", "backward", "cost", "Residuals", "Grads"]


class Residuals(NamedTuple):
    outs: Any  # (S, ..., n, dv)
    w: Any  # (S, ..., n, 1): the weights e^{L_s - L} (0 for rows no part sees)
    out: Any  # (..., n, dv)
    stacked: bool  # the parts came as one stacked array (else: a sequence)
    count: int


class Grads(NamedTuple):
    douts: Any  # like ``outs``: a stacked array or a tuple
    dlses: Any


def _stack(xp: Any, name: str, parts: Any) -> tuple[Any, bool]:
    if isinstance(parts, Sequence) and not hasattr(parts, "shape"):
        if not parts:
            msg = f"{name} must hold at least one partial result, got an empty sequence"
            raise ValueError(msg)
        return xp.stack(list(parts), axis=0), False
    return parts, True


def forward(outs: Any, lses: Any, /) -> tuple[tuple[Any, Any], Residuals]:
    """Merge forward pass: ``((out, lse), Residuals)``. See :func:`merge_attention`."""
    seq = isinstance(outs, Sequence) and not hasattr(outs, "shape")
    seq_l = isinstance(lses, Sequence) and not hasattr(lses, "shape")
    if seq != seq_l:
        msg = "outs and lses must both be stacked arrays or both be sequences of arrays"
        raise TypeError(msg)
    xp = namespace(outs[0] if seq and len(outs) else outs)  # the message names outs (or outs[0])
    named = {**({f"outs[{i}]": a for i, a in enumerate(outs)} if seq else {"outs": outs}),
             **({f"lses[{i}]": a for i, a in enumerate(lses)} if seq_l else {"lses": lses})}
    check_same_namespace_device(named, xp, "outs[0]" if seq else "outs")
    for name, a in named.items():
        check_float_array(name, a, xp, ndim_min=1 if name.startswith("lses") else 2)
    dtypes = {a.dtype for a in named.values()}
    if len(dtypes) != 1:
        msg = f"outs and lses must share one dtype, got {sorted(map(str, dtypes))}"
        raise TypeError(msg)
    if seq:
        if len(outs) != len(lses):
            msg = f"lses must hold one log-sum-exp per partial output ({len(outs)}), got {len(lses)}"
            raise ValueError(msg)
        shapes = {tuple(a.shape) for a in outs}
        if len(shapes) != 1:
            msg = f"outs must all have one shape (..., n, dv), got {sorted(shapes)}"
            raise ValueError(msg)
    o, stacked = _stack(xp, "outs", outs)
    lse, _ = _stack(xp, "lses", lses)
    if stacked and o.ndim < 3:
        msg = f"outs must have shape (S, ..., n, dv) (S partial results stacked on axis 0), got {tuple(o.shape)}"
        raise ValueError(msg)
    if tuple(lse.shape) != tuple(o.shape[:-1]):
        msg = (f"lses must have shape {tuple(o.shape[:-1])} (outs' shape without its last axis), "
               f"got {tuple(lse.shape)}")
        raise ValueError(msg)
    nan = xp.any(xp.isnan(lse))
    if not is_lazy(nan) and (bool(nan) or bool(xp.any(lse == math.inf))):
        msg = "lses must not contain NaN or +inf (-inf marks a row that part does not see)"
        raise ValueError(msg)
    out, lse_out, w = _merge(xp, o, lse)
    return (out, lse_out), Residuals(o, w, out, stacked, o.shape[0])


def _merge(xp: Any, o: Any, lse: Any) -> tuple[Any, Any, Any]:
    mx = xp.max(lse, axis=0)
    shift = xp.where(xp.isfinite(mx), mx, 0.0)
    e = xp.exp(lse - shift)  # 0 for parts that do not see the row
    tot = xp.sum(e, axis=0)
    pos = tot > 0
    tot1 = xp.where(pos, tot, 1.0)
    w = (e / tot1)[..., None]
    out = xp.sum(w * o, axis=0)
    lse_out = xp.where(pos, shift + xp.log(tot1), -math.inf)
    return out, lse_out, w


def backward(res: Residuals, dout: Any, /) -> Grads:
    """Hand-written backward: ``Grads(douts, dlses)`` shaped like the inputs (stacked arrays or
    tuples). ``dout`` is ``(dout, dlse)`` (``dlse`` may be ``None``) or ``dout`` alone."""
    xp = namespace(res.outs)
    dlse = None
    if isinstance(dout, (tuple, list)):
        dout, dlse = dout
    douts = res.w * dout
    t = xp.sum((res.outs - res.out) * dout, axis=-1)
    if dlse is not None:
        t = t + dlse
    dlses = res.w[..., 0] * t
    if res.stacked:
        return Grads(douts, dlses)
    return Grads(tuple(douts[i, ...] for i in range(res.count)), tuple(dlses[i, ...] for i in range(res.count)))


def cost(parts: int, batch: int | tuple[int, ...], n: int, dv: int, *, backward: bool = False) -> Any:
    r"""Closed-form FLOPs and transcendentals of :func:`merge_attention` (exact, per the conventions of
    :mod:`refattn.cost`) for ``S = parts`` stacked inputs ``(S, *batch, n, dv)``; with ``R = B n``
    rows: max ``R (S - 1)``, ``L_s - shift`` ``S R``, sum ``R (S - 1)``, ``e / tot`` ``S R``,
    ``w o`` ``S R d_v``, the sum over parts ``R (S - 1) d_v``, ``shift + log`` ``R``; transcendentals
    ``S R + R``. Backward: ``w do`` ``S R d_v``, ``o_s - o`` and the product ``2 S R d_v``, the row
    sum ``S R (d_v - 1)``, ``+ dL`` ``S R``, ``w t`` ``S R``. Bytes and peak are not modelled."""
    from ..cost import Cost

    rows = math.prod((batch,) if isinstance(batch, int) else tuple(batch)) * n
    s = parts
    flops = rows * (s - 1) + s * rows + rows * (s - 1) + s * rows + s * rows * dv + rows * (s - 1) * dv + rows
    trans = s * rows + rows
    if backward:
        flops += s * rows * dv + 2 * s * rows * dv + s * rows * max(dv - 1, 0) + 2 * s * rows
    return Cost(flops=flops, transcendentals=trans)


@declare(Function(forward, backward, name="merge_attention"))
def merge_attention(outs: Any, lses: Any, /) -> tuple[Any, Any]:
    r"""Combine attention results over disjoint key sets by their log-sum-exps.

    Parameters
    ----------
    outs : array ``(S, ..., n, dv)`` or a sequence of ``S`` arrays ``(..., n, dv)``
        The partial outputs (e.g. ``softmax_attention(q, k[..., part, :], v[..., part, :],
        return_lse=True)[0]``), real floating.
    lses : array ``(S, ..., n)`` or a sequence of ``S`` arrays ``(..., n)``
        Their row log-sum-exps (natural log; ``-inf`` for a row a part does not see), same dtype.

    Returns
    -------
    out : array ``(..., n, dv)``
        ``sum_s e^{L_s - L} o_s``: equal to attention over the union of the key sets.
    lse : array ``(..., n)``
        ``L = log sum_s e^{L_s}``.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes or libraries, one argument stacked and the other a sequence.
    ValueError
        Shapes that do not match, NaN or ``+inf`` in ``lses``, arrays on different devices.

    Notes
    -----
    The merge is exact up to rounding (no approximation); its gradient flows to every part
    (``refattn.vjp(merge_attention, outs, lses)`` then each part's own pullback with ``(do_s, dL_s)``).
    NaN or inf in ``outs`` propagate to the rows they reach.

    References
    ----------
    Milakov & Gimelshein 2018 (online softmax); Dao et al. 2023 (FlashAttention-2, split-KV);
    Liu et al. 2023 (ring attention).
    """
    return forward(outs, lses)[0]
