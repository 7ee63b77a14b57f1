r"""The training loop: optax, one jit-compiled ``lax.scan`` per epoch, checkpoints, comparisons.

The pieces, each usable on its own:

- :func:`make_optimizer`: adam, adamw or sgd with momentum, under a learning-rate schedule
  (cosine decay to zero over the whole run, or constant).
- :func:`train_step`: one pure step ``(params, opt_state, x, y) -> (params, opt_state, loss,
  accuracy)``: ``jax.value_and_grad`` of the softmax cross-entropy of the model's logits, then the
  optimizer's update. With ``grads="manual"`` the gradient is assembled from the lecture's rules
  (db = Σ dy, dw = x ⋆ dy, dx = full-conv(rot180 w, dy)) attached to each op by
  ``jax.custom_vjp``; with ``grads="autodiff"`` JAX derives it from the same forwards.
- :func:`make_epoch`: a whole epoch as one jit-compiled ``lax.scan`` of :func:`train_step` over the
  epoch's batches, so that Python overhead does not dominate small models. The training set stays
  on the device; the scan gathers each batch from it by index.
- :func:`evaluate`: mean loss and accuracy over a dataset split, in jit-compiled chunks.
- :func:`fit`: the run. Given a :class:`TrainConfig` and a :class:`jaxconv.data.Dataset`, it
  trains, evaluates the test split after every epoch, and (with ``config.out``) writes
  checkpoints, ``metrics.jsonl``, ``summary.json`` and the curves' PNG. Progress is reported
  through ``callback(event, info)``; the library never prints.

Batches. Epoch ``e`` visits the training examples in the order
``jaxconv.data.epoch_permutation(seed, e, n)``, cut into ``n // batch_size`` full batches; the
last partial batch is dropped (every batch then has the same shape, so one compiled scan serves
every epoch). The order is a pure function of ``(seed, epoch)``, and the initial parameters come
from ``jax.random.PRNGKey(seed)``: a run is deterministic given its seed, and a resumed run replays
exactly the batches it would have seen.

Files (``config.out = DIR``; without ``out`` nothing is written to disk)::

    DIR/metrics.jsonl         one JSON object per finished epoch (rewritten atomically each epoch)
    DIR/summary.json          written once, when the run completes
    DIR/curves.png            loss and accuracy per epoch
    DIR/compare.png           with compare=True: both variants' losses and their difference
    DIR/checkpoints/<step>/   orbax checkpoints after every epoch (the newest 3 are kept)

Resuming (``resume=True``): training continues from the newest checkpoint that restores and
verifies (see :mod:`jaxconv.checkpoint`); a run killed mid-epoch restarts that epoch from its
beginning, and ends with exactly the final loss, accuracy and step count of an uninterrupted run.
The configuration must equal the checkpointed one. ``resume=True`` on a directory with no
checkpoint starts from scratch; ``resume=False`` on a directory that holds checkpoints is an error
(nothing is overwritten by accident).

Comparing (``compare=True``): the manual and the autodiff variants train side by side from the
same initial parameters on the same batches; ``summary["compare"]`` holds ``max_loss_diff`` (the
largest absolute difference of the per-epoch training losses), ``max_param_diff`` (of the final
parameters) and more. The top-level numbers describe ``config.grads``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxconv
from jaxconv import _checks, distributed
from jaxconv import data as data_lib
from jaxconv._io import atomic_open

GRADS = ("manual", "autodiff")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")

#: Used for any hyperparameter that neither the caller nor ``jaxconv.models.DEFAULTS`` sets.
FALLBACK_DEFAULTS = {
    "optimizer": "adam",
    "lr": 1e-3,
    "epochs": 10,
    "batch_size": 100,
    "schedule": "cosine",
    "weight_decay": 1e-4,
    "momentum": 0.9,
}

# Fields that define a run: a resumed run must agree with its checkpoint on every one.
_RUN_FIELDS = (
    "dataset", "model", "grads", "optimizer", "lr", "epochs", "batch_size", "schedule",
    "weight_decay", "momentum", "seed", "compare",
)

Callback = Callable[[str, dict], None]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the options of ``jaxconv train``).

    Hyperparameters left ``None`` take the model's defaults (``jaxconv.models.DEFAULTS``), then
    :data:`FALLBACK_DEFAULTS`; :meth:`resolved` fills them in and validates.

    Attributes:
      dataset: one of ``jaxconv.data.DATASETS``.
      model: one of ``jaxconv.models.MODELS``.
      grads: ``"manual"`` (the lecture's rules) or ``"autodiff"`` (``jax.grad``).
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
      compare: train the manual and autodiff variants side by side.
      devices: how many devices the batch is split over (data parallelism along the mesh axis
        ``"data"``, see :mod:`jaxconv.distributed`); ``None`` for all of them. The global
        ``batch_size`` must be a multiple of it.
      quiet: no progress output (read by the CLI; the library never prints).
    """

    dataset: str = "mnist1d"
    model: str = "cnn1d"
    grads: str = "manual"
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
    quiet: bool = False

    def resolved(self) -> TrainConfig:
        """This configuration with every ``None`` hyperparameter filled in, validated."""
        from jaxconv import models

        _choice("model", self.model, models.MODELS)
        defaults = dict(FALLBACK_DEFAULTS)
        defaults.update(getattr(models, "DEFAULTS", {}).get(self.model, {}))
        filled = {
            k: (defaults[k] if getattr(self, k) is None else getattr(self, k))
            for k in FALLBACK_DEFAULTS
        }
        config = dataclasses.replace(self, **filled)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad field."""
        from jaxconv import models

        _choice("dataset", self.dataset, data_lib.DATASETS)
        _choice("model", self.model, models.MODELS)
        _choice("grads", self.grads, GRADS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _positive_float("lr", self.lr)
        _checks.positive_int("epochs", self.epochs)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.non_negative("weight_decay", self.weight_decay)
        if not 0 <= _checks.non_negative("momentum", self.momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise TypeError(f"seed must be a non-negative int, got {self.seed!r}")
        _checks.non_negative("seed", self.seed)
        if self.devices is not None:
            _checks.positive_int("devices", self.devices)
        if self.resume and self.out is None:
            raise ValueError("resume needs out: the directory of the run to resume")

    def run_fields(self) -> dict:
        """The fields that define the run (what a resumed run must agree on)."""
        return {k: getattr(self, k) for k in _RUN_FIELDS}


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


# --- optimizer -----------------------------------------------------------------------------


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
    _choice("optimizer", name, OPTIMIZERS)
    _choice("schedule", schedule, SCHEDULES)
    lr = _positive_float("lr", lr)
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


# --- step, epoch, evaluation ---------------------------------------------------------------


def loss_and_accuracy(params, x, y, *, apply: Callable, grads: str):
    """The mean softmax cross-entropy of ``apply(params, x)`` against labels ``y``, and the batch
    accuracy as auxiliary output (what ``jax.value_and_grad(..., has_aux=True)`` expects).

    Args:
      params: the model's parameter pytree.
      x: ``(B, *input_shape)`` inputs.
      y: ``(B,)`` integer labels.
    """
    logits = apply(params, x, grads=grads)
    loss = jaxconv.ops(grads).softmax_cross_entropy(logits, y)
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
    return loss, accuracy


def train_step(
    params, opt_state, x, y, *, apply: Callable, optimizer: optax.GradientTransformation,
    grads: str = "manual",
):
    """One optimisation step on the batch ``(x, y)``; a pure function, ready for ``jax.jit``
    (and for a data-parallel sharding of ``x`` and ``y`` along the batch axis).

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


