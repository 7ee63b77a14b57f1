"""``jaxconv train``: train a model with the lecture's gradients (or JAX's) and report.

With no arguments: cnn1d on MNIST-1D with manual gradients and the model's default recipe
(``jaxconv.recipes``). The command parses, calls :func:`jaxconv.train.fit` and prints; a
progress bar (rich, on stderr) shows each epoch's loss and accuracies, and one line on stdout gives
the result. ``--quiet`` prints nothing but errors and warnings. Without ``--out`` nothing is
written to disk; with ``--out DIR`` see :mod:`jaxconv.train` for the files.
"""

from __future__ import annotations

import argparse
import sys

from jaxconv.cli import non_negative_float, non_negative_int, positive_float, positive_int

DESCRIPTION = """\
Train a model with the lecture's hand-derived gradients (--grads manual, the default) or with
JAX's (--grads autodiff). Hyperparameters that are not given take the model's defaults.
Without --out nothing is written; --out DIR receives metrics.jsonl, summary.json, curves.png and
a checkpoint per epoch, and --resume continues from the newest checkpoint there."""


def register(subparsers) -> None:
    from jaxconv import data, models, recipes, train

    p = subparsers.add_parser(
        "train", help="train a model (default: cnn1d on MNIST-1D, manual gradients)",
        description=DESCRIPTION,
    )
    # Choices are checked by jaxconv.train (one line, no usage dump); listed here for --help.
    p.add_argument("--dataset", default="mnist1d", metavar="{" + ",".join(data.DATASETS) + "}",
                   help="the dataset (default: mnist1d)")
    p.add_argument("--model", default="cnn1d", metavar="{" + ",".join(models.MODELS) + "}",
                   help="the model (default: cnn1d)")
    p.add_argument("--grads", default="manual", metavar="{" + ",".join(train.GRADS) + "}",
                   help="gradients from the lecture's rules (manual) or from jax.grad (autodiff)")
    p.add_argument("--feedback", default="backprop",
                   metavar="{" + ",".join(train.FEEDBACKS) + "}",
                   help="what the error is sent back through at every layer: wᵀ (backprop), a "
                   "fixed random matrix per layer drawn from the seed, He-scaled (random: "
                   "feedback alignment) or sign(w)·mean|w| (sign: sign symmetry); only dx "
                   "changes (default: backprop)")
    p.add_argument("--dtype", default="float32", metavar="{" + ",".join(train.DTYPES) + "}",
                   help="dtype of data, parameters, optimizer state and every rule; float64 "
                   "turns on x64 (default: float32)")
    p.add_argument("--optimizer", metavar="{" + ",".join(train.OPTIMIZERS) + "}",
                   help="the optax optimizer (sgd has momentum; default: the model's)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the model's)")
    p.add_argument("--schedule", metavar="{" + ",".join(train.SCHEDULES) + "}",
                   help="learning-rate schedule (default: the model's)")
    p.add_argument("--weight-decay", type=non_negative_float,
                   help="adamw's weight decay (default: the model's)")
    p.add_argument("--momentum", type=non_negative_float,
                   help=f"sgd's momentum (default: {recipes.FALLBACK['momentum']})")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: the model's)")
    p.add_argument("--batch-size", type=positive_int,
                   help="examples per step; the last partial batch of an epoch is dropped "
                   "(default: the model's)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the initial parameters and of the data order (default: 0)")
    p.add_argument("--data-dir", help="directory of the MNIST IDX files (--dataset mnist)")
    p.add_argument("--out", metavar="DIR", help="write metrics, summary, plots and checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint")
    p.add_argument("--compare", action="store_true",
                   help="also train the other gradient mode from the same initial parameters on "
                   "the same batches, and report the differences (with both gradients at the same "
                   "parameters and batch at every step)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    dist = p.add_argument_group(
        "data parallelism", "the batch is split over devices along the mesh axis 'data'; with "
        "several processes (hosts), every process runs this same command with its own "
        "--process-id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    dist.add_argument("--devices", type=positive_int,
                      help="devices to split each batch over (default: all devices)")
    dist.add_argument("--coordinator", metavar="HOST:PORT",
                      help="address of process 0, for a multi-process run")
    dist.add_argument("--num-processes", type=positive_int, help="processes in the run")
    dist.add_argument("--process-id", type=non_negative_int, help="this process's index")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import jax

    from jaxconv import data, distributed
    from jaxconv.train import TrainConfig, fit

    # Before any other JAX computation: join the multi-process run, if one is configured.
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    quiet = args.quiet or jax.process_index() > 0  # one process reports

    config = TrainConfig(
        dataset=args.dataset, model=args.model, grads=args.grads, dtype=args.dtype,
        optimizer=args.optimizer,
        lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, schedule=args.schedule,
        weight_decay=args.weight_decay, momentum=args.momentum, seed=args.seed,
        data_dir=args.data_dir, out=args.out, resume=args.resume, compare=args.compare,
        devices=args.devices, feedback=args.feedback,
    ).resolved()
    dataset = data.load(config.dataset, data_dir=config.data_dir)
    with _Reporter(quiet=quiet) as reporter:
        result = fit(config, dataset, callback=reporter)
    if not quiet:
        print(_result_line(result.summary))
        if config.compare:
            print(_compare_line(result.summary))
        if config.out is not None:
            print(f"wrote {config.out}/summary.json, metrics.jsonl and plots")
    return 0


