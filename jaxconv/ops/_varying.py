r"""Cotangents on a mesh: a rule's gradient summed over the mesh axes its primal is replicated
along (``shard_map``), and laid out like its primal (explicit sharding).

Inside ``shard_map`` (with ``check_vma``) every value records the manual mesh axes it *varies*
along. A parameter passed replicated (``P()``) is the same on every device; used with a batch
slice that varies along ``"batch"``, its gradient on each device is only that slice's part,
``dw_d = x_dᵀ · dy_d``, and the gradient of the replicated parameter is their sum over the
devices:

    dw = Σ_d dw_d = psum(dw_d, "batch")

JAX does this for its own derivatives (the transpose of the implicit broadcast to "varying" is
a ``psum``); a ``custom_vjp`` rule must do it itself, and must return a cotangent of its
primal's type. :func:`summed_like` is that step, applied to every cotangent a rule returns: it
reads the axes from the values' types, so there is no argument to pass and nothing to do outside
``shard_map`` (there no value varies, and it returns the cotangent as it is).
"""

from __future__ import annotations

import jax
from jax import lax


def varying_axes(a) -> frozenset:
    """The manual mesh axes ``a`` varies along inside ``shard_map`` (empty outside).

    JAX names the set ``vma`` on an array's type; jax 0.10.2 keeps it as
    ``manual_axis_type.varying``.
    """
    aval = jax.typeof(a)
    vma = getattr(aval, "vma", None)
    if vma is None:
        mat = getattr(aval, "manual_axis_type", None)
        vma = getattr(mat, "varying", frozenset())
    return frozenset(vma)


def summed_like(ct, primal):
    """``ct`` summed (``lax.psum``) over the mesh axes it varies along and ``primal`` does not,
    so that it has ``primal``'s type; ``ct`` itself where there are none (always, outside
    ``shard_map``) or where ``ct`` is ``None``."""
    if ct is None:
        return None
    extra = varying_axes(ct) - varying_axes(primal)
    return lax.psum(ct, tuple(sorted(extra))) if extra else ct


def laid_out_like(primal, rule, a, b, *static):
    """``rule(a, b, *static)`` (two arrays, then static arguments), laid out like ``primal``
    where ``primal``'s type carries a mesh with explicit axes (``AxisType.Explicit``); computed
    as it is elsewhere.

    A weight's rule contracts the batch axis (dw = xᵀ·dy, x ⋆ dy), which data parallelism
    shards, and the faster formulations of dx reshape the batch into their rows; under explicit
    sharding JAX then asks each such product or reshape for its output's sharding
    (``out_sharding``). Here the rule's products run with the explicit axes treated as automatic
    (``jax.sharding.auto_axes``) and the result takes the primal's sharding, as JAX's own
    transpose rules lay out a cotangent like its primal: replicated parameters get replicated
    gradients, summed over the devices.
    """
    sharding = jax.typeof(primal).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not mesh.explicit_axes:
        return rule(a, b, *static)
    return jax.sharding.auto_axes(lambda a, b: rule(a, b, *static), out_sharding=sharding)(a, b)
