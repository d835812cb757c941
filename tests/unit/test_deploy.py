"""Generated service-manager files list exactly the configured processes, with safe quoting."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from click.testing import CliRunner

from powmon.cli import main
from powmon.common.settings import load_settings
from powmon.deploy import supervisord_conf, systemd_units


def _settings(tmp_path: Path, remote: bool) -> Path:
    path = tmp_path / "settings.yaml"
    uplink = "REMOTE_SAVE: true\nUPLINK_URL: http://127.0.0.1:9/x\n" if remote else ""
    path.write_text(
        "SENSORS:\n  - {PORT: 'sim://VIC?amps=2&noise=5%', SENSORS_ID: VIC}\n"
        "  - {PORT: COM14, SENSORS_ID: 'Lab 3, rack=2'}\n" + uplink,
        encoding="utf-8",
    )
    return path


def test_supervisord_conf_has_one_program_per_reader(tmp_path: Path) -> None:
    """Broker, writer, uplink (when REMOTE_SAVE) and one reader per sensor, in start order."""
    conf = supervisord_conf(load_settings(_settings(tmp_path, remote=True)), tmp_path / "run")
    parser = configparser.RawConfigParser()
    parser.read_string(conf)
    programs = [s.removeprefix("program:") for s in parser.sections() if s.startswith("program:")]
    assert programs == [
        "powmon-broker", "powmon-writer", "powmon-uplink", "powmon-reader-VIC",
        "powmon-reader-Lab_3__rack_2",
    ]
    argv = shlex.split(parser.get("program:powmon-reader-Lab_3__rack_2", "command"))
    assert argv[argv.index("--sensor-id") + 1] == "Lab 3, rack=2"
    assert "%" not in conf.replace("%%", "")  # supervisord would expand a lone %


def test_no_uplink_program_without_remote_save(tmp_path: Path) -> None:
    """REMOTE_SAVE: false and no MQTT_URL means no uplink process at all; MQTT_URL alone
    runs one."""
    conf = supervisord_conf(load_settings(_settings(tmp_path, remote=False)), tmp_path)
    assert "powmon-uplink" not in conf
    assert "powmon-uplink.service" not in systemd_units(load_settings(_settings(tmp_path, False)))
    path = _settings(tmp_path, False)
    path.write_text(path.read_text() + "MQTT_URL: mqtt://127.0.0.1:1883\n")
    assert "powmon-uplink.service" in systemd_units(load_settings(path))


def test_systemd_units_written_by_cli(tmp_path: Path) -> None:
    """`powmon deploy systemd` writes a unit per process and a target wanting them all."""
    out = tmp_path / "units"
    result = CliRunner().invoke(
        main, ["deploy", "systemd", "--config", str(_settings(tmp_path, False)), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "powmon-broker.service", "powmon-reader-Lab_3__rack_2.service",
        "powmon-reader-VIC.service", "powmon-writer.service", "powmon.target",
    ]
    target = (out / "powmon.target").read_text(encoding="utf-8")
    assert "powmon-reader-VIC.service" in target



def test_supervisord_programs_stay_stopped_after_exit_2(tmp_path: Path) -> None:
    """Every program is restarted on an unexpected exit only, exit 2 (bad settings, something
    it must own held by another) being the expected one, and with startsecs=0, so that an
    exit 2 at start is not taken for a failed start that supervisord retries regardless."""
    conf = supervisord_conf(load_settings(_settings(tmp_path, remote=True)), tmp_path / "run")
    parser = configparser.RawConfigParser()
    parser.read_string(conf)
    programs = [s for s in parser.sections() if s.startswith("program:")]
    assert len(programs) == 5
    for section in programs:
        assert parser.get(section, "autorestart") == "unexpected", section
        assert parser.get(section, "exitcodes") == "2", section
        assert parser.get(section, "startsecs") == "0", section


def test_systemd_units_do_not_restart_after_exit_2(tmp_path: Path) -> None:
    """Each service restarts always, except after exit 2 (RestartPreventExitStatus=2)."""
    units = systemd_units(load_settings(_settings(tmp_path, remote=True)))
    services = {name: text for name, text in units.items() if name.endswith(".service")}
    assert len(services) == 5
    for name, text in services.items():
        parser = configparser.RawConfigParser(strict=False)
        parser.read_string(text)
        assert parser.get("Service", "Restart") == "always", name
        assert parser.get("Service", "RestartPreventExitStatus") == "2", name
