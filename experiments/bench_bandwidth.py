"""Depthwise convolution's bandwidth: forward+backward bytes per second against a large copy.

A depthwise convolution does |K| multiply-adds per number it reads (9 for 3×3): far too few to
keep the cores busy, so its speed limit is memory, not arithmetic (issue 11 §3). This script
measures how close each variant comes to that limit.

- The machine's practical bandwidth: ``x + 1`` on a large float32 array (``--copy-mb`` MiB read,
  as many written in place; far larger than the caches), bytes read + written per second.
- Each depthwise layer's forward+backward (``jit`` of ``vjp``, as ``bench_layers.py`` times it),
  for the manual rules under ``"auto"`` (``manual``), JAX's autodiff of the same forward
  (``autodiff``) and plain JAX (``jax_xla``: XLA's grouped convolution differentiated by JAX).
  Its *compulsory* traffic is the program's arguments read once and its results written once:
  x, w, b, dy in, y, dx, dw, db out. Compulsory bytes / time is a lower bound on the bandwidth
  the program used; its ratio to the copy's (``frac_copy``) is how far the layer is from memory
  speed: 1.0 is the limit of any formulation that reads and writes each number once.
- A copy of the layer's own compulsory bytes (``copy_same_gbs``): the bandwidth reachable at
  that size (a small layer stays partly in cache and may beat the large copy).

Interleaved rounds, medians, compile excluded (:func:`jaxconv.bench.interleaved`). Usage::

    PYTHONPATH=. python experiments/bench_bandwidth.py --repeats 10

Writes ``experiments/results/bench_bandwidth.{md,json}`` with the load average before and after:
on a shared machine every figure here is a floor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxconv import bench

RESULTS = Path(__file__).resolve().parent / "results"

#: Depthwise layers of the suites (channels-last), by name in :mod:`jaxconv.bench`.
LAYERS = ("depthwise.3x3", "depthwise.s2.b16", "mobilenet.dw.s2", "convnext.dw7")


def copy_gbs(n_bytes: int, repeats: int) -> float:
    """GB/s (1e9 bytes) of ``x + 1`` on a float32 array of ``n_bytes``: read + written bytes per
    second of its median call. x is donated, so XLA writes in place: a fresh output buffer of
    that size on every call costs its page faults (a 256 MiB copy ran at 1.1 GB/s that way
    here, against 27-43 GB/s for the 14-28 MB copies, whose buffers the allocator reuses)."""
    step = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    state = [jnp.zeros((n_bytes // 4,), jnp.float32)]

    def run():
        state[0] = step(state[0])
        return state[0]

    t = bench.interleaved({"copy": run}, repeats)["copy"]["wall"]
    return 2 * state[0].nbytes / t / 1e9


def compulsory_bytes(spec: bench.Layer) -> int:
    """Bytes of the forward+backward program's arguments (x, w, b, dy) and results (y, dx, dw,
    db), float32: each read or written once at least."""
    out = spec.out()
    return 4 * (2 * math.prod(spec.x) + 2 * math.prod(spec.w) + 2 * spec.w[-1]
                + 2 * math.prod(out))


def layer_bandwidth(spec: bench.Layer, repeats: int, copy: float) -> dict:
    runners, _ = bench.forward_backward_runners(spec)
    times = bench.interleaved(runners, repeats)
    n_bytes = compulsory_bytes(spec)
    row = {"layer": spec.name, "choice": "/".join(bench.chosen(spec).values()),
           "compulsory_mb": n_bytes / 2**20,
           "copy_same_gbs": copy_gbs(n_bytes, repeats)}
    for name, t in times.items():
        row[f"{name}_ms"] = t["wall"] * 1e3
        row[f"{name}_gbs"] = n_bytes / t["wall"] / 1e9
    row["frac_copy"] = row["manual_gbs"] / copy
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--copy-mb", type=int, default=256)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = bench.run_info("bench_bandwidth.py", sys.argv[1:], args.repeats)
    copy = copy_gbs(args.copy_mb * 2**20, args.repeats)
    print(f"large copy ({args.copy_mb} MiB): {copy:.2f} GB/s", flush=True)
    rows = []
    for name in args.layers:
        rows.append(layer_bandwidth(bench.layer(name), args.repeats, copy))
        print(json.dumps(rows[-1]), flush=True)
    info["load_after"] = list(os.getloadavg())
    lines = [
        "# Depthwise forward+backward bandwidth against a large copy", "",
        bench.run_header(info, f"large copy ({args.copy_mb} MiB read + written) {copy:.2f} GB/s")
        + " GB/s are compulsory bytes (x, w, b, dy read; y, dx, dw, db written, once each) per "
        "second of the median forward+backward call (jit of vjp), interleaved rounds; "
        "`frac_copy` is manual's GB/s over the large copy's; `copy_same_gbs` a copy of the "
        "layer's own compulsory bytes.", "",
        bench.markdown(rows, "{:.3g}"), "",
    ]
    bench.write_results(args.out_dir, "bench_bandwidth",
                        {"meta": info, "copy_gbs": copy, "layers": rows}, lines)


if __name__ == "__main__":
    main()
