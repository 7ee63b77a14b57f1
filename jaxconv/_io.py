"""Files: where jaxconv caches (:func:`cache_dir`), and atomic writes (:func:`atomic_open`): a file
is either its old self or completely new, never half written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def cache_dir() -> Path:
    """The one directory jaxconv caches in (generated data sets, measured convolution choices):
    ``$JAXCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxconv``, else ``~/.cache/jaxconv`` (an empty
    variable counts as unset). Read on every call, so a changed environment takes effect; the
    directory is created only when something is written to it."""
    if os.environ.get("JAXCONV_CACHE_DIR"):
        return Path(os.environ["JAXCONV_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jaxconv"
    return Path.home() / ".cache" / "jaxconv"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends normally, flush it
    to disk and move it into place with ``os.replace``; when it raises, remove it.

    Args:
      path: the final file (its folder is created if missing).
      mode: ``"w"`` (text) or ``"wb"`` (binary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
