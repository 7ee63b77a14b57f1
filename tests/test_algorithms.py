"""The convolution's formulations (jaxconv.ops._formulations) and the per-shape choice
(jaxconv.ops._choice).

Every formulation of the forward, dx and dw must equal the reference (the XLA convolution forms of
jaxconv.ops.conv; float64, 1e-10) on every configuration it is eligible for; the manual op must
keep matching jax.grad whichever formulation is forced; the choice must be part of the program
(jit re-traces under another choice, the backward computes what the forward chose, contexts are
per thread); "auto" must be a pure function of the problem; the measurement cache must survive
being missing, corrupt or stale; and the policy "xla" must switch every alternative off.
"""

import json
import math
from unittest import mock

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import references
from hypothesis import given, settings

import jaxconv
import jaxconv.autodiff
from jaxconv import _geometry
from jaxconv._geometry import ConvConfig
from jaxconv.ops import _choice as C
from jaxconv.ops import _formulations as F
from jaxconv.ops import conv as K

# A modest share of the active profile: each example compiles up to nine formulations.
EXAMPLES = max(8, settings.default.max_examples // 20)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own cache folder, no environment policy and an empty memory."""
    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXCONV_CONV_POLICY", raising=False)
    C.clear_memory()
    jaxconv.set_policy(None)
    yield
    C.clear_memory()
    jaxconv.set_policy(None)


@st.composite
def problems(draw, max_nd=2):
    """A random valid convolution: shapes, stride, dilation, asymmetric padding, groups."""
    nd = draw(st.integers(1, max_nd))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups > 1
    c_in_g = 1 if depthwise else draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    size = []
    for k, d, (lo, hi) in zip(kernel, dilation, padding, strict=True):
        smallest = max(1, d * (k - 1) + 1 - lo - hi)
        size.append(draw(st.integers(smallest, smallest + 5)))
    x_shape = (draw(st.integers(1, 2)), *size, groups * c_in_g)
    w_shape = (*kernel, c_in_g, c_out)
    cfg = ConvConfig(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x_shape, w_shape, cfg, draw(st.integers(0, 2**31 - 1))


def _arrays(x_shape, w_shape, cfg, seed):
    kx, kw, kd = jax.random.split(jax.random.key(seed), 3)
    y_shape = (x_shape[0], *_geometry.out_spatial(x_shape[1:-1], w_shape[:-2], cfg), w_shape[-1])
    return tuple(jax.random.normal(k, shape, jnp.float64)
                 for k, shape in ((kx, x_shape), (kw, w_shape), (kd, y_shape)))


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-10, atol=1e-10)


@settings(max_examples=EXAMPLES)
@given(problems(max_nd=3))
def test_every_formulation_equals_the_reference(problem):
    """forward, dx and dw of every eligible formulation equal the reference, XLA's convolution
    (float64)."""
    x_shape, w_shape, cfg, seed = problem
    x, w, dy = _arrays(x_shape, w_shape, cfg, seed)
    kernel, in_size = tuple(w_shape[:-2]), tuple(x_shape[1:-1])
    args = {"forward": (x, w, cfg), "dx": (dy, w, in_size, cfg), "dw": (x, dy, kernel, cfg)}
    aborts = C.xla_dx_may_abort(x_shape, w_shape, cfg)
    for role in C.ROLES:
        names = C.eligible(role, x_shape, w_shape, cfg, jnp.float64)
        assert "shifted" in names
        assert ("xla" in names) == (role != "dx" or not aborts)
        assert ("winograd" in names) == (w_shape[:-2] == (3, 3) and cfg.stride == (1, 1)
                                         and cfg.dilation == (1, 1) and cfg.groups == 1)
        static = args[role][2:]  # in_size / kernel and cfg are static

        def call(name, role=role, static=static):
            fn = K.TABLES[role][name]
            return jax.jit(lambda a, b: fn(a, b, *static))(*args[role][:2])

        if "xla" in names:
            expected = call("xla")
        else:  # XLA:CPU may abort compiling the xla dX here: numpy's dx is the reference
            expected = references.conv_vjp(x, w, dy, cfg.stride, cfg.padding, cfg.dilation,
                                           cfg.groups)[0]
        for name in names:
            _close(call(name), expected)


@settings(max_examples=EXAMPLES)
@given(problems(), st.sampled_from(["shifted", "im2col", "banded", *C.PER_GROUP]),
       st.sampled_from(["shifted", "col2im", "banded", *C.PER_GROUP]),
       st.sampled_from(["shifted", "im2col", "banded", "xla_cl", "shifted_per_image",
                        *C.PER_GROUP]))
def test_manual_gradients_equal_jax_grad_under_every_forced_formulation(problem, fwd, dx, dw):
    """The core issue's check, for forced formulations: manual grads == jax.grad of XLA conv."""
    x_shape, w_shape, cfg, seed = problem
    x, w, _ = _arrays(x_shape, w_shape, cfg, seed)
    b = jnp.linspace(-1.0, 1.0, w_shape[-1], dtype=jnp.float64)
    kw = dict(stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, groups=cfg.groups)

    def loss(op):
        return lambda x, w, b: jnp.sum(jnp.sin(op(x, w, b, **kw)))

    with jaxconv.use(forward=fwd, dx=dx, dw=dw):
        manual = jax.jit(jax.value_and_grad(loss(jaxconv.conv), argnums=(0, 1, 2)))(x, w, b)
    if C.xla_dx_may_abort(x_shape, w_shape, cfg):  # JAX's own dX could abort XLA:CPU here
        args = (cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
        y = references.conv(x, w, b, *args)
        reference = (np.sum(np.sin(y)), references.conv_vjp(x, w, np.cos(y), *args))
    else:
        with jaxconv.policy("xla"):
            reference = jax.jit(jax.value_and_grad(loss(jaxconv.autodiff.conv),
                                                   argnums=(0, 1, 2)))(x, w, b)
    jax.tree.map(_close, manual, reference)


@settings(max_examples=EXAMPLES)
@given(problems(max_nd=3), st.integers(2, 5))
def test_dw_image_by_image_adds_up_to_the_whole_batchs(problem, batch):
    """shifted_per_image over a batch larger than PER_IMAGE_MIN_BYTES (a scan over the images)
    equals the reference dW (float64)."""
    x_shape, w_shape, cfg, seed = problem
    x, _, dy = _arrays((batch, *x_shape[1:]), w_shape, cfg, seed)
    kernel = tuple(w_shape[:-2])
    per_image = K.DW["shifted_per_image"]
    with mock.patch.object(F, "PER_IMAGE_MIN_BYTES", dy.size * dy.dtype.itemsize - 1):
        jaxpr = jax.make_jaxpr(lambda x, dy: per_image(x, dy, kernel, cfg))(x, dy)
        got = jax.jit(lambda x, dy: per_image(x, dy, kernel, cfg))(x, dy)
    assert "scan" in str(jaxpr)  # image by image
    _close(got, jax.jit(lambda x, dy: K.DW["xla"](x, dy, kernel, cfg))(x, dy))


def test_autodiff_differentiates_the_shared_forward_choice():
    """jaxconv.autodiff.conv runs the chosen forward too, and JAX's gradient of it is right."""
    cfg = ConvConfig((2, 1), ((1, 0), (2, 1)), (1, 2), 1)
    x, w, _ = _arrays((2, 9, 9, 4), (3, 3, 4, 5), cfg, 3)
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))

    def loss(x, w):
        return jnp.sum(jnp.cos(jaxconv.autodiff.conv(x, w, **kw)))

    with jaxconv.policy("xla"):
        expected = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    for name in C.eligible("forward", x.shape, w.shape, cfg, x.dtype):
        with jaxconv.use(forward=name):
            jax.tree.map(_close, jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w), expected)


