#!/usr/bin/env bash
# Installs what `make -C firmware` (the firmware) and `make -C firmware harness` (the simulated
# board used by the tests) need, from Debian's own packages. Idempotent: packages already
# installed are left as they are, and apt-get update runs only when something is missing.
set -euo pipefail
exec "$(dirname "$0")/../scripts/apt-install" "firmware deps" \
  make gcc-avr binutils-avr avr-libc arduino-core-avr \
  gcc libc6-dev pkg-config libsimavr-dev libelf-dev
