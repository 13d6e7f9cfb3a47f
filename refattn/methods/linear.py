r"""Linear attention: Katharopoulos et al.'s kernelized attention and Shen et al.'s efficient attention.

Kernelized linear attention (Katharopoulos, Vyas, Pappas & Fleuret 2020, "Transformers are RNNs",
arXiv 2006.16236; formulas as in the authors' fast-transformers code)
--------------------------------------------------------------------------------------------------

.. math::

    \text{out}_i = \frac{\phi(s q_i)^\top \sum_{j} \phi(k_j) v_j^\top}
                        {\phi(s q_i)^\top \sum_{j} \phi(k_j) + \varepsilon}

with ``j`` over the kept keys (non-causal) or the kept keys ``j <= i`` (causal, prefix sums), and an
elementwise feature map ``phi``: ``"elu+1"`` (default, ``elu(x) + 1``: ``x + 1`` for ``x > 0``,
``e^x`` otherwise), ``"relu"`` (``max(x, 0)``, derivative 0 at 0), ``"identity"``, or a user pair
``(phi, dphi)`` of array-API callables, ``phi`` elementwise (same shape and dtype out) and ``dphi(x)``
its elementwise derivative. Non-elementwise feature maps (random features, trainable kernels) are
built on the same core, :mod:`refattn.methods._kernelized`, by their own modules.

Choices (the paper is silent or differs from its code):

- ``eps`` (default ``1e-6``) is added to the normaliser, ``phi(q_i)^T z + eps``, as in
  fast-transformers; the paper's formula has none. ``eps = 0`` gives the paper's formula.
- ``scale`` multiplies the queries before the feature map, ``phi(s q)``; ``None`` means ``s = 1``:
  Katharopoulos et al. do not scale (``1/sqrt(d)`` is *not* the default here, unlike softmax).
- Normalisers ``<= 0`` (possible only for sign-indefinite maps such as ``"identity"``) raise by
  default; ``errors="warn"`` / ``"ignore"`` compute the ratio anyway (``on_nonpositive``, the
  former name, still works with a ``DeprecationWarning``). A query that sees no
  key (every key padded, or ``causal="bottom_right"`` with ``m < n``) returns zeros with zero
  gradient when ``eps = 0``, and ``0 / eps = 0`` otherwise. See :mod:`refattn.methods._kernelized`.
- Tiny normalisers (e.g. ``elu+1`` features of large negative ``q``, ``k``, where ``phi = exp``):
  with ``eps = 0`` the ratio keeps its accuracy (all terms are non-negative, the scale cancels;
  absolute error ``<= 2 gamma_{d+m+3} max|v|``) while ``phi(q_i)^T sum_j phi(k_j)`` is a normal
  number (``>= 2.2e-308`` in float64, ``1.2e-38`` in float32). Below, it is subnormal (accuracy
  degrades) and then 0: a fully underflowed row comes back as zeros, indistinguishable from a query
  that sees no key. Rescale the inputs in that regime. With ``eps > 0`` the output is
  ``r / (r + eps)`` times the exact ratio (``r`` the normaliser). Tested in ``tests/test_stability.py``.
- Masks: key padding (``key_lengths`` or a boolean mask of shape ``(..., 1, m)``) zeroes ``phi(k_j)``
  of dropped keys. A mask that differs between queries, or an additive mask, cannot be honoured:
  the method never forms the ``(n, m)`` matrix ``phi(Q) phi(K)^T`` (that is the point of it), so it
  raises ``ValueError``. Causal masking has its own prefix-sum form (``causal=True``).

It is a different kernel, ``phi(q)^T phi(k)`` instead of ``exp(q^T k)``: *not* an approximation of
softmax attention (with ``"identity"`` features it is exactly ``D^{-1} (Q K^T) V``).

Cost: non-causal ``O((n + m) d dv)`` time and ``O(d dv)`` state; causal through the chunked prefix
sums of :func:`refattn.methods._prefix.causal_dot`, ``O(n (chunk + d) dv)`` time and
``O(chunk^2 + chunk (d + dv) + d dv)`` extra memory per batch element, never ``O(n d dv)``.

Validation and data-dependent checks: :func:`forward` validates the inputs and resolves every
option once into :class:`Options`; :func:`_forward` (and :func:`_efficient_forward`) assume both.
The one data-dependent step is the kernelized core's normaliser check
(:func:`refattn.methods._kernelized._check_normalizers`); the input finiteness pass is
``check_finite``'s.

Backward: the cotangents of the features come from the core (``kernelized_backward``), then
``dq = s * phi'(s q) * dphi_q`` and ``dk = phi'(k) * dphi_k`` elementwise.

Efficient attention (Shen, Zhang, Zhao, Yi & Li, WACV 2021, arXiv 1812.01243; the authors' code)
-----------------------------------------------------------------------------------------------

.. math::

    \text{out} = \rho_q(s Q)\, \bigl(\rho_k(K)^\top V\bigr)

``normalization="softmax"`` (default): ``rho_q`` is a softmax over the *feature* axis of each query
(each row of ``Q``), ``rho_k`` a softmax over the *sequence* axis of each key feature (each column of
``K``); no ``1/sqrt(d)`` (``scale=None`` means ``s = 1``, as in the code). ``normalization="scaling"``:
``rho_q(Y) = rho_k(Y) = Y / sqrt(m)``, which makes the output exactly ``(s Q K^T / m) V``, the
dot-product attention with *scaling* normalisation (Shen's equivalence statement; ``m`` = number
of key positions, Shen's ``n`` in self-attention). Padded keys get ``rho_k = 0``; ``m`` stays the
number of key positions ``k.shape[-2]``, padded ones included (not the number of kept keys), so with
key padding the output is ``(s Q K_kept^T / m) V``. A batch element with every key padded returns
zeros. Causal masking is rejected (``rho_k`` normalises over the
whole sequence).

Efficient attention with softmax normalisation is **not** an approximation of softmax attention:
it is a different function class (e.g. it is invariant to adding a constant to a query row, and its
output has rank at most ``d``). What does hold: the implied attention matrix
``A = rho_q(Q) rho_k(K)^T`` is row-stochastic, ``A 1 = rho_q(Q) (rho_k(K)^T 1) = rho_q(Q) 1 = 1``,
so each output row is a convex combination of the value rows.

Backward: ``dS = rho_q^T dout``, ``d rho_q = dout S^T``, ``d rho_k = V dS^T``, ``dV = rho_k dS``, then
the softmax vector-Jacobian product ``dx = p (dp - sum(dp p))`` along each normalised axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .._checks import check_choice, check_flag, check_int, check_real, legacy_policy
from .._masks import key_padding_keep, make_mask
from .._primitives import exp_consuming
from .._registry import Method, declare
from .._xp import check_overflow, compute_dtype, device, namespace, resolve_scale, to_working, unbroadcast, validate_qkv
from ._kernelized import (
    DEFAULT_CHUNK,
    CoreOptions,
    KernelizedResiduals,
    kernelized_backward,
    kernelized_flops,
    kernelized_forward,
)
from ._softmax_axis import softmax_axis, softmax_axis_backward, softmax_axis_flops

if TYPE_CHECKING:  # imported lazily in cost(): refattn.cost may grow imports of the methods
    from ..cost import Cost

__all__ = ["linear_attention", "forward", "backward", "cost", "Residuals", "Grads", "FEATURE_MAPS",
           "efficient_attention", "efficient_forward", "efficient_backward", "efficient_cost",
           "EfficientResiduals", "NORMALIZATIONS", "DEFAULT_CHUNK", "DEFAULT_EPS"]

FEATURE_MAPS = ("elu+1", "relu", "identity")
NORMALIZATIONS = ("softmax", "scaling")
DEFAULT_EPS = 1e-6


class FeatureMap(NamedTuple):
    """An elementwise feature map: ``phi(xp, x)``, its derivative ``dphi(xp, x, phi_x)``, and its
    cost per element ``(flops, transcendentals)`` (``None`` for user maps)."""

    name: str
    phi: Callable[[Any, Any], Any]
    dphi: Callable[[Any, Any, Any], Any]
    cost: tuple[int, int] | None


def _elu1(xp: Any, x: Any) -> Any:
    # elu(x) + 1 = max(x, 0) + exp(min(x, 0)): exp only of non-positive arguments (no overflow), four
    # passes over x and no boolean temporaries (x + exp(0) = x + 1 exactly for x > 0)
    zero = xp.zeros((), dtype=x.dtype, device=device(x))
    y = exp_consuming(xp, xp.minimum(x, zero))
    y += xp.maximum(x, zero)
    return y


def _elu1_grad(xp: Any, x: Any, y: Any) -> Any:
    return xp.where(x > 0, 1.0, y)


def _relu(xp: Any, x: Any) -> Any:
    return xp.where(x <= 0, 0.0, x)  # NaN stays NaN (where(x > 0, x, 0) made it 0); comparisons: no flops


def _relu_grad(xp: Any, x: Any, y: Any) -> Any:
    return xp.astype(x > 0, x.dtype)


def _identity(xp: Any, x: Any) -> Any:
    return x


def _identity_grad(xp: Any, x: Any, y: Any) -> Any:
    return None  # marker: the derivative is 1 (no multiply)


_BUILTIN_MAPS = {
    "elu+1": FeatureMap("elu+1", _elu1, _elu1_grad, (3, 1)),
    "relu": FeatureMap("relu", _relu, _relu_grad, (0, 0)),
    "identity": FeatureMap("identity", _identity, _identity_grad, (0, 0)),
}


def _resolve_feature_map(feature_map: Any) -> FeatureMap:
    if isinstance(feature_map, str):
        if feature_map not in _BUILTIN_MAPS:
            msg = f"feature_map must be one of {FEATURE_MAPS} or a pair (phi, dphi) of callables, got {feature_map!r}"
            raise ValueError(msg)
        return _BUILTIN_MAPS[feature_map]
    if (not isinstance(feature_map, tuple) or len(feature_map) != 2
            or not all(callable(f) for f in feature_map)):
        msg = (f"feature_map must be one of {FEATURE_MAPS} or a pair (phi, dphi) of callables "
               f"(phi elementwise, dphi its elementwise derivative), got {feature_map!r}")
        raise TypeError(msg)
    user_phi, user_dphi = feature_map

    def checked(fn: Callable[[Any], Any], what: str, x: Any) -> Any:
        y = fn(x)
        if tuple(getattr(y, "shape", ())) != tuple(x.shape) or getattr(y, "dtype", None) != x.dtype:
            msg = (f"feature_map's {what} must be elementwise: it must return an array of the input's "
                   f"shape {tuple(x.shape)} and dtype {x.dtype}, got "
                   f"{type(y).__name__} of shape {tuple(getattr(y, 'shape', ()))} and dtype {getattr(y, 'dtype', '?')}")
            raise ValueError(msg)
        return y

    return FeatureMap(getattr(user_phi, "__name__", "user"),
                      lambda xp, x: checked(user_phi, "phi", x),
                      lambda xp, x, y: checked(user_dphi, "dphi", x), None)


def _linear_scale(scale: Any, d: int) -> float:
    return 1.0 if scale is None else resolve_scale(scale, d)


# --------------------------------------------------------------------------------------------------
# Kernelized linear attention
# --------------------------------------------------------------------------------------------------


class Residuals(NamedTuple):
    core: KernelizedResiduals
    qs: Any  # scaled queries (feature-map input)
    k: Any
    phi_q: Any
    phi_k: Any
    fmap: FeatureMap
    scale: float
    dtype: Any
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class Grads(NamedTuple):
    dq: Any
    dk: Any
    dv: Any


@dataclass(frozen=True)
class Options:
    """The options of :func:`linear_attention`, resolved once by :func:`forward`."""

    fmap: FeatureMap
    scale: float  # s (1 when scale=None)
    core: CoreOptions  # causal, chunk, eps, failure policy of the kernelized core


def _options(d: int, *, causal: Any, scale: Any, feature_map: Any, eps: Any, chunk: Any, errors: Any,
             on_nonpositive: Any) -> Options:
    policy = legacy_policy(errors, {"on_nonpositive": on_nonpositive})
    core = CoreOptions(causal=causal, chunk=check_int("chunk", chunk, minimum=1),
                       eps=check_real("eps", eps, minimum=0.0, what="added to the normaliser"),
                       errors=policy, method="linear attention")
    return Options(_resolve_feature_map(feature_map), _linear_scale(scale, d), core)


def forward(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
            scale: float | None = None, key_lengths: Any = None, feature_map: Any = "elu+1",
            eps: float = DEFAULT_EPS, chunk: int = DEFAULT_CHUNK, errors: str | None = None,
            on_nonpositive: str | None = None, check_finite: bool = True) -> tuple[Any, Residuals]:
    """Linear attention forward pass; returns ``(out, Residuals)``. See :func:`linear_attention`."""
    xp, batch = validate_qkv(q, k, v, check_finite_inputs=check_flag("check_finite", check_finite),
                             extra={"mask": mask, "key_lengths": key_lengths})
    opts = _options(q.shape[-1], causal=causal, scale=scale, feature_map=feature_map, eps=eps, chunk=chunk,
                    errors=errors, on_nonpositive=on_nonpositive)
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=q.shape[-2], m=k.shape[-2],
                     batch=batch, dtype=compute_dtype(xp, q.dtype))
    keep = key_padding_keep(xp, spec, device(q), method="linear attention")
    out, res = _forward(xp, q, k, v, keep, opts)
    if check_finite:  # huge finite q, k: the features or the normaliser overflow (inf / inf)
        check_overflow(xp, out, "linear_attention")
    return out, res


def _forward(xp: Any, q: Any, k: Any, v: Any, keep: Any, opts: Options) -> tuple[Any, Residuals]:
    """The implementation of :func:`forward` (valid input and resolved options assumed)."""
    dtype = q.dtype
    work, (q, k, v) = to_working(xp, q, k, v)
    s, fmap = opts.scale, opts.fmap
    qs = q * s if s != 1.0 else q
    phi_q, phi_k = fmap.phi(xp, qs), fmap.phi(xp, k)
    out, core = kernelized_forward(phi_q, phi_k, v, opts.core, key_keep=keep)
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    res = Residuals(core, qs, k, phi_q, phi_k, fmap, s, dtype, shapes)
    return (xp.astype(out, dtype) if work != dtype else out), res


def backward(res: Residuals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`forward`: ``Grads(dq, dk, dv)`` in the inputs' shapes and dtype."""
    xp = namespace(res.qs, res.k, res.core.out)
    work = res.core.out.dtype
    dout = xp.astype(dout, work) if dout.dtype != work else dout
    dphi_q, dphi_k, dv = kernelized_backward(res.core, dout)
    gq = res.fmap.dphi(xp, res.qs, res.phi_q)
    gk = res.fmap.dphi(xp, res.k, res.phi_k)
    dq = dphi_q if gq is None else dphi_q * gq
    dk = dphi_k if gk is None else dphi_k * gk
    if res.scale != 1.0:
        dq = dq * res.scale
    grads = [unbroadcast(xp, g, shape) for g, shape in zip((dq, dk, dv), res.shapes)]
    return Grads(*(xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in grads))


