"""jaxconv.manual, jaxconv.coverage and jaxconv.compare_grads on models written in plain lax/jnp.

Each check runs a model three ways: as written (JAX's autodiff), through ``jaxconv.manual``
(the hand-derived rules) and through ``jaxconv.coverage``. It asserts that the forward values
agree to rounding, that every gradient agrees to 1e-10 of its scale (float64, pulled back from
a random cotangent so errors cannot cancel), that coverage maps exactly the expected primitives
and leaves none with a rule to autodiff, and that the interpreted function really calls that
many jaxconv ops (coverage of ``manual(f)`` counts jaxconv's own custom_vjp calls).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import jaxconv
from jaxconv.ops import conv as conv_module
from jaxconv.ops import dense as dense_module

RTOL = 1e-10
OP = {  # the primitive kind -> the jaxconv op the interpreted function calls
    "conv_general_dilated": "jaxconv.conv", "dot_general": "jaxconv.dot_general",
    "reduce_window_max": "jaxconv.max_pool", "reduce_window_sum": "jaxconv.avg_pool",
    "logistic": "jaxconv.sigmoid", "tanh": "jaxconv.tanh", "relu": "jaxconv.relu",
    "softplus": "jaxconv.softplus",
    # coverage names a jaxconv op by its rule's function (losses._sce_bwd)
    "softmax_cross_entropy": "jaxconv.sce",
}


def weighted(fun, args, seed=99):
    """loss(*args) = Σ fun(*args) · R for fixed random R (one per output leaf): every output
    entry gets its own weight."""
    shapes = jax.tree_util.tree_leaves(jax.eval_shape(fun, *args))
    rs = [S.normal(seed + i, s.shape) for i, s in enumerate(shapes)]
    return lambda *a: sum(jnp.sum(y * r) for y, r in zip(jax.tree_util.tree_leaves(fun(*a)), rs,
                                                           strict=True))


def check(fun, *args, expect: dict[str, int], argnums=None, reference=None):
    """fun's forward, its gradients and its coverage, as the module docstring says; the
    expected values come from JAX's autodiff of ``reference`` (default: fun itself)."""
    reference = fun if reference is None else reference
    argnums = tuple(range(len(args))) if argnums is None else argnums
    report = jaxconv.coverage(fun, *args)
    assert not report.unmapped, str(report)
    assert report.manual == expect, str(report)
    ops = jaxconv.coverage(jaxconv.manual(fun), *args).manual  # jaxconv's custom_vjp calls
    expected_ops: dict[str, int] = {}
    for kind, n in expect.items():
        op = OP.get(kind, kind)  # jaxconv's own ops ("jaxconv.conv") count as themselves
        expected_ops[op] = expected_ops.get(op, 0) + n
    if "jaxconv.conv_transpose" in ops:  # an lhs-dilated conv_general_dilated
        expected_ops["jaxconv.conv"] -= ops["jaxconv.conv_transpose"]
        expected_ops = {k: n for k, n in expected_ops.items() if n} | {
            "jaxconv.conv_transpose": ops["jaxconv.conv_transpose"]}
    assert ops == expected_ops, ops

    loss, reference_loss = weighted(fun, args), weighted(reference, args)

    @functools.partial(jax.jit, compiler_options=S._FAST_COMPILE)  # one program, fast to build
    def run(args):
        return {mode: (f(*args), jax.grad(g, argnums)(*args))
                for mode, f, g in (("manual", jaxconv.manual(fun), jaxconv.manual(loss)),
                                   ("autodiff", reference, reference_loss))}

    out = run(args)
    S.assert_trees_close(out["manual"][0], out["autodiff"][0], 1e-12, "forward")
    S.assert_trees_close(out["manual"][1], out["autodiff"][1], RTOL, "gradient")
    return report


# --------------------------------------------------------------------------------------------
# Convolutions.
# --------------------------------------------------------------------------------------------

NHWC = ("NHWC", "HWIO", "NHWC")
NCHW = ("NCHW", "OIHW", "NCHW")


@pytest.mark.parametrize(
    "x_shape, w_shape, numbers, kwargs",
    [
        # NHWC, stride 2, asymmetric padding, rhs_dilation
        ((2, 7, 6, 3), (3, 2, 3, 4), NHWC,
         dict(window_strides=(2, 1), padding=((1, 2), (0, 1)), rhs_dilation=(1, 2))),
        # NCHW (PyTorch's layout), groups 2
        ((1, 4, 5, 6), (6, 2, 2, 3), NCHW,
         dict(window_strides=(1, 2), padding=((2, 0), (1, 1)), feature_group_count=2)),
        # depthwise, channel multiplier 2
        ((2, 5, 5, 3), (3, 3, 1, 6), NHWC,
         dict(window_strides=(1, 1), padding="SAME", feature_group_count=3)),
        # negative padding crops the input
        ((1, 8, 7, 2), (2, 2, 2, 3), NHWC,
         dict(window_strides=(1, 2), padding=((-1, 2), (0, -2)))),
        # 1-D and 3-D
        ((2, 9, 2), (3, 2, 4), ("NWC", "WIO", "NWC"),
         dict(window_strides=(2,), padding=((0, 1),), rhs_dilation=(2,))),
        ((1, 2, 4, 3, 5), (2, 2, 2, 2, 2), ("NCDHW", "OIDHW", "NCDHW"),
         dict(window_strides=(1, 1, 2), padding=((1, 0), (0, 0), (0, 1)))),
        # mixed layouts: channels-first input, HWIO kernel, channels-last output
        ((2, 3, 5, 4), (2, 2, 3, 2), ("NCHW", "HWIO", "NHWC"),
         dict(window_strides=(1, 1), padding="VALID")),
    ],
)
def test_conv_general_dilated(x_shape, w_shape, numbers, kwargs):
    x, w = S.normal(0, x_shape), S.normal(1, w_shape)

    def model(x, w):
        return lax.conv_general_dilated(x, w, dimension_numbers=numbers, **kwargs)

    check(model, x, w, expect={"conv_general_dilated": 1})


