"""README's promises: the Quick start has exactly two command lines, and the API example runs."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()


def _blocks(lang: str, section: str | None = None) -> list[str]:
    """The ``lang`` code blocks of the README, or of its ``section`` (a heading's text)."""
    text = README if section is None else re.split(r"\n#+ ", README.split(section, 1)[1])[0]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_quick_start_is_two_lines_install_and_main_job_then_install_and_tests():
    section = README.split("## Quick start", 1)[1]
    first_block = re.search(r"```\w*\n(.*?)```", section, flags=re.S).group(1)
    lines = [line for line in first_block.splitlines() if line.strip()]
    assert lines == ["pip install -e . && jaxconv train", 'pip install -e ".[dev]" && pytest']


def test_api_example_runs():
    example = _blocks("python")[0]
    exec(compile(example, "README.md", "exec"), {})


def test_feedback_rules_example_runs():
    (example,) = _blocks("python", "### Feedback rules")
    exec(compile(example, "README.md", "exec"), {})


def test_your_own_model_example_runs_and_trains(capsys):
    """The Flax model trained through jaxconv.manual: it runs, learns, and coverage shows every
    convolution, dense product, pool and relu on a hand-derived rule."""
    pytest.importorskip("flax")
    examples = _blocks("python", "## Your own model")
    assert len(examples) == 2, ("the 'Your own model' section has the training example and "
                                "gradcheck --fun's mymodel.py (tests/test_gradcheck.py runs it)")
    exec(compile(examples[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.9, out
    for kind in ("conv_general_dilated", "dot_general", "reduce_window_max", "relu"):
        assert re.search(rf"{kind}\s+[1-9]\d*\s+0\b", out), (kind, out)
