"""Forward+backward of jaxconv.conv_transpose: the hand-derived rules against JAX's autodiff.

Variants (float32, CPU, jit of vjp with a fixed random dy; compile time excluded; medians of
interleaved rounds, see jaxconv.bench.interleaved):

- ``manual``: ``jaxconv.conv_transpose`` under the ``"auto"`` policy (forward = the conv's dX
  rule, dx = the conv's forward, dw = its dW rule with the roles swapped);
- ``autodiff``: ``jaxconv.autodiff.conv_transpose``, the same forward differentiated by JAX;
- ``jax_xla``: the twin under the ``"xla"`` policy, i.e. lax's lhs-dilated convolution
  differentiated by JAX (what ``lax.conv_transpose`` users get).

    PYTHONPATH=. python experiments/bench_conv_transpose.py [--repeats 10]

Writes ``experiments/results/bench_conv_transpose.{md,json}``: wall and process-CPU medians in
ms and the speed-ups of ``manual`` (ratios > 1: manual is faster). On a shared machine trust the
CPU-time ratios more than the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxconv
import jaxconv.autodiff
from jaxconv import bench

RESULTS = Path(__file__).resolve().parent / "results"

# (name, x (N, *S, C_in), w (*K, C_out // groups, C_in), kwargs): generator/decoder layers.
LAYERS = [
    ("dcgan 8->16", (16, 8, 8, 64), (4, 4, 32, 64), dict(stride=2, padding=1)),
    ("dcgan 16->32 rgb", (16, 16, 16, 32), (4, 4, 3, 32), dict(stride=2, padding=1)),
    ("unet up 2x2", (8, 16, 16, 64), (2, 2, 32, 64), dict(stride=2)),
    ("3x3 s2 op1", (8, 14, 14, 32), (3, 3, 16, 32), dict(stride=2, padding=1, output_padding=1)),
    ("1-D s2", (32, 64, 16), (4, 8, 16), dict(stride=2, padding=1)),
]


def runners(x, w, kwargs, dy):
    def vjp(op):
        def f(x, w, dy):
            y, pullback = jax.vjp(lambda x, w: op(x, w, **kwargs), x, w)
            return y, pullback(dy)

        return f

    return {
        "manual": bench.compile_call(vjp(jaxconv.conv_transpose), x, w, dy),
        "autodiff": bench.compile_call(vjp(jaxconv.autodiff.conv_transpose), x, w, dy),
        "jax_xla": bench.compile_call(vjp(jaxconv.autodiff.conv_transpose), x, w, dy,
                                      policy="xla"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    info = bench.run_info("bench_conv_transpose.py", sys.argv[1:] if argv is None else argv,
                          args.repeats)
    rng = np.random.default_rng(0)
    rows = []
    for name, x_shape, w_shape, kwargs in LAYERS:
        x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
        y_shape = jax.eval_shape(lambda x, w, kw=kwargs: jaxconv.conv_transpose(x, w, **kw),
                                 x, w).shape
        dy = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
        t = bench.interleaved(runners(x, w, kwargs, dy), args.repeats)
        row = {"layer": name, "x": list(x_shape), "w": list(w_shape), **kwargs}
        for variant, times in t.items():
            row[f"{variant}_ms"] = round(1e3 * times["wall"], 3)
            row[f"{variant}_cpu_ms"] = round(1e3 * times["cpu"], 3)
        for other in ("autodiff", "jax_xla"):
            row[f"{other}/manual"] = round(t[other]["wall"] / t["manual"]["wall"], 2)
            row[f"{other}/manual cpu"] = round(t[other]["cpu"] / t["manual"]["cpu"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    info["load_after"] = list(os.getloadavg())
    cols = ["layer", "manual_ms", "autodiff_ms", "jax_xla_ms", "autodiff/manual",
            "autodiff/manual cpu", "jax_xla/manual", "jax_xla/manual cpu"]
    lines = [bench.run_header(info), "", "| " + " | ".join(cols) + " |",
             "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    bench.write_results(args.out_dir, "bench_conv_transpose", {"meta": info, "rows": rows}, lines)


if __name__ == "__main__":
    main()
