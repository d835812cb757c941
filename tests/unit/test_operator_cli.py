"""The operator commands' conventions: --version, help without plotting libraries, the
message when matplotlib is missing, check-config's exit codes, and the demo's AC sensor."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner
from cryptography.fernet import Fernet

from powmon import __version__
from powmon.cli import SUBCOMMANDS, main
from powmon.common.settings import load_settings
from powmon.readers.conversion import Calibration, convert_rms
from powmon.readers.handshake import handshake
from powmon.readers.link import Link, open_port, parse_answer
from powmon.readers.reader import ReaderConfig
from tests.helpers import free_endpoint, write_settings

REPO = Path(__file__).resolve().parents[2]


def test_version_is_printed() -> None:
    """`powmon --version` prints the package version and exits 0."""
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"powmon, version {__version__}"


def test_every_subcommand_is_listed_and_loads() -> None:
    """The new commands are in the table and import; --help lists them all."""
    assert {"report", "plot", "calibrate", "check-config"} <= set(SUBCOMMANDS)
    result = CliRunner().invoke(main, ["--help"])
    for name in SUBCOMMANDS:
        assert name in result.output
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0


def test_help_does_not_import_matplotlib_or_rich() -> None:
    """`powmon --help` and `powmon plot --help` stay fast: no plotting or terminal library."""
    code = (
        "import sys; from powmon.cli import main\n"
        "try:\n    main(['plot', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('matplotlib', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    """With matplotlib unavailable, plot fails with one line naming the extra, exit 1."""
    data = tmp_path / "d.csv"
    data.write_text(
        "timestamp,sensor_id,session,seq,raw,volts,amps,watts,flags\n"
        "2026-11-25T17:42:16.000000Z,VIC,s,0,512,0,1,5,\n"
        "2026-11-25T17:42:16.100000Z,VIC,s,1,512,0,1,5,\n",
        encoding="utf-8",
    )
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        f"from powmon.cli import main; main(['plot', {str(data)!r}, '-o', "
        f"{str(tmp_path / 'p.png')!r}])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert "pip install 'powmon[plot]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_config_exits_2_for_bad_settings(tmp_path: Path) -> None:
    """A bad settings file: one line naming the key, exit 2."""
    path = tmp_path / "settings.yaml"
    path.write_text("SENSORS: [{PORT: 'sim://X', SENSORS_ID: X}]\nBUDRATE: fast\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "BUDRATE" in result.output


def test_check_config_finds_a_missing_port_and_a_foreign_endpoint(
    tmp_path: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A port that cannot be opened and an endpoint bound by something that is not PowMon
    are problems (exit 1); secrets are masked."""
    backend = free_endpoint()
    squatter = zmq_ctx.socket(zmq.PUB)
    squatter.bind(backend)
    path = write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": str(tmp_path / "no-tty"), "SENSORS_ID": "VIC"}],
        BROKER_BACKEND=backend,
        UPLINK_TOKEN="s3cr3t-token",  # noqa: S106 -- a made-up token the output must hide
        UPLINK_HEADERS={"X-Key": "k3y"},
        UPLINK_URL="https://user:pw@example.org/api?key=abc",
    )
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "VIC  PROBLEM  cannot open" in result.output
    assert "in use by something else" in result.output
    assert "2 problem(s) found" in result.output
    for secret in ("s3cr3t", "k3y", "pw@", "abc"):
        assert secret not in result.output
    assert "UPLINK_URL: https://example.org/api?***" in result.output


def test_calibrate_names_an_unknown_sensor_and_exits_2(tmp_path: Path) -> None:
    """--sensor must be one of the settings' sensors: exit 2, the known ids named."""
    path = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}])
    result = CliRunner().invoke(main, ["calibrate", "--config", str(path), "--sensor", "B"])
    assert result.exit_code == 2
    assert "'B'" in result.output and "'A'" in result.output


def test_the_demo_ac_sensor_reads_its_simulated_rms() -> None:
    """The repo's settings.yaml reads ATT in MODE ac: its 4 A RMS sine reads 4 A (920 VA at
    230 V), where instantaneous samples at 10 Hz would show a constant wrong value."""
    sensor_id = "ATT"
    settings = load_settings(REPO / "settings.yaml")
    sensor = settings.sensor(sensor_id)
    assert (sensor.mode, sensor.vcc) == ("ac", 230.0)
    config = ReaderConfig.from_settings(settings, sensor_id)
    link = Link(open_port(sensor.port, sensor.baudrate, sensor.timeout), 1.0, threading.Event())
    try:
        agreed = handshake(link, config.wanted, threading.Event())
        assert agreed is not None and agreed.convert is convert_rms
        raws = [parse_answer(link.ask(config.wanted.read_command)) for _ in range(5)]
    finally:
        link.close()
    for raw in raws:
        _, amps, watts, _ = convert_rms(raw, Calibration.from_sensor(sensor))
        assert amps == pytest.approx(4.0, rel=0.01)
        assert watts == pytest.approx(920, rel=0.01)


def test_check_config_shows_a_decrypted_host_only_as_scheme_host_port(tmp_path: Path) -> None:
    """HOST is decrypted as the uplink would, and shown as scheme://host:port, never whole."""
    key = Fernet.generate_key().decode()
    token = Fernet(key).encrypt(b"https://example.org:8443/secret-path?token=t0k").decode()
    path = write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "sim://H", "SENSORS_ID": "H"}],
        REMOTE_SAVE=True,
        HOST=token,
        HOST_KEY_ENV="POWMON_TEST_KEY",
    )
    result = CliRunner().invoke(
        main, ["check-config", "--config", str(path)], env={"POWMON_TEST_KEY": key}
    )
    assert result.exit_code == 0, result.output
    assert "decrypts to https://example.org:8443, key from $POWMON_TEST_KEY" in result.output
    assert "secret-path" not in result.output and "t0k" not in result.output
    assert token not in result.output
    wrong = CliRunner().invoke(
        main,
        ["check-config", "--config", str(path)],
        env={"POWMON_TEST_KEY": Fernet.generate_key().decode()},
    )
    assert wrong.exit_code == 2
    assert "HOST: cannot decrypt it" in wrong.output
