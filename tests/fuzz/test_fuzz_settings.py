"""The settings loader against arbitrary YAML: a frozen Settings, or one SettingsError line.

Entry points turn SettingsError into one line and exit code 2 (runtime.load_or_exit); any
other exception is a traceback and exit 1 for what is only a typo. Every message names the file.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from powmon.common.errors import SettingsError
from powmon.common.settings import Settings, load_settings
from tests.fuzz.strategies import fuzz

TOP_KEYS = [
    "BUDRATE", "TIMEOUT", "POLLING_DELAY", "FILE_SIZE_LIMIT", "LOCAL_DATA_ROOT",
    "LOCAL_DATA_FILE", "LOG_LEVEL", "REMOTE_SAVE", "SYNC_WRITE", "VPP", "OFFSET", "SNS", "VCC",
    "HOST", "LOCAL_DATA_PATH", "MAX_AMPS", "BROKER_FRONTEND", "BROKER_BACKEND", "HWM",
    "HEARTBEAT_INTERVAL", "STALL_TIMEOUT", "FLUSH_INTERVAL", "REPLAY_BUFFER",
    "RESTART_BACKOFF_MAX", "UPLINK_URL", "HOST_KEY_ENV", "HOST_KEY_FILE", "UPLINK_FORMAT",
    "UPLINK_BATCH_SIZE", "UPLINK_BATCH_WAIT", "UPLINK_TIMEOUT", "UPLINK_BACKOFF_MAX",
    "UPLINK_SPOOL", "UPLINK_SPOOL_MAX", "UPLINK_VERIFY_TLS", "UPLINK_TOKEN", "UPLINK_HEADERS",
    "INFLUX_ORG", "INFLUX_BUCKET", "INFLUX_TOKEN", "INFLUX_MEASUREMENT", "SENSORS", "EHOST",
]
SENSOR_KEYS = [
    "PORT", "SENSORS_ID", "BUDRATE", "TIMEOUT", "POLLING_DELAY", "VPP", "OFFSET", "SNS", "VCC",
    "MAX_AMPS", "CHANNEL", "AVG", "MODE", "MAINS_HZ", "AC_CYCLES",
]

# Strings a YAML file can hold, lone surrogates ("\ud800") and NULs ("\0") included, plus
# values that are almost right.
yaml_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12) | (
    st.sampled_from(["~nosuchuser/x", "~", "COM4", "sim://VIC", "tcp://127.0.0.1:1", "ac", "dc",
                     "json", "http://127.0.0.1/x", "a/b", "VIC", "", " ", "1.5", "true"])
)
yaml_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400) | st.floats()
    | yaml_text
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(yaml_text, kids, max_size=3),
    max_leaves=6,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid settings mapping with a few keys (top level or per sensor) set to anything."""
    sensor: dict[str, Any] = {"PORT": "COM4", "SENSORS_ID": "VIC"}
    doc: dict[str, Any] = {"SENSORS": [sensor]}
    for _ in range(draw(st.integers(1, 3))):
        value = draw(yaml_values)
        if draw(st.booleans()):
            doc[draw(st.sampled_from(TOP_KEYS) | yaml_text)] = value  # SENSORS itself too
        else:
            sensor[draw(st.sampled_from(SENSOR_KEYS))] = value
    return doc


@pytest.fixture(scope="module")
def settings_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-settings") / "settings.yaml"


def _load(path: Path) -> Settings | None:
    try:
        return load_settings(path)
    except SettingsError as err:
        message = str(err)
        assert message.startswith(f"{path}: "), message
        assert "\n" not in message, f"not one line: {message!r}"
        assert len(message) < 2000, message
        return None


def _all_numbers_finite(obj: Any) -> bool:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(_all_numbers_finite(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, tuple):
        return all(_all_numbers_finite(x) for x in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


@fuzz(150)
@given(documents())
@example({"SENSORS": [{"PORT": "COM4", "SENSORS_ID": "\ud800"}]})
@example({"SENSORS": [{"PORT": "COM4", "SENSORS_ID": "VIC"}], "LOCAL_DATA_ROOT": "~nosuchuser"})
@example({"SENSORS": [{"PORT": "COM4", "SENSORS_ID": "VIC"}], "LOCAL_DATA_ROOT": "da\0ta"})
@example({"SENSORS": [{"PORT": "COM4", "SENSORS_ID": "VIC"}], "TIMEOUT": float("nan")})
@example({"SENSORS": [{"PORT": "COM4", "SENSORS_ID": "VIC"}], "POLLING_DELAY": 10**400})
@example({"SENSORS": [{"PORT": "COM4", "SENSORS_ID": "VIC"}], "UPLINK_VERIFY_TLS": "~nobody9"})
def test_any_values_for_known_keys_load_or_fail_with_one_settings_error(
    settings_path: Path, doc: dict[str, Any]
) -> None:
    """Wrong types, NaN, huge numbers, NULs, surrogates, '~nosuchuser': SettingsError only."""
    settings_path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    settings = _load(settings_path)
    if settings is not None:
        assert _all_numbers_finite(settings)
        assert "\0" not in str(settings.data_root)


@fuzz(80)
@given(st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
@example("SENSORS: " + "[" * 2000 + "]" * 2000)
@example("SENSORS: " + "{a: " * 2000 + "1" + "}" * 2000)
@example("a: &a [x, x, x, x, x, x, x, x]\nVPP: [*a, *a, *a, *a, *a, *a, *a, *a]")
@example("? [a, b]\n: 1")
@example("SENSORS: [{PORT: COM4, SENSORS_ID: VIC}]\nHOST: !!python/object/apply:os.system [ls]")
@example("SENSORS: [{PORT: COM4, SENSORS_ID: VIC}]\nTIMEOUT: !!binary aGVsbG8=")
@example("\ufeffSENSORS: [{PORT: COM4, SENSORS_ID: VIC}]")
def test_any_yaml_text_loads_or_fails_with_one_settings_error(
    settings_path: Path, text: str
) -> None:
    """Any document (syntax errors, deep nesting, tags, aliases): SettingsError only."""
    settings_path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load(settings_path)


def test_undecodable_file_is_a_settings_error(settings_path: Path) -> None:
    """A file that is not UTF-8 (a binary dropped in by mistake) names the file."""
    settings_path.write_bytes(b"SENSORS: \xff\xfe\x00")
    with pytest.raises(SettingsError, match="cannot read settings"):
        load_settings(settings_path)


def test_alias_bomb_message_stays_short(settings_path: Path) -> None:
    """YAML aliases can make a value exponentially large; its message stays one short line."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    text = "EHOST:\n" + "\n".join("  " + line for line in levels) + "\nVPP: *a7\n"
    settings_path.write_text("SENSORS: [{PORT: COM4, SENSORS_ID: VIC}]\n" + text)
    with pytest.raises(SettingsError) as caught:
        load_settings(settings_path)
    assert "VPP: expected a number > 0" in str(caught.value)
    assert len(str(caught.value)) < 2000