def cost(n: int, m: int, d: int, dv: int, *, batch: int = 1, feature_map: Any = "elu+1",
         causal: bool | str = False, chunk: int = DEFAULT_CHUNK, scale: float | None = None,
         feature_map_cost: tuple[int, int] | None = None) -> Cost:
    """Closed-form forward cost of :func:`linear_attention` (FLOPs and transcendentals, exact).

    Per broadcast batch element (``batch`` of them; q, k, v assumed to share the batch shape):
    ``n d`` flops for ``s q`` when ``s != 1``; the feature map on ``(n + m) d`` elements
    (``"elu+1"``: 3 flops (min, max, add) and 1 exp per element, ``"relu"``/``"identity"``: none; a user map needs
    ``feature_map_cost=(flops, transcendentals)`` per element); then the core
    (:func:`refattn.methods._kernelized.kernelized_flops`): non-causal
    ``2 (n + m) d (dv + 1) + n + n dv``, causal the chunked prefix-sum count.
    """
    for name, val in (("n", n), ("m", m), ("d", d), ("dv", dv)):
        check_int(name, val, minimum=0)
    check_int("batch", batch, minimum=1)
    check_int("chunk", chunk, minimum=1)
    if feature_map_cost is None:
        fmap = _resolve_feature_map(feature_map)
        if fmap.cost is None:
            msg = ("the closed-form cost of a user feature map needs "
                   "feature_map_cost=(flops, transcendentals) per element")
            raise ValueError(msg)
        feature_map_cost = fmap.cost
    f_flops, f_trans = feature_map_cost
    flops = (n * d if _linear_scale(scale, d) != 1.0 else 0) + f_flops * (n + m) * d
    flops += kernelized_flops(n, m, d, dv, causal=causal, chunk=chunk)
    from ..cost import Cost

    return Cost(flops=batch * flops, transcendentals=batch * f_trans * (n + m) * d)