def test_conv_through_lax_helpers():
    """lax.conv and lax.conv_with_general_padding (NCHW / OIHW) reach the same primitive."""
    x, w = S.normal(0, (2, 3, 6, 5)), S.normal(1, (4, 3, 3, 2))

    def model(x, w):
        a = lax.conv(x, w, (1, 1), "SAME")
        return a + lax.conv_with_general_padding(x, w, (1, 1), ((1, 1), (0, 1)), None, None)

    check(model, x, w, expect={"conv_general_dilated": 2})


def conv_reference(x, w, *, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count):
    """lax.conv_general_dilated by slices and products only: x dilated by lhs_dilation
    (scattered onto a zero grid), padded (negative pads crop), then Σ_k view_k(x)·w[k] group by
    group. No convolution op, so neither XLA's convolution rewrites nor JAX's gradient of an
    lhs-dilated convolution (which aborts jaxlib 0.10.2 on some shapes) are involved."""
    lhs, rhs, out = dimension_numbers
    nd = x.ndim - 2
    x = jnp.transpose(x, (lhs[0], *lhs[2:], lhs[1]))   # (N, *S, C)
    w = jnp.transpose(w, (*rhs[2:], rhs[1], rhs[0]))   # (*K, C/g, O)
    n, *size, c = x.shape
    grid = [(s - 1) * a + 1 for s, a in zip(size, lhs_dilation, strict=True)]
    x = jnp.zeros((n, *grid, c), x.dtype).at[
        (slice(None), *(slice(None, None, a) for a in lhs_dilation), slice(None))].set(x)
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding),
                                            (0, 0, 0)])
    kernel, g = w.shape[:nd], feature_group_count
    outs = [(p - d * (k - 1) - 1) // s + 1 for p, k, d, s
            in zip(x.shape[1:-1], kernel, rhs_dilation, window_strides, strict=True)]
    y = 0
    for k in itertools.product(*map(range, kernel)):
        view = x[(slice(None), *(slice(i * d, i * d + (o - 1) * s + 1, s) for i, d, o, s
                                 in zip(k, rhs_dilation, outs, window_strides, strict=True)),
                  slice(None))]
        y = y + jnp.einsum("n...gi,igo->n...go", view.reshape(n, *outs, g, c // g),
                           w[k].reshape(c // g, g, -1)).reshape(n, *outs, -1)
    dest = [out[0], *out[2:], out[1]]  # where each channels-last axis of y goes
    return jnp.transpose(y, np.argsort(dest))


@st.composite
def lax_convs(draw):
    """A lax.conv_general_dilated call: 1 or 2 spatial dims, random dimension numbers (any
    permutation of the axes for x, w and y), kernel 1-3, stride 1-3, rhs_dilation 1-2, padding
    -1..2 on each side (negative crops), groups 1-3 (depthwise included), batch 1-2; in half
    the cases an lhs_dilation of 1-3 (a transposed convolution, window strides 1)."""
    nd = draw(st.integers(1, 2))
    transposed = draw(st.booleans())
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    stride = [1 if transposed else draw(st.integers(1, 3)) for _ in range(nd)]
    base = [draw(st.integers(1, 3)) if transposed else 1 for _ in range(nd)]
    dilation = [draw(st.integers(1, 2)) for _ in range(nd)]
    pads = [(draw(st.integers(-1, 2)), draw(st.integers(-1, 2))) for _ in range(nd)]
    if transposed and draw(st.booleans()):  # pads reaching past a full correlation
        pads = [(lo + draw(st.integers(0, 4)), hi + draw(st.integers(0, 4))) for lo, hi in pads]
    sizes = []
    for k, d, s, a, (lo, hi) in zip(kernel, dilation, stride, base, pads, strict=True):
        # the smallest input size I whose dilated, padded extent (I - 1)·a + 1 + lo + hi holds
        # the window and keeps at least one position after the negative pads
        need = max(d * (k - 1) + 1 - lo - hi, max(-lo, 0) + max(-hi, 0) + 1, 1)
        sizes.append(-(-(need - 1) // a) + 1 + draw(st.integers(0, s)))
    batch = draw(st.integers(1, 2))
    specs = [tuple(draw(st.permutations(range(nd + 2)))) for _ in range(3)]
    x_cl, w_cl = (batch, *sizes, c_in), (*kernel, c_in // groups, c_out)
    # the arrays in the drawn layouts: spec[0] is the batch (out-feature) axis, spec[1] the
    # feature (in-feature) axis, spec[2:] the spatial axes
    x_shape, w_shape = [0] * (nd + 2), [0] * (nd + 2)
    for i, axis in enumerate(specs[0]):
        x_shape[axis] = (x_cl[0], x_cl[-1], *x_cl[1:-1])[i]
    for i, axis in enumerate(specs[1]):
        w_shape[axis] = (w_cl[-1], w_cl[-2], *w_cl[:-2])[i]
    numbers = lax.ConvDimensionNumbers(*specs)
    kwargs = dict(window_strides=tuple(stride), padding=tuple(pads),
                  lhs_dilation=tuple(base), rhs_dilation=tuple(dilation),
                  dimension_numbers=numbers, feature_group_count=groups)
    return tuple(x_shape), tuple(w_shape), kwargs, draw(S.seeds)


@given(case=lax_convs())
def test_conv_property(case):
    """Random lax convolutions, transposed ones included (against :func:`conv_reference`, which
    is checked against lax itself where lax's forward is safe to run: no lhs_dilation)."""
    x_shape, w_shape, kwargs, seed = case
    x, w = S.normal(seed, x_shape), S.normal(seed + 1, w_shape)

    def model(x, w):
        return lax.conv_general_dilated(x, w, **kwargs)

    def reference(x, w):
        return conv_reference(x, w, **kwargs)

    if max(kwargs["lhs_dilation"]) == 1:
        S.assert_scaled_close(reference(x, w), model(x, w), 1e-12, "reference")
        reference = None  # JAX's own gradient of the lax call
    check(model, x, w, expect={"conv_general_dilated": 1}, reference=reference)


def lax_params(fun, *args):
    """The parameters of the one conv_general_dilated that fun emits."""
    (eqn,) = [e for e in jax.make_jaxpr(fun)(*args).jaxpr.eqns
              if e.primitive.name == "conv_general_dilated"]
    return {k: eqn.params[k] for k in ("window_strides", "padding", "lhs_dilation",
                                       "rhs_dilation", "dimension_numbers",
                                       "feature_group_count")}


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((2, 5, 4, 3), (3, 3, 3, 4), dict(strides=(2, 2), padding="SAME")),
        ((1, 6, 5, 2), (2, 3, 2, 3), dict(strides=(3, 1), padding="VALID", rhs_dilation=(1, 2))),
        ((2, 4, 3, 2), (2, 2, 2, 2), dict(strides=(2, 3), padding=((3, 0), (1, 4)))),
    ],
)
def test_lax_conv_transpose(x_shape, w_shape, kwargs):
    """lax.conv_transpose (an lhs-dilated convolution) maps onto jaxconv.conv_transpose; the
    expected gradients come from :func:`conv_reference`, as JAX's own may abort the process."""
    x, w = S.normal(0, x_shape), S.normal(1, w_shape)

    def model(x, w):
        return lax.conv_transpose(x, w, dimension_numbers=NHWC, **kwargs)

    params = lax_params(model, x, w)
    report = check(model, x, w, expect={"conv_general_dilated": 1},
                   reference=lambda x, w: conv_reference(x, w, **params))
    assert jaxconv.coverage(jaxconv.manual(model), x, w).manual == {"jaxconv.conv_transpose": 1}
    assert report.manual == {"conv_general_dilated": 1}


def test_transposed_with_window_strides_is_unmapped():
    x, w = S.normal(0, (1, 5, 5, 1)), S.normal(1, (2, 2, 1, 1))
    report = jaxconv.coverage(
        lambda x, w: lax.conv_general_dilated(x, w, (2, 1), ((0, 0), (0, 0)), lhs_dilation=(2, 2),
                                              dimension_numbers=NHWC), x, w)
    assert report.manual == {} and "window_strides" in report.unmapped[0].reason


_ISSUE_CASE = """
import json, sys
import numpy as np, jax, jax.numpy as jnp
from jax import lax
import jaxconv
x = np.random.default_rng(0).standard_normal((2, 1, 2, 6)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((2, 1, 4, 2)).astype(np.float32)
def loss(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (0, 0)), lhs_dilation=(3, 2))
    return jnp.sum(y ** 2)
dw = jax.jit(jax.grad(jaxconv.manual(loss), argnums=1))(x, w)
dx = jax.jit(jax.grad(jaxconv.manual(loss), argnums=0))(x, w)
print(json.dumps([np.asarray(dx).tolist(), np.asarray(dw).tolist()]))
"""


def test_issue_abort_case_through_manual():
    """The issue's case, on which JAX's own gradient (and even lax's forward) aborts jaxlib
    0.10.2: through manual, ``jax.jit(jax.grad(loss, argnums=1))`` in float32 runs to the end
    and agrees with the reference. In a subprocess, so a regression fails this test instead of
    killing the test run."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, "-c", _ISSUE_CASE], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    dx, dw = (np.asarray(g) for g in json.loads(res.stdout.splitlines()[-1]))
    x = np.random.default_rng(0).standard_normal((2, 1, 2, 6)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((2, 1, 4, 2)).astype(np.float32)
    kwargs = dict(window_strides=(1, 1), padding=((1, 1), (0, 0)), lhs_dilation=(3, 2),
                  rhs_dilation=(1, 1), dimension_numbers=lax.ConvDimensionNumbers(
                      (0, 1, 2, 3), (0, 1, 2, 3), (0, 1, 2, 3)), feature_group_count=1)
    expected = jax.grad(lambda x, w: jnp.sum(conv_reference(x, w, **kwargs) ** 2), (0, 1))(
        x.astype(np.float64), w.astype(np.float64))
    S.assert_scaled_close(dx, expected[0], 1e-5, "dx")
    S.assert_scaled_close(dw, expected[1], 1e-5, "dw")


def test_conv_unmapped_stays_with_autodiff():
    """batch_group_count > 1 and a non-float64 preferred_element_type stay with autodiff, with
    their reasons, and the gradient is still JAX's."""
    x, w = S.normal(0, (4, 5, 5, 2)), S.normal(1, (2, 2, 2, 6))

    def model(x, w):
        a = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC,
                                     batch_group_count=2)
        b = lax.conv_general_dilated(x.astype(np.float32), w.astype(np.float32), (1, 1),
                                     "VALID", dimension_numbers=NHWC,
                                     preferred_element_type=np.float64)
        return jnp.concatenate([a, b], axis=0)

    report = jaxconv.coverage(model, x, w)
    assert report.manual == {}
    reasons = sorted(u.reason for u in report.unmapped)
    assert len(reasons) == 2
    assert reasons[0].startswith("batch_group_count=2") and "preferred_element_type" in reasons[1]
    assert "test_manual.py" in report.unmapped[0].where
    assert "batch_group_count" in str(report)
    loss = weighted(model, (x, w))
    S.assert_trees_close(jax.grad(jaxconv.manual(loss), (0, 1))(x, w),
                         jax.grad(loss, (0, 1))(x, w), RTOL, "gradient")


# --------------------------------------------------------------------------------------------
# dot_general: matmul, einsum with batch axes and odd contracting axes.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, x_shape, w_shape",
    [
        ("bij,bjk->bik", (3, 2, 4), (3, 4, 5)),       # batched matmul
        ("nhwc,hwcd->nd", (2, 3, 4, 2), (3, 4, 2, 5)),  # three contracting axes
        ("abc,cba->b", (2, 3, 4), (4, 3, 2)),         # batch axis between contracted ones
        ("ij,j->i", (4, 3), (3,)),                    # matrix-vector
        ("i,i->", (5,), (5,)),                        # inner product, scalar output
        ("bkc,kd->bdc", (2, 3, 4), (3, 5)),           # contracting a middle axis
    ],
)
def test_einsum(spec, x_shape, w_shape):
    x, w = S.normal(0, x_shape), S.normal(1, w_shape)
    check(lambda x, w: jnp.einsum(spec, x, w), x, w, expect={"dot_general": 1})


def test_dense_layer_and_lax_dot_general():
    x, w, b = S.normal(0, (4, 3)), S.normal(1, (3, 5)), S.normal(2, (5,))
    v = S.normal(3, (5, 2, 4))

    def model(x, w, b, v):
        h = x @ w + b                                                    # (4, 5)
        return lax.dot_general(v, h, (((0,), (1,)), ((), ())))          # (2, 4, 4)

    check(model, x, w, b, v, expect={"dot_general": 2})


@st.composite
def contractions(draw):
    """x and w with 0-2 batch, 0-2 contracted and 0-2 free axes each (sizes 1-3), the axes in
    random order, and their dimension numbers."""
    nb, nc = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    nfx, nfw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    size = st.integers(1, 3)
    b, c = [draw(size) for _ in range(nb)], [draw(size) for _ in range(nc)]
    fx, fw = [draw(size) for _ in range(nfx)], [draw(size) for _ in range(nfw)]
    px = draw(st.permutations(range(nb + nc + nfx)))  # px[i]: the axis of x holding role i
    pw = draw(st.permutations(range(nb + nc + nfw)))
    x_shape, w_shape = [0] * len(px), [0] * len(pw)
    for role, n in enumerate(b + c + fx):
        x_shape[px[role]] = n
    for role, n in enumerate(b + c + fw):
        w_shape[pw[role]] = n
    numbers = ((tuple(px[nb:nb + nc]), tuple(pw[nb:nb + nc])),
               (tuple(px[:nb]), tuple(pw[:nb])))
    return tuple(x_shape), tuple(w_shape), numbers, draw(S.seeds)


@given(case=contractions())
def test_dot_general_rule(case):
    """jaxconv.dot_general's rule (dx = dy·wᵀ, dw = xᵀ·dy over the right axes) against JAX's
    derivative of the same forward, and the forward against lax."""
    x_shape, w_shape, numbers, seed = case
    x, w = S.normal(seed, x_shape), S.normal(seed + 1, w_shape)
    S.check_manual_equals_autodiff("dot_general", (("dimension_numbers", numbers),), (x, w),
                                   seed=seed)
    np.testing.assert_allclose(jaxconv.dot_general(x, w, numbers),
                               lax.dot_general(x, w, numbers), rtol=1e-12, atol=1e-12)


def test_dot_general_finite_differences():
    x, w = S.normal(0, (2, 3, 4)), S.normal(1, (4, 2, 5))
    jax.test_util.check_grads(
        lambda x, w: jaxconv.dot_general(x, w, (((2,), (0,)), ((0,), (1,)))), (x, w), order=1,
        modes=("rev",))


def test_dot_general_errors():
    x, w = np.ones((2, 3)), np.ones((3, 4))
    with pytest.raises(ValueError, match=r"contracting axis 0 of x \(size 2"):
        jaxconv.dot_general(x, w, (((0,), (0,)), ((), ())))
    with pytest.raises(ValueError, match="holds axis 2, out of range for x of rank 2"):
        jaxconv.dot_general(x, w, (((2,), (0,)), ((), ())))
    with pytest.raises(ValueError, match="dimension_numbers must be"):
        jaxconv.dot_general(x, w, ((1,), (0,)))
    with pytest.raises(ValueError, match="must pair up"):
        jaxconv.dot_general(x, w, (((1,), (0, 1)), ((), ())))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        jaxconv.dot_general(np.ones((2, 3), int), w, (((1,), (0,)), ((), ())))


def test_dot_preferred_element_type():
    """float32 operands accumulated into float64 cannot be computed by jaxconv's op (which
    works in its inputs' dtype): unmapped, with the reason."""
    x, w = S.normal(0, (3, 4), np.float32), S.normal(1, (4, 2), np.float32)
    report = jaxconv.coverage(
        lambda x, w: lax.dot_general(x, w, (((1,), (0,)), ((), ())),
                                     preferred_element_type=np.float64), x, w)
    assert report.manual == {} and len(report.unmapped) == 1
    assert "preferred_element_type=float64" in report.unmapped[0].reason


# --------------------------------------------------------------------------------------------
# Pools and activations.
# --------------------------------------------------------------------------------------------


def test_pools():
    x = S.distinct(0, (2, 6, 7, 3)) / 8  # distinct values: no ties in max pooling

    def model(x):
        a = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 3, 1), (1, 2, 2, 1),
                              ((0, 0), (1, 0), (0, 2), (0, 0)))            # NHWC, padded
        b = lax.reduce_window(jnp.transpose(x, (0, 3, 1, 2)), -jnp.inf, lax.max, (1, 1, 3, 3),
                              (1, 1, 1, 2), "VALID")                       # NCHW
        c = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME") / 9
        d = lax.reduce_window(x, 0.0, lax.add, (1, 2, 1, 1), (1, 2, 1, 1), "VALID")  # 1-D
        return a.sum() * b.mean() + jnp.sum(c * c) + jnp.sum(d ** 3)

    check(model, x, expect={"reduce_window_max": 2, "reduce_window_sum": 2})


