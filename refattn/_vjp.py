"""``refattn.vjp``: the vector-Jacobian product of every declared public function, jax.vjp style.

Each public function declares its hand-written ``forward`` (returning ``(out, residuals)``) and
``backward(residuals, dout) -> Grads`` in the method registry (:mod:`refattn._registry`); nothing is
differentiated automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._registry import functions, lookup
from ._xp import device, namespace

__all__ = ["vjp", "registered"]


def registered() -> tuple[Callable[..., Any], ...]:
    """The public functions that have a vjp rule (every declared function)."""
    return functions()


def vjp(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Callable[[Any], Any]]:
    """Evaluate ``fn(*args, **kwargs)`` and return ``(out, pullback)``.

    ``pullback(dout)`` returns the method's ``Grads`` named tuple: one cotangent per array
    argument in order (``dq, dk, dv`` and then one per parameter), each with its argument's shape.
    A function returning a tuple (``softmax_attention(..., return_lse=True)`` returns ``(out, lse)``,
    ``merge_attention`` too) takes a tuple of cotangents, ``None`` for a zero one
    (an array alone is the first output's cotangent, the others zero).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (xp.asarray(rng.standard_normal((2, 16, 8))) for _ in range(3))
    >>> out, pullback = refattn.vjp(refattn.softmax_attention, q, k, v, causal=True)
    >>> dq, dk, dv = pullback(xp.ones_like(out))
    >>> tuple(dq.shape) == tuple(q.shape)
    True
    """
    spec = lookup(fn)
    if spec is None:
        names = ", ".join(sorted(getattr(f, "__name__", repr(f)) for f in functions()))
        msg = f"fn must be a refattn public function with a registered vjp ({names}), got {fn!r}"
        raise TypeError(msg)
    out, residuals = spec.forward(*args, **kwargs)

    def check(o: Any, g: Any, name: str) -> None:
        xp = namespace(o)
        try:
            same_ns = namespace(g) is xp
        except TypeError:
            same_ns = False
        if not same_ns:
            msg = f"{name} must be an array of the same library as the output, got {type(g).__name__}"
            raise TypeError(msg)
        if tuple(g.shape) != tuple(o.shape) or g.dtype != o.dtype:
            msg = (f"{name} must match the output's shape {tuple(o.shape)} and dtype {o.dtype}, "
                   f"got shape {tuple(g.shape)} and dtype {g.dtype}")
            raise ValueError(msg)
        if device(g) != device(o):
            msg = f"{name} must be on the output's device {device(o)}, got {device(g)}"
            raise ValueError(msg)

    def pullback(dout: Any) -> Any:
        if isinstance(out, tuple):  # several outputs (e.g. (out, lse)): one cotangent each, None = zero
            if not isinstance(dout, (tuple, list)):  # the first output's cotangent alone: the others zero
                dout = (dout, *([None] * (len(out) - 1)))
            if len(dout) != len(out):
                msg = f"dout must be a tuple of {len(out)} cotangents (one per output; None for zero), got {len(dout)}"
                raise TypeError(msg)
            if dout[0] is None:
                msg = "dout[0] (the cotangent of the first output) must be an array"
                raise TypeError(msg)
            for i, (o, g) in enumerate(zip(out, dout)):
                if g is not None:
                    check(o, g, f"dout[{i}]")
            return spec.backward(residuals, tuple(dout))
        check(out, dout, "dout")
        return spec.backward(residuals, dout)

    return out, pullback
