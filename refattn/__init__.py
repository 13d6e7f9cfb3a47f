"""refattn: reference implementations of attention and its fast approximations.

Written once against the Python array API standard, so the same code runs on NumPy, CuPy, torch
and array-api-strict. Every method has a forward pass, a hand-written backward pass (``vjp``),
complexity instrumentation and property tests of what its paper claims.
"""

from . import backends, hadamard, methods, mha, mods, random
from ._vjp import registered, vjp
from .cost import Cost
from .hadamard import fwht, wht_projection
from .methods import (
    causal_dot,
    causal_dot_backward,
    efficient_attention,
    heat_attention,
    hyperbolic_features,
    kernel_attention,
    linear_attention,
    linformer_attention,
    merge_attention,
    nystrom_attention,
    positive_features,
    random_feature_attention,
    softmax_attention,
    trig_features,
    verma_attention,
)
from .mha import multi_head_attention

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # refattn.testing (and with it the oracle, the naive references and NumPy) loads on first use
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "Cost",
    "backends",
    "causal_dot",
    "causal_dot_backward",
    "efficient_attention",
    "fwht",
    "hadamard",
    "heat_attention",
    "hyperbolic_features",
    "kernel_attention",
    "linear_attention",
    "linformer_attention",
    "merge_attention",
    "methods",
    "mha",
    "mods",
    "multi_head_attention",
    "nystrom_attention",
    "positive_features",
    "random",
    "random_feature_attention",
    "registered",
    "softmax_attention",
    "testing",
    "trig_features",
    "verma_attention",
    "vjp",
    "wht_projection",
]
