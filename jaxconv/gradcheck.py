r"""The gradient check behind ``jaxconv gradcheck``: every hand-derived rule against ``jax.grad``
and against finite differences, over a grid of configurations. The library part: no printing.

For one *case* (an op, a configuration of shapes and static arguments, a dtype) the check

1. draws the differentiable inputs (x, w, b, ...) and an upstream gradient dy from a random
   generator seeded by the seed, the op and the configuration (:func:`case_rng`), in float64,
   then casts them to the case's dtype: the float64, float32 and bfloat16 rows of one
   configuration see the same numbers up to rounding;
2. computes the **manual VJP** (the op from ``jaxconv``: forward + the lecture's rule attached by
   ``jax.custom_vjp``) and the **autodiff VJP** (the twin from ``jaxconv.autodiff``: the same
   forward, differentiated by JAX), both in the case's dtype, and compares them input by input:

       max_abs_err = max |g_manual − g_autodiff|
       max_rel_err = max |g_manual − g_autodiff| / max |g_autodiff|

   The relative error is *normwise* (relative to the largest entry of the autodiff gradient):
   an elementwise ratio is meaningless for entries that cancel to almost zero, which
   correlations of random data always produce. A row passes when ``max_rel_err <= rtol`` for its
   dtype (:data:`TOLERANCES`). For float32 rows the largest distance in units in the last place,
   ``max_ulp``, is also reported, from the int32 views of the float32 bits (an order-preserving
   map of floats to integers, so the distance counts the float32 steps from one value to the
   other; :func:`ulp_distance`). It is informative, not a pass criterion: near zero a handful
   of rounding errors is millions of ULPs;
3. in float64 only, checks the manual VJP against **central finite differences**: for each
   differentiable input u and a random direction v (same shape as u),

       fd = (⟨dy, f(u + h·v)⟩ − ⟨dy, f(u − h·v)⟩) / (2h),    h = FD_STEP,

   is the directional derivative of the scalar ⟨dy, f⟩, which the VJP gives exactly as
   ⟨ū, v⟩ with ū = vjp(dy), v ~ N(0, I). The error is measured against the typical size of such
   a directional derivative, E[⟨ū, v⟩²]^½ = ‖ū‖₂ (a random v can be nearly orthogonal to ū,
   and then |⟨ū, v⟩| alone is a cancellation, not a scale):

       fd_rel_err = |fd − ⟨ū, v⟩| / max(|fd|, |⟨ū, v⟩|, ‖ū‖₂)      (max over the inputs)

   and must stay below ``FD_RTOL``: with h = 1e-6 the truncation error is O(h²) and the rounding
   error O(ε/h) ≈ 1e-10, so a correct rule lands far below 1e-6, while a wrong one, off by some
   e = ū − ū_true, is off by ⟨e, v⟩ ~ ‖e‖₂ and lands near ‖e‖/‖ū‖. This is the check that does
   not trust JAX either. Inputs are drawn away from the
   kinks (relu at 0, ties in max_pool) so that the function is smooth on [u − h·v, u + h·v].

The checked ops are injected (``pairs``: op name -> (manual, autodiff)), so a deliberately broken
rule can be run through the same check and must fail it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _checks

OPS = (
    "conv", "dense", "max_pool", "avg_pool", "relu", "leaky_relu", "sigmoid", "tanh", "softplus",
    "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels", "squared_error",
)
DTYPES = ("float64", "float32", "bfloat16")

#: Pass threshold on ``max_rel_err`` (manual vs autodiff), by dtype. Both sides round in the
#: dtype but accumulate in different orders (dw = x ⋆ dy is one convolution, JAX's transpose
#: another), so the error is a few ε times the length of the longest sum (float64 ε = 2.2e-16,
#: float32 ε = 1.2e-7, bfloat16 ε = 7.8e-3); the worst cases measured on the default grid are
#: 1.6e-15 (float64), 8.5e-7 (float32) and 6.4e-2 (bfloat16). bfloat16 is loose on purpose:
#: JAX's own gradient of the bias (a bfloat16 reduction over N·|O| positions) is off by up to 6%
#: from the float64 value on 3-D grid cases while the manual db stays within 0.2%, so the
#: bfloat16 rows only catch rules that are wrong, not slightly rounded; the float64 and float32
#: rows and the finite differences catch the subtle errors.
TOLERANCES = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 1e-1}
#: Finite differences (float64 only): step and pass threshold on ``fd_rel_err``.
FD_STEP = 1e-6
FD_RTOL = 1e-6
#: Every case compiles one small program once. LLVM's optimisation of those programs dominated
#: the sweep (about 5× its run time for 3-D convolutions on CPU), so they are compiled at XLA's
#: backend optimisation level 0; this changes the speed of the generated code, not its IEEE
#: arithmetic (XLA's fast-math stays off).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the sweep.

    Attributes:
      op: one of :data:`OPS`.
      config: JSON-able shapes and static arguments (see :func:`default_grid` for the keys).
      dtype: one of :data:`DTYPES`.
      source: ``"grid"`` (built in) or ``"random"`` (drawn by :func:`random_cases`).
    """

    op: str
    config: Mapping[str, Any]
    dtype: str
    source: str = "grid"


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of one :class:`Case` (``None`` where a measure does not apply)."""

    case: Case
    max_abs_err: float
    max_rel_err: float
    max_ulp: int | None
    fd_rel_err: float | None
    rtol: float
    fd_rtol: float | None
    passed: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The row as one JSON object (op, config, dtype, errors, tolerances, passed, ...); a
        measure that does not apply, or is not finite, is ``None``."""
        return {
            "op": self.case.op,
            "config": _jsonable(self.case.config),
            "dtype": self.case.dtype,
            "source": self.case.source,
            "max_abs_err": _finite_or_none(self.max_abs_err),
            "max_rel_err": _finite_or_none(self.max_rel_err),
            "max_ulp_f32": self.max_ulp,
            "fd_rel_err": _finite_or_none(self.fd_rel_err),
            "rtol": self.rtol,
            "fd_rtol": self.fd_rtol,
            "passed": self.passed,
            "seconds": self.seconds,
        }


