"""Data parallelism with ``jax.sharding``: one mesh axis, ``"data"``, over devices and hosts.

The hand-derived rules need nothing special here. The batch is split along the mesh axis
``"data"``, parameters and optimizer state are replicated, and XLA's SPMD partitioner inserts the
all-reduce that sums each device's partial dw and db (the rules' Σ over the batch becomes a local
sum followed by a cross-device sum). The same code runs on 1 device, on many local devices, and on
many processes (hosts) after :func:`initialize`.

Multi-host: each process runs the same program, loads the full (small) dataset, and feeds only
its own rows of every global batch (:func:`process_rows`); :func:`global_batch` assembles the
per-process rows into one global array. On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-process run when one is configured; return whether one is.

    Each argument falls back to its environment variable (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With none of the three set, this is a
    single-process run and nothing happens. With some but not all, a ``ValueError`` names the
    missing ones. Must be called before any other JAX computation.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    given = {
        "coordinator": coordinator, "num_processes": num_processes, "process_id": process_id
    }
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"a multi-process run needs coordinator, num_processes and process_id (or "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing: "
            f"{', '.join(missing)}"
        )
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def data_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``devices`` devices (default: all).

    In a multi-process run every process must take part, so ``devices`` must then be ``None`` or
    the global device count.
    """
    available = jax.devices()
    n = len(available) if devices is None else devices
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"devices must be a positive int, got {devices!r}")
    if n > len(available):
        raise ValueError(
            f"devices={n} asked for more devices than there are ({len(available)}: "
            f"{available[0].platform} x{len(available)})"
        )
    if jax.process_count() > 1 and n != len(available):
        raise ValueError(
            f"devices={n}: a multi-process run uses all {len(available)} devices of its "
            f"{jax.process_count()} processes"
        )
    return Mesh(np.asarray(available[:n]), (DATA_AXIS,))


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    """A global batch must split evenly over the mesh's devices (and over the processes)."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {n} devices of the data mesh; "
            f"use a multiple of {n}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Split ``batch_axis`` over the ``"data"`` axis; every other axis whole."""
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def process_rows(batch_size: int) -> slice:
    """The rows of each global batch that this process loads and feeds."""
    per = batch_size // jax.process_count()
    start = jax.process_index() * per
    return slice(start, start + per)


def global_batch(local: np.ndarray, sharding: NamedSharding, global_shape: Sequence[int]) -> Any:
    """Assemble this process's rows into one global array laid out by ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree of host arrays (identical on every process) on every device."""
    sharding = replicated(mesh)

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Fetch a pytree of (replicated) global arrays back to numpy on this process."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if hasattr(
        a, "addressable_data") else np.asarray(a), tree)