def make_epoch(apply: Callable, optimizer: optax.GradientTransformation, grads: str = "manual",
               batch_sharding: jax.sharding.Sharding | None = None):
    """A jit-compiled epoch: ``lax.scan`` of :func:`train_step` over the batches.

    With ``batch_sharding`` (e.g. :func:`jaxconv.distributed.batch_sharded`), every gathered
    batch is laid out along the data-parallel mesh axis; parameters and optimizer state stay
    replicated, and XLA sums the devices' partial gradients.

    Returns:
      ``epoch(params, opt_state, x_train, y_train, batches) -> (params, opt_state, losses,
      accuracies)`` where ``batches`` is ``(steps, batch_size)`` integer indices into ``x_train``
      (``(N, *input_shape)``) and ``y_train`` (``(N,)``), and ``losses``, ``accuracies`` are
      ``(steps,)``, one per step.
    """
    step = functools.partial(train_step, apply=apply, optimizer=optimizer, grads=grads)

    def epoch(params, opt_state, x_train, y_train, batches):
        def body(carry, index):
            x, y = x_train[index], y_train[index]
            if batch_sharding is not None:
                x = jax.lax.with_sharding_constraint(x, batch_sharding)
                y = jax.lax.with_sharding_constraint(y, batch_sharding)
            params, opt_state, loss, accuracy = step(*carry, x, y)
            return (params, opt_state), (loss, accuracy)

        (params, opt_state), (losses, accuracies) = jax.lax.scan(
            body, (params, opt_state), batches
        )
        return params, opt_state, losses, accuracies

    return jax.jit(epoch)


