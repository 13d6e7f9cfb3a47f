"""Complexity instrumentation: the :class:`Cost` record and the counting conventions.

Closed-form ``cost(...)`` functions of every method return a :class:`Cost`; the counting namespace
(``count`` / ``measure``) produces the same record from a real run, and the tests check that the two
agree exactly for ``flops`` and ``transcendentals``.

Counting conventions (one element = one entry of the *output* of the operation, after broadcasting)
-------------------------------------------------------------------------------------------------
- ``a @ b`` / ``matmul`` / ``matrix multiply`` of ``(..., p, r) @ (..., r, c)``: ``2 p r c`` flops
  per element of the broadcast batch (``vecdot``/``tensordot`` likewise: 2 per multiply-add).
- Elementwise arithmetic ``+ - * /``, ``negative``, ``abs``, ``square``, ``maximum``, ``minimum``,
  ``clip``, ``sign``, ``reciprocal``-like divisions by scalars: 1 flop per output element
  (python scalars count like broadcast arrays).
- Transcendentals ``exp``, ``expm1``, ``log``, ``log1p``, ``sin``, ``cos``, ``tan``, ``tanh``,
  ``sqrt``, ``pow``, ``logaddexp`` ...: 1 *transcendental* per output element and no flop.
- Reductions ``sum``, ``prod``, ``max``, ``min`` of ``N`` inputs into ``M`` outputs: ``N - M``
  flops; ``mean`` adds ``M`` (the division). ``cumulative_sum`` of ``N`` along an axis of length
  ``L``: ``N - N / L`` flops.
- Comparisons, logical operators, ``where``, ``isfinite``/``isnan``, ``astype``, indexing, reshapes,
  ``concat``, creation functions: 0 flops (they move bytes only).
- ``bytes_read``: the ``nbytes`` of every array operand (not broadcast); ``bytes_written``: the
  ``nbytes`` of every result; ``peak_bytes``: the maximum, over the run, of the bytes held by
  arrays created inside it that are still alive (views count once, inputs not at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Cost"]


@dataclass(frozen=True)
class Cost:
    """Cost of one computation. ``per_op`` maps an op name to its own ``Cost`` (may be empty)."""

    flops: int = 0
    transcendentals: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    peak_bytes: int = 0
    allocations: int = 0
    per_op: dict[str, Any] = field(default_factory=dict, compare=False)

    def __add__(self, other: Cost) -> Cost:
        """Costs of two computations run one after the other (peak: the larger of the two)."""
        if not isinstance(other, Cost):
            return NotImplemented
        kw = {f.name: getattr(self, f.name) + getattr(other, f.name)
              for f in fields(self) if f.name not in ("peak_bytes", "per_op")}
        per_op = dict(self.per_op)
        for name, c in other.per_op.items():
            per_op[name] = per_op[name] + c if name in per_op else c
        return Cost(**kw, peak_bytes=max(self.peak_bytes, other.peak_bytes), per_op=per_op)
