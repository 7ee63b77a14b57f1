"""The run: :func:`fit` places the data, compiles the epochs, trains, evaluates, checkpoints and
writes the run's files; see :mod:`jaxconv.train` for what a run does and writes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxconv import data as data_lib
from jaxconv import distributed
from jaxconv._io import atomic_open
from jaxconv.models import GRADS
from jaxconv.ops import _choice
from jaxconv.train._cache import cached
from jaxconv.train.config import RUN_FIELDS, TrainConfig
from jaxconv.train.step import evaluate, gradient_alignment, make_epoch, make_optimizer

Callback = Callable[[str, dict], None]

#: The fixed batch the alignment is measured on after every epoch: the first this many training
#: examples (all of them in a smaller training set).
ALIGNMENT_EXAMPLES = 1000


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      config: the resolved configuration.
      summary: the contents of ``summary.json`` (see :func:`fit`).
      history: one record per epoch (the lines of ``metrics.jsonl``).
      params: the final parameters, per gradient mode trained (``{"manual": ...}``).
      step_losses: the training loss of every step, per gradient mode (``(steps,)`` arrays).
      grad_rel_diffs: with ``compare``, :func:`jaxconv.train.grad_rel_diff` at every step of
        ``config.grads``' trajectory (``(steps,)``); else ``None``.
    """

    config: TrainConfig
    summary: dict
    history: list[dict]
    params: dict[str, Any]
    step_losses: dict[str, np.ndarray]
    grad_rel_diffs: np.ndarray | None = None


@dataclasses.dataclass
class _Run:
    """A run between two epochs: what it is (config, data, mesh) and where it stands (the
    variants' states, the history, the per-step curves, the next epoch)."""

    config: TrainConfig
    dataset: data_lib.Dataset
    mesh: jax.sharding.Mesh
    steps_per_epoch: int
    variants: tuple[str, ...]  # config.grads first, then the other mode with compare
    state: dict[str, dict]  # per variant: {"params", "opt_state"}
    history: list[dict] = dataclasses.field(default_factory=list)
    step_losses: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    grad_rel_diffs: list[float] = dataclasses.field(default_factory=list)
    start_epoch: int = 0

    @property
    def out(self) -> Path | None:
        return None if self.config.out is None else Path(self.config.out)

    def meta(self, epoch: int) -> dict:
        """The checkpoint's metadata after ``epoch`` epochs."""
        c = self.config
        return {"step": epoch * self.steps_per_epoch, "epoch": epoch, "config": c.run_fields(),
                "data_order": {"seed": c.seed, "next_epoch": epoch, "n": self.dataset.num_train,
                               "batch_size": c.batch_size},
                "history": self.history, "step_losses": self.step_losses,
                "grad_rel_diffs": self.grad_rel_diffs}

    def restore(self, meta: dict, state: dict) -> None:
        """Continue from a checkpoint's ``meta`` and ``state``."""
        self.state = state
        self.history = meta["history"]
        self.step_losses = {g: list(v) for g, v in meta["step_losses"].items()}
        self.grad_rel_diffs = list(meta["grad_rel_diffs"])
        self.start_epoch = meta["epoch"]


