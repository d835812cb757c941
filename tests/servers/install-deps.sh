#!/usr/bin/env bash
# Installs the real servers the uplink output tests start on loopback ports: Mosquitto (MQTT
# broker) and InfluxDB 1.x (`influxd`), from Debian's own packages. Idempotent. The packages'
# own system services are not started: the tests start their own servers with temporary
# configs on free ports.
set -euo pipefail
exec "$(dirname "$0")/../../scripts/apt-install" --no-start "server deps" mosquitto influxdb
