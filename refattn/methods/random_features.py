r"""Random-feature attention: RFA (random Fourier sin/cos features) and Performer FAVOR+ (positive and
hyperbolic features, iid or orthogonal projections), with hand-written backward passes.

Feature maps (public, each with its own vjp)
--------------------------------------------
For ``x (..., n, d)`` and a projection ``W (..., D, d)`` with rows ``w_l`` (``u = x W^T``):

.. math::

    \phi_{trig}(x) &= D^{-1/2}\,[\sin(u_1), \dots, \sin(u_D), \cos(u_1), \dots, \cos(u_D)]
        \qquad (2D \text{ outputs; RFA, Peng et al. 2021; Rahimi \& Recht 2007})\\
    \phi_{+}(x) &= D^{-1/2}\,\exp(u - \lVert x\rVert^2/2)
        \qquad (D \text{ outputs; FAVOR+, Choromanski et al. 2021, Lemma 1})\\
    \phi_{hyp+}(x) &= (2D)^{-1/2}\,[\exp(u - \lVert x\rVert^2/2), \exp(-u - \lVert x\rVert^2/2)]
        \qquad (2D \text{ outputs; Lemma 1, } SM^{hyp+})

With ``w_l ~ N(0, I_d)``: ``E[phi_+(x) . phi_+(y)] = E[phi_hyp+(x) . phi_hyp+(y)] = exp(x . y)`` and
``E[phi_trig(x) . phi_trig(y)] = exp(-|x - y|^2 / 2)`` (the Gaussian kernel), so
``exp(|x|^2/2 + |y|^2/2) phi_trig(x) . phi_trig(y)`` is the trigonometric estimator of ``exp(x . y)``.

**Stabilised exponential features** (``max_shift="row"`` or ``"all"``; the former name
``stabilize=`` still works with a ``DeprecationWarning``): the exponent ``t = u - |x|^2/2`` (for hyp+
both halves) is shifted by its maximum ``c`` over the last axis (``"row"``: one ``c`` per row
``x_i``) or over the last two axes (``"all"``: one ``c`` per batch element), so the map returns
exactly ``phi(x) * exp(-c)`` and every exponent is ``<= 0`` (no overflow; the largest entry is
exactly the map's coefficient: ``D^{-1/2}`` for positive features, ``(2D)^{-1/2}`` for hyperbolic
features, whose ``2D`` outputs share the coefficient ``(2D)^{-1/2}``). Its backward is the exact derivative of that
function, max included: ``dt = g*phi - s * sum(g*phi)`` over the reduced axes, where ``s`` is the
indicator of the maximising entries divided by their number (exact wherever the maximum is attained
once, which holds almost surely; at ties it averages the one-sided derivatives).

Attention
---------
:func:`random_feature_attention` estimates softmax attention with logit scale ``s``
(``s = 1/sqrt(d)`` by default, ``s = 1/sigma^2`` when RFA's temperature ``sigma`` is given):

.. math::

    \hat q_i = \sqrt{s}\,q_i,\quad \hat k_j = \sqrt{s}\,k_j, \qquad
    \text{out}_i = \frac{\sum_j \phi(\hat q_i)\cdot\phi(\hat k_j)\, r_j\, v_j}
                        {\sum_j \phi(\hat q_i)\cdot\phi(\hat k_j)\, r_j}
                 = \frac{\phi(\hat q_i)^\top \sum_j \phi'(\hat k_j)\, v_j^\top}
                        {\phi(\hat q_i)^\top \sum_j \phi'(\hat k_j)},\qquad \phi'(k) = r\,\phi(k)

(sums over ``j <= i`` when causal). The features are computed here; the normalised assembly is the
shared kernelized core :func:`refattn.methods._kernelized.kernelized_forward` (``eps = 0``, its
``"positive"`` normaliser rule): numerator and denominator are one product with ``[V, 1]``
(causal: one :func:`refattn.methods._prefix.causal_dot` pass).
The key weight ``r_j`` picks the kernel the estimate targets (``kernel=``):

============  ======================================  =========================================
features      ``kernel="softmax"`` (default):          ``kernel="gaussian"``: weights
              weights ``~ exp(s q.k)``                  ``~ exp(-s |q - k|^2 / 2)``
============  ======================================  =========================================
positive/hyp  ``r_j = 1`` (FAVOR+)                     ``r_j = exp(-|k_hat_j|^2 / 2)``
trig          ``r_j = exp(|k_hat_j|^2 / 2)``           ``r_j = 1`` (RFA exactly as written in
              (Performer's ``SM^trig``)                 Peng et al. 2021 and paper 001, sec. 2.4)
============  ======================================  =========================================

The query-side factors ``exp(+-|q_hat_i|^2/2)`` that would complete each kernel are the same for
every key of row ``i`` and cancel exactly between numerator and denominator, so they are dropped.
The key-side factors cancel only when all keys have one norm: with ``normalize=True`` (RFA's
unit-norm option: ``q_i / |q_i|``, ``k_j / |k_j|`` before scaling) the two kernels give the same
attention, ``softmax(s q_unit . k_unit)``; without it RFA-as-written estimates Gaussian-kernel
attention, which differs from softmax attention when key norms differ.

**Stabiliser** (``stabilize=True``, default): ``phi(q_i)`` is divided by ``exp(c_i)``, ``c_i`` the
row maximum of its exponents, and every ``phi'(k_j)`` by one ``exp(c')``, ``c'`` the maximum over
all kept keys and features of the batch element (trig: of ``log r_j``). Each factor multiplies
numerator and denominator of a row alike, so the output is unchanged up to rounding (tested); the
backward treats ``c_i, c'`` as constants, which is exact because the output does not depend on them.
(Performer's code also adds ``eps = 1e-6`` to every feature; refattn does not: it would bias the
kernel, see Choromanski et al.'s ``numerical_stabilizer``.) Without the stabiliser, note that
``exp(w.x - |x|^2/2) <= exp(|w|^2/2)``: positive features cannot overflow unless a row of ``W`` is
longer than ``sqrt(2 log(max float))`` (37.7 in float64); for large ``|x|`` they *underflow* to 0
and the normaliser vanishes (reported as below). Trig's key weight ``exp(|k_hat|^2/2)`` can overflow;
unstabilised exponents above ``log(max float)`` are refused with a ``ValueError`` before ``exp``.

**Normaliser.** Positive and hyperbolic features give a positive denominator (a sum of positive
terms; it can only reach 0 by underflow). Trigonometric features can give a zero or negative
denominator (and then a meaningless output). Every row's denominator is checked: one that is not
positive and finite raises :class:`NonPositiveNormalizerError` (a ``ValueError``) saying how many
rows and why, under the failure policy ``errors="raise"`` (default); ``"warn"`` emits the message as
a ``RuntimeWarning``, ``"ignore"`` says nothing. Those rows then return the fallback
``invalid_rows``: ``"zero"`` (default; zeros with zero gradient) or ``"ratio"`` (the ratio as
computed). The deprecated ``invalid_normalizer="zero"`` is ``errors="ignore"``. Rows that see no key
at all (every key masked) return zeros with zero gradient, as in :mod:`refattn.methods.softmax`.

**Validation and data-dependent checks.** :func:`forward` validates the inputs and resolves every
option once into :class:`Options`; :func:`_forward` assumes both and never validates. Its one
data-dependent step is :func:`_check_data`, before any ``exp``: zero-norm rows with ``normalize``
and, without the stabiliser, exponents whose ``exp`` overflows (the random-feature maximum, one
``max`` read back per exponent array). The normaliser check is the core's
(:func:`refattn.methods._kernelized._check_normalizers`). The feature maps' one data-dependent step
is :func:`_check_exponents` (``max_shift=None`` only).

Backward
--------
The core's backward (:func:`refattn.methods._kernelized.kernelized_backward`): with
``Y = [num, den]`` the assembly output and ``G = [g / den, -delta / den]``,
``delta_i = out_i . g_i`` (``g`` the output cotangent): non-causal ``T = phi'(K)^T [V, 1]``,
``dphi(Q) = G T^T``, ``dT = phi(Q)^T G``, ``dphi'(K) = [V, 1] dT^T``, ``d[V, 1] = phi'(K) dT``;
causal: :func:`refattn.methods._prefix.causal_dot_backward`. Through the features (``t`` an
exponent, ``a`` its row's norm coefficient, e.g. ``t = u - |x|^2/2``): ``dt = dphi * phi``,
``du = dt`` (positive), ``dt_+ - dt_-`` (hyp+), ``dphi_sin * phi_cos - dphi_cos * phi_sin`` (trig);
``dx = du W - x sum_l dt_l`` (each ``+-|x|^2/2`` in an exponent or in ``log r``),
``dW = du^T x`` summed over batch and rows; then ``dq = sqrt(s) dq_hat`` and, with ``normalize``,
``dq = (dq_unit - q_unit (q_unit . dq_unit)) / |q|``.

Choices where the papers leave room (stated plainly)
---------------------------------------------------
- ``W`` is an explicit positional argument (nothing is drawn here); samplers are
  :func:`refattn.random.gaussian_projection` and :func:`refattn.random.orthogonal_projection`.
  RFA's learned per-dimension ``sigma`` vector (``w_l = sigma o w~_l``) is ``W = W~ diag(sigma)``: its
  gradient follows from ``dW`` by the chain rule.
- RFA's temperature: paper 001 writes ``w ~ N(0, sigma^2 I)`` with kernel ``exp(-|x-y|/2 sigma^2)``;
  that pairing is wrong (the square is missing and ``N(0, sigma^2 I)`` gives
  ``exp(-sigma^2 |x-y|^2 / 2)``). refattn uses ``W ~ N(0, I)`` applied to ``x / sigma``, i.e.
  ``w ~ N(0, sigma^-2 I)``, which gives ``exp(-|x-y|^2 / (2 sigma^2))`` and softmax logits
  ``q.k / sigma^2``.
- Causal masking needs ``n == m`` (``"top_left"`` and ``"bottom_right"`` coincide then);
  only key-padding masks (``key_lengths`` or a boolean ``(..., 1, m)`` mask) can be honoured.
- The scale must be positive (it is split as ``sqrt(s)`` onto q and k).

References
----------
Rahimi & Recht, NIPS 2007. Peng et al., "Random Feature Attention", ICLR 2021 (arXiv 2103.02143).
Choromanski et al., "Rethinking Attention with Performers", ICLR 2021 (arXiv 2009.14794), Lemma 1-2,
Theorem 2. Paper 001 (survey), sec. 2.4.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._checks import check_choice, check_flag, check_int, check_real, legacy_policy
from .._masks import key_padding_keep, make_mask
from .._registry import QKV, Array, Function, Method, declare
from .._xp import (
    broadcast_shapes,
    check_float_array,
    check_same_namespace_device,
    compute_dtype,
    device,
    is_lazy,
    namespace,
    resolve_scale,
    to_working,
    unbroadcast,
    validate_qkv,
)
from .._xp import check_finite as _check_finite_array
from .._xp import check_overflow as _xp_check_overflow
from ..cost import Cost
from ._kernelized import (
    EPS_PLACEMENTS,
    CoreOptions,
    KernelizedResiduals,
    kernelized_backward,
    kernelized_flops,
    kernelized_forward,
)
from ._prefix import DEFAULT_CHUNK

__all__ = [
    "random_feature_attention", "forward", "backward", "cost", "Residuals", "Grads",
    "trig_features", "positive_features", "hyperbolic_features",
    "trig_features_forward", "positive_features_forward", "hyperbolic_features_forward",
    "features_backward", "FeatureResiduals", "FeatureGrads",
    "NonPositiveNormalizerError", "FEATURES", "ATTENTION_FEATURES", "KERNELS", "MAX_GRADS", "SHIFTS_OF",
    "PRESETS", "MAX_SHIFTS", "INVALID_ROWS",
]

FEATURES = ("positive", "hyperbolic", "trig")  # the random-feature estimators of exp(q.k) (and their maps)
#: the attention's feature choices: the estimators and performer-pytorch's generalized ReLU kernel
ATTENTION_FEATURES = (*FEATURES, "relu")
KERNELS = ("softmax", "gaussian")
MAX_SHIFTS = (None, "row", "all")  # the feature maps' max_shift choices
INVALID_ROWS = ("zero", "ratio")  # the attention's fallback for rows with an invalid normaliser
#: the gradient through the stabiliser's maxima when they do not cancel (``feature_eps`` or ``eps`` > 0):
#: ``"exact"`` the derivative of the forward pass (default), ``"detached"`` the maxima held constant
#: (performer-pytorch's ``torch.amax(...).detach()``: not the derivative of its own forward)
MAX_GRADS = ("exact", "detached")
#: what the stabiliser maximises: the exponent ``t = +-u - |x|^2/2`` (default, every exponent <= 0) or
#: the projections ``+-u`` alone (performer-pytorch's ``torch.amax(data_dash)``)
SHIFTS_OF = ("exponent", "projection")


class NonPositiveNormalizerError(ValueError):
    """A row's normaliser ``phi(q_i) . sum_j phi'(k_j)`` is not positive and finite."""


# --------------------------------------------------------------------------------------------
# validation shared by the feature maps and the attention
# --------------------------------------------------------------------------------------------

def _check_w(xp: Any, w: Any, *, d: int, dtype: Any, ref_name: str) -> None:
    check_float_array("W", w, xp, ndim_min=2)
    if w.shape[-1] != d:
        msg = (f"W must have shape (..., D, {d}) to match {ref_name}'s last axis d = {d}, "
               f"got {tuple(w.shape)}")
        raise ValueError(msg)
    if w.shape[-2] == 0:
        msg = f"W must have at least one row (D >= 1 random features), got shape {tuple(w.shape)}"
        raise ValueError(msg)
    if w.dtype != dtype:
        msg = f"W must have the dtype of {ref_name} ({dtype}), got {w.dtype}"
        raise TypeError(msg)


def _exp_limit(xp: Any, dtype: Any) -> float:
    return math.log(float(xp.finfo(dtype).max))


def _check_exponents(xp: Any, exponents: list[tuple[Any, str]], fix: str = "stabilize=True") -> None:
    """The one data-dependent step of the unstabilised exponential features: refuse exponents whose
    exp overflows (instead of returning inf/NaN), one ``max`` read back per exponent array.
    Skipped for lazy and traced arrays: an overflowing ``exp`` then gives inf/NaN."""
    for t, what in exponents:
        if math.prod(t.shape) == 0 or is_lazy(t):
            continue
        top = float(xp.max(t))
        lim = _exp_limit(xp, t.dtype)
        if top > lim:
            msg = (f"exp overflows in the {what}: the largest exponent is {top:.6g} > log(max {t.dtype}) "
                   f"= {lim:.6g}; pass {fix} (its shift cancels exactly in the normaliser) or "
                   "reduce the norms of the inputs")
            raise ValueError(msg)


def _sq_half(xp: Any, x: Any) -> Any:
    """``|x|^2 / 2`` over the last axis, keepdims: ``n d`` mults, ``n (d - 1)`` adds, ``n`` mults."""
    return xp.sum(x * x, axis=-1, keepdims=True) * 0.5


# --------------------------------------------------------------------------------------------
# feature maps
# --------------------------------------------------------------------------------------------

class FeatureResiduals(NamedTuple):
    kind: str
    x: Any
    w: Any
    phi: Any  # working dtype
    share: Any  # stabilised: indicator of the maximising exponents / their count; else None
    axes: tuple[int, ...]
    dtype: Any
    shapes: tuple[tuple[int, ...], tuple[int, ...]]


class FeatureGrads(NamedTuple):
    dx: Any
    dw: Any


def _exponent(xp: Any, kind: str, x: Any, w: Any, times: float = 1.0) -> tuple[Any, Any]:
    """``(u, t)``: ``u = x W^T`` and the exponent (positive: ``u - times |x|^2/2``; hyp: both halves
    ``+-u - times |x|^2/2``; trig: ``None``)."""
    u = x @ xp.matrix_transpose(w)
    if kind in ("trig", "relu"):
        return u, None
    base = u if kind == "positive" else xp.concat([u, -u], axis=-1)
    sq = _sq_half(xp, x)
    if times != 1.0:
        sq = sq * times
    return u, base - sq


def _phi(xp: Any, kind: str, u: Any, t: Any, n_freq: int) -> Any:
    """The map from its projections: ``D^-1/2 [sin u, cos u]`` (trig) or ``F^-1/2 exp(t)`` (``F = D``
    positive, ``2D`` hyperbolic; ``t`` the, possibly shifted, exponent)."""
    if kind == "trig":
        a = 1.0 / math.sqrt(n_freq)
        return xp.concat([xp.sin(u) * a, xp.cos(u) * a], axis=-1)
    if kind == "relu":
        return xp.maximum(u, 0.0)
    return xp.exp(t) * (1.0 / math.sqrt(n_freq if kind == "positive" else 2 * n_freq))


def _feature_forward(kind: str, x: Any, w: Any, max_shift: Any, check: Any) -> tuple[Any, FeatureResiduals]:
    """Validate (arrays, ``max_shift``, ``check_finite``), then :func:`_feature_impl`."""
    xp = namespace(x, w)
    check_same_namespace_device({"x": x, "W": w}, xp, "x")
    check_float_array("x", x, xp, ndim_min=2)
    _check_w(xp, w, d=x.shape[-1], dtype=x.dtype, ref_name="x")
    broadcast_shapes(x.shape[:-2], w.shape[:-2], names=("x", "W"))
    max_shift = check_choice(f"max_shift for {kind} features", max_shift,
                             (None,) if kind == "trig" else MAX_SHIFTS)
    if check_flag("check_finite", check):
        _check_finite_array("x", x, xp)
        _check_finite_array("W", w, xp)
    phi, res = _feature_impl(xp, kind, x, w, max_shift)
    if check:  # huge finite x, W: W x (or |x|^2) overflows, cos/exp of inf is NaN
        _xp_check_overflow(xp, phi, f"{kind}_features", "x and W")
    return phi, res


def _feature_impl(xp: Any, kind: str, x: Any, w: Any, max_shift: str | None) -> tuple[Any, FeatureResiduals]:
    """The feature maps' implementation (valid input assumed)."""
    dtype = x.dtype
    shapes = (tuple(x.shape), tuple(w.shape))
    work, (x, w) = to_working(xp, x, w)
    n_freq = w.shape[-2]
    u, t = _exponent(xp, kind, x, w)
    share = None
    axes: tuple[int, ...] = ()
    if kind != "trig":
        if max_shift is None:
            _check_exponents(xp, [(t, f"{kind} features")], fix="max_shift='row' or 'all'")
        elif math.prod(t.shape):
            axes = (-1,) if max_shift == "row" else (-2, -1)
            top = xp.max(t, axis=axes, keepdims=True)
            hit = xp.astype(t == top, t.dtype)
            share = hit / xp.sum(hit, axis=axes, keepdims=True)
            t = t - top
    phi = _phi(xp, kind, u, t, n_freq)
    res = FeatureResiduals(kind, x, w, phi, share, axes, dtype, shapes)
    return (xp.astype(phi, dtype) if work != dtype else phi), res


