"""Layer benchmark: manual rules vs autodiff vs plain JAX (vs PyTorch), tune and held-out sets.

Every layer is timed forward and forward+backward (``jit`` of ``vjp``), the variants interleaved
in one run (see :mod:`jaxconv.bench`). Sets (``jaxconv.bench.SETS``):

- ``tune``: the README's suite (``LAYERS``) and extra tuning shapes (``TUNE_EXTRA``): the only
  shapes the ``"auto"`` heuristic (``jaxconv.ops._choice.heuristic``) was fitted to;
- ``heldout``: layers of other architectures (``HELDOUT``: VGG, U-Net, CIFAR, MobileNet, speech,
  WaveNet, 3-D, projections, grouped, dilated; batch 1 to 64) that no rule or threshold was
  fitted to. Its figure is the one to trust;
- ``heldout2``: a second held-out set (``HELDOUT2``: ECG 1-D, EfficientNet/MobileNetV2 strided
  depthwise, ConvNeXt 7×7 depthwise, 3-D video, ResNeXt-50 strided groups, ShuffleNet, DeepLab,
  keyword spotting, SRCNN; batch 1 to 64), committed before it was first timed.
- ``heldout3``: a third held-out set (``HELDOUT3``: FCN, YOLO, PixelCNN, wide CIFAR, Tacotron,
  SincNet, EEGNet, MnasNet, 3-D U-Net, a dilated 1-D context layer, RegNet, super-resolution,
  AlexNet's 5×5, a strided 3-D layer), committed before it was first timed, after the other two
  had been looked at.
- ``heldout4``: a fourth (``HELDOUT4``: few- and single-channel 2-D and 3-D layers of other
  data, DenseNet, Inception, a dilated TCN, a late depthwise stage, AlexNet's groups, an IMU
  stem, PointNet), committed before it was first timed, when the banded and single-channel rules
  were refitted.
- ``heldout5``: a fifth (``HELDOUT5``: mostly 3×3 "SAME" layers of other architectures),
  committed before it was first timed and before the Winograd rule was fitted.
- ``heldout6``: a sixth (``HELDOUT6``: grouped, not depthwise, layers of other architectures),
  committed before it was first timed and before the per-group rule was fitted.
- ``heldout7``: a seventh (``HELDOUT7``: one-input-channel 2-D layers with small kernels),
  committed before it was first timed and before the single-channel im2col dW was fitted.
- ``heldout8``: an eighth (``HELDOUT8``: pointwise, 1×1, layers of other architectures, some
  grouped), committed before it was first timed and before a 1×1 rule was fitted.
- ``heldout9``: a ninth (``HELDOUT9``: 3×3 stride-1 layers with 16 to 63 channels in or out),
  committed before it was first timed and before the Winograd rule was refitted below 64
  channels.
- ``heldout10``: a tenth (``HELDOUT10``: grouped, not depthwise, layers with 2 to 7 channels
  per group and more than one tap), committed before it was first timed and before the
  per-group rule was refitted below 8 channels per group.
- ``heldout11``: an eleventh (``HELDOUT11``: depthwise layers with more than one tap),
  committed before it was first timed and before the depthwise dW was summed image by image.

The headline statistic is the median over interleaved rounds of autodiff's time / manual's in
the same round (``vs_autodiff_rounds``); target: at least 0.95 on every layer (the default never
loses beyond noise).

``--calibrate`` instead runs the ``"measure"`` policy's search on each layer (forward+backward
programs under candidate formulations, as the layer composes) and records every timing: the
evidence behind the heuristic, and the cost of a new shape under ``"measure"``.

Usage::

    python experiments/bench_layers.py                          # tune + held-out, no PyTorch
    python experiments/bench_layers.py --sets readme --torch    # the README's table
    python experiments/bench_layers.py --layers vgg.conv3 --repeats 20
    python experiments/bench_layers.py --sets heldout10 --plans shifted/shifted/shifted
    python experiments/bench_layers.py --calibrate --sets tune

Writes ``experiments/results/bench_layers.{md,json}`` (``bench_calibration.{md,json}`` with
``--calibrate``). The machine's load average is recorded: on a shared machine trust the ratios
more than the milliseconds.
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
from jaxconv.ops import _choice

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.95


def calibrate(specs, repeats: int) -> list[dict]:
    rows = []
    for spec in specs:
        tic = time.perf_counter()
        result = _choice.measure(spec.x, spec.w, spec.config(), jnp.float32, repeats=repeats)
        row = {"layer": spec.name, "seconds_to_choose": time.perf_counter() - tic,
               "measured": result["choice"], "auto": bench.chosen(spec),
               "ms": {role: {k: v * 1e3 for k, v in times.items()}
                      for role, times in result["seconds"].items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(table: list[dict]) -> dict:
    ratios = [r["vs_autodiff_rounds"] for r in table]
    return {
        "layers": len(table),
        "geomean_vs_autodiff": bench.geomean(ratios),
        "worst_vs_autodiff": min(ratios),
        "below_target": [r["layer"] for r in table if r["vs_autodiff_rounds"] < TARGET],
        "geomean_vs_jax_xla": bench.geomean(r["vs_jax_xla_rounds"] for r in table),
        "worst_vs_jax_xla": min(r["vs_jax_xla_rounds"] for r in table),
    }


COLUMNS = ("layer", "choice", "fb_manual_ms", "fb_autodiff_ms", "fb_jax_xla_ms", "fb_torch_ms",
           "vs_autodiff_rounds", "vs_autodiff_cpu", "vs_jax_xla_rounds", "gflops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["tune", "heldout"], choices=list(bench.SETS))
    parser.add_argument("--layers", nargs="+", help="time only these layers (any set)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--torch", action="store_true",
                        help="also time PyTorch (in a process of its own)")
    parser.add_argument("--plans", nargs="+", default=[], metavar="FORWARD/DX/DW",
                        help="also time the default against these forced plans, in rounds of "
                             "their own (column vs_PLAN: the plan's time / the default's)")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)

    args = parser.parse_args()
    if args.layers:
        sets = {"selected": tuple(bench.layer(name) for name in args.layers)}
    else:
        sets = {name: bench.SETS[name] for name in args.sets}
    info = bench.run_info("bench_layers.py", sys.argv[1:], args.repeats)
    tic = time.perf_counter()
    if args.calibrate:
        rows = {name: calibrate(specs, max(args.repeats, 5)) for name, specs in sets.items()}
        info["load_after"] = list(os.getloadavg())
        lines = ["# Formulation calibration: the `measure` policy's search", "",
                 bench.run_header(info) + " Milliseconds are forward+backward (jit of vjp) "
                 "minima of round-robin calls, per forward/dx/dw triple tried, round by round (dw, "
                 "dx, forward: each role's candidates against the incumbent).", ""]
        for name, set_rows in rows.items():
            lines += [f"## {name}", "", "| layer | measured | auto | s to choose | timings (ms) |",
                      "|---|---|---|---|---|"]
            for r in set_rows:
                timings = "; ".join(
                    f"{role}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                        times.items(), key=lambda kv: kv[1]))
                    for role, times in r["ms"].items())
                lines.append(f"| {r['layer']} | {'/'.join(r['measured'].values())} | "
                             f"{'/'.join(r['auto'].values())} | {r['seconds_to_choose']:.1f} | "
                             f"{timings} |")
            lines.append("")
        bench.write_results(args.out_dir, "bench_calibration", {"meta": info, "sets": rows},
                            lines)
        return
    matmul = bench.matmul_gflops()
    results = {}
    for name, specs in sets.items():
        rows = []
        for spec in specs:
            rows.append(bench.bench_layer(spec, args.repeats, torch=args.torch))
            rows[-1]["vs_plans"] = bench.bench_plans(spec, args.plans, args.repeats)
            fb = rows[-1]["forward_backward"]
            print(f"{name} {spec.name}: manual {fb['manual']['wall'] * 1e3:.2f} ms, vs autodiff "
                  f"{bench.round_ratio(fb['autodiff'], fb['manual']):.2f}x", flush=True)
        table = bench.layer_table(rows, matmul)
        for row, r in zip(table, rows, strict=True):
            row.update({f"vs_{plan}": ratio for plan, ratio in r["vs_plans"].items()})
        results[name] = {"rows": rows, "table": table, "summary": summary(table)}
    info["load_after"] = list(os.getloadavg())
    info["seconds"] = time.perf_counter() - tic
    for result in results.values():  # per-round lists are long; the medians are kept
        for row in result["rows"]:
            for times in (*row["forward"].values(), *row["forward_backward"].values(),
                          row["manual_beside_jax_xla"]):
                times.pop("rounds", None)
    lines = [
        "# Layer benchmark: tune set and held-out set", "",
        bench.run_header(info, f"float32 matmul {matmul:.1f} GFLOP/s") + " "
        f"Forward+backward (jit of vjp), at least {args.repeats} interleaved rounds (more for "
        "fast layers, until the calls add up to 1 s; each timed call after an untimed one of the "
        "same program, in a shuffled order; manual against the twin and against plain JAX in "
        "rounds of their own), compile excluded. `choice` is the "
        "forward/dx/dw formulation of the default policy; `vs_autodiff_rounds` is the median "
        "over rounds of autodiff's time / manual's in the same round (> 1: manual is faster), "
        "`vs_autodiff_cpu` the ratio of median process CPU times, `vs_jax_xla_rounds` the same "
        "against plain JAX (XLA's convolution differentiated by JAX)"
        + ("; `vs_PLAN` is the median over rounds of manual's time under the forced plan "
           "PLAN (forward/dx/dw) / its time under the default policy, in rounds of their own "
           "(> 1: the default is faster)." if args.plans else "."), "",
    ]
    for name, result in results.items():
        s = result["summary"]
        columns = [k for k in COLUMNS if k != "fb_torch_ms" or args.torch]
        columns += [f"vs_{plan}" for plan in args.plans]
        table = [{k: r[k] for k in columns} for r in result["table"]]
        lines += [
            f"## {name} ({s['layers']} layers)", "", bench.markdown(table), "",
            f"Speed-up of manual over autodiff: geometric mean {s['geomean_vs_autodiff']:.2f}x, "
            f"worst {s['worst_vs_autodiff']:.2f}x; below {TARGET}: "
            f"{', '.join(s['below_target']) or 'none'}. Over plain JAX: geometric mean "
            f"{s['geomean_vs_jax_xla']:.2f}x, worst {s['worst_vs_jax_xla']:.2f}x.", "",
        ]
    bench.write_results(args.out_dir, "bench_layers",
                        {"meta": info, "matmul_gflops": matmul, "sets": results}, lines)


if __name__ == "__main__":
    main()
