"""The losses' rules (dz = (softmax − onehot)/M; dpred = 2(pred − target)/P = −dtarget) against
JAX's derivative of the same forward, by hand, finite differences and every floating dtype."""

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
def classification(draw):
    """logits (*lead, C) with 0 to 2 leading axes and C in {1, 2, 5}, integer labels (*lead)."""
    lead, classes = draw(S.lead_shapes), draw(S.sizes)
    dtype, seed = draw(S.float_dtypes), draw(S.seeds)
    scale = draw(st.sampled_from((0.1, 1.0, 30.0)))
    logits = (S.normal(seed, (*lead, classes)) * scale).astype(dtype)
    labels = np.random.default_rng(seed + 7).integers(0, classes, lead).astype(np.int32)
    return logits, labels, seed


@given(drawn=classification())
def test_softmax_cross_entropy_gradient_equals_autodiff(drawn):
    logits, labels, seed = drawn
    # |dz| <= |dL| / M entrywise; where softmax saturates, p − onehot cancels in float32 in both
    # modes, so the error is measured against that bound (see check_manual_equals_autodiff).
    S.check_manual_equals_autodiff("softmax_cross_entropy", (), (logits,), (labels,), seed=seed,
                                   max_slope=1 / max(labels.size, 1))


@given(shape=S.shapes, dtype=S.float_dtypes, seed=S.seeds)
def test_mse_gradient_equals_autodiff(shape, dtype, seed):
    pred, target = S.normal(seed, shape, dtype), S.normal(seed + 2, shape, dtype)
    S.check_manual_equals_autodiff("mse", (), (pred, target), seed=seed)


def test_rules_by_hand():
    logits, labels = S.normal(0, (4, 3)), np.array([0, 2, 1, 2])
    grad = jax.grad(jaxconv.softmax_cross_entropy)(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, (p - np.eye(3)[labels]) / 4, rtol=1e-12)
    pred, target = S.normal(1, (2, 5)), S.normal(2, (2, 5))
    dpred, dtarget = jax.grad(jaxconv.mse, argnums=(0, 1))(pred, target)
    np.testing.assert_allclose(dpred, 2 * (pred - target) / 10, rtol=1e-12)
    np.testing.assert_allclose(dtarget, -2 * (pred - target) / 10, rtol=1e-12)


def test_finite_differences():
    labels = np.array([[1, 0, 2], [2, 2, 0]])
    check_grads(jax.jit(lambda z: jaxconv.softmax_cross_entropy(z, labels)),
                (S.normal(0, (2, 3, 3)),), order=2, modes=["rev"])
    check_grads(jax.jit(jaxconv.mse), (S.normal(1, (3, 2)), S.normal(2, (3, 2))), order=2,
                modes=["rev"])


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
def test_dtypes(dtype):
    logits = jnp.asarray(S.normal(0, (5, 4)) * 2, dtype)
    S.check_dtype_against_float64("softmax_cross_entropy", (), (logits,),
                                  (np.array([0, 3, 1, 1, 2]),), seed=4)
    pred, target = (jnp.asarray(S.normal(i, (3, 4)), dtype) for i in (1, 2))
    S.check_dtype_against_float64("mse", (), (pred, target), seed=4)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "mse"])
def test_forward_jaxpr_holds_the_custom_vjp(name):
    a, b = S.normal(0, (2, 3)), (np.array([0, 2]) if name != "mse" else S.normal(1, (2, 3)))
    manual = S.primitive_names(jax.make_jaxpr(getattr(jaxconv, name))(a, b))
    twin = S.primitive_names(jax.make_jaxpr(getattr(jaxconv.autodiff, name))(a, b))
    assert "custom_vjp_call" in manual
    assert not any(p.startswith("custom_vjp") for p in twin), twin
