#!/usr/bin/env bash
# First run for newcomers (as root, on a fresh Debian 12 machine): set everything up, bring up the local
# test bed (host engine A, a device namespace with engine B, adbd and sshd), and run the daemon against it
# in the foreground. Ctrl-C stops it; `scripts/testbed.sh down` removes the test bed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/python -m tests.testbed up >/dev/null

run=/run/androcond-testbed
mkdir -p "$run/demo"
cat >"$run/demo/androcond.toml" <<TOML
[daemon]
state_dir = "$run/demo/state"
api = "unix:$run/demo/api.sock"
[docker]
host = "unix://$run/engine-a/docker.sock"
[devices.pixel]
address = "10.231.7.2:8022"
identity = "$run/device/ssh/id_ed25519"
TOML

cat >&2 <<HINT
androcond demo: the daemon follows engine A. In another terminal, start a labelled container:
  docker -H unix://$run/engine-a/docker.sock run -d --label androcond.migrate=pixel androcond-test/busybox:1 /bin/counter
HINT
exec .venv/bin/androcond run --config "$run/demo/androcond.toml"
