r"""The transposed convolution: the convolution's dX rule, used as a layer.

Write C_w for the convolution ``x ↦ conv(x, w)`` of :mod:`jaxconv.ops.conv` (stride s, kernel
dilation d, padding (lo, hi), groups). It is linear in x, and its dX rule computes its adjoint,
``conv_dx(dy, w) = C_wᵀ dy``. The transposed convolution applies that adjoint to a new input:

    y = T_w(x) = C_wᵀ x + b              (forward = the lecture's dX rule)

Per spatial dimension, x is dilated by the stride (s − 1 zeros between entries), correlated
*fully* with rot180 w, and the padding is cropped off:

    y[i·s + k·d − lo] += x[i] · w[k]     (PyTorch's definition, channels aside)

In the lecture's 1-D example (K = 2, s = d = 1, no padding) the dX rule of the convolution
of four inputs, read as a layer on a 3-vector x, is

    y₁ = w₁x₁,  y₂ = w₂x₁ + w₁x₂,  y₃ = w₂x₂ + w₁x₃,  y₄ = w₂x₃.

The output has ``(I − 1)·s + d·(K − 1) + 1 − lo − hi + output_padding`` positions: several input
sizes of C_w give the same output size, and ``output_padding`` (< max(s, d)) says which is meant.
Positions that no ``i·s + k·d − lo`` reaches are zero (plus the bias): where ``output_padding``
exceeds ``hi`` they are appended, ``T_w = E·C_wᵀ`` with E appending zeros, for the convolution
C_w whose input has the leading, reached, part of the output's size (see
:class:`jaxconv._checks.ConvTransposeConfig`).

The rules. Let dy = ∂L/∂y. By the definition of the adjoint (Eᵀ crops dy to the reached part),

    L = ⟨dy, T_w(x)⟩ = ⟨Eᵀdy, C_wᵀ x⟩ = ⟨C_w Eᵀdy, x⟩ = ⟨conv(Eᵀdy, w), x⟩   (bias aside).

- dx = ∂L/∂x: the right-hand side is linear in x with coefficient conv(Eᵀdy, w), so
  ``dx = conv(dy, w)``: the convolution's *forward*, on dy.
- dw = ∂L/∂w: the right-hand side is ⟨conv(u, w), v⟩ with u = Eᵀdy in the place of the
  convolution's input and v = x in the place of its upstream gradient. Its gradient in w is by
  definition the convolution's dW rule for that input and upstream gradient, ``u ⋆ v``: so
  ``dw = dy ⋆ x = conv_dw(dy, x)``, the dW rule with the roles of input and upstream gradient
  swapped.
- db = Σ dy over the batch and every output position (appended ones included).

In the 1-D example: dx₁ = w₁dy₁ + w₂dy₂, dx₂ = w₁dy₂ + w₂dy₃, dx₃ = w₁dy₃ + w₂dy₄ (the
convolution of dy with w), dw₁ = dy₁x₁ + dy₂x₂ + dy₃x₃, dw₂ = dy₂x₁ + dy₃x₂ + dy₄x₃ (dy ⋆ x).

Every product is one of :mod:`jaxconv.ops.conv`'s: the forward is ``conv_dx``, the rules are
``conv_forward`` and ``conv_dw``, so each of their formulations (one XLA convolution, shifted
matrix products, im2col / col2im, banded) and the per-shape choice among them is reused here.
Residuals: x and w.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _checks
from jaxconv._checks import ConvTransposeConfig
from jaxconv.ops._twins import autodiff_with_feedback, twins, with_feedback
from jaxconv.ops._varying import laid_out_like, summed_like
from jaxconv.ops.conv import conv_db, conv_dw, conv_dx, conv_forward, kernels_last

# --------------------------------------------------------------------------------------------
# Forward and the three rules. Core layout: x (N, *I, C_in), w (*K, C_out/g, C_in) (the kernel
# of the convolution C_out -> C_in being transposed), y (N, *out, C_out).
# --------------------------------------------------------------------------------------------


def _extend(y: jax.Array, tcfg: ConvTransposeConfig) -> jax.Array:
    """Append the zeros beyond the kernel's reach: (N, *core, C) -> (N, *out, C)."""
    extra = [c - k for c, k in zip(tcfg.out_size, tcfg.core_size, strict=True)]
    if not any(extra):
        return y
    return lax.pad(y, jnp.array(0, y.dtype), [(0, 0, 0), *((0, e, 0) for e in extra), (0, 0, 0)])


def _reached(dy: jax.Array, tcfg: ConvTransposeConfig) -> jax.Array:
    """The adjoint of :func:`_extend`: dy cropped to the positions the kernel reaches."""
    if tcfg.core_size == tcfg.out_size:
        return dy
    return lax.slice(dy, (0,) * dy.ndim, (dy.shape[0], *tcfg.core_size, dy.shape[-1]))


def conv_transpose_forward(
    x: jax.Array, w: jax.Array, b: jax.Array | None, tcfg: ConvTransposeConfig
) -> jax.Array:
    """y = C_wᵀ x + b: x (N, *I, C_in), w (*K, C_out/g, C_in), b (C_out,) -> y (N, *out, C_out).

    The convolution's dX rule (``conv_dx``) with x in the place of dy: x dilated by the
    stride, fully correlated with rot180 w, the padding cropped; then zeros beyond the
    kernel's reach.
    """
    c_out = w.shape[-2] * tcfg.conv.groups
    if tcfg.empty:
        y = jnp.zeros((x.shape[0], *tcfg.out_size, c_out), x.dtype)
    else:
        y = _extend(conv_dx(x, w, tcfg.core_size, tcfg.conv), tcfg)
    return y if b is None else y + b