def test_pool_unmapped():
    x = S.normal(0, (1, 6, 6, 1))
    report = jaxconv.coverage(
        lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 1, 1), "VALID",
                                    window_dilation=(1, 2, 1, 1)), x)
    assert report.manual == {} and "dilation" in report.unmapped[0].reason


def test_activations():
    x = S.normal(0, (3, 4)) * 2

    def model(x):
        return jax.nn.relu(x) + jax.nn.sigmoid(x) * jnp.tanh(x) + jax.nn.softplus(x)

    check(model, x, expect={"relu": 1, "logistic": 1, "tanh": 1, "softplus": 1})


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy: several equations, one rule.
# --------------------------------------------------------------------------------------------


def sce_args():
    """w (5, 10), x (8, 5) and probability labels (8, 10) (rows summing to 1), float64."""
    return S.normal(0, (5, 10)), S.normal(1, (8, 5)), jax.nn.softmax(2 * S.normal(2, (8, 10)))


def test_optax_softmax_cross_entropy():
    """optax's softmax_cross_entropy (probability labels), along any axis, vmapped, jitted, and
    the same loss written by hand, run jaxconv.softmax_cross_entropy's rule; labels that do not
    sum to 1 too (dlogits = dL·(softmax·Σ labels − labels))."""
    import optax

    w, x, y = sce_args()
    models = {
        "optax": lambda w, x, y: optax.softmax_cross_entropy(jax.nn.relu(x @ w), y),
        "axis 0": lambda w, x, y: optax.softmax_cross_entropy((x @ w).T, y.T, axis=0),
        "vmapped": lambda w, x, y: jax.vmap(optax.softmax_cross_entropy)(x @ w, y),
        "jitted": jax.jit(lambda w, x, y: optax.softmax_cross_entropy(x @ w, y).mean()),
        "by hand": lambda w, x, y: -jnp.sum(jax.nn.log_softmax(x @ w) * y, axis=-1),
        "3-D": lambda w, x, y: optax.softmax_cross_entropy((x @ w).reshape(2, 4, 10),
                                                            y.reshape(2, 4, 10), axis=1),
    }
    for name, model in models.items():
        expect = {"dot_general": 1, "softmax_cross_entropy": 1} | (
            {"relu": 1} if name == "optax" else {})
        check(model, w, x, y, expect=expect)
        check(model, w, x, 3 * y + 0.5, expect=expect)
    # one-hot labels made from integers, and second derivatives through the rule
    classes = jnp.arange(8) % 10

    def one_hot(w):
        return optax.softmax_cross_entropy(x @ w, jax.nn.one_hot(classes, 10)).mean()

    assert jaxconv.coverage(one_hot, w).manual == {"dot_general": 1, "softmax_cross_entropy": 1}
    S.assert_trees_close(jax.hessian(jaxconv.manual(one_hot))(w), jax.hessian(one_hot)(w), RTOL,
                         "hessian")


