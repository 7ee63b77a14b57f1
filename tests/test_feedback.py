"""Feedback rules (issue 13 §1, §2, §4): ``feedback=`` on the ops, ``jaxconv.feedback`` and
``jaxconv.manual(fun, feedback=...)``.

The property: with a feedback kernel B, the forward, dw and db are *exactly* backprop's, and dx
is *exactly* the vjp in x of the same op with w replaced by B (pulled back from the same random
dy), in both namespaces; the manual op and its autodiff twin agree to the issue's tolerance.
Float64 throughout; the arrays are tiny, compilation dominates the cost.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st
from test_conv_transpose import transpose_cases

import jaxconv
import jaxconv.autodiff
from jaxconv import feedback as F

EXAMPLES = max(settings().max_examples // 8, 10)
MODES = ("manual", "autodiff")


def _namespace(mode):
    return jaxconv if mode == "manual" else jaxconv.autodiff


@functools.partial(jax.jit, static_argnames=("name", "static", "modes"),
                   compiler_options=S._FAST_COMPILE)
def _vjps(name, static, modes, args, b_feedback, dy):
    """Per mode: (y, grads) with feedback B; (y, grads) of backprop; the grads of backprop with
    w replaced by B. One program, one random dy."""
    kwargs = dict(static)
    out = {}
    for mode in modes:
        op = getattr(_namespace(mode), name)
        x, w, *rest = args
        with_b = jax.vjp(lambda *a, op=op: op(*a, **kwargs, feedback=b_feedback), *args)
        backprop = jax.vjp(lambda *a, op=op: op(*a, **kwargs), *args)
        at_b = jax.vjp(lambda *a, op=op: op(*a, **kwargs), x, b_feedback, *rest)
        out[mode] = {"feedback": (with_b[0], with_b[1](dy)),
                     "backprop": (backprop[0], backprop[1](dy)),
                     "at_b": at_b[1](dy)}
    return out


def check_feedback_rule(name, static, args, b_feedback, seed, modes=MODES):
    """The issue's property for one call (see the module docstring); returns the results."""
    dy = S.normal(seed + 7, S.output_shape(name, static, args))
    res = jax.device_get(_vjps(name, static, modes, args, b_feedback, dy))
    for mode in modes:
        r = res[mode]
        (y_fb, g_fb), (y_bp, g_bp), g_at_b = r["feedback"], r["backprop"], r["at_b"]
        assert np.array_equal(y_fb, y_bp), f"{mode} {name}: the forward changed"
        np.testing.assert_array_equal(g_fb[0], g_at_b[0], err_msg=f"{mode} {name}: dx is not "
                                      "the vjp of the same op with w replaced by B")
        for i in range(1, len(args)):  # dw (and db): backprop's
            np.testing.assert_array_equal(g_fb[i], g_bp[i], err_msg=f"{mode} {name} grad {i}")
    if len(modes) == 2:
        S.assert_trees_close(res["manual"]["feedback"], res["autodiff"]["feedback"],
                             S.RTOL[np.dtype(np.float64)], f"{name}: manual vs autodiff")
    return res


# --------------------------------------------------------------------------------------------
# The ops.
# --------------------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(case=S.conv_cases(), seed=S.seeds)
def test_conv(case, seed):
    """1-3-D, stride, padding, dilation, groups, both layouts (B in the call's layout)."""
    args = case.arrays(seed, np.float64)
    b_feedback = S.normal(seed + 5, case.w_shape)
    # JAX's own dx of some strided convolutions aborts XLA:CPU: then the manual op only
    modes = ("manual",) if S.xla_dx_may_abort("conv", case.static, args) else MODES
    check_feedback_rule("conv", case.static, args, b_feedback, seed, modes)


@settings(max_examples=EXAMPLES)
@given(case=transpose_cases(), seed=S.seeds)
def test_conv_transpose(case, seed):
    args = case.arrays(seed, np.float64)
    b_feedback = S.normal(seed + 5, args[1].shape)
    check_feedback_rule("conv_transpose", case.static, args, b_feedback, seed)


