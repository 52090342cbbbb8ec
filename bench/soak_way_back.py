"""Soak of the way out and the way back, with faults: containers moved back and forth between the host and the
namespace device, a fault at a random point of some moves (a fixed seed, logged), and after every move the
promise checked — each container runs in exactly one place and counts on. At the end: nothing left on either
disk (checkpoints, containerd's extractions, the daemon's workspaces) and the daemon's and agent's memory over
the run. Exits 1 on any violation.

Faults: an injected exception in the stream or before the commit (a daemon started with it), the daemon
SIGKILLed when the move enters checkpointing, streaming or restoring (a new daemon settles it), the device's
agent SIGKILLed while files travel (started again at once; the resolver settles the move).

`--flat`: the device's table says `lazy = true` and `freeze = "flat"`, so every move goes by post-copy from a
flat freeze (out from the host's, home from the device's), and the faults add an injected exception and the
daemon SIGKILLed at `paging` (the container resumed, its memory still arriving).

Run as root:  .venv/bin/python -m bench.soak_way_back [--moves 50] [--containers 3] [--seed 20261205] [--flat]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from androcond.criu.leftovers import extractions
from bench.migration import CHECK_EVERY, LABEL, log_times
from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent, daemon_config
from tests.testbed.engines import DOCKER_CLI, DockerEngine
from tests.testbed.images import TEST_IMAGE
from tests.testbed.proc import wait_for

AGENT_PORT = 8195
FAULTS = {"none": 8, "inject:stream": 1, "inject:commit": 1, "kill-daemon:checkpointing": 1,
          "kill-daemon:streaming": 1, "kill-daemon:restoring": 1, "kill-agent": 1}
FLAT_FAULTS = {**FAULTS, "inject:paging": 1, "kill-daemon:paging": 1}
TERMINAL = ("done", "rolled-back", "failed", "rejected")


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Daemon:
    """`androcond run` with its JSON log lines collected by a reader thread."""

    def __init__(self, config: Path, fault: str = "") -> None:
        env = {**os.environ, "ANDROCOND_INJECT_FAULT": fault} if fault else None
        self.proc = subprocess.Popen([sys.executable, "-m", "androcond", "run", "--config", str(config)],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        self.lines: list[dict[str, Any]] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda e: e.get("msg") == "ready", 60)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            with self._seen:
                self.lines.append(entry)
                self._seen.notify_all()

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float, since: int = 0) -> dict[str, Any]:
        """The first line from line `since` on that matches."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                found = next((e for e in self.lines[since:] if match(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("log line not seen")
                self._seen.wait(left)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def state_line(name: str, *states: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("msg") == "migration state" and e.get("container") == name and e.get("state") in states


def counted_past(engine: DockerEngine, name: str, lines: int) -> Callable[[], bool]:
    return lambda: len(log_times(engine, name)) > lines


def files_travel(name: str) -> Callable[[dict[str, Any]], bool]:
    """The way back: the device froze it and sends its files; the way out: the host streams to the device."""
    return lambda e: e.get("container") == name and (
        e.get("msg") == "checkpointed on the device"
        or (e.get("msg") == "migration state" and e.get("state") in ("streaming", *TERMINAL)))


def settled(config: Path, name: str, timeout: float = 300) -> str:
    """The state of the container's last migration, once it is final (asked of the daemon's journal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "androcond", "migrations", "--json", "--config", str(config)],
                             capture_output=True, text=True, check=False).stdout
        mine = [m for m in json.loads(out or '{"migrations": []}')["migrations"] if m["container_name"] == name]
        latest = max(mine, key=lambda m: m["created_at"], default=None)
        if latest is not None and latest["state"] in TERMINAL:
            return str(latest["state"])
        time.sleep(0.5)  # polling the journal of another process: no event to wait on
    return "unsettled"


def ask(config: Path, name: str, place: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "androcond", "migrate", name, "--to", place, "--wait", "--json",
                             "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def running(engine: DockerEngine, name: str) -> bool:
    out = subprocess.run([DOCKER_CLI, "-H", engine.host, "inspect", "-f", "{{.State.Running}}", name],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0 and out.stdout.strip() == "true"


def leftovers(bed: TestBed, state_dir: Path, before: set[Path]) -> list[str]:
    found = [str(p) for p in extractions() - before]
    for engine in (bed.engine_a, bed.engine_b):
        found += [str(p) for p in (engine.data_root / "containers").glob("*/checkpoints/*")]
    for part in ("pulled", "recode", "lazy", "emulation", "home/images"):
        found += [str(p) for p in (state_dir / part).glob("*")]
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--containers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261205)
    parser.add_argument("--flat", action="store_true", help="post-copy from a flat freeze, both ways")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    faults = FLAT_FAULTS if args.flat else FAULTS
    print(f"seed {args.seed}, {args.moves} moves of {args.containers} containers"
          + (", post-copy from a flat freeze both ways" if args.flat else ""), flush=True)
    bed = TestBed().up()
    violations: list[str] = []
    outcomes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        agent = DeviceAgent(bed, work, AGENT_PORT)
        config = daemon_config(agent, work, daemon=f'api = "unix:{work / "api.sock"}"\nlog_format = "json"',
                               device='lazy = true\nfreeze = "flat"' if args.flat else "",
                               extra="[timeouts]\nresolve_backoff_max = 2.0")
        agent.start()
        before = extractions()
        names = [f"soak-{i}-{os.getpid()}" for i in range(args.containers)]
        where = dict.fromkeys(names, "host")
        daemon = Daemon(config)
        samples: dict[str, list[int]] = {"daemon": [], "agent": []}
        try:
            for name in names:
                bed.engine_a.cli("run", "-d", "--name", name, "--label", f"{LABEL}=1", TEST_IMAGE, "/bin/counter",
                                 "16", str(CHECK_EVERY))
            for name in names:
                wait_for(counted_past(bed.engine_a, name, 1), timeout=60, what="counting")
            for move in range(args.moves):
                name = rng.choice(names)
                place = "pixel" if where[name] == "host" else "host"
                fault = rng.choices(list(faults), weights=list(faults.values()))[0]
                kind, _, point = fault.partition(":")
                started = time.monotonic()
                print(f"move {move + 1:2}: {name} {where[name]} → {place}, fault {fault} …", flush=True)
                if kind == "inject":
                    daemon.stop()
                    daemon = Daemon(config, f"{point}@{name}")
                mark = len(daemon.lines)  # this move's lines only
                client = ask(config, name, place)
                try:
                    if kind == "kill-daemon":
                        daemon.wait_for(state_line(name, point, *TERMINAL), 120, since=mark)
                        daemon.kill()
                        daemon = Daemon(config)
                    elif kind == "kill-agent":
                        daemon.wait_for(files_travel(name), 120, since=mark)
                        agent.kill()
                        agent.start()
                    out, _ = client.communicate(timeout=300)
                except BaseException:
                    client.kill()
                    raise
                record = json.loads(out) if out.strip() else {}
                state = record.get("state", "")
                if not state:  # the daemon that answered it was killed: the next one settles it (or had)
                    state = settled(config, name)
                if kind == "inject":
                    daemon.stop()
                    daemon = Daemon(config)
                outcomes[state] = outcomes.get(state, 0) + 1
                home, device = running(bed.engine_a, name), running(bed.engine_b, name)
                now = "host" if home and not device else "pixel" if device and not home else "?"
                line = (f"move {move + 1:2}: {name} {where[name]} → {place}, fault {fault}: {state}, "
                        f"runs on {now} ({time.monotonic() - started:.1f} s)")
                print(line, flush=True)
                if now == "?":
                    violations.append(f"{line}: running at home {home}, on the device {device}")
                    break
                if (state == "done") != (now == place):
                    violations.append(f"{line}: the journal says {state}")
                where[name] = now
                for other in names:
                    engine = bed.engine_a if where[other] == "host" else bed.engine_b
                    seen = log_times(engine, other)
                    try:
                        wait_for(counted_past(engine, other, len(seen)), timeout=30, what=f"{other} counting")
                    except Exception:
                        violations.append(f"after move {move + 1}: {other} does not count on {where[other]}")
                if kind == "none":
                    samples["daemon"].append(rss(daemon.proc.pid))
                    samples["agent"].append(rss(agent.proc.pid if agent.proc else 0))
        finally:
            daemon.stop()
            agent.stop()
            bed.engine_a.remove_containers(f"{LABEL}=1")
            bed.engine_b.remove_containers(f"{LABEL}=1")
        left = leftovers(bed, work / "state", before)
    print(f"outcomes: {outcomes}")
    return report(samples, left, violations)


def report(samples: dict[str, list[int]], left: list[str], violations: list[str]) -> int:
    """A soak's summary (memory over the fault-free moves, what was left, each violation); its exit status."""
    for who, sampled in samples.items():
        values = [v for v in sampled if v]
        if len(values) >= 2:
            print(f"{who} RSS over the fault-free moves: first {values[0] >> 20} MiB, last {values[-1] >> 20} MiB, "
                  f"max {max(values) >> 20} MiB ({len(values)} samples; restarts reset it)")
    if left:
        violations.append(f"left on disk: {left[:10]}")
    for violation in violations:
        print("VIOLATION:", violation)
    print("0 lost, 0 running twice" if not any("running at home" in v for v in violations) else "")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
