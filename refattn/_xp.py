"""The one module that imports ``array_api_compat``: namespaces, devices and input validation.

Every public function of refattn asks this module for the array namespace ``xp`` of its inputs and
validates them here, so that errors read the same everywhere: they name the argument, what was
expected and what came (``msg = f"..."; raise ValueError(msg)``, as array-api-extra does).

Input contract (every public function; tested row by row in ``tests/test_bad_input_catalogue.py``)
-------------------------------------------------------------------------------------------------
* Inputs are never modified, also when the call raises (checked byte for byte).
* Non-contiguous views, stride-0 broadcast views (``np.broadcast_to``) and read-only arrays are
  accepted and give outputs bit-identical to those of contiguous, writeable copies; their gradients
  agree within rounding (``<= 1e-12`` normwise; NumPy may pick another matmul kernel, hence another
  summation order, for strided operands: seen in the blockwise softmax backward, 3e-16 relative).
* Wrong rank, shapes that do not match or broadcast, non-floating dtypes (integer, bool, complex),
  mixed float widths, mixed libraries and mixed devices raise ``TypeError``/``ValueError`` naming the
  argument.
* NaN/inf: functions with ``check_finite=True`` (some default to it: random features, HEAT,
  ``truncate``, ``exact_pinv``, kernel weights) raise ``ValueError("<arg> must be finite ...")``.
  Otherwise non-finite values propagate to the output (the rows they reach are NaN/inf; NumPy may emit
  ``RuntimeWarning`` on the way) and NaN is never turned into a finite answer; the Nystrom pseudoinverse
  reports them as ``PinvConvergenceError``. One documented exception: ``-inf`` in ``q`` or ``k`` of a
  method whose feature map sends it to its limit 0 (``elu+1``, ``relu``, the softmax feature maps of
  efficient attention and Verma's Linformer: ``exp(-inf) = 0``) gives that finite limit.
* Huge finite values: a call whose inputs were checked (``check_finite=True``) never returns NaN/inf
  from finite inputs. Where the arithmetic overflows the working dtype (``|q| |k|`` near its range;
  an additive mask beyond it) the call raises ``ValueError`` naming the inputs and the fix (rescale
  them), HEAT before its decomposition (:func:`check_overflow`); ``check_finite=False`` returns what
  the arithmetic gives. Building blocks without ``check_finite`` (``causal_dot``,
  ``orthogonality_penalty``, ``wht_projection``, ``feature_map``, ``multi_head_attention``) return
  IEEE inf/NaN only where the exact result itself exceeds the range (products of several huge
  arrays); tested by ``tests/test_bad_input_huge.py`` in a child process with a time limit.
* Lazy and traced arrays (Dask, ``jax.jit``; :func:`is_lazy`): the checks of values (finiteness,
  mask values, ``key_lengths`` range, each method's data-dependent step) are skipped, so that no call
  forces computation; what they would refuse flows into the output as under ``errors="ignore"``
  (``docs/scale_out.md`` lists them). Shapes, dtypes and options are checked as for eager arrays.
* Empty arrays: ``n = 0`` queries give an output with 0 rows; ``m = 0`` keys give zero rows, like
  fully masked rows. Methods that need ``n, m >= 1`` (Nystrom landmarks, HEAT's rank, Linformer's
  ``k >= 1``) raise instead.

Determinism (tested in ``tests/test_determinism.py``)
-----------------------------------------------------
* Methods read no global state and draw nothing at random: the same inputs give bit-identical
  outputs and gradients on NumPy, across calls, processes and threads (4 threads at once give the
  serial bits).
* Across backends the results agree but are not bit-identical: array_api_strict (NumPy underneath)
  gives NumPy's bits; torch uses its own BLAS and reduction orders and agrees within rounding
  (``max|a - b| <= 1e-12 max|b|`` in float64 on the catalogue's small cases; measured <= 6e-15).
* Samplers (:mod:`refattn.random`) draw on the host: a seed gives the same numbers on every backend.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import array_api_compat

from ._checks import check_int, check_real

__all__ = [
    "namespace",
    "device",
    "is_floating",
    "check_float_array",
    "check_same_namespace_device",
    "check_finite",
    "check_overflow",
    "is_lazy",
    "broadcast_shapes",
    "broadcasts_to",
    "unbroadcast",
    "resolve_scale",
    "check_positive_int",
    "validate_qkv",
    "compute_dtype", "to_working", "row_major",
]


def namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays`` (``None`` entries are ignored).

    Raises ``TypeError`` when the arrays come from different libraries. The message names the
    offending arguments: their names are looked up (error path only) among the calling function's
    local variables, one level into dicts of named arrays, falling back to positions.
    """
    present = [a for a in arrays if a is not None]
    odd = [i for i, a in enumerate(arrays)
           if not array_api_compat.is_array_api_obj(a) and (a is not None or not present)]
    if odd:  # Python scalars, lists, strings (array_api_compat may accept some of them); only None
        frame = inspect.currentframe()
        names = _caller_names(frame.f_back if frame is not None else None, list(arrays))
        del frame
        msg = ", ".join(f"{names[i]} must be an array, got {type(arrays[i]).__name__}" for i in odd)
        raise TypeError(msg)
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        frame = inspect.currentframe()
        names = _caller_names(frame.f_back if frame is not None else None, present)
        del frame
        lib = [_library(a) for a in present]
        odd = [i for i in range(len(present)) if lib[i] != lib[0]] or list(range(1, len(present)))
        who = ", ".join(f"{names[i]} ({type(present[i]).__module__}.{type(present[i]).__name__})" for i in odd)
        msg = (f"all arrays must come from one array library: {who} must be an array of the same library as "
               f"{names[0]} ({type(present[0]).__module__}.{type(present[0]).__name__}) ({exc})")
        raise TypeError(msg) from None