@settings(max_examples=EXAMPLES)
@given(lead=st.lists(st.integers(1, 4), max_size=2), n_in=st.integers(1, 5),
       n_out=st.integers(1, 5), bias=st.booleans(), seed=S.seeds)
def test_dense(lead, n_in, n_out, bias, seed):
    args = (S.normal(seed, (*lead, n_in)), S.normal(seed + 1, (n_in, n_out)))
    args += (S.normal(seed + 2, (n_out,)),) if bias else ()
    check_feedback_rule("dense", (), args, S.normal(seed + 5, (n_in, n_out)), seed)


DOT_CASES = [  # (x shape, w shape, dimension_numbers)
    ((3, 4), (4, 5), (((1,), (0,)), ((), ()))),
    ((2, 3, 4), (2, 4, 5), (((2,), (1,)), ((0,), (0,)))),
    ((4, 3), (5, 4), (((0,), (1,)), ((), ()))),
    ((2, 3, 4), (4, 2), (((2, 0), (0, 1)), ((), ()))),
    ((3, 2, 4), (4,), (((2,), (0,)), ((), ()))),
]


@settings(max_examples=EXAMPLES)
@given(case=st.sampled_from(DOT_CASES), seed=S.seeds)
def test_dot_general(case, seed):
    x_shape, w_shape, numbers = case
    args = (S.normal(seed, x_shape), S.normal(seed + 1, w_shape))
    static = (("dimension_numbers", numbers),)
    check_feedback_rule("dot_general", static, args, S.normal(seed + 5, w_shape), seed)


FIXED = [  # one call of each op: (name, static, x shape, w shape, bias)
    ("conv", (("stride", 2), ("padding", "SAME"), ("groups", 2)), (2, 7, 6, 4), (3, 2, 2, 6), True),
    ("conv", (("layout", "channels_first"), ("dilation", 2)), (1, 2, 9), (3, 2, 2), False),
    ("conv_transpose", (("stride", 2),), (2, 4, 3), (3, 2, 3), True),
    ("dense", (), (3, 4), (4, 5), True),
    ("dot_general", (("dimension_numbers", (((2,), (1,)), ((0,), (0,)))),), (2, 3, 4), (2, 4, 5),
     False),
]


def _fixed_args(x_shape, w_shape, bias, static, name, seed=0):
    args = (S.normal(seed, x_shape), S.normal(seed + 1, w_shape))
    if bias:
        c_out = S.output_shape(name, static, args)[-1]
        args += (S.normal(seed + 2, (c_out,)),)
    return args


@pytest.mark.parametrize("name, static, x_shape, w_shape, bias", FIXED)
def test_feedback_w_is_backprop(name, static, x_shape, w_shape, bias):
    """feedback=w gives backprop's gradients exactly, in both namespaces."""
    args = _fixed_args(x_shape, w_shape, bias, static, name)
    res = check_feedback_rule(name, static, args, args[1], seed=1)
    for mode in MODES:
        for g_fb, g_bp in zip(res[mode]["feedback"][1], res[mode]["backprop"][1], strict=True):
            np.testing.assert_array_equal(g_fb, g_bp)


@pytest.mark.parametrize("name, static, x_shape, w_shape, bias", FIXED)
@pytest.mark.parametrize("rule", ["sign", "random"])
def test_callable_feedback(name, static, x_shape, w_shape, bias, rule):
    """A callable is called on the channels-last w; its B is fixed: dw stays backprop's (no
    gradient flows through sign(w)·mean|w| into w), dx goes back through B."""
    args = _fixed_args(x_shape, w_shape, bias, static, name)
    rule = F.sign if rule == "sign" else F.random(3)
    seen = []

    def spy(w):
        seen.append(w.shape)
        return rule(w)

    kwargs = dict(static)
    op = getattr(jaxconv, name)
    op(*args, **kwargs, feedback=spy)
    w = args[1]
    w_last = (np.transpose(w, (*range(2, w.ndim), 1, 0))
              if kwargs.get("layout") == "channels_first" else w)
    assert seen == [w_last.shape]
    b_last = np.asarray(rule(jnp.asarray(w_last)))
    b_feedback = (np.transpose(b_last, (w.ndim - 1, w.ndim - 2, *range(w.ndim - 2)))
                  if kwargs.get("layout") == "channels_first" else b_last)
    dy = S.normal(9, S.output_shape(name, static, args))
    for mode in MODES:
        op = getattr(_namespace(mode), name)
        _, pull = jax.vjp(lambda *a, op=op: op(*a, **kwargs, feedback=rule), *args)
        _, pull_b = jax.vjp(lambda *a, op=op: op(*a, **kwargs, feedback=b_feedback), *args)
        for g, g_b in zip(pull(dy), pull_b(dy), strict=True):
            np.testing.assert_array_equal(g, g_b)


