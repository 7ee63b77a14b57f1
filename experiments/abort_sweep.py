"""Which convolution and pooling gradient programs make XLA:CPU abort the process?

jaxlib 0.10.2's CPU compiler aborts (a C++ CHECK failure in the algebraic simplifier, "Window
dimensions do not match RHS shape") on JAX's own gradient of some convolutions with
``lhs_dilation``. A gradient with respect to the input of a *strided* convolution is such a
convolution (dy dilated by the stride), so second derivatives of strided convolutions, and the
hand-derived dX rule computed by XLA's convolution, may build the same kind of program.

Each configuration runs in its own subprocess (an abort kills only that one), a few at a time,
each with a time limit; the outcome is ``ok``, ``abort`` (killed by SIGABRT), ``error`` (a Python
exception) or ``timeout``. Targets:

- ``lax_fwd``: the convolution with ``lhs_dilation`` alone, compiled without any gradient;
- ``lax_dx`` / ``lax_dw``: JAX's gradient of ``lax.conv_general_dilated`` with ``lhs_dilation``
  (the issue's repro is one of these), first order, w.r.t. the input or the kernel;
- ``lax_2nd``: JAX's second derivative (grad of a function of grad) of a plain strided, dilated
  ``lax.conv_general_dilated`` (no ``lhs_dilation`` in the forward);
- ``jaxconv_1st:<set>`` / ``jaxconv_2nd:<set>``: ``jaxconv.conv``'s manual gradient, first and
  second order, with every role forced to one formulation set (``jaxconv.ops.jaxconv.use``);
- ``autodiff_conv_1st`` / ``autodiff_conv_2nd``: JAX's gradient of ``jaxconv.autodiff.conv``
  (XLA forward), first and second order;
- ``{max,avg}_pool_{manual,autodiff}_{1st,2nd}``: the pools.

Usage::

    python experiments/abort_sweep.py [--around] [--per-target 12] [--workers 2] [--timeout 60]

appends every run to ``experiments/results/abort_sweep.jsonl`` as it finishes (a rerun skips what
is there), then writes ``abort_sweep.json`` (every run) and ``abort_sweep.md`` (the summary).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# Formulation sets forced on (forward, dx, dw) for the jaxconv targets.
SETS = {
    "xla": ("xla", "xla", "xla"),
    "shifted": ("shifted", "shifted", "shifted"),
    "im2col": ("im2col", "col2im", "im2col"),
    "banded": ("banded", "banded", "banded"),
}
TARGETS = (
    ["lax_dx", "lax_dw", "lax_2nd"]
    + [f"jaxconv_{order}:{name}" for order in ("1st", "2nd") for name in SETS]
    + ["autodiff_conv_2nd"]
    + [f"{kind}_pool_{mode}_{order}" for kind in ("max", "avg") for mode in ("manual", "autodiff")
       for order in ("1st", "2nd")]
)

# The reproduction (NCHW / OIHW).
REPRO = {"target": "lax_dw", "nd": 2, "n": 2, "c_in": 1, "c_out": 2, "size": [2, 6],
         "kernel": [4, 2], "stride": [1, 1], "lhs_dilation": [3, 2], "dilation": [1, 1],
         "padding": [[1, 1], [0, 0]], "dtype": "float32"}


# --------------------------------------------------------------------------------------------
# One configuration (runs in the child).
# --------------------------------------------------------------------------------------------


def _run_one(cfg: dict) -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    jax.config.update("jax_enable_x64", True)
    import jaxconv
    import jaxconv.autodiff

    target, nd, dtype = cfg["target"], cfg["nd"], np.dtype(cfg["dtype"])
    rng = np.random.default_rng(0)

    def normal(shape):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    def second_order(f, *args):
        """grad of Σ sin(grad f) · u: differentiates the first-order program itself."""
        first = jax.grad(f, argnums=tuple(range(len(args))))

        def g(*a):
            return sum(jnp.sum(jnp.sin(t)) for t in first(*a))

        return jax.grad(g, argnums=tuple(range(len(args))))(*args)

    if target.startswith("lax_"):
        sp = "DHW"[3 - nd:]
        numbers = (f"NC{sp}", f"OI{sp}", f"NC{sp}")
        x = normal((cfg["n"], cfg["c_in"], *cfg["size"]))
        w = normal((cfg["c_out"], cfg["c_in"], *cfg["kernel"]))

        def loss(x, w):
            y = lax.conv_general_dilated(
                x, w, cfg["stride"], [tuple(p) for p in cfg["padding"]],
                lhs_dilation=cfg["lhs_dilation"], rhs_dilation=cfg["dilation"],
                dimension_numbers=numbers)
            return jnp.sum(jnp.sin(y))

        if target == "lax_fwd":  # the convolution alone, no gradient
            out = jax.jit(loss)(x, w)
        elif target == "lax_dx":
            out = jax.jit(jax.grad(loss, argnums=0))(x, w)
        elif target == "lax_dw":
            out = jax.jit(jax.grad(loss, argnums=1))(x, w)
        else:
            out = jax.jit(lambda x, w: second_order(loss, x, w))(x, w)
    elif "pool" in target:
        kind, _, mode, order = target.split("_")
        ops = jaxconv if mode == "manual" else jaxconv.autodiff
        op = ops.max_pool if kind == "max" else ops.avg_pool
        x = normal((cfg["n"], *cfg["size"], cfg["c_in"]))

        def loss(x):
            y = op(x, cfg["kernel"], stride=cfg["stride"], padding=[tuple(p) for p in
                                                                    cfg["padding"]])
            return jnp.sum(jnp.sin(y))

        with jaxconv.policy(cfg.get("policy")):  # the manual avg_pool's dX is a conv's
            if order == "1st":
                out = jax.jit(jax.grad(loss))(x)
            else:
                out = jax.jit(lambda x: second_order(loss, x))(x)
    else:
        x = normal((cfg["n"], *cfg["size"], cfg["c_in"]))
        w = normal((*cfg["kernel"], cfg["c_in"], cfg["c_out"]))
        kw = dict(stride=cfg["stride"], padding=[tuple(p) for p in cfg["padding"]],
                  dilation=cfg["dilation"])
        if target.startswith("autodiff_conv"):
            op, forced = jaxconv.autodiff.conv, dict(forward="xla")
        else:
            op = jaxconv.conv
            forced = dict(zip(("forward", "dx", "dw"), SETS[target.split(":")[1]], strict=True))
        forced.update(cfg.get("force", {}))

        def loss(x, w):
            return jnp.sum(jnp.sin(op(x, w, **kw)))

        with jaxconv.use(**forced):
            if "_1st" in target:
                out = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
            else:
                out = jax.jit(lambda x, w: second_order(loss, x, w))(x, w)
    jax.block_until_ready(out)


# --------------------------------------------------------------------------------------------
# The sweep (parent).
# --------------------------------------------------------------------------------------------


def class_grid() -> list[dict]:
    """The forward convolution alone (``lax_fwd``) over a grid around the repro: the first
    spatial dim's kernel 1-5, lhs_dilation 1-3, padding (0, 0) or (1, 1) and size 2 or 3, with
    the second dim as in the repro (kernel 2 = lhs_dilation 2, no padding); then the second
    dim's kernel, lhs_dilation and padding varied."""
    configs = []
    for kh in range(1, 6):
        for lh in (1, 2, 3):
            for ph in ([0, 0], [1, 1]):
                for oh in (2, 3):
                    configs.append({**REPRO, "target": "lax_fwd", "size": [oh, 6],
                                    "kernel": [kh, 2], "lhs_dilation": [lh, 2],
                                    "padding": [ph, [0, 0]]})
    for kw, lw, pw in [(3, 3, [0, 0]), (2, 2, [0, 1]), (2, 2, [1, 0]), (3, 3, [0, 1]),
                       (4, 4, [0, 0]), (2, 3, [0, 0]), (3, 2, [0, 0])]:
        configs.append({**REPRO, "target": "lax_fwd", "kernel": [4, kw], "lhs_dilation": [3, lw],
                        "padding": [[1, 1], pw]})
    return configs


