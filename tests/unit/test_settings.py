"""Settings load once, validate completely, and name file, key, expectation and value on error."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from powmon.common.errors import SettingsError
from powmon.common.settings import Secret, load_settings
from powmon.common.settings import keys as settings_keys

CASES = Path(__file__).resolve().parent.parent / "cases" / "settings"
REPO = Path(__file__).resolve().parents[2]

ORIGINAL_STYLE = """\
BUDRATE: 9600
EHOST: ''
FILE_SIZE_LIMIT: 5000000
HOST: gAAAAABlxxxxxxxx
LOCAL_DATA_FILE: /1699999999123456-data.csv
LOCAL_DATA_PATH: a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=
LOCAL_DATA_ROOT: ./data
LOG_LEVEL: 3
OFFSET: 2.49
POLLING_DELAY: 0.5
PROJECT_ROOT: /home/lab/powmon
REMOTE_SAVE: false
SENSORS:
- PORT: COM4
  SENSORS_ID: VIC
- PORT: COM14
  SENSORS_ID: ATT
SNS: 0.066
SYNC_WRITE: true
TIMEOUT: 1
VCC: 5
VPP: 0.0048828125
"""


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir()))
def test_broken_settings_give_one_clear_message(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each golden case fails with exactly the message in its expected.err."""
    monkeypatch.chdir(CASES / case)
    expected = (CASES / case / "expected.err").read_text(encoding="utf-8").strip()
    with pytest.raises(SettingsError) as info:
        load_settings(Path("settings.yaml"))
    assert str(info.value) == expected


def test_original_settings_file_loads_unchanged(tmp_path: Path) -> None:
    """The original script's file, misspelled BUDRATE and self-written keys included, loads."""
    path = tmp_path / "settings.yaml"
    path.write_text(ORIGINAL_STYLE, encoding="utf-8")
    settings = load_settings(path)
    assert [s.sensor_id for s in settings.sensors] == ["VIC", "ATT"]
    assert [s.port for s in settings.sensors] == ["COM4", "COM14"]
    vic = settings.sensor("VIC")
    assert vic.baudrate == 9600
    assert vic.offset == pytest.approx(2.49)
    assert vic.polling_delay == pytest.approx(0.5)
    assert settings.data_root == tmp_path / "data"
    assert settings.data_file == "1699999999123456-data.csv"
    assert settings.log_level == 3
    assert isinstance(settings.uplink.legacy_key, Secret)
    assert "a2V5" not in repr(settings)