@functools.lru_cache(maxsize=64)
def _eval_chunk(apply: Callable, grads: str):
    """jit-compiled ``(params, x, y) -> (summed loss, number correct)`` of one chunk."""

    @jax.jit
    def chunk(params, x, y):
        loss, accuracy = loss_and_accuracy(params, x, y, apply=apply, grads=grads)
        return loss * y.shape[0], accuracy * y.shape[0]

    return chunk


def evaluate(params, x, y, *, apply: Callable, grads: str = "manual", chunk_size: int = 1000):
    """Mean loss and accuracy of the model over ``(x, y)``, in chunks of ``chunk_size``.

    Args:
      x: ``(N, *input_shape)``; y: ``(N,)`` integer labels; N > 0.

    Returns:
      ``(loss, accuracy)`` as Python floats.
    """
    n = len(y)
    if n == 0:
        raise ValueError("evaluate needs at least one example, got an empty split")
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    chunk = _eval_chunk(apply, grads)
    total_loss, correct = 0.0, 0.0
    for start in range(0, n, chunk_size):
        loss, right = chunk(params, x[start:start + chunk_size], y[start:start + chunk_size])
        total_loss += float(loss)
        correct += float(right)
    return total_loss / n, correct / n


# --- the run -------------------------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      config: the resolved configuration.
      summary: the contents of ``summary.json`` (see :func:`fit`).
      history: one record per epoch (the lines of ``metrics.jsonl``).
      params: the final parameters, per gradient mode trained (``{"manual": ...}``).
      step_losses: the training loss of every step, per gradient mode (``(steps,)`` arrays).
    """

    config: TrainConfig
    summary: dict
    history: list[dict]
    params: dict[str, Any]
    step_losses: dict[str, np.ndarray]


def fit(config: TrainConfig, dataset: data_lib.Dataset, *, callback: Callback | None = None):
    """Train ``config.model`` on ``dataset`` as ``config`` says; see the module docstring.

    Args:
      config: a :class:`TrainConfig` (``None`` hyperparameters take the model's defaults).
      dataset: the data (``jaxconv.data.load(config.dataset, ...)``).
      callback: ``callback(event, info)``, called with ``"start"`` (``epochs``, ``start_epoch``,
        ``steps_per_epoch``, ``config``), ``"notice"`` (``message``: a damaged checkpoint, a
        fresh start), ``"epoch"`` (the epoch's record) and ``"done"`` (``summary``).

    Returns:
      A :class:`FitResult`. ``summary`` holds ``test_accuracy``, ``test_loss``, ``final_loss``
      (the mean training loss of the last epoch's steps), ``train_seconds`` (the epochs' training
      time, compilation excluded), ``compile_seconds``, ``steps``, ``epochs``, ``grads``,
      ``model``, ``dataset``, ``seed``, the hyperparameters, and with ``compare=True`` a
      ``compare`` object.

    Raises:
      ValueError: a bad configuration, a batch larger than the training set, a resume that
        disagrees with its checkpoint, ``out`` holding another run without ``resume``.
    """
    emit = callback or (lambda event, info: None)
    config = config.resolved()
    if config.dataset != dataset.name:
        raise ValueError(f"config.dataset is {config.dataset!r} but the dataset given is "
                         f"{dataset.name!r}")
    n, batch_size = dataset.num_train, config.batch_size
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the training set of "
                         f"{dataset.name} ({n} examples)")
    steps_per_epoch = n // batch_size
    mesh = distributed.data_mesh(config.devices)
    distributed.check_divisible(batch_size, mesh)
    optimizer = _optimizer(_optimizer_key(config, steps_per_epoch))
    model = _model(config.model)
    variants = (config.grads,)
    if config.compare:
        variants += tuple(g for g in GRADS if g != config.grads)

    params0 = _init(config.model, dataset.input_shape, dataset.num_classes)(
        jax.random.PRNGKey(config.seed))
    state = {g: {"params": params0, "opt_state": optimizer.init(params0)} for g in variants}
    history: list[dict] = []
    step_losses: dict[str, list[float]] = {g: [] for g in variants}
    start_epoch = 0

    out = None if config.out is None else Path(config.out)
    checkpoints = None
    if out is not None:
        from jaxconv.checkpoint import Checkpoints

        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"out must be a directory, got the file {out}")
        checkpoints = Checkpoints(out / "checkpoints", primary=_primary())
        if checkpoints.steps() and not config.resume:
            checkpoints.close()
            raise ValueError(f"{out} already holds the checkpoints of a run; resume it "
                             f"(--resume) or choose another output directory")
    try:
        if checkpoints is not None and config.resume:
            restored = checkpoints.restore_latest(
                target=state, check=lambda meta: _check_same_run(config, meta, n))
            if restored is None:
                emit("notice", {"message": f"no checkpoint in {out}; starting from scratch"})
            else:
                for step, why in restored.damaged:
                    emit("notice", {"message": f"checkpoint step {step} is damaged ({why}); "
                                               f"using step {restored.step}"})
                state = restored.state
                history = restored.meta["history"]
                step_losses = {g: list(v) for g, v in restored.meta["step_losses"].items()}
                start_epoch = restored.meta["epoch"]
        return _run(config, dataset, model, optimizer, variants, state, history, step_losses,
                    start_epoch, steps_per_epoch, out, checkpoints, emit, mesh)
    finally:
        if checkpoints is not None:
            checkpoints.close()


# Per-process caches, so that runs of one configuration (seeds, resumes, tests) compile once.


@functools.cache
def _model(name: str):
    from jaxconv import models

    return models.get(name)


@functools.cache
def _init(name: str, input_shape: tuple[int, ...], num_classes: int):
    """The model's ``init(key)`` for these shapes, compiled: one compilation instead of many
    small eager ops. It runs once per run, so it is compiled fast rather than well (XLA's backend
    optimisation level 0 compiles a LeNet-5 init about 5x faster)."""
    init = jax.jit(_model(name).init, static_argnums=(1, 2))
    lowered = init.lower(jax.random.PRNGKey(0), input_shape, num_classes)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


def _optimizer_key(config: TrainConfig, steps_per_epoch: int) -> tuple:
    return (config.optimizer, config.lr, steps_per_epoch * config.epochs, config.schedule,
            config.weight_decay, config.momentum)


@functools.lru_cache(maxsize=32)
def _optimizer(key: tuple) -> optax.GradientTransformation:
    name, lr, total_steps, schedule, weight_decay, momentum = key
    return make_optimizer(name, lr, total_steps=total_steps, schedule=schedule,
                          weight_decay=weight_decay, momentum=momentum)


_EPOCHS: dict[tuple, Any] = {}


def _primary() -> bool:
    """Whether this process writes the run's files (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def _compiled_epoch(config: TrainConfig, steps_per_epoch: int, grads: str, args: tuple, mesh):
    """:func:`make_epoch` for this run, compiled ahead of time for the shapes, dtypes and
    shardings of ``args`` on ``mesh``, once per process (the newest 16 are kept)."""
    avals = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), args)
    leaves, treedef = jax.tree.flatten(avals)
    key = (config.model, _optimizer_key(config, steps_per_epoch), grads, treedef,
           tuple((a.shape, str(a.dtype)) for a in leaves),
           tuple(d.id for d in mesh.devices.flat))
    if key not in _EPOCHS:
        epoch = make_epoch(_model(config.model).apply,
                           _optimizer(_optimizer_key(config, steps_per_epoch)), grads,
                           batch_sharding=distributed.batch_sharded(mesh))
        _EPOCHS[key] = epoch.lower(*avals).compile()
        while len(_EPOCHS) > 16:
            _EPOCHS.pop(next(iter(_EPOCHS)))
    return _EPOCHS[key]


