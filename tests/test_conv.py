"""The convolution's hand-derived rules (db = Σ dy, dw = x ⋆ dy, dx = full-conv(rot180 w, dy))
against JAX's own derivative of the same forward, on hypothesis-drawn configurations, against
central finite differences, and in every floating dtype; plus the structure of the programs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references as R
import strategies as S
from hypothesis import example, given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxconv
import jaxconv.autodiff

# --------------------------------------------------------------------------------------------
# Manual rule == autodiff, over the whole configuration space.
# --------------------------------------------------------------------------------------------


# Awkward cases, pinned under both policies (channels_last unless stated): depthwise (under
# "auto": shifted, with XLA's dW as it is strided), one input channel (forward shifted, dx
# col2im), strided with several channels (dx col2im, dw im2col), LeNet-like few channels on
# short rows (banded dx and dw), grouped with dilation and SAME, channels_first with FULL and
# batch 1. The two SAME cases have an odd total pad in their first dimension (3 and 1), where
# the extra pad must go high.
AUTO_PINNED = [
    S.ConvCase((2, 7, 6, 3), (3, 3, 1, 6), True, (2, 1), ((1, 0), (0, 2)), (1, 2), 3,
               "channels_last"),
    S.ConvCase((1, 9, 8, 1), (4, 2, 1, 4), False, 2, "SAME", 1, 1, "channels_last"),
    S.ConvCase((2, 8, 5), (3, 5, 4), True, 2, ((2, 1),), 2, 1, "channels_last"),
    S.ConvCase((2, 9, 9, 2), (3, 3, 2, 4), True, 1, 1, 1, 1, "channels_last"),
    S.ConvCase((1, 6, 7, 4), (2, 3, 2, 6), False, (1, 2), "SAME", (1, 2), 2, "channels_last"),
    S.ConvCase((1, 2, 6, 5), (3, 2, 2, 3), True, (2, 3), "FULL", (1, 2), 1, "channels_first"),
    # JAX's own dX (and the xla dX rule) abort XLA:CPU here: see strategies.xla_dx_may_abort
    S.ConvCase((2, 3, 10, 1), (4, 2, 1, 2), True, (3, 2), ((2, 2), (1, 1)), 1, 1,
               "channels_last"),
]


def _auto_examples(test):
    for i, case in enumerate(AUTO_PINNED):
        test = example(case=case, dtype=(np.float64, np.float32)[i % 2], seed=i)(test)
    return test


@given(case=S.conv_cases(), dtype=S.float_dtypes, seed=S.seeds)
@_auto_examples
def test_gradient_equals_autodiff(case, dtype, seed):
    """dx, dw (and db when there is a bias) pulled back from a random dy agree with jax.vjp of
    the autodiff twin: float64 to 1e-10, float32 to 1e-5 of the gradient's scale. The rules are
    computed by XLA's convolution here (the lecture's formulas as three convolutions)."""
    S.check_manual_equals_autodiff(
        "conv", case.static, case.arrays(seed, dtype), seed=seed, policy="xla"
    )


@given(case=S.conv_cases(nd=st.integers(1, 2)), dtype=S.float_dtypes, seed=S.seeds)
@_auto_examples
def test_gradient_equals_autodiff_default_formulations(case, dtype, seed):
    """The same under the default policy (CPU's path), whose per-shape choice computes the rules
    as shifted matrix products, im2col / col2im or banded products (jaxconv.ops._formulations):
    the profile's full count, at most 2 spatial dims (3-D kernels unroll into long programs;
    every formulation is pinned in 3-D by test_formulations_pinned)."""
    S.check_manual_equals_autodiff(
        "conv", case.static, case.arrays(seed, dtype), seed=seed, policy="auto"
    )


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_nd_against_lax(nd):
    """conv1d/conv2d/conv3d: values and gradients equal lax's convolution with its NWC/WIO,
    NHWC/HWIO, NDHWC/DHWIO dimension numbers and its own "SAME" (odd total pad, stride 2), and
    each rejects the other ranks with its own error."""
    x = S.normal(0, (2, *(5,) * nd, 3))
    w = S.normal(1, (*(2,) * nd, 3, 4))
    b = S.normal(2, (4,))
    op = getattr(jaxconv, f"conv{nd}d")
    ref = functools.partial(R.lax_conv, stride=(2,) * nd, padding="SAME", dilation=(1,) * nd,
                            groups=1, layout="channels_last")

    @jax.jit
    def both(x, w, b, dy):
        (y1, pull1), (y2, pull2) = (jax.vjp(lambda *a: op(*a, stride=2, padding="SAME"), x, w, b),
                                    jax.vjp(ref, x, w, b))
        return (y1, pull1(dy)), (y2, pull2(dy))

    dy = S.normal(3, jax.eval_shape(ref, x, w, b).shape)
    S.assert_trees_close(*both(x, w, b, dy), 1e-10, f"conv{nd}d vs lax")
    with pytest.raises(ValueError, match=f"conv{nd}d expects x of rank {nd + 2}"):
        op(S.normal(0, (2, *(5,) * (nd % 3 + 1), 3)), w)


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((2, 3, 7), (6, 1, 3), dict(stride=2, padding=((1, 2),), dilation=2, groups=3)),
        ((1, 4, 5, 6), (2, 2, 3, 2), dict(stride=(2, 1), padding="SAME", groups=2)),
    ],
)
def test_channels_first_against_lax(x_shape, w_shape, kwargs):
    """channels_first (PyTorch's NC* / OI* layouts) gives lax's values and gradients with lax's
    own NCW/OIW, NCHW/OIHW dimension numbers (and its "SAME")."""
    nd = len(x_shape) - 2
    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[0],))

    def first(x, w, b):
        return jaxconv.conv(x, w, b, layout="channels_first", **kwargs)

    padding = kwargs.get("padding", "VALID")
    ref = functools.partial(
        R.lax_conv, stride=R.per_dim(kwargs.get("stride", 1), nd),
        padding=padding if isinstance(padding, str) else list(padding),
        dilation=R.per_dim(kwargs.get("dilation", 1), nd), groups=kwargs.get("groups", 1),
        layout="channels_first")

    @jax.jit
    def both(x, w, b, dy):
        (y1, pull1), (y2, pull2) = jax.vjp(first, x, w, b), jax.vjp(ref, x, w, b)
        return (y1, pull1(dy)), (y2, pull2(dy))

    dy = S.normal(5, jax.eval_shape(first, x, w, b).shape)
    S.assert_trees_close(*both(x, w, b, dy), 1e-10, "channels_first vs lax NC*/OI*")


# --------------------------------------------------------------------------------------------
# Central finite differences (float64), first and second order, reverse mode.
# --------------------------------------------------------------------------------------------

FD_CASES = [
    # (x shape, w shape, kwargs)  channels_last unless stated
    ((2, 6, 2), (3, 2, 3), dict()),
    ((1, 7, 2), (2, 2, 2), dict(stride=3, padding=((2, 0),), dilation=2)),
    ((2, 5, 4, 2), (2, 3, 1, 4), dict(stride=(2, 1), padding="SAME", groups=2)),
    ((1, 4, 5, 3), (3, 2, 1, 3), dict(padding=((1, 2), (0, 1)), dilation=(1, 2), groups=3)),
    ((1, 3, 4, 4, 2), (2, 1, 2, 2, 2), dict(stride=(1, 2, 1), padding="FULL")),
    ((2, 2, 5, 4), (4, 2, 3, 2), dict(stride=2, padding=1, layout="channels_first")),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs", FD_CASES)
def test_finite_differences(x_shape, w_shape, kwargs):
    """Reverse mode, first and second order, against central differences; with a bias on every
    other case."""
    c_out = w_shape[0] if kwargs.get("layout") == "channels_first" else w_shape[-1]
    bias = FD_CASES.index((x_shape, w_shape, kwargs)) % 2 == 0
    args = (S.normal(0, x_shape), S.normal(1, w_shape)) + ((S.normal(2, (c_out,)),) if bias else ())
    check_grads(jax.jit(lambda *a: jaxconv.conv(*a, **kwargs)), args, order=2, modes=["rev"])


# --------------------------------------------------------------------------------------------
# Dtypes: forward and backward in bfloat16, float16, float32, float64.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", S.ALL_FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", FD_CASES[1:5])
def test_dtypes(dtype, x_shape, w_shape, kwargs):
    c_out = w_shape[-1]
    args = tuple(jnp.asarray(S.normal(i, s), dtype)
                 for i, s in enumerate((x_shape, w_shape, (c_out,))))
    S.check_dtype_against_float64("conv", tuple(kwargs.items()), args, seed=7)


# --------------------------------------------------------------------------------------------
# The manual op really uses its own rules, and they are convolutions.
# --------------------------------------------------------------------------------------------

JAXPR_CASES = [
    ((2, 6, 3), (3, 3, 4), dict(stride=2, padding=((1, 0),))),
    ((2, 6, 5, 4), (2, 3, 2, 4), dict(dilation=(2, 1), groups=2, padding="SAME")),
    # (stride (1, 2, 3) here would put dx in the class XLA:CPU aborts on, which the choice
    # computes as shifted products under every policy: see test_xla_dx_never_in_the_abort_class)
    ((1, 4, 4, 4, 3), (2, 2, 2, 1, 3), dict(groups=3, stride=(1, 2, 1))),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_forward_jaxpr_holds_the_custom_vjp(x_shape, w_shape, kwargs):
    x, w = S.normal(0, x_shape), S.normal(1, w_shape)
    manual = S.primitive_names(jax.make_jaxpr(lambda x, w: jaxconv.conv(x, w, **kwargs))(x, w))
    twin = S.primitive_names(
        jax.make_jaxpr(lambda x, w: jaxconv.autodiff.conv(x, w, **kwargs))(x, w)
    )
    assert "custom_vjp_call" in manual
    assert not any(name.startswith("custom_vjp") for name in twin), twin


def _grad_jaxpr(op, x, w, b, kwargs):
    r = S.normal(9, jax.eval_shape(lambda: op(x, w, b, **kwargs)).shape)
    return jax.make_jaxpr(
        jax.grad(lambda x, w, b: jnp.sum(op(x, w, b, **kwargs) * r), argnums=(0, 1, 2))
    )(x, w, b)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_gradient_jaxpr_is_three_convolutions(x_shape, w_shape, kwargs):
    """With XLA's convolution as the formulation, the manual gradient program is the forward
    convolution plus the two rules' convolutions (dx, dw) and db's sum: no matrix product, no
    loop over positions."""
    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[-1],))
    with S.conv_policy("xla"):
        names = S.primitive_names(_grad_jaxpr(jaxconv.conv, x, w, b, kwargs))
    assert names.count("conv_general_dilated") == 3, names
    assert "reduce_sum" in names  # db = Σ dy
    for banned in ("dot_general", "while", "scan", "cond", "custom_vjp_call"):
        assert banned not in names, (banned, names)


def _channels_last(nd: int) -> jax.lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    return jax.lax.ConvDimensionNumbers((0, nd + 1, *spatial), (nd + 1, nd, *range(nd)),
                                        (0, nd + 1, *spatial))


#: XLA's convolution for every role, dW laid out channels-last: what ``auto`` runs where it
#: keeps XLA's convolution.
XLA_CL = dict(forward="xla", dx="xla", dw="xla_cl")


@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_rules_convolve_channels_last(x_shape, w_shape, kwargs):
    """With dW's ``xla_cl`` layout every convolution of the manual gradient (forward, dx, dw) is
    laid out like the forward: (N, *S, C) ⋆ (*K, I, O) -> (N, *S, C), its transposes written
    out, so that XLA:CPU runs its fast convolution also inside a loop body (``lax.scan``), where
    it keeps the layout it is given (experiments/bench_scan.py)."""
    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[-1],))
    with jaxconv.use(**XLA_CL):
        jaxpr = _grad_jaxpr(jaxconv.conv, x, w, b, kwargs)
    convs = [e for e in S.equations(jaxpr) if e.primitive.name == "conv_general_dilated"]
    assert convs
    for eqn in convs:
        assert eqn.params["dimension_numbers"] == _channels_last(len(x_shape) - 2), eqn


def test_rules_in_a_scan_compile_to_xlas_channels_last_convolution():
    """What the layout is for: the manual gradient of a strided 2-D layer as a ``lax.scan`` body
    compiles to convolutions in XLA:CPU's own channels-last form (dim_labels b01f_01io->b01f)
    only. (The reference dW, JAX's layout, compiles to f01b_i01o->01bf there.)"""
    import re

    x, w, b = S.normal(0, (4, 12, 11, 8)), S.normal(1, (3, 3, 8, 16)), S.normal(2, (16,))
    dy = S.normal(3, jax.eval_shape(lambda: jaxconv.conv(x, w, b, stride=2, padding=1)).shape)

    def step(s, _):
        y, vjp = jax.vjp(lambda x, w, b: jaxconv.conv(x, w, b, stride=2, padding=1), x * s, w, b)
        return 1 + 1e-9 * (jnp.sum(y) + sum(jnp.sum(g) for g in vjp(dy * s))), None

    with jaxconv.use(**XLA_CL):
        hlo = jax.jit(lambda s: jax.lax.scan(step, s, None, length=2)[0]).lower(1.0).compile()
    labels = re.findall(r"convolution\(.*dim_labels=([^,\s]+)", hlo.as_text())
    assert len(labels) == 3 and set(labels) == {"b01f_01io->b01f"}, labels


def test_xla_dx_never_in_the_abort_class():
    """Under the "xla" policy the dx of a configuration in XLA:CPU's aborting class (a stride in
    one dim, a kernel larger than dy in another) is not one lhs-dilated convolution: only the
    forward and dw are convolutions, and no convolution dilates its input."""
    x, w, b = S.normal(0, (1, 4, 4, 4, 3)), S.normal(1, (2, 2, 2, 1, 3)), S.normal(2, (3,))
    kwargs = dict(groups=3, stride=(1, 2, 3))
    with S.conv_policy("xla"):
        jaxpr = _grad_jaxpr(jaxconv.conv, x, w, b, kwargs)
    convs = [e for e in S.equations(jaxpr) if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == 2, [e.primitive.name for e in S.equations(jaxpr)]
    assert all(set(e.params["lhs_dilation"]) == {1} for e in convs)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_gradient_never_forms_a_jacobian(x_shape, w_shape, kwargs):
    """Whatever formulation the default policy picks: no loop primitive, and no matrix product
    with an operand or result as large as the Jacobian ∂y/∂x or ∂y/∂w."""
    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[-1],))
    y_size = int(np.prod(jax.eval_shape(lambda: jaxconv.conv(x, w, b, **kwargs)).shape))
    jacobian = y_size * min(x.size, w.size)
    for eqn in S.equations(_grad_jaxpr(jaxconv.conv, x, w, b, kwargs)):
        assert eqn.primitive.name not in ("while", "scan"), eqn
        if eqn.primitive.name == "dot_general":
            sizes = [int(np.prod(v.aval.shape)) for v in (*eqn.invars, *eqn.outvars)]
            assert max(sizes) < jacobian, (sizes, jacobian, eqn)


FORMULATION_SETS = {"xla": ("xla", "xla", "xla"), "shifted": ("shifted",) * 3,
                    "im2col": ("im2col", "col2im", "im2col"), "banded": ("banded",) * 3,
                    "per_group": ("per_group",) * 3,
                    "per_group_shifted": ("per_group_shifted",) * 3,
                    "shifted_per_image": ("shifted", "shifted", "shifted_per_image")}


@pytest.mark.parametrize("formulations", list(FORMULATION_SETS))
@pytest.mark.parametrize("x_shape, w_shape, kwargs", JAXPR_CASES)
def test_rules_use_no_autodiff(x_shape, w_shape, kwargs, formulations):
    """The manual gradient runs the module's rule, and no JAX differentiation (jvp, linearize,
    a backward pass: what jax.vjp / jax.grad of the forward would do) happens inside it, for
    every formulation; the autodiff twin runs no rule at all."""
    import jaxconv

    x, w, b = S.normal(0, x_shape), S.normal(1, w_shape), S.normal(2, (w_shape[-1],))
    forward, dx, dw = FORMULATION_SETS[formulations]
    with jaxconv.use(forward=forward, dx=dx, dw=dw), S.watch_rules() as log:
        _grad_jaxpr(jaxconv.conv, x, w, b, kwargs)
    assert log == {"rules": 1, "autodiff": []}, log
    with S.watch_rules() as log:
        _grad_jaxpr(jaxconv.autodiff.conv, x, w, b, kwargs)
    assert log == {"rules": 0, "autodiff": []}, log
