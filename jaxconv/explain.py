r"""The lecture's worked examples, computed as data (``jaxconv explain`` prints them).

**conv1d** (the lecture's "simple example"): x ∈ Rⁿ (n = 4), w ∈ Rᵏ (k = 2), a scalar b, one
filter, stride 1, no padding, so y ∈ Rⁿ⁻ᵏ⁺¹ (3) with

    y₁ = w₁x₁ + w₂x₂ + b,   y₂ = w₁x₂ + w₂x₃ + b,   y₃ = w₁x₃ + w₂x₄ + b.

Given dy = ∂L/∂y, the gradients are computed by three independent routes (plus the library's own
rule, which is what ``jaxconv.conv1d`` runs):

1. **chain rule**: the Jacobians ∂y/∂w (3×2, rows (xᵢ, xᵢ₊₁)), ∂y/∂x (3×4, rows
   (…, w₁, w₂, …)) and ∂y/∂b (a column of ones) are written out entry by entry from the forward,
   and dw = dy·∂y/∂w, dx = dy·∂y/∂x, db = dy·∂y/∂b are plain matrix products (numpy);
2. **convolution identities**: dw = x ⋆ dy and dx = full-conv(rot180 w, dy), i.e. dy padded with
   k − 1 zeros on each side correlated with the flipped filter, evaluated with ``jaxconv.conv``'s
   *forward* (cross-correlation; padding ``"FULL"`` for the second), and db = Σ dy;
3. **jax.grad** of L = ⟨dy, y⟩ through ``jaxconv.autodiff.conv1d`` (JAX derives it);

and (4) ``jax.vjp`` of ``jaxconv.conv1d``, whose backward pass is the hand-derived rule of
:mod:`jaxconv.ops.conv`.

**conv2d** does the same for a 3×3 input and a 2×2 filter (y is 2×2; the Jacobians act on the
row-major flattened arrays: ∂y/∂w is 4×4, ∂y/∂x is 4×9).

**perceptron**: one sigmoid neuron z = w·x + b, a = σ(z) with the squared error L = (a − t)²
(``jaxconv.squared_error`` of one value). The chain rule is dL/da = 2(a − t), da/dz = a(1 − a), and
∂z/∂w = x, ∂z/∂x = w, ∂z/∂b = 1 (the 1×n Jacobians of the neuron), so with dz = dL/da · da/dz:
dw = dz·x, dx = dz·w, db = dz. The routes are the chain rule (numpy), ``jax.grad`` through the
manual ops (``jaxconv.dense``/``sigmoid``/``squared_error``, i.e. the library's rules) and
``jax.grad`` through ``jaxconv.autodiff``.

Everything is computed in float64 (the caller enables x64).

The lecture's slides also carry typos (:func:`lecture_typos`): the forward lines print "=" for
"+", dw₂ uses dy₂, dy₃, dy₄ instead of dy₁, dy₂, dy₃, dx₂ ends in "dy_w" instead of dy₂, the
symbolic ∂y/∂x has a row for a y₄ that does not exist, and the full-convolution result is
labelled "dw" where it is dx.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _checks

#: Default numbers when the user gives none (printed with the example).
DEFAULTS: dict[str, dict[str, Any]] = {
    "conv1d": {"x": [1.0, 2.0, 3.0, 4.0], "w": [2.0, -1.0], "b": 0.5, "dy": [1.0, -0.5, 2.0]},
    "conv2d": {
        "x": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],
        "w": [[1.0, 0.0], [-1.0, 2.0]],
        "b": 0.5,
        "dy": [[1.0, -1.0], [0.5, 2.0]],
    },
    "perceptron": {"x": [0.5, -1.0, 2.0], "w": [0.3, 0.8, -0.2], "b": 0.1, "t": 1.0},
}
#: Routes agree when every value is within this absolute tolerance (float64 throughout).
AGREE_ATOL = 1e-12


@dataclasses.dataclass(frozen=True)
class Grads:
    """dx, dw (shaped like x and w) and db (a float) from one route."""

    route: str
    dx: np.ndarray
    dw: np.ndarray
    db: float


@dataclasses.dataclass(frozen=True)
class Typo:
    """One glitch on the slides: what they print, the corrected line and its value (if any)."""

    where: str
    slide: str
    corrected: str
    value: str | None
    note: str


@dataclasses.dataclass(frozen=True)
class ConvExample:
    """The convolution example, every intermediate as an array (float64).

    Attributes:
      x, w, dy: the input (n,) or (H, W), the filter (k,) or (kH, kW), the upstream gradient
        (shaped like y); b: the bias.
      y: the forward output.
      jac_w, jac_x, jac_b: ∂y/∂w (|y|, |w|), ∂y/∂x (|y|, |x|), ∂y/∂b (|y|, 1) on the row-major
        flattened arrays.
      w_terms, x_terms: the symbolic Jacobians: ``w_terms[i][k]`` is the flat index of the x
        that multiplies w_k in y_i (or -1), ``x_terms[i][j]`` the flat index of the w that
        multiplies x_j in y_i (or -1).
      dy_padded, w_rot180: the two operands of dx = full-conv(rot180 w, dy).
      routes: chain rule, identities, the library's rule, jax.grad (in this order).
      agree: whether all routes agree within :data:`AGREE_ATOL`; max_disagreement: the largest
        difference between a route and the chain rule.
    """

    op: str
    x: np.ndarray
    w: np.ndarray
    b: float
    dy: np.ndarray
    y: np.ndarray
    jac_w: np.ndarray
    jac_x: np.ndarray
    jac_b: np.ndarray
    w_terms: np.ndarray
    x_terms: np.ndarray
    dy_padded: np.ndarray
    w_rot180: np.ndarray
    routes: tuple[Grads, ...]
    agree: bool
    max_disagreement: float


@dataclasses.dataclass(frozen=True)
class PerceptronExample:
    """One sigmoid neuron with the squared error, every intermediate as a number (float64)."""

    x: np.ndarray
    w: np.ndarray
    b: float
    t: float
    z: float
    a: float
    loss: float
    dl_da: float
    da_dz: float
    dz: float
    routes: tuple[Grads, ...]
    agree: bool
    max_disagreement: float


# --------------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------------


def _as_array(name: str, value: Any, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numbers, got {value!r}") from err
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite numbers, got {value!r}")
    return a


def _as_float(name: str, value: Any) -> float:
    a = _as_array(name, [value], 1)
    return float(a[0])


# --------------------------------------------------------------------------------------------
# Convolution.
# --------------------------------------------------------------------------------------------


def _symbolic_jacobians(x_shape, w_shape):
    """Index maps of ∂y/∂w and ∂y/∂x for y[o] = Σ_k w[k]·x[o + k] + b (stride 1, VALID)."""
    y_shape = tuple(n - k + 1 for n, k in zip(x_shape, w_shape, strict=True))
    n_y, n_x, n_w = (int(np.prod(s)) for s in (y_shape, x_shape, w_shape))
    w_terms = np.full((n_y, n_w), -1)
    x_terms = np.full((n_y, n_x), -1)
    for i, o in enumerate(itertools.product(*map(range, y_shape))):
        for k_flat, k in enumerate(itertools.product(*map(range, w_shape))):
            j_flat = int(np.ravel_multi_index(tuple(a + b for a, b in zip(o, k, strict=True)),
                                              x_shape))
            w_terms[i, k_flat] = j_flat  # ∂y_i/∂w_k = x_{o+k}
            x_terms[i, j_flat] = k_flat  # ∂y_i/∂x_{o+k} = w_k
    return y_shape, w_terms, x_terms


def _take(values: np.ndarray, index_map: np.ndarray) -> np.ndarray:
    """The numeric Jacobian: values[index] where index >= 0, else 0."""
    flat = values.reshape(-1)
    return np.where(index_map >= 0, flat[np.maximum(index_map, 0)], 0.0)


def _batched(a: np.ndarray) -> jax.Array:
    """(n,) or (H, W) -> (1, n, 1) or (1, H, W, 1): one example, one channel."""
    return jnp.asarray(a)[None, ..., None]


def _kernel(a: np.ndarray) -> jax.Array:
    """(k,) or (kH, kW) -> (k, 1, 1) or (kH, kW, 1, 1): one input and one output channel."""
    return jnp.asarray(a)[..., None, None]


def conv_example(op: str = "conv1d", *, x=None, w=None, b=None, dy=None) -> ConvExample:
    """Compute the lecture's convolution example (``op`` "conv1d" or "conv2d").

    Args:
      x: input, (n,) for conv1d or (H, W) for conv2d; default :data:`DEFAULTS`.
      w: filter, (k,) or (kH, kW), no larger than x.
      b: the scalar bias.
      dy: the upstream gradient, shaped like y: (n − k + 1,) or (H − kH + 1, W − kW + 1).

    Raises ValueError/TypeError naming the argument for shapes that do not fit or non-numbers.
    """
    import jaxconv

    _checks.choice("op", op, ("conv1d", "conv2d"))
    nd = 1 if op == "conv1d" else 2
    d = DEFAULTS[op]
    x = _as_array("x", d["x"] if x is None else x, nd)
    w = _as_array("w", d["w"] if w is None else w, nd)
    b = _as_float("b", d["b"] if b is None else b)
    if any(k > n for k, n in zip(w.shape, x.shape, strict=True)):
        raise ValueError(f"w (shape {w.shape}) must not be larger than x (shape {x.shape}): "
                         f"the example is a VALID convolution")
    y_shape, w_terms, x_terms = _symbolic_jacobians(x.shape, w.shape)
    if dy is None:
        if x.shape != np.shape(d["x"]) or w.shape != np.shape(d["w"]):
            raise ValueError(f"dy must be given for these shapes: y has shape {y_shape}")
        dy = d["dy"]
    dy = _as_array("dy", dy, nd)
    if dy.shape != y_shape:
        raise ValueError(f"dy must have the shape of y, {y_shape} (x {x.shape}, w {w.shape}, "
                         f"stride 1, no padding), got {dy.shape}")

    # Forward, and route 1: the chain rule with the Jacobians written out.
    jac_w, jac_x = _take(x, w_terms), _take(w, x_terms)
    jac_b = np.ones((jac_w.shape[0], 1))
    y = (jac_w @ w.reshape(-1) + b).reshape(y_shape)
    dy_row = dy.reshape(-1)
    chain = Grads("chain rule: dy · ∂y/∂(x, w, b)", (dy_row @ jac_x).reshape(x.shape),
                  (dy_row @ jac_w).reshape(w.shape), float(dy_row @ jac_b[:, 0]))

    # Route 2: the convolution identities, with jaxconv.conv's forward (cross-correlation).
    w_rot180 = np.flip(w)
    pad = [(k - 1, k - 1) for k in w.shape]
    dy_padded = np.pad(dy, pad)
    dw_id = jaxconv.conv(_batched(x), _kernel(dy))[0, ..., 0]  # x ⋆ dy
    dx_id = jaxconv.conv(_batched(dy), _kernel(w_rot180), padding="FULL")[0, ..., 0]
    identities = Grads("identities: dw = x ⋆ dy, dx = full-conv(rot180 w, dy), db = Σ dy",
                       np.asarray(dx_id), np.asarray(dw_id), float(np.sum(dy)))

    # Route 3 (the library's rule, custom_vjp) and route 4 (jax.grad of the autodiff twin).
    def through(conv):
        def loss(x_, w_, b_):
            return jnp.vdot(jnp.asarray(dy), conv(_batched(x_)[...], _kernel(w_), b_)[0, ..., 0])

        return jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(w), jnp.array([b]))

    ops_manual, ops_auto = getattr(jaxconv, op), getattr(jaxconv.autodiff, op)
    rule = Grads(f"jaxconv.{op} (its custom_vjp rule)",
                 *_grads_from(through(ops_manual)))
    auto = Grads(f"jax.grad (jaxconv.autodiff.{op})", *_grads_from(through(ops_auto)))
    routes = (chain, identities, rule, auto)
    worst = _max_disagreement(routes)
    return ConvExample(
        op=op, x=x, w=w, b=b, dy=dy, y=y, jac_w=jac_w, jac_x=jac_x, jac_b=jac_b,
        w_terms=w_terms, x_terms=x_terms, dy_padded=dy_padded, w_rot180=w_rot180,
        routes=routes, agree=worst <= AGREE_ATOL, max_disagreement=worst,
    )


def _grads_from(g) -> tuple[np.ndarray, np.ndarray, float]:
    gx, gw, gb = g
    return np.asarray(gx, np.float64), np.asarray(gw, np.float64), float(np.sum(gb))


def _max_disagreement(routes) -> float:
    ref = routes[0]
    worst = 0.0
    for r in routes[1:]:
        worst = max(worst, float(np.max(np.abs(r.dx - ref.dx))),
                    float(np.max(np.abs(r.dw - ref.dw))), abs(r.db - ref.db))
    return worst


def subscript(index: tuple[int, ...] | int, shape: tuple[int, ...] = ()) -> str:
    """1-based unicode subscripts: 0 -> ₁, (0, 2) -> ₁₃ (with a comma when a size exceeds 9)."""
    digits = str.maketrans("0123456789,", "₀₁₂₃₄₅₆₇₈₉,")
    if isinstance(index, int):
        index = (index,)
    sep = "," if any(n > 9 for n in shape) else ""
    return sep.join(str(i + 1) for i in index).translate(digits)


def formula_terms(ex: ConvExample) -> dict[str, list[list[tuple[str, str, float, float]]]]:
    """The chain rule written out per gradient entry, from the symbolic Jacobians.

    ``dw[k]`` = Σᵢ ∂yᵢ/∂w_k · dyᵢ is a list of (x name, dy name, x value, dy value) terms, and
    ``dx[j]`` a list of (w name, dy name, w value, dy value) terms; entries in row-major order.
    """
    y_idx = list(itertools.product(*map(range, ex.dy.shape)))
    x_idx = list(itertools.product(*map(range, ex.x.shape)))
    w_idx = list(itertools.product(*map(range, ex.w.shape)))

    def name(sym, idx, shape):
        return f"{sym}{subscript(idx, shape)}"

    dw, dx = [], []
    for k in range(len(w_idx)):
        dw.append([(name("x", x_idx[ex.w_terms[i, k]], ex.x.shape), name("dy", y_idx[i],
                    ex.dy.shape), float(ex.x.reshape(-1)[ex.w_terms[i, k]]),
                    float(ex.dy.reshape(-1)[i]))
                   for i in range(len(y_idx)) if ex.w_terms[i, k] >= 0])
    for j in range(len(x_idx)):
        dx.append([(name("w", w_idx[ex.x_terms[i, j]], ex.w.shape), name("dy", y_idx[i],
                    ex.dy.shape), float(ex.w.reshape(-1)[ex.x_terms[i, j]]),
                    float(ex.dy.reshape(-1)[i]))
                   for i in range(len(y_idx)) if ex.x_terms[i, j] >= 0])
    return {"dw": dw, "dx": dx}


def _vector(a: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in np.ravel(a)) + "]"


def lecture_typos(ex: ConvExample) -> list[Typo]:
    """The glitches of the 1-D example's slides, each with the corrected line (evaluated on the
    example's numbers where the line exists for its shapes)."""
    if ex.op != "conv1d":
        raise ValueError(f"the lecture's typos are in its 1-D example, got op {ex.op!r}")
    terms = formula_terms(ex)

    def evaluated(entry_terms, value):
        if not entry_terms:
            return None
        products = " + ".join(f"({a:.4f})({c:.4f})" for _, _, a, c in entry_terms)
        return f"{products} = {value:.4f}"

    def line(lhs, entry_terms):
        return f"{lhs} = " + " + ".join(f"{s}{t}" for s, t, _, _ in entry_terms)

    chain = ex.routes[0]
    typos = [Typo(
        where="forward pass",
        slide="y₁ = w₁x₁ = w₂x₂ + b   (and likewise y₂, y₃)",
        corrected="y₁ = w₁x₁ + w₂x₂ + b,  y₂ = w₁x₂ + w₂x₃ + b,  y₃ = w₁x₃ + w₂x₄ + b",
        value=f"y = {_vector(ex.y)}",
        note="the second '=' is a '+': each output is a sum of two products plus the bias",
    )]
    has_2 = ex.w.size >= 2
    typos.append(Typo(
        where="dw₂",
        slide="dw₂ = x₂dy₂ + x₃dy₃ + x₄dy₄",
        corrected=line("dw₂", terms["dw"][1]) if has_2 else "(w has no second entry here)",
        value=evaluated(terms["dw"][1], chain.dw[1]) if has_2 else None,
        note="dw = dy · ∂y/∂w: on the slide, column 2 of ∂y/∂w is (x₂, x₃, x₄), paired with "
             "(dy₁, dy₂, dy₃); the slide's dy₄ does not even exist (y has 3 entries)",
    ))
    typos.append(Typo(
        where="dx₂",
        slide="dx₂ = w₂dy₁ + w₁dy_w",
        corrected=line("dx₂", terms["dx"][1]),
        value=evaluated(terms["dx"][1], chain.dx[1]),
        note="dx = dy · ∂y/∂x: on the slide, column 2 of ∂y/∂x is (w₂, w₁, 0); 'dy_w' is dy₂",
    ))
    typos.append(Typo(
        where="∂y/∂x (symbolic)",
        slide="a 4×4 matrix with a row ∂y₄/∂x₁ … ∂y₄/∂x₄",
        corrected=f"a {ex.jac_x.shape[0]}×{ex.jac_x.shape[1]} matrix: y has "
                  f"{ex.jac_x.shape[0]} entries (the slide's own numeric matrix is 3×4)",
        value=None,
        note="there is no y₄ for a 4-long input and a 2-long filter without padding",
    ))
    typos.append(Typo(
        where="full-convolution identity",
        slide="dw = [0, dy₁, dy₂, dy₃, 0] * [w₂, w₁]",
        corrected="dx = [0, dy₁, dy₂, dy₃, 0] ⋆ [w₂, w₁] = full-conv(rot180 w, dy)",
        value=f"dx = {_vector(ex.routes[1].dx)}",
        note="the result of the full convolution with the rotated filter is dx, not dw",
    ))
    return typos


