"""From a JAX primitive to jaxconv's op: one handler per primitive that has a hand-derived rule.

Each handler reads one equation of a jaxpr (its parameters and the abstract values of its
operands) and returns a *plan*:

- :class:`Mapped`: the equation is computed by ``run(*operands)``, which normalises the
  primitive's parameters and calls jaxconv's public op (so there is one validation path and one
  forward, and the gradient is the op's hand-derived rule);
- :class:`Unmapped`: the primitive is of a kind jaxconv has a rule for, but this instance cannot
  be expressed by the op; it stays with JAX's autodiff, and ``reason`` says why;
- ``None``: nothing to do here (the equation is bound as it is).

The handlers never approximate: whatever they cannot map exactly is :class:`Unmapped`.
:mod:`jaxconv._interpret` holds the table from primitive to handler and evaluates jaxprs with it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal

from jaxconv.ops import activations, conv, dense, losses, pool
from jaxconv.ops.conv import rot180_transpose


class Mapped(NamedTuple):
    """``kind`` (a primitive, or ``relu``/``softplus``) runs jaxconv's ``op`` via ``run``."""

    kind: str
    op: str
    run: Callable[..., Any]


#: The kinds whose op has a weight (the rhs operand): ``manual(fun, feedback=...)`` passes the
#: feedback rule to their ``run`` (``run(*operands, feedback=rule)``).
WEIGHTED = frozenset({"conv_general_dilated", "dot_general"})


class Unmapped(NamedTuple):
    """``kind`` has a hand-derived rule in general, but this instance stays with autodiff."""

    kind: str
    reason: str


def _floating(*avals) -> bool:
    return all(jnp.issubdtype(a.dtype, jnp.floating) for a in avals)


def _dtype_problem(eqn, kind: str) -> Unmapped | None:
    """Operands of one floating dtype, and an output of that dtype (preferred_element_type)."""
    avals = [v.aval for v in eqn.invars]
    if len({a.dtype for a in avals}) > 1:
        dtypes = ", ".join(str(a.dtype) for a in avals)
        return Unmapped(kind, f"operands of different dtypes ({dtypes})")
    preferred = eqn.params.get("preferred_element_type")
    if preferred is not None and np.dtype(preferred) != avals[0].dtype:
        return Unmapped(
            kind, f"preferred_element_type={np.dtype(preferred)} differs from the operands' "
            f"{avals[0].dtype} (jaxconv's ops compute in their inputs' dtype)"
        )
    return None


def _default_precision(precision) -> bool:
    if precision is None:
        return True
    values = precision if isinstance(precision, tuple) else (precision,)
    return all(p is None or p == lax.Precision.DEFAULT for p in values)


# --------------------------------------------------------------------------------------------
# conv_general_dilated -> jaxconv.conv (or jaxconv.conv_transpose for lhs_dilation > 1)
# --------------------------------------------------------------------------------------------


def _conv_layouts(dimension_numbers, nd: int):
    """Permutations into channels-last x (N, *S, C), w (*K, I, O), and from y (N, *O, C) back."""
    lhs, rhs, out = dimension_numbers
    to_x = (lhs[0], *lhs[2:], lhs[1])
    to_w = (*rhs[2:], rhs[1], rhs[0])
    back = [0] * (nd + 2)
    back[out[0]], back[out[1]] = 0, nd + 1
    for i, axis in enumerate(out[2:]):
        back[axis] = 1 + i
    return to_x, to_w, tuple(back)


