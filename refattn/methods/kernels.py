r"""Trainable feedforward kernels for kernelized attention (Yorsh & Kovalenko): FFN, GLU, OGLU, AOGLU.

Kernelized attention with a feature map ``phi`` (a small network applied, with the same weights, to
the last axis of every query and key):

.. math::

    O_i = \frac{\phi(q_i)^\top \sum_j \phi(k_j)\, v_j^\top}{\phi(q_i)^\top \sum_j \phi(k_j)}

(causal: sums over ``j <= i``, through the shared prefix-sum kernel
:func:`refattn.methods._prefix.causal_dot`). Shapes: ``q (..., n, d)``, ``k (..., m, d)``,
``v (..., m, dv)`` -> ``(..., n, dv)``; weights ``(..., d_in, d_out)`` whose leading dimensions (one
set of weights per head, "transforms head-wise") broadcast against the batch dimensions.

Units (``kernel=`` names one unit or a sequence of units applied in order, a *stack*):

``"ffn"``    ``phi(X) = Softplus(X W)`` (paper: "Feedforward Kernel"); params ``(W,)``.
``"glu"``    output unit ``Softplus(X W_f) (.) sigmoid(X W_g)``; params ``(W_f, W_g)``.
``"oglu"``   the same function as ``"glu"``; "orthogonal" is a training prescription: ``W_f``
             initialised orthogonal (:func:`init_params`, from :func:`refattn.random.orthogonal`)
             and the regulariser :func:`orthogonality_penalty` ``||W_f^T W_f - I||_F^2`` added to
             the loss (with its hand-written gradient ``4 W_f (W_f^T W_f - I)``).
``"aoglu"``  OGLU with the gate replaced by a rank-``r`` product, ``sigmoid(X A B)``,
             ``A (d_in, r)``, ``B (r, d_out)``; params ``(W_f, A, B)``. The paper's default is
             ``r = d/4`` (:func:`init_params`, :func:`parameter_count`).

Stacks (paper: "these units can also be sequentially stacked"): every unit but the last is a
*hidden* unit, the last is the *output* unit. For the gated units the paper modifies only "the last
GLU to force the positive output", so a hidden GLU/OGLU/AOGLU is the plain ``X W_f (.) sigmoid(X
W_g)`` (or ``sigmoid(X A B)``) and only the output unit has the Softplus; a hidden FFN unit keeps its
Softplus (the paper tried GELU and sigmoid hidden activations without gain and gives no formula; the
array API has no ``erf`` for GELU). The feature dimension ``D`` is the last unit's ``d_out``.

Positivity: ``Softplus > 0`` and ``sigmoid > 0`` on the reals, so the normaliser
``phi(q_i)^T sum_j phi(k_j)`` is strictly positive in exact arithmetic for every input. In floating
point ``Softplus(x)`` and ``sigmoid(x)`` underflow to 0 below about ``x = -745`` (float64), and a
product of four such factors below about ``-177`` each; a key-padding mask can also remove every
key. A query row whose normaliser is exactly 0 returns **zeros, with zero gradient** (DESIGN.md),
never NaN. There is no ``eps`` in the denominator (the paper's formula has none).

The normalised assembly (numerator, normaliser, key padding, causal prefix sums, zero rows) is the
shared kernelized core :func:`refattn.methods._kernelized.kernelized_forward` (``eps = 0``, nothing
to report: ``errors="ignore"``).

Validation: :func:`forward` validates the inputs and weights and resolves the options once into
:class:`Options`; :func:`_forward` assumes both. The one data-dependent step is :func:`_check_data`,
the weights' finiteness (always run; ``check_finite`` governs ``q, k, v``).

Backward (``den_i = phi(q_i) . z``, ``z = sum_j phi(k_j)``, ``S = sum_j phi(k_j) v_j^T``, ``delta_i =
O_i . dO_i``): with the augmented values ``[V, 1]`` the numerator and normaliser are one product
``N = phi(Q) (phi(K)^T [V, 1])``; the cotangent of ``N`` is ``[dO / den, -delta / den]`` and the
cotangents of ``phi(Q)``, ``phi(K)``, ``[V, 1]`` are those of a product (causal: of
:func:`causal_dot`, i.e. :func:`causal_dot_backward`). Through the units (``s = sigmoid``,
``Softplus' = s``, ``s' = s(1 - s) = s(x) s(-x) = e / (1 + e)^2`` with ``e = exp(-|x|)``: no cancellation):
``Y = Softplus(A)``: ``dA = dY (.) s(A)``; output gated ``Y = Softplus(A) (.) s(B)``:
``dA = dY (.) s(B) (.) s(A)``, ``dB = dY (.) Softplus(A) (.) s(B) (.) s(-B)``; hidden gated
``Y = A (.) s(B)``: ``dA = dY (.) s(B)``, ``dB = dY (.) A (.) s(B) s(-B)``; then for ``A = X W``:
``dW = X^T dA``, ``dX = dA W^T``; for ``B = (X A_g) B_g``: ``dB_g = (X A_g)^T dB``,
``dA_g = X^T (dB B_g^T)``, ``dX += dB B_g^T A_g^T``. Weight cotangents are the sums of the query
path and the key path (the weights are shared), un-broadcast to the weights' shapes.

Masks: key padding only (a boolean mask of shape ``(..., 1, m)`` or ``key_lengths``): a removed key
has ``phi(k_j)`` replaced by 0. ``causal=True`` needs ``n == m``. A per-query or additive mask raises
``ValueError`` (the method never forms the ``(n, m)`` matrix).

Reference: U. Yorsh & A. Kovalenko, "Linear Self-Attention Approximation via Trainable Feedforward
Kernel" (paper 002 of refattn); Katharopoulos et al. 2020 for the kernelized form; Dauphin et al.
2017 for GLU.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import random as _random
from .._checks import check_flag, check_int
from .._masks import key_padding_keep, make_mask
from .._primitives import exp_consuming
from .._registry import QKV, Array, Function, Method, declare
from .._xp import (
    broadcast_shapes,
    check_float_array,
    check_overflow,
    check_same_namespace_device,
    compute_dtype,
    device,
    namespace,
    unbroadcast,
    validate_qkv,
)
from .._xp import check_finite as _check_finite_array
from ..cost import Cost
from ._kernelized import CoreOptions, KernelizedResiduals, kernelized_backward, kernelized_flops, kernelized_forward
from ._prefix import DEFAULT_CHUNK

__all__ = ["kernel_attention", "forward", "backward", "cost", "Residuals", "grads_type", "KINDS", "feature_map",
           "PARAM_NAMES", "parameter_count", "init_params", "orthogonality_penalty",
           "orthogonality_penalty_forward", "orthogonality_penalty_backward", "default_rank"]

KINDS = ("ffn", "glu", "oglu", "aoglu")
PARAM_NAMES = {"ffn": ("w",), "glu": ("w_f", "w_g"), "oglu": ("w_f", "w_g"), "aoglu": ("w_f", "a", "b")}


def _mT(xp: Any, a: Any) -> Any:
    return xp.matrix_transpose(a)


def _parse_kernel(kernel: Any) -> tuple[str, ...]:
    units = (kernel,) if isinstance(kernel, str) else tuple(kernel) if isinstance(kernel, Sequence) else None
    if not units or any(not isinstance(u, str) or u not in KINDS for u in units):
        msg = f"kernel must be one of {KINDS} or a non-empty sequence of them (a stack), got {kernel!r}"
        raise ValueError(msg)
    return units


def default_rank(d_in: int) -> int:
    """The paper's AOGLU gate rank ``r = d/4``; ``d`` must be divisible by 4."""
    if d_in % 4:
        msg = (f"the default AOGLU gate rank is d/4 (the paper's r = n/4), which needs d divisible by 4, "
               f"got d = {d_in}; pass rank= explicitly")
        raise ValueError(msg)
    return d_in // 4


