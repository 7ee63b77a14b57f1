r"""Cotangents under ``shard_map``: a rule's gradient summed over the mesh axes its primal is
replicated along.

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
