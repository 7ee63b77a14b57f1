"""jaxconv.train: optimizers, the scanned epoch, fit's files, determinism, resume, comparisons."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv
from jaxconv import data, models, recipes, train
from jaxconv.train import TrainConfig, fit

SUMMARY_KEYS = {
    "test_accuracy", "test_loss", "final_loss", "train_accuracy", "train_seconds",
    "compile_seconds", "steps", "epochs", "grads", "model", "dataset", "seed", "optimizer", "lr",
    "batch_size", "schedule", "weight_decay", "momentum", "devices", "processes", "dtype",
    "conv_policy", "feedback", "alignment_deg",
}
RECORD_KEYS = {"epoch", "step", "grads", "train_loss", "train_accuracy", "test_loss",
               "test_accuracy", "seconds", "alignment_deg", "alignment_deg_layers"}


def _subset(ds: data.Dataset, n_train: int, n_test: int) -> data.Dataset:
    return data.Dataset(ds.name, ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test[:n_test],
                        ds.y_test[:n_test], ds.num_classes)


def _fake_mnist(n_train: int, n_test: int) -> data.Dataset:
    """MNIST-shaped data (28x28x1 in [0, 1], 10 classes); the real files are not in the tests."""
    rng = np.random.default_rng(0)
    x = rng.random((n_train + n_test, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    return data.Dataset("mnist", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jaxconv-cache")
    return {
        "mnist1d": _subset(data.load("mnist1d", cache_dir=cache), 48, 20),
        "digits": _subset(data.load("digits"), 48, 20),
        "mnist": _fake_mnist(48, 20),
    }


@pytest.fixture(scope="module")
def digits():
    return _subset(data.load("digits"), 256, 100)


def _config(**kw) -> TrainConfig:
    base = dict(dataset="digits", model="perceptron", epochs=1, batch_size=32, lr=1e-2)
    return TrainConfig(**{**base, **kw})


def _without_times(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if k not in ("train_seconds", "compile_seconds")}
    if "compare" in out:
        out["compare"] = {k: v for k, v in out["compare"].items() if k != "train_seconds"}
    return out


def _records_without_times(history: list[dict]) -> list[dict]:
    def strip(r):
        r = {k: v for k, v in r.items() if k != "seconds"}
        if "compare" in r:
            r["compare"] = {k: v for k, v in r["compare"].items() if k != "seconds"}
        return r

    return [strip(r) for r in history]


# --- optimizers ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", train.OPTIMIZERS)
@pytest.mark.parametrize("schedule", train.SCHEDULES)
def test_every_optimizer_minimises_a_quadratic(name, schedule):
    opt = train.make_optimizer(name, 0.1, total_steps=200, schedule=schedule)
    params = {"w": jnp.array([3.0, -2.0])}
    state = opt.init(params)
    for _ in range(200):
        dparams = {"w": 2 * params["w"]}
        updates, state = opt.update(dparams, state, params)
        params = optax.apply_updates(params, updates)
    assert float(jnp.max(jnp.abs(params["w"]))) < 0.3


def test_cosine_schedule_decays_to_zero_and_constant_does_not():
    """With a zero-momentum sgd, the update is -lr(step) * gradient: read the schedule off it."""
    def rates(schedule):
        opt = train.make_optimizer("sgd", 0.5, total_steps=10, schedule=schedule, momentum=0.0)
        params, state, out = {"w": jnp.zeros(())}, None, []
        state = opt.init(params)
        for _ in range(11):
            updates, state = opt.update({"w": jnp.ones(())}, state, params)
            out.append(-float(updates["w"]))
        return out

    cosine, constant = rates("cosine"), rates("constant")
    assert cosine[0] == pytest.approx(0.5) and cosine[5] == pytest.approx(0.25)
    assert cosine[10] == pytest.approx(0.0, abs=1e-7)
    assert constant == pytest.approx([0.5] * 11)


def test_adamw_decays_weights_and_adam_does_not():
    params = {"w": jnp.ones(3)}
    zero = {"w": jnp.zeros(3)}
    for name, moved in (("adamw", True), ("adam", False)):
        opt = train.make_optimizer(name, 0.1, total_steps=5, schedule="constant",
                                   weight_decay=0.5)
        updates, _ = opt.update(zero, opt.init(params), params)
        assert bool(jnp.any(updates["w"] != 0)) is moved


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="rmsprop", lr=0.1), r"optimizer must be one of \('adam', 'adamw', 'sgd'\)"
        r", got 'rmsprop'"),
    (dict(name="adam", lr=0.0), "lr must be a positive finite number, got 0.0"),
    (dict(name="adam", lr=0.1, schedule="linear"),
     r"schedule must be one of \('cosine', 'constant'\), got 'linear'"),
])
def test_make_optimizer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.make_optimizer(**kwargs, total_steps=10)


# --- configuration -------------------------------------------------------------------------


def test_resolved_takes_the_models_defaults_then_the_fallbacks():
    resolved = TrainConfig(model="cnn1d").resolved()
    for key in ("optimizer", "lr", "epochs", "batch_size", "schedule", "weight_decay",
                "momentum"):
        expected = recipes.RECIPES["cnn1d"].get(key, recipes.FALLBACK[key])
        assert getattr(resolved, key) == expected
    assert TrainConfig(model="cnn1d", lr=0.123, epochs=7).resolved().lr == 0.123


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dataset="cifar"), ValueError, r"dataset must be one of \('mnist1d', 'digits', 'mnist'\)"
        r", got 'cifar'"),
    (dict(model="resnet"), ValueError, r"model must be one of \('perceptron', 'mlp'"),
    (dict(grads="numeric"), ValueError, r"grads must be one of \('manual', 'autodiff'\)"
        r", got 'numeric'"),
    (dict(dtype="bfloat16"), ValueError, r"dtype must be one of \('float32', 'float64'\)"
        r", got 'bfloat16'"),
    (dict(optimizer="lbfgs"), ValueError, "optimizer must be one of"),
    (dict(lr=0.0), ValueError, "lr must be a positive finite number, got 0.0"),
    (dict(lr=-1e-3), ValueError, "lr must be a positive"),
    (dict(lr=float("nan")), ValueError, "lr must be a positive"),
    (dict(epochs=0), ValueError, "epochs must be a positive int, got 0"),
    (dict(epochs=2.5), TypeError, "epochs must be a positive int"),
    (dict(batch_size=-4), ValueError, "batch_size must be a positive int, got -4"),
    (dict(momentum=1.0), ValueError, r"momentum must be in \[0, 1\), got 1.0"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay must be a non-negative finite number"
        ", got -1.0"),
    (dict(seed=-1), ValueError, "seed must be a non-negative int, got -1"),
    (dict(resume=True), ValueError, "resume needs out"),
])
def test_bad_configurations_are_rejected_naming_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs).resolved()


def test_batch_larger_than_the_training_set_is_rejected(digits):
    with pytest.raises(ValueError, match="batch_size 257 is larger than the training set of "
                                         "digits \\(256 examples\\)"):
        fit(_config(batch_size=257), digits)


def test_config_and_dataset_must_agree(digits):
    with pytest.raises(ValueError, match="config.dataset is 'mnist1d' but the dataset given is"):
        fit(_config(dataset="mnist1d"), digits)


# --- step, epoch, evaluation ---------------------------------------------------------------


def test_scanned_epoch_equals_a_loop_of_train_steps(digits):
    model = models.get("mlp")
    opt = train.make_optimizer("adam", 1e-2, total_steps=8)
    params = model.init(jax.random.key(0), digits.input_shape, 10)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    batches = jnp.asarray(data.epoch_batches(0, 0, len(y), 32))

    epoch = train.make_epoch(model.apply, opt, "manual")
    p_scan, s_scan, per_step = epoch(params, opt.init(params), x, y, batches)
    losses, accs = per_step["loss"], per_step["accuracy"]
    assert losses.shape == accs.shape == (8,)

    step = jax.jit(lambda p, s, xb, yb: train.train_step(p, s, xb, yb, apply=model.apply,
                                                          optimizer=opt, grads="manual"))
    p_loop, s_loop = params, opt.init(params)
    for i, index in enumerate(batches):
        p_loop, s_loop, loss, acc = step(p_loop, s_loop, x[index], y[index])
        np.testing.assert_allclose(loss, losses[i], rtol=1e-5)
        np.testing.assert_allclose(acc, accs[i])
    for a, b in zip(jax.tree.leaves(p_scan), jax.tree.leaves(p_loop), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(s_scan[0].count) == 8


def test_evaluate_matches_the_loss_and_accuracy_of_the_whole_split(digits):
    model = models.get("mlp")
    params = model.init(jax.random.key(1), digits.input_shape, 10)
    logits = model.apply(params, jnp.asarray(digits.x_test))
    expected_loss = float(jnp.mean(jaxconv.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(digits.y_test))))
    expected_acc = float(np.mean(np.argmax(logits, -1) == digits.y_test))
    for chunk in (7, 100, 1000):  # uneven chunks, one chunk, a chunk larger than the split
        loss, acc = train.evaluate(params, digits.x_test, digits.y_test, apply=model.apply,
                                   chunk_size=chunk)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        assert acc == pytest.approx(expected_acc)


# --- every model on every dataset, both gradient modes -------------------------------------


@pytest.mark.parametrize("dataset", data.DATASETS)
@pytest.mark.parametrize("model", models.MODELS)
def test_short_run_of_every_model_and_dataset_in_both_modes(datasets, model, dataset):
    """A few steps of manual and autodiff from the same init on the same batches: finite,
    and the two modes' losses agree at every step."""
    ds = datasets[dataset]
    config = TrainConfig(dataset=dataset, model=model, epochs=1, batch_size=16, lr=1e-3,
                         optimizer="adam", compare=True)
    result = fit(config, ds)
    s = result.summary
    assert s["steps"] == 3 and s["model"] == model and s["dataset"] == dataset
    assert np.isfinite(s["final_loss"]) and 0 <= s["test_accuracy"] <= 1
    manual, autodiff = result.step_losses["manual"], result.step_losses["autodiff"]
    assert manual.shape == autodiff.shape == (3,)
    np.testing.assert_allclose(manual, autodiff, rtol=1e-4)
    assert s["compare"]["max_loss_diff"] <= 1e-4 * abs(s["final_loss"])
    assert s["compare"]["max_param_diff"] < 1e-4


