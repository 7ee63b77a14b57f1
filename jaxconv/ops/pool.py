r"""Max and average pooling (channels-last, 1 to 3 spatial dims) with hand-derived rules.

For a window W of positions, stride s and padding (lo, hi) per dimension:

avg_pool:  y[o] = (1/|W|) Σ_{k∈W} x_pad[o·s + k]. Padded positions count as zeros *in the
           divisor too* (|W| is always the full window size, PyTorch's ``count_include_pad``).
           This is a depthwise convolution with the constant kernel 1/|W|, so its rule is the
           convolution's: dx = full-conv(rot180(1/|W|), dy), i.e. each dy[o] is spread evenly,
           dy[o]/|W|, over its window, and the padding is cropped off. All the kernel's
           products are by the same 1/|W|, so the rule scales dy once and scatters it over the
           window offsets (pads and adds), never convolving.

max_pool:  y[o] = max_{k∈W} x_pad[o·s + k], padded with −∞ (padding never wins). The rule
           routes dy[o] to the arg-max of its window: dx_pad[o·s + k*] += dy[o]. Tie rule: when
           several positions of one window hold the maximum, the *first* in row-major window
           order (lowest offset, last axis fastest) gets all of dy[o]; the others get nothing.
           Overlapping windows (stride < window) add up their contributions. The forward
           keeps k*[o] (the window offset, a small integer per output) as its only residual,
           so the rule never reads x again. When the windows tile the input (stride = window)
           each input position belongs to exactly one window, and dx is dy upsampled to the
           window grid, kept where the position's own offset equals k*: one elementwise pass.

Both rules loop over the |W| window *offsets* (a handful of static shifts), each one an
elementwise op on the whole output; nothing loops over positions.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _checks, _geometry
from jaxconv._geometry import ConvConfig, PoolConfig
from jaxconv.ops._twins import twins
from jaxconv.ops._varying import laid_out_like


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


def max_pool_argmax(x, y, cfg: PoolConfig):
    """k*[o]: the row-major index of the first window offset holding the maximum y[o].

    An integer array shaped like y (int8 for windows of fewer than 128 positions); a window
    without a hit (y = NaN) gets |W|, which matches no offset and so receives no gradient.
    The window views are the convolution's ``view_k`` (:mod:`jaxconv._geometry`), with
    the kernel offsets k replaced by window offsets.
    """
    window = _as_conv(cfg, groups=1)
    size = math.prod(cfg.window)
    dtype = np.int8 if size < 128 else np.int32
    x_pad = _geometry.pad(x, cfg.padding, -np.inf)
    first = jnp.full(y.shape, size, dtype)
    for index, offset in reversed(list(enumerate(_geometry.offsets(cfg.window)))):
        hit = _geometry.view(x_pad, offset, y.shape[1:-1], window) == y
        first = jnp.where(hit, np.array(index, dtype), first)
    return first


def max_pool_dx(first, dy, cfg: PoolConfig):
    """dx_pad[o·s + k] += dy[o] where k = k*[o]; the padding is cropped off.

    Tiling windows (stride = window): dx_pad is dy upsampled to the window grid, kept where the
    position's offset within its window is k*. Otherwise, one masked scatter per offset (the
    convolution's ``scatter_k``), and overlapping windows add up.
    """
    window = _as_conv(cfg, groups=1)
    padded = _geometry.padded_size(cfg.in_size, cfg.padding)
    if cfg.stride == cfg.window:
        return _geometry.crop(_tiled_dx(first, dy, cfg, padded), cfg.in_size, cfg.padding)
    zero = jnp.zeros_like(dy)
    dx_pad = None
    for index, offset in enumerate(_geometry.offsets(cfg.window)):
        term = _geometry.scatter(jnp.where(first == index, dy, zero), offset, padded, window)
        dx_pad = term if dx_pad is None else dx_pad + term
    return _geometry.crop(dx_pad, cfg.in_size, cfg.padding)


def _tiled_dx(first, dy, cfg: PoolConfig, padded):
    """Non-overlapping windows: dy[o] placed at offset k*[o] of its window on the grid
    (N, O_1, w_1, O_2, w_2, ..., C), reshaped to the input; the positions past the last whole
    window (and the high padding) get zeros."""
    n, out, c = dy.shape[0], dy.shape[1:-1], dy.shape[-1]
    split = (n, *(a for o in out for a in (o, 1)), c)  # each output with a unit window axis
    # each position's row-major offset within its window, on the axes (w_1, w_2, ...)
    offset = np.arange(math.prod(cfg.window), dtype=first.dtype).reshape(
        (1, *(a for w in cfg.window for a in (1, w)), 1))
    tiles = jnp.where(first.reshape(split) == offset, dy.reshape(split), jnp.zeros((), dy.dtype))
    dx = tiles.reshape(n, *(o * w for o, w in zip(out, cfg.window, strict=True)), c)
    rest = [(0, p - o * w, 0) for p, o, w in zip(padded, out, cfg.window, strict=True)]
    return lax.pad(dx, jnp.zeros((), dx.dtype), [(0, 0, 0), *rest, (0, 0, 0)])


def avg_pool_dx(dy, cfg: PoolConfig):
    """dx = full-conv(rot180(1/|W|), dy), without the convolution: dx_pad = Σ_k scatter_k(dy/|W|).

    With a constant kernel the convolution's products are all by 1/|W|, so the rule scales dy
    once and routes it through the |W| window offsets' scatters (max_pool's routing, without the
    arg-max mask): each dy[o]/|W| lands on every position of its window, overlapping windows
    add up, and positions in no window (past the last one, or in gaps when s > w) stay zero.
    The padding is cropped off (``tests/test_pool.py`` checks it equals the convolution form).
    On XLA:CPU it ran as fast as the convolution's shifted products (what the default policy
    picks for this depthwise dX) and, on tiling and strided windows, faster than a broadcast of
    dy/|W| over the windows or a sum of shifted slices of one padded, stride-dilated dy.
    """
    padded = _geometry.padded_size(cfg.in_size, cfg.padding)
    window = _as_conv(cfg, groups=1)
    share = dy * np.array(1 / math.prod(cfg.window), dy.dtype)
    dx_pad = functools.reduce(jnp.add, (_geometry.scatter(share, offset, padded, window)
                                        for offset in _geometry.offsets(cfg.window)))
    return _geometry.crop(dx_pad, cfg.in_size, cfg.padding)


def _max_pool_fwd(x, cfg):
    y = max_pool_forward(x, cfg)
    return y, max_pool_argmax(x, y, cfg)  # the rule needs only k*, never x again


def _max_pool_bwd(cfg, first, dy):
    # dx has the rank and the batch layout of k* (first): laid out like it on an explicit mesh
    return (laid_out_like(first, max_pool_dx, first, dy, cfg),)


def _avg_pool_fwd(x, cfg):
    return avg_pool_forward(x, cfg), None  # the rule needs no residual at all


def _avg_pool_bwd(cfg, _, dy):
    return (avg_pool_dx(dy, cfg),)


_max_pool_manual = jax.custom_vjp(max_pool_forward, nondiff_argnums=(1,))
_max_pool_manual.defvjp(_max_pool_fwd, _max_pool_bwd)
_avg_pool_manual = jax.custom_vjp(avg_pool_forward, nondiff_argnums=(1,))
_avg_pool_manual.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def _pool_front(core, x, window, *, stride=None, padding="VALID", layout="channels_last"):
    """Pooling over 1 to 3 spatial dims.

    Args:
      x: ``channels_last`` (default): ``(N, *spatial, C)``; ``channels_first`` (PyTorch's NCW /
        NCHW / NCDHW): ``(N, C, *spatial)``.
      window: int or one int per spatial dim.
      stride: int, one per spatial dim, or ``None`` for the window (non-overlapping windows).
      padding: ``"VALID"``, ``"SAME"``, an int or ``(low, high)`` pairs; each pad must be smaller
        than the window (``"FULL"`` is refused: its edge windows would be mostly padding).
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``(N, *out_spatial, C)`` (or ``(N, C, *out_spatial)``) with
      ``out = (size + lo + hi − window) // stride + 1``.

    See :mod:`jaxconv.ops.pool` for the rules, the tie rule and how padding counts.
    """
    layout = _checks.layout(layout)
    x = _checks.floating("x", x)
    first = layout == "channels_first" and x.ndim >= 3
    if first:
        x = jnp.moveaxis(x, 1, -1)
    y = core(x, _checks.pool_config(x, window, stride, padding, layout))
    return jnp.moveaxis(y, -1, 1) if first else y


def _max_pool_front(core, x, window, *, stride=None, padding="VALID", layout="channels_last"):
    return _pool_front(core, x, window, stride=stride, padding=padding, layout=layout)


def _avg_pool_front(core, x, window, *, stride=None, padding="VALID", layout="channels_last"):
    return _pool_front(core, x, window, stride=stride, padding=padding, layout=layout)


_max_pool_front.__doc__ = "Max pooling. " + _pool_front.__doc__
_avg_pool_front.__doc__ = "Average pooling (padding counts in the divisor). " + _pool_front.__doc__
max_pool, max_pool_autodiff = twins(_max_pool_front, _max_pool_manual, max_pool_forward)
avg_pool, avg_pool_autodiff = twins(_avg_pool_front, _avg_pool_manual, avg_pool_forward)
