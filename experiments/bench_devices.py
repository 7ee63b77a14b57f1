"""Data-parallel training throughput on 1, 2 and 4 devices (issue #6).

Trains cnn1d on MNIST-1D with ``jaxconv.train.fit(..., devices=N)`` (the batch split along the mesh
axis "data", manual and autodiff gradients) and reports training examples per second, compile
time excluded. On a CPU-only machine the devices are *forced host devices*
(``--xla_force_host_platform_device_count``): they share the same cores, so more devices add
partitioning and all-reduce work without adding compute. The figure measures that the sharded
program runs and what it costs here, not a speed-up; on a machine with several accelerators the
same command measures real scaling.

    python experiments/bench_devices.py [--quick] [--epochs E] [--batch-size B]

Writes experiments/results/bench_devices.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import jax  # noqa: E402

from jaxconv import data, train  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, manual only")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else args.epochs
    modes = ("manual",) if args.quick else ("manual", "autodiff")
    dataset = data.load("mnist1d")
    load = os.getloadavg()[0]
    rows = []
    for grads in modes:
        for devices in (1, 2, 4):
            if devices > len(jax.devices()):
                continue
            config = train.TrainConfig(model="cnn1d", grads=grads, epochs=epochs,
                                       batch_size=args.batch_size, devices=devices, seed=0)
            tic = time.perf_counter()
            result = train.fit(config, dataset)
            s = result.summary
            examples = s["steps"] * args.batch_size
            rows.append({
                "grads": grads, "devices": devices, "steps": s["steps"],
                "train_seconds": s["train_seconds"], "compile_seconds": s["compile_seconds"],
                "examples_per_second": examples / s["train_seconds"],
                "final_loss": s["final_loss"], "test_accuracy": s["test_accuracy"],
                "wall_seconds": time.perf_counter() - tic,
            })
    platform_line = (f"{os.cpu_count()} CPUs, {platform.platform()}, jax {jax.__version__}, "
                     f"{jax.devices()[0].platform} x{len(jax.devices())} (forced host devices); "
                     f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    command = "python experiments/bench_devices.py" + (" --quick" if args.quick else "")
    lines = [
        "# Data-parallel training throughput (issue #6)", "",
        f"`{command}`: cnn1d on MNIST-1D, batch {args.batch_size}, {epochs} epoch(s); "
        f"{platform_line}.", "",
        "The 2 and 4 devices are forced host devices that share this machine's 2 CPU cores: "
        "more devices add partitioning and all-reduce work but no compute, so these numbers "
        "show the sharded program's cost here, not a speed-up.", "",
        "| grads | devices | examples/s | train s | compile s | final loss | test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['grads']} | {r['devices']} | {r['examples_per_second']:.0f} | "
        f"{r['train_seconds']:.2f} | {r['compile_seconds']:.1f} | {r['final_loss']:.4f} | "
        f"{r['test_accuracy']:.3f} |" for r in rows
    ]
    suffix = ".quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"bench_devices{suffix}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"bench_devices{suffix}.json").write_text(
        json.dumps({"command": command, "platform": platform_line, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
