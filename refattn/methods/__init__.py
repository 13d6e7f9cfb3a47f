"""Attention methods. Each module exposes ``forward``, ``backward``, ``cost`` and its public
function (see DESIGN.md, "The method contract")."""

from . import linear, linformer, softmax
from ._prefix import causal_dot, causal_dot_backward
from .linear import efficient_attention, linear_attention
from .linformer import linformer_attention, verma_attention, verma_projections
from .softmax import softmax_attention

__all__ = ["softmax", "softmax_attention", "causal_dot", "causal_dot_backward"]
__all__ += ["linear", "linear_attention", "efficient_attention", "linformer", "linformer_attention",
            "verma_attention", "verma_projections"]