def _field_names(units: tuple[str, ...]) -> tuple[str, ...]:
    return ("dq", "dk", "dv", *(f"d{p}{i}" for i, u in enumerate(units) for p in PARAM_NAMES[u]))


_GRADS_TYPES: dict[tuple[str, ...], type] = {}


def grads_type(kernel: Any) -> type:
    """The ``Grads`` named tuple of ``kernel``: ``dq, dk, dv`` and one field per weight, in the order of
    the positional parameters, named ``d<param><unit index>`` (``dw0``, ``dw_f0``, ``dw_g0``,
    ``da1``, ``db1``...)."""
    names = _field_names(_parse_kernel(kernel))
    if names not in _GRADS_TYPES:
        _GRADS_TYPES[names] = namedtuple("Grads", names)  # noqa: PYI024
    return _GRADS_TYPES[names]


# ----------------------------------------------------------------------------------------------
# Elementwise pieces (stable forms)
# ----------------------------------------------------------------------------------------------

def _softplus(xp: Any, a: Any) -> tuple[Any, Any]:
    """``Softplus(a) = max(a, 0) + log1p(e)`` and ``e = exp(-|a|)`` (kept for the sigmoid).

    ``log1p(e)`` is evaluated as ``log(u) - ((u - 1) - e)`` with ``u = 1 + e`` rounded: ``u - 1`` is
    exact (Sterbenz) and ``c = (u - 1) - e`` is the rounding error of ``1 + e`` (exact), and
    ``log1p(e) = log(u) - log(1 + c / (1 + e))``. Dropping the second-order term and the factor
    ``1 / (1 + e)`` leaves an error ``<= |c| e / (1 + e) <= (ulp(1) / 2) e / (1 + e)``, less than half
    an ulp of ``log1p(e) >= e / (1 + e)``: a few ulps in all, for every ``e`` in ``[0, 1]`` (``e``
    exactly when ``1 + e`` rounds to 1). This replaces one ``log1p`` (NumPy's is slower than its
    ``log`` in float32: benchmarks/RESULTS.md) by a ``log`` and three cheap passes; no ``where`` (NumPy's is slow on
    unpredictable conditions); ``exp`` computed over its own scratch ``-|a|``
    (:func:`refattn._primitives.exp_consuming`: fresh large temporaries cost page faults).
    """
    zero = xp.zeros((), dtype=a.dtype, device=device(a))
    t = xp.abs(a)
    t *= -1.0
    e = exp_consuming(xp, t)
    t = e + 1.0  # u = 1 + e
    y = xp.log(t)
    t -= 1.0
    t -= e  # c = (u - 1) - e
    y -= t
    y += xp.maximum(a, zero)
    return y, e


