"""Feedback rules in training (issue 13 §3): backprop, feedback alignment and sign symmetry on
the library's models, with the classic diagnostic of feedback alignment.

Every (model, dataset) below trains under each rule of ``jaxconv.train.FEEDBACKS`` with its
default recipe (``jaxconv.recipes``) and manual gradients, once per seed, through
:func:`jaxconv.train.fit` (the function behind ``jaxconv train --feedback RULE``):

- ``backprop``: dx = dy·wᵀ (full-conv(rot180 w, dy)), the lecture's rule;
- ``random`` (feedback alignment, Lillicrap et al. 2016): dx goes back through a fixed random
  matrix per layer, drawn from the seed at He's scale (``TrainConfig.feedback_rule``);
- ``sign`` (sign symmetry, Liao et al. 2016): through sign(w)·mean|w|.

After every epoch ``fit`` measures the angle between the rule's update direction and the true
gradient on a fixed batch (``alignment_deg``, all parameters flattened; per layer in the JSON).
The flattened angle is dominated by the layers with the largest gradients, and the last layer's
update is exact under every rule (no feedback kernel lies between it and the loss), so the table
and the figure also give the mean of the per-layer angles over the layers before the last
(``hidden_deg``): that is where a rule differs from backprop.

The epochs are cut for some models so that the whole experiment fits in about 25 minutes on a
shared 2-core machine (:data:`RUNS` gives each model's epochs and the recipe's); the cosine
schedule then decays over the shorter run. The table says so in its epochs column.

Usage::

    python experiments/feedback_rules.py            # seeds 0, 1, 2: the recorded results
    python experiments/feedback_rules.py --quick    # seed 0, 2 epochs: a smoke run

Writes ``experiments/results/feedback_rules.{md,json,png}`` (``feedback_rules_quick.*`` with
``--quick``). Finished runs are appended to ``feedback_rules.jsonl`` as they end, and a rerun
skips them (delete the file to start over).
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

from jaxconv import data, recipes, train

RESULTS = Path(__file__).resolve().parent / "results"

# (model, dataset, epochs run); the recipe's epochs are recipes.recipe(model)["epochs"].
RUNS = (
    ("mlp", "mnist1d", 150),
    ("cnn1d", "mnist1d", 40),
    ("tcn1d", "mnist1d", 3),
    ("mlp", "digits", 150),
    ("lenet5", "digits", 15),
)
SEEDS = (0, 1, 2)
QUICK_EPOCHS = 2


def run_one(model: str, dataset: data.Dataset, rule: str, seed: int, epochs: int) -> dict:
    config = train.TrainConfig(dataset=dataset.name, model=model, feedback=rule, seed=seed,
                               epochs=epochs)
    load = os.getloadavg()[0]
    tic = time.perf_counter()
    result = train.fit(config, dataset)
    s = result.summary
    return {
        "model": model, "dataset": dataset.name, "feedback": rule, "seed": seed,
        "epochs": epochs, "test_accuracy": s["test_accuracy"], "final_loss": s["final_loss"],
        "alignment_deg": s["alignment_deg"],
        "alignment_deg_layers": result.history[-1]["alignment_deg_layers"],
        "train_seconds": s["train_seconds"], "compile_seconds": s["compile_seconds"],
        "wall_seconds": time.perf_counter() - tic, "load_before": load,
        "load_after": os.getloadavg()[0],
        "hidden_deg": hidden_deg(result.history[-1]["alignment_deg_layers"]),
        "curves": {**{k: [r[k] for r in result.history]
                      for k in ("train_loss", "test_accuracy", "alignment_deg")},
                   "hidden_deg": [hidden_deg(r["alignment_deg_layers"]) for r in result.history],
                   "alignment_deg_layers": [r["alignment_deg_layers"] for r in result.history]},
        "command": (f"jaxconv train --dataset {dataset.name} --model {model} --feedback {rule} "
                    f"--seed {seed} --epochs {epochs}"),
    }


def hidden_deg(layers: dict[str, float]) -> float:
    """The mean per-layer angle over every layer but the last (``out``; the perceptron has no
    such layer: NaN)."""
    angles = [v for k, v in layers.items() if k != "out"]
    return float(np.mean(angles)) if angles and "out" in layers else float("nan")


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for model, dataset, _ in RUNS:
        row = {"model": model, "dataset": dataset, "rules": {}}
        for rule in train.FEEDBACKS:
            mine = [r for r in runs if (r["model"], r["dataset"], r["feedback"]) ==
                    (model, dataset, rule)]
            if not mine:
                continue
            acc = np.array([r["test_accuracy"] for r in mine])
            angle = np.array([r["alignment_deg"] for r in mine])
            hidden = np.array([r["hidden_deg"] for r in mine])
            row["epochs"] = mine[0]["epochs"]
            row["rules"][rule] = {
                "seeds": [r["seed"] for r in mine], "test_accuracy_mean": float(acc.mean()),
                "test_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "alignment_deg_mean": float(angle.mean()),
                "hidden_deg_mean": float(hidden.mean()),
                "train_seconds_mean": float(np.mean([r["train_seconds"] for r in mine])),
            }
        if row["rules"]:
            rows.append(row)
    return rows


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "–"
    return f"{100 * stats['test_accuracy_mean']:.2f}% ± {100 * stats['test_accuracy_std']:.2f}"


def _discussion(path: Path) -> str:
    """The hand-written discussion of an earlier ``path`` (between ``## Discussion`` and
    ``## Runs``), kept across reruns; a placeholder the first time."""
    if path.exists():
        text = path.read_text()
        if "## Discussion" in text and "## Runs" in text:
            return text.split("## Discussion", 1)[1].split("## Runs", 1)[0].strip()
    return "(to be written from the numbers above)"


def write_markdown(path: Path, rows: list[dict], runs: list[dict], meta: dict) -> None:
    discussion = _discussion(path)
    lines = [
        "# Feedback rules in training: backprop, feedback alignment, sign symmetry",
        "",
        f"Produced by `python experiments/feedback_rules.py{meta['flag']}` on {meta['date']} "
        f"({meta['cpus']} CPUs, {meta['platform']}; jax {meta['jax']}), {meta['minutes']:.1f} "
        "min in all on a shared machine. Each model trains with its default recipe "
        "(`jaxconv.recipes`) and manual gradients; only the rule that sends dx back changes. "
        "Test accuracy is the mean ± sample sd over the seeds. The angles are those between the "
        "rule's update and the true gradient on a fixed batch (the first "
        f"{train.ALIGNMENT_EXAMPLES} training examples) after the last epoch, mean over the "
        "seeds: *all* over every parameter flattened (`alignment_deg`), *hidden* the mean of the "
        "per-layer angles over the layers before the last (whose update is exact under every "
        "rule, and whose large gradient dominates the flattened angle). Backprop's are 0° by "
        "construction. Below 90° the update still points downhill.",
        "",
        "**Epochs are cut** where the epochs column shows fewer than the recipe's, to fit the "
        "whole experiment in about 25 minutes on this machine; the cosine schedule decays over "
        "the shorter run, so those rows sit below the models' full-length accuracies.",
        "",
        "| model | dataset | epochs (recipe) | seeds | backprop | random (FA) | sign | angle "
        "random: all / hidden | angle sign: all / hidden |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["rules"]
        recipe_epochs = recipes.recipe(row["model"])["epochs"]
        seeds = ", ".join(str(s) for s in next(iter(r.values()))["seeds"])
        angle = {k: f"{r[k]['alignment_deg_mean']:.1f}° / {r[k]['hidden_deg_mean']:.1f}°"
                 if k in r else "–" for k in ("random", "sign")}
        lines.append(
            f"| {row['model']} | {row['dataset']} | {row['epochs']} ({recipe_epochs}) | {seeds} "
            f"| {_cell(r.get('backprop'))} | {_cell(r.get('random'))} | {_cell(r.get('sign'))} "
            f"| {angle['random']} | {angle['sign']} |")
    lines += ["", "![test accuracy and angle over training](feedback_rules.png)", "",
              "## Discussion", "", discussion, "", "## Runs", "",
              "| model | dataset | rule | seed | test accuracy | angle all / hidden | train s | "
              "compile s | load (1 min) before → after | command |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['feedback']} | {r['seed']} | "
            f"{100 * r['test_accuracy']:.2f}% | {r['alignment_deg']:.1f}° / "
            f"{r['hidden_deg']:.1f}° | "
            f"{r['train_seconds']:.1f} | {r['compile_seconds']:.1f} | {r['load_before']:.1f} → "
            f"{r['load_after']:.1f} | `{r['command']}` |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, rows: list[dict], runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"backprop": "black", "random": "tab:orange", "sign": "tab:blue"}
    keys = ("train_loss", "test_accuracy", "alignment_deg", "hidden_deg")
    fig, axes = plt.subplots(len(keys), len(rows), figsize=(3.2 * len(rows), 10.5),
                             squeeze=False, sharex="col")
    for j, row in enumerate(rows):
        for rule in train.FEEDBACKS:
            mine = [r for r in runs if (r["model"], r["dataset"], r["feedback"]) ==
                    (row["model"], row["dataset"], rule)]
            if not mine:
                continue
            for i, key in enumerate(keys):
                curves = np.array([r["curves"][key] for r in mine])
                epochs = np.arange(1, curves.shape[1] + 1)
                scale = 100 if key == "test_accuracy" else 1
                mean = scale * curves.mean(axis=0)
                axes[i, j].plot(epochs, mean, color=colors[rule], label=rule)
                if len(mine) > 1:
                    axes[i, j].fill_between(epochs, scale * curves.min(axis=0),
                                            scale * curves.max(axis=0), color=colors[rule],
                                            alpha=0.2, linewidth=0)
        axes[0, j].set_title(f"{row['model']} / {row['dataset']}")
        axes[0, j].set_yscale("log")
        axes[2, j].set_ylim(0, 135)
        axes[3, j].set_ylim(0, 135)
        for i in (2, 3):
            axes[i, j].axhline(90, color="gray", linestyle=":", linewidth=1)
        axes[-1, j].set_xlabel("epoch")
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("test accuracy (%)")
    axes[2, 0].set_ylabel("angle to the gradient,\nall parameters (°)")
    axes[3, 0].set_ylabel("mean per-layer angle,\nhidden layers (°)")
    axes[0, 0].legend()
    fig.suptitle("Feedback rules: mean over seeds (band: min to max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed 0, 2 epochs: a smoke run")
    args = parser.parse_args(argv)
    stem = "feedback_rules_quick" if args.quick else "feedback_rules"
    seeds = (0,) if args.quick else SEEDS
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = RESULTS / f"{stem}.jsonl"
    runs = [json.loads(line) for line in partial.read_text().splitlines()] \
        if partial.exists() else []
    done = {(r["model"], r["dataset"], r["feedback"], r["seed"]) for r in runs}
    tic = time.perf_counter()
    cache = {}
    for model, name, epochs in RUNS:
        epochs = QUICK_EPOCHS if args.quick else epochs
        for rule in train.FEEDBACKS:
            for seed in seeds:
                if (model, name, rule, seed) in done:
                    continue
                if name not in cache:
                    cache[name] = data.load(name)
                run = run_one(model, cache[name], rule, seed, epochs)
                runs.append(run)
                with partial.open("a") as f:
                    f.write(json.dumps(run) + "\n")
                print(f"{model:7s} {name:8s} {rule:9s} seed {seed}: "
                      f"{100 * run['test_accuracy']:.2f}%, angle {run['alignment_deg']:.1f}° "
                      f"(hidden {run['hidden_deg']:.1f}°), "
                      f"{run['wall_seconds']:.1f} s", flush=True)
    import jax

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": sys.version.split()[0],
            "jax": jax.__version__, "flag": " --quick" if args.quick else "",
            "minutes": sum(r["wall_seconds"] for r in runs) / 60,
            "this_invocation_minutes": (time.perf_counter() - tic) / 60}
    rows = summarize(runs)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "runs": runs}, indent=1) + "\n")
    write_markdown(RESULTS / f"{stem}.md", rows, runs, meta)
    write_plot(RESULTS / f"{stem}.png", rows, runs)
    print(f"wrote {RESULTS / stem}.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
