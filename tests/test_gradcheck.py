"""jaxconv.gradcheck and ``jaxconv gradcheck``: the grid, the measures, the JSON rows, the exit
codes, and that a deliberately broken rule fails."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import gradcheck as gc
from jaxconv.cli import main
from jaxconv.ops._twins import autodiff_with_feedback, twins, with_feedback
from jaxconv.ops.conv import _conv_front, conv_db, conv_dw, conv_forward

# --------------------------------------------------------------------------------------------
# Deliberately broken rules, injected as the "manual" op.
# --------------------------------------------------------------------------------------------


def _broken_conv_bwd(cfg, residuals, dy):
    """The rule with the kernel *not* rotated: dx = full-conv(w, dy) instead of rot180 w."""
    x, w, b = residuals
    flipped = jnp.flip(w, axis=tuple(range(cfg.nd)))  # conv_dx rotates: pre-rotating undoes it
    from jaxconv.ops.conv import conv_dx

    dx = conv_dx(dy, flipped, x.shape[1:-1], cfg)
    return dx, conv_dw(x, dy, w.shape[: cfg.nd], cfg), None if b is None else conv_db(dy)


_broken_core = jax.custom_vjp(conv_forward, nondiff_argnums=(3,))
_broken_core.defvjp(lambda x, w, b, cfg: (conv_forward(x, w, b, cfg), (x, w, b)),
                    _broken_conv_bwd)
BROKEN_CONV, _ = twins(
    _conv_front, with_feedback(_broken_core), autodiff_with_feedback(conv_forward))


@jax.custom_vjp
def _broken_sigmoid_core(x):
    return jax.nn.sigmoid(x)


_broken_sigmoid_core.defvjp(
    lambda x: (jax.nn.sigmoid(x), jax.nn.sigmoid(x)),
    lambda s, dy: (dy * s,),  # forgot the (1 − s)
)


def BROKEN_SIGMOID(x):
    return _broken_sigmoid_core(x)


def _conv_cases(dtypes=("float64", "float32")):
    # stride 1, FULL padding, 1-D and 2-D: the first grid entries are small and fast.
    return [c for c in gc.default_grid(["conv"], dtypes) if c.config["kernel"] == (3,)][:2 * len(
        dtypes)]


# --------------------------------------------------------------------------------------------
# The grid.
# --------------------------------------------------------------------------------------------


def test_default_grid_has_at_least_200_rows_and_covers_the_space():
    cases = gc.default_grid()
    assert len(cases) >= 200
    assert {c.op for c in cases} == set(gc.OPS)
    assert {c.dtype for c in cases} == set(gc.DTYPES)
    conv = [c.config for c in cases if c.op == "conv"]
    assert {len(c["in_size"]) for c in conv} == {1, 2, 3}
    assert {c["stride"][0] for c in conv} >= {1, 2}
    assert {c["dilation"][0] for c in conv} >= {1, 2}
    assert {c["groups"] for c in conv} >= {1, 2}
    kinds = {p if isinstance(p, str) else type(p).__name__ for p in (c["padding"] for c in conv)}
    assert kinds >= {"VALID", "SAME", "FULL", "int", "tuple"}
    assert {c["layout"] for c in conv} == {"channels_last", "channels_first"}
    pools = [c.config for c in cases if c.op == "max_pool"]
    assert {len(c["in_size"]) for c in pools} == {1, 2, 3}


def test_grid_limit_and_names_are_checked():
    assert len(gc.default_grid(["relu"], ["float32"], limit=2)) == 2
    with pytest.raises(ValueError, match=r"ops must be a non-empty sequence of names from "
                       r"\('conv', .*got the unknown \['nope'\]"):
        gc.default_grid(["conv", "nope"])
    with pytest.raises(ValueError, match=r"dtypes must be a non-empty sequence of names from "
                       r"\('float64', 'float32', 'bfloat16'\), got the unknown \['float16'\]"):
        gc.default_grid(dtypes=["float16"])
    with pytest.raises(ValueError, match="ops must be a non-empty sequence of names.*got none"):
        gc.default_grid([])
    with pytest.raises(ValueError, match="limit must be a positive int"):
        gc.default_grid(limit=0)


def test_random_cases_are_reproducible_and_valid():
    a = gc.random_cases(40, seed=3)
    assert a == gc.random_cases(40, seed=3)
    assert a != gc.random_cases(40, seed=4)
    assert all(c.source == "random" for c in a)
    # every drawn configuration is accepted by the op's own validation
    for c in a:
        args, call = gc._BUILDERS[c.op](c.config, gc.case_rng(c, 0))
        jax.eval_shape(lambda *xs, c=c, call=call: call(getattr(jaxconv, c.op), *xs), *args)


# --------------------------------------------------------------------------------------------
# The measures.
# --------------------------------------------------------------------------------------------


def test_ulp_distance_counts_float32_steps():
    one = np.float32(1.0)
    assert gc.ulp_distance(one, np.nextafter(one, np.float32(2))) == 1
    assert gc.ulp_distance(one, np.float32(2.0)) == 2**23
    assert gc.ulp_distance(np.float32(0.0), np.float32(-0.0)) == 0
    tiny = np.float32(1e-45)  # the smallest subnormal: -tiny, ±0, +tiny are 2 steps apart
    assert gc.ulp_distance(tiny, -tiny) == 2
    a = np.array([1.5, -3.0], np.float32)
    b = np.nextafter(np.nextafter(a, np.float32(0)), np.float32(0))
    np.testing.assert_array_equal(gc.ulp_distance(a, b), [2, 2])


def test_correct_rules_pass_with_every_measure():
    results = gc.run(_conv_cases(("float64", "float32", "bfloat16")))
    assert results and all(r.passed for r in results)
    for r in results:
        assert r.max_rel_err <= r.rtol == gc.TOLERANCES[r.case.dtype]
        if r.case.dtype == "float64":
            assert r.fd_rel_err is not None and r.fd_rel_err <= gc.FD_RTOL
            assert r.max_ulp is None
        elif r.case.dtype == "float32":
            assert isinstance(r.max_ulp, int) and r.fd_rel_err is None
        else:
            assert r.max_ulp is None and r.fd_rel_err is None


def test_same_configuration_sees_the_same_numbers_in_every_dtype():
    case64, case32 = _conv_cases()[:2]
    assert case64.config == case32.config and case64.dtype != case32.dtype
    a, _ = gc._BUILDERS["conv"](case64.config, gc.case_rng(case64, 0))
    b, _ = gc._BUILDERS["conv"](case32.config, gc.case_rng(case32, 0))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def test_a_broken_conv_rule_fails_against_autodiff_and_finite_differences():
    pairs = {"conv": (BROKEN_CONV, jaxconv.autodiff.conv)}
    results = gc.run(_conv_cases(), pairs)
    assert results and not any(r.passed for r in results)
    assert all(r.max_rel_err > 1e-2 for r in results)
    assert all(r.fd_rel_err > 1e-2 for r in results if r.case.dtype == "float64")


def test_finite_differences_catch_a_rule_even_when_autodiff_agrees_with_it():
    """Both sides broken the same way: only the float64 finite differences can tell."""
    case = gc.default_grid(["sigmoid"], ["float64"], limit=1)[0]
    [r] = gc.run([case], {"sigmoid": (BROKEN_SIGMOID, BROKEN_SIGMOID)})
    assert r.max_rel_err == 0
    assert r.fd_rel_err > 0.1 and not r.passed


def test_run_needs_float64_and_known_ops():
    with pytest.raises(ValueError, match="no ops given"):
        gc.run(gc.default_grid(["relu"], limit=1),
               {"squared_error": (jaxconv.squared_error, jaxconv.autodiff.squared_error)})
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="jax_enable_x64"):
            gc.run(gc.default_grid(["relu"], limit=1))
    finally:
        jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------------------------------------
# The command.
# --------------------------------------------------------------------------------------------

JSON_KEYS = {"op", "config", "dtype", "source", "max_abs_err", "max_rel_err", "max_ulp_f32",
             "fd_rel_err", "rtol", "fd_rtol", "passed", "seconds"}


def test_cli_tables_json_and_exit_code_0(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rc = main(["gradcheck", "--ops", "relu,squared_error", "--limit", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    for needle in ("relu: manual VJP vs autodiff VJP (3 rows)",
                   "squared_error: manual VJP vs autodiff",
                   "max abs err", "max rel err", "max ULP (f32)", "FD rel err (f64)", "PASS",
                   "rtol (float64 1e-12, float32 1e-05, bfloat16 1e-01)", "FD rel err <= 1e-06",
                   "summary",
                   "6 rows checked", "6 passed, 0 failed"):
        assert needle in text, needle
    assert "FAIL" not in text
    rows = json.loads(out.read_text())
    assert len(rows) == 6
    assert {(r["op"], r["dtype"]) for r in rows} == {
        (op, d) for op in ("relu", "squared_error") for d in gc.DTYPES}
    for r in rows:
        assert set(r) == JSON_KEYS
        assert isinstance(r["config"], dict) and r["passed"] is True
        assert isinstance(r["max_abs_err"], float) and isinstance(r["max_rel_err"], float)
        assert r["rtol"] == gc.TOLERANCES[r["dtype"]]
        assert (r["fd_rel_err"] is None) == (r["dtype"] != "float64")
        assert (r["max_ulp_f32"] is None) == (r["dtype"] != "float32")


def test_cli_random_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rc = main(["gradcheck", "--ops", "sigmoid,dense", "--no-grid", "--random", "3", "--seed",
               "5", "--json", str(out)])
    assert rc == 0
    assert "[random]" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert len(rows) == 3 and all(r["source"] == "random" for r in rows)


def test_cli_exits_1_and_shows_the_failure_for_a_broken_rule(monkeypatch, tmp_path, capsys):
    broken = {**gc.default_pairs(), "conv": (BROKEN_CONV, jaxconv.autodiff.conv)}
    monkeypatch.setattr(gc, "default_pairs", lambda: broken)
    out = tmp_path / "rows.json"
    rc = main(["gradcheck", "--ops", "conv", "--limit", "1", "--dtypes", "float64",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in text and "0 passed, 1 failed" in text
    [row] = json.loads(out.read_text())
    assert row["passed"] is False and row["max_rel_err"] > row["rtol"]


@pytest.mark.parametrize("argv", [
    ["gradcheck", "--no-grid"],
    ["gradcheck", "--ops", "relu", "--json", "/nonexistent-dir/rows.json"],
])
def test_cli_user_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxconv gradcheck: error:") and "\n" not in err


@pytest.mark.parametrize("argv", [
    ["gradcheck", "--ops", "nope"],
    ["gradcheck", "--dtypes", "float16"],
    ["gradcheck", "--random", "-1"],
    ["gradcheck", "--limit", "0"],
])
def test_cli_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


# --------------------------------------------------------------------------------------------
# --fun MODULE:FACTORY: the user's own function (README's mymodel.py).
# --------------------------------------------------------------------------------------------


def _readme_mymodel() -> str:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
               if "def make()" in b]
    return block


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The current directory holds README's mymodel.py (and whatever a test adds); sys.path and
    sys.modules are restored afterwards."""
    (tmp_path / "mymodel.py").write_text(_readme_mymodel())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_cli_fun_runs_the_readme_example(user_dir, capsys):
    out = user_dir / "rows.json"
    rc = main(["gradcheck", "--fun", "mymodel:make", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    for needle in ("mymodel:make: manual vs autodiff gradients (2 leaves)", "args[0]['conv']",
                   "args[0]['dense']", "3×3×1×4", "256×10", "rtol 1e-10",
                   "2 leaves checked", "2 passed, 0 failed"):
        assert needle in text, needle
    assert "FAIL" not in text
    rows = json.loads(out.read_text())
    assert [r["leaf"] for r in rows] == ["args[0]['conv']", "args[0]['dense']"]
    assert all(r["passed"] and r["rel_err"] < 1e-12 and r["scale"] > 0 for r in rows)


def test_cli_fun_argnums_kwargs_and_rtol(user_dir, capsys):
    (user_dir / "withkw.py").write_text(
        "import mymodel\n"
        "def make():\n"
        "    loss, (params, x, y) = mymodel.make()\n"
        "    return (lambda params, x, *, y: loss(params, x, y)), (params, x), {'y': y}\n")
    out = user_dir / "rows.json"
    rc = main(["gradcheck", "--fun", "withkw:make", "--argnums", "0,1", "--rtol", "1e-9",
               "--json", str(out)])
    assert rc == 0, capsys.readouterr()
    rows = json.loads(out.read_text())
    assert [(r["leaf"], r["shape"]) for r in rows] == [
        ("args[0]['conv']", [3, 3, 1, 4]), ("args[0]['dense']", [256, 10]),
        ("args[1]", [16, 8, 8, 1])]
    assert all(r["rtol"] == 1e-9 for r in rows)


def test_cli_fun_exits_1_on_a_broken_rule(user_dir, monkeypatch, capsys):
    """The convolution mapped onto a rule with the kernel not rotated: its leaf fails, the
    dense leaf still passes."""
    from jaxconv.ops import conv as conv_module

    monkeypatch.setattr(conv_module, "conv", BROKEN_CONV)
    out = user_dir / "rows.json"
    rc = main(["gradcheck", "--fun", "mymodel:make", "--argnums", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in text and "0 passed, 1 failed" in text
    [row] = json.loads(out.read_text())
    assert row["leaf"] == "args[1]" and not row["passed"] and row["rel_err"] > 1e-3


@pytest.mark.parametrize(("argv", "words"), [
    (["--fun", "nocolon"], "expected MODULE:FACTORY"),
    (["--fun", "no_such_module_4711:make"], "no module named 'no_such_module_4711'"),
    (["--fun", "mymodel:nope"], "has no attribute 'nope'"),
    (["--fun", "mymodel:jax"], "must be a function returning (fun, args)"),
    (["--fun", "broken:make"], "importing 'broken' failed: ZeroDivisionError"),
    (["--fun", "bad:raises"], "bad:raises() raised RuntimeError: no data"),
    (["--fun", "bad:three"], "must return (fun, args) or (fun, args, kwargs), got int"),
    (["--fun", "bad:not_callable"], "returned fun = int, not a callable"),
    (["--fun", "mymodel:make", "--argnums", "3"], "so 3 is out of range"),
    (["--fun", "mymodel:make", "--argnums", "2"], "must be float arrays"),
    (["--fun", "mymodel:make", "--ops", "relu"], "--ops goes with the built-in grid"),
    (["--argnums", "1"], "--argnums goes with --fun"),
])
def test_cli_fun_user_errors_are_one_line(user_dir, argv, words, capsys):
    (user_dir / "broken.py").write_text("1 / 0\n")
    (user_dir / "bad.py").write_text(
        "def raises():\n    raise RuntimeError('no data')\n"
        "def three():\n    return 3\n"
        "def not_callable():\n    return 3, ()\n")
    assert main(["gradcheck", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxconv gradcheck: error:") and "\n" not in err, err
    assert words in err, err
