"""Max and average pooling: the rules (dy routed to the first arg-max; dy spread evenly, dy/|W|)
against JAX's derivative of the same forward, the tie rule and the divisor by hand, finite
differences and every floating dtype; the channels-first adapter against ``lax.reduce_window``;
the keyword-only options."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as S
from hypothesis import given
from jax.test_util import check_grads

import jaxconv
import jaxconv.autodiff

# "FULL" padding is refused by the pools (see test_full_padding_is_refused).
pool_cases = S.pool_cases().filter(lambda case: case.padding != "FULL")


@given(case=pool_cases, dtype=S.float_dtypes, seed=S.seeds)
def test_max_pool_gradient_equals_autodiff(case, dtype, seed):
    """Distinct input values (no ties, where the two modes may legitimately differ)."""
    x = S.distinct(seed, case.x_shape, dtype)
    S.check_manual_equals_autodiff("max_pool", case.static, (x,), seed=seed, policy="xla")


@given(case=pool_cases, dtype=S.float_dtypes, seed=S.seeds)
def test_avg_pool_gradient_equals_autodiff(case, dtype, seed):
    """The rule is the depthwise convolution's dx with the constant kernel 1/|W|, spread one
    axis at a time (test_avg_pool_dx_equals_the_convolution_form checks it against the
    convolution itself)."""
    x = S.normal(seed, case.x_shape, dtype)
    S.check_manual_equals_autodiff("avg_pool", case.static, (x,), seed=seed, policy="xla")


# --------------------------------------------------------------------------------------------
# The rules by hand.
# --------------------------------------------------------------------------------------------


def _pullback(op, x, dy, **kwargs):
    y, pullback = jax.vjp(lambda x: op(x, **kwargs), jnp.asarray(x))
    return y, pullback(jnp.asarray(dy, y.dtype))[0]


def test_max_pool_tie_goes_to_the_first_in_row_major_order():
    """x[0, 1] and x[1, 0] share the window's maximum: (0, 1) comes first, row-major, and gets all
    of dy; the other gets nothing."""
    x = np.array([[0.0, 5.0], [5.0, 1.0]]).reshape(1, 2, 2, 1)
    y, dx = _pullback(jaxconv.max_pool, x, [[[[3.0]]]], window=2)
    np.testing.assert_array_equal(y, [[[[5.0]]]])
    np.testing.assert_array_equal(dx[0, ..., 0], [[0.0, 3.0], [0.0, 0.0]])


def test_max_pool_overlapping_windows_add_up():
    """1-D, window 2, stride 1, all inputs equal: each window sends its dy to its own first
    position, and the middle input, first of the second window, collects dy₂."""
    x = np.ones((1, 3, 1))
    _, dx = _pullback(jaxconv.max_pool, x, [[[2.0], [7.0]]], window=2, stride=1)
    np.testing.assert_array_equal(dx[0, :, 0], [2.0, 7.0, 0.0])
    # A shared arg-max collects from every window it wins.
    x = np.array([0.0, 9.0, 1.0]).reshape(1, 3, 1)
    _, dx = _pullback(jaxconv.max_pool, x, [[[2.0], [7.0]]], window=2, stride=1)
    np.testing.assert_array_equal(dx[0, :, 0], [0.0, 9.0, 0.0])


def test_max_pool_padding_never_wins():
    """Padding is −∞: an all-negative window next to the padding routes dy to a real input."""
    x = np.array([-3.0, -1.0, -2.0]).reshape(1, 3, 1)
    y, dx = _pullback(jaxconv.max_pool, x, [[[1.0], [10.0]]], window=2, padding=((1, 0),))
    np.testing.assert_array_equal(y[0, :, 0], [-3.0, -1.0])
    np.testing.assert_array_equal(dx[0, :, 0], [1.0, 10.0, 0.0])


def test_avg_pool_padding_counts_in_the_divisor():
    """Window 3, padding (1, 1): every dy[o] is spread as dy[o]/3 over its window, the padded
    positions included (their share is cropped away)."""
    x = np.array([3.0, 6.0, 9.0]).reshape(1, 3, 1)
    dy = np.array([3.0, 30.0, 300.0]).reshape(1, 3, 1)
    y, dx = _pullback(jaxconv.avg_pool, x, dy, window=3, stride=1, padding=1)
    np.testing.assert_allclose(y[0, :, 0], [(3 + 6) / 3, (3 + 6 + 9) / 3, (6 + 9) / 3])
    np.testing.assert_allclose(dx[0, :, 0], [(3 + 30) / 3, (3 + 30 + 300) / 3, (30 + 300) / 3])


# --------------------------------------------------------------------------------------------
# Finite differences, dtypes, jaxprs.
# --------------------------------------------------------------------------------------------

FD_CASES = [
    ((2, 7, 3), dict(window=3, stride=2, padding=((1, 2),))),
    ((1, 5, 4, 2), dict(window=(2, 3), stride=1, padding="SAME")),
    ((1, 3, 4, 3, 2), dict(window=2, stride=(1, 2, 1))),
]


@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("x_shape, kwargs", FD_CASES)
def test_finite_differences(name, x_shape, kwargs):
    """Central differences with step 1e-3 (the default) on inputs spaced by 1/8: no step crosses
    a tie, so max pooling is smooth where it is probed."""
    op = getattr(jaxconv, name)
    check_grads(jax.jit(lambda x: op(x, **kwargs)), (S.distinct(0, x_shape),), order=2,
                modes=["rev"])


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("x_shape, kwargs", FD_CASES[:2])
def test_dtypes(dtype, name, x_shape, kwargs):
    x = jnp.asarray(S.distinct(3, x_shape), dtype)  # exact in every dtype: no ties after rounding
    S.check_dtype_against_float64(name, tuple(kwargs.items()), (x,), seed=3)


@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
def test_forward_jaxpr_holds_the_custom_vjp(name):
    x = S.normal(0, (1, 4, 4, 2))
    manual = S.primitive_names(jax.make_jaxpr(lambda x: getattr(jaxconv, name)(x, 2))(x))
    twin = S.primitive_names(jax.make_jaxpr(lambda x: getattr(jaxconv.autodiff, name)(x, 2))(x))
    assert "custom_vjp_call" in manual
    assert not any(p.startswith("custom_vjp") for p in twin), twin


AVG_DX_CASES = [  # window, stride, padding (lo, hi) per dim, input size
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (6, 6)),      # tiling
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (7, 5)),      # tiling, a remainder past the last window
    ((2, 3), (2, 3), ((1, 1), (0, 2)), (5, 7)),      # tiling, padded (ceil mode: extra high pad)
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (6, 5)),      # overlapping, "SAME"
    ((3, 3), (2, 2), ((0, 1), (1, 0)), (7, 6)),      # overlapping, strided, asymmetric pad
    ((3, 2), (2, 2), ((1, 2), (0, 1)), (8, 5)),      # mixed: overlapping along 0, tiling along 1
    ((2, 2), (3, 3), ((0, 0), (0, 0)), (8, 7)),      # gaps between windows (s > w)
    ((4,), (3,), ((2, 3),), (9,)),                   # 1-D, ceil mode
    ((2, 2, 2), (2, 1, 2), ((0, 1), (1, 1), (0, 0)), (5, 4, 4)),  # 3-D
]


@pytest.mark.parametrize("window, stride, padding, size", AVG_DX_CASES)
def test_avg_pool_dx_equals_the_convolution_form(window, stride, padding, size):
    """avg_pool's dx, spread axis by axis, equals the depthwise convolution's dx with the
    constant kernel 1/|W| (the lecture's form) in float64."""
    import math

    from jaxconv._geometry import ConvConfig, PoolConfig
    from jaxconv.ops.conv import conv_dx
    from jaxconv.ops.pool import avg_pool_dx

    cfg = PoolConfig(window, stride, padding, size)
    out = tuple((n + lo + hi - w) // s + 1
                for n, (lo, hi), w, s in zip(size, padding, window, stride, strict=True))
    dy = jnp.asarray(S.normal(0, (2, *out, 3)))
    kernel = jnp.full((*window, 1, 3), 1 / math.prod(window), dy.dtype)
    with jaxconv.policy("xla"):
        expected = conv_dx(dy, kernel, size, ConvConfig(stride, padding, (1,) * len(window), 3))
    S.assert_scaled_close(avg_pool_dx(dy, cfg), expected, 1e-14, str(cfg))
    # and through the public op, as autodiff sees the same forward
    x = S.normal(1, (2, *size, 3))
    _, dx = _pullback(jaxconv.avg_pool, x, dy, window=window, stride=stride, padding=padding)
    S.assert_scaled_close(dx, expected, 1e-14, str(cfg))


def test_avg_pool_gradient_has_no_convolution():
    """avg_pool's dx spreads dy with pads and adds: no convolution with a constant kernel."""
    x = S.normal(0, (2, 6, 6, 3))
    for kwargs in ({"window": 2}, {"window": 3, "stride": 1, "padding": "SAME"}):
        names = S.primitive_names(jax.make_jaxpr(
            jax.grad(lambda x, kw=kwargs: jnp.sum(jaxconv.avg_pool(x, **kw) ** 2)))(x))
        assert "conv_general_dilated" not in names, (kwargs, names)


def test_max_pool_gradient_has_no_loop_over_positions():
    """The rule loops over the window's offsets in Python (unrolled, static), never over
    positions: no while/scan in the gradient program."""
    x = S.distinct(0, (2, 6, 6, 3))
    names = S.primitive_names(jax.make_jaxpr(
        jax.grad(lambda x: jnp.sum(jaxconv.max_pool(x, 2) ** 2)))(x))
    assert not {"while", "scan"} & set(names), names


@pytest.mark.parametrize("window,stride", [(2, None), (3, 2)])
def test_max_pool_keeps_only_the_argmax(window, stride):
    """The forward's residual is k* alone (a small integer per output), never x: the rule
    does not read the input again, for tiling and for overlapping windows."""
    from jaxconv import _checks
    from jaxconv.ops import pool

    x = S.distinct(0, (2, 7, 6, 3))
    cfg = _checks.pool_config(x, window, stride, "VALID")
    y, first = pool._max_pool_fwd(x, cfg)
    assert first.dtype == jnp.int8 and first.shape == y.shape
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(x), (window, window), (1, 2))
    step = stride or window
    windows = windows[:, ::step, ::step][:, : y.shape[1], : y.shape[2]]
    flat = windows.reshape(*windows.shape[:4], -1)
    np.testing.assert_array_equal(np.asarray(first), flat.argmax(-1))


