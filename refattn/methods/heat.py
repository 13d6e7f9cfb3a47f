r"""HEAT (Catapang, "Hadamard Estimated Attention Transformer"), made precise.

The paper never writes its method as an equation on ``Q, K, V``. Its ingredients are the rank-``r``
Eckart-Young truncation of a matrix (eqs. 4-5), the identification ``x (.) y = x . y^T`` (eq. 7,
which conflates the elementwise product with the outer product) and the identity
``A (x (.) y) = (A x) (.) (A y)`` (eq. 10), which is false for a general ``A``: it holds for every
``x, y`` exactly when each row of ``A`` has at most one non-zero entry and that entry is 1 (see
:func:`eq10_holds`). refattn therefore implements the readings that can be defended, each as an
option ``reading=`` of :func:`heat_attention`, with ``S = s Q K^T`` (``s = 1/sqrt(d)`` by default):

``"logits"``   -- the Eckart-Young approximation of the logits matrix,

.. math::  O = \operatorname{softmax}(\operatorname{trunc}_r(s Q K^\top) + B)\, V,

               ``trunc_r(A) = U_r Sigma_r V_r^T`` (top ``r`` singular triplets). The truncation is
               of the *unmasked* scaled logits; the mask ``B`` (boolean, additive, causal, key
               lengths) is applied afterwards, exactly as in :func:`refattn.softmax_attention`.
``"features"`` -- project queries and keys onto the top-``r`` right singular subspace ``P_r``
               (``d x r``, orthonormal columns) of ``K`` (``basis="k"``) or of the stacked
               ``[Q; K]`` (``basis="qk"``):

.. math::  O = \operatorname{softmax}(s\,(Q P_r)(K P_r)^\top + B)\, V .

               Because ``Pi = P_r P_r^T`` is an orthogonal projector, ``(Q P_r)(K P_r)^T = Q Pi K^T``,
               and ``K Pi = trunc_r(K)`` (``X Pi = trunc_r(X)`` for ``X = [Q; K]``): this reading
               is *exact attention on truncated features*, ``softmax(s Q trunc_r(K)^T) V`` for
               ``basis="k"`` and ``softmax(s X_r[:n] X_r[n:]^T) V`` with ``X_r = trunc_r([Q; K])``
               for ``basis="qk"``, and it is computed in that form.
``"hadamard"`` -- the "exact Hadamard transformer" baseline of the paper's Table I. Reading: the
               Hadamard product ``q_i (.) k_j`` replaces the dot product ``q_i . k_j``
               ("the Hadamard product approximation as a substitute for the dot product",
               contribution 3), which leaves one logit per channel ``c``; the softmax runs over
               keys per channel and weights the same channel of ``v``:

.. math::  O_{ic} = \sum_j \operatorname{softmax}_j(s\, q_{ic} k_{jc} + B_{ij})\, v_{jc},

               which needs ``dv == d``. Two other readings were rejected: with eq. (7) taken
               literally (``x (.) y := x . y^T``) the "exact Hadamard" logits are ``Q K^T`` and the
               baseline *is* exact softmax attention (use :func:`refattn.softmax_attention`), which
               contradicts Table I listing it apart from the vanilla transformer; and the matrix
               product ``Q (.) K`` needs ``n == m`` and gives an ``(n, d)`` array, not attention
               weights. The scale keeps the library's default ``1/sqrt(d)`` (pass ``scale=1.0``
               for one unscaled product per channel).

No reading is O(n): each forms ``n x m`` logits (``hadamard``: ``n x m x d``) before the softmax;
see :func:`cost` and the ``heat-on`` claim of the ledger.

Backward through the truncated SVD
----------------------------------
Let ``A = U Sigma V^T`` (``U1, V1, sigma_a``: the top ``r``; ``U2, V2, sigma_b``: the rest, with
``sigma_b = 0`` on the orthogonal complements) and ``A_r = U1 Sigma_1 V1^T``. For a cotangent ``G``
of ``A_r`` write ``G~ = U^T G V`` in blocks. First-order perturbation of the top-``r`` left and right
singular subspaces (Stewart & Sun, ch. V; the standard SVD differential, Townsend 2016) gives

.. math::

    U^\top dA\, V =
    \begin{pmatrix} \tilde G_{11} & M_{12} \\ M_{21} & 0 \end{pmatrix},\quad
    (M_{12})_{ab} = \frac{\sigma_a(\sigma_a \tilde G_{12,ab} + \sigma_b \tilde G_{21,ba})}
                         {\sigma_a^2 - \sigma_b^2},\quad
    (M_{21})_{ba} = \frac{\sigma_a(\sigma_a \tilde G_{21,ba} + \sigma_b \tilde G_{12,ab})}
                         {\sigma_a^2 - \sigma_b^2}

(the map is self-adjoint in these coordinates). On the complements ``sigma_b = 0`` and the terms
reduce to ``(I - U U^T) G V1 V1^T + U1 U1^T G (I - V V^T)``, so only the thin SVD is needed. The
whole cotangent is assembled as ``dA = U1 X^T + Y V1^T`` with ``(n + m) r``-sized ``X, Y``
(:func:`_trunc_vjp`), never as a dense ``U^T G V``. It needs only ``G V1`` and ``G^T U1``.

Where it is undefined: the truncation ``A -> A_r`` is differentiable iff ``sigma_r > sigma_{r+1}``
(for ``r`` below the structural rank). At ``sigma_r = sigma_{r+1} > 0`` the minimiser of the
Eckart-Young problem is not unique (the forward value itself depends on the SVD routine) and the
derivative blows up like ``1 / (sigma_r - sigma_{r+1})``; at ``sigma_r = sigma_{r+1} = 0`` (``r``
above the numerical rank) ``A_r = A`` but the map is not differentiable (a perturbation can raise the
rank). Ties *inside* the top ``r`` or inside the tail are harmless: only the block structure
matters. refattn checks the relative gap ``(sigma_r - sigma_{r+1}) / sigma_1`` in the forward pass
and, below ``gap_rtol`` (default ``sqrt(eps)`` of the working dtype: below it more than half the
digits of the computed subspace and of the gradient are lost, by Wedin's bound
``sin theta <= ||E|| / gap`` with ``||E|| ~ eps sigma_1``), acts under the failure policy
``errors``: a ``ValueError`` (``"raise"``, the default), a ``RuntimeWarning`` (``"warn"``) or
nothing (``"ignore"``). (``on_degenerate="raise"|"warn"`` is the deprecated spelling.) At
``r`` equal to the structural rank ``k`` (``min(n, m, d)`` for the logits, ``min(rows, d)`` for the
features) ``trunc_r`` is the identity on every reachable matrix, there is no ``sigma_{r+1}`` and no
check; this is the "r = full rank reproduces exact attention" case, computed by the same code.

Where the cotangents come from: the ``features`` readings materialise the truncated features and
run softmax's implementation on them; its backward returns ``G`` itself. The ``logits``
reading factors ``S = s Q K^T`` through the QR factorisations ``Q = Q_q R_q``, ``K = Q_k R_k`` (so
its SVD costs ``O((n + m) d^2 + d^3)``, not ``O(n m min(n, m))``: ``sigma_b = 0`` exactly beyond
``min(n, m, d)``) and runs the softmax on the zero-padded features ``a = [U_r Sigma_r, U_r]``,
``b = [V_r, 0]`` (``a b^T = S_r`` exactly: the padding adds zeros), so that one softmax backward
returns both ``G V_r`` (first ``r`` columns of ``da``) and ``G^T U_r`` (last ``r`` of ``db``)
without dividing by a singular value.

Validation and implementation
-----------------------------
:func:`forward` validates once: the arrays, every option into one frozen :class:`Options`
(:func:`_options`, which also resolves softmax's options), the data-dependent step
:func:`_check_data` (finiteness: ``q`` and ``k`` always for the truncating readings, which
decompose them, everything with ``check_finite=True``) and the mask. The implementation
``_forward(xp, q, k, v, spec, opts, dtype)`` never validates; it calls softmax's implementation
``refattn.methods.softmax._forward`` (not the public function), and its one data-dependent check,
the singular gap, runs in one place (:func:`_svd_checked`) under the policy ``errors``.

References
----------
J. K. Catapang, "Hadamard Estimated Attention Transformer (HEAT)" (paper 000 of refattn);
C. Eckart & G. Young 1936; L. Mirsky 1960; J. Townsend 2016, "Differentiating the singular value
decomposition"; G. W. Stewart & J.-G. Sun 1990, "Matrix perturbation theory".
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._checks import check_choice, check_flag, check_int, check_real, legacy_policy, report
from .._masks import MaskSpec, make_mask, mask_block
from .._primitives import exp_consuming, linalg
from .._registry import MASK_KINDS, Function, Method, declare
from .._xp import (
    broadcast_shapes,
    check_float_array,
    check_overflow,
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
from ..cost import Cost, linalg_flops
from . import softmax as _softmax

__all__ = ["heat_attention", "forward", "backward", "cost", "Options", "Residuals", "Grads", "READINGS", "BASES",
           "truncate", "truncate_forward", "truncate_backward", "truncate_cost", "eq10_holds",
           "structural_rank", "DEGENERATE_ACTIONS"]

READINGS = ("logits", "features", "hadamard")
BASES = ("k", "qk")
DEGENERATE_ACTIONS = ("raise", "warn")  # the values of the deprecated on_degenerate
DEFAULT_BLOCK_Q_HADAMARD = 64


def _mT(xp: Any, a: Any) -> Any:
    return xp.matrix_transpose(a)


# ----------------------------------------------------------------------------------------------
# The truncated SVD: forward (with the gap check) and the hand-written vector-Jacobian product
# ----------------------------------------------------------------------------------------------

class _TSVD(NamedTuple):
    u: Any  # (..., p, k) orthonormal columns, k = number of singular values computed
    s: Any  # (..., k) descending
    v: Any  # (..., c, k)
    r: int


def _svd(xp: Any, a: Any) -> tuple[Any, Any, Any]:
    u, s, vh = linalg(xp, "svd")(a, full_matrices=False)
    return u, s, _mT(xp, vh)


def _check_rank(rank: Any, k: int, what: str) -> int:
    if not isinstance(rank, numbers.Integral) or rank is True or rank is False:
        msg = f"rank must be a positive integer (the truncation rank r), got {rank!r}"
        raise TypeError(msg)
    rank = check_int("rank", rank, minimum=1, what="the truncation rank r")
    if rank > k:
        msg = (f"rank must be at most the rank available to {what}, {k}, got {rank}: a rank-{rank} "
               f"truncation of a matrix of rank <= {k} is not defined")
        raise ValueError(msg)
    return rank


def _gap_rtol(xp: Any, dtype: Any, gap_rtol: float | None) -> float:
    tol = check_real("gap_rtol", gap_rtol, minimum=0, maximum=1, open_max=True, allow_none=True)
    return float(xp.finfo(dtype).eps) ** 0.5 if tol is None else tol


def _errors(errors: Any, on_degenerate: Any) -> str:
    """The failure policy of the gap check; ``on_degenerate`` is its deprecated spelling."""
    return legacy_policy(errors, {"on_degenerate": on_degenerate},
                         mapping={"on_degenerate": {a: a for a in DEGENERATE_ACTIONS}})


def _check_gap(xp: Any, s: Any, r: int, tol: float, errors: str, what: str) -> None:
    """Relative gap ``(sigma_r - sigma_{r+1}) / sigma_1`` must exceed ``tol`` (only for ``r < k``)."""
    if r >= s.shape[-1] or is_lazy(s):  # lazy/traced: not checked (a tied pair gives one of the truncations)
        return
    gap = s[..., r - 1] - s[..., r]
    bad = gap <= tol * s[..., 0]
    if not bool(xp.any(bad)):
        return
    s1 = s[..., 0]
    rel = xp.where(s1 > 0, gap / xp.where(s1 > 0, s1, 1.0), 0.0)
    worst = float(xp.min(rel))
    msg = (f"{what}: the singular values sigma_{r} and sigma_{r + 1} are (nearly) tied, relative gap "
           f"(sigma_r - sigma_(r+1)) / sigma_1 = {worst:.3e} <= gap_rtol = {tol:.3e}; the rank-{r} "
           "truncation is not unique (or r exceeds the numerical rank) and its derivative is undefined. "
           "Choose another rank, or pass errors='warn' (or 'ignore') to compute it anyway")
    report(errors, msg)


def _svd_checked(xp: Any, a: Any, r: int, tol: float, errors: str, what: str) -> tuple[Any, Any, Any]:
    """The thin SVD ``(U, sigma, V)`` of ``a`` and the singular-gap check of a rank-``r`` truncation
    (the one data-dependent check inside the implementation; ``errors="ignore"`` skips it). A
    non-finite ``a`` (huge finite q, k whose product overflows) raises before the decomposition,
    which may not return on infinite entries (LAPACK's SVD iterates forever on some of them)."""
    fin = xp.all(xp.isfinite(a))
    if not is_lazy(fin) and not bool(fin):
        msg = (f"{what}: the matrix to decompose overflows {a.dtype} although q and k are finite (their "
               "entries are too large); rescale q and k (or the scale) so that s * |q| * |k| stays in range")
        raise ValueError(msg)
    u, s, v = _svd(xp, a)
    if errors != "ignore":
        _check_gap(xp, s, r, tol, errors, what)
    return u, s, v


def _trunc_vjp(xp: Any, t: _TSVD, gv1: Any, gtu1: Any) -> tuple[Any, Any]:
    """Cotangent of ``A`` from that of ``A_r``, as ``dA = U1 X^T + Y V1^T``.

    ``gv1 = G V1`` (``(..., p, r)``) and ``gtu1 = G^T U1`` (``(..., c, r)``); see the module notes.
    """
    u, s, v, r = t
    u1, v1, s1 = u[..., :r], v[..., :r], s[..., :r]
    g11 = _mT(xp, u1) @ gv1                                    # U1^T G V1  (r, r)
    lc = gv1 - u @ (_mT(xp, u) @ gv1)                          # (I - U U^T) G V1
    rc = gtu1 - v @ (_mT(xp, v) @ gtu1)                        # (I - V V^T) G^T U1
    x = v1 @ _mT(xp, g11) + rc
    y = lc
    if s.shape[-1] > r:
        u2, v2, s2 = u[..., r:], v[..., r:], s[..., r:]
        g21 = _mT(xp, u2) @ gv1                                # U2^T G V1  (k - r, r)
        g12 = _mT(xp, _mT(xp, v2) @ gtu1)                      # U1^T G V2  (r, k - r)
        sa, sb = s1[..., :, None], s2[..., None, :]
        kab = sa / ((sa - sb) * (sa + sb))
        g21t = _mT(xp, g21)
        m12 = kab * (sa * g12 + sb * g21t)                     # (r, k - r)
        m21t = kab * (sa * g21t + sb * g12)                    # M21^T  (r, k - r)
        x = x + v2 @ _mT(xp, m12)
        y = y + u2 @ _mT(xp, m21t)
    return x, y


class TruncResiduals(NamedTuple):
    t: Any  # _TSVD
    shape: tuple[int, ...]
    dtype: Any


def truncate_forward(a: Any, /, *, rank: int, gap_rtol: float | None = None, errors: str | None = None,
                     on_degenerate: str | None = None) -> tuple[Any, TruncResiduals]:
    """Forward pass of :func:`truncate`; returns ``(A_r, residuals)``."""
    xp = namespace(a)
    check_float_array("a", a, xp, ndim_min=2)
    errors = _errors(errors, on_degenerate)
    p, c = a.shape[-2], a.shape[-1]
    r = _check_rank(rank, min(p, c), f"a of shape {tuple(a.shape)}")
    dtype = a.dtype
    work = compute_dtype(xp, dtype)
    tol = _gap_rtol(xp, work, gap_rtol)
    _check_finite_array("a", a, xp)  # the data-dependent step: the SVD needs finite entries
    aw = xp.astype(a, work) if work != dtype else a
    u, s, v = _svd_checked(xp, aw, r, tol, errors, "truncate")
    t = _TSVD(u, s, v, r)
    out = (u[..., :r] * s[..., None, :r]) @ _mT(xp, v[..., :r])
    return (xp.astype(out, dtype) if work != dtype else out), TruncResiduals(t, tuple(a.shape), dtype)


class TruncGrads(NamedTuple):
    da: Any


def truncate_backward(res: TruncResiduals, dout: Any, /) -> TruncGrads:
    """Hand-written backward of :func:`truncate` (module notes, "Backward through the truncated SVD")."""
    t = res.t
    xp = namespace(t.u)
    g = xp.astype(dout, t.u.dtype) if dout.dtype != t.u.dtype else dout
    u1, v1 = t.u[..., :t.r], t.v[..., :t.r]
    x, y = _trunc_vjp(xp, t, g @ v1, _mT(xp, g) @ u1)
    da = u1 @ _mT(xp, x) + y @ _mT(xp, v1)
    return TruncGrads(xp.astype(da, res.dtype) if da.dtype != res.dtype else da)


@declare(Function(truncate_forward, truncate_backward))
def truncate(a: Any, /, *, rank: int, gap_rtol: float | None = None, errors: str | None = None,
             on_degenerate: str | None = None) -> Any:
    r"""Rank-``r`` Eckart-Young truncation ``A_r = U_r Sigma_r V_r^T`` of ``a (..., p, c)``.

    ``A_r`` minimises ``||A - X||`` over ``rank(X) <= r`` in the spectral and the Frobenius norm
    (every unitarily invariant norm; Eckart & Young 1936, Mirsky 1960), with errors
    ``sigma_{r+1}`` and ``(sum_{i>r} sigma_i^2)^{1/2}``. Differentiable (hand-written backward, see the
    module notes) where ``sigma_r > sigma_{r+1}``.

    Parameters
    ----------
    a : array ``(..., p, c)``, real floating, finite.
    rank : int, ``1 <= rank <= min(p, c)``.
    gap_rtol : float, optional
        Smallest accepted relative gap ``(sigma_r - sigma_{r+1}) / sigma_1`` (default ``sqrt(eps)``).
    errors : {"raise", "warn", "ignore"}, optional
        What a gap below ``gap_rtol`` does: ``ValueError``, ``RuntimeWarning``, or nothing. ``None``
        (default) means ``"raise"``.
    on_degenerate : {"raise", "warn"}, optional
        Deprecated spelling of ``errors`` (``DeprecationWarning``); give one of the two.

    Raises
    ------
    TypeError
        A non-floating array, a non-integer rank, both ``errors`` and ``on_degenerate``.
    ValueError
        ``rank <= 0`` or ``rank > min(p, c)``, NaN/inf entries, a degenerate gap (``"raise"``).
    """
    return truncate_forward(a, rank=rank, gap_rtol=gap_rtol, errors=errors, on_degenerate=on_degenerate)[0]


def truncate_cost(p: int, c: int, *, rank: int, batch: tuple[int, ...] = ()) -> Cost:
    """Closed-form cost of :func:`truncate`: ``U_r * sigma`` (``p r``) and the product (``2 p r c``);
    the thin SVD is counted by the :func:`refattn.cost.linalg_flops` convention and also reported under
    ``per_op["linalg.svd"]`` (see :func:`_svd_flops`)."""
    nb = math.prod(batch)
    k = min(p, c)
    gap = 2 if rank < k else 0
    arith = nb * (p * rank + 2 * p * rank * c + gap)
    svd = nb * _svd_flops(p, c)
    return Cost(flops=arith + svd, per_op={"linalg.svd": Cost(flops=svd)})


def _qr_flops(p: int, c: int) -> tuple[int, int]:
    """``(flops, transcendentals)`` of ``linalg.qr`` (reduced) of a ``(p, c)`` matrix: the counting
    convention :func:`refattn.cost.linalg_flops` (Householder ``R`` and the thin ``Q`` formed
    explicitly, Golub & Van Loan, 4th ed., sec. 5.2.1; ``min(p, c)`` square roots)."""
    return linalg_flops("qr", p, c, mode="reduced")


def _svd_flops(p: int, c: int) -> int:
    """Flops of the thin ``linalg.svd`` (``U1, Sigma, V``) of a ``(p, c)`` matrix: the counting
    convention :func:`refattn.cost.linalg_flops` (R-SVD, ``6 P C^2 + 20 C^3`` with ``P = max(p, c)``,
    ``C = min(p, c)``, Golub & Van Loan, 4th ed., fig. 8.6.1; no transcendentals)."""
    return linalg_flops("svd", p, c, full_matrices=False)[0]


# ----------------------------------------------------------------------------------------------
# eq. (10)
# ----------------------------------------------------------------------------------------------

def eq10_holds(a: Any, /) -> bool:
    r"""Whether ``A (x (.) y) = (A x) (.) (A y)`` holds for **every** ``x, y`` (HEAT eq. 10).

    Row ``i`` satisfies it iff ``sum_j a_j x_j y_j = (sum_j a_j x_j)(sum_j a_j y_j)`` for all
    ``x, y``, i.e. iff the bilinear forms agree: ``diag(a) = a a^T``, i.e. ``a_j a_l = 0`` for
    ``j != l`` and ``a_j^2 = a_j``: **each row of A has at most one non-zero entry, and it equals 1**
    (A selects, duplicates or zeroes coordinates). For any other row a witness is ``x = e_j``,
    ``y = e_l`` (two non-zeros ``a_j, a_l``: left side 0, right side ``a_j a_l``) or ``x = y = e_j``
    (a single non-zero ``a_j != 1``: ``a_j`` against ``a_j^2``). Returns a Python ``bool`` for the
    whole (possibly batched) array.
    """
    xp = namespace(a)
    check_float_array("a", a, xp, ndim_min=2)
    nonzero = xp.astype(a != 0, xp.int64)
    at_most_one = xp.all(xp.sum(nonzero, axis=-1) <= 1)
    ones = xp.all((a == 0) | (a == 1))
    return bool(at_most_one) and bool(ones)


# ----------------------------------------------------------------------------------------------
# HEAT attention
# ----------------------------------------------------------------------------------------------

class Residuals(NamedTuple):
    reading: str
    basis: str
    t: Any  # _TSVD of the truncated matrix (None for "hadamard")
    inner: Any  # softmax Residuals ("logits", "features") or a tuple for "hadamard"
    q: Any  # working-precision inputs
    k: Any
    v: Any
    scale: float
    dtype: Any
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class Grads(NamedTuple):
    dq: Any
    dk: Any
    dv: Any


def structural_rank(n: int, m: int, d: int, *, reading: str = "logits", basis: str = "k") -> int:
    """The largest rank the truncated matrix can have: ``min(n, m, d)`` for the logits ``s Q K^T``,
    ``min(m, d)`` for ``K`` and ``min(n + m, d)`` for ``[Q; K]`` (``reading="features"``)."""
    if reading == "logits":
        return min(n, m, d)
    if reading == "features":
        return min(m, d) if basis == "k" else min(n + m, d)
    msg = f"reading {reading!r} has no truncation rank"
    raise ValueError(msg)


def _check_reading(reading: Any, basis: Any, rank: Any) -> None:
    check_choice("reading", reading, READINGS)
    if basis not in BASES:
        msg = f"basis must be one of {BASES} (the matrix whose right singular subspace is used), got {basis!r}"
        raise ValueError(msg)
    if reading == "hadamard" and rank is not None:
        msg = f"reading='hadamard' is the exact (untruncated) baseline and takes no rank, got rank={rank!r}"
        raise ValueError(msg)
    if reading != "hadamard" and rank is None:
        msg = f"reading={reading!r} needs rank (the truncation rank r, a positive integer)"
        raise TypeError(msg)


@dataclass(frozen=True)
class Options:
    """The resolved options of one :func:`heat_attention` call."""

    reading: str
    basis: str
    rank: int | None  # None for "hadamard"
    scale: float
    gap_rtol: float  # resolved (sqrt(eps) of the working dtype by default); unused for "hadamard"
    errors: str
    check_finite: bool
    block: int  # the query block of the "hadamard" reading
    softmax: Any  # softmax.Options of the inner softmax (None for "hadamard")


def _options(xp: Any, batch: tuple[int, ...], n: int, m: int, d: int, dv: int, work: Any, *, rank: Any,
             reading: Any, basis: Any, scale: Any, impl: Any, block_q: Any, block_k: Any, gap_rtol: Any,
             errors: Any, on_degenerate: Any, check_finite: Any) -> Options:
    """Validate and resolve every option of :func:`forward` (shapes enter through the rank bound)."""
    _check_reading(reading, basis, rank)
    errors = _errors(errors, on_degenerate)
    check_flag("check_finite", check_finite)
    s = resolve_scale(scale, d)
    if reading == "hadamard":
        check_choice("impl", impl, _softmax.IMPLS)
        if dv != d:
            msg = (f"reading='hadamard' weights channel c of v by the channel-c logits q_ic k_jc, so v "
                   f"must have d = {d} channels, got v of shape {(*batch, m, dv)}")
            raise ValueError(msg)
        block = check_int("block_q", block_q, minimum=1, allow_none=True) or DEFAULT_BLOCK_Q_HADAMARD
        return Options(reading, basis, None, s, 0.0, errors, check_finite, block, None)
    kmax = structural_rank(n, m, d, reading=reading, basis=basis)
    what = ("the logits s Q K^T (min(n, m, d))" if reading == "logits" else
            "K (min(m, d))" if basis == "k" else "[Q; K] (min(n + m, d))")
    r = _check_rank(rank, kmax, what)
    tol = _gap_rtol(xp, work, gap_rtol)
    inner = _softmax.options(xp, batch, n, m, 2 * r if reading == "logits" else d, work,
                             scale=1.0 if reading == "logits" else s, impl=impl, block_q=block_q, block_k=block_k)
    return Options(reading, basis, r, s, tol, errors, check_finite, DEFAULT_BLOCK_Q_HADAMARD, inner)


def _check_data(xp: Any, q: Any, k: Any, v: Any, opts: Options) -> None:
    """The data-dependent step before the implementation: the truncating readings decompose ``q``
    and ``k``, which must be finite whatever ``check_finite``; ``check_finite`` adds ``v`` (and
    ``q, k`` for ``"hadamard"``)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if opts.check_finite or (opts.reading != "hadamard" and name != "v"):
            _check_finite_array(name, a, xp)


def _logits_forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, opts: Options) -> tuple[Any, Any, Any]:
    r = opts.rank
    qr = linalg(xp, "qr")
    qq, rq = qr(q)
    qk, rk = qr(k)
    core = (rq @ _mT(xp, rk)) * opts.scale                      # S = Qq core Qk^T
    uc, s, vc = _svd_checked(xp, core, r, opts.gap_rtol, opts.errors, "heat_attention(reading='logits')")
    u, vv = qq @ uc, qk @ vc
    t = _TSVD(u, s, vv, r)
    ur, vr = u[..., :r], vv[..., :r]
    a = xp.concat([ur * s[..., None, :r], ur], axis=-1)        # a b^T = U_r Sigma_r V_r^T exactly
    b = xp.concat([vr, xp.zeros_like(vr)], axis=-1)
    out, inner = _softmax._forward(xp, a, b, v, spec, opts.softmax)
    return out, t, inner


def _features_forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, opts: Options) -> tuple[Any, Any, Any]:
    n, r, basis = q.shape[-2], opts.rank, opts.basis
    if basis == "k":
        x = k
    else:
        batch = broadcast_shapes(q.shape[:-2], k.shape[:-2])
        x = xp.concat([xp.broadcast_to(q, (*batch, *q.shape[-2:])),
                       xp.broadcast_to(k, (*batch, *k.shape[-2:]))], axis=-2)
    u, s, vv = _svd_checked(xp, x, r, opts.gap_rtol, opts.errors,
                            f"heat_attention(reading='features', basis={basis!r})")
    t = _TSVD(u, s, vv, r)
    xr = (u[..., :r] * s[..., None, :r]) @ _mT(xp, vv[..., :r])
    if basis == "k":
        out, inner = _softmax._forward(xp, q, xr, v, spec, opts.softmax)
    else:
        out, inner = _softmax._forward(xp, xr[..., :n, :], xr[..., n:, :], v, spec, opts.softmax)
    return out, t, inner


def _hadamard_forward(xp: Any, q: Any, k: Any, v: Any, spec: Any, scale: float, batch: tuple[int, ...],
                      block: int) -> tuple[Any, Any]:
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    dev = device(q)
    qs = q * scale
    kk, vv = k[..., None, :, :], v[..., None, :, :]
    outs, lses = [], []
    if m == 0:
        return (xp.zeros((*batch, n, d), dtype=q.dtype, device=dev),
                xp.full((*batch, n, d), -math.inf, dtype=q.dtype, device=dev))
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        keep, bias = mask_block(xp, spec, i0, i1, 0, m, dev)
        logit = qs[..., i0:i1, None, :] * kk                     # (..., b, m, d)
        if bias is not None:
            logit = logit + bias[..., None]
        if keep is not None:
            logit = xp.where(keep[..., None], logit, -math.inf)
        mx = xp.max(logit, axis=-2)                               # (..., b, d)
        p = exp_consuming(xp, logit - _softmax._safe(xp, mx)[..., None, :])
        l = xp.sum(p, axis=-2)
        acc = xp.sum(p * vv, axis=-2)
        pos = l > 0
        l1 = xp.where(pos, l, 1.0)
        outs.append(acc / l1)
        lses.append(xp.where(pos, _softmax._safe(xp, mx) + xp.log(l1), -math.inf))
    if not outs:
        empty = xp.zeros((*batch, 0, d), dtype=q.dtype, device=dev)
        return empty, empty
    return xp.concat(outs, axis=-2), xp.concat(lses, axis=-2)


def _hadamard_backward(xp: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, spec: Any, scale: float,
                       dout: Any, batch: tuple[int, ...], block: int) -> tuple[Any, Any, Any]:
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    dev = device(q)
    qs = q * scale
    kk, vv = k[..., None, :, :], v[..., None, :, :]
    delta = out * dout
    lse0 = _softmax._safe(xp, lse)
    dk = xp.zeros((*batch, m, d), dtype=q.dtype, device=dev)
    dv = xp.zeros((*batch, m, d), dtype=q.dtype, device=dev)
    dqs = []
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        keep, bias = mask_block(xp, spec, i0, i1, 0, m, dev)
        logit = qs[..., i0:i1, None, :] * kk
        if bias is not None:
            logit = logit + bias[..., None]
        if keep is not None:
            logit = xp.where(keep[..., None], logit, -math.inf)
        p = exp_consuming(xp, logit - lse0[..., i0:i1, None, :])  # 0 on masked entries and empty rows
        do = dout[..., i0:i1, None, :]
        dv = dv + xp.sum(p * do, axis=-3)
        dl = p * (do * vv - delta[..., i0:i1, None, :])
        dqs.append(xp.sum(dl * kk, axis=-2) * scale)
        dk = dk + xp.sum(dl * qs[..., i0:i1, None, :], axis=-3)
    dq = xp.concat(dqs, axis=-2) if dqs else xp.zeros((*batch, 0, d), dtype=q.dtype, device=dev)
    return dq, dk, dv


def _forward(xp: Any, q: Any, k: Any, v: Any, spec: MaskSpec, opts: Options,
             dtype: Any = None) -> tuple[Any, Residuals]:
    """The implementation: valid working-precision ``q, k, v``, their ``MaskSpec`` and resolved
    :class:`Options`; returns ``(out, Residuals)``, ``out`` in the working precision. ``dtype`` is
    the dtype :func:`backward` returns gradients in (default ``q.dtype``)."""
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    dtype = q.dtype if dtype is None else dtype
    if opts.reading == "hadamard":
        batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        out, lse = _hadamard_forward(xp, q, k, v, spec, opts.scale, batch, opts.block)
        return out, Residuals(opts.reading, opts.basis, None, (out, lse, spec, opts.block, batch), q, k, v,
                              opts.scale, dtype, shapes)
    run = _logits_forward if opts.reading == "logits" else _features_forward
    out, t, inner = run(xp, q, k, v, spec, opts)
    return out, Residuals(opts.reading, opts.basis, t, inner, q, k, v, opts.scale, dtype, shapes)


def forward(q: Any, k: Any, v: Any, /, *, rank: int | None = None, reading: str = "logits", basis: str = "k",
            mask: Any = None, causal: bool | str = False, scale: float | None = None, key_lengths: Any = None,
            impl: str = "auto", block_q: int | None = None, block_k: int | None = None,
            gap_rtol: float | None = None, errors: str | None = None, on_degenerate: str | None = None,
            check_finite: bool = True) -> tuple[Any, Residuals]:
    """HEAT forward pass; returns ``(out, Residuals)``. See :func:`heat_attention`."""
    xp, batch = validate_qkv(q, k, v, extra={"mask": mask, "key_lengths": key_lengths})
    n, d, m, dvd = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    dtype = q.dtype
    work = compute_dtype(xp, dtype)
    opts = _options(xp, batch, n, m, d, dvd, work, rank=rank, reading=reading, basis=basis, scale=scale,
                    impl=impl, block_q=block_q, block_k=block_k, gap_rtol=gap_rtol, errors=errors,
                    on_degenerate=on_degenerate, check_finite=check_finite)
    _check_data(xp, q, k, v, opts)
    work, (q, k, v) = to_working(xp, q, k, v)
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=work)
    out, res = _forward(xp, q, k, v, spec, opts, dtype)
    if opts.check_finite and opts.errors == "raise":  # huge finite q, k overflow the softmax after the SVD
        check_overflow(xp, out, "heat_attention")
    return (xp.astype(out, dtype) if work != dtype else out), res


def backward(res: Residuals, dout: Any, /) -> Grads:
    """Hand-written backward of :func:`forward`: ``Grads(dq, dk, dv)`` in the inputs' shapes and dtype."""
    q, k, v = res.q, res.k, res.v
    xp = namespace(q, k, v)
    dout = xp.astype(dout, q.dtype) if dout.dtype != q.dtype else dout
    n = q.shape[-2]
    if res.reading == "hadamard":
        out, lse, spec, block, batch = res.inner
        dq, dk, dv = _hadamard_backward(xp, q, k, v, out, lse, spec, res.scale, dout, batch, block)
    elif res.reading == "logits":
        t = res.t
        r = t.r
        da, db, dv = _softmax.backward(res.inner, dout)
        gv1, gtu1 = da[..., :r], db[..., r:]                   # G V_r and G^T U_r
        x, y = _trunc_vjp(xp, t, gv1, gtu1)                    # dS = U_r X^T + Y V_r^T
        u1, v1 = t.u[..., :r], t.v[..., :r]
        dq = (u1 @ (_mT(xp, x) @ k) + y @ (_mT(xp, v1) @ k)) * res.scale
        dk = (x @ (_mT(xp, u1) @ q) + v1 @ (_mT(xp, y) @ q)) * res.scale
    else:
        t = res.t
        u1, v1 = t.u[..., :t.r], t.v[..., :t.r]
        dq_in, dk_in, dv = _softmax.backward(res.inner, dout)
        g = dk_in if res.basis == "k" else xp.concat([dq_in, dk_in], axis=-2)
        x, y = _trunc_vjp(xp, t, g @ v1, _mT(xp, g) @ u1)
        dx = u1 @ _mT(xp, x) + y @ _mT(xp, v1)
        if res.basis == "k":
            dq, dk = dq_in, dx
        else:
            dq, dk = dx[..., :n, :], dx[..., n:, :]
    grads = [unbroadcast(xp, g, shape) for g, shape in zip((dq, dk, dv), res.shapes)]
    return Grads(*(xp.astype(g, res.dtype) if g.dtype != res.dtype else g for g in grads))


def _closed_cost(s: Any, opts: Any, backward: bool) -> Cost | None:
    if backward:
        return None
    return cost(s["n"], s["m"], s["d"], s["dv"], rank=opts.get("rank"), reading=opts.get("reading", "logits"),
                basis=opts.get("basis", "k"), batch=tuple(s["batch"]),
                additive_mask=opts.get("mask") is not None and not _is_bool_mask(opts["mask"]),
                block_q=opts.get("block_q"))


def _is_bool_mask(mask: Any) -> bool:
    return str(getattr(mask, "dtype", "")).endswith("bool")


def _oracle_shape(shape: Any, kind: str) -> Any:
    return shape._replace(dv=shape.d)  # the Hadamard reading multiplies (n, d) by (n, dv) entrywise


@declare(Method(
    forward, backward, name="heat",
    summary="HEAT: truncated-SVD low-rank attention (Catapang), precisely defined readings",
    masks=MASK_KINDS, cost=_closed_cost, error_model="refattn._oracle:heat_hadamard_error_bound",
    grad_error_model=True, oracle_options={"reading": "hadamard"}, adapt_shape=_oracle_shape))
def heat_attention(q: Any, k: Any, v: Any, /, *, rank: int | None = None, reading: str = "logits",
                   basis: str = "k", mask: Any = None, causal: bool | str = False, scale: float | None = None,
                   key_lengths: Any = None, impl: str = "auto", block_q: int | None = None,
                   block_k: int | None = None, gap_rtol: float | None = None, errors: str | None = None,
                   on_degenerate: str | None = None, check_finite: bool = True) -> Any:
    r"""HEAT attention under a stated reading (see the module docstring for the three readings).

    Parameters
    ----------
    q, k, v : arrays ``(..., n, d)``, ``(..., m, d)``, ``(..., m, dv)``
        Real floating, one dtype, namespace and device; leading dimensions broadcast. ``q`` and ``k``
        must be finite (they are decomposed); ``reading="hadamard"`` needs ``dv == d``.
    rank : int
        Truncation rank ``r``, ``1 <= r <=`` :func:`structural_rank` (``min(n, m, d)`` for
        ``"logits"``, ``min(m, d)`` / ``min(n + m, d)`` for ``"features"`` with ``basis="k"`` /
        ``"qk"``). Must be ``None`` for ``"hadamard"``.
    reading : {"logits", "features", "hadamard"}
    basis : {"k", "qk"}
        ``"features"`` only: the matrix whose top-``r`` right singular subspace is used.
    mask, causal, key_lengths, impl, block_q, block_k
        As in :func:`refattn.softmax_attention` (applied after the truncation). ``block_q`` is
        the query block of the ``"hadamard"`` reading (default 64: it holds ``(block, m, d)``).
    scale : float, optional
        ``s``; ``1/sqrt(d)`` by default (every reading).
    gap_rtol : float, optional
        The singular-gap check (module notes): smallest accepted ``(sigma_r - sigma_{r+1}) /
        sigma_1``, default ``sqrt(eps)``.
    errors : {"raise", "warn", "ignore"}, optional
        What a gap below ``gap_rtol`` does: ``ValueError``, ``RuntimeWarning``, nothing. ``None``
        (default) means ``"raise"``.
    on_degenerate : {"raise", "warn"}, optional
        Deprecated spelling of ``errors`` (``DeprecationWarning``); give one of the two.
    check_finite : bool
        ``True`` (default): reject NaN/inf in q, k, v with a ``ValueError`` naming the argument.
        ``False``: skip the pass over ``v`` (and over ``q, k`` for ``"hadamard"``; the truncating
        readings always check ``q`` and ``k``, which they decompose); non-finite values propagate.

    Returns
    -------
    out : array ``(..., n, dv)`` in the inputs' dtype.

    Raises
    ------
    TypeError
        Non-floating or mixed dtypes, a non-integer or missing rank.
    ValueError
        ``rank <= 0`` or above the structural rank, a rank with ``"hadamard"``, an unknown reading or
        basis, NaN/inf in ``q`` or ``k`` (and ``v`` with ``check_finite``), ``dv != d`` for
        ``"hadamard"``, a degenerate singular gap (``errors="raise"``), and every mask / shape error
        of :func:`refattn.softmax_attention`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (xp.asarray(rng.standard_normal((2, 16, 8))) for _ in range(3))
    >>> out = heat_attention(q, k, v, rank=4, reading="features", basis="qk")
    >>> tuple(out.shape)
    (2, 16, 8)
    """
    return forward(q, k, v, rank=rank, reading=reading, basis=basis, mask=mask, causal=causal, scale=scale,
                   key_lengths=key_lengths, impl=impl, block_q=block_q, block_k=block_k, gap_rtol=gap_rtol,
                   errors=errors, on_degenerate=on_degenerate, check_finite=check_finite)[0]


# ----------------------------------------------------------------------------------------------
# Closed-form cost
# ----------------------------------------------------------------------------------------------

def _softmax_dense_flops(n: int, m: int, d: int, dv: int, additive: bool) -> tuple[int, int]:
    """Flops and transcendentals of softmax's implementation with ``impl="dense"``,
    one batch element, counted op by op (``_logits``, max, shift, exp, sum, ``P V``, ``_finish``)."""
    if m == 0:
        return 0, 0
    flops = (n * d + 2 * n * d * m + (n * m if additive else 0)   # q * scale, (sq) k^T, + bias
             + n * (m - 1) + n * m + n * (m - 1)                     # max, s - max, sum
             + 2 * n * m * dv + n * dv + n)                          # P V, / l, max + log l
    return flops, n * m + n                                          # exp, log


def cost(n: int, m: int, d: int, dv: int, *, rank: int | None = None, reading: str = "logits",
         basis: str = "k", batch: tuple[int, ...] = (), additive_mask: bool = False,
         block_q: int | None = None) -> Cost:
    r"""Closed-form forward cost of :func:`heat_attention` (softmax ``impl="dense"``).

    ``flops`` and ``transcendentals`` count exactly what the code does under the conventions of
    :mod:`refattn.cost` (per batch element, times ``prod(batch)``; all batch dimensions equal):

    - ``"logits"`` (``kq = min(n, d)``, ``kk = min(m, d)``, ``k = min(n, m, d)``):
      ``2 kq d kk + kq kk`` (core, scaled) ``+ 2 n kq k + 2 m kk k`` (``U, V``) ``+ 2 [r < k]`` (gap)
      ``+ n r`` (``U_r Sigma_r``) + softmax on ``2r`` features.
    - ``"features"`` (``p = m`` or ``n + m`` rows): ``p r + 2 p r d + 2 [r < min(p, d)]`` + softmax on
      ``d`` features.
    - ``"hadamard"``: ``n d + n m d`` (scaled products) ``[+ n m d]`` (bias) ``+ 3 n d (m - 1)``
      (max, sum, ``sum P v``) ``+ 2 n m d`` (shift, ``P v``) ``+ 2 n d``; ``n m d + n d``
      transcendentals.
    - softmax (dense) on ``f`` features: ``n f + 2 n f m + n m + 2 n (m - 1) + 2 n m dv + n dv + n``
      ``[+ n m]`` flops, ``n m + n`` transcendentals.

    QR and SVD are counted with the conventional dense totals of :func:`refattn.cost.linalg_flops`
    (the counting namespace's convention, so counted and closed form agree exactly): per batch
    element ``"logits"`` adds two reduced QRs (of ``(n, d)`` and ``(m, d)``: flops and ``kq + kk``
    square roots, i.e. transcendentals) and one thin SVD of the ``kq x kk`` core; ``"features"`` one
    thin SVD of ``(p, d)``. Their flops are included in ``flops`` and also reported under
    ``per_op["linalg.qr"]`` and ``per_op["linalg.svd"]``. Bytes and peak memory are not modelled (0).
    """
    _check_reading(reading, basis, rank)
    nb = math.prod(batch)
    qr = svd = 0
    if reading == "hadamard":
        f = n * d + n * m * d + (n * m * d if additive_mask else 0) + 3 * n * d * (m - 1) + 2 * n * m * d + 2 * n * d
        tr = n * m * d + n * d
        if m == 0:
            f, tr = n * d, 0
    elif reading == "logits":
        kq, kk, kc = min(n, d), min(m, d), min(n, m, d)
        r = _check_rank(rank, kc, "the logits")
        (qr_q, sq_q), (qr_k, sq_k) = _qr_flops(n, d), _qr_flops(m, d)
        qr = qr_q + qr_k
        svd = _svd_flops(kq, kk)
        sf, tr = _softmax_dense_flops(n, m, 2 * r, dv, additive_mask)
        tr += sq_q + sq_k
        f = 2 * kq * d * kk + kq * kk + 2 * n * kq * kc + 2 * m * kk * kc + (2 if r < kc else 0) + n * r + sf
    else:
        p = m if basis == "k" else n + m
        r = _check_rank(rank, min(p, d), "the features")
        svd = _svd_flops(p, d)
        sf, tr = _softmax_dense_flops(n, m, d, dv, additive_mask)
        f = p * r + 2 * p * r * d + (2 if r < min(p, d) else 0) + sf
    per_op = {}
    if qr:
        per_op["linalg.qr"] = Cost(flops=nb * qr, transcendentals=nb * (sq_q + sq_k))
    if svd:
        per_op["linalg.svd"] = Cost(flops=nb * svd)
    return Cost(flops=nb * (f + qr + svd), transcendentals=nb * tr, per_op=per_op)
