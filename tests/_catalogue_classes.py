"""Input classes of the bad-input catalogue: each turns a valid call of a :class:`Spec` into a bad one.

``CLASSES[name](spec) -> Case | list[Case] | None`` (``None``: the class does not apply to the
function; a list: one case per option, e.g. every size option). A
``Case`` holds the bad call (positional arguments, keyword options) and ``arg``, the argument whose
name a clear error message must mention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._catalogue_specs import N, Spec


@dataclass
class Case:
    args: list[Any]
    kwargs: dict[str, Any]
    arg: str  # the argument the message must name
    ref: tuple[list[Any], dict[str, Any]] | None = None  # an equivalent valid call (view/copy rows)


def _arrays(args: list[Any]) -> list[int]:
    return [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]


def _with(args: list[Any], i: int, new: Any) -> list[Any]:
    out = list(args)
    out[i] = new
    return out


def _second(spec: Spec) -> int:
    """The index of the argument mutated by 'second argument' classes (k for qkv, else the last)."""
    args, _ = spec.build()
    idx = _arrays(args)
    return 1 if spec.qkv else idx[-1] if len(idx) > 1 else idx[0]


def wrong_rank(spec: Spec) -> Case | None:
    args, kw = spec.build()
    x = args[0]
    bad = x.reshape(-1)[:x.shape[-1]] if spec.min_rank >= 2 else np.asarray(x.reshape(-1)[0])
    return Case(_with(args, 0, bad), kw, spec.names[0])


def feature_dim(spec: Spec) -> Case | None:
    """k's last axis differs from q's (qkv); a parameter's matching axis too short (others)."""
    args, kw = spec.build()
    if spec.qkv:
        return Case(_with(args, 1, args[1][..., :-1]), kw, "k")
    if spec.params:
        i = spec.params[0]
        return Case(_with(args, i, args[i][..., :-1]), kw, spec.names[i])
    return None


def seq_dim(spec: Spec) -> Case | None:
    """v has one key fewer than k."""
    if not spec.qkv:
        return None
    args, kw = spec.build()
    return Case(_with(args, 2, args[2][..., :-1, :]), kw, "v")


def batch_dim(spec: Spec) -> Case | None:
    """Leading (batch/head) dimensions that do not broadcast: k and v get 2 heads where q has 3."""
    args, kw = spec.build()
    if spec.qkv:
        return Case(_with(_with(args, 1, args[1][:, :2]), 2, args[2][:, :2]), kw, "k")
    if spec.name == "causal_dot":
        return Case(_with(args, 1, np.concatenate([args[1]] * 2)[:3]), kw, "b")
    if spec.params and args[0].ndim >= 3:
        i = spec.params[0]
        p = args[i]
        return Case(_with(args, i, np.broadcast_to(p, (3, *p.shape)).copy()), kw, spec.names[i])
    return None


def _dtype(dtype: Any) -> Callable[[Spec], Case | None]:
    def cls(spec: Spec) -> Case | None:
        args, kw = spec.build()
        x = args[0]
        bad = (x > 0) if dtype is bool else x.astype(dtype)
        return Case(_with(args, 0, bad), kw, spec.names[0])
    return cls


def param_dtype(spec: Spec) -> Case | None:
    """An integer parameter array (or, without parameters, an integer second array)."""
    args, kw = spec.build()
    idx = _arrays(args)
    if len(idx) < 2:
        return None
    i = spec.params[0] if spec.params else idx[1]
    return Case(_with(args, i, np.round(args[i] * 4).astype(np.int64)), kw, spec.names[i])


def mixed_width(spec: Spec) -> Case | None:
    """One float32 array among float64 ones."""
    args, kw = spec.build()
    idx = _arrays(args)
    if len(idx) < 2:
        return None
    i = _second(spec)
    return Case(_with(args, i, args[i].astype(np.float32)), kw, spec.names[i])


def mixed_namespace(spec: Spec) -> Case | None:
    """One torch tensor among NumPy arrays."""
    import torch

    args, kw = spec.build()
    if len(_arrays(args)) < 2:
        return None
    i = _second(spec)
    return Case(_with(args, i, torch.from_numpy(args[i].copy())), kw, spec.names[i])


