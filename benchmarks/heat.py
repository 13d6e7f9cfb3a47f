"""HEAT (Catapang) under its three readings, rank 8, and the torch peers (torch.linalg.qr / svd,
differentiated by autograd: the singular values of Gaussian inputs are distinct)."""

from __future__ import annotations

import math

import torch

import refattn

from ._case import Case, qkv
from .softmax import torch_dense

RANK = 8


def _trunc(u, s, vh, r):
    return (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]


def torch_heat_logits(q, k, v, r=RANK):
    """Truncated SVD of ``s Q K^T`` through the QR factors: ``S = Q_q (s R_q R_k^T) Q_k^T``."""
    qq, rq = torch.linalg.qr(q)
    qk, rk = torch.linalg.qr(k)
    u, s, vh = torch.linalg.svd((rq @ rk.mT) / math.sqrt(q.shape[-1]))
    a = (qq @ u[..., :r]) * s[..., None, :r]
    b = qk @ vh[..., :r, :].mT
    return torch.softmax(a @ b.mT, dim=-1) @ v


def torch_heat_features(q, k, v, r=RANK):
    """Rank-``r`` truncation of ``K`` (basis ``"k"``), then exact attention."""
    return torch_dense(q, _trunc(*torch.linalg.svd(k, full_matrices=False), r), v)


def torch_heat_hadamard(q, k, v):
    """Channel-wise softmax over keys of ``s q_ic k_jc``: an ``(n, m, d)`` array."""
    p = torch.softmax(q[..., :, None, :] * k[..., None, :, :] / math.sqrt(q.shape[-1]), dim=-2)
    return (p * v[..., None, :, :]).sum(-2)


CASES = [
    Case("heat-logits", refattn.heat_attention, qkv, {"torch": torch_heat_logits},
         {"rank": RANK, "reading": "logits", "impl": "dense"}),
    Case("heat-features", refattn.heat_attention, qkv, {"torch": torch_heat_features},
         {"rank": RANK, "reading": "features", "impl": "dense"}),
    Case("heat-hadamard", refattn.heat_attention, qkv, {"torch": torch_heat_hadamard},
         {"reading": "hadamard"}, max_n=256),
]
