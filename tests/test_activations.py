"""Elementwise activations: each rule dx = dy·f′(x) (from the saved output for sigmoid and tanh,
the mask for relu) against JAX's derivative of the same forward, finite differences and every
floating dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxconv
import jaxconv.autodiff

NAMES = ["relu", "leaky_relu", "sigmoid", "tanh", "softplus"]
# sup |f′| of the saturating activations: their gradient is compared relative to the largest one
# the drawn dy can produce (see strategies.check_manual_equals_autodiff).
MAX_SLOPE = {"sigmoid": 0.25, "tanh": 1.0}
SLOPES = (0.0, 0.01, 0.2, 1.0)  # static: a few values, so that jit's cache is reused


@st.composite
def activation_inputs(draw):
    """x of 0 to 3 axes (S.SHAPES), values of scale 0.1 to 30 (sigmoid/softplus saturation), with
    exact zeros at random places (the kinks: relu′(0) = 0 and leaky_relu′(0) = α in both modes)."""
    shape, dtype, seed = draw(S.shapes), draw(S.float_dtypes), draw(S.seeds)
    scale = draw(st.sampled_from((0.1, 1.0, 30.0)))
    x = S.normal(seed, shape, np.float64) * scale
    x = np.where(S.normal(seed + 4, shape) > 1.0, 0.0, x).astype(dtype)
    return x, seed


@pytest.mark.parametrize("name", NAMES)
@given(drawn=activation_inputs(), slope=st.sampled_from(SLOPES))
def test_gradient_equals_autodiff(name, drawn, slope):
    x, seed = drawn
    static = (("negative_slope", slope),) if name == "leaky_relu" else ()
    S.check_manual_equals_autodiff(name, static, (x,), seed=seed, max_slope=MAX_SLOPE.get(name))


def test_kinks():
    """relu′(0) = 0 and leaky_relu′(0) = α: the documented convention."""
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jaxconv.relu(x)))(x), [0, 0, 1])
    np.testing.assert_array_equal(
        jax.grad(lambda x: jnp.sum(jaxconv.leaky_relu(x, 0.25)))(x), [0.25, 0.25, 1]
    )


@pytest.mark.parametrize("name", NAMES)
def test_finite_differences(name):
    """Away from the kinks (|x| >= 0.1 while the step is 1e-3)."""
    x = S.normal(0, (3, 4))
    x = np.where(np.abs(x) < 0.1, 0.5, x)
    check_grads(jax.jit(getattr(jaxconv, name)), (x,), order=2, modes=["rev"])


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES)
def test_dtypes(dtype, name):
    x = jnp.asarray(S.normal(2, (4, 5)) * 3, dtype)
    S.check_dtype_against_float64(name, (), (x,), seed=2)


@pytest.mark.parametrize("name", NAMES)
def test_forward_jaxpr_holds_the_custom_vjp(name):
    x = S.normal(0, (3,))
    manual = S.primitive_names(jax.make_jaxpr(getattr(jaxconv, name))(x))
    twin = S.primitive_names(jax.make_jaxpr(getattr(jaxconv.autodiff, name))(x))
    assert "custom_vjp_call" in manual
    assert not any(p.startswith("custom_vjp") for p in twin), twin


# --------------------------------------------------------------------------------------------
# leaky_relu's slope as an array (traced under jit and grad), differentiated like
# jax.nn.leaky_relu's.
# --------------------------------------------------------------------------------------------

SLOPE_SHAPES = [(), (4,), (3, 1), (3, 4), (1, 4)]  # broadcast to x's (3, 4)


def _away_from_zero(seed, shape):
    """Values with |x| >= 0.1: jax.nn.leaky_relu takes the slope 1 at x = 0 (it tests x >= 0),
    jaxconv takes α (x > 0, see test_kinks); elsewhere the two are the same function."""
    x = S.normal(seed, shape)
    return np.where(np.abs(x) < 0.1, 0.5, x)


@pytest.mark.parametrize("slope_shape", SLOPE_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["manual", "autodiff"])
def test_leaky_relu_traced_slope_equals_jax_nn(mode, slope_shape):
    """Values and gradients w.r.t. x and the slope, under jit(grad), against jax.nn.leaky_relu
    (float64)."""
    op = (jaxconv if mode == "manual" else jaxconv.autodiff).leaky_relu
    x = _away_from_zero(0, (3, 4))
    slope = np.abs(S.normal(1, slope_shape)) * 0.3
    dy = S.normal(2, (3, 4))

    def loss(f):
        return jax.jit(jax.value_and_grad(lambda x, a: jnp.vdot(dy, f(x, a)), argnums=(0, 1)))

    value, (dx, dslope) = loss(op)(x, slope)
    ref_value, (ref_dx, ref_dslope) = loss(jax.nn.leaky_relu)(x, slope)
    np.testing.assert_allclose(value, ref_value, rtol=1e-14)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-14)
    assert dslope.shape == slope.shape
    np.testing.assert_allclose(dslope, ref_dslope, rtol=1e-13)
    # The slope as a traced scalar inside the function (a learned PReLU parameter).
    np.testing.assert_allclose(
        jax.jit(lambda x, a: op(x, a * 2.0))(x, slope), jax.nn.leaky_relu(x, slope * 2.0),
        rtol=1e-14)


@given(drawn=activation_inputs(), slope_seed=S.seeds)
def test_leaky_relu_array_slope_gradient_equals_autodiff(drawn, slope_seed):
    """The rule dα = Σ dy·x over x <= 0 (summed to α's shape) against JAX's derivative of the
    same forward, exact zeros (the kink) included: α of x's shape, of its last axis, a scalar."""
    x, seed = drawn
    for shape in {x.shape, x.shape[-1:], ()}:
        slope = (np.abs(S.normal(slope_seed, shape)) * 0.3).astype(x.dtype)
        S.check_manual_equals_autodiff("leaky_relu", (), (x, slope), seed=seed)


def test_leaky_relu_rule_by_hand():
    x = np.array([[-2.0, 0.0, 3.0], [-1.0, -4.0, 1.0]])
    dy = np.array([[1.0, 10.0, 100.0], [1000.0, 1e4, 1e5]])
    slope = np.array([0.1, 0.2, 0.3])
    y, pullback = jax.vjp(jaxconv.leaky_relu, x, slope)
    dx, dslope = pullback(dy)
    np.testing.assert_allclose(y, [[-0.2, 0.0, 3.0], [-0.1, -0.8, 1.0]])
    np.testing.assert_allclose(dx, [[0.1, 2.0, 100.0], [100.0, 2e3, 1e5]])
    # per channel: Σ over the rows of dy·x where x <= 0
    np.testing.assert_allclose(dslope, [-2.0 - 1000.0, 0.0 - 4e4, 0.0])


def test_leaky_relu_number_slope_is_a_constant_of_the_rule():
    """A Python-number slope is static: the pullback computes dx alone (no dα reduction), as
    shard_map with a varying batch needs (see test_transforms); an array slope gets its dα."""
    x, dy = S.normal(0, (3, 4)), S.normal(1, (3, 4))

    def pullback_primitives(slope):
        return S.primitive_names(jax.make_jaxpr(
            lambda x, dy: jax.vjp(lambda x: jaxconv.leaky_relu(x, slope), x)[1](dy))(x, dy))

    assert "reduce_sum" not in pullback_primitives(0.1)
    assert "reduce_sum" in pullback_primitives(jnp.asarray(0.1))
