r"""The geometry of a sliding window: configurations, sizes, padding, views, scatters and crops.

One module for the bookkeeping that the convolution, the pools and the argument checks share.
Per spatial dimension, with input size I, kernel (or window) size K, stride s, dilation d and
padding (lo, hi):

    effective size   K_eff = d·(K − 1) + 1
    padded size      P     = I + lo + hi
    output size      O     = (P − K_eff) // s + 1

Write ``view_k(x)`` for the strided slice ``x_pad[n, o·s + k·d, c]`` (one per kernel offset k, of
shape ``(N, *O, C)``) and ``scatter_k`` for its adjoint (v[o] goes to ``o·s + k·d``, zeros
elsewhere). The forward of a convolution is ``Σ_k view_k(x) · w[k]``, the backward routes dy
back through ``scatter_k``, and ``crop`` removes the forward's padding from dx again; a pool's
window is the same bookkeeping with the window offsets in place of the kernel's.

Shapes are channels-last throughout: ``(N, *spatial, C)``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """The fully explicit, hashable description of one convolution (channels-last, no batch).

    Attributes:
      stride, dilation: per spatial dimension.
      padding: one ``(low, high)`` pair per spatial dimension.
      groups: the number of channel groups (``C_in`` for depthwise).
    """

    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int

    @property
    def nd(self) -> int:
        return len(self.stride)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """A pooling window: per-dimension window, stride, ``(low, high)`` padding and input size."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    in_size: tuple[int, ...]


def effective(k: int, d: int) -> int:
    """The dilated kernel extent d·(k − 1) + 1."""
    return d * (k - 1) + 1


def padded_size(in_size: Sequence[int], padding) -> tuple[int, ...]:
    """The padded spatial size I + lo + hi per dimension."""
    return tuple(n + lo + hi for n, (lo, hi) in zip(in_size, padding, strict=True))


def out_spatial(in_size: Sequence[int], kernel: Sequence[int], cfg: ConvConfig) -> tuple[int, ...]:
    """Output positions per spatial dim: (I + lo + hi − d(K−1) − 1) // s + 1."""
    return tuple(
        (p - effective(k, d)) // s + 1
        for p, k, s, d in zip(padded_size(in_size, cfg.padding), kernel, cfg.stride,
                              cfg.dilation, strict=True)
    )


def pad(x: jax.Array, padding, value=0) -> jax.Array:
    """x_pad: the spatial dims of ``x`` (N, *S, C) padded by the (lo, hi) pairs with ``value``
    (zeros for a convolution, −∞ for a max pool)."""
    if not any(lo or hi for lo, hi in padding):
        return x
    return lax.pad(x, jnp.array(value, x.dtype),
                   [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)])


def offsets(kernel: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Kernel offsets k in row-major order (the order of w.reshape(|K|, ...))."""
    return itertools.product(*(range(k) for k in kernel))


def view(x_pad: jax.Array, offset, out, cfg: ConvConfig) -> jax.Array:
    """view_k(x) = x_pad[n, o·s + k·d, c] for every output o: (N, *O, C), one strided slice."""
    start = (0, *(k * d for k, d in zip(offset, cfg.dilation, strict=True)), 0)
    limit = (
        x_pad.shape[0],
        *((o - 1) * s + k * d + 1
          for o, s, k, d in zip(out, cfg.stride, offset, cfg.dilation, strict=True)),
        x_pad.shape[-1],
    )
    return lax.slice(x_pad, start, limit, (1, *cfg.stride, 1))


def scatter(v: jax.Array, offset, padded, cfg: ConvConfig) -> jax.Array:
    """scatter_k, the adjoint of view_k: v[n, o, c] goes to x_pad[n, o·s + k·d, c], zeros
    elsewhere; ``padded`` is the padded spatial size I + lo + hi."""
    config = [(0, 0, 0)]
    for o, s, k, d, p in zip(v.shape[1:-1], cfg.stride, offset, cfg.dilation, padded,
                             strict=True):
        config.append((k * d, p - k * d - (o - 1) * s - 1, s - 1))
    config.append((0, 0, 0))
    return lax.pad(v, jnp.array(0, v.dtype), config)


def crop(dx_pad: jax.Array, in_size, padding) -> jax.Array:
    """dx = dx_pad[lo : lo + I]: the forward's padding is cropped off."""
    if not any(lo or hi for lo, hi in padding):
        return dx_pad
    start = (0, *(lo for lo, _ in padding), 0)
    limit = (dx_pad.shape[0], *(lo + n for (lo, _), n in zip(padding, in_size, strict=True)),
             dx_pad.shape[-1])
    return lax.slice(dx_pad, start, limit)