def test_jit_vmap_and_conv2d():
    x, w, b = (S.normal(0, (3, 2, 6, 5, 2)), S.normal(1, (2, 3, 2, 4)), S.normal(2, (4,)))
    b_feedback = S.normal(3, w.shape)
    for mode in MODES:
        ns = _namespace(mode)

        def loss(x, w, b, ns=ns):
            return jnp.sum(jnp.sin(ns.conv2d(x, w, b, stride=2, feedback=b_feedback)))

        grads = jax.vmap(jax.grad(loss, (0, 1, 2)), in_axes=(0, None, None))
        per_example, jitted = grads(x, w, b), jax.jit(grads)(x, w, b)
        for i, xi in enumerate(x):
            dy = jnp.cos(ns.conv2d(xi, w, b, stride=2))
            dx_b = jax.vjp(lambda xi, ns=ns: ns.conv2d(xi, b_feedback, b, stride=2), xi)[1](dy)
            dw = jax.vjp(lambda w, xi=xi, ns=ns: ns.conv2d(xi, w, b, stride=2), w)[1](dy)
            for got in (per_example, jitted):
                S.assert_scaled_close(got[0][i], dx_b[0], 1e-12, f"{mode} vmap dx")
                S.assert_scaled_close(got[1][i], dw[0], 1e-12, f"{mode} vmap dw")
                S.assert_scaled_close(got[2][i], jnp.sum(dy, (0, 1, 2)), 1e-12, f"{mode} db")


# --------------------------------------------------------------------------------------------
# jaxconv.feedback.
# --------------------------------------------------------------------------------------------


def test_sign():
    w = jnp.array([[-2.0, 0.0], [1.0, 3.0]])
    np.testing.assert_array_equal(F.sign(w), jnp.array([[-1.5, 0.0], [1.5, 1.5]]))


def test_random_is_fixed_stateless_and_per_layer():
    w = jnp.zeros((40, 30))
    rule = F.random(jax.random.key(7))
    assert rule == F.random(jax.random.key(7)) == F.random(7) == F.random(jax.random.PRNGKey(7))
    assert hash(rule) == hash(F.random(7))
    first = rule(w)
    np.testing.assert_array_equal(first, rule(w))
    np.testing.assert_array_equal(first, jax.jit(rule)(w))
    np.testing.assert_array_equal(first, jax.jit(lambda w: F.random(7)(w))(w))  # built in jit
    layers = [F.per_layer(rule, i)(w) for i in range(3)]
    assert not np.array_equal(layers[0], layers[1]) and not np.array_equal(layers[1], layers[2])
    assert not np.array_equal(first, layers[0])
    np.testing.assert_array_equal(layers[1], F.per_layer(rule, 1)(w))
    assert not np.array_equal(first, F.random(8)(w))
    assert first.dtype == w.dtype and first.shape == w.shape
    # scaled as w's fan-in initialisation: std √(scale / fan_in), within ±2 std (truncated)
    for scale in (1.0, 2.0):
        big = F.random(0, scale=scale)(jnp.zeros((3, 3, 64, 100)))
        expected = np.sqrt(scale / (3 * 3 * 64))
        assert abs(float(jnp.std(big)) / expected - 1) < 0.03
        assert float(jnp.max(jnp.abs(big))) <= 2 * expected / 0.87962566103423978 + 1e-12
    assert F.per_layer(F.sign, 3) is F.sign and F.per_layer(None, 0) is None
    assert F.per_layer(jnp.tanh, 1) is jnp.tanh