def conv_transpose_dx(dy: jax.Array, w: jax.Array, tcfg: ConvTransposeConfig) -> jax.Array:
    """dx = conv(dy, w): the convolution's forward on dy, (N, *out, C_out) -> (N, *I, C_in)."""
    return conv_forward(_reached(dy, tcfg), w, None, tcfg.conv)


def conv_transpose_dw(
    x: jax.Array, dy: jax.Array, kernel: tuple[int, ...], tcfg: ConvTransposeConfig
) -> jax.Array:
    """dw = dy ⋆ x: the convolution's dW rule with dy as its input and x in the place of its
    upstream gradient, (N, *I, C_in), (N, *out, C_out) -> (*K, C_out/g, C_in)."""
    return conv_dw(_reached(dy, tcfg), x, kernel, tcfg.conv)


# --------------------------------------------------------------------------------------------
# The manual op: forward + rules via custom_vjp. Residuals: x and w only.
# --------------------------------------------------------------------------------------------


def _conv_transpose_fwd(x, w, b, tcfg):
    return conv_transpose_forward(x, w, b, tcfg), (x, w, b)


def _conv_transpose_bwd(tcfg, residuals, dy):
    x, w, b = residuals  # b is kept only for its structure (None or (C_out,))
    db = None if b is None else conv_db(dy)  # db = Σ dy
    if tcfg.empty:  # no output position depends on x or w
        return jnp.zeros_like(x), jnp.zeros_like(w), summed_like(db, b)
    dx = laid_out_like(x, conv_transpose_dx, dy, w, tcfg)
    dw = laid_out_like(w, conv_transpose_dw, x, dy, w.shape[: tcfg.conv.nd], tcfg)
    return summed_like(dx, x), summed_like(dw, w), summed_like(db, b)


_conv_transpose_manual = jax.custom_vjp(conv_transpose_forward, nondiff_argnums=(3,))
_conv_transpose_manual.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


# --------------------------------------------------------------------------------------------
# Public front-end (validation, layouts) shared by jaxconv.conv_transpose and its autodiff twin.
# --------------------------------------------------------------------------------------------


def _conv_transpose_front(
    core,
    x,
    w,
    b=None,
    *,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups=1,
    layout="channels_last",
    feedback=None,
):
    """N-d transposed convolution: the adjoint of :func:`jaxconv.conv` in x, with optional bias.

    PyTorch's semantics (``torch.nn.functional.conv_transpose{1,2,3}d``): per spatial dim,
    ``y[i·stride + k·dilation − lo] += x[i] · w[k]`` over the channels of each group, then
    ``y += b``.

    Args:
      x: input. ``channels_last`` (default): ``(N, *spatial, C_in)``; ``channels_first``:
        ``(N, C_in, *spatial)``. 1, 2 or 3 spatial dims.
      w: the kernel of the convolution being transposed (which maps C_out -> C_in).
        ``channels_last``: ``(*kernel, C_out // groups, C_in)`` (the HWIO kernel
        :func:`jaxconv.conv` takes); ``channels_first``: ``(C_in, C_out // groups, *kernel)``,
        exactly as PyTorch's ``conv_transpose`` takes it.
      b: optional bias of shape ``(C_out,)``.
      stride: int or one int per spatial dim (the stride of the convolution being transposed:
        the input is dilated by it).
      padding: the padding of the convolution being transposed, cropped off the output: an int,
        one int per spatial dim, or one ``(low, high)`` pair per spatial dim; non-negative.
      output_padding: int or one int per spatial dim, each ``< max(stride, dilation)``:
        positions added at the high end of the output (which of the convolution's input sizes
        that share one output size is meant).
      dilation: kernel dilation, int or one per spatial dim.
      groups: channel groups; both C_in and C_out are split into ``groups`` groups.
      layout: ``"channels_last"`` or ``"channels_first"``.
      feedback: what dx is sent back through (:mod:`jaxconv.feedback`): ``None`` (backprop),
        an array of w's shape and dtype (in ``layout``), or a callable of the channels-last
        w ``(*kernel, C_out // groups, C_in)``. Forward, dw and db are backprop's either way;
        ``dx = conv(dy, B)``.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C_out)`` (or ``(N, C_out, *out_spatial)``) with
      ``out = (size − 1)·stride + dilation·(K − 1) + 1 − low − high + output_padding`` per
      spatial dim.

    Its forward is the convolution's dX rule, and its gradient is again the lecture's rules
    (see :mod:`jaxconv.ops.conv_transpose`): ``dx = conv(dy, w)`` (the convolution's forward),
    ``dw = dy ⋆ x`` (the convolution's dW rule with input and upstream gradient swapped),
    ``db = Σ dy``. ``jaxconv.autodiff.conv_transpose`` runs the same forward and lets JAX
    differentiate it.
    """
    layout = _checks.layout(layout)
    feedback = _checks.feedback(feedback, w)
    x, w, b = _checks.promote(x=x, w=w, b=b)
    if layout == "channels_first":
        if x.ndim >= 3:
            x = jnp.moveaxis(x, 1, -1)
        w, feedback = kernels_last(w, feedback)
    tcfg = _checks.conv_transpose_config(
        x, w, b, stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups, layout=layout,
    )
    y = core(x, w, b, tcfg, feedback=_checks.feedback_kernel(feedback, w))
    return jnp.moveaxis(y, -1, 1) if layout == "channels_first" else y


conv_transpose, conv_transpose_autodiff = twins(
    _conv_transpose_front, with_feedback(_conv_transpose_manual),
    autodiff_with_feedback(conv_transpose_forward),
)