def conv_general_dilated(eqn) -> Mapped | Unmapped:
    """``lax.conv_general_dilated`` -> ``jaxconv.conv`` / ``jaxconv.conv_transpose``.

    Channels-last by ``jnp.transpose`` in and out (any dimension numbers); window strides,
    explicit padding, rhs_dilation and feature_group_count map onto the op's ``stride``,
    ``padding``, ``dilation`` and ``groups``. Negative padding crops the input first. An
    ``lhs_dilation`` (a transposed convolution) maps onto ``conv_transpose`` (see
    :func:`_transposed`).
    """
    kind = "conv_general_dilated"
    p = eqn.params
    x_aval, w_aval = (v.aval for v in eqn.invars)
    nd = x_aval.ndim - 2
    if problem := _dtype_problem(eqn, kind):
        return problem
    if p["batch_group_count"] != 1:
        return Unmapped(kind, f"batch_group_count={p['batch_group_count']} (a convolution that "
                              "groups the batch; jaxconv.conv has no such mode)")
    if not 1 <= nd <= 3:
        return Unmapped(kind, f"{nd} spatial dimensions (jaxconv.conv takes 1 to 3)")
    if not _default_precision(p["precision"]):
        return Unmapped(kind, f"precision={p['precision']} (jaxconv.conv runs at the default)")
    to_x, to_w, back = _conv_layouts(p["dimension_numbers"], nd)
    if any(a > 1 for a in p["lhs_dilation"]):
        return _transposed(eqn, to_x, to_w, back)
    stride, dilation = tuple(p["window_strides"]), tuple(p["rhs_dilation"])
    groups = p["feature_group_count"]
    crop = tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in p["padding"])
    padding = tuple((max(lo, 0), max(hi, 0)) for lo, hi in p["padding"])

    def run(x, w, feedback=None):
        x, w = jnp.transpose(x, to_x), jnp.transpose(w, to_w)
        if any(lo or hi for lo, hi in crop):  # negative padding: drop those inputs first
            start = (0, *(lo for lo, _ in crop), 0)
            limit = (x.shape[0], *(n - hi for n, (_, hi) in zip(x.shape[1:-1], crop, strict=True)),
                     x.shape[-1])
            x = lax.slice(x, start, limit)
        y = conv.conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      feedback=feedback)
        return jnp.transpose(y, back)

    return Mapped(kind, "jaxconv.conv", run)


def _transposed(eqn, to_x, to_w, back) -> Mapped | Unmapped:
    """A convolution with lhs_dilation a, padding (Lo, Hi), rhs_dilation d and kernel v (HWIO).

    Per spatial dimension it computes y[o] = Σ_k v[k] · x_a[o − Lo + k·d], x_a being x dilated
    by a. ``conv_transpose(x, w, stride=a, dilation=d, padding=(lo, hi))`` is the lecture's dX
    rule of the convolution it transposes: y[o] = Σ_j rot180(w)[j] · x_a[o + lo − d(K−1) + j·d].
    The two agree with v = rot180(w), channels swapped group by group (that map is its own
    inverse, so w = rot180_transpose(v)), and lo = d(K−1) − Lo, hi = d(K−1) − Hi. A negative
    lo (or hi) means more padding than a full correlation: those outputs see only zeros, so the
    op runs with 0 and the output is zero-padded by −lo (−hi).
    """
    kind = "conv_general_dilated"
    p = eqn.params
    import jaxconv

    conv_transpose = getattr(jaxconv, "conv_transpose", None)
    if conv_transpose is None:
        return Unmapped(kind, "lhs_dilation > 1 needs jaxconv.conv_transpose, not available")
    if any(s != 1 for s in p["window_strides"]):
        return Unmapped(kind, f"lhs_dilation={p['lhs_dilation']} together with window_strides="
                              f"{p['window_strides']} (not a transposed convolution)")
    stride, dilation = tuple(p["lhs_dilation"]), tuple(p["rhs_dilation"])
    groups = p["feature_group_count"]
    kernel = [eqn.invars[1].aval.shape[a] for a in to_w[:-2]]
    full = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    pads = [(f - lo, f - hi) for f, (lo, hi) in zip(full, p["padding"], strict=True)]
    padding = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
    zeros = tuple((max(-lo, 0), max(-hi, 0), 0) for lo, hi in pads)
    sizes = [eqn.invars[0].aval.shape[a] for a in to_x[1:-1]]
    for n, a, f, (lo, hi) in zip(sizes, stride, full, padding, strict=True):
        if (n - 1) * a + f + 1 - lo - hi < 1:
            return Unmapped(kind, f"padding {tuple(p['padding'])}: every output sees only "
                                  "padding (conv_transpose would have no output)")

    def run(x, v, feedback=None):
        x, v = jnp.transpose(x, to_x), jnp.transpose(v, to_w)
        w = rot180_transpose(v, groups)
        y = conv_transpose(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                           feedback=feedback)
        if any(lo or hi for lo, hi, _ in zeros):
            y = lax.pad(y, jnp.zeros((), y.dtype), ((0, 0, 0), *zeros, (0, 0, 0)))
        return jnp.transpose(y, back)

    return Mapped(kind, "jaxconv.conv_transpose", run)


