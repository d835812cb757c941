"""`powmon web`'s command line: what it refuses before it serves anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from powmon.common import lifeline
from powmon.web import __main__ as web_main
from tests.helpers import free_tcp_port, write_settings


def test_without_the_web_extra_it_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing optional dependency is one line naming it and `pip install 'powmon[web]'`,
    exit 2, not an ImportError traceback."""
    monkeypatch.setattr(web_main, "EXTRA", ("uvicorn", "powmon_no_such_module"))
    settings = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}])
    result = CliRunner().invoke(web_main.web_command, ["--config", str(settings)])
    assert result.exit_code == 2
    assert "missing powmon_no_such_module): pip install 'powmon[web]'" in result.output


@pytest.mark.parametrize("value", ["8080", "127.0.0.1:99999", "[::1]"])
def test_a_bad_listen_option_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """--listen takes the same host:port form as WEB_LISTEN; anything else: exit 2."""
    settings = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}])
    result = CliRunner().invoke(web_main.web_command,
                                ["--config", str(settings), "--listen", value])
    assert result.exit_code == 2
    assert "expected host:port like '127.0.0.1:8080'" in result.output


def test_it_stops_when_its_supervisor_is_gone(tmp_path: Path) -> None:
    """Started by a `powmon run` that is already gone (its lifeline port closed): the page
    stops on its own, exit 0, like every other child, instead of serving on as an orphan."""
    port = free_tcp_port()  # nobody listens there: the lifeline cannot connect
    settings = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}])
    env = {**os.environ, lifeline.ENV: f"{port}:token:0"}
    done = subprocess.run(
        [sys.executable, "-m", "powmon.web", "--config", str(settings), "--listen",
         f"127.0.0.1:{free_tcp_port()}"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "web stopped" in done.stderr
