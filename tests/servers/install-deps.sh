#!/usr/bin/env bash
# Installs the real servers the uplink output tests start on loopback ports: Mosquitto (MQTT
# broker) and InfluxDB 1.x (`influxd`), from Debian's own packages. Idempotent: packages
# already installed are left as they are, and apt-get update runs only when something is
# missing. The Debian packages also install system services; the tests never use them (they
# start their own servers with temporary configs), and under a container without an init
# system they do not start at all.
set -euo pipefail

PACKAGES=(mosquitto influxdb)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "server deps: all installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "server deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -q; then
  echo "server deps: 'apt-get update' failed; cannot install ${missing[*]}" >&2
  exit 1
fi
# policy-rc.d 101: do not start the packages' own system services while installing.
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  made_policy=1
fi
rc=0
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
[ -n "$made_policy" ] && $SUDO rm -f "$policy"
if [ "$rc" -ne 0 ]; then
  echo "server deps: 'apt-get install ${missing[*]}' failed" >&2
  exit 1
fi
