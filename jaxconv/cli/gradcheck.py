"""``jaxconv gradcheck``: every hand-derived rule against jax.grad and finite differences.

Sweeps the built-in grid of :mod:`jaxconv.gradcheck` (plus ``--random N`` random
configurations), prints one rich table per op (configuration, max absolute and relative error,
max float32 ULP distance, finite-difference error, pass/fail against the stated tolerances) and a
summary, optionally writes every row to ``--json FILE``, and exits 1 if any row fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from jaxconv import _checks
from jaxconv.cli import CLIError, non_negative_int, positive_int


def register(subparsers) -> None:
    from jaxconv import gradcheck as gc

    p = subparsers.add_parser(
        "gradcheck",
        help="check every hand-derived rule against jax.grad and finite differences",
        description=(
            "For every op and configuration, compare the manual VJP (the lecture's rule, "
            "custom_vjp) with the autodiff VJP (jax.grad of the same forward) in float64, float32 "
            "and bfloat16, and in float64 also with central finite differences. Exit status 1 if "
            "any row fails its tolerance."
        ),
    )
    p.add_argument("--ops", type=_names(gc.OPS), default=gc.OPS, metavar="OP[,OP...]",
                   help=f"ops to check (default: all of {', '.join(gc.OPS)})")
    p.add_argument("--dtypes", type=_names(gc.DTYPES), default=gc.DTYPES,
                   metavar="DTYPE[,DTYPE...]", help="dtypes (default: float64,float32,bfloat16)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="only the first N grid configurations of each op (a quick run)")
    p.add_argument("--no-grid", action="store_true",
                   help="skip the built-in grid (use with --random)")
    p.add_argument("--random", type=non_negative_int, default=0, metavar="N",
                   help="also check N random configurations (default 0)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the random configurations and of every input (default 0)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="write every row as a JSON object (a JSON list) to FILE")
    p.add_argument("--failures-only", action="store_true",
                   help="list only failing rows in the per-op tables (the summary is complete)")
    p.set_defaults(run=run)


def _names(allowed: tuple[str, ...]):
    """argparse type: comma-separated names from ``allowed``, checked by
    :func:`jaxconv._checks.names` (``argument --ops: must be a non-empty sequence of names from
    (...), got the unknown ['nope']``)."""
    def parse(text: str) -> tuple[str, ...]:
        try:
            return _checks.names("", [t.strip() for t in text.split(",") if t.strip()], allowed)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).lstrip()) from None

    return parse


def _fmt(value: float | None, spec: str = ".2e") -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    return "0" if value == 0 else format(value, spec)


def tolerance_line() -> str:
    """The pass criteria, as stated in every table."""
    from jaxconv import gradcheck as gc

    rtols = ", ".join(f"{d} {gc.TOLERANCES[d]:.0e}" for d in gc.DTYPES)
    return (f"pass: max rel err (manual vs autodiff) <= rtol ({rtols}) and, in float64, "
            f"FD rel err <= {gc.FD_RTOL:.0e} (central differences, h = {gc.FD_STEP:.0e}); "
            f"rel err = max|manual − autodiff| / max|autodiff|")


def run(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the float64 rows and finite differences
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from jaxconv import gradcheck as gc

    if args.no_grid and not args.random:
        raise CLIError("--no-grid leaves nothing to check: add --random N")
    if args.json is not None and args.json.parent and not args.json.parent.is_dir():
        raise FileNotFoundError(f"--json: the directory {str(args.json.parent)!r} does not exist")
    cases = [] if args.no_grid else gc.default_grid(args.ops, args.dtypes, limit=args.limit)
    cases += gc.random_cases(args.random, args.seed, args.ops, args.dtypes)

    console = Console(highlight=False)
    if not console.is_terminal:  # a file or a pipe: wide enough for whole configurations
        console = Console(highlight=False, width=180)
    start = time.perf_counter()
    results = _run_with_progress(gc, cases, args.seed)
    seconds = time.perf_counter() - start

    tolerances = escape(tolerance_line())
    console.print(tolerances)
    for op in args.ops:
        rows = [r for r in results if r.case.op == op]
        shown = [r for r in rows if not r.passed] if args.failures_only else rows
        if not rows or not shown:
            continue
        table = Table(title=f"{op}: manual VJP vs autodiff VJP ({len(rows)} rows)",
                      caption=tolerances, title_justify="left", caption_justify="left")
        table.add_column("#", justify="right")
        table.add_column("configuration", overflow="fold")
        table.add_column("dtype")
        table.add_column("max abs err", justify="right")
        table.add_column("max rel err", justify="right")
        table.add_column("max ULP (f32)", justify="right")
        table.add_column("FD rel err (f64)", justify="right")
        table.add_column("pass")
        for i, r in enumerate(rows):
            if r not in shown:
                continue
            config = gc.describe(r.case.config)
            if r.case.source == "random":
                config = "[random] " + config
            table.add_row(
                str(i + 1), escape(config), r.case.dtype, _fmt(r.max_abs_err), _fmt(r.max_rel_err),
                "—" if r.max_ulp is None else str(r.max_ulp), _fmt(r.fd_rel_err),
                "PASS" if r.passed else "FAIL", style=None if r.passed else "bold red",
            )
        console.print(table)

    summary = Table(title="summary: worst error per op and dtype", caption=tolerances,
                    title_justify="left", caption_justify="left")
    for name in ("op", "rows", "failed", *(f"rel err {d}" for d in args.dtypes),
                 "FD rel err (f64)"):
        summary.add_column(name, justify="left" if name == "op" else "right")
    for op, s in gc.summarize(results).items():
        fd = [r.fd_rel_err for r in results if r.case.op == op and r.fd_rel_err is not None]
        summary.add_row(
            op, str(s["rows"]), str(s["failed"]),
            *(_fmt(s["worst_rel_err"].get(d)) for d in args.dtypes),
            _fmt(max(fd) if fd else None), style="bold red" if s["failed"] else None,
        )
    console.print(summary)
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results)} rows checked in {seconds:.1f} s: "
                  f"{len(results) - failed} passed, {failed} failed")

    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
        console.print(f"wrote {len(results)} rows to {args.json}")
    return 1 if failed else 0


def _run_with_progress(gc, cases, seed):
    """Run the sweep, with a transient progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return gc.run(cases, seed=seed)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("gradcheck", total=len(cases))
        return gc.run(cases, seed=seed, callback=lambda r: progress.advance(task))
