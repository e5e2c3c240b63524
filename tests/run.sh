#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine and run the whole test suite (unit, widget and slow data checks).
# Everything is installed into the virtual environment .venv (made when missing) at the versions pinned in
# requirements/constraints.txt, so nothing installed elsewhere on the machine takes part.
#   bash tests/run.sh                  # everything
#   bash tests/run.sh -m "not slow"    # extra pytest arguments are passed on
#   VENV=/tmp/ci-venv FRESH=1 bash tests/run.sh   # another folder, emptied first (what .ci/run does)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if ! command -v Xvfb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
    libxcb-cursor0 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxkbcommon-x11-0 libgl1 libegl1 \
    libdbus-1-3 libfontconfig1 libglib2.0-0 >/dev/null
fi
if [ "${FRESH:-0}" = 1 ]; then rm -rf "$VENV"; fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -c requirements/constraints.txt --upgrade pip
"$VENV/bin/python" -m pip install -q -c requirements/constraints.txt -e ".[testing]"
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pytest "$@"
