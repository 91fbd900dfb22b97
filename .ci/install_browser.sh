#!/usr/bin/env bash
# Install what tests/test_ui_browser.py needs: Debian's chromium (apt) and the Playwright Python
# package, which drives /usr/bin/chromium through executable_path. `playwright install` is NOT
# run: it downloads its own browsers and fails offline. Call it with the virtual environment that
# runs pytest active (pip installs into it). Without these the browser test skips.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium
fi
python -m pip install --quiet playwright
chromium --version 2>/dev/null  # Debian's launcher script prints a harmless shell warning on stderr
python -c "import importlib.metadata as m, playwright.sync_api; print('playwright', m.version('playwright'))"
