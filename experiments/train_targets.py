"""Accuracy targets of the models (issue #3, section 7), measured with the real training loop.

Each target trains one model with its default recipe (``jaxconv.recipes``) and manual
gradients, once per seed, through :func:`jaxconv.train.fit`, the function behind
``jaxconv train``; the table gives the equivalent command line. The mean test accuracy over the
seeds is compared with the target, and each run's training time (compilation excluded) with its
time limit where the issue sets one.

=========  ========  ==========  ======================================================
model      dataset   target      limit per run
=========  ========  ==========  ======================================================
cnn1d      mnist1d   >= 94%      <= 60 s  (the MNIST-1D paper's CNN)
tcn1d      mnist1d   >= 96%      <= 300 s (the paper's human-expert figure)
mlp        mnist1d   >= 68%      none     (the paper's MLP)
lenet5     digits    >= 98%      none
=========  ========  ==========  ======================================================

Usage::

    python experiments/train_targets.py                 # seeds 0, 1, 2: the recorded results
    python experiments/train_targets.py --quick         # seed 0, 3 epochs: a smoke run
    python experiments/train_targets.py --models cnn1d tcn1d --seeds 0

Writes ``experiments/results/train_targets.{md,json,png}`` (``train_targets_quick.*`` with
``--quick``, so a smoke run never overwrites the recorded results). Timings depend on the machine
and on its load: the JSON records the CPU count and the load average around every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from jaxconv import data, models, train

RESULTS = Path(__file__).resolve().parent / "results"

# (model, dataset, minimum mean test accuracy, seconds of training allowed per run or None)
TARGETS = (
    ("cnn1d", "mnist1d", 0.94, 60.0),
    ("tcn1d", "mnist1d", 0.96, 300.0),
    ("mlp", "mnist1d", 0.68, None),
    ("lenet5", "digits", 0.98, None),
)
QUICK_EPOCHS = 3


def command(model: str, dataset: str, grads: str, seed: int, epochs: int | None) -> str:
    """The ``jaxconv train`` command line that performs the same run."""
    line = f"jaxconv train --dataset {dataset} --model {model} --grads {grads} --seed {seed}"
    return line + (f" --epochs {epochs}" if epochs is not None else "")


def run_one(model: str, dataset: data.Dataset, grads: str, seed: int,
            epochs: int | None) -> dict:
    """Train once; return the run's summary, its test-accuracy curve and the load around it."""
    config = train.TrainConfig(dataset=dataset.name, model=model, grads=grads, seed=seed,
                               epochs=epochs)
    load_before = os.getloadavg()
    tic = time.perf_counter()
    result = train.fit(config, dataset)
    wall = time.perf_counter() - tic
    s = result.summary
    return {
        "model": model, "dataset": dataset.name, "grads": grads, "seed": seed,
        "test_accuracy": s["test_accuracy"], "train_accuracy": s["train_accuracy"],
        "final_loss": s["final_loss"], "train_seconds": s["train_seconds"],
        "compile_seconds": s["compile_seconds"], "wall_seconds": wall, "epochs": s["epochs"],
        "steps": s["steps"],
        "recipe": {k: s[k] for k in ("optimizer", "lr", "schedule", "epochs", "batch_size",
                                     "weight_decay")},
        "curve": [r["test_accuracy"] for r in result.history],
        "load_before": list(load_before), "load_after": list(os.getloadavg()),
        "command": command(model, dataset.name, grads, seed, epochs),
    }


def summarize(runs: list[dict], target: float, limit: float | None) -> dict:
    acc = np.array([r["test_accuracy"] for r in runs])
    secs = np.array([r["train_seconds"] for r in runs])
    return {
        "model": runs[0]["model"], "dataset": runs[0]["dataset"], "grads": runs[0]["grads"],
        "seeds": [r["seed"] for r in runs], "mean_accuracy": float(acc.mean()),
        "std_accuracy": float(acc.std()), "target": target,
        "accuracy_met": bool(acc.mean() >= target),
        "mean_train_seconds": float(secs.mean()), "max_train_seconds": float(secs.max()),
        "limit_seconds": limit,
        "time_met": None if limit is None else bool(secs.max() <= limit),
        "recipe": runs[0]["recipe"],
    }