def around_repro() -> list[dict]:
    """The repro with one parameter changed at a time (which of them matter), and the
    jaxconv calls whose gradient programs contain the repro's convolution: a forward with
    stride (3, 2), kernel (4, 2), input (3, 10) and padding ((2, 2), (1, 1)) has a (2, 6) output,
    so its dX by XLA's convolution is the repro's convolution (dy dilated by the stride, padded
    ((1, 1), (0, 0))), and the second derivative differentiates that w.r.t. the kernel."""
    variations = {
        "dtype": ["float64"], "n": [1], "c_in": [2], "c_out": [1, 3],
        "size": [[3, 6], [2, 5], [2, 7], [1, 6], [2, 4]],
        "kernel": [[3, 2], [4, 1], [4, 3], [2, 2]],
        "lhs_dilation": [[2, 2], [3, 1], [1, 2], [3, 3], [2, 3]],
        "padding": [[[0, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 1], [0, 0]], [[2, 2], [0, 0]],
                    [[1, 1], [1, 1]]],
        "stride": [[2, 1], [1, 2]], "dilation": [[2, 1], [1, 2]],
    }
    configs = [{**REPRO, "target": "lax_dx"}, {**REPRO, "target": "lax_2nd"}]
    for key, values in variations.items():
        configs += [{**REPRO, key: value} for value in values]
    mapped = {**REPRO, "size": [3, 10], "stride": [3, 2], "lhs_dilation": [1, 1],
              "padding": [[2, 2], [1, 1]]}
    for target in ("lax_2nd", "autodiff_conv_1st", "autodiff_conv_2nd",
                   *(f"jaxconv_{o}:{name}" for o in ("1st", "2nd") for name in SETS)):
        configs += [{**mapped, "target": target}, {**mapped, "target": target, "n": 1,
                                                   "dtype": "float64"}]
    pool = {**mapped, "kernel": [3, 2], "padding": [[1, 1], [0, 0]], "size": [4, 11]}
    # avg_pool's rule is the depthwise dX: window (3, 2), stride (3, 2), pads ((1, 1), (1, 1))
    # on (4, 10) make its dX convolution the repro's pattern (dy (2, 6), kernel (3, 2))
    in_class = {**pool, "padding": [[1, 1], [1, 1]], "size": [4, 10]}
    for target in (t for t in TARGETS if "pool" in t):
        configs += [{**pool, "target": target}, {**in_class, "target": target},
                    {**in_class, "target": target, "policy": "xla"}]
    return configs


