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
# The host's install (the daemon extra) and the test tools; a device installs plain `androcond` (README).
.venv/bin/python -m pip install -q -e '.[daemon,test]'
# The arm64 device's disk image (tests/testbed/arm64.py): built once (about 12 min on 2 cores), then cached
# under /var/cache/androcond; a change to androcond rebuilds only its top layer (about 80 s).
.venv/bin/python -m tests.testbed.arm64 build
echo "setup: done (.venv/bin/androcond $(.venv/bin/androcond --version | cut -d' ' -f2))" >&2
