"""Random-feature attention (positive features, softmax kernel, stabilised; Performer / RFA), and its
torch peer."""

from __future__ import annotations

import math

import torch

import refattn

from ._case import Case, Sizes, qkv
from .linear import torch_kernelized


def _make(rs, s: Sizes):
    return (*qkv(rs, s), rs.standard_normal((s.features, s.d)))


def torch_rfa(q, k, v, w, causal=False):
    """phi(x) = exp(x W^T - |x|^2/2) / sqrt(D) at x = s^(1/2) q and s^(1/2) k; the exponents shifted
    by their row max (queries) and by one max per batch element (keys)."""
    r = math.sqrt(1 / math.sqrt(q.shape[-1]))
    a = 1 / math.sqrt(w.shape[-2])
    xq, xk = q * r, k * r
    tq = xq @ w.mT - (xq * xq).sum(-1, keepdim=True) / 2
    tk = xk @ w.mT - (xk * xk).sum(-1, keepdim=True) / 2
    fq = torch.exp(tq - tq.amax(-1, keepdim=True)) * a
    fk = torch.exp(tk - tk.amax((-2, -1), keepdim=True)) * a
    return torch_kernelized(fq, fk, v, causal)


CASES = [
    Case("rfa", refattn.random_feature_attention, _make, {"torch": torch_rfa}),
    Case("rfa-causal", refattn.random_feature_attention, _make,
         {"torch": lambda q, k, v, w: torch_rfa(q, k, v, w, causal=True)}, {"causal": True}),
]
