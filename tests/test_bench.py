"""The benchmark harness (jaxconv.bench) and ``jaxconv bench``: the timing loop's contract and
one small end-to-end run. No timing is asserted, only that the right things were measured."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv.autodiff
from jaxconv import bench
from jaxconv.cli import main
from jaxconv.ops import _choice


def test_interleaved_runs_each_timed_call_after_one_of_its_own_in_shuffled_rounds():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = bench.interleaved(runners, repeats=6, warmup=1, min_seconds=0.0)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up round
    pairs = calls[3:]
    assert len(pairs) == 36 and all(pairs.count(n) == 12 for n in "abc")
    # every timed call follows an untimed call of the same runner
    assert all(pairs[i] == pairs[i + 1] for i in range(0, 36, 2))
    rounds = [tuple(pairs[i:i + 6:2]) for i in range(0, 36, 6)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    # shuffled, not rotated: "a" does not always come right after the same runner
    after = {r[r.index("a") - 1] for r in rounds if r.index("a") > 0}
    assert len(set(rounds)) > 1 and len(after) > 1, rounds
    assert {t["calls"] for t in times.values()} == {6}
    assert all(0 <= t["wall_min"] <= t["wall"] for t in times.values())


def test_interleaved_keeps_fast_variants_running_until_min_seconds():
    times = bench.interleaved({"fast": lambda: None}, repeats=3, warmup=0, min_seconds=0.02)
    assert 3 < times["fast"]["calls"] <= 300  # more than `repeats`, at most 100·repeats


def test_bench_cli_measures_a_layer(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--layers", "cnn1d.conv1", "--steps", "none", "--repeats", "2",
                 "--no-torch", "--json", str(out)]) == 0
    assert "cnn1d.conv1" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["layers"]
    assert row["layer"] == "cnn1d.conv1" and set(row["choice"]) == {"forward", "dx", "dw"}
    assert set(row["forward_backward"]) == {"manual", "autodiff", "jax_xla"}
    assert all(t["calls"] >= 2 and t["wall"] > 0 for t in row["forward_backward"].values())


@pytest.mark.parametrize("argv", [["--layers", "lenet7.conv9"], ["--steps", "resnet50"]])
def test_bench_cli_unknown_names_are_one_line_errors(argv, capsys):
    assert main(["bench", *argv, "--no-torch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxconv bench: error:") and "\n" not in err


def test_forward_backward_programs_compute_the_forward():
    """The timed forward+backward programs return y with the cotangents: a vjp that returns only
    the cotangents leaves y as dead code, and XLA would time the backward alone."""
    spec = bench.Layer("t", (2, 7, 6, 3), (3, 3, 3, 4), stride=2, padding=1)
    runners, (x, w, b, dy) = bench.forward_backward_runners(spec)
    expected = jaxconv.autodiff.conv(x, w, b, stride=2, padding=1)
    measured = _choice._runner(spec.x, spec.w, spec.config(), jnp.float32, ("xla",) * 3)
    for run in runners.values():
        y, (dx, dw, db) = run()
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
        assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, b.shape)
    y, (dx, dw, db) = measured()  # on inputs of its own
    assert (y.shape, dx.shape, dw.shape, db.shape) == (spec.out(), x.shape, w.shape, b.shape)


def test_bench_plans_times_the_default_against_each_forced_plan(monkeypatch):
    """bench_plans compiles each plan under its forced formulations (the plan's forward is
    traced) and reports the plan's time over the default's, round by round."""
    from jaxconv.ops import conv as K

    traced = []
    im2col = K.FORWARD["im2col"]
    monkeypatch.setitem(K.FORWARD, "im2col", lambda *a: traced.append(a) or im2col(*a))
    spec = bench.Layer("t", (2, 9, 8, 3), (3, 3, 3, 4), stride=2, padding=1)
    rounds = {"default": [1.0, 2.0, 3.0], "im2col/xla/xla_cl": [3.0, 4.0, 3.0]}

    def fake_interleaved(runners, repeats):
        assert set(runners) == set(rounds) and repeats == 3
        for run in runners.values():
            run()
        return {k: {"rounds": v} for k, v in rounds.items()}

    monkeypatch.setattr(bench, "interleaved", fake_interleaved)
    assert bench.bench_plans(spec, ["im2col/xla/xla_cl"], repeats=3) == {
        "im2col/xla/xla_cl": 2.0}  # median of 3, 2, 1
    assert traced, "the forced plan's forward was never traced"
    with pytest.raises(ValueError, match="forward/dx/dw"):
        bench.bench_plans(spec, ["im2col/xla"], repeats=3)
    monkeypatch.setattr(bench, "compile_call", lambda *a, **k: pytest.fail("compiled"))
    assert bench.bench_plans(spec, [], repeats=3) == {}  # no plans: nothing compiled or timed


def test_pytorch_is_optional(monkeypatch):
    """Without PyTorch the comparison is skipped (None), never an error."""
    monkeypatch.setattr(bench, "_torch_version", lambda: None)
    assert bench.torch_in_subprocess("layer", {"name": "t", "x": [1, 4, 1], "w": [1, 1, 1]},
                                     1) is None


def test_pytorch_runs_in_a_process_of_its_own():
    """PyTorch's layer times come from a subprocess (no XLA threads beside it): positive medians
    for its forward and forward+backward."""
    pytest.importorskip("torch")
    spec = bench.Layer("t", (2, 9, 3), (3, 3, 4), stride=2, padding=1)
    times = bench.torch_in_subprocess("layer", bench.dataclasses.asdict(spec), 2)
    assert set(times) == {"forward", "forward_backward"}
    assert all(t["wall"] > 0 and t["calls"] >= 2 for t in times.values())
