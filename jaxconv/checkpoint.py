"""Checkpoints of a training run: orbax-checkpoint, atomic, verified on restore.

A checkpoint is two items saved together under ``<directory>/<step>/`` by an orbax
``CheckpointManager`` (synchronous, so a checkpoint is complete when :meth:`Checkpoints.save`
returns; orbax writes into a temporary directory and renames it, so a process killed mid-save
leaves no half checkpoint behind, only a temporary directory that the next manager removes):

- ``state``: a pytree of arrays (parameters, optimizer state), orbax ``StandardSave``;
- ``meta``: a JSON object (step, epoch, data-order state, metrics history, the run's
  configuration), orbax ``JsonSave``, with ``checksum``: the SHA-256 of every leaf of ``state``
  (dtype, shape and bytes, in tree order).

Once orbax has committed a checkpoint, a manifest of its files (relative path, size, SHA-256)
is written atomically beside them, ``<step>/jaxconv_files.json``. On restore, the files are
checked against the manifest first (so a truncated, garbled or missing file is caught before
orbax and tensorstore read it), then the arrays are read. Each byte is hashed once on restore:
the files against the manifest, or, for a checkpoint whose manifest never got written (a kill
right after the commit), the arrays against their checksum. A checkpoint that fails any of these
is *damaged*: it is moved aside to ``<directory>/../damaged_checkpoints/<step>`` and the previous
one is tried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxconv._io import atomic_open

DAMAGED_DIR = "damaged_checkpoints"
MANIFEST = "jaxconv_files.json"


def checksum(tree: Any) -> str:
    """SHA-256 over the leaves of a pytree of arrays: each leaf's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Restored:
    """A verified checkpoint: its ``step``, the ``state`` pytree and the ``meta`` dict, plus the
    later checkpoints that were found damaged, as ``(step, reason)`` pairs, newest first."""

    step: int
    state: Any
    meta: dict
    damaged: tuple[tuple[int, str], ...]


class Checkpoints:
    """The checkpoints of one run in ``directory`` (created if missing).

    Args:
      directory: where the step directories live.
      max_to_keep: how many of the newest checkpoints to keep (>= 2, so that a damaged latest
        checkpoint always has a predecessor).
      primary: whether this process writes (saves, cleans up, moves damaged checkpoints
        aside). In a multi-process run every process reads the same directory and only process
        0 writes it; each process's orbax manager then acts alone, on host copies of the
        (replicated) state.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, primary: bool = True):
        if max_to_keep < 2:
            raise ValueError(f"max_to_keep must be >= 2, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.primary = primary
        alone = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
        multiprocess = jax.process_count() > 1
        if multiprocess:  # orbax leaves the root to us when it runs on a subset of processes
            self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not multiprocess,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=primary,
            **({"multiprocessing_options": alone} if multiprocess else {}),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """The steps that have a (committed) checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` (pytree of arrays) and ``meta`` (JSON-able dict) as checkpoint ``step``;
        returns once the checkpoint is complete on disk."""
        if not self.primary:
            raise RuntimeError("only the primary process saves checkpoints")
        meta = dict(meta, checksum=checksum(state))
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        step_dir = self.directory / str(step)
        manifest = json.dumps(_file_manifest(step_dir), indent=1)
        with atomic_open(step_dir / MANIFEST) as f:
            f.write(manifest)

    def restore_latest(
        self, target: Any, *, check: Callable[[dict], None] | None = None
    ) -> Restored | None:
        """The newest checkpoint that restores and verifies, or ``None`` if there is none.

        Args:
          target: a pytree with the structure, shapes and dtypes of the saved ``state``.
          check: called with a checkpoint's ``meta`` before its arrays are read; whatever it
            raises (e.g. "this checkpoint belongs to another configuration") propagates, and
            no checkpoint is touched.

        Damaged checkpoints newer than the one returned are moved aside and listed in
        ``Restored.damaged``. Raises ``ValueError`` when checkpoints exist but all are damaged.
        """
        damaged: list[tuple[int, str]] = []
        restored = None
        for step in reversed(self.steps()):
            try:
                state, meta = self._restore(step, target, check)
            except _Damaged as err:
                damaged.append((step, err.reason))
                continue
            restored = Restored(step, state, meta, tuple(damaged))
            break
        for bad, _ in damaged:
            self._move_aside(bad)
        if restored is None and damaged:
            listing = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise ValueError(f"every checkpoint in {self.directory} is damaged ({listing})")
        return restored

    def _restore(self, step: int, target: Any, check: Callable[[dict], None] | None):
        """Checkpoint ``step``'s ``(state, meta)``; raises :class:`_Damaged` if it fails to read
        or verify, and whatever ``check`` raises."""
        try:
            verified = self._verify_files(step)
            meta = self._restore_meta(step)
        except Exception as err:  # orbax and json raise many types
            raise _Damaged(_one_line(err)) from err
        if check is not None:
            check(meta)
        try:
            return self._restore_state(step, target, meta, verified), meta
        except Exception as err:  # orbax, tensorstore and the checksum raise many types
            raise _Damaged(_one_line(err)) from err

    def _verify_files(self, step: int) -> bool:
        """Compare the checkpoint's files with its manifest; ``False`` if it got none."""
        step_dir = self.directory / str(step)
        path = step_dir / MANIFEST
        if not path.exists():
            return False
        try:
            expected = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"its file manifest is unreadable ({type(err).__name__})") from None
        for name, (size, digest) in sorted(expected.items()):
            file = step_dir / name
            if not file.is_file():
                raise ValueError(f"its file {name} is missing")
            if file.stat().st_size != size:
                raise ValueError(f"its file {name} has {file.stat().st_size} bytes, expected "
                                 f"{size}")
            if _sha256(file) != digest:
                raise ValueError(f"its file {name} does not match its SHA-256")
        return True

    def _restore_meta(self, step: int) -> dict:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = restored.meta
        if not isinstance(meta, dict) or "checksum" not in meta:
            raise ValueError("its metadata has no checksum")
        return meta

    def _restore_state(self, step: int, target: Any, meta: dict, verified: bool) -> Any:
        """The arrays of checkpoint ``step`` in ``target``'s structure. Files ``verified``
        against their manifest hold exactly the bytes saved, so only a checkpoint without a
        manifest has its arrays' checksum recomputed (every byte is hashed once)."""
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), target
        )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        # orbax may hand back plain tuples for namedtuple nodes: rebuild the target's structure.
        leaves = jax.tree.leaves(restored.state)
        state = jax.tree.unflatten(jax.tree.structure(target), leaves)
        if not verified and checksum(state) != meta["checksum"]:
            raise ValueError("its arrays do not match their checksum")
        return state

    def _move_aside(self, step: int) -> None:
        source = self.directory / str(step)
        if not self.primary or not source.exists():
            return
        dest_root = self.directory.parent / DAMAGED_DIR
        dest_root.mkdir(parents=True, exist_ok=True)
        dest = dest_root / str(step)
        if dest.exists():
            shutil.rmtree(dest)
        source.rename(dest)
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Damaged(Exception):
    """A checkpoint failed to read or verify, for ``reason`` (one line)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_manifest(step_dir: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file of a committed checkpoint."""
    return {
        str(path.relative_to(step_dir)): [path.stat().st_size, _sha256(path)]
        for path in sorted(step_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _one_line(err: BaseException) -> str:
    """A short single-line description of an exception."""
    text = " ".join(str(err).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
