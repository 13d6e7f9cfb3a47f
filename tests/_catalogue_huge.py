"""Huge-finite-value probes of the bad-input catalogue, run in a child process (``python -m
tests._catalogue_huge START``): a hang there fails a test instead of hanging CI.

Each probe scales the arrays of a valid call of a :class:`~tests._catalogue_specs.Spec` by a huge
finite factor (every array at once, and each array alone) in float64 and float32. The child prints
``START <id>`` before a probe and one JSON line after it; a probe that runs past its time limit is
ended by ``faulthandler.dump_traceback_later(exit=True)`` (which works inside C code, e.g. LAPACK,
where a signal handler would not run), and the parent restarts the child after it.
"""

from __future__ import annotations

import faulthandler
import json
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

#: (dtype, factor): near the square root of the range (products overflow) and near the range itself
FACTORS = (("float64", 1e154), ("float64", 1e300), ("float32", 1e19), ("float32", 1e37))
PROBE_SECONDS = 20.0


def probes() -> Iterator[tuple[str, Any, list[Any], dict[str, Any]]]:
    """``(id, spec, args, kwargs)`` of every probe, in a fixed order."""
    from ._catalogue_specs import SPECS

    for spec in SPECS:
        args, kw = spec.build()
        idx = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
        for dtype, factor in FACTORS:
            for which in ["all", *idx]:
                new = []
                for i, a in enumerate(args):
                    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                        a = a.astype(dtype)
                        if which == "all" or which == i:
                            a = a * a.dtype.type(factor)
                    new.append(a)
                label = "all" if which == "all" else spec.names[which]
                yield f"{spec.name}-{dtype}-x{factor:g}-{label}", spec, new, dict(kw)


def _outcome(fn: Any, args: list[Any], kw: dict[str, Any]) -> dict[str, Any]:
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - the parent judges the type
        return {"outcome": "raise", "exc": type(exc).__name__,
                "bases": [c.__name__ for c in type(exc).__mro__], "msg": str(exc)[:300]}
    out = out[0] if isinstance(out, tuple) else out
    finite = bool(np.all(np.isfinite(np.asarray(out, dtype=np.float64))))
    return {"outcome": "finite" if finite else "nonfinite"}


def main(start: int) -> None:
    for i, (pid, spec, args, kw) in enumerate(probes()):
        if i < start:
            continue
        print(f"START {i} {pid}", flush=True)
        faulthandler.dump_traceback_later(PROBE_SECONDS, exit=True, file=sys.stderr)
        res = _outcome(spec.fn, args, kw)
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"i": i, "id": pid, **res}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
