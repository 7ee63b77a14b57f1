r"""Feedback rules: what the error is sent back through, in place of the weights.

Backpropagation sends the error back through the same weights the forward used: in the
lecture's notation, for a perceptron ``dx = dy · wᵀ`` and for a convolution
``dx = full-conv(rot180 w, dy)``. A line of research asks what happens when that one rule
changes and everything else stays: the forward, ``dw = xᵀ · dy`` (``x ⋆ dy``) and ``db = Σ dy``
are backprop's, and ``dx`` goes back through a *feedback* kernel ``B`` of w's shape:

    dx = dy · Bᵀ                      (perceptron)
    dx = full-conv(rot180 B, dy)      (convolution)

i.e. ``dx`` is exactly the vjp of the same op with ``w`` replaced by ``B``. Every op that has a
weight (``jaxconv.conv``, ``conv1d/2d/3d``, ``conv_transpose``, ``dense``, ``dot_general`` and
their twins in :mod:`jaxconv.autodiff`) takes ``feedback=``:

- ``None``: backprop, the lecture's rule (the program is unchanged);
- an array of w's shape and dtype: ``B`` itself (it is fixed: it gets a zero cotangent);
- a callable of w returning an array of w's shape and dtype, called on w in the op's
  channels-last kernel layout (``(*K, C_in/g, C_out)`` for a convolution, ``(n_in, n_out)`` for
  ``dense``), e.g. :func:`sign` or :func:`random`. Its result is fixed too: no gradient flows
  through ``B`` into ``w``, so ``dw`` stays backprop's.

The manual ops attach this with a second ``custom_vjp`` per op family, whose residuals are
``(x, B)`` and whose backward is the op's own (``dx`` reads B where it read w, ``dw`` only w's
shape). The autodiff twins let JAX derive it from ``y = f(sg(x), w) + (f(x, sg(B)) −
sg(f(x, sg(B))))`` (sg = ``lax.stop_gradient``): the bracket is exactly 0 for finite values,
so the forward is f(x, w); dw and db come from the first term, dx from the second
(:func:`jaxconv.ops._twins.autodiff_with_feedback`).

Example::

    fb = jaxconv.feedback.random(jax.random.key(0))          # feedback alignment
    y = jaxconv.conv(x, w, b, feedback=fb)                   # forward as ever
    dx, dw = jax.grad(loss, (0, 1))(x, w)                    # dx through B, dw backprop's
    grads = jax.grad(jaxconv.manual(model_loss, feedback=jaxconv.feedback.sign))(params, x, y)

References:
  T. P. Lillicrap, D. Cownden, D. B. Tweed and C. J. Akerman, "Random synaptic feedback weights
  support error backpropagation for deep learning", Nature Communications 7, 13276 (2016)
  (feedback alignment: a fixed random ``B``).
  Q. Liao, J. Z. Leibo and T. Poggio, "How important is weight symmetry in backpropagation?",
  AAAI 2016 (sign symmetry: ``B = sign(w)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _checks

# The standard deviation of a normal truncated to [-2, 2], as jax.nn.initializers divides by.
_TRUNCATED_STD = 0.87962566103423978


def sign(w: jax.Array) -> jax.Array:
    """Sign symmetry (Liao, Leibo and Poggio 2016): ``B = sign(w) · mean|w|``.

    The feedback keeps only the signs of the forward weights. The scale ``mean|w|`` is this
    library's choice: a sign matrix has entries ±1, much larger than a layer's weights (about
    ``1/√fan_in``), so ``sign(w)`` alone would multiply every ``dx`` by roughly ``√fan_in``
    per layer; scaled by ``mean|w|``, ``B`` has the same mean absolute value as ``w`` (and
    ``B = w`` whenever ``|w|`` is constant). The scale is a function of ``w`` alone, so the rule
    needs no state. As every feedback, ``B`` is fixed for the step: no gradient flows through
    ``mean|w|`` into ``w``.
    """
    return jnp.sign(w) * jnp.mean(jnp.abs(w))


def _fan_in(shape: tuple[int, ...]) -> int:
    """Every axis but the last (``jax.nn.initializers``' default ``in_axis=-2``, the receptive
    field included): ``n_in`` of a dense w, ``K · C_in/g`` of a channels-last kernel."""
    if len(shape) >= 2:
        return max(math.prod(shape[:-1]), 1)
    return max(shape[0], 1) if shape else 1


@dataclasses.dataclass(frozen=True)
class Random:
    """Fixed random feedback (Lillicrap et al. 2016), a function of w's shape and dtype only.

    Build it with :func:`random`; give each layer its own with :func:`per_layer`. Frozen and
    hashable (a valid static argument of ``jax.jit``); calling it on the same shape gives the
    same matrix every time (stateless).

    Attributes:
      key_data: the raw data of the PRNG key, as a tuple of ints.
      impl: the key's implementation (``"threefry2x32"`` by default).
      scale: the variance scale: ``B ~ truncated_normal(−2, 2) · √(scale / fan_in) / 0.8796``,
        as ``jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")``
        initialises w (``scale=1``: LeCun, ``scale=2``: He).
      layers: the layer indices folded into the key, in order (:func:`per_layer`).
    """

    key_data: tuple[int, ...]
    impl: str
    scale: float = 1.0
    layers: tuple[int, ...] = ()

    def key(self) -> jax.Array:
        """The key this feedback samples with: the base key, folded with each layer index."""
        key = jax.random.wrap_key_data(np.asarray(self.key_data, np.uint32), impl=self.impl)
        for i in self.layers:
            key = jax.random.fold_in(key, i)
        return key

    def __call__(self, w: jax.Array) -> jax.Array:
        """A fixed random B of w's shape and dtype, scaled as w's fan-in initialisation."""
        shape, dtype = tuple(w.shape), w.dtype
        std = math.sqrt(self.scale / _fan_in(shape)) / _TRUNCATED_STD
        return jax.random.truncated_normal(self.key(), -2.0, 2.0, shape, dtype) * std


def random(key: Any, *, scale: float = 1.0) -> Random:
    """Fixed random feedback (feedback alignment, Lillicrap et al. 2016).

    Args:
      key: an int seed, or a concrete PRNG key (``jax.random.key(0)`` or
        ``jax.random.PRNGKey(0)``) made outside ``jit``, not a traced one: the feedback is a
        static, hashable object. ``random(0)`` and ``random(jax.random.PRNGKey(0))`` are the
        same rule.
      scale: the variance scale of w's initialisation that B imitates (truncated normal,
        fan-in): 1.0 is LeCun's, 2.0 is He's.

    Returns:
      A :class:`Random` feedback: given w, a fixed random array of w's shape and dtype, the same
      on every call. Use :func:`per_layer` (``jaxconv.manual`` does it for you) so that each
      layer gets its own matrix.
    """
    scale = _checks.positive_number("scale", scale)
    try:
        with jax.ensure_compile_time_eval():  # an int seed gives a concrete key under jit too
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                key = jax.random.key(int(key))
            elif not jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
                key = jax.random.wrap_key_data(np.asarray(key, np.uint32))
            impl = str(jax.random.key_impl(key))
            data = np.asarray(jax.random.key_data(key))
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError) as err:
        raise _checks.invalid("key", "be an int seed or a concrete PRNG key (jax.random.key(seed)) "
                              "made outside jit, not a traced one",
                              _checks._describe(key), TypeError) from err
    if data.ndim != 1:
        raise _checks.invalid("key", "be a single PRNG key", f"key data of shape {data.shape}")
    return Random(tuple(int(v) for v in data), impl, scale)


def per_layer(feedback: Any, i: int) -> Any:
    """The feedback rule for layer ``i``: random feedback gets its own key (its key folded with
    ``i``, ``jax.random.fold_in``), so each layer has its own fixed matrix; ``None``,
    :func:`sign` and other callables of w pass through unchanged.

    Raises:
      TypeError: ``feedback`` is an array (one array cannot serve every layer) or not a
        feedback rule at all.
    """
    i = _checks.non_negative_int("i", i)
    if isinstance(feedback, Random):
        return dataclasses.replace(feedback, layers=(*feedback.layers, i))
    if feedback is None or (callable(feedback) and not hasattr(feedback, "shape")):
        return feedback
    if hasattr(feedback, "shape"):
        raise _checks.invalid(
            "feedback", "be None or a rule that holds for every layer (a callable of w, e.g. "
            "jaxconv.feedback.sign or jaxconv.feedback.random(key)); an array fits one layer only",
            _checks._describe(feedback), TypeError)
    raise _checks.invalid("feedback", "be None, an array of w's shape or a callable of w",
                          _checks._describe(feedback), TypeError)


class Layer(NamedTuple):
    """One primitive instance that ``jaxconv.manual(fun, feedback=rule)`` runs with
    ``per_layer(rule, index)``.

    Attributes:
      index: its number, in program order.
      kind: the primitive (``conv_general_dilated`` or ``dot_general``).
      op: the jaxconv op it runs (``jaxconv.conv``, ``jaxconv.conv_transpose``,
        ``jaxconv.dot_general``).
      w_shape: the shape of its weight, the primitive's rhs operand, as the model passes it.
      where: the source line that emitted it, where JAX recorded one.
    """

    index: int
    kind: str
    op: str
    w_shape: tuple[int, ...]
    where: str


def layers(fun: Callable, *args: Any, **kwargs: Any) -> tuple[Layer, ...]:
    """The layers of ``fun`` that ``jaxconv.manual(fun, feedback=...)`` gives a feedback rule,
    on these arguments (only their shapes and dtypes matter), in the order of their index.

    Primitives that stay with autodiff (``jaxconv.coverage(...).unmapped``) keep backprop and
    are not listed. Example: ``[(l.index, l.op, l.w_shape) for l in layers(loss, p, x, y)]``.
    """
    from jaxconv import _interpret, _manual, _rules

    closed = _manual._traced(fun, args, kwargs, "feedback.layers").jaxpr
    found = []
    for i, (_, eqn) in enumerate(_interpret.weighted_instances(closed.jaxpr)):
        decision = _interpret.plan(eqn)
        assert isinstance(decision, _rules.Mapped)
        found.append(Layer(i, decision.kind, decision.op, tuple(eqn.invars[1].aval.shape),
                           _interpret._where(eqn)))
    return tuple(found)


__all__ = ["Layer", "Random", "layers", "per_layer", "random", "sign"]