def _sigmoid(xp: Any, b: Any) -> tuple[Any, Any]:
    """``sigmoid(b)`` and ``e = exp(-|b|)``, without overflow: ``1/(1+e)`` (``b >= 0``) or ``e/(1+e)``,
    as ``max([b >= 0], e) / (1 + e)`` (``e <= 1``): no ``where``."""
    t = xp.abs(b)
    t *= -1.0
    e = exp_consuming(xp, t)
    s = xp.maximum(xp.astype(b >= 0, b.dtype), e)
    s /= e + 1.0
    return s, e


def _sig_from(xp: Any, x: Any, e: Any) -> Any:
    """``sigmoid(x)`` from ``e = exp(-|x|)`` (as :func:`_sigmoid`)."""
    s = xp.maximum(xp.astype(x >= 0, x.dtype), e)
    s /= e + 1.0
    return s


def _dsig(xp: Any, e: Any) -> Any:
    """``sigmoid'(x) = sigmoid(x) sigmoid(-x) = e / (1 + e)^2`` from ``e = exp(-|x|)`` (even in
    ``x``: no cancellation, no sign test)."""
    u = e + 1.0
    u *= u
    return e / u


# ----------------------------------------------------------------------------------------------
# The feature map phi: forward and backward through a stack of units
# ----------------------------------------------------------------------------------------------

class _UnitCache(NamedTuple):
    kind: str
    output: bool
    h: Any  # the unit's input
    a: Any  # X W_f (or X W)
    ea: Any  # exp(-|a|) (output units)
    spa: Any  # Softplus(a) (output gated units)
    b: Any  # gate pre-activation
    eb: Any
    sb: Any  # sigmoid(b)
    ha: Any  # X A (aoglu)


def _phi_forward(xp: Any, x: Any, units: list[tuple[str, tuple[Any, ...]]]) -> tuple[Any, list[_UnitCache]]:
    h = x
    caches = []
    for idx, (kind, w) in enumerate(units):
        output = idx == len(units) - 1
        a = h @ w[0]
        if kind == "ffn":
            y, ea = _softplus(xp, a)
            caches.append(_UnitCache(kind, output, h, a, ea, None, None, None, None, None))
            h = y
            continue
        ha = None
        if kind == "aoglu":
            ha = h @ w[1]
            b = ha @ w[2]
        else:
            b = h @ w[1]
        sb, eb = _sigmoid(xp, b)
        if output:
            spa, ea = _softplus(xp, a)
            y = spa * sb
        else:
            spa = ea = None
            y = a * sb
        caches.append(_UnitCache(kind, output, h, a, ea, spa, b, eb, sb, ha))
        h = y
    return h, caches


