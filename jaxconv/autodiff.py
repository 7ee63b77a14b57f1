"""The autodiff twins: jaxconv's ops with the same names, signatures and forward code, whose
gradients JAX derives. This is the baseline of every comparison with the hand-derived rules.

    >>> import jaxconv, jaxconv.autodiff
    >>> jaxconv.conv          # forward + the lecture's rules (custom_vjp)
    >>> jaxconv.autodiff.conv # the same forward, differentiated by JAX
"""

from jaxconv.ops.activations import leaky_relu_autodiff as leaky_relu
from jaxconv.ops.activations import relu_autodiff as relu
from jaxconv.ops.activations import sigmoid_autodiff as sigmoid
from jaxconv.ops.activations import softplus_autodiff as softplus
from jaxconv.ops.activations import tanh_autodiff as tanh
from jaxconv.ops.conv import conv1d_autodiff as conv1d
from jaxconv.ops.conv import conv2d_autodiff as conv2d
from jaxconv.ops.conv import conv3d_autodiff as conv3d
from jaxconv.ops.conv import conv_autodiff as conv
from jaxconv.ops.dense import dense_autodiff as dense
from jaxconv.ops.losses import softmax_cross_entropy_autodiff as softmax_cross_entropy
from jaxconv.ops.losses import (
    softmax_cross_entropy_with_integer_labels_autodiff as softmax_cross_entropy_with_integer_labels,
)
from jaxconv.ops.losses import squared_error_autodiff as squared_error
from jaxconv.ops.pool import avg_pool_autodiff as avg_pool
from jaxconv.ops.pool import max_pool_autodiff as max_pool

__all__ = [
    "avg_pool", "conv", "conv1d", "conv2d", "conv3d", "dense", "leaky_relu", "max_pool", "relu",
    "sigmoid", "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels", "softplus",
    "squared_error", "tanh",
]
