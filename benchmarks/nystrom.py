"""Nystromformer (Xiong et al. 2021; 64 segment-mean landmarks, 6 iterations of the iterative
pseudoinverse) and its torch peer."""

from __future__ import annotations

import math

import torch

import refattn
from refattn.methods.nystrom import DEFAULT_ITERATIONS

from ._case import Case, qkv

LANDMARKS = 64


def torch_nystrom(q, k, v, m=LANDMARKS, iterations=DEFAULT_ITERATIONS):
    """Landmarks are segment means (``n`` divisible by ``m`` here); ``Z_0 = A^T / (max col sum * max
    row sum)``, then ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``."""
    s = 1 / math.sqrt(q.shape[-1])
    qt = q.reshape(*q.shape[:-2], m, -1, q.shape[-1]).mean(-2)
    kt = k.reshape(*k.shape[:-2], m, -1, k.shape[-1]).mean(-2)
    f = torch.softmax((q @ kt.mT) * s, -1)
    a = torch.softmax((qt @ kt.mT) * s, -1)
    b = torch.softmax((qt @ k.mT) * s, -1)
    c = a.abs().sum(-2).amax(-1) * a.abs().sum(-1).amax(-1)
    z = a.mT / c[..., None, None]
    eye = torch.eye(m, dtype=a.dtype)
    for _ in range(iterations):
        x = a @ z
        z = 0.25 * z @ (13 * eye - x @ (15 * eye - x @ (7 * eye - x)))
    return f @ (z @ (b @ v))


CASES = [Case("nystrom", refattn.nystrom_attention, qkv, {"torch": torch_nystrom}, {"num_landmarks": LANDMARKS})]
