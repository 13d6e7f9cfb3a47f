"""Every registered method lazy on Dask and traceable under ``jax.jit``, forward and pullback.

Dask: the forward pass and the pullback build a graph under a scheduler that raises if anything is
computed (no host sync anywhere: the data-dependent checks skip lazy arrays), then the graph is
computed once and compared with NumPy. JAX: eager, and ``jax.jit`` of forward + pullback together,
with the masks and ``key_lengths`` traced too. Tolerance: float64 on small shapes, the backends use
other summation orders (chunk merging, XLA's dot), measured <= 2e-14 relative; the bound is 1e-11
of the largest entry, far below any real discrepancy (O(1) on these inputs).
"""

from __future__ import annotations

import numpy as np
import pytest

import refattn
from refattn import backends
from refattn._registry import methods

dask = pytest.importorskip("dask")
jax = pytest.importorskip("jax")

B, N, M, D, DV = (2, 2), 8, 8, 4, 4

#: method -> option variants (each mask kind the method honours appears at least once)
VARIANTS = {
    "softmax": [{}, {"impl": "blockwise", "block_q": 3, "block_k": 4, "causal": True}, {"mask": "bool"},
                {"impl": "blockwise", "block_k": 3, "key_lengths": True}, {"mask": "additive"}],
    "heat": [{"reading": "hadamard"}, {"reading": "logits", "rank": 3, "causal": True}],
    "kernel": [{"kernel": "glu", "causal": True}, {"kernel": "ffn", "key_lengths": True}],
    "linear": [{}, {"causal": True, "chunk": 3}, {"key_lengths": True}],
    "efficient": [{}],
    "linformer": [{}],
    "verma": [{"key_lengths": True}],
    "nystrom": [{"num_landmarks": 2, "pinv": "exact"}, {"num_landmarks": 3}],
    "random_feature": [{}, {"causal": True, "chunk": 3}, {"features": "trig", "errors": "ignore"}],
}
CASES = [(name, var) for name in methods() for var in VARIANTS.get(name, [{}])]


def test_every_method_has_variants():
    assert set(VARIANTS) == set(methods()), "a new method needs lazy variants here"


def _case(name, var):
    meth = methods()[name]
    rs = np.random.default_rng(0)
    host = [rs.standard_normal((*B, N, D)), rs.standard_normal((*B, M, D)), rs.standard_normal((*B, M, DV))]
    opts = {k: v for k, v in var.items() if k not in ("mask", "key_lengths")}
    params = meth.make_params({"batch": B, "n": N, "m": M, "d": D, "dv": DV}, np.random.default_rng(1),
                              backends.get("numpy"), "float64", opts)
    host += [np.asarray(x) for x in params.values()]
    masks = {}
    if var.get("mask") == "bool":
        keep = rs.random((*B, N, M)) < 0.7
        keep[..., 0] = True
        masks["mask"] = keep
    elif var.get("mask") == "additive":
        masks["mask"] = np.where(rs.random((1, N, M)) < 0.2, -np.inf, rs.standard_normal((1, N, M)))
        masks["mask"][..., 0] = 0.0
    if var.get("key_lengths"):
        masks["key_lengths"] = np.array([[3, 8], [1, 5]])
    dout = rs.standard_normal((*B, N, DV))
    fn = meth.function
    ref, pull = refattn.vjp(fn, *host, **masks, **opts)
    return fn, host, masks, opts, dout, ref, tuple(pull(dout))


def _close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-11 * max(np.abs(want).max(), 1.0)


def _forbid(*args, **kwargs):
    raise AssertionError("a refattn call forced a Dask computation")


@pytest.mark.parametrize(("name", "var"), CASES, ids=[f"{n}-{i}" for n, v in VARIANTS.items() for i in range(len(v))])
def test_dask_lazy_and_correct(name, var):
    fn, host, masks, opts, dout, ref, grads = _case(name, var)
    be = backends.get("dask", device=(1, 2, 3, -1))  # several chunks along every axis but features
    args = [be.asarray(a) for a in host]
    with dask.config.set(scheduler=_forbid):
        out, pull = refattn.vjp(fn, *args, **{k: be.asarray(v) for k, v in masks.items()}, **opts)
        g = pull(be.asarray(dout))
    out, g = dask.compute(out, tuple(g), scheduler="sync")
    _close(out, ref)
    for a, b in zip(g, grads):
        _close(a, b)


@pytest.mark.parametrize(("name", "var"), CASES, ids=[f"{n}-{i}" for n, v in VARIANTS.items() for i in range(len(v))])
def test_jax_eager_and_jit(name, var):
    import jax.numpy as jnp

    fn, host, masks, opts, dout, ref, grads = _case(name, var)
    be = backends.get("jax")
    args = [be.asarray(a) for a in host]
    jm = {k: be.asarray(v) for k, v in masks.items()}
    out, pull = refattn.vjp(fn, *args, **jm, **opts)
    _close(out, ref)
    for a, b in zip(pull(be.asarray(dout)), grads):
        _close(a, b)

    @jax.jit
    def both(args, jm, dout):
        out, pull = refattn.vjp(fn, *args, **jm, **opts)
        return out, tuple(pull(dout))

    out, g = both(args, jm, jnp.asarray(dout))
    _close(out, ref)
    for a, b in zip(g, grads):
        _close(a, b)


def test_jit_with_some_arguments_traced_and_others_concrete():
    """A tracer's device is None: it must be accepted next to concrete arrays (closure constants)."""
    import jax.numpy as jnp

    backends.get("jax")  # enables float64
    rs = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rs.standard_normal((2, 5, 3))) for _ in range(3))
    lengths = jnp.asarray([2, 5])
    f = jax.jit(lambda q: refattn.softmax_attention(q, k, v, key_lengths=lengths, causal="bottom_right"))
    want = refattn.softmax_attention(*(np.asarray(x) for x in (q, k, v)), key_lengths=np.asarray(lengths),
                                     causal="bottom_right")
    _close(f(q), want)
