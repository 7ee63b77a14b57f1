r"""Interchangeable formulations of the convolution's forward, dX and dW, and the per-shape choice.

Autodiff must derive one backward program from the forward it is given. A hand-derived rule can
choose, per shape, *how* to compute each of the three products

    y  = x ⋆ w                        (forward)
    dw = x ⋆ dy                       (dy dilated by the stride, the kernel's dilation a stride)
    dx = full-conv(rot180 w, dy)      (dy dilated by the stride, the padding cropped off)

because each is a fixed linear map of its inputs, and any program that computes that map is the
same rule. The formulations below all start from one observation. Write ``view_k(x)`` for the
strided slice ``x_pad[n, o·s + k·d, c]`` (one per kernel offset k, of shape ``(N, *O, C_in)``)
and ``scatter_k`` for its adjoint (``lax.pad`` with interior padding: v[o] goes to ``o·s + k·d``).
Then, with ``w[k]`` the ``(C_in/g, C_out)`` matrix of offset k,

    y      = Σ_k view_k(x) · w[k]                      the lecture's sum over the kernel
    dw[k]  = view_k(x)ᵀ · dy                           one matrix product per offset
    dx_pad = Σ_k scatter_k(dy · w[k]ᵀ)                 each dy[o] sent back along w[k]
    dx     = dx_pad[lo : lo + I]

Formulations (``FORWARD``, ``DX``, ``DW``):

- ``xla``: one ``lax.conv_general_dilated`` (XLA's convolution; on CPU, Eigen's kernels).
- ``shifted``: the sums above as written: |K| matrix products of ``(N·O, C_in)`` by
  ``(C_in, C_out)``, accumulated. No buffer larger than x or y.
- ``im2col``: the |K| views stacked into patches ``(N·O, |K|·C_in)`` and one matrix product
  (forward and dW); ``col2im`` for dX: one product ``dy · W_matᵀ`` to ``(N·O, |K|·C_in)``, then the
  |K| scatters summed. One large product, at the price of a |K|-times larger buffer.
- ``banded``: the last spatial dimension folded into the matrix. Along it, the correlation with
  w is a product with a banded (Toeplitz) matrix: ``T[(i, c), (o, c')] = w[k, c, c']`` where
  ``i = o·s + k·d``, zeros elsewhere. A whole image row ``x_pad[n, *h, :, :]`` (``W_pad·C_in``
  numbers) times T gives the output row ``y[n, *h', :, :]`` (``O_w·C_out``), and the other
  spatial dims are handled by views as in ``shifted``: the forward is one product
  ``(N·O_lead, |K_lead|·W_pad·C_in) × (|K_lead|·W_pad·C_in, O_w·C_out)``, dW is the transposed
  product ``rowsᵀ · dy`` (a ``(W_pad·C_in, O_w·C_out)`` matrix per leading offset, from which
  the band is read back: ``dw[k] = Σ_o G[(o·s + k·d, ·), (o, ·)]``), and dX is ``dy · Tᵀ`` followed
  by the leading-dim scatters. T multiplies by its zeros too (``W_pad / K_w`` times the useful
  work), but the products are large and well shaped where XLA's own convolution is slow: few
  channels and short rows (LeNet, MNIST-1D). The output of a product is also a value XLA cannot
  re-derive inside every consumer, which it does with ``shifted``'s elementwise sums.

Groups are handled by every formulation: channels split into ``(g, C/g)`` and the products become
batched over g (a depthwise convolution becomes elementwise multiply-adds); ``banded`` instead
expands w to its block-diagonal dense kernel (and reads dW's diagonal blocks back).

Who chooses. ``conv_forward`` is shared by ``jaxconv.conv`` and ``jaxconv.autodiff.conv`` (the
principle "one forward, two differentiation modes"), so the *forward* choice is shared: both
modes run the same forward program, and JAX differentiates whatever the choice was. The choice
of the dX and dW formulations exists only for the manual rule, since autodiff has no rule to
choose in: it transposes the forward program. That freedom, and no handicap of the baseline, is
where the manual op's advantage comes from. Benchmarks additionally report autodiff under the
``"xla"`` policy (JAX's own convolution differentiated by JAX), the baseline the issue measured.

Policy (``set_policy``, the context manager ``policy``, or ``$JAXCONV_CONV_POLICY``):

- ``"xla"``: always XLA's convolution: the reproducible off switch.
- ``"auto"`` (default): a shape heuristic, calibrated on a 2-core CPU (see ``_heuristic``); on
  any backend other than CPU it returns ``xla`` unless a cached measurement for that backend
  says otherwise.
- ``"measure"``: the first time a (role, shapes, config, dtype, backend) key is seen, every
  eligible formulation is compiled and timed on random inputs and the fastest is kept, in memory
  and in a JSON file in ``$JAXCONV_CACHE_DIR`` (default ``~/.cache/jaxconv``), written atomically
  (temp file + ``os.replace``). A missing, unreadable, corrupt or stale (other format version)
  cache is ignored and rewritten; a cached name that is no longer an eligible formulation is
  ignored. ``"auto"`` also consults the cache (never writes it).

The choice happens at trace time, from static shapes: it costs nothing at run time, and a
function already traced keeps its choice (set the policy before ``jit`` traces).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._checks import ConvConfig
from jaxconv._io import atomic_open

POLICIES = ("xla", "auto", "measure")
ROLES = ("forward", "dx", "dw")
CACHE_VERSION = 1
_ENV_POLICY = "JAXCONV_CONV_POLICY"
_ENV_CACHE = "JAXCONV_CACHE_DIR"

# --------------------------------------------------------------------------------------------
# Bookkeeping shared by the formulations. x (N, *S, C_in), w (*K, C_in/g, C_out), y (N, *O, C_out)
# --------------------------------------------------------------------------------------------


def _channels_last_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """lhs (N, *S, C), rhs (*K, I, O), out (N, *S, C): lax's NHWC / HWIO, for any nd."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1, *spatial),
        rhs_spec=(nd + 1, nd, *range(nd)),
        out_spec=(0, nd + 1, *spatial),
    )