def test_softmax_cross_entropy_only_where_it_is_exact():
    """What is not exactly −Σ labels · jax.nn.log_softmax(logits) with nothing else reading the
    intermediates stays with autodiff (and its gradient stays exact)."""
    import optax

    w, x, y = sce_args()
    mask = S.normal(3, (8, 10)) > -1

    @jax.jit
    def log_softmax(z):  # a user's own, with jax.nn.log_softmax's name
        return z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))

    def log_probs_read_again(w, x, y):
        logp = jax.nn.log_softmax(x @ w)
        return -jnp.sum(y * logp, axis=-1) + logp[:, 0]

    models = {
        "read again": log_probs_read_again,
        "where": lambda w, x, y: optax.softmax_cross_entropy(x @ w, y, where=mask),
        "own log_softmax": lambda w, x, y: -jnp.sum(y * log_softmax(x @ w), axis=-1),
        "scalar labels": lambda w, x, y: -jnp.sum(0.1 * jax.nn.log_softmax(x @ w), axis=-1),
        "other axis": lambda w, x, y: -jnp.sum(
            y.reshape(8, 2, 5) * jax.nn.log_softmax((x @ w).reshape(8, 2, 5), axis=1), axis=2),
        "integer labels": lambda w, x, y: optax.softmax_cross_entropy_with_integer_labels(
            x @ w, jnp.argmax(y, axis=-1)),
    }
    for name, model in models.items():
        report = jaxconv.coverage(model, w, x, y)
        assert report.manual == {"dot_general": 1} and not report.unmapped, (name, str(report))
        assert jaxconv.compare_grads(lambda *a, f=model: jnp.sum(f(*a)), w, x, y,
                                     argnums=(0, 1)).max_error < RTOL, name


