#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 machine (as root): system packages, CRIU 4, and the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system.sh

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: androcond needs Python >= 3.11 (found $("$python" --version 2>&1))" >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: done (.venv/bin/androcond $(.venv/bin/androcond --version | cut -d' ' -f2))" >&2
