"""settings.yaml, loaded once, validated completely, and frozen: the public face.

The names other packages import live in modules named for what they hold: the loader and
its one parse (loader.py), the mistakes found with their lines (problems.py), the table of
keys and defaults (keys.py), and one part per process with the rules between its keys: the
readers' SENSORS (sensors.py), the bus's ports and CURVE keys (bus.py), the uplink's HTTP and
MQTT outputs (uplink.py), and the whole Settings (whole.py). The original script's keys load
unchanged (misspelled BUDRATE included); new keys sit beside them.
"""

from powmon.common.settings.keys import SECRET_KEYS
from powmon.common.settings.loader import ENV_SETTINGS, effective_values, load_settings
from powmon.common.settings.problems import SettingsProblems
from powmon.common.settings.sensors import SensorSettings
from powmon.common.settings.uplink import UplinkSettings
from powmon.common.settings.values import Secret
from powmon.common.settings.whole import Settings

__all__ = [
    "ENV_SETTINGS",
    "SECRET_KEYS",
    "Secret",
    "SensorSettings",
    "Settings",
    "SettingsProblems",
    "UplinkSettings",
    "effective_values",
    "load_settings",
]
