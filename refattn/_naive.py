"""A plain softmax attention computed in its inputs' dtype, with optional injected bugs: the
calibration target of :mod:`refattn.testing` (a correct low-precision implementation must pass the
default tolerances, each bug must fail them).

Unlike refattn's methods, this one keeps every intermediate in the inputs' dtype ``T`` (logits,
weights, gradients: what a naive float16 kernel does), accumulating matrix products and sums in
float32 for half-precision ``T`` (as GPU tensor cores and NumPy's float16 matmul do) and in ``T``
otherwise. Array API only: runs on NumPy, torch (bfloat16 included), CuPy, array-api-strict.

Bugs (``bug=``):

``wrong_scale``         logits scaled by ``1/d`` instead of ``1/sqrt(d)`` (when ``scale`` is None)
``causal_off_by_one``   the causal mask keeps ``j <= i + 1`` (one future key)
``no_max_shift``        ``exp(s)`` without subtracting the row maximum (overflows for large logits)
``dropped_normaliser``  ``out = exp(s - max) V``, never divided by the row sum
``transposed_grad``     ``dv = P dO`` instead of ``P^T dO`` (a transposed product in the backward)
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

from ._masks import make_mask, mask_block
from ._xp import compute_dtype, device, resolve_scale, unbroadcast, validate_qkv

__all__ = ["BUGS", "naive_attention", "naive_attention_vjp", "bug_regime", "bug_observable"]

BUGS = ("wrong_scale", "causal_off_by_one", "no_max_shift", "dropped_normaliser", "transposed_grad")


def _check_bug(bug: str | None) -> None:
    if bug is not None and bug not in BUGS:
        msg = f"bug must be None or one of {BUGS}, got {bug!r}"
        raise ValueError(msg)


def _forward(q: Any, k: Any, v: Any, *, mask: Any, causal: Any, scale: float | None, key_lengths: Any,
             bug: str | None) -> tuple[Any, tuple]:
    _check_bug(bug)
    xp, batch = validate_qkv(q, k, v, extra={"mask": mask, "key_lengths": key_lengths})
    T = q.dtype
    acc = compute_dtype(xp, T)  # float32 for float16/bfloat16

    def mm(a: Any, b: Any) -> Any:
        return xp.astype(xp.astype(a, acc) @ xp.astype(b, acc), T)

    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    sc = resolve_scale(scale, d)
    if bug == "wrong_scale" and scale is None:
        sc = 1.0 / d
    if bug == "causal_off_by_one" and causal:
        off = {True: 0, "top_left": 0, "bottom_right": m - n}[causal] + 1
        extra = xp.arange(m, device=device(q))[None, :] <= xp.arange(n, device=device(q))[:, None] + off
        mask = extra if mask is None else (mask & extra if mask.dtype == xp.bool else
                                           xp.where(extra, mask, -math.inf))
        causal = False
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=T)
    keep, bias = mask_block(xp, spec, 0, n, 0, m, device(q))
    s = mm(q, xp.matrix_transpose(k)) * sc
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = xp.where(keep, s, -math.inf)
    mx = xp.max(s, axis=-1, keepdims=True)
    mx = xp.where(xp.isfinite(mx), mx, 0.0)
    e = xp.exp(s) if bug == "no_max_shift" else xp.exp(s - mx)
    total = xp.astype(xp.sum(xp.astype(e, acc), axis=-1, keepdims=True), T)
    p = e if bug == "dropped_normaliser" else e / xp.where(total > 0, total, 1.0)
    out = mm(p, v)
    return out, (q, k, v, p, out, sc, bug)


def _quiet(fn: Any) -> Any:
    """Run ``fn`` with NumPy's overflow/invalid RuntimeWarnings silenced: a kernel computes through
    an overflow without warning (the injected ``no_max_shift`` bug must return inf/NaN, not raise
    under ``-W error``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def naive_attention(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: Any = False,
                    scale: float | None = None, key_lengths: Any = None, bug: str | None = None) -> Any:
    """``softmax(scale q k^T + mask) v`` with every intermediate in the inputs' dtype (see module)."""
    return _forward(q, k, v, mask=mask, causal=causal, scale=scale, key_lengths=key_lengths, bug=bug)[0]


@_quiet
def naive_attention_vjp(q: Any, k: Any, v: Any, /, *, mask: Any = None, causal: Any = False,
                        scale: float | None = None, key_lengths: Any = None,
                        bug: str | None = None) -> tuple[Any, Any]:
    """``(out, pullback)`` of :func:`naive_attention`; ``pullback(dout) -> (dq, dk, dv)``, computed in
    the inputs' dtype like the forward pass."""
    out, (q, k, v, p, o, sc, bug) = _forward(q, k, v, mask=mask, causal=causal, scale=scale,
                                             key_lengths=key_lengths, bug=bug)
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))

    def pullback(dout: Any) -> tuple[Any, Any, Any]:
        xp = validate_qkv(q, k, v)[0]
        T = q.dtype
        acc = compute_dtype(xp, T)

        def mm(a: Any, b: Any) -> Any:
            return xp.astype(xp.astype(a, acc) @ xp.astype(b, acc), T)

        mT = xp.matrix_transpose
        dv = mm(p, dout) if bug == "transposed_grad" else mm(mT(p), dout)
        dp = mm(dout, mT(v))
        delta = xp.astype(xp.sum(xp.astype(o, acc) * xp.astype(dout, acc), axis=-1, keepdims=True), T)
        ds = p * (dp - delta)
        dq = mm(ds, k) * sc
        dk = mm(mT(ds), q) * sc
        return tuple(unbroadcast(xp, g, sh) for g, sh in zip((dq, dk, dv), shapes))

    return out, _quiet(pullback)


