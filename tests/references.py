"""Independent references: the lecture's definitions written as direct numpy loops.

Nothing here imports jaxconv. The loops take *explicit* ``(low, high)`` pads and channels-last
arrays and compute the forward and the vector-Jacobian product from the definitions alone, one
kernel or window offset at a time:

    conv:      y[n, o, :] = b + Σ_k x_pad[n, o·s + k·d, :] · w[k]      (per group)
    max_pool:  y[n, o, c] = max_{k∈W} x_pad[n, o·s + k, c]             (x padded with −∞)
    avg_pool:  y[n, o, c] = (1/|W|) Σ_{k∈W} x_pad[n, o·s + k, c]       (zeros, counted in |W|)

and their pullbacks (dx, dw, db from a given dy). They are what the library's forwards and rules
are checked against where ``lax`` has no equivalent (the FULL padding) and, for the pools, in
addition to ``lax.reduce_window``. Everything is computed in float64.

:func:`resolve_padding` turns a padding argument into pairs ("FULL" by its definition, "SAME" and
"VALID" by lax's own ``padtype_to_pads``), :func:`conv_call` / :func:`pool_call` take the ops'
public arguments (layouts included), and :data:`FORWARD` maps every op name to its reference
forward, stable numpy formulas for the elementwise ops and the losses.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from jax import lax


def _out_size(padded: int, window: int, stride: int) -> int:
    return (padded - window) // stride + 1


def _take(a: np.ndarray, index: tuple[np.ndarray, ...]) -> np.ndarray:
    """a[:, index_1, index_2, ..., :] with one integer array per spatial axis (an outer product
    of the index sets, like numpy's ``ix_``)."""
    for axis, ind in enumerate(index):
        a = np.take(a, ind, axis=1 + axis)
    return a


def _positions(out, stride, offset, dilation) -> tuple[np.ndarray, ...]:
    """The padded-input index o·s + k·d of every output o, per spatial axis."""
    return tuple(np.arange(o) * s + k * d for o, s, k, d in zip(out, stride, offset, dilation,
                                                              strict=True))


def conv(x, w, b, stride, pads, dilation, groups):
    """y = x ⋆ w + b: x (N, *S, C_in), w (*K, C_in/g, C_out), b (C_out,) or None."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    kernel, (c_in_g, c_out) = w.shape[:nd], w.shape[nd:]
    c_out_g = c_out // groups
    x_pad = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = tuple(_out_size(p, d * (k - 1) + 1, s)
                for p, k, s, d in zip(x_pad.shape[1:-1], kernel, stride, dilation, strict=True))
    y = np.zeros((x.shape[0], *out, c_out))
    for offset in itertools.product(*(range(k) for k in kernel)):
        patch = _take(x_pad, _positions(out, stride, offset, dilation))
        for g in range(groups):
            ins, outs = slice(g * c_in_g, (g + 1) * c_in_g), slice(g * c_out_g, (g + 1) * c_out_g)
            y[..., outs] += patch[..., ins] @ w[offset][:, outs]
    return y if b is None else y + np.asarray(b, np.float64)


def conv_vjp(x, w, dy, stride, pads, dilation, groups):
    """(dx, dw, db) of :func:`conv` pulled back from dy, by the definitions: each dy[o] is sent
    back to the inputs o·s + k·d that made it (dx) and paired with them (dw)."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    nd = x.ndim - 2
    kernel, (c_in_g, c_out) = w.shape[:nd], w.shape[nd:]
    c_out_g = c_out // groups
    x_pad = np.pad(x, [(0, 0), *pads, (0, 0)])
    dx_pad, dw = np.zeros_like(x_pad), np.zeros_like(w)
    out = dy.shape[1:-1]
    batch_and_out = tuple(range(nd + 1))
    for offset in itertools.product(*(range(k) for k in kernel)):
        where = _positions(out, stride, offset, dilation)
        patch = _take(x_pad, where)
        for g in range(groups):
            ins, outs = slice(g * c_in_g, (g + 1) * c_in_g), slice(g * c_out_g, (g + 1) * c_out_g)
            dw[offset][:, outs] += np.tensordot(patch[..., ins], dy[..., outs],
                                                (batch_and_out, batch_and_out))
            index = np.ix_(np.arange(x.shape[0]), *where, np.arange(ins.start, ins.stop))
            dx_pad[index] += dy[..., outs] @ w[offset][:, outs].T  # positions distinct per k
    crop = (slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1],
                                                                   strict=True)), slice(None))
    return dx_pad[crop], dw, dy.sum(axis=batch_and_out)


