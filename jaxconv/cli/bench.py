"""``jaxconv bench``: the hand-derived rules against JAX's autodiff (and PyTorch, if installed).

Prints one table for the layer suite (forward, forward+backward) and one for the training steps
(lenet5, cnn1d), each variant measured interleaved in one run; see :mod:`jaxconv.bench` for the
variants and the method. ``--json PATH`` also writes the raw measurements.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from jaxconv.cli import CLIError, positive_int

DESCRIPTION = """\
Time jaxconv's hand-derived rules (manual) against the same forward differentiated by JAX
(autodiff), against plain JAX (jax_xla: XLA's convolution differentiated by JAX) and against
PyTorch's CPU eager when torch is installed: milliseconds (medians, compile excluded), GFLOP/s,
the fraction of a float32 matmul's rate measured in the same run, speed-ups of manual (by wall
and by CPU time) and the training steps' peak memory (XLA's memory analysis)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark manual rules vs autodiff (and PyTorch)",
                              description=DESCRIPTION)
    p.add_argument("--layers", default="all",
                   help="comma-separated layer names of the suite, 'all' or 'none' "
                        "(default: all)")
    p.add_argument("--steps", default="lenet5,cnn1d",
                   help="comma-separated training steps (lenet5, cnn1d) or 'none'")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="timed rounds per variant, at least 10 for reported numbers")
    p.add_argument("--policy", choices=("auto", "xla", "measure"), default=None,
                   help="conv formulation policy of the manual/autodiff variants "
                        "(default: $JAXCONV_CONV_POLICY or auto)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    p.set_defaults(run=run)


def _names(text: str, known: list[str], what: str) -> list[str]:
    if text == "all":
        return known
    if text == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CLIError(f"--{what} must name items of {known}, 'all' or 'none', got {unknown}")
    return names


def run(args) -> int:
    import jaxconv
    from jaxconv import bench

    layers = _names(args.layers, [s.name for s in bench.LAYERS], "layers")
    steps = _names(args.steps, list(bench.TRAIN_STEPS), "steps")
    if args.json:
        parent = Path(args.json).parent
        if not parent.is_dir():
            raise FileNotFoundError(f"--json: the folder {str(parent)!r} does not exist")
    if args.policy:
        jaxconv.set_policy(args.policy)
    torch = not args.no_torch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    matmul = bench.matmul_gflops()
    print(f"policy {jaxconv.get_policy()}; float32 matmul {matmul:.1f} GFLOP/s; "
          f"load average {load:.2f}; torch "
          f"{'yes' if torch and bench._torch() is not None else 'no'}", flush=True)
    layer_rows = []
    for name in layers:
        layer_rows.append(bench.bench_layer(bench.layer(name), args.repeats, torch=torch))
        print(f"  {name} done", file=sys.stderr, flush=True)
    step_rows = [bench.bench_train_step(name, args.repeats, torch=torch) for name in steps]
    if layer_rows:
        table = bench.layer_table(layer_rows, matmul)
        print("\nLayers (forward+backward = jit of vjp; ms are wall medians):")
        print(bench.markdown(table))
        print(f"geometric-mean speed-up of manual over autodiff: wall "
              f"{bench.geomean(r['vs_autodiff_wall'] for r in table):.2f}x, cpu "
              f"{bench.geomean(r['vs_autodiff_cpu'] for r in table):.2f}x; over jax_xla: wall "
              f"{bench.geomean(r['vs_jax_xla_wall'] for r in table):.2f}x, cpu "
              f"{bench.geomean(r['vs_jax_xla_cpu'] for r in table):.2f}x")
    if step_rows:
        print("\nTraining steps (loss + gradients + Adam, jitted; ms are wall medians):")
        print(bench.markdown(bench.step_table(step_rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": matmul, "load_average": load,
                       "policy": jaxconv.get_policy(), "layers": layer_rows,
                       "steps": step_rows}, f, indent=1)
    return 0
