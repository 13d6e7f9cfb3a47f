r"""Nystromformer attention (Xiong et al., AAAI 2021, arXiv 2102.03902): landmarks, the iterative and
the exact pseudoinverse, the depthwise-convolution skip, all with hand-written backward passes.

.. math::

    F = \operatorname{softmax}(s\,Q\tilde K^\top),\quad
    A = \operatorname{softmax}(s\,\tilde Q\tilde K^\top),\quad
    B = \operatorname{softmax}(s\,\tilde Q K^\top + \text{key mask}),\qquad
    \text{out} = F\,Z\,(B V)\;[\,+\;\text{conv}_w(V)\,]

with ``Z = A^+`` (``pinv="exact"``) or the ``J``-th iterate of the Razavi et al. (2014) scheme
(``pinv="iterative"``, the paper's practice, ``J = 6`` by default):

.. math::

    Z_0 = A^\top / (\lVert A\rVert_1 \lVert A\rVert_\infty),\qquad
    Z_{j+1} = \tfrac14 Z_j\,(13 I - A Z_j (15 I - A Z_j (7 I - A Z_j))),

``||A||_1`` the maximum absolute column sum and ``||A||_inf`` the maximum absolute row sum (the
paper's eq. for Z_0 after Pan & Schreiber 1991; for a softmax matrix ``||A||_inf = 1``). Shapes:
``q (..., n, d)``, ``k (..., mk, d)``, ``v (..., mk, dv)`` -> ``out (..., n, dv)``; ``m`` landmarks
``Q~, K~ (..., m, d)``; leading dimensions broadcast. ``s = 1/sqrt(d)`` by default. The product is
evaluated right to left, ``F (Z (B V))``: ``2 m mk dv + 2 m^2 dv + 2 n m dv`` flops instead of the
paper code's ``(F Z)(B V)`` with its ``2 n m^2``; the value is the same.

Landmarks (readings and choices)
--------------------------------
*Segment means* (the paper's eq. 16, default): the sequence is cut into ``m`` contiguous segments and
each landmark is the mean of its segment. Eq. 16 **as printed** sums ``m`` terms from ``(j-1)l + 1``
to ``(j-1)l + m`` and divides by ``m``; that is a typo for the ``l = n/m`` terms of segment ``j``
divided by ``l`` (the two agree only when ``l = m``; see ``verification/nystrom.py``, claim
nys-eq16). refattn implements the intended segment mean. When ``m`` does not divide ``n`` the paper
says to pad; refattn instead uses the balanced split (the one ``numpy.array_split`` makes): with
``n = l m + r``, ``0 <= r < m``, the first ``r`` segments hold ``l + 1`` rows and the other ``m - r``
hold ``l`` rows, so every landmark is the exact mean of real rows and no padding value leaks in
(zero padding divided by the padded length, as the paper code would do, biases the last landmark
towards 0). Query landmarks are cut from ``q`` (length ``n``), key landmarks from ``k`` (length
``mk``), so cross-attention (``n != mk``) works; ``1 <= m <= min(n, mk)``.

*Explicit landmarks*: pass ``q_landmarks (..., m, d)`` and ``k_landmarks (..., m, d)`` as the first
two positional parameters (any ``m >= 1``); their gradients are returned.

Masks
-----
Only key-padding masks (a boolean mask of shape ``(..., 1, mk)``, or ``key_lengths``) can be
honoured: the method never forms the ``(n, mk)`` matrix, so a mask that differs between queries, or
an additive mask, raises ``ValueError`` (via :func:`refattn._masks.key_padding_keep`). A masked key
(i) gets weight 0 in ``B`` and (ii) is left out of the key landmarks: with ``L`` kept keys, the
segment means are taken over the kept keys in their order, split into ``m`` balanced segments as
above. Hence, for every batch element, the result equals the unmasked result on the sequence with
the masked keys (and values) removed (tested), except for the convolution skip, which acts on
positions and sees masked values as zeros (as the paper code does). ``L < m`` for some batch element
raises ``ValueError`` (no ``m`` segments can be formed). With explicit landmarks only (i) applies;
a batch element with no kept key then gives ``B = 0``, so its output is zero (plus the skip) with
zero gradients, never NaN. Queries are never masked (refattn's masks act on keys): padded query
rows still enter the query landmarks; pass explicit landmarks to exclude them. ``causal=True`` is
rejected: the landmarks average over the whole sequence, so the method has no causal form.

Convolution skip
----------------
With ``conv_kernel_size=K`` (odd) the last positional parameter is the weight ``w (..., K, c)``,
``c`` in ``{1, dv}`` (``c = 1``: one filter per head, the paper code's ``Conv2d(groups=heads)``;
``c = dv``: one per feature), and ``out_i += sum_t w_t * v_{i + t - K//2}`` (cross-correlation, zero
padding, as ``torch.nn.functional.conv1d``), with masked values zeroed. It needs ``n == mk``.

Backward
--------
With ``G = dout``, ``W = Z U``, ``U = B V``: ``dF = G W^T``, ``dW = F^T G``, ``dZ = dW U^T``,
``dU = Z^T dW``, ``dB = dU V^T``, ``dV = B^T dU`` (+ the skip's ``sum_t w_t G_{j + K//2 - t}``); each
softmax ``P = softmax(S)`` pulls back as ``dS = P * (dP - rowsum(dP * P))``; then
``dQ = s dS_F K~``, ``dK~ = s dS_F^T Q + s dS_A^T Q~``, ``dQ~ = s dS_A K~ + s dS_B K``,
``dK = s dS_B^T Q~``, and the segment means pull back by spreading ``dQ~_j / l_j`` over segment ``j``.
``dw_t = sum_i G_i * v_{i + t - K//2}`` (summed over features when ``c = 1``).

*Exact pseudoinverse* (Golub & Pereyra 1973, differential of ``A^+`` at constant rank):
``dZ = -Z dA Z + Z Z^T dA^T (I - A Z) + (I - Z A) dA^T Z^T Z``, whose adjoint is

.. math::

    \bar A = -Z^\top \bar Z Z^\top + (I - A Z)\,\bar Z^\top Z Z^\top + Z^\top Z\,\bar Z^\top (I - Z A).

It is the derivative of the function computed only where the numerical rank (singular values above
``rtol * s_max``) is locally constant; at a rank change the pseudoinverse is discontinuous.

*Iterative pseudoinverse*: a reverse sweep over the iterations. The forward pass keeps the iterates
``Z_0 .. Z_{J-1}`` (``J m^2`` numbers per batch element: the memory price of the backward pass); the
backward pass recomputes ``X = A Z_j``, ``T1 = 7I - X``, ``T2 = 15I - X T1``, ``T3 = 13I - X T2``
(3 matmuls) and pulls ``Zbar_{j+1}`` back through ``Z_{j+1} = T3``-weighted ``Z_j / 4`` (8 matmuls):
``Zbar_j = Zbar_{j+1} T3^T / 4 + A^T Xbar``, ``Abar += Xbar Z_j^T`` with ``T3bar = Z_j^T Zbar_{j+1} / 4``,
``Xbar = -T3bar T2^T - T2bar T1^T - T1bar``, ``T2bar = -X^T T3bar``, ``T1bar = -X^T T2bar``. Finally
``Z_0 = alpha A^T`` gives ``Abar += alpha Zbar_0^T`` and, through ``alpha = 1/(c r)``
(``c`` the max absolute column sum, ``r`` the max absolute row sum),
``alphabar = <Zbar_0, A^T>``, ``Abar[:, j*] += -alphabar alpha/c sign(A[:, j*])`` and
``Abar[i*, :] += -alphabar alpha/r sign(A[i*, :])`` for the maximising column ``j*`` and row ``i*``
(at ties the first one: a subgradient). For a softmax ``A`` the row term adds a constant to a row
of the cotangent, which the softmax pullback annihilates.

Convergence and its failure (see ``iterative_pinv``)
----------------------------------------------------
With ``E_j = I - A Z_j`` the iteration satisfies ``E_{j+1} = E_j^3 (3 I + E_j) / 4`` exactly (third
order, asymptotic constant 3/4). With the paper's ``Z_0 = alpha A^T`` every iterate is
``A^T p_j(A A^T)``; a singular value ``s`` of ``A`` carries the residual ``e_0 = 1 - alpha s^2`` in
``[0, 1)`` (``s_max^2 <= ||A||_1 ||A||_inf``) and ``e <- e^3 (3 + e) / 4``, so ``Z_j -> A^+`` for any
``A`` (singular too) in exact arithmetic, but a small ``alpha s^2`` needs about
``log_{13/4}(1 / (alpha s^2))`` steps before the fast phase: after ``J`` steps, ``Z_J`` is ``A^+``
with the singular values below roughly ``(alpha (13/4)^J)^{-1/2}`` not yet inverted. Detection,
done on the residual ``r_j = ||I - A Z_j||_F``, which never increases in exact arithmetic:

- *divergence* (a non-finite iterate, or ``r_J^2 > r_0^2 (1 + tau) + tau`` with
  ``tau = sqrt(eps)`` of the working dtype, ~1.5e-8 in float64; real divergence multiplies the
  residual by up to 13/4 per step and crosses it at once) is reported as
  :class:`PinvConvergenceError` (``errors="raise"``, default) or
  :class:`PinvConvergenceWarning` (``"warn"``); ``"ignore"`` skips the check and its cost
  (``on_divergence=`` is the deprecated name of ``errors=``);
- *non-convergence* (``r_J / sqrt(m) > pinv_tol``) raises :class:`PinvConvergenceError` only when
  ``pinv_tol`` is given: the method as published uses a fixed ``J`` and is defined by it.

Not detected: for a singular ``A`` run for many iterations (~25 and more) rounding components of ``Z``
in ``null(A) x null(A^T)`` grow by 13/4 per step while staying invisible to ``I - A Z``; harmless at
the default 6 iterations (measured in the tests); use ``pinv="exact"`` for singular landmark matrices.

Cost (closed form, :func:`cost`): ``O(n m (d + dv) + mk m (d + dv) + J m^3)`` flops and
``O((n + mk) m)`` extra memory: linear in ``n`` at fixed ``m``.

Validation and the data-dependent step
--------------------------------------
:func:`forward` (and with it :func:`nystrom_attention`) validates once: the arrays (with
``check_finite=True``, the default, their finiteness too), the mask (including the number of kept keys
per batch element, which segment-means landmarks need), and every option, resolved into one frozen
:class:`Options` (the pseudoinverse's into :class:`PinvOptions`, which :func:`cost` resolves the same
way). The implementation ``_forward``, the pseudoinverse helpers and :func:`backward` assume valid
input and never validate. The one data-dependent step of the implementation is
:func:`_check_divergence` (divergence and, with ``pinv_tol``, convergence of the iterative
pseudoinverse), called from one place and only when the policy asks for it (``errors != "ignore"`` or
``pinv_tol`` given), so that a lazy or traced array library can skip or defer it.

References
----------
Xiong et al. 2021, Nystromformer, arXiv 2102.03902 (eqs. 13-17, Lemma 1, the authors' code);
Razavi, Kerayechian, Gachpazan & Shateyi 2014, Abstract and Applied Analysis (the iteration);
Pan & Schreiber 1991 (the initialisation); Golub & Pereyra 1973 (the pseudoinverse's differential).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import cost as _cost_module
from .._checks import ERRORS, check_choice, check_flag, check_int, check_real, legacy_policy, report
from .._masks import key_padding_keep, make_mask
from .._primitives import exp_consuming, linalg, one_block
from .._registry import Function, Method, declare
from .._xp import (
    broadcasts_to,
    check_float_array,
    check_overflow,
    compute_dtype,
    device,
    is_lazy,
    namespace,
    resolve_scale,
    unbroadcast,
    validate_qkv,
)
from .._xp import check_finite as check_finite_array
from ..cost import Cost

__all__ = [
    "nystrom_attention", "forward", "backward", "cost", "Residuals", "Grads", "GradsLandmarks", "GradsConv",
    "GradsLandmarksConv",
    "iterative_pinv", "exact_pinv", "pinv_iterates", "PinvGrads",
    "PinvConvergenceError", "PinvConvergenceWarning",
    "segment_bounds", "segment_means", "exact_pinv_flops",
    "PINV_MODES", "PINV_INITS", "SEGMENTS", "PRESETS", "ON_DIVERGENCE", "DEFAULT_ITERATIONS",
]

PINV_MODES = ("iterative", "exact")
#: the maxima of Z_0's scale: per landmark matrix (the paper, default) or over the whole batch, every
#: head included (lucidrains' ``torch.max(col) * torch.max(row)``: one head's output depends on the others)
PINV_INITS = ("per_matrix", "global")
#: segment-means landmarks when m does not divide the length: balanced segments of the real rows
#: (default) or zero rows prepended up to a multiple of m (lucidrains' ``F.pad(x, (0, 0, padding, 0))``),
#: which then join every softmax and the landmark means
SEGMENTS = ("balanced", "front_pad")
#: the values of the failure policy ``errors`` (and of its deprecated name ``on_divergence``)
ON_DIVERGENCE = ERRORS
DEFAULT_ITERATIONS = 6


class PinvConvergenceError(ArithmeticError):
    """The iterative pseudoinverse diverged, or did not reach ``pinv_tol``."""


class PinvConvergenceWarning(RuntimeWarning):
    """The iterative pseudoinverse diverged (``errors="warn"``)."""


# ----------------------------------------------------------------------------- options

@dataclass(frozen=True)
class PinvOptions:
    """The pseudoinverse's options, resolved once (:func:`_pinv_options`)."""

    mode: str = "iterative"  # PINV_MODES
    iterations: int = DEFAULT_ITERATIONS  # J
    init_scale: float | None = None  # Z_0 = init_scale A^T; None: the paper's alpha
    rtol: float | None = None  # exact mode: rtol of xp.linalg.pinv
    tol: float | None = None  # iterative mode: pinv_tol, the convergence requirement
    errors: str = "raise"  # the divergence policy, ERRORS
    init: str = "per_matrix"  # PINV_INITS: the maxima of the paper's alpha per matrix or over the batch

    @property
    def checked(self) -> bool:
        """Whether :func:`_check_divergence` runs (iterative mode, and the policy asks for it)."""
        return self.mode == "iterative" and (self.errors != "ignore" or self.tol is not None)