def _phi_backward(xp: Any, caches: list[_UnitCache], units: list[tuple[str, tuple[Any, ...]]],
                  dy: Any) -> tuple[Any, list[Any]]:
    """``dX`` and the weight cotangents (un-reduced over broadcast batch axes), in parameter order."""
    dws: list[Any] = []
    for c, (_, w) in zip(reversed(caches), reversed(units)):
        ht = _mT(xp, c.h)
        if c.kind == "ffn":
            da = dy * _sig_from(xp, c.a, c.ea)
            dws = [ht @ da, *dws]
            dy = da @ _mT(xp, w[0])
            continue
        g = _dsig(xp, c.eb)
        da = dy * c.sb
        if c.output:
            da *= _sig_from(xp, c.a, c.ea)
            db = dy * c.spa
        else:
            db = dy * c.a
        db *= g
        dx = da @ _mT(xp, w[0])
        if c.kind == "aoglu":
            dha = db @ _mT(xp, w[2])
            dws = [ht @ da, ht @ dha, _mT(xp, c.ha) @ db, *dws]
            dx += dha @ _mT(xp, w[1])
        else:
            dws = [ht @ da, ht @ db, *dws]
            dx += db @ _mT(xp, w[1])
        dy = dx
    return dy, dws


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _validate_params(xp: Any, q: Any, units: tuple[str, ...], params: tuple[Any, ...],
                     batch: tuple[int, ...], ref: str = "q") -> list[tuple[str, tuple[Any, ...]]]:
    expected = [f"{p}{i}" for i, u in enumerate(units) for p in PARAM_NAMES[u]]
    if len(params) != len(expected):
        msg = (f"kernel {units} takes {len(expected)} weight arrays ({', '.join(expected)}) after the inputs, "
               f"got {len(params)}")
        raise TypeError(msg)
    named = dict(zip(expected, params))
    check_same_namespace_device({ref: q, **named}, xp, ref)
    for name, w in named.items():
        check_float_array(name, w, xp, ndim_min=2)
        if w.dtype != q.dtype:
            msg = f"{name} must have the dtype of {ref} ({q.dtype}), got {w.dtype}"
            raise TypeError(msg)
        try:
            broadcast_shapes(batch, w.shape[:-2])
        except ValueError:
            msg = (f"{name}'s leading (head) dimensions {tuple(w.shape[:-2])} do not broadcast against the "
                   f"batch dimensions {batch} of the inputs")
            raise ValueError(msg) from None
    out, pos, d_in = [], 0, q.shape[-1]
    for i, u in enumerate(units):
        ws = params[pos:pos + len(PARAM_NAMES[u])]
        pos += len(ws)
        wf = ws[0]
        if wf.shape[-2] != d_in:
            msg = (f"{PARAM_NAMES[u][0]}{i} must have shape (..., {d_in}, d_out) (its input is "
                   f"{ref if i == 0 else f'the output of unit {i - 1}'} with {d_in} features), "
                   f"got {tuple(wf.shape)}")
            raise ValueError(msg)
        d_out = wf.shape[-1]
        if u in ("glu", "oglu") and tuple(ws[1].shape[-2:]) != (d_in, d_out):
            msg = f"w_g{i} must have shape (..., {d_in}, {d_out}) like w_f{i}, got {tuple(ws[1].shape)}"
            raise ValueError(msg)
        if u == "aoglu":
            a, b = ws[1], ws[2]
            r = a.shape[-1]
            if a.shape[-2] != d_in:
                msg = f"a{i} must have shape (..., {d_in}, r), got {tuple(a.shape)}"
                raise ValueError(msg)
            if tuple(b.shape[-2:]) != (r, d_out):
                msg = (f"b{i} must have shape (..., {r}, {d_out}) to match a{i} (rank {r}) and w_f{i}, "
                       f"got {tuple(b.shape)}")
                raise ValueError(msg)
        out.append((u, tuple(ws)))
        d_in = d_out
    _check_data(xp, dict(zip(expected, params)))
    return out


def _check_data(xp: Any, named: dict[str, Any]) -> None:
    """The module's one data-dependent step: every weight must be finite (always checked, whatever
    ``check_finite`` says about the inputs), ``ValueError`` naming the weight."""
    for name, w in named.items():
        _check_finite_array(name, w, xp)


# ----------------------------------------------------------------------------------------------
# Forward / backward / public function
# ----------------------------------------------------------------------------------------------