def _closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward:
        return None
    return cost(s["n"], s["m"], s["d"], s["dv"], batch=math.prod(s["batch"]),
                feature_map=opts.get("feature_map", "elu+1"), causal=opts.get("causal", False),
                chunk=opts.get("chunk", DEFAULT_CHUNK), scale=opts.get("scale"))


@declare(Method(
    forward, backward, name="linear",
    summary="kernelized linear attention phi(Q) (phi(K)^T V) / normaliser (Katharopoulos et al. 2020)",
    masks=("none", "causal", "bottom_right", "key_lengths"), cost=_closed_cost,
    error_model="refattn._oracle:linear_error_bound"))
def linear_attention(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
                     scale: float | None = None, key_lengths: Any = None, feature_map: Any = "elu+1",
                     eps: float = DEFAULT_EPS, chunk: int = DEFAULT_CHUNK, errors: str | None = None,
                     on_nonpositive: str | None = None, check_finite: bool = True) -> Any:
    r"""Kernelized linear attention ``phi(sQ) S / (phi(sQ) z + eps)`` (Katharopoulos et al. 2020).

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
        Real floating, one dtype, one namespace and device; leading dimensions broadcast.
    mask : boolean array ``(..., 1, m)``, optional
        Key padding only (``True`` = keep). Per-query or additive masks raise ``ValueError``.
    causal : bool or {"top_left", "bottom_right"}
        Prefix-sum form: query ``i`` sees keys ``j <= i`` (``"bottom_right"``: ``j <= i + m - n``).
    scale : float, optional
        Multiplies ``q`` before the feature map; ``None`` = 1 (Katharopoulos et al. do not scale).
    key_lengths : integer array, optional
        Number of valid keys per batch element.
    feature_map : {"elu+1", "relu", "identity"} or (phi, dphi)
        Elementwise feature map; a user pair gives ``phi(x)`` and its derivative ``dphi(x)``.
    eps : float
        Added to the normaliser (``>= 0``; default ``1e-6`` as in fast-transformers).
    chunk : int
        Rows per chunk of the causal prefix sums (memory ``O(chunk^2 + chunk (d + dv) + d dv)``).
    errors : {"raise", "warn", "ignore"}, optional
        The failure policy for normalisers ``<= 0`` (sign-indefinite features): ``ValueError``,
        ``RuntimeWarning`` (the ratio is returned as computed), or nothing. ``None`` (default) means
        ``"raise"``.
    on_nonpositive : {"raise", "warn", "ignore"}, optional
        Deprecated (``DeprecationWarning``): the former name of ``errors``.
    check_finite : bool
        ``True`` (default): reject NaN/inf in q, k, v with ``ValueError`` naming the argument;
        ``False`` skips that pass (non-finite values then propagate to the rows they reach).

    Returns
    -------
    out : array ``(..., n, dv)`` in the inputs' dtype.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes, mixed libraries, a feature map that is not a name or pair.
    ValueError
        Shape mismatch, an unknown feature map or option, ``eps < 0``, a mask linear attention cannot
        honour (per query, additive), non-finite inputs (``check_finite=True``), normalisers ``<= 0``
        with ``errors="raise"``.

    References
    ----------
    Katharopoulos, Vyas, Pappas, Fleuret 2020 (arXiv 2006.16236); survey 001, sec. 2.2.
    """
    return forward(q, k, v, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                   feature_map=feature_map, eps=eps, chunk=chunk, errors=errors, on_nonpositive=on_nonpositive,
                   check_finite=check_finite)[0]


