r"""The perceptron's product y = x·w (+ b) and its hand-derived rule, for any contraction.

For one neuron, y = Σᵢ wᵢxᵢ + b, so ∂y/∂wᵢ = xᵢ, ∂y/∂xᵢ = wᵢ and ∂y/∂b = 1. For a layer,
x (..., n_in), w (n_in, n_out), b (n_out,) and dy = ∂L/∂y (..., n_out), the chain rule gives

    dx = dy · wᵀ                        (..., n_out) @ (n_out, n_in)
    dw = xᵀ · dy                        summed over every leading (batch) axis
    db = Σ dy                           over every leading axis

The same three lines hold for every product ``lax.dot_general`` can express. Group the axes of
x into batch axes b (shared with w, kept), free axes i (x's alone) and contracted axes k (paired
with w's), and the axes of w into b, k and its own free axes j. Then

    y[b, i, j]  = Σ_k x[b, i, k] · w[b, k, j]
    dx[b, i, k] = Σ_j dy[b, i, j] · w[b, k, j]      = dy · wᵀ   (dy's j-axes against w's free axes)
    dw[b, k, j] = Σ_i x[b, i, k] · dy[b, i, j]      = xᵀ · dy   (x's free axes against dy's i-axes)

Each rule is one ``dot_general`` over the right axes followed by a transpose back into the axis
order of x (or w); the batch axes b are carried through, never summed. ``dense`` is the case
b = (), k = x's last axis, j = w's last axis. Residuals are x and w.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _checks
from jaxconv.ops._twins import autodiff_with_feedback, twins, with_feedback
from jaxconv.ops._varying import laid_out_like, summed_like


@dataclasses.dataclass(frozen=True)
class DotConfig:
    """One contraction, fully explicit and hashable (``lax.dot_general``'s numbers).

    Attributes:
      contracting: ``(x_axes, w_axes)``, paired axis by axis.
      batch: ``(x_axes, w_axes)``, paired axis by axis; they lead the output.
      precision: passed to every product of the forward and of the rule.
    """

    contracting: tuple[tuple[int, ...], tuple[int, ...]]
    batch: tuple[tuple[int, ...], tuple[int, ...]]
    precision: Any = None

    @property
    def dimension_numbers(self):
        return self.contracting, self.batch

    def free(self, side: int, ndim: int) -> tuple[int, ...]:
        """The free axes of x (side 0) or w (side 1): neither contracted nor batch."""
        used = set(self.contracting[side]) | set(self.batch[side])
        return tuple(a for a in range(ndim) if a not in used)


def dense_config(x_ndim: int) -> DotConfig:
    """The perceptron's contraction: x's last axis against w's first, no batch axes."""
    return DotConfig(contracting=((x_ndim - 1,), (0,)), batch=((), ()))


# --------------------------------------------------------------------------------------------
# Forward and rules of the general contraction, side by side.
# --------------------------------------------------------------------------------------------


def dot_forward(x: jax.Array, w: jax.Array, cfg: DotConfig) -> jax.Array:
    """y[b, i, j] = Σ_k x[b, i, k] · w[b, k, j]: output axes (b..., i..., j...)."""
    return lax.dot_general(x, w, cfg.dimension_numbers, precision=cfg.precision)


def dot_dx(dy: jax.Array, w: jax.Array, x_ndim: int, cfg: DotConfig) -> jax.Array:
    """dx = dy · wᵀ: dy's j-axes contracted with w's free axes, batch axes kept.

    The product comes out as (b..., i..., k...), the k axes in w's order; it is transposed back
    into x's axis order.
    """
    (xc, wc), (xb, wb) = cfg.contracting, cfg.batch
    nb, ni = len(xb), len(cfg.free(0, x_ndim))
    dims = ((tuple(range(nb + ni, dy.ndim)), cfg.free(1, w.ndim)), (tuple(range(nb)), wb))
    dx = lax.dot_general(dy, w, dims, precision=cfg.precision)
    order = (*xb, *cfg.free(0, x_ndim), *(xc[wc.index(a)] for a in sorted(wc)))
    return jnp.transpose(dx, np.argsort(order))


def dot_dw(x: jax.Array, dy: jax.Array, w_ndim: int, cfg: DotConfig) -> jax.Array:
    """dw = xᵀ · dy, computed as (dyᵀ · x)ᵀ: dy's i-axes contracted with x's free axes, batch
    axes kept.

    The product comes out as (b..., j..., k...), the k axes in x's order; it is transposed back
    into w's axis order. Taking dy as the left operand is JAX's own order for this product (its
    transpose rule of ``dot_general``), so the float rounding of dw is autodiff's too.
    """
    (xc, wc), (xb, wb) = cfg.contracting, cfg.batch
    x_free = cfg.free(0, x.ndim)
    nb = len(xb)
    dims = ((tuple(range(nb, nb + len(x_free))), x_free), (tuple(range(nb)), xb))
    dw = lax.dot_general(dy, x, dims, precision=cfg.precision)
    order = (*wb, *cfg.free(1, w_ndim), *(wc[xc.index(a)] for a in sorted(xc)))
    return jnp.transpose(dw, np.argsort(order))


def _dot_general_fwd(x, w, cfg):
    return dot_forward(x, w, cfg), (x, w)


def _dot_general_bwd(cfg, residuals, dy):
    x, w = residuals
    return (summed_like(dot_dx(dy, w, x.ndim, cfg), x),
            summed_like(laid_out_like(w, dot_dw, x, dy, w.ndim, cfg), w))


_dot_manual = jax.custom_vjp(dot_forward, nondiff_argnums=(2,))
_dot_manual.defvjp(_dot_general_fwd, _dot_general_bwd)


# --------------------------------------------------------------------------------------------
# The perceptron layer: the contraction above plus a bias, one rule for both.
# --------------------------------------------------------------------------------------------


def dense_forward(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """y = x·w + b: (..., n_in), (n_in, n_out), (n_out,) -> (..., n_out)."""
    y = dot_forward(x, w, dense_config(x.ndim))
    return y if b is None else y + b


def dense_db(dy: jax.Array) -> jax.Array:
    """db = Σ dy over every leading axis."""
    return jnp.sum(dy, axis=tuple(range(dy.ndim - 1)))


def _dense_fwd(x, w, b):
    return dense_forward(x, w, b), (x, w, b)


def _dense_bwd(residuals, dy):
    """dx = dy·wᵀ and dw = xᵀ·dy (the contraction's rules), db = Σ dy."""
    x, w, b = residuals  # b only for its structure (None or (n_out,))
    cfg = dense_config(x.ndim)
    db = None if b is None else dense_db(dy)
    return (summed_like(dot_dx(dy, w, x.ndim, cfg), x),
            summed_like(laid_out_like(w, dot_dw, x, dy, w.ndim, cfg), w), summed_like(db, b))


_dense_manual = jax.custom_vjp(dense_forward)
_dense_manual.defvjp(_dense_fwd, _dense_bwd)


def _dense_front(core, x, w, b=None, *, feedback=None):
    """The perceptron layer y = x·w + b.

    Args:
      x: ``(..., n_in)``; every leading axis is a batch axis.
      w: ``(n_in, n_out)``.
      b: optional ``(n_out,)``.
      feedback: what dx is sent back through (:mod:`jaxconv.feedback`): ``None`` (backprop),
        an array of w's shape and dtype, or a callable of w. Forward, dw and db are
        backprop's either way; ``dx = dy·Bᵀ``.

    Returns:
      ``y`` of shape ``(..., n_out)``. ``jaxconv.dense`` differentiates by the rules
      ``dx = dy·wᵀ``, ``dw = xᵀ·dy``, ``db = Σ dy`` (see :mod:`jaxconv.ops.dense`).
    """
    feedback = _checks.feedback(feedback, w)
    x, w, b = _checks.promote(x=x, w=w, b=b)
    _checks.dense_shapes(x, w, b)
    return core(x, w, b, feedback=_checks.feedback_kernel(feedback, w))


dense, dense_autodiff = twins(
    _dense_front, with_feedback(_dense_manual), autodiff_with_feedback(dense_forward)
)


# --------------------------------------------------------------------------------------------
# The general contraction's public front-end.
# --------------------------------------------------------------------------------------------


def _axes(name: str, value: Any, ndim: int, operand: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of axes of {operand}, got {value!r}")
    axes = []
    for a in value:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name} must hold int axes, got {value!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{name} holds axis {a}, out of range for {operand} of rank {ndim}")
        axes.append(int(a) % ndim)
    return tuple(axes)


def dot_config(x: Any, w: Any, dimension_numbers: Any, precision: Any = None) -> DotConfig:
    """Validate ``lax.dot_general``'s ``((x_contract, w_contract), (x_batch, w_batch))``."""
    try:
        (xc, wc), (xb, wb) = dimension_numbers
    except (TypeError, ValueError) as err:
        raise ValueError(
            "dimension_numbers must be ((x_contracting, w_contracting), (x_batch, w_batch)), "
            f"got {dimension_numbers!r}"
        ) from err
    xc, xb = _axes("contracting axes", xc, x.ndim, "x"), _axes("batch axes", xb, x.ndim, "x")
    wc, wb = _axes("contracting axes", wc, w.ndim, "w"), _axes("batch axes", wb, w.ndim, "w")
    for kind, xa, wa in (("contracting", xc, wc), ("batch", xb, wb)):
        if len(xa) != len(wa):
            raise ValueError(f"{kind} axes must pair up, got {len(xa)} of x and {len(wa)} of w")
        for i, j in zip(xa, wa, strict=True):
            if x.shape[i] != w.shape[j]:
                raise ValueError(
                    f"{kind} axis {i} of x (size {x.shape[i]}, x of shape {tuple(x.shape)}) does "
                    f"not match axis {j} of w (size {w.shape[j]}, w of shape {tuple(w.shape)})"
                )
    for operand, c, b in (("x", xc, xb), ("w", wc, wb)):
        if len(set(c) | set(b)) != len(c) + len(b):
            raise ValueError(f"an axis of {operand} is named twice in {dimension_numbers!r}")
    return DotConfig(contracting=(xc, wc), batch=(xb, wb), precision=precision)


def _dot_general_front(core, x, w, dimension_numbers, *, precision=None, feedback=None):
    """A general tensor contraction, ``lax.dot_general``'s, with the perceptron's rule.

    Args:
      x: any rank.
      w: any rank.
      dimension_numbers: ``((x_contracting, w_contracting), (x_batch, w_batch))``, sequences of
        axes paired one by one, as in ``lax.dot_general``.
      precision: ``lax.dot_general``'s precision, used by the forward and both rules.
      feedback: what dx (the gradient of the *lhs* x) is sent back through
        (:mod:`jaxconv.feedback`): ``None`` (backprop), an array of w's (the rhs') shape and
        dtype, or a callable of w. Forward and dw are backprop's either way; ``dx = dy·Bᵀ``.

    Returns:
      ``y`` with axes ``(batch..., x's free axes..., w's free axes...)``, e.g.
      ``dot_general(x, w, (((2,), (1,)), ((0,), (0,))))`` of x ``(B, M, K)`` and w
      ``(B, K, N)`` is ``(B, M, N)``. ``jaxconv.dot_general`` differentiates by
      ``dx = dy·wᵀ`` and ``dw = xᵀ·dy`` over those axes (see :mod:`jaxconv.ops.dense`).
    """
    feedback = _checks.feedback(feedback, w)
    x, w = _checks.promote(x=x, w=w)
    cfg = dot_config(x, w, dimension_numbers, precision)
    return core(x, w, cfg, feedback=_checks.feedback_kernel(feedback, w))


dot_general, dot_general_autodiff = twins(
    _dot_general_front, with_feedback(_dot_manual), autodiff_with_feedback(dot_forward)
)
