r"""The convolution's faster equivalents: shifted products, im2col / col2im, banded products.

The reference forward, dX and dW are the convolution forms of :mod:`jaxconv.ops.conv` (one XLA
convolution each, the lecture's formulas). Each of the three is a fixed linear map of its inputs,
and any program that computes that map is the same rule; the formulations below compute it with
matrix products, and the tests prove every one equal to the reference (float64, every
configuration it may be chosen for). With ``view_k`` and ``scatter_k`` of :mod:`jaxconv._geometry`
and ``w[k]`` the ``(C_in/g, C_out)`` matrix of kernel offset k,

    y      = Σ_k view_k(x) · w[k]                      the lecture's sum over the kernel
    dw[k]  = view_k(x)ᵀ · dy                           one matrix product per offset
    dx_pad = Σ_k scatter_k(dy · w[k]ᵀ)                 each dy[o] sent back along w[k]
    dx     = dx_pad[lo : lo + I]

- ``shifted``: the sums above as written: |K| matrix products of ``(N·O, C_in)`` by
  ``(C_in, C_out)``, accumulated. No buffer larger than x or y.
- ``im2col``: the |K| views stacked into patches ``(N·O, |K|·C_in)`` and one matrix product
  (forward and dW); ``col2im`` for dX: one product ``dy · W_matᵀ`` to ``(N·O, |K|·C_in)``, then the
  |K| scatters summed. One large product, at the price of a |K|-times larger buffer.
- ``winograd``: F(2×2, 3×3) for 2-D, 3×3, stride-1, undilated, ungrouped layers: 16
  multiplications per 2×2 output tile and channel pair instead of 36. dX is the same
  correlation (rot180 W over dY), dW the forward's adjoint in w (16 products over the tiles).
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
  channels and short rows (LeNet, MNIST-1D).

Groups are handled by every formulation: channels split into ``(g, C/g)`` and the products become
batched over g (a depthwise convolution becomes elementwise multiply-adds); ``banded`` instead
expands w to its block-diagonal dense kernel (and reads dW's diagonal blocks back).

Signatures, as the reference's: forward ``(x, w, cfg) -> y`` (no bias), dX
``(dy, w, in_size, cfg) -> dx`` and dW ``(x, dy, kernel, cfg) -> dw``, with x ``(N, *S, C_in)``,
w ``(*K, C_in/g, C_out)`` and y, dy ``(N, *O, C_out)``. Which one runs is
:mod:`jaxconv.ops._choice`'s decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv._geometry import (
    ConvConfig,
    crop,
    offsets,
    out_spatial,
    pad,
    padded_size,
    scatter,
    view,
)

# --------------------------------------------------------------------------------------------
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
    x_pad = pad(x, cfg.padding)
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
# Forward: (x, w, cfg) -> y (N, *O, C_out), without the bias.
# --------------------------------------------------------------------------------------------


def forward_shifted(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y = Σ_k view_k(x) · w[k]: |K| shifted matrix products."""
    kernel = w.shape[: cfg.nd]
    x_pad = pad(x, cfg.padding)
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
    x_pad = pad(x, cfg.padding)
    views = _patches(x_pad.reshape(*x_pad.shape[:-2], -1), kernel[:-1], _lead(cfg))
    return views.reshape(-1, views.shape[-2] * views.shape[-1])


