"""The convolution's hand-derived rules (db = Σ dy, dw = x ⋆ dy, dx = full-conv(rot180 w, dy))
against JAX's own derivative of the same forward, on hypothesis-drawn configurations, against
central finite differences, and in every floating dtype; plus the structure of the programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxconv
import jaxconv.autodiff

# --------------------------------------------------------------------------------------------
# Manual rule == autodiff, over the whole configuration space.
# --------------------------------------------------------------------------------------------


@given(case=S.conv_cases(), dtype=S.float_dtypes, seed=S.seeds)
def test_gradient_equals_autodiff(case, dtype, seed):
    """dx, dw (and db when there is a bias) pulled back from a random dy agree with jax.vjp of
    the autodiff twin: float64 to 1e-10, float32 to 1e-5 of the gradient's scale. The rules are
    computed by XLA's convolution here (the lecture's formulas as three convolutions)."""
    S.check_manual_equals_autodiff(
        "conv", case.static, case.arrays(seed, dtype), seed=seed, policy="xla"
    )


@settings(max_examples=max(settings().max_examples // 8, 10))
@given(case=S.conv_cases(nd=st.integers(1, 2)), dtype=S.float_dtypes, seed=S.seeds)
def test_gradient_equals_autodiff_default_formulations(case, dtype, seed):
    """The same under the default policy, whose per-shape choice computes the rules as shifted
    matrix products or im2col / col2im (jaxconv.ops._formulations). Fewer examples and at most 2
    spatial dims: these formulations unroll over the kernel offsets and compile slowly."""
    S.check_manual_equals_autodiff(
        "conv", case.static, case.arrays(seed, dtype), seed=seed, policy="auto"
    )


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_nd_is_conv(nd):
    """conv1d/conv2d/conv3d are conv on rank nd + 2 (same values, same manual gradients)."""
    x = S.normal(0, (2, *(5,) * nd, 3))
    w = S.normal(1, (*(2,) * nd, 3, 4))
    b = S.normal(2, (4,))
    name = f"conv{nd}d"
    kw = dict(stride=2, padding="SAME")
    for mode in (jaxconv, jaxconv.autodiff):

        @jax.jit
        def both(x, w, b, mode=mode):
            def value(f):
                return jax.value_and_grad(lambda *a: jnp.sum(f(*a, **kw) ** 2), (0, 1, 2))

            return value(getattr(mode, name))(x, w, b), value(mode.conv)(x, w, b)

        S.assert_trees_close(*both(x, w, b), 0.0, name)


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((2, 3, 7), (6, 1, 3), dict(stride=2, padding=((1, 2),), dilation=2, groups=3)),
        ((1, 4, 5, 6), (2, 2, 3, 2), dict(stride=(2, 1), padding="SAME", groups=2)),
    ],
)
def test_channels_first_is_a_transpose_of_channels_last(x_shape, w_shape, kwargs):
    """channels_first is an adapter: the same values and gradients as channels_last on the
    transposed arrays (PyTorch's NC* / OI* layouts)."""
    nd = len(x_shape) - 2
    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[0],))

    def first(x, w, b):
        return jaxconv.conv(x, w, b, layout="channels_first", **kwargs)

    def last(x, w, b):
        x = jnp.moveaxis(x, 1, -1)
        w = jnp.transpose(w, (*range(2, nd + 2), 1, 0))
        return jnp.moveaxis(jaxconv.conv(x, w, b, **kwargs), -1, 1)

    @jax.jit
    def both(x, w, b, dy):
        (y1, pull1), (y2, pull2) = jax.vjp(first, x, w, b), jax.vjp(last, x, w, b)
        return (y1, pull1(dy)), (y2, pull2(dy))

    dy = S.normal(5, jax.eval_shape(first, x, w, b).shape)
    S.assert_trees_close(*both(x, w, b, dy), 1e-12, "channels_first vs channels_last")


# --------------------------------------------------------------------------------------------
# Central finite differences (float64), first and second order, reverse mode.
# --------------------------------------------------------------------------------------------

