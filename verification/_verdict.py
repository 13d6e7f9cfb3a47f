"""The ledger's record and registry: every claim is a function ``check(ctx) -> Verdict``.

A claim module decorates its checks with :func:`claim`; ``refattn verify`` imports every module
listed in ``verification.MODULES``, runs the registered checks and reports them.

Statuses: ``holds``; ``holds-conditionally`` (the evidence states the condition); ``fails`` (the
evidence gives the counterexample or measured figure); ``not-checkable`` (the evidence says why,
e.g. the method has not landed yet). Checks are deterministic (fixed seeds) and print the
statistical tolerance they use inside ``evidence``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["Verdict", "Context", "claim", "REGISTRY", "STATUSES", "Figure"]

STATUSES = ("holds", "holds-conditionally", "fails", "not-checkable")


@dataclass(frozen=True)
class Figure:
    """Plot data a claim returns; the runner draws it (matplotlib) and stores it in report.json.

    ``series`` maps a label to y values over ``x``; ``lines`` are reference curves (a bound) drawn
    dashed; ``loglog`` picks log axes on both sides, ``logy`` a log y axis only (iterations, errors).
    """

    title: str
    xlabel: str
    ylabel: str
    x: list[float]
    series: dict[str, list[float]]
    lines: dict[str, list[float]] = field(default_factory=dict)
    loglog: bool = False
    logy: bool = False


@dataclass(frozen=True)
class Verdict:
    claim_id: str
    source: str  # paper, section, equation: "001 (Brazhnyi et al.), sec. 2.3, Theorem 1"
    statement: str  # the claim as the paper gives it
    status: str
    evidence: str  # what was measured or proved, the tolerance and its origin
    figure: str = ""  # the key figure, short ("k=45 vs n=64", "slope 2.00")
    plot: Figure | None = None
    seconds: float = 0.0
    paper: str = ""  # "000" .. "004" or "classical" (filled by the registry and the runner)
    module: str = ""  # the verification module that owns the check (filled by the runner)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            msg = f"status must be one of {STATUSES}, got {self.status!r}"
            raise ValueError(msg)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    """What a check is given: ``quick`` (small sizes, for CI), the backend (a refattn Backend)."""

    quick: bool
    backend: Any

    def to_host(self, a: Any) -> np.ndarray:
        """A backend array as a host NumPy array."""
        return self.backend.to_host(a)

    def asarray(self, a: Any) -> Any:
        """A host array (or nested sequence) on the backend, in float64."""
        return self.backend.asarray(np.asarray(a, dtype=np.float64))


@dataclass(frozen=True)
class ClaimInfo:
    claim_id: str
    paper: str  # "000" .. "004" or "classical"
    source: str
    statement: str
    check: Callable[[Context], Verdict]
    module: str = ""  # the verification module the check lives in ("linformer", "survey", ...)


REGISTRY: dict[str, ClaimInfo] = {}


def claim(claim_id: str, *, paper: str, source: str,
          statement: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(ctx) -> (status, evidence, figure[, plot])`` as the check of ``claim_id``.

    The decorated function returns the pieces; the registry wraps them into a :class:`Verdict`
    carrying the id, source and statement, so a check never restates them.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if claim_id in REGISTRY:
            msg = f"claim {claim_id!r} registered twice"
            raise ValueError(msg)

        def check(ctx: Context) -> Verdict:
            status, evidence, figure, *rest = fn(ctx)
            return Verdict(claim_id, source, statement, status, evidence, figure,
                           rest[0] if rest else None, paper=paper)

        check.__name__ = fn.__name__
        check.__doc__ = fn.__doc__
        module = getattr(fn, "__module__", "") or ""
        REGISTRY[claim_id] = ClaimInfo(claim_id, paper, source, statement, check,
                                       module=module.rsplit(".", 1)[-1])
        return fn

    return register
