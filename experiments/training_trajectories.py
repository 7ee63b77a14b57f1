"""Experiment (b): training with the hand-derived rules vs with jax.grad, from the same start,
in float32 and in float64.

Trains a model on MNIST-1D with ``jaxconv.train.fit(..., compare=True)`` once per dtype: the
manual variant (every gradient from the lecture's rules, ``custom_vjp``) and the autodiff variant
(the same forwards differentiated by JAX) start from the same initial parameters and see the same
batches in the same order, so any gap between the trajectories is the floating-point difference
of the two backward passes, compounded by training. At every step of the manual trajectory both
gradients are also taken at the *same* parameters and batch (``jaxconv.train.grad_rel_diff``,
‖g_manual − g_autodiff‖∞ / ‖g_manual‖∞): that separates "the rules agree" from "the trajectories
drift". Writes, under experiments/results/:

    training_trajectories.png   per dtype (columns): the losses, the drift, the gradient agreement
    training_trajectories.md    per dtype: the differences; per epoch: losses and drift
    training_trajectories.json  the summaries, the per-epoch records and every step's numbers

``--quick`` trains for 2 epochs and writes ``training_trajectories.quick.*`` instead.

    python experiments/training_trajectories.py [--quick] [--model cnn1d] [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxconv import data, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "float64")


def _moving_average(v: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, v.size))
    return np.convolve(v, np.ones(window) / window, mode="valid")


def _positive(xs: np.ndarray, ys: np.ndarray):
    """The points with y > 0 (for a log axis)."""
    keep = ys > 0
    return xs[keep], ys[keep]


def figure(results: dict, controls: dict, path: Path, title: str, steps_per_epoch: int) -> None:
    """One column per dtype. Top: both losses per step (moving average over an epoch).
    Middle: the trajectories' drift, |manual − autodiff| of the step losses and of the parameters
    after each epoch. Bottom: the gradients' agreement at the same parameters and batch."""
    fig, axes = plt.subplots(3, len(results), figsize=(6 * len(results), 9), sharex=True,
                             squeeze=False)
    w = steps_per_epoch
    for col, (dtype, result) in enumerate(results.items()):
        top, mid, bottom = axes[:, col]
        manual, auto = result.step_losses["manual"], result.step_losses["autodiff"]
        steps = np.arange(1, manual.size + 1)
        smooth = steps[w - 1:] if manual.size >= w else steps[-1:]
        for losses, color, ls, label in [(manual, "tab:blue", "-", "manual (the lecture's rules)"),
                                         (auto, "tab:orange", "--", "autodiff (jax.grad)")]:
            top.plot(smooth, _moving_average(losses, w), lw=1.4, color=color, ls=ls, label=label)
        top.set(yscale="log", ylabel="training loss (mean over an epoch)", title=dtype)
        top.legend(fontsize=8)
        diff = np.abs(manual - auto)
        mid.semilogy(*_positive(steps, diff), ".", ms=1.2, color="tab:red", alpha=0.4,
                     label="|loss difference| per step")
        epoch_steps = np.asarray([r["step"] for r in result.history])
        param = np.asarray([r["compare"]["param_diff"] for r in result.history])
        mid.semilogy(*_positive(epoch_steps, param), "k-", lw=1.4,
                     label="max |parameter difference| after each epoch")
        control = np.asarray(controls[dtype]["param_diff"])
        mid.semilogy(*_positive(epoch_steps, control), "--", color="gray", lw=1.4,
                     label="control: autodiff vs autodiff, init nudged by 1 ulp")
        mid.text(0.01, 0.03, f"{int(np.sum(diff == 0))} of {diff.size} steps' losses bitwise "
                 "equal", transform=mid.transAxes, fontsize=8)
        mid.set(ylabel="trajectory drift")
        mid.legend(fontsize=8, loc="upper left")
        g = result.grad_rel_diffs
        bottom.semilogy(*_positive(steps, g), ".", ms=1.2, color="tab:green", alpha=0.5)
        bottom.axhline(np.finfo(dtype).eps, color="gray", ls=":", lw=1,
                       label=f"{dtype} epsilon")
        bottom.set(xlabel="step", ylabel="‖g_manual − g_autodiff‖∞ / ‖g_manual‖∞\n"
                   "(same parameters and batch)")
        bottom.text(0.01, 0.03, f"largest {g.max():.2e}", transform=bottom.transAxes,
                    fontsize=8)
        bottom.legend(fontsize=8, loc="upper right")
        for ax in (top, mid, bottom):
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def nudged_control(config: train.TrainConfig, dataset: data.Dataset) -> dict:
    """The control: two *autodiff* runs of ``config`` whose initial parameters differ in one
    weight (the largest of the first nonzero leaf) by one ulp of the dtype (same batches, same
    rules). Whatever drift they show is the training dynamics amplifying a last-bit difference,
    with no manual rule involved.

    Returns:
      ``{"loss_diff": (epochs,), "param_diff": (epochs,)}``: per epoch, the absolute difference
      of the two runs' mean training losses and the largest parameter difference after it.
    """
    from jaxconv import models

    c = config
    x64 = jax.enable_x64(True) if c.dtype == "float64" else contextlib.nullcontext()
    with x64:
        model = models.get(c.model)
        init = model.init(jax.random.key(c.seed), dataset.input_shape, dataset.num_classes)
        params = jax.tree.map(lambda a: np.asarray(a, c.dtype), init)
        leaves, treedef = jax.tree.flatten(params)
        nudged = [a.copy() for a in leaves]
        w = next(a for a in nudged if np.any(a))  # a weight (a zero bias's ulp is subnormal)
        i = int(np.argmax(np.abs(w)))
        w.flat[i] = np.nextafter(w.flat[i], np.inf)
        steps_per_epoch = dataset.num_train // c.batch_size
        opt = train.make_optimizer(c.optimizer, c.lr, total_steps=steps_per_epoch * c.epochs,
                                   schedule=c.schedule, weight_decay=c.weight_decay,
                                   momentum=c.momentum)
        epoch = train.make_epoch(model.apply, opt, "autodiff")
        runs = [(p, opt.init(p)) for p in (params, jax.tree.unflatten(treedef, nudged))]
        x, y = jnp.asarray(dataset.x_train.astype(c.dtype)), jnp.asarray(dataset.y_train)
        loss_diff, param_diff = [], []
        for e in range(c.epochs):
            batches = jnp.asarray(data.epoch_batches(c.seed, e, dataset.num_train,
                                                     c.batch_size).astype(np.int32))
            out = [epoch(p, s, x, y, batches) for p, s in runs]
            runs = [(p, s) for p, s, _ in out]
            loss_diff.append(abs(float(np.mean(out[0][2]["loss"]))
                                 - float(np.mean(out[1][2]["loss"]))))
            param_diff.append(max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                  for a, b in zip(jax.tree.leaves(runs[0][0]),
                                                  jax.tree.leaves(runs[1][0]), strict=True)))
    return {"loss_diff": loss_diff, "param_diff": param_diff}


