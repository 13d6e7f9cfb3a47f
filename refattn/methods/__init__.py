"""Attention methods. Each module exposes ``forward``, ``backward``, ``cost`` and its public
function (see DESIGN.md, "The method contract")."""

from . import random_features, softmax
from ._prefix import causal_dot, causal_dot_backward
from .random_features import hyperbolic_features, positive_features, random_feature_attention, trig_features
from .softmax import softmax_attention

__all__ = ["softmax", "softmax_attention", "causal_dot", "causal_dot_backward"]
__all__ += ["random_features", "random_feature_attention", "trig_features", "positive_features", "hyperbolic_features"]
