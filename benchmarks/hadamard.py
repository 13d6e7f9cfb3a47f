"""The fast Walsh-Hadamard transform (``refattn.fwht``, generic array-API butterflies) on the last
axis of a ``(batch, heads, n, d)`` array, and its torch peer (the same butterflies)."""

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


def _make(rs, s: Sizes):
    return (rs.standard_normal((s.batch, s.heads, s.n, s.d)),)


CASES = [Case("fwht", refattn.fwht, _make, {"torch": torch_fwht})]
