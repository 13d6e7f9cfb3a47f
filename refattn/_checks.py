"""Shared option validators and the one failure-policy vocabulary of every method.

Every public function resolves its keyword options here, once, before any arithmetic; the
implementation behind it assumes valid options. Each validator names the argument, says what was
expected and what came, and returns the normalised value.

Python and NumPy scalars are both accepted (``numbers.Integral`` / ``numbers.Real``: ``np.int64``,
``np.float32``); ``bool`` is never a number here. Flags accept exactly ``True`` and ``False``.

Failure policy
--------------
Data-dependent checks (a normaliser that is not positive, a pseudoinverse iteration that diverges,
a degenerate singular-value gap) report through one vocabulary, ``errors``:

- ``"raise"`` (default): raise the method's exception;
- ``"warn"``: emit the method's warning and return what was computed;
- ``"ignore"``: return what was computed, silently.

A method whose maths offers a fallback (e.g. random features' zero rows for an invalid normaliser)
names it in an option of its own. The options these replaced (``on_nonpositive``,
``on_divergence``, ``on_degenerate``, ``invalid_normalizer``) still work through
:func:`legacy_policy`, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from typing import Any

__all__ = ["ERRORS", "check_flag", "check_int", "check_real", "check_shape", "check_choice", "check_errors",
           "legacy_policy", "report"]

ERRORS = ("raise", "warn", "ignore")


def check_flag(name: str, value: Any) -> bool:
    """``value`` must be ``True`` or ``False`` (not 0/1, not a string)."""
    if value is not True and value is not False:
        msg = f"{name} must be True or False, got {value!r}"
        raise TypeError(msg)
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None, allow_none: bool = False,
              what: str = "") -> int | None:
    """An integer ``>= minimum`` (``None`` too when ``allow_none``); returned as a Python ``int``.

    ``what`` may say what the number is, for the message (e.g. ``"the block size"``).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
            minimum is not None and value < minimum):
        if minimum == 1:
            kind = "a positive integer"
        elif minimum == 0:
            kind = "a non-negative integer"
        elif minimum is None:
            kind = "an integer"
        else:
            kind = f"an integer >= {minimum}"
        msg = f"{name} must be {kind}{' or None' if allow_none else ''}{f' ({what})' if what else ''}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def check_real(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
               open_min: bool = False, open_max: bool = False, allow_none: bool = False,
               what: str = "") -> float | None:
    """A finite real number in the stated range (``None`` too when ``allow_none``); a Python float.

    Non-numbers raise ``TypeError``, numbers out of range or not finite ``ValueError``.
    """
    if value is None and allow_none:
        return None
    lo = "(" if open_min else "["
    hi = ")" if open_max else "]"
    rng = ""
    if minimum is not None or maximum is not None:
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        rng = f" in {lo}{low}, {high}{hi}"
    expected = f"a finite real number{rng}{' or None' if allow_none else ''}{f' ({what})' if what else ''}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be {expected}, got {value!r}"
        raise TypeError(msg)
    try:
        x = float(value)
    except OverflowError:  # a Python int beyond the float range
        x = math.inf if value > 0 else -math.inf
    bad = not math.isfinite(x)
    if minimum is not None:
        bad = bad or (x <= minimum if open_min else x < minimum)
    if maximum is not None:
        bad = bad or (x >= maximum if open_max else x > maximum)
    if bad:
        msg = f"{name} must be {expected}, got {value!r}"
        raise ValueError(msg)
    return x


def check_shape(name: str, value: Any, *, ndim: int | None = None, scalar: bool = True) -> tuple[int, ...]:
    """A tuple (or list) of non-negative integers, of length ``ndim`` when given; a single integer
    counts as a 1-tuple when ``scalar``. Returned as a tuple of Python ints."""
    shp = (value,) if scalar and isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    ok = isinstance(shp, (tuple, list)) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in shp)
    if not ok or (ndim is not None and len(shp) != ndim):
        what = f"a tuple of {ndim} non-negative integers" if ndim else "a tuple of non-negative integers"
        msg = f"{name} must be {what}, got {value!r}"
        raise ValueError(msg)
    return tuple(int(s) for s in shp)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """``value`` must be one of ``choices`` (compared by equality, strings case-sensitively)."""
    if isinstance(value, (str, bool, type(None))) or isinstance(value, numbers.Number):
        if value in choices and not (isinstance(value, bool) and True not in choices and False not in choices):
            return value
    msg = f"{name} must be one of {choices}, got {value!r}"
    raise ValueError(msg)


def check_errors(value: Any, *, name: str = "errors") -> str:
    """The failure policy: one of :data:`ERRORS`."""
    return check_choice(name, value, ERRORS)


def legacy_policy(errors: Any, legacy: dict[str, Any], *, mapping: dict[str, dict[Any, str]] | None = None,
                  default: str = "raise") -> str:
    """Resolve ``errors`` when a deprecated policy option may have been given instead.

    ``legacy`` maps each deprecated option's name to its value (``None`` when not given);
    ``mapping[name]`` translates that option's values to :data:`ERRORS` (identity by default).
    ``errors=None`` means "not given". Giving both ``errors`` and a deprecated option raises.
    """
    given = {k: v for k, v in legacy.items() if v is not None}
    if not given:
        return check_errors(default if errors is None else errors)
    if errors is not None or len(given) > 1:
        names = ", ".join(["errors", *given] if errors is not None else given)
        msg = f"give the failure policy once: {names} were given; use errors= alone"
        raise TypeError(msg)
    (old, value), = given.items()
    table = (mapping or {}).get(old) or {e: e for e in ERRORS}
    if not isinstance(value, str) or value not in table:  # (an unhashable value: TypeError in the dict)
        msg = f"{old} must be one of {tuple(table)}, got {value!r}"
        raise ValueError(msg)
    new = table[value]
    warnings.warn(f"{old}={value!r} is deprecated; use errors={new!r}", DeprecationWarning,
                  stacklevel=_caller_stacklevel())
    return new


def _caller_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the function calling this one) of the first frame
    outside the refattn package, so that a deprecation is attributed to the user's call (and shown by
    Python's default filters) however deep inside refattn it was resolved."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame = frame.f_back
        level += 1
    return level


def report(errors: str, message: str, *, error: type[Exception] = ValueError,
           warning: type[Warning] = RuntimeWarning) -> None:
    """Act on a failed data-dependent check under the policy ``errors``."""
    if errors == "raise":
        raise error(message)
    if errors == "warn":
        warnings.warn(message, warning, stacklevel=3)
