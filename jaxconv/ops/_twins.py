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


def twins(front: Callable, manual_core: Callable, autodiff_core: Callable):
    """Return ``(manual, autodiff)`` public functions built from one front-end."""
    sig = inspect.signature(front)
    public_sig = sig.replace(parameters=list(sig.parameters.values())[1:])

    def make(core: Callable, mode: str) -> Callable:
        @functools.wraps(front)
        def op(*args, **kwargs):
            return front(core, *args, **kwargs)

        op.__signature__ = public_sig
        op.grads = mode
        return op

    return make(manual_core, "manual"), make(autodiff_core, "autodiff")