class Residuals(NamedTuple):
    kernel: tuple[str, ...]
    units: Any  # [(kind, weights)] in working precision
    cq: Any  # unit caches of the query path
    ck: Any  # ... of the key path
    core: KernelizedResiduals  # the normalised assembly (refattn.methods._kernelized)
    dtype: Any
    shapes: tuple[tuple[int, ...], ...]  # q, k, v, then every weight

    @property
    def out(self) -> Any:
        """The output in working precision."""
        return self.core.out

    @property
    def pos(self) -> Any:
        """``(..., n, 1)`` bool: rows with a non-zero (for these features: positive) normaliser."""
        return self.core.valid[..., None]

    @property
    def den1(self) -> Any:
        """``(..., n, 1)``: the normaliser ``phi(q_i) . sum_j phi(k_j)``, 1 where it is 0."""
        xp = namespace(self.core.r)
        return xp.where(self.core.valid, self.core.r, 1.0)[..., None]


@dataclass(frozen=True)
class Options:
    """The options of :func:`kernel_attention`, resolved once by :func:`forward`."""

    kernel: tuple[str, ...]  # the unit names
    core: CoreOptions  # causal, chunk, eps = 0, nothing to report


def forward(q: Any, k: Any, v: Any, /, *params: Any, kernel: Any = "glu", mask: Any = None,
            causal: bool | str = False, scale: float | None = None, key_lengths: Any = None,
            chunk: int = DEFAULT_CHUNK, check_finite: bool = True) -> tuple[Any, Residuals]:
    """Forward pass of :func:`kernel_attention`; returns ``(out, Residuals)``."""
    xp, batch = validate_qkv(q, k, v, check_finite_inputs=check_flag("check_finite", check_finite),
                             extra={"mask": mask, "key_lengths": key_lengths})
    units_names = _parse_kernel(kernel)
    if scale is not None:
        msg = (f"scale must be None: kernelized attention has no logit scale (fold an input scaling into the "
               f"first weight), got {scale!r}")
        raise ValueError(msg)
    chunk = check_int("chunk", chunk, minimum=1)
    units = _validate_params(xp, q, units_names, params, batch)
    # head-wise weights (..., d, D) enlarge the output's batch, and the mask may take that shape
    batch = broadcast_shapes(batch, *(tuple(w.shape[:-2]) for w in params))
    n, m = q.shape[-2], k.shape[-2]
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch,
                     dtype=compute_dtype(xp, q.dtype))
    is_causal = spec.causal_offset is not None
    if is_causal and n != m:
        msg = (f"causal kernelized attention needs as many queries as keys (prefix sums over j <= i), "
               f"got n = {n}, m = {m}")
        raise ValueError(msg)
    keep = key_padding_keep(xp, spec, device(q), method="kernel_attention")
    # positive features: the normaliser is >= 0, exactly 0 only for empty rows or underflow, and such
    # rows are zeros with zero gradient ("nonzero" rule, eps = 0, nothing to report)
    opts = Options(units_names, CoreOptions(causal=is_causal, chunk=chunk, eps=0.0, errors="ignore",
                                            method="kernel_attention"))
    out, res = _forward(xp, q, k, v, params, units, keep, opts)
    if check_finite:  # huge finite q, k (or weights): the feature maps overflow
        check_overflow(xp, out, "kernel_attention", "q, k and the weights")
    return out, res


def _forward(xp: Any, q: Any, k: Any, v: Any, params: tuple[Any, ...], units: list[tuple[str, tuple[Any, ...]]],
             keep: Any, opts: Options) -> tuple[Any, Residuals]:
    """The implementation of :func:`forward` (valid input and resolved options assumed)."""
    dtype = q.dtype
    work = compute_dtype(xp, dtype)
    shapes = tuple(tuple(a.shape) for a in (q, k, v, *params))
    if work != dtype:
        q, k, v = (xp.astype(a, work) for a in (q, k, v))
        units = [(u, tuple(xp.astype(w, work) for w in ws)) for u, ws in units]
    fq, cq = _phi_forward(xp, q, units)
    fk, ck = _phi_forward(xp, k, units)
    out, core = kernelized_forward(fq, fk, v, opts.core, key_keep=keep)
    res = Residuals(opts.kernel, units, cq, ck, core, dtype, shapes)
    return (xp.astype(out, dtype) if work != dtype else out), res