def test_custom_rules_are_kept():
    """A user's custom_jvp (even one named relu) and custom_vjp keep their own rules."""

    @jax.custom_jvp
    def relu(x):
        return jnp.maximum(x, 0.0)

    relu.defjvp(lambda p, t: (relu(p[0]), 3.0 * t[0]))  # deliberately not relu's derivative

    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, dy: (5 * dy,))

    def model(x):
        return jnp.sum(relu(x) + double(x))

    x = S.normal(0, (5,))
    report = jaxconv.coverage(model, x)
    assert report.manual == {} and not report.unmapped
    assert report.kept == {"custom_jvp_call[relu]": 1, "custom_vjp_call": 1}
    np.testing.assert_array_equal(jax.grad(jaxconv.manual(model))(x), jax.grad(model)(x))
    np.testing.assert_array_equal(jax.grad(model)(x), np.full(5, 8.0))


# --------------------------------------------------------------------------------------------
# Nested jaxprs: jit, scan, cond, while, remat.
# --------------------------------------------------------------------------------------------


def small_cnn(w, v, x):
    """conv -> relu -> max pool -> dense -> tanh: x (N, 6, 6, 2) -> (N, 3)."""
    h = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    h = jax.nn.relu(h)
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return jnp.tanh(h.reshape(h.shape[0], -1) @ v)