def _pinv_options(*, mode: Any = "iterative", iterations: Any = DEFAULT_ITERATIONS, init_scale: Any = None,
                  rtol: Any = None, tol: Any = None, errors: Any = None, on_divergence: Any = None,
                  rtol_name: str = "pinv_rtol", init: Any = "per_matrix") -> PinvOptions:
    """Validate the pseudoinverse's options (user-facing names in the messages) into :class:`PinvOptions`."""
    return PinvOptions(
        mode=check_choice("pinv", mode, PINV_MODES),
        iterations=check_int("iterations", iterations, minimum=0),
        init_scale=check_real("init_scale", init_scale, allow_none=True),
        rtol=check_real(rtol_name, rtol, minimum=0.0, allow_none=True),
        tol=check_real("pinv_tol", tol, minimum=0.0, open_min=True, allow_none=True),
        errors=legacy_policy(errors, {"on_divergence": on_divergence}),
        init=check_choice("pinv_init", init, PINV_INITS))


def _check_kernel_size(conv_kernel_size: Any) -> int | None:
    ksize = check_int("conv_kernel_size", conv_kernel_size, minimum=1, allow_none=True, what="odd")
    if ksize is not None and ksize % 2 == 0:
        msg = f"conv_kernel_size must be a positive odd integer or None, got {conv_kernel_size!r}"
        raise ValueError(msg)
    return ksize


@dataclass(frozen=True)
class Options:
    """The options of one :func:`nystrom_attention` call, resolved once by :func:`forward`."""

    num_landmarks: int  # m
    explicit: bool  # landmarks passed as the first two positional parameters
    scale: float  # the logit scale s
    conv_kernel_size: int | None  # K of the convolution skip (its weight is the last parameter)
    pinv: PinvOptions
    segments: str = "balanced"  # SEGMENTS


# ----------------------------------------------------------------------------- segment means

def segment_bounds(n: int, m: int) -> list[tuple[int, int]]:
    """The ``m`` contiguous segments ``[start, stop)`` of ``range(n)`` used for segment-means landmarks.

    Balanced split: with ``n = l m + r`` (``0 <= r < m``) the first ``r`` segments hold ``l + 1`` rows,
    the others ``l`` (``numpy.array_split``'s rule). Requires ``1 <= m <= n``.
    """
    m = check_int("num_landmarks", m, minimum=1)
    if m > n:
        msg = f"num_landmarks must be at most the sequence length {n} (segment means), got {m}"
        raise ValueError(msg)
    l, r = divmod(n, m)
    out, start = [], 0
    for j in range(m):
        stop = start + l + (1 if j < r else 0)
        out.append((start, stop))
        start = stop
    return out


