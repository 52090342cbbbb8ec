#!/usr/bin/env bash
# Lint, type-check, run the fast tier, then every other test against the real test bed (needs root and
# scripts/setup.sh first). With arguments, runs pytest with them instead of the two tiers.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pytest "$@"
fi
.venv/bin/pytest tests/fast
.venv/bin/pytest --ignore=tests/fast
