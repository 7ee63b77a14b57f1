r"""Elementwise activations, each with its derivative rule dx = dy · f′(x).

The residual is whatever makes f′ cheapest: the output s for sigmoid (s′ = s(1 − s)) and tanh
(t′ = 1 − t²), the mask x > 0 for relu, and x itself for leaky relu and softplus
(softplus′ = sigmoid(x)). Derivatives at the kinks: relu′(0) = 0 and leaky_relu′(0) = α, as the
forwards below are written with ``where(x > 0, ...)``, which JAX's autodiff also differentiates
that way (``jax.nn.leaky_relu`` is written with ``x >= 0`` and takes 1 there). leaky relu's slope
α may be an array, differentiated too: dα = Σ dy · x over the non-positive x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _checks
from jaxconv.ops._twins import twins
from jaxconv.ops._varying import summed_like


def relu_forward(x):
    """relu(x) = max(x, 0)."""
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _relu_fwd(x):
    return relu_forward(x), x > 0


def _relu_bwd(mask, dy):
    """dx = dy · [x > 0]."""
    return (jnp.where(mask, dy, jnp.zeros_like(dy)),)


def leaky_relu_forward(x, negative_slope):
    """leaky_relu(x) = x if x > 0 else α·x."""
    return jnp.where(x > 0, x, negative_slope * x)


def leaky_relu_dx(positive, negative_slope, dy):
    """dx = dy · (1 if x > 0 else α)."""
    return jnp.where(positive, dy, negative_slope * dy)


def leaky_relu_dslope(x, positive, dy, shape):
    """dα = Σ dy · (0 if x > 0 else x), summed over the axes along which α (of ``shape``) was
    broadcast to x's shape."""
    return _sum_to_shape(jnp.where(positive, jnp.zeros_like(dy), dy * x), shape)


# α a Python number: a constant, static to the rule; the residual is the mask alone.
def _leaky_relu_fwd(x, negative_slope):
    return leaky_relu_forward(x, negative_slope), x > 0


def _leaky_relu_bwd(negative_slope, positive, dy):
    return (leaky_relu_dx(positive, negative_slope, dy),)


# α an array: differentiated too; the residuals are x and α.
def _leaky_relu_array_fwd(x, negative_slope):
    return leaky_relu_forward(x, negative_slope), (x, negative_slope)


def _leaky_relu_array_bwd(residuals, dy):
    x, negative_slope = residuals
    positive = x > 0
    return (summed_like(leaky_relu_dx(positive, negative_slope, dy), x),
            summed_like(leaky_relu_dslope(x, positive, dy, negative_slope.shape), negative_slope))


def _sum_to_shape(a, shape):
    """Sum ``a`` over the axes that broadcasting added or stretched to turn ``shape`` into
    ``a.shape`` (the transpose of broadcasting)."""
    lead = a.ndim - len(shape)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and a.shape[lead + i] != 1)
    a = jnp.sum(a, axis=tuple(range(lead)) + stretched, keepdims=True)
    return a.reshape(shape)


def sigmoid_forward(x):
    """s = 1 / (1 + e^{−x})."""
    return jax.nn.sigmoid(x)


def _sigmoid_fwd(x):
    s = sigmoid_forward(x)
    return s, s


def _sigmoid_bwd(s, dy):
    """dx = dy · s(1 − s), from the saved output."""
    return (dy * s * (1 - s),)


def tanh_forward(x):
    """t = tanh(x)."""
    return jnp.tanh(x)


def _tanh_fwd(x):
    t = tanh_forward(x)
    return t, t


def _tanh_bwd(t, dy):
    """dx = dy · (1 − t²), from the saved output, evaluated as (1 + t)(1 − t): as |t| → 1, t²
    rounds to 1 and 1 − t·t loses every significant digit, while each factor stays exact."""
    return (dy * (1 + t) * (1 - t),)


