"""Exact softmax attention (dense and blockwise) and its torch peers.

Peers: the same mathematics written in torch (dense: ``softmax(s Q K^T) V``; blockwise: the same
online-softmax loop over ``block x block`` tiles), and ``torch.nn.functional.scaled_dot_product_attention``
(SDPA; on the CPU a fused flash-attention kernel), the public library with this method.
"""

from __future__ import annotations

import math

import torch

import refattn
from refattn.methods.softmax import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q

from ._case import Case, qkv


def torch_dense(q, k, v):
    s = (q * (1 / math.sqrt(q.shape[-1]))) @ k.mT
    return torch.softmax(s, dim=-1) @ v


def torch_blockwise(q, k, v, bq=DEFAULT_BLOCK_Q, bk=DEFAULT_BLOCK_K):
    qs = q * (1 / math.sqrt(q.shape[-1]))
    outs = []
    for i0 in range(0, q.shape[-2], bq):
        qb = qs[..., i0:i0 + bq, :]
        mx = l = acc = None
        for j0 in range(0, k.shape[-2], bk):
            s = qb @ k[..., j0:j0 + bk, :].mT
            bmx = s.amax(-1, keepdim=True)
            new = bmx if mx is None else torch.maximum(mx, bmx)
            p = torch.exp(s - new)
            pv = p @ v[..., j0:j0 + bk, :]
            if mx is None:
                l, acc = p.sum(-1, keepdim=True), pv
            else:
                alpha = torch.exp(mx - new)
                l, acc = alpha * l + p.sum(-1, keepdim=True), alpha * acc + pv
            mx = new
        outs.append(acc / l)
    return torch.cat(outs, dim=-2)


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


CASES = [
    Case("softmax-dense", refattn.softmax_attention, lambda rs, s: qkv(rs, s),
         {"torch": torch_dense, "sdpa": sdpa}, {"impl": "dense"}),
    Case("softmax-blockwise", refattn.softmax_attention, lambda rs, s: qkv(rs, s),
         {"torch": torch_blockwise, "sdpa": sdpa}, {"impl": "blockwise"}),
]
