"""Winograd F(2×2, 3×3) against XLA's convolution, role by role, on 3×3 stride-1 layers.

Issue #11 §3 asks for fewer multiplications where XLA's convolution already runs near the matmul
rate. ``winograd`` is a formulation of every role (``jaxconv/ops/_formulations.py``): 16
multiplications per 2×2 output tile and channel pair instead of 36. This script measures what it
buys on this machine, for every 3×3, stride-1, undilated, ungrouped layer of the tune and
held-out sets and the Flax MNIST CNN's second convolution:

- forward+backward (jit of vjp, inputs, weights and bias) of ``jaxconv.conv`` with every role on
  XLA's convolution, then one role, the forward and dW (``auto``'s plan from ``WINOGRAD_MIN_C``
  channels), and all three forced to ``winograd``, against plain JAX (``jaxconv.autodiff.conv``
  under policy ``xla``: XLA's convolution differentiated by JAX), interleaved rounds, medians of
  per-round ratios (> 1: faster than plain JAX);
- the forward alone, XLA's convolution against Winograd, and the share of Winograd's forward
  spent in its input transform (V = Bᵀ d B), which is memory traffic: V holds 4 numbers per input
  number, the products' output M 4 per output number;
- the float32 error of each role, against the float64 reference, relative to the result's scale.

Usage::

    python experiments/bench_winograd.py [--repeats 10]

Writes ``experiments/results/bench_winograd.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxconv
import jaxconv.autodiff
from jaxconv import bench
from jaxconv.ops import _formulations as F
from jaxconv.ops import conv as K

RESULTS = Path(__file__).resolve().parent / "results"
FLAX_CONV2 = bench.Layer("flax_cnn.conv2", (128, 14, 14, 32), (3, 3, 32, 64), padding=1)
XLA = {"forward": "xla", "dx": "xla", "dw": "xla_cl"}
PLANS = {"xla": XLA, "forward": XLA | {"forward": "winograd"}, "dx": XLA | {"dx": "winograd"},
         "dw": XLA | {"dw": "winograd"},
         "forward_dw": XLA | {"forward": "winograd", "dw": "winograd"},
         "all": {"forward": "winograd", "dx": "winograd", "dw": "winograd"}}


def layers() -> list[bench.Layer]:
    """Every Winograd-suited layer of the tune and held-out sets, and the Flax CNN's conv2."""
    specs = [s for group in bench.SETS.values() for s in group]
    suited = [s for s in dict.fromkeys(specs) if F.winograd_suits(s.w, s.config())]
    return [*suited, FLAX_CONV2]


def _runner(fn, *args, plan=None, policy="auto"):
    with jaxconv.policy(policy), jaxconv.use(**(plan or {})):
        compiled = jax.jit(fn).lower(*args).compile()
    return lambda: compiled(*args)


def float32_errors(spec: bench.Layer) -> dict[str, float]:
    """max |winograd(float32) − reference(float64)| / max |reference|, per role, on a batch of
    at most 2 (the error is per tile; the batch does not change it)."""
    small = bench.Layer(spec.name, (min(2, spec.x[0]), *spec.x[1:]), spec.w, padding=spec.padding)
    cfg = small.config()
    x, w, _, dy = (a.astype(jnp.float64) for a in bench._layer_inputs(small, jax.random.key(1)))
    args = {"forward": (x, w, cfg), "dx": (dy, w, small.x[1:-1], cfg), "dw": (x, dy, (3, 3), cfg)}
    errors = {}
    for role, (a, b, *static) in args.items():
        expected = K.TABLES[role]["xla"](a, b, *static)
        got = K.TABLES[role]["winograd"](a.astype(jnp.float32), b.astype(jnp.float32), *static)
        errors[role] = float(jnp.max(jnp.abs(got - expected)) / jnp.max(jnp.abs(expected)))
    return errors


