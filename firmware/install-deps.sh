#!/usr/bin/env bash
# Installs what `make -C firmware` (the firmware) and `make -C firmware harness` (the simulated
# board used by the tests) need, from Debian's own packages. Idempotent: packages already
# installed are left as they are, and apt-get update runs only when something is missing.
set -euo pipefail

PACKAGES=(
  make gcc-avr binutils-avr avr-libc arduino-core-avr   # firmware
  gcc libc6-dev pkg-config libsimavr-dev libelf-dev      # harness (simavr 1.6)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "firmware deps: all installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "firmware deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -q; then
  echo "firmware deps: 'apt-get update' failed; cannot install ${missing[*]}" >&2
  exit 1
fi
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  echo "firmware deps: 'apt-get install ${missing[*]}' failed" >&2
  exit 1
fi