def draw(target: str, rng: random.Random) -> dict:
    """A random small configuration for ``target`` whose output is not empty."""
    lax_lhs = target in ("lax_dx", "lax_dw")
    pool = "pool" in target
    while True:
        nd = rng.choice((1, 2, 2))
        cfg = {"target": target, "nd": nd, "n": rng.randint(1, 2), "c_in": rng.randint(1, 2),
               "c_out": rng.randint(1, 2), "dtype": rng.choice(("float32", "float64"))}
        cfg["size"] = [rng.randint(1, 7) for _ in range(nd)]
        cfg["kernel"] = [rng.randint(1, 3 if pool else 4) for _ in range(nd)]
        cfg["stride"] = [rng.randint(1, 3) for _ in range(nd)]
        cfg["lhs_dilation"] = [rng.randint(2, 3) if lax_lhs else 1 for _ in range(nd)]
        cfg["dilation"] = [1 if pool else rng.randint(1, 2) for _ in range(nd)]
        top = [k - 1 for k in cfg["kernel"]] if pool else [2] * nd
        cfg["padding"] = [[rng.randint(0, t), rng.randint(0, t)] for t in top]
        ok = True
        for i in range(nd):
            size = (cfg["size"][i] - 1) * cfg["lhs_dilation"][i] + 1 + sum(cfg["padding"][i])
            if size < cfg["dilation"][i] * (cfg["kernel"][i] - 1) + 1:
                ok = False
        if ok:
            return cfg


