"""jaxconv.explain and ``jaxconv explain``: the numbers equal the lecture's formulas written out
by hand, every route agrees, the typos are corrected, and bad input is one line and exit 2."""

import math
import re

import numpy as np
import pytest

from jaxconv import explain as E
from jaxconv.cli import main

# The example values.
X, W, B, DY = [0.5, -1.2, 2.0, 0.7], [1.5, -0.4], 0.3, [0.2, -0.7, 1.1]
ARGV = ["explain", "conv1d", "--x", "0.5,-1.2,2,0.7", "--w", "1.5,-0.4", "--b", "0.3",
        "--dy", "0.2,-0.7,1.1"]


def lecture_by_hand(x, w, b, dy):
    """The lecture's 1-D example, line by line (with the two typos corrected)."""
    x1, x2, x3, x4 = x
    w1, w2 = w
    dy1, dy2, dy3 = dy
    y = [w1 * x1 + w2 * x2 + b, w1 * x2 + w2 * x3 + b, w1 * x3 + w2 * x4 + b]
    db = dy1 + dy2 + dy3
    dw = [x1 * dy1 + x2 * dy2 + x3 * dy3, x2 * dy1 + x3 * dy2 + x4 * dy3]
    dx = [w1 * dy1, w2 * dy1 + w1 * dy2, w2 * dy2 + w1 * dy3, w2 * dy3]
    jac_w = [[x1, x2], [x2, x3], [x3, x4]]
    jac_x = [[w1, w2, 0, 0], [0, w1, w2, 0], [0, 0, w1, w2]]
    return y, dx, dw, db, jac_w, jac_x


def test_conv1d_numbers_equal_the_hand_written_formulas_on_every_route():
    ex = E.conv_example("conv1d", x=X, w=W, b=B, dy=DY)
    y, dx, dw, db, jac_w, jac_x = lecture_by_hand(X, W, B, DY)
    np.testing.assert_allclose(ex.y, y, rtol=1e-14)
    np.testing.assert_allclose(ex.jac_w, jac_w, rtol=0)
    np.testing.assert_allclose(ex.jac_x, jac_x, rtol=0)
    np.testing.assert_array_equal(ex.jac_b, np.ones((3, 1)))
    assert len(ex.routes) == 4
    for r in ex.routes:
        np.testing.assert_allclose(r.dx, dx, rtol=1e-13, atol=1e-15, err_msg=r.route)
        np.testing.assert_allclose(r.dw, dw, rtol=1e-13, atol=1e-15, err_msg=r.route)
        assert math.isclose(r.db, db, rel_tol=1e-13), r.route
    assert ex.agree and ex.max_disagreement <= E.AGREE_ATOL
    np.testing.assert_array_equal(ex.dy_padded, [0, *DY, 0])
    np.testing.assert_array_equal(ex.w_rot180, W[::-1])


def test_conv1d_defaults_are_the_documented_ones():
    ex = E.conv_example()
    d = E.DEFAULTS["conv1d"]
    y, dx, dw, db, _, _ = lecture_by_hand(d["x"], d["w"], d["b"], d["dy"])
    np.testing.assert_allclose(ex.routes[0].dx, dx)
    np.testing.assert_allclose(ex.routes[0].dw, dw)
    np.testing.assert_allclose(ex.y, y)


