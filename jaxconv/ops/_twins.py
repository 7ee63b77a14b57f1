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