def _windows(out, window, stride):
    """(output index o, the window's slices at o·s) for every output position, row-major."""
    for o in itertools.product(*(range(n) for n in out)):
        yield o, tuple(slice(i * s, i * s + k) for i, s, k in zip(o, stride, window, strict=True))


def pool(kind, x, window, stride, pads, dy=None):
    """Max or average pooling of x (N, *S, C) and, when ``dy`` is given, its pullback dx.

    max: the window's first maximum in row-major window order (numpy's argmax) gets dy[o];
    avg: every position of the window gets dy[o]/|W|, padded ones included (then cropped).
    Returns ``y`` or ``(y, dx)``.
    """
    x = np.asarray(x, np.float64)
    fill = -np.inf if kind == "max" else 0.0
    x_pad = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    n, c, size = x.shape[0], x.shape[-1], int(np.prod(window))
    out = tuple(_out_size(p, k, s) for p, k, s in zip(x_pad.shape[1:-1], window, stride,
                                                     strict=True))
    y, dx_pad = np.zeros((n, *out, c)), np.zeros_like(x_pad)
    for o, box in _windows(out, window, stride):
        values = x_pad[(slice(None), *box, slice(None))].reshape(n, size, c)
        if kind == "max":
            first = values.argmax(axis=1)  # (N, C): the first maximum
            y[(slice(None), *o, slice(None))] = np.take_along_axis(values, first[:, None], 1)[:, 0]
        else:
            y[(slice(None), *o, slice(None))] = values.sum(axis=1) / size
        if dy is None:
            continue
        g = np.asarray(dy, np.float64)[(slice(None), *o, slice(None))]  # (N, C)
        if kind == "max":
            share = np.zeros((n, size, c))
            np.put_along_axis(share, first[:, None], g[:, None], 1)
        else:
            share = np.broadcast_to(g[:, None] / size, (n, size, c))
        dx_pad[(slice(None), *box, slice(None))] += share.reshape(n, *window, c)
    if dy is None:
        return y
    crop = (slice(None), *(slice(lo, lo + m) for (lo, _), m in zip(pads, x.shape[1:-1],
                                                                   strict=True)), slice(None))
    return y, dx_pad[crop]


# --------------------------------------------------------------------------------------------
# The ops' public arguments.
# --------------------------------------------------------------------------------------------


def per_dim(value, nd: int) -> tuple[int, ...]:
    """An int or a sequence, as an nd-tuple."""
    return (int(value),) * nd if np.ndim(value) == 0 else tuple(int(v) for v in value)


def resolve_padding(padding, in_size, window, stride) -> list[tuple[int, int]]:
    """Explicit pairs: "FULL" by its definition (window − 1 on each side), "SAME" / "VALID"
    as lax resolves them (``lax.padtype_to_pads``), an int on every side, pairs as given.
    ``window`` is the effective (dilated) window."""
    if isinstance(padding, str):
        if padding.upper() == "FULL":
            return [(k - 1, k - 1) for k in window]
        return [tuple(p) for p in lax.padtype_to_pads(in_size, window, stride, padding.upper())]
    if np.ndim(padding) == 0:
        return [(int(padding), int(padding))] * len(in_size)
    return [(int(lo), int(hi)) for lo, hi in padding]


