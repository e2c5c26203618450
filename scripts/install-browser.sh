#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/test_report_browser.py drives it through Playwright
# with executable_path=/usr/bin/chromium; Playwright's own browser download is never used).
# Idempotent: does nothing, silently, when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing chromium (Debian package) for the browser test" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version >&2
