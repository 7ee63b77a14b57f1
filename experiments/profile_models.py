"""Where a model's gradient step spends its time: XLA's ops by kind, manual against autodiff.

For each model of ``bench_models.py``, the compiled ``jax.grad(jaxconv.manual(loss))`` and
``jax.grad(loss)`` run under ``jax.profiler.trace`` (a few warm calls, then ``--calls`` traced
calls). Every XLA operation the trace records is classified by what its fused computation
contains: ``convolution`` (XLA's convolution), ``matmul`` (a dot), ``reduce-window`` (pools),
``scatter``, else ``elementwise/other`` (the relus, bias adds, transposes, copies, the
formulations' views and sums). The table gives milliseconds per call in each class.

The host has 2 cores and XLA runs independent operations side by side, so the classes' sum can
exceed the wall time; read the columns as shares. The point of the table: the convolutions that
both programs run as XLA's own (the same algorithm in both) bound what any rule can gain:
autodiff's step ÷ manual's convolution time is the speed-up if everything else were free.

Usage::

    python experiments/profile_models.py [--models flax_cnn ...] [--calls 5]

Writes ``experiments/results/profile_models.{md,json}``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax

import jaxconv
from jaxconv import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models  # noqa: E402  (the models, as that script builds them)

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("convolution", "matmul", "reduce-window", "scatter", "elementwise/other")


def op_kinds(hlo: str) -> dict[str, str]:
    """Instruction name -> kind, for every instruction of the compiled module's entry, a fusion
    classified by the operations of the computation it calls."""
    bodies: dict[str, str] = {}
    current = None
    for line in hlo.splitlines():
        header = re.match(r"\s*(?:ENTRY\s+)?%(\S+) .*\{\s*$", line)
        if header:
            current = header.group(1)
            bodies[current] = ""
        elif current is not None:
            bodies[current] += line + "\n"

    def kind(text: str) -> str:
        if re.search(r"\bconvolution\(", text):
            return "convolution"
        if re.search(r"\bdot\(", text):
            return "matmul"
        if "reduce-window(" in text:
            return "reduce-window"
        if "scatter(" in text:
            return "scatter"
        return "elementwise/other"

    kinds = {}
    for body in bodies.values():
        for line in body.splitlines():
            m = re.match(r"\s*(?:ROOT )?%(\S+) = .*?\b(\w[\w-]*)\(", line)
            if not m:
                continue
            calls = re.search(r"calls=%([\w.-]+)", line)
            kinds[m.group(1)] = kind(bodies.get(calls.group(1), "") if calls else line)
    return kinds


def profile(fn, args, calls: int) -> dict:
    """Milliseconds per call in each kind of XLA operation, and the wall time per call."""
    compiled = jax.jit(fn).lower(*args).compile()
    kinds = op_kinds(compiled.as_text())
    for _ in range(3):
        jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as folder:
        tic = time.perf_counter()
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        wall = (time.perf_counter() - tic) / calls
        trace = next(Path(folder).rglob("perfetto_trace.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    ms = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            ms[kinds[e["name"]]] += e["dur"] / 1e3 / calls
    return {"wall_ms": wall * 1e3, "ms": {k: ms.get(k, 0.0) for k in KINDS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(bench_models.MODELS),
                        choices=list(bench_models.MODELS))
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = bench.run_info("profile_models.py", sys.argv[1:], args.calls)
    rows = []
    for name in args.models:
        _, build, batch, _ = bench_models.MODELS[name]
        loss, largs = build(batch)
        for variant, fn in (("manual", jaxconv.manual(loss)), ("autodiff", loss)):
            rows.append({"model": name, "variant": variant,
                         **profile(jax.grad(fn), largs, args.calls)})
            print(json.dumps(rows[-1]), flush=True)
    info["load_after"] = list(os.getloadavg())
    lines = ["# Where the gradient step's time goes: XLA operations by kind", "",
             bench.run_header(info, "float32", f"{args.calls} traced calls after 3 warm ones")
             + " Milliseconds per call summed over the operations of each kind (operations "
             "overlap on the 2 cores, so a row's kinds can add up to more than its wall time). "
             "`bound` is autodiff's wall time over the manual step's convolution time: the "
             "speed-up over autodiff if every other operation of the manual step took no time.",
             "", "| model | variant | wall ms | " + " | ".join(KINDS) + " | bound |",
             "|" + "---|" * (len(KINDS) + 4)]
    walls = {(r["model"], r["variant"]): r["wall_ms"] for r in rows}
    for r in rows:
        bound = ""
        if r["variant"] == "manual" and r["ms"]["convolution"] > 0:
            bound = f"{walls[(r['model'], 'autodiff')] / r['ms']['convolution']:.2f}x"
        lines.append(f"| {r['model']} | {r['variant']} | {r['wall_ms']:.1f} | "
                     + " | ".join(f"{r['ms'][k]:.1f}" for k in KINDS) + f" | {bound} |")
    bench.write_results(args.out_dir, "profile_models", {"meta": info, "rows": rows}, lines)


if __name__ == "__main__":
    main()
