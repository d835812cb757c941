"""`powmon web`'s command line: what it refuses before it serves anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from powmon.web import __main__ as web_main
from tests.helpers import write_settings


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
