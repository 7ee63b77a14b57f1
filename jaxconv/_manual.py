"""The lecture's rules for any JAX function: :func:`manual`, :func:`coverage` and
:func:`compare_grads`.

``jaxconv.manual(fun)`` traces ``fun`` to a jaxpr and evaluates it with a table from primitive to
jaxconv op (JAX's "custom jaxpr interpreter" pattern), so a model written in Flax, Equinox,
Haiku or plain ``lax``/``jnp`` is differentiated by the hand-derived rules wherever jaxconv has
one, and by JAX's autodiff everywhere else:

==========================================  =============================================
primitive (what emits it)                   jaxconv op (rule)
==========================================  =============================================
``conv_general_dilated``                    ``jaxconv.conv``: any dimension numbers, strides,
(``lax.conv*``, nn.Conv, eqx.nn.Conv)       (asymmetric, negative) padding, rhs_dilation,
                                            feature groups
``conv_general_dilated`` with lhs_dilation  ``jaxconv.conv_transpose`` (window strides 1)
(``lax.conv_transpose``, nn.ConvTranspose)
``dot_general`` (``@``, einsum, Dense)      ``jaxconv.dot_general``: dx = dy·wᵀ, dw = xᵀ·dy
``reduce_window_max`` (max pooling)         ``jaxconv.max_pool``
``reduce_window_sum`` (avg/sum pooling)     ``jaxconv.avg_pool(...) · |W|``
``custom_jvp_call`` of ``jax.nn.relu``      ``jaxconv.relu``
``custom_jvp_call`` of ``jax.nn.softplus``  ``jaxconv.softplus``
``logistic`` (``jax.nn.sigmoid``)           ``jaxconv.sigmoid``
``tanh``                                    ``jaxconv.tanh``
``neg(reduce_sum(labels · log_softmax))``   ``jaxconv.softmax_cross_entropy`` (probability
(``optax.softmax_cross_entropy``)           labels; four equations, one rule)
==========================================  =============================================

Nested jaxprs (jit, scan, while, cond/switch, remat/checkpoint, closed_call) are rebuilt with the
interpreted inner jaxpr, so the rules apply inside loops and branches. Custom rules are kept:
any other ``custom_jvp_call`` and every ``custom_vjp_call`` (jaxconv's own ops included, so
``manual(manual(f))`` is ``manual(f)``) is bound as it was traced.

Limitations: what the table cannot express exactly stays with autodiff and is listed by
:func:`coverage` with the reason (``batch_group_count > 1``; lhs_dilation together with window
strides; a ``preferred_element_type`` other than the operands' dtype; a non-default conv
precision; pools with base/window dilation or padding not smaller than the window; more than 3
spatial dims). Primitives nested in other higher-order primitives (shard_map, custom rules) are
not rewritten. Non-array arguments (Python numbers, strings, flags) are static: each new value
traces ``fun`` again. Nested jit equations keep their inlining but not their shardings or
donation, and ``fun`` is traced without its inputs' shardings (explicit-sharding code that
depends on them fails to trace). Forward values are jaxconv's ops', equal to the original's
to rounding; one exception is NaN through ``jax.nn.relu``: ``max(NaN, 0)`` is NaN, while
``jaxconv.relu`` (``where(x > 0, x, 0)``) gives 0.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _interpret

_CACHE_SIZE = 64


# --------------------------------------------------------------------------------------------
# Tracing: a function and its arguments -> (jaxpr, output structure), cached per signature.
# --------------------------------------------------------------------------------------------


class _Same:
    """Keys an unhashable static argument by identity (and keeps it alive with the entry)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Same) and other.value is self.value


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def _static_key(leaf):
    try:
        hash(leaf)
    except TypeError:
        return _Same(leaf)
    return (type(leaf), leaf)


def _aval(leaf):
    aval = jax.typeof(leaf)
    dtype = jax.dtypes.canonicalize_dtype(aval.dtype, allow_extended_dtype=True)  # PRNG keys
    return jax.ShapeDtypeStruct(aval.shape, dtype, weak_type=getattr(aval, "weak_type", False))


class _Traced(NamedTuple):
    jaxpr: Any                       # the ClosedJaxpr of fun on these argument types
    out_tree: Any                    # the structure of fun's output
    interpreter: _interpret.Interpreter