# --------------------------------------------------------------------------------------------
# Perceptron.
# --------------------------------------------------------------------------------------------


def perceptron_example(*, x=None, w=None, b=None, t=None) -> PerceptronExample:
    """One sigmoid neuron a = σ(w·x + b) with the squared error L = (a − t)².

    Args:
      x, w: (n,) each; b: the bias; t: the target. Defaults: :data:`DEFAULTS`.
    """
    import jaxconv

    d = DEFAULTS["perceptron"]
    x = _as_array("x", d["x"] if x is None else x, 1)
    w = _as_array("w", d["w"] if w is None else w, 1)
    b = _as_float("b", d["b"] if b is None else b)
    t = _as_float("t", d["t"] if t is None else t)
    if x.shape != w.shape:
        raise ValueError(f"x and w must have the same length (one weight per input), got "
                         f"{x.size} values for x and {w.size} for w")

    # Forward and the chain rule, one local derivative at a time.
    z = float(w @ x + b)
    a = float(1 / (1 + np.exp(-z)))
    loss = (a - t) ** 2
    dl_da = 2 * (a - t)
    da_dz = a * (1 - a)
    dz = dl_da * da_dz
    chain = Grads("chain rule: dL/da · da/dz · ∂z/∂(x, w, b)", dz * w, dz * x, dz)

    def through(ops):
        def loss_fn(x_, w_, b_):
            out = ops.sigmoid(ops.dense(x_, w_[:, None], b_))
            return ops.squared_error(out, jnp.array([t]))[0]

        return jax.grad(loss_fn, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(w),
                                                   jnp.array([b]))

    gx, gw, gb = through(jaxconv)
    rule = Grads("jaxconv.dense/sigmoid/squared_error (their custom_vjp rules)",
                 np.asarray(gx), np.asarray(gw), float(gb[0]))
    gx, gw, gb = through(jaxconv.autodiff)
    auto = Grads("jax.grad (jaxconv.autodiff)", np.asarray(gx), np.asarray(gw),
                 float(gb[0]))
    routes = (chain, rule, auto)
    worst = _max_disagreement(routes)
    return PerceptronExample(
        x=x, w=w, b=b, t=t, z=z, a=a, loss=loss, dl_da=dl_da, da_dz=da_dz, dz=dz, routes=routes,
        agree=worst <= AGREE_ATOL, max_disagreement=worst,
    )
