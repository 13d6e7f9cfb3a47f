"""The method registry: one declaration per differentiable public function, next to its code.

Every public function with a hand-written backward declares itself once, with :func:`declare` (a
decorator on the public function). Attention methods (``q, k, v`` first) give a :class:`Method`;
other differentiable functions (feature maps, the Walsh-Hadamard transform, the SVD truncation, the
pseudoinverse, the kernels' penalty, multi-head attention) a plain :class:`Function`. Everything
that used to keep a table of its own reads this one:

- :func:`refattn.vjp` (forward and backward of every declared function);
- the oracle (:mod:`refattn.testing`, ``refattn check``): masks, parameters, fixed options and the
  error models of :func:`methods`;
- ``refattn cost METHOD`` (every method, every option: :attr:`Method.closed_cost`);
- the ledger's and the bad-input catalogue's method lists, and the API reference of the docs.

Adding a method is one new module in ``refattn/methods/`` whose public function carries a
``@declare(Method(...))`` decorator, plus its re-export in ``refattn/methods/__init__.py`` (the
import that runs the declaration) and its tests; no other file changes.

The registry imports nothing heavy (no NumPy, no :mod:`refattn.testing`): error models are named by
``"module:function"`` strings and resolved on first use.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = ["Array", "Function", "Method", "MASK_KINDS", "QKV", "declare", "lookup", "functions", "methods",
           "get_method"]

#: mask kinds a method can honour: no mask, ``causal=True`` (top-left), ``causal="bottom_right"``,
#: a boolean mask, an additive float mask, key padding (``key_lengths``)
MASK_KINDS = ("none", "causal", "bottom_right", "bool", "additive", "key_lengths")


@dataclass(frozen=True)
class Array:
    """A positional array argument: its name (as error messages and gradients name it), its shape
    in the method's size symbols, and whether the backward returns its cotangent."""

    name: str
    shape: str
    differentiable: bool = True


#: q, k, v: the first three arguments of every attention method
QKV = (Array("q", "(..., n, d)"), Array("k", "(..., m, d)"), Array("v", "(..., m, dv)"))

Builder = Callable[[Mapping[str, Any], Mapping[str, Any], Any, Any, str], Mapping[str, Any]]


