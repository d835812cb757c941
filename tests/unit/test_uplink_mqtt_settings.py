"""MQTT settings: the URL, credentials in one place, TLS files, the client id, and which
outputs the uplink runs (enabled_outputs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from powmon.common.errors import SettingsError
from powmon.common.settings import Settings, load_settings
from powmon.uplink.config import UplinkConfig, enabled_outputs
from powmon.uplink.mqtt_config import MqttConfig, default_client_id, slug
from tests.helpers import write_settings


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    path = write_settings(tmp_path / "settings.yaml",
                          [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}], **overrides)
    return load_settings(path)


def test_enabled_outputs_follow_remote_save_and_mqtt_url(tmp_path: Path) -> None:
    """REMOTE_SAVE runs the HTTP output, MQTT_URL the MQTT one; neither: no uplink at all."""
    url = "https://example.org/in"
    assert enabled_outputs(settings(tmp_path)) == ()
    assert enabled_outputs(settings(tmp_path, REMOTE_SAVE=True, UPLINK_URL=url)) == ("http",)
    both = settings(tmp_path, REMOTE_SAVE=True, UPLINK_URL=url, MQTT_URL="mqtt://h")
    assert enabled_outputs(both) == ("http", "mqtt")
    assert UplinkConfig.from_settings(both, environ={}).outputs == ("http", "mqtt")


def test_url_credentials_are_taken_and_never_shown(tmp_path: Path) -> None:
    """user:password in MQTT_URL (percent-decoded) become the login; `where` and repr show
    neither; default ports are 1883 and 8883."""
    cfg = MqttConfig.from_settings(settings(tmp_path, MQTT_URL="mqtts://lab:p%40ss@broker.lan"))
    assert (cfg.host, cfg.port, cfg.tls, cfg.username) == ("broker.lan", 8883, True, "lab")
    assert cfg.password is not None and cfg.password.reveal() == "p@ss"
    assert cfg.where == "mqtts://broker.lan:8883"
    assert "p@ss" not in repr(cfg) and "username" not in repr(cfg)
    plain = MqttConfig.from_settings(settings(tmp_path, MQTT_URL="mqtt://10.0.0.5"))
    assert (plain.port, plain.tls, plain.username) == (1883, False, None)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"MQTT_URL": "mqtt://u@h", "MQTT_USERNAME": "v"}, "MQTT_USERNAME: the user is already"),
     ({"MQTT_URL": "mqtt://u:p@h", "MQTT_PASSWORD": "q"}, "MQTT_PASSWORD: the password is"),
     ({"MQTT_URL": "mqtts://h", "MQTT_KEYFILE": "k.pem"}, "MQTT_KEYFILE: needs MQTT_CERTFILE"),
     ({"MQTT_URL": "mqtts://h", "MQTT_CA_CERTS": "none.pem"}, "MQTT_CA_CERTS: expected an"),
     ({"MQTT_URL": "mqtt://h:0"}, "MQTT_URL: expected"),
     ({"MQTT_URL": "mqtt://h/path"}, "MQTT_URL: expected"),
     ({"MQTT_URL": "mqtt://h", "MQTT_TOPIC": "p/{sensor_id!r}"}, "MQTT_TOPIC: expected"),
     ({"MQTT_URL": "mqtt://h", "MQTT_TOPIC": "p/{host}"}, "MQTT_TOPIC: expected"),
     ({"MQTT_URL": "mqtt://h", "MQTT_DISCOVERY": "home assistant"}, "MQTT_DISCOVERY: expected"),
     ({"MQTT_URL": "mqtt://h", "MQTT_STATE_INTERVAL": 0.01}, "MQTT_STATE_INTERVAL: expected")],
)
def test_bad_mqtt_settings_name_the_key(
    tmp_path: Path, overrides: dict[str, Any], match: str
) -> None:
    """Each mistake stops the start with the key and what was expected."""
    with pytest.raises(SettingsError, match=match):
        MqttConfig.from_settings(settings(tmp_path, **overrides))


def test_tls_files_resolve_next_to_the_settings_and_insecure_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Relative certificate paths are relative to settings.yaml; MQTT_TLS_INSECURE is said at
    start as a WARNING."""
    (tmp_path / "ca.pem").write_text("x")
    with caplog.at_level(logging.WARNING):
        cfg = MqttConfig.from_settings(settings(tmp_path, MQTT_URL="mqtts://h",
                                                MQTT_CA_CERTS="ca.pem", MQTT_TLS_INSECURE=True))
    assert cfg.ca_certs == str(tmp_path / "ca.pem")
    assert "MQTT_TLS_INSECURE" in caplog.text


def test_client_id_is_unique_per_data_root_and_ids_are_topic_safe(tmp_path: Path) -> None:
    """Two installations on one host get two client ids; slugs keep distinct names distinct."""
    assert default_client_id(tmp_path / "a") != default_client_id(tmp_path / "b")
    assert default_client_id(tmp_path / "a").startswith("powmon-")
    assert slug("VIC") == "VIC"
    assert slug("Lab 2") != slug("Lab_2") and slug("Lab 2").startswith("Lab_2_")
    cfg = MqttConfig.from_settings(settings(tmp_path, MQTT_URL="mqtt://h",
                                            MQTT_TOPIC="site/{sensor_id}/{session}"))
    assert cfg.status_base == f"site/{cfg.node}"
