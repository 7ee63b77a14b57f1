r"""Losses with their rules, named and reduced as in optax: one loss per example (per element
for the squared error), never averaged; take ``jnp.mean`` of the result for a batch loss.

Softmax cross-entropy, logits z (..., C), probability labels y (..., C), one loss per example:

    Lₘ = −Σ_c yₘ,c log softmax(zₘ)_c = Σ_c yₘ,c (logsumexp(zₘ) − zₘ,c)
    dzₘ = dLₘ · (softmax(zₘ) Σ_c yₘ,c − yₘ)      (= dLₘ · (softmax(zₘ) − yₘ) when Σ_c yₘ,c = 1)
    dyₘ = −dLₘ · log softmax(zₘ)

With integer labels t (...) the labels are the one-hot rows, so

    Lₘ = logsumexp(zₘ) − zₘ,tₘ        dzₘ = dLₘ · (softmax(zₘ) − onehot(tₘ))

and the labels get no gradient. The residual is the softmax itself: log softmax for probability
labels; for integer labels its parts e = exp(z − max z) and s = Σ e (softmax = e / s), from which
the rule computes (dL / s) · e and takes dL off at the label by a scatter-add, the order of JAX's
own derivative, so that in float64 the two agree bit for bit.

Squared error, elementwise: L = (p − q)²,  dp = dL · 2(p − q),  dq = −dp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _checks
from jaxconv.ops._twins import twins

# --- softmax cross-entropy, probability labels ---------------------------------------------


def softmax_cross_entropy_forward(logits, labels):
    """Lₘ = −Σ_c labels[m, c] · log softmax(logits[m])_c, one per example."""
    return -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _sce_fwd(logits, labels):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(labels * logp, axis=-1), (logp, labels)


def _sce_bwd(residuals, dl):
    """dlogits = dL · (softmax · Σ labels − labels); dlabels = −dL · log softmax."""
    logp, labels = residuals
    dl = dl[..., None]
    dlogits = dl * (jnp.exp(logp) * jnp.sum(labels, axis=-1, keepdims=True) - labels)
    return dlogits, -dl * logp


_sce_manual = jax.custom_vjp(softmax_cross_entropy_forward)
_sce_manual.defvjp(_sce_fwd, _sce_bwd)


def _softmax_cross_entropy_front(core, logits, labels):
    """Softmax cross-entropy with probability labels, one loss per example (optax's
    ``softmax_cross_entropy``).

    Args:
      logits: ``(..., C)`` floating, unnormalised log-probabilities.
      labels: ``(..., C)`` floating, each row a distribution over the C classes (e.g. one-hot
        rows, or smoothed ones); differentiated too.

    Returns:
      ``(...)``: ``−Σ_c labels · log softmax(logits)`` per example. Rule:
      ``dlogits = dL · (softmax(logits) · Σ_c labels − labels)`` (``softmax − labels`` for rows
      that sum to 1), ``dlabels = −dL · log softmax(logits)``.
    """
    logits, labels = _checks.probabilities_for(logits, labels)
    return core(logits, labels)


# --- softmax cross-entropy, integer labels ---------------------------------------------------


def _shifted_exp(logits):
    """The parts of softmax that forward and rule share: e = exp(z − m) and s = Σ_c e, with
    m = max_c z held constant (``stop_gradient``; 0 where it is not finite), so that
    softmax(z) = e / s and logsumexp(z) = log s + m, as ``jax.nn.logsumexp`` computes them."""
    m = jnp.max(logits, axis=-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))
    e = jnp.exp(logits - m)
    return e, jnp.sum(e, axis=-1), m[..., 0]


def softmax_cross_entropy_with_integer_labels_forward(logits, labels):
    """Lₘ = logsumexp(logits[m]) − logits[m, labels[m]] = log sₘ + mₘ − logits[m, labels[m]],
    one per example."""
    _, s, m = _shifted_exp(logits)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jnp.log(s) + m - picked


def _sce_int_fwd(logits, labels):
    e, s, m = _shifted_exp(logits)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jnp.log(s) + m - picked, (e, s, labels)


def _sce_int_bwd(residuals, dl):
    """dlogits = dL · (softmax − onehot(labels)) = (dL / s) · e, with dL taken off at each label;
    integer labels get no gradient (float0).

    The softmax is kept as its parts e and s, and the rule takes the same steps as JAX's
    derivative of the forward's log s and of its gather: the product (dL / s) · e, then a
    scatter-add of −dL at the labels. A scatter stays out of the product's loop, so XLA:CPU
    cannot contract the two into one fused multiply-add (as it may do for
    ``(dL / s) · e − dL · onehot``), and the rounding is autodiff's too.
    """
    e, s, labels = residuals
    dlogits = _add_at_labels((dl / s)[..., None] * e, labels, -dl)
    return dlogits, np.zeros(labels.shape, dtype=jax.dtypes.float0)


def _add_at_labels(a, labels, values):
    """a[m, labels[m]] += values[m] for every example m: one scatter-add along the class axis,
    the leading axes paired as batch axes (the transpose of the forward's gather)."""
    nb = labels.ndim
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(), inserted_window_dims=(nb,), scatter_dims_to_operand_dims=(nb,),
        operand_batching_dims=tuple(range(nb)), scatter_indices_batching_dims=tuple(range(nb)))
    return jax.lax.scatter_add(a, labels[..., None], values, dims,
                               mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


_sce_int_manual = jax.custom_vjp(softmax_cross_entropy_with_integer_labels_forward)
_sce_int_manual.defvjp(_sce_int_fwd, _sce_int_bwd)


def _softmax_cross_entropy_with_integer_labels_front(core, logits, labels):
    """Softmax cross-entropy with integer class labels, one loss per example (optax's
    ``softmax_cross_entropy_with_integer_labels``).

    Args:
      logits: ``(..., C)`` floating, unnormalised log-probabilities.
      labels: ``(...)`` integer class indices in ``[0, C)``; not differentiated.

    Returns:
      ``(...)``: ``logsumexp(logits) − logits[label]`` per example. Rule:
      ``dlogits = dL · (softmax(logits) − onehot(labels))``.
    """
    logits = _checks.floating("logits", logits)
    labels = _checks.labels_for(logits, labels)
    return core(logits, labels)


# --- squared error ---------------------------------------------------------------------------


def squared_error_forward(predictions, targets):
    """(predictions − targets)², elementwise."""
    return jnp.square(predictions - targets)


def _squared_error_fwd(predictions, targets):
    diff = predictions - targets
    return jnp.square(diff), diff


def _squared_error_bwd(diff, dl):
    """dpredictions = dL · 2(predictions − targets); dtargets = −dpredictions."""
    dpred = 2 * dl * diff
    return dpred, -dpred


_squared_error_manual = jax.custom_vjp(squared_error_forward)
_squared_error_manual.defvjp(_squared_error_fwd, _squared_error_bwd)


def _squared_error_front(core, predictions, targets=None):
    """Elementwise squared error ``(predictions − targets)²`` (optax's ``squared_error``; the
    mean squared error is ``jnp.mean`` of it, optax's ``l2_loss`` half of it).

    Args:
      predictions: floating array.
      targets: floating array of the same shape, or ``None`` for zeros.

    Returns:
      An array of ``predictions``' shape. Rule: ``dpredictions = dL · 2(predictions − targets)``,
      ``dtargets = −dpredictions``.
    """
    if targets is None:
        predictions = _checks.floating("predictions", predictions)
        targets = jnp.zeros_like(predictions)
    predictions, targets = _checks.promote(predictions=predictions, targets=targets)
    _checks.same_shape("predictions", predictions, "targets", targets)
    return core(predictions, targets)


softmax_cross_entropy, softmax_cross_entropy_autodiff = twins(
    _softmax_cross_entropy_front, _sce_manual, softmax_cross_entropy_forward
)
(
    softmax_cross_entropy_with_integer_labels,
    softmax_cross_entropy_with_integer_labels_autodiff,
) = twins(
    _softmax_cross_entropy_with_integer_labels_front,
    _sce_int_manual,
    softmax_cross_entropy_with_integer_labels_forward,
)
squared_error, squared_error_autodiff = twins(
    _squared_error_front, _squared_error_manual, squared_error_forward
)
