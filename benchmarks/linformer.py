"""Linformer (Wang et al. 2020) and Verma's modified Linformer, and their torch peers."""

from __future__ import annotations

import math

import torch

import refattn

from ._case import Case, Sizes, qkv


def _make(rs, s: Sizes):
    """``q, k, v`` and projections ``E, F (k, n)`` with N(0, 1/k) entries (Linformer's init)."""
    e = rs.standard_normal((2, s.features, s.n)) / math.sqrt(s.features)
    return (*qkv(rs, s), e[0], e[1])


def torch_linformer(q, k, v, E, F):
    return torch.softmax((q / math.sqrt(q.shape[-1])) @ (E @ k).mT, dim=-1) @ (F @ v)


def torch_verma(q, k, v, E, F):
    s = 1 / math.sqrt(q.shape[-1])
    h = torch.softmax(q * s, dim=-1)
    l = torch.softmax((E @ k).mT * s, dim=-1)
    return h @ (l @ (F @ v))


CASES = [
    Case("linformer", refattn.linformer_attention, _make, {"torch": torch_linformer}),
    Case("verma", refattn.verma_attention, _make, {"torch": torch_verma}),
]