WINOGRAD_CASES = [((2, 7, 9, 3), ((1, 1), (1, 1))),  # odd and even outputs, "SAME"
                  ((1, 6, 5, 2), ((0, 2), (2, 0))),  # asymmetric padding
                  ((3, 4, 3, 1), ((0, 0), (0, 0))),  # "VALID", one output column
                  ((1, 5, 6, 2), ((3, 0), (1, 4)))]  # padding past the kernel: dX crops dY


@pytest.mark.parametrize("x_shape, padding", WINOGRAD_CASES)
def test_winograd_equals_the_reference_and_its_float32_error_is_small(x_shape, padding):
    """F(2×2, 3×3) forward, dX and dW: equal to the reference in float64 (1e-10); in float32
    within 1e-5 of each result's scale (the core tests' float32 tolerance), measured against the
    float64 reference."""
    cfg = ConvConfig((1, 1), padding, (1, 1), 1)
    w_shape = (3, 3, x_shape[-1], 4)
    x, w, dy = _arrays(x_shape, w_shape, cfg, 7)
    args = {"forward": (x, w, cfg), "dx": (dy, w, x_shape[1:-1], cfg),
            "dw": (x, dy, (3, 3), cfg)}
    for role, (a, b, *static) in args.items():
        expected = K.TABLES[role]["xla"](a, b, *static)
        fn = K.TABLES[role]["winograd"]
        _close(jax.jit(lambda a, b, fn=fn, static=static: fn(a, b, *static))(a, b), expected)
        r32 = fn(a.astype(jnp.float32), b.astype(jnp.float32), *static)
        error = float(jnp.max(jnp.abs(r32 - expected)) / jnp.max(jnp.abs(expected)))
        assert error < 1e-5, (role, error)


