"""Bad input: each case is rejected by jaxconv's own checks (jaxconv/_checks.py or an op's
front-end), at trace time, before JAX or XLA sees the call, with a ValueError or TypeError that
names the argument, what was expected and what came, eagerly, under ``jit`` and under ``grad``.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import _checks

JAXCONV_DIR = pathlib.Path(jaxconv.__file__).resolve().parent


def f(*shape):
    return np.ones(shape)


def as_int(a):
    """A float traced argument turned into integers inside the function (so grad still has a
    floating argument to differentiate)."""
    return a.astype(jnp.int32)


class Case(NamedTuple):
    fn: object  # fn(*args) calls one op
    args: tuple  # floating arrays (plus integer labels, never differentiated)
    error: type
    match: str  # a regex on the message: the argument's name, what was expected, what came
    diff: int = 0  # which argument grad differentiates


def conv(**kwargs):
    return lambda x, w, *b: jaxconv.conv(x, w, *b, **kwargs)


CASES = {
    # --- convolution: shapes --------------------------------------------------------------
    "conv rank of w != rank of x": Case(
        conv(), (f(1, 5, 2), f(2, 2, 2, 3)), ValueError,
        r"w must have the same rank as x \(3.*got w of shape \(2, 2, 2, 3\)"),
    "conv rank of x": Case(
        conv(), (f(5, 2), f(2, 2, 3)), ValueError,
        r"x must have rank 3, 4 or 5.*got shape \(5, 2\)"),
    "conv1d rank": Case(
        lambda x, w: jaxconv.conv1d(x, w), (f(1, 4, 4, 2), f(2, 2, 2, 3)), ValueError,
        r"conv1d expects x of rank 3.*got shape \(1, 4, 4, 2\)"),
    "conv C_in != w's input channels": Case(
        conv(), (f(1, 5, 4), f(2, 3, 6)), ValueError,
        r"w must have C_in // groups = 4 // 1 = 4 input channels.*got w of shape \(2, 3, 6\)"),
    "conv C_in != w's input channels after groups": Case(
        conv(groups=2), (f(1, 5, 4), f(2, 4, 6)), ValueError,
        r"w must have C_in // groups = 4 // 2 = 2 input channels.*got w of shape \(2, 4, 6\)"),
    "conv C_in channels_first": Case(
        conv(layout="channels_first"), (f(1, 4, 5), f(6, 3, 2)), ValueError,
        r"w must have C_in // groups = 4 // 1 = 4.*\(C_out, C_in // groups, \*kernel\).*"
        r"got w of shape \(6, 3, 2\) for x of shape \(1, 4, 5\)"),
    "conv groups do not divide C_in": Case(
        conv(groups=2), (f(1, 5, 3), f(2, 1, 4)), ValueError,
        r"groups=2 must divide the input channels C_in=3"),
    "conv groups do not divide C_out": Case(
        conv(groups=2), (f(1, 5, 4), f(2, 2, 3)), ValueError,
        r"groups=2 must divide the output channels C_out=3"),
    "conv groups = 0": Case(conv(groups=0), (f(1, 5, 2), f(2, 2, 2)), ValueError,
                            r"groups must be a positive int, got 0"),
    "conv groups not an int": Case(conv(groups=1.5), (f(1, 5, 2), f(2, 2, 2)), TypeError,
                                   r"groups must be a positive int, got 1.5 \(float\)"),
    "conv unknown layout": Case(conv(layout="NHWC"), (f(1, 5, 2), f(2, 2, 2)), ValueError,
                                r"layout must be one of \('channels_last', 'channels_first'\), "
                                r"got 'NHWC'"),
    # --- convolution: stride, dilation ------------------------------------------------------
    "conv stride = 0": Case(conv(stride=0), (f(1, 5, 2), f(2, 2, 2)), ValueError,
                            r"stride must be positive in every dimension, got 0"),
    "conv stride < 0": Case(conv(stride=(1, -2)), (f(1, 5, 5, 2), f(2, 2, 2, 2)), ValueError,
                            r"stride must be positive in every dimension, got \(1, -2\)"),
    "conv stride of the wrong length": Case(
        conv(stride=(1, 1)), (f(1, 5, 2), f(2, 2, 2)), ValueError,
        r"stride must be an int or a sequence of 1 ints.*got \(1, 1\) of length 2"),
    "conv stride not ints": Case(conv(stride=1.0), (f(1, 5, 2), f(2, 2, 2)), TypeError,
                                 r"stride must be an int or a sequence of 1 ints, got 1.0"),
    "conv dilation = 0": Case(conv(dilation=0), (f(1, 5, 2), f(2, 2, 2)), ValueError,
                              r"dilation must be positive in every dimension, got 0"),
    "conv dilation < 0": Case(conv(dilation=-1), (f(1, 5, 2), f(2, 2, 2)), ValueError,
                              r"dilation must be positive in every dimension, got -1"),
    "conv dilation of the wrong length": Case(
        conv(dilation=(1, 2, 1)), (f(1, 5, 5, 2), f(2, 2, 2, 2)), ValueError,
        r"dilation must be an int or a sequence of 2 ints.*got \(1, 2, 1\) of length 3"),
    # --- convolution: padding ---------------------------------------------------------------
    "conv unknown padding string": Case(
        conv(padding="HALF"), (f(1, 5, 2), f(2, 2, 2)), ValueError,
        r"padding must be one of \('VALID', 'SAME', 'FULL'\).*got the string 'HALF'"),
    "conv negative int padding": Case(conv(padding=-1), (f(1, 5, 2), f(2, 2, 2)), ValueError,
                                      r"padding must be non-negative, got -1"),
    "conv negative padding pair": Case(
        conv(padding=((0, 1), (-1, 0))), (f(1, 5, 5, 2), f(2, 2, 2, 2)), ValueError,
        r"padding must be non-negative, got \(\(0, 1\), \(-1, 0\)\)"),
    "conv padding pairs of the wrong length": Case(
        conv(padding=((1, 1),)), (f(1, 5, 5, 2), f(2, 2, 2, 2)), ValueError,
        r"padding must be a string, an int, or 2 \(low, high\) pairs.*got \(\(1, 1\),\)"),
    "conv padding pair not a pair": Case(
        conv(padding=((1, 1, 1),)), (f(1, 5, 2), f(2, 2, 2)), ValueError,
        r"padding must be a string, an int, or 1 \(low, high\) pairs.*got \(\(1, 1, 1\),\)"),
    # --- convolution: empty output, bias, dtypes --------------------------------------------
    "conv kernel larger than the input": Case(
        conv(), (f(1, 3, 1), f(5, 1, 1)), ValueError,
        r"the kernel \(effective size 5 with dilation 1\) is larger than the padded input "
        r"\(3 \+ 0 \+ 0 = 3\)"),
    "conv dilated kernel larger than the padded input": Case(
        conv(dilation=3, padding=((1, 0),)), (f(1, 5, 1), f(3, 1, 1)), ValueError,
        r"the kernel \(effective size 7 with dilation 3\) is larger than the padded input "
        r"\(5 \+ 1 \+ 0 = 6\)"),
    "conv bias of the wrong shape": Case(
        conv(), (f(1, 5, 2), f(2, 2, 4), f(3)), ValueError,
        r"b must have shape \(C_out,\) = \(4,\), got shape \(3,\)"),
    "conv bias of the wrong rank": Case(
        conv(), (f(1, 5, 2), f(2, 2, 4), f(1, 4)), ValueError,
        r"b must have shape \(C_out,\) = \(4,\), got shape \(1, 4\)"),
    "conv integer x": Case(
        lambda x, w: jaxconv.conv(as_int(x), w), (f(1, 5, 2), f(2, 2, 2)), TypeError,
        r"x must have a floating dtype.*got dtype int32", diff=1),
    "conv integer w": Case(
        lambda x, w: jaxconv.conv(x, as_int(w)), (f(1, 5, 2), f(2, 2, 2)), TypeError,
        r"w must have a floating dtype.*got dtype int32"),
    "conv integer b": Case(
        lambda x, w, b: jaxconv.conv(x, w, as_int(b)), (f(1, 5, 2), f(2, 2, 2), f(2)),
        TypeError, r"b must have a floating dtype.*got dtype int32"),
    # --- pooling ----------------------------------------------------------------------------
    "max_pool window = 0": Case(lambda x: jaxconv.max_pool(x, 0), (f(1, 5, 2),), ValueError,
                                r"window must be positive in every dimension, got 0"),
    "avg_pool window < 0": Case(lambda x: jaxconv.avg_pool(x, (2, -1)), (f(1, 5, 5, 2),),
                                ValueError, r"window must be positive in every dimension, "
                                r"got \(2, -1\)"),
    "max_pool window of the wrong length": Case(
        lambda x: jaxconv.max_pool(x, (2, 2)), (f(1, 5, 2),), ValueError,
        r"window must be an int or a sequence of 1 ints.*got \(2, 2\) of length 2"),
    "max_pool stride = 0": Case(lambda x: jaxconv.max_pool(x, 2, stride=0), (f(1, 5, 2),),
                                ValueError, r"stride must be positive in every dimension, got 0"),
    "avg_pool stride < 0": Case(lambda x: jaxconv.avg_pool(x, 2, stride=(1, -1)),
                                (f(1, 5, 5, 2),), ValueError,
                                r"stride must be positive in every dimension, got \(1, -1\)"),
    "max_pool window larger than the padded input": Case(
        lambda x: jaxconv.max_pool(x, 4, padding=((1, 0),)), (f(1, 2, 3),), ValueError,
        r"the window \(4\) is larger than the padded input \(2 \+ 1 \+ 0\)"),
    "avg_pool padding not below the window": Case(
        lambda x: jaxconv.avg_pool(x, 2, padding=((2, 0),)), (f(1, 5, 3),), ValueError,
        r"padding \(2, 0\) must be smaller than the window \(2\)"),
    "max_pool unknown padding string": Case(
        lambda x: jaxconv.max_pool(x, 2, padding="REFLECT"), (f(1, 5, 2),), ValueError,
        r"padding must be one of .*got the string 'REFLECT'"),
    "max_pool negative padding": Case(
        lambda x: jaxconv.max_pool(x, 2, padding=-1), (f(1, 5, 2),), ValueError,
        r"padding must be non-negative, got -1"),
    "max_pool rank of x": Case(lambda x: jaxconv.max_pool(x, 2), (f(5, 2),), ValueError,
                               r"x must have rank 3, 4 or 5 .*got shape \(5, 2\)"),
    "max_pool integer x": Case(lambda x: jaxconv.max_pool(as_int(x), 2), (f(1, 4, 2),),
                               TypeError, r"x must have a floating dtype.*got dtype int32"),
    "max_pool FULL padding": Case(
        lambda x: jaxconv.max_pool(x, 2, padding="FULL"), (f(1, 5, 2),), ValueError,
        r"padding must be one of \('VALID', 'SAME'\), an int or \(low, high\) pairs for a "
        r"pool, got the string 'FULL'"),
    "avg_pool FULL padding": Case(
        lambda x: jaxconv.avg_pool(x, (2, 3), stride=1, padding="full"), (f(1, 5, 5, 2),),
        ValueError, r"padding must be one of \('VALID', 'SAME'\).*got the string 'full'"),
    "max_pool unknown layout": Case(
        lambda x: jaxconv.max_pool(x, 2, layout="NCHW"), (f(1, 5, 2),), ValueError,
        r"layout must be one of \('channels_last', 'channels_first'\), got 'NCHW'"),
    "avg_pool rank of x, channels_first": Case(
        lambda x: jaxconv.avg_pool(x, 2, layout="channels_first"), (f(2, 5),), ValueError,
        r"x must have rank 3, 4 or 5 \(N, C, \*spatial\) for 1-, 2- or 3-D pooling, got shape "
        r"\(2, 5\)"),
    # --- dense ------------------------------------------------------------------------------
    "dense shapes do not chain": Case(
        lambda x, w: jaxconv.dense(x, w), (f(2, 3), f(4, 5)), ValueError,
        r"x's last axis \(3, from shape \(2, 3\)\) must equal w's first axis n_in \(4, from "
        r"shape \(4, 5\)\)"),
    "dense w of rank 1": Case(lambda x, w: jaxconv.dense(x, w), (f(2, 3), f(3)), ValueError,
                              r"w must have rank 2 \(n_in, n_out\), got shape \(3,\)"),
    "dense bias of the wrong shape": Case(
        lambda x, w, b: jaxconv.dense(x, w, b), (f(2, 3), f(3, 5), f(4)), ValueError,
        r"b must have shape \(n_out,\) = \(5,\), got shape \(4,\)"),
    "dense integer x": Case(lambda x, w: jaxconv.dense(as_int(x), w), (f(2, 3), f(3, 5)),
                            TypeError, r"x must have a floating dtype.*got dtype int32", diff=1),
    # --- activations ------------------------------------------------------------------------
    **{
        f"{name} integer x": Case(lambda x, name=name: getattr(jaxconv, name)(as_int(x)),
                                  (f(3),), TypeError,
                                  r"x must have a floating dtype.*got dtype int32")
        for name in ("relu", "leaky_relu", "sigmoid", "tanh", "softplus")
    },
    "leaky_relu negative slope": Case(lambda x: jaxconv.leaky_relu(x, -0.1), (f(3),), ValueError,
                                      r"negative_slope must be a non-negative finite number, "
                                      r"got -0.1"),
    "leaky_relu slope not a number": Case(
        lambda x: jaxconv.leaky_relu(x, "0.1"), (f(3),), TypeError,
        r"negative_slope must be a non-negative finite number, got '0.1' \(str\)"),
    "leaky_relu slope of the wrong shape": Case(
        lambda x: jaxconv.leaky_relu(x, np.full(2, 0.1)), (f(3),), ValueError,
        r"negative_slope must be a number or an array that broadcasts to shape \(3,\), got "
        r"shape \(2,\)"),
    "leaky_relu slope that grows x": Case(
        lambda x: jaxconv.leaky_relu(x, np.full((2, 3), 0.1)), (f(3),), ValueError,
        r"negative_slope must be a number or an array that broadcasts to shape \(3,\), got "
        r"shape \(2, 3\)"),
    "leaky_relu integer slope array": Case(
        lambda x: jaxconv.leaky_relu(x, np.ones(3, np.int32)), (f(3),), TypeError,
        r"negative_slope must have a floating dtype.*got dtype int32"),
    # --- losses -----------------------------------------------------------------------------
    "softmax_cross_entropy_with_integer_labels labels of the wrong shape": Case(
        jaxconv.softmax_cross_entropy_with_integer_labels, (f(4, 3), np.zeros(3, np.int32)),
        ValueError,
        r"labels must have shape logits.shape\[:-1\] = \(4,\), got shape \(3,\) for logits of "
        r"shape \(4, 3\)"),
    "softmax_cross_entropy_with_integer_labels labels one-hot": Case(
        jaxconv.softmax_cross_entropy_with_integer_labels, (f(4, 3), np.zeros((4, 3), np.int32)),
        ValueError, r"labels must have shape logits.shape\[:-1\] = \(4,\), got shape \(4, 3\)"),
    "softmax_cross_entropy_with_integer_labels float labels": Case(
        jaxconv.softmax_cross_entropy_with_integer_labels, (f(4, 3), f(4)), TypeError,
        r"labels must be integer class indices, got dtype float64; for probability labels use "
        r"softmax_cross_entropy"),
    "softmax_cross_entropy_with_integer_labels integer logits": Case(
        lambda z, t: jaxconv.softmax_cross_entropy_with_integer_labels(as_int(z), t),
        (f(4, 3), np.zeros(4, np.int32)),
        TypeError, r"logits must have a floating dtype.*got dtype int32"),
    "softmax_cross_entropy integer labels": Case(
        jaxconv.softmax_cross_entropy, (f(4, 3), np.zeros(4, np.int32)), TypeError,
        r"labels must have a floating dtype.*got dtype int32.*for integer class labels use "
        r"softmax_cross_entropy_with_integer_labels"),
    "softmax_cross_entropy labels of the wrong shape": Case(
        jaxconv.softmax_cross_entropy, (f(4, 3), f(4, 2)), ValueError,
        r"logits and labels must have the same shape, got \(4, 3\) and \(4, 2\)"),
    "softmax_cross_entropy scalar logits": Case(
        jaxconv.softmax_cross_entropy, (f(), f()), ValueError,
        r"logits must have rank >= 1 \(\.\.\., C\), got shape \(\)"),
    "squared_error shapes differ": Case(
        jaxconv.squared_error, (f(3, 2), f(2, 3)), ValueError,
        r"predictions and targets must have the same shape, got \(3, 2\) and \(2, 3\)"),
    "squared_error integer targets": Case(
        lambda p, t: jaxconv.squared_error(p, as_int(t)), (f(3), f(3)), TypeError,
        r"targets must have a floating dtype.*got dtype int32"),
}


def _run(case: Case, transform: str):
    if transform == "eager":
        return case.fn(*case.args)
    if transform == "jit":
        return jax.jit(case.fn)(*case.args)
    args = list(case.args)

    def loss(a):
        args[case.diff] = a
        return jnp.sum(case.fn(*args))

    return jax.grad(loss)(case.args[case.diff])


@pytest.mark.parametrize("transform", ["eager", "jit", "grad"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rejected_by_jaxconv(case, transform):
    with pytest.raises(case.error, match=case.match) as info:
        _run(case, transform)
    # Raised by jaxconv itself, not by JAX, lax or XLA on the way down.
    raiser = pathlib.Path(info.traceback[-1].path).resolve()
    assert JAXCONV_DIR in raiser.parents, f"raised in {raiser}, not in jaxconv"
    assert raiser.name in ("_checks.py", "conv.py"), raiser  # the checks, or conv1d's rank check



# --------------------------------------------------------------------------------------------
# The one wording: "<name> must <be or have what was expected>, got <what came>", from one
# family of helpers in jaxconv._checks (used by the ops, data, the CLI, train and models).
# --------------------------------------------------------------------------------------------

WORDING = [
    (lambda: _checks.choice("grads", "numeric", ("manual", "autodiff")), ValueError,
     "grads must be one of ('manual', 'autodiff'), got 'numeric'"),
    (lambda: _checks.choice("dataset", 3, ("mnist1d", "digits")), TypeError,
     "dataset must be one of ('mnist1d', 'digits'), got 3 (int)"),
    (lambda: _checks.choice("dataset", ["digits"], ("mnist1d", "digits")), TypeError,
     "dataset must be one of ('mnist1d', 'digits'), got ['digits'] (list)"),
    (lambda: _checks.names("ops", ("relu", "gelu"), ("relu", "tanh")), ValueError,
     "ops must be a non-empty sequence of names from ('relu', 'tanh'), got the unknown "
     "['gelu']"),
    (lambda: _checks.names("ops", (), ("relu",)), ValueError,
     "ops must be a non-empty sequence of names from ('relu',), got none"),
    (lambda: _checks.names("ops", "relu", ("relu",)), TypeError,
     "ops must be a sequence of names from ('relu',), got 'relu' (str)"),
    (lambda: _checks.positive_int("epochs", 0), ValueError, "epochs must be a positive int, got 0"),
    (lambda: _checks.positive_int("epochs", True), TypeError,
     "epochs must be a positive int, got True (bool)"),
    (lambda: _checks.positive_int("epochs", 2.0), TypeError,
     "epochs must be a positive int, got 2.0 (float)"),
    (lambda: _checks.non_negative_int("seed", -1), ValueError,
     "seed must be a non-negative int, got -1"),
    (lambda: _checks.positive_number("lr", 0.0), ValueError,
     "lr must be a positive finite number, got 0.0"),
    (lambda: _checks.positive_number("lr", float("nan")), ValueError,
     "lr must be a positive finite number, got nan"),
    (lambda: _checks.positive_number("lr", "1e-3"), TypeError,
     "lr must be a positive finite number, got '1e-3' (str)"),
    (lambda: _checks.non_negative_number("weight_decay", float("inf")), ValueError,
     "weight_decay must be a non-negative finite number, got inf"),
    (lambda: _checks.shape("b", np.zeros(3), (4,), "(C_out,)"), ValueError,
     "b must have shape (C_out,) = (4,), got shape (3,)"),
    (lambda: _checks.shape("y", np.zeros((2, 1)), (2,)), ValueError,
     "y must have shape (2,), got shape (2, 1)"),
]


@pytest.mark.parametrize("call, error, message", WORDING, ids=[m for *_, m in WORDING])
def test_one_wording(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_helpers_return_the_checked_value():
    assert _checks.choice("layout", "channels_first", _checks.LAYOUTS) == "channels_first"
    assert _checks.names("ops", ["relu"], ("relu", "tanh")) == ("relu",)
    assert _checks.positive_int("n", np.int64(3)) == 3 and type(_checks.positive_int("n", 3)) is int
    assert _checks.non_negative_int("n", 0) == 0
    assert _checks.positive_number("lr", 1) == 1.0
    assert _checks.non_negative_number("wd", 0) == 0.0
    _checks.shape("b", np.zeros(3), (3,))


@pytest.mark.parametrize("kind, text, message", [
    ("positive_int", "0", "must be a positive int, got 0"),
    ("positive_int", "two", "must be a positive int, got 'two' (str)"),
    ("non_negative_int", "-1", "must be a non-negative int, got -1"),
    ("positive_float", "-0.1", "must be a positive finite number, got -0.1"),
    ("positive_float", "inf", "must be a positive finite number, got inf"),
    ("non_negative_float", "nan", "must be a non-negative finite number, got nan"),
])
def test_cli_number_types_use_the_same_wording(kind, text, message):
    """argparse prints ``argument --epochs: `` before the message."""
    import argparse

    from jaxconv import cli

    with pytest.raises(argparse.ArgumentTypeError) as info:
        getattr(cli, kind)(text)
    assert str(info.value) == message
    assert getattr(cli, kind)("3") == 3
