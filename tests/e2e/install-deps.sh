#!/usr/bin/env bash
# Installs what the several-hosts test (tests/e2e/test_hosts.py) needs from Debian's own
# packages: iproute2, for the two network namespaces and the veth pair between them (the
# traffic is captured with a raw socket in the namespace, so no tcpdump). Making namespaces
# also needs root or CAP_NET_ADMIN, as CI has. Idempotent (scripts/apt-install).
set -euo pipefail
exec "$(dirname "$0")/../../scripts/apt-install" "hosts deps" iproute2
