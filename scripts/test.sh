#!/usr/bin/env bash
# Lint, type-check, run the fast tier (tests without a marker: pure and hermetic, anywhere in tests/), then
# the `system` and `testbed` tiers against this machine and the real test bed (needs root and scripts/setup.sh
# first), where a missing prerequisite fails instead of skipping (tests/tiers.py). With arguments, runs pytest
# with them instead of the tiers.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pytest "$@"
fi
.venv/bin/pytest -m "not testbed and not system"
ANDROCOND_BED=1 .venv/bin/pytest -m "testbed or system"