def forward_banded(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y = rows(x) · T: one product with the banded matrix of the last spatial dim."""
    kernel = w.shape[: cfg.nd]
    out = out_spatial(x.shape[1:-1], kernel, cfg)
    padded = padded_size(x.shape[1:-1], cfg.padding)[-1]
    t = banded_matrix(w, padded, out[-1], cfg)
    y = jnp.matmul(_row_views(x, kernel, cfg), t)
    return y.reshape(x.shape[0], *out, w.shape[-1])

# Winograd F(2×2, 3×3) (Lavin & Gray, 2016): a 2×2 output tile Y from a 4×4 input tile d with 16
# multiplications per channel pair instead of 36, Y = Aᵀ [(G w Gᵀ) ⊙ (Bᵀ d B)] A. Each of the
# three matrices is applied along one axis at a time as the sums it stands for, on whole arrays
# (one per tile position), so XLA fuses the transforms into elementwise passes; across channels
# the ⊙ becomes 16 matrix products (N·tiles, C_in) × (C_in, C_out), one per (ξ, ν).


def _bt(d0, d1, d2, d3):
    """Bᵀ d along one axis: 4 input rows -> 4 transformed rows."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _g(w0, w1, w2):
    """G w along one axis: 3 taps -> 4."""
    return w0, (w0 + w1 + w2) / 2, (w0 - w1 + w2) / 2, w2


def _at(m0, m1, m2, m3):
    """Aᵀ m along one axis: 4 products -> 2 outputs."""
    return m0 + m1 + m2, m1 - m2 - m3


def _a(y0, y1):
    """A y, the adjoint of :func:`_at`: 2 output cotangents -> 4."""
    return y0, y0 + y1, y0 - y1, -y1


def _gt(m0, m1, m2, m3):
    """Gᵀ m, the adjoint of :func:`_g`: 4 -> 3 taps."""
    return m0 + (m1 + m2) / 2, (m1 - m2) / 2, (m1 + m2) / 2 + m3


def _separable(transform, grid):
    """A 1-D transform applied along both axes of a square grid (list of lists) of arrays."""
    columns = [transform(*column) for column in zip(*grid, strict=True)]  # columns[b][i]
    return [list(transform(*row)) for row in zip(*columns, strict=True)]


def winograd_suits(w_shape, cfg: ConvConfig) -> bool:
    """F(2×2, 3×3) computes 2-D, 3×3, stride-1, undilated, ungrouped correlations."""
    return (cfg.nd == 2 and tuple(w_shape[:2]) == (3, 3) and cfg.groups == 1
            and cfg.stride == (1, 1) and cfg.dilation == (1, 1))


def _winograd_tiles(x: jax.Array, padding, tiles) -> list[list[jax.Array]]:
    """V = Bᵀ d B for every 4×4 input tile d (stride 2) of x padded by ``padding`` and zero-extended
    to whole tiles: a 4×4 grid (ξ, ν) of (N, T_h, T_w, C) arrays. Kept as 16 arrays, never
    stacked: one 16-times larger buffer cost XLA:CPU several times the transform itself."""
    # One pad: (lo, hi) widened at the end to whole tiles, 2·T + 2 rows and columns.
    x_ext = pad(x, tuple((lo, 2 * t + 2 - n - lo) for (lo, _), t, n
                         in zip(padding, tiles, x.shape[1:3], strict=True)))
    th, tw = tiles
    d = [[x_ext[:, a:a + 2 * th:2, b:b + 2 * tw:2] for b in range(4)] for a in range(4)]
    return _separable(_bt, d)


def forward_winograd(x: jax.Array, w: jax.Array, cfg: ConvConfig) -> jax.Array:
    """y = Aᵀ [(G w Gᵀ) ⊙ (Bᵀ d B)] A per 2×2 output tile, summed over input channels by 16
    matrix products (N·T, C_in) × (C_in, C_out); the outputs past O (whole tiles) are cropped.
    Only for :func:`winograd_suits` problems."""
    out = out_spatial(x.shape[1:-1], w.shape[:2], cfg)
    tiles = tuple(-(-o // 2) for o in out)
    v = _winograd_tiles(x, cfg.padding, tiles)
    u = _separable(_g, [[w[i, j] for j in range(3)] for i in range(3)])
    m = [[jnp.matmul(v[i][j], u[i][j]) for j in range(4)] for i in range(4)]
    y = _separable(_at, m)  # y[p][q]: the outputs (2t + p, 2u + q), (N, T_h, T_w, C_out)
    y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)  # (N, T_h, 2, T_w, 2, C_out)
    y = y.reshape(x.shape[0], 2 * tiles[0], 2 * tiles[1], w.shape[-1])
    return y[:, : out[0], : out[1], :]


# --------------------------------------------------------------------------------------------
# dX: (dy, w, in_size, cfg) -> dx (N, *S, C_in).
# --------------------------------------------------------------------------------------------


def dx_shifted(dy: jax.Array, w: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dx_pad = Σ_k scatter_k(dy · w[k]ᵀ), then cropped: |K| products, |K| scatters."""
    kernel = w.shape[: cfg.nd]
    padded = padded_size(in_size, cfg.padding)
    w_flat = w.reshape(-1, *w.shape[-2:])
    dx_pad = None
    for i, k in enumerate(offsets(kernel)):
        term = scatter(_apply_t(dy, w_flat[i], cfg.groups), k, padded, cfg)
        dx_pad = term if dx_pad is None else dx_pad + term
    return crop(dx_pad, in_size, cfg.padding)


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
    dx_pad = _scatter_sum(dcols, kernel, padded_size(in_size, cfg.padding), cfg)
    return crop(dx_pad, in_size, cfg.padding)


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
    return crop(dx_pad, in_size, cfg.padding)


def dx_winograd(dy: jax.Array, w: jax.Array, in_size, cfg: ConvConfig) -> jax.Array:
    """dX = full-conv(rot180 W, dY), itself a 3×3 stride-1 correlation: dy padded by
    (2 − lo, 2 − hi) (a negative amount crops outputs whose window lies in the padding) with the
    kernel rotated and its channels swapped, by :func:`forward_winograd`."""
    rot = jnp.swapaxes(w[::-1, ::-1], -1, -2)
    full = ConvConfig(stride=cfg.stride, padding=tuple((2 - lo, 2 - hi) for lo, hi in cfg.padding),
                      dilation=cfg.dilation, groups=1)
    return forward_winograd(dy, rot, full)


# --------------------------------------------------------------------------------------------
# dW: (x, dy, kernel, cfg) -> dw (*K, C_in/g, C_out).
# --------------------------------------------------------------------------------------------


def dw_shifted(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """dw[k] = view_k(x)ᵀ · dy: |K| products (C_in, N·O) × (N·O, C_out), stacked."""
    x_pad = pad(x, cfg.padding)
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
    padded = padded_size(x.shape[1:-1], cfg.padding)[-1]
    g = g.reshape(-1, padded, x.shape[-1], out[-1], c_out)  # (|K_lead|, W_pad, C_in, O_w, C_out)
    pattern = band(kernel[-1], padded, out[-1], cfg.stride[-1], cfg.dilation[-1])
    dw = jnp.einsum("kio,licod->lkcd", pattern.astype(g.dtype), g)
    return grouped_kernel(dw.reshape(*kernel, x.shape[-1], c_out), cfg.groups)


def dw_winograd(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
    """The forward's adjoint in w: with U = G w Gᵀ and y_t = Aᵀ (U ⊙ V_t) A per tile,
    dU = Σ_t (A dy_t Aᵀ) ⊙ V_t (16 products (C_in, N·T) × (N·T, C_out)) and dw = Gᵀ dU G;
    dy is zero-extended to whole tiles, so the cropped outputs contribute nothing."""
    tiles = tuple(-(-o // 2) for o in dy.shape[1:3])
    v = _winograd_tiles(x, cfg.padding, tiles)
    dy_ext = pad(dy, tuple((0, 2 * t - o) for t, o in zip(tiles, dy.shape[1:3], strict=True)))
    e = _separable(_a, [[dy_ext[:, p::2, q::2] for q in range(2)] for p in range(2)])
    du = [[_outer(v[i][j], e[i][j], 1) for j in range(4)] for i in range(4)]
    dw = _separable(_gt, du)
    return jnp.stack([jnp.stack(row) for row in dw])


# The batch's dy, in bytes, above which :func:`per_image` runs image by image: beyond it the
# products a depthwise dW writes and reduces (each as large as dy) no longer fit this machine's
# 2 MiB of L2 per core. Taken from the cache size, not fitted.
PER_IMAGE_MIN_BYTES = 2**21


def per_image(dw_rule: Callable) -> Callable:
    """dW accumulated image by image: dw = Σ_n x_n ⋆ dy_n is a sum over the batch, so
    ``dw_rule`` runs on one image at a time (a ``lax.scan`` over the batch) and the images' dW
    are added, once the batch's dy exceeds ``PER_IMAGE_MIN_BYTES``. A depthwise dW is |K|
    elementwise products, each as large as dy, each reduced over the batch and space: for the
    whole batch XLA:CPU writes every product to memory and reads it back, for one image they stay
    in cache. (Blocks of several images, scanned as a reshaped batch, ran up to 10× slower on
    XLA:CPU than either.)"""
    def by_image(x: jax.Array, dy: jax.Array, kernel, cfg: ConvConfig) -> jax.Array:
        if x.shape[0] == 1 or dy.size * dy.dtype.itemsize <= PER_IMAGE_MIN_BYTES:
            return dw_rule(x, dy, kernel, cfg)

        def add_image(dw, xy):
            return dw + dw_rule(xy[0][None], xy[1][None], kernel, cfg), None

        zero = jnp.zeros((*kernel, x.shape[-1] // cfg.groups, dy.shape[-1]), dy.dtype)
        return jax.lax.scan(add_image, zero, (x, dy))[0]
    return by_image


FORWARD: dict[str, Callable] = {
    "shifted": forward_shifted, "im2col": forward_im2col, "banded": forward_banded,
    "winograd": forward_winograd,
}
DX: dict[str, Callable] = {"shifted": dx_shifted, "col2im": dx_col2im, "banded": dx_banded,
                          "winograd": dx_winograd}
DW: dict[str, Callable] = {"shifted": dw_shifted, "im2col": dw_im2col, "banded": dw_banded,
                          "winograd": dw_winograd, "shifted_per_image": per_image(dw_shifted)}
TABLES = {"forward": FORWARD, "dx": DX, "dw": DW}
