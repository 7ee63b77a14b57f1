"""The forward semantics against independent references: values *and* gradients of
``jaxconv.conv``, ``jaxconv.max_pool`` and ``jaxconv.avg_pool`` against

- ``lax.conv_general_dilated`` / ``lax.reduce_window`` called with lax's *own* padding strings
  ("SAME", "VALID"), explicit pairs and lax's own dimension numbers (NCHW / OIHW for
  ``layout="channels_first"``), differentiated by JAX; and
- the definitions written as numpy loops (:mod:`references`), for every padding, "FULL" (which
  lax does not have) included, with "SAME" resolved by lax's own ``padtype_to_pads``.

The manual op, its autodiff twin, finite differences and gradcheck all differentiate the same
forward, so none of them can see a wrong padding resolution or layout adapter; these can.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import references as R
import strategies as S
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxconv
from jaxconv import use

# Every example compiles two small programs (the op's vjp and the reference's) in well under a
# second: the profile's full count for both.
CONV_EXAMPLES = settings().max_examples
POOL_EXAMPLES = settings().max_examples


@functools.partial(jax.jit, static_argnames=("fn",), compiler_options=S._FAST_COMPILE)
def _vjp(fn, args, dy):
    """(y, grads) of ``fn(*args)`` pulled back from ``dy``, in one program."""
    y, pullback = jax.vjp(fn, *args)
    return y, pullback(dy)


def _run(fn, args, dy, policy=None, safe=False):
    """Trace and run ``_vjp`` under ``policy``; ``safe``: with the dX rule by shifted products
    (see strategies.xla_dx_may_abort)."""
    with S.conv_policy(policy), use(dx="shifted" if safe else None):
        return jax.device_get(_vjp(fn, tuple(args), dy))


def _assert_close(actual, expected, dtype, what):
    """Values and gradients, each to the dtype's tolerance relative to its own scale."""
    rtol = S.RTOL[np.dtype(dtype)]
    (y, grads), (ref_y, ref_grads) = actual, expected
    S.assert_scaled_close(y, ref_y, rtol, f"{what}: forward")
    for i, (g, ref) in enumerate(zip(grads, ref_grads, strict=True)):
        S.assert_scaled_close(g, ref, rtol, f"{what}: gradient of argument {i}")


def _lax_padding(padding, nd: int):
    """The padding in lax's own terms: its strings, or explicit pairs; None for "FULL"."""
    if isinstance(padding, str):
        return None if padding.upper() == "FULL" else padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [tuple(p) for p in padding]


# --------------------------------------------------------------------------------------------
# Convolution.
# --------------------------------------------------------------------------------------------


def numpy_conv_vjp(case: S.ConvCase, args, dy):
    """(y, grads) by the numpy definitions, in the case's layout (float64)."""
    kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups, layout=case.layout)
    y, grads = R.conv_call(*args[:2], args[2] if case.bias else None, dy, **kw)
    return y, grads[: len(args)]


# Awkward cases pinned (channels_last unless stated): a SAME whose total pad is odd (3: the
# extra pad goes high), SAME with strides that do not divide the size and channels_first,
# FULL with dilation and groups, asymmetric pairs in 3-D with batch 1 and a kernel of 1,
# depthwise channels_first with a bias, an int padding larger than the kernel.
CONV_PINNED = [
    S.ConvCase((1, 6, 2), (4, 2, 3), False, 1, "SAME", 1, 1, "channels_last"),
    S.ConvCase((2, 3, 7, 5), (4, 3, 3, 2), True, (2, 3), "SAME", (1, 2), 1, "channels_first"),
    S.ConvCase((1, 5, 4), (3, 2, 4), True, 1, "FULL", 2, 2, "channels_last"),
    S.ConvCase((1, 3, 4, 2, 3), (1, 2, 1, 3, 3), False, (2, 1, 2),
               ((0, 2), (1, 0), (2, 1)), 1, 1, "channels_last"),
    S.ConvCase((2, 3, 8), (6, 1, 3), True, 3, ((2, 1),), 1, 3, "channels_first"),
    S.ConvCase((1, 4, 5, 2), (2, 2, 1, 4), False, (3, 2), 3, (2, 1), 2, "channels_last"),
    # XLA:CPU aborts on JAX's own dX of this one (experiments/abort_sweep.py): kept, with the
    # references that do not abort
    S.ConvCase((2, 3, 10, 1), (4, 2, 1, 2), True, (3, 2), ((2, 2), (1, 1)), 1, 1,
               "channels_last"),
]


