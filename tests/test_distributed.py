"""Data parallelism (jaxconv.distributed): 4 forced host devices (conftest) and 2 processes."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxconv
from jaxconv import data, distributed, train


def test_four_host_devices_are_there():
    assert len(jax.devices()) == 4, "conftest must force 4 host devices"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return data.load("digits", cache_dir=tmp_path_factory.mktemp("cache"))


def _fit(dataset, devices, model="cnn1d", grads="manual"):
    config = train.TrainConfig(dataset="digits", model=model, grads=grads, epochs=1,
                               batch_size=32, lr=1e-2, devices=devices)
    return train.fit(config, dataset)


@pytest.mark.parametrize("grads", ["manual", "autodiff"])
def test_an_epoch_on_four_devices_matches_one_device(digits, grads):
    one, four = _fit(digits, 1, grads=grads), _fit(digits, 4, grads=grads)
    assert one.summary["devices"] == 1 and four.summary["devices"] == 4
    for a, b in zip(jax.tree.leaves(one.params[grads]), jax.tree.leaves(four.params[grads]),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one.step_losses[grads], four.step_losses[grads], rtol=1e-5)
    # The epoch really moved the parameters (so that equality above means something).
    init = train._init("cnn1d", digits.input_shape, digits.num_classes)(jax.random.PRNGKey(0))
    assert max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(
        jax.tree.leaves(init), jax.tree.leaves(one.params[grads]), strict=True)) > 1e-3


def _sharded_grads(loss, args, batch_axes):
    """Gradients of ``loss`` with each arg's batch axis split over the 4 devices, and without."""
    mesh = distributed.data_mesh(4)
    shardings = tuple(
        distributed.replicated(mesh) if axis is None else distributed.batch_sharded(mesh, axis)
        for axis in batch_axes)
    placed = tuple(jax.device_put(a, s) for a, s in zip(args, shardings, strict=True))
    grad = jax.grad(loss, argnums=tuple(range(len(args))))
    sharded = jax.jit(grad, out_shardings=distributed.replicated(mesh))(*placed)
    # The batch really was split: each device holds a quarter of the first argument.
    assert placed[0].sharding.spec == P(*([None] * batch_axes[0]), "data")
    assert placed[0].addressable_shards[0].data.shape[batch_axes[0]] == args[0].shape[
        batch_axes[0]] // 4
    return sharded, jax.jit(grad)(*args)


@pytest.mark.parametrize("op", ["manual", "autodiff"])
def test_conv_rules_sharded_equal_unsharded(op):
    ops = jaxconv if op == "manual" else jaxconv.autodiff
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (8, 9, 7, 4))
    w = jax.random.normal(keys[1], (3, 2, 2, 6))
    b = jax.random.normal(keys[2], (6,))
    dy = jax.random.normal(keys[3], (8, 4, 6, 6))

    def loss(x, w, b):
        y = ops.conv(x, w, b, stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), groups=2)
        return jnp.sum(y * dy)

    sharded, plain = _sharded_grads(loss, (x, w, b), (0, None, None))
    for s, p in zip(sharded, plain, strict=True):
        np.testing.assert_allclose(s, p, rtol=1e-10, atol=1e-10)
    reference = jax.grad(lambda *a: jnp.sum(jaxconv.autodiff.conv(
        a[0], a[1], a[2], stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2),
        groups=2) * dy), argnums=(0, 1, 2))(x, w, b)
    for s, r in zip(sharded, reference, strict=True):
        np.testing.assert_allclose(s, r, rtol=1e-10, atol=1e-10)


def test_dense_rules_sharded_equal_unsharded():
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (12, 5))
    w = jax.random.normal(keys[1], (5, 3))
    b = jax.random.normal(keys[2], (3,))

    def loss(x, w, b):
        return jnp.sum(jnp.tanh(jaxconv.dense(x, w, b)))

    sharded, plain = _sharded_grads(loss, (x, w, b), (0, None, None))
    for s, p in zip(sharded, plain, strict=True):
        np.testing.assert_allclose(s, p, rtol=1e-10, atol=1e-12)


def test_batch_not_divisible_by_devices_is_one_clear_error(digits):
    config = train.TrainConfig(dataset="digits", model="perceptron", epochs=1, batch_size=30,
                               devices=4)
    with pytest.raises(ValueError, match="batch size 30 is not divisible by the 4 devices"):
        train.fit(config, digits)


@pytest.mark.parametrize("devices, match", [
    (5, "devices=5 asked for more devices than there are \\(4"),
    (0, "devices must be a positive int, got 0"),
])
def test_bad_device_counts(devices, match):
    with pytest.raises(ValueError, match=match):
        distributed.data_mesh(devices)


def test_partial_multiprocess_configuration_names_what_is_missing(monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    with pytest.raises(ValueError, match="missing: num_processes, process_id"):
        distributed.initialize(coordinator="127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer, got 'two'"):
        distributed.initialize(coordinator="127.0.0.1:1234", process_id=0)
    with pytest.raises(ValueError, match="process_id must be in \\[0, 2\\), got 2"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_over_loopback_match_one_process(tmp_path):
    """README's 2-process command, run for real with the CPU backend: the same final loss,
    accuracy and step count as one process with the same global batch."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXCONV_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)  # one device per process
    base = [sys.executable, "-m", "jaxconv", "train", "--dataset", "digits", "--model", "cnn1d",
            "--epochs", "2", "--batch-size", "32", "--quiet"]
    single = subprocess.run([*base, "--out", str(tmp_path / "one")], env=env, timeout=300,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    port = _free_port()
    procs = [
        subprocess.Popen([*base, "--out", str(tmp_path / "two"), "--coordinator",
                          f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one["devices"], one["processes"]) == (1, 1)
    assert (two["devices"], two["processes"]) == (2, 2)
    assert two["steps"] == one["steps"]
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=2e-3)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
