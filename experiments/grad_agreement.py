"""Experiment (a): how closely the hand-derived rules agree with jax.grad across the
configuration space.

Runs the gradient check of :mod:`jaxconv.gradcheck` (manual VJP vs autodiff VJP, same inputs,
same dy) on the built-in grid plus random configurations, in float32 and float64, and draws one
histogram per op of the normwise relative error max|manual − autodiff| / max|autodiff|
(log scale; exact agreement, error 0, gets its own bar). Writes, under experiments/results/:

    grad_agreement.png   the histograms
    grad_agreement.md    a table per op and dtype: rows, exact, median, max, tolerance, passed
    grad_agreement.json  every row (the ``jaxconv gradcheck --json`` schema)

``--quick`` checks the first 2 grid configurations of each op and 10 random ones and writes
``grad_agreement.quick.*`` instead, leaving the full results alone.

    python experiments/grad_agreement.py [--quick] [--random N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxconv import gradcheck as gc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float64", "float32")
COLORS = {"float64": "tab:blue", "float32": "tab:orange"}
LOG_LO, LOG_HI = -18, 0  # histogram range of log10(rel err)


def histograms(results, path: Path, title: str) -> None:
    """One panel per op: log10 relative error per dtype, exact zeros as a bar at the left."""
    ops = [op for op in gc.OPS if any(r.case.op == op for r in results)]
    cols = 4
    rows = math.ceil(len(ops) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    edges = np.arange(LOG_LO, LOG_HI + 0.5, 0.5)
    zero_at = LOG_LO - 2.0
    for ax, op in zip(axes.flat, ops, strict=False):
        for dtype in DTYPES:
            errs = np.array([r.max_rel_err for r in results
                             if r.case.op == op and r.case.dtype == dtype])
            if errs.size == 0:
                continue
            exact = int(np.sum(errs == 0))
            logs = np.log10(errs[errs > 0]) if np.any(errs > 0) else np.array([])
            ax.hist(np.clip(logs, LOG_LO, LOG_HI), bins=edges, histtype="stepfilled", alpha=0.45,
                    color=COLORS[dtype], label=f"{dtype} ({errs.size} rows, {exact} exact)")
            if exact:
                ax.bar(zero_at + (0.2 if dtype == "float32" else -0.2), exact, width=0.4,
                       color=COLORS[dtype], alpha=0.8)
            ax.axvline(math.log10(gc.TOLERANCES[dtype]), color=COLORS[dtype], ls="--", lw=1)
        ax.set_title(op, fontsize=10)
        ax.set_xlim(zero_at - 0.8, LOG_HI + 0.5)
        ticks = [zero_at, *range(LOG_LO, LOG_HI + 1, 3)]
        ax.set_xticks(ticks, ["exact", *(f"1e{t}" for t in ticks[1:])], fontsize=7)
        ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    fig.supxlabel("max |manual − autodiff| / max |autodiff|  (dashed: the pass tolerance)")
    fig.supylabel("configurations")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results) -> list[str]:
    lines = ["| op | dtype | rows | exact (0) | median rel err | max rel err | tolerance | "
             "max ULP (f32) | max FD rel err (f64) | passed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for op in gc.OPS:
        for dtype in DTYPES:
            rows = [r for r in results if r.case.op == op and r.case.dtype == dtype]
            if not rows:
                continue
            errs = np.array([r.max_rel_err for r in rows])
            ulp = max((r.max_ulp for r in rows if r.max_ulp is not None), default=None)
            fd = max((r.fd_rel_err for r in rows if r.fd_rel_err is not None), default=None)
            lines.append(
                f"| {op} | {dtype} | {len(rows)} | {int(np.sum(errs == 0))} | "
                f"{np.median(errs):.2e} | {errs.max():.2e} | {gc.TOLERANCES[dtype]:.0e} | "
                f"{'—' if ulp is None else ulp} | {'—' if fd is None else f'{fd:.2e}'} | "
                f"{sum(r.passed for r in rows)}/{len(rows)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 grid configurations per op and 10 random ones (*.quick.* files)")
    parser.add_argument("--random", type=int, default=None,
                        help="random configurations on top of the grid (default 120; quick: 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_random = args.random if args.random is not None else (10 if args.quick else 120)
    stem = "grad_agreement.quick" if args.quick else "grad_agreement"

    cases = gc.default_grid(dtypes=DTYPES, limit=2 if args.quick else None)
    cases += gc.random_cases(n_random, args.seed, dtypes=DTYPES)
    tic = time.perf_counter()
    results = gc.run(cases, seed=args.seed)
    seconds = time.perf_counter() - tic

    RESULTS.mkdir(parents=True, exist_ok=True)
    n_grid = sum(r.case.source == "grid" for r in results)
    title = (f"manual VJP vs jax.grad: {len(results)} configurations "
             f"({n_grid} grid + {len(results) - n_grid} random, seed {args.seed})")
    histograms(results, RESULTS / f"{stem}.png", title)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps([r.to_json() for r in results], indent=1) + "\n")
    failed = [r for r in results if not r.passed]
    md = [
        "# Gradient agreement: hand-derived rules vs jax.grad",
        "",
        f"`python experiments/grad_agreement.py{' --quick' if args.quick else ''}` — "
        f"{len(results)} configurations ({n_grid} from the built-in grid, "
        f"{len(results) - n_grid} random with seed {args.seed}), float64 and float32, "
        f"checked in {seconds:.0f} s on {platform.machine()} CPU (jax {jax.__version__}).",
        "",
        "For each configuration the manual VJP (`jaxconv.<op>`, the lecture's rule attached with "
        "`jax.custom_vjp`) and the autodiff VJP (`jaxconv.autodiff.<op>`, the same forward "
        "differentiated by JAX) are computed on the same inputs and the same random upstream "
        "gradient dy. *rel err* = max|manual − autodiff| / max|autodiff| over every input's "
        "gradient (normwise: an elementwise ratio is meaningless where sums cancel to ~0). "
        "*ULP* is the largest float32 distance in units in the last place (from the int32 views of "
        "the bits; huge near zero by nature). *FD* compares the float64 manual VJP with central "
        f"finite differences (h = {gc.FD_STEP:g}) along random directions; it must stay below "
        f"{gc.FD_RTOL:g}.",
        "",
        f"![histograms]({stem}.png)",
        "",
        *table(results),
        "",
        f"**{len(results) - len(failed)} of {len(results)} rows pass.**",
    ]
    if failed:
        md += ["", "Failing rows:", ""]
        md += [f"- {r.case.op} {r.case.dtype} `{gc.describe(r.case.config)}`: rel err "
               f"{r.max_rel_err:.2e}, FD {r.fd_rel_err}" for r in failed]
    md += ["", f"Every row: [{stem}.json]({stem}.json).", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    print(f"{len(results)} rows in {seconds:.0f} s, {len(failed)} failed; wrote "
          f"{RESULTS / stem}.{{png,md,json}}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
