"""refattn against fast-transformers (idiap/fast-transformers), transcribed: the package compiles C++/CUDA
extensions, so its Python formulas are copied here (layout ``(N, L, H, E)`` as there) and run in torch
float64; refattn's outputs and hand-written gradients are compared with torch autograd through them.

Sources (commit 2aa1368a85d689fd606268f7e48906342fc084c7): ``fast_transformers/attention/linear_attention.py``
(``LinearAttention.forward``), ``fast_transformers/attention/causal_linear_attention.py``
(``CausalLinearAttention.forward``; ``causal_dot_product``, a C++/CUDA kernel, computes
``V'_i = sum_{j <= i} (Q_i . K_j) V_j``, transcribed as its definition), ``elu_feature_map``
(``elu(x) + 1``); commit 47187323149d517d5a7f52f0ce5b97fccaafea4d: ``fast_transformers/feature_maps/
fourier_features.py`` (``Favor.forward``, ``stabilize=False``, its default; ``omega (E, n_dims / 2)``
is refattn's ``W.T``). Tolerance 1e-12 relative (non-iterative).
"""

from __future__ import annotations

from math import log, sqrt

import numpy as np
import pytest

import refattn
from refattn._registry import get_method

from ._peers import compare, refattn_vjp, torch_grads

torch = pytest.importorskip("torch")

TOL = 1e-12
SEEDS = range(4)
PRESETS = get_method("random_feature").presets


# ------------------------------------------------------------------ transcribed (N, L, H, E layout)

def elu_feature_map(x):
    return torch.nn.functional.elu(x) + 1


def linear_attention(Q, K, values, key_mask, eps=1e-6):  # LinearAttention.forward after the feature map
    K = K * key_mask[:, :, None, None]
    KV = torch.einsum("nshd,nshm->nhmd", K, values)
    Z = 1 / (torch.einsum("nlhd,nhd->nlh", Q, K.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhmd,nlh->nlhm", Q, KV, Z)


def causal_dot_product(Q, K, V):  # (N, H, L, E): the kernel's definition, sum_{j <= i} (Q_i . K_j) V_j
    A = torch.einsum("nhie,nhje->nhij", Q, K)
    return torch.tril(A) @ V


def causal_linear_attention(Q, K, values, key_mask, eps=1e-6):  # CausalLinearAttention.forward
    K = K * key_mask[:, :, None, None]
    Z = 1 / (torch.einsum("nlhi,nlhi->nlh", Q, K.cumsum(1)) + eps)
    V = causal_dot_product(Q.permute(0, 2, 1, 3), K.permute(0, 2, 1, 3), values.permute(0, 2, 1, 3))
    return V.permute(0, 2, 1, 3) * Z[:, :, :, None]


def favor(x, omega, softmax_temp):  # Favor.forward, stabilize=False
    n_dims = 2 * omega.shape[1]
    x = x * sqrt(softmax_temp)
    norm_x_squared = torch.einsum("...d,...d->...", x, x).unsqueeze(-1)
    u = x.unsqueeze(-2).matmul(omega).squeeze(-2)
    offset = norm_x_squared * 0.5 + 0.5 * log(n_dims)
    return torch.cat([torch.exp(u - offset), torch.exp(-u - offset)], dim=-1)


# ------------------------------------------------------------------ tests

def _inputs(seed, b=2, h=3, n=7, d=4, D=5):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, h, n, d)) for _ in range(3))
    lengths = rng.integers(1, n + 1, size=(b, 1))
    return q, k, v, rng.standard_normal((D, d)), lengths, rng.standard_normal((b, h, n, d))


def _nlhe(t):
    return t.permute(0, 2, 1, 3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_linear_attention_elu(seed, causal, padded):
    q, k, v, _, lengths, dout = _inputs(seed)
    b, h, n, _ = q.shape
    mask = np.arange(n)[None, :] < lengths if padded else np.ones((b, n), dtype=bool)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    fn = causal_linear_attention if causal else linear_attention
    out_p = _nlhe(fn(elu_feature_map(_nlhe(tq)), elu_feature_map(_nlhe(tk)), _nlhe(tv),
                     torch.tensor(mask, dtype=torch.float64)))
    grads_p = torch_grads(torch, out_p, (tq, tk, tv), dout)
    opts = {"causal": causal, **({"key_lengths": lengths} if padded else {})}
    out, grads = refattn_vjp(refattn.linear_attention, (q, k, v), dout, **opts)
    option = ("causal " if causal else "") + "elu+1, eps=1e-6" + (", key_lengths" if padded else "")
    compare("fast-transformers", option, ("out", "dq", "dk", "dv"), (out, *grads),
            (out_p.detach().numpy(), *grads_p), TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("causal", [False, True])
def test_favor(seed, causal):
    q, k, v, w, lengths, dout = _inputs(seed)
    b, h, n, d = q.shape
    mask = torch.ones((b, n), dtype=torch.float64)
    tq, tk, tv, tw = (torch.tensor(a, requires_grad=True) for a in (q, k, v, w))
    omega = tw.T
    temp = 1 / sqrt(d)
    fn = causal_linear_attention if causal else linear_attention
    out_p = _nlhe(fn(favor(_nlhe(tq), omega, temp), favor(_nlhe(tk), omega, temp), _nlhe(tv), mask))
    grads_p = torch_grads(torch, out_p, (tq, tk, tv, tw), dout)
    name = "fast_transformers_favor" + ("_causal" if causal else "")
    out, grads = refattn_vjp(refattn.random_feature_attention, (q, k, v, w), dout, **PRESETS[name])
    compare("fast-transformers", name, ("out", "dq", "dk", "dv", "dW"), (out, *grads),
            (out_p.detach().numpy(), *grads_p), TOL)