def _conv_examples(test):
    for case in CONV_PINNED:
        test = example(case=case, dtype=np.float64, seed=0, policy="xla")(test)
    return example(case=CONV_PINNED[0], dtype=np.float32, seed=1, policy="auto")(test)


@settings(max_examples=CONV_EXAMPLES)
@given(case=S.conv_cases(), dtype=S.float_dtypes, seed=S.seeds,
       policy=st.sampled_from(("xla", "auto")))
@_conv_examples
def test_conv_against_lax_and_numpy(case, dtype, seed, policy):
    """jaxconv.conv's output and its gradients (dx, dw, db from a random dy) equal lax's
    convolution with lax's own padding string and dimension numbers, differentiated by JAX, and
    the numpy loops over the definition (float64: 1e-10, float32: 1e-5 of the scale)."""
    nd = len(case.x_shape) - 2
    if nd == 3:
        policy = "xla"  # the other formulations unroll over 3-D kernels and compile slowly
    args = case.arrays(seed, dtype)
    kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups, layout=case.layout)
    y_shape = jax.eval_shape(lambda *a: jaxconv.conv(*a, **kw), *args).shape
    dy = S.normal(seed + 1, y_shape, dtype)
    # In the class where XLA:CPU aborts on a dX convolution (JAX's own and the xla rule's), the
    # rule runs as shifted products and lax is the reference for the values only.
    risky = S.xla_dx_may_abort("conv", case.static, args)
    ours = _run(functools.partial(jaxconv.conv, **kw), args, dy, policy, safe=risky)
    what = f"conv {case}"
    padding = _lax_padding(case.padding, nd)
    if padding is not None:
        ref = functools.partial(R.lax_conv, stride=R.per_dim(case.stride, nd), padding=padding,
                                dilation=R.per_dim(case.dilation, nd), groups=case.groups,
                                layout=case.layout)
        if risky:
            S.assert_scaled_close(ours[0], jax.jit(ref)(*args), S.RTOL[np.dtype(dtype)],
                                  f"{what} vs lax: forward")
        else:
            _assert_close(ours, _run(ref, args, dy), dtype, f"{what} vs lax")
    _assert_close(ours, numpy_conv_vjp(case, args, dy), dtype, f"{what} vs numpy")