def backward(res: Residuals, dout: Any, /) -> Any:
    """Hand-written backward of :func:`forward`: ``Grads(dq, dk, dv, d<weights>...)`` (see
    :func:`grads_type`), each in its argument's shape and dtype."""
    xp = namespace(res.core.out)
    work = res.core.out.dtype
    dout = xp.astype(dout, work) if dout.dtype != work else dout
    dfq, dfk, dv = kernelized_backward(res.core, dout)
    dq, dwq = _phi_backward(xp, res.cq, res.units, dfq)
    dk, dwk = _phi_backward(xp, res.ck, res.units, dfk)
    wshapes = res.shapes[3:]
    dws = [unbroadcast(xp, a, s) + unbroadcast(xp, b, s) for a, b, s in zip(dwq, dwk, wshapes)]
    grads = [unbroadcast(xp, g, s) for g, s in zip((dq, dk, dv), res.shapes[:3])] + dws
    grads = [xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in grads]
    return grads_type(res.kernel)(*grads)


def _weights(s: Any, opts: Any, rng: Any, backend: Any, dtype: str) -> dict[str, Any]:
    kernel = opts.get("kernel", "glu")
    arrays = init_params(kernel, s["d"], rng=rng, backend=backend, dtype=dtype)
    names = [f"{p}{i}" for i, u in enumerate(_parse_kernel(kernel)) for p in PARAM_NAMES[u]]
    return dict(zip(names, arrays))


def _closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward:
        return None
    return cost(s["n"], s["m"], s["d"], s["dv"], kernel=opts.get("kernel", "glu"), causal=opts.get("causal", False),
                chunk=opts.get("chunk", DEFAULT_CHUNK), batch=tuple(s["batch"]))


def _square_if_causal(shape: Any, kind: str) -> Any:
    """Prefix-sum methods pair query ``i`` with keys ``j <= i``: the oracle's shapes take ``m = n``."""
    return shape._replace(m=shape.n) if kind in ("causal", "bottom_right") else shape


@declare(Method(
    forward, backward, name="kernel",
    summary="kernelized attention with trainable feedforward feature maps FFN/GLU/OGLU/AOGLU (Yorsh & Kovalenko)",
    # the arrays of the default kernel="glu" (the oracle's); other kernels take PARAM_NAMES[kernel] per unit
    arrays=(*QKV, Array("w_f0", "(..., d, D)"), Array("w_g0", "(..., d, D)")), params=_weights,
    masks=("none", "causal", "key_lengths"), cost=_closed_cost, error_model="refattn._oracle:kernel_error_bound",
    oracle_options={"kernel": "glu"}, adapt_shape=_square_if_causal, has_scale=False))
def kernel_attention(q: Any, k: Any, v: Any, /, *params: Any, kernel: Any = "glu", mask: Any = None,
                     causal: bool | str = False, scale: float | None = None, key_lengths: Any = None,
                     chunk: int = DEFAULT_CHUNK, check_finite: bool = True) -> Any:
    r"""Kernelized attention with a trainable feedforward feature map (Yorsh & Kovalenko).

    ``O_i = phi(q_i)^T sum_j phi(k_j) v_j^T / (phi(q_i)^T sum_j phi(k_j))``; see the module docstring.

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
    *params : the weights of every unit in order: ``"ffn"`` ``W``; ``"glu"``/``"oglu"`` ``W_f, W_g``;
        ``"aoglu"`` ``W_f, A, B`` (shapes ``(..., d_in, d_out)``, ``(..., d_in, r)``,
        ``(..., r, d_out)``); the dtype of ``q``; finite.
    kernel : str or sequence of str
        One of ``"ffn", "glu", "oglu", "aoglu"``, or a stack of them.
    mask, key_lengths : key padding only (boolean ``(..., 1, m)`` or lengths).
    causal : bool or {"top_left", "bottom_right"}
        Prefix sums over ``j <= i``; needs ``n == m`` (both alignments then coincide).
    scale : None
        Must be ``None`` (there is no logit scale).
    chunk : int
        Chunk length of the causal prefix-sum kernel.
    check_finite : bool
        ``True`` (default): reject NaN/inf in ``q, k, v`` with ``ValueError`` naming the argument;
        ``False`` skips that pass (non-finite values then propagate). The weights are always checked
        (:func:`_check_data`).

    Returns
    -------
    out : array ``(..., n, dv)``. Rows with a zero normaliser (every key padded away, or underflow)
    are zero.

    Raises
    ------
    TypeError
        A weight of another dtype or library, the wrong number of weights, non-floating inputs.
    ValueError
        Weights of the wrong shape or with NaN/inf, an unknown kernel, a per-query or additive mask,
        ``causal`` with ``n != m``, a scale, a non-positive chunk.
    """
    return forward(q, k, v, *params, kernel=kernel, mask=mask, causal=causal, scale=scale,
                   key_lengths=key_lengths, chunk=chunk, check_finite=check_finite)[0]


