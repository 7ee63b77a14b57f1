"""Gradients inside a compiled loop: manual against autodiff when the step is a ``lax.scan`` body.

A jit-compiled training epoch (``jaxconv.train.make_epoch``, ``jaxconv train``, or any script
that scans or ``fori_loop``s its step) puts every gradient in a loop body. There XLA:CPU
(jaxlib 0.10.2) keeps a convolution in the layout it was written in, and runs one that is not
channels-last (input (N, *S, C), kernel (*K, I, O), output (N, *S, C)) through a generic loop
instead of its fast convolution; outside loops it transposes such a convolution into that
layout first. JAX's own dW contracts the batch with the channels playing the batch, and its dX
swaps the kernel's channels in the dimension numbers: both stay in the slow layout inside a
loop. jaxconv's dX correlates channels-last like the forward, and policy ``auto`` computes an
XLA dW as ``xla_cl`` (``dw_channels_last`` in ``jaxconv/ops/conv.py``), the reference with its
transposes written out. (Policy ``xla`` keeps the reference's layout, JAX's own, which rounds
exactly as ``jax.grad`` does and is as slow in a loop.)

Three measurements, every program compiled first (compile time excluded), variants interleaved
round by round, medians:

1. Layers of ``jaxconv.bench`` sets: one forward+backward (jit of vjp, inputs, weights, bias)
   repeated ``--steps`` times as a ``lax.scan`` body (each step's input and upstream gradient
   scaled by the previous step's output, so no step can be hoisted or merged), for
   ``jaxconv.conv`` (manual), ``jaxconv.autodiff.conv`` (the twin: same forward) and the twin
   under policy ``xla`` (plain JAX); and the manual step as a jitted function called
   ``--steps`` times (the same work outside a loop).
2. Epochs of jaxconv's models (``jaxconv.train.make_epoch``: loss, gradients and Adam in a
   scan over ``--steps`` batches): manual against autodiff against plain JAX, on random inputs
   of :data:`jaxconv.bench.TRAIN_STEPS`' shapes (values do not change the time).
3. Other people's models (``experiments/bench_models.py``'s Flax, Haiku and Equinox models,
   when installed): ``--steps`` Adam steps of ``jax.grad(jaxconv.manual(loss))`` against
   ``jax.grad(loss)`` as one scan.

Usage::

    python experiments/bench_scan.py [--sets readme] [--steps 2] [--repeats 3]

Writes ``experiments/results/bench_scan.{md,json}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxconv
import jaxconv.autodiff
from jaxconv import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import MODELS  # noqa: E402  (experiments/bench_models.py, beside this file)

RESULTS = Path(__file__).resolve().parent / "results"
# (name, op, policy) of the three layer variants: the manual rule, its twin, plain JAX.
LAYER_VARIANTS = (("manual", jaxconv.conv, "auto"), ("autodiff", jaxconv.autodiff.conv, "auto"),
                  ("jax_xla", jaxconv.autodiff.conv, "xla"))


def _median(times: dict, name: str) -> float:
    return float(np.median(times[name]["rounds"]))


def _scan(step, steps: int):
    """``steps`` applications of ``step(carry) -> carry`` as one ``lax.scan``."""
    return lambda carry: jax.lax.scan(lambda c, _: (step(c), None), carry, None, length=steps)[0]


def layer_row(spec: bench.Layer, steps: int, repeats: int) -> dict:
    x, w, b, dy = bench._layer_inputs(spec, jax.random.key(0))
    kwargs = spec.kwargs()

    def step_of(op):
        def step(s):
            y, vjp = jax.vjp(lambda x, w, b: op(x, w, b, **kwargs), x * s, w, b)
            dx, dw, db = vjp(dy * s)
            return 1 + 1e-9 * (jnp.sum(y) + jnp.sum(dx) + jnp.sum(dw) + jnp.sum(db))
        return step

    s0 = jnp.float32(1)
    runners = {}
    for name, op, policy in LAYER_VARIANTS:
        runners[name] = bench.compile_call(_scan(step_of(op), steps), s0, policy=policy)
    one = bench.compile_call(step_of(jaxconv.conv), s0)
    runners["manual_calls"] = lambda: [one() for _ in range(steps)][-1]
    t = bench.interleaved(runners, repeats, warmup=1, min_seconds=0)
    manual = _median(t, "manual")
    return {"layer": spec.name, "x": "×".join(map(str, spec.x)),
            "w": "×".join(map(str, spec.w)), "stride": spec.stride,
            "manual ms/step": manual / steps * 1e3,
            "autodiff ms/step": _median(t, "autodiff") / steps * 1e3,
            "vs autodiff": _median(t, "autodiff") / manual,
            "vs jax_xla": _median(t, "jax_xla") / manual,
            "manual loop/calls": manual / _median(t, "manual_calls"), "times": t}


def epoch_row(name: str, steps: int, repeats: int) -> dict:
    from jaxconv.train import make_epoch

    model, optimizer, params, opt_state, x, y = bench.train_problem(name, steps)
    batches = jnp.arange(x.shape[0], dtype=jnp.int32).reshape(steps, -1)
    runners = {}
    for variant, grads, policy in bench.TRAIN_VARIANTS:
        epoch = make_epoch(model.apply, optimizer, grads)
        runners[variant] = bench.compile_call(epoch, params, opt_state, x, y, batches,
                                              policy=policy)
    t = bench.interleaved(runners, repeats, warmup=1, min_seconds=0)
    return {"model": name, "library": "jaxconv", "batch": batches.shape[1], "steps": steps,
            **_speeds(t, steps)}


def model_row(name: str, steps: int, repeats: int) -> dict:
    library, build, batch, _ = MODELS[name]
    loss, (params, *rest) = build(batch)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    def epoch_of(fn):
        grad = jax.grad(fn)

        def step(carry):
            params, opt_state = carry
            updates, opt_state = optimizer.update(grad(params, *rest), opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        return _scan(step, steps)

    runners = {variant: bench.compile_call(epoch_of(fn), (params, opt_state))
               for variant, fn in (("manual", jaxconv.manual(loss)), ("autodiff", loss))}
    t = bench.interleaved(runners, repeats, warmup=1, min_seconds=0)
    return {"model": name, "library": library, "batch": batch, "steps": steps,
            **_speeds(t, steps)}


def _speeds(t: dict, steps: int) -> dict:
    manual = _median(t, "manual")
    row = {"manual ms/step": manual / steps * 1e3,
           "autodiff ms/step": _median(t, "autodiff") / steps * 1e3,
           "vs autodiff": _median(t, "autodiff") / manual}
    if "jax_xla" in t:
        row["vs jax_xla"] = _median(t, "jax_xla") / manual
    return {**row, "times": t}


def strip(rows: list[dict]) -> list[dict]:
    """The rows without their raw timings (those go to the .json)."""
    return [{k: v for k, v in r.items() if k != "times"} for r in rows]


def _installed(name: str) -> bool:
    """Whether the library of ``bench_models.MODELS[name]`` can be imported."""
    return importlib.util.find_spec(MODELS[name][0].split(".")[0]) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["readme"], choices=sorted(bench.SETS))
    parser.add_argument("--layers", nargs="*", default=None, help="only these layers, by name")
    parser.add_argument("--epochs", nargs="*", default=list(bench.TRAIN_STEPS),
                        choices=sorted(bench.TRAIN_STEPS))
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=2, help="loop iterations per program")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = bench.run_info("bench_scan.py", sys.argv[1:], args.repeats)
    specs = list(dict.fromkeys(s for name in args.sets for s in bench.SETS[name]))
    if args.layers is not None:
        specs = [s for s in specs if s.name in args.layers] or [bench.layer(n)
                                                                for n in args.layers]
    layers = []
    for spec in specs:
        layers.append(layer_row(spec, args.steps, args.repeats))
        print(strip(layers[-1:])[0], flush=True)
    epochs = [epoch_row(name, args.steps, args.repeats) for name in args.epochs]
    others = [model_row(name, args.steps, args.repeats) for name in args.models
              if _installed(name)]
    info["load_after"] = list(os.getloadavg())
    lines = [
        "# Gradients inside a compiled loop (`lax.scan`): manual against autodiff", "",
        bench.run_header(info) + f" Each program runs {args.steps} steps as one `lax.scan`; "
        "medians of interleaved rounds, compile excluded. `vs autodiff`: autodiff's time over "
        "manual's (> 1: manual faster); `jax_xla`: the twin under policy `xla` (plain JAX); "
        "`manual loop/calls`: the manual scan over the same steps as separate jitted calls.",
        "",
    ]
    if layers:
        ratios = np.array([r["vs autodiff"] for r in layers])
        lines += ["## Layers (forward + dX + dW per step)", "", bench.markdown(strip(layers)), "",
                  f"Geometric mean vs autodiff {np.exp(np.mean(np.log(ratios))):.2f}×, worst "
                  f"{ratios.min():.2f}×, best {ratios.max():.2f}×.", ""]
    if epochs:
        lines += ["## jaxconv's models: `jaxconv.train.make_epoch` (loss, gradients, Adam)", "",
                  bench.markdown(strip(epochs)), ""]
    if others:
        lines += ["## Other people's models: Adam steps of `jax.grad(jaxconv.manual(loss))` "
                  "against `jax.grad(loss)`", "", bench.markdown(strip(others)), ""]
    bench.write_results(args.out_dir, "bench_scan", {"meta": info, "layers": layers,
                                                     "epochs": epochs, "models": others},
                        lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
