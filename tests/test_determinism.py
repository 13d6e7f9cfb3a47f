"""Determinism and thread safety (issue 13, parts 4 and 5), over every public function of the catalogue.

* Same inputs (and seed) -> bit-identical outputs and gradients on the NumPy backend: repeated in
  one process, and in a fresh interpreter (a hash of every result, so no hidden process state).
* Across backends: agreement, not bit-identity (documented in the ``refattn._xp`` module docstring,
  "Determinism"): array_api_strict wraps NumPy and runs the same operations, so it is bit-identical
  to NumPy; torch uses its own BLAS and reduction orders, so it agrees within rounding, bounded here
  by ``1e-12`` of each result's size (normwise: ``max|a - b| <= 1e-12 max|b|``). Justification: each
  backend's result is within ``c u`` of the exact value with ``c`` of the order of the operation count
  on these small shapes (n, m <= 5, d <= 4: c <= ~200 for the plain methods, whose forward bounds are
  ``(2 (d + 3) S + 2 (m + 3)) u`` with logits S <= ~5, and the pseudoinverse/SVD methods on
  well-conditioned matrices, condition number <= ~10, add at most that factor), so two backends differ
  by <= 2 c u ~ 5e-14; 1e-12 leaves a margin of 20 for the gradients' longer chains.
* Samplers draw on the host: the same seed gives bit-identical numbers on every backend.
* Thread safety: methods keep no global state (registries are filled at import; the FWHT primitive
  cache is idempotent), so 4 threads running the same function at once give the serial result bit for
  bit (outputs and gradients).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest

import refattn
from refattn import backends

from ._catalogue_specs import SPECS, Spec

TOL_BACKENDS = 1e-12


def _flat(res: Any) -> list[np.ndarray]:
    if isinstance(res, (tuple, list)):
        return [a for r in res for a in _flat(r)]
    return [np.asarray(res)]


def _run(spec: Spec, args: list[Any], kw: dict[str, Any]) -> list[np.ndarray]:
    """Output and (where registered) the gradients for a fixed cotangent."""
    out = spec.fn(*args, **kw)
    res = _flat(out)
    if spec.fn in refattn.registered():
        o, pb = refattn.vjp(spec.fn, *args, **kw)
        o = o[0] if isinstance(o, tuple) else o  # (out, lse): the first output's cotangent, the others zero
        dout = np.cos(np.arange(np.asarray(o).size, dtype=np.float64)).reshape(np.shape(o))
        res += [np.asarray(g) for g in pb(dout) if g is not None]
    return res


def _digest(results: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for r in results:
        h.update(np.ascontiguousarray(r).tobytes())
    return h.hexdigest()


def _all_digests() -> dict[str, str]:
    out = {}
    for spec in SPECS:
        args, kw = spec.build()
        out[spec.name] = _digest(_run(spec, args, kw))
    return out


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_bit_identical_repeats_numpy(spec):
    args, kw = spec.build()
    first = _run(spec, args, kw)
    for _ in range(2):
        again = _run(spec, *spec.build())
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)


def test_bit_identical_in_a_fresh_process():
    """A fresh interpreter computes the same bits (no dependence on state left by earlier calls)."""
    here = _all_digests()
    code = ("import json, sys; sys.path.insert(0, '.'); from tests.test_determinism import _all_digests; "
            "print(json.dumps(_all_digests()))")
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


def _to(backend: backends.Backend, args: list[Any]) -> list[Any]:
    return [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in args]


@pytest.mark.parametrize("name", ["array_api_strict", "torch"])
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_agreement_across_backends(spec, name):
    try:
        be = backends.get(name)
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    args, kw = spec.build()
    want = _run(spec, args, kw)
    out = spec.fn(*_to(be, args), **kw)
    got = [be.to_host(a) for a in _flat_backend(out)]
    if spec.fn in refattn.registered():
        o, pb = refattn.vjp(spec.fn, *_to(be, args), **kw)
        o = o[0] if isinstance(o, tuple) else o
        shape = tuple(o.shape)
        dout = be.asarray(np.cos(np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape))
        got += [be.to_host(g) for g in pb(dout) if g is not None]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        if name == "array_api_strict":
            np.testing.assert_array_equal(a, b)  # same NumPy operations underneath
        else:
            assert np.max(np.abs(a - b), initial=0.0) <= TOL_BACKENDS * max(np.max(np.abs(b), initial=0.0), 1e-300)


def _flat_backend(res: Any) -> list[Any]:
    if isinstance(res, (tuple, list)):
        return [a for r in res for a in _flat_backend(r)]
    return [res]


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch"])
def test_samplers_same_numbers_on_every_backend(name):
    try:
        be = backends.get(name)
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    draws = [
        lambda b: refattn.random.normal((3, 4), rng=7, backend=b),
        lambda b: refattn.random.orthogonal((5, 3), rng=7, backend=b),
        lambda b: refattn.random.linformer_projection(3, 6, rng=7, backend=b),
        lambda b: refattn.random.gaussian_projection(6, 3, rng=7, backend=b),
        lambda b: refattn.random.orthogonal_projection(6, 3, rng=7, backend=b),
    ]
    for draw in draws:
        np.testing.assert_array_equal(be.to_host(draw(be)), np.asarray(draw(None)))


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_four_threads_equal_serial(spec):
    args, kw = spec.build()
    serial = _run(spec, args, kw)
    barrier = threading.Barrier(4)
    results: list[Any] = [None] * 4

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = [_run(spec, args, kw) for _ in range(3)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert not isinstance(r, BaseException), repr(r)
        for rep in r:
            for a, b in zip(rep, serial, strict=True):
                np.testing.assert_array_equal(a, b)
