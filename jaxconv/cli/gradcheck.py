"""``jaxconv gradcheck``: every hand-derived rule against jax.grad and finite differences.

Sweeps the built-in grid of :mod:`jaxconv.gradcheck` (plus ``--random N`` random
configurations), prints one rich table per op (configuration, max absolute and relative error,
max float32 ULP distance, finite-difference error, pass/fail against the stated tolerances) and a
summary, optionally writes every row to ``--json FILE``, and exits 1 if any row fails.

``--fun MODULE:FACTORY`` checks the user's own function instead of the grid: ``FACTORY()``
returns ``(fun, args)`` or ``(fun, args, kwargs)``, and :func:`jaxconv.compare_grads` compares
``jax.grad(jaxconv.manual(fun))`` with ``jax.grad(fun)`` on those arguments, leaf by leaf.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path

from jaxconv import _checks
from jaxconv.cli import CLIError, non_negative_int, positive_float, positive_int


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
    p.add_argument("--ops", type=_names(gc.OPS), default=None, metavar="OP[,OP...]",
                   help=f"ops to check (default: all of {', '.join(gc.OPS)})")
    p.add_argument("--dtypes", type=_names(gc.DTYPES), default=None,
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
    own = p.add_argument_group(
        "your own function",
        "--fun MODULE:FACTORY imports MODULE (from the current directory or sys.path) and calls "
        "FACTORY() with float64 enabled; it returns (fun, args) or (fun, args, kwargs). The "
        "gradients of jaxconv.manual(fun) and of fun are compared leaf by leaf "
        "(jaxconv.compare_grads); exit status 1 if any leaf's error exceeds --rtol.")
    own.add_argument("--fun", default=None, metavar="MODULE:FACTORY",
                     help="check FACTORY()'s function instead of the built-in grid")
    own.add_argument("--argnums", type=_argnums, default=None, metavar="I[,I...]",
                     help="positional arguments to differentiate, as in jax.grad (default 0)")
    own.add_argument("--rtol", type=positive_float, default=None, metavar="R",
                     help="pass threshold on each leaf's max|manual − autodiff| / max|autodiff| "
                     "(default by the least precise dtype differentiated: " + ", ".join(
                         f"{d} {r:.0e}" for d, r in FUN_RTOL.items()) + ")")
    p.set_defaults(run=run)


#: ``--fun``'s default pass threshold, by the least precise dtype among the differentiated
#: leaves: a whole model sums over many more terms than one op (:data:`jaxconv.gradcheck.
#: TOLERANCES`), so its rounding differences are larger.
FUN_RTOL = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 1e-1, "float16": 1e-1}


def _argnums(text: str) -> int | tuple[int, ...]:
    """argparse type: ``0`` or ``0,2`` (jax.grad's argnums: an int or a tuple of ints)."""
    parts = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() for t in parts):
        raise argparse.ArgumentTypeError(
            f"must be a non-negative int or comma-separated ints, got {text!r}")
    values = tuple(int(t) for t in parts)
    return values[0] if len(values) == 1 else values


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

    if args.json is not None and args.json.parent and not args.json.parent.is_dir():
        raise FileNotFoundError(f"--json: the directory {str(args.json.parent)!r} does not exist")
    if args.fun is not None:
        return run_fun(args)
    for name in ("argnums", "rtol"):
        if getattr(args, name) is not None:
            raise CLIError(f"--{name} goes with --fun MODULE:FACTORY")
    args.ops = args.ops or gc.OPS
    args.dtypes = args.dtypes or gc.DTYPES
    if args.no_grid and not args.random:
        raise CLIError("--no-grid leaves nothing to check: add --random N")
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