def _finite_or_none(value: float | None) -> float | None:
    """Strict JSON has no NaN or infinity: a non-finite error (always a failed row) is null."""
    return value if value is not None and math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def describe(config: Mapping[str, Any]) -> str:
    """A compact one-line form of a configuration, e.g. ``x=(2, 7, 4) w=(3, 2, 6) stride=2``."""
    parts = []
    for k, v in config.items():
        if isinstance(v, (list, tuple)):
            v = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Inputs for each op: build(config, rng) -> (differentiable args in float64, call(op, *args)).
# --------------------------------------------------------------------------------------------


def _normal(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape)


def _padding(p: Any) -> Any:
    if isinstance(p, (list, tuple)):
        return tuple((int(lo), int(hi)) for lo, hi in p)
    return p


def _build_conv(cfg, rng):
    n, size, c_in, c_out, k = cfg["batch"], cfg["in_size"], cfg["c_in"], cfg["c_out"], cfg["kernel"]
    groups = cfg["groups"]
    first = cfg.get("layout", "channels_last") == "channels_first"
    x_shape = (n, c_in, *size) if first else (n, *size, c_in)
    w_shape = (c_out, c_in // groups, *k) if first else (*k, c_in // groups, c_out)
    args = [_normal(rng, x_shape), _normal(rng, w_shape) / math.sqrt(math.prod(k) * c_in // groups)]
    if cfg["bias"]:
        args.append(_normal(rng, (c_out,)))
    kwargs = dict(
        stride=tuple(cfg["stride"]), padding=_padding(cfg["padding"]),
        dilation=tuple(cfg["dilation"]), groups=groups, layout=cfg.get("layout", "channels_last"),
    )

    def call(op, x, w, b=None):
        return op(x, w, b, **kwargs)

    return tuple(args), call


def _build_dense(cfg, rng):
    args = [
        _normal(rng, (*cfg["batch_shape"], cfg["n_in"])),
        _normal(rng, (cfg["n_in"], cfg["n_out"])) / math.sqrt(cfg["n_in"]),
    ]
    if cfg["bias"]:
        args.append(_normal(rng, (cfg["n_out"],)))

    def call(op, x, w, b=None):
        return op(x, w, b)

    return tuple(args), call


def _distinct(rng, shape):
    """A random permutation of evenly spaced values in [-2, 2]: no ties, gaps >> FD_STEP."""
    return rng.permutation(np.linspace(-2.0, 2.0, math.prod(shape))).reshape(shape)


def _build_pool(cfg, rng):
    shape = (cfg["batch"], *cfg["in_size"], cfg["channels"])
    kwargs = dict(window=tuple(cfg["window"]), stride=tuple(cfg["stride"]),
                  padding=_padding(cfg["padding"]))

    def call(op, x):
        return op(x, **kwargs)

    return (_distinct(rng, shape),), call


def _away_from_zero(rng, shape, margin=0.05):
    z = 2 * _normal(rng, shape)
    return np.where(z >= 0, z + margin, z - margin)


def _build_elementwise(cfg, rng):
    shape = tuple(cfg["shape"])
    x = _away_from_zero(rng, shape) if cfg.get("kink") else 2 * _normal(rng, shape)
    kwargs = {"negative_slope": cfg["negative_slope"]} if "negative_slope" in cfg else {}

    def call(op, x):
        return op(x, **kwargs)

    return (x,), call


def _build_sce(cfg, rng):
    """Logits and probability labels (rows of a softmax), both differentiated."""
    shape = (*cfg["batch_shape"], cfg["classes"])
    logits, scores = 3 * _normal(rng, shape), _normal(rng, shape)
    labels = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)

    def call(op, logits, labels):
        return op(logits, labels)

    return (logits, labels), call


def _build_sce_integer_labels(cfg, rng):
    shape = (*cfg["batch_shape"], cfg["classes"])
    labels = rng.integers(0, cfg["classes"], tuple(cfg["batch_shape"]))

    def call(op, logits):
        return op(logits, labels)

    return (3 * _normal(rng, shape),), call


def _build_squared_error(cfg, rng):
    shape = tuple(cfg["shape"])

    def call(op, pred, target):
        return op(pred, target)

    return (_normal(rng, shape), _normal(rng, shape)), call


_BUILDERS: dict[str, Callable] = {
    "conv": _build_conv,
    "dense": _build_dense,
    "max_pool": _build_pool,
    "avg_pool": _build_pool,
    "relu": _build_elementwise,
    "leaky_relu": _build_elementwise,
    "sigmoid": _build_elementwise,
    "tanh": _build_elementwise,
    "softplus": _build_elementwise,
    "softmax_cross_entropy": _build_sce,
    "softmax_cross_entropy_with_integer_labels": _build_sce_integer_labels,
    "squared_error": _build_squared_error,
}


def default_pairs() -> dict[str, tuple[Callable, Callable]]:
    """op name -> (manual op from ``jaxconv``, autodiff twin from ``jaxconv.autodiff``)."""
    import jaxconv

    return {name: (getattr(jaxconv, name), getattr(jaxconv.autodiff, name)) for name in OPS}


# --------------------------------------------------------------------------------------------
# Measures.
# --------------------------------------------------------------------------------------------


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise distance in float32 ULPs between two float32 arrays.

    The int32 view of a float32 is monotone in the value for non-negative floats and reversed
    for negative ones; mapping negatives to ``-(bits & 0x7fffffff)`` makes it monotone
    everywhere (with +0 and −0 both at 0), so the difference of the mapped integers counts the
    representable float32 values between ``a`` and ``b``.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)

    def ordered(v):
        bits = v.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return np.abs(ordered(a) - ordered(b))


def _errors(manual: Sequence[np.ndarray], autodiff: Sequence[np.ndarray], dtype: str):
    abs_err, rel_err, ulp = 0.0, 0.0, 0 if dtype == "float32" else None
    finite = True
    for m, a in zip(manual, autodiff, strict=True):
        m64 = np.asarray(m, np.float64)
        a64 = np.asarray(a, np.float64)
        if m64.shape != a64.shape:
            raise ValueError(f"gradient shapes differ: manual {m64.shape}, autodiff {a64.shape}")
        diff = float(np.max(np.abs(m64 - a64), initial=0.0))
        scale = float(np.max(np.abs(a64), initial=0.0))
        abs_err = max(abs_err, diff)
        if diff > 0:
            rel_err = max(rel_err, diff / scale if scale > 0 else math.inf)
        finite = finite and bool(np.all(np.isfinite(m64)) and np.all(np.isfinite(a64)))
        if ulp is not None:
            ulp = max(ulp, int(np.max(ulp_distance(m, a), initial=0)))
    if not finite:
        return math.nan, math.nan, ulp
    return abs_err, rel_err, ulp


def _program(call: Callable, pair: tuple[Callable, Callable], with_fd: bool) -> Callable:
    """Both VJPs and, in float64, the finite differences, as one jitted function (one compilation
    per case): ``(args, dy, directions) -> (g_manual, g_autodiff, fd, exact, scale)`` with, per
    differentiable input, ``fd`` the central difference, ``exact`` = ⟨ū, v⟩ and ``scale`` = ‖ū‖₂.
    """
    manual, autodiff = pair

    def f_manual(*a):
        return call(manual, *a)

    def f_autodiff(*a):
        return call(autodiff, *a)

    def program(args, dy, directions):
        g_manual = jax.vjp(f_manual, *args)[1](dy)
        g_autodiff = jax.vjp(f_autodiff, *args)[1](dy)
        if not with_fd:
            return g_manual, g_autodiff, jnp.zeros(0), jnp.zeros(0), jnp.zeros(0)

        def along(i, t):
            moved = [a + t * v if j == i else a for j, (a, v) in
                     enumerate(zip(args, directions, strict=True))]
            return jnp.vdot(dy, f_manual(*moved))

        fd = [(along(i, FD_STEP) - along(i, -FD_STEP)) / (2 * FD_STEP) for i in range(len(args))]
        exact = [jnp.vdot(g, v) for g, v in zip(g_manual, directions, strict=True)]
        scale = [jnp.linalg.norm(g.ravel()) for g in g_manual]
        return g_manual, g_autodiff, jnp.stack(fd), jnp.stack(exact), jnp.stack(scale)

    return jax.jit(program, compiler_options=COMPILER_OPTIONS), f_autodiff


def _fd_rel_err(fd: np.ndarray, exact: np.ndarray, scale: np.ndarray) -> float:
    """max over the inputs of |fd − ⟨ū, v⟩| / max(|fd|, |⟨ū, v⟩|, ‖ū‖₂)."""
    if not all(np.all(np.isfinite(a)) for a in (fd, exact, scale)):
        return math.nan
    denom = np.maximum(np.maximum(np.abs(fd), np.abs(exact)), scale)
    ratio = np.abs(fd - exact) / np.where(denom > 0, denom, 1.0)
    return float(np.max(ratio, initial=0.0))


def case_rng(case: Case, seed: int) -> np.random.Generator:
    """The random generator of a case, seeded by ``seed`` and the op and configuration (not the
    dtype): the dtypes of one configuration see the same numbers, and no row depends on which
    other rows run or in which order."""
    digest = zlib.crc32(f"{case.op} {describe(case.config)}".encode())
    return np.random.default_rng([seed, digest])


def check(case: Case, pair: tuple[Callable, Callable], rng: np.random.Generator) -> Result:
    """Run one case: manual vs autodiff VJP in ``case.dtype`` (+ finite differences in float64).

    Args:
      case: what to check.
      pair: ``(manual, autodiff)`` ops with the public signature of ``jaxconv.<case.op>``.
      rng: draws the inputs (in float64, then cast to ``case.dtype``), the upstream gradient dy
        and the finite-difference directions.
    """
    _checks.choice("op", case.op, OPS)
    _checks.choice("dtype", case.dtype, DTYPES)
    start = time.perf_counter()
    args64, call = _BUILDERS[case.op](case.config, rng)
    dtype = jnp.dtype(case.dtype)
    args = tuple(jnp.asarray(a, dtype) for a in args64)
    with_fd = case.dtype == "float64"
    program, f_autodiff = _program(call, pair, with_fd)
    out = jax.eval_shape(f_autodiff, *args)
    dy = jnp.asarray(_normal(rng, out.shape), out.dtype)
    directions = [jnp.asarray(_normal(rng, a.shape), dtype) for a in args] if with_fd else []
    g_manual, g_autodiff, fd, exact, scale = jax.device_get(program(args, dy, directions))
    abs_err, rel_err, ulp = _errors(g_manual, g_autodiff, case.dtype)
    rtol = TOLERANCES[case.dtype]
    passed = rel_err <= rtol  # False for nan
    fd_err = fd_rtol = None
    if with_fd:
        fd_rtol = FD_RTOL
        fd_err = _fd_rel_err(fd, exact, scale)
        passed = passed and fd_err <= FD_RTOL
    return Result(
        case=case, max_abs_err=abs_err, max_rel_err=rel_err, max_ulp=ulp, fd_rel_err=fd_err,
        rtol=rtol, fd_rtol=fd_rtol, passed=bool(passed), seconds=time.perf_counter() - start,
    )


def run(
    cases: Iterable[Case],
    pairs: Mapping[str, tuple[Callable, Callable]] | None = None,
    *,
    seed: int = 0,
    callback: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Check every case, each with its inputs drawn from :func:`case_rng`.

    Args:
      cases: the rows to check (:func:`default_grid`, :func:`random_cases`, or your own).
      pairs: op name -> ``(manual, autodiff)``; defaults to :func:`default_pairs`. Inject a
        broken manual op here to see the check fail.
      seed: the PRNG seed of the inputs.
      callback: called with each :class:`Result` as it is ready (e.g. a progress bar).
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "the gradient check needs float64: call jax.config.update('jax_enable_x64', True) "
            "before running it"
        )
    pairs = default_pairs() if pairs is None else pairs
    results = []
    for case in cases:
        if case.op not in pairs:
            raise ValueError(f"no ops given for {case.op!r}; pairs has {sorted(pairs)}")
        result = check(case, pairs[case.op], case_rng(case, seed))
        results.append(result)
        if callback is not None:
            callback(result)
    return results


# --------------------------------------------------------------------------------------------
# The built-in grid and random configurations.
# --------------------------------------------------------------------------------------------


def _conv_config(nd, stride, dilation, padding, groups, *, kernel=3, size=None, batch=2,
                 bias=True, layout="channels_last"):
    c_in, c_out = 2 * groups, 3 * groups
    if size is None:  # large enough for every padding with the dilated kernel
        size = dilation * (kernel - 1) + 1 + stride + (2 if nd < 3 else 1)
    return {
        "batch": batch, "in_size": (size,) * nd, "c_in": c_in, "c_out": c_out,
        "kernel": (kernel,) * nd, "stride": (stride,) * nd, "dilation": (dilation,) * nd,
        "padding": padding, "groups": groups, "bias": bias, "layout": layout,
    }


def _grid_configs() -> dict[str, list[dict[str, Any]]]:
    conv = [
        _conv_config(nd, stride, dilation, padding, 1)
        for nd, stride, dilation, padding in itertools.product(
            (1, 2, 3), (1, 2), (1, 2), ("VALID", "SAME", "FULL", 1)
        )
    ]
    for nd in (1, 2, 3):  # two channel groups, without bias
        conv.append(_conv_config(nd, 2, 1, "SAME", 2, bias=False))
        conv.append(_conv_config(nd, 1, 2, "FULL", 2, bias=False))
    # Explicit asymmetric (low, high) pads, mixed per-dimension arguments, channels-first,
    # the lecture's own 1-D example, even kernels and depthwise convolutions.
    conv += [
        {**_conv_config(1, 1, 1, "VALID", 1, kernel=2, size=4, batch=1), "c_in": 1, "c_out": 1},
        _conv_config(1, 3, 1, ((2, 0),), 1, kernel=2, size=9),
        {**_conv_config(2, 1, 1, ((0, 2), (1, 0)), 1, size=6), "stride": (2, 1),
         "dilation": (1, 2), "kernel": (3, 2)},
        {**_conv_config(3, 2, 1, ((1, 0), (0, 1), (2, 2)), 1, kernel=2, size=5),
         "dilation": (1, 2, 1)},
        _conv_config(2, 2, 1, "SAME", 1, layout="channels_first"),
        _conv_config(1, 1, 2, "FULL", 2, layout="channels_first"),
        {**_conv_config(2, 1, 1, "SAME", 1, size=5), "c_in": 4, "c_out": 8, "groups": 4},
        {**_conv_config(1, 2, 3, "VALID", 1, kernel=4, size=15), "c_in": 3, "c_out": 3,
         "groups": 3},
    ]
    dense = [
        {"batch_shape": bs, "n_in": n_in, "n_out": n_out, "bias": bias}
        for bs, n_in, n_out, bias in [
            ((1,), 4, 1, True), ((8,), 5, 3, True), ((8,), 5, 3, False), ((2, 3), 6, 4, True),
            ((16,), 40, 10, True), ((), 3, 2, True),
        ]
    ]
    pools = []
    for nd, (window, stride, padding) in itertools.product(
        (1, 2, 3), ((2, 2, "VALID"), (3, 1, "SAME"), (3, 2, 1), (2, 1, "SAME"))
    ):
        size = 7 if nd < 3 else 5
        pools.append({"batch": 2, "in_size": (size,) * nd, "channels": 2,
                      "window": (window,) * nd, "stride": (stride,) * nd, "padding": padding})
    pools.append({"batch": 1, "in_size": (6, 5), "channels": 3, "window": (2, 3),
                  "stride": (1, 2), "padding": ((1, 0), (0, 2))})
    shapes = [(7,), (4, 5), (2, 3, 4, 2)]
    elementwise = {
        name: [{"shape": s, **extra} for s in shapes]
        for name, extra in [
            ("relu", {"kink": True}), ("leaky_relu", {"kink": True, "negative_slope": 0.01}),
            ("sigmoid", {}), ("tanh", {}), ("softplus", {}),
        ]
    }
    elementwise["leaky_relu"].append({"shape": (4, 5), "kink": True, "negative_slope": 0.3})
    classification = [
        {"batch_shape": bs, "classes": c} for bs, c in [((1,), 2), ((8,), 10), ((2, 3), 5)]
    ]
    return {
        "conv": conv,
        "dense": dense,
        "max_pool": pools,
        "avg_pool": pools,
        **elementwise,
        "softmax_cross_entropy": classification,
        "softmax_cross_entropy_with_integer_labels": classification,
        "squared_error": [{"shape": s} for s in [(1,), (8, 10), (2, 3, 4)]],
    }


def default_grid(
    ops: Sequence[str] = OPS, dtypes: Sequence[str] = DTYPES, *, limit: int | None = None
) -> list[Case]:
    """The built-in sweep: every configuration of every op in ``ops``, in every dtype.

    conv: 1 to 3 spatial dims × stride {1, 2} × dilation {1, 2} × padding {VALID, SAME, FULL, 1},
    two channel groups (1 to 3 dims), explicit (low, high) pads, mixed per-dimension arguments,
    channels-first, the lecture's 1-D example, even kernels and depthwise convolutions. Pools:
    1 to 3 dims × (window, stride, padding) {(2, 2, VALID), (3, 1, SAME), (3, 2, 1),
    (2, 1, SAME)} plus one mixed case. Activations, dense and losses: a few shapes each.

    Args:
      ops: which ops (names from :data:`OPS`).
      dtypes: which dtypes (from :data:`DTYPES`).
      limit: keep only the first ``limit`` configurations of each op (a quick run).
    """
    _checks.names("ops", ops, OPS)
    _checks.names("dtypes", dtypes, DTYPES)
    if limit is not None:
        _checks.positive_int("limit", limit)
    grid = _grid_configs()
    return [
        Case(op, cfg, dtype)
        for op in ops
        for cfg in grid[op][:limit]
        for dtype in dtypes
    ]


def random_cases(
    n: int, seed: int, ops: Sequence[str] = OPS, dtypes: Sequence[str] = DTYPES
) -> list[Case]:
    """``n`` random configurations (op, shapes, static arguments, dtype), reproducible from
    ``seed``. Every drawn configuration is valid (the input is never smaller than the window)."""
    _checks.names("ops", ops, OPS)
    _checks.names("dtypes", dtypes, DTYPES)
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        op = str(rng.choice(list(ops)))
        config = _random_config(op, rng)
        while not _valid(op, config):  # e.g. SAME padding wider than a small pooling window
            config = _random_config(op, rng)
        cases.append(Case(op, config, str(rng.choice(list(dtypes))), "random"))
    return cases


def _valid(op: str, config: Mapping[str, Any]) -> bool:
    """Whether jaxconv's own validation (:mod:`jaxconv._checks`) accepts the configuration."""
    from jaxconv import _checks

    if op not in ("conv", "max_pool", "avg_pool"):
        return True
    args, _ = _BUILDERS[op]({**config, "batch": 1}, np.random.default_rng(0))
    try:
        if op == "conv":
            x, w = args[0], args[1]
            if config.get("layout") == "channels_first":
                x, w = np.moveaxis(x, 1, -1), np.transpose(w, (*range(2, w.ndim), 1, 0))
            _checks.conv_config(x, w, None, stride=tuple(config["stride"]),
                                padding=_padding(config["padding"]),
                                dilation=tuple(config["dilation"]), groups=config["groups"],
                                layout="channels_last")
        else:
            _checks.pool_config(args[0], tuple(config["window"]), tuple(config["stride"]),
                                _padding(config["padding"]))
    except ValueError:
        return False
    return True


def _random_padding(rng, nd, window):
    kind = rng.integers(5)
    if kind < 3:
        return ("VALID", "SAME", "FULL")[kind]
    if kind == 3:
        return int(rng.integers(0, min(window)))
    return tuple((int(rng.integers(0, k)), int(rng.integers(0, k))) for k in window)


def _random_config(op: str, rng: np.random.Generator) -> dict[str, Any]:
    def ints(lo, hi, nd):
        return tuple(int(v) for v in rng.integers(lo, hi + 1, nd))

    if op == "conv":
        nd = int(rng.integers(1, 4))
        kernel, stride, dilation = ints(1, 4 if nd < 3 else 3, nd), ints(1, 3, nd), ints(1, 3, nd)
        window = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
        size = tuple(w + int(rng.integers(0, 5 if nd < 3 else 3)) for w in window)
        groups = int(rng.choice([1, 1, 2, 3]))
        padding = _random_padding(rng, nd, window)
        if padding == "FULL" and int(rng.integers(2)):
            padding = "SAME"
        return {
            "batch": int(rng.integers(1, 4)), "in_size": size,
            "c_in": groups * int(rng.integers(1, 4)), "c_out": groups * int(rng.integers(1, 4)),
            "kernel": kernel, "stride": stride, "dilation": dilation, "padding": padding,
            "groups": groups, "bias": bool(rng.integers(2)),
            "layout": str(rng.choice(["channels_last", "channels_first"])),
        }
    if op == "dense":
        return {"batch_shape": ints(1, 6, int(rng.integers(0, 3))),
                "n_in": int(rng.integers(1, 33)), "n_out": int(rng.integers(1, 17)),
                "bias": bool(rng.integers(2))}
    if op in ("max_pool", "avg_pool"):
        nd = int(rng.integers(1, 4))
        window = ints(1, 3, nd)
        stride = ints(1, 3, nd)
        padding = _random_padding(rng, nd, window)
        if padding == "FULL":  # pools take no FULL padding
            padding = "SAME"
        size = tuple(w + int(rng.integers(0, 5 if nd < 3 else 3)) for w in window)
        return {"batch": int(rng.integers(1, 3)), "in_size": size,
                "channels": int(rng.integers(1, 4)), "window": window, "stride": stride,
                "padding": padding}
    if op in ("softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"):
        return {"batch_shape": ints(1, 8, int(rng.integers(1, 3))),
                "classes": int(rng.integers(2, 12))}
    shape = ints(1, 6, int(rng.integers(1, 4)))
    if op == "squared_error":
        return {"shape": shape}
    cfg: dict[str, Any] = {"shape": shape}
    if op in ("relu", "leaky_relu"):
        cfg["kink"] = True
    if op == "leaky_relu":
        cfg["negative_slope"] = round(float(rng.uniform(0, 0.5)), 3)
    return cfg


def summarize(results: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Per op: rows, failures and the worst relative error per dtype."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        s = out.setdefault(r.case.op, {"rows": 0, "failed": 0, "worst_rel_err": {}})
        s["rows"] += 1
        s["failed"] += not r.passed
        worst = s["worst_rel_err"]
        worst[r.case.dtype] = max(worst.get(r.case.dtype, 0.0), r.max_rel_err)
    return out