def conv_call(x, w, b=None, dy=None, *, stride=1, padding="VALID", dilation=1, groups=1,
              layout="channels_last"):
    """:func:`conv` (and, given ``dy``, :func:`conv_vjp`) with jaxconv.conv's arguments, in the
    caller's layout. Returns ``y`` or ``(y, (dx, dw, db))``."""
    nd = np.ndim(x) - 2
    first = layout == "channels_first"
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    if first:  # to channels-last: (N, *S, C) and (*K, I, O)
        x, w = np.moveaxis(x, 1, -1), np.transpose(w, (*range(2, nd + 2), 1, 0))
        dy = None if dy is None else np.moveaxis(np.asarray(dy, np.float64), 1, -1)
    stride, dilation = per_dim(stride, nd), per_dim(dilation, nd)
    window = [d * (k - 1) + 1 for k, d in zip(w.shape[:nd], dilation, strict=True)]
    pads = resolve_padding(padding, x.shape[1:-1], window, stride)
    y = conv(x, w, b, stride, pads, dilation, groups)
    if dy is None:
        return np.moveaxis(y, -1, 1) if first else y
    dx, dw, db = conv_vjp(x, w, dy, stride, pads, dilation, groups)
    if first:
        y, dx = np.moveaxis(y, -1, 1), np.moveaxis(dx, -1, 1)
        dw = np.transpose(dw, (nd + 1, nd, *range(nd)))
    return y, (dx, dw, db)


def pool_call(kind, x, window, stride=None, padding="VALID", dy=None, layout="channels_last"):
    """:func:`pool` with jaxconv's pooling arguments, in the caller's layout."""
    nd = np.ndim(x) - 2
    first = layout == "channels_first"
    x = np.moveaxis(np.asarray(x, np.float64), 1, -1) if first else np.asarray(x, np.float64)
    window = per_dim(window, nd)
    stride = window if stride is None else per_dim(stride, nd)
    pads = resolve_padding(padding, x.shape[1:-1], window, stride)
    if dy is not None and first:
        dy = np.moveaxis(np.asarray(dy, np.float64), 1, -1)
    out = pool(kind, x, window, stride, pads, dy)
    if not first:
        return out
    if dy is None:
        return np.moveaxis(out, -1, 1)
    return np.moveaxis(out[0], -1, 1), np.moveaxis(out[1], -1, 1)


# --------------------------------------------------------------------------------------------
# Elementwise ops and losses, stable in float64.
# --------------------------------------------------------------------------------------------


def sigmoid(x):
    """1/(1 + e^{−x}) without overflow: e^{−|x|} <= 1 on both branches."""
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(x):
    """log(1 + eˣ) = max(x, 0) + log1p(e^{−|x|})."""
    x = np.asarray(x, np.float64)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def sech2(x):
    """tanh′ = 1 − tanh² = 4e^{−2|x|}/(1 + e^{−2|x|})²."""
    with np.errstate(over="ignore"):  # −2|x| = −∞ for the largest float64: e = 0, as it should
        e = np.exp(-2 * np.abs(np.asarray(x, np.float64)))
    return 4 * e / (1 + e) ** 2


def log_softmax(z):
    """z − logsumexp(z) over the last axis, the maximum subtracted first."""
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(z, labels):
    """Per example −Σ_c labels_c · log_softmax(z)_c, for probability labels (..., C)."""
    return -(np.asarray(labels, np.float64) * log_softmax(z)).sum(axis=-1)


def softmax_cross_entropy_with_integer_labels(z, labels):
    """Per example −log_softmax(z)[label]; and dz = softmax(z) − onehot (for dl = 1)."""
    logp = log_softmax(z)
    labels = np.asarray(labels)
    loss = -np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    return loss, np.exp(logp) - np.eye(logp.shape[-1])[labels]


def dot_general(x, w, dimension_numbers):
    """lax.dot_general's definition by numpy: batch axes kept, contracting axes summed, the
    result ordered (batch, x's free axes, w's free axes)."""
    (cx, cw), (bx, bw) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    sx, sw = [None] * np.ndim(x), [None] * np.ndim(w)
    for i, j in zip(bx, bw, strict=True):
        sx[i] = sw[j] = next(letters)
    for i, j in zip(cx, cw, strict=True):
        sx[i] = sw[j] = next(letters)
    for spec in (sx, sw):
        for i, s in enumerate(spec):
            spec[i] = next(letters) if s is None else s
    out = ([sx[i] for i in bx] + [s for i, s in enumerate(sx) if i not in (*bx, *cx)]
           + [s for j, s in enumerate(sw) if j not in (*bw, *cw)])
    return np.einsum(f"{''.join(sx)},{''.join(sw)}->{''.join(out)}", _f64(x), _f64(w))


