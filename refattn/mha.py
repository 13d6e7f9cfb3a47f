r"""Multi-head attention around any refattn attention method, with a dense or a WHT output projection.

A function of arrays and parameters (no module objects). With ``X (..., n, c)`` and, for
cross-attention, ``C (..., m, c_ctx)`` (self-attention: ``C = X``), weights stored ``(in, out)``
(``y = x W + b``, the JAX/flax convention; torch's ``nn.Linear`` stores ``W^T``):

.. math::

    Q = X W_Q + b_Q, \quad K = C W_K + b_K, \quad V = C W_V + b_V \qquad
    (W_Q \in \mathbb R^{c \times c_{qk}},\ W_K \in \mathbb R^{c_{ctx} \times c_{qk}},\
     W_V \in \mathbb R^{c_{ctx} \times c_v})

    Q_h = Q[..., h d_k : (h + 1) d_k] \ (\text{split heads}, d_k = c_{qk}/H,\ d_v = c_v/H), \qquad
    O_h = \operatorname{method}(Q_h, K_h, V_h, *\text{method\_params}, **\text{method\_kwargs})

    O = [O_1, \dots, O_H] \ (\text{merge heads}), \qquad
    Y = \begin{cases} O W_O + b_O & \text{projection="dense"},\ W_O \in \mathbb R^{c_v \times c_{out}} \\
                      \gamma \odot (H_{c_v} O / \sqrt{c_v}) + \beta & \text{projection="wht"} \end{cases}

The second case is Aggarwal & Kumar's (004) replacement of ``W_O`` by a fixed Walsh-Hadamard
transform and a learnable diagonal affine map (:func:`refattn.hadamard.wht_projection`); then the
arguments ``w_o`` and ``b_o`` hold ``gamma`` and ``beta`` (shape ``(c_v,)``, ``b_o`` may be None) and
the output width is ``c_v``. The heads are split as contiguous channel groups (torch's
``nn.MultiheadAttention`` and GPT-2 split the same way), so the WHT mixes every head into every
output channel: every entry of ``H / sqrt(c_v)`` is ``+-1/sqrt(c_v)``.

Backward (``dY`` the output cotangent; sums over every leading axis and the sequence axis):

.. math::

    \text{dense: } dW_O = O^\top dY,\ db_O = \textstyle\sum dY,\ dO = dY W_O^\top; \qquad
    \text{wht: } (dO, d\gamma, d\beta) = \texttt{wht\_backward}

    (dQ_h, dK_h, dV_h, d\text{params}) = \text{pullback of the method (refattn.vjp)} \text{ at } dO_h

    dW_Q = X^\top dQ,\ db_Q = \textstyle\sum dQ,\ dX = dQ W_Q^\top \ (+\, dK W_K^\top + dV W_V^\top
    \text{ in self-attention}),\ dC = dK W_K^\top + dV W_V^\top .

The attention method is any public refattn function with a registered vjp (default
:func:`refattn.softmax_attention`); its keyword options (``causal``, ``mask``, ``scale``...) come in
``method_kwargs`` and act on the per-head arrays ``(..., H, n, d_k)``. Methods with positional
parameters (Linformer's ``E, F``...) get them as ``*method_params`` after the ten optional
arguments; their gradients come last in :class:`Grads`.

Half-precision inputs are computed in float32 and the output cast back (``compute_dtype``).

Validation and implementation: :func:`forward` validates the arrays and resolves every option once
(:func:`_validate`, into a frozen :class:`Options`). With the default method it then runs softmax's
implementation (``refattn.methods.softmax._forward`` on the per-head arrays it built, with the
options of ``method_kwargs`` resolved once by ``softmax.options``) and, for ``projection="wht"``,
the WHT projection's implementation (``refattn.hadamard._wht_forward``): nothing is validated
twice. On that path the per-head ``q, k, v`` are checked for NaN/inf only when ``method_kwargs``
sets ``check_finite=True`` (they are MHA's own products; non-finite inputs propagate, as they did
before). Other methods run through :func:`refattn.vjp` with their own validation and defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from . import hadamard
from ._checks import check_choice, check_flag, check_int
from ._masks import make_mask
from ._registry import Function, declare, functions, lookup
from ._vjp import vjp as _vjp
from ._xp import (
    broadcast_shapes,
    check_float_array,
    check_same_namespace_device,
    compute_dtype,
    is_lazy,
    namespace,
)
from .cost import Cost
from .methods import softmax as _softmax
from .methods.softmax import softmax_attention

__all__ = ["multi_head_attention", "forward", "backward", "Options", "Residuals", "Grads", "PROJECTIONS",
           "parameter_count", "removed_fraction", "output_projection_cost"]

PROJECTIONS = ("dense", "wht")
_NAMES = ("x", "w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o", "context")


class Grads(tuple):
    """Cotangents, one per positional argument in order: ``dx, dw_q, dw_k, dw_v, dw_o, db_q, db_k,
    db_v, db_o, dcontext`` then one per method parameter (``None`` where the argument was None).

    A tuple (indexable like the other methods' ``Grads``) with named accessors; its length varies
    with the number of method parameters, which a ``NamedTuple`` cannot.
    """

    __slots__ = ()

    def __new__(cls, *items: Any) -> Grads:
        return super().__new__(cls, items)

    dx = property(itemgetter(0))
    dw_q = property(itemgetter(1))
    dw_k = property(itemgetter(2))
    dw_v = property(itemgetter(3))
    dw_o = property(itemgetter(4))
    db_q = property(itemgetter(5))
    db_k = property(itemgetter(6))
    db_v = property(itemgetter(7))
    db_o = property(itemgetter(8))
    dcontext = property(itemgetter(9))

    @property
    def dmethod_params(self) -> tuple[Any, ...]:
        return tuple(self[10:])

    def __repr__(self) -> str:
        named = [f"{n}={'None' if g is None else tuple(g.shape)}" for n, g in zip(("d" + s for s in _NAMES), self)]
        rest = [f"dparam{i}={'None' if g is None else tuple(g.shape)}" for i, g in enumerate(self[10:])]
        return f"Grads({', '.join(named + rest)})"


class Residuals(NamedTuple):
    """Inputs (in working precision), the merged head outputs, and the two inner pullbacks."""

    x: Any
    context: Any  # None in self-attention
    w_q: Any
    w_k: Any
    w_v: Any
    w_o: Any
    has_bias: tuple[bool, bool, bool, bool]  # b_q, b_k, b_v, b_o given
    merged: Any  # O, (..., n, c_v) (dense projection only; None for wht)
    method_pullback: Callable[[Any], Any]
    proj_residuals: Any  # hadamard.WHTResiduals for the wht projection
    heads: int
    projection: str
    n_method_params: int
    dtype: Any
    work: Any


# ------------------------------------------------------------------------------------------------
# helpers


def _flat(xp: Any, a: Any) -> Any:
    """``(..., r, w) -> (prod(...) * r, w)``."""
    return xp.reshape(a, (math.prod(a.shape[:-1]), a.shape[-1]))


def _split_heads(xp: Any, a: Any, heads: int) -> Any:
    """``(..., n, H d) -> (..., H, n, d)``: contiguous channel groups per head."""
    *lead, n, w = a.shape
    a = xp.reshape(a, (*lead, n, heads, w // heads))
    L = len(lead)
    return xp.permute_dims(a, (*range(L), L + 1, L, L + 2))


def _merge_heads(xp: Any, a: Any) -> Any:
    """``(..., H, n, d) -> (..., n, H d)`` (inverse of :func:`_split_heads`)."""
    *lead, h, n, d = a.shape
    L = len(lead)
    a = xp.permute_dims(a, (*range(L), L + 1, L, L + 2))
    return xp.reshape(a, (*lead, n, h * d))


def _linear(a: Any, w: Any, b: Any) -> Any:
    y = a @ w
    return y if b is None else y + b


def _check_shape(name: str, a: Any, shape: tuple[int, ...], why: str) -> None:
    if a is not None and tuple(a.shape) != shape:
        msg = f"{name} must have shape {shape} ({why}), got {tuple(a.shape)}"
        raise ValueError(msg)


@dataclass(frozen=True)
class Options:
    """The resolved options of one :func:`multi_head_attention` call (``wht``: the projection's
    resolved options, ``None`` for the dense projection)."""

    heads: int
    projection: str
    method: Callable[..., Any]
    method_kwargs: Mapping[str, Any]
    wht: Any
    c_qk: int
    c_v: int
    c_out: int


def _validate(args: dict[str, Any], method_params: tuple[Any, ...], heads: Any, projection: Any,
              method: Any, method_kwargs: Any, projection_kwargs: Any) -> tuple[Any, Options]:
    """Validate every array and resolve every option, once."""
    x, context = args["x"], args["context"]
    for name in ("x", "w_q", "w_k", "w_v", "w_o"):
        if args[name] is None:
            msg = f"{name} must be an array, got None"
            raise TypeError(msg)
    xp = namespace(*args.values(), *method_params)
    check_same_namespace_device({**args, **{f"method_params[{i}]": p for i, p in enumerate(method_params)}},
                                xp, "x")
    check_float_array("x", x, xp, ndim_min=2)
    if context is not None:
        check_float_array("context", context, xp, ndim_min=2)
    for name in ("w_q", "w_k", "w_v"):
        check_float_array(name, args[name], xp, ndim=2)
    for name, a in args.items():
        if a is not None and a.dtype != x.dtype:
            msg = f"{name} must have x's dtype {x.dtype}, got {a.dtype}"
            raise TypeError(msg)
    check_choice("projection", projection, PROJECTIONS)
    heads = check_int("heads", heads, minimum=1)
    if lookup(method) is None:
        names = ", ".join(sorted(getattr(f, "__name__", repr(f)) for f in functions()))
        msg = f"method must be a refattn attention function with a registered vjp ({names}), got {method!r}"
        raise TypeError(msg)
    for name, kw in (("method_kwargs", method_kwargs), ("projection_kwargs", projection_kwargs)):
        if kw is not None and not isinstance(kw, Mapping):
            msg = f"{name} must be a mapping of keyword options or None, got {type(kw).__name__}"
            raise TypeError(msg)
    if projection == "dense" and projection_kwargs:
        msg = f"projection_kwargs apply to projection='wht' only, got {dict(projection_kwargs)}"
        raise ValueError(msg)
    c = x.shape[-1]
    src = x if context is None else context
    c_ctx = src.shape[-1]
    w_q, w_k, w_v, w_o = args["w_q"], args["w_k"], args["w_v"], args["w_o"]
    _check_shape("w_q", w_q, (c, w_q.shape[1]), f"x's width c={c} by the query/key width")
    c_qk, c_v = w_q.shape[1], w_v.shape[1]
    src_name = "x (self-attention)" if context is None else "context"
    _check_shape("w_k", w_k, (c_ctx, c_qk), f"{src_name} width {c_ctx} by w_q's width {c_qk}")
    _check_shape("w_v", w_v, (c_ctx, c_v), f"{src_name} width {c_ctx} by the value width")
    for what, width in (("query/key width c_qk = w_q.shape[1]", c_qk), ("value width c_v = w_v.shape[1]", c_v)):
        if width % heads:
            msg = f"heads={heads} must divide the {what}={width}"
            raise ValueError(msg)
    if projection == "dense":
        check_float_array("w_o", w_o, xp, ndim=2)
        _check_shape("w_o", w_o, (c_v, w_o.shape[1]), f"the value width c_v={c_v} by the output width")
        c_out, wht = w_o.shape[1], None
    else:
        check_float_array("w_o", w_o, xp)
        _check_shape("w_o", w_o, (c_v,), f"projection='wht': the per-channel scale of width c_v={c_v}")
        c_out = c_v
        if not hadamard.is_power_of_two(c_v) and not dict(projection_kwargs or {}).get("pad", False):
            msg = (f"projection='wht' needs the value width c_v = w_v.shape[1] to be a power of two, "
                   f"got {c_v}; pass projection_kwargs={{'pad': True}} for the truncated padded transform")
            raise ValueError(msg)
        wht = hadamard._options(xp, c_v, "x's last axis", **dict(projection_kwargs or {}))
    _check_shape("b_q", args["b_q"], (c_qk,), "the query/key width")
    _check_shape("b_k", args["b_k"], (c_qk,), "the query/key width")
    _check_shape("b_v", args["b_v"], (c_v,), "the value width")
    _check_shape("b_o", args["b_o"], (c_out,), "the output width" + (" (the wht shift)" if projection == "wht" else ""))
    if context is not None:
        broadcast_shapes(x.shape[:-2], context.shape[:-2], names=("x", "context"))
    if method is softmax_attention and method_params:
        msg = f"softmax_attention takes no method_params (positional parameters), got {len(method_params)}"
        raise TypeError(msg)
    return xp, Options(heads, projection, method, dict(method_kwargs or {}), wht, c_qk, c_v, c_out)


def _softmax_heads(xp: Any, qh: Any, kh: Any, vh: Any, kw: Mapping[str, Any],
                   dev_ref: Any) -> tuple[Any, Callable[[Any], Any]]:
    """Softmax's implementation on the per-head arrays MHA built (valid by construction): resolve the
    keyword options of ``method_kwargs`` once, the mask once, then ``softmax._forward``."""
    kw = dict(kw)
    known = set(lookup(softmax_attention).options)
    unknown = sorted(set(kw) - known)
    if unknown:
        msg = f"softmax_attention() got an unexpected keyword argument {unknown[0]!r} in method_kwargs"
        raise TypeError(msg)
    mask, key_lengths = kw.pop("mask", None), kw.pop("key_lengths", None)
    causal, check_finite = kw.pop("causal", False), kw.pop("check_finite", False)
    check_same_namespace_device({"x": dev_ref, "mask": mask, "key_lengths": key_lengths}, xp, "x")
    batch = broadcast_shapes(qh.shape[:-2], kh.shape[:-2], vh.shape[:-2])
    n, m, d = qh.shape[-2], kh.shape[-2], qh.shape[-1]
    opts = _softmax.options(xp, batch, n, m, d, qh.dtype, check_finite=check_finite, **kw)
    if opts.check_finite:
        _softmax._check_data(xp, qh, kh, vh)
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=qh.dtype)
    out, res = _softmax._forward(xp, qh, kh, vh, spec, opts)
    fin = xp.all(xp.isfinite(out))
    if not is_lazy(fin) and not bool(fin) and all(bool(xp.all(xp.isfinite(a))) for a in (qh, kh, vh)):
        msg = ("multi_head_attention: the per-head logits overflow although the projected q, k, v are finite "
               f"({qh.dtype}); rescale x (or w_q, w_k)")
        raise ValueError(msg)
    return out, lambda g: _softmax.backward(res, g)


# ------------------------------------------------------------------------------------------------
# forward / backward


def forward(x: Any, w_q: Any, w_k: Any, w_v: Any, w_o: Any, b_q: Any = None, b_k: Any = None,
            b_v: Any = None, b_o: Any = None, context: Any = None, /, *method_params: Any, heads: int,
            projection: str = "dense", method: Callable[..., Any] = softmax_attention,
            method_kwargs: Mapping[str, Any] | None = None,
            projection_kwargs: Mapping[str, Any] | None = None) -> tuple[Any, Residuals]:
    """Forward pass of :func:`multi_head_attention`: ``(y, Residuals)``."""
    args = dict(zip(_NAMES, (x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, context)))
    xp, opts = _validate(args, method_params, heads, projection, method, method_kwargs, projection_kwargs)
    dtype, work = x.dtype, compute_dtype(xp, x.dtype)
    if work != dtype:
        args = {k: (None if a is None else xp.astype(a, work)) for k, a in args.items()}
        method_params = tuple(xp.astype(p, work) if xp.isdtype(p.dtype, "real floating") else p
                              for p in method_params)
    x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, context = (args[k] for k in _NAMES)
    src = x if context is None else context
    qh = _split_heads(xp, _linear(x, w_q, b_q), heads)
    kh = _split_heads(xp, _linear(src, w_k, b_k), heads)
    vh = _split_heads(xp, _linear(src, w_v, b_v), heads)
    if opts.method is softmax_attention:
        oh, method_pullback = _softmax_heads(xp, qh, kh, vh, opts.method_kwargs, x)
    else:
        oh, method_pullback = _vjp(opts.method, qh, kh, vh, *method_params, **opts.method_kwargs)
    merged = _merge_heads(xp, oh)
    if projection == "dense":
        y, proj_res = _linear(merged, w_o, b_o), None
    else:
        y, proj_res = hadamard._wht_forward(xp, merged, w_o, b_o, opts.wht)
    res = Residuals(x, context, w_q, w_k, w_v, w_o, tuple(a is not None for a in (b_q, b_k, b_v, b_o)),
                    merged if projection == "dense" else None, method_pullback, proj_res, heads,
                    projection, len(method_params), dtype, work)
    return (xp.astype(y, dtype) if work != dtype else y), res


def backward(res: Residuals, dy: Any, /) -> Grads:
    """Hand-written backward of :func:`forward` (see the module docstring for the formulas)."""
    xp = namespace(res.x)
    dy = xp.astype(dy, res.work) if dy.dtype != res.work else dy
    has_bq, has_bk, has_bv, has_bo = res.has_bias
    if res.projection == "dense":
        dmerged = dy @ xp.matrix_transpose(res.w_o)
        dw_o = xp.matrix_transpose(_flat(xp, res.merged)) @ _flat(xp, dy)
        db_o = xp.sum(_flat(xp, dy), axis=0) if has_bo else None
    else:
        dmerged, dw_o, db_o = hadamard.wht_backward(res.proj_residuals, dy)
    mg = res.method_pullback(_split_heads(xp, dmerged, res.heads))
    dq, dk, dv = (_merge_heads(xp, g) for g in mg[:3])
    dparams = tuple(mg[3:3 + res.n_method_params])
    src = res.x if res.context is None else res.context
    dw_q = xp.matrix_transpose(_flat(xp, res.x)) @ _flat(xp, dq)
    dw_k = xp.matrix_transpose(_flat(xp, src)) @ _flat(xp, dk)
    dw_v = xp.matrix_transpose(_flat(xp, src)) @ _flat(xp, dv)
    db_q = xp.sum(_flat(xp, dq), axis=0) if has_bq else None
    db_k = xp.sum(_flat(xp, dk), axis=0) if has_bk else None
    db_v = xp.sum(_flat(xp, dv), axis=0) if has_bv else None
    dx = dq @ xp.matrix_transpose(res.w_q)
    dsrc = dk @ xp.matrix_transpose(res.w_k) + dv @ xp.matrix_transpose(res.w_v)
    if res.context is None:
        dx, dcontext = dx + dsrc, None
    else:
        dcontext = dsrc
    grads = (dx, dw_q, dw_k, dw_v, dw_o, db_q, db_k, db_v, db_o, dcontext, *dparams)
    return Grads(*(g if g is None or g.dtype == res.dtype or not xp.isdtype(g.dtype, "real floating")
                   else xp.astype(g, res.dtype) for g in grads))


@declare(Function(forward, backward))
def multi_head_attention(x: Any, w_q: Any, w_k: Any, w_v: Any, w_o: Any, b_q: Any = None, b_k: Any = None,
                         b_v: Any = None, b_o: Any = None, context: Any = None, /, *method_params: Any,
                         heads: int, projection: str = "dense",
                         method: Callable[..., Any] = softmax_attention,
                         method_kwargs: Mapping[str, Any] | None = None,
                         projection_kwargs: Mapping[str, Any] | None = None) -> Any:
    r"""Multi-head attention ``Y = proj(merge_h method(X W_Q + b_Q, C W_K + b_K, C W_V + b_V))``.

    Parameters
    ----------
    x : array ``(..., n, c)``
        The queries' source (and keys'/values' source in self-attention).
    w_q, w_k, w_v : arrays ``(c, c_qk)``, ``(c_ctx, c_qk)``, ``(c_ctx, c_v)``
        Input projections stored ``(in, out)``; ``c_ctx = c`` in self-attention.
    w_o : array
        ``projection="dense"``: ``W_O (c_v, c_out)``. ``projection="wht"``: the scale ``gamma (c_v,)``.
    b_q, b_k, b_v, b_o : arrays or None
        Biases ``(c_qk,)``, ``(c_qk,)``, ``(c_v,)``; ``b_o``: ``(c_out,)`` (dense) or the shift
        ``beta (c_v,)`` (wht). ``None`` = no bias.
    context : array ``(..., m, c_ctx)`` or None
        Keys' and values' source for cross-attention (leading axes broadcast with x's).
    *method_params : arrays
        Positional parameters of the attention method, passed after ``q, k, v``.
    heads : int
        Number of heads ``H``; must divide ``c_qk`` and ``c_v``.
    projection : {"dense", "wht"}
        Dense ``W_O`` or 004's Walsh-Hadamard transform plus diagonal affine map.
    method : callable
        A refattn attention function with a registered vjp (default ``softmax_attention``).
    method_kwargs : mapping, optional
        Keyword options of the method (``causal``, ``mask``, ``scale``...), applied per head.
    projection_kwargs : mapping, optional
        Options of :func:`refattn.hadamard.wht_projection` (``normalized``, ``pad``, ``impl``).

    Returns
    -------
    y : array ``(..., n, c_out)`` (``c_out = c_v`` for the wht projection), in x's dtype.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes or libraries, a method without a registered vjp, a missing
        weight.
    ValueError
        Weight or bias shapes that do not chain, ``heads`` not dividing ``c_qk`` or ``c_v``, an
        unknown projection, ``c_v`` not a power of two for ``projection="wht"`` (without
        ``projection_kwargs={"pad": True}``), leading axes of x and context that do not broadcast.

    Notes
    -----
    Gradients for every array argument through ``refattn.vjp`` (:class:`Grads`). Parameter counts:
    :func:`parameter_count`. References: Vaswani et al. 2017 (multi-head attention); Aggarwal &
    Kumar, arXiv 2603.08343 (WHT output projection).
    """
    return forward(x, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, context, *method_params, heads=heads,
                   projection=projection, method=method, method_kwargs=method_kwargs,
                   projection_kwargs=projection_kwargs)[0]


# ------------------------------------------------------------------------------------------------
# parameter counts and the output projection's cost


def parameter_count(c: int, /, *, projection: str = "dense", bias: bool = True, shift: bool = True,
                    c_context: int | None = None, c_qk: int | None = None, c_v: int | None = None,
                    c_out: int | None = None) -> int:
    r"""Number of learnable parameters of one attention block as :func:`multi_head_attention` uses it.

    ``c * c_qk + c_ctx * c_qk + c_ctx * c_v`` (``W_Q, W_K, W_V``) ``+ [bias] (2 c_qk + c_v)`` plus
    the output projection: dense ``c_v * c_out + [bias] c_out``; wht ``c_v`` (scale) ``+ [shift] c_v``
    (the affine map is learnable whether or not the other layers have biases). Defaults:
    ``c_context = c_qk = c_v = c`` and ``c_out = c`` (the usual square block: dense ``4c^2 + 4c``).
    The head count does not change the count.
    """
    check_int("c", c, minimum=1)
    for name, v in (("c_context", c_context), ("c_qk", c_qk), ("c_v", c_v), ("c_out", c_out)):
        check_int(name, v, minimum=1, allow_none=True)
    check_choice("projection", projection, PROJECTIONS)
    check_flag("bias", bias)
    check_flag("shift", shift)
    c_ctx, c_qk, c_v = c_context or c, c_qk or c, c_v or c
    c_out = c_out or (c if projection == "dense" else c_v)
    if projection == "wht" and c_out != c_v:
        msg = f"projection='wht' maps width c_v={c_v} to itself, got c_out={c_out}"
        raise ValueError(msg)
    n = c * c_qk + c_ctx * c_qk + c_ctx * c_v + (2 * c_qk + c_v if bias else 0)
    if projection == "dense":
        return n + c_v * c_out + (c_out if bias else 0)
    return n + c_v * (2 if shift else 1)


def removed_fraction(c: int, /, *, bias: bool = True, shift: bool = True) -> float:
    r"""Fraction of a square attention block's parameters removed by the WHT projection.

    ``1 - parameter_count(c, projection="wht") / parameter_count(c)``:
    with biases ``(c^2 + c - 2c) / (4c^2 + 4c) = (c - 1) / (4 (c + 1))``; without
    ``(c^2 - 2c) / (4 c^2) = (c - 2) / (4c)`` (scale-only affine: ``(c - 1)/(4c)`` and
    ``c / (4 (c + 1))``). Always below 1/4, tending to 1/4 as ``c -> oo`` (004: "approximately 25
    percent").
    """
    dense = parameter_count(c, bias=bias)
    return (dense - parameter_count(c, projection="wht", bias=bias, shift=shift)) / dense


def output_projection_cost(rows: int, c_v: int, /, *, projection: str = "dense", c_out: int | None = None,
                           bias: bool = True, pad: bool = False, normalized: bool = True) -> Cost:
    """Closed-form flops of the output projection on ``rows`` (= B n) merged rows of width ``c_v``.

    Dense: ``2 rows c_v c_out`` (the GEMM) ``+ [bias] rows c_out``. WHT:
    :func:`refattn.hadamard.wht_cost` (``c log2 c`` butterflies ``+ c`` normalisation ``+ c`` scale
    ``+ [bias] c`` shift per row; ``bias`` is the shift here).
    """
    check_int("rows", rows, minimum=1)
    check_int("c_v", c_v, minimum=1)
    check_choice("projection", projection, PROJECTIONS)
    if projection == "dense":
        c_out = c_out or c_v
        return Cost(flops=2 * rows * c_v * c_out + (rows * c_out if bias else 0))
    return hadamard.wht_cost(c_v, batch=rows, normalized=normalized, pad=pad, shift=bias)
