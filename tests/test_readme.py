"""README's promises: the Quick start has exactly two command lines, and the API example runs."""

import re
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_quick_start_is_two_lines_install_and_main_job_then_install_and_tests():
    section = README.split("## Quick start", 1)[1]
    first_block = re.search(r"```\w*\n(.*?)```", section, flags=re.S).group(1)
    lines = [line for line in first_block.splitlines() if line.strip()]
    assert lines == ["pip install -e . && jaxconv train", 'pip install -e ".[dev]" && pytest']


def test_api_example_runs():
    (example,) = _blocks("python")
    exec(compile(example, "README.md", "exec"), {})
