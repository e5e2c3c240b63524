#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine and run the whole test suite (unit, widget and slow data checks).
#   bash tests/run.sh            # everything
#   bash tests/run.sh -m "not slow"   # extra pytest arguments are passed on
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v Xvfb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
    libxcb-cursor0 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxkbcommon-x11-0 libgl1 libegl1 \
    libdbus-1-3 libfontconfig1 libglib2.0-0 >/dev/null
fi
python -m pip install -q -e ".[testing]"
python -m pytest "$@"
