"""The README's two opening commands stay true: CI runs the very test command it shows."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_opens_with_run_and_test_commands() -> None:
    """First block installs and runs the pipeline, second runs the tests."""
    run, test = _readme_commands()
    assert "powmon run" in run
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run contains the README's test command exactly, so the README cannot go stale."""
    _run, test = _readme_commands()
    assert test in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