def _library(a: Any) -> str:
    try:
        return array_api_compat.array_namespace(a).__name__
    except TypeError:
        return type(a).__module__


def _caller_names(frame: Any, arrays: list[Any]) -> list[str]:
    """Names of ``arrays`` in ``frame``'s locals (for error messages only); positions as fallback."""
    found: dict[int, str] = {}
    if frame is not None:
        for key, val in frame.f_locals.items():
            if isinstance(val, dict):
                for k2, v2 in val.items():
                    found.setdefault(id(v2), str(k2))
            elif isinstance(val, (tuple, list)):
                for i, v2 in enumerate(val):
                    found.setdefault(id(v2), f"{key}[{i}]")
        for key, val in frame.f_locals.items():  # plain names win over container entries
            if val is not None:
                found[id(val)] = key
        # None (one object: ids collide): the caller's positional parameters that hold None, in order
        code = frame.f_code
        nones = [name for name in code.co_varnames[:code.co_argcount]
                 if frame.f_locals.get(name, 0) is None]
    else:
        nones = []
    out = []
    for i, a in enumerate(arrays):
        if a is None:
            out.append(nones.pop(0) if nones else f"argument {i}")
        else:
            out.append(found.get(id(a), f"argument {i}"))
    return out


def device(x: Any) -> Any:
    """The device an array lives on (array-API ``device(x)``)."""
    return array_api_compat.device(x)


def is_floating(xp: Any, dtype: Any) -> bool:
    return bool(xp.isdtype(dtype, "real floating"))


def _describe(x: Any) -> str:
    return f"{type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))} and dtype {getattr(x, 'dtype', '?')}"


def check_float_array(name: str, x: Any, xp: Any, *, ndim_min: int = 0, ndim: int | None = None) -> None:
    """``x`` must be a real floating array of ``xp`` with rank ``ndim`` (or at least ``ndim_min``)."""
    if not hasattr(x, "__array_namespace__") and not array_api_compat.is_array_api_obj(x):
        msg = f"{name} must be an array, got {type(x).__name__}"
        raise TypeError(msg)
    if not is_floating(xp, x.dtype):
        msg = f"{name} must have a real floating dtype (float16/float32/float64), got {x.dtype}"
        raise TypeError(msg)
    if ndim is not None and x.ndim != ndim:
        msg = f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}"
        raise ValueError(msg)
    if x.ndim < ndim_min:
        msg = f"{name} must have at least {ndim_min} dimensions, got shape {tuple(x.shape)}"
        raise ValueError(msg)


