r"""Linformer (Wang et al. 2020) and Verma's modified Linformer, with explicit projections E, F.

Linformer (Wang, Li, Khabsa, Fang & Ma 2020, arXiv 2006.04768; survey 001, sec. 2.3)
-----------------------------------------------------------------------------------

.. math::

    \text{out} = \operatorname{softmax}_{\text{row}}\!\bigl(s\, Q (E K)^\top\bigr)\, (F V)

``q (..., n, d)``, ``k (..., m, d)``, ``v (..., m, dv)``, ``E, F (..., k, m)`` -> ``(..., n, dv)``;
``s = 1/sqrt(d)`` by default. ``E`` and ``F`` are explicit positional parameters (learned in the
paper; random ``R`` with iid ``N(0, 1/k)`` entries from :func:`refattn.random.linformer_projection`
in its theorems); their leading dimensions broadcast against the batch, so one ``(k, m)`` pair is
shared by every head and batch element, ``(H, k, m)`` is per head, and so on. Gradients are returned
for ``q, k, v, E, F``, each un-broadcast to its argument's shape.

Shapes: the survey writes ``E, F in R^{n x k}`` in Theorem 2 and ``R^{k x n}`` in the text; only
``(k, m)`` makes ``E K`` (``(k, m) @ (m, d)``) defined, so that is what is accepted; a ``(m, k)``
array raises ``ValueError`` (unless ``k == m``: a **square** ``E`` is accepted in either orientation, so
the transpose of lucidrains' ``proj_k`` (``(seq_len, k)``, applied as ``einsum('bnd,nk->bkd')``) must be
passed, ``E = proj_k[:m].T``; an untransposed square one is silently a different projection).
``k > m`` is rejected: the projection would not reduce anything and Linformer's JL lemma assumes
``k <= m``.

The softmax part is exactly :func:`refattn.softmax_attention` (dense path) applied to
``(q, E K, F V)`` (through ``_softmax_dense``, the one call into the softmax module, with the
inputs already validated here); its backward gives ``dq``, ``d(EK)``, ``d(FV)``, and then
``dE = d(EK) K^T``, ``dK = E^T d(EK)``, ``dF = d(FV) V^T``, ``dV = F^T d(FV)``.

Masks: key padding only, applied **before** the projection: rows of ``K`` and ``V`` of padded keys
are set to 0, so they contribute nothing to ``E K`` or ``F V`` (the projected rows mix all positions,
so padding cannot be applied after it). A batch element whose keys are all padded returns zeros
(``F V = 0``) with zero gradients. A per-query or additive mask cannot be honoured (there is no
``(n, m)`` logit matrix) and ``causal=True`` is rejected: every projected key mixes all positions,
future ones included. Both raise ``ValueError``.

Cost per batch element (exactly what :func:`cost` counts): ``2 k m (d + dv)`` for ``E K`` and
``F V``, then dense softmax attention on ``(n, k)`` logits: ``n d`` (scaled queries) ``+ 2 n k d``
(logits) ``+ 2 (n k - n)`` (row maxima and sums) ``+ n k`` (shift) ``+ 2 n k dv`` (``P (F V)``)
``+ n dv`` (normalisation) ``+ n`` (log-sum-exp), in all

.. math::

    2 k m (d + d_v) + 2 n k (d + d_v) + 3 n k + n d + n d_v - n

flops, ``n k`` exponentials and ``n`` logarithms. Linear in ``n`` at fixed ``k``; memory ``O(n k)``
(the logits).

Verma's modified Linformer (Verma, "Revisiting Linformer with a modified self-attention with linear
complexity", paper 003, sec. 3.2)
---------------------------------------------------------------------------------------------------

.. math::

    H = \operatorname{softmax}_{\text{features}}(s Q), \quad
    L = \operatorname{softmax}_{\text{last}}\bigl(s (E K)^\top\bigr), \quad
    X = F V, \qquad \text{out} = H (L X) \;\;(\text{or } (H L) X)

with ``H (n, d)``, ``L (d, k)``, ``X (k, dv)``. **Reading** (the paper is ambiguous): ``softmax(M)``
of a matrix is taken row-wise, as in the attention formula it modifies, so ``H`` normalises each
query over its ``d`` features and ``L`` normalises each of the ``d`` rows of ``(EK)^T`` over the
``k`` projected positions. The paper's proof writes ``softmax(A) = exp(A) D_A^{-1}`` with
``(D_A)_ii = sum_j exp(A_ji)``, which read literally normalises *columns* (the notation is inherited
from Linformer's appendix, where it also contradicts the row-wise softmax); we do not implement the
column reading. With the row reading ``H L`` is row-stochastic, so every output row is a convex
combination of the rows of ``F V``; this identity is tested. ``s = 1/sqrt(d)`` (the paper's
``1/sqrt(d_k)`` on both factors).

``order="H(LX)"`` (default, the paper's proposal) or ``"(HL)X"``: the same function, two
associations (equal up to rounding). The paper claims ``H(LX)`` costs ``n d^2 + d k d`` and is
"independent of k"; forming ``E K`` and ``F V`` costs ``2 k m (d + dv)``, which the claim leaves
out (see ``verification/linformer.py``, claim ``verma-cost``).

Backward (``order="H(LX)"``, ``Y = L X``): ``dH = dout Y^T``, ``dY = H^T dout``, ``dL = dY X^T``,
``dX = L^T dY``; (``(HL)X``, ``M = H L``: ``dM = dout X^T``, ``dX = M^T dout``, ``dH = dM L^T``,
``dL = H^T dM``); then the softmax vector-Jacobian products, ``d(EK) = s dT^T`` with
``dT = L (dL - rowsum(dL L))``, and the projections as for Linformer.

Cost per batch element: ``n d`` (scale) ``+ 4 n d - 2 n`` (softmax of ``sQ``) ``+ 2 k m d``
``+ d k`` (scale) ``+ 4 d k - 2 d`` (softmax of ``(EK)^T``) ``+ 2 k m dv`` and ``2 d k dv + 2 n d dv``
(``H(LX)``) or ``2 n d k + 2 n k dv`` (``(HL)X``) flops; ``n d + d k`` exponentials.

:func:`verma_projections` builds the paper's ``E = delta R``, ``F = exp(-delta) R`` (the paper takes
``delta = 1/2^n``; in float64 that makes ``exp(delta x) == 1`` for every moderate ``x`` once
``n >= 64``, so ``L`` is exactly uniform and the output no longer depends on ``Q`` and ``K``: see
claim ``verma-delta``).

Validation and data-dependent checks
------------------------------------
Each public function (and its declared ``forward``) validates once, in :func:`_validate`: arrays,
shapes, mask and options, resolved into one frozen :class:`Options`. The implementations
(``_forward``, ``_verma_forward``) and the backward passes assume valid input and never validate.
The one data-dependent step is :func:`_check_finite_inputs` (NaN/inf in ``q, k, v, E, F``), run by
the validation when ``check_finite=True`` (the default); ``check_finite=False`` skips it and lets
non-finite values propagate. Neither method has a data-dependent failure of its own, hence no
``errors=`` policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import _xp
from .._checks import check_choice, check_flag, check_int, check_real
from .._masks import key_padding_keep, make_mask
from .._registry import QKV, Array, Method, declare
from .._xp import (
    broadcast_shapes,
    check_float_array,
    compute_dtype,
    device,
    namespace,
    resolve_scale,
    unbroadcast,
    validate_qkv,
)
from . import softmax as _softmax
from ._softmax_axis import softmax_axis, softmax_axis_backward, softmax_axis_flops

if TYPE_CHECKING:  # imported lazily in cost(): refattn.cost may grow imports of the methods
    from ..cost import Cost

__all__ = ["linformer_attention", "forward", "backward", "cost", "Residuals", "Grads",
           "verma_attention", "verma_forward", "verma_backward", "verma_cost", "VermaResiduals",
           "verma_projections", "ORDERS"]

ORDERS = ("H(LX)", "(HL)X")


class Grads(NamedTuple):
    dq: Any
    dk: Any
    dv: Any
    dE: Any
    dF: Any


@dataclass(frozen=True)
class Options:
    """The options of one call, resolved once by :func:`_validate`."""

    scale: float  # the logit scale s
    order: str = "H(LX)"  # Verma's association (unused by Linformer)


def _validate(q: Any, k: Any, v: Any, E: Any, F: Any, *, mask: Any, causal: Any, scale: Any, key_lengths: Any,
              check_finite: Any, method: str, order: Any = "H(LX)") -> tuple[Any, Any, Any, Options]:
    """The whole validation of a Linformer-style call; returns ``(xp, work dtype, keep, Options)``."""
    order = check_choice("order", order, ORDERS)
    check_finite = check_flag("check_finite", check_finite)
    xp, batch = validate_qkv(q, k, v, extra={"E": E, "F": F, "mask": mask, "key_lengths": key_lengths})
    m = k.shape[-2]
    for name, p in (("E", E), ("F", F)):
        check_float_array(name, p, xp, ndim_min=2)
        if p.dtype != q.dtype:
            msg = f"{name} must have the dtype of q, k, v ({q.dtype}), got {p.dtype}"
            raise TypeError(msg)
        if p.shape[-1] != m:
            hint = ""
            if p.shape[-2] == m:
                hint = (" (it looks like an (m, k) matrix, the orientation of the survey's 'E in R^{n x k}' "
                        "and of lucidrains' linformer proj_k (seq_len, k): pass the (k, m) transpose, "
                        "E = proj_k[:m].T; a square E (k == m) cannot be told apart, so transpose it too)")
            msg = (f"{name} must have shape (..., k, m) = (..., k, {m}), projecting the m = {m} keys "
                   f"to k rows, got {tuple(p.shape)}{hint}")
            raise ValueError(msg)
    kproj = E.shape[-2]
    if F.shape[-2] != kproj:
        msg = f"F must have shape (..., {kproj}, {m}) to match E's (..., k, m) = {tuple(E.shape)}, got {tuple(F.shape)}"
        raise ValueError(msg)
    if kproj == 0:
        msg = f"the projected length k (E.shape[-2]) must be at least 1, got E of shape {tuple(E.shape)}"
        raise ValueError(msg)
    if kproj > m:
        msg = (f"the projected length k = {kproj} (E.shape[-2]) must not exceed the number of keys m = {m}: "
               "the projection would not reduce the sequence, and the JL lemma behind Linformer "
               "assumes k <= m")
        raise ValueError(msg)
    batch = broadcast_shapes(batch, E.shape[:-2], F.shape[:-2], names=("q/k/v batch", "E", "F"))
    if check_finite:
        _check_finite_inputs(xp, {"q": q, "k": k, "v": v, "E": E, "F": F})
    n = q.shape[-2]
    work = compute_dtype(xp, q.dtype)
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=work)
    if spec.causal_offset is not None:
        msg = (f"{method} cannot be causal: each projected key row of E K (and of F V) mixes all m "
               "positions, future ones included, so no query can be restricted to its past")
        raise ValueError(msg)
    keep = key_padding_keep(xp, spec, device(q), method=method)
    return xp, work, keep, Options(resolve_scale(scale, q.shape[-1]), order)


def _check_finite_inputs(xp: Any, named: dict[str, Any]) -> None:
    """The data-dependent step: every named array must be finite (``ValueError`` naming it)."""
    for name, a in named.items():
        _xp.check_finite(name, a, xp)


def _project(xp: Any, k: Any, v: Any, E: Any, F: Any, keep: Any) -> tuple[Any, Any, Any, Any]:
    """``(K_z, V_z, E K_z, F V_z)`` with padded key rows zeroed before the projection."""
    if keep is not None:
        k = xp.where(keep[..., None], k, 0.0)
        v = xp.where(keep[..., None], v, 0.0)
    return k, v, E @ k, F @ v


def _project_backward(xp: Any, dkp: Any, dvp: Any, kz: Any, vz: Any, E: Any, F: Any, keep: Any,
                      shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, Any, Any, Any]:
    """``(dK, dV, dE, dF)`` from the cotangents of ``E K_z`` and ``F V_z``."""
    dE = dkp @ xp.matrix_transpose(kz)
    dF = dvp @ xp.matrix_transpose(vz)
    dk = xp.matrix_transpose(E) @ dkp
    dv = xp.matrix_transpose(F) @ dvp
    if keep is not None:
        dk = xp.where(keep[..., None], dk, 0.0)
        dv = xp.where(keep[..., None], dv, 0.0)
    _, ks, vs, es, fs = shapes
    return (unbroadcast(xp, dk, ks), unbroadcast(xp, dv, vs), unbroadcast(xp, dE, es), unbroadcast(xp, dF, fs))


def _cast(xp: Any, work: Any, *arrays: Any) -> tuple[Any, ...]:
    return tuple(xp.astype(a, work) if a.dtype != work else a for a in arrays)


def _check_dims(batch: Any, **dims: Any) -> None:
    for name, val in dims.items():
        check_int(name, val, minimum=0)
    check_int("batch", batch, minimum=1)


# --------------------------------------------------------------------------------------------------
# Linformer
# --------------------------------------------------------------------------------------------------


class Residuals(NamedTuple):
    inner: Any  # softmax.Residuals of softmax_attention(q, E K, F V)
    kz: Any
    vz: Any
    E: Any
    F: Any
    keep: Any
    dtype: Any
    shapes: tuple[tuple[int, ...], ...]  # q, k, v, E, F


def forward(q: Any, k: Any, v: Any, E: Any, F: Any, /, *, mask: Any = None, causal: bool | str = False,
            scale: float | None = None, key_lengths: Any = None,
            check_finite: bool = True) -> tuple[Any, Residuals]:
    """Linformer forward pass; returns ``(out, Residuals)``. See :func:`linformer_attention`."""
    xp, work, keep, opts = _validate(q, k, v, E, F, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                                     check_finite=check_finite, method="Linformer")
    out, res = _forward(xp, work, q, k, v, E, F, keep, opts)
    if check_finite:  # huge finite q, k, E: the projected logits overflow
        _xp.check_overflow(xp, out, "linformer_attention", "q, k, E and F")
    return out, res


def _forward(xp: Any, work: Any, q: Any, k: Any, v: Any, E: Any, F: Any, keep: Any,
             opts: Options) -> tuple[Any, Residuals]:
    """The implementation of :func:`forward`: valid input assumed, nothing validated."""
    shapes = tuple(tuple(a.shape) for a in (q, k, v, E, F))
    dtype = q.dtype
    q, k, v, E, F = _cast(xp, work, q, k, v, E, F)
    kz, vz, kp, vp = _project(xp, k, v, E, F, keep)
    out, inner = _softmax_dense(q, kp, vp, opts.scale)
    res = Residuals(inner, kz, vz, E, F, keep, dtype, shapes)
    return (xp.astype(out, dtype) if work != dtype else out), res


def _softmax_dense(q: Any, kp: Any, vp: Any, scale: float) -> tuple[Any, Any]:
    """Dense softmax attention on the projected keys and values, ``(out, softmax residuals)``.

    The one call into the softmax module, through its implementation (nothing is validated again;
    its backward is :func:`_softmax.backward` in :func:`backward`). Key padding is already folded
    into ``E K`` and ``F V``, so the inner call has no mask.
    """
    xp = namespace(q, kp, vp)
    batch = broadcast_shapes(q.shape[:-2], kp.shape[:-2], vp.shape[:-2])
    spec = make_mask(xp, mask=None, causal=False, key_lengths=None, n=q.shape[-2], m=kp.shape[-2], batch=batch,
                     dtype=q.dtype)
    opts = _softmax.Options(scale, "dense", _softmax.DEFAULT_BLOCK_Q, _softmax.DEFAULT_BLOCK_K, False)
    return _softmax._forward(xp, q, kp, vp, spec, opts)


def backward(res: Residuals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`forward`: ``Grads(dq, dk, dv, dE, dF)``."""
    xp = namespace(res.kz, dout)
    work = res.kz.dtype
    dout = xp.astype(dout, work) if dout.dtype != work else dout
    dq, dkp, dvp = _softmax.backward(res.inner, dout)
    dk, dv, dE, dF = _project_backward(xp, dkp, dvp, res.kz, res.vz, res.E, res.F, res.keep, res.shapes)
    dq = unbroadcast(xp, dq, res.shapes[0])
    return Grads(*(xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in (dq, dk, dv, dE, dF)))


