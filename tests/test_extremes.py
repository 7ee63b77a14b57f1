"""Extreme inputs: the activations and the losses at and beyond the point where their naive
formulas overflow, in every floating dtype (float16, bfloat16, float32, float64).

Each dtype overflows exp at its own x: log(max) ≈ 11.09 for float16, ≈ 88.7 for bfloat16 and
float32, ≈ 709.8 for float64. A derivative such as softplus′ = eˣ/(1 + eˣ) is correct on paper
and NaN (∞/∞) from there on; so are sigmoid and tanh written through eˣ, and a softmax that does
not subtract its maximum. The inputs here reach from 0 through those thresholds up to the
dtype's largest finite value, and every value and gradient of the manual op must be finite and
equal a numpy reference computed stably in float64 from the same (rounded) inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as R
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxconv

DTYPES = (jnp.float16, jnp.bfloat16, np.float32, np.float64)
DTYPE_IDS = [np.dtype(d).name for d in DTYPES]
# Per-element tolerance: a few roundings of the dtype (see strategies.LOW_RTOL).
RTOL = S.LOW_RTOL
SIZE = 16  # one shape per dtype: eager dispatch compiles each primitive once
# The thresholds themselves are pinned (test_activation_at_the_landmarks); the random draws, 16
# values each, cover what lies between: a quarter of the profile's count per (op, dtype).
EXAMPLES = max(settings().max_examples // 4, 25)



SLOPE = 0.1  # leaky_relu's α
# name: (value, derivative, sup |f′|), all from float64 inputs.
REFERENCES = {
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float), 1.0),
    "leaky_relu": (lambda x: np.where(x > 0, x, SLOPE * x),
                   lambda x: np.where(x > 0, 1.0, SLOPE), 1.0),
    "sigmoid": (R.sigmoid, lambda x: R.sigmoid(x) * R.sigmoid(-x), 0.25),
    "tanh": (np.tanh, R.sech2, 1.0),
    "softplus": (R.softplus, R.sigmoid, 1.0),
}


def _activation(name):
    op = getattr(jaxconv, name)
    return (lambda x: op(x, SLOPE)) if name == "leaky_relu" else op


def landmarks(dtype, fraction=1.0) -> list[float]:
    """0, the smallest normal, 1, the points around exp's overflow (log max ± 1, 2·log max, in
    the dtype where that is finite) and ``fraction`` of the largest finite value; both signs."""
    info = jnp.finfo(dtype)
    log_max = float(np.log(float(info.max)))
    big = float(info.max) * fraction
    points = [0.0, float(info.tiny), 1.0, log_max / 2, log_max - 1, log_max, log_max + 1,
              2 * log_max, np.sqrt(big), big]
    return sorted({s * p for p in points if p <= big for s in (1.0, -1.0)})


@st.composite
def extreme_arrays(draw, dtype, fraction=1.0, size=SIZE):
    """``size`` values in ``dtype``: landmarks, values around exp's overflow threshold, and
    values anywhere in ±fraction·max, rounded to the dtype (subnormals made 0)."""
    info = jnp.finfo(dtype)
    big = float(info.max) * fraction
    log_max = float(np.log(float(info.max)))
    element = st.one_of(
        st.sampled_from(landmarks(dtype, fraction)),
        st.floats(-3 * log_max, 3 * log_max),
        st.floats(-big, big),
    )
    values = draw(st.lists(element, min_size=size, max_size=size))
    x = np.asarray(values, np.float64).astype(dtype)
    # XLA:CPU flushes subnormals to zero (x > 0 is false for them): draw no subnormal inputs.
    return np.where(np.abs(x.astype(np.float64)) < float(info.tiny), 0, x).astype(dtype)


def _check_activation(name, x):
    value, derivative, sup_slope = REFERENCES[name]
    dtype = np.dtype(x.dtype)
    y, pullback = jax.vjp(_activation(name), jnp.asarray(x))
    (dx,) = pullback(jnp.ones_like(y))
    y, dx = np.asarray(y, np.float64), np.asarray(dx, np.float64)
    x64 = np.asarray(x, np.float64)
    bad = ~(np.isfinite(y) & np.isfinite(dx))
    assert not bad.any(), f"{name}({x64[bad]}) in {dtype}: value {y[bad]}, gradient {dx[bad]}"
    rtol, tiny = RTOL[dtype], float(jnp.finfo(dtype).tiny)
    ref_y, ref_dx = value(x64), derivative(x64)
    # values to a few roundings each (below the smallest normal: absolute); the gradient, formed
    # from a rounded output for sigmoid and tanh, relative to the largest slope there is
    err_y = np.abs(y - ref_y) > rtol * np.abs(ref_y) + tiny
    assert not err_y.any(), f"{name} in {dtype} at x={x64[err_y]}: {y[err_y]} vs {ref_y[err_y]}"
    err_dx = np.abs(dx - ref_dx) > rtol * max(sup_slope, 1.0) + tiny
    assert not err_dx.any(), (
        f"{name}′ in {dtype} at x={x64[err_dx]}: {dx[err_dx]} vs {ref_dx[err_dx]}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_activation_at_the_landmarks(name, dtype):
    """Every landmark, the overflow thresholds of exp included, in one call."""
    x = np.asarray(landmarks(dtype), np.float64).astype(dtype)
    _check_activation(name, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(REFERENCES))
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_activation_extremes(name, dtype, data):
    _check_activation(name, data.draw(extreme_arrays(dtype)))


# --------------------------------------------------------------------------------------------
# Losses.
# --------------------------------------------------------------------------------------------


def _check_close(actual, expected, rtol, floor, what, tiny=0.0):
    """Finite, and within rtol · max(|expected|, floor) + tiny per element (``tiny``: results
    below the smallest normal, which XLA:CPU flushes to zero)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.isfinite(actual).all(), f"{what}: {actual} (expected {expected})"
    bad = np.abs(actual - expected) > rtol * np.maximum(np.abs(expected), floor) + tiny
    assert not bad.any(), f"{what}: {actual[bad]} vs {expected[bad]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=EXAMPLES)