def fit(config: TrainConfig, dataset: data_lib.Dataset, *, callback: Callback | None = None):
    """Train ``config.model`` on ``dataset`` as ``config`` says; see :mod:`jaxconv.train`.

    Args:
      config: a :class:`TrainConfig` (``None`` hyperparameters take the model's recipe).
      dataset: the data (``jaxconv.data.load(config.dataset, ...)``).
      callback: ``callback(event, info)``, called with ``"start"`` (``epochs``, ``start_epoch``,
        ``steps_per_epoch``, ``config``, ``devices``), ``"notice"`` (``message``: a damaged
        checkpoint, a fresh start), ``"epoch"`` (the epoch's record) and ``"done"``
        (``summary``).

    Returns:
      A :class:`FitResult`. ``summary`` holds ``test_accuracy``, ``test_loss``, ``final_loss``
      (the mean training loss of the last epoch's steps), ``train_accuracy``, ``train_seconds``
      (the epochs' training time, compilation excluded), ``compile_seconds``, ``steps``,
      ``epochs``, ``devices``, ``processes``, ``conv_policy`` (the convolution formulation
      policy in force, :func:`jaxconv.get_policy`), the fields of :data:`RUN_FIELDS` but ``compare``
      (``dtype`` and ``feedback`` among them), ``alignment_deg`` (the last epoch's angle between
      the feedback rule's update direction and the true gradient, see below), and with
      ``compare=True`` a ``compare`` object.

    After every epoch the run measures, on a fixed batch (the first
    :data:`ALIGNMENT_EXAMPLES` training examples) at the epoch's final parameters,
    :func:`jaxconv.train.gradient_alignment`: the angle between the gradient the feedback rule
    gives and the true (backprop) gradient, over all the parameters (``alignment_deg``) and per
    layer (``alignment_deg_layers``), in each record of ``metrics.jsonl``. Backprop's is 0° up
    to rounding.

    Raises:
      ValueError: a bad configuration, a batch larger than the training set, a resume that
        disagrees with its checkpoint, ``out`` holding another run without ``resume``.
    """
    emit = callback or _ignore
    config = config.resolved()
    _check_dataset(config, dataset)
    x64 = jax.enable_x64(True) if config.dtype == "float64" else contextlib.nullcontext()
    with x64, _checkpoints(config) as checkpoints:
        run = _new_run(config, dataset)
        if config.resume:
            _resume(run, checkpoints, emit)
        return _train(run, checkpoints, emit)


def _ignore(event: str, info: dict) -> None:
    pass


def _check_dataset(config: TrainConfig, dataset: data_lib.Dataset) -> None:
    if config.dataset != dataset.name:
        raise ValueError(f"config.dataset is {config.dataset!r} but the dataset given is "
                         f"{dataset.name!r}")
    if config.batch_size > dataset.num_train:
        raise ValueError(f"batch_size {config.batch_size} is larger than the training set of "
                         f"{dataset.name} ({dataset.num_train} examples)")


@contextlib.contextmanager
def _checkpoints(config: TrainConfig) -> Iterator[Any]:
    """The run's :class:`jaxconv.checkpoint.Checkpoints` (``None`` without ``out``), closed on
    exit; refuses an ``out`` that holds another run's checkpoints unless resuming."""
    if config.out is None:
        yield None
        return
    from jaxconv.checkpoint import Checkpoints

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out must be a directory, got the file {out}")
    with Checkpoints(out / "checkpoints", primary=_primary()) as checkpoints:
        if checkpoints.steps() and not config.resume:
            raise ValueError(f"{out} already holds the checkpoints of a run; resume it "
                             f"(--resume) or choose another output directory")
        yield checkpoints


def _new_run(config: TrainConfig, dataset: data_lib.Dataset) -> _Run:
    """A run at epoch 0: every variant from the same initial parameters, cast to the dtype."""
    mesh = distributed.data_mesh(config.devices)
    distributed.check_divisible(config.batch_size, mesh)
    variants = (config.grads, *(g for g in GRADS if g != config.grads and config.compare))
    init = _compiled_init(config.model, dataset.input_shape, dataset.num_classes)
    params = jax.tree.map(lambda a: np.asarray(a, config.dtype), init(jax.random.key(config.seed)))
    steps_per_epoch = dataset.num_train // config.batch_size
    opt_state = _optimizer(config, steps_per_epoch).init(params)
    return _Run(config, dataset, mesh, steps_per_epoch, variants,
                state={g: {"params": params, "opt_state": opt_state} for g in variants},
                step_losses={g: [] for g in variants})


