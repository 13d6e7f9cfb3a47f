"""Shared helpers of the peer tests (tests/test_peers_*.py): run a peer package's own torch code and
refattn's hand-written forward and backward on the same float64 inputs and compare.

``rel(a, b) = max|a - b| / max|b|`` (the largest error relative to the peer's largest entry). With
``REFATTN_PEER_REPORT=path`` every comparison appends ``peer option quantity rel`` to ``path`` (the
closing note's table: ``python -m pytest tests/test_peers_*.py`` then aggregate the file).
"""

from __future__ import annotations

import os

import numpy as np

import refattn


def rel(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return float(np.max(np.abs(a - b))) / (scale if scale > 0 else 1.0) if a.size else 0.0


def record(peer: str, option: str, quantity: str, err: float) -> None:
    path = os.environ.get("REFATTN_PEER_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(f"{peer}\t{option}\t{quantity}\t{err:.3e}\n")


def compare(peer: str, option: str, names, ours, theirs, tol: float) -> dict[str, float]:
    """Assert ``rel(ours[i], theirs[i]) <= tol`` for each named quantity; record and return the errors."""
    errs = {}
    for name, a, b in zip(names, ours, theirs):
        err = rel(a, b)
        record(peer, option, name, err)
        errs[name] = err
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"{peer} [{option}]: relative errors above {tol:g}: {bad}"
    return errs


def torch_grads(torch, out, inputs, dout):
    """Peer's autograd: the gradients of ``sum(out * dout)`` with respect to ``inputs`` (numpy)."""
    grads = torch.autograd.grad(out, inputs, grad_outputs=torch.as_tensor(dout), allow_unused=True)
    return [np.zeros(tuple(x.shape)) if g is None else g.detach().numpy() for x, g in zip(inputs, grads)]


def refattn_vjp(fn, arrays, dout, **options):
    out, pullback = refattn.vjp(fn, *arrays, **options)
    return np.asarray(out), [np.asarray(g) for g in pullback(dout)]