# --- fit: learning, files, determinism -----------------------------------------------------


def test_fit_learns_and_writes_its_files(digits, tmp_path):
    events = []
    out = tmp_path / "run"
    result = fit(_config(model="mlp", epochs=3, out=str(out)), digits,
                 callback=lambda event, info: events.append((event, info)))
    s = result.summary
    assert set(s) == SUMMARY_KEYS
    assert s["steps"] == 3 * (256 // 32) and s["epochs"] == 3 and s["grads"] == "manual"
    assert s["final_loss"] == result.history[-1]["train_loss"]
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]
    assert s["test_accuracy"] > 0.6  # 10 classes: chance is 0.1

    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [8, 16, 24]
    assert all(set(r) == RECORD_KEYS for r in records)
    assert records == result.history
    assert json.loads((out / "summary.json").read_text()) == s
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "compare.png").exists()
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [8, 16, 24]

    kinds = [e for e, _ in events]
    assert kinds == ["start", "epoch", "epoch", "epoch", "done"]
    assert events[1][1] == records[0]


def test_fit_without_out_writes_nothing(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(_config(), digits)
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_run_other_seed_other_run(digits):
    a = fit(_config(seed=3), digits)
    b = fit(_config(seed=3), digits)
    c = fit(_config(seed=4), digits)
    assert _without_times(a.summary) == _without_times(b.summary)
    np.testing.assert_array_equal(a.step_losses["manual"], b.step_losses["manual"])
    assert not np.array_equal(a.step_losses["manual"], c.step_losses["manual"])


def test_compare_writes_the_differences_and_a_plot(digits, tmp_path):
    out = tmp_path / "cmp"
    result = fit(_config(model="mlp", epochs=3, grads="autodiff", compare=True, out=str(out)),
                 digits)
    c = result.summary["compare"]
    assert c["grads"] == ["autodiff", "manual"]
    assert 0 <= c["max_loss_diff"] < 1e-4 and 0 <= c["max_param_diff"] < 1e-4
    assert c["max_loss_diff"] == max(r["compare"]["loss_diff"] for r in result.history)
    leaves = zip(jax.tree.leaves(result.params["manual"]),
                 jax.tree.leaves(result.params["autodiff"]), strict=True)
    assert c["max_param_diff"] == max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves)
    assert set(c["test_accuracy"]) == set(c["final_loss"]) == {"manual", "autodiff"}
    assert result.summary["final_loss"] == c["final_loss"]["autodiff"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["grads"] == "autodiff" and record["compare"]["grads"] == "manual"
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["compare"] == c


def test_compare_variants_start_from_the_same_parameters(digits):
    """After zero epochs' worth of difference, the same init: compare the first step's loss."""
    result = fit(_config(model="mlp", compare=True, epochs=3), digits)
    assert result.step_losses["manual"][0] == result.step_losses["autodiff"][0]


def test_compare_measures_both_gradients_at_every_step(digits):
    """Every step of the compare run gets a gradient agreement, at float32 rounding; the summary
    and each epoch's record hold its largest value."""
    result = fit(_config(model="mlp", compare=True, epochs=2), digits)
    g, c = result.grad_rel_diffs, result.summary["compare"]
    assert g.shape == (result.summary["steps"],) == (16,)
    assert np.all(np.isfinite(g)) and np.all(g >= 0) and g.max() < 1e-5
    assert c["max_grad_rel_diff"] == g.max() and c["grad_rel_diff_every"] == 1
    assert [r["compare"]["max_grad_rel_diff"] for r in result.history] == [g[:8].max(),
                                                                            g[8:].max()]
    assert [r["compare"]["param_diff"] for r in result.history][-1] == c["max_param_diff"]
    assert fit(_config(model="mlp", epochs=1), digits).grad_rel_diffs is None


def test_grad_rel_diff_sees_a_wrong_rule(digits):
    """A rule that scales dw by 1.5 (same forward) is 1/3 away relative to its own scale; the
    right rules are at rounding."""
    model = models.get("perceptron")
    params = model.init(jax.random.key(0), digits.input_shape, 10)
    x, y = jnp.asarray(digits.x_train[:32]), jnp.asarray(digits.y_train[:32])

    def wrong(params, x, *, grads):
        if grads == "manual":
            w = params["dense"]["w"]
            params = {"dense": {"w": 1.5 * w - 0.5 * jax.lax.stop_gradient(w),
                                "b": params["dense"]["b"]}}
        return model.apply(params, x, grads="autodiff")

    assert float(train.grad_rel_diff(params, x, y, apply=model.apply)) < 1e-6
    assert float(train.grad_rel_diff(params, x, y, apply=wrong)) == pytest.approx(1 / 3,
                                                                                  rel=1e-4)


def test_float64_run_keeps_everything_in_float64(digits, tmp_path):
    """Data, parameters, optimizer state and the rules in float64: the two modes' gradients agree
    to float64 rounding and the trajectories stay together; a float32 run afterwards is float32."""
    out = tmp_path / "f64"
    result = fit(_config(model="mlp", compare=True, epochs=2, dtype="float64", out=str(out)),
                 digits)
    s, c = result.summary, result.summary["compare"]
    assert s["dtype"] == "float64"
    assert json.loads((out / "summary.json").read_text())["dtype"] == "float64"
    for g in ("manual", "autodiff"):
        assert all(leaf.dtype == np.float64 for leaf in jax.tree.leaves(result.params[g]))
    assert c["max_grad_rel_diff"] < 1e-13
    assert c["max_loss_diff"] <= 1e-12 and c["max_param_diff"] <= 1e-12
    # The optimizer's state was float64 too: its checkpoint holds only float64 (and int) arrays.
    from jaxconv.checkpoint import Checkpoints

    with jax.enable_x64(True), Checkpoints(out / "checkpoints") as ck:
        state = ck.restore_latest(target=jax.tree.map(
            lambda a: np.zeros(a.shape, a.dtype), _float64_state(result))).state
    kinds = {np.asarray(leaf).dtype for leaf in jax.tree.leaves(state)}
    assert kinds <= {np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64)}
    assert np.dtype(np.float64) in kinds
    f32 = fit(_config(model="mlp", epochs=2), digits)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(f32.params["manual"]))
    assert f32.step_losses["manual"][0] == pytest.approx(result.step_losses["manual"][0],
                                                         rel=1e-6)
    assert not np.array_equal(f32.step_losses["manual"], result.step_losses["manual"])