# --------------------------------------------------------------------------------------------------
# Shen et al. efficient attention
# --------------------------------------------------------------------------------------------------


class EfficientResiduals(NamedTuple):
    rho_q: Any  # (..., n, d)
    rho_k: Any  # (..., m, d), zero rows for padded keys
    v: Any
    state: Any  # rho_k^T V, (..., d, dv)
    keep: Any
    normalization: str
    scale: float
    dtype: Any
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def efficient_forward(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
                      scale: float | None = None, key_lengths: Any = None, normalization: str = "softmax",
                      check_finite: bool = True) -> tuple[Any, EfficientResiduals]:
    """Efficient attention forward pass; returns ``(out, EfficientResiduals)``. See :func:`efficient_attention`."""
    xp, batch = validate_qkv(q, k, v, check_finite_inputs=check_flag("check_finite", check_finite),
                             extra={"mask": mask, "key_lengths": key_lengths})
    normalization = check_choice("normalization", normalization, NORMALIZATIONS)
    if normalization == "softmax" and q.shape[-1] == 0:
        msg = (f"efficient_attention normalises q over its features (softmax over d): q must have d >= 1, "
               f"got {tuple(q.shape)}")
        raise ValueError(msg)
    s = _linear_scale(scale, q.shape[-1])
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=q.shape[-2], m=k.shape[-2],
                     batch=batch, dtype=compute_dtype(xp, q.dtype))
    if spec.causal_offset is not None:
        msg = ("efficient attention cannot be causal: rho_k normalises each key feature over the whole "
               "sequence, so every output depends on every key; use linear_attention(causal=True)")
        raise ValueError(msg)
    keep = key_padding_keep(xp, spec, device(q), method="efficient attention")
    out, res = _efficient_forward(xp, q, k, v, keep, normalization, s)
    if check_finite:
        check_overflow(xp, out, "efficient_attention")
    return out, res


