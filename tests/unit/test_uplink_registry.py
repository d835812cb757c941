"""The table of output kinds agrees with the settings and the docs: every key a kind names is a
real settings key documented in docs/uplink.md, every uplink key belongs to a kind (or to the
spool), and the kinds that share an output name never run together."""

from __future__ import annotations

import re
from pathlib import Path

from powmon.common.settings import effective_values, load_settings
from powmon.uplink.registry import HTTP, HTTP_KIND, INFLUX_KIND, KINDS, enabled_kinds
from tests.helpers import write_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "uplink.md"
SPOOL_KEYS = {"UPLINK_SPOOL", "UPLINK_SPOOL_MAX"}  # the spool's, shared by every output


def test_every_kind_names_real_documented_keys_and_every_uplink_key_has_a_kind(
    tmp_path: Path,
) -> None:
    path = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}])
    known = set(effective_values(load_settings(path)))
    named = {key for kind in KINDS for key in kind.keys}
    assert named <= known
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", DOCS.read_text(encoding="utf-8")))
    assert named <= documented
    uplink_keys = {k for k in known if k.startswith(("UPLINK_", "INFLUX_", "MQTT_"))}
    assert uplink_keys - SPOOL_KEYS <= named


def test_the_http_formats_and_influxdb_are_one_output_picked_by_the_format(
    tmp_path: Path,
) -> None:
    sensors = [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}]
    for fmt, kind in (("seed", HTTP_KIND), ("json", HTTP_KIND), ("influx", INFLUX_KIND)):
        path = write_settings(tmp_path / f"{fmt}.yaml", sensors, REMOTE_SAVE=True,
                              UPLINK_URL="http://127.0.0.1:8086", UPLINK_FORMAT=fmt,
                              INFLUX_DATABASE="power")
        assert enabled_kinds(load_settings(path)) == (kind,)
    assert HTTP_KIND.name == INFLUX_KIND.name == HTTP
