"""The configuration of a training run: :class:`TrainConfig`, its choices and its validation."""

from __future__ import annotations

import dataclasses

from jaxconv import _checks, recipes
from jaxconv import data as data_lib
from jaxconv.models import GRADS, MODELS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "float64")
FEEDBACKS = ("backprop", "random", "sign")

#: Folded into ``jax.random.key(seed)`` to make the key of ``feedback="random"`` (so the
#: feedback matrices differ from the initial weights drawn from the same seed).
RANDOM_FEEDBACK_SALT = 0xFB

# Fields that define a run: a resumed run must agree with its checkpoint on every one.
RUN_FIELDS = (
    "dataset", "model", "grads", "dtype", "optimizer", "lr", "epochs", "batch_size", "schedule",
    "weight_decay", "momentum", "seed", "compare", "feedback",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the options of ``jaxconv train``).

    Hyperparameters left ``None`` take the model's recipe (:func:`jaxconv.recipes.recipe`);
    :meth:`resolved` fills them in and validates.

    Attributes:
      dataset: one of ``jaxconv.data.DATASETS``.
      model: one of ``jaxconv.models.MODELS``.
      grads: ``"manual"`` (the lecture's rules) or ``"autodiff"`` (``jax.grad``).
      dtype: ``"float32"`` or ``"float64"``: the dtype of the data, the parameters, the
        optimizer's state and so of every rule. ``"float64"`` runs under ``jax.enable_x64``.
      optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with momentum).
      lr: peak learning rate, > 0.
      epochs: number of passes over the training set, > 0.
      batch_size: examples per step, > 0 and at most the training set's size.
      schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
      weight_decay: adamw's decoupled weight decay, >= 0 (ignored by adam and sgd).
      momentum: sgd's momentum in [0, 1) (ignored by adam and adamw).
      seed: the initial parameters' PRNG seed and the data order's seed, >= 0.
      data_dir: the directory of the MNIST IDX files (``dataset="mnist"`` only).
      out: the run's directory; ``None`` writes nothing.
      resume: continue from the newest checkpoint in ``out``.
      compare: train the manual and autodiff variants side by side, and measure both gradients
        at the same parameters and batch at every step.
      feedback: the rule that sends the error back through each layer (:mod:`jaxconv.feedback`,
        see :meth:`feedback_rule`): ``"backprop"`` (wᵀ, the lecture's rule), ``"random"``
        (feedback alignment: a fixed random matrix per layer) or ``"sign"`` (sign symmetry).
      devices: how many devices the batch is split over (data parallelism along the mesh axis
        ``"data"``, see :mod:`jaxconv.distributed`); ``None`` for all of them. The global
        ``batch_size`` must be a multiple of it.
    """

    dataset: str = "mnist1d"
    model: str = "cnn1d"
    grads: str = "manual"
    dtype: str = "float32"
    optimizer: str | None = None
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    schedule: str | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    seed: int = 0
    data_dir: str | None = None
    out: str | None = None
    resume: bool = False
    compare: bool = False
    devices: int | None = None
    feedback: str = "backprop"

    def resolved(self) -> TrainConfig:
        """This configuration with every ``None`` hyperparameter filled in, validated."""
        defaults = recipes.recipe(_checks.choice("model", self.model, MODELS))
        filled = {k: v if getattr(self, k) is None else getattr(self, k)
                  for k, v in defaults.items()}
        config = dataclasses.replace(self, **filled)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad field."""
        _checks.choice("dataset", self.dataset, data_lib.DATASETS)
        _checks.choice("model", self.model, MODELS)
        _checks.choice("grads", self.grads, GRADS)
        _checks.choice("dtype", self.dtype, DTYPES)
        _checks.choice("feedback", self.feedback, FEEDBACKS)
        _checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        _checks.choice("schedule", self.schedule, SCHEDULES)
        _checks.positive_number("lr", self.lr)
        _checks.positive_int("epochs", self.epochs)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.non_negative_number("weight_decay", self.weight_decay)
        if not 0 <= _checks.non_negative_number("momentum", self.momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        _checks.non_negative_int("seed", self.seed)
        if self.devices is not None:
            _checks.positive_int("devices", self.devices)
        if self.resume and self.out is None:
            raise ValueError("resume needs out: the directory of the run to resume")

    def feedback_rule(self):
        """The models' ``feedback=`` argument for :attr:`feedback`: ``None`` (backprop),
        ``jaxconv.feedback.sign``, or ``jaxconv.feedback.random(key, scale=2.0)`` with
        ``key = fold_in(jax.random.key(seed), RANDOM_FEEDBACK_SALT)``: a function of the seed,
        so a run (and its resume) always sees the same matrices, and He's scale (variance
        2 / fan_in), the scale of the relu layers' weights. Each layer gets its own matrix
        (``jaxconv.feedback.per_layer``, applied by the models)."""
        import jax

        from jaxconv import feedback

        rule = _checks.choice("feedback", self.feedback, FEEDBACKS)
        if rule == "backprop":
            return None
        if rule == "sign":
            return feedback.sign
        with jax.ensure_compile_time_eval():  # a concrete key, even when called under jit
            key = jax.random.fold_in(jax.random.key(self.seed), RANDOM_FEEDBACK_SALT)
        return feedback.random(key, scale=2.0)

    def run_fields(self) -> dict:
        """The fields that define the run (what a resumed run must agree on)."""
        return {k: getattr(self, k) for k in RUN_FIELDS}
