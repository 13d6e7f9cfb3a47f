"""``refattn check`` and ``refattn example-inputs``: check dumped tensors against the float64 oracle.

File format (NumPy ``.npz``, ``numpy.savez``; every array in one floating dtype, float16, float32
or float64, except an additive mask; bfloat16 results are stored as float32 and declared with
``--dtype bfloat16``):

``--inputs`` (the implementation's inputs, exactly as it received them)
    ``q`` (..., n, d), ``k`` (..., m, d), ``v`` (..., m, dv)   required
    the method's parameter arrays by name (e.g. ``E``, ``F``)  required when the method has them
    ``mask``         optional: bool (True = keep) or additive float, broadcastable to (..., n, m)
    ``causal``       optional 0-d: 0/1, or the string "top_left" / "bottom_right"
    ``scale``        optional 0-d float (default 1/sqrt(d))
    ``key_lengths``  optional integer array broadcastable to the batch shape
    ``dout``         the output cotangent (..., n, dv): required with ``--grads``
``--outputs``
    ``out`` (..., n, dv)
``--grads``
    ``dq``, ``dk``, ``dv`` and ``d<param>`` for each parameter array, shaped like their inputs

Exit status: 0 every quantity within tolerance; 1 some quantity out of tolerance; 2 bad input
(unknown method, unreadable file, missing key, shape or dtype mismatch, NaN/inf in the inputs or
outputs -- reported with how many and where).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from . import testing
from ._oracle import METHODS, SAFETY, Shape, default_accum, get_method, mask_kwargs
from ._vjp import vjp

__all__ = ["add_subcommands", "cmd_check", "cmd_example_inputs", "BadInput", "KEY_DOC"]

KEY_DOC = __doc__.split("File format", 1)[1].split("Exit status", 1)[0]
KEY_DOC = "file format" + KEY_DOC


class BadInput(Exception):
    """Input the check cannot run on (exit status 2)."""


def _load(path: str, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}
    except FileNotFoundError:
        msg = f"{what} file {path!r} does not exist"
        raise BadInput(msg) from None
    except (OSError, ValueError) as exc:
        msg = f"{what} file {path!r} is not a readable .npz archive ({exc})"
        raise BadInput(msg) from None


def _require(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: str, what: str) -> None:
    missing = [key for key in keys if key not in arrays]
    if missing:
        msg = (f"{what} file {path!r} is missing key(s) {', '.join(missing)}; it has "
               f"{', '.join(sorted(arrays)) or 'no arrays'} (key names: refattn check --help)")
        raise BadInput(msg)


def _nonfinite_report(name: str, a: np.ndarray) -> str:
    nan, inf = np.isnan(a), np.isinf(a)
    parts = []
    for label, flags in (("NaN", nan), ("inf", inf)):
        count = int(flags.sum())
        if count:
            where = [tuple(int(i) for i in idx) for idx in np.argwhere(flags)[:5]]
            more = " ..." if count > 5 else ""
            parts.append(f"{count} {label} of {a.size} entries (first at {', '.join(map(str, where))}{more})")
    rows = np.any(~np.isfinite(a), axis=-1) if a.ndim >= 1 else ~np.isfinite(a)
    head = f"{name} has " + " and ".join(parts)
    if a.ndim >= 2:
        head += f"; {int(rows.sum())} of {rows.size} rows (query positions) affected"
    return head


def _float_dtype(name: str, a: np.ndarray) -> str:
    if a.dtype.kind != "f" or a.dtype.name not in ("float16", "float32", "float64"):
        msg = f"{name} must be a float16/float32/float64 array, got dtype {a.dtype}"
        raise BadInput(msg)
    return a.dtype.name


def _scalar(arrays: dict[str, np.ndarray], key: str) -> Any:
    if key not in arrays:
        return None
    a = arrays[key]
    if a.ndim != 0:
        msg = f"inputs key {key!r} must be a 0-d array, got shape {a.shape}"
        raise BadInput(msg)
    return a.item()


def _causal(value: Any) -> Any:
    if value is None:
        return False
    if isinstance(value, str):
        if value not in ("top_left", "bottom_right", "true", "false", "none", ""):
            msg = f"inputs key 'causal' must be 0/1, 'top_left' or 'bottom_right', got {value!r}"
            raise BadInput(msg)
        return {"true": True, "false": False, "none": False, "": False}.get(value, value)
    return bool(value)


def _verdict_table(rows: list[testing.Comparison]) -> str:
    head = (f"  {'quantity':<9}{'shape':<20}{'max abs err':>12}{'max rel err':>12}  {'worst index':<18}"
            f"{'out of tol':>11}{'err/tol':>9}  verdict")
    lines = [head]
    for c in rows:
        frac = f"{100 * c.frac_bad:.3g}%"
        lines.append(f"  {c.name:<9}{str(c.shape):<20}{c.max_abs:>12.3e}{c.max_rel:>12.3e}  "
                     f"{str(c.worst_index):<18}{frac:>11}{c.max_ratio:>9.3g}  {'PASS' if c.ok else 'FAIL'}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        return _check(args)
    except BadInput as exc:
        print(f"refattn check: error: {exc}", file=sys.stderr)
        return 2


def _check(args: argparse.Namespace) -> int:
    try:
        spec = get_method(args.method)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    inputs = _load(args.inputs, "inputs")
    outputs = _load(args.outputs, "outputs")
    names = ("q", "k", "v", *spec.param_names)
    _require(inputs, names, args.inputs, "inputs")
    _require(outputs, ("out",), args.outputs, "outputs")
    grads = _load(args.grads, "grads") if args.grads else None
    if grads is not None:
        _require(inputs, ("dout",), args.inputs, "inputs (needed with --grads)")
        _require(grads, spec.grad_names, args.grads, "grads")
    unsupported = [key for key in ("mask", "causal", "scale", "key_lengths") if key in inputs
                   and key not in spec.kwargs]
    if unsupported:
        msg = f"method {spec.name!r} does not accept {', '.join(unsupported)} (inputs keys)"
        raise BadInput(msg)
    # dtypes: one floating dtype for every array, or a declared --dtype
    arrays = [(n, inputs[n]) for n in names] + [("out", outputs["out"])]
    if grads is not None:
        arrays += [("dout", inputs["dout"])] + [(g, grads[g]) for g in spec.grad_names]
    dtypes = {n: _float_dtype(n, a) for n, a in arrays}
    if "mask" in inputs and inputs["mask"].dtype != bool:  # an additive mask may have any float dtype
        _float_dtype("mask (additive)", inputs["mask"])
    if args.dtype is None and len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n} {dt}" for n, dt in dtypes.items())
        msg = (f"dtype mismatch: {listing}; store every array in the implementation's dtype, or pass "
               "--dtype to declare the precision it computed in")
        raise BadInput(msg)
    dtype = args.dtype or dtypes["q"]
    for name, a in arrays:
        if name != "mask" and not np.all(np.isfinite(a)):
            raise BadInput(_nonfinite_report(name, a))
    mk = inputs.get("mask")
    if mk is not None and mk.dtype != bool and np.any(np.isnan(mk) | (mk == np.inf)):
        msg = "mask (additive) must not contain NaN or +inf; use -inf to remove a key"
        raise BadInput(msg)
    host = tuple(np.asarray(inputs[n], dtype=np.float64) for n in names)
    kw: dict[str, Any] = {}
    if "mask" in inputs:
        m = inputs["mask"]
        kw["mask"] = m if m.dtype == bool else m.astype(np.float64)
    if "causal" in inputs:
        kw["causal"] = _causal(_scalar(inputs, "causal"))
    if "scale" in inputs:
        kw["scale"] = float(_scalar(inputs, "scale"))
    if "key_lengths" in inputs:
        if inputs["key_lengths"].dtype.kind not in "iu":
            msg = f"key_lengths must be an integer array, got dtype {inputs['key_lengths'].dtype}"
            raise BadInput(msg)
        kw["key_lengths"] = inputs["key_lengths"].astype(np.int64)
    dout = np.asarray(inputs["dout"], dtype=np.float64) if grads is not None else None
    try:
        out64, pullback = vjp(spec.fn, *host, **kw, **spec.options)
        want = {"out": out64}
        if grads is not None:
            want.update(zip(spec.grad_names, pullback(dout)))
    except (TypeError, ValueError) as exc:
        msg = f"the oracle rejects these inputs: {exc}"
        raise BadInput(msg) from None
    got = {"out": outputs["out"], **(grads or {})}
    for name, ref in want.items():
        if tuple(got[name].shape) != tuple(ref.shape):
            msg = f"shape mismatch: {name} has shape {tuple(got[name].shape)}, the inputs give {tuple(ref.shape)}"
            raise BadInput(msg)
    explicit = args.rtol is not None or args.atol is not None
    accum = args.accum_dtype or default_accum(dtype)
    if explicit:
        tols = dict.fromkeys(want)
        why = f"rtol={args.rtol or 0:g}, atol={args.atol or 0:g}, given on the command line"
    elif spec.missing_model(grads=grads is not None):
        msg = f"{spec.missing_model(grads=grads is not None)}: pass --rtol and --atol"
        raise BadInput(msg)
    else:
        tols = spec.error_bound(*host, dtype=dtype, dout=dout, accum_dtype=accum, **kw)
        why = (f"elementwise rounding-error bound of {spec.name} attention in {dtype} (accumulating in "
               f"{accum}) against the float64 oracle: {SAFETY:g} x the worst-case first-order bound, "
               "growing with d, n, m and the logit magnitude (refattn.testing.attention_error_bound)")
    rows = [testing._compare(name, np.asarray(got[name], dtype=np.float64), ref, tol=tols[name],
                             rtol=args.rtol or 0.0, atol=args.atol or 0.0, why=why, dtype=dtype)
            for name, ref in want.items()]
    q = inputs["q"]
    sh = Shape(tuple(q.shape[:-2]), q.shape[-2], inputs["k"].shape[-2], q.shape[-1], inputs["v"].shape[-1])
    masks = ", ".join(f"{k}={v if not hasattr(v, 'shape') else 'array' + str(tuple(v.shape))}" for k, v in kw.items())
    print(f"refattn check {spec.name}: {args.inputs} -> {args.outputs}{' + ' + args.grads if args.grads else ''}")
    print(f"  {sh}; {masks or 'no mask'}; computed in {dtype}, accumulating in {accum}")
    print(_verdict_table(rows))
    print(f"tolerance: {why}")
    failed = [c for c in rows if not c.ok]
    for c in failed:
        print(c.summary())
    verdict = "FAIL" if failed else "PASS"
    print(f"verdict: {verdict} ({len(rows) - len(failed)} of {len(rows)} quantities within tolerance)")
    return 1 if failed else 0


def cmd_example_inputs(args: argparse.Namespace) -> int:
    from . import random as _random

    try:
        spec = get_method(args.method)
    except ValueError as exc:
        print(f"refattn example-inputs: error: {exc}", file=sys.stderr)
        return 2
    try:
        sh = Shape.parse(tuple(int(x) for x in args.shape.split(",")))
    except ValueError as exc:
        print(f"refattn example-inputs: error: --shape {args.shape!r}: {exc}", file=sys.stderr)
        return 2
    if args.scale is not None and not np.isfinite(args.scale):
        print(f"refattn example-inputs: error: --scale must be a finite real number, got {args.scale!r}",
              file=sys.stderr)
        return 2
    if args.mask not in spec.masks:
        print(f"refattn example-inputs: error: method {spec.name!r} honours masks {spec.masks}, "
              f"got {args.mask!r}", file=sys.stderr)
        return 2
    rs = _random.default_rng(args.seed)
    arrays: dict[str, Any] = {
        "q": rs.standard_normal((*sh.batch, sh.n, sh.d)), "k": rs.standard_normal((*sh.batch, sh.m, sh.d)),
        "v": rs.standard_normal((*sh.batch, sh.m, sh.dv)),
    }
    if spec.make_params is not None:
        arrays.update(spec.make_params(sh, rs))
    try:
        kw = mask_kwargs(args.mask, sh, rs)
    except ValueError as exc:
        print(f"refattn example-inputs: error: {exc}", file=sys.stderr)
        return 2
    if "causal" in kw:
        kw["causal"] = np.asarray("top_left" if kw["causal"] is True else kw["causal"])
    arrays.update(kw)
    arrays["dout"] = rs.standard_normal((*sh.batch, sh.n, sh.dv))
    if args.scale is not None:
        arrays["scale"] = np.asarray(args.scale)
    floating = {"q", "k", "v", "dout", *spec.param_names}
    if "mask" in arrays and arrays["mask"].dtype != bool:
        floating.add("mask")
    out = {k: (np.asarray(a, dtype=args.dtype) if k in floating else np.asarray(a)) for k, a in arrays.items()}
    try:
        with open(args.out, "wb") as fh:  # a file handle: np.savez("f") would write "f.npz"
            np.savez(fh, **out)
    except OSError as exc:
        print(f"refattn example-inputs: error: --out {args.out!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(a.shape)} {a.dtype}" for k, a in out.items()))
    return 0


def add_subcommands(sub: Any) -> None:
    """Register ``check`` and ``example-inputs`` on the ``refattn`` command's subparsers."""
    methods = ", ".join(sorted(METHODS))
    p = sub.add_parser("check", help="check dumped outputs (and gradients) against the float64 oracle",
                       description=__doc__.split("\n\n", 1)[0] + "\n\n" + KEY_DOC + "exit status: 0 pass, "
                       "1 out of tolerance, 2 bad input", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", help=f"the attention method ({methods})")
    p.add_argument("--inputs", required=True, help="npz with q, k, v (+ mask, causal, scale, key_lengths, dout)")
    p.add_argument("--outputs", required=True, help="npz with out")
    p.add_argument("--grads", help="npz with dq, dk, dv (checks gradients; the inputs need dout)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32", "float64"),
                   help="the precision the implementation computed in (default: the arrays' dtype)")
    p.add_argument("--accum-dtype", choices=("float16", "bfloat16", "tfloat32", "float32", "float64"),
                   help="its accumulation precision (default: float32 for half precision, else --dtype)")
    p.add_argument("--rtol", type=float, help="fixed relative tolerance instead of the error model")
    p.add_argument("--atol", type=float, help="fixed absolute tolerance instead of the error model")
    p.set_defaults(func=cmd_check)
    e = sub.add_parser("example-inputs", help="write example inputs in the format `refattn check` reads",
                       description=KEY_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("method", help=f"the attention method ({methods})")
    e.add_argument("--out", required=True, help="the .npz file to write")
    e.add_argument("--shape", default="2,4,64,64,32,32", help="batch..., n, m, d, dv (default 2,4,64,64,32,32)")
    e.add_argument("--dtype", default="float32", choices=("float16", "float32", "float64"))
    e.add_argument("--mask", default="causal", help="none, causal, bottom_right, bool, additive or key_lengths")
    e.add_argument("--scale", type=float, help="store an explicit logit scale")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_example_inputs)

