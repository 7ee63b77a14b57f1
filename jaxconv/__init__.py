"""jaxconv: backpropagation written by hand in JAX.

The perceptron and the N-d convolution as pure functions whose gradients are the rules derived by
hand in the lecture "Backpropagation in Perceptrons and Convolutions" (db = Σ dy,
dw = x ⋆ dy, dx = full-conv(rot180 w, dy)), attached with ``jax.custom_vjp``. The same ops with
JAX-derived gradients live in :mod:`jaxconv.autodiff`.
"""

from jaxconv import autodiff
from jaxconv.manual import Coverage, GradComparison, compare_grads, coverage, manual
from jaxconv.ops.activations import leaky_relu, relu, sigmoid, softplus, tanh
from jaxconv.ops.conv import conv, conv1d, conv2d, conv3d
from jaxconv.ops.conv_transpose import conv_transpose
from jaxconv.ops.dense import dense, dot_general
from jaxconv.ops.losses import mse, softmax_cross_entropy
from jaxconv.ops.pool import avg_pool, max_pool

__version__ = "0.1.0"

OPS = (
    "conv", "conv1d", "conv2d", "conv3d", "dense", "relu", "leaky_relu", "sigmoid", "tanh",
    "softplus", "max_pool", "avg_pool", "softmax_cross_entropy", "mse",
    "conv_transpose",
)


def ops(grads: str = "manual"):
    """The op namespace for a gradient mode: ``jaxconv`` ("manual") or ``jaxconv.autodiff``."""
    if grads == "manual":
        import jaxconv

        return jaxconv
    if grads == "autodiff":
        return autodiff
    raise ValueError(f"grads must be 'manual' or 'autodiff', got {grads!r}")


_SUBMODULES = ("data", "distributed", "gradcheck", "explain", "models", "train", "bench")


def __getattr__(name: str):
    """Import the heavier submodules (optax, orbax, data sets) only when first used."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"jaxconv.{name}")
    raise AttributeError(f"module 'jaxconv' has no attribute {name!r}")


__all__ = [
    "__version__", "autodiff", "avg_pool", "conv", "conv1d", "conv2d", "conv3d", "conv_transpose",
    "dense", "leaky_relu", "max_pool", "mse", "ops", "relu", "sigmoid", "softmax_cross_entropy",
    "softplus", "tanh",
    "Coverage", "GradComparison", "compare_grads", "coverage", "dot_general", "manual",
]
