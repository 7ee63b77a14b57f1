"""Rosenblatt's perceptron learning rule: the lecture's artificial neuron trained without a
gradient.

    >>> w, b, epochs, converged = jaxconv.rosenblatt.rosenblatt(x, y)   # x (N, D), y in {-1, +1}
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _checks


@jax.jit
def _rosenblatt_epochs(x, y, lr, max_epochs):
    """Epochs of the perceptron rule until one makes no mistake or ``max_epochs`` have run.

    One epoch is a ``lax.scan`` over the examples in order: where the neuron's output
    z = x·w + b has the wrong sign (y·z <= 0), w += lr·y·x and b += lr·y. The epochs run in a
    ``lax.while_loop``. Returns ``(w (D, 1), b (1,), epochs, mistakes in the last epoch)``.
    """
    from jaxconv.ops.dense import dense_forward  # the neuron's forward, y = x·w + b

    def step(carry, example):
        w, b, mistakes = carry
        xi, yi = example
        wrong = yi * dense_forward(xi, w, b)[0] <= 0
        update = jnp.where(wrong, lr * yi, jnp.zeros_like(yi))
        return (w + update * xi[:, None], b + update, mistakes + wrong), None

    def epoch(state):
        w, b, epochs, _ = state
        (w, b, mistakes), _ = lax.scan(step, (w, b, jnp.zeros((), jnp.int32)), (x, y))
        return w, b, epochs + 1, mistakes

    def keep_going(state):
        _, _, epochs, mistakes = state
        return (mistakes > 0) & (epochs < max_epochs)

    w0 = jnp.zeros((x.shape[1], 1), x.dtype)
    b0 = jnp.zeros((1,), x.dtype)
    return lax.while_loop(keep_going, epoch, (w0, b0, jnp.zeros((), jnp.int32),
                                              jnp.ones((), jnp.int32)))


def rosenblatt(x: Any, y: Any, *, max_epochs: int = 1000,
               lr: float = 1.0) -> tuple[jax.Array, jax.Array, int, bool]:
    """Rosenblatt's perceptron learning rule for the lecture's artificial neuron.

    The neuron predicts sign(x·w + b). Starting from w = 0, b = 0 it visits the examples in
    order and, on each mistake (y·(x·w + b) <= 0), moves the boundary towards the example:
    w += lr·y·x, b += lr·y. It stops after the first epoch without a mistake: by Novikoff's
    theorem that happens after at most (R/γ)² mistakes when the data are linearly separable
    with margin γ and radius R, and never when they are not.

    Args:
      x: ``(N, D)`` examples (floating; integers are cast to float32).
      y: ``(N,)`` labels in {-1, +1} or in {0, 1} (0 is read as -1).
      max_epochs: the most epochs to run.
      lr: the step size (> 0; with w = 0 at the start it only scales w and b).

    Returns:
      ``(w, b, epochs, converged)``: w ``(D,)``, b a scalar, the number of epochs run and
      whether the last one made no mistake.
    """
    x = jnp.asarray(_checks.array("x", x))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D), got shape {tuple(x.shape)}")
    y = np.asarray(_checks.array("y", y))
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape (N,) = ({x.shape[0]},), got shape {y.shape}")
    values = set(np.unique(y).tolist())
    if not (values <= {-1, 1} or values <= {0, 1}):
        raise ValueError(f"y must hold labels in {{-1, +1}} or {{0, 1}}, got values {values}")
    max_epochs = _checks.positive_int("max_epochs", max_epochs)
    lr = _checks.positive_number("lr", lr)
    signs = jnp.asarray(np.where(y == 0, -1, y), x.dtype)
    w, b, epochs, mistakes = _rosenblatt_epochs(x, signs, jnp.asarray(lr, x.dtype),
                                                jnp.asarray(max_epochs, jnp.int32))
    return w[:, 0], b[0], int(epochs), bool(mistakes == 0)