def _max_shift(max_shift: Any, stabilize: Any) -> Any:
    """``max_shift``, or the deprecated ``stabilize`` (its former name) with a ``DeprecationWarning``."""
    if stabilize is None:
        return max_shift
    if max_shift is not None:
        msg = "give the maximum shift once: max_shift and stabilize were given; use max_shift= alone"
        raise TypeError(msg)
    warnings.warn(f"stabilize={stabilize!r} is deprecated for the feature maps; use max_shift={stabilize!r} "
                  "(stabilize is the attention's True/False flag)", DeprecationWarning, stacklevel=3)
    return stabilize


def features_backward(res: FeatureResiduals, dout: Any, /) -> FeatureGrads:
    """Hand-written backward of the three feature maps: ``FeatureGrads(dx, dW)``."""
    xp = namespace(res.x, dout)
    g = xp.astype(dout, res.phi.dtype) if dout.dtype != res.phi.dtype else dout
    x = res.x
    dx, du = _features_grad(xp, res.kind, x, res.w, res.phi, g, 0.0 if res.kind == "trig" else -1.0,
                            res.share, res.axes)
    dw = xp.matrix_transpose(du) @ x
    grads = (unbroadcast(xp, dx, res.shapes[0]), unbroadcast(xp, dw, res.shapes[1]))
    return FeatureGrads(*(xp.astype(a, res.dtype) if a.dtype != res.dtype else a for a in grads))


