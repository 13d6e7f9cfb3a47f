"""Specs of every public function for the bad-input catalogue (tests/test_bad_input_catalogue.py).

A :class:`Spec` says how to build valid inputs of a public function (host NumPy float64 arrays and
keyword options), which positional argument is which, and what the function's size options are.
Input classes (``CLASSES`` in the test module) mutate a valid call into a bad one; the rows of the
catalogue are ``(spec, class)`` pairs where the class applies to the spec.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import refattn
from refattn import hadamard
from refattn import random as rrandom
from refattn._registry import QKV as _QKV_ARRAYS
from refattn._registry import get_method
from refattn.methods import heat, kernels, linformer, nystrom

N, M, D, DV = 5, 5, 3, 2
QKV = tuple(a.name for a in _QKV_ARRAYS)
BATCH = (2, 3)


def _g(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _qkv(n: int = N, m: int = M, batch: tuple[int, ...] = BATCH) -> list[np.ndarray]:
    return [_g(1, *batch, n, D), _g(2, *batch, m, D), _g(3, *batch, m, DV)]


@dataclass(frozen=True)
class Spec:
    """How to call one public function.

    build(n, m) -> (args, kwargs): valid positional arrays (host float64) and options, with ``n``
    queries and ``m`` keys where that makes sense. ``names`` names the positional arguments (as the
    function's error messages do). ``qkv``: the first three arguments are q, k, v. ``params``: indices
    of parameter arrays. ``mask``: accepts ``mask=``. ``sizes``: keyword size options and the valid
    value (for the zero/negative-size rows). ``seq_arg``/``seq_axis``: where ``n`` lives for the
    empty-array rows (``None``: no sequence axis). ``has_check_finite``: the ``check_finite`` option.
    """

    name: str
    fn: Callable[..., Any]
    names: tuple[str, ...]
    build: Callable[..., tuple[list[Any], dict[str, Any]]]
    qkv: bool = False
    params: tuple[int, ...] = ()
    mask: bool = False
    sizes: dict[str, Any] = field(default_factory=dict)
    has_check_finite: bool = False
    min_rank: int = 2
    arrays_in_kwargs: tuple[str, ...] = ()
    host_only: bool = False  # samplers: no array inputs


def _plain(fn_kwargs: dict[str, Any] | None = None) -> Callable[..., tuple[list[Any], dict[str, Any]]]:
    def build(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
        return _qkv(n, m), dict(fn_kwargs or {})
    return build


def _linformer(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    kp = min(3, m) if m else 0
    return [*_qkv(n, m), _g(4, kp, m, scale=m ** -0.5 if m else 1.0), _g(5, kp, m, scale=m ** -0.5 if m else 1.0)], {}


def _rfa(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [*_qkv(n, m), _g(6, 6, D)], {}


def _features(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(7, 2, n, D), _g(6, 6, D)], {}


def _nystrom(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return _qkv(n, m), {"num_landmarks": min(2, n, m)}


def _nystrom_landmarks(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [*_qkv(n, m), _g(8, 2, D), _g(9, 2, D)], {}


def _square(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    a = np.eye(3) + 0.1 * _g(10, 3, 3)
    return [np.broadcast_to(a, (2, 3, 3)).copy()], {}


def _heat(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return _qkv(n, m), {"rank": max(1, min(2, n, m))}


def _truncate(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(11, 2, 4, 5)], {"rank": 2}


_GLU = [np.asarray(w) for w in kernels.init_params("glu", D, rng=0)]


def _kernel(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [*_qkv(n, m), *_GLU], {"kernel": "glu"}


def _feature_map(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(7, 2, n, D), *_GLU], {"kernel": "glu"}


def _penalty(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(12, 4, 3)], {}


def _fwht(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(13, 2, 3, 8)], {}


def _wht(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(13, 2, 3, 8), _g(14, 8), _g(15, 8)], {}


C_MHA = 4


def _mha(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    c = C_MHA
    return ([_g(16, 2, n, c), _g(17, c, c, scale=0.5), _g(18, c, c, scale=0.5), _g(19, c, c, scale=0.5),
             _g(20, c, c, scale=0.5)], {"heads": 2})


def _causal_dot(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(21, 2, n, D), _g(22, 2, n, D), _g(23, 2, n, DV)], {}


def _verma_proj(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(24, 3, m)], {"delta": 0.5}


def _segment_means(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(25, 2, n, D), 2], {}


def _merge(n: int = N, m: int = M) -> tuple[list[Any], dict[str, Any]]:
    return [_g(26, 2, 2, n, DV), _g(27, 2, 2, n)], {}


def _method(name: str, build: Callable[..., tuple[list[Any], dict[str, Any]]], *, variant: str = "",
            names: tuple[str, ...] | None = None, sizes: dict[str, Any] | None = None) -> Spec:
    """The spec of a declared attention method: function, argument names, parameter positions and
    which of ``mask``/``check_finite`` it takes come from its registry declaration."""
    method = get_method(name)
    names = names or tuple(a.name for a in method.arrays)
    label = method.function.__name__ + (f"[{variant}]" if variant else "")
    return Spec(label, method.function, names, build, qkv=True, params=tuple(range(3, len(names))),
                mask="mask" in method.options, sizes=dict(sizes or {}),
                has_check_finite="check_finite" in method.options)


def _function(fn: Callable[..., Any], names: tuple[str, ...], build: Callable[..., tuple[list[Any], dict[str, Any]]],
              *, params: tuple[int, ...] = (), sizes: dict[str, Any] | None = None, min_rank: int = 2) -> Spec:
    """The spec of any other public function (``check_finite`` read from its signature)."""
    has = "check_finite" in inspect.signature(fn).parameters
    return Spec(fn.__name__, fn, names, build, params=params, sizes=dict(sizes or {}), has_check_finite=has,
                min_rank=min_rank)


SPECS: list[Spec] = [
    _method("softmax", _plain(), sizes={"block_q": 2, "block_k": 2}),
    _method("softmax", _plain({"impl": "blockwise", "block_k": 2}), variant="blockwise", sizes={"block_q": 2}),
    _method("linear", _plain(), sizes={"chunk": 2}),
    _method("linear", _plain({"causal": True, "chunk": 2}), variant="causal", sizes={"chunk": 2}),
    _method("efficient", _plain()),
    _method("linformer", _linformer),
    _method("verma", _linformer),
    _function(linformer.verma_projections, ("r",), _verma_proj),
    _method("random_feature", _rfa, sizes={"chunk": 2}),
    _method("random_feature", lambda n=N, m=M: (_rfa(n, m)[0], {"causal": True, "features": "hyperbolic", "chunk": 2}),
            variant="causal,hyperbolic", sizes={"chunk": 2}),
    _function(refattn.trig_features, ("x", "W"), _features, params=(1,)),
    _function(refattn.positive_features, ("x", "W"), _features, params=(1,)),
    _function(refattn.hyperbolic_features, ("x", "W"), _features, params=(1,)),
    _method("nystrom", _nystrom, sizes={"num_landmarks": 2, "iterations": 6}),
    _method("nystrom", _nystrom_landmarks, variant="landmarks", names=(*QKV, "q_landmarks", "k_landmarks")),
    _function(nystrom.iterative_pinv, ("a",), _square, sizes={"iterations": 6}),
    _function(nystrom.exact_pinv, ("a",), _square),
    _function(nystrom.segment_means, ("x",), _segment_means),
    _method("heat", _heat, sizes={"rank": 2}),
    _function(heat.truncate, ("a",), _truncate, sizes={"rank": 2}),
    _method("kernel", _kernel, sizes={"chunk": 2}),
    _function(kernels.feature_map, ("x", "w_f0", "w_g0"), _feature_map, params=(1, 2)),
    _function(kernels.orthogonality_penalty, ("w",), _penalty),
    _function(refattn.fwht, ("x",), _fwht, min_rank=1),
    _function(refattn.wht_projection, ("x", "scale", "shift"), _wht, params=(1, 2), min_rank=1),
    _function(refattn.multi_head_attention, ("x", "w_q", "w_k", "w_v", "w_o"), _mha, params=(1, 2, 3, 4),
              sizes={"heads": 2}),
    _function(refattn.causal_dot, ("a", "b", "c"), _causal_dot, sizes={"chunk": 2}),
    _function(refattn.merge_attention, ("outs", "lses"), _merge),
]

# Host-side samplers: (name, callable(**sizes), valid sizes)
SAMPLERS: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
    ("random.normal", lambda shape: rrandom.normal(shape, rng=0), {"shape": (3, 2)}),
    ("random.uniform", lambda shape: rrandom.uniform(shape, rng=0), {"shape": (3, 2)}),
    ("random.orthogonal", lambda shape: rrandom.orthogonal(shape, rng=0), {"shape": (3, 2)}),
    ("random.linformer_projection", lambda k, m: rrandom.linformer_projection(k, m, rng=0), {"k": 3, "m": 5}),
    ("random.gaussian_projection", lambda n_features, d: rrandom.gaussian_projection(n_features, d, rng=0),
     {"n_features": 6, "d": 3}),
    ("random.orthogonal_projection", lambda n_features, d: rrandom.orthogonal_projection(n_features, d, rng=0),
     {"n_features": 6, "d": 3}),
    ("kernels.init_params", lambda d, rank: kernels.init_params("aoglu", d, rng=0, rank=rank), {"d": 3, "rank": 2}),
    ("hadamard.hadamard_matrix", lambda c: hadamard.hadamard_matrix(c), {"c": 4}),
]

