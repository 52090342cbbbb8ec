#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 machine (as root): system packages, CRIU 4, the Python venv and the arm64
# device's disk image. One line per stage with its elapsed time; each stage's own output goes to a log under
# $ANDROCOND_SETUP_LOGS (default /var/log/androcond-setup), whose tail is shown if the stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."

logs=${ANDROCOND_SETUP_LOGS:-/var/log/androcond-setup}
mkdir -p "$logs"
started=$SECONDS

say() { printf '[setup %4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }

# stage NAME WHAT-TO-EXPECT COMMAND...: run COMMAND with its output in $logs/NAME.log.
stage() {
    local name=$1 expect=$2 log="$logs/$1.log" t0=$SECONDS
    shift 2
    say "$name: $expect"
    if ! "$@" >"$log" 2>&1; then
        say "$name: FAILED after $((SECONDS - t0))s; the end of $log:"
        tail -n 40 "$log" >&2
        exit 1
    fi
    say "$name: done in $((SECONDS - t0))s"
}

stage system-packages "Debian packages from scripts/system-packages.txt and CRIU 4.2 (first run: 2-4 min)" \
    bash scripts/install-system.sh

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "androcond needs Python >= 3.11 (found $("$python" --version 2>&1))"
    exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# The host's install (the daemon extra) and the test tools; a device installs plain `androcond` (README).
stage python-packages "androcond and its test tools into .venv, the emulation restorer built (about 1 min)" \
    sh -c '.venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[daemon,test]" \
           && .venv/bin/python -m androcond.emulation.build'

# The arm64 device's disk image (tests/testbed/arm64.py): built once, then cached under /var/cache/androcond;
# a change to androcond rebuilds only its top layer. It prints its own stages (its log: $logs/arm64-*.log).
.venv/bin/python -m tests.testbed.arm64 build --log-dir "$logs"
say "done (.venv/bin/androcond $(.venv/bin/androcond --version | cut -d' ' -f2))"
