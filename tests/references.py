"""Independent references: the lecture's definitions written as direct numpy loops.

Nothing here imports jaxconv. Each function takes *explicit* ``(low, high)`` pads (the caller
resolves a padding string itself) and channels-last arrays, and computes the forward and the
vector-Jacobian product from the definitions alone, one kernel or window offset at a time:

    conv:      y[n, o, :] = b + Σ_k x_pad[n, o·s + k·d, :] · w[k]      (per group)
    max_pool:  y[n, o, c] = max_{k∈W} x_pad[n, o·s + k, c]             (x padded with −∞)
    avg_pool:  y[n, o, c] = (1/|W|) Σ_{k∈W} x_pad[n, o·s + k, c]       (zeros, counted in |W|)

and their pullbacks (dx, dw, db from a given dy). They are what the library's forwards and rules
are checked against where ``lax`` has no equivalent (the FULL padding) and, for the pools, in
addition to ``lax.reduce_window``. Everything is computed in float64.
"""

from __future__ import annotations

import itertools

import numpy as np


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
