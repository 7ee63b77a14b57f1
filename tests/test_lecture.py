"""The lecture's worked examples with explicit numbers: every component of dx, dw and db equals
the hand-written formula (with the slides' two typos corrected: dw₂ = x₂dy₁ + x₃dy₂ + x₄dy₃ and
dx₂ = w₂dy₁ + w₁dy₂)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import strategies as S

import jaxconv

MODES = [jaxconv, jaxconv.autodiff]
# The manual convolution under each policy: "xla" computes dx and dw as XLA convolutions
# (full-conv with rot180 w, x ⋆ dy), "auto" lets jaxconv pick a formulation per shape.
POLICIES = ["xla", "auto"]


@pytest.mark.parametrize("mode", MODES, ids=["manual", "autodiff"])
def test_perceptron(mode):
    """One neuron y = w₁x₁ + w₂x₂ + w₃x₃ + b: dxᵢ = wᵢ·dy, dwᵢ = xᵢ·dy, db = dy."""
    x1, x2, x3 = 0.5, -1.5, 2.0
    w1, w2, w3 = 3.0, 0.25, -2.0
    b, dy = 0.75, -4.0
    x, w = np.array([x1, x2, x3]), np.array([[w1], [w2], [w3]])
    y, pullback = jax.vjp(mode.dense, x, w, np.array([b]))
    dx, dw, db = pullback(np.array([dy]))
    np.testing.assert_allclose(y, [w1 * x1 + w2 * x2 + w3 * x3 + b])
    np.testing.assert_allclose(dx, [w1 * dy, w2 * dy, w3 * dy])
    np.testing.assert_allclose(dw[:, 0], [x1 * dy, x2 * dy, x3 * dy])
    np.testing.assert_allclose(db, [dy])


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", MODES, ids=["manual", "autodiff"])
def test_one_dimensional_example(mode, policy):
    """x ∈ R⁴, w ∈ R², b, stride 1, no padding, y ∈ R³."""
    x1, x2, x3, x4 = 2.0, -1.0, 3.0, 0.5
    w1, w2 = 0.5, -2.0
    b = 0.25
    dy1, dy2, dy3 = 1.0, -2.0, 3.0  # a random-looking upstream gradient, not all ones
    x = np.array([x1, x2, x3, x4]).reshape(1, 4, 1)  # (N, W, C_in)
    w = np.array([w1, w2]).reshape(2, 1, 1)  # (K, C_in, C_out)
    with S.conv_policy(policy):
        y, pullback = jax.vjp(mode.conv, x, w, np.array([b]))
        dx, dw, db = pullback(np.array([dy1, dy2, dy3]).reshape(1, 3, 1))

    np.testing.assert_allclose(
        y.ravel(), [w1 * x1 + w2 * x2 + b, w1 * x2 + w2 * x3 + b, w1 * x3 + w2 * x4 + b]
    )
    np.testing.assert_allclose(db, [dy1 + dy2 + dy3])
    np.testing.assert_allclose(
        dw.ravel(), [x1 * dy1 + x2 * dy2 + x3 * dy3, x2 * dy1 + x3 * dy2 + x4 * dy3]
    )
    np.testing.assert_allclose(
        dx.ravel(), [w1 * dy1, w2 * dy1 + w1 * dy2, w2 * dy2 + w1 * dy3, w2 * dy3]
    )
    # The slides' matrix forms: dw = x ⋆ dy, and dx = [0, dy₁, dy₂, dy₃, 0] ⋆ [w₂, w₁].
    np.testing.assert_allclose(dw.ravel(), np.correlate(x.ravel(), [dy1, dy2, dy3], "valid"))
    np.testing.assert_allclose(dx.ravel(), np.correlate([0, dy1, dy2, dy3, 0], [w2, w1], "valid"))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", MODES, ids=["manual", "autodiff"])
def test_two_dimensional_example(mode, policy):
    """A 3×3 input X and a 2×2 filter F give a 2×2 output O; dF = X ⋆ dO and
    dX = full-conv(rot180 F, dO), written out entry by entry."""
    X11, X12, X13, X21, X22, X23, X31, X32, X33 = 1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.25, 4.0, -3.0
    F11, F12, F21, F22 = 2.0, -1.0, 0.5, 3.0
    b = -0.5
    dO11, dO12, dO21, dO22 = 1.0, -3.0, 2.0, 0.5
    X = np.array([[X11, X12, X13], [X21, X22, X23], [X31, X32, X33]]).reshape(1, 3, 3, 1)
    F = np.array([[F11, F12], [F21, F22]]).reshape(2, 2, 1, 1)
    with S.conv_policy(policy):
        O, pullback = jax.vjp(mode.conv, X, F, np.array([b]))
        dX, dF, db = pullback(np.array([[dO11, dO12], [dO21, dO22]]).reshape(1, 2, 2, 1))

    O11 = X11 * F11 + X12 * F12 + X21 * F21 + X22 * F22 + b
    O12 = X12 * F11 + X13 * F12 + X22 * F21 + X23 * F22 + b
    O21 = X21 * F11 + X22 * F12 + X31 * F21 + X32 * F22 + b
    O22 = X22 * F11 + X23 * F12 + X32 * F21 + X33 * F22 + b
    np.testing.assert_allclose(O[0, :, :, 0], [[O11, O12], [O21, O22]])

    np.testing.assert_allclose(db, [dO11 + dO12 + dO21 + dO22])

    dF11 = X11 * dO11 + X12 * dO12 + X21 * dO21 + X22 * dO22
    dF12 = X12 * dO11 + X13 * dO12 + X22 * dO21 + X23 * dO22
    dF21 = X21 * dO11 + X22 * dO12 + X31 * dO21 + X32 * dO22
    dF22 = X22 * dO11 + X23 * dO12 + X32 * dO21 + X33 * dO22
    np.testing.assert_allclose(dF[:, :, 0, 0], [[dF11, dF12], [dF21, dF22]])

    dX11 = F11 * dO11
    dX12 = F12 * dO11 + F11 * dO12
    dX13 = F12 * dO12
    dX21 = F21 * dO11 + F11 * dO21
    dX22 = F22 * dO11 + F21 * dO12 + F12 * dO21 + F11 * dO22
    dX23 = F22 * dO12 + F12 * dO22
    dX31 = F21 * dO21
    dX32 = F22 * dO21 + F21 * dO22
    dX33 = F22 * dO22
    np.testing.assert_allclose(
        dX[0, :, :, 0], [[dX11, dX12, dX13], [dX21, dX22, dX23], [dX31, dX32, dX33]]
    )
