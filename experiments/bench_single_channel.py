"""Forced plans on single-input-channel 2-D layers too wide for the banded rules.

The Flax MNIST CNN's first convolution (1 input channel, 28×28, 3×3 "SAME") ran faster with a
shifted forward and an im2col dW than with ``auto``'s XLA rules. Before teaching ``auto`` that,
this script times the same choices on four *other* single-channel layers (none of them the Flax
layer), against ``jaxconv.autodiff.conv``, interleaved rounds, median of per-round ratios (> 1:
faster than autodiff), in two compositions:

- ``layer``: y and the cotangents of x and w (jit of vjp, y returned so the forward is timed);
- ``first layer``: y and the cotangent of w only. A single-input-channel convolution is almost
  always a network's first layer, where nothing asks for dX: this is what it costs in a model.

Usage::

    python experiments/bench_single_channel.py [--repeats 10]

Writes ``experiments/results/bench_single_channel.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np

import jaxconv
import jaxconv.autodiff as ad
from jaxconv import bench

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {  # name: (x shape NHWC, kernel (*K, C_in, C_out), padding)
    "gray64.k5.b32": ((32, 64, 64, 1), (5, 5, 1, 16), "SAME"),
    "gray96.k3.b16": ((16, 96, 96, 1), (3, 3, 1, 32), "SAME"),
    "gray48.k3.b64.valid": ((64, 48, 48, 1), (3, 3, 1, 8), "VALID"),
    "gray128.k7.b8": ((8, 128, 128, 1), (7, 7, 1, 16), "SAME"),
}
PLANS = {"auto": {}, "forward shifted": {"forward": "shifted"}, "dw im2col": {"dw": "im2col"},
         "both": {"forward": "shifted", "dw": "im2col"}}
COMPOSITIONS = {"layer": (0, 1), "first layer": (1,)}


def runner(op, plan, x, w, dy, padding, argnums):
    """The jitted (y, cotangents of ``argnums``) of ``op``, compiled under the forced ``plan``."""
    def vjp(x, w, dy):
        y, pullback = jax.vjp(lambda *a: op(*a, padding=padding), x, w)
        cotangents = pullback(dy)
        return y, tuple(cotangents[i] for i in argnums)

    with jaxconv.use(**plan):
        compiled = jax.jit(vjp).lower(x, w, dy).compile()
    return lambda: compiled(x, w, dy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = bench.run_info("bench_single_channel.py", sys.argv[1:], args.repeats)
    rows = []
    for name, (x_shape, w_shape, padding) in SHAPES.items():
        kx, kw, ky = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, x_shape)
        w = 0.1 * jax.random.normal(kw, w_shape)
        dy = jax.random.normal(ky, ad.conv(x, w, padding=padding).shape)
        for composition, argnums in COMPOSITIONS.items():
            runners = {"autodiff": runner(ad.conv, {}, x, w, dy, padding, argnums)}
            runners |= {p: runner(jaxconv.conv, plan, x, w, dy, padding, argnums)
                        for p, plan in PLANS.items()}
            times = bench.interleaved(runners, repeats=args.repeats)
            base = np.array(times["autodiff"]["rounds"])
            rows.append({"layer": name, "composition": composition, "vs_autodiff": {
                p: float(np.median(base / np.array(times[p]["rounds"]))) for p in PLANS}})
            print(json.dumps(rows[-1]), flush=True)
    info["load_after"] = list(os.getloadavg())
    lines = ["# Single-input-channel layers: forced plans against autodiff", "",
             bench.run_header(info, "float32") + " Medians of per-round ratios of interleaved "
             "calls, autodiff's time / the plan's (> 1: faster). `layer`: y, dx and dw; `first "
             "layer`: y and dw (dX dead, as in a network's first layer).", "",
             "| layer | composition | " + " | ".join(PLANS) + " |",
             "|" + "---|" * (len(PLANS) + 2)]
    lines += [f"| {r['layer']} | {r['composition']} | "
              + " | ".join(f"{r['vs_autodiff'][p]:.2f}" for p in PLANS) + " |" for r in rows]
    bench.write_results(args.out_dir, "bench_single_channel", {"meta": info, "rows": rows}, lines)


if __name__ == "__main__":
    main()