def _check_same_run(config: TrainConfig, meta: dict, n: int) -> None:
    saved = meta.get("config", {})
    for key, value in config.run_fields().items():
        if saved.get(key) != value:
            raise ValueError(f"cannot resume: the checkpointed run has {key}={saved.get(key)!r}, "
                             f"this one {key}={value!r}; pass the same options as the first run")
    if meta.get("data_order", {}).get("n") != n:
        raise ValueError(f"cannot resume: the checkpointed run trained on "
                         f"{meta.get('data_order', {}).get('n')} examples, this dataset has {n}")


def _run(config, dataset, model, optimizer, variants, state, history, step_losses,
         start_epoch, steps_per_epoch, out, checkpoints, emit, mesh) -> FitResult:
    n = dataset.num_train
    # Data parallelism: the training set, parameters and optimizer state are replicated on every
    # device of the mesh; each epoch's batch indices are split along the batch axis, and each
    # process feeds only its own rows of every global batch.
    x_train, y_train = distributed.put_replicated((dataset.x_train, dataset.y_train), mesh)
    state = distributed.put_replicated(state, mesh)
    index_sharding = distributed.batch_sharded(mesh, batch_axis=1)
    rows = distributed.process_rows(config.batch_size)

    def epoch_indices(epoch: int):
        indices = data_lib.epoch_batches(config.seed, epoch, n, config.batch_size)
        return distributed.global_batch(
            indices[:, rows].astype(np.int32), index_sharding, indices.shape)

    emit("start", {"epochs": config.epochs, "start_epoch": start_epoch,
                   "steps_per_epoch": steps_per_epoch, "config": config,
                   "devices": mesh.devices.size})

    # Compile every variant's epoch ahead of time, so that the epochs' seconds are training only.
    tic = time.perf_counter()
    example_batches = epoch_indices(0)
    epochs = {
        g: _compiled_epoch(config, steps_per_epoch, g, (
            state[g]["params"], state[g]["opt_state"], x_train, y_train, example_batches), mesh)
        for g in variants
    }
    compile_seconds = time.perf_counter() - tic

    for epoch in range(start_epoch, config.epochs):
        batches = epoch_indices(epoch)
        step = (epoch + 1) * steps_per_epoch
        per_variant = {}
        for g in variants:
            tic = time.perf_counter()
            params, opt_state, losses, accuracies = epochs[g](
                state[g]["params"], state[g]["opt_state"], x_train, y_train, batches
            )
            losses, accuracies = distributed.to_host(jax.block_until_ready((losses, accuracies)))
            seconds = time.perf_counter() - tic
            state[g] = {"params": params, "opt_state": opt_state}
            step_losses[g].extend(float(v) for v in losses)
            # Evaluation takes no gradient: one compiled forward serves both variants.
            # Each process evaluates its own copy of the (replicated) parameters.
            test_loss, test_accuracy = evaluate(
                distributed.to_host(params), dataset.x_test, dataset.y_test, apply=model.apply,
                grads=config.grads)
            per_variant[g] = {
                "train_loss": float(np.mean(losses)),
                "train_accuracy": float(np.mean(accuracies)),
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "seconds": seconds,
            }
        record = {"epoch": epoch + 1, "step": step, "grads": config.grads,
                  **per_variant[config.grads]}
        if config.compare:
            other = variants[1]
            record["compare"] = {
                "grads": other, **per_variant[other],
                "loss_diff": abs(per_variant[other]["train_loss"] - record["train_loss"]),
            }
        history.append(record)
        if checkpoints is not None and _primary():
            checkpoints.save(step, distributed.to_host(state), {
                "step": step, "epoch": epoch + 1, "config": config.run_fields(),
                "data_order": {"seed": config.seed, "next_epoch": epoch + 1, "n": n,
                               "batch_size": config.batch_size},
                "history": history, "step_losses": step_losses,
            })
            _write_jsonl(out / "metrics.jsonl", history)
        emit("epoch", record)

    summary = _summary(config, history, state, variants, compile_seconds)
    summary.update(devices=int(mesh.devices.size), processes=jax.process_count())
    if out is not None and _primary():
        from jaxconv import plots

        plots.training_curves(history, out / "curves.png", title=_title(config))
        if config.compare:
            plots.compare_curves(history, out / "compare.png", step_losses=step_losses,
                                 title=_title(config))
        _write_json(out / "summary.json", summary)
    emit("done", {"summary": summary})
    return FitResult(
        config=config, summary=summary, history=history,
        params={g: distributed.to_host(state[g]["params"]) for g in variants},
        step_losses={g: np.asarray(v) for g, v in step_losses.items()},
    )