def _together(history: list[dict]) -> int:
    """How many epochs from the start both runs stay within 1e-9 (loss) and 1e-8 (params)."""
    return _together_control({"loss_diff": [r["compare"]["loss_diff"] for r in history],
                              "param_diff": [r["compare"]["param_diff"] for r in history]})


def _together_control(diffs: dict) -> int:
    ok = [a <= 1e-9 and b <= 1e-8 for a, b in zip(diffs["loss_diff"], diffs["param_diff"],
                                                  strict=True)]
    return ok.index(False) if False in ok else len(ok)


def _first(mask: np.ndarray) -> int | str:
    return int(np.argmax(mask)) + 1 if np.any(mask) else "never"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 epochs, written to training_trajectories.quick.*")
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: the model's recipe (jaxconv.recipes); quick: 2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else None)
    stem = "training_trajectories.quick" if args.quick else "training_trajectories"

    dataset = data.load("mnist1d")
    results, controls, seconds = {}, {}, {}
    for dtype in DTYPES:
        config = train.TrainConfig(dataset="mnist1d", model=args.model, grads="manual",
                                   dtype=dtype, epochs=epochs, seed=args.seed, compare=True)
        tic = time.perf_counter()
        results[dtype] = train.fit(config, dataset)
        controls[dtype] = nudged_control(results[dtype].config, dataset)
        seconds[dtype] = time.perf_counter() - tic
    cfg = results["float32"].config
    s = results["float32"].summary
    steps_per_epoch = s["steps"] // cfg.epochs

    RESULTS.mkdir(parents=True, exist_ok=True)
    title = (f"{cfg.model} on MNIST-1D, seed {cfg.seed}: manual vs autodiff gradients from the "
             f"same init, float32 and float64")
    figure(results, controls, RESULTS / f"{stem}.png", title, steps_per_epoch)
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        dtype: {"summary": r.summary, "history": r.history,
                "step_losses": {k: v.tolist() for k, v in r.step_losses.items()},
                "grad_rel_diffs": r.grad_rel_diffs.tolist(), "control": controls[dtype]}
        for dtype, r in results.items()
    }, default=str) + "\n")

    md = [
        "# Training trajectories: the lecture's rules vs jax.grad, float32 and float64",
        "",
        f"`python experiments/training_trajectories.py{' --quick' if args.quick else ''}` — "
        f"{cfg.model} on MNIST-1D ({dataset.num_train} training, {dataset.num_test} test "
        f"examples), {cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs = {s['steps']} steps, seed {cfg.seed}, on {platform.machine()} "
        f"CPU (jax {jax.__version__}); "
        + ", ".join(f"{d} {seconds[d]:.0f} s" for d in DTYPES) + " in all (two runs each).",
        "",
        "Per dtype, both variants start from the same parameters and see the same batches in "
        "the same order (`jaxconv train --compare --dtype ...`): the only difference is the "
        "backward pass, the lecture's rules (`custom_vjp`) or JAX's derivation of the same "
        "forwards. At every step of the manual run, both gradients are also taken at the same "
        "parameters and batch, and their largest difference is divided by the gradient's "
        "largest entry.",
        "",
        "The control (dashed in the figure) trains two *autodiff* runs whose initial "
        "parameters differ in one entry by one ulp: no manual rule is involved, so whatever "
        "drift it shows is the training dynamics amplifying a last-bit difference.",
        "",
        f"![trajectories]({stem}.png)",
        "",
        "| | float32 | float64 |",
        "|---|---:|---:|",
    ]
    cs = {d: r.summary["compare"] for d, r in results.items()}
    diffs = {d: np.abs(r.step_losses["manual"] - r.step_losses["autodiff"])
             for d, r in results.items()}
    rows = [
        ("largest gradient difference at the same params and batch (relative, every step)",
         lambda d: f"{cs[d]['max_grad_rel_diff']:.2e}"),
        ("largest per-epoch training loss difference",
         lambda d: f"{cs[d]['max_loss_diff']:.2e}"),
        ("largest per-step training loss difference", lambda d: f"{diffs[d].max():.2e}"),
        ("largest final parameter difference", lambda d: f"{cs[d]['max_param_diff']:.2e}"),
        ("largest per-epoch test loss difference",
         lambda d: f"{cs[d]['max_test_loss_diff']:.2e}"),
        ("epochs with loss diff <= 1e-9 and param diff <= 1e-8 (from the start)",
         lambda d: f"{_together(results[d].history)} of {len(results[d].history)}"),
        ("control (autodiff vs autodiff, init nudged by 1 ulp): largest param diff",
         lambda d: f"{max(controls[d]['param_diff']):.2e}"),
        ("control: epochs with loss diff <= 1e-9 and param diff <= 1e-8 (from the start)",
         lambda d: f"{_together_control(controls[d])} of {len(controls[d]['param_diff'])}"),
        ("steps whose losses are bitwise equal",
         lambda d: f"{int(np.sum(diffs[d] == 0))} of {diffs[d].size}"),
        ("first step whose loss difference exceeds 1e-3", lambda d: f"{_first(diffs[d] > 1e-3)}"),
        ("final training loss, manual / autodiff",
         lambda d: f"{cs[d]['final_loss']['manual']:.6f} / {cs[d]['final_loss']['autodiff']:.6f}"),
        ("test accuracy, manual / autodiff",
         lambda d: f"{cs[d]['test_accuracy']['manual']:.4f} / "
                   f"{cs[d]['test_accuracy']['autodiff']:.4f}"),
        ("training seconds, manual (with the per-step gradient check) / autodiff",
         lambda d: f"{cs[d]['train_seconds']['manual']:.1f} / "
                   f"{cs[d]['train_seconds']['autodiff']:.1f}"),
    ]
    md += [f"| {name} | {cell('float32')} | {cell('float64')} |" for name, cell in rows]
    md += [
        "",
        "Per epoch (loss difference of the epoch's mean training loss; parameter difference "
        "after the epoch; gradient difference: the epoch's largest):",
        "",
        "| epoch | loss diff f32 | param diff f32 | grad diff f32 | control param diff f32 | "
        "loss diff f64 | param diff f64 | grad diff f64 | control param diff f64 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (r32, r64) in enumerate(zip(results["float32"].history,
                                       results["float64"].history, strict=True)):
        a, b = r32["compare"], r64["compare"]
        md.append(f"| {r32['epoch']} | {a['loss_diff']:.2e} | {a['param_diff']:.2e} | "
                  f"{a['max_grad_rel_diff']:.2e} | {controls['float32']['param_diff'][i]:.2e} | "
                  f"{b['loss_diff']:.2e} | {b['param_diff']:.2e} | "
                  f"{b['max_grad_rel_diff']:.2e} | {controls['float64']['param_diff'][i]:.2e} |")
    md += ["", f"Every step's numbers: [{stem}.json]({stem}.json).", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    for d in DTYPES:
        print(f"{d}: max grad rel diff {cs[d]['max_grad_rel_diff']:.2e}, max loss diff "
              f"{cs[d]['max_loss_diff']:.2e}, max param diff {cs[d]['max_param_diff']:.2e}, "
              f"together {_together(results[d].history)} epochs; control max param diff "
              f"{max(controls[d]['param_diff']):.2e}, together "
              f"{_together_control(controls[d])} epochs ({seconds[d]:.0f} s)")
    print(f"wrote {RESULTS / stem}.{{png,md,json}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