def mixed_device(spec: Spec) -> Case | None:
    """array_api_strict arrays, one of them on the fake device ``device1``."""
    import array_api_strict as xs

    args, kw = spec.build()
    if len(_arrays(args)) < 2:
        return None
    i = _second(spec)
    new = [xs.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    new[i] = xs.asarray(args[i], device=xs.Device("device1"))
    return Case(new, kw, spec.names[i])


def mask_shape(spec: Spec) -> Case | None:
    if not spec.mask:
        return None
    args, kw = spec.build()
    return Case(args, {**kw, "mask": np.ones((N + 2, 1), bool)}, "mask")


def mask_dtype(spec: Spec) -> Case | None:
    if not spec.mask:
        return None
    args, kw = spec.build()
    return Case(args, {**kw, "mask": np.ones((1, args[1].shape[-2]), np.int32)}, "mask")


def param_shape(spec: Spec) -> Case | None:
    """A parameter transposed (the classic ``(m, k)`` for ``(k, m)`` slip) or, for square ones, a
    column short."""
    if not spec.params:
        return None
    args, kw = spec.build()
    i = spec.params[0]
    p = args[i]
    bad = np.swapaxes(p, -1, -2).copy() if p.ndim >= 2 and p.shape[-1] != p.shape[-2] else p[..., :-1].copy()
    if p.ndim == 1:
        bad = p[:-1].copy()
    return Case(_with(args, i, bad), kw, spec.names[i])


def k_gt_m(spec: Spec) -> Case | None:
    """A projection/landmark/rank count above what the keys allow."""
    args, kw = spec.build()
    if spec.name in ("linformer_attention", "verma_attention"):
        m = args[1].shape[-2]
        return Case(_with(_with(args, 3, np.ones((m + 2, m))), 4, np.ones((m + 2, m))), kw, "E")
    if spec.name == "nystrom_attention":
        return Case(args, {**kw, "num_landmarks": args[1].shape[-2] + 1}, "num_landmarks")
    if spec.name in ("heat_attention", "truncate"):
        return Case(args, {**kw, "rank": 7}, "rank")
    if spec.name == "segment_means":
        return Case(_with(args, 1, args[0].shape[-2] + 1), kw, "m")
    return None


def m_gt_n(spec: Spec) -> Case | None:
    """More keys than queries (m = n + 3). A valid shape for non-causal methods (documented
    ``(..., n, d)``, ``(..., m, d)`` with independent n, m); causal prefix-sum forms need n == m;
    Nystrom with more landmarks than queries is an error."""
    if not spec.qkv:
        return None
    args, kw = spec.build(N, N + 3)
    if spec.name == "nystrom_attention":
        return Case(args, {**kw, "num_landmarks": N + 1}, "num_landmarks")
    return Case(args, kw, "causal" if kw.get("causal") else "k")


def pow2(spec: Spec) -> Case | None:
    """A Hadamard size that is not a power of two (c = 6)."""
    args, kw = spec.build()
    if spec.name == "fwht":
        return Case([args[0][..., :6]], kw, "x")
    if spec.name == "wht_projection":
        return Case([args[0][..., :6], args[1][:6], args[2][:6]], kw, "x")
    if spec.name == "multi_head_attention":  # c_v = 6 heads-divisible, not a power of two
        x = np.concatenate([args[0], args[0][..., :2]], axis=-1)
        w = [np.pad(a, ((0, 2), (0, 2))) for a in args[1:4]]
        return Case([x, *w, np.ones(6)], {**kw, "projection": "wht"}, "w_o")
    return None


def _size(value: Any) -> Callable[[Spec], list[Case] | None]:
    """Every size option of the function set to ``value`` (one case per option)."""
    def cls(spec: Spec) -> list[Case] | None:
        if not spec.sizes:
            return None
        out = []
        for name in spec.sizes:
            args, kw = spec.build()
            if spec.name == "softmax_attention" and name == "block_k":
                kw = {**kw, "impl": "blockwise"}  # block sizes are read by the blockwise path
            out.append(Case(args, {**kw, name: value}, name))
        return out
    return cls


def param_rank(spec: Spec) -> Case | None:
    """A parameter of the wrong rank (1-D for matrices; 2-D for the WHT's per-channel vectors)."""
    if not spec.params:
        return None
    args, kw = spec.build()
    i = spec.params[0]
    p = args[i]
    bad = p[None, :] if p.ndim == 1 else p.reshape(-1)
    return Case(_with(args, i, bad), kw, spec.names[i])


def scale_nonfinite(spec: Spec) -> Case | None:
    """``scale=inf`` (every attention with a scale option)."""
    if not spec.qkv:
        return None
    args, kw = spec.build()
    return Case(args, {**kw, "scale": float("inf")}, "scale")


def mask_namespace(spec: Spec) -> Case | None:
    """array_api_strict inputs with a NumPy mask."""
    if not spec.mask:
        return None
    import array_api_strict as xs

    args, kw = spec.build()
    new = [xs.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    return Case(new, {**kw, "mask": np.ones((1, args[1].shape[-2]), bool)}, "mask")


def key_lengths_dtype(spec: Spec) -> Case | None:
    """Floating ``key_lengths`` (must be integers)."""
    if not spec.mask:
        return None
    args, kw = spec.build()
    return Case(args, {**kw, "key_lengths": np.full((2, 1), 2.0)}, "key_lengths")


def _nonfinite(value: float, *, param: bool = False, checked: bool | None = None) -> Callable[[Spec], Case | None]:
    """NaN/inf in the first input (or parameter); ``checked`` passes ``check_finite`` explicitly
    (``None``: the function's default), rows with an explicit flag only for functions that have it."""
    def cls(spec: Spec) -> Case | None:
        args, kw = spec.build()
        if param:
            if not spec.params:
                return None
            i = spec.params[0]
        else:
            i = 0
        if checked is not None and not spec.has_check_finite:
            return None
        a = args[i].copy()
        a.reshape(-1)[1] = value
        kw = {**kw, "check_finite": checked} if checked is not None else kw
        return Case(_with(args, i, a), kw, spec.names[i])
    return cls


def _empty(which: str) -> Callable[[Spec], Case | None]:
    def cls(spec: Spec) -> Case | None:
        if spec.qkv or spec.name in ("causal_dot", "multi_head_attention", "trig_features",
                                     "positive_features", "hyperbolic_features", "feature_map",
                                     "segment_means"):
            if which == "m" and not spec.qkv:
                return None
            n, m = (0, M_) if which == "n" else (N, 0)
            if spec.qkv and spec.build()[1].get("causal"):
                n = m = 0
            args, kw = spec.build(n, m)
            if spec.name == "segment_means":
                return None
            return Case(args, kw, "q" if which == "n" else "k")
        if which == "n" and spec.name in ("fwht", "wht_projection", "orthogonality_penalty", "verma_projections"):
            args, kw = spec.build()
            return Case([args[0][:0], *args[1:]] if spec.name != "orthogonality_penalty" else [args[0][:0]],
                        kw, spec.names[0])
        if which == "n" and spec.name in ("iterative_pinv", "exact_pinv", "truncate"):
            args, kw = spec.build()
            return Case([args[0][:0]], kw, spec.names[0])
        return None
    return cls


M_ = N


def noncontiguous(spec: Spec) -> Case | None:
    """Every array replaced by a strided (every other element) view of a larger array."""
    args, kw = spec.build()
    new = []
    for a in args:
        if isinstance(a, np.ndarray) and a.ndim:
            big = np.repeat(a, 2, axis=-1)
            view = big[..., ::2]
            assert not view.flags.c_contiguous and np.array_equal(view, a)
            new.append(view)
        else:
            new.append(a)
    return Case(new, kw, spec.names[0], ref=(args, kw))


def broadcast(spec: Spec) -> Case | None:
    """The first array is a stride-0 broadcast view (``np.broadcast_to`` of a size-1 leading axis)."""
    args, kw = spec.build()
    x = args[0]
    if x.ndim < 2:
        return None
    view = np.broadcast_to(x[:1], x.shape)
    assert 0 in view.strides
    return Case(_with(args, 0, view), kw, spec.names[0], ref=(_with(args, 0, np.ascontiguousarray(view)), kw))


def readonly(spec: Spec) -> Case | None:
    """Every array read-only (``writeable=False``)."""
    args, kw = spec.build()
    new = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = a.copy()
            a.flags.writeable = False
        new.append(a)
    return Case(new, kw, spec.names[0], ref=(args, kw))


CLASSES: dict[str, Callable[[Spec], Case | None]] = {
    "wrong_rank": wrong_rank,
    "feature_dim": feature_dim,
    "seq_dim": seq_dim,
    "batch_dim": batch_dim,
    "dtype_int": _dtype(np.int64),
    "dtype_bool": _dtype(bool),
    "dtype_complex": _dtype(np.complex128),
    "param_dtype": param_dtype,
    "mixed_width": mixed_width,
    "mixed_namespace": mixed_namespace,
    "mixed_device": mixed_device,
    "mask_shape": mask_shape,
    "mask_dtype": mask_dtype,
    "param_shape": param_shape,
    "k_gt_m": k_gt_m,
    "m_gt_n": m_gt_n,
    "non_pow2": pow2,
    "size_zero": _size(0),
    "size_negative": _size(-1),
    "size_float": _size(2.5),
    "param_rank": param_rank,
    "scale_nonfinite": scale_nonfinite,
    "mask_namespace": mask_namespace,
    "key_lengths_dtype": key_lengths_dtype,
    "nan_input": _nonfinite(np.nan),
    "inf_input": _nonfinite(np.inf),
    "nan_input_checked": _nonfinite(np.nan, checked=True),
    "nan_param": _nonfinite(np.nan, param=True),
    "inf_param": _nonfinite(np.inf, param=True),
    "nan_input_unchecked": _nonfinite(np.nan, checked=False),
    "inf_input_unchecked": _nonfinite(np.inf, checked=False),
    "nan_param_unchecked": _nonfinite(np.nan, param=True, checked=False),
    "inf_param_unchecked": _nonfinite(np.inf, param=True, checked=False),
    "empty_n": _empty("n"),
    "empty_m": _empty("m"),
    "noncontiguous": noncontiguous,
    "broadcast_stride0": broadcast,
    "readonly": readonly,
}


# ------------------------------------------------------------------------------ issue 21: more classes

def _replace_first(value: Any) -> Callable[[Spec], Case | None]:
    """The first array argument replaced by a Python scalar, ``None`` or a nested list."""
    def cls(spec: Spec) -> Case | None:
        args, kw = spec.build()
        if not args or not isinstance(args[0], np.ndarray):
            return None
        return Case(_with(args, 0, value(args[0]) if callable(value) else value), kw, spec.names[0])
    return cls


def _second_replaced(value: Any) -> Callable[[Spec], Case | None]:
    """The second array argument (k, or a parameter) replaced by a non-array."""
    def cls(spec: Spec) -> Case | None:
        args, kw = spec.build()
        if len(_arrays(args)) < 2:
            return None
        i = _second(spec)
        return Case(_with(args, i, value), kw, spec.names[i])
    return cls


def half(spec: Spec) -> Case | None:
    """Every floating array in float16: computed in float32 and cast back (the registry's dtype rule)."""
    args, kw = spec.build()
    new = [a.astype(np.float16) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
    return Case(new, kw, spec.names[0])


def bfloat16(spec: Spec) -> Case | None:
    """Every floating array a torch bfloat16 tensor (NumPy has no bfloat16)."""
    import torch

    args, kw = spec.build()
    new = [torch.from_numpy(a.copy()).to(torch.bfloat16) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
           for a in args]
    return Case(new, kw, spec.names[0])


def _layout(make: Callable[[np.ndarray], np.ndarray], check: Callable[[np.ndarray], bool]) -> Callable[[Spec], Case | None]:
    """Every array (rank >= 2) replaced by an equal view of another memory layout."""
    def cls(spec: Spec) -> Case | None:
        args, kw = spec.build()
        new = []
        for a in args:
            if isinstance(a, np.ndarray) and a.ndim >= 2:
                view = make(a)
                assert check(view) and np.array_equal(view, a)
                new.append(view)
            else:
                new.append(a)
        return Case(new, kw, spec.names[0], ref=(args, kw))
    return cls


def _strict_empty(which: str) -> Callable[[Spec], Case | None]:
    """The empty-array rows on array_api_strict (whose slicing refuses out-of-range stops)."""
    base = _empty(which)

    def cls(spec: Spec) -> Case | None:
        import array_api_strict as xs

        case = base(spec)
        if case is None:
            return None
        case.args = [xs.asarray(a) if isinstance(a, np.ndarray) else a for a in case.args]
        return case
    return cls


def _torch_empty(which: str) -> Callable[[Spec], Case | None]:
    base = _empty(which)

    def cls(spec: Spec) -> Case | None:
        import torch

        case = base(spec)
        if case is None:
            return None
        case.args = [torch.from_numpy(a.copy()) if isinstance(a, np.ndarray) else a for a in case.args]
        return case
    return cls


CLASSES.update({
    "scalar_input": _replace_first(1.0),
    "none_input": _replace_first(None),
    "list_input": _replace_first(lambda a: a.tolist()),
    "none_second": _second_replaced(None),
    "scalar_second": _second_replaced(2.0),
    "dtype_float16": half,
    "dtype_bfloat16": bfloat16,
    "fortran_order": _layout(np.asfortranarray, lambda v: v.flags.f_contiguous and not v.flags.c_contiguous),
    "transposed_view": _layout(lambda a: np.swapaxes(np.swapaxes(a, -1, -2).copy(), -1, -2),
                               lambda v: not v.flags.c_contiguous),
    "negative_stride": _layout(lambda a: np.flip(np.flip(a, -1).copy(), -1), lambda v: v.strides[-1] < 0),
    "empty_n_strict": _strict_empty("n"),
    "empty_m_strict": _strict_empty("m"),
    "empty_n_torch": _torch_empty("n"),
    "empty_m_torch": _torch_empty("m"),
})