# --------------------------------------------------------------------------------------------
# jaxconv.manual(fun, feedback=...)
# --------------------------------------------------------------------------------------------


def _model(params, x, lax_conv=jax.lax.conv_general_dilated):
    """Two dense layers of one shape (the instances must still differ), a convolution and a
    transposed one, inside a jit and a scan."""
    w1, w2, k, kt = params
    h = lax_conv(x, k, (2,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))
    h = jax.lax.conv_transpose(jnp.tanh(h), kt, (2,), "SAME", dimension_numbers=("NWC", "WIO",
                                                                                  "NWC"))
    h = jnp.tanh(h.reshape(h.shape[0], -1))

    @jax.jit
    def layer(h, w):
        return jnp.tanh(h @ w)

    h = layer(h, w1)
    h, _ = jax.lax.scan(lambda c, _: (layer(c, w2), None), h, None, length=1)
    return jnp.sum(jnp.sin(h))


def _reference(params, x, rules):
    """The model with jaxconv.autodiff's ops and explicit feedback kernels, one per layer."""
    w1, w2, k, kt = params
    ad = jaxconv.autodiff
    h = ad.conv(x, k, stride=2, padding=1, feedback=rules[0])
    # lax.conv_transpose "SAME" (stride 2, K = 3, 6 inputs): lhs_dilation 2, padding (2, 1)
    # of kt, i.e. conv_transpose of the rotated, channel-swapped kernel cropped by (0, 1)
    kt_rot = jnp.flip(kt, 0).swapaxes(1, 2)
    h = ad.conv_transpose(jnp.tanh(h), kt_rot, stride=2, padding=((0, 1),),
                          feedback=rules[1])
    h = jnp.tanh(h.reshape(h.shape[0], -1))
    h = jnp.tanh(ad.dense(h, w1, feedback=rules[2]))
    return jnp.sum(jnp.sin(jnp.tanh(ad.dense(h, w2, feedback=rules[3]))))


def _params():
    return (S.normal(1, (24, 12)), S.normal(2, (12, 12)), S.normal(3, (3, 2, 3)),
            S.normal(4, (3, 3, 2)))


def _jit_grad(fun, *args):
    return jax.jit(jax.grad(fun), compiler_options=S._FAST_COMPILE)(*args)


@pytest.mark.parametrize("rule", ["random", "sign"])
def test_manual_feedback(rule):
    params, x = _params(), S.normal(0, (2, 11, 2))
    assert abs(float(_model(params, x)) - float(_reference(params, x, [None] * 4))) < 1e-12
    rule = F.random(jax.random.key(5)) if rule == "random" else F.sign
    grads = _jit_grad(jaxconv.manual(_model, feedback=rule), params, x)
    per_instance = [F.per_layer(rule, i) for i in range(4)]
    expected = _jit_grad(lambda p, x: _reference(p, x, per_instance), params, x)
    S.assert_trees_close(grads, expected, 1e-10, "manual with feedback vs autodiff twins")
    backprop = _jit_grad(_model, params, x)
    assert S.scaled_error(grads[3], backprop[3]) > 1e-3  # the feedback did change something
    again = _jit_grad(jaxconv.manual(_model, feedback=rule), params, x)  # traced anew
    S.assert_trees_close(again, grads, 0.0, "fixed across calls")
    if rule is F.sign:  # the same, run eagerly
        eager = jax.grad(jaxconv.manual(_model, feedback=rule))(params, x)
        S.assert_trees_close(eager, grads, 1e-12, "eager and jitted")
    cov = jaxconv.coverage(_model, params, x)
    assert cov.manual["conv_general_dilated"] == 2 and cov.manual["dot_general"] == 2


def test_manual_random_differs_between_instances():
    """One matrix for both dense layers (what per-instance keys prevent) gives other grads."""
    params, x = _params(), S.normal(0, (2, 11, 2))
    rule = F.random(1)
    grads = _jit_grad(jaxconv.manual(_model, feedback=rule), params, x)
    same = [F.per_layer(rule, i) for i in (0, 1, 2, 2)]
    expected = _jit_grad(lambda p, x: _reference(p, x, same), params, x)
    assert S.scaled_error(grads[0], expected[0]) > 1e-3


