#!/usr/bin/env bash
# First run for newcomers (as root, on a fresh Debian 12 machine): set everything up, bring up the local
# test bed (host engine A; a device namespace with engine B, adbd and sshd), start androcond's agent on the
# device and the daemon on the host, and watch a labelled counter container move to the device and keep
# counting. `scripts/testbed.sh down` removes the test bed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec .venv/bin/python -m tests.testbed.demo