def _efficient_forward(xp: Any, q: Any, k: Any, v: Any, keep: Any, normalization: str,
                       s: float) -> tuple[Any, EfficientResiduals]:
    """The implementation of :func:`efficient_forward` (valid input and options assumed)."""
    m = k.shape[-2]
    dtype = q.dtype
    work, (q, k, v) = to_working(xp, q, k, v)
    qs = q * s if s != 1.0 else q
    if normalization == "softmax":
        rho_q = softmax_axis(xp, qs, -1)
        if m == 0:
            rho_k = k
        else:
            rho_k = softmax_axis(xp, k, -2, None if keep is None else keep[..., None])
    else:
        c = 1.0 / math.sqrt(m) if m else 1.0  # m: key positions, padded ones included
        rho_q = qs * c
        rho_k = k * c
        if keep is not None:
            rho_k = xp.where(keep[..., None], rho_k, 0.0)
    state = xp.matrix_transpose(rho_k) @ v
    out = rho_q @ state
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    res = EfficientResiduals(rho_q, rho_k, v, state, keep, normalization, s, dtype, shapes)
    return (xp.astype(out, dtype) if work != dtype else out), res


def efficient_backward(res: EfficientResiduals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`efficient_forward`: ``Grads(dq, dk, dv)``."""
    xp = namespace(res.rho_q, res.rho_k, res.v)
    work = res.rho_q.dtype
    dout = xp.astype(dout, work) if dout.dtype != work else dout
    m = res.rho_k.shape[-2]
    dstate = xp.matrix_transpose(res.rho_q) @ dout
    drho_q = dout @ xp.matrix_transpose(res.state)
    drho_k = res.v @ xp.matrix_transpose(dstate)
    dv = res.rho_k @ dstate
    if res.normalization == "softmax":
        dqs = softmax_axis_backward(xp, res.rho_q, drho_q, -1)
        dk = softmax_axis_backward(xp, res.rho_k, drho_k, -2) if m else drho_k
    else:
        c = 1.0 / math.sqrt(m) if m else 1.0
        dqs = drho_q * c
        dk = drho_k * c
        if res.keep is not None:
            dk = xp.where(res.keep[..., None], dk, 0.0)
    dq = dqs * res.scale if res.scale != 1.0 else dqs
    grads = [unbroadcast(xp, g, shape) for g, shape in zip((dq, dk, dv), res.shapes)]
    return Grads(*(xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in grads))


def efficient_cost(n: int, m: int, d: int, dv: int, *, batch: int = 1, normalization: str = "softmax",
                   scale: float | None = None) -> Cost:
    """Closed-form forward cost of :func:`efficient_attention` (exact FLOPs and transcendentals).

    Per batch element: ``n d`` for ``s q`` when ``s != 1``; softmax normalisation: the softmax over
    ``n d`` elements in ``n`` rows (``4 n d - 2 n`` flops, ``n d`` exp) and over ``m d`` elements in
    ``d`` columns (``4 m d - 2 d``, ``m d`` exp); scaling normalisation: ``n d + m d`` multiplies;
    then ``2 m d dv`` (``rho_k^T V``) and ``2 n d dv`` (``rho_q S``). This is the survey's
    ``O(d^2 n)`` (with ``dv = d``, ``n = m``).
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_int("batch", batch, minimum=1)
    flops = n * d if _linear_scale(scale, d) != 1.0 else 0
    trans = 0
    if normalization == "softmax":
        fq, tq = softmax_axis_flops(n * d, n)
        fk, tk = softmax_axis_flops(m * d, d) if m else (0, 0)
        flops += fq + fk
        trans += tq + tk
    else:
        flops += n * d + m * d
    flops += 2 * m * d * dv + 2 * n * d * dv
    from ..cost import Cost

    return Cost(flops=batch * flops, transcendentals=batch * trans)


def _efficient_closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward:
        return None
    return efficient_cost(s["n"], s["m"], s["d"], s["dv"], batch=math.prod(s["batch"]),
                          normalization=opts.get("normalization", "softmax"), scale=opts.get("scale"))


@declare(Method(
    efficient_forward, efficient_backward, name="efficient",
    summary="efficient attention rho_q(Q) (rho_k(K)^T V) (Shen et al. 2021)",
    masks=("none", "key_lengths"), cost=_efficient_closed_cost,
    error_model="refattn._oracle:efficient_error_bound"))
def efficient_attention(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: bool | str = False,
                        scale: float | None = None, key_lengths: Any = None, normalization: str = "softmax",
                        check_finite: bool = True) -> Any:
    r"""Efficient attention ``rho_q(sQ) (rho_k(K)^T V)`` (Shen et al., WACV 2021).

    Not an approximation of softmax attention (see the module docstring); the implied attention
    matrix ``rho_q(sQ) rho_k(K)^T`` has rows summing to 1.

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
    mask : boolean array ``(..., 1, m)``, optional
        Key padding only; per-query and additive masks raise ``ValueError``.
    causal : must be False
        ``rho_k`` normalises over the whole sequence: a causal form is rejected with ``ValueError``.
    scale : float, optional
        Multiplies ``q`` before ``rho_q``; ``None`` = 1 (Shen et al. use no scale).
    key_lengths : integer array, optional
    normalization : {"softmax", "scaling"}
        ``"softmax"``: ``rho_q`` softmax over features, ``rho_k`` softmax over positions;
        ``"scaling"``: ``rho(Y) = Y / sqrt(m)``, giving exactly ``(s Q K^T / m) V``, ``m`` the
        number of key positions ``k.shape[-2]`` (padded keys included; they get ``rho_k = 0``).
    check_finite : bool
        ``True`` (default): reject NaN/inf in q, k, v with ``ValueError`` naming the argument;
        ``False`` skips that pass (non-finite values then propagate).

    Returns
    -------
    out : array ``(..., n, dv)``.

    References
    ----------
    Shen, Zhang, Zhao, Yi, Li, "Efficient Attention: Attention with Linear Complexities"
    (arXiv 1812.01243); survey 001, sec. 2.2.
    """
    return efficient_forward(q, k, v, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                             normalization=normalization, check_finite=check_finite)[0]