# --------------------------------------------------------------------------------------------
# dot_general -> jaxconv.dot_general
# --------------------------------------------------------------------------------------------


def dot_general(eqn) -> Mapped | Unmapped:
    """``lax.dot_general`` (any contracting and batch axes) -> ``jaxconv.dot_general``.

    The rhs operand plays w (its feedback rule is the one that changes the lhs' gradient)."""
    kind = "dot_general"
    if problem := _dtype_problem(eqn, kind):
        return problem
    precision = eqn.params["precision"]
    numbers = eqn.params["dimension_numbers"]

    def run(x, w, feedback=None):
        return dense.dot_general(x, w, numbers, precision=precision, feedback=feedback)

    return Mapped(kind, "jaxconv.dot_general", run)


# --------------------------------------------------------------------------------------------
# reduce_window_max / reduce_window_sum -> jaxconv.max_pool / jaxconv.avg_pool · |W|
# --------------------------------------------------------------------------------------------


def _pool(eqn, kind: str, op: str, pool_op: Callable, scale: bool) -> Mapped | Unmapped:
    """A window over some axes of x: those become the pool's spatial dims, the others its batch
    (all but the last, flattened) and channel (the last) dims."""
    p = eqn.params
    ndim = eqn.invars[0].aval.ndim
    if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
        return Unmapped(kind, "base or window dilation (jaxconv's pools have none)")
    window, strides, pads = p["window_dimensions"], p["window_strides"], p["padding"]
    spatial = [a for a in range(ndim) if window[a] != 1 or strides[a] != 1 or pads[a] != (0, 0)]
    if not 1 <= len(spatial) <= 3:
        return Unmapped(kind, f"a window over {len(spatial)} axes (jaxconv's pools take 1 to 3)")
    if any(lo >= window[a] or hi >= window[a] for a in spatial for lo, hi in [pads[a]]):
        return Unmapped(kind, f"padding {tuple(pads)} not smaller than the window {window}")
    others = [a for a in range(ndim) if a not in spatial]
    lead, chan = others[:-1], others[-1:]
    perm = (*lead, *spatial, *chan)
    kw = dict(stride=tuple(strides[a] for a in spatial), padding=tuple(pads[a] for a in spatial))
    win = tuple(window[a] for a in spatial)
    size = math.prod(win)

    def run(x):
        xt = jnp.transpose(x, perm)
        shape = xt.shape
        n, c = math.prod(shape[: len(lead)]), math.prod(shape[len(perm) - len(chan):])
        y = pool_op(xt.reshape(n, *(x.shape[a] for a in spatial), c), win, **kw)
        y = y.reshape(*shape[: len(lead)], *y.shape[1:-1], *shape[len(perm) - len(chan):])
        y = y * size if scale else y
        return jnp.transpose(y, np.argsort(perm))

    return Mapped(kind, op, run)


def reduce_window_max(eqn) -> Mapped | Unmapped:
    """``reduce_window_max`` -> ``jaxconv.max_pool`` (padding with −∞, as lax pads it)."""
    return _pool(eqn, "reduce_window_max", "jaxconv.max_pool", pool.max_pool, scale=False)


def reduce_window_sum(eqn) -> Mapped | Unmapped:
    """``reduce_window_sum`` -> ``jaxconv.avg_pool · |W|`` (zero padding counts, as in lax)."""
    return _pool(eqn, "reduce_window_sum", "jaxconv.avg_pool", pool.avg_pool, scale=True)


# --------------------------------------------------------------------------------------------
# Activations: logistic, tanh, and jax.nn.relu / jax.nn.softplus (custom_jvp_call)
# --------------------------------------------------------------------------------------------


def _elementwise(kind: str, op: str, fn: Callable):
    def handler(eqn) -> Mapped | Unmapped:
        if eqn.params.get("accuracy") is not None:
            return Unmapped(kind, f"accuracy={eqn.params['accuracy']} (jaxconv uses the default)")
        return Mapped(kind, op, fn)

    handler.__doc__ = f"``{kind}`` -> ``{op}``."
    return handler


