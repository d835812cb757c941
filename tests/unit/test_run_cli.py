"""`powmon run` checks what its children would check, before it starts any of them."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from powmon.cli import main


def test_powmon_run_refuses_an_uplink_it_could_never_start(tmp_path: Path) -> None:
    """An encrypted HOST without any key fails every uplink start: `powmon run` says so once
    and exits 2 before starting anything, instead of restarting the uplink forever."""
    path = tmp_path / "settings.yaml"
    path.write_text(
        "SENSORS: [{PORT: 'sim://X', SENSORS_ID: X}]\nREMOTE_SAVE: true\n"
        "HOST: gAAAAABnot-a-real-token\nHOST_KEY_ENV: POWMON_TEST_NO_SUCH_KEY\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert "settings.yaml" in result.output
    assert "HOST" in result.output
