r"""One training step, a scanned epoch of them, the per-step gradient agreement, evaluation, and
the optimizer: the pure pieces that :func:`jaxconv.train.fit` runs."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxconv import _checks
from jaxconv.models import GRADS, ops_for
from jaxconv.train._cache import cached
from jaxconv.train.config import OPTIMIZERS, SCHEDULES


def make_optimizer(
    name: str,
    lr: float,
    *,
    total_steps: int,
    schedule: str = "cosine",
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """An optax optimizer under a learning-rate schedule.

    Args:
      name: ``"adam"``, ``"adamw"`` (decoupled ``weight_decay``) or ``"sgd"`` (heavy-ball
        ``momentum``).
      lr: the peak learning rate.
      total_steps: the length of the run, over which ``"cosine"`` decays ``lr`` to 0.
      schedule: ``"cosine"`` or ``"constant"``.

    Returns:
      An ``optax.GradientTransformation`` whose state counts the steps (so a restored state
      continues the schedule where it stopped).
    """
    _checks.choice("optimizer", name, OPTIMIZERS)
    _checks.choice("schedule", schedule, SCHEDULES)
    lr = _checks.positive_number("lr", lr)
    total_steps = _checks.positive_int("total_steps", total_steps)
    if schedule == "cosine":
        rate = optax.cosine_decay_schedule(lr, decay_steps=total_steps)
    else:
        rate = optax.constant_schedule(lr)
    if name == "adam":
        return optax.adam(rate)
    if name == "adamw":
        return optax.adamw(rate, weight_decay=weight_decay)
    return optax.sgd(rate, momentum=momentum)


def loss_and_accuracy(params, x, y, *, apply: Callable, grads: str):
    """The mean softmax cross-entropy of ``apply(params, x)`` against labels ``y``, and the batch
    accuracy as auxiliary output (what ``jax.value_and_grad(..., has_aux=True)`` expects).

    Args:
      params: the model's parameter pytree.
      x: ``(B, *input_shape)`` inputs.
      y: ``(B,)`` integer labels.
      apply: the model's ``apply(params, x, *, grads) -> logits``.
      grads: ``"manual"`` or ``"autodiff"``.

    Returns:
      ``(loss, accuracy)``, scalars of the logits' dtype.
    """
    logits = apply(params, x, grads=grads)
    loss = jnp.mean(ops_for(grads).softmax_cross_entropy_with_integer_labels(logits, y))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(logits.dtype))
    return loss, accuracy


def train_step(
    params, opt_state, x, y, *, apply: Callable, optimizer: optax.GradientTransformation,
    grads: str = "manual",
):
    """One optimisation step on the batch ``(x, y)``; a pure function, ready for ``jax.jit``
    (and for a data-parallel sharding of ``x`` and ``y`` along the batch axis).

    With ``grads="manual"`` the gradient is assembled from the lecture's rules (db = Σ dy,
    dw = x ⋆ dy, dx = full-conv(rot180 w, dy)) attached to each op by ``jax.custom_vjp``; with
    ``grads="autodiff"`` JAX derives it from the same forwards.

    Args:
      params, opt_state: the model's parameters and the optimizer's state.
      x: ``(B, *input_shape)`` inputs; y: ``(B,)`` integer labels.
      apply: the model's ``apply(params, x, *, grads) -> logits``.
      optimizer: an optax transformation (:func:`make_optimizer`).
      grads: ``"manual"`` or ``"autodiff"``.

    Returns:
      ``(params, opt_state, loss, accuracy)``: the updated state and the batch's loss and accuracy
      *before* the update.
    """
    value_and_grad = jax.value_and_grad(loss_and_accuracy, has_aux=True)
    (loss, accuracy), dparams = value_and_grad(params, x, y, apply=apply, grads=grads)
    updates, opt_state = optimizer.update(dparams, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, loss, accuracy


def grad_rel_diff(params, x, y, *, apply: Callable, grads: tuple[str, str] = GRADS):
    r"""How far two gradient modes' gradients of the loss lie apart at the same parameters and
    batch, relative to the gradient's scale: ‖g_a − g_b‖∞ / ‖g_a‖∞ over every leaf.

    Rounding alone leaves about the dtype's epsilon times the depth of the sums (float32 ~1e-7,
    float64 ~1e-16); a wrong rule leaves O(1).

    Args:
      params: the model's parameters; x: ``(B, *input_shape)``; y: ``(B,)`` integer labels.
      apply: the model's ``apply(params, x, *, grads) -> logits``.
      grads: the two gradient modes ``(a, b)``; ``a``'s gradient is the scale.

    Returns:
      A scalar of the parameters' dtype (0 where ``g_a`` is 0 everywhere and so is ``g_b``).
    """
    a, b = (jax.grad(lambda p, g=g: loss_and_accuracy(p, x, y, apply=apply, grads=g)[0])(params)
            for g in grads)
    diff = jnp.max(jnp.stack([jnp.max(jnp.abs(da - db)) for da, db in zip(
        jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]))
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(da)) for da in jax.tree.leaves(a)]))
    return diff / jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)


def make_epoch(apply: Callable, optimizer: optax.GradientTransformation, grads: str = "manual",
               *, batch_sharding: jax.sharding.Sharding | None = None, compare: bool = False):
    """A jit-compiled epoch: ``lax.scan`` of :func:`train_step` over the batches.

    The training set stays on the device; the scan gathers each batch from it by index. With
    ``batch_sharding`` (e.g. :func:`jaxconv.distributed.batch_sharded`), every gathered batch is
    laid out along the data-parallel mesh axis; parameters and optimizer state stay replicated,
    and XLA sums the devices' partial gradients. With ``compare=True`` every step also measures
    :func:`grad_rel_diff` between ``grads`` and the other mode at the step's parameters and batch
    (before the update).

    Returns:
      ``epoch(params, opt_state, x_train, y_train, batches) -> (params, opt_state, per_step)``
      where ``batches`` is ``(steps, batch_size)`` integer indices into ``x_train``
      (``(N, *input_shape)``) and ``y_train`` (``(N,)``), and ``per_step`` maps ``"loss"``,
      ``"accuracy"`` (and with ``compare`` ``"grad_rel_diff"``) to ``(steps,)`` arrays.
    """
    _checks.choice("grads", grads, GRADS)
    pair = (grads, *(g for g in GRADS if g != grads))

    def body(carry, xy):
        params, opt_state = carry
        x, y = xy
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)
        new_params, opt_state, loss, accuracy = train_step(
            params, opt_state, x, y, apply=apply, optimizer=optimizer, grads=grads)
        out = {"loss": loss, "accuracy": accuracy}
        if compare:
            out["grad_rel_diff"] = grad_rel_diff(params, x, y, apply=apply, grads=pair)
        return (new_params, opt_state), out

    def epoch(params, opt_state, x_train, y_train, batches):
        def gathered(carry, index):
            return body(carry, (x_train[index], y_train[index]))

        (params, opt_state), per_step = jax.lax.scan(gathered, (params, opt_state), batches)
        return params, opt_state, per_step

    return jax.jit(epoch)


def evaluate(params, x, y, *, apply: Callable, grads: str = "manual", chunk_size: int = 1000):
    """Mean loss and accuracy of the model over ``(x, y)``, in jit-compiled chunks of
    ``chunk_size``.

    Args:
      params: the model's parameters.
      x: ``(N, *input_shape)``; y: ``(N,)`` integer labels; N > 0.
      apply: the model's ``apply(params, x, *, grads) -> logits``.

    Returns:
      ``(loss, accuracy)`` as Python floats.
    """
    n = len(y)
    if n == 0:
        raise ValueError("evaluate needs at least one example, got an empty split")
    chunk_size = _checks.positive_int("chunk_size", chunk_size)

    def summed(params, x, y):
        loss, accuracy = loss_and_accuracy(params, x, y, apply=apply, grads=grads)
        return loss * y.shape[0], accuracy * y.shape[0]

    chunk = cached(("evaluate", apply, grads), lambda: jax.jit(summed))
    total_loss, correct = 0.0, 0.0
    for start in range(0, n, chunk_size):
        loss, right = chunk(params, x[start:start + chunk_size], y[start:start + chunk_size])
        total_loss += float(loss)
        correct += float(right)
    return total_loss / n, correct / n
