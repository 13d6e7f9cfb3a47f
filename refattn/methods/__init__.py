"""Attention methods. Each module exposes ``forward``, ``backward``, ``cost`` and its public
function (see DESIGN.md, "The method contract")."""

from . import heat, kernels, softmax
from ._prefix import causal_dot, causal_dot_backward
from .heat import heat_attention
from .kernels import kernel_attention
from .softmax import softmax_attention

__all__ = ["softmax", "softmax_attention", "causal_dot", "causal_dot_backward", "heat", "heat_attention",
           "kernels", "kernel_attention"]
