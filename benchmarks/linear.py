"""Linear attention (elu+1, non-causal and causal; Katharopoulos et al. 2020) and efficient attention
(Shen et al. 2021), and their torch peers. :func:`torch_kernelized` and :func:`torch_causal_dot` (the
normalised kernelized core and the chunked causal prefix sums, as refattn computes them) are shared
with the random-feature and trainable-kernel peers."""

from __future__ import annotations

import torch

import refattn
from refattn.methods._prefix import DEFAULT_CHUNK
from refattn.methods.linear import DEFAULT_EPS

from ._case import Case, qkv


def torch_causal_dot(a, b, c, chunk=DEFAULT_CHUNK):
    """``out_i = sum_{j <= i} (a_i . b_j) c_j`` in chunks: masked in-chunk product plus a running state."""
    state = a.new_zeros((*a.shape[:-2], a.shape[-1], c.shape[-1]))
    outs = []
    for i0 in range(0, a.shape[-2], chunk):
        ac, bc, cc = a[..., i0:i0 + chunk, :], b[..., i0:i0 + chunk, :], c[..., i0:i0 + chunk, :]
        w = torch.tril(ac @ bc.mT)
        outs.append(w @ cc + ac @ state)
        state = state + bc.mT @ cc
    return torch.cat(outs, dim=-2)


def torch_kernelized(fq, fk, v, causal=False, eps=0.0):
    """``phi_q (phi_k^T [V, 1])``, numerator over normaliser (+ eps)."""
    c = torch.cat([v, v.new_ones((*v.shape[:-1], 1))], dim=-1)
    num = torch_causal_dot(fq, fk, c) if causal else fq @ (fk.mT @ c)
    return num[..., :-1] / (num[..., -1:] + eps)


def _elu1(x):
    return torch.nn.functional.elu(x) + 1


def torch_linear(q, k, v, causal=False):
    return torch_kernelized(_elu1(q), _elu1(k), v, causal, eps=DEFAULT_EPS)


def torch_efficient(q, k, v):
    return torch.softmax(q, dim=-1) @ (torch.softmax(k, dim=-2).mT @ v)


CASES = [
    Case("linear", refattn.linear_attention, lambda rs, s: qkv(rs, s), {"torch": torch_linear}),
    Case("linear-causal", refattn.linear_attention, lambda rs, s: qkv(rs, s),
         {"torch": lambda q, k, v: torch_linear(q, k, v, causal=True)}, {"causal": True}),
    Case("efficient", refattn.efficient_attention, lambda rs, s: qkv(rs, s), {"torch": torch_efficient}),
]