def segment_means(x: Any, m: int, /) -> Any:
    """Landmarks of ``x (..., n, d)``: the means of ``m`` balanced contiguous segments -> ``(..., m, d)``.

    Intended eq. 16 of Xiong et al. 2021: ``x~_j = (1/l_j) sum_{i in segment j} x_i`` (see
    :func:`segment_bounds`). Costs ``n d`` flops per batch element (reduction plus the division).
    ``x`` must be a real floating array of rank >= 2 (``TypeError``/``ValueError`` naming ``x``).
    """
    xp = namespace(x)
    check_float_array("x", x, xp, ndim_min=2)
    segment_bounds(x.shape[-2], m)  # validates m
    return _segment_means(xp, x, int(m))


def _segment_means(xp: Any, x: Any, m: int) -> Any:
    """:func:`segment_means` without validation (``1 <= m <= n``)."""
    n, d = x.shape[-2], x.shape[-1]
    l, r = divmod(n, m)
    lead = tuple(x.shape[:-2])
    a = r * (l + 1)
    parts = []
    if r:
        parts.append(xp.mean(xp.reshape(x[..., :a, :], (*lead, r, l + 1, d)), axis=-2))
    if m - r:
        parts.append(xp.mean(xp.reshape(x[..., a:, :], (*lead, m - r, l, d)), axis=-2))
    return one_block(xp, parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2))  # (m, d): small


def _segment_means_backward(xp: Any, g: Any, n: int) -> Any:
    """Adjoint of :func:`segment_means`: ``g (..., m, d)`` -> ``(..., n, d)``, ``g_j / l_j`` on segment j."""
    m, d = g.shape[-2], g.shape[-1]
    l, r = divmod(n, m)
    lead = tuple(g.shape[:-2])
    parts = []
    for j0, j1, size in ((0, r, l + 1), (r, m, l)):
        if j1 > j0:
            gj = xp.expand_dims(g[..., j0:j1, :] / size, axis=-2)
            parts.append(xp.reshape(xp.broadcast_to(gj, (*lead, j1 - j0, size, d)), (*lead, (j1 - j0) * size, d)))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)


def _kept_keys(xp: Any, keep: Any, m: int) -> tuple[Any, Any]:
    """Validation of a key mask for segment-means landmarks: ``(keep as int64, kept count (..., 1))``;
    ``ValueError`` when some batch element keeps fewer than ``m`` keys."""
    ki = xp.astype(keep, xp.int64)
    count = xp.sum(ki, axis=-1, keepdims=True)  # (..., 1)
    if not is_lazy(count) and bool(xp.any(count < m)):  # lazy/traced: not checked (empty segments give NaN)
        least = int(xp.min(count))
        msg = (f"the key mask leaves {least} kept key(s) in some batch element, fewer than num_landmarks={m}: "
               "segment-means landmarks need at least one kept key per segment (pass fewer landmarks "
               "or explicit landmarks)")
        raise ValueError(msg)
    return ki, count


