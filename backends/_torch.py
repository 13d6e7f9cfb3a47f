"""PyTorch backend (CPU, or CUDA with ``device="cuda"``), through array_api_compat.torch.

Peak memory is measured from the CUDA caching allocator; on the CPU torch keeps no such statistics
and ``peak_memory()`` returns ``None``.

Primitives: ``fwht`` (Kronecker-factored GEMMs, :mod:`refattn.backends._hadamard`). On CUDA the
``H_b`` products run in the input dtype; TF32 is used only if the user enabled
``torch.backends.cuda.matmul.allow_tf32`` (off by default), which would lose the float32 bound.
"""

from __future__ import annotations

import importlib.util
from types import MappingProxyType
from typing import Any

import numpy as np

from . import Backend
from ._hadamard import kronecker_fwht, sylvester_host

_H_CACHE: dict[tuple[int, str, str], Any] = {}


def _fwht(x: Any, *, axis: int) -> Any:
    """``H_c x`` along ``axis`` (``c`` a power of two), unnormalised; see ``_hadamard``."""
    import torch

    def hadamard(b: int) -> Any:
        key = (b, str(x.dtype), str(x.device))
        if key not in _H_CACHE:
            _H_CACHE[key] = torch.from_numpy(sylvester_host(b)).to(dtype=x.dtype, device=x.device)
        return _H_CACHE[key]

    return kronecker_fwht(x, axis, hadamard)


def is_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def why_unavailable() -> str:
    return "torch is not installed"


def make(device=None) -> Backend:
    import torch
    from array_api_compat import torch as xp

    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        from . import BackendUnavailable

        msg = "backend 'torch' on device 'cuda' needs a CUDA GPU, and torch finds none"
        raise BackendUnavailable(msg)
    cuda = dev.type == "cuda"

    def asarray(a, dtype=None):
        return torch.from_numpy(np.array(a, dtype=dtype, copy=True)).to(dev)

    def to_host(a):
        return a.detach().cpu().numpy()

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def reset():
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)

    def peak():
        return int(torch.cuda.max_memory_allocated(dev)) if cuda else None

    return Backend(name="torch", xp=xp, device=dev, version=torch.__version__, asarray=asarray,
                   to_host=to_host, synchronize=sync, reset_peak_memory=reset, peak_memory=peak,
                   primitives=MappingProxyType({"fwht": _fwht}))
