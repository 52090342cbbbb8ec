#!/usr/bin/env bash
# Bring the local test bed up or down by hand: scripts/testbed.sh up|down|status (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.testbed "$@"