def trig_features_forward(x: Any, w: Any, /, *, check_finite: bool = True) -> tuple[Any, FeatureResiduals]:
    """Forward of :func:`trig_features`: ``(phi, FeatureResiduals)``."""
    return _feature_forward("trig", x, w, None, check_finite)


def positive_features_forward(x: Any, w: Any, /, *, max_shift: str | None = None, stabilize: str | None = None,
                              check_finite: bool = True) -> tuple[Any, FeatureResiduals]:
    """Forward of :func:`positive_features`: ``(phi, FeatureResiduals)``."""
    return _feature_forward("positive", x, w, _max_shift(max_shift, stabilize), check_finite)


def hyperbolic_features_forward(x: Any, w: Any, /, *, max_shift: str | None = None, stabilize: str | None = None,
                                check_finite: bool = True) -> tuple[Any, FeatureResiduals]:
    """Forward of :func:`hyperbolic_features`: ``(phi, FeatureResiduals)``."""
    return _feature_forward("hyperbolic", x, w, _max_shift(max_shift, stabilize), check_finite)


_FEATURE_DOC = """

    Parameters
    ----------
    x : array ``(..., n, d)``, real floating.
    W : array ``(..., D, d)``, the projection (rows ``w_l``), same dtype, namespace and device;
        leading dimensions broadcast with ``x``'s.
    {stab}check_finite : bool
        ``True`` (default): reject NaN/inf in ``x`` and ``W`` with a ``ValueError`` naming the
        argument; ``False`` skips that pass (non-finite values then propagate).

    Returns
    -------
    phi : array ``(..., n, {out})`` in ``x``'s dtype (float16 computed in float32).

    Raises
    ------
    TypeError
        Non-floating or mismatched dtypes, arrays of different libraries.
    ValueError
        ``W`` whose last axis is not ``d``, ``D = 0``, batch dimensions that do not broadcast,
        non-finite inputs{overflow}.
    """

