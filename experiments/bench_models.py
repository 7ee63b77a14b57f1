"""Speed on other people's models (issue #10 §5): ``jaxconv.manual`` against JAX's autodiff.

Four models as their libraries' users write them, float32 on the CPU:

=============  =======================================================================  ========
model          what                                                                     input
=============  =======================================================================  ========
flax_cnn       the Flax docs' MNIST CNN (Linen): conv 32 3x3, relu, avg_pool 2, conv    128×28²×1
               64 3x3, relu, avg_pool 2, dense 256, relu, dense 10
resnet18       Haiku's own ``hk.nets.ResNet18`` (batch norm in training mode)           16×32²×3
mobilenet_v1   Haiku's own ``hk.nets.MobileNetV1`` (depthwise convolutions)             16×32²×3
equinox_cnn    an Equinox CNN for one example, ``jax.vmap``-ed over the batch: Conv2d   128×1×28²
               32 3x3, relu, MaxPool2d 2, Conv2d 64 3x3, relu, MaxPool2d 2, Linear 128,
               relu, Linear 10
=============  =======================================================================  ========

Each model's softmax cross-entropy ``loss(params, ...)``: ``jax.jit(jax.grad(jaxconv.manual(
loss)))`` against ``jax.jit(jax.grad(loss))``, both compiled first (compile time reported, not
timed), then interleaved call by call (:func:`jaxconv.bench.interleaved`); the statistic is the
median, by wall and by process CPU time. ``jaxconv.coverage`` of each loss is recorded: what ran
a hand-derived rule, and anything left to autodiff.

Then (``--train-seeds``, default 3 seeds) the flax_cnn, widths as above, trained with optax's
Adam on scikit-learn's digits in float32 through ``jaxconv.manual`` and with JAX's gradients,
from the same initialisation on the same batches: test accuracy of both.

Targets (issue #10): flax_cnn manual >= 1.5x faster than autodiff; no model slower than 0.95x.

Usage::

    python experiments/bench_models.py                       # all models, 10+ rounds, training
    python experiments/bench_models.py --models flax_cnn --repeats 5 --train-seeds 0
    JAXCONV_CONV_POLICY=measure python experiments/bench_models.py   # another conv policy

Writes ``experiments/results/bench_models.{md,json}`` with the load average around the run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxconv
from jaxconv import bench, data

RESULTS = Path(__file__).resolve().parent / "results"


def cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _batch(shape, classes=10, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, shape, jnp.float32), jax.random.randint(ky, shape[:1], 0,
                                                                         classes)


# --------------------------------------------------------------------------------------------
# The models: each builder returns (loss, args), loss differentiated in its first argument.
# --------------------------------------------------------------------------------------------


def flax_cnn_module(features=(32, 64), hidden=256, classes=10):
    """The CNN of the Flax docs' MNIST tutorial (Linen)."""
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(features=features[0], kernel_size=(3, 3))(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nn.Conv(features=features[1], kernel_size=(3, 3))(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.Dense(features=hidden)(x)
            x = nn.relu(x)
            return nn.Dense(features=classes)(x)

    return CNN()


def flax_cnn(batch: int):
    model = flax_cnn_module()
    x, y = _batch((batch, 28, 28, 1))
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]

    def loss(params, x, y):
        return cross_entropy(model.apply({"params": params}, x), y)

    return loss, (params, x, y)


def _haiku(net: str, batch: int):
    import haiku as hk

    def forward(x, is_training):
        return getattr(hk.nets, net)(num_classes=10)(x, is_training=is_training)

    model = hk.transform_with_state(forward)
    x, y = _batch((batch, 32, 32, 3))
    params, state = jax.jit(functools.partial(model.init, is_training=True))(jax.random.key(1), x)

    def loss(params, state, x, y):
        logits, _ = model.apply(params, state, None, x, is_training=True)
        return cross_entropy(logits, y)

    return loss, (params, state, x, y)


def equinox_cnn(batch: int):
    import equinox as eqx

    class CNN(eqx.Module):
        layers: list

        def __init__(self, key):
            k1, k2, k3, k4 = jax.random.split(key, 4)
            self.layers = [
                eqx.nn.Conv2d(1, 32, kernel_size=3, key=k1), jax.nn.relu,
                eqx.nn.MaxPool2d(kernel_size=2, stride=2),
                eqx.nn.Conv2d(32, 64, kernel_size=3, key=k2), jax.nn.relu,
                eqx.nn.MaxPool2d(kernel_size=2, stride=2),
                jnp.ravel,
                eqx.nn.Linear(64 * 5 * 5, 128, key=k3), jax.nn.relu,
                eqx.nn.Linear(128, 10, key=k4),
            ]

        def __call__(self, x):                  # one example: (1, 28, 28), channels first
            for layer in self.layers:
                x = layer(x)
            return x

    params, static = eqx.partition(CNN(jax.random.key(1)), eqx.is_inexact_array)
    x, y = _batch((batch, 1, 28, 28))

    def loss(params, x, y):
        model = eqx.combine(params, static)
        return cross_entropy(jax.vmap(model)(x), y)

    return loss, (params, x, y)


#: name -> (library, builder, batch, input shape)
MODELS = {
    "flax_cnn": ("flax.linen", flax_cnn, 128, "28×28×1"),
    "resnet18": ("haiku", functools.partial(_haiku, "ResNet18"), 16, "32×32×3"),
    "mobilenet_v1": ("haiku", functools.partial(_haiku, "MobileNetV1"), 16, "32×32×3"),
    "equinox_cnn": ("equinox", equinox_cnn, 128, "1×28×28"),
}


# --------------------------------------------------------------------------------------------
# Timing one model.
# --------------------------------------------------------------------------------------------


def bench_model(name: str, repeats: int, policy: str = "auto") -> dict:
    """Compile the two gradients of one model under a conv ``policy``, time them interleaved."""
    library, build, batch, shape = MODELS[name]
    loss, args = build(batch)
    report = jaxconv.coverage(loss, *args)
    runners, compile_s = {}, {}
    for variant, fn in (("manual", jaxconv.manual(loss)), ("autodiff", loss)):
        tic = time.perf_counter()
        runners[variant] = bench.compile_call(jax.grad(fn), *args, policy=policy)
        compile_s[variant] = time.perf_counter() - tic
    times = bench.interleaved(runners, repeats)
    return {"model": name, "library": library, "batch": batch, "input": shape,
            "times": times, "compile_s": compile_s, "coverage": {
                "manual": report.manual, "unmapped": [list(u) for u in report.unmapped],
                "kept": report.kept}, "coverage_table": str(report)}


def table_row(r: dict) -> dict:
    t = r["times"]
    cov = r["coverage"]["manual"]
    return {
        "model": r["model"], "library": r["library"], "batch": r["batch"], "input": r["input"],
        "convs": cov.get("conv_general_dilated", 0), "on rules": sum(cov.values()),
        "left to autodiff": len(r["coverage"]["unmapped"]),
        "manual ms": t["manual"]["wall"] * 1e3, "autodiff ms": t["autodiff"]["wall"] * 1e3,
        "speed-up (wall)": t["autodiff"]["wall"] / t["manual"]["wall"],
        "speed-up (CPU)": t["autodiff"]["cpu"] / t["manual"]["cpu"],
    }


# --------------------------------------------------------------------------------------------
# Training the Flax CNN on digits, manual vs autodiff, float32.
# --------------------------------------------------------------------------------------------


def train_digits(seed: int, manual: bool, epochs: int = 6, batch: int = 32) -> dict:
    """The flax_cnn (widths 16/32, hidden 64, for 8×8 digits) trained with Adam (1e-2)."""
    digits = data.load("digits")
    model = flax_cnn_module(features=(16, 32), hidden=64)
    params = model.init(jax.random.key(seed), digits.x_train[:1])["params"]
    optimizer = optax.adam(1e-2)

    def loss(params, x, y):
        return cross_entropy(model.apply({"params": params}, x), y)

    grad = jax.grad(jaxconv.manual(loss) if manual else loss)

    @jax.jit
    def step(params, opt_state, x, y):
        updates, opt_state = optimizer.update(grad(params, x, y), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    tic = time.perf_counter()
    for epoch in range(epochs):
        for idx in data.epoch_batches(seed, epoch, digits.num_train, batch):
            params, opt_state = step(params, opt_state, digits.x_train[idx], digits.y_train[idx])
    seconds = time.perf_counter() - tic
    logits = model.apply({"params": params}, digits.x_test)
    return {"seed": seed, "grads": "manual" if manual else "autodiff",
            "test_accuracy": float(np.mean(np.argmax(logits, -1) == digits.y_test)),
            "seconds_with_compile": seconds}


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="seeds of the digits training comparison (none: skip it)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = bench.run_info("bench_models.py", sys.argv[1:], args.repeats)
    tic = time.perf_counter()
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args.repeats, info["policy"]))
        print(json.dumps(table_row(rows[-1])), flush=True)
    training = []
    for seed in args.train_seeds:
        for manual in (True, False):
            training.append(train_digits(seed, manual))
            print(json.dumps(training[-1]), flush=True)
    info["load_after"] = list(os.getloadavg())
    info["seconds"] = time.perf_counter() - tic
    table = [table_row(r) for r in rows]
    speed = {r["model"]: r["speed-up (wall)"] for r in table}
    targets = {}
    if "flax_cnn" in speed:
        targets["flax_cnn manual >= 1.5x autodiff (wall)"] = speed["flax_cnn"] >= 1.5
    targets["no model slower than 0.95x (wall)"] = min(speed.values()) >= 0.95
    data = {"meta": info, "rows": rows, "table": table, "training": training, "targets": targets}
    lines = [
        "# Other people's models: jaxconv.manual vs autodiff (issue #10)", "",
        bench.run_header(info, "float32") + f" One gradient of the loss "
        "(`jax.jit(jax.grad(jaxconv.manual(loss)))` vs `jax.jit(jax.grad(loss))`), medians of "
        f"at least {args.repeats} interleaved calls, compile excluded. `on rules`: primitive "
        "instances that `jaxconv.coverage` puts on a hand-derived rule (convolutions, dense "
        "products, pools, relus); `left to autodiff`: instances of those kinds it could not "
        "map.", "",
        bench.markdown(table), "",
    ]
    if training:
        lines += ["Training the flax_cnn (widths 16/32, dense 64) on scikit-learn's digits in "
                  "float32, Adam 1e-2, 6 epochs of batches of 32, same init and batches, test "
                  "accuracy:", "",
                  "| seed | manual | autodiff |", "|---|---|---|"]
        for seed in args.train_seeds:
            acc = {t["grads"]: t["test_accuracy"] for t in training if t["seed"] == seed}
            lines.append(f"| {seed} | {acc['manual']:.4f} | {acc['autodiff']:.4f} |")
        lines.append("")
    lines.append("Targets: " + "; ".join(
        f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    bench.write_results(args.out_dir, "bench_models", data, lines)


if __name__ == "__main__":
    main()
