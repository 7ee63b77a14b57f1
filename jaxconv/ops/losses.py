r"""Losses with their rules.

softmax cross-entropy, logits z (..., C), integer labels t (...), mean over the M = size(t)
examples:  L = (1/M) Σ [logsumexp(zₘ) − zₘ,ₜₘ]  and  dz = dL · (softmax(z) − onehot(t)) / M.
The residual is the softmax itself.

mean squared error over all P elements: L = (1/P) Σ (p − q)²,  dp = dL · 2(p − q)/P,  dq = −dp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _checks
from jaxconv.ops._twins import twins


def softmax_cross_entropy_forward(logits, labels):
    """Mean over examples of logsumexp(z) − z[label]."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jnp.mean(logz - picked)


def _sce_fwd(logits, labels):
    return softmax_cross_entropy_forward(logits, labels), (jax.nn.softmax(logits, axis=-1), labels)


def _sce_bwd(residuals, dl):
    """dz = dL · (softmax − onehot) / M; integer labels get no gradient (float0)."""
    p, labels = residuals
    onehot = jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)
    dz = (dl / labels.size) * (p - onehot)
    return dz.astype(p.dtype), _float0_like(labels)


def _float0_like(a):
    return np.zeros(a.shape, dtype=jax.dtypes.float0)


_sce_manual = jax.custom_vjp(softmax_cross_entropy_forward)
_sce_manual.defvjp(_sce_fwd, _sce_bwd)


def mse_forward(pred, target):
    """Mean over all elements of (pred − target)²."""
    return jnp.mean(jnp.square(pred - target))


def _mse_fwd(pred, target):
    return mse_forward(pred, target), pred - target


def _mse_bwd(diff, dl):
    """dpred = dL · 2(pred − target)/P; dtarget = −dpred."""
    dpred = (2 * dl / diff.size) * diff
    return dpred.astype(diff.dtype), (-dpred).astype(diff.dtype)


_mse_manual = jax.custom_vjp(mse_forward)
_mse_manual.defvjp(_mse_fwd, _mse_bwd)


def _sce_front(core, logits, labels):
    """Softmax cross-entropy with integer labels, averaged over the examples.

    Args:
      logits: ``(..., C)`` floating.
      labels: ``(...)`` integer class indices in ``[0, C)``.

    Returns:
      A scalar. Rule: ``dlogits = (softmax(logits) − onehot(labels)) / M`` with M examples.
    """
    logits = _checks.floating("logits", logits)
    labels = _checks.labels_for(logits, labels)
    return core(logits, labels)


def _mse_front(core, pred, target):
    """Mean squared error ``mean((pred − target)²)`` over all elements.

    Args:
      pred, target: floating arrays of one shape.

    Returns:
      A scalar. Rule: ``dpred = 2(pred − target)/P``, ``dtarget = −dpred``.
    """
    pred, target = _checks.promote(pred=pred, target=target)
    _checks.same_shape("pred", pred, "target", target)
    return core(pred, target)


softmax_cross_entropy, softmax_cross_entropy_autodiff = twins(
    _sce_front, _sce_manual, softmax_cross_entropy_forward
)
mse, mse_autodiff = twins(_mse_front, _mse_manual, mse_forward)
