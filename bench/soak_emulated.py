"""Soak of the emulated path, with faults: the heap program (two threads, a 16 MB heap, glibc; its counts written
to a file of its writable layer) moved back and forth between the host and the arm64 device, where it runs
under qemu-x86_64 (out: CRIU's dump made into the restorer's plan; home: read out of the emulator, rebuilt
natively by the restorer, then checkpointed by CRIU again on its next way out). A fault at a random point of
some moves (a fixed seed, logged); after every move the promise checked: each container runs in exactly one
place, the one the journal says, and its file counts on with each thread's counts consecutive from 1 (nothing
lost, nothing told twice). At the end: nothing left on the host (checkpoints, containerd's extractions, the
daemon's workspaces, the runtime's marks) and the daemon's memory over the run. Exits 1 on any violation.

Faults: an injected exception in the stream or before the commit (a daemon started with it), the daemon
SIGKILLed when the move enters checkpointing, streaming or restoring (a new daemon settles it), the device's
agent SIGKILLed (systemd starts it again) as the files of a way home travel. qemu's stub answers one reader
per run: a container whose way home rolled back after its readout cannot be read out again, and its next way
home is refused with that reason (counted as "refused"). Such a container is then replaced by a fresh one at
home, so that the soak goes on moving.

Run as root:  .venv/bin/python -m bench.soak_emulated [--moves 16] [--containers 2] [--seed 20261207]
(ANDROCOND_ARM64_ATTACH=<the JSON line of `python -m tests.testbed.arm64 boot`> uses a device booted already.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from androcond.agent.emulated import RUNTIME_MARKS
from androcond.criu.leftovers import extractions
from androcond.migration.stream import WORKSPACE_KINDS
from bench.soak_way_back import TERMINAL, Daemon, ask, report, rss, settled, state_line
from tests.testbed import TestBed
from tests.testbed.arm64 import Arm64Device, ensure_image
from tests.testbed.emulated import TUNABLES, install_emulated_image
from tests.testbed.proc import wait_for
from tests.testbed.twoisa import arm64_device_table

LABEL = "androcond-soak-emulated"
LOG = "/tmp/heap.log"
LINE = re.compile(r"^count (\d+) role (\d) sum ([0-9a-f]{16})$")
FAULTS = {"none": 6, "inject:stream": 1, "inject:commit": 1, "kill-daemon:checkpointing": 1,
          "kill-daemon:streaming": 1, "kill-daemon:restoring": 1, "kill-agent": 1}
REFUSED_AGAIN = "cannot be read out"


def counts(text: str) -> dict[int, list[int]]:
    lines = [LINE.match(line) for line in text.splitlines()]
    return {role: [int(m[1]) for m in lines if m and int(m[2]) == role] for role in (0, 1)}


class Places:
    """Where a container runs and what its file says, on the host (engine A) or the arm64 device (over adb)."""

    def __init__(self, bed: TestBed, device: Arm64Device) -> None:
        self.bed, self.device = bed, device

    def running_home(self, name: str) -> bool:
        out = self.bed.engine_a.cli("inspect", "-f", "{{.State.Running}}", name, check=False)
        return out.strip() == "true"

    def running_device(self, name: str) -> bool:
        out = self.device.adb_shell(f"docker inspect -f '{{{{.State.Running}}}}' {name} 2>/dev/null || true",
                                    timeout=120)
        return out.strip() == "true"

    def log(self, name: str, where: str) -> str:
        if where == "host":
            return self.bed.engine_a.cli("exec", name, "cat", LOG, check=False)
        upper = self.device.adb_shell(f"docker inspect -f '{{{{.GraphDriver.Data.UpperDir}}}}' {name}",
                                      timeout=120).strip()
        return self.device.adb_shell(f"cat {upper}{LOG}", timeout=120)

    def counts_on(self, name: str, where: str, timeout: float = 180) -> str:
        """'' once both threads counted on past what the file says now, consecutive from 1; else what is wrong."""
        before = counts(self.log(name, where))
        try:
            wait_for(lambda: all(len(c) >= len(before[r]) + 2 for r, c in counts(self.log(name, where)).items()),
                     timeout=timeout, interval=2, what=f"{name} counting on {where}")
        except Exception as exc:
            return f"does not count on {where}: {exc}"
        now = counts(self.log(name, where))
        for role, seen in now.items():
            if seen != list(range(1, len(seen) + 1)):
                return f"thread {role}'s counts are not consecutive from 1 on {where}: {seen[:3]}…{seen[-3:]}"
        return ""

    def remove_everywhere(self, name: str) -> None:
        self.bed.engine_a.cli("rm", "-f", name, check=False)
        self.device.adb_shell(f"docker rm -f {name} >/dev/null 2>&1 || true", timeout=120)


def start(bed: TestBed, image: str, name: str) -> None:
    bed.engine_a.cli("run", "-d", "--name", name, "--label", f"{LABEL}=1", "-e", TUNABLES, image, "/bin/sh", "-c",
                     f"exec /bin/heap 16 > {LOG}")


def leftovers(bed: TestBed, state_dir: Path, before: set[Path]) -> list[str]:
    """The daemon's workspaces, the host agent's spooled images and restorer directories, the engine's
    checkpoints and containerd's extractions, the runtime's marks."""
    found = [str(p) for p in extractions() - before]
    found += [str(p) for p in (bed.engine_a.data_root / "containers").glob("*/checkpoints/*")]
    for part in (*WORKSPACE_KINDS, "home/images", "home/emulated"):
        found += [str(p) for p in (state_dir / part).glob("*")]
    found += [str(p) for p in RUNTIME_MARKS.glob("*")] if RUNTIME_MARKS.is_dir() else []
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--moves", type=int, default=16)
    parser.add_argument("--containers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"seed {args.seed}, {args.moves} moves of {args.containers} containers, emulated on the arm64 device",
          flush=True)
    bed = TestBed().up()
    violations: list[str] = []
    outcomes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        attach = os.environ.get("ANDROCOND_ARM64_ATTACH")
        device = Arm64Device.attached(attach) if attach else Arm64Device(work / "arm64", ensure_image()).up()
        places = Places(bed, device)
        config = work / "androcond.toml"
        config.write_text(f"""