def _resume(run: _Run, checkpoints, emit: Callback) -> None:
    """Continue ``run`` from its newest verified checkpoint, if there is one."""
    restored = checkpoints.restore_latest(
        target=run.state, check=lambda meta: _check_same_run(run, meta))
    if restored is None:
        emit("notice", {"message": f"no checkpoint in {run.out}; starting from scratch"})
        return
    for step, why in restored.damaged:
        emit("notice", {"message": f"checkpoint step {step} is damaged ({why}); using step "
                                   f"{restored.step}"})
    run.restore(restored.meta, restored.state)


def _check_same_run(run: _Run, meta: dict) -> None:
    saved = meta.get("config", {})
    for key, value in run.config.run_fields().items():
        if saved.get(key) != value:
            raise ValueError(f"cannot resume: the checkpointed run has {key}={saved.get(key)!r}, "
                             f"this one {key}={value!r}; pass the same options as the first run")
    n = run.dataset.num_train
    if meta.get("data_order", {}).get("n") != n:
        raise ValueError(f"cannot resume: the checkpointed run trained on "
                         f"{meta.get('data_order', {}).get('n')} examples, this dataset has {n}")


# --- training -------------------------------------------------------------------------------


def _train(run: _Run, checkpoints, emit: Callback) -> FitResult:
    """Train ``run`` from its start epoch to the end; write its files; return the result."""
    config = run.config
    # Data parallelism: the training set, parameters and optimizer state are replicated on every
    # device of the mesh; each epoch's batch indices are split along the batch axis, and each
    # process feeds only its own rows of every global batch.
    data = distributed.put_replicated(
        (run.dataset.x_train.astype(config.dtype), run.dataset.y_train), run.mesh)
    run.state = distributed.put_replicated(run.state, run.mesh)
    emit("start", {"epochs": config.epochs, "start_epoch": run.start_epoch,
                   "steps_per_epoch": run.steps_per_epoch, "config": config,
                   "devices": run.mesh.devices.size})
    tic = time.perf_counter()  # compile ahead, so that the epochs' seconds are training only
    epochs = {g: _compiled_epoch(run, g, data) for g in run.variants}
    compile_seconds = time.perf_counter() - tic
    for epoch in range(run.start_epoch, config.epochs):
        batches = _epoch_batches(run, epoch)
        per_variant = {g: _train_epoch(run, g, epochs[g], data, batches) for g in run.variants}
        record = _record(run, epoch + 1, per_variant)
        record.update(_alignment(run))
        run.history.append(record)
        if checkpoints is not None and _primary():
            checkpoints.save(record["step"], distributed.to_host(run.state), run.meta(epoch + 1))
            _write_jsonl(run.out / "metrics.jsonl", run.history)
        emit("epoch", record)
    return _finish(run, compile_seconds, emit)


def _epoch_batches(run: _Run, epoch: int) -> jax.Array:
    """Epoch ``epoch``'s ``(steps, batch_size)`` indices, split along the batch axis; this
    process supplies its own rows."""
    indices = data_lib.epoch_batches(run.config.seed, epoch, run.dataset.num_train,
                                     run.config.batch_size)
    rows = distributed.process_rows(run.config.batch_size)
    return distributed.global_batch(indices[:, rows].astype(np.int32),
                                    distributed.batch_sharded(run.mesh, batch_axis=1),
                                    indices.shape)


def _train_epoch(run: _Run, grads: str, epoch: Callable, data: tuple, batches) -> dict:
    """One epoch of variant ``grads``: train, evaluate the test split; the variant's numbers."""
    tic = time.perf_counter()
    state = run.state[grads]
    params, opt_state, per_step = epoch(state["params"], state["opt_state"], *data, batches)
    per_step = distributed.to_host(jax.block_until_ready(per_step))
    seconds = time.perf_counter() - tic
    run.state[grads] = {"params": params, "opt_state": opt_state}
    run.step_losses[grads].extend(float(v) for v in per_step["loss"])
    if "grad_rel_diff" in per_step:
        run.grad_rel_diffs.extend(float(v) for v in per_step["grad_rel_diff"])
    # Evaluation takes no gradient: one compiled forward serves both variants. Each process
    # evaluates its own copy of the (replicated) parameters.
    test_loss, test_accuracy = evaluate(
        distributed.to_host(params), run.dataset.x_test.astype(run.config.dtype),
        run.dataset.y_test, apply=_model(run.config.model).apply, grads=run.config.grads)
    numbers = {
        "train_loss": float(np.mean(per_step["loss"])),
        "train_accuracy": float(np.mean(per_step["accuracy"])),
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "seconds": seconds,
    }
    if "grad_rel_diff" in per_step:
        numbers["max_grad_rel_diff"] = float(np.max(per_step["grad_rel_diff"]))
    return numbers


