"""The web process's configuration, from validated settings and `--listen`.

Loopback by default. Listening on any other address is an explicit choice that needs
WEB_TOKEN: the page shows process ids, file names and the data files themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from powmon.base.health import Expected
from powmon.common.curvezmq import Curve, is_loopback
from powmon.common.errors import SettingsError
from powmon.common.settings import Settings

DEFAULT_LISTEN: Final = ("127.0.0.1", 8080)


@dataclass(frozen=True, slots=True)
class WebConfig:
    host: str
    port: int
    token: str | None
    backend: str
    frontend: str
    hwm: int
    heartbeat_interval: float
    data_root: Path
    expected: Expected
    curve: Curve | None
    units: Mapping[str, str] = field(default_factory=dict)  # sensor: "W", or "VA" (MODE ac)

    @classmethod
    def from_settings(cls, settings: Settings, listen: tuple[str, int] | None = None) -> WebConfig:
        """Raises SettingsError for a non-loopback address without WEB_TOKEN."""
        host, port = listen or settings.web_listen or DEFAULT_LISTEN
        token = settings.web_token.reveal() if settings.web_token is not None else None
        if token is None and not is_loopback(host):
            raise SettingsError(
                f"{settings.path}: WEB_TOKEN: required to listen on {host}:{port}, which is not "
                "a loopback address (set WEB_TOKEN, or listen on 127.0.0.1)"
            )
        return cls(
            host=host, port=port, token=token, backend=settings.broker_backend,
            frontend=settings.broker_frontend, hwm=settings.hwm,
            heartbeat_interval=settings.heartbeat_interval, data_root=settings.data_root,
            expected=Expected.from_settings(settings), curve=settings.curve,
            units={s.sensor_id: power_unit(s.mode) for s in settings.sensors},
        )


def power_unit(mode: str) -> str:
    """An AC sensor's power is RMS current times VCC: apparent power, in VA, not watts."""
    return "VA" if mode == "ac" else "W"
