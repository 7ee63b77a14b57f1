"""Training with a feedback rule (issue 13 §3): the models pass each layer its rule, ``jaxconv
train --feedback``, the run's records, resume, and the angle between a rule's update and the
gradient."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import data, feedback, models, train
from jaxconv.cli import main
from jaxconv.train import TrainConfig, fit


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits")
    return data.Dataset(ds.name, ds.x_train[:256], ds.y_train[:256], ds.x_test[:100],
                        ds.y_test[:100], ds.num_classes)


def _config(**kw) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", epochs=3, batch_size=32, lr=1e-2,
                optimizer="adam", weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(digits):
    """The same short run (mlp, 3 epochs) under each rule."""
    return {rule: fit(_config(feedback=rule), digits) for rule in train.FEEDBACKS}


# --- the angle ------------------------------------------------------------------------------


def test_alignment_deg_of_known_angles():
    a = {"w": jnp.array([[1.0, 0.0]]), "b": jnp.array([0.0])}
    assert float(train.alignment_deg(a, a)) == 0.0
    assert float(train.alignment_deg(a, jax.tree.map(lambda v: 3 * v, a))) == 0.0  # scale-free
    assert float(train.alignment_deg(a, jax.tree.map(jnp.negative, a))) == pytest.approx(180.0)
    orthogonal = {"w": jnp.array([[0.0, 0.0]]), "b": jnp.array([2.0])}
    assert float(train.alignment_deg(a, orthogonal)) == pytest.approx(90.0)
    diagonal = {"w": jnp.array([[1.0, 0.0]]), "b": jnp.array([1.0])}  # across leaves: 45°
    assert float(train.alignment_deg(a, diagonal)) == pytest.approx(45.0)
    sixty = {"w": jnp.array([[0.5, np.sqrt(3) / 2]]), "b": jnp.array([0.0])}
    assert float(train.alignment_deg(sixty, a)) == pytest.approx(60.0, rel=1e-6)


def test_alignment_deg_is_accurate_near_zero():
    """A tiny angle is resolved (arccos of the rounded cosine would give 0 or ~0.03°)."""
    a = jnp.array([1.0, 0.0], jnp.float32)
    b = jnp.array([1.0, 1e-5], jnp.float32)
    assert float(train.alignment_deg(a, b)) == pytest.approx(np.degrees(1e-5), rel=1e-3)


def test_alignment_deg_rejects_other_structures():
    with pytest.raises(ValueError, match="same structure"):
        train.alignment_deg({"w": jnp.ones(2)}, {"v": jnp.ones(2)})


# --- the models pass each layer its rule ------------------------------------------------------


@pytest.mark.parametrize("name", models.MODELS)
def test_models_give_each_layer_its_own_index(name, monkeypatch):
    """Layer i (in the order of params) gets per_layer(feedback, i); a rule returning w itself
    is backprop exactly, and random feedback keeps the last layer's gradient (it never sends
    dx through a feedback kernel) while changing an earlier one's."""
    model = models.get(name)
    shape = (8, 8, 1)
    params = model.init(jax.random.key(0), shape, 10)
    x = jax.random.normal(jax.random.key(1), (4, *shape))
    y = jnp.arange(4) % 10

    seen = []

    def spy(rule, i):
        seen.append(i)
        return feedback.per_layer(rule, i)

    monkeypatch.setattr(models, "per_layer", spy)

    def grad(rule):
        return jax.jit(jax.grad(lambda p: train.loss_and_accuracy(
            p, x, y, apply=model.apply, grads="manual", feedback=rule)[0]))(params)

    identity = grad(lambda w: w)
    assert seen == list(range(len(params)))  # one index per layer, in order
    backprop = grad(None)
    for a, b in zip(jax.tree.leaves(identity), jax.tree.leaves(backprop), strict=True):
        np.testing.assert_array_equal(a, b)
    fa = grad(feedback.random(0, scale=2.0))
    *earlier, last = params
    np.testing.assert_array_equal(fa[last]["w"], backprop[last]["w"])
    if earlier:
        assert any(not np.allclose(fa[k]["w"], backprop[k]["w"]) for k in earlier)


def test_random_rule_comes_from_the_seed_with_he_scale():
    rule = _config(feedback="random").feedback_rule()
    assert rule == _config(feedback="random").feedback_rule()  # hashable, a cache key
    assert rule != _config(feedback="random", seed=1).feedback_rule()
    assert rule.scale == 2.0
    assert _config(feedback="sign").feedback_rule() is feedback.sign
    assert _config().feedback_rule() is None


# --- runs -----------------------------------------------------------------------------------


def test_feedback_runs_train_and_differ_from_backprop(runs):
    backprop = runs["backprop"]
    assert backprop.summary["feedback"] == "backprop"
    assert backprop.summary["alignment_deg"] < 1e-3  # the same gradient twice
    for rule in ("random", "sign"):
        result = runs[rule]
        assert result.summary["feedback"] == rule
        losses = [r["train_loss"] for r in result.history]
        assert losses[-1] < 0.75 * losses[0], (rule, losses)
        a, b = result.params["manual"], backprop.params["manual"]
        assert not np.allclose(a["dense0"]["w"], b["dense0"]["w"], atol=1e-3)
        # Below 90°: the rule's update still points downhill; above 0°: it is not backprop.
        for record in result.history:
            assert 1.0 < record["alignment_deg"] < 90.0, (rule, record)
            assert set(record["alignment_deg_layers"]) == {"dense0", "dense1", "out"}
            assert record["alignment_deg_layers"]["out"] < 1e-3  # its dw has no feedback in it


def test_compare_is_manual_against_autodiff_of_the_same_rule(digits):
    result = fit(_config(feedback="random", epochs=1, compare=True), digits)
    assert result.summary["compare"]["max_grad_rel_diff"] < 1e-5
    assert result.summary["compare"]["max_param_diff"] < 1e-4


def test_summary_records_feedback_and_resume_refuses_another(digits, tmp_path):
    config = _config(feedback="random", epochs=1, out=str(tmp_path / "run"))
    fit(config, digits)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["feedback"] == "random" and 0 < summary["alignment_deg"] < 90
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["alignment_deg"] == summary["alignment_deg"]
    with pytest.raises(ValueError, match="cannot resume: the checkpointed run has "
                                         "feedback='random', this one feedback='sign'"):
        fit(dataclasses.replace(config, resume=True, feedback="sign"), digits)


# --- the CLI --------------------------------------------------------------------------------


def test_cli_feedback_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                 "--feedback", "sign", "--out", str(out)]) == 0
    assert "sign feedback" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["feedback"] == "sign"


def test_cli_bad_feedback_is_one_line(capsys):
    assert main(["train", "--feedback", "fa"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines == ["jaxconv train: error: feedback must be one of ('backprop', 'random', "
                     "'sign'), got 'fa'"]