def _split(fun, args, kwargs):
    """Leaves of (fun, args, kwargs): arrays are the jaxpr's inputs, the rest is static."""
    leaves, treedef = jax.tree_util.tree_flatten((fun, args, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    return leaves, treedef, dynamic


def _trace(leaves, treedef, dynamic, feedback=None) -> _Traced:
    out_tree = []

    def flat(*arrays):
        filled = list(leaves)
        for i, a in zip(dynamic, arrays, strict=True):
            filled[i] = a
        fun, args, kwargs = jax.tree_util.tree_unflatten(treedef, filled)
        out_leaves, tree = jax.tree_util.tree_flatten(fun(*args, **kwargs))
        out_tree.append(tree)
        return out_leaves

    closed = jax.make_jaxpr(flat)(*(_aval(leaves[i]) for i in dynamic))
    return _Traced(closed, out_tree[0], _interpret.Interpreter(feedback, closed.jaxpr))


class _Cache:
    """The traced jaxprs of one function, keyed by input signature (structure, array types,
    static values); least recently used first out."""

    def __init__(self, size: int = _CACHE_SIZE, feedback: Any = None):
        self.entries: collections.OrderedDict = collections.OrderedDict()
        self.size = size
        self.feedback = feedback  # the manual function's feedback rule, for every trace
        self.traces = 0  # how often fun was traced (for tests and curiosity)

    def get(self, leaves, treedef, dynamic) -> _Traced:
        arrays = set(dynamic)
        key = (treedef, tuple(
            _aval(leaf) if i in arrays else _static_key(leaf) for i, leaf in enumerate(leaves)
        ))
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        traced = _trace(leaves, treedef, dynamic, self.feedback)
        self.traces += 1
        # A jaxpr whose constants are another transformation's tracers (fun closed over them)
        # is valid only now: use it, never cache it.
        if not any(isinstance(c, jax.core.Tracer) for c in traced.jaxpr.consts):
            self.entries[key] = traced
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return traced


def _check_callable(fun, caller: str) -> None:
    if not callable(fun):
        raise TypeError(f"{caller}: fun must be callable (a function of arrays), got "
                        f"{type(fun).__name__} {fun!r:.60}")


def _name(fun) -> str:
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or repr(fun)


# --------------------------------------------------------------------------------------------
# jaxconv.manual
# --------------------------------------------------------------------------------------------


def manual(fun: Callable, *, feedback: Any = None) -> Callable:
    """``fun`` with every primitive that has a hand-derived rule running jaxconv's op.

    The returned function has ``fun``'s signature and outputs (values equal to rounding); its
    gradients are the lecture's rules for convolutions, dense products, pools and activations
    (see the table in :mod:`jaxconv._manual`) and JAX's autodiff for everything else. It composes
    with ``jit``, ``grad``, ``value_and_grad``, ``vmap`` and ``jax.hessian``, in either order.
    ``fun`` is traced once per input signature (argument structure, array shapes and dtypes,
    values of non-array arguments) and the rewrite happens at trace time, so under ``jit`` it
    costs nothing per step.

    Args:
      fun: a function of pytrees of arrays (e.g. a loss ``loss(params, x, y)``). A callable
        pytree (an Equinox module) is fine: its arrays are inputs too.
      feedback: the feedback rule (:mod:`jaxconv.feedback`) of every convolution
        (``conv_general_dilated``, transposed ones included) and every ``dot_general`` that
        runs jaxconv's op: ``None`` (backprop), or a rule for every layer, e.g.
        ``jaxconv.feedback.sign`` or ``jaxconv.feedback.random(key)`` (not an array: one array
        cannot fit every layer). Each such primitive instance ``i`` (numbered in program order,
        depth first into jit, scan, while, cond, remat; see
        :func:`jaxconv._interpret.weighted_instances`) runs with
        ``jaxconv.feedback.per_layer(feedback, i)``: random feedback gives each instance its
        own fixed matrix from the one key, the same on every call. A ``dot_general``'s weight
        is its *rhs* operand (``x @ w``, Flax's Dense, ``jnp.einsum("bi,io", x, w)``): its
        feedback changes the lhs' gradient. Equinox's ``Linear`` computes ``w @ x`` (its weight
        is the lhs), so there the rule would replace the input instead: not supported.
        An instance inside a ``scan`` or ``while`` body is one instance: every iteration
        shares its matrix (a scan over stacked layers gives them one B between them).
        Instances that stay with autodiff (:func:`coverage`'s ``unmapped``) keep backprop;
        ``jaxconv.feedback.layers(fun, *args)`` lists those that get the rule, by index.

    Returns:
      A function with the same signature and outputs. ``manual(manual(f))`` is ``manual(f)``;
      ``manual(manual(f), feedback=r)`` is ``manual(f, feedback=r)``.

    Example::

        grads = jax.grad(jaxconv.manual(loss))(params, x, y)   # the hand-derived rules
        jaxconv.coverage(loss, params, x, y)                    # what ran which rule
        fa = jaxconv.manual(loss, feedback=jaxconv.feedback.random(0))   # feedback alignment
    """
    _check_callable(fun, "manual")
    if feedback is not None:
        from jaxconv.feedback import per_layer

        per_layer(feedback, 0)  # the rule must hold for every layer: early, jaxconv's error
    if getattr(fun, "_jaxconv_manual", False):
        if feedback is fun._jaxconv_cache.feedback:
            return fun
        fun = fun._jaxconv_fun  # re-wrap the original with this rule
    cache = _Cache(feedback=feedback)

    @functools.wraps(fun)
    def manual_fun(*args, **kwargs):
        leaves, treedef, dynamic = _split(fun, args, kwargs)
        traced = cache.get(leaves, treedef, dynamic)
        closed = traced.jaxpr
        outs = traced.interpreter.eval(closed.jaxpr, closed.consts, *(leaves[i] for i in dynamic))
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)

    manual_fun._jaxconv_manual = True
    manual_fun._jaxconv_cache = cache
    manual_fun._jaxconv_fun = fun
    return manual_fun


# --------------------------------------------------------------------------------------------
# jaxconv.coverage
# --------------------------------------------------------------------------------------------


class Unmapped(NamedTuple):
    """One primitive instance of a kind jaxconv has a rule for, left to autodiff."""

    kind: str
    reason: str
    where: str  # the source line that emitted it, where JAX recorded one


@dataclasses.dataclass(frozen=True)
class Coverage:
    """What :func:`manual` does to a function on given arguments (nested jaxprs counted).

    Attributes:
      manual: kind -> instances that run a hand-derived rule (kinds are primitive names, plus
        ``relu`` and ``softplus`` for ``jax.nn``'s custom_jvp functions,
        ``softmax_cross_entropy`` for optax's (several equations) and ``jaxconv.<op>`` for
        jaxconv's own ops already in ``fun``).
      unmapped: each instance of a kind with a rule that stays with autodiff, with the reason.
        Empty when every such primitive runs a hand-derived rule.
      autodiff: primitive -> differentiable instances jaxconv has no rule for (add, exp, ...).
      kept: custom rules kept as they are (``custom_jvp_call[name]``, ``custom_vjp_call``).
    """

    manual: dict[str, int]
    unmapped: tuple[Unmapped, ...]
    autodiff: dict[str, int]
    kept: dict[str, int]

    @property
    def n_manual(self) -> int:
        """Instances running a hand-derived rule."""
        return sum(self.manual.values())

    def __str__(self) -> str:
        left = collections.Counter(u.kind for u in self.unmapped)
        kinds = sorted(set(self.manual) | set(left))
        width = max([len(k) for k in kinds] + [len("primitive")])
        lines = [f"{'primitive':<{width}}  hand-derived rule  autodiff"]
        for kind in kinds:
            lines.append(f"{kind:<{width}}  {self.manual.get(kind, 0):>17}  {left[kind]:>8}")
        if not kinds:
            lines.append("(no primitive with a hand-derived rule)")
        reasons = collections.Counter((u.kind, u.reason, u.where) for u in self.unmapped)
        if reasons:
            lines.append("left to autodiff:")
            for (kind, reason, where), n in reasons.items():
                at = f" at {where}" if where else ""
                lines.append(f"  {n} × {kind}: {reason}{at}")
        if self.kept:
            kept = ", ".join(f"{k} {n}" for k, n in sorted(self.kept.items()))
            lines.append(f"custom rules kept: {kept}")
        if self.autodiff:
            other = ", ".join(f"{k} {n}" for k, n in sorted(self.autodiff.items()))
            lines.append(f"other differentiable primitives (autodiff): {other}")
        return "\n".join(lines)


def _describe(args, kwargs) -> str:
    def one(leaf):
        if _is_array(leaf):
            return f"{jnp.dtype(leaf.dtype).name}{list(np.shape(leaf))}"
        return f"{leaf!r:.30}"

    parts = [str(jax.tree_util.tree_map(one, a)) for a in args]
    parts += [f"{k}={jax.tree_util.tree_map(one, v)}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 200 else text[:197] + "..."


def _bind(fun, args, kwargs, caller: str) -> None:
    """Check that fun takes these arguments; jaxconv's own one-line TypeError/ValueError."""
    try:
        signature = inspect.signature(fun)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{caller}: {_name(fun)} cannot take the arguments "
                            f"({_describe(args, kwargs)}): {err}") from None


def _traced(fun, args, kwargs, caller: str) -> _Traced:
    _check_callable(fun, caller)
    _bind(fun, args, kwargs, caller)
    leaves, treedef, dynamic = _split(fun, args, kwargs)
    try:
        return _trace(leaves, treedef, dynamic)
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise type(err)(f"{caller}: {_name(fun)} fails on the arguments "
                        f"({_describe(args, kwargs)}): {first}") from err


def coverage(fun: Callable, *args: Any, **kwargs: Any) -> Coverage:
    """Report what :func:`manual` does to ``fun`` on these arguments.

    Args:
      fun: the function, as it would be passed to :func:`manual`.
      *args, **kwargs: example arguments (arrays, or anything ``fun`` takes); only their shapes
        and dtypes matter (and the values of non-array arguments).

    Returns:
      A :class:`Coverage`: per primitive kind, how many instances run a hand-derived rule and
      which stay with autodiff and why; ``str(report)`` is a table. For example
      ``assert not jaxconv.coverage(loss, params, x, y).unmapped``.

    Raises:
      TypeError / ValueError: ``fun`` is not callable, cannot take these arguments, or fails
        on them (one line naming the arguments).
    """
    closed = _traced(fun, args, kwargs, "coverage").jaxpr
    tally = _interpret.Tally(collections.Counter(), [], collections.Counter(),
                             collections.Counter())
    _interpret.walk(closed.jaxpr, tally)
    return Coverage(
        manual=dict(tally.manual),
        unmapped=tuple(Unmapped(*u) for u in tally.unmapped),
        autodiff=dict(tally.autodiff),
        kept=dict(tally.kept),
    )


# --------------------------------------------------------------------------------------------
# jaxconv.compare_grads
# --------------------------------------------------------------------------------------------


class GradComparison(NamedTuple):
    """Hand-derived against automatic gradients, leaf by leaf.

    Attributes:
      errors: shaped like ``jax.grad(fun, argnums)``'s output, one float per leaf:
        max |g_manual − g_autodiff| / max |g_autodiff| over that leaf (the absolute difference
        where the autodiff gradient is all zero).
      max_error: the largest of ``errors`` (0.0 when there are no leaves).
      scales: shaped like ``errors``: max |g_autodiff| of each leaf, the scale each error is
        relative to (a 0.0 here flags a gradient that is identically zero, which compares
        equal trivially).
    """

    errors: Any
    max_error: float
    scales: Any


def _scale(autodiff_grad) -> float:
    return float(jnp.max(jnp.abs(autodiff_grad), initial=0.0))


def _relative(manual_grad, autodiff_grad) -> float:
    diff = float(jnp.max(jnp.abs(manual_grad - autodiff_grad), initial=0.0))
    scale = _scale(autodiff_grad)
    return diff / scale if scale > 0 else diff


def compare_grads(fun: Callable, *args: Any, argnums: int | tuple[int, ...] = 0,
                  **kwargs: Any) -> GradComparison:
    """Compare ``jax.grad(manual(fun))`` with ``jax.grad(fun)`` on these arguments.

    Both gradients are computed under ``jit`` (non-array arguments static) in the arguments'
    own dtype; use float64 inputs for a comparison limited by the rules, not by rounding.

    Args:
      fun: a scalar-valued function, e.g. ``loss(params, x, y)``.
      *args, **kwargs: its arguments.
      argnums: which positional arguments to differentiate, as in ``jax.grad``.

    Returns:
      A :class:`GradComparison` ``(errors, max_error, scales)``; ``errors`` and ``scales``
      have the structure of ``jax.grad(fun, argnums)(*args, **kwargs)``, one float per leaf.

    Example::

        report = jaxconv.compare_grads(loss, params, x, y)
        assert report.max_error < 1e-10          # float64
    """
    _traced(fun, args, kwargs, "compare_grads")  # early, one-line errors for bad arguments
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

    def grads(f, arrays):
        filled = list(leaves)
        for i, a in zip(dynamic, arrays, strict=True):
            filled[i] = a
        a, k = jax.tree_util.tree_unflatten(treedef, filled)
        return jax.grad(f, argnums)(*a, **k)

    arrays = [leaves[i] for i in dynamic]
    g_manual = jax.jit(functools.partial(grads, manual(fun)))(arrays)
    g_autodiff = jax.jit(functools.partial(grads, fun))(arrays)
    errors = jax.tree_util.tree_map(_relative, g_manual, g_autodiff)
    return GradComparison(errors, max(jax.tree_util.tree_leaves(errors), default=0.0),
                          jax.tree_util.tree_map(_scale, g_autodiff))