# --------------------------------------------------------------------------------------------
# --fun MODULE:FACTORY: the user's own function.
# --------------------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_factory(spec: str):
    """``(fun, args, kwargs)`` from ``FACTORY()`` of ``MODULE:FACTORY``; every way it can go
    wrong is one :class:`CLIError` line naming ``--fun``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CLIError(f"--fun: expected MODULE:FACTORY (e.g. mymodel:make_loss), got {spec!r}")
    if os.getcwd() not in sys.path:  # like `python -m`: modules in the current directory
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (module_name + ".").startswith(err.name + "."):
            raise CLIError(f"--fun: no module named {module_name!r} (looked in the current "
                           "directory and sys.path)") from None
        raise CLIError(f"--fun: importing {module_name!r} failed: {_first_line(err)}") from None
    except Exception as err:  # the user's module: any error is one line
        raise CLIError(f"--fun: importing {module_name!r} failed: {_first_line(err)}") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise CLIError(f"--fun: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise CLIError(f"--fun: {spec} must be a function returning (fun, args) or "
                       f"(fun, args, kwargs), got {type(factory).__name__}")
    try:
        made = factory()
    except Exception as err:  # the user's factory: any error is one line
        raise CLIError(f"--fun: {spec}() raised {_first_line(err)}") from None
    if not isinstance(made, tuple | list) or len(made) not in (2, 3):
        raise CLIError(f"--fun: {spec}() must return (fun, args) or (fun, args, kwargs), got "
                       f"{type(made).__name__} {made!r:.60}")
    fun, fargs, kwargs = (*made, {}) if len(made) == 2 else made
    if not callable(fun):
        raise CLIError(f"--fun: {spec}() returned fun = {type(fun).__name__}, not a callable")
    if not isinstance(fargs, tuple | list):
        raise CLIError(f"--fun: {spec}() returned args = {type(fargs).__name__}, expected a "
                       "tuple of positional arguments")
    if not isinstance(kwargs, dict):
        raise CLIError(f"--fun: {spec}() returned kwargs = {type(kwargs).__name__}, expected "
                       "a dict")
    return fun, tuple(fargs), kwargs


def _leaf_rows(report, fargs, argnums, rtol):
    """One row per gradient leaf: its path (``args[0]['params']['kernel']``), shape, dtype,
    scale, relative error and whether it passes."""
    import jax
    import numpy as np

    single = isinstance(argnums, int)
    chosen = fargs[argnums] if single else tuple(fargs[i] for i in argnums)
    shapes = jax.tree_util.tree_leaves(chosen)
    errors = jax.tree_util.tree_flatten_with_path(report.errors)[0]
    scales = jax.tree_util.tree_leaves(report.scales)
    rows = []
    for (path, err), scale, leaf in zip(errors, scales, shapes, strict=True):
        if single:
            name = f"args[{argnums}]" + jax.tree_util.keystr(path)
        else:
            name = f"args[{argnums[path[0].idx]}]" + jax.tree_util.keystr(path[1:])
        rows.append({"leaf": name, "shape": list(np.shape(leaf)),
                     "dtype": str(np.asarray(leaf).dtype), "scale": float(scale),
                     "rel_err": float(err), "rtol": rtol, "passed": bool(err <= rtol)})
    return rows


def run_fun(args: argparse.Namespace) -> int:
    """``--fun``: compare_grads on FACTORY()'s function, a table leaf by leaf, exit 1 on a
    failing leaf."""
    import jax
    import numpy as np
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import jaxconv

    grid_only = {"--ops": args.ops, "--dtypes": args.dtypes, "--limit": args.limit,
                 "--no-grid": args.no_grid, "--random": args.random,
                 "--failures-only": args.failures_only}
    clash = [name for name, value in grid_only.items() if value]
    if clash:
        verb = "goes" if len(clash) == 1 else "go"
        raise CLIError(f"{', '.join(clash)} {verb} with the built-in grid, not with --fun")
    fun, fargs, kwargs = load_factory(args.fun)
    argnums = 0 if args.argnums is None else args.argnums
    for i in (argnums,) if isinstance(argnums, int) else argnums:
        if i >= len(fargs):
            raise CLIError(f"--argnums: {args.fun}() gives {len(fargs)} positional "
                           f"argument(s), so {i} is out of range")
    chosen = fargs[argnums] if isinstance(argnums, int) else [fargs[i] for i in argnums]
    dtypes = {np.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(chosen)}
    if not dtypes or not all(np.issubdtype(d, np.floating) for d in dtypes):
        raise CLIError(f"--argnums: the differentiated arguments must be float arrays, got "
                       f"dtypes {sorted(map(str, dtypes))}")
    least = max(dtypes, key=lambda d: np.finfo(d).eps)
    rtol = args.rtol if args.rtol is not None else FUN_RTOL.get(str(least), 1e-1)

    start = time.perf_counter()
    report = jaxconv.compare_grads(fun, *fargs, argnums=argnums, **kwargs)
    seconds = time.perf_counter() - start
    rows = _leaf_rows(report, fargs, argnums, rtol)

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=180)
    criterion = (f"pass: rel err <= rtol {rtol:.0e}; rel err = max|g_manual − g_autodiff| / "
                 "max|g_autodiff| over the leaf, g_manual = jax.grad(jaxconv.manual(fun)), "
                 "g_autodiff = jax.grad(fun)")
    table = Table(title=f"{escape(args.fun)}: manual vs autodiff gradients ({len(rows)} leaves)",
                  caption=escape(criterion), title_justify="left", caption_justify="left")
    for name in ("leaf", "shape", "dtype", "max |g_autodiff|", "rel err", "pass"):
        table.add_column(name, justify="left" if name in ("leaf", "dtype", "pass") else "right")
    for r in rows:
        table.add_row(escape(r["leaf"]), "×".join(map(str, r["shape"])) or "scalar", r["dtype"],
                      _fmt(r["scale"]), _fmt(r["rel_err"]), "PASS" if r["passed"] else "FAIL",
                      style=None if r["passed"] else "bold red")
    console.print(table)
    failed = sum(not r["passed"] for r in rows)
    console.print(f"{len(rows)} leaves checked in {seconds:.1f} s: {len(rows) - failed} passed, "
                  f"{failed} failed; max rel err {_fmt(report.max_error)}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        console.print(f"wrote {len(rows)} rows to {args.json}")
    return 1 if failed else 0