def _weight_grad_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """dw = x ⋆ dy with the batch axis N contracted: x's channels play the batch, dy's channels
    the output features, and the result comes out directly in the kernel layout (*K, I, O)."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(nd + 1, 0, *spatial),
        rhs_spec=(nd + 1, 0, *spatial),
        out_spec=(nd, nd + 1, *range(nd)),
    )


def effective(k: int, d: int) -> int:
    """The dilated kernel extent d·(k − 1) + 1."""
    return d * (k - 1) + 1


def out_spatial(in_size, kernel, cfg: ConvConfig) -> tuple[int, ...]:
    """Output positions per spatial dim: (I + lo + hi − d(K−1) − 1) // s + 1."""
    return tuple(
        (n + lo + hi - effective(k, d)) // s + 1
        for n, k, s, d, (lo, hi) in zip(
            in_size, kernel, cfg.stride, cfg.dilation, cfg.padding, strict=True
        )
    )


def rot180_transpose(w: jax.Array, groups: int) -> jax.Array:
    """rot180(w) with input and output channels swapped group by group.

    (*K, C_in/g, C_out) -> (*K, C_out/g, C_in): the kernel of the dx convolution.
    """
    nd = w.ndim - 2
    *k, c_in_g, c_out = w.shape
    w = jnp.flip(w, axis=tuple(range(nd)))
    w = w.reshape(*k, c_in_g, groups, c_out // groups)
    w = jnp.moveaxis(w, nd, nd + 2)  # (*K, g, C_out/g, C_in/g)
    w = jnp.swapaxes(w, nd, nd + 1)  # (*K, C_out/g, g, C_in/g)
    return w.reshape(*k, c_out // groups, groups * c_in_g)


def _pad(x: jax.Array, cfg: ConvConfig) -> jax.Array:
    """x_pad: the spatial dims zero-padded by the (lo, hi) pairs."""
    if not any(lo or hi for lo, hi in cfg.padding):
        return x
    return lax.pad(
        x, jnp.array(0, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in cfg.padding), (0, 0, 0)]
    )


def offsets(kernel) -> Iterator[tuple[int, ...]]:
    """Kernel offsets k in row-major order (the order of w.reshape(|K|, ...))."""
    return itertools.product(*(range(k) for k in kernel))


def view(x_pad: jax.Array, offset, out, cfg: ConvConfig) -> jax.Array:
    """view_k(x) = x_pad[n, o·s + k·d, c] for every output o: (N, *O, C), one strided slice."""
    start = (0, *(k * d for k, d in zip(offset, cfg.dilation, strict=True)), 0)
    limit = (
        x_pad.shape[0],
        *((o - 1) * s + k * d + 1 for o, s, k, d in zip(out, cfg.stride, offset, cfg.dilation,
                                                         strict=True)),
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


def padded_size(in_size, padding) -> tuple[int, ...]:
    """The padded spatial size I + lo + hi per dimension."""
    return tuple(n + lo + hi for n, (lo, hi) in zip(in_size, padding, strict=True))


def crop(dx_pad: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dx = dx_pad[lo : lo + I]: the forward's padding is cropped off."""
    if not any(lo or hi for lo, hi in cfg.padding):
        return dx_pad
    start = (0, *(lo for lo, _ in cfg.padding), 0)
    limit = (dx_pad.shape[0], *(lo + n for (lo, _), n in zip(cfg.padding, in_size, strict=True)),
             dx_pad.shape[-1])
    return lax.slice(dx_pad, start, limit)


# Grouped products. a (..., C_in) · wk (C_in/g, C_out) with channels split into (g, C/g):
# groups == 1 is a plain matrix product; otherwise a product batched over the group axis.


def _apply(a: jax.Array, wk: jax.Array, groups: int) -> jax.Array:
    """a (..., C_in) · wk (C_in/g, C_out) -> (..., C_out), group by group."""
    if groups == 1:  # as one 2-D product: XLA:CPU runs those faster than batched shapes
        return jnp.matmul(a.reshape(-1, a.shape[-1]), wk).reshape(*a.shape[:-1], wk.shape[-1])
    lead, c_in_g, c_out = a.shape[:-1], wk.shape[0], wk.shape[1]
    if c_in_g == 1:  # depthwise: each channel times its own C_out/g weights, elementwise
        y = a[..., :, None] * wk.reshape(groups, c_out // groups)
        return y.reshape(*lead, c_out)
    y = jnp.einsum(
        "...gi,igo->...go",
        a.reshape(*lead, groups, c_in_g),
        wk.reshape(c_in_g, groups, c_out // groups),
    )
    return y.reshape(*lead, c_out)


def _apply_t(dy: jax.Array, wk: jax.Array, groups: int) -> jax.Array:
    """dy (..., C_out) · wkᵀ -> (..., C_in), group by group (the adjoint of :func:`_apply`)."""
    if groups == 1:
        return jnp.matmul(dy.reshape(-1, dy.shape[-1]), wk.T).reshape(*dy.shape[:-1], wk.shape[0])
    lead, c_in_g, c_out = dy.shape[:-1], wk.shape[0], wk.shape[1]
    if c_in_g == 1:  # depthwise: Σ over each channel's C_out/g outputs, elementwise
        dy_g = dy.reshape(*lead, groups, c_out // groups)
        return jnp.sum(dy_g * wk.reshape(groups, c_out // groups), axis=-1)
    dx = jnp.einsum(
        "...go,igo->...gi",
        dy.reshape(*lead, groups, c_out // groups),
        wk.reshape(c_in_g, groups, c_out // groups),
    )
    return dx.reshape(*lead, groups * c_in_g)


def _outer(a: jax.Array, dy: jax.Array, groups: int) -> jax.Array:
    """Σ over every leading axis of a (..., C_in) ⊗ dy (..., C_out) -> (C_in/g, C_out)."""
    c_in, c_out = a.shape[-1], dy.shape[-1]
    a2, dy2 = a.reshape(-1, c_in), dy.reshape(-1, c_out)
    if groups == 1:
        return jnp.matmul(a2.T, dy2)
    if c_in == groups:  # depthwise: Σ_m a[m, g] · dy[m, g, j], elementwise then a reduction
        dw = jnp.sum(a2[:, :, None] * dy2.reshape(-1, groups, c_out // groups), axis=0)
        return dw.reshape(1, c_out)
    dw = jnp.einsum(
        "mgi,mgo->igo",
        a2.reshape(-1, groups, c_in // groups),
        dy2.reshape(-1, groups, c_out // groups),
    )
    return dw.reshape(c_in // groups, c_out)


def _patches(x: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """im2col: the |K| views stacked: (N, *O, |K|, C_in)."""
    x_pad = _pad(x, cfg)
    out = out_spatial(x.shape[1:-1], kernel, cfg)
    return jnp.stack([view(x_pad, k, out, cfg) for k in offsets(kernel)], axis=-2)


def _scatter_sum(cols: jax.Array, kernel, padded, cfg: ConvConfig) -> jax.Array:
    """col2im, the adjoint of :func:`_patches`: dx_pad = Σ_k scatter_k(cols[..., k, :]), from
    cols (N, *O, |K|, C) to (N, *padded, C)."""
    dx_pad = None
    for i, k in enumerate(offsets(kernel)):
        term = scatter(cols[..., i, :], k, padded, cfg)
        dx_pad = term if dx_pad is None else dx_pad + term
    return dx_pad


# --------------------------------------------------------------------------------------------
# Forward formulations: (x, w, cfg) -> y (N, *O, C_out), without the bias.
# --------------------------------------------------------------------------------------------


def forward_xla(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y = x ⋆ w as one XLA convolution."""
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=cfg.stride,
        padding=cfg.padding,
        rhs_dilation=cfg.dilation,
        dimension_numbers=_channels_last_numbers(cfg.nd),
        feature_group_count=cfg.groups,
    )


def forward_shifted(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y = Σ_k view_k(x) · w[k]: |K| shifted matrix products."""
    kernel = w.shape[: cfg.nd]
    x_pad = _pad(x, cfg)
    out = out_spatial(x.shape[1:-1], kernel, cfg)
    w_flat = w.reshape(-1, *w.shape[-2:])
    y = None
    for i, k in enumerate(offsets(kernel)):
        term = _apply(view(x_pad, k, out, cfg), w_flat[i], cfg.groups)
        y = term if y is None else y + term
    return y


def forward_im2col(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y = patches(x) · W_mat: one matrix product (N·O, |K|·C_in) × (|K|·C_in, C_out)."""
    kernel = w.shape[: cfg.nd]
    cols = _patches(x, kernel, cfg)  # (N, *O, |K|, C_in)
    n_k, (c_in_g, c_out), g = math.prod(kernel), w.shape[-2:], cfg.groups
    if g == 1:
        y = jnp.matmul(cols.reshape(-1, n_k * c_in_g), w.reshape(-1, c_out))
        return y.reshape(*cols.shape[:-2], c_out)
    lead = cols.shape[:-2]
    y = jnp.einsum(
        "...kgi,kigo->...go",
        cols.reshape(*lead, n_k, g, c_in_g),
        w.reshape(n_k, c_in_g, g, c_out // g),
    )
    return y.reshape(*lead, c_out)


def dense_kernel(w: jax.Array, groups: int) -> jax.Array:
    """(*K, C_in/g, C_out) -> (*K, C_in, C_out): the grouped kernel as the block-diagonal dense
    one (input channel h·C_in/g + i feeds output g'·C_out/g + o only when h = g')."""
    if groups == 1:
        return w
    *k, c_in_g, c_out = w.shape
    w = w.reshape(*k, c_in_g, groups, c_out // groups)
    dense = jnp.einsum("...igo,hg->...higo", w, jnp.eye(groups, dtype=w.dtype))
    return dense.reshape(*k, groups * c_in_g, c_out)


def grouped_kernel(dense: jax.Array, groups: int) -> jax.Array:
    """The adjoint of :func:`dense_kernel`: the diagonal blocks, (*K, C_in, C_out) ->
    (*K, C_in/g, C_out)."""
    if groups == 1:
        return dense
    *k, c_in, c_out = dense.shape
    nd = len(k)
    blocks = dense.reshape(*k, groups, c_in // groups, groups, c_out // groups)
    diagonal = jnp.diagonal(blocks, axis1=nd, axis2=nd + 2)  # (*K, C_in/g, C_out/g, g)
    return jnp.moveaxis(diagonal, -1, -2).reshape(*k, c_in // groups, c_out)


def band(kernel: int, padded: int, out: int, stride: int, dilation: int) -> np.ndarray:
    """The band's pattern S[k, i, o] = [i = o·s + k·d]: (K, W_pad, O), a constant of 0s and 1s."""
    pattern = np.zeros((kernel, padded, out), np.float32)
    o = np.arange(out)
    for k in range(kernel):
        pattern[k, o * stride + k * dilation, o] = 1
    return pattern


def _lead(cfg: ConvConfig) -> ConvConfig:
    """The leading spatial dims' bookkeeping (all but the last, already padded)."""
    return ConvConfig(stride=cfg.stride[:-1], padding=((0, 0),) * (cfg.nd - 1),
                      dilation=cfg.dilation[:-1], groups=1)


def banded_matrix(w: jax.Array, padded: int, out: int, cfg: ConvConfig) -> jax.Array:
    """T: (|K_lead|·W_pad·C_in, O_w·C_out), T[(l, i, c), (o, c')] = Σ_k S[k, i, o]·w[l, k, c, c'],
    with l the leading kernel offset and S the :func:`band` of the last spatial dim."""
    w = dense_kernel(w, cfg.groups)
    k_w, c_in, c_out = w.shape[-3:]
    pattern = band(k_w, padded, out, cfg.stride[-1], cfg.dilation[-1])
    t = jnp.einsum("kio,lkcd->licod", pattern.astype(w.dtype), w.reshape(-1, k_w, c_in, c_out))
    return t.reshape(-1, out * c_out)


def _row_views(x: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """The padded rows ``(N, *S_lead, W_pad·C_in)``, viewed once per leading kernel offset:
    ``(N·O_lead, |K_lead|·W_pad·C_in)``, the left operand of the banded products."""
    x_pad = _pad(x, cfg)
    views = _patches(x_pad.reshape(*x_pad.shape[:-2], -1), kernel[:-1], _lead(cfg))
    return views.reshape(-1, views.shape[-2] * views.shape[-1])


def forward_banded(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y = rows(x) · T: one product with the banded matrix of the last spatial dim."""
    kernel = w.shape[: cfg.nd]
    out = out_spatial(x.shape[1:-1], kernel, cfg)
    padded = x.shape[-2] + sum(cfg.padding[-1])
    t = banded_matrix(w, padded, out[-1], cfg)
    y = jnp.matmul(_row_views(x, kernel, cfg), t)
    return y.reshape(x.shape[0], *out, w.shape[-1])


# --------------------------------------------------------------------------------------------
# dX formulations: (dy, w, in_size, cfg) -> dx (N, *S, C_in).
# --------------------------------------------------------------------------------------------


def dx_xla(dy: jax.Array, w: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dx = full-conv(rot180 w, dy) as one XLA convolution.

    dy is dilated by the stride (``lhs_dilation``), padded by d(K−1) on each side to make the
    correlation *full* (plus the remainder r on the high side), correlated with the rotated,
    channel-transposed kernel, and the forward's padding (lo, hi) is cropped off again; the crop
    is folded into the padding, which may therefore be negative.
    """
    pads = []
    for n_in, n_out, k, s, d, (lo, hi) in zip(
        in_size, dy.shape[1:-1], w.shape[: cfg.nd], cfg.stride, cfg.dilation, cfg.padding,
        strict=True,
    ):
        full = effective(k, d) - 1
        remainder = n_in + lo + hi - effective(k, d) - (n_out - 1) * s
        pads.append((full - lo, full + remainder - hi))
    return lax.conv_general_dilated(
        dy,
        rot180_transpose(w, cfg.groups),
        window_strides=(1,) * cfg.nd,
        padding=pads,
        lhs_dilation=cfg.stride,
        rhs_dilation=cfg.dilation,
        dimension_numbers=_channels_last_numbers(cfg.nd),
        feature_group_count=cfg.groups,
    )


def dx_shifted(dy: jax.Array, w: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dx_pad = Σ_k scatter_k(dy · w[k]ᵀ), then cropped: |K| products, |K| scatters."""
    kernel = w.shape[: cfg.nd]
    padded = padded_size(in_size, cfg.padding)
    w_flat = w.reshape(-1, *w.shape[-2:])
    dx_pad = None
    for i, k in enumerate(offsets(kernel)):
        term = scatter(_apply_t(dy, w_flat[i], cfg.groups), k, padded, cfg)
        dx_pad = term if dx_pad is None else dx_pad + term
    return crop(dx_pad, in_size, cfg)


def dx_col2im(dy: jax.Array, w: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dcols = dy · W_matᵀ (one product to (N, *O, |K|, C_in)), then dx_pad = Σ_k scatter_k."""
    kernel = w.shape[: cfg.nd]
    n_k, (c_in_g, c_out), g = math.prod(kernel), w.shape[-2:], cfg.groups
    lead = dy.shape[:-1]
    if g == 1:
        dcols = jnp.matmul(dy.reshape(-1, c_out), w.reshape(-1, c_out).T)
        dcols = dcols.reshape(*lead, n_k, c_in_g)
    else:
        dcols = jnp.einsum(
            "...go,kigo->...kgi",
            dy.reshape(*lead, g, c_out // g),
            w.reshape(n_k, c_in_g, g, c_out // g),
        ).reshape(*lead, n_k, g * c_in_g)
    return crop(_scatter_sum(dcols, kernel, padded_size(in_size, cfg.padding), cfg), in_size,
                cfg)


def dx_banded(dy: jax.Array, w: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dx_rows = dy · Tᵀ (one product, a padded row per leading offset), then the leading-dim
    scatters summed and the padding cropped."""
    kernel = w.shape[: cfg.nd]
    padded = padded_size(in_size, cfg.padding)
    t = banded_matrix(w, padded[-1], dy.shape[-2], cfg)
    n_lead = math.prod(kernel[:-1])
    rows = jnp.matmul(dy.reshape(-1, t.shape[1]), t.T)
    rows = rows.reshape(*dy.shape[:-2], n_lead, t.shape[0] // n_lead)
    dx_rows = _scatter_sum(rows, kernel[:-1], padded[:-1], _lead(cfg))
    dx_pad = dx_rows.reshape(dy.shape[0], *padded, -1)
    return crop(dx_pad, in_size, cfg)


# --------------------------------------------------------------------------------------------
# dW formulations: (x, dy, kernel, cfg) -> dw (*K, C_in/g, C_out).
# --------------------------------------------------------------------------------------------


def dw_xla(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """dw = x ⋆ dy as one XLA convolution over the batch.

    dw[k] = Σ_{n,o} x_pad[n, o·s + k·d] dy[n, o] is a correlation of x with dy in which dy is
    dilated by the stride s and slides with step d (the kernel's dilation). The high padding is
    trimmed by the remainder r = (I + lo + hi − d(K−1) − 1) mod s: those trailing inputs never
    reached the forward output, so they get no gradient.
    """
    pads = []
    for n_in, n_out, k, s, d, (lo, _) in zip(
        x.shape[1:-1], dy.shape[1:-1], kernel, cfg.stride, cfg.dilation, cfg.padding, strict=True
    ):
        pads.append((lo, (k - 1) * d + (n_out - 1) * s + 1 - n_in - lo))
    return lax.conv_general_dilated(
        x,
        dy,
        window_strides=cfg.dilation,
        padding=pads,
        rhs_dilation=cfg.stride,
        dimension_numbers=_weight_grad_numbers(cfg.nd),
        batch_group_count=cfg.groups,
    )


def dw_shifted(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """dw[k] = view_k(x)ᵀ · dy: |K| products (C_in, N·O) × (N·O, C_out), stacked."""
    x_pad = _pad(x, cfg)
    out = dy.shape[1:-1]
    dw = [_outer(view(x_pad, k, out, cfg), dy, cfg.groups) for k in offsets(kernel)]
    return jnp.stack(dw).reshape(*kernel, *dw[0].shape)


def dw_im2col(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """dw = patches(x)ᵀ · dy: one product (|K|·C_in, N·O) × (N·O, C_out)."""
    cols = _patches(x, kernel, cfg)  # (N, *O, |K|, C_in)
    n_k, c_in, c_out, g = math.prod(kernel), x.shape[-1], dy.shape[-1], cfg.groups
    if g == 1:
        dw = jnp.matmul(cols.reshape(-1, n_k * c_in).T, dy.reshape(-1, c_out))
        return dw.reshape(*kernel, c_in, c_out)
    dw = jnp.einsum(
        "mkgi,mgo->kigo",
        cols.reshape(-1, n_k, g, c_in // g),
        dy.reshape(-1, g, c_out // g),
    )
    return dw.reshape(*kernel, c_in // g, c_out)


def dw_banded(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """G = rows(x)ᵀ · dy (one product), then the band read back: dw[l, k] = Σ_{i,o} S[k, i, o] ·
    G[(l, i, ·), (o, ·)], and the diagonal blocks kept for groups."""
    out = dy.shape[1:-1]
    c_out = dy.shape[-1]
    rows = _row_views(x, kernel, cfg)
    g = jnp.matmul(rows.T, dy.reshape(-1, out[-1] * c_out))
    padded = x.shape[-2] + sum(cfg.padding[-1])
    g = g.reshape(-1, padded, x.shape[-1], out[-1], c_out)  # (|K_lead|, W_pad, C_in, O_w, C_out)
    pattern = band(kernel[-1], padded, out[-1], cfg.stride[-1], cfg.dilation[-1])
    dw = jnp.einsum("kio,licod->lkcd", pattern.astype(g.dtype), g)
    return grouped_kernel(dw.reshape(*kernel, x.shape[-1], c_out), cfg.groups)


FORWARD: dict[str, Callable] = {
    "xla": forward_xla, "shifted": forward_shifted, "im2col": forward_im2col,
    "banded": forward_banded,
}
DX: dict[str, Callable] = {
    "xla": dx_xla, "shifted": dx_shifted, "col2im": dx_col2im, "banded": dx_banded,
}
DW: dict[str, Callable] = {
    "xla": dw_xla, "shifted": dw_shifted, "im2col": dw_im2col, "banded": dw_banded,
}
TABLES = {"forward": FORWARD, "dx": DX, "dw": DW}


# --------------------------------------------------------------------------------------------
# The problem a choice is made for, and eligibility.
# --------------------------------------------------------------------------------------------


def problem(x_shape, w_shape, cfg: ConvConfig, dtype) -> dict:
    """A JSON-able, hashable-by-key description of one convolution (the choice's input)."""
    return {
        "x": list(x_shape), "w": list(w_shape), "stride": list(cfg.stride),
        "padding": [list(p) for p in cfg.padding], "dilation": list(cfg.dilation),
        "groups": cfg.groups, "dtype": jnp.dtype(dtype).name,
    }


def _cols_bytes(x_shape, w_shape, cfg: ConvConfig, dtype) -> int:
    out = out_spatial(x_shape[1:-1], w_shape[:-2], cfg)
    n_k = math.prod(w_shape[:-2])
    return x_shape[0] * math.prod(out) * n_k * x_shape[-1] * jnp.dtype(dtype).itemsize


def _banded_bytes(x_shape, w_shape, cfg: ConvConfig, dtype) -> tuple[int, int]:
    """(the banded matrix T, the row views): |K_lead|·W_pad·C_in·O_w·C_out and
    N·|O_lead|·|K_lead|·W_pad·C_in elements, in bytes."""
    out = out_spatial(x_shape[1:-1], w_shape[:-2], cfg)
    row = (x_shape[-2] + sum(cfg.padding[-1])) * x_shape[-1] * math.prod(w_shape[:-3])
    size = jnp.dtype(dtype).itemsize
    return row * out[-1] * w_shape[-1] * size, x_shape[0] * math.prod(out[:-1]) * row * size


# A |K|-times larger patch buffer is allowed up to this size (bytes); above it, im2col/col2im
# are ineligible and ``shifted`` (no buffer larger than x or y) takes their place. This bounds the
# extra memory the rules may cost over autodiff, which keeps only x, w and XLA's own workspace.
# The banded row views obey the same cap.
IM2COL_MAX_BYTES = 256 * 2**20
# The banded matrix T grows with the row length squared (W_pad·O_w): beyond this size its zeros
# cost more than any convolution algorithm, so ``banded`` is ineligible.
BANDED_MAX_BYTES = 16 * 2**20


def eligible(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> tuple[str, ...]:
    """The formulations of ``role`` that may be chosen for this problem.

    Every formulation handles stride, padding, dilation and groups; the only restrictions are
    memory: the im2col/col2im buffer and the banded row views must stay under
    ``IM2COL_MAX_BYTES``, the banded matrix under ``BANDED_MAX_BYTES``.
    """
    names = tuple(TABLES[role])
    if _cols_bytes(x_shape, w_shape, cfg, dtype) > IM2COL_MAX_BYTES:
        names = tuple(n for n in names if n not in ("im2col", "col2im"))
    matrix, rows = _banded_bytes(x_shape, w_shape, cfg, dtype)
    if matrix > BANDED_MAX_BYTES or rows > IM2COL_MAX_BYTES:
        names = tuple(n for n in names if n != "banded")
    return names


# --------------------------------------------------------------------------------------------
# The heuristic (policy "auto", CPU).
# --------------------------------------------------------------------------------------------


def _banded_suits(x_shape, w_shape, cfg: ConvConfig, names) -> bool:
    """Where the banded products beat XLA's convolution on CPU: 2-D and 3-D, no groups, at most
    8 input channels (XLA's convolution runs at a few percent of the matmul rate there), and
    rows short enough that T's zeros cost at most ~8× the useful work (W_pad ≤ 8·K_w,eff). In 1-D
    there are no leading rows to share T between (the product's M is the batch alone)."""
    nd, c_in = len(w_shape) - 2, x_shape[-1]
    width = x_shape[-2] + sum(cfg.padding[-1])
    return ("banded" in names and nd >= 2 and cfg.groups == 1 and c_in <= 8
            and width <= 8 * effective(w_shape[-3], cfg.dilation[-1]))


def _heuristic(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> str:
    """The CPU choice without measuring.

    XLA:CPU runs a convolution fast when it is *plain*: no dilation of either operand, more
    than a few input channels per group, 1-D or 2-D. The forward of a strided or dilated layer
    is plain, but its rules are not: XLA's dx of a strided layer dilates dy by the stride
    (``lhs_dilation``, multiplying all the inserted zeros), and its dw of a strided or dilated
    layer dilates dy by the stride or steps by the dilation. Those are the cases the rule
    computes differently:

    - depthwise (C_in/g = 1, g > 1): ``shifted`` for all three (elementwise multiply-adds);
    - few input channels on short rows, 2-D or 3-D (:func:`_banded_suits`: LeNet's layers):
      dx and dw ``banded``; the forward ``shifted`` for one input channel, ``banded`` in 3-D,
      else ``xla``;
    - one input channel otherwise: forward ``shifted`` (|K| outer products); dx ``shifted`` in
      1-D, ``col2im`` otherwise; dw as below;
    - dx: ``xla`` when the stride is 1, else ``col2im`` (``shifted`` above the memory cap);
    - dw in 1-D: ``xla`` when stride and dilation are 1, else ``im2col``;
    - dw from 2-D on, where XLA's batch-contracting convolution is slow: ``shifted`` (|K|
      products over all N·O positions, each already large) from 16 input channels per group
      on, ``im2col`` (one product of depth |K|·C_in) below that; ``xla`` for one input channel
      when stride and dilation are 1; always ``shifted`` above the im2col memory cap;
    - otherwise the forward stays ``xla``.

    Calibrated on this project's 2-core CPU (float32) with ``experiments/bench_layers.py``
    (``--calibrate`` for the formulations alone; the layer table for forward+backward) and the
    LeNet-5 training step of ``experiments/bench_train.py``.
    """
    names = eligible(role, x_shape, w_shape, cfg, dtype)
    c_in_g, nd = w_shape[-2], len(w_shape) - 2
    if c_in_g == 1 and cfg.groups > 1:
        return "shifted"
    plain_stride = all(s == 1 for s in cfg.stride)
    plain_dilation = all(d == 1 for d in cfg.dilation)
    if _banded_suits(x_shape, w_shape, cfg, names):
        if role != "forward":
            return "banded"
        return "shifted" if c_in_g == 1 else ("banded" if nd == 3 else "xla")
    if role == "forward":
        return "shifted" if c_in_g == 1 else "xla"
    if role == "dx":
        if c_in_g == 1:
            return "shifted" if nd == 1 else ("col2im" if "col2im" in names else "shifted")
        if plain_stride:
            return "xla"
        return "col2im" if "col2im" in names else "shifted"
    plain = plain_stride and plain_dilation
    if plain and (nd == 1 or c_in_g == 1):
        return "xla"
    if "im2col" in names and (nd == 1 or c_in_g < 16):
        return "im2col"
    return "shifted"


# --------------------------------------------------------------------------------------------
# Measurement and its on-disk cache (policy "measure").
# --------------------------------------------------------------------------------------------

_lock = threading.Lock()
_state: dict = {"policy": None, "memory": {}, "loaded": None, "forced": {}}


def cache_path() -> Path:
    """$JAXCONV_CACHE_DIR/conv_algorithms.json (default ~/.cache/jaxconv)."""
    root = os.environ.get(_ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "jaxconv")
    return Path(root) / "conv_algorithms.json"


def _key(role: str, prob: dict, backend: str) -> str:
    return json.dumps({"role": role, "backend": backend, **prob}, sort_keys=True)


def load_cache() -> dict[str, str]:
    """The cached choices; ``{}`` when the file is missing, unreadable, corrupt or stale."""
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("choices")
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)}


def _save_cache(entries: dict[str, str]) -> None:
    """Write the cache atomically (temp file in the same folder, then ``os.replace``); a cache
    that cannot be written is silently skipped: it is an optimisation, never a requirement."""
    with contextlib.suppress(OSError), atomic_open(cache_path()) as f:
        json.dump({"version": CACHE_VERSION, "choices": entries}, f, indent=0, sort_keys=True)


def _cached(role: str, prob: dict, backend: str, names) -> str | None:
    key = _key(role, prob, backend)
    if key in _state["memory"]:
        choice = _state["memory"][key]
    else:
        if _state["loaded"] is None:
            _state["loaded"] = load_cache()
        choice = _state["loaded"].get(key)
    return choice if choice in names else None


def measure(role: str, x_shape, w_shape, cfg: ConvConfig, dtype, repeats: int = 5) -> dict:
    """Time every eligible formulation of ``role`` on random inputs: {name: seconds}.

    All are compiled first (compile time excluded), warmed up once, then run round-robin
    ``repeats`` times; the statistic is the *minimum*, the least disturbed by other load on a
    shared machine.
    """
    kernel = tuple(w_shape[:-2])
    y_shape = (x_shape[0], *out_spatial(x_shape[1:-1], kernel, cfg), w_shape[-1])
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, x_shape, dtype)
    w = jax.random.normal(k2, w_shape, dtype)
    dy = jax.random.normal(k3, y_shape, dtype)
    in_size = tuple(x_shape[1:-1])
    calls = {
        "forward": lambda f: (lambda x, w: f(x, w, cfg), (x, w)),
        "dx": lambda f: (lambda dy, w: f(dy, w, in_size, cfg), (dy, w)),
        "dw": lambda f: (lambda x, dy: f(x, dy, kernel, cfg), (x, dy)),
    }[role]
    runners = {}
    for name in eligible(role, x_shape, w_shape, cfg, dtype):
        fn, args = calls(TABLES[role][name])
        compiled = jax.jit(fn).lower(*args).compile()
        jax.block_until_ready(compiled(*args))
        runners[name] = (compiled, args)
    timings = {name: math.inf for name in runners}
    for _ in range(repeats):
        for name, (compiled, args) in runners.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            timings[name] = min(timings[name], time.perf_counter() - t0)
    return timings


def _measured(role: str, x_shape, w_shape, cfg: ConvConfig, dtype, backend: str) -> str:
    prob = problem(x_shape, w_shape, cfg, dtype)
    names = eligible(role, x_shape, w_shape, cfg, dtype)
    with _lock:
        choice = _cached(role, prob, backend, names)
    if choice is not None:
        return choice
    # Measuring runs concrete computations while the caller is being traced; that is allowed,
    # and ensure_compile_time_eval keeps them out of the caller's trace.
    with jax.ensure_compile_time_eval():
        timings = measure(role, x_shape, w_shape, cfg, dtype)
    choice = min(timings, key=timings.get)
    key = _key(role, prob, backend)
    with _lock:
        _state["memory"][key] = choice
        entries = load_cache()  # merge with what other processes wrote meanwhile
        entries.update(_state["memory"])
        _save_cache(entries)
        _state["loaded"] = entries
    return choice


# --------------------------------------------------------------------------------------------
# Policy and the choice.
# --------------------------------------------------------------------------------------------


def get_policy() -> str:
    """The current policy: set_policy's, else $JAXCONV_CONV_POLICY, else "auto"."""
    if _state["policy"] is not None:
        return _state["policy"]
    env = os.environ.get(_ENV_POLICY, "").strip().lower()
    if env and env not in POLICIES:
        raise ValueError(f"${_ENV_POLICY} must be one of {POLICIES}, got {env!r}")
    return env or "auto"


def set_policy(name: str | None) -> None:
    """Choose how conv formulations are picked: "xla", "auto" or "measure" (None: back to the
    environment variable / default). Takes effect for functions traced afterwards."""
    if name is not None and name not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES} or None, got {name!r}")
    _state["policy"] = name


@contextlib.contextmanager
def policy(name: str | None):
    """``with policy("xla"): ...`` traces the enclosed code under that policy."""
    previous = _state["policy"]
    set_policy(name)
    try:
        yield
    finally:
        _state["policy"] = previous


@contextlib.contextmanager
def use(forward: str | None = None, dx: str | None = None, dw: str | None = None):
    """Force formulations by name for code traced inside the block (whatever the policy), e.g.
    ``with use(forward="shifted", dw="im2col"): ...``; a role left ``None`` follows the policy.
    An ineligible choice (im2col over the memory cap) is still honoured: forcing is explicit."""
    forced = {"forward": forward, "dx": dx, "dw": dw}
    for role, name in forced.items():
        if name is not None and name not in TABLES[role]:
            raise ValueError(f"{role} must be one of {tuple(TABLES[role])} or None, got {name!r}")
    previous = dict(_state["forced"])
    _state["forced"] = {**previous, **{r: n for r, n in forced.items() if n is not None}}
    try:
        yield
    finally:
        _state["forced"] = previous


def clear_memory() -> None:
    """Forget the in-memory choices (the disk cache is re-read on next use)."""
    with _lock:
        _state["memory"].clear()
        _state["loaded"] = None


def choose(role: str, x_shape, w_shape, cfg: ConvConfig, dtype) -> str:
    """The formulation of ``role`` ("forward", "dx" or "dw") for this problem: the one forced
    by :func:`use`, else the policy's."""
    if role in _state["forced"]:
        return _state["forced"][role]
    mode = get_policy()
    if mode == "xla":
        return "xla"
    backend = jax.default_backend()
    if mode == "measure":
        return _measured(role, tuple(x_shape), tuple(w_shape), cfg, dtype, backend)
    names = eligible(role, x_shape, w_shape, cfg, dtype)
    prob = problem(x_shape, w_shape, cfg, dtype)
    with _lock:
        cached = _cached(role, prob, backend, names)
    if cached is not None:
        return cached
    if backend != "cpu":
        return "xla"
    return _heuristic(role, x_shape, w_shape, cfg, dtype)


def run(role: str, *args, x_shape, w_shape, cfg: ConvConfig, dtype) -> jax.Array:
    """Call the chosen formulation of ``role`` with ``args``."""
    return TABLES[role][choose(role, x_shape, w_shape, cfg, dtype)](*args)