def _alignment(run: _Run) -> dict:
    """The angle between the rule's update and the true gradient at ``config.grads``' current
    parameters, on the run's fixed batch: ``alignment_deg`` and ``alignment_deg_layers``."""
    c = run.config
    n = min(ALIGNMENT_EXAMPLES, run.dataset.num_train)
    rule = c.feedback_rule()
    measure = cached(("alignment", c.model, c.grads, rule), lambda: jax.jit(
        lambda p, x, y: gradient_alignment(p, x, y, apply=_model(c.model).apply, grads=c.grads,
                                           feedback=rule)))
    total, layers = measure(distributed.to_host(run.state[c.grads]["params"]),
                            run.dataset.x_train[:n].astype(c.dtype), run.dataset.y_train[:n])
    return {"alignment_deg": float(total),
            "alignment_deg_layers": {k: float(v) for k, v in layers.items()}}


def _record(run: _Run, epoch: int, per_variant: dict[str, dict]) -> dict:
    """The epoch's line of metrics.jsonl: ``config.grads``' numbers, and with ``compare`` the
    other variant's, the loss and parameter differences and the epoch's largest gradient
    difference."""
    mine = dict(per_variant[run.config.grads])
    grad_rel_diff = mine.pop("max_grad_rel_diff", None)
    record = {"epoch": epoch, "step": epoch * run.steps_per_epoch, "grads": run.config.grads,
              **mine}
    if run.config.compare:
        other = run.variants[1]
        record["compare"] = {
            "grads": other, **per_variant[other],
            "loss_diff": abs(per_variant[other]["train_loss"] - record["train_loss"]),
            "param_diff": _param_diff(run),
            "max_grad_rel_diff": grad_rel_diff,
        }
    return record


def _param_diff(run: _Run) -> float:
    """The largest absolute difference between the two variants' parameters."""
    a, b = (jax.tree.leaves(distributed.to_host(run.state[g]["params"])) for g in run.variants)
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True))


def _finish(run: _Run, compile_seconds: float, emit: Callback) -> FitResult:
    summary = _summary(run, compile_seconds)
    if run.out is not None and _primary():
        from jaxconv import plots

        title = _title(run.config)
        plots.training_curves(run.history, run.out / "curves.png", title=title)
        if run.config.compare:
            plots.compare_curves(run.history, run.out / "compare.png",
                                 step_losses=run.step_losses,
                                 grad_rel_diffs=run.grad_rel_diffs, title=title)
        _write_json(run.out / "summary.json", summary)
    emit("done", {"summary": summary})
    return FitResult(
        config=run.config, summary=summary, history=run.history,
        params={g: distributed.to_host(run.state[g]["params"]) for g in run.variants},
        step_losses={g: np.asarray(v) for g, v in run.step_losses.items()},
        grad_rel_diffs=np.asarray(run.grad_rel_diffs) if run.config.compare else None,
    )


def _title(config: TrainConfig) -> str:
    grads = config.grads
    if config.compare:
        grads += " vs " + next(g for g in GRADS if g != config.grads)
    rule = "" if config.feedback == "backprop" else f", {config.feedback} feedback"
    return (f"{config.model} on {config.dataset} ({grads} gradients{rule}, {config.dtype}, "
            f"seed {config.seed})")