logistic = _elementwise("logistic", "jaxconv.sigmoid", activations.sigmoid)
tanh = _elementwise("tanh", "jaxconv.tanh", activations.tanh)


def _is_max_zero(closed) -> bool:
    """Whether a jaxpr computes max(x, 0), possibly inside one jit (jax.nn.relu's body)."""
    eqns = closed.jaxpr.eqns
    if len(eqns) != 1:
        return False
    (eqn,) = eqns
    if eqn.primitive.name == "jit":
        return _is_max_zero(eqn.params["jaxpr"])
    return eqn.primitive.name == "max" and any(_is_zero(v) for v in eqn.invars)


def _is_zero(atom) -> bool:
    return isinstance(atom, Literal) and np.shape(atom.val) == () and atom.val == 0


def _softplus_of(index: int, *operands):
    return activations.softplus(operands[index])


def _source(eqn) -> str:
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    return getattr(info, "func_src_info", None) or ""


def custom_jvp_name(eqn) -> str:
    """The name of the function a custom_jvp_call runs ("relu at .../functions.py:71")."""
    return _source(eqn).split(" ")[0] or "?"


def _from_jax(eqn) -> bool:
    return re.search(r"[\\/]jax[\\/]_src[\\/]", _source(eqn)) is not None


def custom_jvp_call(eqn) -> Mapped | None:
    """``jax.nn.relu`` (custom_jvp_call "relu" of max(x, 0)) -> ``jaxconv.relu``;
    ``jax.nn.softplus`` (custom_jvp_call "logaddexp" of x and a literal 0) -> ``jaxconv.softplus``.
    Any other custom_jvp_call keeps its own rule (``None``)."""
    name = custom_jvp_name(eqn)
    if not _from_jax(eqn):  # a user's own rule, even if it is called relu
        return None
    out = eqn.outvars[0].aval
    if not _floating(out):
        return None
    if name == "relu" and len(eqn.invars) == 1 and _is_max_zero(eqn.params["call_jaxpr"]):
        return Mapped("relu", "jaxconv.relu", activations.relu)
    if name == "logaddexp" and len(eqn.invars) == 2:
        a, b = eqn.invars
        for index, (x, zero) in enumerate(((a, b), (b, a))):
            if _is_zero(zero) and x.aval.shape == out.shape and x.aval.dtype == out.dtype:
                return Mapped("softplus", "jaxconv.softplus",
                              functools.partial(_softplus_of, index))
    return None


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy: four equations, one rule
# --------------------------------------------------------------------------------------------


class Fused(NamedTuple):
    """Several equations of one jaxpr computed together by one op: ``plan.run(*inputs)`` gives
    the output of the equation at ``covered[-1]``; the other ``covered`` equations (whose results
    nothing else reads) are not evaluated."""

    plan: Mapped
    inputs: tuple
    covered: tuple[int, ...]


def _log_softmax_axis(eqn) -> int | None:
    """The axis of a ``jax.nn.log_softmax(x, axis)`` call: a jit named ``log_softmax`` of one
    floating array whose body is exactly what ``jax.nn.log_softmax`` traces to for that axis
    (so a user's own function of that name, or one with ``where=``, is not taken for it)."""
    if (eqn.primitive.name != "jit" or eqn.params.get("name") != "log_softmax"
            or len(eqn.invars) != 1 or len(eqn.outvars) != 1):
        return None
    x = eqn.invars[0].aval
    body = eqn.params["jaxpr"]
    reductions = [e for e in body.jaxpr.eqns if e.primitive.name == "reduce_sum"]
    axes = reductions[0].params["axes"] if len(reductions) == 1 else ()
    if not _floating(x) or len(axes) != 1:
        return None
    (axis,) = axes
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=x.weak_type)
    reference = jax.make_jaxpr(functools.partial(jax.nn.log_softmax, axis=axis))(spec)
    if len(reference.eqns) != 1 or not _same_computation(reference.eqns[0].params["jaxpr"],
                                                         body):
        return None
    return axis


