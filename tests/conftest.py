"""Shared fixtures: one ``backend`` fixture over every available backend, hypothesis profiles.

Backends: numpy, array_api_strict (its CPU device; the float32-only tests also use its
``no_float64`` fake device), torch (CPU), and the GPU ones, torch on CUDA (``torch:cuda``) and cupy,
both skipped without a GPU. A ``name:device`` entry asks for that device. Hypothesis runs with a
derandomized profile so every run of the suite draws the same examples.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from refattn import backends

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.register_profile("fuzz", deadline=None, max_examples=2000)  # long local runs (tests/test_bad_input_fuzz.py)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ["numpy", "array_api_strict", "torch", "torch:cuda", "cupy"]


def _get(spec: str) -> backends.Backend:
    name, _, device = spec.partition(":")
    try:
        return backends.get(name, device or None)
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=BACKENDS)
def backend(request) -> backends.Backend:
    """Every backend, float64-capable devices."""
    return _get(request.param)


@pytest.fixture(params=[*BACKENDS, "array_api_strict:no_float64"])
def backend32(request) -> backends.Backend:
    """Every backend including array_api_strict's device without float64 (float32 tests)."""
    return _get(request.param)


@pytest.fixture
def xp(backend):
    return backend.xp


def host_qkv(seed: int, batch=(2, 3), n=7, m=9, d=4, dv=5, scale=1.0):
    rs = np.random.default_rng(seed)
    return (scale * rs.standard_normal((*batch, n, d)), scale * rs.standard_normal((*batch, m, d)),
            rs.standard_normal((*batch, m, dv)))


def to(backend, *arrays, dtype="float64"):
    return tuple(backend.asarray(np.asarray(a, dtype=dtype)) for a in arrays)