@settings(max_examples=max(settings().max_examples // 10, 10))
@given(case=S.conv_cases(), seed=S.seeds)
def test_numpy_conv_reference_is_lax(case, seed):
    """The numpy reference itself agrees with lax wherever lax can say (float64): what it says
    about "FULL" is then the same definition."""
    nd = len(case.x_shape) - 2
    padding = _lax_padding(case.padding, nd)
    args = case.arrays(seed, np.float64)
    if padding is None or S.xla_dx_may_abort("conv", case.static, args):
        return
    ref = functools.partial(R.lax_conv, stride=R.per_dim(case.stride, nd), padding=padding,
                            dilation=R.per_dim(case.dilation, nd), groups=case.groups,
                            layout=case.layout)
    y_shape = jax.eval_shape(ref, *args).shape
    dy = S.normal(seed + 1, y_shape)
    _assert_close(numpy_conv_vjp(case, args, dy), _run(ref, args, dy), np.float64,
                  f"numpy vs lax {case}")


# --------------------------------------------------------------------------------------------
# Pooling.
# --------------------------------------------------------------------------------------------


@st.composite
def pool_inputs(draw, dtype=S.float_dtypes):
    """A pooling case, its layout and its input: distinct values, or few levels with many ties
    (which max pooling resolves to the first maximum in row-major window order, as JAX's own
    derivative of reduce_window does); channels_first moves the channels to axis 1."""
    case, dtype, seed = draw(S.pool_cases()), draw(dtype), draw(S.seeds)
    if draw(st.booleans()):
        x = S.distinct(seed, case.x_shape, dtype)
    else:
        x = (np.random.default_rng(seed).integers(-2, 3, case.x_shape) / 2).astype(dtype)
    layout = draw(st.sampled_from(("channels_last", "channels_first")))
    if layout == "channels_first":
        x = np.moveaxis(x, -1, 1)
    return case, layout, x, seed


POOL_PINNED = [
    # SAME with an odd total pad (1: the extra pad goes high), 1-D, overlapping windows
    (S.PoolCase((1, 5, 1), 2, 1, "SAME"), "channels_last",
     np.array([3.0, 1.0, 4.0, 1.0, 5.0]).reshape(1, 5, 1)),
    # SAME, window 3 and stride 2 on 6 (total 1), 2-D, distinct values, channels_first
    (S.PoolCase((2, 6, 5, 3), 3, 2, "SAME"), "channels_first",
     np.moveaxis(S.distinct(0, (2, 6, 5, 3)), -1, 1)),
    # all values tied: every window's first position wins
    (S.PoolCase((1, 4, 4, 2), 2, 1, ((1, 0), (0, 1))), "channels_last", np.ones((1, 4, 4, 2))),
    # 3-D, asymmetric pads, a stride that does not divide the size, channels_first
    (S.PoolCase((1, 3, 4, 2, 2), 2, (2, 3, 1), ((1, 0), (0, 1), (1, 1))), "channels_first",
     np.moveaxis(S.distinct(1, (1, 3, 4, 2, 2)), -1, 1)),
    # XLA:CPU aborts on avg_pool's xla dX rule here (a depthwise dX convolution with
    # lhs_dilation): kept, the rule run as shifted products
    (S.PoolCase((1, 4, 10, 1), (3, 2), (3, 2), ((1, 1), (1, 1))), "channels_last",
     S.distinct(2, (1, 4, 10, 1))),
]


def _pool_examples(test):
    for case, layout, x in POOL_PINNED:
        test = example(kind="max", drawn=(case, layout, x, 0))(test)
        test = example(kind="avg", drawn=(case, layout, x, 0))(test)
    return test


@settings(max_examples=POOL_EXAMPLES)
@given(kind=st.sampled_from(("max", "avg")), drawn=pool_inputs())
@_pool_examples
def test_pool_against_lax_and_numpy(kind, drawn):
    """max_pool / avg_pool (called with keyword options, either layout) and their gradients
    equal lax.reduce_window with lax's own padding and window dims (NC* for channels_first),
    differentiated by JAX, and the numpy loops over the definition; ties go to the first
    maximum in all three."""
    case, layout, x, seed = drawn
    nd = x.ndim - 2
    op = jaxconv.max_pool if kind == "max" else jaxconv.avg_pool
    window = R.per_dim(case.window, nd)
    stride = window if case.stride is None else R.per_dim(case.stride, nd)

    def ours_fn(x):
        return op(x, case.window, stride=case.stride, padding=case.padding, layout=layout)

    dy = S.normal(seed + 1, jax.eval_shape(ours_fn, x).shape, x.dtype)
    static = (("window", case.window), ("stride", case.stride), ("padding", case.padding),
              ("layout", layout))
    ours = _run(ours_fn, (x,), dy, "xla", safe=S.xla_dx_may_abort(f"{kind}_pool", static, (x,)))
    what = f"{kind}_pool {case} {layout}"
    ref = functools.partial(R.lax_pool, kind, window=window, stride=stride,
                            padding=_lax_padding(case.padding, nd), layout=layout)
    _assert_close(ours, _run(ref, (x,), dy), x.dtype, f"{what} vs lax")
    y, dx = R.pool_call(kind, x, case.window, case.stride, case.padding, dy, layout)
    _assert_close(ours, (y, (dx,)), x.dtype, f"{what} vs numpy")
