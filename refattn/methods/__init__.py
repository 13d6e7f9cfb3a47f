"""Attention methods. Each module exposes ``forward``, ``backward``, ``cost`` and its public
function (see DESIGN.md, "The method contract")."""

from . import softmax
from ._prefix import causal_dot, causal_dot_backward
from .softmax import softmax_attention

__all__ = ["softmax", "softmax_attention", "causal_dot", "causal_dot_backward"]

from . import nystrom  # noqa: E402
from .nystrom import nystrom_attention  # noqa: E402

__all__ += ["nystrom", "nystrom_attention"]