def _float64_state(result):
    """The structure of a float64 mlp run's checkpointed state (params and adam's state)."""
    c = result.config
    opt = train.make_optimizer(c.optimizer, c.lr, total_steps=c.epochs * 8, schedule=c.schedule,
                               weight_decay=c.weight_decay, momentum=c.momentum)
    params = result.params["manual"]
    with jax.enable_x64(True):
        state = {"params": params, "opt_state": opt.init(params)}
    return {g: state for g in ("manual", "autodiff")}


# --- checkpoints and resume ----------------------------------------------------------------


class _Stop(Exception):
    pass


def _stop_after(epoch):
    def callback(event, info):
        if event == "epoch" and info["epoch"] == epoch:
            raise _Stop

    return callback


def test_interrupted_run_resumes_to_identical_results(digits, tmp_path):
    config = _config(model="mlp", epochs=3, out=str(tmp_path / "full"))
    full = fit(config, digits)

    part = dataclasses.replace(config, out=str(tmp_path / "part"))
    with pytest.raises(_Stop):
        fit(part, digits, callback=_stop_after(2))
    assert not (tmp_path / "part" / "summary.json").exists()  # written only on completion
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 2

    events = []
    resumed = fit(dataclasses.replace(part, resume=True), digits,
                  callback=lambda e, i: events.append((e, i)))
    assert [i["start_epoch"] for e, i in events if e == "start"] == [2]
    assert _without_times(resumed.summary) == _without_times(full.summary)
    assert _records_without_times(resumed.history) == _records_without_times(full.history)
    np.testing.assert_array_equal(resumed.step_losses["manual"], full.step_losses["manual"])
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(a, b)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert _records_without_times([json.loads(x) for x in lines]) == _records_without_times(
        full.history)