def _summary(run: _Run, compile_seconds: float) -> dict:
    config, history = run.config, run.history
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
        "devices": int(run.mesh.devices.size),
        "processes": jax.process_count(),
        "conv_policy": _choice.get_policy(),
        **{k: getattr(config, k) for k in RUN_FIELDS if k != "compare"},
        "alignment_deg": last["alignment_deg"],
    }
    if config.compare:
        other = run.variants[1]
        summary["compare"] = {
            "grads": list(run.variants),
            "max_loss_diff": max(r["compare"]["loss_diff"] for r in history),
            "max_test_loss_diff": max(
                abs(r["compare"]["test_loss"] - r["test_loss"]) for r in history
            ),
            "max_param_diff": _param_diff(run),
            "max_grad_rel_diff": max(run.grad_rel_diffs),
            "grad_rel_diff_every": 1,
            "test_accuracy": {config.grads: last["test_accuracy"],
                              other: last["compare"]["test_accuracy"]},
            "final_loss": {config.grads: last["train_loss"],
                           other: last["compare"]["train_loss"]},
            "train_seconds": {config.grads: summary["train_seconds"],
                              other: sum(r["compare"]["seconds"] for r in history)},
        }
    return summary


# --- what is built once per process -------------------------------------------------------


def _primary() -> bool:
    """Whether this process writes the run's files (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def _model(name: str):
    from jaxconv import models

    return cached(("model", name), lambda: models.get(name))


def _compiled_init(name: str, input_shape: tuple[int, ...], num_classes: int):
    """The model's ``init(key)`` for these shapes, compiled: one compilation instead of many
    small eager ops. It runs once per run, so it is compiled fast rather than well (XLA's backend
    optimisation level 0 compiles a LeNet-5 init about 5x faster)."""

    def build():
        init = jax.jit(_model(name).init, static_argnums=(1, 2))
        lowered = init.lower(jax.random.key(0), input_shape, num_classes)
        return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})

    return cached(("init", name, input_shape, num_classes), build)


def _optimizer(config: TrainConfig, steps_per_epoch: int):
    return make_optimizer(config.optimizer, config.lr, total_steps=steps_per_epoch * config.epochs,
                          schedule=config.schedule, weight_decay=config.weight_decay,
                          momentum=config.momentum)


def _epoch_key(run: _Run, grads: str, avals) -> tuple:
    """What a compiled epoch depends on: the model, the optimizer's hyperparameters and run
    length, the gradient mode, the feedback rule (a random one's key included), comparing or
    not, the arguments' structure, shapes, dtypes and the mesh's devices, x64, and the
    convolution formulation policy in force (``_choice.key()``).
    (Add here anything else that changes the compiled program.)"""
    c = run.config
    leaves, treedef = jax.tree.flatten(avals)
    return ("epoch", c.model, c.optimizer, c.lr, run.steps_per_epoch * c.epochs, c.schedule,
            c.weight_decay, c.momentum, grads, c.feedback_rule(), c.compare and grads == c.grads,
            treedef,
            tuple((a.shape, str(a.dtype)) for a in leaves), bool(jax.config.jax_enable_x64),
            tuple(d.id for d in run.mesh.devices.flat), _choice.key())


def _compiled_epoch(run: _Run, grads: str, data: tuple):
    """:func:`jaxconv.train.make_epoch` for variant ``grads`` of this run, compiled ahead of time
    for the shapes, dtypes and shardings of its arguments on the run's mesh."""
    state = run.state[grads]
    args = (state["params"], state["opt_state"], *data, _epoch_batches(run, 0))
    avals = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), args)

    def build():
        epoch = make_epoch(_model(run.config.model).apply, _optimizer(run.config,
                                                                      run.steps_per_epoch),
                           grads, batch_sharding=distributed.batch_sharded(run.mesh),
                           compare=run.config.compare and grads == run.config.grads,
                           feedback=run.config.feedback_rule())
        return epoch.lower(*avals).compile()

    return cached(_epoch_key(run, grads, avals), build)


# --- files ----------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def _atomic_write(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
