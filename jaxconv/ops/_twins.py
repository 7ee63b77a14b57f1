"""One front-end, two differentiation modes.

Each op is written once as a *front-end* ``front(core, *args, **kwargs)`` that validates and
normalises its arguments (``jaxconv._checks``) and then calls ``core``, the pure computation.
:func:`twins` turns that one front-end into the public pair:

- the manual op, whose core is the forward with its hand-derived rule attached by
  ``jax.custom_vjp`` (exported as ``jaxconv.<name>``);
- the autodiff twin, whose core is the *same* forward left for JAX to differentiate (exported as
  ``jaxconv.autodiff.<name>``).

Both share signature, docstring, validation and forward code, so every comparison between them is
fair by construction.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def twins(front: Callable, manual_core: Callable, autodiff_core: Callable):
    """Return ``(manual, autodiff)`` public functions built from one front-end.

    The public name is the front-end's without its underscores and ``_front`` suffix
    (``_max_pool_front`` -> ``max_pool``); the public signature is the front-end's without
    ``core``. A call that does not fit that signature (e.g. a keyword-only option passed by
    position) raises a ``TypeError`` naming the op and its signature.
    """
    sig = inspect.signature(front)
    public_sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    name = front.__name__.strip("_").removesuffix("_front")  # _max_pool_front -> max_pool

    def make(core: Callable) -> Callable:
        @functools.wraps(front)
        def op(*args, **kwargs):
            try:  # a call that does not fit is the caller's error, worded with the public name
                public_sig.bind(*args, **kwargs)
            except TypeError as err:
                raise TypeError(f"{name}{public_sig}: {err}") from None
            return front(core, *args, **kwargs)

        op.__signature__ = public_sig
        op.__name__ = op.__qualname__ = name
        return op

    return make(manual_core), make(autodiff_core)


# --------------------------------------------------------------------------------------------
# Feedback (jaxconv.feedback): dx goes back through B in place of w; forward, dw, db unchanged.
# Cores take ``feedback=None`` (backprop: exactly the op as without it) or an array B of w's
# shape in the core layout.
# --------------------------------------------------------------------------------------------


def feedback_rule(rule: jax.custom_vjp) -> jax.custom_vjp:
    """The op ``rule(x, w, *rest)`` (a custom_vjp whose residuals are ``(x, w, ...)``) as
    ``rule_B(x, w, B, *rest)``: the same forward, and the same backward run on the residuals
    ``(x, B, ...)``. Its dx rule then reads B where it read w (dx = full-conv(rot180 B, dy),
    dx = dy·Bᵀ), its dw rule reads only w's shape (dw = x ⋆ dy, xᵀ·dy) and db = Σ dy, so only
    dx changes. B is fixed: its cotangent is zero.
    """
    static = tuple(i + 1 for i in rule.nondiff_argnums)  # B is inserted before the rest

    def forward(x, w, b_feedback, *rest):
        return rule.fun(x, w, *rest)

    def fwd(x, w, b_feedback, *rest):
        y, residuals = rule.fwd(x, w, *rest)
        return y, (residuals[0], b_feedback, *residuals[2:])

    @functools.wraps(rule.bwd)  # its name: coverage reports the op as jaxconv's
    def bwd(*args):
        *statics, residuals, dy = args
        dx, dw, *others = rule.bwd(*statics, residuals, dy)
        return (dx, dw, jnp.zeros_like(residuals[1]), *others)

    out = jax.custom_vjp(forward, nondiff_argnums=static)
    out.defvjp(fwd, bwd)
    return out


def with_feedback(rule: jax.custom_vjp) -> Callable:
    """The manual core ``core(x, w, *rest, feedback=None)``: ``rule`` itself for backprop (the
    program is unchanged), :func:`feedback_rule` of it for a feedback kernel B."""
    rule_b = feedback_rule(rule)

    def core(x, w, *rest, feedback=None):
        return rule(x, w, *rest) if feedback is None else rule_b(x, w, feedback, *rest)

    return core


def autodiff_with_feedback(forward: Callable) -> Callable:
    """The autodiff core ``core(x, w, *rest, feedback=None)``, differentiated by JAX alone.

    With a feedback kernel B it computes, with sg = ``lax.stop_gradient``,

        y = f(sg(x), w, *rest) + (f(x, sg(B), *sg(rest)) − sg(f(x, sg(B), *sg(rest))))

    The bracket is exactly 0 for finite values, so the forward is f(x, w) bit for bit (up to
    the sign of a zero; an infinite f(x, B) makes it NaN, and the twin costs a second
    forward). JAX's dw and db come from the first term only (x is a constant there), and its
    dx from the second only: the vjp in x of f(x, B). B (and the rest) get no gradient.
    """
    sg = lax.stop_gradient

    def core(x, w, *rest, feedback=None):
        if feedback is None:
            return forward(x, w, *rest)
        fixed = [sg(r) if isinstance(r, jax.Array) else r for r in rest]
        through_b = forward(x, sg(feedback), *fixed)
        return forward(sg(x), w, *rest) + (through_b - sg(through_b))

    return core
