"""Training recipes: the hyperparameters each model trains with when the caller sets none.

:func:`recipe` is what :meth:`jaxconv.train.TrainConfig.resolved` fills a configuration's
``None`` hyperparameters from: the model's entry of :data:`RECIPES`, then :data:`FALLBACK`.

The recipes reach the targets of experiments/train_targets.py (see
experiments/results/train_targets.md): cnn1d, tcn1d and mlp on MNIST-1D, lenet5 on the 8×8
digits. The MNIST-1D paper trained every model with Adam, lr 1e-2, batch 100 and 6,000
constant-rate steps; that recipe gave cnn1d ~92% and mlp ~67% here (sweeps over 3 to 5 seeds), so
cnn1d takes batches of 25 under a cosine decay with a small decoupled weight decay for 100 epochs
(seeds 0-4 on the CPU: 95.6, 94.7, 94.9, 94.2, 95.1%; 60 epochs of plain Adam gave 93.9% over
seeds 0-2) and mlp a larger decoupled weight decay (~68.8%).
"""

from __future__ import annotations

from typing import Any

from jaxconv import _checks

#: Every hyperparameter a recipe sets, with the value used where a model's recipe does not.
FALLBACK: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "epochs": 10,
    "batch_size": 100,
    "schedule": "cosine",
    "weight_decay": 1e-4,
    "momentum": 0.9,
}

#: Per model (``jaxconv.models.MODELS``): the hyperparameters that differ from :data:`FALLBACK`.
RECIPES: dict[str, dict[str, Any]] = {
    "perceptron": {"optimizer": "adam", "lr": 1e-2, "schedule": "cosine", "epochs": 50,
                   "batch_size": 100, "weight_decay": 0.0},
    "mlp": {"optimizer": "adamw", "lr": 1e-2, "schedule": "cosine", "epochs": 150,
            "batch_size": 100, "weight_decay": 0.1},
    "cnn1d": {"optimizer": "adamw", "lr": 1e-2, "schedule": "cosine", "epochs": 100,
              "batch_size": 25, "weight_decay": 1e-2},
    "tcn1d": {"optimizer": "adam", "lr": 1e-2, "schedule": "cosine", "epochs": 20,
              "batch_size": 100, "weight_decay": 0.0},
    "lenet5": {"optimizer": "adam", "lr": 3e-3, "schedule": "cosine", "epochs": 50,
               "batch_size": 32, "weight_decay": 0.0},
}


def recipe(model: str) -> dict[str, Any]:
    """Every hyperparameter of :data:`FALLBACK`, as ``model`` trains by default.

    Args:
      model: one of :data:`RECIPES`' keys (``jaxconv.models.MODELS``).

    Returns:
      A new dict with the keys of :data:`FALLBACK`.
    """
    _checks.choice("model", model, tuple(RECIPES))
    return {**FALLBACK, **RECIPES[model]}
