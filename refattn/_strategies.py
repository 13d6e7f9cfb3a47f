"""Hypothesis strategies for attention test cases: ``refattn.testing.strategies``.

>>> from refattn.testing import strategies as rst
>>> from hypothesis import given, settings
>>> @given(rst.cases("softmax", masks=["none", "causal"]))
... @settings(max_examples=3, deadline=None)
... def test_mine(case):     # e.g. refattn.backends.get("torch"), "float16"
...     m = rst.materialize(case, refattn.backends.get(xp.__name__), "float32")
>>> test_mine()

A :class:`Case` holds only sizes, a mask kind, magnitudes and a seed (so Hypothesis shrinks it to
small sizes and simple masks); :func:`materialize` draws its arrays deterministically from the seed.
Requires the ``hypothesis`` package (``pip install 'refattn[test]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from ._oracle import MASK_KINDS, Case, Materialized, Shape, get_method, materialize

__all__ = ["MASK_KINDS", "Case", "Shape", "Materialized", "materialize", "shapes", "cases", "mask_kinds",
           "DEFAULT_LOGIT_SCALES", "DEFAULT_VALUE_SCALES"]

#: logit standard deviations drawn by default: moderate first (shrinking goes there), up to logits
#: of size ~50 (rounding-sensitive for half precision, overflow without the max shift in float16)
DEFAULT_LOGIT_SCALES = (1.0, 0.25, 4.0, 16.0)
DEFAULT_VALUE_SCALES = (1.0, 0.1, 10.0)


@st.composite
def shapes(draw: Any, *, batch_ndim: tuple[int, int] = (0, 2), max_batch: int = 2, min_n: int = 1,
           max_n: int = 12, min_m: int = 1, max_m: int = 12, min_d: int = 1, max_d: int = 16,
           min_dv: int = 1, max_dv: int = 8, square: bool = False) -> Shape:
    """Attention sizes; ``square=True`` draws ``m = n`` (self-attention)."""
    nb = draw(st.integers(*batch_ndim))
    batch = tuple(draw(st.lists(st.integers(1, max_batch), min_size=nb, max_size=nb)))
    n = draw(st.integers(min_n, max_n))
    m = n if square else draw(st.integers(min_m, max_m))
    return Shape(batch, n, m, draw(st.integers(min_d, max_d)), draw(st.integers(min_dv, max_dv)))


def mask_kinds(method: str = "softmax") -> st.SearchStrategy[str]:
    """The mask kinds ``method`` honours (``"none"`` first: shrinking goes there)."""
    return st.sampled_from(get_method(method).masks)


def _shape_strategy(value: Any) -> st.SearchStrategy[Shape]:
    if value is None:
        return shapes()
    if isinstance(value, st.SearchStrategy):
        return value
    if isinstance(value, Sequence) and value and not isinstance(value[0], int):
        return st.sampled_from([Shape.parse(s) for s in value])
    return st.just(Shape.parse(value))


@st.composite
def cases(draw: Any, method: str = "softmax", *, shapes: Any = None, masks: Sequence[str] | None = None,
          scales: Sequence[float | None] = (None,), logit_scales: Sequence[float] = DEFAULT_LOGIT_SCALES,
          value_scales: Sequence[float] = DEFAULT_VALUE_SCALES) -> Case:
    """Test cases for ``method``.

    Parameters
    ----------
    shapes : None (small default sizes), a strategy of :class:`Shape`, one shape or a list of shapes
        (each a Shape or a tuple ``(*batch, n, m, d, dv)``).
    masks : mask kinds among the method's (:data:`MASK_KINDS`); default: all it honours.
    scales : logit scales passed as ``scale=`` (``None``: the method's default ``1/sqrt(d)``, and
        no ``scale`` keyword is passed).
    logit_scales, value_scales : magnitudes of the logits and of the values (see :class:`Case`).
    """
    spec = get_method(method)
    kinds = tuple(masks) if masks is not None else spec.masks
    bad = [k for k in kinds if k not in spec.masks]
    if bad or not kinds:
        msg = f"masks must be a non-empty subset of {spec.masks} for method {spec.name!r}, got {list(kinds)}"
        raise ValueError(msg)
    shape = draw(_shape_strategy(shapes))
    kind = draw(st.sampled_from(kinds))
    if spec.adapt_shape is not None:
        shape = spec.adapt_shape(shape, kind)
    if kind == "bottom_right" and shape.n > shape.m:  # else the first n - m queries see no key
        shape = shape._replace(n=shape.m)
    return Case(method=spec.name, shape=shape, mask=kind, scale=draw(st.sampled_from(tuple(scales))),
                logit_scale=draw(st.sampled_from(tuple(logit_scales))),
                value_scale=draw(st.sampled_from(tuple(value_scales))),
                seed=draw(st.integers(0, 2**32 - 1)))

