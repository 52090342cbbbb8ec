"""First run for newcomers: the local test bed's device namespace as the device `pixel`, an agent on it,
the daemon, and a labelled counter container that moves there and keeps counting.

Run (as root, after scripts/setup.sh): .venv/bin/python -m tests.testbed.demo
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from .agent import DeviceAgent, daemon_config
from .bed import TestBed
from .images import TEST_IMAGE
from .proc import wait_for

AGENT_PORT = 8022 + 100
DEMO_DIR = Path("/run/androcond-testbed/demo")


def say(text: str) -> None:
    print(f"\033[1mandrocond demo:\033[0m {text}" if sys.stdout.isatty() else f"androcond demo: {text}", flush=True)


def counts(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^count (\d+)", text, re.MULTILINE)]


def main() -> int:
    bed = TestBed().up()
    agent = DeviceAgent(bed, DEMO_DIR, AGENT_PORT)
    config = daemon_config(agent, DEMO_DIR, daemon=f'api = "unix:{DEMO_DIR / "api.sock"}"\nlog_format = "console"')
    say(f"the device `pixel` is the network namespace {bed.device.netns} ({bed.device.device_ip}) with its own "
        "Docker engine; starting androcond's agent there")
    agent.start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        say("starting the daemon (`androcond run`); its log follows")
        daemon = subprocess.Popen([sys.executable, "-m", "androcond", "run", "--config", str(config)])
        name = f"androcond-demo-{uuid.uuid4().hex[:6]}"
        say(f"starting container {name} on the host with the label androcond.migrate=pixel")
        bed.engine_a.cli("run", "-d", "--name", name, "--label", "androcond.migrate=pixel",
                         "--label", "androcond.delay=2s", TEST_IMAGE, "/bin/counter")
        wait_for(lambda: _running(bed, "b", name), timeout=120, interval=0.2, what="the container on the device")
        wait_for(lambda: len(counts(bed.engine_b.cli("logs", name))) >= 10, timeout=30, what="counting on the device")
        device_counts = counts(bed.engine_b.cli("logs", name))
        say(f"{name} now runs on the device; its counter went on from {device_counts[0]} "
            "(a fresh start would print 1)")
        say(f"see it: docker -H {bed.engine_b.host} logs -f {name}")
        say("the daemon's journal (`androcond migrations`):")
        subprocess.run([sys.executable, "-m", "androcond", "migrations", "--config", str(config)], check=False)
        say("remove the test bed when done: scripts/testbed.sh down")
        return 0
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        agent.stop()


def _running(bed: TestBed, which: str, name: str) -> bool:
    engine = bed.engine_a if which == "a" else bed.engine_b
    return engine.cli("ps", "-q", "--filter", f"name=^{name}$").strip() != ""


if __name__ == "__main__":
    sys.exit(main())
