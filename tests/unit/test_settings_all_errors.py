"""A settings file's mistakes are found all at once, with the line each is on, so a file with
five needs one run of check-config, not five; an unknown key suggests the nearest known one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from powmon.cli import main
from powmon.common.errors import SettingsError
from powmon.common.settings import SettingsProblems, load_settings

FIVE_MISTAKES = """\
SENSORS:
  - PORT: sim://VIC
    SENSORS_ID: VIC
    SPEED: 3
  - {PORT: sim://ATT, SENSORS_ID: ATT, AVG: 0}
BUDRATE: fast
POLLING_DELAYY: 0.2
BROKER_FRONTEND: tcp://127.0.0.1:99999
"""
# (line, text each problem starts with), in line order
FIVE_EXPECTED = [
    (4, "SENSORS[0].SPEED: not a sensor setting"),
    (5, "SENSORS[1].AVG: expected an integer from 1 to 64, got 0"),
    (6, "BUDRATE: expected an integer >= 1, got 'fast'"),
    (7, "POLLING_DELAYY: not a PowMon setting; did you mean POLLING_DELAY?"),
    (8, "BROKER_FRONTEND: expected a port from 1 to 65535"),
]


@pytest.fixture
def five(tmp_path: Path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(FIVE_MISTAKES, encoding="utf-8")
    return path


def test_load_settings_finds_all_five_mistakes_with_their_lines(five: Path) -> None:
    """One SettingsError holds every problem, each with the line YAML puts it on; its message
    stays one line (what every process prints), the first mistake and how many more."""
    with pytest.raises(SettingsProblems) as info:
        load_settings(five)
    got = [(p.line, p.text) for p in info.value.problems]
    assert len(got) == 5
    for (line, text), (want_line, want_text) in zip(got, FIVE_EXPECTED, strict=True):
        assert line == want_line
        assert text.startswith(want_text), text
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{five}: SENSORS[0].SPEED: not a sensor setting")
    assert "(and 4 more problem(s): 'powmon check-config' lists them all)" in message


def test_check_config_lists_all_five_with_file_and_line(five: Path) -> None:
    """check-config prints every mistake, one line each as FILE:LINE: KEY: ..., and exits 2."""
    result = CliRunner().invoke(main, ["check-config", "--config", str(five)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("powmon: error: ")]
    assert len(lines) == 5, result.stderr
    for line, (number, text) in zip(lines, FIVE_EXPECTED, strict=True):
        assert line.startswith(f"powmon: error: {five}:{number}: {text}"), line
    assert f"powmon: 5 problems in {five}" in result.stderr
    assert "valid" not in result.output


def test_one_mistake_is_still_one_line(tmp_path: Path) -> None:
    """A single mistake: the message the loader always gave, with no count appended."""
    path = tmp_path / "settings.yaml"
    path.write_text("SENSORS: [{PORT: COM4, SENSORS_ID: VIC}]\nLOG_LEVEL: 7\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: LOG_LEVEL: expected an integer from 0 to 3, got 7"


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("POLLING_DELAYY", "did you mean POLLING_DELAY?"),
        ("polling_delay", "did you mean POLLING_DELAY?"),
        ("BAUDRATE", "did you mean BUDRATE?"),
        ("BROKER_FRONTEN", "did you mean BROKER_FRONTEND?"),
        ("ZZZ", "typo?"),
    ],
)
def test_an_unknown_key_suggests_the_nearest_known_one(
    tmp_path: Path, key: str, suggestion: str
) -> None:
    """A misspelt or lower-case key names the key it most likely meant; a key close to none
    still says it is not a setting."""
    path = tmp_path / "settings.yaml"
    path.write_text(f"SENSORS: [{{PORT: COM4, SENSORS_ID: VIC}}]\n{key}: 1\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value) == (
        f"{path}: {key}: not a PowMon setting; {suggestion} (see deploy/settings.example.yaml)"
    )


def test_a_wrong_top_level_value_does_not_hide_a_sensor_mistake(tmp_path: Path) -> None:
    """A bad BUDRATE (which sensors inherit) and a bad sensor key are both reported, and the
    bad value is not reported a second time through the sensor that inherits it."""
    path = tmp_path / "settings.yaml"
    path.write_text(
        "BUDRATE: -1\nSENSORS:\n  - {PORT: COM4, SENSORS_ID: VIC, MODE: dcc}\n", encoding="utf-8"
    )
    with pytest.raises(SettingsProblems) as info:
        load_settings(path)
    assert [(p.line, p.text.split(":")[0]) for p in info.value.problems] == [
        (1, "BUDRATE"),
        (3, "SENSORS[0].MODE"),
    ]


def test_a_clash_is_not_reported_for_a_key_that_is_already_wrong(tmp_path: Path) -> None:
    """A bad BROKER_FRONTEND is one problem: no CURVE advice or port clash is derived from it."""
    path = tmp_path / "settings.yaml"
    path.write_text(
        "SENSORS: [{PORT: COM4, SENSORS_ID: VIC}]\nBROKER_FRONTEND: tcp://127.0.0.1:abc\n"
        "REPLAY_PORTS: 1-65535\n",
        encoding="utf-8",
    )
    with pytest.raises(SettingsProblems) as info:
        load_settings(path)
    keys = [p.text.split(":")[0] for p in info.value.problems]
    assert keys == ["BROKER_FRONTEND", "REPLAY_PORTS"]  # REPLAY_PORTS: the default backend
    assert re.search(r"BROKER_BACKEND's port 5556", info.value.problems[1].text)


def test_a_publish_interval_problem_names_its_own_entry_after_a_bad_one(tmp_path: Path) -> None:
    """An entry with a mistake of its own does not shift the index a later entry's problem is
    named by."""
    path = tmp_path / "settings.yaml"
    path.write_text("STALL_TIMEOUT: 2\nSENSORS:\n"
                    "  - {PORT: sim://VIC, SENSORS_ID: VIC, VCC: x}\n"
                    "  - {PORT: sim://ATT, SENSORS_ID: ATT, PUBLISH_INTERVAL: 1.5}\n",
                    encoding="utf-8")
    with pytest.raises(SettingsProblems) as info:
        load_settings(path)
    texts = [p.text for p in info.value.problems]
    assert any(t.startswith("SENSORS[0].VCC") for t in texts), texts
    assert any(t.startswith("SENSORS[1].PUBLISH_INTERVAL: expected at most half")
               for t in texts), texts
