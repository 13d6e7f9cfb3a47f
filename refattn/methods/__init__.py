"""Attention methods. Each module exposes ``forward``, ``backward``, ``cost`` and its public
function (see DESIGN.md, "The method contract")."""

from . import heat, kernels, linear, linformer, merge, nystrom, random_features, softmax
from ._prefix import causal_dot, causal_dot_backward
from .heat import heat_attention
from .kernels import kernel_attention
from .linear import efficient_attention, linear_attention
from .linformer import linformer_attention, verma_attention, verma_projections
from .merge import merge_attention
from .nystrom import nystrom_attention
from .random_features import hyperbolic_features, positive_features, random_feature_attention, trig_features
from .softmax import softmax_attention

__all__ = [
    "causal_dot",
    "causal_dot_backward",
    "efficient_attention",
    "heat",
    "heat_attention",
    "hyperbolic_features",
    "kernel_attention",
    "kernels",
    "linear",
    "linear_attention",
    "linformer",
    "linformer_attention",
    "merge",
    "merge_attention",
    "nystrom",
    "nystrom_attention",
    "positive_features",
    "random_feature_attention",
    "random_features",
    "softmax",
    "softmax_attention",
    "trig_features",
    "verma_attention",
    "verma_projections",
]
