r"""One training step, a scanned epoch of them, the per-step gradient agreement, the alignment of a
feedback rule's update with the gradient, evaluation, and the optimizer: the pure pieces that
:func:`jaxconv.train.fit` runs."""

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


def loss_and_accuracy(params, x, y, *, apply: Callable, grads: str, feedback=None):
    """The mean softmax cross-entropy of ``apply(params, x)`` against labels ``y``, and the batch
    accuracy as auxiliary output (what ``jax.value_and_grad(..., has_aux=True)`` expects).

    Args:
      params: the model's parameter pytree.
      x: ``(B, *input_shape)`` inputs.
      y: ``(B,)`` integer labels.
      apply: the model's ``apply(params, x, *, grads, feedback) -> logits`` (``feedback`` is
        passed only when it is not ``None``).
      grads: ``"manual"`` or ``"autodiff"``.
      feedback: the models' feedback rule (:mod:`jaxconv.feedback`; ``None``: backprop). It
        changes only the gradient, never the loss.

    Returns:
      ``(loss, accuracy)``, scalars of the logits' dtype.
    """
    if feedback is None:  # an apply that knows no feedback still serves backprop
        logits = apply(params, x, grads=grads)
    else:
        logits = apply(params, x, grads=grads, feedback=feedback)
    loss = jnp.mean(ops_for(grads).softmax_cross_entropy_with_integer_labels(logits, y))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(logits.dtype))
    return loss, accuracy


def train_step(
    params, opt_state, x, y, *, apply: Callable, optimizer: optax.GradientTransformation,
    grads: str = "manual", feedback=None,
):
    """One optimisation step on the batch ``(x, y)``; a pure function, ready for ``jax.jit``
    (and for a data-parallel sharding of ``x`` and ``y`` along the batch axis).

    With ``grads="manual"`` the gradient is assembled from the lecture's rules (db = Σ dy,
    dw = x ⋆ dy, dx = full-conv(rot180 w, dy)) attached to each op by ``jax.custom_vjp``; with
    ``grads="autodiff"`` JAX derives it from the same forwards. A ``feedback`` rule sends dx
    back through its feedback kernel in place of w at every layer: the "gradient" is then the
    rule's update direction (see :func:`alignment_deg`).

    Args:
      params, opt_state: the model's parameters and the optimizer's state.
      x: ``(B, *input_shape)`` inputs; y: ``(B,)`` integer labels.
      apply: the model's ``apply(params, x, *, grads) -> logits``.
      optimizer: an optax transformation (:func:`make_optimizer`).
      grads: ``"manual"`` or ``"autodiff"``.
      feedback: the models' feedback rule (``None``: backprop).

    Returns:
      ``(params, opt_state, loss, accuracy)``: the updated state and the batch's loss and accuracy
      *before* the update.
    """
    value_and_grad = jax.value_and_grad(loss_and_accuracy, has_aux=True)
    (loss, accuracy), dparams = value_and_grad(params, x, y, apply=apply, grads=grads,
                                               feedback=feedback)
    updates, opt_state = optimizer.update(dparams, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, loss, accuracy


def grad_rel_diff(params, x, y, *, apply: Callable, grads: tuple[str, str] = GRADS,
                  feedback=None):
    r"""How far two gradient modes' gradients of the loss lie apart at the same parameters and
    batch, relative to the gradient's scale: ‖g_a − g_b‖∞ / ‖g_a‖∞ over every leaf.

    Rounding alone leaves about the dtype's epsilon times the depth of the sums (float32 ~1e-7,
    float64 ~1e-16); a wrong rule leaves O(1).

    Args:
      params: the model's parameters; x: ``(B, *input_shape)``; y: ``(B,)`` integer labels.
      apply: the model's ``apply(params, x, *, grads) -> logits``.
      grads: the two gradient modes ``(a, b)``; ``a``'s gradient is the scale.
      feedback: the feedback rule both modes use (``None``: backprop).

    Returns:
      A scalar of the parameters' dtype (0 where ``g_a`` is 0 everywhere and so is ``g_b``).
    """
    a, b = (_grad(params, x, y, apply=apply, grads=g, feedback=feedback) for g in grads)
    diff = jnp.max(jnp.stack([jnp.max(jnp.abs(da - db)) for da, db in zip(
        jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]))
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(da)) for da in jax.tree.leaves(a)]))
    return diff / jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)


