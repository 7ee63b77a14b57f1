"""The one per-process cache of training: built models and compiled programs, so that runs of one
configuration (seeds, resumes, tests) build and compile once.

Every entry is keyed by a tuple that says what was built (its first element names the kind:
``"model"``, ``"init"``, ``"epoch"``, ``"evaluate"``); the newest :data:`MAX_ENTRIES` are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ENTRIES = 64

_entries: OrderedDict[tuple, Any] = OrderedDict()


def cached(key: tuple, build: Callable[[], T]) -> T:
    """The value cached under ``key``, built by ``build()`` on first use (least recently used
    entries beyond :data:`MAX_ENTRIES` are dropped)."""
    if key in _entries:
        _entries.move_to_end(key)
        return _entries[key]
    value = _entries[key] = build()
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)
    return value


def clear() -> None:
    """Drop every entry."""
    _entries.clear()
