"""Shared hypothesis strategies and helpers for comparing each manual op with its autodiff twin.

The central helper is :func:`vjp_both`: one jitted program that runs ``jax.vjp`` of the manual op
(``jaxconv.<name>``, the lecture's rules) and of its twin (``jaxconv.autodiff.<name>``, JAX's own
derivative) on the same inputs and pulls back the same *random* cotangent ``dy``. A random ``dy``
(rather than ``sum()``, i.e. ``dy = 1``) gives every output position its own weight, so errors in
different positions cannot cancel.

Compilation, not arithmetic, dominates the cost of these tests on CPU, so the static
configuration is part of the jit cache key and the strategies keep the drawn arrays tiny.
Random values come from ``numpy.random.default_rng(seed)`` with a hypothesis-drawn seed: explicit,
reproducible, and free of the per-shape compilation that ``jax.random`` would add.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import references
from hypothesis import strategies as st
from jax.extend import core as jex_core

import jaxconv
import jaxconv.autodiff

# The tolerances: the largest error relative to the largest magnitude of the reference
# gradient ("relative to the gradient's scale"), so that a tiny entry next to large ones does not
# demand more digits than the dtype holds.
RTOL = {np.dtype("float64"): 1e-10, np.dtype("float32"): 1e-5}

FLOATS = (np.float32, np.float64)

# Ops whose forward has its own independent reference in their test file (so the comparison
# with references.FORWARD is not repeated here).
FORWARD_TESTED_ELSEWHERE = {
    "conv_transpose": "tests/test_conv_transpose.py: PyTorch's definition as numpy loops, and lax",
}


# --------------------------------------------------------------------------------------------
# Comparisons.
# --------------------------------------------------------------------------------------------


def scaled_error(actual: Any, expected: Any, floor: float = 0.0) -> float:
    """max |actual − expected| / max(max |expected|, floor), both upcast to float64; 0 for two
    zero arrays. ``floor`` sets a lower bound on the scale (see
    :func:`check_manual_equals_autodiff`)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = max(float(np.max(np.abs(expected), initial=0.0)), floor)
    if scale == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / scale


def assert_scaled_close(
    actual: Any, expected: Any, rtol: float, what: str = "", floor: float = 0.0
) -> None:
    """Assert ``max|actual − expected| <= rtol · max(max|expected|, floor)`` (equal shapes)."""
    err = scaled_error(actual, expected, floor)
    assert err <= rtol, f"{what}: error {err:.3g} relative to the gradient's scale > {rtol:g}"


def assert_trees_close(actual: Any, expected: Any, rtol: float, what: str = "") -> None:
    """:func:`assert_scaled_close` leaf by leaf, with the leaf's path in the message."""
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(actual)
    flat_e, tree_e = jax.tree_util.tree_flatten_with_path(expected)
    assert tree_a == tree_e, f"{what}: structures differ: {tree_a} vs {tree_e}"
    for (path, a), (_, e) in zip(flat_a, flat_e, strict=True):
        assert np.shape(a) == np.shape(e), f"{what}{jax.tree_util.keystr(path)}: shapes differ"
        assert_scaled_close(a, e, rtol, f"{what}{jax.tree_util.keystr(path)}")


# --------------------------------------------------------------------------------------------
# Random inputs from an explicit seed.
# --------------------------------------------------------------------------------------------


