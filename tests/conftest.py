"""Shared fixtures: one ``backend`` fixture over every available backend, hypothesis profiles.

Backends: numpy, array_api_strict (its CPU device; the float32-only tests also use its
``no_float64`` fake device), torch (CPU), and the GPU ones, torch on CUDA (``torch:cuda``) and cupy,
both skipped without a GPU, and the lazy/traced ones, ``dask`` and ``jax`` (CPU; 64-bit enabled). A
``name:device`` entry asks for that device. Hypothesis runs with a derandomized profile so every run
of the suite draws the same examples.

Dask and JAX run a subset of the backend-parametrised tests (:data:`LAZY_SUBSET`: one forward and
backward test or more per method, chosen to fit the CI budget), plus ``tests/test_lazy_*.py``
(every registered method lazy on Dask and under ``jax.jit``, and the Dask graphs' shapes).
``REFATTN_TEST_LAZY=all`` runs every backend-parametrised test on them too (about 30 minutes).
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

BACKENDS = ["numpy", "array_api_strict", "torch", "torch:cuda", "cupy", "dask", "jax"]
LAZY_BACKENDS = ("dask", "jax")

#: the backend-parametrised tests (module::function) that run on dask and jax in the default suite
LAZY_SUBSET = frozenset({
    "test_foundation.py::test_backend_round_trip_and_same_numbers_for_same_seed",
    "test_foundation.py::test_causal_dot_backward_gradcheck",
    "test_softmax.py::test_scale_and_dv_not_d",
    "test_softmax.py::test_fully_masked_rows_give_zeros_and_zero_gradients",
    "test_softmax.py::test_broadcast_batch_dims_reduce_gradients",
    "test_softmax.py::test_empty_sequences",
    "test_heat.py::test_float32_and_half",
    "test_kernels.py::test_backends_agree_forward_and_backward",
    "test_linear.py::test_causal_on_every_backend",
    "test_linear.py::test_broadcast_batch_dims_reduce_gradients",
    "test_linformer.py::test_float32_and_half",
    "test_nystrom.py::test_gradients_on_every_backend",
    "test_random_features.py::test_float32_on_every_device",
    "test_hadamard.py::test_float32_and_half_precision",
    "test_mha.py::test_method_with_positional_parameters",
})


def pytest_collection_modifyitems(config, items):
    """Deselect the dask/jax parametrisations outside :data:`LAZY_SUBSET` (unless REFATTN_TEST_LAZY=all)."""
    if os.environ.get("REFATTN_TEST_LAZY") == "all":
        return
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        name = None if spec is None else spec.params.get("backend", spec.params.get("backend32"))
        lazy = isinstance(name, str) and name.partition(":")[0] in LAZY_BACKENDS
        test = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        (drop if lazy and test not in LAZY_SUBSET else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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
