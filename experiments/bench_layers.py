"""Layer benchmark of issue #5: manual rules vs autodiff vs plain JAX (vs PyTorch) on the suite.

Every layer of ``jaxconv.bench.LAYERS`` is timed forward and forward+backward (``jit`` of
``vjp``), the variants interleaved in one run (see :mod:`jaxconv.bench`). Targets (CPU, float32):
manual forward+backward no slower than autodiff on every layer (within noise: a speed-up of at
least 0.9) and a geometric-mean speed-up of at least 1.3.

``--calibrate`` also times every eligible formulation of the forward, dx and dw of each layer
alone (minimum of round-robin calls): the data behind ``jaxconv.ops._algorithms._heuristic``.

Usage::

    python experiments/bench_layers.py                        # the recorded results
    python experiments/bench_layers.py --layers lenet5.conv1 resnet.3x3 --repeats 10
    python experiments/bench_layers.py --calibrate

Writes ``experiments/results/bench_layers.{md,json}`` (and ``bench_calibration.{md,json}`` with
``--calibrate``). The machine's load average is recorded: on a shared machine trust the ratios,
especially the CPU-time ones, more than the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax.numpy as jnp

from jaxconv import bench
from jaxconv.ops import _algorithms

RESULTS = Path(__file__).resolve().parent / "results"
# The calibration table's columns: the i-th formulation of each role (xla, shifted,
# im2col for the forward and dW / col2im for dX, banded).
FORMULATIONS = ["/".join(dict.fromkeys(list(_algorithms.TABLES[role])[i]
                                       for role in _algorithms.ROLES))
                for i in range(len(_algorithms.FORWARD))]


def calibrate(names: list[str], repeats: int) -> list[dict]:
    rows = []
    for name in names:
        spec = bench.layer(name)
        cfg = spec.config()
        row = {"layer": name}
        for role in _algorithms.ROLES:
            t = _algorithms.measure(role, spec.x, spec.w, cfg, jnp.float32, repeats=repeats)
            row[role] = {k: round(v * 1e3, 3) for k, v in t.items()}
            row[f"{role}_auto"] = bench.chosen(spec)[role]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=[s.name for s in bench.LAYERS],
                        choices=[s.name for s in bench.LAYERS])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)

    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    info = bench.run_info("bench_layers.py", sys.argv[1:], args.repeats)
    if args.calibrate:
        rows = calibrate(args.layers, max(args.repeats, 5))
        info["load_after"] = list(os.getloadavg())
        (args.out_dir / "bench_calibration.json").write_text(
            json.dumps({"meta": info, "rows": rows}, indent=1))
        lines = [f"# Formulation calibration (ms, min of {max(args.repeats, 5)} round-robin "
                 f"calls; load {info['load_before'][0]:.1f} → {info['load_after'][0]:.1f})", "",
                 "| layer | role | " + " | ".join(FORMULATIONS) + " | auto picks |",
                 "|---|---|" + "---|" * (len(FORMULATIONS) + 1)]
        for r in rows:
            for role in _algorithms.ROLES:  # by name: an ineligible formulation is "–"
                cells = [f"{r[role][name]:.2f}" if name in r[role] else "–"
                         for name in _algorithms.TABLES[role]]
                lines.append(f"| {r['layer']} | {role} | " + " | ".join(cells)
                             + f" | {r[role + '_auto']} |")
        (args.out_dir / "bench_calibration.md").write_text("\n".join(lines) + "\n")
        return
    tic = time.perf_counter()
    matmul = bench.matmul_gflops()
    rows = []
    for name in args.layers:
        rows.append(bench.bench_layer(bench.layer(name), args.repeats, torch=not args.no_torch))
        print(f"{name}: manual {rows[-1]['forward_backward']['manual']['wall'] * 1e3:.2f} ms",
              flush=True)
    info["load_after"] = list(os.getloadavg())
    info["seconds"] = time.perf_counter() - tic
    table = bench.layer_table(rows, matmul)
    geo = {f"{v}_{s}": bench.geomean(r[f"vs_{v}_{s}"] for r in table)
           for v in ("autodiff", "jax_xla") for s in ("wall", "cpu")}
    slowest = min(min(r["vs_autodiff_wall"], r["vs_autodiff_cpu"]) for r in table)
    targets = {
        "every layer no slower than autodiff (>= 0.9 by wall or CPU)": all(
            max(r["vs_autodiff_wall"], r["vs_autodiff_cpu"]) >= 0.9 for r in table),
        "geometric-mean speed-up over autodiff >= 1.3 (wall)": geo["autodiff_wall"] >= 1.3,
    }
    (args.out_dir / "bench_layers.json").write_text(json.dumps(
        {"meta": info, "matmul_gflops": matmul, "rows": rows, "table": table, "geomean": geo,
         "targets": targets}, indent=1))
    lines = [
        "# Layer benchmark (issue #5)", "",
        bench.run_header(info, f"float32 matmul {matmul:.1f} GFLOP/s") + " "
        f"Medians of at least {args.repeats} interleaved calls (more for fast layers, until the "
        "calls add up to 1 s), compile excluded. `choice` is the "
        "forward/dx/dw formulation; `vs_*` are speed-ups of manual (time of the other variant / "
        "manual's), by wall and by process CPU time; manual forward = autodiff forward.", "",
        bench.markdown(table), "",
        "Geometric-mean speed-up of manual forward+backward: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in geo.items()) + f"; lowest {slowest:.2f}x.", "",
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()),
    ]
    (args.out_dir / "bench_layers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
