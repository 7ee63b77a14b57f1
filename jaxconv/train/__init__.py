r"""Training: optax, one jit-compiled ``lax.scan`` per epoch, checkpoints, comparisons.

The pieces, each usable on its own:

- :func:`make_optimizer`: adam, adamw or sgd with momentum, under a learning-rate schedule
  (cosine decay to zero over the whole run, or constant).
- :func:`train_step`: one pure step ``(params, opt_state, x, y) -> (params, opt_state, loss,
  accuracy)``: ``jax.value_and_grad`` of the softmax cross-entropy of the model's logits, then the
  optimizer's update, with the lecture's rules (``grads="manual"``) or JAX's (``"autodiff"``).
- :func:`grad_rel_diff`: both modes' gradients at the same parameters and batch, ‖g_a − g_b‖∞ /
  ‖g_a‖∞.
- :func:`alignment_deg` and :func:`gradient_alignment`: the angle between a feedback rule's update
  direction and the true gradient (the diagnostic of feedback alignment), measured by :func:`fit`
  after every epoch.
- :func:`make_epoch`: a whole epoch as one jit-compiled ``lax.scan`` of :func:`train_step` over the
  epoch's batches, so that Python overhead does not dominate small models.
- :func:`evaluate`: mean loss and accuracy over a dataset split, in jit-compiled chunks.
- :func:`fit`: the run. Given a :class:`TrainConfig` and a :class:`jaxconv.data.Dataset`, it
  trains, evaluates the test split after every epoch, and (with ``config.out``) writes
  checkpoints, ``metrics.jsonl``, ``summary.json`` and the curves' PNG. Progress is reported
  through ``callback(event, info)``; the library never prints.

The modules: :mod:`~jaxconv.train.config` (the configuration), :mod:`~jaxconv.train.step` (the
pure pieces), :mod:`~jaxconv.train.loop` (:func:`fit`); the default hyperparameters are the
recipes of :mod:`jaxconv.recipes`.

Batches. Epoch ``e`` visits the training examples in the order
``jaxconv.data.epoch_permutation(seed, e, n)``, cut into ``n // batch_size`` full batches; the
last partial batch is dropped (every batch then has the same shape, so one compiled scan serves
every epoch). The order is a pure function of ``(seed, epoch)``, and the initial parameters come
from ``jax.random.key(seed)``: a run is deterministic given its seed, and a resumed run replays
exactly the batches it would have seen.

Dtype. ``dtype="float64"`` runs under ``jax.enable_x64``: the data, the parameters (initialised
as in float32, then cast), the optimizer's state and so every rule compute in float64.

Files (``config.out = DIR``; without ``out`` nothing is written to disk)::

    DIR/metrics.jsonl         one JSON object per finished epoch (rewritten atomically each epoch)
    DIR/summary.json          written once, when the run completes
    DIR/curves.png            loss and accuracy per epoch
    DIR/compare.png           with compare=True: both variants' losses, their difference, and the
                              per-step gradient agreement
    DIR/checkpoints/<step>/   orbax checkpoints after every epoch (the newest 3 are kept)

Resuming (``resume=True``): training continues from the newest checkpoint that restores and
verifies (see :mod:`jaxconv.checkpoint`); a run killed mid-epoch restarts that epoch from its
beginning, and ends with exactly the final loss, accuracy and step count of an uninterrupted run.
The configuration must equal the checkpointed one. ``resume=True`` on a directory with no
checkpoint starts from scratch; ``resume=False`` on a directory that holds checkpoints is an error
(nothing is overwritten by accident).

Feedback (``feedback="random"`` or ``"sign"``, see :meth:`TrainConfig.feedback_rule`): every
layer sends dx back through a feedback kernel in place of w (:mod:`jaxconv.feedback`); with
``compare`` both variants use the same rule, so the comparison is manual vs JAX of that rule.

Comparing (``compare=True``): the manual and the autodiff variants train side by side from the
same initial parameters on the same batches. ``summary["compare"]`` holds ``max_loss_diff`` (the
largest absolute difference of the per-epoch training losses), ``max_param_diff`` (of the final
parameters), and ``max_grad_rel_diff``: at every step (``grad_rel_diff_every`` = 1) of
``config.grads``' trajectory both modes' gradients are taken at the same parameters and batch and
compared with :func:`grad_rel_diff`; this is the largest over the run. Each epoch's record in
``metrics.jsonl`` holds, under ``compare``, that epoch's ``max_grad_rel_diff``, ``loss_diff`` and
``param_diff`` (the curves), and :attr:`FitResult.grad_rel_diffs` every step's value. The
top-level numbers describe ``config.grads``.
"""

from jaxconv.models import GRADS
from jaxconv.train.config import (
    DTYPES,
    FEEDBACKS,
    OPTIMIZERS,
    RANDOM_FEEDBACK_SALT,
    RUN_FIELDS,
    SCHEDULES,
    TrainConfig,
)
from jaxconv.train.loop import ALIGNMENT_EXAMPLES, FitResult, fit
from jaxconv.train.step import (
    alignment_deg,
    evaluate,
    grad_rel_diff,
    gradient_alignment,
    loss_and_accuracy,
    make_epoch,
    make_optimizer,
    train_step,
)

__all__ = [
    "ALIGNMENT_EXAMPLES", "DTYPES", "FEEDBACKS", "GRADS", "OPTIMIZERS", "RANDOM_FEEDBACK_SALT",
    "RUN_FIELDS", "SCHEDULES", "FitResult", "TrainConfig", "alignment_deg", "evaluate", "fit",
    "grad_rel_diff", "gradient_alignment", "loss_and_accuracy", "make_epoch", "make_optimizer",
    "train_step",
]
