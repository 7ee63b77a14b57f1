"""``jaxconv train``: runs, files, one-line errors, and a resume after a real SIGKILL."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxconv
from jaxconv.cli import main

QUICK = ["--dataset", "digits", "--model", "perceptron", "--epochs", "1", "--batch-size", "64"]


def _write_idx(path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), the dims, the data; gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A small MNIST in the standard IDX layout (64 train, 16 test images of 28x28)."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 16)):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


def _subprocess_env(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXCONV_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)
    return env


# --- bad input: exit 2, one line, no traceback ---------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cifar"], "dataset must be one of ('mnist1d', 'digits', 'mnist'), got 'cifar'"),
    (["--model", "resnet"], "model must be one of ('perceptron', 'mlp', 'cnn1d', 'tcn1d', 'lenet5')"
        ", got"),
    (["--grads", "numeric"], "grads must be one of ('manual', 'autodiff'), got 'numeric'"),
    (["--optimizer", "lbfgs"], "optimizer must be one of ('adam', 'adamw', 'sgd'), got 'lbfgs'"),
    (["--dtype", "float16"], "dtype must be one of ('float32', 'float64'), got 'float16'"),
    (["--dataset", "mnist"], "dataset 'mnist' needs data_dir"),
    (["--dataset", "digits", "--batch-size", "5000"],
     "batch_size 5000 is larger than the training set of digits (1437 examples)"),
    (["--resume"], "resume needs out"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["train", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("jaxconv train: error: ")
    assert message in lines[0]


def test_missing_mnist_files_are_named_in_one_line(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train-images-idx3-ubyte[.gz]" in err and "t10k-labels-idx1-ubyte[.gz]" in err
    assert str(tmp_path / "nowhere") in err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "argument --lr: must be a positive finite number, got 0.0"),
    (["--lr", "-0.1"], "argument --lr: must be a positive finite number, got -0.1"),
    (["--epochs", "0"], "argument --epochs: must be a positive int, got 0"),
    (["--batch-size", "-8"], "argument --batch-size: must be a positive int, got -8"),
    (["--epochs", "two"], "argument --epochs: must be a positive int, got 'two' (str)"),
    (["--seed", "-1"], "argument --seed: must be a non-negative int, got -1"),
])
def test_non_positive_numbers_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"jaxconv train: error: {message}"
    assert "Traceback" not in err


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxconv", "train", "--model", "resnet"],
        capture_output=True, text=True, env=_subprocess_env(tmp_path), timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "jaxconv train: error: model must be one of ('perceptron', 'mlp', 'cnn1d', 'tcn1d', "
        "'lenet5'), got 'resnet'"
    ]


def test_out_with_a_run_needs_resume_and_a_damaged_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *QUICK, "--epochs", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    first = json.loads((out / "summary.json").read_text())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"jaxconv train: error: {out} already holds the checkpoints of a run; resume "
                   f"it (--resume) or choose another output directory")

    for path in (out / "checkpoints" / "44" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size:
            path.write_bytes(b"\0" * path.stat().st_size)
    assert main([*argv, "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.strip().splitlines()
    assert line.startswith("jaxconv train: checkpoint step 44 is damaged (")
    assert line.endswith("); using step 22")
    again = json.loads((out / "summary.json").read_text())
    assert (again["final_loss"], again["test_accuracy"], again["steps"]) == (
        first["final_loss"], first["test_accuracy"], first["steps"])


# --- runs ----------------------------------------------------------------------------------


def test_quiet_run_prints_nothing_and_writes_the_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    summary = json.loads((out / "summary.json").read_text())
    assert {"test_accuracy", "final_loss", "train_seconds", "steps", "grads", "model", "dataset",
            "seed"} <= set(summary)
    assert (summary["model"], summary["dataset"], summary["grads"], summary["seed"]) == (
        "perceptron", "digits", "manual", 0)
    assert summary["steps"] == 1437 // 64 and isinstance(summary["final_loss"], float)
    [line] = (out / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert {"epoch", "step", "train_loss", "test_loss", "test_accuracy", "seconds"} <= set(record)
    assert (out / "curves.png").is_file()


def test_compare_run_reports_both_variants(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["train", *QUICK, "--grads", "autodiff", "--compare", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0].startswith("perceptron on digits (autodiff gradients, float32, seed 0): "
                                "test accuracy")
    assert stdout[1].startswith(f"autodiff vs manual (conv formulation policy "
                                f"{jaxconv.get_policy()}): max |loss difference| ")
    compare = json.loads((out / "summary.json").read_text())["compare"]
    assert compare["max_loss_diff"] < 1e-5 and compare["max_param_diff"] < 1e-5
    assert (out / "compare.png").is_file()


def test_float64_compare_under_xla_is_bitwise(tmp_path, capsys, monkeypatch):
    """``--compare --dtype float64`` under the xla policy: the two runs are the same numbers
    (loss and parameter differences exactly 0), and the output says which policy held."""
    monkeypatch.setenv("JAXCONV_CONV_POLICY", "xla")
    out = tmp_path / "f64"
    argv = ["train", "--dataset", "digits", "--model", "lenet5", "--epochs", "1", "--batch-size",
            "64", "--dtype", "float64", "--compare", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(
        "manual vs autodiff (conv formulation policy xla): max |loss difference| 0, max "
        "|parameter difference| 0, ")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conv_policy"] == "xla"
    assert summary["compare"]["max_loss_diff"] == 0 and summary["compare"]["max_param_diff"] == 0


def test_mnist_from_idx_files(mnist_dir, tmp_path, capsys):
    out = tmp_path / "mnist"
    argv = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--model", "mlp",
            "--epochs", "1", "--batch-size", "16", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "mnist" and summary["steps"] == 64 // 16


# --- resume after SIGKILL ------------------------------------------------------------------


def _committed_steps(out):
    ckpt = out / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A real process killed with SIGKILL during epoch 3 of 6, resumed with --resume, ends with
    exactly the final loss, accuracy, step count and metrics of an uninterrupted run."""
    env = _subprocess_env(tmp_path)
    args = [sys.executable, "-m", "jaxconv", "train", "--dataset", "digits", "--model", "mlp",
            "--epochs", "6", "--batch-size", "8", "--seed", "1", "--quiet"]
    steps_per_epoch = 1437 // 8
    full_out, killed_out = tmp_path / "full", tmp_path / "killed"
    full = subprocess.Popen([*args, "--out", str(full_out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen([*args, "--out", str(killed_out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while 2 * steps_per_epoch not in _committed_steps(killed_out):
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 2 epochs within 300 s"
            time.sleep(0.02)
        # Into epoch 3: wait half an epoch (as long as epoch 1 took), then kill.
        first = json.loads((killed_out / "metrics.jsonl").read_text().splitlines()[0])
        time.sleep(0.5 * first["seconds"])
        assert victim.poll() is None, "the run ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (killed_out / "summary.json").exists()
    assert max(_committed_steps(killed_out)) < 6 * steps_per_epoch

    resumed = subprocess.run([*args, "--out", str(killed_out), "--resume"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == ""  # no damaged checkpoint, no fresh start
    assert full.wait(timeout=600) == 0, full.stderr.read()

    a = json.loads((full_out / "summary.json").read_text())
    b = json.loads((killed_out / "summary.json").read_text())
    for key in ("final_loss", "test_accuracy", "test_loss", "steps", "epochs"):
        assert a[key] == b[key], key
    assert a["steps"] == 6 * steps_per_epoch

    def losses(out):
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["epoch"], r["step"], r["train_loss"], r["test_loss"], r["test_accuracy"])
                for r in records]

    assert losses(full_out) == losses(killed_out)
