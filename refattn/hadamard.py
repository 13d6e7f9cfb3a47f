r"""The fast Walsh-Hadamard transform (FWHT) and the WHT output projection of Aggarwal & Kumar (004).

Sylvester's Hadamard matrices (defined for ``c = 2^p`` only):

.. math::

    H_1 = [1], \qquad H_{2c} = \begin{bmatrix} H_c & H_c \\ H_c & -H_c \end{bmatrix},
    \qquad (H_c)_{ij} = (-1)^{\operatorname{popcount}(i \,\&\, j)} .

``H_c`` is symmetric with entries ``+-1`` and ``H_c H_c^T = c I``, so ``H_c / sqrt(c)`` is
orthogonal, symmetric and an involution; it preserves norms and inner products.

:func:`fwht` applies ``H_c`` (``normalized=False``) or ``H_c / sqrt(c)`` (default) along one axis
without forming the matrix: ``p = log2 c`` butterfly stages ``(a, b -> a + b, a - b)``, each
pairing adjacent entries and writing the sums and the differences as contiguous halves (the
constant-geometry form; see :func:`_butterflies` for why that is ``H_c``). Each stage costs
``c/2`` additions and ``c/2`` subtractions per vector, so the transform costs exactly ``c log2 c``
flops per vector, plus ``c`` multiplications for the ``1/sqrt(c)`` normalisation (:func:`fwht_cost`).
No ``c x c`` array is ever stored (004, Fig. 3: "FWHT requires zero stored weights").

Backward: the transform is linear with a symmetric matrix, so its vector-Jacobian product is the
transform itself, ``dx = H^T dy = H dy`` (normalised or not, the same way as the forward pass).

:func:`wht_projection` is 004's replacement of the dense attention output projection ``W_O``:

.. math::

    y = \gamma \odot \frac{H_c x}{\sqrt c} + \beta \qquad (x, y, \gamma, \beta \in \mathbb R^c)

along the last axis, with a learnable per-channel scale ``gamma`` and shift ``beta``. **Reading.**
The available text of 004 is its abstract: "a fixed, parameter-free Walsh-Hadamard Transform
followed by a lightweight learnable affine rescaling" (v1) / "followed by a diagonal affine
transformation" (v2). refattn reads that as the formula above: the orthonormal WHT first (the
abstract calls the transform "orthogonal, norm-preserving", which requires the ``1/sqrt(c)``), then a
diagonal scale and an additive shift, ``2c`` parameters. ``shift=None`` gives the scale-only
variant (``c`` parameters); ``normalized=False`` drops the ``1/sqrt(c)`` (it can be absorbed in
``gamma``). Gradients: ``dbeta = sum dy``, ``dgamma = sum dy * (H x / sqrt c)`` over the leading
axes, ``dx = H (gamma * dy) / sqrt(c)``.

Sizes that are not a power of two
---------------------------------
By default a ``ValueError`` (a Sylvester matrix, and the ``c log2 c`` count, need ``c = 2^p``; GPT-2
base has ``c = 768``). With ``pad=True``:

- ``fwht(x, pad=True)`` zero-pads the axis to ``c' = 2^ceil(log2 c)`` and transforms, returning
  ``c'`` entries: ``fwht(x, pad=True) == fwht(concat(x, zeros(c' - c)))``, normalised by
  ``1/sqrt(c')`` (so it still preserves norms: padding adds zeros). Cost ``c' log2 c' (+ c')``.
- ``wht_projection(x, ..., pad=True)`` must keep the width ``c`` (the residual stream needs it), so
  it keeps the first ``c`` outputs: the matrix applied is the leading ``c x c`` block of
  ``H_{c'} / sqrt(c')``. That block is symmetric but **not orthogonal** for ``c`` not a power of
  two (at ``c = 768`` its singular values lie in ``[1/2, 1]``: some directions are halved), so the
  norm-preservation argument of 004 does not carry over. Its backward pass is the same operation.

Backend primitives
------------------
``impl="generic"`` (default) runs the array-API butterflies above: the oracle, with the exact cost
model. ``impl="backend"`` runs the primitive ``primitives["fwht"]`` of the array's backend (see
:mod:`refattn.backends`) and raises ``ValueError`` where the backend has none; ``impl="auto"``
uses the primitive when there is one. Contract of a primitive: ``fwht(x, *, axis) -> H_c x`` along
the non-negative ``axis`` of a real floating ``x`` whose ``x.shape[axis] = c`` is a power of two,
unnormalised, same dtype, shape and device; refattn does the padding, the normalisation and the
half-precision casts around it. Tests compare every primitive with the generic transform.

Half-precision inputs are transformed in float32 and cast back (``refattn._xp.compute_dtype``).

Validation and implementation: the public functions validate the arrays and resolve their options
once (:func:`_options`, shared by :func:`fwht` and :func:`wht_projection`, and used by
:func:`refattn.mha.multi_head_attention` for its WHT projection); the implementations
(``_transform``, ``_wht_forward``) and the backward passes validate nothing.

References
----------
S. Aggarwal, L. Kumar, "Rethinking Attention Output Projection: Structured Hadamard Transforms for
Efficient Transformers", arXiv 2603.08343 (2026). J. J. Sylvester (1867). Fino & Algazi, "Unified
matrix treatment of the fast Walsh-Hadamard transform", IEEE Trans. Computers (1976).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._checks import check_choice, check_flag, check_int
from ._primitives import backend_primitive
from ._registry import Function, declare
from ._xp import check_float_array, check_same_namespace_device, compute_dtype, device, is_lazy, namespace
from .cost import Cost

__all__ = [
    "IMPLS",
    "fwht",
    "fwht_forward",
    "fwht_backward",
    "fwht_cost",
    "FWHTResiduals",
    "FWHTGrads",
    "wht_projection",
    "wht_forward",
    "wht_backward",
    "wht_cost",
    "WHTResiduals",
    "WHTGrads",
    "hadamard_matrix",
    "is_power_of_two",
    "next_power_of_two",
    "backend_primitive",
]

IMPLS = ("generic", "backend", "auto")


def is_power_of_two(c: int) -> bool:
    """``c = 2^p`` for an integer ``p >= 0``."""
    return isinstance(c, int) and not isinstance(c, bool) and c >= 1 and c & (c - 1) == 0


def next_power_of_two(c: int) -> int:
    """The smallest ``2^p >= c`` (``c >= 1``)."""
    return 1 << (check_int("c", c, minimum=1) - 1).bit_length()


def hadamard_matrix(c: int, /, *, xp: Any = None, dtype: Any = None, device: Any = None) -> Any:
    """Sylvester's Hadamard matrix ``H_c`` (entries ``+-1``, ``H_c H_c^T = c I``), for tests.

    Parameters
    ----------
    c : int, a power of two.
    xp : array namespace, optional
        Default: the NumPy backend's namespace.
    dtype : dtype of ``xp``, optional (default ``xp.float64``).
    device : device of ``xp``, optional.

    Raises
    ------
    ValueError
        ``c`` is not a power of two (Sylvester's construction needs ``c = 2^p``).
    """
    if not is_power_of_two(c):
        msg = f"c must be a power of two for Sylvester's Hadamard matrix, got {c!r}"
        raise ValueError(msg)
    if xp is None:
        from . import backends

        xp = backends.get("numpy").xp
    dtype = xp.float64 if dtype is None else dtype
    h = xp.ones((1, 1), dtype=dtype, device=device)
    while h.shape[0] < c:
        h = xp.concat((xp.concat((h, h), axis=1), xp.concat((h, -h), axis=1)), axis=0)
    return h


# ------------------------------------------------------------------------------------------------
# validation and the core transform


def _check_axis(axis: Any, ndim: int) -> int:
    if not isinstance(axis, numbers.Integral) or axis is True or axis is False:
        msg = f"axis must be an integer, got {axis!r}"
        raise TypeError(msg)
    if not -ndim <= axis < ndim:
        msg = f"axis {axis} is out of range for x with {ndim} dimensions (valid: {-ndim} .. {ndim - 1})"
        raise ValueError(msg)
    return int(axis) % ndim


@dataclass(frozen=True)
class _Options:
    """Resolved options of one transform: the length ``c``, the padded length ``c_pad``."""

    normalized: bool
    impl: str
    c: int
    c_pad: int


def _options(xp: Any, c: int, what: str, *, normalized: Any = True, pad: Any = False,
             impl: Any = "generic") -> _Options:
    """Validate and resolve the transform's options for length ``c`` (``what`` names the axis)."""
    check_flag("normalized", normalized)
    check_flag("pad", pad)
    check_choice("impl", impl, IMPLS)
    if impl == "backend" and backend_primitive(xp) is None:
        msg = (f"impl='backend' needs a backend that registers an 'fwht' primitive; the backend of "
               f"{xp.__name__} has none (use impl='generic' or 'auto')")
        raise ValueError(msg)
    return _Options(normalized, impl, c, _padded_size(c, pad, what))


def _padded_size(c: int, pad: bool, what: str) -> int:
    if c < 1:
        msg = f"{what} must have length >= 1 to transform, got {c}"
        raise ValueError(msg)
    if is_power_of_two(c):
        return c
    if not pad:
        msg = (f"{what} must have a power-of-two length for the Walsh-Hadamard transform, got {c}; "
               f"pass pad=True to zero-pad it to {next_power_of_two(c)} (see refattn.hadamard)")
        raise ValueError(msg)
    return next_power_of_two(c)


def _butterflies(xp: Any, x: Any, axis: int) -> Any:
    """Unnormalised ``H_c x`` along ``axis`` (``c`` a power of two): ``log2 c`` butterfly stages.

    The array is viewed as ``(P, c, Q)``. Every stage is the same (the constant-geometry, Pease
    form): view the axis as ``(c / 2, 2)``, take the pairs ``(a_i, b_i) = (y_{2i}, y_{2i+1})`` and
    write ``y' = [a + b, a - b]`` (sums in the first half, differences in the second). One stage
    is ``S (I_{c/2} (x) H_2)`` with ``S`` the permutation ``(i, t) -> t c/2 + i``; since
    ``S (I (x) H_2) S^T = H_2 (x) I`` and ``S^p = I`` for ``c = 2^p`` (``S`` rotates the ``p`` bits
    of the index), ``log2 c`` stages give ``H_2 (x) ... (x) H_2 = H_c``. The outputs are written in
    contiguous halves (NumPy's elementwise loops are slow on the short inner runs that the in-place
    stage ``h = 2, 4`` of the textbook form produces); the flops are the same ``c/2`` additions and
    ``c/2`` subtractions per stage.
    """
    shape = tuple(x.shape)
    c = shape[axis]
    pre, post = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    y = x
    h = c // 2
    for _ in range(c.bit_length() - 1):
        y = xp.reshape(y, (pre, h, 2, post))
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = xp.concat((a + b, a - b), axis=1)
    return xp.reshape(y, shape)


def _pad_axis(xp: Any, x: Any, axis: int, c_pad: int) -> Any:
    c = x.shape[axis]
    if c_pad == c:
        return x
    zshape = tuple(c_pad - c if i == axis else s for i, s in enumerate(x.shape))
    return xp.concat((x, xp.zeros(zshape, dtype=x.dtype, device=device(x))), axis=axis)


def _take_axis(x: Any, axis: int, c: int) -> Any:
    if x.shape[axis] == c:
        return x
    return x[(slice(None),) * axis + (slice(0, c),) + (...,)]


def _may_overflow(xp: Any, x: Any, c_pad: int) -> bool:
    """The transform's one data-dependent step: could the unnormalised butterflies (which grow entries
    by up to ``c'``) overflow ``x``'s dtype? Only then is ``x`` scaled before them (other rounding).
    Lazy and traced ``x``: not asked (never scaled; entries within ``c'`` of the range overflow)."""
    if math.prod(x.shape) == 0:
        return False
    big = float(xp.finfo(x.dtype).max) / (2 * c_pad)
    over = xp.any((x > big) | (x < -big))
    return not is_lazy(over) and bool(over)  # comparisons only: no counted flops


def _transform(xp: Any, x: Any, axis: int, c_pad: int, normalized: bool, impl: str) -> Any:
    """``H_{c'} [x; 0]`` (times ``1/sqrt(c')`` if ``normalized``) along ``axis``, in x's dtype."""
    x = _pad_axis(xp, x, axis, c_pad)
    if c_pad == 1:  # H_1 = 1: a new array all the same, never a view of the input
        return xp.asarray(x, copy=True)
    prim = None if impl == "generic" else backend_primitive(xp)
    if normalized and _may_overflow(xp, x, c_pad):
        # |H x| <= c' max|x| may overflow where the exact H x / sqrt(c') is finite: scale first
        x = x * (1.0 / math.sqrt(c_pad))
        return prim(x, axis=axis) if prim is not None else _butterflies(xp, x, axis)
    y = prim(x, axis=axis) if prim is not None else _butterflies(xp, x, axis)
    if normalized and c_pad > 1:
        if prim is None:  # the butterflies returned a new array (c_pad >= 2): scale it in place
            y *= 1.0 / math.sqrt(c_pad)
        else:
            y = y * (1.0 / math.sqrt(c_pad))
    return y


# ------------------------------------------------------------------------------------------------
# fwht


class FWHTResiduals(NamedTuple):
    """What the backward pass needs: no arrays (the transform is linear and fixed)."""

    axis: int
    c: int  # length of x along axis
    c_pad: int  # length of the output along axis
    normalized: bool
    impl: str
    dtype: Any
    work: Any
    xp: Any


class FWHTGrads(NamedTuple):
    dx: Any


def fwht_forward(x: Any, /, *, axis: int = -1, normalized: bool = True, pad: bool = False,
                 impl: str = "generic") -> tuple[Any, FWHTResiduals]:
    """Forward pass of :func:`fwht`: ``(y, FWHTResiduals)``."""
    xp = namespace(x)
    check_float_array("x", x, xp, ndim_min=1)
    ax = _check_axis(axis, x.ndim)
    o = _options(xp, x.shape[ax], f"x along axis {axis}", normalized=normalized, pad=pad, impl=impl)
    dtype, work = x.dtype, compute_dtype(xp, x.dtype)
    xw = xp.astype(x, work) if work != dtype else x
    y = _transform(xp, xw, ax, o.c_pad, o.normalized, o.impl)
    res = FWHTResiduals(ax, o.c, o.c_pad, o.normalized, o.impl, dtype, work, xp)
    return (xp.astype(y, dtype) if work != dtype else y), res


def fwht_backward(res: FWHTResiduals, dy: Any, /) -> FWHTGrads:
    """Backward of :func:`fwht`: ``dx = P^T H dy`` (``H`` symmetric; ``P`` the zero-padding)."""
    xp = res.xp
    g = xp.astype(dy, res.work) if dy.dtype != res.work else dy
    dx = _take_axis(_transform(xp, g, res.axis, res.c_pad, res.normalized, res.impl), res.axis, res.c)
    return FWHTGrads(xp.astype(dx, res.dtype) if dx.dtype != res.dtype else dx)


def fwht_cost(c: int, /, *, batch: int = 1, normalized: bool = True, pad: bool = False) -> Cost:
    """Closed-form cost of ``fwht(x)`` (``impl="generic"``) for ``batch`` vectors of length ``c``.

    ``flops = batch * (c' log2 c' + [normalized] c')`` with ``c' = c`` (a power of two) or the next
    power of two (``pad=True``): ``log2 c'`` stages of ``c'/2`` additions and ``c'/2``
    subtractions, then one multiplication per entry. No transcendentals (``1/sqrt(c')`` is a Python
    constant). Only ``flops`` and ``transcendentals`` are modelled (bytes are left at 0).
    """
    check_int("c", c, minimum=1)
    check_int("batch", batch, minimum=0)
    c_pad = _padded_size(c, pad, "c")
    p = c_pad.bit_length() - 1
    per_vector = c_pad * p + (c_pad if normalized and c_pad > 1 else 0)
    return Cost(flops=batch * per_vector, transcendentals=0)


@declare(Function(fwht_forward, fwht_backward))
def fwht(x: Any, /, *, axis: int = -1, normalized: bool = True, pad: bool = False,
         impl: str = "generic") -> Any:
    r"""Fast Walsh-Hadamard transform ``H_c x / sqrt(c)`` (or ``H_c x``) along ``axis``.

    Parameters
    ----------
    x : array ``(..., c, ...)``
        Real floating; ``c = x.shape[axis]`` a power of two unless ``pad=True``.
    axis : int
        The axis to transform (negative values count from the end).
    normalized : bool
        Multiply by ``1/sqrt(c)`` (default): the orthonormal, involutive transform. ``False``: the
        integer Sylvester matrix ``H_c``.
    pad : bool
        Zero-pad a non-power-of-two axis to the next power of two ``c'`` (the output then has ``c'``
        entries along ``axis``, normalised by ``1/sqrt(c')``). Default: raise.
    impl : {"generic", "backend", "auto"}
        The array-API butterflies (the oracle), the backend's ``fwht`` primitive, or the primitive
        when the backend has one.

    Returns
    -------
    y : array of ``x``'s shape (``c'`` along ``axis`` when padded) and dtype.

    Raises
    ------
    TypeError
        ``x`` not a real floating array, a non-integer ``axis``, non-bool flags.
    ValueError
        ``axis`` out of range, a length that is not a power of two without ``pad=True``, an unknown
        ``impl``, ``impl="backend"`` on a backend without the primitive.

    Notes
    -----
    ``y = H_c x`` with Sylvester's ``H_c``; ``log2 c`` butterfly stages, ``c log2 c`` additions and
    subtractions per vector (plus ``c`` multiplications when normalised); see :func:`fwht_cost`.
    The vector-Jacobian product is the same transform (``H`` is symmetric).

    Examples
    --------
    >>> y = fwht(xp.asarray([1.0, 0.0, 0.0, 0.0]), normalized=False)
    >>> [float(t) for t in y]
    [1.0, 1.0, 1.0, 1.0]
    """
    return fwht_forward(x, axis=axis, normalized=normalized, pad=pad, impl=impl)[0]


# ------------------------------------------------------------------------------------------------
# wht_projection


class WHTResiduals(NamedTuple):
    """``t = H x / sqrt(c)`` (the transform before the affine map), the scale, and the options."""

    t: Any
    scale: Any
    has_shift: bool
    c: int
    c_pad: int
    normalized: bool
    impl: str
    dtype: Any
    work: Any
    shapes: tuple[tuple[int, ...], ...]


class WHTGrads(NamedTuple):
    dx: Any
    dscale: Any
    dshift: Any  # None when shift is None


def wht_forward(x: Any, /, scale: Any, shift: Any = None, *, normalized: bool = True, pad: bool = False,
                impl: str = "generic") -> tuple[Any, WHTResiduals]:
    """Forward pass of :func:`wht_projection`: ``(y, WHTResiduals)``."""
    xp = namespace(x, scale, shift)
    check_same_namespace_device({"x": x, "scale": scale, "shift": shift}, xp, "x")
    check_float_array("x", x, xp, ndim_min=1)
    c = x.shape[-1]
    for name, a in (("scale", scale), ("shift", shift)):
        if a is None and name == "shift":
            continue
        check_float_array(name, a, xp)
        if tuple(a.shape) != (c,):
            msg = f"{name} must have shape ({c},) to match x's last axis, got {tuple(a.shape)}"
            raise ValueError(msg)
        if a.dtype != x.dtype:
            msg = f"{name} must have x's dtype {x.dtype}, got {a.dtype}"
            raise TypeError(msg)
    opts = _options(xp, c, "x's last axis", normalized=normalized, pad=pad, impl=impl)
    dtype, work = x.dtype, compute_dtype(xp, x.dtype)
    cast = (lambda a: a if a is None else xp.astype(a, work)) if work != dtype else (lambda a: a)  # noqa: E731
    y, res = _wht_forward(xp, cast(x), cast(scale), cast(shift), opts, dtype)
    return (xp.astype(y, dtype) if work != dtype else y), res


def _wht_forward(xp: Any, x: Any, scale: Any, shift: Any, opts: _Options,
                 dtype: Any = None) -> tuple[Any, WHTResiduals]:
    """The implementation of :func:`wht_forward`: valid working-precision arrays and resolved
    options (:func:`_options`); returns ``(y, WHTResiduals)`` with ``y`` in the working precision.
    ``dtype``: the dtype the backward returns gradients in (default ``x.dtype``)."""
    ax = x.ndim - 1
    t = _take_axis(_transform(xp, x, ax, opts.c_pad, opts.normalized, opts.impl), ax, opts.c)
    y = t * scale
    if shift is not None:
        y = y + shift
    shapes = (tuple(x.shape), tuple(scale.shape), None if shift is None else tuple(shift.shape))
    res = WHTResiduals(t, scale, shift is not None, opts.c, opts.c_pad, opts.normalized, opts.impl,
                       x.dtype if dtype is None else dtype, x.dtype, shapes)
    return y, res


def wht_backward(res: WHTResiduals, dy: Any, /) -> WHTGrads:
    r"""Backward of :func:`wht_projection`.

    With ``t = M x`` (``M`` the symmetric, possibly truncated-padded, normalised Hadamard block) and
    ``y = gamma * t + beta``: ``dbeta = sum_rows dy``, ``dgamma = sum_rows dy * t``,
    ``dx = M^T (gamma * dy) = M (gamma * dy)``.
    """
    xp = namespace(res.t)
    g = xp.astype(dy, res.work) if dy.dtype != res.work else dy
    lead = tuple(range(g.ndim - 1))
    dshift = (xp.sum(g, axis=lead) if lead else g) if res.has_shift else None
    dscale = xp.sum(g * res.t, axis=lead) if lead else g * res.t
    ax = g.ndim - 1
    dx = _take_axis(_transform(xp, g * res.scale, ax, res.c_pad, res.normalized, res.impl), ax, res.c)
    out = [dx, dscale, dshift]
    return WHTGrads(*(a if a is None or a.dtype == res.dtype else xp.astype(a, res.dtype) for a in out))


def wht_cost(c: int, /, *, batch: int = 1, normalized: bool = True, pad: bool = False,
             shift: bool = True) -> Cost:
    """Closed-form cost of ``wht_projection`` (generic impl) on ``batch`` rows of width ``c``.

    ``fwht_cost(c, pad=pad)`` plus ``c`` multiplications by the scale and ``c`` additions of the
    shift per row (``shift=False``: no additions). With ``pad=True`` the transform runs at width
    ``c'`` and the affine map at width ``c``.
    """
    base = fwht_cost(c, batch=batch, normalized=normalized, pad=pad)
    return Cost(flops=base.flops + batch * c * (2 if shift else 1), transcendentals=0)


@declare(Function(wht_forward, wht_backward))
def wht_projection(x: Any, /, scale: Any, shift: Any = None, *, normalized: bool = True, pad: bool = False,
                   impl: str = "generic") -> Any:
    r"""004's WHT output projection ``y = scale * (H_c x / sqrt(c)) + shift`` along the last axis.

    Parameters
    ----------
    x : array ``(..., c)``
        Real floating (the merged head outputs in multi-head attention).
    scale : array ``(c,)``
        The learnable per-channel scale ``gamma`` (x's dtype, namespace and device).
    shift : array ``(c,)`` or None
        The learnable per-channel shift ``beta``; ``None`` for the scale-only variant.
    normalized : bool
        Use ``H_c / sqrt(c)`` (default, orthonormal) or ``H_c``.
    pad : bool
        For ``c`` not a power of two: apply the leading ``c x c`` block of ``H_{c'} / sqrt(c')``
        (zero-pad to ``c'``, transform, keep the first ``c`` outputs). Not orthogonal; see the
        module notes. Default: raise.
    impl : {"generic", "backend", "auto"}
        Which transform (see :func:`fwht`).

    Returns
    -------
    y : array ``(..., c)`` in x's dtype.

    Raises
    ------
    TypeError
        Non-floating arrays, mixed dtypes or libraries.
    ValueError
        ``scale`` or ``shift`` not of shape ``(c,)``, ``c`` not a power of two without ``pad``.

    Notes
    -----
    Reading of 004 (only its abstract is available): "fixed, parameter-free Walsh-Hadamard
    Transform followed by a lightweight learnable affine rescaling" / "diagonal affine
    transformation"; see the module docstring. Gradients for ``x``, ``scale`` and ``shift`` through
    ``refattn.vjp`` (:func:`wht_backward`).
    """
    return wht_forward(x, scale, shift, normalized=normalized, pad=pad, impl=impl)[0]