def test_manual_gradients_under_winograd_equal_jax_grad():
    """Every role forced to Winograd: the manual op's value and gradients (and a second-order
    derivative through the rule) equal jax.grad of XLA's convolution (float64)."""
    x_shape, w_shape = (2, 7, 6, 3), (3, 3, 3, 5)
    cfg = ConvConfig((1, 1), ((1, 2), (0, 1)), (1, 1), 1)
    x, w, _ = _arrays(x_shape, w_shape, cfg, 11)
    b = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float64)

    def loss(op):
        return lambda x, w, b: jnp.sum(jnp.sin(op(x, w, b, padding=cfg.padding)))

    with jaxconv.use(forward="winograd", dx="winograd", dw="winograd"):
        manual = jax.jit(jax.value_and_grad(loss(jaxconv.conv), argnums=(0, 1, 2)))(x, w, b)
        manual_hvp = jax.jit(jax.grad(lambda w: jnp.sum(
            jax.grad(loss(jaxconv.conv), argnums=1)(x, w, b) ** 2)))(w)
    with jaxconv.policy("xla"):
        reference = jax.jit(jax.value_and_grad(loss(jaxconv.autodiff.conv),
                                               argnums=(0, 1, 2)))(x, w, b)
        reference_hvp = jax.jit(jax.grad(lambda w: jnp.sum(
            jax.grad(loss(jaxconv.autodiff.conv), argnums=1)(x, w, b) ** 2)))(w)
    jax.tree.map(_close, manual, reference)
    _close(manual_hvp, reference_hvp)


# --------------------------------------------------------------------------------------------
# The choice: policy, off switch, backends.
# --------------------------------------------------------------------------------------------

LENET1 = ((128, 28, 28, 1), (5, 5, 1, 6), ConvConfig((1, 1), ((2, 2), (2, 2)), (1, 1), 1))


def _hlo(policy_name=None, **forced):
    x = jnp.ones(LENET1[0], jnp.float32)
    w = jnp.ones(LENET1[1], jnp.float32)

    def f(x, w):
        return jax.grad(lambda x, w: jnp.sum(jaxconv.conv(x, w, padding=2)), argnums=(0, 1))(x, w)

    with jaxconv.policy(policy_name), jaxconv.use(**forced):
        return jax.jit(f).lower(x, w).as_text()


def test_policy_xla_is_the_off_switch():
    with jaxconv.policy("xla"):
        assert {C.choose(r, *LENET1, jnp.float32) for r in C.ROLES} == {"xla"}
    assert "convolution" in _hlo("xla")
    # Forcing every role away from XLA leaves no convolution at all in the program.
    assert "convolution" not in _hlo(forward="shifted", dx="shifted", dw="shifted")


def test_environment_variable_sets_the_policy(monkeypatch):
    monkeypatch.setenv("JAXCONV_CONV_POLICY", "xla")
    assert jaxconv.get_policy() == "xla"
    assert C.choose("forward", *LENET1, jnp.float32) == "xla"
    jaxconv.set_policy("auto")  # an explicit set_policy wins over the environment
    assert jaxconv.get_policy() == "auto"
    monkeypatch.setenv("JAXCONV_CONV_POLICY", "fastest")
    jaxconv.set_policy(None)
    with pytest.raises(ValueError, match="JAXCONV_CONV_POLICY"):
        jaxconv.get_policy()


