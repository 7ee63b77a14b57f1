"""The losses' rules against JAX's derivative of the same forward, against optax's functions of
the same names (values and gradients, float64), by hand, finite differences and every floating
dtype. The rules, per example m: softmax cross-entropy dz = dLₘ · (softmax · Σ y − y) and
dy = −dLₘ · log softmax; with integer labels dz = dLₘ · (softmax − onehot); squared error
dp = dL · 2(p − q) = −dq."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxconv
import jaxconv.autodiff

NAMES = ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels", "squared_error"]


def _distribution(seed, shape, sharp=1.0):
    """Rows that sum to 1 over the last axis (soft labels), from ``seed``."""
    w = np.exp(sharp * S.normal(seed, shape))
    return w / w.sum(-1, keepdims=True)


@st.composite
def classification(draw, integer=True):
    """logits (*lead, C) with 0 to 2 leading axes and C in {1, 2, 5}; integer labels (*lead), or
    probability labels (*lead, C) whose rows sum to 1 (one-hot rows, sometimes)."""
    lead, classes = draw(S.lead_shapes), draw(S.sizes)
    dtype, seed = draw(S.float_dtypes), draw(S.seeds)
    scale = draw(st.sampled_from((0.1, 1.0, 30.0)))
    logits = (S.normal(seed, (*lead, classes)) * scale).astype(dtype)
    labels = np.random.default_rng(seed + 7).integers(0, classes, lead).astype(np.int32)
    if not integer:
        labels = (np.eye(classes)[labels] if draw(st.booleans())
                  else _distribution(seed + 9, (*lead, classes), 3.0)).astype(dtype)
    return logits, labels, seed


@given(drawn=classification(integer=False))
def test_softmax_cross_entropy_gradient_equals_autodiff(drawn):
    logits, labels, seed = drawn
    # |dz| <= |dLₘ| entrywise for rows that sum to 1; where softmax saturates, p − y cancels in
    # float32 in both modes, so the error is measured against that bound (see
    # check_manual_equals_autodiff).
    S.check_manual_equals_autodiff("softmax_cross_entropy", (), (logits, labels), seed=seed,
                                   max_slope=1.0)


@given(drawn=classification())
def test_softmax_cross_entropy_with_integer_labels_gradient_equals_autodiff(drawn):
    logits, labels, seed = drawn
    S.check_manual_equals_autodiff("softmax_cross_entropy_with_integer_labels", (), (logits,),
                                   (labels,), seed=seed, max_slope=1.0)


@given(shape=S.shapes, dtype=S.float_dtypes, seed=S.seeds)
def test_squared_error_gradient_equals_autodiff(shape, dtype, seed):
    pred, target = S.normal(seed, shape, dtype), S.normal(seed + 2, shape, dtype)
    S.check_manual_equals_autodiff("squared_error", (), (pred, target), seed=seed)


# --------------------------------------------------------------------------------------------
# The same names as optax: same values, same gradients, one loss per example.
# --------------------------------------------------------------------------------------------


def _vjp(f, args, dy):
    y, pullback = jax.vjp(f, *args)
    return y, pullback(dy)


@pytest.mark.parametrize("mode", ["manual", "autodiff"])
@pytest.mark.parametrize("lead", [(), (1,), (4,), (2, 3)])
def test_softmax_cross_entropy_equals_optax(mode, lead):
    """Probability labels, including rows that do not sum to 1 (optax does not normalise them,
    and neither does the rule: dz = dL · (softmax · Σ y − y))."""
    ns = jaxconv if mode == "manual" else jaxconv.autodiff
    logits = S.normal(0, (*lead, 5)) * 3
    for labels in (_distribution(1, (*lead, 5)), 2.5 * _distribution(2, (*lead, 5)),
                   np.eye(5)[np.random.default_rng(3).integers(0, 5, lead)]):
        dy = S.normal(4, lead)
        y, grads = _vjp(ns.softmax_cross_entropy, (logits, labels), dy)
        ref_y, ref_grads = _vjp(optax.softmax_cross_entropy, (logits, labels), dy)
        assert y.shape == lead and y.dtype == np.float64
        np.testing.assert_allclose(y, ref_y, rtol=1e-13, atol=1e-13)
        for g, ref in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("mode", ["manual", "autodiff"])
@pytest.mark.parametrize("lead", [(), (1,), (4,), (2, 3)])
def test_softmax_cross_entropy_with_integer_labels_equals_optax(mode, lead):
    ns = jaxconv if mode == "manual" else jaxconv.autodiff
    logits = S.normal(0, (*lead, 5)) * 3
    labels = np.random.default_rng(1).integers(0, 5, lead).astype(np.int32)
    dy = S.normal(2, lead)

    def f(name, lib):
        return lambda z: getattr(lib, name)(z, labels)

    name = "softmax_cross_entropy_with_integer_labels"
    y, (dz,) = _vjp(f(name, ns), (logits,), dy)
    ref_y, (ref_dz,) = _vjp(f(name, optax), (logits,), dy)
    assert y.shape == lead and y.dtype == np.float64
    np.testing.assert_allclose(y, ref_y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-12, atol=1e-13)
    # The two cross-entropies agree on one-hot rows.
    np.testing.assert_allclose(y, ns.softmax_cross_entropy(logits, np.eye(5)[labels]), rtol=1e-13)


@pytest.mark.parametrize("mode", ["manual", "autodiff"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 5)])
def test_squared_error_equals_optax(mode, shape):
    ns = jaxconv if mode == "manual" else jaxconv.autodiff
    pred, target, dy = S.normal(0, shape), S.normal(1, shape), S.normal(2, shape)
    y, grads = _vjp(ns.squared_error, (pred, target), dy)
    ref_y, ref_grads = _vjp(optax.squared_error, (pred, target), dy)
    assert y.shape == shape
    np.testing.assert_allclose(y, ref_y, rtol=1e-15)
    for g, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, ref, rtol=1e-15)
    # targets=None means zeros, as in optax; l2_loss is half of it.
    y, (dpred,) = _vjp(ns.squared_error, (pred,), dy)
    ref_y, (ref_dpred,) = _vjp(optax.squared_error, (pred,), dy)
    np.testing.assert_allclose(y, ref_y, rtol=1e-15)
    np.testing.assert_allclose(dpred, ref_dpred, rtol=1e-15)
    np.testing.assert_allclose(0.5 * y, optax.l2_loss(pred), rtol=1e-15)


# --------------------------------------------------------------------------------------------
# The rules by hand; finite differences; dtypes; jaxprs.
# --------------------------------------------------------------------------------------------


def test_rules_by_hand():
    logits, labels = S.normal(0, (4, 3)), np.array([0, 2, 1, 2])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    # The mean over the M = 4 examples (the batch loss): dz = (softmax − onehot) / M.
    grad = jax.grad(lambda z: jnp.mean(
        jaxconv.softmax_cross_entropy_with_integer_labels(z, labels)))(logits)
    np.testing.assert_allclose(grad, (p - np.eye(3)[labels]) / 4, rtol=1e-12)
    # One loss per example, pulled back from dy: dzₘ = dyₘ (softmax − onehot).
    dy = S.normal(5, (4,))
    _, (dz,) = _vjp(lambda z: jaxconv.softmax_cross_entropy_with_integer_labels(z, labels),
                    (logits,), dy)
    np.testing.assert_allclose(dz, dy[:, None] * (p - np.eye(3)[labels]), rtol=1e-12)
    # Probability labels: dz = dy (softmax · Σ y − y), dlabels = −dy · log softmax.
    soft = 2 * _distribution(6, (4, 3))
    _, (dz, dsoft) = _vjp(jaxconv.softmax_cross_entropy, (logits, soft), dy)
    np.testing.assert_allclose(dz, dy[:, None] * (2 * p - soft), rtol=1e-12)
    np.testing.assert_allclose(dsoft, -dy[:, None] * np.log(p), rtol=1e-12)
    # The mean squared error over P = 10 elements: dpred = 2(pred − target)/P = −dtarget.
    pred, target = S.normal(1, (2, 5)), S.normal(2, (2, 5))
    dpred, dtarget = jax.grad(lambda p, t: jnp.mean(jaxconv.squared_error(p, t)),
                              argnums=(0, 1))(pred, target)
    np.testing.assert_allclose(dpred, 2 * (pred - target) / 10, rtol=1e-12)
    np.testing.assert_allclose(dtarget, -2 * (pred - target) / 10, rtol=1e-12)


def test_finite_differences():
    labels = np.array([[1, 0, 2], [2, 2, 0]])
    check_grads(jax.jit(lambda z: jaxconv.softmax_cross_entropy_with_integer_labels(z, labels)),
                (S.normal(0, (2, 3, 3)),), order=2, modes=["rev"])
    check_grads(jax.jit(jaxconv.softmax_cross_entropy),
                (S.normal(0, (2, 3, 3)), _distribution(1, (2, 3, 3))), order=2, modes=["rev"])
    check_grads(jax.jit(jaxconv.squared_error), (S.normal(1, (3, 2)), S.normal(2, (3, 2))),
                order=2, modes=["rev"])


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
def test_dtypes(dtype):
    logits = jnp.asarray(S.normal(0, (5, 4)) * 2, dtype)
    S.check_dtype_against_float64("softmax_cross_entropy_with_integer_labels", (), (logits,),
                                  (np.array([0, 3, 1, 1, 2]),), seed=4)
    S.check_dtype_against_float64(
        "softmax_cross_entropy", (), (logits, jnp.asarray(_distribution(5, (5, 4)), dtype)),
        seed=4)
    pred, target = (jnp.asarray(S.normal(i, (3, 4)), dtype) for i in (1, 2))
    S.check_dtype_against_float64("squared_error", (), (pred, target), seed=4)


def _example_args(name):
    if name == "softmax_cross_entropy_with_integer_labels":
        return S.normal(0, (2, 3)), np.array([0, 2])
    if name == "softmax_cross_entropy":
        return S.normal(0, (2, 3)), _distribution(1, (2, 3))
    return S.normal(0, (2, 3)), S.normal(1, (2, 3))


@pytest.mark.parametrize("name", NAMES)
def test_forward_jaxpr_holds_the_custom_vjp(name):
    a, b = _example_args(name)
    manual = S.primitive_names(jax.make_jaxpr(getattr(jaxconv, name))(a, b))
    twin = S.primitive_names(jax.make_jaxpr(getattr(jaxconv.autodiff, name))(a, b))
    assert "custom_vjp_call" in manual
    assert not any(p.startswith("custom_vjp") for p in twin), twin
