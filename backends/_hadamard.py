"""A backend ``fwht`` primitive shared by the NumPy and torch backends: Kronecker-factored GEMMs.

Sylvester's matrices factor as ``H_{2^(a+b)} = H_{2^a} (x) H_{2^b}``, so with ``c = b_1 ... b_k``
(each ``b_i <= BLOCK``) the transform of the axis viewed as ``(b_1, ..., b_k)`` is one small dense
product ``H_{b_i} @ .`` per factor, applied along that factor's axis: ``k`` batched GEMMs instead of
``log2 c`` memory-bound butterfly passes (the same decomposition as GPU Hadamard kernels that keep
a small ``H`` in registers). It costs ``2 c (b_1 + ... + b_k)`` flops per vector, more than the
butterflies' ``c log2 c``, but runs at GEMM speed; the generic array-API transform in
:mod:`refattn.hadamard` stays the oracle and the tests compare the two.

Contract (see :mod:`refattn.hadamard`): ``fwht(x, *, axis) -> H_c x`` along a non-negative ``axis``
whose length ``c`` is a power of two, unnormalised, in ``x``'s floating dtype and on its device.
Rounding: each output entry is a signed sum of ``c`` inputs formed in ``k`` GEMM stages of inner
dimension ``b_i``, error at most ``gamma_{b_1 + ... + b_k} ||x||_1``; exact for integer-valued inputs
whose partial sums are representable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

BLOCK = 64  # largest factor; a tuning knob (64 timed faster than 16, 32, 128, 256 at c = 1024 on a 2-core CPU)


def factor_sizes(c: int, block: int = BLOCK) -> list[int]:
    """Powers of two ``<= block`` whose product is ``c`` (largest first)."""
    p, k = c.bit_length() - 1, block.bit_length() - 1
    sizes = []
    while p > 0:
        s = min(k, p)
        sizes.append(1 << s)
        p -= s
    return sizes


def sylvester_host(b: int) -> Any:
    """``H_b`` as a NumPy float64 array."""
    import numpy as np

    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return h


def kronecker_fwht(x: Any, axis: int, hadamard: Callable[[int], Any], block: int = BLOCK) -> Any:
    """``H_c x`` along ``axis`` for a NumPy or torch array (both broadcast ``(b, b) @ (R, b, A)``).

    ``hadamard(b)`` returns ``H_b`` in ``x``'s dtype and on its device.
    """
    shape = tuple(x.shape)
    c = shape[axis]
    before, after = math.prod(shape[:axis]), c * math.prod(shape[axis + 1:])
    y = x
    for b in factor_sizes(c, block):
        after //= b
        h = hadamard(b)
        if after == 1:
            y = y.reshape(-1, b) @ h  # H_b is symmetric: x H_b = (H_b x^T)^T
        else:
            y = h @ y.reshape(before, b, after)
        before *= b
    return y.reshape(shape)
