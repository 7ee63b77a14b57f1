"""Forced plans on single-input-channel 2-D layers too wide for the banded rules.

The Flax MNIST CNN's first convolution (1 input channel, 28×28, 3×3 "SAME") ran faster with a
shifted forward and an im2col dW than with ``auto``'s XLA rules. Before teaching ``auto`` that,
this script times the same two choices on four *other* single-channel layers (none of them the
Flax layer), forward+backward (jit of vjp) against ``jaxconv.autodiff.conv``, interleaved
rounds, median of per-round ratios (> 1: faster than autodiff).

Usage::

    python experiments/bench_single_channel.py [REPEATS]
"""

from __future__ import annotations

import sys

import jax
import numpy as np

import jaxconv
import jaxconv.autodiff as ad
from jaxconv import bench

SHAPES = {  # name: (x shape NHWC, kernel (*K, C_in, C_out), padding)
    "gray64.k5.b32": ((32, 64, 64, 1), (5, 5, 1, 16), "SAME"),
    "gray96.k3.b16": ((16, 96, 96, 1), (3, 3, 1, 32), "SAME"),
    "gray48.k3.b64.valid": ((64, 48, 48, 1), (3, 3, 1, 8), "VALID"),
    "gray128.k7.b8": ((8, 128, 128, 1), (7, 7, 1, 16), "SAME"),
}
PLANS = {"auto": {}, "forward shifted": {"forward": "shifted"}, "dw im2col": {"dw": "im2col"},
         "both": {"forward": "shifted", "dw": "im2col"}}


def runner(op, plan, x, w, dy, padding):
    """A call of the jitted vjp of ``op``, traced and run under the forced ``plan``."""
    def vjp(x, w, dy):
        y, pullback = jax.vjp(lambda x, w: op(x, w, padding=padding), x, w)
        return y, pullback(dy)  # y returned, so the forward is not dead code

    f = jax.jit(vjp)

    def run():
        with jaxconv.use(**plan):
            return f(x, w, dy)

    return run


def main(repeats: int = 10) -> None:
    for name, (x_shape, w_shape, padding) in SHAPES.items():
        kx, kw, ky = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, x_shape)
        w = 0.1 * jax.random.normal(kw, w_shape)
        dy = jax.random.normal(ky, ad.conv(x, w, padding=padding).shape)
        runners = {"autodiff": runner(ad.conv, {}, x, w, dy, padding)}
        runners |= {p: runner(jaxconv.conv, plan, x, w, dy, padding) for p, plan in PLANS.items()}
        times = bench.interleaved(runners, repeats=repeats)
        base = np.array(times["autodiff"]["rounds"])
        ratios = {p: float(np.median(base / np.array(times[p]["rounds"]))) for p in PLANS}
        print(name, "  ".join(f"{p} {r:.2f}x" for p, r in ratios.items()), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
