#!/usr/bin/env bash
# Refresh requirements/constraints.txt on purpose: resolve the newest releases the project's ranges admit in a fresh
# virtual environment, pin them all, then run the tests against the new pins before committing.
#   bash scripts/refresh_constraints.sh && bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q -e ".[all,testing]"
{
  echo "# Pinned versions of everything napari-leukemia and its tests install (pip constraints: pip install -c requirements/constraints.txt ...)."
  echo "# Made by scripts/refresh_constraints.sh on $(date +%F) ($("$tmp/venv/bin/python" -V), $(uname -m)); refresh on purpose, run the tests, commit."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable
} > requirements/constraints.txt.new
mv requirements/constraints.txt.new requirements/constraints.txt
echo "requirements/constraints.txt refreshed; now run: bash tests/run.sh"