def bench_one(spec: bench.Layer, repeats: int) -> dict:
    x, w, b, dy = bench._layer_inputs(spec, jax.random.key(0))
    kw = spec.kwargs()

    def fwd_bwd(op):
        def run(x, w, b, dy):  # y returned, so the forward is not dead code
            y, vjp = jax.vjp(lambda x, w, b: op(x, w, b, **kw), x, w, b)
            return y, vjp(dy)
        return run

    runners = {"jax_xla": _runner(fwd_bwd(jaxconv.autodiff.conv), x, w, b, dy, policy="xla")}
    for name, plan in PLANS.items():
        runners[name] = _runner(fwd_bwd(jaxconv.conv), x, w, b, dy, plan=plan)
    cfg = spec.config()
    out = spec.out()[1:3]
    tiles = tuple(-(-o // 2) for o in out)
    forward = {
        "fwd_xla": _runner(lambda x, w: K.FORWARD["xla"](x, w, cfg), x, w),
        "fwd_winograd": _runner(lambda x, w: F.forward_winograd(x, w, cfg), x, w),
        "fwd_input_transform": _runner(lambda x: F._winograd_tiles(x, cfg.padding, tiles), x),
    }
    times = bench.interleaved(runners | forward, repeats)
    base = np.array(times["jax_xla"]["rounds"])
    ratios = {name: float(np.median(base / np.array(times[name]["rounds"]))) for name in PLANS}
    ms = {name: t["wall"] * 1e3 for name, t in times.items()}
    return {"layer": spec.name, "x": spec.x, "w": spec.w, "gflops_forward": spec.flops() / 1e9,
            "vs_jax_xla": ratios, "ms": ms, "float32_error": float32_errors(spec)}


def markdown(rows: list[dict], info: dict) -> list[str]:
    head = ("| layer | xla | winograd fwd | winograd dx | winograd dw | winograd fwd+dw | "
            "all winograd | fwd ms xla | fwd ms winograd | of it, input transform | "
            "f32 error fwd/dx/dw |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        v, ms, e = r["vs_jax_xla"], r["ms"], r["float32_error"]
        lines.append(
            f"| {r['layer']} | {v['xla']:.2f} | {v['forward']:.2f} | {v['dx']:.2f} | "
            f"{v['dw']:.2f} | {v['forward_dw']:.2f} | {v['all']:.2f} | {ms['fwd_xla']:.2f} | "
            f"{ms['fwd_winograd']:.2f} | "
            f"{ms['fwd_input_transform']:.2f} | "
            + "/".join(f"{e[k]:.1e}" for k in ("forward", "dx", "dw")) + " |")
    intro = [
        "# Winograd F(2×2, 3×3) against XLA's convolution (issue #11 §3)", "",
        bench.run_header(info, "float32") + " Forward+backward (jit of vjp) speed-ups of "
        "`jaxconv.conv` over plain JAX (XLA's convolution differentiated by JAX), medians of "
        "per-round ratios of interleaved calls (> 1: faster); `xla` forces XLA's convolution "
        "for every role (dW channels-last), the winograd columns force one role, the forward "
        "and dW (`auto`'s plan on these layers from 32 channels in and out), or all three. The "
        "forward columns time the "
        "forward alone (wall medians) and Winograd's input transform alone; the error is the "
        "float32 result's largest deviation from the float64 reference over the result's "
        "largest magnitude.", ""]
    return intro + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--layers", nargs="+", help="only these (names of layers())")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    specs = [s for s in layers() if not args.layers or s.name in args.layers]
    info = bench.run_info("bench_winograd.py", sys.argv[1:], args.repeats)
    tic = time.perf_counter()
    jax.config.update("jax_enable_x64", True)  # for the float64 reference of the error column
    rows = []
    for spec in specs:
        rows.append(bench_one(spec, args.repeats))
        print(json.dumps({k: rows[-1][k] for k in ("layer", "vs_jax_xla", "float32_error")}),
              flush=True)
    info["load_after"] = list(os.getloadavg())
    info["seconds"] = time.perf_counter() - tic
    bench.write_results(args.out_dir, "bench_winograd", {"meta": info, "layers": rows},
                        markdown(rows, info))


if __name__ == "__main__":
    main()
