"""array-api-strict backend: the minimal standard namespace, proving refattn uses nothing more.

Devices: ``array_api_strict.Device("CPU_DEVICE")`` by default; the fake devices ``"device1"``,
``"device2"`` and ``"no_float64"`` (a device without float64) exist for device-handling tests.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from . import Backend


def is_available() -> bool:
    return importlib.util.find_spec("array_api_strict") is not None


def why_unavailable() -> str:
    return "array-api-strict is not installed"


def make(device=None) -> Backend:
    import array_api_strict as xp

    dev = xp.Device(device) if isinstance(device, str) else (device or xp.Device())

    def asarray(a, dtype=None):
        a = np.asarray(a)
        dt = getattr(xp, str(np.dtype(dtype or a.dtype)))
        return xp.asarray(a, dtype=dt, device=dev)

    def to_host(a):
        return np.asarray(xp.asarray(a, device=xp.Device()))  # __array__ works on the CPU device only

    return Backend(
        name="array_api_strict", xp=xp, device=dev, version=xp.__version__,
        asarray=asarray, to_host=to_host, synchronize=lambda: None,
        reset_peak_memory=lambda: None, peak_memory=lambda: None,
    )
