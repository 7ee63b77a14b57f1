"""The jaxpr interpreter behind :func:`jaxconv.manual` and :func:`jaxconv.coverage`.

JAX's documented pattern for a custom interpreter: trace the function to a jaxpr, then evaluate
the jaxpr's equations one by one, doing something else for the primitives of interest. Here
"something else" is one entry of :data:`TABLE`, the one place that says what happens to a
primitive:

- a *rule* handler (:mod:`jaxconv._rules`) plans the equation: compute it with jaxconv's op
  (whose gradient is the hand-derived rule), or leave it to autodiff with a reason;
- a *nested* handler rebuilds a higher-order primitive (jit, scan, while, cond, remat) with the
  public JAX function that made it, around the interpreted inner jaxpr, so the rules apply
  inside loops and branches too.

A few rules cover several equations at once: :data:`FUSED` lists the pattern finders
(``_rules.softmax_cross_entropy``: optax's softmax cross-entropy, four equations), each
matched once per jaxpr and computed by one op at the pattern's last equation.

Everything else (and every custom_jvp/custom_vjp rule that is not jax.nn.relu or softplus,
jaxconv's own ops included) is bound exactly as it was traced. :func:`walk` visits the same
equations without evaluating them, to count what the interpreter would do.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import DropVar, Literal, jaxprs_in_params
from jax.extend.core import primitives as P

from jaxconv import _rules
from jaxconv._rules import Mapped, Unmapped
from jaxconv.feedback import per_layer


class Nested(NamedTuple):
    """A higher-order primitive: ``rebuild(interpreter, eqn, operands, at)`` and its jaxprs.

    ``at`` is the equation's path (see :meth:`Interpreter.eval`); its j-th jaxpr (in the order
    ``jaxprs`` lists them) is evaluated at ``at + (j,)``."""

    rebuild: Callable[..., list]
    jaxprs: Callable[[Any], list]  # eqn -> the (open) jaxprs it runs, for walk()


def _inner(closed):
    return closed.jaxpr if hasattr(closed, "jaxpr") else closed


def _jit(interp, eqn, operands, at):
    """jit: the interpreted body under ``jax.jit`` (built once per equation, so cached)."""
    return interp.jitted(eqn, at)(*operands)


def _remat(interp, eqn, operands, at):
    """remat / checkpoint: ``jax.checkpoint`` of the interpreted body, same policy."""
    p = eqn.params
    body = functools.partial(interp.eval, p["jaxpr"], (), at=(*at, 0))
    return jax.checkpoint(body, prevent_cse=p["prevent_cse"], policy=p["policy"])(*operands)


def _scan(interp, eqn, operands, at):
    """scan: ``lax.scan`` of the interpreted body over the same consts, carry and xs."""
    p = eqn.params
    nc, nk, closed = p["num_consts"], p["num_carry"], p["jaxpr"]
    consts, init, xs = operands[:nc], operands[nc:nc + nk], operands[nc + nk:]

    def body(carry, x):
        out = interp.eval(closed.jaxpr, closed.consts, *consts, *carry, *x, at=(*at, 0))
        return out[:nk], out[nk:]

    carry, ys = lax.scan(body, list(init), list(xs), length=p["length"], reverse=p["reverse"],
                         unroll=p["unroll"])
    return [*carry, *ys]


def _while(interp, eqn, operands, at):
    """while: ``lax.while_loop`` of the interpreted condition and body."""
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, init = operands[:nc], operands[nc:nc + nb], operands[nc + nb:]
    cj, bj = p["cond_jaxpr"], p["body_jaxpr"]

    def cond(carry):
        return interp.eval(cj.jaxpr, cj.consts, *cond_consts, *carry, at=(*at, 0))[0]

    def body(carry):
        return interp.eval(bj.jaxpr, bj.consts, *body_consts, *carry, at=(*at, 1))

    return lax.while_loop(cond, body, list(init))


def _cond(interp, eqn, operands, at):
    """cond / switch: ``lax.switch`` over the interpreted branches."""
    index, ops = operands[0], operands[1:]
    branches = [functools.partial(interp.eval, b.jaxpr, b.consts, at=(*at, j))
                for j, b in enumerate(eqn.params["branches"])]
    return lax.switch(index, branches, *ops)


def _closed_call(interp, eqn, operands, at):
    """closed_call: evaluated in place."""
    closed = eqn.params["call_jaxpr"]
    return interp.eval(closed.jaxpr, closed.consts, *operands, at=(*at, 0))


TABLE: dict[Any, Callable | Nested] = {
    # primitives with a hand-derived rule: eqn -> Mapped | Unmapped | None   (jaxconv._rules)
    P.conv_general_dilated_p: _rules.conv_general_dilated,
    P.dot_general_p: _rules.dot_general,
    P.reduce_window_max_p: _rules.reduce_window_max,
    P.reduce_window_sum_p: _rules.reduce_window_sum,
    P.logistic_p: _rules.logistic,
    P.tanh_p: _rules.tanh,
    P.custom_jvp_call_p: _rules.custom_jvp_call,  # jax.nn.relu, jax.nn.softplus
    # higher-order primitives, rebuilt around their interpreted jaxprs
    P.jit_p: Nested(_jit, lambda e: [_inner(e.params["jaxpr"])]),
    P.closed_call_p: Nested(_closed_call, lambda e: [_inner(e.params["call_jaxpr"])]),
    P.remat_p: Nested(_remat, lambda e: [e.params["jaxpr"]]),
    P.scan_p: Nested(_scan, lambda e: [_inner(e.params["jaxpr"])]),
    P.while_p: Nested(_while, lambda e: [_inner(e.params["cond_jaxpr"]),
                                          _inner(e.params["body_jaxpr"])]),
    P.cond_p: Nested(_cond, lambda e: [_inner(b) for b in e.params["branches"]]),
}


#: Patterns of several equations computed by one op (jaxpr -> list of _rules.Fused).
FUSED: tuple[Callable, ...] = (_rules.softmax_cross_entropy,)


def fused(jaxpr) -> tuple[dict[int, _rules.Fused], set[int]]:
    """Every :data:`FUSED` pattern in ``jaxpr`` (not in nested jaxprs, which are visited on
    their own), by the index of its last equation, and all the indices they cover. Patterns
    never share an equation: a later one that overlaps an earlier one is dropped."""
    patterns: dict[int, _rules.Fused] = {}
    covered: set[int] = set()
    for find in FUSED:
        for pattern in find(jaxpr):
            if covered.isdisjoint(pattern.covered):
                patterns[pattern.covered[-1]] = pattern
                covered.update(pattern.covered)
    return patterns, covered


def differentiable(eqn) -> bool:
    """An equation with a floating output computed from at least one floating variable."""
    return any(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in eqn.outvars) and any(
        not isinstance(v, Literal) and jnp.issubdtype(v.aval.dtype, jnp.inexact)
        for v in eqn.invars
    )


def plan(eqn) -> Mapped | Unmapped | None:
    """What the table says about a (non-nested) equation; ``None``: bind it as it is."""
    handler = TABLE.get(eqn.primitive)
    if handler is None or isinstance(handler, Nested) or not differentiable(eqn):
        return None
    return handler(eqn)


def weighted_instances(jaxpr, at: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Any]]:
    """The ``(path, eqn)`` of every equation the interpreter maps to an op with a weight
    (``_rules.WEIGHTED``: convolutions and dot_generals), in program order, depth first into
    the nested jaxprs it rebuilds. A path names one instance in the traced program: the
    equation's position in its jaxpr, preceded by (position, jaxpr index) of each enclosing
    nested equation; a jaxpr shared by two call sites has one path per site."""
    found = []
    for p, eqn in enumerate(jaxpr.eqns):
        handler = TABLE.get(eqn.primitive)
        if isinstance(handler, Nested):
            for j, inner in enumerate(handler.jaxprs(eqn)):
                found += weighted_instances(inner, (*at, p, j))
        elif isinstance(decision := plan(eqn), Mapped) and decision.kind in _rules.WEIGHTED:
            found.append(((*at, p), eqn))
    return found


class Interpreter:
    """Evaluates jaxprs with the table. One per traced signature: it caches the jitted bodies
    of nested jit equations (keyed by their path; the traced jaxpr keeps them alive).

    With a ``feedback`` rule (:mod:`jaxconv.feedback`) and the traced ``jaxpr``, each weighted
    instance (:func:`weighted_instances`) runs its op with ``per_layer(feedback, i)``, i its
    index in program order: random feedback gives each instance its own fixed matrix."""

    def __init__(self, feedback: Any = None, jaxpr: Any = None):
        self._jitted: dict[tuple[int, ...], tuple[Any, Callable]] = {}
        self._fused: dict[int, tuple[Any, tuple[dict[int, _rules.Fused], set[int]]]] = {}
        self.feedback = feedback
        self.layers: dict[tuple[int, ...], int] = {}
        if feedback is not None:
            self.layers = {path: i for i, (path, _) in enumerate(weighted_instances(jaxpr))}

    def jitted(self, eqn, at: tuple[int, ...] = ()) -> Callable:
        key = at
        if key not in self._jitted:
            closed = eqn.params["jaxpr"]
            body = functools.partial(self.eval, closed.jaxpr, closed.consts, at=(*at, 0))
            body.__name__ = eqn.params.get("name", "jit")  # type: ignore[attr-defined]
            self._jitted[key] = (eqn, jax.jit(body, inline=eqn.params.get("inline", False)))
        return self._jitted[key][1]

    def fused(self, jaxpr) -> tuple[dict[int, _rules.Fused], set[int]]:
        """The jaxpr's multi-equation patterns (:data:`FUSED`), by the index of each one's last
        equation, and the indices of the equations they cover; found once per jaxpr."""
        key = id(jaxpr)
        if key not in self._fused:
            found = fused(jaxpr)
            self._fused[key] = (jaxpr, found)
        return self._fused[key][1]

    def eval(self, jaxpr, consts, *args, at: tuple[int, ...] = ()) -> list:
        """Evaluate ``jaxpr``; ``at`` is its path in the traced program (``()`` at the top)."""
        env: dict[Any, Any] = {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        patterns, covered = self.fused(jaxpr)
        for p, eqn in enumerate(jaxpr.eqns):
            if p in covered and p not in patterns:
                continue  # computed by its pattern's op at the pattern's last equation
            with eqn.ctx.manager:
                if p in patterns:
                    pattern = patterns[p]
                    outs = [pattern.plan.run(*(read(v) for v in pattern.inputs))]
                else:
                    outs = self.apply(eqn, [read(v) for v in eqn.invars], (*at, p))
            for v, out in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, DropVar):
                    env[v] = out
        return [read(v) for v in jaxpr.outvars]

    def apply(self, eqn, operands, at: tuple[int, ...] = ()) -> list:
        """The equation's outputs, as a list."""
        handler = TABLE.get(eqn.primitive)
        if isinstance(handler, Nested):
            return handler.rebuild(self, eqn, operands, at)
        decision = plan(eqn)
        if isinstance(decision, Mapped):  # jaxconv's ops have one output
            if self.feedback is not None and decision.kind in _rules.WEIGHTED:
                rule = per_layer(self.feedback, self.layers[at])
                return [decision.run(*operands, feedback=rule)]
            return [decision.run(*operands)]
        outs = eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(eqn.params))
        return outs if eqn.primitive.multiple_results else [outs]