@dataclass(frozen=True)
class Function:
    """A differentiable public function: ``forward(*args, **kw) -> (out, residuals)`` and
    ``backward(residuals, dout) -> Grads`` (one cotangent per differentiable array argument)."""

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    name: str = ""
    function: Callable[..., Any] | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword-only parameters of the public function (its options), in signature order."""
        if self.function is None:
            return ()
        sig = inspect.signature(self.function)
        return tuple(p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def defaults(self) -> dict[str, Any]:
        """The options' defaults, from the public function's signature (the one source of them)."""
        if self.function is None:
            return {}
        sig = inspect.signature(self.function)
        return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclass(frozen=True)
class Method(Function):
    """An attention method: ``fn(q, k, v, *params, **options)``.

    Attributes
    ----------
    name : the method's name (``refattn check METHOD``, ``refattn cost METHOD``).
    summary : one line: what it computes, and the paper.
    arrays : every positional array argument, ``q, k, v`` first (:data:`QKV`), then the parameters.
    sizes : the size symbols the parameters' shapes use beyond ``n m d dv``, each with its default as
        a function of the others (e.g. Linformer's ``k``).
    params : ``(sizes, options, rng, backend, dtype) -> {name: array}``: draws the parameter arrays (host
        samplers of :mod:`refattn.random`, moved to ``backend``); ``None`` without parameters.
    masks : the mask kinds it honours (:data:`MASK_KINDS`); any other raises ``ValueError``.
    oracle_masks : the mask kinds its error model covers (``None``: all of :attr:`masks`).
    has_scale : whether ``scale`` is a logit scale (kernel attention has none: it takes only ``None``).
    dtypes : its dtype rule.
    cost : ``(sizes, options, backward) -> Cost``: the closed form (``sizes`` holds ``batch n m d
        dv dtype_bytes`` and :attr:`sizes`); ``None`` where only the counted cost exists.
    error_model : ``"module:function"`` of its rounding-error model (see :mod:`refattn._oracle`),
        or ``None``; ``grad_error_model``: whether that model bounds the gradients too.
    oracle_options : the fixed options the error model is derived for (the oracle's call).
    adapt_shape : ``(Shape, mask_kind) -> Shape`` making a drawn test shape one the method accepts.
    presets : name -> options: the keyword options with which the method reproduces a public
        implementation's conventions (``fn(q, k, v, *params, **method.presets["performer"])``); the
        peer, its version and what each option changes are in ``docs/peer_conventions.md``.
    """

    summary: str = ""
    arrays: tuple[Array, ...] = QKV
    sizes: Mapping[str, Callable[[Mapping[str, Any]], int]] = field(default_factory=dict)
    params: Builder | None = None
    masks: tuple[str, ...] = ("none",)
    oracle_masks: tuple[str, ...] | None = None
    has_scale: bool = True
    dtypes: str = ("real floating q, k, v of one dtype; float16/bfloat16 computed in float32 and cast back, "
                   "float32 and float64 in their own precision")
    cost: Callable[[Mapping[str, Any], Mapping[str, Any], bool], Any] | None = None
    error_model: str | None = None
    grad_error_model: bool = False
    oracle_options: Mapping[str, Any] = field(default_factory=dict)
    adapt_shape: Callable[[Any, str], Any] | None = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the parameter arrays after ``q, k, v``."""
        return tuple(a.name for a in self.arrays[3:])

    @property
    def grad_names(self) -> tuple[str, ...]:
        return tuple("d" + a.name for a in self.arrays if a.differentiable)

    def resolve_sizes(self, sizes: Mapping[str, Any]) -> dict[str, Any]:
        """``sizes`` with every missing method size symbol set to its default."""
        out = dict(sizes)
        for name, default in self.sizes.items():
            if out.get(name) is None:
                out[name] = default(out)
        return out

    def make_params(self, sizes: Mapping[str, Any], rng: Any, backend: Any = None, dtype: str = "float64",
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The parameter arrays for ``sizes`` and ``options`` (``{}`` for a method without parameters)."""
        if self.params is None:
            return {}
        opts = {**self.oracle_options, **(options or {})}
        return dict(self.params(self.resolve_sizes(sizes), opts, rng, backend, dtype))

    def error_bound(self) -> Callable[..., Any] | None:
        """The error-model function (imported on first use), or ``None``."""
        if self.error_model is None:
            return None
        module, _, name = self.error_model.partition(":")
        return getattr(importlib.import_module(module), name)

    def closed_cost(self, sizes: Mapping[str, Any], options: Mapping[str, Any], backward: bool = False) -> Any:
        """The closed-form :class:`~refattn.cost.Cost` at ``sizes`` with ``options`` (``None`` if none)."""
        if self.cost is None:
            return None
        return self.cost(self.resolve_sizes(sizes), options, backward)


_BY_FUNCTION: dict[Callable[..., Any], Function] = {}
_METHODS: dict[str, Method] = {}


def declare(spec: Function) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``spec`` as the declaration of the decorated public function."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        full = replace(spec, function=fn, name=spec.name or fn.__name__)
        if isinstance(full, Method):
            unknown = set(full.masks) - set(MASK_KINDS)
            if unknown:
                msg = f"{full.name}: unknown mask kinds {sorted(unknown)}; known: {MASK_KINDS}"
                raise ValueError(msg)
            if tuple(a.name for a in full.arrays[:3]) != ("q", "k", "v"):
                msg = f"{full.name}: an attention method's first three arrays are q, k, v"
                raise ValueError(msg)
            _METHODS[full.name] = full
        _BY_FUNCTION[fn] = full
        fn.__refattn_declaration__ = full  # type: ignore[attr-defined]
        return fn

    return register


def _load() -> None:
    # the declarations run when the modules holding them are imported
    importlib.import_module("refattn.methods")
    importlib.import_module("refattn.mha")
    importlib.import_module("refattn.hadamard")


def lookup(fn: Any) -> Function | None:
    """The declaration of a public function, or ``None`` if it has none."""
    try:
        return _BY_FUNCTION.get(fn)
    except TypeError:  # unhashable
        return None


def functions() -> tuple[Callable[..., Any], ...]:
    """Every declared (differentiable) public function."""
    _load()
    return tuple(_BY_FUNCTION)


def methods() -> Mapping[str, Method]:
    """name -> :class:`Method`, for every attention method (read-only)."""
    _load()
    return MappingProxyType(_METHODS)


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; ``ValueError`` listing the known ones otherwise."""
    table = methods()
    if name not in table:
        msg = f"unknown method {name!r}; known: {', '.join(table)}"
        raise ValueError(msg)
    return table[name]