# --------------------------------------------------------------------------------------------
# The channels-first adapter, FULL padding, keyword-only options.
# --------------------------------------------------------------------------------------------


def _reduce_window_nchw(name, x, window, stride, padding):
    """The pool on x (N, C, *S) with ``lax.reduce_window``'s own window dims (1, 1, *window)."""
    nd = x.ndim - 2
    window = (window,) * nd if isinstance(window, int) else tuple(window)
    stride = window if stride is None else (stride,) * nd if isinstance(stride, int) else stride
    if isinstance(padding, int):
        padding = ((padding, padding),) * nd
    pads = padding if isinstance(padding, str) else ((0, 0), (0, 0), *padding)
    init, op = (-np.inf, jax.lax.max) if name == "max_pool" else (0.0, jax.lax.add)
    y = jax.lax.reduce_window(x, np.array(init, x.dtype), op, (1, 1, *window), (1, 1, *stride),
                              pads)
    return y if name == "max_pool" else y / np.prod(window)


@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
@given(case=pool_cases, seed=S.seeds)
def test_channels_first_equals_reduce_window(name, case, seed):
    """layout="channels_first": x is (N, C, *S); the output equals lax.reduce_window over the
    NCHW array, and the manual gradient equals the autodiff twin's through the same adapter."""
    x = np.moveaxis(S.distinct(seed, case.x_shape), -1, 1)
    static = (*case.static, ("layout", "channels_first"))
    y = getattr(jaxconv, name)(x, **dict(static))
    expected = _reduce_window_nchw(name, x, case.window, case.stride, case.padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-14)
    S.check_manual_equals_autodiff(name, static, (x,), seed=seed, policy="xla")