_STAB_DOC = """max_shift : {None, "row", "all"}
        ``None``: the plain map. ``"row"`` / ``"all"``: return ``phi(x) exp(-c)``, ``c`` the maximum
        exponent per row / per batch element (see the module docstring); exact derivative.
    stabilize : {None, "row", "all"}
        Deprecated (``DeprecationWarning``): the former name of ``max_shift``.
    """


@declare(Function(trig_features_forward, features_backward))
def trig_features(x: Any, w: Any, /, *, check_finite: bool = True) -> Any:
    return trig_features_forward(x, w, check_finite=check_finite)[0]


@declare(Function(positive_features_forward, features_backward))
def positive_features(x: Any, w: Any, /, *, max_shift: str | None = None, stabilize: str | None = None,
                      check_finite: bool = True) -> Any:
    return positive_features_forward(x, w, max_shift=max_shift, stabilize=stabilize, check_finite=check_finite)[0]


@declare(Function(hyperbolic_features_forward, features_backward))
def hyperbolic_features(x: Any, w: Any, /, *, max_shift: str | None = None, stabilize: str | None = None,
                        check_finite: bool = True) -> Any:
    return hyperbolic_features_forward(x, w, max_shift=max_shift, stabilize=stabilize,
                                       check_finite=check_finite)[0]


trig_features.__doc__ = (
    r"""Trigonometric random features ``phi(x) = D^-1/2 [sin(x W^T), cos(x W^T)]`` (RFA; Rahimi & Recht).

    ``E_W[phi(x) . phi(y)] = exp(-|x - y|^2 / 2)`` for ``W`` with iid ``N(0, 1)`` entries."""
    + _FEATURE_DOC.format(stab="", out="2D", overflow=""))
positive_features.__doc__ = (
    r"""Positive random features ``phi(x) = D^-1/2 exp(x W^T - |x|^2 / 2)`` (FAVOR+, Performer Lemma 1).

    ``E_W[phi(x) . phi(y)] = exp(x . y)`` for ``W`` with ``N(0, I)`` rows (iid, or orthogonal with
    chi-distributed norms)."""
    + _FEATURE_DOC.format(stab=_STAB_DOC, out="D",
                          overflow=", an exponent that overflows exp when ``max_shift=None``"))
hyperbolic_features.__doc__ = (
    r"""Hyperbolic positive features ``phi(x) = (2D)^-1/2 [exp(u - |x|^2/2), exp(-u - |x|^2/2)]``,
    ``u = x W^T`` (Performer Lemma 1, ``SM^hyp+``): ``E[phi(x) . phi(y)] = exp(x . y)``."""
    + _FEATURE_DOC.format(stab=_STAB_DOC, out="2D",
                          overflow=", an exponent that overflows exp when ``max_shift=None``"))


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------

class Residuals(NamedTuple):
    """What the backward pass needs (working precision)."""

    core: KernelizedResiduals  # the normalised assembly (refattn.methods._kernelized)
    q: Any
    k: Any
    w: Any
    qn: Any  # |q_i| (normalize) or None
    kn: Any
    qu: Any  # q_i / |q_i| (normalize) or q
    ku: Any
    xq: Any  # sqrt(s) * q_unit
    xk: Any
    phi_q: Any  # (..., n, F), stabilised
    phi_k: Any  # (..., m, F), key weights applied (key padding: in the core)
    features: str
    kernel: str
    normalize: bool
    root_s: float
    dtype: Any
    shapes: tuple[tuple[int, ...], ...]
    phi_q_exp: Any = None  # the features without feature_eps (None: phi_q itself)
    phi_k_exp: Any = None
    share_q: Any = None  # max_grad="exact" with a non-cancelling shift: indicator of the maxima / count
    share_k: Any = None
    shift_of: str = "exponent"

    @property
    def t(self) -> Any:
        """Non-causal state ``phi'(K)^T [V, 1]`` (``(..., F, dv + 1)``); ``None`` when causal."""
        return self.core.state

    @property
    def out(self) -> Any:
        """The output in working precision."""
        return self.core.out

    @property
    def ok(self) -> Any:
        """``(..., n, 1)`` bool: rows whose ratio is returned (not zeroed as invalid or empty)."""
        return self.core.valid[..., None]


class Grads(NamedTuple):
    dq: Any
    dk: Any
    dv: Any
    dw: Any


def _key_log_weight_sign(features: str, kernel: str) -> float:
    """``log r_j = sign * |k_hat_j|^2 / 2``; 0 when no key weight is needed."""
    if features == "trig":
        return 1.0 if kernel == "softmax" else 0.0
    return -1.0 if kernel == "gaussian" else 0.0


def _unit(xp: Any, x: Any) -> tuple[Any, Any, Any]:
    """``(x / |x|, |x|, zero)`` per row; ``zero`` is ``None`` when no row has norm 0, else the
    norms as computed (the zero rows are then divided by 1 and reported by :func:`_check_data`).
    Lazy and traced arrays are not inspected: zero rows are divided by 1 (they stay zero) and
    ``zero`` is ``None`` (not reported)."""
    norm = xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True))
    lazy = is_lazy(norm)
    if not lazy and not bool(xp.any(norm == 0.0)):
        return x / norm, norm, None
    safe = xp.where(norm == 0.0, 1.0, norm)
    return x / safe, safe, None if lazy else norm


def _check_data(xp: Any, opts: Options, zero_rows: list[tuple[Any, str]], exponents: list[tuple[Any, str]]) -> None:
    """The attention's one data-dependent step, before any ``exp``: rows of zero norm with
    ``normalize=True`` (``zero_rows``: the norms of an input that has some), and (without the
    stabiliser) exponents whose ``exp`` overflows. The normaliser check is the kernelized core's
    (:func:`refattn.methods._kernelized._check_normalizers`)."""
    for norm, name in zero_rows:
        count = int(xp.sum(xp.astype(norm == 0.0, xp.int64)))
        msg = f"normalize=True needs rows of {name} with non-zero norm, got {count} zero rows"
        raise ValueError(msg)
    if not opts.stabilize:
        _check_exponents(xp, exponents)


@dataclass(frozen=True)
class Options:
    """The options of :func:`random_feature_attention`, resolved once by :func:`forward`."""

    features: str
    kernel: str
    scale: float  # the logit scale s > 0 (from scale or sigma)
    normalize: bool
    stabilize: bool
    core: CoreOptions  # causal, chunk, eps (and its placement), the "positive" rule, failure policy and fallback
    feature_eps: float = 0.0  # added to every feature after the shift (performer-pytorch: 1e-4 / 1e-3)
    max_grad: str = "exact"  # MAX_GRADS
    shift_of: str = "exponent"  # SHIFTS_OF


def _logit_scale(scale: Any, sigma: Any, d: int) -> float:
    if sigma is not None:
        if scale is not None:
            msg = f"give scale or sigma (scale = 1/sigma^2), not both: got scale={scale!r}, sigma={sigma!r}"
            raise ValueError(msg)
        sigma = check_real("sigma", sigma, minimum=0.0, open_min=True, what="RFA's temperature")
        return 1.0 / sigma ** 2
    s = resolve_scale(scale, d)
    if not s > 0:
        msg = (f"scale must be positive for random-feature attention (it is split as sqrt(scale) "
               f"onto q and k), got {s!r}")
        raise ValueError(msg)
    return s


