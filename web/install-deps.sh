#!/usr/bin/env bash
# Installs what the web page's browser test (tests/e2e/test_web_page.py) needs from Debian's own
# packages: Chromium, driven by the playwright Python package through executable_path (no
# browser download), and a font, so that the screenshot shows text rather than empty boxes.
# Idempotent (scripts/apt-install).
set -euo pipefail
exec "$(dirname "$0")/../scripts/apt-install" "web deps" chromium fonts-dejavu-core
