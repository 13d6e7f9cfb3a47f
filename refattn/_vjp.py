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

    def pullback(dout: Any) -> Any:
        xp = namespace(out)
        try:
            same_ns = namespace(dout) is xp
        except TypeError:
            same_ns = False
        if not same_ns:
            msg = f"dout must be an array of the same library as the output, got {type(dout).__name__}"
            raise TypeError(msg)
        if tuple(dout.shape) != tuple(out.shape) or dout.dtype != out.dtype:
            msg = (f"dout must match the output's shape {tuple(out.shape)} and dtype {out.dtype}, "
                   f"got shape {tuple(dout.shape)} and dtype {dout.dtype}")
            raise ValueError(msg)
        if device(dout) != device(out):
            msg = f"dout must be on the output's device {device(out)}, got {device(dout)}"
            raise ValueError(msg)
        return spec.backward(residuals, dout)

    return out, pullback