def _options(d: int, *, features: Any, kernel: Any, causal: Any, scale: Any, sigma: Any, normalize: Any,
             stabilize: Any, errors: Any, invalid_rows: Any, invalid_normalizer: Any, chunk: Any,
             eps: Any = 0.0, eps_placement: Any = "normalizer", feature_eps: Any = 0.0,
             max_grad: Any = "exact", shift_of: Any = "exponent") -> Options:
    features = check_choice("features", features, ATTENTION_FEATURES)
    kernel = check_choice("kernel", kernel, KERNELS)
    eps = check_real("eps", eps, minimum=0.0, what="added to the normaliser")
    eps_placement = check_choice("eps_placement", eps_placement, EPS_PLACEMENTS)
    feature_eps = check_real("feature_eps", feature_eps, minimum=0.0, what="added to every feature")
    max_grad = check_choice("max_grad", max_grad, MAX_GRADS)
    shift_of = check_choice("shift_of", shift_of, SHIFTS_OF)
    if features == "trig" and feature_eps:
        msg = "feature_eps applies to positive, hyperbolic and relu features, not trig (sign-indefinite)"
        raise ValueError(msg)
    if kernel == "gaussian" and (feature_eps or features == "relu"):
        msg = (f"kernel='gaussian' needs features 'positive', 'hyperbolic' or 'trig' and feature_eps = 0, "
               f"got features={features!r}, feature_eps={feature_eps!r}")
        raise ValueError(msg)
    policy = legacy_policy(errors, {"invalid_normalizer": invalid_normalizer},
                           mapping={"invalid_normalizer": {"raise": "raise", "zero": "ignore"}})
    zero = check_choice("invalid_rows", invalid_rows, INVALID_ROWS) == "zero"
    s = _logit_scale(scale, sigma, d)
    stabilize = check_flag("stabilize", stabilize)
    core = CoreOptions(causal=causal, chunk=check_int("chunk", chunk, minimum=1), eps=eps, errors=policy,
                       normalizer="positive", zero_invalid=zero, message=_normalizer_message(features, stabilize),
                       error=NonPositiveNormalizerError, method="random-feature attention",
                       eps_placement=eps_placement)
    return Options(features, kernel, s, check_flag("normalize", normalize), stabilize, core, feature_eps, max_grad,
                   shift_of)


def forward(q: Any, k: Any, v: Any, w: Any, /, *, features: str = "positive", kernel: str = "softmax",
            mask: Any = None, causal: bool | str = False, scale: float | None = None,
            sigma: float | None = None, normalize: bool = False, stabilize: bool = True,
            key_lengths: Any = None, errors: str | None = None, invalid_rows: str = "zero",
            invalid_normalizer: str | None = None, chunk: int = DEFAULT_CHUNK,
            eps: float = 0.0, eps_placement: str = "normalizer", feature_eps: float = 0.0,
            max_grad: str = "exact", shift_of: str = "exponent", check_finite: bool = True) -> tuple[Any, Residuals]:
    """Random-feature attention forward pass: ``(out, Residuals)``. See :func:`random_feature_attention`."""
    xp, batch = validate_qkv(q, k, v, extra={"W": w, "mask": mask, "key_lengths": key_lengths})
    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    _check_w(xp, w, d=d, dtype=q.dtype, ref_name="q")
    batch = broadcast_shapes(batch, w.shape[:-2], names=("q/k/v", "W"))
    opts = _options(d, features=features, kernel=kernel, causal=causal, scale=scale, sigma=sigma,
                    normalize=normalize, stabilize=stabilize, errors=errors, invalid_rows=invalid_rows,
                    invalid_normalizer=invalid_normalizer, chunk=chunk, eps=eps, eps_placement=eps_placement,
                    feature_eps=feature_eps, max_grad=max_grad, shift_of=shift_of)
    if check_flag("check_finite", check_finite):
        for name, a in (("q", q), ("k", k), ("v", v), ("W", w)):
            _check_finite_array(name, a, xp)
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m,
                     batch=batch, dtype=compute_dtype(xp, q.dtype))
    if spec.causal_offset is not None and n != m:
        msg = (f"causal random-feature attention needs as many queries as keys (the prefix-sum form "
               f"pairs query i with keys j <= i), got n = {n}, m = {m}")
        raise ValueError(msg)
    keep = key_padding_keep(xp, spec, device(q), method="random-feature attention")
    return _forward(xp, q, k, v, w, keep, opts)


def _forward(xp: Any, q: Any, k: Any, v: Any, w: Any, keep: Any, opts: Options) -> tuple[Any, Residuals]:
    """The implementation of :func:`forward` (valid input and resolved options assumed)."""
    features, stabilize = opts.features, opts.stabilize
    dtype = q.dtype
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(w.shape))
    work, (q, k, v, w) = to_working(xp, q, k, v, w)
    n_freq = w.shape[-2]
    root_s = math.sqrt(opts.scale)

    qn = kn = None
    qu, ku = q, k
    zero_rows = []
    if opts.normalize:
        qu, qn, zq = _unit(xp, q)
        ku, kn, zk = _unit(xp, k)
        zero_rows = [(z, name) for z, name in ((zq, "q"), (zk, "k")) if z is not None]
    xq, xk = qu * root_s, ku * root_s

    # exponents (stabilised: phi(xq) divided by exp(row max of its exponents), the keys, with
    # r_j = exp(sign |xk|^2 / 2) folded in, by one exp(max) per batch element over the kept keys)
    keep_col = None if keep is None else keep[..., None]
    exp_kind = features in ("positive", "hyperbolic")
    fe = opts.feature_eps
    # the shifts cancel only when nothing is added after them (feature_eps) nor to the normaliser (eps)
    exact_max = exp_kind and stabilize and opts.max_grad == "exact" and (fe != 0.0 or opts.core.eps != 0.0)
    share_q = share_k = None
    of_u = opts.shift_of == "projection"
    uq, tq = _exponent(xp, features, xq, w)
    if exp_kind and stabilize:
        base = _base(xp, features, uq) if of_u else tq
        top = xp.max(base, axis=-1, keepdims=True)
        tq = tq - top
        if exact_max:
            share_q = _share(xp, base == top, (-1,), tq.dtype)
    sign = _key_log_weight_sign(features, opts.kernel)
    uk, tk = _exponent(xp, features, xk, w, times=1.0 - sign)
    if exp_kind and stabilize:
        base = _base(xp, features, uk) if of_u else tk
        shifted = _shift(xp, base, keep_col)
        tk = _shift(xp, base, keep_col, tk) if of_u else shifted
        if exact_max:
            hit = shifted == 0.0
            share_k = _share(xp, hit if keep_col is None else hit & keep_col, (-2, -1), tk.dtype)
    lr = None
    if features == "trig" and sign != 0.0:  # trig's key log-weights
        lr = _sq_half(xp, xk)
        if stabilize:
            lr = _shift(xp, lr, keep_col)
    exponents = ([(tq, "query features"), (tk, "key features")] if exp_kind
                 else [] if lr is None else [(lr, "key weights exp(|k|^2/2)")])
    _check_data(xp, opts, zero_rows, exponents)

    phi_q = _phi(xp, features, uq, tq, n_freq)
    phi_k = _phi(xp, features, uk, tk, n_freq)
    if lr is not None:
        phi_k = phi_k * xp.exp(lr)
    phi_q_exp = phi_k_exp = None
    if fe != 0.0:  # performer-pytorch: ratio * (exp(t - max) + eps); its relu kernel: relu(u) + eps
        coeff = fe * (1.0 if features == "relu" else
                      1.0 / math.sqrt(n_freq if features == "positive" else 2 * n_freq))
        phi_q_exp, phi_k_exp = phi_q, phi_k
        phi_q, phi_k = phi_q + coeff, phi_k + coeff

    out, core = kernelized_forward(phi_q, phi_k, v, opts.core, key_keep=keep)
    res = Residuals(core, q, k, w, qn, kn, qu, ku, xq, xk, phi_q, phi_k, features, opts.kernel, opts.normalize,
                    root_s, dtype, shapes, phi_q_exp, phi_k_exp, share_q, share_k, opts.shift_of)
    return (xp.astype(out, dtype) if work != dtype else out), res