FD_CASES = [
    # (x shape, w shape, kwargs)  channels_last unless stated
    ((2, 6, 2), (3, 2, 3), dict()),
    ((1, 7, 2), (2, 2, 2), dict(stride=3, padding=((2, 0),), dilation=2)),
    ((2, 5, 4, 2), (2, 3, 1, 4), dict(stride=(2, 1), padding="SAME", groups=2)),
    ((1, 4, 5, 3), (3, 2, 1, 3), dict(padding=((1, 2), (0, 1)), dilation=(1, 2), groups=3)),
    ((1, 3, 4, 4, 2), (2, 1, 2, 2, 2), dict(stride=(1, 2, 1), padding="FULL")),
    ((2, 2, 5, 4), (4, 2, 3, 2), dict(stride=2, padding=1, layout="channels_first")),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs", FD_CASES)
def test_finite_differences(x_shape, w_shape, kwargs):
    """Reverse mode, first and second order, against central differences; with a bias on every
    other case."""
    c_out = w_shape[0] if kwargs.get("layout") == "channels_first" else w_shape[-1]
    bias = FD_CASES.index((x_shape, w_shape, kwargs)) % 2 == 0
    args = (S.normal(0, x_shape), S.normal(1, w_shape)) + ((S.normal(2, (c_out,)),) if bias else ())
    check_grads(jax.jit(lambda *a: jaxconv.conv(*a, **kwargs)), args, order=2, modes=["rev"])


# --------------------------------------------------------------------------------------------
# Dtypes: forward and backward in bfloat16, float16, float32, float64.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", FD_CASES[1:5])
def test_dtypes(dtype, x_shape, w_shape, kwargs):
    c_out = w_shape[-1]
    args = tuple(jnp.asarray(S.normal(i, s), dtype)
                 for i, s in enumerate((x_shape, w_shape, (c_out,))))
    S.check_dtype_against_float64("conv", tuple(kwargs.items()), args, seed=7)


# --------------------------------------------------------------------------------------------
# The manual op really uses its own rules, and they are convolutions.
# --------------------------------------------------------------------------------------------

JAXPR_CASES = [
    ((2, 6, 3), (3, 3, 4), dict(stride=2, padding=((1, 0),))),
    ((2, 6, 5, 4), (2, 3, 2, 4), dict(dilation=(2, 1), groups=2, padding="SAME")),
    ((1, 4, 4, 4, 3), (2, 2, 2, 1, 3), dict(groups=3, stride=(1, 2, 3))),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_forward_jaxpr_holds_the_custom_vjp(x_shape, w_shape, kwargs):
    x, w = S.normal(0, x_shape), S.normal(1, w_shape)
    manual = S.primitive_names(jax.make_jaxpr(lambda x, w: jaxconv.conv(x, w, **kwargs))(x, w))
    twin = S.primitive_names(
        jax.make_jaxpr(lambda x, w: jaxconv.autodiff.conv(x, w, **kwargs))(x, w)
    )
    assert "custom_vjp_call" in manual
    assert not any(name.startswith("custom_vjp") for name in twin), twin


def _grad_jaxpr(op, x, w, b, kwargs):
    r = S.normal(9, jax.eval_shape(lambda: op(x, w, b, **kwargs)).shape)
    return jax.make_jaxpr(
        jax.grad(lambda x, w, b: jnp.sum(op(x, w, b, **kwargs) * r), argnums=(0, 1, 2))
    )(x, w, b)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_gradient_jaxpr_is_three_convolutions(x_shape, w_shape, kwargs):
    """With XLA's convolution as the formulation, the manual gradient program is the forward
    convolution plus the two rules' convolutions (dx, dw) and db's sum: no matrix product, no
    loop over positions."""
    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[-1],))
    with S.conv_policy("xla"):
        names = S.primitive_names(_grad_jaxpr(jaxconv.conv, x, w, b, kwargs))
    assert names.count("conv_general_dilated") == 3, names
    assert "reduce_sum" in names  # db = Σ dy
    for banned in ("dot_general", "while", "scan", "cond", "custom_vjp_call"):
        assert banned not in names, (banned, names)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_gradient_never_forms_a_jacobian(x_shape, w_shape, kwargs):
    """Whatever formulation the default policy picks: no loop primitive, and no matrix product
    with an operand or result as large as the Jacobian ∂y/∂x or ∂y/∂w."""
    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[-1],))
    y_size = int(np.prod(jax.eval_shape(lambda: jaxconv.conv(x, w, b, **kwargs)).shape))
    jacobian = y_size * min(x.size, w.size)
    for eqn in S.equations(_grad_jaxpr(jaxconv.conv, x, w, b, kwargs)):
        assert eqn.primitive.name not in ("while", "scan"), eqn
        if eqn.primitive.name == "dot_general":
            sizes = [int(np.prod(v.aval.shape)) for v in (*eqn.invars, *eqn.outvars)]
            assert max(sizes) < jacobian, (sizes, jacobian, eqn)


def test_rules_are_not_the_autodiff_ones():
    """The two modes really differ as programs (the manual one is not JAX re-deriving its
    forward): only the manual forward program carries a bwd rule, and that rule is the module's."""
    x, w = S.normal(0, (1, 5, 2)), S.normal(1, (2, 2, 3))
    (eqn,) = [e for e in jax.make_jaxpr(jaxconv.conv)(x, w).jaxpr.eqns
              if e.primitive.name == "custom_vjp_call"]
    assert "_conv_bwd" in str(eqn.params["bwd"])
