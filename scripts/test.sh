#!/usr/bin/env bash
# Lint, type-check and run every test against the real test bed (needs root and scripts/setup.sh first).
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
.venv/bin/pytest "$@"