def softplus_forward(x):
    """softplus(x) = log(1 + eˣ), computed stably."""
    return jnp.logaddexp(x, jnp.zeros_like(x))


def _softplus_fwd(x):
    return softplus_forward(x), x


def _softplus_bwd(x, dy):
    """dx = dy · sigmoid(x)."""
    return (dy * jax.nn.sigmoid(x),)


def _elementwise(forward, fwd, bwd, nondiff_argnums=()):
    manual = jax.custom_vjp(forward, nondiff_argnums=nondiff_argnums)
    manual.defvjp(fwd, bwd)
    return manual


_relu = _elementwise(relu_forward, _relu_fwd, _relu_bwd)
_leaky_relu_number = _elementwise(leaky_relu_forward, _leaky_relu_fwd, _leaky_relu_bwd, (1,))
_leaky_relu_array = _elementwise(leaky_relu_forward, _leaky_relu_array_fwd, _leaky_relu_array_bwd)


def _leaky_relu(x, negative_slope):
    """The manual op: a number α is a constant of the rule (so it never becomes a cotangent,
    under ``shard_map`` either); an array α is differentiated."""
    if isinstance(negative_slope, float):
        return _leaky_relu_number(x, negative_slope)
    return _leaky_relu_array(x, negative_slope)
_sigmoid = _elementwise(sigmoid_forward, _sigmoid_fwd, _sigmoid_bwd)
_tanh = _elementwise(tanh_forward, _tanh_fwd, _tanh_bwd)
_softplus = _elementwise(softplus_forward, _softplus_fwd, _softplus_bwd)


def _relu_front(core, x):
    """relu(x) = max(x, 0), elementwise. Rule: dx = dy · [x > 0] (so relu′(0) = 0)."""
    return core(_checks.floating("x", x))


def _leaky_relu_front(core, x, negative_slope=0.01):
    """leaky_relu(x) = x if x > 0 else α·x, elementwise.

    Args:
      x: floating array.
      negative_slope: α, a non-negative Python number, or a floating array (traced or not)
        that broadcasts to x's shape, e.g. a learned slope per channel (PReLU).

    Returns:
      An array of x's shape. Rules: ``dx = dy · (1 if x > 0 else α)`` and
      ``dα = Σ dy · (0 if x > 0 else x)`` over the axes α was broadcast along, so an array slope
      is differentiated like ``jax.nn.leaky_relu``'s (a Python number is a constant of the rule).
    """
    x = _checks.floating("x", x)
    if not isinstance(negative_slope, (jax.Array, np.ndarray)):
        return core(x, _checks.non_negative_number("negative_slope", negative_slope))
    x, negative_slope = _checks.promote(x=x, negative_slope=negative_slope)
    _checks.broadcastable_to("negative_slope", negative_slope, x.shape)
    return core(x, negative_slope)


def _sigmoid_front(core, x):
    """sigmoid(x) = 1 / (1 + e^{−x}), elementwise. Rule: dx = dy · s(1 − s) from the output s."""
    return core(_checks.floating("x", x))


def _tanh_front(core, x):
    """tanh(x), elementwise. Rule: dx = dy · (1 − t²) from the output t."""
    return core(_checks.floating("x", x))


def _softplus_front(core, x):
    """softplus(x) = log(1 + eˣ), elementwise. Rule: dx = dy · sigmoid(x)."""
    return core(_checks.floating("x", x))


relu, relu_autodiff = twins(_relu_front, _relu, relu_forward)
leaky_relu, leaky_relu_autodiff = twins(_leaky_relu_front, _leaky_relu, leaky_relu_forward)
sigmoid, sigmoid_autodiff = twins(_sigmoid_front, _sigmoid, sigmoid_forward)
tanh, tanh_autodiff = twins(_tanh_front, _tanh, tanh_forward)
softplus, softplus_autodiff = twins(_softplus_front, _softplus, softplus_forward)