def test_bad_policy_and_forced_names_are_rejected():
    with pytest.raises(ValueError, match="policy must be one of"):
        jaxconv.set_policy("fastest")
    with pytest.raises(ValueError, match="dx must be one of"), jaxconv.use(dx="im2col"):
        pass
    x, w = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2))
    for role in C.ROLES:
        with pytest.raises(ValueError, match=f"{role}='winograd'.*stride"), \
                jaxconv.use(**{role: "winograd"}):
            jax.grad(lambda x: jnp.sum(jaxconv.conv(x, w, stride=2)))(x)


def test_other_backends_default_to_xla(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert {C.choose(r, *LENET1, jnp.float32) for r in C.ROLES} == {"xla"}


def test_auto_policy_picks_an_eligible_formulation_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("the heuristic is for CPU")
    for role in C.ROLES:
        assert C.choose(role, *LENET1, jnp.float32) in C.eligible(role, *LENET1, jnp.float32)


def test_lenet_layers_get_the_banded_rules_on_cpu():
    """LeNet-5's convolutions (few channels, 28- and 14-wide rows) are where XLA:CPU's own
    convolution is slowest; the heuristic gives their dx and dw the banded products."""
    if jax.default_backend() != "cpu":
        pytest.skip("the heuristic is for CPU")
    valid = ConvConfig((1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    for problem in (LENET1, ((128, 14, 14, 6), (5, 5, 6, 16), valid)):
        assert C.choose("dx", *problem, jnp.float32) == "banded"
        assert C.choose("dw", *problem, jnp.float32) == "banded"
    wide = ((8, 64, 64, 3), (3, 3, 3, 16), ConvConfig((1, 1), ((1, 1),) * 2, (1, 1), 1))
    assert C.choose("dw", *wide, jnp.float32) != "banded"  # 66-wide rows: T is mostly zeros


#: ``auto``'s plan where it keeps XLA's convolution: dW laid out channels-last.
XLA = ("xla", "xla", "xla_cl")


def test_auto_leaves_xla_except_where_the_tune_set_showed_a_win():
    """The heuristic's cases, one layer each and at the edges of its thresholds: plain layers
    stay with XLA's convolution (dW laid out channels-last)."""
    if jax.default_backend() != "cpu":
        pytest.skip("the heuristic is for CPU")
    same = ConvConfig((1, 1), ((1, 1),) * 2, (1, 1), 1)
    strided = ConvConfig((2, 2), ((1, 1),) * 2, (1, 1), 1)
    wino = ("winograd", "xla", "winograd")
    cases = [
        (((32, 56, 56, 64), (3, 3, 64, 64), same), wino),  # ResNet 3x3
        (((128, 14, 14, 32), (3, 3, 32, 64), same), wino),  # the Flax MNIST CNN's second layer
        (((128, 14, 14, 31), (3, 3, 31, 64), same), XLA),  # 31 in: XLA
        (((8, 11, 40, 64), (3, 3, 64, 64), same), XLA),  # 11 rows out: XLA
        (((8, 12, 12, 64), (3, 3, 64, 31), same), XLA),  # 31 out: XLA
        (((8, 12, 12, 32), (3, 3, 32, 32), same), wino),  # the smallest Winograd layer
        (((16, 48, 48, 1), (3, 3, 1, 8), same), ("shifted", "col2im", "xla_cl")),  # one channel
        (((16, 48, 48, 1), (3, 3, 1, 32), same), ("shifted", "col2im", "im2col")),  # 32 outputs
        (((16, 48, 48, 1), (5, 5, 1, 32), ConvConfig((1, 1), ((2, 2),) * 2, (1, 1), 1)),
         ("shifted", "col2im", "xla_cl")),  # 25 taps: XLA's dW
        (((16, 20, 20, 4), (5, 5, 4, 64), ConvConfig((1, 1), ((2, 2),) * 2, (1, 1), 1)),
         XLA),  # few channels in, 64 out: not banded
        (((128, 28, 28, 1), (5, 5, 1, 6), ConvConfig((1, 1), ((2, 2),) * 2, (1, 1), 1)),
         ("shifted", "banded", "banded")),  # LeNet's first layer
        (((16, 4096, 64), (9, 64, 64), ConvConfig((1,), ((4, 4),), (1,), 1)),
         XLA),  # a plain 1-D layer
        (((32, 56, 56, 64), (3, 3, 64, 128), strided), XLA),
        (((100, 19, 25), (3, 25, 25), ConvConfig((2,), ((1, 1),), (1,), 1)),
         ("xla", "col2im", "im2col")),  # strided 1-D
        (((32, 56, 56, 64), (3, 3, 1, 64), ConvConfig((1, 1), ((1, 1),) * 2, (1, 1), 64)),
         ("shifted", "shifted", "shifted_per_image")),  # depthwise: dW image by image
        (((8, 28, 28, 64), (3, 3, 8, 64), ConvConfig((1, 1), ((1, 1),) * 2, (1, 1), 8)),
         ("per_group",) * 3),  # 8 channels per group: one XLA convolution per group
        (((8, 28, 28, 64), (3, 3, 2, 64), ConvConfig((1, 1), ((1, 1),) * 2, (1, 1), 32)),
         ("per_group",) * 3),  # 2 per group: the same
        (((8, 28, 28, 64), (5, 5, 1, 128), ConvConfig((1, 1), ((2, 2),) * 2, (1, 1), 64)),
         ("shifted", "shifted", "shifted_per_image")),  # depthwise with a channel multiplier
        (((8, 28, 28, 256), (1, 1, 128, 256), ConvConfig((1, 1), ((0, 0),) * 2, (1, 1), 2)),
         ("per_group_shifted",) * 3),  # 1×1 grouped: one matrix product per group
        (((8, 28, 28, 128), (1, 1, 4, 128), ConvConfig((2, 2), ((0, 0),) * 2, (1, 1), 32)),
         ("per_group_shifted",) * 3),  # 4 channels per group, strided: the same
        (((8, 28, 28, 64), (1, 1, 1, 64), ConvConfig((1, 1), ((0, 0),) * 2, (1, 1), 64)),
         ("shifted",) * 3),  # 1×1 depthwise: elementwise products
        (((16, 56, 56, 64), (1, 1, 64, 256), ConvConfig((1, 1), ((0, 0),) * 2, (1, 1), 1)),
         ("shifted",) * 3),  # 1×1: the perceptron's products, not XLA's convolution
        (((16, 500, 64), (1, 64, 128), ConvConfig((2,), ((0, 0),), (1,), 1)),
         ("shifted",) * 3),  # 1-tap 1-D, strided
        (((2, 8, 28, 28, 1), (1, 1, 1, 1, 8), ConvConfig((1,) * 3, ((0, 0),) * 3, (1,) * 3, 1)),
         ("shifted",) * 3),  # 1×1×1 from one input channel
        (((2, 3, 10, 16), (4, 2, 8, 4), ConvConfig((3, 2), ((2, 2), (1, 1)), (1, 1), 2)),
         ("per_group", "shifted", "per_group")),  # XLA:CPU's aborting dX class: shifted dX
    ]
    for problem, expected in cases:
        assert C.plan(*problem, jnp.float32) == expected, problem


def test_depthwise_dw_runs_image_by_image_in_2d_and_3d():
    """Depthwise, any stride or channel count: the forward and dX shifted, dW shifted image by
    image in 2-D and 3-D, shifted in 1-D; grouped but not depthwise: per_group."""
    if jax.default_backend() != "cpu":
        pytest.skip("the heuristic is for CPU")

    def grouped(c, stride, nd=2, c_in_g=1):
        cfg = ConvConfig((stride,) * nd, ((1, 1),) * nd, (1,) * nd, c // c_in_g)
        return (2, *(16,) * nd, c), (*(3,) * nd, c_in_g, c), cfg

    by_image = ("shifted", "shifted", "shifted_per_image")
    for c, stride, nd in [(16, 2, 2), (33, 2, 2), (16, 1, 2), (8, 1, 3), (8, 2, 3)]:
        assert C.plan(*grouped(c, stride, nd), jnp.float32) == by_image, (c, stride, nd)
    assert C.plan(*grouped(16, 1, 1), jnp.float32) == ("shifted",) * 3
    assert C.plan(*grouped(32, 2, c_in_g=2), jnp.float32) == ("per_group",) * 3


def test_strided_1d_gets_col2im_for_few_channels_and_im2col_for_a_small_buffer():
    """The strided 1-D rules at their thresholds: col2im dx up to STRIDED_1D_COL2IM_MAX_C_IN
    input channels, im2col dw up to STRIDED_1D_IM2COL_MAX_BYTES of patches, XLA beyond."""
    if jax.default_backend() != "cpu":
        pytest.skip("the heuristic is for CPU")
    s2 = ConvConfig((2,), ((0, 0),), (1,), 1)
    few = C.STRIDED_1D_COL2IM_MAX_C_IN
    # A 2-tap kernel with stride 2 on 2·rows inputs: the patch buffer is N·rows·2·C_in floats.
    rows = C.STRIDED_1D_IM2COL_MAX_BYTES // (8 * few)
    small = ((1, 2 * rows, few), (2, few, 8), s2)
    more_rows = ((1, 2 * rows + 2, few), (2, few, 8), s2)
    assert (C._cols_bytes(*small, jnp.float32) <= C.STRIDED_1D_IM2COL_MAX_BYTES
            < C._cols_bytes(*more_rows, jnp.float32))
    assert C.plan(*small, jnp.float32) == ("xla", "col2im", "im2col")
    assert C.plan(*more_rows, jnp.float32) == ("xla", "col2im", "xla_cl")
    wide = ((1, 32, few + 1), (3, few + 1, 8), s2)
    assert C.plan(*wide, jnp.float32) == ("xla", "xla", "im2col")
    # The tune set's shapes behind the thresholds.
    ecg_like = ((16, 1024, 64), (9, 64, 64), ConvConfig((2,), ((4, 4),), (1,), 1))
    assert C.plan(*ecg_like, jnp.float32) == XLA
    signal = ((32, 4000, 1), (11, 1, 16), ConvConfig((2,), ((5, 5),), (1,), 1))
    assert C.plan(*signal, jnp.float32) == ("xla", "col2im", "xla_cl")
    unstrided = ((1, 32, 1), (3, 1, 8), ConvConfig((1,), ((0, 0),), (1,), 1))
    assert C.plan(*unstrided, jnp.float32) == XLA


def test_im2col_is_ineligible_above_the_memory_cap():
    cfg = ConvConfig((1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    big = ((64, 128, 128, 64), (3, 3, 64, 64), cfg, jnp.float32)  # 2.4 GB of patches
    assert "im2col" not in C.eligible("forward", *big)
    assert "col2im" not in C.eligible("dx", *big)
    assert "im2col" not in C.eligible("dw", *big)
    for role in C.ROLES:  # and its banded matrix would be 3·130·64 × 128·64 floats (818 MB)
        assert "banded" not in C.eligible(role, *big)
    for role in C.ROLES:
        assert C.choose(role, *big) in C.eligible(role, *big)


# --------------------------------------------------------------------------------------------
# The choice is part of the program.
# --------------------------------------------------------------------------------------------


def _grad_fn():
    def f(x, w):
        return jax.grad(lambda x, w: jnp.sum(jaxconv.conv(x, w, padding=1) ** 2),
                        argnums=(0, 1))(x, w)
    return f


def test_jit_retraces_under_another_choice():
    """A function jitted under use(forward="xla") is not reused under use(forward="shifted"),
    nor under another policy: the program differs, and each block gets its own trace."""
    traces = []
    x = jnp.ones((2, 7, 7, 3), jnp.float32)
    w = jnp.ones((3, 3, 3, 4), jnp.float32)

    @jax.jit
    def f(x, w):
        traces.append(C.key())
        return _grad_fn()(x, w)

    with jaxconv.use(forward="xla", dx="xla", dw="xla"):
        f(x, w)
        hlo_xla = f.lower(x, w).as_text()
    with jaxconv.use(forward="shifted", dx="shifted", dw="shifted"):
        f(x, w)
        hlo_shifted = f.lower(x, w).as_text()
    assert "convolution" in hlo_xla and "convolution" not in hlo_shifted
    with jaxconv.use(forward="xla", dx="xla", dw="xla"):
        f(x, w)  # the first program again: a cache hit
    with jaxconv.policy("xla"):
        f(x, w)
    jaxconv.set_policy("xla")
    f(x, w)
    assert len(traces) == 4 and len(set(traces)) == 3, traces  # set_policy: same Key, new trace


def test_key_is_a_hashable_snapshot_of_policy_and_forced_names():
    assert C.key() == C.Key("auto", ())
    with jaxconv.policy("measure"), jaxconv.use(dw="im2col"):
        with jaxconv.use(dx="col2im"):
            inner = C.key()
        assert C.key() == C.Key("measure", (("dw", "im2col"),))
    assert inner == C.Key("measure", (("dw", "im2col"), ("dx", "col2im")))
    assert hash(inner) == hash(C.Key("measure", (("dw", "im2col"), ("dx", "col2im"))))
    assert C.key() == C.Key("auto", ())


def test_blocks_are_per_thread_and_set_policy_is_global():
    import threading

    seen = {}

    def worker():
        seen["policy"] = jaxconv.get_policy()
        seen["forced"] = C.key().forced

    with jaxconv.policy("xla"), jaxconv.use(dw="shifted"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == {"policy": "auto", "forced": ()}  # the block stayed in its own thread
    jaxconv.set_policy("xla")
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["policy"] == "xla"


def test_the_rule_computes_what_the_forward_chose():
    """The manual op's backward runs the dx and dw chosen when its forward was traced, even when
    it is traced later, outside the block that forced them."""
    x = jnp.ones((2, 7, 7, 3), jnp.float32)
    w = jnp.ones((3, 3, 3, 4), jnp.float32)
    with jaxconv.use(forward="shifted", dx="shifted", dw="shifted"):
        y, vjp = jax.vjp(lambda x, w: jaxconv.conv(x, w, padding=1), x, w)
    with jaxconv.policy("xla"):
        text = jax.jit(vjp).lower(jnp.ones_like(y)).as_text()
    assert "convolution" not in text


def test_auto_is_a_pure_function_of_the_problem(monkeypatch):
    """Under "auto" no measurement and no cache is consulted: a cached choice (written as a
    measurement would) changes nothing."""
    calls = _count_measurements(monkeypatch)
    before = C.plan(*SMALL)
    _write_cache({"forward": "im2col", "dx": "col2im", "dw": "im2col"})
    C.clear_memory()
    assert C.plan(*SMALL) == before
    assert calls == []


def test_policy_api_is_published_flat():
    assert jaxconv.use is C.use and jaxconv.policy is C.policy
    assert jaxconv.set_policy is C.set_policy and jaxconv.get_policy is C.get_policy
    assert {"use", "policy", "set_policy", "get_policy"} <= set(jaxconv.__all__)


# --------------------------------------------------------------------------------------------
# The measurement cache: missing, corrupt, stale, and used when valid.
# --------------------------------------------------------------------------------------------

SMALL = ((2, 6, 3), (3, 3, 4), ConvConfig((1,), ((1, 1),), (1,), 1), jnp.float32)


def _count_measurements(monkeypatch):
    calls = []
    real = C.measure

    def counting(*args, **kwargs):
        calls.append(tuple(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(C, "measure", counting)
    return calls


def test_measure_times_the_composed_layer_and_keeps_xla_without_evidence(monkeypatch):
    """measure() times forward+backward programs (one per candidate triple), starting from XLA
    for all three roles (dW channels-last); with every candidate equally fast, XLA stays."""
    timed = []

    def fake_time(runners, repeats):
        timed.append(sorted(runners))
        return {names: 1.0 for names in runners}

    monkeypatch.setattr(C, "_time", fake_time)
    result = C.measure(*SMALL)
    assert result["choice"] == {"forward": "xla", "dx": "xla", "dw": "xla_cl"}
    assert [XLA in names for names in timed] == [True] * 3
    assert {n for names in timed for n in names} == {
        XLA, *(("xla", "xla", n) for n in C.eligible("dw", *SMALL)),
        *(("xla", n, "xla_cl") for n in C.eligible("dx", *SMALL)),
        *((n, "xla", "xla_cl") for n in C.eligible("forward", *SMALL))}


def test_measure_takes_a_candidate_only_when_clearly_faster(monkeypatch):
    def fake_time(runners, repeats):
        return {names: (0.5 if names[2] == "im2col" else 0.97 if names[1] == "col2im" else 1.0)
                for names in runners}

    monkeypatch.setattr(C, "_time", fake_time)
    # dw: im2col twice as fast, taken; dx: col2im only 3 % faster, not taken.
    assert C.measure(*SMALL)["choice"] == {"forward": "xla", "dx": "xla", "dw": "im2col"}


def test_measure_with_missing_cache_measures_once_and_writes_it(monkeypatch):
    calls = _count_measurements(monkeypatch)
    assert not C.cache_path().exists()
    with jaxconv.policy("measure"):
        first = C.plan(*SMALL)
        again = C.plan(*SMALL)
    assert first == again and calls == [SMALL[0]]
    assert all(name in C.NAMES[role] for role, name in zip(C.ROLES, first, strict=True))
    data = json.loads(C.cache_path().read_text())
    assert data["version"] == C.CACHE_VERSION
    assert list(data["choices"].values()) == [dict(zip(C.ROLES, first, strict=True))]
    assert [p.name for p in C.cache_path().parent.iterdir()] == [C.cache_path().name]  # no temp
    # A new process (simulated: memory cleared) reads the choice back without measuring.
    C.clear_memory()
    with jaxconv.policy("measure"):
        assert C.plan(*SMALL) == first
    assert calls == [SMALL[0]]


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]",
                                     b'{"version": 2, "choices": 7}'])
def test_corrupt_cache_is_ignored_and_rewritten(monkeypatch, content):
    C.cache_path().parent.mkdir(parents=True)
    C.cache_path().write_bytes(content)
    calls = _count_measurements(monkeypatch)
    assert C.load_cache() == {}
    with jaxconv.policy("measure"):
        assert C.choose("forward", *SMALL) in K.FORWARD
    assert calls == [SMALL[0]]
    assert json.loads(C.cache_path().read_text())["version"] == C.CACHE_VERSION


def _write_cache(entry, version=C.CACHE_VERSION):
    key = C._cache_key(C.problem(*SMALL), jax.default_backend())
    C.cache_path().parent.mkdir(parents=True, exist_ok=True)
    C.cache_path().write_text(json.dumps({"version": version, "choices": {key: entry}}))


def test_valid_cache_entry_is_used_by_measure(monkeypatch):
    calls = _count_measurements(monkeypatch)
    for forward in ("shifted", "im2col"):
        _write_cache({"forward": forward, "dx": "col2im", "dw": "banded"})
        C.clear_memory()
        with jaxconv.policy("measure"):
            assert C.plan(*SMALL) == (forward, "col2im", "banded")
            with jaxconv.use(dx="shifted"):  # forcing wins over the measurement
                assert C.plan(*SMALL) == (forward, "shifted", "banded")
        with jaxconv.policy("xla"):  # the off switch ignores the cache
            assert C.plan(*SMALL) == ("xla", "xla", "xla")
    assert calls == []


@pytest.mark.parametrize("version, entry", [
    (C.CACHE_VERSION + 1, {"forward": "shifted", "dx": "xla", "dw": "xla"}),
    (C.CACHE_VERSION, {"forward": "fft", "dx": "xla", "dw": "xla"}),
    (C.CACHE_VERSION, {"forward": "col2im", "dx": "xla", "dw": "xla"}),
    (C.CACHE_VERSION, {"forward": "xla", "dx": "xla"}),
    (C.CACHE_VERSION, "shifted"),
])
def test_stale_cache_entries_are_ignored(monkeypatch, version, entry):
    """Another format version, a name that is not (or no longer) a formulation of its role, a
    role missing, or the old one-name-per-role format."""
    _write_cache(entry, version=version)
    calls = _count_measurements(monkeypatch)
    with jaxconv.policy("measure"):
        assert C.choose("forward", *SMALL) in K.FORWARD
    assert calls == [SMALL[0]]


def test_unwritable_cache_is_not_an_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(blocker / "sub"))  # a folder under a file
    with jaxconv.policy("measure"):
        assert C.choose("dx", *SMALL) in K.DX


def test_measure_policy_works_while_tracing_under_jit():
    x = jnp.ones(SMALL[0], jnp.float32)
    w = jnp.ones(SMALL[1], jnp.float32)
    with jaxconv.policy("measure"):
        g = jax.jit(jax.grad(lambda x, w: jnp.sum(jaxconv.conv(x, w, padding=1) ** 2),
                             argnums=(0, 1)))(x, w)
    with jaxconv.policy("xla"):
        expected = jax.jit(jax.grad(lambda x, w: jnp.sum(jaxconv.autodiff.conv(x, w, padding=1)
                                                         ** 2), argnums=(0, 1)))(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), g, expected)
    assert len(C.load_cache()) == 1
    assert math.isfinite(float(jnp.sum(g[0])))