def _masked_segment_weights(xp: Any, kept: tuple[Any, Any], keep: Any, m: int, dtype: Any, dev: Any) -> Any:
    """Averaging matrix ``(..., m, mk)`` of the balanced segments of the *kept* keys of each batch element
    (``kept`` from :func:`_kept_keys`)."""
    ki, count = kept
    rank = xp.cumulative_sum(ki, axis=-1) - 1
    l = count // m
    r = count % m
    big = r * (l + 1)
    seg = xp.where(rank < big, rank // (l + 1), r + (rank - big) // l)
    seg = xp.where(keep, seg, -1)
    j = xp.arange(m, dtype=xp.int64, device=dev)
    onehot = xp.expand_dims(seg, axis=-2) == j[:, None]  # (..., m, mk)
    size = xp.where(j < r, l + 1, l)  # (..., m)
    return xp.astype(onehot, dtype) / xp.expand_dims(xp.astype(size, dtype), axis=-1)


# ----------------------------------------------------------------------------- softmax pieces

def _softmax(xp: Any, s: Any, keep: Any = None) -> Any:
    """Row softmax; ``keep (..., c)`` masks columns; a fully masked row gives zeros."""
    if keep is None:
        mx = xp.max(s, axis=-1, keepdims=True)
        p = exp_consuming(xp, s - mx)
        return p / xp.sum(p, axis=-1, keepdims=True)
    s = xp.where(xp.expand_dims(keep, axis=-2), s, -math.inf)
    mx = xp.max(s, axis=-1, keepdims=True)
    p = exp_consuming(xp, s - xp.where(xp.isfinite(mx), mx, 0.0))
    l = xp.sum(p, axis=-1, keepdims=True)
    return p / xp.where(l > 0, l, 1.0)


def _softmax_backward(xp: Any, p: Any, dp: Any) -> Any:
    return p * (dp - xp.sum(dp * p, axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- pseudoinverses

class _PinvRes(NamedTuple):
    a: Any
    z: Any  # the result
    iterates: tuple[Any, ...]  # Z_0 .. Z_{J-1} (iterative), () (exact)
    alpha: Any  # (..., 1, 1) array (paper's scale) or the given float init_scale; None (exact)
    colsum_max: Any  # (..., 1, 1) or None when the scale was given
    rowsum_max: Any
    mode: str
    given_scale: bool
    init: str = "per_matrix"


class PinvGrads(NamedTuple):
    da: Any


def _eye(xp: Any, m: int, dtype: Any, dev: Any) -> Any:
    return xp.eye(m, dtype=dtype, device=dev)


def _paper_init(xp: Any, a: Any, init: str = "per_matrix") -> tuple[Any, Any, Any]:
    """``alpha = 1 / (max abs column sum * max abs row sum)`` per matrix, shape ``(..., 1, 1)``
    (``init="global"``: both maxima over every matrix of the batch, shape ``(1, ..., 1)``).

    ``alpha = 0`` for ``A = 0`` (then ``Z_0 = 0 = A^+``). Costs ``4 m^2`` flops with the ``Z_0`` product.
    """
    aa = xp.abs(a)
    if init == "global":
        c = xp.max(xp.sum(aa, axis=-2), keepdims=True)  # (1, ..., 1): rank of a - 1
        r = xp.max(xp.sum(aa, axis=-1), keepdims=True)
        c, r = c[..., None], r[..., None]
    else:
        c = xp.max(xp.sum(aa, axis=-2), axis=-1, keepdims=True)[..., None]  # (..., 1, 1)
        r = xp.max(xp.sum(aa, axis=-1), axis=-1, keepdims=True)[..., None]
    cr = c * r
    alpha = 1.0 / xp.where(cr > 0, cr, 1.0)
    alpha = xp.where(cr > 0, alpha, 0.0)
    return alpha, c, r


def _iterate_step(xp: Any, a: Any, z: Any, eyes: tuple[Any, Any, Any]) -> tuple[Any, Any, Any, Any, Any]:
    eye7, eye15, eye13 = eyes
    x = a @ z
    t1 = eye7 - x
    t2 = eye15 - x @ t1
    t3 = eye13 - x @ t2
    return (z @ t3) * 0.25, x, t1, t2, t3


def _eyes(xp: Any, m: int, dtype: Any, dev: Any) -> tuple[Any, Any, Any]:
    eye = _eye(xp, m, dtype, dev)
    return eye * 7.0, eye * 15.0, eye * 13.0


def pinv_iterates(a: Any, /, *, iterations: int = DEFAULT_ITERATIONS, init_scale: float | None = None) -> list[Any]:
    """All iterates ``[Z_0, ..., Z_J]`` of the Razavi et al. scheme on ``a (..., m, m)``, unchecked.

    ``Z_0 = alpha A^T`` with the paper's ``alpha = 1/(||A||_1 ||A||_inf)`` or ``alpha = init_scale``
    (to study initialisations that violate the convergence condition). For tests and the ledger.
    """
    xp = namespace(a)
    _check_square(a, xp)
    iterations = check_int("iterations", iterations, minimum=0)
    init_scale = check_real("init_scale", init_scale, allow_none=True)
    alpha = _paper_init(xp, a)[0] if init_scale is None else init_scale
    z = xp.matrix_transpose(a) * alpha
    out = [z]
    if iterations:
        eyes = _eyes(xp, a.shape[-1], a.dtype, device(a))
        for _ in range(iterations):
            z = _iterate_step(xp, a, z, eyes)[0]
            out.append(z)
    return out


def _check_square(a: Any, xp: Any) -> None:
    check_float_array("a", a, xp, ndim_min=2)
    if a.shape[-1] != a.shape[-2] or a.shape[-1] < 1:
        msg = f"a must be a non-empty square matrix (..., m, m), got shape {tuple(a.shape)}"
        raise ValueError(msg)


def _check_divergence(xp: Any, a: Any, z: Any, x0: Any, opts: PinvOptions, init_desc: str) -> None:
    """The data-dependent step: divergence / convergence checks of the iterate ``z = Z_J`` (see the
    module docstring), reported under ``opts.errors``. Run only when ``opts.checked``, and skipped for
    lazy and traced arrays (a diverged iterate then flows into the output, as with ``errors="ignore"``;
    ``pinv_tol`` is not checked)."""
    if is_lazy(a, z):
        return
    m = a.shape[-1]
    iterations = opts.iterations
    eye = _eye(xp, m, a.dtype, device(a))
    need_rj = opts.tol is not None or iterations >= 1
    if need_rj:
        if x0 is None:  # iterations == 0: Z_J = Z_0
            x0 = a @ z
        e0 = eye - x0
        r0sq = xp.sum(e0 * e0, axis=(-2, -1))
        if iterations >= 1:
            ej = eye - a @ z
            rjsq = xp.sum(ej * ej, axis=(-2, -1))
        else:
            rjsq = r0sq
    if opts.errors != "ignore":
        finite = bool(xp.all(xp.isfinite(z)))
        grew = False
        if iterations >= 1 and finite:
            tau = math.sqrt(float(xp.finfo(a.dtype).eps))
            grew = bool(xp.any(rjsq > r0sq * (1.0 + tau) + tau))
        if not finite or grew:
            if not finite:
                what = "produced non-finite entries (non-finite or overflowing landmark matrix)"
            else:
                ratio = float(xp.max(xp.sqrt(rjsq) / xp.sqrt(r0sq + tau)))
                what = (f"diverged: the residual ||I - A Z_J||_F grew to {ratio:.3g} times ||I - A Z_0||_F "
                        f"(it never increases in exact arithmetic from a convergent start)")
            msg = (f"iterative pseudoinverse of the {m}x{m} landmark matrix {what} after {iterations} "
                   f"iteration(s) from {init_desc}; use pinv='exact' for singular or badly scaled landmark "
                   "matrices, or errors='warn'/'ignore'")
            report(opts.errors, msg, error=PinvConvergenceError, warning=PinvConvergenceWarning)
    if opts.tol is not None:
        worst = math.sqrt(max(float(xp.max(rjsq)), 0.0) / m) if bool(xp.all(xp.isfinite(rjsq))) else math.inf
        if not worst <= opts.tol:
            msg = (f"iterative pseudoinverse did not converge: ||I - A Z_J||_F / sqrt(m) = {worst:.3g} > "
                   f"pinv_tol={opts.tol:g} after {iterations} iteration(s) (m={m}); the landmark matrix "
                   "is ill-conditioned or singular: raise iterations (about log_3.25(1/(alpha s_min^2)) are "
                   "needed) or use pinv='exact'")
            raise PinvConvergenceError(msg)


def _pinv_forward(xp: Any, a: Any, opts: PinvOptions) -> tuple[Any, _PinvRes]:
    """The pseudoinverse of ``a`` per ``opts`` (valid input assumed), with its residuals."""
    if opts.mode == "exact":
        pinv = linalg(xp, "pinv")
        z = pinv(a, rtol=opts.rtol) if opts.rtol is not None else pinv(a)
        return z, _PinvRes(a, z, (), None, None, None, opts.mode, False, opts.init)
    if opts.init_scale is None:
        alpha, c, r = _paper_init(xp, a, opts.init)
        init_desc = "the paper's Z_0 = A^T/(||A||_1 ||A||_inf)" + (
            " (maxima over the whole batch)" if opts.init == "global" else "")
    else:
        alpha, c, r = opts.init_scale, None, None
        init_desc = f"Z_0 = {opts.init_scale:g} A^T"
    z = xp.matrix_transpose(a) * alpha
    iterates = []
    x0 = None
    if opts.iterations:
        eyes = _eyes(xp, a.shape[-1], a.dtype, device(a))
        for j in range(opts.iterations):
            iterates.append(z)
            z, x = _iterate_step(xp, a, z, eyes)[:2]
            if j == 0:
                x0 = x
    if opts.checked:
        _check_divergence(xp, a, z, x0, opts, init_desc)
    return z, _PinvRes(a, z, tuple(iterates), alpha, c, r, opts.mode, opts.init_scale is not None, opts.init)


def _pinv_backward(xp: Any, res: _PinvRes, zbar: Any) -> Any:
    a, z = res.a, res.z
    mt = xp.matrix_transpose
    m = a.shape[-1]
    if res.mode == "exact":
        eye = _eye(xp, m, a.dtype, device(a))
        zt = mt(z)
        zbt = mt(zbar)
        return (-(zt @ zbar @ zt) + (eye - a @ z) @ (zbt @ (z @ zt))
                + (zt @ z) @ (zbt @ (eye - z @ a)))
    abar = xp.zeros_like(a)
    if res.iterates:
        eyes = _eyes(xp, m, a.dtype, device(a))
        at = mt(a)
        for zj in reversed(res.iterates):
            _, x, t1, t2, t3 = _iterate_step(xp, a, zj, eyes)
            xt = mt(x)
            t3bar = (mt(zj) @ zbar) * 0.25
            znew = (zbar @ mt(t3)) * 0.25
            t2bar = -(xt @ t3bar)
            t1bar = -(xt @ t2bar)
            xbar = -(t3bar @ mt(t2)) - t2bar @ mt(t1) - t1bar
            abar = abar + xbar @ mt(zj)
            zbar = znew + at @ xbar
    # Z_0 = alpha A^T
    if res.given_scale:  # a constant scale: no derivative through alpha
        return abar + mt(zbar) * res.alpha
    alpha, c, r = res.alpha, res.colsum_max, res.rowsum_max
    abar = abar + mt(zbar) * alpha
    alphabar = xp.sum(zbar * mt(a), axis=(-2, -1), keepdims=True)
    if res.init == "global":
        return _global_init_backward(xp, a, abar, xp.sum(alphabar, keepdims=True), alpha, c, r)
    pos = alpha > 0
    cbar = xp.where(pos, -alphabar * alpha / xp.where(pos, c, 1.0), 0.0)
    rbar = xp.where(pos, -alphabar * alpha / xp.where(pos, r, 1.0), 0.0)
    aa = xp.abs(a)
    idx = xp.arange(m, device=device(a))
    jstar = xp.argmax(xp.sum(aa, axis=-2), axis=-1, keepdims=True)  # (..., 1)
    istar = xp.argmax(xp.sum(aa, axis=-1), axis=-1, keepdims=True)
    colsel = xp.expand_dims(idx == jstar, axis=-2)  # (..., 1, m)
    rowsel = xp.expand_dims(idx == istar, axis=-1)  # (..., m, 1)
    sg = xp.sign(a)
    zero = xp.zeros_like(a)
    return abar + xp.where(colsel, sg * cbar, zero) + xp.where(rowsel, sg * rbar, zero)


def _global_init_backward(xp: Any, a: Any, abar: Any, alphabar: Any, alpha: Any, c: Any, r: Any) -> Any:
    """``pinv_init="global"``: ``alpha = 1/(c r)`` with ``c``, ``r`` the maxima of the absolute column
    and row sums over the whole batch; ``alphabar`` summed over it; the derivative of each maximum is
    shared evenly by the entries attaining it (torch's full-reduction ``max``)."""
    pos = alpha > 0
    cbar = xp.where(pos, -alphabar * alpha / xp.where(pos, c, 1.0), 0.0)
    rbar = xp.where(pos, -alphabar * alpha / xp.where(pos, r, 1.0), 0.0)
    aa = xp.abs(a)
    colsums = xp.sum(aa, axis=-2, keepdims=True)  # (..., 1, m)
    rowsums = xp.sum(aa, axis=-1, keepdims=True)  # (..., m, 1)
    colhit = xp.astype(colsums == c, a.dtype)
    rowhit = xp.astype(rowsums == r, a.dtype)
    colhit = colhit / xp.sum(colhit, keepdims=True)
    rowhit = rowhit / xp.sum(rowhit, keepdims=True)
    sg = xp.sign(a)
    return abar + sg * (colhit * cbar) + sg * (rowhit * rbar)


def _iterative_pinv_forward(a: Any, /, *, iterations: int = DEFAULT_ITERATIONS, init_scale: float | None = None,
                            errors: str | None = None, on_divergence: str | None = None,
                            pinv_tol: float | None = None) -> tuple[Any, _PinvRes]:
    xp = namespace(a)
    _check_square(a, xp)
    opts = _pinv_options(iterations=iterations, init_scale=init_scale, tol=pinv_tol, errors=errors,
                         on_divergence=on_divergence)
    return _pinv_forward(xp, a, opts)


def _iterative_pinv_backward(res: _PinvRes, zbar: Any, /) -> PinvGrads:
    xp = namespace(res.a)
    return PinvGrads(_pinv_backward(xp, res, zbar))


@declare(Function(_iterative_pinv_forward, _iterative_pinv_backward))
def iterative_pinv(a: Any, /, *, iterations: int = DEFAULT_ITERATIONS, init_scale: float | None = None,
                   errors: str | None = None, on_divergence: str | None = None, pinv_tol: float | None = None) -> Any:
    r"""Razavi et al.'s iterative Moore-Penrose inverse of ``a (..., m, m)``, as Nystromformer uses it.

    ``Z_0 = alpha A^T`` with ``alpha = 1/(||A||_1 ||A||_inf)`` (or ``init_scale``), then ``iterations``
    steps of ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``. Divergence is reported per
    ``errors`` (``"raise"``, the default when ``None``; ``"warn"``; ``"ignore"``; ``on_divergence`` is
    its deprecated name, with a ``DeprecationWarning``); ``pinv_tol`` turns non-convergence into
    :class:`PinvConvergenceError` (see the module docstring for the criteria). ``refattn.vjp`` gives
    the hand-written reverse sweep.

    Raises
    ------
    TypeError
        A non-number ``init_scale`` or ``pinv_tol``; both ``errors`` and ``on_divergence`` given.
    ValueError
        ``a`` not square, ``iterations < 0``, an unknown ``errors``, a bad ``pinv_tol``.
    PinvConvergenceError
        Divergence (``errors="raise"``) or, with ``pinv_tol``, non-convergence.
    """
    return _iterative_pinv_forward(a, iterations=iterations, init_scale=init_scale, errors=errors,
                                   on_divergence=on_divergence, pinv_tol=pinv_tol)[0]


def _exact_pinv_forward(a: Any, /, *, rtol: float | None = None) -> tuple[Any, _PinvRes]:
    xp = namespace(a)
    _check_square(a, xp)
    if compute_dtype(xp, a.dtype) != a.dtype:  # xp.linalg has no half precision
        msg = f"a must be float32 or float64 (xp.linalg.pinv has no half precision), got {a.dtype}"
        raise TypeError(msg)
    opts = _pinv_options(mode="exact", iterations=0, rtol=rtol, rtol_name="rtol", errors="ignore")
    check_finite_array("a", a, xp)  # NaN/inf would reach the SVD (LinAlgError) or give a NaN/inf pinv
    return _pinv_forward(xp, a, opts)


@declare(Function(_exact_pinv_forward, _iterative_pinv_backward))
def exact_pinv(a: Any, /, *, rtol: float | None = None) -> Any:
    """``xp.linalg.pinv(a, rtol=rtol)`` with the hand-written backward of the pseudoinverse (Golub-Pereyra).

    The gradient is that of the pseudoinverse at constant numerical rank (see the module docstring).

    Raises
    ------
    TypeError
        A non-floating ``a``, or a half-precision one (float16, bfloat16: ``xp.linalg`` has none).
    ValueError
        ``a`` not a non-empty square ``(..., m, m)`` matrix, NaN/inf entries (``a must be finite``),
        a bad ``rtol``.
    """
    return _exact_pinv_forward(a, rtol=rtol)[0]


# ----------------------------------------------------------------------------- attention

class Residuals(NamedTuple):
    """What the backward pass needs (arrays in working precision)."""

    q: Any
    k: Any
    v: Any
    qt: Any  # query landmarks (..., m, d)
    kt: Any  # key landmarks (..., m, d)
    f: Any  # softmax(s Q K~^T) (..., n, m)
    a: Any  # softmax(s Q~ K~^T) (..., m, m)
    b: Any  # softmax(s Q~ K^T) (..., m, mk)
    u: Any  # B V (..., m, dv)
    w: Any  # Z B V (..., m, dv)
    pinv: _PinvRes
    keep: Any  # (..., mk) bool or None
    seg_weights: Any  # (..., m, mk) averaging matrix of the masked key landmarks, or None
    explicit: bool
    conv_w: Any  # (..., K, c) or None
    v_padded: Any  # masked, zero-padded v (..., mk + K - 1, dv) or None
    scale: float
    dtype: Any
    shapes: tuple[tuple[int, ...], ...]  # q, k, v, then each positional parameter
    pad_q: int = 0  # segments="front_pad": zero rows prepended to q (q above is the padded array)
    pad_k: int = 0  # ... to k and v


def _front_pad(xp: Any, x: Any, rows: int) -> Any:
    """``x`` with ``rows`` zero rows prepended (lucidrains' ``F.pad(x, (0, 0, rows, 0))``)."""
    if not rows:
        return x
    zeros = xp.zeros((*x.shape[:-2], rows, x.shape[-1]), dtype=x.dtype, device=device(x))
    return xp.concat([zeros, x], axis=-2)


class Grads(NamedTuple):
    """Gradients of a call without positional parameters (segment-means landmarks, no skip)."""

    dq: Any
    dk: Any
    dv: Any


class GradsLandmarks(NamedTuple):
    """Gradients of a call with explicit landmarks."""

    dq: Any
    dk: Any
    dv: Any
    dq_landmarks: Any
    dk_landmarks: Any


class GradsConv(NamedTuple):
    """Gradients of a call with the convolution skip (segment-means landmarks)."""

    dq: Any
    dk: Any
    dv: Any
    dconv_weight: Any


class GradsLandmarksConv(NamedTuple):
    """Gradients of a call with explicit landmarks and the convolution skip."""

    dq: Any
    dk: Any
    dv: Any
    dq_landmarks: Any
    dk_landmarks: Any
    dconv_weight: Any


def _validate_arrays(q: Any, k: Any, v: Any, params: tuple[Any, ...], *, mask: Any, key_lengths: Any,
                     num_landmarks: Any, conv_kernel_size: int | None,
                     check_finite: bool) -> tuple[Any, tuple[int, ...], int, bool]:
    """The arrays of a call and the landmark count: ``(xp, batch, m, explicit landmarks)``."""
    n_conv = 0 if conv_kernel_size is None else 1
    n_land = len(params) - n_conv
    if n_land not in (0, 2):
        msg = (f"nystrom_attention takes 0 or 2 landmark arrays (q_landmarks, k_landmarks) as positional "
               f"parameters, then the conv weight when conv_kernel_size is given "
               f"(conv_kernel_size={conv_kernel_size!r}); got {len(params)} positional parameter(s)")
        raise TypeError(msg)
    names = (["q_landmarks", "k_landmarks"] if n_land else []) + (["conv_weight"] if n_conv else [])
    named = dict(zip(names, params))
    xp, batch = validate_qkv(q, k, v, check_finite_inputs=check_finite,
                             extra={**named, "mask": mask, "key_lengths": key_lengths})
    n, d, mk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    if n < 1 or mk < 1:
        msg = f"q and k must hold at least one row each, got n={n} queries and {mk} keys"
        raise ValueError(msg)
    for name, p in named.items():
        check_float_array(name, p, xp, ndim_min=2)
        if p.dtype != q.dtype:
            msg = f"{name} must have the dtype of q ({q.dtype}), got {p.dtype}"
            raise TypeError(msg)
        if not broadcasts_to(p.shape[:-2], batch):
            msg = (f"{name}'s leading dimensions must broadcast to the batch shape {batch} of q, k, v "
                   f"without enlarging it, got shape {tuple(p.shape)}")
            raise ValueError(msg)
        if check_finite:
            check_finite_array(name, p, xp)
    if n_land:
        qt, kt = params[0], params[1]
        m = qt.shape[-2]
        for name, p in (("q_landmarks", qt), ("k_landmarks", kt)):
            if p.shape[-1] != d or p.shape[-2] != m or m < 1:
                msg = (f"{name} must have shape (..., m, {d}) with the same m >= 1 for both landmark arrays "
                       f"(q_landmarks has m={m}), got {tuple(p.shape)}")
                raise ValueError(msg)
        if num_landmarks is not None and num_landmarks != m:
            msg = f"num_landmarks={num_landmarks!r} does not match the explicit landmarks' m={m}"
            raise ValueError(msg)
    else:
        if num_landmarks is None:
            msg = "num_landmarks must be given (a positive integer) when no explicit landmarks are passed"
            raise ValueError(msg)
        m = check_int("num_landmarks", num_landmarks, minimum=1)
        if m > min(n, mk):
            msg = (f"num_landmarks must be at most min(n, mk) = min({n}, {mk}) for segment-means landmarks "
                   f"(one segment per landmark), got {num_landmarks}")
            raise ValueError(msg)
    if n_conv:
        w = params[-1]
        if w.shape[-2] != conv_kernel_size or w.shape[-1] not in (1, dv):
            msg = (f"conv_weight must have shape (..., {conv_kernel_size}, c) with c in (1, {dv}) "
                   f"(conv_kernel_size={conv_kernel_size}, dv={dv}), got {tuple(w.shape)}")
            raise ValueError(msg)
        if n != mk:
            msg = f"the convolution skip adds conv(V) to the output, so it needs n == mk, got n={n}, mk={mk}"
            raise ValueError(msg)
    return xp, batch, m, bool(n_land)


def forward(q: Any, k: Any, v: Any, /, *params: Any, mask: Any = None, causal: bool | str = False,
            scale: float | None = None, key_lengths: Any = None, num_landmarks: int | None = None,
            pinv: str = "iterative", iterations: int = DEFAULT_ITERATIONS, pinv_rtol: float | None = None,
            pinv_tol: float | None = None, errors: str | None = None, on_divergence: str | None = None,
            conv_kernel_size: int | None = None, pinv_init: str = "per_matrix", segments: str = "balanced",
            check_finite: bool = True) -> tuple[Any, Residuals]:
    """Nystromformer forward pass; returns ``(out, Residuals)``. See :func:`nystrom_attention`.

    The whole validation: arrays, mask and options, resolved once into :class:`Options`; then the
    implementation ``_forward``, which validates nothing.
    """
    if causal is not False and causal is not None:
        msg = (f"nystrom_attention has no causal form (causal={causal!r}): its landmarks average over the whole "
               "sequence, so every output depends on every key; use causal=False")
        raise ValueError(msg)
    pinv_opts = _pinv_options(mode=pinv, iterations=iterations, rtol=pinv_rtol, tol=pinv_tol, errors=errors,
                              on_divergence=on_divergence, init=pinv_init)
    segments = check_choice("segments", segments, SEGMENTS)
    ksize = _check_kernel_size(conv_kernel_size)
    xp, batch, m, explicit = _validate_arrays(q, k, v, params, mask=mask, key_lengths=key_lengths,
                                              num_landmarks=num_landmarks, conv_kernel_size=ksize,
                                              check_finite=check_flag("check_finite", check_finite))
    n, mk = q.shape[-2], k.shape[-2]
    work = compute_dtype(xp, q.dtype)
    spec = make_mask(xp, mask=mask, causal=False, key_lengths=key_lengths, n=n, m=mk, batch=batch, dtype=work)
    keep = key_padding_keep(xp, spec, device(q), method="nystrom_attention")
    if segments == "front_pad" and keep is not None and not explicit:
        msg = ("segments='front_pad' (lucidrains' zero padding) takes no mask or key_lengths: the peer's "
               "masked convention (zeroed tokens, counts + 1e-8, -finfo.max fills) is not reproduced; "
               "use segments='balanced' for masked calls")
        raise ValueError(msg)
    kept = None if keep is None or explicit else _kept_keys(xp, keep, m)
    opts = Options(m, explicit, resolve_scale(scale, q.shape[-1]), ksize, pinv_opts, segments)
    out, res = _forward(xp, work, q, k, v, params, keep, kept, opts)
    if check_finite and pinv_opts.errors == "raise":  # huge finite q, k: the landmark kernels overflow
        check_overflow(xp, out, "nystrom_attention")
    return out, res


def _forward(xp: Any, work: Any, q: Any, k: Any, v: Any, params: tuple[Any, ...], keep: Any, kept: Any,
             opts: Options) -> tuple[Any, Residuals]:
    """The implementation of :func:`forward`: valid input and options assumed, nothing validated
    (``keep``: the kept keys or ``None``; ``kept``: :func:`_kept_keys` of them for segment means)."""
    dtype = q.dtype
    shapes = tuple(tuple(a.shape) for a in (q, k, v, *params))
    if work != dtype:
        q, k, v = (xp.astype(a, work) for a in (q, k, v))
        params = tuple(xp.astype(p, work) for p in params)
    dev = device(q)
    mt = xp.matrix_transpose
    m, scale = opts.num_landmarks, opts.scale
    seg_w = None
    v_real = v
    pad_q = pad_k = 0
    if opts.segments == "front_pad" and not opts.explicit:
        # lucidrains: zero rows prepended up to a multiple of m; they join every softmax and landmark mean
        pad_q, pad_k = -q.shape[-2] % m, -k.shape[-2] % m
        q, k, v = _front_pad(xp, q, pad_q), _front_pad(xp, k, pad_k), _front_pad(xp, v, pad_k)
    if opts.explicit:
        qt, kt = params[0], params[1]
    else:
        qt = _segment_means(xp, q, m)
        if keep is None:
            kt = _segment_means(xp, k, m)
        else:
            seg_w = _masked_segment_weights(xp, kept, keep, m, work, dev)
            kt = seg_w @ k
    f = _softmax(xp, (q @ mt(kt)) * scale)
    a = _softmax(xp, (qt @ mt(kt)) * scale)
    b = _softmax(xp, (qt @ mt(k)) * scale, keep)
    z, pres = _pinv_forward(xp, a, opts.pinv)
    u = b @ v
    w = z @ u
    out = f @ w
    if pad_q:
        out = out[..., pad_q:, :]
    conv_w = v_padded = None
    if opts.conv_kernel_size is not None:
        conv_w = params[-1]
        out, v_padded = _conv_forward(xp, out, v_real, conv_w, keep, opts.conv_kernel_size)
    res = Residuals(q, k, v, qt, kt, f, a, b, u, w, pres, keep, seg_w, opts.explicit, conv_w, v_padded, scale,
                    dtype, shapes, pad_q, pad_k)
    return (xp.astype(out, dtype) if work != dtype else out), res


def _conv_forward(xp: Any, out: Any, v: Any, w: Any, keep: Any, ksize: int) -> tuple[Any, Any]:
    """``out + sum_t w_t * v_{i + t - K//2}`` (zero padding; masked values zeroed)."""
    n, dv = v.shape[-2], v.shape[-1]
    h = ksize // 2
    if keep is not None:
        v = xp.where(xp.expand_dims(keep, axis=-1), v, 0.0)
    if h:
        pad = xp.zeros((*v.shape[:-2], h, dv), dtype=v.dtype, device=device(v))
        vp = xp.concat([pad, v, pad], axis=-2)
    else:
        vp = v
    skip = w[..., 0:1, :] * vp[..., 0:n, :]
    for t in range(1, ksize):
        skip = skip + w[..., t:t + 1, :] * vp[..., t:t + n, :]
    return out + skip, vp


def backward(res: Residuals, dout: Any, /) -> Grads | GradsLandmarks | GradsConv | GradsLandmarksConv:
    """Hand-written backward of :func:`forward` (derivation in the module docstring).

    One gradient per positional array of the call, in order: ``dq, dk, dv``, then ``dq_landmarks,
    dk_landmarks`` (explicit landmarks) and ``dconv_weight`` (convolution skip), each in its argument's
    shape and dtype.
    """
    xp = namespace(res.q, res.k, res.v)
    g_out = g = xp.astype(dout, res.q.dtype) if dout.dtype != res.q.dtype else dout
    if res.pad_q:  # the padded query rows' outputs are dropped: zero cotangent
        g = _front_pad(xp, g, res.pad_q)
    mt = xp.matrix_transpose
    q, k, v, qt, kt, f, a, b, u, w, s = (res.q, res.k, res.v, res.qt, res.kt, res.f, res.a, res.b, res.u,
                                        res.w, res.scale)
    z = res.pinv.z
    df = g @ mt(w)
    dw = mt(f) @ g
    dz = dw @ mt(u)
    du = mt(z) @ dw
    db = du @ mt(v)
    dv = mt(b) @ du
    da = _pinv_backward(xp, res.pinv, dz)
    dsf = _softmax_backward(xp, f, df) * s
    dsa = _softmax_backward(xp, a, da) * s
    dsb = _softmax_backward(xp, b, db) * s
    dq = dsf @ kt
    dkt = mt(dsf) @ q + mt(dsa) @ qt
    dqt = dsa @ kt + dsb @ k
    dk = mt(dsb) @ qt
    extra = []
    if res.explicit:
        extra = [dqt, dkt]
    else:
        dq = dq + _segment_means_backward(xp, dqt, q.shape[-2])
        if res.seg_weights is None:
            dk = dk + _segment_means_backward(xp, dkt, k.shape[-2])
        else:
            dk = dk + mt(res.seg_weights) @ dkt
    if res.pad_q or res.pad_k:
        dq, dk, dv = dq[..., res.pad_q:, :], dk[..., res.pad_k:, :], dv[..., res.pad_k:, :]
    if res.conv_w is not None:
        dv_conv, dwc = _conv_backward(xp, g_out, res.conv_w, res.v_padded, res.keep)
        dv = dv + dv_conv
        extra.append(dwc)
    grads = [unbroadcast(xp, gr, shape) for gr, shape in zip((dq, dk, dv, *extra), res.shapes)]
    grads = [xp.astype(gr, res.dtype) if gr.dtype != res.dtype else gr for gr in grads]
    kind = {(False, False): Grads, (True, False): GradsLandmarks, (False, True): GradsConv,
            (True, True): GradsLandmarksConv}[(res.explicit, res.conv_w is not None)]
    return kind(*grads)


def _conv_backward(xp: Any, g: Any, w: Any, vp: Any, keep: Any) -> tuple[Any, Any]:
    ksize = w.shape[-2]
    n, dv = g.shape[-2], g.shape[-1]
    h = ksize // 2
    if h:
        pad = xp.zeros((*g.shape[:-2], 2 * h, dv), dtype=g.dtype, device=device(g))
        gp = xp.concat([pad[..., :h, :], g, pad[..., h:, :]], axis=-2)
    else:
        gp = g
    dv_conv = w[..., 0:1, :] * gp[..., 2 * h:2 * h + n, :]
    for t in range(1, ksize):
        dv_conv = dv_conv + w[..., t:t + 1, :] * gp[..., 2 * h - t:2 * h - t + n, :]
    if keep is not None:
        dv_conv = xp.where(xp.expand_dims(keep, axis=-1), dv_conv, 0.0)
    dw = xp.concat([xp.sum(g * vp[..., t:t + n, :], axis=-2, keepdims=True) for t in range(ksize)], axis=-2)
    return dv_conv, dw


def _closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward or opts.get("mask") is not None or opts.get("key_lengths") is not None:
        return None
    landmarks = opts.get("num_landmarks") or min(s["n"], s["m"])
    return cost(s["n"], s["d"], s["dv"], num_landmarks=landmarks, m_keys=s["m"], batch=tuple(s["batch"]),
                pinv=opts.get("pinv", "iterative"), iterations=opts.get("iterations", DEFAULT_ITERATIONS),
                errors=opts.get("errors"), on_divergence=opts.get("on_divergence"), pinv_tol=opts.get("pinv_tol"),
                conv_kernel_size=opts.get("conv_kernel_size"), itemsize=s["dtype_bytes"])


def _oracle_shape(shape: Any, kind: str) -> Any:
    r = ORACLE_LANDMARKS
    return shape._replace(n=max(shape.n, r), m=max(shape.m, r))


#: public implementations' conventions (docs/peer_conventions.md); with lucidrains' residual conv, add
#: ``conv_kernel_size=K`` and the weight ``res_conv.weight`` reshaped ``(h, 1, K, 1) -> (h, K, 1)``
PRESETS = {
    # lucidrains nystrom-attention 0.0.14, NystromAttention.forward without a mask
    "lucidrains": {"pinv": "iterative", "iterations": DEFAULT_ITERATIONS, "pinv_init": "global",
                   "segments": "front_pad"},
}

#: the oracle's landmark count (its error model is derived for exact-pinv Nystrom with these)
ORACLE_LANDMARKS = 2


@declare(Method(
    forward, backward, name="nystrom",
    summary="Nystromformer: softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V (Xiong et al. 2021)",
    masks=("none", "key_lengths"), oracle_masks=("none",), cost=_closed_cost,
    error_model="refattn._oracle:nystrom_error_bound",
    oracle_options={"num_landmarks": ORACLE_LANDMARKS, "pinv": "exact"}, adapt_shape=_oracle_shape,
    presets=PRESETS))
def nystrom_attention(q: Any, k: Any, v: Any, /, *params: Any, mask: Any = None, causal: bool | str = False,
                      scale: float | None = None, key_lengths: Any = None, num_landmarks: int | None = None,
                      pinv: str = "iterative", iterations: int = DEFAULT_ITERATIONS, pinv_rtol: float | None = None,
                      pinv_tol: float | None = None, errors: str | None = None, on_divergence: str | None = None,
                      conv_kernel_size: int | None = None, pinv_init: str = "per_matrix",
                      segments: str = "balanced", check_finite: bool = True) -> Any:
    r"""Nystromformer attention ``softmax(s Q K~^T) Z softmax(s Q~ K^T) V``, ``Z ~ softmax(s Q~ K~^T)^+``.

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., mk, d)``, ``(..., mk, dv)``
        Real floating, one dtype, namespace and device; leading dimensions broadcast.
    *params : arrays
        Optional explicit landmarks ``q_landmarks, k_landmarks (..., m, d)``, then, when
        ``conv_kernel_size`` is given, the skip's weight ``(..., K, c)``, ``c`` in ``{1, dv}``.
        Leading dimensions broadcast to those of q, k, v.
    mask : boolean array ``(..., 1, mk)``, optional
        Key-padding mask (``True`` = keep). Per-query and additive masks raise ``ValueError``.
    causal : False
        Anything else raises ``ValueError`` (no causal form).
    scale : float, optional
        Logit scale ``s``; ``1/sqrt(d)`` by default.
    key_lengths : integer array, optional
        Keys ``j >= key_lengths`` are masked (broadcast to the batch shape).
    num_landmarks : int
        ``m`` for segment-means landmarks, ``1 <= m <= min(n, mk)``; optional with explicit landmarks.
    pinv : {"iterative", "exact"}
        The paper's iteration (default) or ``xp.linalg.pinv``. The exact pseudoinverse inverts every
        singular value above ``pinv_rtol * s_max``, so on an ill-conditioned landmark matrix the
        approximation error can be far *larger* than with 6 iterations, which leave the smallest
        singular values uninverted. Segment means of iid Gaussian tokens are near zero, so ``A`` is
        close to the rank-one ``1 1^T / m`` and ill-conditioned (the ledger's claim ``nys-exact``,
        ``refattn verify --claim nys-exact``, measures both errors). A larger ``pinv_rtol`` truncates
        the small singular values.
    iterations : int
        Iterations of the iterative pseudoinverse, ``>= 0`` (default 6, as the paper's code).
    pinv_rtol : float, optional
        ``rtol`` of ``xp.linalg.pinv`` (exact mode; the array-API default ``m * eps`` when None).
    pinv_tol : float, optional
        Iterative mode: raise :class:`PinvConvergenceError` when ``||I - A Z_J||_F / sqrt(m)`` exceeds it.
    errors : {"raise", "warn", "ignore"}, optional
        What a diverging iterative pseudoinverse does (see the module docstring): raise
        :class:`PinvConvergenceError` (``"raise"``, the default when ``None``), warn with
        :class:`PinvConvergenceWarning` and return the result (``"warn"``), or skip the check
        (``"ignore"``).
    on_divergence : {"raise", "warn", "ignore"}, optional
        Deprecated name of ``errors`` (``DeprecationWarning``); giving both raises ``TypeError``.
    conv_kernel_size : int, optional
        Odd kernel size of the depthwise convolution skip on ``V`` (needs ``n == mk``).
    pinv_init : {"per_matrix", "global"}
        The maxima of ``Z_0 = A^T / (max col sum * max row sum)``: per landmark matrix (the paper,
        default), or over the whole batch, every head included (lucidrains' ``nystrom-attention``:
        ``torch.max`` of the full tensor, so one head's output depends on the other heads' landmark
        matrices; exact gradient, ties shared evenly as torch does).
    segments : {"balanced", "front_pad"}
        Segment-means landmarks when ``m`` does not divide the length: balanced segments of the real
        rows (default), or lucidrains' convention: ``-n % m`` zero rows prepended to ``q`` (and
        ``-mk % m`` to ``k``, ``v``), which join every softmax (keys of logit 0 and value 0) and
        the landmark means (each mean divides by ``ceil(n / m)``); the pad rows' outputs are dropped.
        Not with a mask (lucidrains' masked convention is not reproduced); no effect with explicit
        landmarks or when ``m`` divides the lengths.
    check_finite : bool
        ``True`` (default): NaN/inf in q, k, v and the positional parameters raise ``ValueError``
        naming the argument. ``False`` skips that pass: non-finite values then reach the landmark
        matrix, whose iterative pseudoinverse reports them as :class:`PinvConvergenceError` (unless
        ``errors="ignore"``), while the exact one passes them to ``xp.linalg.pinv``.

    Returns
    -------
    out : array ``(..., n, dv)`` in the inputs' dtype (float16 inputs are computed in float32).

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes, arrays of different libraries, a wrong number of parameters,
        a ``check_finite`` other than ``True``/``False``, both ``errors`` and ``on_divergence``.
    ValueError
        Shapes that do not match, ``m > min(n, mk)``, ``m <= 0``, landmarks of the wrong shape,
        ``iterations < 0``, an even kernel size, ``causal``, masks it cannot honour (per-query,
        additive, fewer kept keys than landmarks), unknown options, non-finite inputs
        (``check_finite=True``).
    PinvConvergenceError
        The iterative pseudoinverse diverged (``errors="raise"``) or missed ``pinv_tol``.

    References
    ----------
    Xiong et al. 2021 (arXiv 2102.03902); Razavi et al. 2014; see the module docstring.
    """
    return forward(q, k, v, *params, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths,
                   num_landmarks=num_landmarks, pinv=pinv, iterations=iterations, pinv_rtol=pinv_rtol,
                   pinv_tol=pinv_tol, errors=errors, on_divergence=on_divergence,
                   conv_kernel_size=conv_kernel_size, pinv_init=pinv_init, segments=segments,
                   check_finite=check_finite)[0]


# ----------------------------------------------------------------------------- closed-form cost

def exact_pinv_flops(m: int) -> int:
    """Flops charged to one ``m x m`` ``xp.linalg.pinv``, by the linear-algebra convention of
    :mod:`refattn.cost` (``linalg_flops("pinv", m)``: the thin R-SVD ``6 m^3 + 20 m^3`` of Golub & Van
    Loan, *Matrix Computations*, 4th ed., plus ``2 m^3 + m^2 + m`` for ``V diag(1/s) U^T``):
    ``28 m^3 + m^2 + m``. A convention, not what LAPACK does; taken from ``refattn.cost`` when that
    module provides ``linalg_flops``, else this same formula."""
    linalg_flops = getattr(_cost_module, "linalg_flops", None)
    if linalg_flops is not None:
        return int(linalg_flops("pinv", m)[0])
    return 28 * m**3 + m**2 + m


def cost(n: int, d: int, dv: int, *, num_landmarks: int, m_keys: int | None = None, batch: tuple[int, ...] = (),
         pinv: str = "iterative", iterations: int = DEFAULT_ITERATIONS, errors: str | None = None,
         on_divergence: str | None = None, pinv_tol: float | None = None, conv_kernel_size: int | None = None,
         explicit_landmarks: bool = False, itemsize: int = 8) -> Cost:
    r"""Closed-form cost of one unmasked :func:`nystrom_attention` forward call, counted per the
    conventions of :mod:`refattn.cost` on exactly the operations :func:`forward` performs.

    ``q (*batch, n, d)``, ``k (*batch, mk, d)``, ``v (*batch, mk, dv)`` (all with the full batch
    shape), ``m = num_landmarks``, ``J = iterations``, ``b = prod(batch)``. Per batch element:

    - segment means: ``n d + mk d`` (reduction ``N - M`` plus the ``M`` divisions); 0 when explicit;
    - each of ``F (n x m)``, ``A (m x m)``, ``B (m x mk)`` with inner dimension ``d``, for ``r x c``:
      matmul ``2 r d c``, scaling ``r c``, softmax ``4 r c - 2 r`` (max, subtract, sum, divide) and
      ``r c`` exponentials;
    - iterative pinv: ``4 m^2`` (``Z_0``: abs, the two sums and maxima, ``1/(c r)``, the product),
      ``J (8 m^3 + 4 m^2)`` (four matmuls, three identity shifts, the 1/4), and, when checked
      (``errors != "ignore"`` or ``pinv_tol``), ``2 m^3 + 6 m^2`` for ``J >= 1`` (``r_0^2``,
      ``A Z_J``, ``r_J^2``, the two-flop comparison; without the comparison when ``"ignore"``) or
      ``2 m^3 + 3 m^2 - 1`` for ``J = 0`` with ``pinv_tol``; once per call (not per batch
      element) ``3 m^2`` for the scaled identities (``J >= 1``) and ``b - 1`` for the maximum over the
      batch when ``pinv_tol`` is given;
    - exact pinv: :func:`exact_pinv_flops` per matrix (``refattn.cost``'s convention for
      ``linalg.pinv``, ``28 m^3 + m^2 + m``), also reported alone as ``per_op["linalg.pinv"]``;
    - ``F (Z (B V))``: ``2 m mk dv + 2 m^2 dv + 2 n m dv``;
    - convolution skip: ``2 K n dv`` (``K`` products, ``K - 1`` sums, the addition to the output).

    ``transcendentals = b (n m + m^2 + m mk)``. ``peak_bytes`` is a model, an upper bound of the
    counted peak on the shapes checked (counted / model between 0.3 and 0.99), not a proven one: the
    arrays the forward pass keeps for the backward pass (landmarks, ``F``, ``A``, ``B``, the ``J``
    iterates and ``Z`` or the exact ``Z``, ``B V``, ``Z B V``, the output, the padded ``v`` of the
    skip) plus the transients (three ``max(n, mk) x m`` blocks of a softmax, ``8 m^2`` of an
    iteration, ``4 m^2`` identities, ``2 n dv`` of the skip), times ``itemsize``:
    ``O((n + mk) m + J m^2)``, linear in ``n`` at fixed ``m``. Masked calls add
    ``O(m mk d)`` flops and memory (the averaging matrix of the kept keys); not modelled here.
    The options are validated as :func:`nystrom_attention` validates them.
    """
    n, d, dv, m = (check_int(name, val, minimum=1) for name, val in
                   (("n", n), ("d", d), ("dv", dv), ("num_landmarks", num_landmarks)))
    mk = n if m_keys is None else check_int("m_keys", m_keys, minimum=1)
    if not explicit_landmarks and m > min(n, mk):
        msg = f"num_landmarks must be at most min(n, mk) = {min(n, mk)}, got {m}"
        raise ValueError(msg)
    opts = _pinv_options(mode=pinv, iterations=iterations, tol=pinv_tol, errors=errors, on_divergence=on_divergence)
    conv_kernel_size = _check_kernel_size(conv_kernel_size)
    b = math.prod(batch)
    J = opts.iterations

    def softmax_block(r: int, c: int) -> int:
        return 2 * r * d * c + r * c + 4 * r * c - 2 * r

    per = 0 if explicit_landmarks else n * d + mk * d
    per += softmax_block(n, m) + softmax_block(m, m) + softmax_block(m, mk)
    once = 0
    per_op: dict[str, Any] = {}
    if opts.mode == "iterative":
        per += 4 * m * m + J * (8 * m**3 + 4 * m * m)
        if J >= 1:
            once += 3 * m * m
        if opts.checked and J >= 1:
            per += 2 * m**3 + 6 * m * m - 2 + (2 if opts.errors != "ignore" else 0)
        elif opts.checked and opts.tol is not None:
            per += 2 * m**3 + 3 * m * m - 1
        if opts.tol is not None:
            once += b - 1
    else:
        per += exact_pinv_flops(m)
        per_op["linalg.pinv"] = Cost(flops=b * exact_pinv_flops(m))
    per += 2 * m * mk * dv + 2 * m * m * dv + 2 * n * m * dv
    if conv_kernel_size is not None:
        per += 2 * conv_kernel_size * n * dv
    trans = b * (n * m + m * m + m * mk)
    n_z = J + 1 if opts.mode == "iterative" else 1
    kept = (0 if explicit_landmarks else 2 * m * d) + n * m + m * m + m * mk + n_z * m * m + 2 * m * dv + n * dv
    if conv_kernel_size is not None:
        kept += (mk + conv_kernel_size - 1) * dv + 2 * n * dv  # padded v; the running sum and one product
    transient = 3 * max(n, mk) * m + 8 * m * m  # a softmax: logits, shifted logits, exponentials; X, T1-T3
    peak = itemsize * (b * (kept + transient) + 4 * m * m)  # + the scaled identities, once
    return Cost(flops=b * per + once, transcendentals=trans, peak_bytes=peak, per_op=per_op)
