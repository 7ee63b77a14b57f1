"""Training benchmark of issue #5: whole training steps and a full ``jaxconv train`` run.

1. One jitted training step (loss, gradients, Adam) of ``lenet5`` (batch 128, 28×28) and
   ``cnn1d`` (batch 100, MNIST-1D shapes), variants interleaved (see :mod:`jaxconv.bench`), with
   XLA's memory analysis of each compiled step (peak = arguments + outputs + temporaries).
2. The full training of cnn1d on MNIST-1D through :func:`jaxconv.train.fit` (what
   ``jaxconv train --model cnn1d --grads manual|autodiff`` runs), manual and autodiff runs
   alternated; the statistic is the training time the summary reports (compilation excluded).

Targets (CPU, float32): lenet5 step manual >= 2x faster than autodiff and within 1.25x of
PyTorch's step; cnn1d full training manual >= 1.5x faster than autodiff; peak memory of the
step <= 1.25x autodiff's.

Usage::

    python experiments/bench_train.py                      # steps + 2 alternated runs each
    python experiments/bench_train.py --epochs 20 --runs 1 # a shorter full-training check

Writes ``experiments/results/bench_train.{md,json}`` with the load average around the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jaxconv
from jaxconv import bench, data, train

RESULTS = Path(__file__).resolve().parent / "results"


def full_training(epochs: int | None, runs: int) -> list[dict]:
    dataset = data.load("mnist1d")
    out = []
    for i in range(runs):
        for grads, policy in (("manual", "auto"), ("autodiff", "auto"), ("autodiff", "xla")):
            config = train.TrainConfig(dataset="mnist1d", model="cnn1d", grads=grads, seed=0,
                                       epochs=epochs)
            with jaxconv.policy(policy):
                s = train.fit(config, dataset).summary
            out.append({"run": i, "grads": grads, "policy": policy,
                        "train_seconds": s["train_seconds"], "compile_seconds":
                        s["compile_seconds"], "epochs": s["epochs"], "steps": s["steps"],
                        "test_accuracy": s["test_accuracy"], "load": os.getloadavg()[0]})
            print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the full cnn1d training (default: the model's)")
    parser.add_argument("--runs", type=int, default=2, help="alternated full trainings per mode")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = bench.run_info("bench_train.py", sys.argv[1:], args.repeats)
    steps = [bench.bench_train_step(name, args.repeats, torch=not args.no_torch)
             for name in bench.TRAIN_STEPS]
    table = bench.step_table(steps)
    runs = full_training(args.epochs, args.runs) if args.runs else []
    info["load_after"] = list(os.getloadavg())

    def total(grads, policy):
        return sum(r["train_seconds"] for r in runs if (r["grads"], r["policy"]) == (grads,
                                                                                     policy))

    lenet = next(r for r in table if r["model"] == "lenet5")
    targets = {
        "lenet5 step manual >= 2x autodiff (wall)": lenet["vs_autodiff_wall"] >= 2,
        "lenet5 step within 1.25x of PyTorch (wall)": (lenet["vs_torch_wall"] >= 1 / 1.25
                                                       if bench._torch_version() else None),
        "peak memory <= 1.25x autodiff (every step)": all(
            r["peak_manual_over_autodiff"] <= 1.25 for r in table),
    }
    full = {}
    if runs:
        full = {"manual_s": total("manual", "auto"), "autodiff_s": total("autodiff", "auto"),
                "jax_xla_s": total("autodiff", "xla")}
        full["speedup_vs_autodiff"] = full["autodiff_s"] / full["manual_s"]
        full["speedup_vs_jax_xla"] = full["jax_xla_s"] / full["manual_s"]
        targets["cnn1d full training manual >= 1.5x autodiff"] = full["speedup_vs_autodiff"] >= 1.5
    data = {"meta": info, "steps": steps, "table": table, "full_training": runs, "full": full,
            "targets": targets}
    lines = [
        "# Training benchmark (issue #5)", "",
        bench.run_header(info) + " Step: medians of at "
        f"least {args.repeats} interleaved calls, until they add up to 1 s (loss + gradients + "
        "Adam, jitted; PyTorch eager, timed right after by a Python process of its own). "
        "Peak memory: XLA's memory_analysis() of the compiled step, arguments + outputs + "
        "temporaries.", "",
        bench.markdown(table), "",
    ]
    if runs:
        lines += [f"Full cnn1d training on MNIST-1D (train.fit, {len(runs) // 3} alternated "
                  f"run(s) per mode, training seconds without compilation): manual "
                  f"{full['manual_s']:.1f} s, autodiff {full['autodiff_s']:.1f} s, jax_xla "
                  f"{full['jax_xla_s']:.1f} s: speed-up {full['speedup_vs_autodiff']:.2f}x over "
                  f"autodiff, {full['speedup_vs_jax_xla']:.2f}x over jax_xla.", ""]
    lines.append("Targets: " + "; ".join(
        f"{k}: {'met' if v else ('n/a' if v is None else 'NOT met')}" for k, v in targets.items()))
    bench.write_results(args.out_dir, "bench_train", data, lines)


if __name__ == "__main__":
    main()