def cost(n: int, m: int, d: int, dv: int, k: int, *, batch: int = 1) -> Cost:
    """Closed-form forward cost of :func:`linformer_attention` (exact FLOPs and transcendentals).

    Per batch element (``batch`` of them, every input sharing the batch shape): ``2 k m d`` (``E K``)
    ``+ 2 k m dv`` (``F V``) ``+ n d + 2 n k d`` (scaled queries, logits) ``+ 2 (n k - n)`` (row max, row sum)
    ``+ n k`` (shift) ``+ 2 n k dv`` (``P (FV)``) ``+ n dv`` (normalise) ``+ n`` (log-sum-exp);
    ``n k`` exponentials and ``n`` logarithms.
    """
    _check_dims(batch, n=n, m=m, d=d, dv=dv, k=k)
    flops = 2 * k * m * d + 2 * k * m * dv
    flops += n * d + 2 * n * k * d + 2 * (n * k - n) + n * k + 2 * n * k * dv + n * dv + n
    from ..cost import Cost

    return Cost(flops=batch * flops, transcendentals=batch * (n * k + n))


_PROJECTIONS = (*QKV, Array("E", "(..., k, m)"), Array("F", "(..., k, m)"))
_SIZES = {"k": lambda s: max(1, (s["m"] + 1) // 2)}


def _projections(s: Any, opts: Any, rng: Any, backend: Any, dtype: str) -> dict[str, Any]:
    from ..random import linformer_projection

    return {name: linformer_projection(s["k"], s["m"], rng=rng, backend=backend, dtype=dtype) for name in "EF"}


def _closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward:
        return None
    return cost(s["n"], s["m"], s["d"], s["dv"], s["k"], batch=math.prod(s["batch"]))


@declare(Method(
    forward, backward, name="linformer",
    summary="Linformer: softmax(s Q (E K)^T) (F V) (Wang et al. 2020)",
    arrays=_PROJECTIONS, sizes=_SIZES, params=_projections, masks=("none", "key_lengths"), cost=_closed_cost,
    error_model="refattn._oracle:linformer_error_bound"))
def linformer_attention(q: Any, k: Any, v: Any, E: Any, F: Any, /, *, mask: Any = None,
                        causal: bool | str = False, scale: float | None = None, key_lengths: Any = None,
                        check_finite: bool = True) -> Any:
    r"""Linformer attention ``softmax(s Q (E K)^T) (F V)`` (Wang et al. 2020).

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
    E, F : arrays ``(..., k, m)``
        Key and value projections, ``1 <= k <= m``; leading dimensions broadcast (shared or per head).
        Orientation ``(k, m)``: ``E K`` is ``(k, m) @ (m, d)``. lucidrains' ``linformer`` stores
        ``proj_k``, ``proj_v`` as ``(seq_len, k)`` and applies ``einsum('bnd,nk->bkd')``: pass
        ``E = proj_k[:m].T``, ``F = proj_v[:m].T``. A **square** ``E`` (``k == m``) is accepted in
        either orientation, so a peer's untransposed square matrix is *not* detected: transpose it.
    mask : boolean array ``(..., 1, m)``, optional
        Key padding only, applied to K and V before the projection.
    causal : must be False (rejected: the projection mixes future positions).
    scale : float, optional
        Logit scale; ``1/sqrt(d)`` by default.
    key_lengths : integer array, optional
    check_finite : bool
        ``True`` (default): NaN/inf in ``q, k, v, E, F`` raise ``ValueError`` naming the argument;
        ``False`` skips that pass and lets non-finite values propagate to the output.

    Returns
    -------
    out : array ``(..., n, dv)``.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes (E, F included), mixed libraries, a ``check_finite`` that is not
        ``True``/``False``.
    ValueError
        E/F of the wrong shape (``(m, k)`` instead of ``(k, m)``, mismatched k), ``k > m``, ``causal``,
        a per-query or additive mask, non-finite inputs (``check_finite=True``).

    References
    ----------
    Wang, Li, Khabsa, Fang, Ma, "Linformer: Self-Attention with Linear Complexity" (arXiv 2006.04768).
    """
    return forward(q, k, v, E, F, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                   check_finite=check_finite)[0]


# --------------------------------------------------------------------------------------------------
# Verma's modified Linformer
# --------------------------------------------------------------------------------------------------


class VermaResiduals(NamedTuple):
    h: Any  # softmax over features of s Q, (..., n, d)
    l: Any  # softmax over the projected axis of s (EK)^T, (..., d, k)
    x: Any  # F V_z, (..., k, dv)
    mid: Any  # L X (order "H(LX)") or H L (order "(HL)X")
    kz: Any
    vz: Any
    E: Any
    F: Any
    keep: Any
    scale: float
    order: str
    dtype: Any
    shapes: tuple[tuple[int, ...], ...]


def verma_forward(q: Any, k: Any, v: Any, E: Any, F: Any, /, *, mask: Any = None, causal: bool | str = False,
                  scale: float | None = None, key_lengths: Any = None, order: str = "H(LX)",
                  check_finite: bool = True) -> tuple[Any, VermaResiduals]:
    """Modified-Linformer forward pass; returns ``(out, VermaResiduals)``. See :func:`verma_attention`."""
    xp, work, keep, opts = _validate(q, k, v, E, F, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                                     check_finite=check_finite, method="Verma's modified Linformer", order=order)
    if q.shape[-1] == 0:
        msg = (f"verma_attention normalises q over its features (softmax over d): q must have d >= 1, "
               f"got {tuple(q.shape)}")
        raise ValueError(msg)
    out, res = _verma_forward(xp, work, q, k, v, E, F, keep, opts)
    if check_finite:
        _xp.check_overflow(xp, out, "verma_attention", "q, k, E and F")
    return out, res


def _verma_forward(xp: Any, work: Any, q: Any, k: Any, v: Any, E: Any, F: Any, keep: Any,
                   opts: Options) -> tuple[Any, VermaResiduals]:
    """The implementation of :func:`verma_forward`: valid input assumed, nothing validated."""
    shapes = tuple(tuple(a.shape) for a in (q, k, v, E, F))
    dtype = q.dtype
    s, order = opts.scale, opts.order
    q, k, v, E, F = _cast(xp, work, q, k, v, E, F)
    h = softmax_axis(xp, q * s, -1)
    kz, vz, kp, x = _project(xp, k, v, E, F, keep)
    l = softmax_axis(xp, xp.matrix_transpose(kp) * s, -1)
    if order == "H(LX)":
        mid = l @ x
        out = h @ mid
    else:
        mid = h @ l
        out = mid @ x
    res = VermaResiduals(h, l, x, mid, kz, vz, E, F, keep, s, order, dtype, shapes)
    return (xp.astype(out, dtype) if work != dtype else out), res


def verma_backward(res: VermaResiduals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`verma_forward`: ``Grads(dq, dk, dv, dE, dF)``."""
    xp = namespace(res.h, dout)
    work = res.h.dtype
    dout = xp.astype(dout, work) if dout.dtype != work else dout
    mT = xp.matrix_transpose
    if res.order == "H(LX)":
        dh = dout @ mT(res.mid)
        dy = mT(res.h) @ dout
        dl = dy @ mT(res.x)
        dx = mT(res.l) @ dy
    else:
        dm = dout @ mT(res.x)
        dx = mT(res.mid) @ dout
        dh = dm @ mT(res.l)
        dl = mT(res.h) @ dm
    dq = softmax_axis_backward(xp, res.h, dh, -1) * res.scale
    dkp = mT(softmax_axis_backward(xp, res.l, dl, -1)) * res.scale
    dk, dv, dE, dF = _project_backward(xp, dkp, dx, res.kz, res.vz, res.E, res.F, res.keep, res.shapes)
    dq = unbroadcast(xp, dq, res.shapes[0])
    return Grads(*(xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in (dq, dk, dv, dE, dF)))


def verma_cost(n: int, m: int, d: int, dv: int, k: int, *, batch: int = 1, order: str = "H(LX)") -> Cost:
    """Closed-form forward cost of :func:`verma_attention` (exact FLOPs and transcendentals), the
    whole computation including ``E K`` and ``F V`` (see the module docstring for the terms)."""
    _check_dims(batch, n=n, m=m, d=d, dv=dv, k=k)
    check_choice("order", order, ORDERS)
    fh, th = softmax_axis_flops(n * d, n)
    fl, tl = softmax_axis_flops(d * k, d)
    flops = n * d + fh + 2 * k * m * d + d * k + fl + 2 * k * m * dv
    flops += 2 * d * k * dv + 2 * n * d * dv if order == "H(LX)" else 2 * n * d * k + 2 * n * k * dv
    from ..cost import Cost

    return Cost(flops=batch * flops, transcendentals=batch * (th + tl))


def _verma_closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward:
        return None
    return verma_cost(s["n"], s["m"], s["d"], s["dv"], s["k"], batch=math.prod(s["batch"]),
                      order=opts.get("order", "H(LX)"))


@declare(Method(
    verma_forward, verma_backward, name="verma",
    summary="Verma's modified Linformer: a product of two softmaxes and F V (Verma 2023)",
    arrays=_PROJECTIONS, sizes=_SIZES, params=_projections, masks=("none", "key_lengths"),
    cost=_verma_closed_cost, error_model="refattn._oracle:verma_error_bound"))
def verma_attention(q: Any, k: Any, v: Any, E: Any, F: Any, /, *, mask: Any = None,
                    causal: bool | str = False, scale: float | None = None, key_lengths: Any = None,
                    order: str = "H(LX)", check_finite: bool = True) -> Any:
    r"""Verma's modified Linformer ``softmax_feat(sQ) softmax(s (EK)^T) (F V)`` (paper 003, sec. 3.2).

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
    E, F : arrays ``(..., k, m)``, ``1 <= k <= m``, broadcasting.
    mask, key_lengths : key padding only (applied before the projection).
    causal : must be False.
    scale : float, optional
        ``1/sqrt(d)`` by default, applied to ``Q`` and to ``(EK)^T``.
    order : {"H(LX)", "(HL)X"}
        Association of the product (the paper proposes ``H(LX)``).
    check_finite : bool
        ``True`` (default): NaN/inf in ``q, k, v, E, F`` raise ``ValueError`` naming the argument;
        ``False`` skips that pass and lets non-finite values propagate.

    Returns
    -------
    out : array ``(..., n, dv)``.

    Raises
    ------
    ValueError, TypeError
        As :func:`linformer_attention`, plus an unknown ``order``.
    """
    return verma_forward(q, k, v, E, F, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                         order=order, check_finite=check_finite)[0]


def verma_projections(r: Any, /, *, delta: float) -> tuple[Any, Any]:
    """Verma's (and Linformer Theorem 2's) parametrisation ``E = delta R``, ``F = exp(-delta) R``.

    ``r`` is a ``(..., k, m)`` array (e.g. :func:`refattn.random.linformer_projection`); ``delta`` a
    finite real. The papers take ``delta = 1/2^n`` (003) or "a small constant" / ``Theta(1/n)``
    (Linformer); for ``delta -> 0`` the softmax over ``delta x R^T`` tends to the uniform ``1/k`` and
    the output to ``(1/k) 1^T R V``, independent of the queries (see claim ``lin-thm2``).
    """
    xp = namespace(r)
    check_float_array("r", r, xp, ndim_min=2)
    delta = check_real("delta", delta)
    return r * delta, r * math.exp(-delta)