# --------------------------------------------------------------------------------------------
# Counting, without evaluating: what the interpreter does to each equation.
# --------------------------------------------------------------------------------------------


class Tally(NamedTuple):
    manual: Counter          # kind -> instances running a hand-derived rule
    unmapped: list           # (kind, reason, where) per instance left to autodiff
    autodiff: Counter        # primitive -> differentiable instances without a rule
    kept: Counter            # custom rules kept as they are: "custom_jvp_call[name]", ...


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # the location is a courtesy; never fail the report over it
        return ""


def _jaxconv_op(eqn) -> str | None:
    """The name of jaxconv's op behind a custom_vjp_call, or None for someone else's rule."""
    bwd = getattr(eqn.params.get("bwd"), "f", None)
    module = getattr(bwd, "__module__", "") or ""
    if module.startswith("jaxconv."):
        return "jaxconv." + getattr(bwd, "__name__", "?").strip("_").removesuffix("_bwd")
    return None


def walk(jaxpr, tally: Tally, rewritten: str | None = None) -> None:
    """Count every equation of ``jaxpr`` and of the jaxprs nested in it into ``tally``.

    ``rewritten`` names the enclosing primitive when manual does not rewrite inside it (e.g.
    shard_map): rule primitives there are counted as unmapped, with that reason.
    """
    patterns, covered = fused(jaxpr)
    for index, eqn in enumerate(jaxpr.eqns):
        if index in patterns:
            kind = patterns[index].plan.kind
            if rewritten is None:
                tally.manual[kind] += 1
            else:
                tally.unmapped.append(
                    (kind, f"inside {rewritten}, which manual does not enter", _where(eqn)))
            continue
        if index in covered:
            continue
        handler = TABLE.get(eqn.primitive)
        name = eqn.primitive.name
        if isinstance(handler, Nested):
            for inner in handler.jaxprs(eqn):
                walk(inner, tally, rewritten)
            continue
        if name == "custom_vjp_call":
            op = _jaxconv_op(eqn)
            if op is not None:
                tally.manual[op] += 1
            else:
                tally.kept["custom_vjp_call"] += 1
            continue
        decision = plan(eqn)
        if isinstance(decision, Mapped) and rewritten is not None:
            decision = Unmapped(decision.kind, f"inside {rewritten}, which manual does not enter")
        if isinstance(decision, Mapped):
            tally.manual[decision.kind] += 1
        elif isinstance(decision, Unmapped):
            tally.unmapped.append((decision.kind, decision.reason, _where(eqn)))
        elif name == "custom_jvp_call":
            if differentiable(eqn):
                tally.kept[f"custom_jvp_call[{_rules.custom_jvp_name(eqn)}]"] += 1
        else:
            subs = list(jaxprs_in_params(eqn.params))
            for inner in subs:
                walk(inner, tally, rewritten or name)
            if not subs and differentiable(eqn):
                tally.autodiff[name] += 1