def _f64(a):
    return np.asarray(a, np.float64)


FORWARD = {
    "conv": lambda x, w, b=None, **kw: conv_call(x, w, b, **kw),
    "max_pool": lambda x, window, **kw: pool_call("max", x, window, **kw),
    "avg_pool": lambda x, window, **kw: pool_call("avg", x, window, **kw),
    "dense": lambda x, w, b=None: _f64(x) @ _f64(w) + (0.0 if b is None else _f64(b)),
    "dot_general": lambda x, w, dimension_numbers, precision=None: dot_general(
        x, w, dimension_numbers),
    "relu": lambda x: np.maximum(_f64(x), 0),
    "leaky_relu": lambda x, negative_slope=0.01: np.where(_f64(x) > 0, _f64(x),
                                                          _f64(negative_slope) * _f64(x)),
    "sigmoid": sigmoid,
    "tanh": lambda x: np.tanh(_f64(x)),
    "softplus": softplus,
    "softmax_cross_entropy": softmax_cross_entropy,
    "softmax_cross_entropy_with_integer_labels":
        lambda z, labels: softmax_cross_entropy_with_integer_labels(z, labels)[0],
    "squared_error": lambda p, t=None: (_f64(p) - (0.0 if t is None else _f64(t))) ** 2,
}


# --------------------------------------------------------------------------------------------
# lax, called in its own terms (padding strings, dimension numbers).
# --------------------------------------------------------------------------------------------


def lax_dimension_numbers(layout: str, nd: int) -> tuple[str, str, str]:
    """lax's names for the layouts: NWC/WIO, NHWC/HWIO, NDHWC/DHWIO; NCW/OIW, NCHW/OIHW, ..."""
    sp = "DHW"[3 - nd:]
    if layout == "channels_first":
        return f"NC{sp}", f"OI{sp}", f"NC{sp}"
    return f"N{sp}C", f"{sp}IO", f"N{sp}C"


def lax_conv(x, w, b=None, *, stride, padding, dilation, groups, layout):
    """The convolution as lax computes it, in the case's own layout."""
    nd = x.ndim - 2
    y = lax.conv_general_dilated(
        x, w, window_strides=stride, padding=padding, rhs_dilation=dilation,
        dimension_numbers=lax_dimension_numbers(layout, nd), feature_group_count=groups,
    )
    if b is None:
        return y
    return y + (b.reshape(-1, *(1,) * nd) if layout == "channels_first" else b)


def lax_pool(kind, x, *, window, stride, padding, layout="channels_last"):
    """Pooling as lax computes it, with its own padding string or pairs and window dims
    (1, *window, 1) or, channels-first, (1, 1, *window); the average divides by the whole
    window, padded positions included."""
    first = layout == "channels_first"
    dims = (1, 1, *window) if first else (1, *window, 1)
    strides = (1, 1, *stride) if first else (1, *stride, 1)
    if not isinstance(padding, str):
        padding = [(0, 0), (0, 0), *padding] if first else [(0, 0), *padding, (0, 0)]
    if kind == "max":
        return lax.reduce_window(x, -np.inf, lax.max, dims, strides, padding)
    return lax.reduce_window(x, 0.0, lax.add, dims, strides, padding) / math.prod(window)

# The pullbacks (one gradient per differentiated argument) where a test needs a reference that
# does not go through JAX: conv (x, w[, b]) and avg_pool (x).
VJP = {
    "conv": lambda x, w, b=None, *, dy, **kw: conv_call(x, w, b, dy, **kw)[1][: 2 if b is None
                                                                              else 3],
    "avg_pool": lambda x, window, *, dy, **kw: (pool_call("avg", x, window, dy=dy, **kw)[1],),
}