def feature_map(x: Any, /, *params: Any, kernel: Any = "glu") -> Any:
    """The feature map ``phi(x)`` of ``kernel`` alone (the same function :func:`kernel_attention` applies
    to queries and keys): ``x (..., N, d)`` -> ``(..., N, D)``. Weights validated as there."""
    xp = namespace(x)
    check_float_array("x", x, xp, ndim_min=2)
    units = _validate_params(xp, x, _parse_kernel(kernel), params, tuple(x.shape[:-2]), ref="x")
    dtype, work = x.dtype, compute_dtype(xp, x.dtype)
    if work != dtype:
        x = xp.astype(x, work)
        units = [(u, tuple(xp.astype(w, work) for w in ws)) for u, ws in units]
    y = _phi_forward(xp, x, units)[0]
    return xp.astype(y, dtype) if work != dtype else y


# ----------------------------------------------------------------------------------------------
# Orthogonality regulariser (OGLU / AOGLU)
# ----------------------------------------------------------------------------------------------

class PenaltyResiduals(NamedTuple):
    w: Any
    e: Any  # W^T W - I


class PenaltyGrads(NamedTuple):
    dw: Any


def orthogonality_penalty_forward(w: Any, /) -> tuple[Any, PenaltyResiduals]:
    """Forward of :func:`orthogonality_penalty`."""
    xp = namespace(w)
    check_float_array("w", w, xp, ndim_min=2)
    _check_finite_array("w", w, xp)
    c = w.shape[-1]
    e = _mT(xp, w) @ w - xp.eye(c, dtype=w.dtype, device=device(w))
    return xp.sum(e * e, axis=(-2, -1)), PenaltyResiduals(w, e)


def orthogonality_penalty_backward(res: PenaltyResiduals, dout: Any, /) -> PenaltyGrads:
    """``d/dW ||W^T W - I||_F^2 = 4 W (W^T W - I)`` (``E`` symmetric), times the cotangent."""
    return PenaltyGrads(4.0 * (res.w @ res.e) * dout[..., None, None])


@declare(Function(orthogonality_penalty_forward, orthogonality_penalty_backward))
def orthogonality_penalty(w: Any, /) -> Any:
    r"""The OGLU regulariser ``||W^T W - I||_F^2`` of ``w (..., d_in, d_out)``, one value per matrix.

    Zero exactly when the columns of ``W`` are orthonormal (it is a sum of squares of the entries of
    ``W^T W - I``); only possible for ``d_in >= d_out``. Gradient ``4 W (W^T W - I)`` (hand-written,
    registered for :func:`refattn.vjp`).
    """
    return orthogonality_penalty_forward(w)[0]


# ----------------------------------------------------------------------------------------------
# Parameters: counts and initialisation
# ----------------------------------------------------------------------------------------------

def _dims(units: tuple[str, ...], d: int, d_out: int | None, rank: int | None) -> list[tuple[str, int, int, int]]:
    check_int("d", d, minimum=1)
    check_int("d_out", d_out, minimum=1, allow_none=True)
    dims, d_in = [], d
    for u in units:
        do = d_out if d_out is not None else d_in
        r = (rank if rank is not None else default_rank(d_in)) if u == "aoglu" else 0
        if u == "aoglu":
            check_int("rank", r, minimum=1)
        dims.append((u, d_in, do, r))
        d_in = do
    return dims


def parameter_count(kernel: Any, d: int, *, rank: int | None = None, d_out: int | None = None) -> int:
    """Number of weights of ``kernel`` on ``d`` input features (``d_out`` defaults to ``d``; units of a
    stack chain ``d_out -> d_in``): FFN ``d d_out``, GLU/OGLU ``2 d d_out``, AOGLU
    ``d d_out + r (d + d_out)`` with ``r = d/4`` by default (so ``1.5 d^2`` against GLU's ``2 d^2``:
    25% fewer, exactly, for ``d`` divisible by 4). No biases: the paper's units have none."""
    total = 0
    for u, di, do, r in _dims(_parse_kernel(kernel), d, d_out, rank):
        total += di * do if u == "ffn" else 2 * di * do if u in ("glu", "oglu") else di * do + r * (di + do)
    return total


