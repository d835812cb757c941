"""The table of settings.yaml's keys: each key's check and its default, in one place.

The original script's keys come first (misspelled BUDRATE included), then PowMon's additions;
a SENSORS entry has keys of its own and may override the calibration and reading keys, whose
top-level value is then its default. deploy/settings.example.yaml lists the same keys (a test
holds the two together). The checks of one value are in common/checks.py; the rules that
relate two keys are with the section they belong to (sensors.py, bus.py, uplink.py).
"""

from __future__ import annotations

from typing import Any, Final

from powmon.common import checks as c

UPLINK_FORMATS: Final = ("seed", "csv", "json", "influx")
SENSOR_MODES: Final = ("dc", "ac")
# `read N\n` is 7 bytes: 8 of them (56 bytes) fit the Arduino's 64-byte receive buffer.
MAX_PIPELINE: Final = 8

# Keys whose values are secrets (the uplink's credentials): never shown, never logged.
SECRET_KEYS: Final = frozenset(
    {"LOCAL_DATA_PATH", "UPLINK_TOKEN", "INFLUX_TOKEN", "WEB_TOKEN", "MQTT_PASSWORD"}
)

# Keys the original script wrote into its own file; they carry nothing PowMon needs.
LEGACY_IGNORED: Final = frozenset({"EHOST", "PROJECT_ROOT"})


# COMPRESS values: how a closed data file is compressed (base.storage.COMPRESSED_SUFFIX)
COMPRESSIONS: Final = ("gzip", "zstd", "none")

# Original keys first, then PowMon's additions. key -> (check, default)
TOP: Final[dict[str, tuple[c.Check, Any]]] = {
    "SENSORS": (lambda v: v, c.REQUIRED),
    "BUDRATE": (c.integer(1), 9600),
    "TIMEOUT": (c.number(0, lo_open=True), 1.0),
    "POLLING_DELAY": (c.number(0), 0.1),
    "FILE_SIZE_LIMIT": (c.integer(1024), 10_000_000),
    "LOCAL_DATA_ROOT": (c.path("a folder path"), "data"),
    "LOCAL_DATA_FILE": (c.text("a file name like 'data.csv'", r"/?[^/\\]+"), "data.csv"),
    "LOG_LEVEL": (c.integer(0, 3), 1),
    "REMOTE_SAVE": (c.boolean, False),
    "SYNC_WRITE": (c.boolean, True),
    "VPP": (c.number(0, lo_open=True), 5.0 / 1024),
    "OFFSET": (c.number(), 2.5),
    "SNS": (c.number(0, lo_open=True), 0.066),
    "VCC": (c.number(), 5.0),
    "HOST": (c.optional(c.text("a Fernet token (from 'powmon encrypt-url')")), None),
    "LOCAL_DATA_PATH": (c.optional(c.text("a Fernet key (from 'powmon keygen')")), None),
    "MAX_AMPS": (c.number(0, lo_open=True), 10.0),
    "BROKER_FRONTEND": (c.ENDPOINT, "tcp://127.0.0.1:5555"),
    "BROKER_BACKEND": (c.ENDPOINT, "tcp://127.0.0.1:5556"),
    "HWM": (c.integer(1000), 200_000),
    "HEARTBEAT_INTERVAL": (c.number(0.05, 60), 1.0),
    "STALL_TIMEOUT": (c.number(1), 15.0),
    "FLUSH_INTERVAL": (c.number(0.01, 1.0), 0.5),
    "REPLAY_BUFFER": (c.integer(0), 60_000),
    "RESTART_BACKOFF_MAX": (c.number(0.1), 30.0),
    "STREAM": (c.stream_mode, "auto"),
    "STREAM_HZ": (c.optional(c.integer(1, 65535)), None),
    "READ_PIPELINE": (c.integer(1, MAX_PIPELINE), 4),
    "PUBLISH_INTERVAL": (c.number(0, 5), 0.1),
    "DATA_MAX_BYTES": (c.optional(c.integer(1024)), None),
    "DATA_KEEP_DAYS": (c.optional(c.number(0, lo_open=True)), None),
    "ROLLUP_KEEP_DAYS": (c.optional(c.number(0, lo_open=True)), 3650.0),
    "COMPRESS": (c.choice(COMPRESSIONS), "gzip"),
    "UPLINK_URL": (c.optional(c.URL), None),
    "HOST_KEY_ENV": (
        c.text("an environment variable name", r"[A-Za-z_][A-Za-z0-9_]*"),
        "POWMON_HOST_KEY",
    ),
    "HOST_KEY_FILE": (c.optional(c.PATH), None),
    "UPLINK_FORMAT": (c.choice(UPLINK_FORMATS), "seed"),
    "UPLINK_BATCH_SIZE": (c.integer(1, 100_000), 500),
    "UPLINK_BATCH_WAIT": (c.number(0), 1.0),
    "UPLINK_TIMEOUT": (c.number(0, lo_open=True), 5.0),
    "UPLINK_BACKOFF_MAX": (c.number(0.1), 60.0),
    "UPLINK_SPOOL": (c.PATH, "uplink-spool.sqlite3"),
    "UPLINK_SPOOL_MAX": (c.integer(1000), 5_000_000),
    "UPLINK_VERIFY_TLS": (c.verify_tls, True),
    "UPLINK_TOKEN": (c.optional(c.text()), None),
    "UPLINK_HEADERS": (c.headers, {}),
    "INFLUX_ORG": (c.optional(c.text()), None),
    "INFLUX_BUCKET": (c.optional(c.text()), None),
    "INFLUX_DATABASE": (c.optional(c.text()), None),
    "INFLUX_TOKEN": (c.optional(c.text()), None),
    "INFLUX_MEASUREMENT": (c.text(), "power"),
    "WEB_LISTEN": (c.optional(c.listen), None),
    "WEB_TOKEN": (c.optional(c.text("a token string")), None),
    "MQTT_URL": (c.optional(c.mqtt_url), None),
    "MQTT_TOPIC": (c.mqtt_topic, "powmon/{sensor_id}"),
    "MQTT_CLIENT_ID": (c.optional(c.text()), None),
    "MQTT_USERNAME": (c.optional(c.text()), None),
    "MQTT_PASSWORD": (c.optional(c.text()), None),
    "MQTT_CA_CERTS": (c.optional(c.PATH), None),
    "MQTT_CERTFILE": (c.optional(c.PATH), None),
    "MQTT_KEYFILE": (c.optional(c.PATH), None),
    "MQTT_TLS_INSECURE": (c.boolean, False),
    "MQTT_KEEPALIVE": (c.integer(5, 3600), 30),
    "MQTT_TIMEOUT": (c.number(0, lo_open=True), 10.0),
    "MQTT_DISCOVERY": (c.optional(c.MQTT_PREFIX), None),
    "MQTT_STATE_INTERVAL": (c.number(0.2, 3600), 1.0),
    "CURVE_SERVER_KEY": (c.optional(c.path("the broker's .key_secret file")), None),
    "CURVE_AUTHORIZED": (c.optional(c.path("a folder of authorised .key files")), None),
    "CURVE_CLIENT_KEY": (c.optional(c.path("this host's .key_secret file")), None),
    "CURVE_SERVER_PUBLIC": (
        c.optional(c.text("the broker's public key (40 characters of Z85) or its .key file")),
        None,
    ),
    "REPLAY_PORTS": (c.optional(c.port_range), None),
}