def _title(config: TrainConfig) -> str:
    grads = config.grads
    if config.compare:
        grads += " vs " + next(g for g in GRADS if g != config.grads)
    return f"{config.model} on {config.dataset} ({grads} gradients, seed {config.seed})"


def _summary(config, history, state, variants, compile_seconds) -> dict:
    last = history[-1]
    summary = {
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "final_loss": last["train_loss"],
        "train_accuracy": last["train_accuracy"],
        "train_seconds": sum(r["seconds"] for r in history),
        "compile_seconds": compile_seconds,
        "steps": last["step"],
        "epochs": last["epoch"],
        **{k: getattr(config, k) for k in _RUN_FIELDS if k != "compare"},
    }
    if config.compare:
        other = variants[1]
        leaves = zip(jax.tree.leaves(distributed.to_host(state[config.grads]["params"])),
                     jax.tree.leaves(distributed.to_host(state[other]["params"])), strict=True)
        summary["compare"] = {
            "grads": list(variants),
            "max_loss_diff": max(r["compare"]["loss_diff"] for r in history),
            "max_test_loss_diff": max(
                abs(r["compare"]["test_loss"] - r["test_loss"]) for r in history
            ),
            "max_param_diff": max(float(np.max(np.abs(a - b))) for a, b in leaves),
            "test_accuracy": {config.grads: last["test_accuracy"],
                              other: last["compare"]["test_accuracy"]},
            "final_loss": {config.grads: last["train_loss"],
                           other: last["compare"]["train_loss"]},
            "train_seconds": {config.grads: summary["train_seconds"],
                              other: sum(r["compare"]["seconds"] for r in history)},
        }
    return summary


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def _atomic_write(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
