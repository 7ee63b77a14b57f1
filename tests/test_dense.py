"""The perceptron layer's rules (dx = dy·wᵀ, dw = xᵀ·dy, db = Σ dy) against JAX's derivative of
the same forward, against finite differences, and in every floating dtype."""

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


@st.composite
def dense_arrays(draw, dtype=S.float_dtypes):
    """x (*lead, n_in) with 0 to 2 leading (batch) axes, w (n_in, n_out), optional b (n_out,);
    n_in and n_out from {1, 2, 5}."""
    lead = draw(S.lead_shapes)
    n_in, n_out = draw(S.sizes), draw(S.sizes)
    dtype, seed = draw(dtype), draw(S.seeds)
    x, w = S.normal(seed, (*lead, n_in), dtype), S.normal(seed + 2, (n_in, n_out), dtype)
    args = (x, w, S.normal(seed + 3, (n_out,), dtype)) if draw(st.booleans()) else (x, w)
    return args, seed


@given(drawn=dense_arrays())
def test_gradient_equals_autodiff(drawn):
    args, seed = drawn
    S.check_manual_equals_autodiff("dense", (), args, seed=seed)


@pytest.mark.parametrize(
    "x_shape, n_out, bias", [((5,), 3, True), ((4, 3), 2, False), ((2, 3, 4), 5, True)]
)
def test_finite_differences(x_shape, n_out, bias):
    args = (S.normal(0, x_shape), S.normal(1, (x_shape[-1], n_out)))
    args += (S.normal(2, (n_out,)),) if bias else ()
    check_grads(jax.jit(jaxconv.dense), args, order=2, modes=["rev"])


def test_rules_by_hand():
    """dx = dy·wᵀ, dw = xᵀ·dy (batch contracted), db = Σ dy, with numpy as the referee."""
    x, w, b = S.normal(0, (2, 3, 4)), S.normal(1, (4, 5)), S.normal(2, (5,))
    y, pullback = jax.vjp(jaxconv.dense, x, w, b)
    dy = S.normal(3, y.shape)
    dx, dw, db = pullback(dy)
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-12)
    np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-12)
    np.testing.assert_allclose(dw, np.einsum("abi,abo->io", x, dy), rtol=1e-12)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 1)), rtol=1e-12)


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
def test_dtypes(dtype):
    args = tuple(jnp.asarray(S.normal(i, s), dtype) for i, s in enumerate(((3, 6), (6, 4), (4,))))
    S.check_dtype_against_float64("dense", (), args, seed=5)


def test_forward_jaxpr_holds_the_custom_vjp():
    x, w = S.normal(0, (3, 4)), S.normal(1, (4, 2))
    manual = S.primitive_names(jax.make_jaxpr(jaxconv.dense)(x, w))
    twin = S.primitive_names(jax.make_jaxpr(jaxconv.autodiff.dense)(x, w))
    assert "custom_vjp_call" in manual
    assert not any(name.startswith("custom_vjp") for name in twin), twin
