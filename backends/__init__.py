"""Backends: where refattn's array-API code runs (installed as ``refattn.backends``).

A :class:`Backend` bundles an array-API namespace with what the library and the tests need from a
concrete array library: moving host (NumPy) data in and out, synchronising, and measuring peak
memory. Built in: ``numpy`` (default), ``array_api_strict``, ``torch`` (CPU, or CUDA with
``device="cuda"``), ``cupy``, ``dask`` (lazy, chunked) and ``jax``. Third parties register a factory
``(device=None) -> Backend`` under the entry-point group ``refattn.backends``; it is loaded only when asked for.

A backend may also offer faster implementations of named primitives (``primitives["fwht"]``...);
refattn's generic array-API versions remain the oracle that tests compare them with.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

__all__ = ["Backend", "BackendUnavailable", "get", "available", "names", "register"]


class BackendUnavailable(RuntimeError):
    """The backend's package (or device) is missing; the message names what to install."""


@dataclass(frozen=True)
class Backend:
    """An array library as refattn uses it.

    Attributes
    ----------
    name : str
    xp : module
        The array-API namespace (array_api_compat's wrapper where the library needs one).
    device : object
        The device arrays are created on.
    version : str
    asarray : callable ``(host_array, dtype=None) -> array`` on ``device``
    to_host : callable ``(array) -> numpy.ndarray``
    synchronize : callable ``() -> None`` (waits for queued device work)
    reset_peak_memory, peak_memory : callables; ``peak_memory()`` is the peak of bytes allocated by
        the library since the last ``reset_peak_memory()`` (``None`` where it cannot be measured,
        e.g. torch on the CPU).
    primitives : mapping of faster named primitives (may be empty).
    """

    name: str
    xp: Any
    device: Any
    version: str
    asarray: Callable[..., Any]
    to_host: Callable[[Any], Any]
    synchronize: Callable[[], None]
    reset_peak_memory: Callable[[], None]
    peak_memory: Callable[[], int | None]
    primitives: Mapping[str, Callable[..., Any]] = field(default_factory=lambda: MappingProxyType({}))

    def is_available(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r}, version={self.version!r})"


# name -> (module, extra to install)
_BUILTIN = {
    "numpy": ("refattn.backends._numpy", None),
    "array_api_strict": ("refattn.backends._strict", "test"),
    "torch": ("refattn.backends._torch", "peers"),
    "cupy": ("refattn.backends._cupy", "gpu"),
    "dask": ("refattn.backends._dask", "dask"),
    "jax": ("refattn.backends._jax", "jax"),
}
_REGISTERED: dict[str, Callable[..., Backend]] = {}


def register(name: str, factory: Callable[..., Backend]) -> None:
    """Register a backend factory ``factory(device=None) -> Backend`` under ``name``."""
    _REGISTERED[name] = factory


def _entry_point_factories() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="refattn.backends")}


def names() -> tuple[str, ...]:
    """Every backend name refattn knows of, available or not."""
    return tuple(dict.fromkeys([*_BUILTIN, *_REGISTERED, *_entry_point_factories()]))


def get(name: str = "numpy", device: Any = None) -> Backend:
    """The backend ``name`` on ``device`` (its default device when ``None``).

    Raises
    ------
    ValueError
        An unknown name.
    BackendUnavailable
        The backend's package or device is missing; the message names the extra to install.
    """
    if name in _REGISTERED:
        return _REGISTERED[name](device=device)
    if name in _BUILTIN:
        module, extra = _BUILTIN[name]
        mod = importlib.import_module(module)
        if not mod.is_available():
            hint = f"pip install 'refattn[{extra}]'" if extra else "reinstall refattn"
            msg = f"backend {name!r} is not available here ({mod.why_unavailable()}); install it with {hint}"
            raise BackendUnavailable(msg)
        return mod.make(device)
    eps = _entry_point_factories()
    if name in eps:
        return eps[name].load()(device=device)
    msg = f"unknown backend {name!r}; known backends: {', '.join(names())}"
    raise ValueError(msg)


def available() -> tuple[str, ...]:
    """Names of the backends that can be used on this machine (device present, package installed)."""
    found = []
    for name in names():
        try:
            get(name)
        except (BackendUnavailable, ImportError):
            continue
        found.append(name)
    return tuple(found)