def _base(xp: Any, features: str, u: Any) -> Any:
    """The projections the exponent is built on: ``u`` (positive) or ``[u, -u]`` (hyperbolic)."""
    return u if features == "positive" else xp.concat([u, -u], axis=-1)


def _share(xp: Any, hit: Any, axes: tuple[int, ...], dtype: Any) -> Any:
    """The indicator ``hit`` of the maximising entries divided by their number over ``axes`` (0 where none)."""
    hit = xp.astype(hit, dtype)
    count = xp.sum(hit, axis=axes, keepdims=True)
    return hit / xp.where(count == 0.0, 1.0, count)


def _shift(xp: Any, t: Any, keep_col: Any, target: Any = None) -> Any:
    """``t - max(t)`` over the last two axes (kept keys only); a batch element without kept keys
    (or without keys) is shifted by 0. With ``target``: ``target - max(t)``."""
    if math.prod(t.shape) == 0:
        return t if target is None else target
    tt = t if keep_col is None else xp.where(keep_col, t, -math.inf)
    top = xp.max(tt, axis=(-2, -1), keepdims=True)
    if keep_col is not None:
        top = xp.where(xp.isfinite(top), top, 0.0)
    return (t if target is None else target) - top


def _normalizer_message(features: str, stabilize: bool) -> Any:
    """The core's report wording: how many rows, the smallest finite normaliser, and why."""

    def message(xp: Any, bad: Any, den: Any) -> str:
        bad = xp.broadcast_to(bad, den.shape)
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        total = math.prod(den.shape)
        finite_bad = bad & xp.isfinite(den)
        low = float(xp.min(xp.where(finite_bad, den, math.inf))) if bool(xp.any(finite_bad)) else math.nan
        if features == "trig":
            why = ("trigonometric features do not guarantee a positive normaliser (sin/cos estimates of "
                   "exp(q.k) can be <= 0); use more features D, positive features, or "
                   "errors='ignore' (or 'warn') to return zeros for these rows")
        elif not stabilize:
            why = "exp under/overflowed without the stabiliser; pass stabilize=True"
        else:
            why = ("positive features underflowed to a zero normaliser: the inputs' norms are too large "
                   "for this dtype; rescale q and k")
        return (f"{count} of {total} query rows have a normaliser phi(q_i) . sum_j phi(k_j) that is not "
                f"positive and finite (smallest finite value {low:.3g}): {why}")

    return message


def _features_grad(xp: Any, features: str, x: Any, w: Any, phi: Any, dphi: Any, norm_coeff: float,
                   share: Any = None, axes: tuple[int, ...] = (), of_projection: bool = False) -> tuple[Any, Any]:
    """``(dx, du)`` of ``phi = f(x W^T) * exp(norm_coeff * |x|^2 / 2)``: offsets constant, or (``share``
    given) the exact derivative of the max shift over ``axes`` (the stabilised feature maps), the max
    of the exponent or (``of_projection``, ``shift_of="projection"``) of the projections ``+-u`` alone."""
    n_freq = w.shape[-2]
    if features == "relu":  # phi = relu(u) (+ feature_eps): du = dphi where u > 0 (0 at u = 0, as torch)
        du = xp.where(phi > 0.0, dphi, 0.0)
        return du @ w, du
    if features == "trig":
        s, c = phi[..., :n_freq], phi[..., n_freq:]
        du = dphi[..., :n_freq] * c - dphi[..., n_freq:] * s
        dx = du @ w
        if norm_coeff != 0.0:
            dx = dx + x * (xp.sum(dphi * phi, axis=-1, keepdims=True) * norm_coeff)
        return dx, du
    dt = dphi * phi
    dbase = dt
    if share is not None:
        dbase = dt - share * xp.sum(dt, axis=axes, keepdims=True)
        if not of_projection:
            dt = dbase
    du = dbase if features == "positive" else dbase[..., :n_freq] - dbase[..., n_freq:]
    dx = du @ w + x * (xp.sum(dt, axis=-1, keepdims=True) * norm_coeff)
    return dx, du


