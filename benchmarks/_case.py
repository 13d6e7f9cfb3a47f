"""What a benchmark case is: a refattn public function, how to draw its inputs, and its torch peers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: ``q, k, v (batch, heads, n, d)``; ``features`` is the random-feature count
    ``D`` and Linformer's projected length ``k``."""

    batch: int = 1
    heads: int = 4
    n: int = 1024
    d: int = 64
    features: int = 256


@dataclass(frozen=True)
class Case:
    """``fn(*make(rng, sizes), **kwargs)`` is the refattn call; each peer is a torch function of the
    same positional arrays (as tensors) computing the same mathematics, differentiated by torch
    autograd. ``max_n``: larger ``n`` is skipped (the peer or the method holds an ``O(n^2 d)`` array)."""

    name: str
    fn: Callable[..., Any]
    make: Callable[[np.random.Generator, Sizes], tuple[np.ndarray, ...]]
    peers: dict[str, Callable[..., Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_n: int | None = None


def qkv(rs: np.random.Generator, s: Sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """iid N(0, 1) ``q, k, v`` of shape ``(batch, heads, n, d)``."""
    shape = (s.batch, s.heads, s.n, s.d)
    return rs.standard_normal(shape), rs.standard_normal(shape), rs.standard_normal(shape)
