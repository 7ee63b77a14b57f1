"""jaxconv.conv_transpose: the forward against PyTorch's definition (a numpy loop), against lax's
lhs-dilated convolution and as the adjoint of jaxconv.conv; its rules (dx = conv(dy, w),
dw = dy ⋆ x, db = Σ dy) against JAX's derivative of the same forward (under every formulation of
the rules) and against finite differences; jit, vmap, grad-of-grad, dtypes; the input that makes
jaxlib 0.10.2 abort; bad input.

About that abort: on CPU, jaxlib 0.10.2's algebraic simplifier dies (a C++ CHECK failure that
kills the process) on some convolutions with ``lhs_dilation``, the lax form of a transposed
convolution, already in their forward. The lax reference is therefore compiled with that pass
disabled (``_NO_ALGSIMP``: same values, no abort); the programs of jaxconv's own tests avoid the
pattern (the default policy never computes the dX role, conv_transpose's forward, by an
lhs-dilated convolution on CPU; the forced formulations below use col2im for it); and the
abort itself is exercised only in subprocesses.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from jax.test_util import check_grads

import jaxconv
import jaxconv.autodiff

_NO_ALGSIMP = {"xla_disable_hlo_passes": "algsimp"}
_ND = st.integers(1, 3)

# --------------------------------------------------------------------------------------------
# Configurations.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TCase:
    """One drawn transposed convolution, shapes in PyTorch's channels-first layout
    (x (N, C_in, *S), w (C_in, C_out // groups, *K)); ``layout`` is the one the op is called
    with (channels_last: the arrays are moved there by :meth:`arrays`)."""

    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    bias: bool
    stride: Any
    padding: Any
    output_padding: Any
    dilation: Any
    groups: int
    layout: str

    @property
    def nd(self) -> int:
        return len(self.x_shape) - 2

    @property
    def static(self) -> tuple:
        return (
            ("stride", self.stride), ("padding", self.padding),
            ("output_padding", self.output_padding), ("dilation", self.dilation),
            ("groups", self.groups), ("layout", self.layout),
        )

    def per_dim(self, name: str) -> tuple:
        value = dict(self.static)[name]
        return (value,) * self.nd if isinstance(value, int) else tuple(value)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        return tuple(p if isinstance(p, tuple) else (p, p) for p in self.per_dim("padding"))

    def first_arrays(self, seed: int, dtype: Any) -> tuple[np.ndarray, ...]:
        """x, w (and b) in the channels-first layout."""
        x, w = S.normal(seed, self.x_shape, dtype), S.normal(seed + 2, self.w_shape, dtype)
        c_out = self.w_shape[1] * self.groups
        return (x, w, S.normal(seed + 3, (c_out,), dtype)) if self.bias else (x, w)

    def arrays(self, seed: int, dtype: Any) -> tuple[np.ndarray, ...]:
        """The arguments in the case's own layout."""
        return to_layout(self.first_arrays(seed, dtype), self.layout)


def to_layout(args, layout):
    """channels-first x, w (, b) -> the layout's (b unchanged)."""
    if layout == "channels_first":
        return args
    x, w, *b = args
    nd = x.ndim - 2
    return (np.moveaxis(x, 1, -1), np.transpose(w, (*range(2, nd + 2), 1, 0)), *b)


def y_to_first(y, layout):
    return y if layout == "channels_first" else np.moveaxis(np.asarray(y), -1, 1)


def _maybe_int(draw, values):
    return values[0] if len(set(values)) == 1 and draw(st.booleans()) else values


@st.composite
def transpose_cases(draw, nd=_ND) -> TCase:
    """1 to 3 spatial dims, batch 1 to 3, groups 1, grouped and depthwise, kernel 1 to 4 (1 to 3
    in 3-D), stride and dilation 1 to 3, padding as an int, one int per dim or asymmetric
    (low, high) pairs (up to the largest that leaves an output, so the kernel's reach may lie
    wholly inside the crop), output_padding anywhere below max(stride, dilation) (also above
    the stride, where the dilation allows it), input sizes 1 to 4, bias or none, both layouts."""
    nd = draw(nd)
    grouping = draw(st.sampled_from(("single", "grouped", "depthwise")))
    if grouping == "single":
        groups, c_in, c_out = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif grouping == "grouped":
        groups = draw(st.integers(2, 3))
        c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    else:
        c_in = groups = draw(st.integers(2, 4))
        c_out = c_in * draw(st.integers(1, 2))
    top = 3 if nd == 3 else 4
    kernel = tuple(draw(st.integers(1, top)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    size = tuple(draw(st.integers(1, 4 if nd < 3 else 3)) for _ in range(nd))
    out_pad = tuple(
        draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
    )
    pads = []
    for n, k, s, d, op in zip(size, kernel, stride, dilation, out_pad, strict=True):
        full = (n - 1) * s + d * (k - 1) + 1
        lo = draw(st.integers(0, min(3, full - 1 + op)))
        pads.append((lo, draw(st.integers(0, min(3, full - 1 + op - lo)))))
    form = draw(st.sampled_from(("pairs", "ints", "int")))
    if form == "int" and len({p for pair in pads for p in pair}) == 1:
        padding = pads[0][0]
    elif form in ("ints", "int") and all(lo == hi for lo, hi in pads):
        padding = tuple(lo for lo, _ in pads)
    else:
        padding = tuple(pads)
    return TCase(
        x_shape=(draw(st.integers(1, 3)), c_in, *size),
        w_shape=(c_in, c_out // groups, *kernel),
        bias=draw(st.booleans()),
        stride=_maybe_int(draw, stride),
        padding=padding,
        output_padding=_maybe_int(draw, out_pad),
        dilation=_maybe_int(draw, dilation),
        groups=groups,
        layout=draw(st.sampled_from(("channels_last", "channels_first"))),
    )


# --------------------------------------------------------------------------------------------
# References for the forward.
# --------------------------------------------------------------------------------------------


def definition(case: TCase, x, w, b=None) -> np.ndarray:
    """PyTorch's transposed convolution as written, in float64 loops (channels-first):
    out[n, g·C_out/g + o, i·s + k·d − lo] += x[n, c, i] · w[c, o, k], c in group g."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    stride, dilation, pads = case.per_dim("stride"), case.per_dim("dilation"), case.pads
    op = case.per_dim("output_padding")
    n, c_in, *size = x.shape
    _, c_out_g, *kernel = w.shape
    out = [(i - 1) * s + d * (k - 1) + 1 - lo - hi + p for i, s, d, k, (lo, hi), p
           in zip(size, stride, dilation, kernel, pads, op, strict=True)]
    y = np.zeros((n, c_out_g * case.groups, *out))
    c_in_g = c_in // case.groups
    for c in range(c_in):
        g = c // c_in_g
        for i in itertools.product(*map(range, size)):
            for k in itertools.product(*map(range, kernel)):
                j = tuple(a * s + b_ * d - lo for a, b_, s, d, (lo, _) in
                          zip(i, k, stride, dilation, pads, strict=True))
                if all(0 <= jj < o for jj, o in zip(j, out, strict=True)):
                    y[(slice(None), slice(g * c_out_g, (g + 1) * c_out_g), *j)] += (
                        x[(slice(None), c, *i)][:, None] * w[(c, slice(None), *k)]
                    )
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, -1, *(1,) * len(size))
    return y


@functools.partial(jax.jit, static_argnames=("case",), compiler_options=_NO_ALGSIMP)
def lax_reference(case: TCase, x, w, b=None):
    """The same map as lax writes it: x dilated by the stride (``lhs_dilation``), padded by
    d·(K − 1) − lo low and d·(K − 1) − hi + output_padding high (negative: cropped), correlated
    with the flipped kernel in lax's OIHW layout (channels-first arrays)."""
    nd, g = case.nd, case.groups
    c_in, c_out_g, *kernel = w.shape
    w_lax = w.reshape(g, c_in // g, c_out_g, *kernel)
    w_lax = jnp.swapaxes(w_lax, 1, 2).reshape(g * c_out_g, c_in // g, *kernel)
    w_lax = jnp.flip(w_lax, axis=tuple(range(2, nd + 2)))
    dilation, out_pad = case.per_dim("dilation"), case.per_dim("output_padding")
    padding = [(d * (k - 1) - lo, d * (k - 1) - hi + p) for k, d, (lo, hi), p
               in zip(kernel, dilation, case.pads, out_pad, strict=True)]
    y = lax.conv_general_dilated(
        x, w_lax, (1,) * nd, padding, lhs_dilation=case.per_dim("stride"),
        rhs_dilation=dilation, feature_group_count=g,
        precision=lax.Precision.HIGHEST,
    )
    return y if b is None else y + b.reshape(1, -1, *(1,) * nd)


@functools.partial(jax.jit, static_argnames=("case", "mode"))
def _apply(case: TCase, args, mode="manual"):
    op = jaxconv.conv_transpose if mode == "manual" else jaxconv.autodiff.conv_transpose
    return op(*args, **dict(case.static))


FWD_RTOL = {np.dtype("float64"): 1e-12, np.dtype("float32"): 1e-5}


@given(case=transpose_cases(), dtype=S.float_dtypes, seed=S.seeds)
def test_forward_equals_pytorch_definition(case, dtype, seed):
    """The output, in both layouts, equals PyTorch's definition computed by float64 loops."""
    args = case.first_arrays(seed, dtype)
    y = _apply(case, to_layout(args, case.layout))
    assert y.dtype == dtype
    S.assert_scaled_close(y_to_first(y, case.layout), definition(case, *args),
                          FWD_RTOL[np.dtype(dtype)], "conv_transpose forward")


@settings(max_examples=max(settings().max_examples // 2, 10))
@given(case=transpose_cases(), seed=S.seeds)
def test_forward_equals_lax(case, seed):
    """The output equals lax.conv_general_dilated with lhs_dilation (float64)."""
    args = case.first_arrays(seed, np.float64)
    y = _apply(case, to_layout(args, case.layout))
    S.assert_scaled_close(y_to_first(y, case.layout), lax_reference(case, *args), 1e-12,
                          "conv_transpose vs lax")


@functools.partial(jax.jit, static_argnames=("case", "seed"))
def _transpose_then_conv(case: TCase, x, w, seed):
    """y = conv_transpose(x, w) and conv(dy, w) for dy = normal(seed + 5), both in the case's
    layout, and jaxconv.conv given the very same w."""
    y = jaxconv.conv_transpose(x, w, **dict(case.static))
    dy = jnp.asarray(S.normal(seed + 5, y.shape))
    back = jaxconv.conv(dy, w, stride=case.stride, padding=case.pads, dilation=case.dilation,
                        groups=case.groups, layout=case.layout)
    return y, dy, back


@settings(max_examples=max(settings().max_examples // 4, 10))
@given(case=transpose_cases(), seed=S.seeds)
def test_adjoint_of_conv(case, seed):
    """⟨dy, conv_transpose(x, w)⟩ = ⟨conv(dy, w), x⟩ in both layouts, with jaxconv.conv given the
    same w, stride, padding, dilation and groups (w is the kernel of the convolution being
    transposed). Where output_padding reaches past the stride, conv(dy) has
    ⌊output_padding / stride⌋ more positions than x: x is extended by zeros (outputs of the
    convolution that the transposed one never reads)."""
    x, w = case.arrays(seed, np.float64)[:2]
    y, dy, back = (np.asarray(a) for a in _transpose_then_conv(case, x, w, seed))
    spatial = slice(2, None) if case.layout == "channels_first" else slice(1, -1)
    extra = [b - i for b, i in zip(back.shape[spatial], x.shape[spatial], strict=True)]
    assert extra == [p // s for p, s in zip(case.per_dim("output_padding"),
                                             case.per_dim("stride"), strict=True)]
    pad = [(0, e) for e in extra]
    x_ext = np.pad(x, [(0, 0), (0, 0), *pad] if case.layout == "channels_first"
                   else [(0, 0), *pad, (0, 0)])
    lhs, rhs = float(np.vdot(dy, y)), float(np.vdot(back, x_ext))
    scale = float(np.abs(dy).ravel() @ np.abs(y).ravel()
                  + np.abs(back).ravel() @ np.abs(x_ext).ravel())
    assert abs(lhs - rhs) <= 1e-12 * max(scale, 1e-300), (lhs, rhs)


# --------------------------------------------------------------------------------------------
# The rules against JAX's derivative of the same forward.
# --------------------------------------------------------------------------------------------


@given(case=transpose_cases(), dtype=S.float_dtypes, seed=S.seeds)
def test_gradient_equals_autodiff(case, dtype, seed):
    """dx, dw (and db) pulled back from a random dy equal jax.vjp of the autodiff twin: float64 to
    1e-10, float32 to 1e-5 of the gradient's scale; default policy (the per-shape choice)."""
    S.check_manual_equals_autodiff(
        "conv_transpose", case.static, case.arrays(seed, dtype), seed=seed, policy="auto"
    )


# Each formulation of the rules, forced: the forward role (dx) and the dW role (dw), with the
# forward of conv_transpose (the dX role) by a formulation without lhs_dilation.
FORMULATIONS = {
    "xla": dict(forward="xla", dw="xla", dx="col2im"),
    "shifted": dict(forward="shifted", dw="shifted", dx="shifted"),
    "im2col": dict(forward="im2col", dw="im2col", dx="col2im"),
    "banded": dict(forward="banded", dw="banded", dx="banded"),
}


@functools.partial(jax.jit, static_argnames=("case", "name"), compiler_options=S._FAST_COMPILE)
def _vjp_forced(case: TCase, name: str, args, dy):
    out = {}
    with jaxconv.use(**FORMULATIONS[name]):
        for mode, op in (("manual", jaxconv.conv_transpose),
                         ("autodiff", jaxconv.autodiff.conv_transpose)):
            y, pullback = jax.vjp(lambda *a, op=op: op(*a, **dict(case.static)), *args)
            out[mode] = (y, pullback(dy))
    return out


@pytest.mark.parametrize("name", list(FORMULATIONS))
@settings(max_examples=max(settings().max_examples // 4, 10))
@given(case=transpose_cases(), dtype=S.float_dtypes, seed=S.seeds)
def test_gradient_equals_autodiff_every_formulation(name, case, dtype, seed):
    """The same with each formulation of the rules forced (jaxconv.use: one XLA
    convolution, shifted matrix products, im2col, banded): float64 1e-10, float32 1e-5."""
    args = case.arrays(seed, dtype)
    y_shape = jax.eval_shape(lambda *a: _apply(case, a), *args).shape
    dy = S.normal(seed + 1, y_shape, dtype)
    res = jax.device_get(_vjp_forced(case, name, args, dy))
    (y_m, g_m), (y_a, g_a) = res["manual"], res["autodiff"]
    rtol = S.RTOL[np.dtype(dtype)]
    S.assert_scaled_close(y_m, y_a, rtol, "forward")
    for i, (gm, ga) in enumerate(zip(g_m, g_a, strict=True)):
        assert gm.shape == args[i].shape and gm.dtype == args[i].dtype
        S.assert_scaled_close(gm, ga, rtol, f"{name}: gradient of argument {i}")


@settings(max_examples=max(settings().max_examples // 8, 10))
@given(case=transpose_cases(nd=st.integers(1, 2)), seed=S.seeds)
def test_finite_differences_drawn(case, seed):
    """Reverse mode against float64 central differences on drawn configurations."""
    args = case.arrays(seed, np.float64)
    check_grads(jax.jit(lambda *a: _apply(case, a)), args, order=1, modes=["rev"])


FD_CASES = [
    # channels-first x shape, w shape, kwargs
    ((2, 2, 5), (2, 3, 3), dict(stride=2, padding=((1, 2),), output_padding=1)),
    ((1, 2, 3), (2, 1, 2), dict(stride=1, padding=((2, 0),), output_padding=2, dilation=3)),
    ((1, 4, 3, 2), (4, 1, 2, 3), dict(stride=(3, 1), padding=(1, 0), output_padding=(2, 1),
                                      dilation=(1, 2), groups=2)),
    ((2, 3, 2, 3), (3, 1, 1, 2), dict(stride=2, padding=((0, 1), (2, 1)), groups=3)),
    ((1, 2, 2, 2, 2), (2, 2, 2, 1, 2), dict(stride=(2, 1, 2), padding=((1, 0), (0, 0), (0, 1)),
                                            output_padding=(1, 0, 0))),
]


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", FD_CASES)
def test_finite_differences_second_order(x_shape, w_shape, kwargs, layout):
    """First and second order (grad-of-grad) reverse mode against central differences, float64,
    with a bias."""
    groups = kwargs.get("groups", 1)
    args = (S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[1] * groups,)))
    args = to_layout(args, layout)
    f = jax.jit(lambda *a: jaxconv.conv_transpose(*a, layout=layout, **kwargs))
    check_grads(f, args, order=2, modes=["rev"])


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", FD_CASES[:3])
def test_dtypes(dtype, x_shape, w_shape, kwargs):
    """bfloat16, float16, float32, float64: output and gradients keep the dtype and agree with
    the twin run in float64 on the same values (to a few units of the dtype's rounding)."""
    groups = kwargs.get("groups", 1)
    shapes = (x_shape, w_shape, (w_shape[1] * groups,))
    args = tuple(jnp.asarray(S.normal(i, s), dtype) for i, s in enumerate(shapes))
    static = (*kwargs.items(), ("layout", "channels_first"))
    S.check_dtype_against_float64("conv_transpose", static, args, seed=7)


def test_gradient_of_gradient_equals_autodiff():
    """The Hessian-vector product through both rules (the rules of the rules: the convolution's
    forward and its dW rule, differentiated in turn by jaxconv.conv's own rules) equals the
    twin's."""
    x, w = S.normal(0, (2, 4, 5, 2)), S.normal(1, (3, 2, 3, 2))  # channels_last, C_out = 3
    kw = dict(stride=(2, 1), padding=((1, 2), (0, 1)), output_padding=(1, 0))
    v = (S.normal(2, x.shape), S.normal(3, w.shape))

    def hvp(op):
        def loss(x, w):
            return jnp.sum(jnp.tanh(op(x, w, **kw)))

        return jax.jvp(jax.grad(loss, argnums=(0, 1)), (x, w), v)[1]

    S.assert_trees_close(jax.jit(lambda: hvp(jaxconv.conv_transpose))(),
                         jax.jit(lambda: hvp(jaxconv.autodiff.conv_transpose))(), 1e-10, "hvp")


def test_lecture_example():
    """The lecture's 1-D example read backwards (the module docstring): y = (w₁x₁, w₂x₁ + w₁x₂,
    w₂x₂ + w₁x₃, w₂x₃); dx = conv(dy, w), dw = dy ⋆ x, db = Σ dy, line by line."""
    x1, x2, x3 = 1.5, -2.0, 0.25
    w1, w2, b = 3.0, -0.5, 0.125
    dy1, dy2, dy3, dy4 = 0.5, 2.0, -1.0, 4.0
    x, w = np.array([[[x1], [x2], [x3]]]), np.array([[[w1]], [[w2]]])  # (N, I, C), (K, 1, 1)
    y, pullback = jax.vjp(jaxconv.conv_transpose, x, w, np.array([b]))
    np.testing.assert_allclose(
        y.ravel(), [w1 * x1 + b, w2 * x1 + w1 * x2 + b, w2 * x2 + w1 * x3 + b, w2 * x3 + b])
    dx, dw, db = pullback(np.array([dy1, dy2, dy3, dy4]).reshape(1, 4, 1))
    np.testing.assert_allclose(dx.ravel(), [w1 * dy1 + w2 * dy2, w1 * dy2 + w2 * dy3,
                                            w1 * dy3 + w2 * dy4])
    np.testing.assert_allclose(dw.ravel(), [dy1 * x1 + dy2 * x2 + dy3 * x3,
                                            dy2 * x1 + dy3 * x2 + dy4 * x3])
    np.testing.assert_allclose(db, [dy1 + dy2 + dy3 + dy4])


def test_jit_and_vmap():
    """jit equals eager; vmap over an extra leading axis (per-example gradients too) equals a
    loop."""
    xs, w, b = S.normal(0, (3, 2, 4, 3)), S.normal(1, (2, 2, 2, 3)), S.normal(2, (2,))
    kw = dict(stride=2, padding=((0, 1), (1, 0)), output_padding=1, groups=1)

    def f(x, w, b):
        return jaxconv.conv_transpose(x, w, b, **kw)

    def loss(x, w, b):
        return jnp.sum(f(x, w, b) ** 2)

    S.assert_scaled_close(jax.jit(f)(xs, w, b), f(xs, w, b), 1e-14, "jit")
    per = jax.vmap(lambda x: f(x[None], w, b)[0])(xs)
    S.assert_scaled_close(per, f(xs, w, b), 1e-14, "vmap forward")
    grads = jax.jit(jax.vmap(jax.grad(loss, (0, 1, 2)), in_axes=(0, None, None)))(
        xs[:, None], w, b)
    for i in range(xs.shape[0]):
        one = jax.grad(loss, (0, 1, 2))(xs[i:i + 1], w, b)
        S.assert_trees_close(tuple(g[i] for g in grads), one, 1e-12, f"vmap grad {i}")


def test_rules_are_the_modules_own():
    """The manual op carries jaxconv's bwd rule; the twin carries none."""
    x, w = S.normal(0, (1, 3, 2)), S.normal(1, (2, 3, 2))
    eqns = [e for e in jax.make_jaxpr(lambda x, w: jaxconv.conv_transpose(x, w, stride=2))(x, w)
            .jaxpr.eqns if e.primitive.name == "custom_vjp_call"]
    assert len(eqns) == 1 and "_conv_transpose_bwd" in str(eqns[0].params["bwd"])
    twin = S.primitive_names(jax.make_jaxpr(
        lambda x, w: jaxconv.autodiff.conv_transpose(x, w, stride=2))(x, w))
    assert not any(name.startswith("custom_vjp") for name in twin), twin


def test_output_beyond_the_kernels_reach_is_bias_only():
    """Cropping may leave only positions no kernel offset reaches (x of size 1, stride 2,
    padding (1, 0), output_padding 1): the output is the bias, dx and dw are zero, db = Σ dy."""
    x, w, b = S.normal(0, (2, 1, 3)), S.normal(1, (1, 2, 3)), S.normal(2, (2,))
    kw = dict(stride=2, padding=((1, 0),), output_padding=1)
    y, pullback = jax.vjp(lambda *a: jaxconv.conv_transpose(*a, **kw), x, w, b)
    assert y.shape == (2, 1, 2)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))
    dx, dw, db = pullback(jnp.ones_like(y))
    assert not np.any(dx) and not np.any(dw)
    np.testing.assert_array_equal(db, [2.0, 2.0])


TORCH_CASES = [
    # channels-first x shape, w shape, kwargs with PyTorch's symmetric padding
    ((2, 2, 5), (2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 2), (4, 1, 2, 3), dict(stride=(3, 1), padding=(1, 0), output_padding=(2, 1),
                                      dilation=(1, 2), groups=2)),
    ((1, 2, 2, 2, 2), (2, 2, 2, 1, 2), dict(stride=(2, 1, 2), padding=(1, 0, 0),
                                            output_padding=(1, 0, 1), dilation=(1, 1, 2))),
]


def test_torch_conv_transpose_agrees():
    """If PyTorch is installed, its conv_transpose{1,2,3}d agrees (float64), run in a subprocess
    so that PyTorch's threads and allocator stay out of this process."""
    pytest.importorskip("torch")
    script = textwrap.dedent("""
        import json, sys, numpy as np, torch
        out = []
        for x_shape, w_shape, kw in json.loads(sys.argv[1]):
            x = np.random.default_rng(0).standard_normal(x_shape)
            w = np.random.default_rng(1).standard_normal(w_shape)
            fn = getattr(torch.nn.functional, f"conv_transpose{len(x_shape) - 2}d")
            out.append(fn(torch.tensor(x), torch.tensor(w), **kw).numpy().tolist())
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script, json.dumps(TORCH_CASES)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for (x_shape, w_shape, kw), y_torch in zip(TORCH_CASES, json.loads(res.stdout), strict=True):
        x = np.random.default_rng(0).standard_normal(x_shape)
        w = np.random.default_rng(1).standard_normal(w_shape)
        y = jaxconv.conv_transpose(x, w, layout="channels_first", **kw)
        S.assert_scaled_close(y, np.asarray(y_torch), 1e-12, f"torch {kw}")


# --------------------------------------------------------------------------------------------
# The input on which jaxlib 0.10.2 aborts the process (run in subprocesses).
# --------------------------------------------------------------------------------------------

# The issue's case: x (2, 1, 2, 6) NCHW, w (2, 1, 4, 2) OIHW, float32,
# lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (0, 0)), lhs_dilation=(3, 2)). As a transposed
# convolution (PyTorch's terms): stride (3, 2), the kernel flipped with its two channel axes
# swapped, (1, 2, 4, 2), and padding d·(K − 1) − lax's padding = ((2, 2), (1, 1)).
ABORT_CASE = TCase(x_shape=(2, 1, 2, 6), w_shape=(1, 2, 4, 2), bias=False, stride=(3, 2),
                   padding=((2, 2), (1, 1)), output_padding=0, dilation=1, groups=1,
                   layout="channels_first")

_ABORT_PRELUDE = """
import json, sys
import numpy as np, jax, jax.numpy as jnp
from jax import lax
x = np.random.default_rng(0).standard_normal((2, 1, 2, 6)).astype(np.float32)
w_lax = np.random.default_rng(1).standard_normal((2, 1, 4, 2)).astype(np.float32)
"""


def _run(script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", _ABORT_PRELUDE + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=600, env=env)


def _abort_arrays():
    x = np.random.default_rng(0).standard_normal((2, 1, 2, 6)).astype(np.float32)
    w_lax = np.random.default_rng(1).standard_normal((2, 1, 4, 2)).astype(np.float32)
    return x, np.flip(np.swapaxes(w_lax, 0, 1), (2, 3))


def definition_vjp(case: TCase, x, w, dy) -> tuple[np.ndarray, np.ndarray]:
    """dx, dw of PyTorch's definition pulled back from dy, by float64 loops (channels-first):
    each term y[j] += x[i]·w[k] sends dy[j]·w[k] to dx[i] and x[i]·dy[j] to dw[k]."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    stride, dilation, pads = case.per_dim("stride"), case.per_dim("dilation"), case.pads
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    _, c_in, *size = x.shape
    _, c_out_g, *kernel = w.shape
    c_in_g = c_in // case.groups
    for c in range(c_in):
        out = slice((c // c_in_g) * c_out_g, (c // c_in_g + 1) * c_out_g)
        for i in itertools.product(*map(range, size)):
            for k in itertools.product(*map(range, kernel)):
                j = tuple(a * s + b_ * d - lo for a, b_, s, d, (lo, _)
                          in zip(i, k, stride, dilation, pads, strict=True))
                if all(0 <= jj < o for jj, o in zip(j, dy.shape[2:], strict=True)):
                    d_y = dy[(slice(None), out, *j)]  # (N, C_out/g)
                    dx[(slice(None), c, *i)] += d_y @ w[(c, slice(None), *k)]
                    dw[(c, slice(None), *k)] += x[(slice(None), c, *i)] @ d_y
    return dx, dw


def test_issue_case_aborts_in_lax():
    """The reproduction: on this jaxlib the lax call dies in XLA's algebraic simplifier. Already
    its forward does (eagerly too), not only JAX's gradient of it. Skipped where the jaxlib in
    use no longer aborts."""
    res = _run("""
        y = lax.conv_general_dilated(x, w_lax, (1, 1), ((1, 1), (0, 0)), lhs_dilation=(3, 2))
        print("forward ran", y.shape, flush=True)
    """)
    if res.returncode == 0:
        pytest.skip("this jaxlib computes the lhs-dilated convolution without aborting")
    assert "forward ran" not in res.stdout
    assert "Window dimensions do not match RHS shape" in res.stderr, res.stderr[-2000:]


def test_issue_case_gradient_exits_cleanly():
    """jaxconv's gradient of exactly the issue's case (float32, jax.jit(jax.grad(loss,
    argnums=1)) with loss = Σ y², and argnums=0 too) runs to the end under the default policy and
    under every formulation of the rules, with the values of PyTorch's definition (float64 loops:
    y, then dw and dx for dy = 2y)."""
    res = _run("""
        import jaxconv
        w = np.flip(np.swapaxes(w_lax, 0, 1), (2, 3)).copy()
        kw = dict(stride=(3, 2), padding=((2, 2), (1, 1)), layout="channels_first")

        def loss(x, w):
            return jnp.sum(jaxconv.conv_transpose(x, w, **kw) ** 2)

        rules = [{}] + [dict(forward=f, dw=f) for f in ("xla", "shifted", "im2col", "banded")]
        out = []
        for forced in rules:
            with jaxconv.use(**forced):
                y = jax.jit(lambda x, w: jaxconv.conv_transpose(x, w, **kw))(x, w)
                dw = jax.jit(jax.grad(loss, argnums=1))(x, w)
                dx = jax.jit(jax.grad(loss, argnums=0))(x, w)
            out.append([np.asarray(a).tolist() for a in (y, dx, dw)])
        print(json.dumps(out))
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    x, w = _abort_arrays()
    y_ref = definition(ABORT_CASE, x, w)
    dx_ref, dw_ref = definition_vjp(ABORT_CASE, x, w, 2 * y_ref)
    for y, dx, dw in json.loads(res.stdout):
        S.assert_scaled_close(y, y_ref, 1e-5, "forward")
        S.assert_scaled_close(dw, dw_ref, 1e-5, "dw")
        S.assert_scaled_close(dx, dx_ref, 1e-5, "dx")


def test_issue_case_under_the_xla_policy():
    """Under the "xla" policy the forward of conv_transpose would be conv_dx as one XLA
    convolution with lhs_dilation, the aborting call itself; the choice computes such a dX as
    shifted products instead (``_choice.xla_dx_may_abort``), so the process survives."""
    res = _run("""
        import jaxconv
        w = np.flip(np.swapaxes(w_lax, 0, 1), (2, 3)).copy()
        with jaxconv.policy("xla"):
            jaxconv.conv_transpose(x, w, stride=(3, 2), padding=((2, 2), (1, 1)),
                                   layout="channels_first").block_until_ready()
    """)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("policy", ["auto", "xla"])
@settings(max_examples=max(settings().max_examples // 4, 10))
@given(case=transpose_cases(), seed=S.seeds)
def test_rules_never_dilate_the_input(policy, case, seed):
    """The backward program (the pullback alone, traced, not compiled) has no convolution with
    lhs_dilation, the pattern jaxlib 0.10.2 aborts on, under either policy: dx is a plain
    strided convolution and dw a convolution that dilates its kernel, never its input."""
    args = case.arrays(seed, np.float64)
    def dilations(jaxpr):
        return [eqn.params["lhs_dilation"] for eqn in S.equations(jaxpr)
                if eqn.primitive.name == "conv_general_dilated"]

    def f(*a):
        return jaxconv.conv_transpose(*a, **dict(case.static))

    with jaxconv.policy(policy):
        y, pullback = jax.vjp(f, *args)
        backward = dilations(jax.make_jaxpr(pullback)(jnp.ones_like(y)))
        forward = dilations(jax.make_jaxpr(f)(*args))
    assert all(set(d) == {1} for d in backward), backward
    if policy == "xla" and forward:  # the check sees them: XLA's dX rule dilates by the stride
        assert forward == [case.per_dim("stride")], forward


# --------------------------------------------------------------------------------------------
# Bad input: jaxconv's own one-line errors, naming the argument.
# --------------------------------------------------------------------------------------------


def _ct(x_shape, w_shape, b_shape=None, **kwargs):
    """(a call of conv_transpose on (x, w[, b]), those arrays)."""
    args = (np.ones(x_shape), np.ones(w_shape)) + (() if b_shape is None else (np.ones(b_shape),))
    return (lambda *a: jaxconv.conv_transpose(*a, **kwargs)), args


ERROR_CASES = {
    "output_padding >= max(stride, dilation)": (
        _ct((1, 5, 2), (3, 4, 2), stride=2, output_padding=2), ValueError,
        r"output_padding must be smaller than max\(stride, dilation\) = max\(2, 1\) = 2.*got 2"),
    "output_padding with stride 1, dilation 1": (
        _ct((1, 5, 2), (3, 4, 2), output_padding=1), ValueError,
        r"output_padding must be smaller than max\(stride, dilation\)"),
    "negative output_padding": (
        _ct((1, 5, 2), (3, 4, 2), stride=2, output_padding=-1), ValueError,
        r"output_padding must be non-negative.*got -1"),
    "output_padding per dim length": (
        _ct((1, 5, 5, 2), (3, 3, 4, 2), stride=2, output_padding=(1,)), ValueError,
        r"output_padding must be an int or a sequence of 2 ints.*length 1"),
    "kernel C_in != x's channels (channels_last)": (
        _ct((1, 5, 3), (3, 4, 2)), ValueError,
        r"w must have C_in = 3 input channels \(\*kernel, C_out // groups, C_in\).*"
        r"got w of shape \(3, 4, 2\)"),
    "kernel C_in != x's channels (channels_first)": (
        _ct((1, 3, 5), (2, 4, 3), layout="channels_first"), ValueError,
        r"w must have C_in = 3 input channels \(C_in, C_out // groups, \*kernel\).*"
        r"got w of shape \(2, 4, 3\) for x of shape \(1, 3, 5\)"),
    "groups do not divide C_in": (
        _ct((1, 5, 3), (3, 4, 3), groups=2), ValueError, r"groups=2 must divide the input"),
    "w rank": (
        _ct((1, 5, 2), (3, 3, 4, 2)), ValueError, r"w must have the same rank as x \(3"),
    "x rank": (
        _ct((5, 2), (3, 2)), ValueError, r"x must have rank 3, 4 or 5.*got shape \(5, 2\)"),
    "bias shape": (
        _ct((1, 5, 4), (3, 3, 4), (3,), groups=2), ValueError,
        r"b must have shape \(C_out,\) = \(6,\) \(w's C_out // groups = 3 times groups = 2\), "
        r"got shape \(3,\)"),
    "negative padding": (
        _ct((1, 5, 2), (3, 4, 2), padding=((1, -1),)), ValueError,
        r"padding must be non-negative"),
    "negative padding per dim": (
        _ct((1, 5, 5, 2), (3, 3, 4, 2), padding=(1, -2)), ValueError,
        r"padding must be non-negative in every dimension.*\(1, -2\)"),
    "padding string": (
        _ct((1, 5, 2), (3, 4, 2), padding="SAME"), TypeError,
        r"padding must be an int, or one int or one \(low, high\) pair per spatial dimension "
        r"\(1\).*got the string 'SAME'"),
    "padding crops everything": (
        _ct((1, 2, 2), (2, 4, 2), padding=((2, 2),)), ValueError,
        r"padding \(2, 2\) leaves no output in spatial dimension 0.*= -1"),
    "bad layout": (
        _ct((1, 5, 2), (3, 4, 2), layout="NHWC"), ValueError, r"layout must be one of"),
    "stride zero": (
        _ct((1, 5, 2), (3, 4, 2), stride=0), ValueError, r"stride must be positive"),
    "integer x": (
        (lambda x, w: jaxconv.conv_transpose(x.astype(int), w), (np.ones((1, 5, 2)),
                                                                 np.ones((3, 4, 2)))),
        TypeError, r"x must have a floating dtype"),
}


@pytest.mark.parametrize("transform", ["eager", "jit", "grad"])
@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_bad_input_is_one_line_naming_the_argument(name, transform):
    """Raised by jaxconv's own checks, as one line, eagerly, under jit and under grad."""
    (fn, args), error, match = ERROR_CASES[name]
    call = {"eager": fn, "jit": jax.jit(fn),
            "grad": jax.grad(lambda x, *rest: jnp.sum(fn(x, *rest)))}[transform]
    with pytest.raises(error, match=match) as info:
        call(*args)
    assert "\n" not in str(info.value)
    assert info.traceback[-1].path.name == "_checks.py", info.traceback[-1].path
