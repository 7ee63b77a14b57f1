"""Figures of a training run (matplotlib, drawn off-screen: no display, no ``pyplot`` state).

Both functions read the per-epoch records that :func:`jaxconv.train.fit` writes to
``metrics.jsonl`` (``epoch``, ``grads``, ``train_loss``, ``test_loss``, ``train_accuracy``,
``test_accuracy``, and with a comparison a ``compare`` object holding the other variant's numbers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path


def training_curves(history: list[dict], path: str | Path, *, title: str = "") -> Path:
    """Loss (train and test, log scale) and accuracy (train and test) against the epoch.

    Args:
      history: the per-epoch records, at least one.
      path: the PNG to write.

    Returns:
      ``path`` as a ``Path``.
    """
    if not history:
        raise ValueError("history must hold at least one epoch's record, got none")
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_ax.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    acc_ax.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    acc_ax.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def compare_curves(
    history: list[dict], path: str | Path, *, step_losses: dict | None = None,
    grad_rel_diffs=None, title: str = "",
) -> Path:
    """Both variants' training losses, their absolute difference (the trajectories' drift), and,
    given ``grad_rel_diffs``, the gradients' agreement at the same parameters and batch.

    Args:
      history: per-epoch records with a ``compare`` object (``fit(..., compare=True)``).
      path: the PNG to write.
      step_losses: optionally ``{grads: (steps,) losses}`` for both variants: then the curves are
        drawn per step rather than per epoch.
      grad_rel_diffs: optionally ``(steps,)`` values of ``jaxconv.train.grad_rel_diff``, one per
        step: a third panel, log scale.

    Returns:
      ``path`` as a ``Path``.
    """
    if not history or "compare" not in history[0]:
        raise ValueError("history must hold the records of a comparison run (with 'compare')")
    mine, other = history[0]["grads"], history[0]["compare"]["grads"]
    if step_losses is not None:
        xs = np.arange(1, len(step_losses[mine]) + 1)
        a, b = np.asarray(step_losses[mine]), np.asarray(step_losses[other])
        xlabel = "step"
    else:
        xs = np.asarray([r["epoch"] for r in history])
        a = np.asarray([r["train_loss"] for r in history])
        b = np.asarray([r["compare"]["train_loss"] for r in history])
        xlabel = "epoch"
    panels = 2 if grad_rel_diffs is None else 3
    fig = Figure(figsize=(5 * panels, 4), layout="constrained")
    axes = fig.subplots(1, panels)
    loss_ax, diff_ax = axes[:2]
    loss_ax.plot(xs, a, "-", label=mine)
    loss_ax.plot(xs, b, "--", label=other)
    loss_ax.set(xlabel=xlabel, ylabel="training loss", yscale="log", title="training loss")
    loss_ax.legend()
    diff_ax.plot(xs, np.abs(a - b), "-", color="C3")
    diff_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    diff_ax.set(xlabel=xlabel, ylabel=f"|{mine} − {other}|",
                title="trajectory drift: |loss difference|")
    if grad_rel_diffs is not None:
        g = np.asarray(grad_rel_diffs, dtype=float)
        grad_ax = axes[2]
        grad_ax.plot(np.arange(1, g.size + 1), np.maximum(g, 1e-300), "-", color="C2", lw=0.8)
        grad_ax.set(xlabel="step", yscale="log",
                    ylabel=f"‖g_{mine} − g_{other}‖∞ / ‖g_{mine}‖∞",
                    title="gradients at the same params and batch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return _save(fig, path)