def backward(res: Residuals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`forward`: ``Grads(dq, dk, dv, dw)`` (see the module docstring)."""
    xp = namespace(res.q, dout)
    g = xp.astype(dout, res.out.dtype) if dout.dtype != res.out.dtype else dout
    dphi_q, dphi_k, dv = kernelized_backward(res.core, g)

    exp_kind = res.features in ("positive", "hyperbolic")
    sign = _key_log_weight_sign(res.features, res.kernel)
    phi_q = res.phi_q if res.phi_q_exp is None else res.phi_q_exp
    phi_k = res.phi_k if res.phi_k_exp is None else res.phi_k_exp
    dxq, duq = _features_grad(xp, res.features, res.xq, res.w, phi_q, dphi_q,
                              -1.0 if exp_kind else 0.0, res.share_q, (-1,), res.shift_of == "projection")
    dxk, duk = _features_grad(xp, res.features, res.xk, res.w, phi_k, dphi_k,
                              (-1.0 + sign) if exp_kind else sign, res.share_k, (-2, -1),
                              res.shift_of == "projection")
    # dW: each side reduced to W's shape on its own (k may be shared across heads that q is not)
    wshape = res.shapes[3]
    dw = (unbroadcast(xp, xp.matrix_transpose(duq) @ res.xq, wshape)
          + unbroadcast(xp, xp.matrix_transpose(duk) @ res.xk, wshape))
    dq = dxq * res.root_s
    dk = dxk * res.root_s
    if res.normalize:
        dq = _unit_backward(xp, res.qu, res.qn, dq)
        dk = _unit_backward(xp, res.ku, res.kn, dk)
    grads = [unbroadcast(xp, a, shape) for a, shape in zip((dq, dk, dv, dw), res.shapes)]
    return Grads(*(xp.astype(a, res.dtype) if a.dtype != res.dtype else a for a in grads))


def _unit_backward(xp: Any, e: Any, norm: Any, g: Any) -> Any:
    """Adjoint of ``x -> e = x / |x|``: ``(g - e (e . g)) / |x|``."""
    return (g - e * xp.sum(e * g, axis=-1, keepdims=True)) / norm


def _projection(s: Any, opts: Any, rng: Any, backend: Any, dtype: str) -> dict[str, Any]:
    from ..random import gaussian_projection

    return {"W": gaussian_projection(s["D"], s["d"], rng=rng, backend=backend, dtype=dtype)}


def _closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward or opts.get("features") == "relu" or opts.get("feature_eps") or opts.get("eps"):
        return None  # the peer conventions (docs/peer_conventions.md) have only the counted cost
    return cost(s["n"], s["m"], s["d"], s["dv"], s["D"], batch=math.prod(s["batch"]),
                features=opts.get("features", "positive"), kernel=opts.get("kernel", "softmax"),
                causal=opts.get("causal", False), normalize=opts.get("normalize", False),
                stabilize=opts.get("stabilize", True),
                masked=opts.get("mask") is not None or opts.get("key_lengths") is not None,
                chunk=opts.get("chunk", DEFAULT_CHUNK))


#: the conventions of public implementations (docs/peer_conventions.md): the scale is the default
#: 1/sqrt(d) (performer-pytorch's ``d ** -0.25`` on both sides, fast-transformers' ``softmax_temp``);
#: W is the peer's projection (performer-pytorch's ``projection_matrix``, fast-transformers' ``omega.T``)
PRESETS = {
    # performer-pytorch 1.1.4, FastAttention: softmax_kernel (eps=1e-4 after the detached max shift)
    "performer": {"features": "positive", "stabilize": True, "feature_eps": 1e-4, "max_grad": "detached",
                  "shift_of": "projection"},
    # ... causal: its causal_linear_attention(_noncuda): 1 / (q . (k.cumsum(-2) + 1e-6))
    "performer_causal": {"features": "positive", "stabilize": True, "feature_eps": 1e-4, "max_grad": "detached",
                         "shift_of": "projection", "causal": True, "eps": 1e-6, "eps_placement": "prefix"},
    # ... generalized_attention=True: relu(x W^T) + 1e-3
    "performer_generalized": {"features": "relu", "feature_eps": 1e-3},
    "performer_generalized_causal": {"features": "relu", "feature_eps": 1e-3, "causal": True, "eps": 1e-6,
                                     "eps_placement": "prefix"},
    # fast-transformers Favor (stabilize=False, its default) under LinearAttention / CausalLinearAttention
    "fast_transformers_favor": {"features": "hyperbolic", "stabilize": False, "eps": 1e-6},
    "fast_transformers_favor_causal": {"features": "hyperbolic", "stabilize": False, "eps": 1e-6,
                                       "causal": True},
}


def square_if_causal(shape: Any, kind: str) -> Any:
    """Prefix-sum methods pair query ``i`` with keys ``j <= i``: the oracle's shapes take ``m = n``."""
    return shape._replace(m=shape.n) if kind in ("causal", "bottom_right") else shape


@declare(Method(
    forward, backward, name="random_feature",
    summary="random-feature attention: RFA (sin/cos) and Performer FAVOR+ (positive / hyperbolic features)",
    arrays=(*QKV, Array("W", "(..., D, d)", differentiable=True)), sizes={"D": lambda s: 2 * s["d"] + 2},
    params=_projection, masks=("none", "causal", "key_lengths"), cost=_closed_cost,
    error_model="refattn._oracle:random_feature_error_bound", adapt_shape=square_if_causal,
    presets=PRESETS))
def random_feature_attention(q: Any, k: Any, v: Any, w: Any, /, *, features: str = "positive",
                             kernel: str = "softmax", mask: Any = None, causal: bool | str = False,
                             scale: float | None = None, sigma: float | None = None,
                             normalize: bool = False, stabilize: bool = True, key_lengths: Any = None,
                             errors: str | None = None, invalid_rows: str = "zero",
                             invalid_normalizer: str | None = None, chunk: int = DEFAULT_CHUNK,
                             eps: float = 0.0, eps_placement: str = "normalizer", feature_eps: float = 0.0,
                             max_grad: str = "exact", shift_of: str = "exponent", check_finite: bool = True) -> Any:
    r"""Random-feature estimate of softmax attention (Performer FAVOR+ / RFA).

    ``out_i = phi(q_i)^T sum_j phi'(k_j) v_j^T / phi(q_i)^T sum_j phi'(k_j)`` (``j <= i`` when causal),
    with ``q``, ``k`` scaled by ``sqrt(scale)``; see the module docstring for the formulas, the key
    weights of each ``kernel``, the stabiliser and the backward pass.

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
        Real floating, one dtype, namespace and device; leading dimensions broadcast.
    W : array ``(..., D, d)``
        Projection, rows ``w_l`` (``D`` random features; the map has ``D`` or ``2D`` outputs). Draw it
        with :func:`refattn.random.gaussian_projection` or :func:`refattn.random.orthogonal_projection`
        (rows ``~ N(0, I_d)`` for an unbiased kernel estimate). A gradient is returned for it.
    features : {"positive", "hyperbolic", "trig", "relu"}
        FAVOR+ ``exp(Wx - |x|^2/2)``, its hyperbolic ``exp(+-Wx - |x|^2/2)`` form, RFA's sin/cos, or
        performer-pytorch's "generalized kernel" ``relu(Wx)`` (not an estimate of softmax: a kernel of
        its own, like linear attention; ``kernel="softmax"`` only).
    kernel : {"softmax", "gaussian"}
        What the weights estimate: ``exp(s q.k)`` or ``exp(-s|q - k|^2/2)`` (RFA as written uses
        ``features="trig", kernel="gaussian"``; with ``normalize=True`` both give softmax attention).
    mask : boolean array ``(..., 1, m)``, optional
        Key-padding mask (``True`` = keep). Masks that differ between queries cannot be honoured.
    causal : bool or {"top_left", "bottom_right"}
        Prefix-sum form (query ``i`` sees keys ``j <= i``); needs ``n == m``.
    scale : float, optional
        Logit scale ``s > 0``; ``1/sqrt(d)`` by default.
    sigma : float, optional
        RFA's temperature: ``scale = 1 / sigma^2`` (give one of ``scale`` and ``sigma``).
    normalize : bool
        RFA's unit-norm option: use ``q_i/|q_i|`` and ``k_j/|k_j|`` (zero rows are an error).
    stabilize : bool
        ``True`` or ``False`` only (the feature maps' per-row/per-batch choice is their ``max_shift``).
        Shift the exponents by their maxima (per query row; per batch element for the keys). The
        shifts cancel exactly between numerator and denominator. Without it, large norms make the
        positive features *underflow* (``w.x - |x|^2/2 -> -inf`` for ``|w| < sqrt(2 log max)``, i.e.
        any ``N(0, I)`` row in practice): every normaliser becomes 0 and
        :class:`NonPositiveNormalizerError` is raised; an exponent that would *overflow* (trig's key
        weight ``exp(|k_hat|^2/2)``, or rows ``|w| > 37.7`` in float64) is a ``ValueError``. Both
        messages name ``stabilize=True`` as the fix.
    key_lengths : integer array, optional
        Per batch element number of valid keys.
    errors : {"raise", "warn", "ignore"}, optional
        The failure policy for rows whose normaliser is not positive and finite (possible with trig
        features, or by under/overflow): raise :class:`NonPositiveNormalizerError`, emit a
        ``RuntimeWarning``, or nothing; ``None`` (default) means ``"raise"``. Rows that see no key
        are never reported.
    invalid_rows : {"zero", "ratio"}
        The fallback for those rows when ``errors`` is not ``"raise"``: ``"zero"`` (default) returns
        zeros with zero gradient; ``"ratio"`` returns the ratio as computed (a zero normaliser still
        gives zeros).
    invalid_normalizer : {"raise", "zero"}, optional
        Deprecated (``DeprecationWarning``): ``"raise"`` is ``errors="raise"``, ``"zero"`` is
        ``errors="ignore"`` (with the default ``invalid_rows="zero"``).
    chunk : int
        Row-chunk of the causal prefix sum (:func:`refattn.methods._prefix.causal_dot`).
    eps : float
        Added to the normaliser (default 0, the paper's formula; fast-transformers' linear attention
        adds ``1e-6``, performer-pytorch's causal path ``1e-6`` per key-sum component).
    eps_placement : {"normalizer", "prefix"}
        ``phi(q_i) . z_i + eps`` (fast-transformers) or ``phi(q_i) . (z_i + eps 1)`` (performer-pytorch's
        ``k.cumsum(dim=-2) + eps``).
    feature_eps : float
        Added to every feature after the stabiliser's shift (default 0): performer-pytorch's
        ``ratio * (exp(t - max) + 1e-4)`` and ``relu(u) + 1e-3``. It biases the kernel estimate and,
        with ``stabilize=True``, the shift then no longer cancels (the output depends on it).
    max_grad : {"exact", "detached"}
        When the shift does not cancel (``feature_eps`` or ``eps`` non-zero, ``stabilize=True``):
        ``"exact"`` (default) differentiates through the maxima (the derivative of the forward
        pass, indicator of the maximising entries over their count at ties); ``"detached"`` holds
        them constant, as performer-pytorch's ``torch.amax(...).detach()`` does, which is *not* the
        derivative of its forward pass. No effect when the shift cancels.
    shift_of : {"exponent", "projection"}
        What the stabiliser maximises: the exponent ``+-u - |x|^2/2`` (default: every exponent is then
        ``<= 0``) or the projections ``+-u`` alone (performer-pytorch's ``torch.amax(data_dash)``;
        exponents are still ``<= -|x|^2/2 <= 0``). Matters only when the shift does not cancel.
    check_finite : bool
        ``True`` (default): reject NaN/inf in ``q``, ``k``, ``v``, ``W`` with ``ValueError`` naming
        the argument; ``False`` skips that pass (an unchecked NaN then reaches the normaliser check).

    Returns
    -------
    out : array ``(..., n, dv)`` in the inputs' dtype (float16 computed in float32). Rows that see no
    key are zero.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes, arrays from different libraries.
    ValueError
        ``W`` of the wrong shape or ``D = 0``, shapes that do not broadcast, non-finite inputs, a
        non-positive scale or sigma, both scale and sigma, unsupported masks, causal with ``n != m``,
        zero rows with ``normalize``, exponent overflow without the stabiliser, unknown options.
    NonPositiveNormalizerError
        A row's normaliser is not positive and finite (``errors="raise"``).

    References
    ----------
    Choromanski et al. 2021 (arXiv 2009.14794); Peng et al. 2021 (arXiv 2103.02143).
    """
    return forward(q, k, v, w, features=features, kernel=kernel, mask=mask, causal=causal, scale=scale,
                   sigma=sigma, normalize=normalize, stabilize=stabilize, key_lengths=key_lengths,
                   errors=errors, invalid_rows=invalid_rows, invalid_normalizer=invalid_normalizer, chunk=chunk,
                   eps=eps, eps_placement=eps_placement, feature_eps=feature_eps, max_grad=max_grad,
                   shift_of=shift_of, check_finite=check_finite)[0]


def cost(n: int, m: int, d: int, dv: int, n_features: int, /, *, batch: int = 1,
         features: str = "positive", kernel: str = "softmax", causal: bool = False,
         normalize: bool = False, stabilize: bool = True, masked: bool = False,
         chunk: int = DEFAULT_CHUNK) -> Cost:
    r"""Closed-form FLOPs and transcendentals of :func:`random_feature_attention`'s forward pass.

    Counts exactly what :func:`forward` executes (conventions of :mod:`refattn.cost`), for ``batch``
    batch elements with every one of ``q``, ``k``, ``v`` carrying the full batch, ``W`` of shape
    ``(D, d)`` (``D = n_features``), no NaN (validation passes count nothing). With ``F = D``
    (positive) or ``2D`` (hyperbolic, trig) feature outputs, the leading terms are

    - features: ``2 (n + m) d D`` (the projections ``x W^T``) plus ``O((n + m)(d + F))``;
      transcendentals ``(n + m) F`` (``exp``; ``sin`` and ``cos`` for trig) ``+ m`` (trig's key weight);
    - non-causal assembly: ``2 (n + m) F (dv + 1)`` (``phi(K)^T [V, 1]`` then ``phi(Q) (...)``);
    - causal assembly (:func:`causal_dot`, chunks of ``c`` rows): per chunk
      ``2 c^2 F + 2 c^2 (dv + 1) + 4 c F (dv + 1) + c (dv + 1) + F (dv + 1)``;
    - then ``n`` (the core's ``+ eps``, here ``eps = 0``) ``+ n dv`` (the division)
      (:func:`refattn.methods._kernelized.kernelized_flops`).

    So the time is ``O(n D (d + dv))`` for fixed ``D`` (paper 001's table says ``O(nd)``: true for
    fixed ``D`` and ``dv = d`` up to the factor ``D``) and the state ``sum_j phi(k_j) v_j^T``,
    ``sum_j phi(k_j)`` holds ``F (dv + 1)`` numbers. ``masked`` means a key-padding mask or
    ``key_lengths`` was given.
    """
    for name, val in (("n", n), ("m", m), ("d", d), ("dv", dv)):
        check_int(name, val, minimum=0)
    check_int("n_features", n_features, minimum=1)
    check_int("batch", batch, minimum=1)
    check_int("chunk", chunk, minimum=1)
    check_choice("features", features, FEATURES)
    check_choice("kernel", kernel, KERNELS)
    if causal and n != m:
        msg = f"causal random-feature attention needs n == m, got n = {n}, m = {m}"
        raise ValueError(msg)
    n_freq = n_features
    f = n_freq if features == "positive" else 2 * n_freq
    sq_half = lambda r: r * d + r * (d - 1) + r  # noqa: E731  x*x, sum, *0.5
    per = 0  # flops per batch element
    glob = 0  # flops of whole-array reductions (N - 1)
    tr = 0
    if normalize:
        for r in (n, m):
            per += r * d + r * (d - 1) + r * d
            tr += r
    per += (n + m) * d  # sqrt(s) scaling
    per += 2 * (n + m) * d * n_freq  # x W^T
    sign = _key_log_weight_sign(features, kernel)
    # queries
    if features == "trig":
        per += 2 * n * n_freq
        tr += 2 * n * n_freq
    else:
        per += sq_half(n) + (n * n_freq if features == "hyperbolic" else 0) + n * f
        if stabilize:
            per += n * (f - 1) + n * f
        elif n * f:
            glob += batch * n * f - 1
        tr += n * f
        per += n * f
    # keys
    if features == "trig":
        per += 2 * m * n_freq
        tr += 2 * m * n_freq
        if sign != 0.0:
            per += sq_half(m)
            if stabilize:
                per += (m - 1 + m) if m else 0
            elif m:
                glob += batch * m - 1
            tr += m
            per += m * f
    else:
        per += sq_half(m) + (m if sign != 0.0 else 0) + (m * n_freq if features == "hyperbolic" else 0) + m * f
        if stabilize:
            per += (m * f - 1 + m * f) if m else 0
        elif m:
            glob += batch * m * f - 1
        tr += m * f
        per += m * f
    # assembly (refattn.methods._kernelized with eps = 0: its add still counts n; the search for the
    # first kept key of the empty rows is an integer min, 0 flops)
    per += kernelized_flops(n, m, f, dv, causal=causal, chunk=chunk)
    return Cost(flops=batch * per + glob, transcendentals=batch * tr)
