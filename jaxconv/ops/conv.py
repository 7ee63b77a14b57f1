r"""N-d convolution (cross-correlation) with the lecture's hand-derived backward rules.

The lecture's worked example (1-D, one filter, stride 1, no padding) is

    y₁ = w₁x₁ + w₂x₂ + b,   y₂ = w₁x₂ + w₂x₃ + b,   y₃ = w₁x₃ + w₂x₄ + b

and the chain rule gives, with dy = ∂L/∂y,

    db  = dy₁ + dy₂ + dy₃                                = Σ dy
    dw₁ = x₁dy₁ + x₂dy₂ + x₃dy₃,  dw₂ = x₂dy₁ + x₃dy₂ + x₄dy₃   = x ⋆ dy
    dx₁ = w₁dy₁,  dx₂ = w₂dy₁ + w₁dy₂,  dx₃ = w₂dy₂ + w₁dy₃,  dx₄ = w₂dy₃
                                                         = full-conv(rot180 w, dy)

(the slides print dw₂ and dx₂ with typos; these are the correct lines). In general, per spatial
dimension, with stride s, kernel dilation d, padding (lo, hi), kernel size K, input size I and
output size O,

    y[o] = b + Σ_k w[k] · x_pad[o·s + k·d]                     (forward)

    db    = Σ_{n, o} dy[n, o]
    dw[k] = Σ_{n, o} x_pad[n, o·s + k·d] · dy[n, o]            (x ⋆ dy: dy dilated by s,
                                                                 the kernel's d becomes a stride)
    dx_pad[i] = Σ_k w[k] · dy_s[i − k·d]                       (dy_s: dy dilated by s)
              = Σ_j rot180(w)[j] · dy_s[i − (K−1)·d + j·d]     (full correlation with rot180 w)
    dx    = dx_pad[lo : lo + I]                                (the padding crops dx)

Groups split the channels: each group of C_out / groups filters sees only its own
C_in / groups input channels, so dx transposes w group by group and dw pairs each group of x
with its own group of dy.

Each rule is computed by one of several equivalent formulations chosen per shape at trace time
(:mod:`jaxconv.ops._algorithms`): one convolution (``lax.conv_general_dilated``), a sum of
shifted matrix products, im2col with one matrix product, or one product with the banded
(Toeplitz) matrix that the kernel makes along the last spatial dimension. None loops over
positions and no Jacobian is ever formed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxconv import _checks
from jaxconv._checks import ConvConfig
from jaxconv.ops import _algorithms
from jaxconv.ops._twins import twins

# --------------------------------------------------------------------------------------------
# Forward and the three rules, side by side. Core layout: x (N, *S, C), w (*K, C_in/g, C_out),
# y (N, *O, C_out). Each product may be computed by any of several formulations (one XLA
# convolution, shifted matrix products, im2col): see jaxconv.ops._algorithms, which holds them
# and chooses per shape and dtype at trace time. The forward's choice is shared with
# jaxconv.autodiff.conv; the choice of the dx and dw formulations is the manual rule's own.
# --------------------------------------------------------------------------------------------

rot180_transpose = _algorithms.rot180_transpose


def conv_forward(x: jax.Array, w: jax.Array, b: jax.Array | None, cfg: ConvConfig) -> jax.Array:
    """y = x ⋆ w + b: x (N, *S, C_in), w (*K, C_in/g, C_out), b (C_out,) -> y (N, *O, C_out).

    y[o] = b + Σ_k w[k] · x_pad[o·s + k·d], computed by the formulation chosen for this shape.
    """
    y = _algorithms.run(
        "forward", x, w, cfg, x_shape=x.shape, w_shape=w.shape, cfg=cfg, dtype=x.dtype
    )
    return y if b is None else y + b


def conv_db(dy: jax.Array) -> jax.Array:
    """db = Σ dy over the batch and every spatial position: (N, *O, C_out) -> (C_out,)."""
    return jnp.sum(dy, axis=tuple(range(dy.ndim - 1)))


def conv_dw(x: jax.Array, dy: jax.Array, kernel: tuple[int, ...], cfg: ConvConfig) -> jax.Array:
    """dw = x ⋆ dy: (N, *S, C_in), (N, *O, C_out) -> (*K, C_in/g, C_out).

    dw[k] = Σ_{n,o} x_pad[n, o·s + k·d] dy[n, o] is a correlation of x with dy in which dy is
    dilated by the stride s and slides with step d (the kernel's dilation). The high padding is
    trimmed by the remainder r = (I + lo + hi − d(K−1) − 1) mod s: those trailing inputs never
    reached the forward output, so they get no gradient. Equivalently, for each offset k,
    dw[k] = view_k(x)ᵀ · dy, a matrix product over the N·O positions.
    """
    w_shape = (*kernel, x.shape[-1] // cfg.groups, dy.shape[-1])
    return _algorithms.run(
        "dw", x, dy, kernel, cfg, x_shape=x.shape, w_shape=w_shape, cfg=cfg, dtype=x.dtype
    )


def conv_dx(dy: jax.Array, w: jax.Array, in_size: tuple[int, ...], cfg: ConvConfig) -> jax.Array:
    """dx = full-conv(rot180 w, dy): (N, *O, C_out), (*K, C_in/g, C_out) -> (N, *S, C_in).

    dy is dilated by the stride, padded by d(K−1) on each side to make the correlation *full*
    (plus the remainder r on the high side), correlated with the rotated, channel-transposed
    kernel, and the forward's padding (lo, hi) is cropped off again. Equivalently,
    dx_pad = Σ_k scatter_k(dy · w[k]ᵀ): each dy[o] is sent back to the inputs o·s + k·d that
    made it.
    """
    x_shape = (dy.shape[0], *in_size, w.shape[-2] * cfg.groups)
    return _algorithms.run(
        "dx", dy, w, in_size, cfg, x_shape=x_shape, w_shape=w.shape, cfg=cfg, dtype=dy.dtype
    )


# --------------------------------------------------------------------------------------------
# The manual op: forward + rules via custom_vjp. Residuals: x and w only.
# --------------------------------------------------------------------------------------------


def _conv_fwd(x, w, b, cfg):
    return conv_forward(x, w, b, cfg), (x, w, b)


def _conv_bwd(cfg, residuals, dy):
    x, w, b = residuals  # b is kept only for its structure (None or (C_out,))
    dx = conv_dx(dy, w, x.shape[1:-1], cfg)
    dw = conv_dw(x, dy, w.shape[: cfg.nd], cfg)
    db = None if b is None else conv_db(dy)
    return dx, dw, db


_conv_manual = jax.custom_vjp(conv_forward, nondiff_argnums=(3,))
_conv_manual.defvjp(_conv_fwd, _conv_bwd)


# --------------------------------------------------------------------------------------------
# Public front-end (validation, layouts) shared by jaxconv.conv and jaxconv.autodiff.conv.
# --------------------------------------------------------------------------------------------


def _conv_front(
    core,
    x,
    w,
    b=None,
    *,
    stride=1,
    padding="VALID",
    dilation=1,
    groups=1,
    layout="channels_last",
):
    """N-d convolution (cross-correlation, as in the lecture) with optional bias.

    Args:
      x: input. ``channels_last`` (default): ``(N, *spatial, C_in)``; ``channels_first``
        (PyTorch's NCW / NCHW / NCDHW): ``(N, C_in, *spatial)``. 1, 2 or 3 spatial dims.
      w: kernel. ``channels_last``: ``(*kernel, C_in // groups, C_out)`` (lax's HWIO);
        ``channels_first``: ``(C_out, C_in // groups, *kernel)`` (PyTorch's OIHW).
      b: optional bias of shape ``(C_out,)``.
      stride: int or one int per spatial dim.
      padding: ``"VALID"``, ``"SAME"``, ``"FULL"`` (``d·(K−1)`` on each side: the lecture's full
        convolution), an int, or one ``(low, high)`` pair per spatial dim.
      dilation: kernel dilation, int or one per spatial dim.
      groups: channel groups; ``groups == C_in`` gives a depthwise convolution.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C_out)`` (or ``(N, C_out, *out_spatial)``) with
      ``out = (size + lo + hi − d·(K−1) − 1) // stride + 1`` per spatial dim.

    The gradient of ``jaxconv.conv`` is the lecture's rule (see :mod:`jaxconv.ops.conv`):
    ``db = Σ dy``, ``dw = x ⋆ dy``, ``dx = full-conv(rot180 w, dy)``; ``jaxconv.autodiff.conv``
    runs the same forward and lets JAX differentiate it.
    """
    layout = _checks.layout(layout)
    x, w, b = _checks.promote(x=x, w=w, b=b)
    if layout == "channels_first":
        if x.ndim >= 3:
            x = jnp.moveaxis(x, 1, -1)
        if w.ndim >= 3:
            w = jnp.transpose(w, (*range(2, w.ndim), 1, 0))
    cfg = _checks.conv_config(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout
    )
    y = core(x, w, b, cfg)
    return jnp.moveaxis(y, -1, 1) if layout == "channels_first" else y


conv, conv_autodiff = twins(_conv_front, _conv_manual, conv_forward)


def _rank_checked(nd: int, name: str):
    def front(core, x, w, b=None, **kwargs):
        x = _checks.array("x", x)
        if x.ndim != nd + 2:
            raise ValueError(
                f"{name} expects x of rank {nd + 2} (batch, {nd} spatial dim"
                f"{'s' if nd > 1 else ''}, channels), got shape {tuple(x.shape)}; use "
                f"jaxconv.conv for other ranks"
            )
        return core(x, w, b, **kwargs)

    front.__name__ = front.__qualname__ = name
    front.__doc__ = f"{nd}-D convolution: :func:`jaxconv.conv` with x of rank {nd + 2}."
    return twins(front, conv, conv_autodiff)


conv1d, conv1d_autodiff = _rank_checked(1, "conv1d")
conv2d, conv2d_autodiff = _rank_checked(2, "conv2d")
conv3d, conv3d_autodiff = _rank_checked(3, "conv3d")
