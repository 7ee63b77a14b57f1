r"""Max and average pooling (channels-last, 1 to 3 spatial dims) with hand-derived rules.

For a window W of positions, stride s and padding (lo, hi) per dimension:

avg_pool:  y[o] = (1/|W|) Σ_{k∈W} x_pad[o·s + k]. Padded positions count as zeros *in the
           divisor too* (|W| is always the full window size, PyTorch's ``count_include_pad``).
           This is a depthwise convolution with the constant kernel 1/|W|, so its rule is the
           convolution's: dx = full-conv(rot180(1/|W|), dy), i.e. each dy[o] is spread evenly,
           dy[o]/|W|, over its window, and the padding is cropped off.

max_pool:  y[o] = max_{k∈W} x_pad[o·s + k], padded with −∞ (padding never wins). The rule
           routes dy[o] to the arg-max of its window: dx_pad[o·s + k*] += dy[o]. Tie rule: when
           several positions of one window hold the maximum, the *first* in row-major window
           order (lowest offset, last axis fastest) gets all of dy[o]; the others get nothing.
           Overlapping windows (stride < window) add up their contributions.

Both rules loop over the |W| window *offsets* (a handful of static shifts), each one an
elementwise op on the whole output; nothing loops over positions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _checks
from jaxconv._checks import ConvConfig, PoolConfig
from jaxconv.ops import _algorithms
from jaxconv.ops._twins import twins
from jaxconv.ops.conv import conv_dx


def _full(spatial):
    """Spatial pads or window sizes, extended with the batch and channel axes."""
    return ((0, 0), *spatial, (0, 0))


def max_pool_forward(x, cfg: PoolConfig):
    """y[o] = max over the window at o·s of x padded with −∞."""
    return lax.reduce_window(
        x,
        np.array(-np.inf, x.dtype),
        lax.max,
        (1, *cfg.window, 1),
        (1, *cfg.stride, 1),
        _full(cfg.padding),
    )


def avg_pool_forward(x, cfg: PoolConfig):
    """y[o] = (1/|W|) Σ over the window at o·s of x padded with zeros."""
    total = lax.reduce_window(
        x,
        np.array(0, x.dtype),
        lax.add,
        (1, *cfg.window, 1),
        (1, *cfg.stride, 1),
        _full(cfg.padding),
    )
    return total / math.prod(cfg.window)


def _as_conv(cfg: PoolConfig, groups: int) -> ConvConfig:
    """The window's bookkeeping as a convolution's: same stride and padding, no dilation."""
    return ConvConfig(stride=cfg.stride, padding=cfg.padding, dilation=(1,) * len(cfg.window),
                      groups=groups)


def max_pool_dx(x, y, dy, cfg: PoolConfig):
    """Route each dy[o] to the first arg-max of its window; crop the padding.

    The window views and their adjoint scatters are the convolution's (``view_k``, ``scatter_k``
    in :mod:`jaxconv.ops._algorithms`), with the kernel offsets k replaced by window offsets.
    """
    window = _as_conv(cfg, groups=1)
    x_pad = lax.pad(
        x, np.array(-np.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in cfg.padding),
                                        (0, 0, 0)]
    )
    padded, out = x_pad.shape[1:-1], y.shape[1:-1]
    dx_pad = jnp.zeros(x_pad.shape, dy.dtype)
    taken = jnp.zeros(y.shape, bool)
    for offset in _algorithms.offsets(cfg.window):
        hit = (_algorithms.view(x_pad, offset, out, window) == y) & ~taken
        taken = taken | hit
        dx_pad = dx_pad + _algorithms.scatter(
            jnp.where(hit, dy, jnp.zeros_like(dy)), offset, padded, window
        )
    return _algorithms.crop(dx_pad, cfg.in_size, window)


def avg_pool_dx(dy, cfg: PoolConfig):
    """dx = full-conv(rot180(1/|W|), dy): the depthwise-convolution rule with a constant kernel."""
    channels = dy.shape[-1]
    kernel = jnp.full((*cfg.window, 1, channels), 1 / math.prod(cfg.window), dy.dtype)
    return conv_dx(dy, kernel, cfg.in_size, _as_conv(cfg, groups=channels))


def _max_pool_fwd(x, cfg):
    y = max_pool_forward(x, cfg)
    return y, (x, y)


def _max_pool_bwd(cfg, residuals, dy):
    x, y = residuals
    return (max_pool_dx(x, y, dy, cfg),)


def _avg_pool_fwd(x, cfg):
    return avg_pool_forward(x, cfg), None  # the rule needs no residual at all


def _avg_pool_bwd(cfg, _, dy):
    return (avg_pool_dx(dy, cfg),)


_max_pool_manual = jax.custom_vjp(max_pool_forward, nondiff_argnums=(1,))
_max_pool_manual.defvjp(_max_pool_fwd, _max_pool_bwd)
_avg_pool_manual = jax.custom_vjp(avg_pool_forward, nondiff_argnums=(1,))
_avg_pool_manual.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def _pool_front(core, x, window, stride=None, padding="VALID"):
    """Pooling over 1 to 3 spatial dims of a channels-last ``x``.

    Args:
      x: ``(N, *spatial, C)``.
      window: int or one int per spatial dim.
      stride: int, one per spatial dim, or ``None`` for the window (non-overlapping windows).
      padding: ``"VALID"``, ``"SAME"``, an int or ``(low, high)`` pairs; each pad must be smaller
        than the window.

    Returns:
      ``(N, *out_spatial, C)`` with ``out = (size + lo + hi − window) // stride + 1``.

    See :mod:`jaxconv.ops.pool` for the rules, the tie rule and how padding counts.
    """
    x = _checks.floating("x", x)
    return core(x, _checks.pool_config(x, window, stride, padding))


def _max_pool_front(core, x, window, stride=None, padding="VALID"):
    return _pool_front(core, x, window, stride, padding)


def _avg_pool_front(core, x, window, stride=None, padding="VALID"):
    return _pool_front(core, x, window, stride, padding)


_max_pool_front.__doc__ = "Max pooling. " + _pool_front.__doc__
_avg_pool_front.__doc__ = "Average pooling (padding counts in the divisor). " + _pool_front.__doc__
max_pool, max_pool_autodiff = twins(_max_pool_front, _max_pool_manual, max_pool_forward)
avg_pool, avg_pool_autodiff = twins(_avg_pool_front, _avg_pool_manual, avg_pool_forward)
