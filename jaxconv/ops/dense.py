r"""The perceptron layer y = x·w + b and its hand-derived rule.

For one neuron, y = Σᵢ wᵢxᵢ + b, so ∂y/∂wᵢ = xᵢ, ∂y/∂xᵢ = wᵢ and ∂y/∂b = 1. For a layer,
x (..., n_in), w (n_in, n_out), b (n_out,) and dy = ∂L/∂y (..., n_out), the chain rule gives

    dx = dy · wᵀ                        (..., n_out) @ (n_out, n_in)
    dw = xᵀ · dy                        summed over every leading (batch) axis
    db = Σ dy                           over every leading axis

Each rule is one matrix product (or one sum); residuals are x and w.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxconv import _checks
from jaxconv.ops._twins import twins


def dense_forward(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """y = x·w + b: (..., n_in), (n_in, n_out), (n_out,) -> (..., n_out)."""
    y = jnp.matmul(x, w)
    return y if b is None else y + b


def dense_dx(dy: jax.Array, w: jax.Array) -> jax.Array:
    """dx = dy · wᵀ."""
    return jnp.matmul(dy, w.T)


def dense_dw(x: jax.Array, dy: jax.Array) -> jax.Array:
    """dw = xᵀ · dy, the batch (all leading axes) contracted in one matrix product."""
    return jnp.matmul(x.reshape(-1, x.shape[-1]).T, dy.reshape(-1, dy.shape[-1]))


def dense_db(dy: jax.Array) -> jax.Array:
    """db = Σ dy over every leading axis."""
    return jnp.sum(dy.reshape(-1, dy.shape[-1]), axis=0)


def _dense_fwd(x, w, b):
    return dense_forward(x, w, b), (x, w, b)


def _dense_bwd(residuals, dy):
    x, w, b = residuals  # b only for its structure (None or (n_out,))
    return dense_dx(dy, w), dense_dw(x, dy), None if b is None else dense_db(dy)


_dense_manual = jax.custom_vjp(dense_forward)
_dense_manual.defvjp(_dense_fwd, _dense_bwd)


def _dense_front(core, x, w, b=None):
    """The perceptron layer y = x·w + b.

    Args:
      x: ``(..., n_in)``; every leading axis is a batch axis.
      w: ``(n_in, n_out)``.
      b: optional ``(n_out,)``.

    Returns:
      ``y`` of shape ``(..., n_out)``. ``jaxconv.dense`` differentiates by the rules
      ``dx = dy·wᵀ``, ``dw = xᵀ·dy``, ``db = Σ dy`` (see :mod:`jaxconv.ops.dense`).
    """
    x, w, b = _checks.promote(x=x, w=w, b=b)
    _checks.dense_shapes(x, w, b)
    return core(x, w, b)


dense, dense_autodiff = twins(_dense_front, _dense_manual, dense_forward)