CNN = {"conv_general_dilated": 1, "relu": 1, "reduce_window_max": 1, "dot_general": 1,
       "tanh": 1}


def cnn_args(seed=0):
    return S.normal(seed, (3, 3, 2, 4)) * 0.5, S.normal(seed + 1, (36, 3)) * 0.3, \
        S.normal(seed + 2, (2, 6, 6, 2))


def times(kinds: dict[str, int], n: int) -> dict[str, int]:
    return {k: v * n for k, v in kinds.items()}


def test_nested_jit_and_remat():
    def model(w, v, x):
        a = jax.jit(small_cnn)(w, v, x)
        b = jax.checkpoint(small_cnn)(w, v, x * 0.5)
        return a * b

    check(model, *cnn_args(), expect=times(CNN, 2))


def test_scan():
    """The rules run inside a scan body (counted once per body, not per iteration)."""
    w, v, x = cnn_args()

    def model(w, v, xs):
        def step(carry, x):
            y = small_cnn(w, v, x[None])[0]
            return carry + y, y * carry

        return lax.scan(step, jnp.zeros(3), xs)

    check(model, w, v, x, expect=CNN)


def test_cond():
    w, v, x = cnn_args()

    def model(w, v, x, flag):
        return lax.cond(flag > 0, lambda: small_cnn(w, v, x),
                        lambda: jax.nn.sigmoid(x.reshape(2, -1)[:, :3]))

    for flag in (1.0, -1.0):
        check(model, w, v, x, flag, argnums=(0, 1, 2),
              expect={**CNN, "logistic": 1})


def test_shard_map_is_not_entered():
    """Primitives inside a higher-order primitive manual does not rebuild (here shard_map) stay
    with autodiff, and coverage says so; the function still computes the same."""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    v = S.normal(0, (3, 2))

    def model(x):
        inner = jax.shard_map(lambda x: jnp.tanh(x @ v), mesh=mesh,
                              in_specs=jax.P("data"), out_specs=jax.P("data"))
        return inner(x) @ v.T

    x = S.normal(1, (8, 3))
    report = jaxconv.coverage(model, x)
    assert report.manual == {"dot_general": 1}
    assert sorted(u.kind for u in report.unmapped) == ["dot_general", "tanh"]
    assert all(u.reason == "inside shard_map, which manual does not enter"
               for u in report.unmapped)
    S.assert_trees_close(jaxconv.manual(model)(x), model(x), 1e-12, "forward")


def test_while_forward():
    w, v, x = cnn_args()

    def model(w, v, x):
        def body(carry):
            i, h = carry
            return i + 1, jnp.tanh(h @ v @ v.T)

        return lax.while_loop(lambda c: c[0] < 3, body, (0, small_cnn(w, v, x) @ v.T))[1]

    report = jaxconv.coverage(model, w, v, x)
    assert report.manual == {**CNN, "dot_general": 4, "tanh": 2} and not report.unmapped
    S.assert_trees_close(jaxconv.manual(model)(w, v, x), model(w, v, x), 1e-12, "forward")