def normal(seed: int, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """Standard normal values of ``shape`` from ``np.random.default_rng(seed)``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def distinct(seed: int, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """A random permutation of ``k/8 − size/16`` (k = 0 … size−1): all values distinct, spaced by
    1/8 and exactly representable in float16 (size <= 2048) and bfloat16 (size <= 256), so that
    max pooling has no ties in any dtype and finite differences never cross one."""
    size = int(np.prod(shape))
    values = np.random.default_rng(seed).permutation(size) / 8.0 - size / 16.0
    return values.reshape(shape).astype(dtype)


seeds = st.integers(0, 2**32 - 1)
float_dtypes = st.sampled_from(FLOATS)


# --------------------------------------------------------------------------------------------
# The one comparison program: manual and autodiff vjps with a shared random dy.
# --------------------------------------------------------------------------------------------


def _op(mode: str, name: str):
    return getattr(jaxconv if mode == "manual" else jaxconv.autodiff, name)


def conv_policy(policy: str | None):
    """Trace under this convolution policy (``"xla"``: XLA's convolution for the forward and both
    rules; ``"auto"``: the per-shape choice among the formulations of
    :mod:`jaxconv.ops._formulations`); ``None``: leave the policy alone."""
    if policy is None:
        return contextlib.nullcontext()
    return jaxconv.policy(policy)


# Compilation dominates these tests (the arrays are tiny). These two XLA:CPU options change how
# the code is generated and how fast it runs, not what it computes; together they cut the
# compile time of these programs about fourfold (measured on this suite's pooling programs).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


@functools.partial(
    jax.jit, static_argnames=("name", "static", "policy"), compiler_options=_FAST_COMPILE
)
def vjp_both(name: str, static: tuple, args: tuple, const: tuple, dy: Any, policy=None):
    """``(y, grads)`` of the manual op and of its autodiff twin, pulled back from one ``dy``.

    Args:
      name: the op's name in ``jaxconv`` and ``jaxconv.autodiff``.
      static: the op's keyword arguments as a hashable tuple of ``(key, value)`` pairs.
      args: the differentiated positional arrays (first positional arguments).
      const: positional arrays after them that are not differentiated (e.g. integer labels).
      dy: the upstream cotangent, shaped like the op's output.
      policy: the convolution policy to trace under (see :func:`conv_policy`); part of the jit
        cache key, so programs traced under different policies are never mixed up.

    Returns:
      ``{"manual": (y, grads), "autodiff": (y, grads)}``, grads one per entry of ``args``.
    """
    kwargs = dict(static)
    out = {}
    with conv_policy(policy):
        for mode in ("manual", "autodiff"):
            op = _op(mode, name)
            y, pullback = jax.vjp(lambda *a, op=op: op(*a, *const, **kwargs), *args)
            out[mode] = (y, pullback(dy))
    return out


@functools.partial(jax.jit, static_argnames=("name", "static"), compiler_options=_FAST_COMPILE)
def vjp_manual_safe(name: str, static: tuple, args: tuple, const: tuple, dy: Any):
    """``(y, grads)`` of the manual op with its dX rule computed by shifted matrix products
    (never XLA's convolution with ``lhs_dilation``): see :func:`xla_dx_may_abort`."""
    import jaxconv

    with jaxconv.use(dx="shifted"):
        y, pullback = jax.vjp(lambda *a: _op("manual", name)(*a, *const, **dict(static)), *args)
        return y, pullback(dy)


def xla_dx_may_abort(name: str, static: tuple, args: tuple) -> bool:
    """Whether XLA:CPU (jaxlib 0.10.2) may abort the process compiling this op's dX as one
    convolution: JAX's own gradient of a strided convolution, and jaxconv's ``xla`` dX rule (of
    ``conv``, and of ``avg_pool``, whose rule is the depthwise convolution's dX), both dilate dy
    by the stride (``lhs_dilation``).

    The class found by ``experiments/abort_sweep.py`` (results/abort_sweep.md): a convolution
    with 2 or more spatial dims in which one dim a has kernel = lhs_dilation >= 2 and no padding
    of the dilated dy (for a forward: stride s_a = K_a >= 2 and low pad K_a − 1) while another
    dim b has a kernel larger than dy (K_b > O_b). Taken broadly here (dilations ignored,
    effective kernels compared, the high pad not required): a configuration in it keeps its
    place in the property tests, with a reference that cannot abort.
    """
    if name not in ("conv", "avg_pool"):
        return False
    kw = dict(static)
    x_shape = np.shape(args[0])
    nd = len(x_shape) - 2
    first = kw.get("layout", "channels_last") == "channels_first"
    in_size = x_shape[2:] if first else x_shape[1:-1]
    if name == "conv":
        w_shape = np.shape(args[1])
        kernel = w_shape[2:] if first else w_shape[:nd]
        dilation = references.per_dim(kw.get("dilation", 1), nd)
        stride = references.per_dim(kw.get("stride", 1), nd)
    else:
        kernel = references.per_dim(kw["window"], nd)
        dilation = (1,) * nd
        stride = kernel if kw.get("stride") is None else references.per_dim(kw["stride"], nd)
    if nd < 2:
        return False
    window = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    pads = references.resolve_padding(kw.get("padding", "VALID"), in_size, window, stride)
    out = [(n + lo + hi - k) // s + 1
           for n, (lo, hi), k, s in zip(in_size, pads, window, stride, strict=True)]
    folded = [a for a in range(nd)
              if stride[a] >= 2 and kernel[a] == stride[a] and pads[a][0] == window[a] - 1]
    return any(window[b] > out[b] for a in folded for b in range(nd) if b != a)


def output_shape(name: str, static: tuple, args: tuple, const: tuple = ()) -> tuple[int, ...]:
    """The op's output shape, without running it."""
    kwargs = dict(static)
    return jax.eval_shape(lambda *a: _op("manual", name)(*a, *const, **kwargs), *args).shape


def check_manual_equals_autodiff(
    name: str, static: tuple, args: tuple, const: tuple = (), *, seed: int, rtol=None,
    policy=None, max_slope=None,
) -> None:
    """The pulled-back gradients of the two modes agree to ``rtol`` (default: the issue's
    tolerance for the inputs' dtype), each gradient keeps its input's dtype and shape, and the
    forward output equals the independent float64 reference of :data:`references.FORWARD`
    (numpy loops, lax's own padding resolution): the two modes share their forward code, so
    comparing their outputs with each other could not fail.

    The error is measured relative to the gradient's scale, max |grad|. For an op whose
    gradient is bounded entrywise, ``max_slope`` (sup |∂y/∂x| per entry: sup |f′| for an
    activation, 1/M for the mean cross-entropy) lets the scale be at least
    ``max_slope · max|dy|``, the largest gradient this ``dy`` can produce. Where sigmoid, tanh
    or softmax saturate, the derivative computed from the rounded output (1 − t², s(1 − s),
    p − onehot) has lost its digits in *both* modes (JAX's own tanh rule, (1 − t) + (1 − t)·t,
    cancels as t → −1), so only an error measured against the gradient that can flow, not
    against a vanishing one, is meaningful.
    """
    dtype = np.dtype(args[0].dtype)
    rtol = RTOL[dtype] if rtol is None else rtol
    dy = normal(seed + 1, output_shape(name, static, args, const), dtype)
    if xla_dx_may_abort(name, static, args):
        # JAX's own gradient (and the XLA formulation of the dX rule) would abort the process:
        # the manual op with dX by shifted products, against the numpy definition instead.
        y_m, g_m = jax.device_get(vjp_manual_safe(name, static, args, const, dy))
        g_a = references.VJP[name](*args, *const, dy=np.asarray(dy, np.float64), **dict(static))
    else:
        res = jax.device_get(vjp_both(name, static, args, const, dy, policy))
        (y_m, g_m), (_, g_a) = res["manual"], res["autodiff"]
    # log-softmax cancels logsumexp(z) against z: in a dtype it is exact only to the dtype's
    # rounding of the logits' magnitude, so a loss near zero is compared on that scale
    forward_floor = (float(np.max(np.abs(args[0]), initial=0.0))
                     if name.startswith("softmax_cross_entropy") else 0.0)
    if name not in FORWARD_TESTED_ELSEWHERE:
        assert_scaled_close(y_m, references.FORWARD[name](*args, *const, **dict(static)), rtol,
                            f"{name} forward against the reference", forward_floor)
    floor = 0.0 if max_slope is None else max_slope * float(np.max(np.abs(dy), initial=0.0))
    for i, (gm, ga, a) in enumerate(zip(g_m, g_a, args, strict=True)):
        assert gm.dtype == a.dtype, f"{name}: gradient {i} has dtype {gm.dtype}, input {a.dtype}"
        assert gm.shape == a.shape, f"{name}: gradient {i} has shape {gm.shape}, input {a.shape}"
        assert_scaled_close(gm, ga, rtol, f"{name} gradient of argument {i}", floor)


# --------------------------------------------------------------------------------------------
# Convolution configurations.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvCase:
    """One drawn convolution call (shapes in the case's own ``layout``)."""

    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    bias: bool
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    layout: str

    @property
    def static(self) -> tuple:
        return (
            ("stride", self.stride),
            ("padding", self.padding),
            ("dilation", self.dilation),
            ("groups", self.groups),
            ("layout", self.layout),
        )

    def arrays(self, seed: int, dtype: Any) -> tuple[np.ndarray, ...]:
        x = normal(seed, self.x_shape, dtype)
        w = normal(seed + 2, self.w_shape, dtype)
        if not self.bias:
            return x, w
        return x, w, normal(seed + 3, (self.w_shape[0 if self.layout == "channels_first" else -1],),
                            dtype)


_ND = st.integers(1, 3)
_KERNEL = st.integers(1, 5)
_STRIDE = st.integers(1, 3)
_DILATION = st.integers(1, 3)
_LAYOUTS = st.sampled_from(("channels_last", "channels_last", "channels_first"))


def _per_dim_or_int(draw, values: tuple[int, ...]):
    """Pass a per-dimension tuple, or the int when every dimension agrees (both forms accepted)."""
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return values


@st.composite
def conv_cases(
    draw,
    nd=_ND,
    kernel=_KERNEL,
    stride=_STRIDE,
    dilation=_DILATION,
    layouts=_LAYOUTS,
) -> ConvCase:
    """Convolutions over the issue's whole range: 1 to 3 spatial dims, batch 1 to 4, channels 1 to
    6, kernel 1 to 5, stride 1 to 3, dilation 1 to 3, padding VALID / SAME / FULL / int /
    asymmetric (low, high) pairs, groups 1, grouped and depthwise, bias or none, both layouts.

    Spatial sizes are drawn just above the smallest that gives a non-empty output (up to two
    strides more), so the arrays stay tiny and the sizes are often not divisible by the stride.
    """
    nd = draw(nd)
    batch = draw(st.integers(1, 4))
    grouping = draw(st.sampled_from(("single", "grouped", "depthwise")))
    if grouping == "single":
        groups, c_in, c_out = 1, draw(st.integers(1, 6)), draw(st.integers(1, 6))
    elif grouping == "grouped":
        groups = draw(st.integers(2, 3))
        c_in = groups * draw(st.integers(1, 6 // groups))
        c_out = groups * draw(st.integers(1, 6 // groups))
    else:
        c_in = groups = draw(st.integers(1, 6))
        c_out = c_in * draw(st.integers(1, 6 // c_in))
    kernels = tuple(draw(kernel) for _ in range(nd))
    strides = tuple(draw(stride) for _ in range(nd))
    dilations = tuple(draw(dilation) for _ in range(nd))
    windows = tuple(d * (k - 1) + 1 for k, d in zip(kernels, dilations, strict=True))

    mode = draw(st.sampled_from(("VALID", "SAME", "FULL", "int", "pairs")))
    if mode == "int":
        p = draw(st.integers(0, 3))
        padding, pads = p, [(p, p)] * nd
    elif mode == "pairs":
        pads = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd)]
        padding = tuple(pads)
    else:
        padding = mode if draw(st.booleans()) else mode.lower()
        pads = [(0, 0)] * nd  # SAME and FULL never give an empty output; VALID needs the window
    sizes = []
    for win, s, (lo, hi) in zip(windows, strides, pads, strict=True):
        smallest = 1 if mode in ("SAME", "FULL") else max(1, win - lo - hi)
        sizes.append(smallest + draw(st.integers(0, 2 * s)))

    layout = draw(layouts)
    if layout == "channels_last":
        x_shape, w_shape = (batch, *sizes, c_in), (*kernels, c_in // groups, c_out)
    else:
        x_shape, w_shape = (batch, c_in, *sizes), (c_out, c_in // groups, *kernels)
    return ConvCase(
        x_shape=x_shape,
        w_shape=w_shape,
        bias=draw(st.booleans()),
        stride=_per_dim_or_int(draw, strides),
        padding=padding,
        dilation=_per_dim_or_int(draw, dilations),
        groups=groups,
        layout=layout,
    )


# --------------------------------------------------------------------------------------------
# Pooling configurations.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolCase:
    x_shape: tuple[int, ...]
    window: Any
    stride: Any
    padding: Any

    @property
    def static(self) -> tuple:
        return (("window", self.window), ("stride", self.stride), ("padding", self.padding))


@st.composite
def pool_cases(draw, nd=_ND) -> PoolCase:
    """Pooling: 1 to 3 spatial dims, batch 1 to 4, channels 1 to 6, windows 1 to 3 (1 to 2 in
    3-D: the max-pool rule unrolls over the window offsets and compiling grows with them),
    strides 1 to 3 or None (= window), padding VALID / SAME / int / asymmetric pairs (each pad
    below the window; the pools refuse "FULL")."""
    nd = draw(nd)
    top = 2 if nd == 3 else 3
    windows = tuple(draw(st.integers(1, top)) for _ in range(nd))
    strides = None if draw(st.integers(0, 4)) == 0 else tuple(
        draw(st.integers(1, 3)) for _ in range(nd)
    )
    mode = draw(st.sampled_from(("VALID", "SAME", "int", "pairs")))
    if mode == "int":
        p = draw(st.integers(0, min(windows) - 1))
        padding, pads = p, [(p, p)] * nd
    elif mode == "pairs":
        pads = [(draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in windows]
        padding = tuple(pads)
    else:
        padding, pads = mode, [(0, 0)] * nd
    sizes = []
    for k, (lo, hi), s in zip(windows, pads, strides or windows, strict=True):
        smallest = 1 if mode == "SAME" else max(1, k - lo - hi)
        sizes.append(smallest + draw(st.integers(0, 2 * s)))
    x_shape = (draw(st.integers(1, 4)), *sizes, draw(st.integers(1, 6)))
    stride = None if strides is None else _per_dim_or_int(draw, strides)
    return PoolCase(x_shape=x_shape, window=_per_dim_or_int(draw, windows), stride=stride,
                    padding=padding)


# --------------------------------------------------------------------------------------------
# Small shapes for the elementwise ops, dense and the losses.
# --------------------------------------------------------------------------------------------


# Shapes for the elementwise ops, dense and the losses: rank 0 to 3, a size-1 axis, a few
# sizes. What these ops compute does not depend on the shape beyond that, while every new shape
# costs a compilation, so the shapes come from a short list (and the values are drawn afresh).
SHAPES = ((), (1,), (5,), (2, 3), (3, 1, 4))
LEAD_SHAPES = ((), (1,), (4,), (2, 3))
SIZES = (1, 2, 5)
shapes = st.sampled_from(SHAPES)
lead_shapes = st.sampled_from(LEAD_SHAPES)
sizes = st.sampled_from(SIZES)


# --------------------------------------------------------------------------------------------
# Low precision: compare with float64 on the same (rounded) inputs.
# --------------------------------------------------------------------------------------------

# bfloat16 keeps 8 significant bits (eps 2⁻⁸ ≈ 3.9e-3), float16 11 (eps 2⁻¹¹ ≈ 4.9e-4 as unit
# roundoff). The forward and gradient of these tiny ops round a handful of times, each a relative
# error of at most eps of the running value; measured relative to the output's or gradient's
# scale, a few eps covers that with margin, while a wrong rule is off by O(1).
LOW_RTOL = {np.dtype(jnp.bfloat16): 3e-2, np.dtype(jnp.float16): 4e-3,
            np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}
ALL_FLOATS = (jnp.bfloat16, jnp.float16, np.float32, np.float64)


def check_dtype_against_float64(
    name: str, static: tuple, args: tuple, const: tuple = (), *, seed: int
) -> None:
    """Run the manual op in the inputs' dtype and compare its output and gradients with the
    autodiff twin run in float64 on the same values (upcast exactly), pulled back from the same
    ``dy``. The output and every gradient must keep the inputs' dtype."""
    dtype = np.dtype(args[0].dtype)
    rtol = LOW_RTOL[dtype]
    dy = jnp.asarray(normal(seed + 1, output_shape(name, static, args, const)), dtype)
    res = vjp_both(name, static, args, const, dy)
    y, grads = jax.device_get(res["manual"])
    up = tuple(jnp.asarray(a, np.float64) for a in args)
    ref_y, ref_grads = jax.device_get(
        vjp_both(name, static, up, const, jnp.asarray(dy, np.float64))["autodiff"]
    )
    assert y.dtype == dtype, f"{name}: output dtype {y.dtype} for {dtype} inputs"
    assert_scaled_close(y, ref_y, rtol, f"{name} forward in {dtype}")
    for i, (g, ref) in enumerate(zip(grads, ref_grads, strict=True)):
        assert g.dtype == dtype, f"{name}: gradient {i} has dtype {g.dtype} for {dtype} inputs"
        assert_scaled_close(g, ref, rtol, f"{name} gradient of argument {i} in {dtype}")


# --------------------------------------------------------------------------------------------
# Jaxpr inspection.
# --------------------------------------------------------------------------------------------


def equations(closed_jaxpr) -> list:
    """Every equation of a (closed) jaxpr, those of sub-jaxprs (jit, custom_vjp, scan bodies)
    included, in order."""
    out = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            out.append(eqn)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, jex_core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jex_core.Jaxpr):
                        walk(sub)

    walk(closed_jaxpr.jaxpr)
    return out


def primitive_names(closed_jaxpr) -> list[str]:
    """The names of the primitives of :func:`equations`."""
    return [eqn.primitive.name for eqn in equations(closed_jaxpr)]


# --------------------------------------------------------------------------------------------
# Which differentiation runs inside the hand-written rules.
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def watch_rules():
    """Record, for code traced inside the block, every hand-written rule (a ``custom_vjp`` bwd,
    run when JAX transposes the op's ``custom_lin``) and every entry into JAX's own
    differentiation (a JVP or linearize trace, a backward pass) *while a rule runs*.

    Yields a dict: ``rules`` (how many rules ran) and ``autodiff`` (the names of the autodiff
    entry points seen inside them). A rule written as ``jax.vjp`` / ``jax.grad`` /
    ``jax.linear_transpose`` of its forward shows up there; the lecture's rules do not.
    Trace with ``jax.make_jaxpr`` (``jit`` may reuse a cached trace and run nothing).
    """
    from jax._src.interpreters import ad

    log: dict = {"rules": 0, "autodiff": []}
    depth = [0]
    transpose = ad.primitive_transposes[ad.custom_lin_p]

    def rule(*args, **kwargs):
        log["rules"] += 1
        depth[0] += 1
        try:
            return transpose(*args, **kwargs)
        finally:
            depth[0] -= 1

    def spy(name, fn):
        @functools.wraps(fn)
        def entered(*args, **kwargs):
            if depth[0]:
                log["autodiff"].append(name)
            return fn(*args, **kwargs)

        return entered

    spots = [(ad, "backward_pass"), (ad, "backward_pass3"), (ad.JVPTrace, "__init__"),
             (ad.LinearizeTrace, "__init__")]
    saved = [getattr(owner, attr) for owner, attr in spots]
    ad.primitive_transposes[ad.custom_lin_p] = rule
    for (owner, attr), fn in zip(spots, saved, strict=True):
        setattr(owner, attr, spy(f"{getattr(owner, '__name__', owner)}.{attr}", fn))
    try:
        yield log
    finally:
        ad.primitive_transposes[ad.custom_lin_p] = transpose
        for (owner, attr), fn in zip(spots, saved, strict=True):
            setattr(owner, attr, fn)