def check_same_namespace_device(named: dict[str, Any], xp: Any, ref_name: str) -> None:
    """Every array in ``named`` shares ``xp`` and the device of ``named[ref_name]``.

    A device of ``None`` (a JAX tracer under ``jax.jit``: placement is decided at compile time) is
    compatible with every device."""
    if not array_api_compat.is_array_api_obj(named[ref_name]):
        msg = f"{ref_name} must be an array, got {type(named[ref_name]).__name__}"
        raise TypeError(msg)
    ref_dev = device(named[ref_name])
    for name, a in named.items():
        if a is None:
            continue
        try:
            ns = array_api_compat.array_namespace(a)
        except TypeError:
            msg = f"{name} must be an array of the same library as {ref_name}, got {type(a).__name__}"
            raise TypeError(msg) from None
        if ns is not xp:
            msg = (f"{name} must be an array of the same library as {ref_name} "
                   f"({xp.__name__}), got {_describe(a)} from {ns.__name__}")
            raise TypeError(msg)
        dev = device(a)
        if dev != ref_dev and dev is not None and ref_dev is not None:
            msg = f"{name} must be on the same device as {ref_name} ({ref_dev}), got {dev}"
            raise ValueError(msg)


def is_lazy(*arrays: Any) -> bool:
    """Whether any of ``arrays`` is lazy or traced (a Dask array, a JAX tracer under ``jax.jit``):
    its values cannot be read without forcing (or, traced, at all).

    The data-dependent checks of refattn (each method's one named step, see DESIGN.md) read values
    back to the host; on lazy and traced arrays they are skipped, so that a forward pass builds a
    graph without computing anything. What each check would have refused then flows into the output
    as the eager path documents for its ``errors="ignore"`` policy (NaN/inf propagate; invalid
    normaliser rows become zeros). ``None`` entries are ignored.

    Lazy means: a Dask array, a JAX tracer (eager JAX arrays are concrete and are checked), an array
    whose shape is not known (``None`` in it), or another library array-api-compat classifies as lazy
    by type (ndonnx). Other arrays are eager; they are never probed (``array_api_compat.is_lazy_array``
    would read a value of an unknown array type, a host sync, and the counting namespaces of
    :mod:`refattn.cost` would count it).
    """
    return any(a is not None and _lazy(a) for a in arrays)


def _lazy(a: Any) -> bool:
    if array_api_compat.is_dask_array(a) or array_api_compat.is_ndonnx_array(a):
        return True
    if array_api_compat.is_jax_array(a):
        import jax

        return isinstance(a, jax.core.Tracer)
    return None in tuple(getattr(a, "shape", ()) or ())


def check_finite(name: str, x: Any, xp: Any) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity, saying how many.

    Skipped for lazy and traced arrays (:func:`is_lazy`; Dask, JAX tracers): their NaN/inf propagate.
    """
    if is_lazy(x):
        return
    bad = ~xp.isfinite(x)
    anybad = xp.any(bad)
    if is_lazy(anybad):  # a concrete JAX array inside jax.jit: the reduction is traced
        return
    if bool(anybad):
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        msg = f"{name} must be finite, got {count} NaN/inf entries out of {math.prod(x.shape)}"
        raise ValueError(msg)


def check_overflow(xp: Any, out: Any, method: str, inputs: str = "q and k") -> Any:
    """The output of a call whose inputs were checked finite must be finite too: ``ValueError``
    naming ``inputs`` and the fix otherwise (huge finite values overflow the working dtype in the
    logits, features or normalisers). Returns ``out`` (one ``isfinite`` pass over it); skipped for
    lazy and traced arrays (:func:`is_lazy`)."""
    ok = xp.all(xp.isfinite(out))
    if not is_lazy(ok) and not bool(ok):
        msg = (f"{method}: finite inputs gave a non-finite output: {inputs} are too large for {out.dtype} "
               "(their logits, features or normalisers overflow); rescale them (or the scale), or pass "
               "check_finite=False to get the overflowed values")
        raise ValueError(msg)
    return out


def broadcast_shapes(*shapes: Sequence[int], names: Sequence[str] | None = None) -> tuple[int, ...]:
    """NumPy broadcasting of shapes, with an error naming the arguments that disagree."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-ndim, 0):
        size = 1
        for s in shapes:
            if len(s) < -axis or s[axis] == 1:
                continue
            if size not in (1, s[axis]):
                who = ", ".join(names) if names else "inputs"
                msg = (f"leading (batch/head) dimensions of {who} do not broadcast: "
                       f"shapes {[tuple(x) for x in shapes]}")
                raise ValueError(msg)
            size = s[axis]
        out.append(size)
    return tuple(out)


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether an array of ``shape`` broadcasts to ``target`` without enlarging it."""
    try:
        return broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def unbroadcast(xp: Any, g: Any, shape: Sequence[int]) -> Any:
    """Sum ``g`` over the axes along which an array of ``shape`` was broadcast to ``g.shape``.

    The adjoint of broadcasting, used by every backward pass whose inputs broadcast.
    """
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g


def resolve_scale(scale: float | None, d: int) -> float:
    """The logit scale: ``1/sqrt(d)`` by default; a given scale must be a finite real number."""
    if scale is None:
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    return check_real("scale", scale)


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    check_int(name, value, minimum=1, allow_none=allow_none)


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """Working precision: the inputs' dtype, raised to float32 for half-precision inputs."""
    name = str(dtype)
    if name.endswith("float16"):  # float16 and bfloat16 (not every namespace has them)
        return xp.float32
    return dtype