# --------------------------------------------------------------------------------------------
# Transformations.
# --------------------------------------------------------------------------------------------


def test_vmap_of_manual_and_manual_of_vmap():
    """Per-example code (Equinox style): vmap(manual(f)) and manual(vmap(f)) both map the
    primitives and give JAX's per-example gradients."""
    w, v, x = cnn_args()

    def per_example(w, v, x):  # x (6, 6, 2)
        return jnp.sum(small_cnn(w, v, x[None]) ** 2)

    grad = jax.grad(per_example, (0, 1))
    expected = jax.vmap(grad, (None, None, 0))(w, v, x)
    got = jax.vmap(jax.grad(jaxconv.manual(per_example), (0, 1)), (None, None, 0))(w, v, x)
    S.assert_trees_close(got, expected, RTOL, "vmap(grad(manual(f)))")
    got = jax.vmap(jaxconv.manual(grad), (None, None, 0))(w, v, x)  # rules of the forward only
    S.assert_trees_close(got, expected, RTOL, "vmap(manual(grad(f)))")

    def batched(w, v, x):
        return jax.vmap(per_example, (None, None, 0))(w, v, x)

    check(batched, w, v, x, expect=CNN)


def test_hessian_through_conv_and_pools():
    x, w = S.normal(0, (1, 5, 5, 2)), S.normal(1, (2, 2, 2, 2))

    def model(w):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
        y = lax.reduce_window(jax.nn.relu(y), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 1, 1),
                              "VALID")
        y = lax.reduce_window(y, 0.0, lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "VALID")
        return jnp.sum(jnp.tanh(y) ** 2)

    assert jaxconv.coverage(model, w).manual == {
        "conv_general_dilated": 1, "relu": 1, "reduce_window_max": 1, "reduce_window_sum": 1,
        "tanh": 1}
    S.assert_trees_close(jax.hessian(jaxconv.manual(model))(w), jax.hessian(model)(w), RTOL,
                         "hessian")


def test_hessian_and_value_and_grad():
    v, x = S.normal(0, (4, 3)) * 0.5, S.normal(1, (5, 4))

    def model(v):
        return jnp.sum(jax.nn.sigmoid(jnp.tanh(x @ v)) ** 2)

    assert jaxconv.coverage(model, v).manual == {"dot_general": 1, "tanh": 1, "logistic": 1}
    S.assert_trees_close(jax.hessian(jaxconv.manual(model))(v), jax.hessian(model)(v), RTOL,
                         "hessian")
    value, grad = jax.value_and_grad(jaxconv.manual(model))(v)
    np.testing.assert_allclose(value, model(v), rtol=1e-14)
    S.assert_trees_close(grad, jax.grad(model)(v), RTOL, "value_and_grad")


def test_manual_of_manual():
    """manual(manual(f)) is manual(f); a function that calls manual(f) keeps jaxconv's ops."""
    f = jaxconv.manual(small_cnn)
    assert jaxconv.manual(f) is f
    ops = {"jaxconv.conv": 1, "jaxconv.relu": 1, "jaxconv.max_pool": 1, "jaxconv.dot_general": 1,
           "jaxconv.tanh": 1}
    assert jaxconv.coverage(lambda *a: f(*a), *cnn_args()).manual == ops
    check(lambda *a: f(*a) + jax.nn.sigmoid(a[1][:2, :]).sum(), *cnn_args(),
          expect={"logistic": 1, **ops})


def test_pytrees_and_static_arguments():
    """Dict parameters in, a tuple out; a Python flag is static."""
    w, v, x = cnn_args()

    def model(params, x, *, train):
        y = small_cnn(params["w"], params["v"], x)
        return (y, {"sum": y.sum()}) if train else (y, None)

    manual = jaxconv.manual(model)
    out = manual({"w": w, "v": v}, x, train=True)
    assert isinstance(out, tuple) and set(out[1]) == {"sum"}
    assert manual({"w": w, "v": v}, x, train=False)[1] is None
    grads = jax.grad(lambda p: manual(p, x, train=True)[1]["sum"])({"w": w, "v": v})
    expected = jax.grad(lambda p: model(p, x, train=True)[1]["sum"])({"w": w, "v": v})
    S.assert_trees_close(grads, expected, RTOL, "dict gradient")


def test_keys_and_python_numbers():
    """PRNG keys are array inputs; Python numbers are static (a new value traces again)."""

    def model(key, x, scale):
        return jnp.tanh(scale * x * jax.random.normal(key, x.shape)).sum()

    manual, x = jaxconv.manual(model), S.normal(0, (3,))
    for key in (jax.random.key(0), jax.random.PRNGKey(1)):
        for scale in (2, 0.5):
            assert manual(key, x, scale) == model(key, x, scale)
            S.assert_trees_close(jax.grad(manual, 1)(key, x, scale),
                                 jax.grad(model, 1)(key, x, scale), RTOL, "gradient")
    assert manual._jaxconv_cache.traces == 4


def test_closure_over_another_transformations_tracer():
    """fun closing over a tracer of an enclosing grad: the rules apply, and a jaxpr holding
    that tracer is used once, never cached (it would leak into later calls)."""
    v, x = S.normal(0, (3, 2)), S.normal(1, (4, 3))
    wrappers = []

    def outer(v):
        manual = jaxconv.manual(lambda x: jnp.sum(jnp.tanh(x @ v) ** 2))
        wrappers.append(manual)
        return manual(x)

    expected = jax.grad(lambda v: jnp.sum(jnp.tanh(x @ v) ** 2))(v)
    S.assert_trees_close(jax.grad(outer)(v), expected, RTOL, "gradient")
    assert wrappers[0]._jaxconv_cache.traces == 1 and not wrappers[0]._jaxconv_cache.entries


