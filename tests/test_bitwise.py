"""Manual against automatic, bit for bit: in float64 under the ``"xla"`` formulation policy the
lecture's rules round exactly as JAX's own derivatives do, so training with either gives the
same numbers, not just close ones.

Each model takes a few steps of its recipe's optimizer in the scanned epoch that
``jaxconv.train`` runs, once with each gradient mode, from the same parameters on the same
batches; the per-step losses and the final parameters must be *equal* (no tolerance), and so
must ``jax.grad`` of the loss at the starting parameters. (experiments/bitwise_agreement.py
shows it for the whole default cnn1d run; test_cli_train.py's float64 ``--compare`` test runs a
longer lenet5 epoch on the digits, where dense's dw in the other operand order, (xᵀ·dy) rather
than JAX's (dyᵀ·x)ᵀ, already rounds differently inside the compiled step.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import models, recipes
from jaxconv.train.step import loss_and_accuracy, make_epoch, make_optimizer

STEPS, BATCH = 3, 25
SHAPES = {"perceptron": (40, 1), "mlp": (40, 1), "cnn1d": (40, 1), "tcn1d": (40, 1),
          "lenet5": (8, 8, 1)}


def _problem(name: str):
    """float64 parameters of ``name`` and STEPS batches of random inputs and labels."""
    shape = SHAPES[name]
    params = models.get(name).init(jax.random.key(0), shape, 10)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(STEPS * BATCH, *shape)))
    y = jnp.asarray(rng.integers(0, 10, STEPS * BATCH), dtype=jnp.int32)
    return params, x, y


def _assert_equal(a, b, what: str) -> None:
    for path, u, v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(a),
                          jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == np.float64, f"{what} {path[0]}: dtype {u.dtype}"
        if not np.array_equal(u, v):
            raise AssertionError(f"{what} {jax.tree_util.keystr(path[0])}: not bitwise equal, "
                                 f"largest difference {np.max(np.abs(u - v)):.3g}")


@pytest.mark.parametrize("name", list(SHAPES))
def test_training_steps_are_bitwise_equal(name):
    model, recipe = models.get(name), recipes.recipe(name)
    params, x, y = _problem(name)
    optimizer = make_optimizer(recipe["optimizer"], recipe["lr"], total_steps=STEPS,
                               schedule=recipe["schedule"],
                               weight_decay=recipe["weight_decay"])
    batches = jnp.arange(STEPS * BATCH).reshape(STEPS, BATCH)
    with jaxconv.policy("xla"):
        grads = {mode: jax.jit(jax.grad(lambda p, mode=mode: loss_and_accuracy(
            p, x[:BATCH], y[:BATCH], apply=model.apply, grads=mode)[0]))(params)
            for mode in models.GRADS}
        runs = {mode: make_epoch(model.apply, optimizer, mode)(
            params, optimizer.init(params), x, y, batches) for mode in models.GRADS}
    _assert_equal(grads["manual"], grads["autodiff"], f"{name} jax.grad")
    (p_m, _, steps_m), (p_a, _, steps_a) = runs["manual"], runs["autodiff"]
    _assert_equal(steps_m["loss"], steps_a["loss"], f"{name} per-step loss")
    _assert_equal(p_m, p_a, f"{name} parameters after {STEPS} steps")