def row_major(xp: Any, x: Any) -> Any:
    """``x`` itself if its last two axes are laid out row-major (C order; stride 0 broadcast batch axes
    are fine), else a row-major copy. Matrix products of Fortran-ordered or transposed operands take
    other BLAS kernels (another summation order: 1 ulp apart); with this, a view gives the bits of its
    contiguous copy (the input contract). Libraries without strides (array_api_strict) pass through."""
    if x.ndim < 2:
        return x
    if callable(getattr(x, "stride", None)):  # torch: strides in elements
        strides = tuple(x.stride())
    elif isinstance(getattr(x, "strides", None), tuple) and getattr(x, "itemsize", 0):  # NumPy, CuPy: bytes
        strides = tuple(s // x.itemsize for s in x.strides)
    else:
        return x
    rows, cols = x.shape[-2], x.shape[-1]
    if (cols <= 1 or strides[-1] == 1) and (rows <= 1 or strides[-2] == cols):
        return x
    return xp.reshape(xp.reshape(x, (-1,)), tuple(x.shape))  # reshape reads (and copies) in C order


def to_working(xp: Any, *arrays: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(work, arrays)``: the working precision of the (validated, same-dtype) arrays, see
    :func:`compute_dtype`, and the arrays cast to it (returned as given when no cast is needed), each
    :func:`row_major`."""
    work = compute_dtype(xp, arrays[0].dtype)
    arrays = tuple(row_major(xp, a) for a in arrays)
    if work == arrays[0].dtype:
        return work, arrays
    return work, tuple(xp.astype(a, work) for a in arrays)


def validate_qkv(q: Any, k: Any, v: Any, *, check_finite_inputs: bool = False,
                 extra: dict[str, Any] | None = None) -> tuple[Any, tuple[int, ...]]:
    """Validate ``q (..., n, d)``, ``k (..., m, d)``, ``v (..., m, dv)``.

    Returns ``(xp, batch_shape)`` where ``batch_shape`` is the broadcast of the leading dimensions.
    ``extra`` holds further named arrays that must share namespace and device (parameters, masks).
    """
    named = {"q": q, "k": k, "v": v}
    for name, a in named.items():  # None and Python scalars: TypeError naming the argument
        if not array_api_compat.is_array_api_obj(a):
            msg = f"{name} must be an array, got {type(a).__name__}"
            raise TypeError(msg)
    xp = namespace(q, k, v)
    check_same_namespace_device({**named, **(extra or {})}, xp, "q")
    for name, a in named.items():
        check_float_array(name, a, xp, ndim_min=2)
    if not (q.dtype == k.dtype == v.dtype):
        msg = f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        raise TypeError(msg)
    if k.shape[-1] != q.shape[-1]:
        msg = f"k must have shape (..., m, {q.shape[-1]}) to match q's last axis, got {tuple(k.shape)}"
        raise ValueError(msg)
    if v.shape[-2] != k.shape[-2]:
        msg = (f"v must have shape (..., {k.shape[-2]}, dv) to match k's sequence axis, "
               f"got {tuple(v.shape)}")
        raise ValueError(msg)
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], names=("q", "k", "v"))
    if check_finite_inputs:
        for name, a in named.items():
            check_finite(name, a, xp)
    return xp, batch