def write_markdown(path: Path, rows: list[dict], runs: list[dict], meta: dict) -> None:
    lines = [
        "# Accuracy targets (issue #3, section 7)",
        "",
        f"Produced by `{meta['script_command']}` on {meta['finished']} "
        f"({meta['cpus']} CPUs, {meta['platform']}; jax {meta['jax']}). Training seconds exclude "
        "compilation; the machine was shared, see the load averages below.",
        "",
        "| model | dataset | grads | seeds | test accuracy (mean ± std) | target | train s "
        "(mean / max) | limit | recipe | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "met" if r["accuracy_met"] else "NOT met"
        if r["limit_seconds"] is None:
            limit = "–"
        else:
            limit = f"{r['limit_seconds']:.0f} s ({'met' if r['time_met'] else 'NOT met'})"
        rc = r["recipe"]
        recipe = (f"{rc['optimizer']} lr {rc['lr']:g}, {rc['schedule']}, {rc['epochs']} epochs, "
                  f"batch {rc['batch_size']}"
                  + (f", wd {rc['weight_decay']:g}" if rc["optimizer"] == "adamw" else ""))
        seeds = ", ".join(str(s) for s in r["seeds"])
        cmd = command(r["model"], r["dataset"], r["grads"], r["seeds"][0], meta["epochs"])
        cmd = cmd.replace(f"--seed {r['seeds'][0]}", f"--seed {{{seeds}}}" if len(r["seeds"]) > 1
                          else f"--seed {seeds}")
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['grads']} | {seeds} | "
            f"{100 * r['mean_accuracy']:.2f}% ± {100 * r['std_accuracy']:.2f} | "
            f">= {100 * r['target']:.0f}% ({ok}) | {r['mean_train_seconds']:.1f} / "
            f"{r['max_train_seconds']:.1f} | {limit} | {recipe} | `{cmd}` |"
        )
    lines += ["", "## Runs", "",
              "| model | seed | test accuracy | train s | compile s | load avg (1 min) before → "
              "after |", "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['seed']} | {100 * r['test_accuracy']:.2f}% | "
            f"{r['train_seconds']:.1f} | {r['compile_seconds']:.1f} | "
            f"{r['load_before'][0]:.1f} → {r['load_after'][0]:.1f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, rows: list[dict], runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(rows):
        color = colors[i % len(colors)]
        curves = [r["curve"] for r in runs if r["model"] == row["model"]]
        mean = np.mean(np.array(curves), axis=0)
        epochs = np.arange(1, len(mean) + 1)
        ax_curve.plot(epochs, 100 * mean, color=color,
                      label=f"{row['model']} ({row['dataset']}): {100 * row['mean_accuracy']:.1f}%")
        ax_curve.axhline(100 * row["target"], color=color, linestyle="--", linewidth=0.8)
        secs = [r["train_seconds"] for r in runs if r["model"] == row["model"]]
        ax_time.bar(i, np.mean(secs), color=color, yerr=np.std(secs))
        if row["limit_seconds"] is not None:
            ax_time.hlines(row["limit_seconds"], i - 0.4, i + 0.4, color="k", linestyle="--")
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("test accuracy (%), mean over seeds")
    ax_curve.set_ylim(0, 100)
    ax_curve.set_title("test accuracy (dashed: targets)")
    ax_curve.legend(loc="lower right", fontsize=8)
    ax_time.set_xticks(range(len(rows)), [r["model"] for r in rows])
    ax_time.set_ylabel("training seconds per run")
    ax_time.set_title("training time (dashed: limits)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"seed 0 only, {QUICK_EPOCHS} epochs; writes train_targets_quick.*")
    parser.add_argument("--models", nargs="+", choices=[t[0] for t in TARGETS],
                        default=[t[0] for t in TARGETS])
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--grads", choices=models.GRADS, default="manual")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = QUICK_EPOCHS if args.quick else None
    stem = "train_targets_quick" if args.quick else "train_targets"
    args.out_dir.mkdir(parents=True, exist_ok=True)

    datasets: dict[str, data.Dataset] = {}
    rows, runs = [], []
    for model, dataset, target, limit in TARGETS:
        if model not in args.models:
            continue
        if dataset not in datasets:
            datasets[dataset] = data.load(dataset)
        these = []
        for seed in seeds:
            run = run_one(model, datasets[dataset], args.grads, seed, epochs)
            print(f"{model:7s} {dataset:8s} seed {seed}: test accuracy "
                  f"{100 * run['test_accuracy']:.2f}%, train {run['train_seconds']:.1f} s "
                  f"(compile {run['compile_seconds']:.1f} s, load {run['load_before'][0]:.1f})",
                  flush=True)
            these.append(run)
        runs += these
        rows.append(summarize(these, target, limit))

    import jax

    meta = {
        "script_command": "python experiments/train_targets.py" + (" --quick" if args.quick
                                                                    else ""),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
        "jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "epochs": epochs,
    }
    (args.out_dir / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "targets": rows, "runs": runs}, indent=2) + "\n")
    write_markdown(args.out_dir / f"{stem}.md", rows, runs, meta)
    write_plot(args.out_dir / f"{stem}.png", rows, runs)
    for r in rows:
        print(f"{r['model']:7s} {100 * r['mean_accuracy']:.2f}% ± {100 * r['std_accuracy']:.2f} "
              f"(target {100 * r['target']:.0f}%: {'met' if r['accuracy_met'] else 'NOT met'}); "
              f"train s max {r['max_train_seconds']:.1f}"
              + ("" if r["limit_seconds"] is None else
                 f" (limit {r['limit_seconds']:.0f} s: {'met' if r['time_met'] else 'NOT met'})"))
    print(f"wrote {args.out_dir / stem}.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
