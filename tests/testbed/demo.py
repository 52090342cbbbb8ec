"""First run for newcomers: two hops of a running container, each shown as it happens.

1. The local test bed's device namespace as the device `pixel` (x86_64, its own Docker engine), an agent on it,
   the daemon, and a labelled counter container that moves there and keeps counting.
2. The arm64 device (Debian for arm64 under qemu-system-aarch64, booted while hop 1 runs): the daemon, now
   configured with it too, sees a labelled x86_64 container running the two-ISA program and moves it there;
   it resumes on aarch64 at the count it had reached and counts on; then `migrate --to host` brings it home,
   where it resumes on x86_64 and counts on.

Run (as root, after scripts/setup.sh): .venv/bin/python -m tests.testbed.demo
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .agent import DeviceAgent, daemon_config
from .arm64 import Arm64Device, ensure_image
from .bed import TestBed
from .images import TEST_IMAGE
from .proc import wait_for
from .twoisa import BIN, arm64_device_table, install_twoisa_image

AGENT_PORT = 8022 + 100
DEMO_DIR = Path("/run/androcond-testbed/demo")
STARTED = time.monotonic()
# The two-ISA program's lines: "count 7 on x86_64 (pid 1, role 0)", "resumed at count 7 on aarch64 (…)".
TWOISA_LINE = re.compile(r"^(count|resumed at count) (\d+) on (\w+)", re.MULTILINE)


def say(text: str) -> None:
    stamp = f"[{time.monotonic() - STARTED:5.1f}s]"
    if sys.stdout.isatty():
        print(f"\033[1mandrocond demo {stamp}:\033[0m {text}", flush=True)
    else:
        print(f"androcond demo {stamp}: {text}", flush=True)


def counts(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^count (\d+)", text, re.MULTILINE)]


class Daemon:
    """`androcond run` with its console log on this terminal, and the CLI against it."""

    def __init__(self, config: Path) -> None:
        self.config = config
        (DEMO_DIR / "api.sock").unlink(missing_ok=True)  # a stopped daemon's: readiness is the new one's
        self.proc = subprocess.Popen([sys.executable, "-m", "androcond", "run", "--config", str(config)])
        wait_for(lambda: (DEMO_DIR / "api.sock").exists() or self.proc.poll() is not None, timeout=60,
                 what="the daemon's API")
        if self.proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({self.proc.returncode})")

    def journal(self) -> None:
        say("the daemon's journal (`androcond migrations`):")
        subprocess.run([sys.executable, "-m", "androcond", "migrations", "--config", str(self.config)], check=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def main() -> int:
    image = ensure_image(say)  # built by scripts/setup.sh: only checked here
    bed = TestBed().up()
    arm64 = Arm64Device(DEMO_DIR / "arm64", image)
    say("booting the arm64 device (qemu-system-aarch64, about 40 s) while the first hop runs")
    booting = ThreadPoolExecutor(max_workers=1)
    boot: Future[Arm64Device] = booting.submit(arm64.up)
    agent = DeviceAgent(bed, DEMO_DIR, AGENT_PORT)
    daemon: Daemon | None = None
    try:
        say(f"hop 1: the device `pixel` is the network namespace {bed.device.netns} ({bed.device.device_ip}) "
            "with its own Docker engine; starting androcond's agent there")
        agent.start()
        first_config = daemon_config(agent, DEMO_DIR, daemon=f'api = "unix:{DEMO_DIR / "api.sock"}"\n'
                                                             'log_format = "console"')
        daemon = Daemon(first_config)
        name = f"androcond-demo-{uuid.uuid4().hex[:6]}"
        say(f"starting container {name} on the host with the label androcond.migrate=pixel")
        bed.engine_a.cli("run", "-d", "--name", name, "--label", "androcond.migrate=pixel",
                         "--label", "androcond.delay=2s", TEST_IMAGE, "/bin/counter")
        wait_for(lambda: _running(bed, "b", name), timeout=120, interval=0.2, what="the container on the device")
        wait_for(lambda: len(counts(bed.engine_b.cli("logs", name))) >= 10, timeout=30, what="counting on the device")
        device_counts = counts(bed.engine_b.cli("logs", name))
        say(f"{name} now runs on `pixel`; its counter went on from {device_counts[0]} (a fresh start would print 1)")
        say(f"bringing it home: `androcond migrate {name} --to host --wait`")
        subprocess.run([sys.executable, "-m", "androcond", "migrate", name, "--to", "host", "--wait",
                        "--config", str(first_config)], check=True)
        wait_for(lambda: len(counts(bed.engine_a.cli("logs", name))) >= 3, timeout=30, what="counting at home")
        home_counts = counts(bed.engine_a.cli("logs", name))
        say(f"{name} runs on the host again and went on from {home_counts[0]}; its label names `pixel`, but "
            "androcond does not send back out on its own what was brought home (`androcond containers`):")
        subprocess.run([sys.executable, "-m", "androcond", "containers", "--config", str(first_config)], check=False)
        daemon.journal()
        daemon.stop()

        say("hop 2: x86_64 → aarch64. Waiting for the arm64 device to finish booting")
        boot.result(timeout=600)
        say(f"the arm64 device is up after {arm64.timings['boot_s']:.0f}s (adb {arm64.adb_serial}); "
            "loading the two-ISA program's image on both engines")
        twoisa = install_twoisa_image(bed.engine_a, arm64, DEMO_DIR)
        moving = f"androcond-demo-arm64-{uuid.uuid4().hex[:6]}"
        bed.engine_a.cli("run", "-d", "--name", moving, "--label", "androcond.migrate=arm64", twoisa,
                         f"/bin/{BIN}", "/data/count.log")
        wait_for(lambda: len(_twoisa_lines(bed.engine_a.cli("logs", moving))) >= 3, timeout=60,
                 what=f"{moving} counting on the host")
        say(f"{moving} counts on the host (x86_64), labelled androcond.migrate=arm64:")
        _show(_twoisa_lines(bed.engine_a.cli("logs", moving))[-3:])
        say("restarting the daemon with the arm64 device in its config; it sees the label at start")
        config = daemon_config(agent, DEMO_DIR, daemon=f'api = "unix:{DEMO_DIR / "api.sock"}"\n'
                                                       'log_format = "console"',
                               extra=arm64_device_table(arm64, DEMO_DIR) + "[timeouts]\nconnect = 60\n")
        daemon = Daemon(config)

        def resumed_and_counting() -> bool:
            lines = _twoisa_lines(_device_logs(arm64, moving))
            return any(kind == "resumed at count" for kind, _, _ in lines) and \
                sum(1 for kind, _, isa in lines if kind == "count" and isa == "aarch64") >= 3

        wait_for(resumed_and_counting, timeout=300, interval=1, what=f"{moving} counting on the arm64 device")
        lines = _twoisa_lines(_device_logs(arm64, moving))
        resumed = next(i for i, (kind, _, _) in enumerate(lines) if kind == "resumed at count")
        say(f"{moving} resumed on aarch64 at {lines[resumed][1]} and counts on (`docker logs` on the device):")
        _show(lines[resumed:resumed + 4])
        machine = arm64.adb_shell(f"docker exec {moving} uname -m", timeout=120).strip()
        say(f"`docker exec {moving} uname -m` on the device: {machine}")
        say(f"and home again across ISAs: `androcond migrate {moving} --to host --wait` (notified for x86_64 on "
            "the device, recoded back here)")
        subprocess.run([sys.executable, "-m", "androcond", "migrate", moving, "--to", "host", "--wait",
                        "--config", str(config)], check=True)

        def resumed_home() -> bool:
            return any(kind == "resumed at count" and isa == "x86_64"
                       for kind, _, isa in _twoisa_lines(bed.engine_a.cli("logs", moving)))

        wait_for(resumed_home, timeout=60, interval=0.5, what=f"{moving} counting at home")
        wait_for(lambda: len(_twoisa_lines(bed.engine_a.cli("logs", moving))) >= 3, timeout=30,
                 what=f"{moving} counting at home")
        home = _twoisa_lines(bed.engine_a.cli("logs", moving))
        back = next(i for i, (kind, _, isa) in enumerate(home) if kind == "resumed at count" and isa == "x86_64")
        say(f"{moving} resumed on x86_64 at {home[back][1]} and counts on (`docker logs` on the host):")
        _show(home[back:back + 4])
        daemon.journal()
        say(f"the host's engine stays up (docker -H {bed.engine_a.host} logs -f {name}); "
            "remove the test bed when done: scripts/testbed.sh down")
        return 0
    finally:
        if daemon is not None:
            daemon.stop()
        agent.stop()
        booting.shutdown(wait=True)
        arm64.down()
        say("the arm64 device is stopped (`python -m tests.testbed.arm64 boot` boots one to try by hand)")


def _twoisa_lines(text: str) -> list[tuple[str, int, str]]:
    return [(m[1], int(m[2]), m[3]) for m in TWOISA_LINE.finditer(text)]


def _device_logs(device: Arm64Device, name: str) -> str:
    return device.adb_shell(f"docker logs {name} 2>&1 || true", timeout=120)


def _show(lines: list[tuple[str, int, str]]) -> None:
    for kind, n, isa in lines:
        print(f"    {kind} {n} on {isa}", flush=True)


def _running(bed: TestBed, which: str, name: str) -> bool:
    engine = bed.engine_a if which == "a" else bed.engine_b
    return engine.cli("ps", "-q", "--filter", f"name=^{name}$").strip() != ""


if __name__ == "__main__":
    sys.exit(main())
