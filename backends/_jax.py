"""JAX backend (``jax.numpy``, the array-API namespace of JAX), on JAX's default device or ``device``.

Making the backend enables 64-bit types (``jax_enable_x64``): float64 is the oracle precision, and
JAX silently computes in float32 without it. ``peak_memory()`` reads the device's allocator
statistics where JAX reports them (GPU) and returns ``None`` otherwise (CPU).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from . import Backend


def is_available() -> bool:
    return importlib.util.find_spec("jax") is not None


def why_unavailable() -> str:
    return "jax is not installed"


def make(device=None) -> Backend:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    if device is None or isinstance(device, str):
        platform = device or jax.default_backend()
        try:
            dev = jax.devices(platform)[0]
        except RuntimeError as exc:
            from . import BackendUnavailable

            msg = f"backend 'jax' on device {platform!r} is not available ({exc})"
            raise BackendUnavailable(msg) from None
    else:
        dev = device

    def asarray(a, dtype=None):
        return jax.device_put(jnp.asarray(np.array(a, dtype=dtype, copy=True)), dev)

    def to_host(a):
        return np.asarray(jax.device_get(a))

    def sync():
        (jax.device_put(0.0, dev) + 0).block_until_ready()

    def stats():
        try:
            return dev.memory_stats() or {}
        except (AttributeError, NotImplementedError, RuntimeError):
            return {}

    def peak():
        value = stats().get("peak_bytes_in_use")
        return int(value) if value is not None else None

    return Backend(name="jax", xp=jnp, device=dev, version=jax.__version__, asarray=asarray, to_host=to_host,
                   synchronize=sync, reset_peak_memory=lambda: None, peak_memory=peak)