def test_conv2d_numbers_equal_the_sums_written_out():
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [3.0, -2.0, 1.0]])
    w = np.array([[0.3, -0.6], [1.2, 0.9]])
    dy = np.array([[0.4, -1.1], [0.8, 0.05]])
    b = -0.2
    ex = E.conv_example("conv2d", x=x, w=w, b=b, dy=dy)
    y = [[sum(w[p, q] * x[i + p, j + q] for p in range(2) for q in range(2)) + b
          for j in range(2)] for i in range(2)]
    dw = [[sum(x[i + p, j + q] * dy[i, j] for i in range(2) for j in range(2))
           for q in range(2)] for p in range(2)]
    dx = [[sum(w[r - i, c - j] * dy[i, j] for i in range(2) for j in range(2)
               if 0 <= r - i < 2 and 0 <= c - j < 2) for c in range(3)] for r in range(3)]
    np.testing.assert_allclose(ex.y, y, rtol=1e-14)
    assert ex.jac_w.shape == (4, 4) and ex.jac_x.shape == (4, 9)
    np.testing.assert_array_equal(ex.jac_w[1], [x[0, 1], x[0, 2], x[1, 1], x[1, 2]])  # ∂y₁₂/∂w
    for r in ex.routes:
        np.testing.assert_allclose(r.dw, dw, rtol=1e-13, atol=1e-15, err_msg=r.route)
        np.testing.assert_allclose(r.dx, dx, rtol=1e-13, atol=1e-15, err_msg=r.route)
        assert math.isclose(r.db, dy.sum(), rel_tol=1e-13)
    assert ex.agree


def test_perceptron_numbers_equal_the_chain_rule_by_hand():
    x, w, b, t = [0.5, -1.0, 2.0], [0.3, 0.8, -0.2], 0.1, 1.0
    ex = E.perceptron_example(x=x, w=w, b=b, t=t)
    z = 0.3 * 0.5 + 0.8 * -1.0 + -0.2 * 2.0 + 0.1
    a = 1 / (1 + math.exp(-z))
    dz = 2 * (a - t) * a * (1 - a)
    assert math.isclose(ex.z, z) and math.isclose(ex.a, a)
    assert math.isclose(ex.loss, (a - t) ** 2)
    assert len(ex.routes) == 3
    for r in ex.routes:
        np.testing.assert_allclose(r.dw, [dz * v for v in x], rtol=1e-13, err_msg=r.route)
        np.testing.assert_allclose(r.dx, [dz * v for v in w], rtol=1e-13, err_msg=r.route)
        assert math.isclose(r.db, dz, rel_tol=1e-13)
    assert ex.agree


def test_lecture_typos_are_corrected():
    ex = E.conv_example("conv1d", x=X, w=W, b=B, dy=DY)
    typos = {t.where: t for t in E.lecture_typos(ex)}
    assert typos["dw₂"].slide == "dw₂ = x₂dy₂ + x₃dy₃ + x₄dy₄"
    assert typos["dw₂"].corrected == "dw₂ = x₂dy₁ + x₃dy₂ + x₄dy₃"
    assert typos["dw₂"].value.endswith(f"= {X[1] * DY[0] + X[2] * DY[1] + X[3] * DY[2]:.4f}")
    assert typos["dx₂"].slide == "dx₂ = w₂dy₁ + w₁dy_w"
    assert typos["dx₂"].corrected == "dx₂ = w₂dy₁ + w₁dy₂"
    assert typos["dx₂"].value.endswith(f"= {W[1] * DY[0] + W[0] * DY[1]:.4f}")
    assert "+ w₂x₂ + b" in typos["forward pass"].corrected
    assert typos["full-convolution identity"].corrected.startswith("dx =")
    with pytest.raises(ValueError, match="1-D example"):
        E.lecture_typos(E.conv_example("conv2d"))