def run_child(cfg: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    except subprocess.TimeoutExpired:
        return {**cfg, "outcome": "timeout", "seconds": timeout}
    rc = proc.returncode
    if rc == 0:
        outcome, detail = "ok", ""
    elif rc in (-signal.SIGABRT, 128 + signal.SIGABRT):
        lines = [ln for ln in proc.stderr.splitlines() if "Check failed" in ln]
        outcome, detail = "abort", (lines[0][:300] if lines else proc.stderr[-300:])
    else:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        outcome, detail = "error", (tail[-1][:300] if tail else f"rc {rc}")
    return {**cfg, "outcome": outcome, "rc": rc, "detail": detail,
            "seconds": round(time.perf_counter() - t0, 2)}


FINDINGS = """\
## What aborts

- The abort is in compiling **one convolution with `lhs_dilation`**, not in differentiating:
  `lax_fwd` (the repro's convolution alone, no gradient) aborts exactly like the repro's
  gradient. A gradient aborts when it contains such a convolution: JAX's dX of a strided
  convolution, JAX's second derivatives, and jaxconv's `xla` dX rule (first order).
- The class, from the grid (`lax_fwd`, 2-D; every other parameter as in the repro): one
  spatial dim a with kernel = lhs_dilation = 2, no padding and stride 1 there, and another dim b
  whose kernel is larger than the undilated input along b (K_b > I_b) with a non-empty output.
  Change any one of these and it compiles: padding (1, 1) or (0, 1) on dim a, kernel 1 or 3 on
  dim a, lhs_dilation 1 or 3 on dim a, stride or rhs dilation 2 on dim a, K_b <= I_b, or 1-D.
  Kernel = lhs_dilation = 3 or 4 on dim a did not abort in the two configurations tried.
- For a forward convolution (stride s, kernel K, pads (lo, hi), output O) the dX convolution has
  lhs_dilation s, kernel K and pads (K − 1 − lo, K − 1 + r − hi): the class is a forward with
  s_a = K_a = 2, lo_a = 1, hi_a = 1 + r_a on one dim and K_b > O_b on another, e.g. x (N, 3, 10,
  C), w (4, 2, C, C'), stride (3, 2), padding ((2, 2), (1, 1)). There, `jax.grad` of
  `lax.conv_general_dilated` w.r.t. x aborts (`autodiff_conv_1st`), and so does `jaxconv.conv`'s
  manual gradient when dX runs as XLA's convolution (`jaxconv_1st:xla`: the `"xla"` policy, or
  `use(dx="xla")`); its `shifted`, `col2im` and `banded` dX do not. `jaxconv.avg_pool`'s rule is
  the depthwise dX, so under the `"xla"` policy window (3, 2), stride (3, 2), padding
  ((1, 1), (1, 1)) on a (4, 10) input aborts too; max_pool and the pools' autodiff twins
  (reduce_window) never did.
- Random configurations (1-3 per target here, 12 per target in an earlier partial run) almost
  never hit the class: it needs the exact coincidence above.
"""


def summarize(runs: list[dict]) -> str:
    lines = ["# Which gradient programs abort XLA:CPU (jaxlib 0.10.2)", "",
             "Each row: one target, its configurations run each in its own subprocess "
             "(`python experiments/abort_sweep.py --around`).", "", FINDINGS,
             "## Runs", "",
             "| target | runs | ok | abort | error | timeout |", "|---|---|---|---|---|---|"]
    by_target: dict[str, list[dict]] = {}
    for r in runs:
        by_target.setdefault(r["target"], []).append(r)
    for target, rs in by_target.items():
        counts = {o: sum(r["outcome"] == o for r in rs) for o in ("ok", "abort", "error",
                                                                  "timeout")}
        lines.append(f"| {target} | {len(rs)} | " + " | ".join(str(counts[o]) for o in counts)
                     + " |")
    bad = [r for r in runs if r["outcome"] != "ok"]
    lines += ["", f"## Configurations that did not run ({len(bad)})", ""]
    keys = ("target", "nd", "n", "c_in", "c_out", "size", "kernel", "stride", "lhs_dilation",
            "dilation", "padding", "dtype", "policy")
    for r in bad:
        desc = ", ".join(f"{k}={r[k]}" for k in keys if k in r)
        lines.append(f"- **{r['outcome']}** {desc}: `{r.get('detail', '')}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--per-target", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="*", default=TARGETS)
    parser.add_argument("--around", action="store_true",
                        help="also run the repro's neighbourhood (around_repro) first")
    parser.add_argument("--out", default=str(RESULTS / "abort_sweep"))
    args = parser.parse_args()
    if args.one:
        _run_one(json.loads(args.one))
        return
    rng = random.Random(args.seed)
    configs = [REPRO] + (around_repro() + class_grid() if args.around else [])
    configs += [draw(t, rng) for t in args.targets for _ in range(args.per_target)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Each finished run is appended at once (a killed sweep keeps what it has), and a rerun
    # with the same arguments skips the configurations already recorded.
    log_path = out.with_suffix(".jsonl")
    done = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            run = json.loads(line)
            done[json.dumps({k: v for k, v in run.items() if k in REPRO or k == "policy"},
                            sort_keys=True)] = run
    todo = [c for c in configs if json.dumps(c, sort_keys=True) not in done]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool, log_path.open("a") as log:
        for run in pool.map(lambda c: run_child(c, args.timeout), todo):
            log.write(json.dumps(run) + "\n")
            log.flush()
    runs = [json.loads(line) for line in log_path.read_text().splitlines()]
    meta = {"per_target": args.per_target, "seed": args.seed, "workers": args.workers,
            "timeout_s": args.timeout, "wall_s_last_session": round(time.perf_counter() - t0, 1),
            "runs": len(runs)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    out.with_suffix(".md").write_text(summarize(runs))
    print(summarize(runs))

if __name__ == "__main__":
    main()