def test_traced_once_per_signature():
    calls = []

    def model(v, x):
        calls.append(x.shape)
        return jnp.tanh(x @ v).sum()

    manual = jaxconv.manual(model)
    v = S.normal(0, (3, 2))
    for _ in range(3):
        manual(v, S.normal(1, (4, 3)))
        jax.jit(jax.grad(manual))(v, S.normal(1, (4, 3)))
    assert calls == [(4, 3)]
    manual(v, S.normal(1, (5, 3)))
    assert calls == [(4, 3), (5, 3)]
    assert manual.__name__ == "model" and manual.__wrapped__ is model
    assert inspect.signature(manual) == inspect.signature(model)


def test_the_gradient_is_the_hand_derived_rule(monkeypatch):
    """Double jaxconv's dx rules of the convolution and of dot_general: the gradient of
    manual(f) with respect to x doubles too, so it is computed by those rules (and autodiff's
    stays as it was)."""
    w, v, x = cnn_args()
    conv_loss = lambda x: jnp.sum(  # noqa: E731
        lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2)
    dot_loss = lambda x: jnp.sum(jnp.sin(x.reshape(2, -1)[:, :36] @ v))  # noqa: E731
    # the convolution's dx rule is whichever formulation the plan names (conv_module.DX);
    # dot_general's is dense's dot_dx
    targets = [(conv_loss, conv_module.DX, name) for name in conv_module.DX]
    targets.append((dot_loss, vars(dense_module), "dot_dx"))
    for loss, table, name in targets:
        expected = jax.grad(loss)(x)
        rule = table[name]
        with monkeypatch.context() as patch:
            patch.setitem(table, name, lambda *args, rule=rule: 2 * rule(*args))
            if table is conv_module.DX:
                grad = jax.grad(jaxconv.manual(loss))
                with jaxconv.use(dx=name) if name != "xla" else jaxconv.policy("xla"):
                    S.assert_scaled_close(grad(x), 2 * expected, RTOL, name)
            else:
                S.assert_scaled_close(jax.grad(jaxconv.manual(loss))(x), 2 * expected, RTOL,
                                      name)
            np.testing.assert_array_equal(jax.grad(loss)(x), expected)
        S.assert_scaled_close(jax.grad(jaxconv.manual(loss))(x), expected, RTOL, name)


# --------------------------------------------------------------------------------------------
# compare_grads and the report.
# --------------------------------------------------------------------------------------------


def test_compare_grads():
    w, v, x = cnn_args()
    params = {"w": w, "v": v}

    def loss(params, x):
        return jnp.sum(small_cnn(params["w"], params["v"], x) ** 2)

    result = jaxconv.compare_grads(loss, params, x)
    assert set(result.errors) == {"w", "v"} and result.max_error <= RTOL
    assert result.max_error == max(result.errors.values())
    both = jaxconv.compare_grads(loss, params, x, argnums=(0, 1))
    assert isinstance(both.errors, tuple) and set(both.errors[0]) == {"w", "v"}


def test_compare_grads_measures(monkeypatch):
    """compare_grads reports the error it sees: a 'manual' function off by 0.1 in the gradient
    of w, against an autodiff gradient of scale 2, gives 0.05 for w and 0 for v."""
    c = np.array([1.0, -2.0])

    def fake_manual(fun):
        return lambda w, v: fun(w, v) + 0.1 * jnp.sum(w)

    monkeypatch.setattr(sys.modules["jaxconv._manual"], "manual", fake_manual)
    result = jaxconv.compare_grads(lambda w, v: jnp.sum(w * c) + jnp.sum(v), c, c,
                                   argnums=(0, 1))
    np.testing.assert_allclose(result.errors, (0.05, 0.0), rtol=1e-12)
    assert result.max_error == pytest.approx(0.05) and result.scales == (2.0, 1.0)


def test_coverage_table():
    w, v, x = cnn_args()
    text = str(jaxconv.coverage(lambda w, v, x: jnp.exp(small_cnn(w, v, x)).sum(), w, v, x))
    lines = text.splitlines()
    assert lines[0].split() == ["primitive", "hand-derived", "rule", "autodiff"]
    assert "conv_general_dilated 1 0" in [" ".join(line.split()) for line in lines]
    assert "exp 1" in lines[-1]


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------


def test_errors():
    with pytest.raises(TypeError, match=r"manual: fun must be callable.*int"):
        jaxconv.manual(3)
    with pytest.raises(TypeError, match=r"coverage: fun must be callable"):
        jaxconv.coverage("f", 1.0)
    w, v, x = cnn_args()
    with pytest.raises(TypeError, match=r"coverage: small_cnn cannot take the arguments "
                                        r"\(float64\[3, 3, 2, 4\], float64\[36, 3\]\)") as err:
        jaxconv.coverage(small_cnn, w, v)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match=r"coverage: small_cnn fails on the arguments .*"
                                        r"float64\[35, 3\]") as err:
        jaxconv.coverage(small_cnn, w, v[:35], x)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match=r"compare_grads: small_cnn cannot take"):
        jaxconv.compare_grads(small_cnn, w, v, x, extra=1)