def test_per_sensor_overrides_and_defaults(tmp_path: Path) -> None:
    """SNS, OFFSET, VCC and POLLING_DELAY may be set per sensor; the rest inherit."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "SENSORS:\n"
        "  - {PORT: COM4, SENSORS_ID: VIC, SNS: 0.185, OFFSET: 2.4, VCC: 12, POLLING_DELAY: 0}\n"
        "  - {PORT: COM5, SENSORS_ID: ATT}\n"
        "SNS: 0.1\nPOLLING_DELAY: 2\n",
        encoding="utf-8",
    )
    settings = load_settings(path)
    vic, att = settings.sensors
    assert (vic.sns, vic.offset, vic.vcc, vic.polling_delay) == (0.185, 2.4, 12.0, 0.0)
    assert (att.sns, att.offset, att.vcc, att.polling_delay) == (0.1, 2.5, 5.0, 2.0)


def test_stream_keys_per_sensor_with_their_defaults(tmp_path: Path) -> None:
    """STREAM (auto/on/off; YAML's bare on and off are booleans and mean the same), STREAM_HZ
    and READ_PIPELINE: top level, overridden per sensor. The stream rate defaults to
    1 / POLLING_DELAY rounded, 0 (the board's highest) for POLLING_DELAY 0, none beyond 1 s."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "SENSORS:\n"
        "  - {PORT: COM4, SENSORS_ID: A}\n"
        "  - {PORT: COM5, SENSORS_ID: B, STREAM: off, READ_PIPELINE: 1, POLLING_DELAY: 0}\n"
        "  - {PORT: COM6, SENSORS_ID: C, STREAM: 'auto', STREAM_HZ: 250, POLLING_DELAY: 5}\n"
        "  - {PORT: COM7, SENSORS_ID: D, POLLING_DELAY: 3}\n"
        "STREAM: on\nPOLLING_DELAY: 0.3\n",
        encoding="utf-8",
    )
    a, b, c, d = load_settings(path).sensors
    assert (a.stream, a.stream_hz, a.read_pipeline, a.stream_rate) == ("on", None, 4, 3)
    assert (b.stream, b.read_pipeline, b.stream_rate) == ("off", 1, 0)
    assert (c.stream, c.stream_hz, c.stream_rate) == ("auto", 250, 250)
    assert d.stream_rate is None
    assert load_settings(REPO / "deploy" / "settings.example.yaml").sensors[0].stream == "auto"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("STREAM: sometimes", "STREAM: expected one of 'auto', 'on', 'off', got 'sometimes'"),
        ("STREAM_HZ: 0", "STREAM_HZ: expected an integer from 1 to 65535, got 0"),
        ("READ_PIPELINE: 9", "READ_PIPELINE: expected an integer from 1 to 8, got 9"),
    ],
)
def test_bad_stream_keys_are_named(tmp_path: Path, line: str, message: str) -> None:
    """A wrong stream setting stops the load with the key, what it takes and what it got."""
    path = tmp_path / "s.yaml"
    path.write_text(f"SENSORS:\n  - {{PORT: COM4, SENSORS_ID: A}}\n{line}\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(path)


def test_relative_paths_resolve_against_the_settings_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative LOCAL_DATA_ROOT means the same folder whatever the working directory."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "settings.yaml").write_text(
        "SENSORS: [{PORT: COM4, SENSORS_ID: VIC}]\nLOCAL_DATA_ROOT: ../store\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(conf / "settings.yaml")
    assert settings.data_root.resolve() == (tmp_path / "store").resolve()
    assert settings.uplink.spool_path.parent == settings.data_root


def test_settings_are_immutable(tmp_path: Path) -> None:
    """Nobody can change settings after start-up (the original rewrote them at run time)."""
    path = tmp_path / "s.yaml"
    path.write_text("SENSORS: [{PORT: COM4, SENSORS_ID: VIC}]\n", encoding="utf-8")
    settings = load_settings(path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.log_level = 3  # type: ignore[misc]


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A settings path that does not exist is reported with its name."""
    with pytest.raises(SettingsError, match=r"nope\.yaml: cannot read settings"):
        load_settings(tmp_path / "nope.yaml")


def test_repo_settings_yaml_is_valid() -> None:
    """The demo settings at the repository root load, with the two simulated sensors."""
    settings = load_settings(REPO / "settings.yaml")
    assert [s.sensor_id for s in settings.sensors] == ["VIC", "ATT"]
    assert all(s.port.startswith("sim://") for s in settings.sensors)


def _example_keys(text: str) -> tuple[set[str], set[str]]:
    """The keys the example sets or shows commented out (`KEY:` or `# KEY:`; `##` lines are
    prose): (top level, inside SENSORS entries)."""
    top: set[str] = set()
    sensor: set[str] = set()
    for m in re.finditer(r"^( *)(?:- )?(?:# )?([A-Z][A-Z0-9_]*):", text, re.MULTILINE):
        (sensor if m[1] else top).add(m[2])
    return top, sensor


def test_example_settings_file_is_valid_and_shows_every_key() -> None:
    """deploy/settings.example.yaml, which documents every key, is itself a valid file, and
    its keys are the settings table's: every top-level key, every key only a SENSORS entry
    has, the per-sensor overrides it lists; and nothing the table does not know."""
    path = REPO / "deploy" / "settings.example.yaml"
    assert load_settings(path).sensors
    text = path.read_text(encoding="utf-8")
    top, sensor = _example_keys(text)
    assert top == set(settings_keys.TOP)
    assert set(settings_keys.SENSOR) - set(settings_keys.TOP) <= sensor
    assert sensor <= set(settings_keys.SENSOR)
    listed = re.search(r"Per-sensor overrides .*? allowed:\n((?:##  .*\n)+)", text)
    assert listed is not None
    overrides = set(re.findall(r"[A-Z][A-Z0-9_]+", listed[1]))
    assert overrides == set(settings_keys.SENSOR) & set(settings_keys.TOP)


# Every command that reads settings: the processes, and the `powmon` subcommands.
BAD_SETTINGS_ARGV = [
    ["powmon-broker"], ["powmon-writer"], ["powmon-uplink"],
    ["powmon-reader", "--sensor-id", "VIC"], ["powmon-web"],
    ["powmon", "run"], ["powmon", "tap"], ["powmon", "status"], ["powmon", "web"],
    ["powmon", "calibrate", "--sensor", "VIC"], ["powmon", "check-config"],
    ["powmon", "deploy", "supervisord"], ["powmon", "deploy", "systemd", "--out", "units"],
]


@pytest.mark.parametrize("argv", BAD_SETTINGS_ARGV, ids=" ".join)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, argv: list[str]) -> None:
    """Every entry point that reads settings, given a broken file, refuses to start: exit
    code 2, one line on stderr (check-config adds the line of the mistake, FILE:LINE:)."""
    path = tmp_path / "settings.yaml"
    path.write_text("SENSORS:\n  - {PORT: COM4, SENSORS_ID: VIC, SPEED: 3}\n", encoding="utf-8")
    script = Path(sys.executable).with_name(argv[0])  # as installed from [project.scripts]
    done = subprocess.run(
        [str(script), *argv[1:], "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert re.search(r"settings\.yaml(:2)?: SENSORS\[0\]\.SPEED: not a sensor setting", lines[0])