#: the format in which the naive implementation evaluates exp, and where that overflows
_EXP_OVERFLOW = {"float16": math.log(65504.0), "bfloat16": math.log(3.3895e38), "float32": math.log(3.4028e38),
                 "float64": math.log(1.7976931348623157e308)}


def bug_regime(bug: str) -> dict[str, Any]:
    """``check_attention`` keyword arguments for the cases in which ``bug`` is observable.

    Every bug is invisible in some cases, for any oracle: with one key (``m = 1``) the output is
    that key's value whatever the scale or normaliser; with tiny logits the weights are nearly
    uniform, so ``P^T ~ P`` and a scale error changes nothing; without a causal mask an off-by-one
    causal mask does not exist; and ``exp`` only overflows for logits above ``log(max float)``.
    The regimes: ``n, m, d >= 4``, logit standard deviation 1 or 4, every mask kind; causal masks
    and ``m = n`` for ``causal_off_by_one``; ``m = n`` for ``transposed_grad`` (else its shapes do not
    even match); logit standard deviation 2000 for ``no_max_shift`` (see :func:`bug_observable`).
    """
    from ._oracle import MASK_KINDS
    from ._strategies import shapes

    _check_bug(bug)
    kw: dict[str, Any] = {"masks": list(MASK_KINDS), "shapes": shapes(min_n=4, min_m=4, min_d=4),
                          "logit_scales": (1.0, 4.0)}
    if bug == "causal_off_by_one":
        kw.update(masks=["causal"], shapes=shapes(min_n=4, min_d=4, square=True))
    elif bug == "transposed_grad":
        kw.update(shapes=shapes(min_n=4, min_d=4, square=True))
    elif bug == "no_max_shift":
        kw.update(logit_scales=(2000.0,))
    return kw


def bug_observable(bug: str, logits: tuple[float, float], dtype: str) -> bool:
    """Whether ``bug`` can change the result of a case whose logits span ``logits`` when computed
    in ``dtype`` (only ``no_max_shift`` needs the largest logit above ``log`` of the format's max)."""
    if bug == "no_max_shift":
        return logits[1] > _EXP_OVERFLOW[dtype]
    return True
