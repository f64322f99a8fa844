#!/usr/bin/env bash
# Install Debian's Chromium for tests/test_browser.py, which opens the lab's HTML report in a real
# headless browser. Idempotent: does nothing when /usr/bin/chromium is there already.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_chromium: apt-get not found; install Chromium with your system's package manager" >&2
    exit 1
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null; then
        echo "install_chromium: run as root (or install sudo) to apt-get install chromium" >&2
        exit 1
    fi
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "install_chromium: $(/usr/bin/chromium --version)"
