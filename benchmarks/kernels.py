"""Trainable-kernel attention (FFN, GLU, OGLU, AOGLU feature maps) and its torch peer."""

from __future__ import annotations

import torch

import refattn
from refattn.methods import kernels as K

from ._case import Case, Sizes, qkv
from .linear import torch_kernelized

KERNELS = ("ffn", "glu", "oglu", "aoglu")


def torch_phi(x, params, kernel):
    """One unit: FFN ``softplus(x W)``; GLU/OGLU ``softplus(x W_f) sigmoid(x W_g)``; AOGLU with
    ``W_g = A B`` (low rank)."""
    if kernel == "ffn":
        return torch.nn.functional.softplus(x @ params[0])
    b = (x @ params[1] @ params[2]) if kernel == "aoglu" else x @ params[1]
    return torch.nn.functional.softplus(x @ params[0]) * torch.sigmoid(b)


def _case(kernel: str, causal: bool = False) -> Case:
    def make(rs, s: Sizes):
        return (*qkv(rs, s), *(a for a in K.init_params(kernel, s.d, rng=int(rs.integers(2**31)))))

    def peer(q, k, v, *params):
        return torch_kernelized(torch_phi(q, params, kernel), torch_phi(k, params, kernel), v, causal)

    name = f"kernel-{kernel}" + ("-causal" if causal else "")
    return Case(name, refattn.kernel_attention, make, {"torch": peer}, {"kernel": kernel, "causal": causal})


CASES = [*(_case(k) for k in KERNELS), _case("glu", causal=True)]
