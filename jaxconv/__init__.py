"""jaxconv: backpropagation written by hand in JAX.

The perceptron and the N-d convolution as pure functions whose gradients are the rules derived by
hand in the lecture "Backpropagation in Perceptrons and Convolutions" (db = Σ dy,
dw = x ⋆ dy, dx = full-conv(rot180 w, dy)), attached with ``jax.custom_vjp``. The same ops with
JAX-derived gradients live in :mod:`jaxconv.autodiff`, under the same names and signatures: code
written against one namespace runs against the other, e.g. ``ops = jaxconv if manual else
jaxconv.autodiff``.
"""

from jaxconv import autodiff, feedback
from jaxconv._manual import Coverage, GradComparison, compare_grads, coverage, manual
from jaxconv.ops._choice import get_policy, policy, set_policy, use
from jaxconv.ops.activations import leaky_relu, relu, sigmoid, softplus, tanh
from jaxconv.ops.conv import conv, conv1d, conv2d, conv3d
from jaxconv.ops.conv_transpose import conv_transpose
from jaxconv.ops.dense import dense, dot_general
from jaxconv.ops.losses import (
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
    squared_error,
)
from jaxconv.ops.pool import avg_pool, max_pool

__version__ = "0.1.0"

_SUBMODULES = ("data", "distributed", "gradcheck", "explain", "models", "train", "bench")


def __getattr__(name: str):
    """Import the heavier submodules (optax, orbax, data sets) only when first used."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"jaxconv.{name}")
    raise AttributeError(f"module 'jaxconv' has no attribute {name!r}")


__all__ = [
    "__version__", "autodiff", "avg_pool", "compare_grads", "conv", "conv1d", "conv2d", "conv3d",
    "conv_transpose", "Coverage", "coverage", "dense", "dot_general", "feedback", "get_policy",
    "GradComparison", "leaky_relu", "manual", "max_pool", "policy", "relu", "set_policy",
    "sigmoid", "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels", "softplus",
    "squared_error", "tanh", "use",
]