# Per-sensor keys; the calibration ones default to the top-level value of the same name.
SENSOR: Final[dict[str, c.Check]] = {
    "PORT": c.text("a port name like 'COM4', '/dev/ttyACM0' or 'sim://VIC'"),
    "SENSORS_ID": c.sensor_id,
    "BUDRATE": TOP["BUDRATE"][0],
    "TIMEOUT": TOP["TIMEOUT"][0],
    "POLLING_DELAY": TOP["POLLING_DELAY"][0],
    "VPP": TOP["VPP"][0],
    "OFFSET": TOP["OFFSET"][0],
    "SNS": TOP["SNS"][0],
    "VCC": TOP["VCC"][0],
    "MAX_AMPS": TOP["MAX_AMPS"][0],
    "CHANNEL": c.optional(c.integer(0, 5)),  # A0..A5 of an Uno
    "AVG": c.integer(1, 64),
    "MODE": c.choice(SENSOR_MODES),
    "MAINS_HZ": c.integer(1, 1000),  # the firmware takes whole hertz
    "AC_CYCLES": c.integer(1, 100),
    "STREAM": TOP["STREAM"][0],
    "STREAM_HZ": TOP["STREAM_HZ"][0],
    "READ_PIPELINE": TOP["READ_PIPELINE"][0],
    "PUBLISH_INTERVAL": TOP["PUBLISH_INTERVAL"][0],
}
SENSOR_DEFAULTS: Final = {
    "CHANNEL": None,
    "AVG": 1,
    "MODE": "dc",
    "MAINS_HZ": 50,
    "AC_CYCLES": 5,
}
SENSOR_REQUIRED: Final = ("PORT", "SENSORS_ID")