def test_damaged_latest_checkpoint_is_reported_and_the_previous_used(digits, tmp_path):
    config = _config(model="mlp", epochs=3, out=str(tmp_path / "run"))
    full = fit(config, digits)
    latest = tmp_path / "run" / "checkpoints" / "24"
    for path in (latest / "state").rglob("*"):
        if path.is_file() and path.stat().st_size:
            raw = path.read_bytes()
            path.write_bytes(raw[: len(raw) // 2] + bytes(len(raw) - len(raw) // 2))
    notices = []
    resumed = fit(dataclasses.replace(config, resume=True), digits,
                  callback=lambda e, i: notices.append(i["message"]) if e == "notice" else None)
    assert len(notices) == 1
    assert notices[0].startswith("checkpoint step 24 is damaged (")
    assert notices[0].endswith("); using step 16") and "\n" not in notices[0]
    assert _without_times(resumed.summary) == _without_times(full.summary)


def test_resume_with_a_compare_run(digits, tmp_path):
    config = _config(model="mlp", epochs=3, compare=True, out=str(tmp_path / "a"))
    full = fit(config, digits)
    part = dataclasses.replace(config, out=str(tmp_path / "b"))
    with pytest.raises(_Stop):
        fit(part, digits, callback=_stop_after(1))
    resumed = fit(dataclasses.replace(part, resume=True), digits)
    assert _without_times(resumed.summary) == _without_times(full.summary)


def test_out_with_a_run_needs_resume_and_the_same_options(digits, tmp_path):
    config = _config(out=str(tmp_path / "run"))
    fit(config, digits)
    with pytest.raises(ValueError, match="already holds the checkpoints of a run; resume it"):
        fit(config, digits)
    with pytest.raises(ValueError, match="cannot resume: the checkpointed run has lr=0.01, this "
                                         "one lr=0.02"):
        fit(dataclasses.replace(config, resume=True, lr=0.02), digits)
    with pytest.raises(ValueError, match="cannot resume: the checkpointed run trained on 256"):
        fit(dataclasses.replace(config, resume=True), _subset(digits, 128, 20))
    # Another model has other parameter shapes: refused before any array is read, and the
    # checkpoints are left alone (not mistaken for damaged ones).
    with pytest.raises(ValueError, match="cannot resume: the checkpointed run has "
                                         "model='perceptron', this one model='mlp'"):
        fit(dataclasses.replace(config, resume=True, model="mlp"), digits)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["8"]
    assert not (tmp_path / "run" / "damaged_checkpoints").exists()


def test_resume_without_a_checkpoint_starts_from_scratch(digits, tmp_path):
    notices = []
    result = fit(_config(out=str(tmp_path / "new"), resume=True), digits,
                 callback=lambda e, i: notices.append(i["message"]) if e == "notice" else None)
    assert notices == [f"no checkpoint in {tmp_path / 'new'}; starting from scratch"]
    assert result.summary["steps"] == 8
