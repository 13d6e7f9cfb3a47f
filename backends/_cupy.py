"""CuPy backend (NVIDIA GPU). Import-guarded: without CuPy or without a GPU it reports itself
unavailable and the tests skip it. Peak memory is tracked by a CuPy memory hook."""

from __future__ import annotations

import importlib.util

import numpy as np

from . import Backend


def _probe() -> str:
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy finds no CUDA device"
    except Exception as exc:  # no driver, no device: CuPy raises its own CUDA errors
        return f"CuPy cannot reach a CUDA device ({type(exc).__name__}: {exc})"
    return ""


def is_available() -> bool:
    return _probe() == ""


def why_unavailable() -> str:
    return _probe()


def make(device=None) -> Backend:
    import cupy
    from array_api_compat import cupy as xp

    dev = cupy.cuda.Device(device or 0)

    class _PeakHook(cupy.cuda.MemoryHook):
        name = "refattn_peak"

        def __init__(self):
            self.live = 0
            self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.live += mem_size
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.live -= mem_size

    hook = _PeakHook()
    hook.__enter__()

    def asarray(a, dtype=None):
        with dev:
            return cupy.asarray(np.asarray(a, dtype=dtype))

    def reset():
        hook.peak = hook.live

    return Backend(name="cupy", xp=xp, device=dev, version=cupy.__version__, asarray=asarray,
                   to_host=cupy.asnumpy, synchronize=lambda: cupy.cuda.Device(dev.id).synchronize(),
                   reset_peak_memory=reset, peak_memory=lambda: hook.peak)
