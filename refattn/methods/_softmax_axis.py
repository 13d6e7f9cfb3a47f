r"""Softmax along one axis of an array, with optional dropped entries, and its vector-Jacobian product.

Shared by the methods that normalise *features* or *projected positions* rather than attention rows
(Shen et al.'s efficient attention: over the feature axis of Q and over the sequence axis of K;
Verma's modified Linformer: over the feature axis of Q and over the projected axis of (EK)^T).

.. math::

    p = \frac{e^{x - \max x}}{\sum e^{x - \max x}} \quad\text{along ``axis``}, \qquad
    \bar x = p \odot \bigl(\bar p - \textstyle\sum_{\text{axis}} \bar p \odot p\bigr).

Entries with ``keep == False`` get probability exactly 0; a slice with no kept entry is all zeros
(and its cotangent is zero), never NaN.

Cost (``N`` input elements reduced into ``M`` slices, counting conventions of :mod:`refattn.cost`):
forward ``4 N - 2 M`` flops (max, subtract, sum, divide) and ``N`` exponentials; backward
``4 N - M`` flops (multiply, sum, subtract, multiply).
"""

from __future__ import annotations

import math
from typing import Any

from .._primitives import exp_consuming

__all__ = ["softmax_axis", "softmax_axis_backward", "softmax_axis_flops"]


def softmax_axis(xp: Any, x: Any, axis: int, keep: Any = None) -> Any:
    """Softmax of ``x`` along ``axis``; ``keep`` (boolean, broadcastable to ``x``) drops entries."""
    if keep is not None:
        x = xp.where(keep, x, -math.inf)
    mx = xp.max(x, axis=axis, keepdims=True)
    if keep is not None:
        mx = xp.where(xp.isfinite(mx), mx, 0.0)
    e = exp_consuming(xp, x - mx)
    tot = xp.sum(e, axis=axis, keepdims=True)
    if keep is not None:
        tot = xp.where(tot > 0, tot, 1.0)
    e /= tot  # in place: e is this function's own temporary
    return e


def softmax_axis_backward(xp: Any, p: Any, dp: Any, axis: int) -> Any:
    """Cotangent of the softmax input from its output ``p`` and output cotangent ``dp``."""
    g = dp - xp.sum(dp * p, axis=axis, keepdims=True)
    g *= p
    return g


def softmax_axis_flops(n_elements: int, n_slices: int) -> tuple[int, int]:
    """``(flops, transcendentals)`` of :func:`softmax_axis` on ``n_elements`` in ``n_slices``."""
    return 4 * n_elements - 2 * n_slices, n_elements
