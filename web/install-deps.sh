#!/usr/bin/env bash
# Installs what the web page's browser tests (tests/e2e/test_web_page.py) need from Debian's own
# packages: Chromium, driven by the playwright Python package through executable_path (no
# browser download), and a font so that the screenshot shows text rather than empty boxes.
# Idempotent: packages already installed are left as they are, and apt-get update runs only
# when something is missing.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "web deps: all installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "web deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -q; then
  echo "web deps: 'apt-get update' failed; cannot install ${missing[*]}" >&2
  exit 1
fi
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  echo "web deps: 'apt-get install ${missing[*]}' failed" >&2
  exit 1
fi