def test_cli_prints_every_step_with_four_decimals(capsys):
    assert main(ARGV) == 0
    out = capsys.readouterr().out
    y, dx, dw, db, _, _ = lecture_by_hand(X, W, B, DY)
    for needle in [
        f"y₁ = w₁x₁ + w₂x₂ + b = (1.5000)(0.5000) + (-0.4000)(-1.2000) + 0.3000 = {y[0]:.4f}",
        "[ x₁  x₂ ]", "[ w₁  w₂   0   0 ]",  # the Jacobians, symbolically ...
        "[ 1.5000  -0.4000   0.0000   0.0000 ]",  # ... and with numbers
        f"db = dy₁ + dy₂ + dy₃ = (0.2000) + (-0.7000) + (1.1000) = {db:.4f}",
        f"dw₂ = x₂dy₁ + x₃dy₂ + x₄dy₃ = (-1.2000)(0.2000) + (2.0000)(-0.7000) + (0.7000)(1.1000)"
        f" = {dw[1]:.4f}",
        f"dx₂ = w₂dy₁ + w₁dy₂ = (-0.4000)(0.2000) + (1.5000)(-0.7000) = {dx[1]:.4f}",
        "dy padded  = [0.0000, 0.2000, -0.7000, 1.1000, 0.0000]",
        "rot180 w   = [-0.4000, 1.5000]",
        "jax.grad (jaxconv.autodiff.conv1d)", "the routes agree",
        "slide:     dw₂ = x₂dy₂ + x₃dy₃ + x₄dy₄", "corrected: dw₂ = x₂dy₁ + x₃dy₂ + x₄dy₃",
        "slide:     dx₂ = w₂dy₁ + w₁dy_w", "corrected: dx₂ = w₂dy₁ + w₁dy₂",
    ]:
        assert needle in out, needle
    assert "defaults" not in out  # the user gave every value
    # every number printed as a decimal has at least 4 decimals
    decimals = re.findall(r"-?\d+\.(\d+)(?![\de])", out)
    assert decimals and all(len(d) >= 4 for d in decimals)


def test_cli_defaults_to_conv1d(capsys):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("jaxconv explain conv1d")
    assert "defaults" in out and "x  = [1.0000, 2.0000, 3.0000, 4.0000]" in out


@pytest.mark.parametrize("argv, needle", [
    (["explain", "conv2d"], "dw₂₂ = x₂₂dy₁₁ + x₂₃dy₁₂ + x₃₂dy₂₁ + x₃₃dy₂₂"),
    (["explain", "conv2d", "--x", "1,2,3;4,5,6;7,8,9", "--w", "1,0,0,1", "--dy", "1,1;1,1"],
     "dw₁₁ = x₁₁dy₁₁ + x₁₂dy₁₂ + x₂₁dy₂₁ + x₂₂dy₂₂ = (1.0000)(1.0000) + (2.0000)(1.0000) + "
     "(4.0000)(1.0000) + (5.0000)(1.0000) = 12.0000"),
    (["explain", "perceptron"], "dz = dL/da · da/dz"),
    (["explain", "perceptron", "--x", "1,2", "--w=-0.5,0.25", "--b", "0.1", "--t", "0"],
     "z = w₁x₁ + w₂x₂ + b = (-0.5000)(1.0000) + (0.2500)(2.0000) + 0.1000 = 0.1000"),
])
def test_cli_other_examples(argv, needle, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert needle in out
    assert "the routes agree" in out


@pytest.mark.parametrize("argv, message", [
    (["explain", "--x", "1,2,3", "--w", "1,2", "--b", "0", "--dy", "1,2,3"],
     "dy must have the shape of y, (2,)"),
    (["explain", "--x", "1,a,3,4"], "--x must be numbers"),
    (["explain", "--x", "1,2,,4"], "--x must be numbers"),
    (["explain", "--b", "1,2"], "--b must be one number"),
    (["explain", "--b", "nan"], "--b must be finite"),
    (["explain", "--x", "1,2,3"], "--dy is needed"),
    (["explain", "--w", "1,2,3,4,5", "--dy", "1"], "must not be larger than x"),
    (["explain", "--t", "1"], "--t is the perceptron's target"),
    (["explain", "perceptron", "--dy", "1"], "--dy is for conv1d and conv2d"),
    (["explain", "perceptron", "--x", "1,2", "--w", "1,2,3"], "x and w must have the same length"),
    (["explain", "conv2d", "--x", "1,2;3"], "rows must all have the same length"),
    (["explain", "conv2d", "--x", "1,2,3"], "square number of values"),
    (["explain", "conv1d", "--x", "1,2;3,4"], "one row of numbers"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxconv explain: error:")
    assert message in err, err