def _same_computation(a, b) -> bool:
    """Whether two closed jaxprs (without nested jaxprs) compute the same thing the same way:
    the same primitives with equal parameters (``np.int64(1) == 1``: vmap leaves numpy ints in
    ``axes``), wired identically, with equal literals."""
    if a.consts or b.consts:
        return False
    a, b = a.jaxpr, b.jaxpr
    if len(a.eqns) != len(b.eqns) or len(a.invars) != len(b.invars):
        return False
    names = dict(zip(a.invars, b.invars, strict=True))

    def same(u, v) -> bool:
        if isinstance(u, Literal) or isinstance(v, Literal):
            return (isinstance(u, Literal) and isinstance(v, Literal) and u.aval == v.aval
                    and bool(np.array_equal(u.val, v.val)))
        return names.get(u) is v

    for ea, eb in zip(a.eqns, b.eqns, strict=True):
        if (ea.primitive is not eb.primitive or ea.params.keys() != eb.params.keys()
                or len(ea.invars) != len(eb.invars) or len(ea.outvars) != len(eb.outvars)):
            return False
        try:
            if not all(bool(ea.params[k] == eb.params[k]) for k in ea.params):
                return False
        except Exception:  # parameters that do not compare (arrays, jaxprs): not the same
            return False
        if not all(same(u, v) for u, v in zip(ea.invars, eb.invars, strict=True)):
            return False
        if any(u.aval != v.aval for u, v in zip(ea.outvars, eb.outvars, strict=True)):
            return False
        names.update(zip(ea.outvars, eb.outvars, strict=True))
    return len(a.outvars) == len(b.outvars) and all(
        same(u, v) for u, v in zip(a.outvars, b.outvars, strict=True))


def _softmax_cross_entropy_on(axis: int, logits, labels):
    return losses.softmax_cross_entropy(jnp.moveaxis(logits, axis, -1),
                                        jnp.moveaxis(labels, axis, -1))


def softmax_cross_entropy(jaxpr) -> list[Fused]:
    """``−Σ_axis labels · jax.nn.log_softmax(logits, axis)`` -> ``jaxconv.softmax_cross_entropy``.

    This is optax's ``softmax_cross_entropy(logits, labels)`` (probability labels, no ``where``)
    as it reaches the jaxpr, and the same loss written by hand:

        c = jit[name=log_softmax] logits      (jax.nn.log_softmax, see _log_softmax_axis)
        m = mul labels c                      (either operand order; labels of logits' shape)
        n = reduce_sum[axes=(axis,)] m
        o = neg n

    Matched only when c, m and n are read by nothing else, so the four equations can be
    replaced by the op, whose rule is dlogits = dL·(softmax·Σ labels − labels),
    dlabels = −dL·log softmax.
    """
    eqns = jaxpr.eqns
    uses: dict[Any, int] = {}
    for atom in [v for e in eqns for v in e.invars] + list(jaxpr.outvars):
        if not isinstance(atom, Literal):
            uses[atom] = uses.get(atom, 0) + 1
    producer = {v: i for i, e in enumerate(eqns) for v in e.outvars}

    def made_by(atom, name: str) -> int | None:
        """The index of the equation named ``name`` that makes ``atom``, read only once."""
        i = None if isinstance(atom, Literal) else producer.get(atom)
        if i is None or eqns[i].primitive.name != name or uses.get(atom) != 1:
            return None
        return i

    found = []
    for i_neg, neg in enumerate(eqns):
        if neg.primitive.name != "neg":
            continue
        i_sum = made_by(neg.invars[0], "reduce_sum")
        if i_sum is None or len(eqns[i_sum].params["axes"]) != 1:
            continue
        (axis,) = eqns[i_sum].params["axes"]
        i_mul = made_by(eqns[i_sum].invars[0], "mul")
        if i_mul is None:
            continue
        a, b = eqns[i_mul].invars
        for logp, labels in ((a, b), (b, a)):
            i_log = made_by(logp, "jit")
            if (i_log is None or _log_softmax_axis(eqns[i_log]) != axis
                    or labels.aval.shape != logp.aval.shape
                    or labels.aval.dtype != logp.aval.dtype):
                continue
            run = functools.partial(_softmax_cross_entropy_on, axis)
            found.append(Fused(
                Mapped("softmax_cross_entropy", "jaxconv.softmax_cross_entropy", run),
                (eqns[i_log].invars[0], labels), (i_log, i_mul, i_sum, i_neg)))
            break
    return found