@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
def test_channels_first_gradient_is_the_transposed_channels_last_one(name):
    x = S.distinct(1, (2, 5, 4, 3))  # (N, H, W, C)
    dy = S.normal(2, (2, 3, 2, 3))  # window 2, stride (2, 2), SAME: (N, 3, 2, C)
    op = getattr(jaxconv, name)
    _, dx_last = _pullback(op, x, dy, window=2, padding="SAME")
    _, dx_first = _pullback(op, np.moveaxis(x, -1, 1), np.moveaxis(dy, -1, 1), window=2,
                            padding="SAME", layout="channels_first")
    np.testing.assert_array_equal(np.moveaxis(dx_first, 1, -1), dx_last)


@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("padding", ["FULL", "full"])
def test_full_padding_is_refused(name, padding):
    """A FULL pad is window − 1 on each side: the edge windows would hold one real input among
    padding. A pool refuses it with jaxconv's own error, eagerly and under jit."""
    x = S.normal(0, (1, 5, 2))
    match = r"padding must be one of \('VALID', 'SAME'\), an int or \(low, high\) pairs for a pool"
    for fn in (getattr(jaxconv, name), getattr(jaxconv.autodiff, name)):
        with pytest.raises(ValueError, match=match + f", got the string '{padding}'"):
            fn(x, 2, padding=padding)
        with pytest.raises(ValueError, match=match):
            jax.jit(lambda x, fn=fn: fn(x, 3, stride=1, padding=padding))(x)


@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
def test_options_are_keyword_only(name):
    """stride, padding and layout are keyword-only, as in jaxconv.conv: a positional stride is
    a TypeError naming the op and its signature."""
    x = S.normal(0, (1, 6, 2))
    sig = (rf"{name}\(x, window, \*, stride=None, padding='VALID', layout='channels_last'\): "
           r"too many positional arguments")
    for fn in (getattr(jaxconv, name), getattr(jaxconv.autodiff, name)):
        with pytest.raises(TypeError, match=sig):
            fn(x, 2, 2)
        with pytest.raises(TypeError, match=sig):
            fn(x, 2, None, "VALID")
        assert fn.__name__ == name
        assert str(inspect.signature(fn)) == (
            "(x, window, *, stride=None, padding='VALID', layout='channels_last')")