def _result_line(s: dict) -> str:
    rule = "" if s["feedback"] == "backprop" else f", {s['feedback']} feedback"
    return (f"{s['model']} on {s['dataset']} ({s['grads']} gradients{rule}, {s['dtype']}, seed "
            f"{s['seed']}): "
            f"test accuracy {100 * s['test_accuracy']:.2f}%, final loss {s['final_loss']:.4f}, "
            f"{s['steps']} steps in {s['train_seconds']:.1f} s (+{s['compile_seconds']:.1f} s "
            f"compiling) on {s['devices']} device{'s' if s['devices'] > 1 else ''}"
            + (f" in {s['processes']} processes" if s["processes"] > 1 else ""))


def _compare_line(s: dict) -> str:
    """The comparison's numbers, and under which convolution formulation policy they hold: in
    float64 the two modes agree bit for bit under "xla" (one XLA convolution per product, summed
    in JAX's own order); under "auto" the faster formulations sum in other orders, so rounding
    differences of ~1e-16 per step compound through the optimizer."""
    c = s["compare"]
    a, b = c["grads"]
    hint = ("; bit for bit only under JAXCONV_CONV_POLICY=xla"
            if s["dtype"] == "float64" and s["conv_policy"] != "xla" else "")
    return (f"{a} vs {b} (conv formulation policy {s['conv_policy']}{hint}): max |loss "
            f"difference| {c['max_loss_diff']:.3g}, max |parameter difference| "
            f"{c['max_param_diff']:.3g}, max gradient difference at the same parameters "
            f"{c['max_grad_rel_diff']:.3g} (relative, every step); test accuracy "
            f"{100 * c['test_accuracy'][a]:.2f}% vs {100 * c['test_accuracy'][b]:.2f}%; "
            f"train seconds {c['train_seconds'][a]:.1f} vs {c['train_seconds'][b]:.1f}")


class _Reporter:
    """The callback of :func:`jaxconv.train.fit`: a rich progress bar over the epochs (stderr),
    and notices (damaged checkpoints, fresh starts) as one line each on stderr, quiet or not."""

    def __init__(self, *, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.task = None

    def __enter__(self) -> _Reporter:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(),
                console=Console(stderr=True), transient=False,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: str, info: dict) -> None:
        if event == "notice":
            line = f"jaxconv train: {info['message']}"
            if self.progress is not None:
                self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                print(line, file=sys.stderr, flush=True)
        if self.progress is None:
            return
        if event == "start":
            self.task = self.progress.add_task(
                "epoch", total=info["epochs"],
                completed=info["start_epoch"], metrics="compiling...",
            )
        elif event == "epoch":
            self.progress.update(
                self.task, completed=info["epoch"],
                metrics=f"loss {info['train_loss']:.4f}  acc {100 * info['train_accuracy']:.1f}%"
                f"  test acc {100 * info['test_accuracy']:.1f}%",
            )