@given(data=st.data(), classes=st.sampled_from((1, 2, 4)), integer=st.booleans())
def test_softmax_cross_entropy_extremes(dtype, data, classes, integer):
    """Logits anywhere up to a quarter of the dtype's largest value (so each loss, at most the
    spread of the logits plus log C, is representable), with integer labels or probabilities:
    finite per-example losses equal to the reference to the dtype's rounding of the logits'
    scale, finite gradients: dz = softmax − labels (<= 1 per entry) and, for probabilities,
    dlabels = −log_softmax(z)."""
    z = data.draw(extreme_arrays(dtype, fraction=0.25, size=4 * classes)).reshape(4, classes)
    z64 = np.asarray(z, np.float64)
    rtol = RTOL[np.dtype(dtype)]
    scale = max(float(np.abs(z64).max()), 1.0)  # the losses round like the logits
    if integer:
        labels = np.asarray(data.draw(st.lists(st.integers(0, classes - 1), min_size=4,
                                               max_size=4)), np.int32)
        loss, pullback = jax.vjp(
            lambda z: jaxconv.softmax_cross_entropy_with_integer_labels(z, labels), z)
        (dz,) = pullback(jnp.ones_like(loss))
        ref_loss, ref_dz = R.softmax_cross_entropy_with_integer_labels(z64, labels)
    else:
        weights = data.draw(st.lists(st.floats(0, 1), min_size=4 * classes,
                                     max_size=4 * classes))
        probs = np.reshape(weights, (4, classes)) + 1e-3
        labels = (probs / probs.sum(axis=-1, keepdims=True)).astype(dtype)
        loss, pullback = jax.vjp(jaxconv.softmax_cross_entropy, z, labels)
        dz, dlabels = pullback(jnp.ones_like(loss))
        labels64 = np.asarray(labels, np.float64)
        ref_loss = R.softmax_cross_entropy(z64, labels64)
        ref_dz = np.exp(R.log_softmax(z64)) * labels64.sum(-1, keepdims=True) - labels64
        _check_close(dlabels, -R.log_softmax(z64), rtol, scale,
                     f"cross-entropy dlabels in {np.dtype(dtype)}")
    _check_close(loss, ref_loss, rtol, scale, f"cross-entropy in {np.dtype(dtype)}")
    _check_close(dz, ref_dz, rtol, 1.0, f"cross-entropy dz in {np.dtype(dtype)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_squared_error_extremes(dtype, data):
    """Predictions and targets up to where (p − q)² stays representable (|p|, |q| <= 0.45·√max):
    finite (p − q)² and gradients ±2(p − q), equal to the reference."""
    info = jnp.finfo(dtype)
    bound = 0.45 * np.sqrt(float(info.max)) / float(info.max)
    p = data.draw(extreme_arrays(dtype, fraction=bound))
    q = data.draw(extreme_arrays(dtype, fraction=bound))
    y, pullback = jax.vjp(jaxconv.squared_error, p, q)
    dp, dq = pullback(jnp.ones_like(y))
    diff = np.asarray(p, np.float64) - np.asarray(q, np.float64)
    rtol, tiny = RTOL[np.dtype(dtype)], float(info.tiny)
    _check_close(y, diff**2, rtol, 0.0, f"squared error in {np.dtype(dtype)}", tiny)
    _check_close(dp, 2 * diff, rtol, 0.0, f"squared error dpred in {np.dtype(dtype)}", tiny)
    _check_close(dq, -2 * diff, rtol, 0.0, f"squared error dtarget in {np.dtype(dtype)}", tiny)