[daemon]
state_dir = "{work / 'state'}"
api = "unix:{work / 'api.sock'}"
log_format = "json"
[docker]
host = "{bed.engine_a.host}"
runc_root = "{bed.engine_a.runc_root}"
{arm64_device_table(device, work)}
[timeouts]
connect = 60
resolve_backoff_max = 2.0
""")
        image = install_emulated_image(bed.engine_a, work)
        before = extractions()
        serial = 0

        def fresh() -> str:
            nonlocal serial
            serial += 1
            name = f"soak-emu-{serial}-{os.getpid()}"
            start(bed, image, name)
            return name

        names = [fresh() for _ in range(args.containers)]
        where = dict.fromkeys(names, "host")
        samples: list[int] = []
        daemon = Daemon(config)
        started_all = time.monotonic()
        try:
            for name in names:
                wrong = places.counts_on(name, "host")
                if wrong:
                    violations.append(f"at the start: {name} {wrong}")
            for move in range(args.moves):
                name = rng.choice(names)
                place = "arm64" if where[name] == "host" else "host"
                fault = rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
                if fault == "kill-agent" and place != "host":
                    fault = "none"  # the device's agent is killed as the files of a way home travel
                kind, _, point = fault.partition(":")
                began = time.monotonic()
                if kind == "inject":
                    daemon.stop()
                    daemon = Daemon(config, f"{point}@{name}")
                mark = len(daemon.lines)
                client = ask(config, name, place)
                try:
                    if kind == "kill-daemon":
                        daemon.wait_for(state_line(name, point, *TERMINAL), 600, since=mark)
                        daemon.kill()
                        daemon = Daemon(config)
                    elif kind == "kill-agent":
                        daemon.wait_for(state_line(name, "streaming", *TERMINAL), 600, since=mark)
                        device.adb_shell("systemctl kill --kill-whom=main -s KILL androcond-agent.service",
                                         timeout=120)
                    out, _ = client.communicate(timeout=900)
                except BaseException:
                    client.kill()
                    raise
                record = json.loads(out) if out.strip() else {}
                state = record.get("state", "") or settled(config, name, timeout=900)
                if kind == "inject":
                    daemon.stop()
                    daemon = Daemon(config)
                refused_again = state == "rejected" and REFUSED_AGAIN in str(record.get("error", ""))
                outcomes["refused" if refused_again else state] = outcomes.get(
                    "refused" if refused_again else state, 0) + 1
                home, there = places.running_home(name), places.running_device(name)
                now = "host" if home and not there else "arm64" if there and not home else "?"
                line = (f"move {move + 1:2}: {name} {where[name]} → {place}, fault {fault}: {state}, runs on {now} "
                        f"({time.monotonic() - began:.1f} s)")
                print(line, flush=True)
                if now == "?":
                    violations.append(f"{line}: running at home {home}, on the device {there}")
                    break
                if (state == "done") != (now == place):
                    violations.append(f"{line}: the journal says {state}")
                where[name] = now
                wrong = places.counts_on(name, now)
                if wrong:
                    violations.append(f"after move {move + 1}: {name} {wrong}")
                if refused_again or (now == "arm64" and state == "rolled-back" and place == "host"):
                    # Read out once in this qemu's run: it cannot come home. A fresh one takes its place.
                    places.remove_everywhere(name)
                    replacement = fresh()
                    names[names.index(name)] = replacement
                    where[replacement] = "host"
                    print(f"          {name} read out once already: replaced by {replacement}", flush=True)
                if kind == "none":
                    samples.append(rss(daemon.proc.pid))
        finally:
            daemon.stop()
            for name in names:
                places.remove_everywhere(name)
            bed.engine_a.remove_containers(f"{LABEL}=1")
            left = leftovers(bed, work / "state", before)
            if not attach:
                device.down()
    print(f"outcomes: {outcomes} in {time.monotonic() - started_all:.0f} s")
    return report({"daemon": samples}, left, violations)


if __name__ == "__main__":
    sys.exit(main())
