"""refattn against lucidrains' performer-pytorch (its own FastAttention code) in float64.

Presets of :func:`refattn.random_feature_attention` (``refattn.get_method("random_feature").presets``):
``performer`` (FAVOR+ softmax kernel, ``1e-4`` after a detached max shift), ``performer_causal``
(its causal path, ``1e-6`` on every component of the key prefix sum), ``performer_generalized``
(``relu(x W^T) + 1e-3``) and its causal form. The peer's projection is set to refattn's ``W``
(``projection_matrix``, ``(D, d)``), with ``requires_grad`` so that its gradient is compared too.
Non-iterative: outputs and every gradient within 1e-12 relative.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

import refattn
from refattn._registry import get_method

from ._peers import compare, record, refattn_vjp, rel, torch_grads

torch = pytest.importorskip("torch")
pp = pytest.importorskip("performer_pytorch")

TOL = 1e-12
PRESETS = get_method("random_feature").presets
SEEDS = range(4)


def _peer(name, d, D, w):
    causal = name.endswith("causal")
    generalized = "generalized" in name
    with contextlib.redirect_stdout(io.StringIO()):  # it prints that the CUDA causal kernel is absent
        fa = pp.FastAttention(dim_heads=d, nb_features=D, causal=causal, generalized_attention=generalized)
    fa.projection_matrix = w
    return fa


def _inputs(seed, b=2, h=3, n=7, d=4, D=6, spread=1.0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, h, n, d)) * spread for _ in range(3))
    w = rng.standard_normal((D, d))
    return q, k, v, w, rng.standard_normal((b, h, n, d))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["performer", "performer_causal", "performer_generalized",
                                  "performer_generalized_causal"])
def test_matches_performer_pytorch(name, seed):
    q, k, v, w, dout = _inputs(seed, spread=1.5)
    tq, tk, tv, tw = (torch.tensor(a, requires_grad=True) for a in (q, k, v, w))
    fa = _peer(name, q.shape[-1], w.shape[0], tw)
    out_p = fa(tq, tk, tv)
    grads_p = torch_grads(torch, out_p, (tq, tk, tv, tw), dout)
    out, grads = refattn_vjp(refattn.random_feature_attention, (q, k, v, w), dout, **PRESETS[name])
    compare("performer-pytorch", name, ("out", "dq", "dk", "dv", "dW"), (out, *grads),
            (out_p.detach().numpy(), *grads_p), TOL)


def _peer_forward_np(name, q, k, v, w):
    fa = _peer(name, q.shape[-1], w.shape[0], torch.tensor(w))
    with torch.no_grad():
        return fa(*(torch.tensor(a) for a in (q, k, v))).numpy()


@pytest.mark.parametrize("name", ["performer", "performer_causal"])
def test_exact_max_grad_is_the_derivative_of_the_peer_forward(name):
    """The peer's q/k gradients hold the max shift constant (``.detach()``), which is not the derivative
    of its own forward pass once 1e-4 is added after the shift. ``max_grad="exact"`` (refattn's default)
    is: checked against central differences of the peer's forward (truncation ~h^2, rounding ~eps/h)."""
    q, k, v, w, dout = _inputs(0, b=1, h=2, n=5, d=3, D=4, spread=2.0)
    opts = {**PRESETS[name], "max_grad": "exact"}
    _, grads = refattn_vjp(refattn.random_feature_attention, (q, k, v, w), dout, **opts)
    _, detached = refattn_vjp(refattn.random_feature_attention, (q, k, v, w), dout, **PRESETS[name])
    h = 1e-5
    for idx, name_arr in enumerate(("q", "k")):
        args = [q, k, v, w]
        fd = np.zeros_like(args[idx])
        for pos in np.ndindex(*args[idx].shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[idx][pos] += h
            minus[idx][pos] -= h
            fd[pos] = np.sum((_peer_forward_np(name, *plus) - _peer_forward_np(name, *minus)) * dout) / (2 * h)
        err = rel(grads[idx], fd)
        record("performer-pytorch", f"{name}, max_grad=exact vs d(peer forward)", "d" + name_arr, err)
        assert err < 1e-7, err
        gap = rel(detached[idx], fd)
        record("performer-pytorch", f"{name}: peer's detached gradient vs d(peer forward)", "d" + name_arr, gap)
        assert gap > 1e-6  # the detached gradient is measurably not the derivative


def test_presets_are_registered():
    assert {"performer", "performer_causal", "performer_generalized", "fast_transformers_favor"} <= set(PRESETS)
    for opts in PRESETS.values():
        refattn.random_feature_attention(*_inputs(0)[:4], **opts)  # every preset is a valid call