def test_manual_rewraps_and_backprop():
    params, x = _params(), S.normal(0, (2, 11, 2))
    plain = jaxconv.manual(_model)
    assert jaxconv.manual(plain) is plain
    rewrapped = jaxconv.manual(plain, feedback=F.sign)
    S.assert_trees_close(_jit_grad(rewrapped, params, x),
                         _jit_grad(jaxconv.manual(_model, feedback=F.sign), params, x), 0.0)
    S.assert_trees_close(_jit_grad(plain, params, x), _jit_grad(_model, params, x), 1e-10)


# --------------------------------------------------------------------------------------------
# Errors: jaxconv's own, naming feedback, at trace time.
# --------------------------------------------------------------------------------------------


def test_errors():
    x, w = S.normal(0, (2, 5, 3)), S.normal(1, (2, 3, 4))
    for ns in (jaxconv, jaxconv.autodiff):
        with pytest.raises(ValueError, match=r"feedback must have w's shape \(2, 3, 4\) and "
                                             r"dtype float64, got shape \(2, 3, 3\)"):
            jax.jit(lambda x, w, ns=ns: ns.conv(x, w, feedback=jnp.ones((2, 3, 3))))(x, w)
        with pytest.raises(ValueError, match="feedback must have w's shape .* got .*float32"):
            ns.conv(x, w, feedback=np.ones(w.shape, np.float32))
        with pytest.raises(ValueError, match=r"feedback \(<lambda>\) called on w must return"):
            ns.dense(x[0], w[0], feedback=lambda w: w.T)
        with pytest.raises(TypeError, match=r"feedback \(<lambda>\) called on w must return an "
                                            r"array"):
            ns.conv_transpose(x, w.swapaxes(1, 2), feedback=lambda w: 1.0)
        with pytest.raises(TypeError, match="feedback must be None, an array"):
            ns.dot_general(x, w, (((2,), (1,)), ((), ())), feedback="sign")
    with pytest.raises(TypeError, match="feedback must be None or a rule that holds for every"):
        jaxconv.manual(_model, feedback=w)
    with pytest.raises(TypeError, match="feedback must be None or a rule that holds for every"):
        F.per_layer(w, 0)
    with pytest.raises(TypeError, match="key must be an int seed or a concrete PRNG key"):
        jax.jit(F.random)(jax.random.key(0))
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        F.random(0, scale=0.0)


def test_layers_lists_the_instances_in_index_order():
    params, x = _params(), S.normal(0, (2, 11, 2))
    found = F.layers(_model, params, x)
    assert [(la.index, la.op, la.w_shape) for la in found] == [
        (0, "jaxconv.conv", (3, 2, 3)), (1, "jaxconv.conv_transpose", (3, 3, 2)),
        (2, "jaxconv.dot_general", (24, 12)), (3, "jaxconv.dot_general", (12, 12))]
    assert all("test_feedback.py" in la.where for la in found)


def test_random_is_a_static_argument():
    x, w = S.normal(0, (3, 4)), S.normal(1, (4, 5))
    f = jax.jit(lambda x, w, fb: jax.grad(lambda x: jnp.sum(jaxconv.dense(x, w, feedback=fb) ** 2))(
        x), static_argnames="fb")
    np.testing.assert_array_equal(f(x, w, fb=F.random(2)), f(x, w, fb=F.random(2)))
    cov = jaxconv.coverage(lambda x, w: jaxconv.conv(x, w, feedback=F.sign), x[None], w[None])
    assert cov.manual == {"jaxconv.conv": 1}


@pytest.mark.parametrize("mode", MODES)
def test_feedback_array_gets_zero_cotangent(mode):
    x, w, b_feedback = S.normal(0, (3, 4)), S.normal(1, (4, 5)), S.normal(2, (4, 5))
    dense = _namespace(mode).dense
    g = jax.grad(lambda fb: jnp.sum(jnp.sin(dense(x, w, feedback=fb))))(b_feedback)
    np.testing.assert_array_equal(g, np.zeros_like(b_feedback))