def init_params(kernel: Any, d: int, *, rng: Any, backend: Any = None, dtype: str = "float64",
                rank: int | None = None, d_out: int | None = None, orthogonal: bool | None = None,
                heads: tuple[int, ...] = ()) -> tuple[Any, ...]:
    """Weights for ``kernel`` drawn on the host (:mod:`refattn.random`) and moved to ``backend``.

    ``W_f`` (and FFN's ``W`` when ``orthogonal=True``) orthogonal, Haar-distributed
    (:func:`refattn.random.orthogonal`) for ``"oglu"`` and ``"aoglu"`` (``orthogonal=None`` picks that
    default; ``True``/``False`` forces it for every unit); other matrices iid ``N(0, 1/fan_in)``.
    ``heads`` prepends leading dimensions (one set of weights per head). Nothing here is used by a
    forward pass implicitly: pass the result as ``*params``.
    """
    rs = _random.default_rng(rng)
    out = []
    for u, di, do, r in _dims(_parse_kernel(kernel), d, d_out, rank):
        orth = orthogonal if orthogonal is not None else u in ("oglu", "aoglu")

        def mat(rows: int, cols: int, orth_: bool = False) -> Any:
            if not orth_:
                return _random.normal((*heads, rows, cols), rng=rs, backend=backend, dtype=dtype,
                                      std=1.0 / math.sqrt(rows))
            mats = [_random.orthogonal((rows, cols), rng=rs, backend=backend, dtype=dtype)
                    for _ in range(math.prod(heads))]
            if not heads:
                return mats[0]
            xp = namespace(mats[0])
            return xp.reshape(xp.stack(mats), (*heads, rows, cols))

        if u == "ffn":
            out.append(mat(di, do, orth))
        elif u in ("glu", "oglu"):
            out += [mat(di, do, orth), mat(di, do)]
        else:
            out += [mat(di, do, orth), mat(di, r), mat(r, do)]
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Closed-form cost
# ----------------------------------------------------------------------------------------------

def _phi_cost(units: list[tuple[str, int, int, int]], rows: int) -> tuple[int, int]:
    flops = trans = 0
    last = len(units) - 1
    for i, (u, di, do, r) in enumerate(units):
        el = rows * do
        if u == "ffn":
            flops += 2 * rows * di * do + 8 * el
            trans += 2 * el
            continue
        mm = 2 * rows * di * do + (2 * rows * di * r + 2 * rows * r * do if u == "aoglu" else 2 * rows * di * do)
        if i == last:  # sigmoid 5, softplus 8, product 1
            flops += mm + 14 * el
            trans += 3 * el
        else:  # sigmoid 5, product 1
            flops += mm + 6 * el
            trans += el
    return flops, trans


def cost(n: int, m: int, d: int, dv: int, *, kernel: Any = "glu", rank: int | None = None,
         d_out: int | None = None, causal: bool = False, chunk: int = DEFAULT_CHUNK,
         batch: tuple[int, ...] = ()) -> Cost:
    r"""Closed-form forward cost of :func:`kernel_attention` (exact under :mod:`refattn.cost`'s rules).

    Per batch element (``D`` the feature dimension, ``e = dv + 1``), the feature maps of ``n`` query and
    ``m`` key rows (per unit with ``N`` rows: FFN ``2 N d_in d_out + 8 N d_out`` flops and ``2 N d_out``
    transcendentals; output GLU/OGLU ``4 N d_in d_out + 14 N d_out`` and ``3 N d_out``; hidden
    ``4 N d_in d_out + 6 N d_out`` and ``N d_out``; AOGLU replaces one ``2 N d_in d_out`` by
    ``2 N r (d_in + d_out)``), then the shared core
    (:func:`refattn.methods._kernelized.kernelized_flops`): non-causal ``2 D m e + 2 n D e`` or, causal
    (``n == m``), :func:`causal_dot` over chunks of length ``c``:
    ``sum_c (2 c^2 D + 2 c^2 e + 4 c D e + c e + D e)``; plus ``n`` (the core's ``+ eps`` with
    ``eps = 0``) and ``n dv`` for the division. Linear in ``n`` and ``m`` at fixed ``d`` (chunk fixed). Bytes and
    peak memory are not modelled (0).
    """
    units = _dims(_parse_kernel(kernel), d, d_out, rank)
    dd = units[-1][2]
    fq, tq = _phi_cost(units, n)
    fk, tk = _phi_cost(units, m)
    if causal and n != m:
        msg = f"causal needs n == m, got n = {n}, m = {m}"
        raise ValueError(msg)
    att = kernelized_flops(n, m, dd, dv, causal=bool(causal), chunk=chunk)
    nb = math.prod(batch)
    return Cost(flops=nb * (fq + fk + att), transcendentals=nb * (tq + tk))
