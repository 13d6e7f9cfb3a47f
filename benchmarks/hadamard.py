"""The fast Walsh-Hadamard transform (``refattn.fwht``, generic array-API butterflies) on the last
axis of a ``(batch, heads, n, d)`` array, and its torch peers: the textbook butterflies (stage ``h``
pairs entries ``h`` apart, ``torch``) and refattn's own arrangement (constant geometry: adjacent pairs,
sums and differences written as contiguous halves, ``torch-cg``)."""

from __future__ import annotations

import math

import torch

import refattn

from ._case import Case, Sizes


def torch_fwht(x):
    """``H_c x / sqrt(c)`` along the last axis: ``log2 c`` stages ``(a, b) -> (a + b, a - b)``."""
    shape, c = x.shape, x.shape[-1]
    y, h = x.reshape(-1, c), 1
    while h < c:
        y = y.reshape(-1, c // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(shape) * (1 / math.sqrt(c))


def torch_fwht_cg(x):
    """``H_c x / sqrt(c)`` along the last axis, as ``refattn.hadamard._butterflies``: ``log2 c``
    identical stages ``y -> [y_even + y_odd, y_even - y_odd]``."""
    shape, c = x.shape, x.shape[-1]
    y = x.reshape(-1, c)
    for _ in range(c.bit_length() - 1):
        y = y.reshape(-1, c // 2, 2)
        y = torch.cat((y[..., 0] + y[..., 1], y[..., 0] - y[..., 1]), dim=-1)
    return y.reshape(shape) * (1 / math.sqrt(c))


def _make(rs, s: Sizes):
    return (rs.standard_normal((s.batch, s.heads, s.n, s.d)),)


CASES = [Case("fwht", refattn.fwht, _make, {"torch": torch_fwht, "torch-cg": torch_fwht_cg})]