def _grad(params, x, y, *, apply: Callable, grads: str, feedback=None):
    """The loss's gradient (with a feedback rule: the rule's update direction)."""
    return jax.grad(lambda p: loss_and_accuracy(p, x, y, apply=apply, grads=grads,
                                                feedback=feedback)[0])(params)


def alignment_deg(a, b) -> jax.Array:
    r"""The angle, in degrees, between two pytrees of the same structure seen as two vectors
    (every leaf flattened and concatenated): the classic diagnostic of feedback alignment
    (Lillicrap et al. 2016), with ``a`` a feedback rule's update direction and ``b`` the true
    gradient. 0° means the same direction, 90° orthogonal (no first-order progress on the loss),
    above 90° the rule climbs the loss.

    With â = a/‖a‖ and b̂ = b/‖b‖ it is θ = 2·atan2(‖â − b̂‖, ‖â + b̂‖), the same angle as
    arccos(â·b̂) but accurate near 0° and 180°, where arccos of a rounded cosine is not
    (arccos(1 − 1e-7) is already 0.03°).

    Args:
      a, b: pytrees of arrays with the same structure and shapes; neither all zeros.

    Returns:
      A scalar in [0, 180] of the leaves' dtype (NaN if either is all zeros: no direction).
    """
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(f"alignment_deg needs a and b of the same structure, got "
                         f"{jax.tree.structure(a)} and {jax.tree.structure(b)}")
    u = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves_a])
    v = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves_b])
    u, v = u / jnp.linalg.norm(u), v / jnp.linalg.norm(v)
    return jnp.degrees(2 * jnp.arctan2(jnp.linalg.norm(u - v), jnp.linalg.norm(u + v)))


def gradient_alignment(params, x, y, *, apply: Callable, grads: str = "manual", feedback=None):
    """How far a feedback rule's update direction lies from the true gradient at ``params`` on
    the batch ``(x, y)``: :func:`alignment_deg` over all the parameters, and per layer.

    Args:
      params: the model's parameters, a dict of layers (``{"conv0": {"w", "b"}, ...}``).
      x: ``(B, *input_shape)``; y: ``(B,)`` integer labels.
      apply: the model's ``apply(params, x, *, grads, feedback) -> logits``.
      grads: the gradient mode of both (``"manual"`` or ``"autodiff"``).
      feedback: the rule (``None``: backprop, whose angle is 0° up to rounding).

    Returns:
      ``(total, per_layer)``: a scalar, and a dict from each layer's name to its scalar. A layer
      whose gradient is zero (e.g. one whose only path to the loss goes through a layer still at
      zero) gives NaN.

    The total weighs each layer by its gradient's size, and the last layer's update is exact
    under every rule (no feedback kernel lies between it and the loss): where it dominates, the
    total looks well aligned while the earlier layers may lie near or beyond 90°. Read the
    per-layer angles too.
    """
    rule = _grad(params, x, y, apply=apply, grads=grads, feedback=feedback)
    true = _grad(params, x, y, apply=apply, grads=grads)
    return alignment_deg(rule, true), {k: alignment_deg(rule[k], true[k]) for k in rule}


def make_epoch(apply: Callable, optimizer: optax.GradientTransformation, grads: str = "manual",
               *, batch_sharding: jax.sharding.Sharding | None = None, compare: bool = False,
               feedback=None):
    """A jit-compiled epoch: ``lax.scan`` of :func:`train_step` over the batches.

    The training set stays on the device; the scan gathers each batch from it by index. With
    ``batch_sharding`` (e.g. :func:`jaxconv.distributed.batch_sharded`), every gathered batch is
    laid out along the data-parallel mesh axis; parameters and optimizer state stay replicated,
    and XLA sums the devices' partial gradients. With ``compare=True`` every step also measures
    :func:`grad_rel_diff` between ``grads`` and the other mode at the step's parameters and batch
    (before the update), both with the same ``feedback`` rule (``None``: backprop).

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
            params, opt_state, x, y, apply=apply, optimizer=optimizer, grads=grads,
            feedback=feedback)
        out = {"loss": loss, "accuracy": accuracy}
        if compare:
            out["grad_rel_diff"] = grad_rel_diff(params, x, y, apply=apply, grads=pair,
                                                 feedback=feedback)
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
