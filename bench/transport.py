"""Transport throughput: androcond's push to the agent over the device namespace link, against OpenSSH's
`ssh host 'cat > /dev/null'` (and `cat > FILE`, which also writes to disk like the agent) on the same link, and
against asyncssh alone (bench/ssh_sink.py): the ceiling of any transport built on it.

Run as root:  .venv/bin/python -m bench.transport [--size-mb 256] [--runs 5]
Prints a Markdown table (median of the runs, MB/s, ratio to OpenSSH, and the machine's busy CPU seconds over
each run: both ends share this machine's cores, so a transfer's speed is bounded by what it costs them).

Each row runs twice in a row: first once the VM has handed its freed memory back to the hypervisor (touching
such memory again costs a fault on the host, and a transfer that lands on disk touches its size in new page
cache), then at once on the memory the first run just freed. Without that, a row that writes to disk measures
whatever memory the row before it left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import asyncssh

from androcond.link.payload import OutgoingFile
from androcond.link.ssh import Endpoint
from androcond.link.transport import AgentConnection
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol import ssh
from bench.procfs import machine_cpu, peak_rss, settle_freed_memory
from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent
from tests.testbed.images import TEST_IMAGE

AGENT_PORT = 8024
SINK_PORT = 8025


async def push_once(endpoint: Endpoint, payload: Path) -> tuple[float, str]:
    size = payload.stat().st_size
    spec = OutgoingFile(pb.CHECKPOINT, "pages-1.img", source=payload, size=size)
    begin = pb.Begin(migration_id=f"bench-{uuid.uuid4().hex}", container_name="", image=TEST_IMAGE,
                     create_config_json=json.dumps({"Image": TEST_IMAGE, "Cmd": ["/bin/true"]}),
                     checkpoint_name="bench", total_bytes=size, file_count=1)
    async with await AgentConnection.open(endpoint) as link:
        cipher = str(cast(asyncssh.SSHClientConnection, link._conn).get_extra_info("send_cipher"))
        await link.begin(begin)
        started = time.perf_counter()
        await link.send_files([spec])  # returns once the agent verified the digest on disk
        elapsed = time.perf_counter() - started
        await link.abort("benchmark")  # the agent removes the file and the prepared container
    return elapsed, cipher


async def bare_asyncssh_once(host: str, port: int, client_key: Path, payload: Path) -> float:
    """The same push through asyncssh alone (bench/ssh_sink.py discards it): no frames, digests or disk."""
    async with asyncssh.connect(host, port, username="root", client_keys=[str(client_key)], known_hosts=None,
                                agent_path=None, encryption_algs=ssh.CIPHERS) as conn:
        writer, reader, _ = await conn.open_session(encoding=None, window=ssh.CHANNEL_WINDOW,
                                                    max_pktsize=ssh.CHANNEL_PACKET)
        with payload.open("rb") as f:
            started = time.perf_counter()
            while chunk := f.read(1 << 20):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            got = int(await reader.read())
            elapsed = time.perf_counter() - started
    if got != payload.stat().st_size:
        raise RuntimeError(f"the sink read {got} bytes of {payload.stat().st_size}")
    return elapsed


def start_sink(bed: TestBed, work: Path) -> subprocess.Popen[bytes]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(work / "sink_host_key"))
    sink = subprocess.Popen(bed.device.nsenter(sys.executable, "-m", "bench.ssh_sink", str(SINK_PORT),
                                               str(work / "sink_host_key"), f"{bed.device.client_key}.pub"),
                            stdout=subprocess.PIPE)
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != b"ready":
        sink.kill()
        raise RuntimeError("the bare asyncssh sink did not start")
    return sink


def openssh_once(bed: TestBed, payload: Path, target: str) -> float:
    cmd = ["ssh", "-p", str(bed.sshd_port), "-i", str(bed.device.client_key), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           f"root@{bed.device.device_ip}", f"cat > {target}"]
    with payload.open("rb") as f:
        started = time.perf_counter()
        subprocess.run(cmd, stdin=f, check=True)
        return time.perf_counter() - started


class Run:
    """One row's samples: the transfer's seconds, and the machine's busy CPU seconds (both ends run here) with
    the wall seconds they were counted over (the whole run, its set-up included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def measure(self, once: Callable[[], float]) -> None:
        """Run `once`, which returns the seconds of its own transfer (set-up left out)."""
        busy, started = machine_cpu()[0], time.perf_counter()
        self.seconds.append(once())
        self.wall.append(time.perf_counter() - started)
        self.cpu.append(machine_cpu()[0] - busy)


def local_copy_once(payload: Path, target: Path) -> float:
    """The device's disk alone: `cat` from tmpfs into a new file on the same disk, no link (the writes' own
    cost, which every row that lands on disk pays)."""
    with payload.open("rb") as f, target.open("wb") as out:
        started = time.perf_counter()
        subprocess.run(["cat"], stdin=f, stdout=out, check=True)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bed = TestBed().up()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm, tempfile.TemporaryDirectory() as work_dir:
        payload = Path(shm) / "payload"
        with payload.open("wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1 << 20))
        agent = DeviceAgent(bed, Path(work_dir), AGENT_PORT).start()
        endpoint = Endpoint(bed.device.device_ip, AGENT_PORT, "root", bed.device.client_key,
                            agent.known_hosts(Path(work_dir) / "known_hosts"))
        disk_target = bed.engine_b.data_root / f"bench-{uuid.uuid4().hex}"
        sink = start_sink(bed, Path(work_dir))
        ciphers: list[str] = []

        def push() -> float:
            seconds, cipher = asyncio.run(push_once(endpoint, payload))
            ciphers.append(cipher)
            return seconds

        def to_disk(once: Callable[[], float]) -> Callable[[], float]:
            """A new file each time, as the agent writes: a file overwritten in place would get back the pages
            it just freed."""
            def run() -> float:
                disk_target.unlink(missing_ok=True)
                return once()
            return run

        rows: list[tuple[str, Callable[[], float]]] = [
            ("OpenSSH `cat > /dev/null` (baseline)", lambda: openssh_once(bed, payload, "/dev/null")),
            ("OpenSSH `cat > FILE` (a new file on the device's disk)",
             to_disk(lambda: openssh_once(bed, payload, str(disk_target)))),
            ("asyncssh alone → a sink that discards (the same ciphers, window and packets; no protocol)",
             lambda: asyncio.run(bare_asyncssh_once(bed.device.device_ip, SINK_PORT, bed.device.client_key,
                                                    payload))),
            ("androcond transport → agent (digest checked on disk)", push),
            ("no link: `cat` from tmpfs into a new file on the device's disk", to_disk(
                lambda: local_copy_once(payload, disk_target))),
        ]
        fresh = {name: Run() for name, _ in rows}
        reused = {name: Run() for name, _ in rows}
        try:
            for _ in range(args.runs):  # interleaved, so drift hits every row alike
                for name, once in rows:
                    # Each row twice in a row: first on memory the VM has handed back (its first touch costs a
                    # fault on the host), then at once again, on the memory the first one just freed.
                    disk_target.unlink(missing_ok=True)
                    settle_freed_memory()
                    fresh[name].measure(once)
                    reused[name].measure(once)
            agent_peak = peak_rss(agent.proc.pid) if agent.proc is not None else 0
        finally:
            disk_target.unlink(missing_ok=True)
            agent.stop()
            sink.kill()
            sink.wait()
    mb = args.size_mb * 1048576 / 1e6
    print(f"androcond's cipher: {ciphers[-1]}; {os.cpu_count()} cores; median of {args.runs}\n")
    print(f"| {args.size_mb} MB over the namespace link | memory | seconds | MB/s | vs baseline "
          "| CPU seconds, set-up included | cores busy |")
    print("|---|---|---|---|---|---|---|")
    for memory, runs in (("handed back", fresh), ("just freed", reused)):
        base = statistics.median(runs[rows[0][0]].seconds)
        for name, _ in rows:
            run = runs[name]
            med = statistics.median(run.seconds)
            cpu = statistics.median(run.cpu)
            busy = statistics.median(c / w for c, w in zip(run.cpu, run.wall, strict=True))
            print(f"| {name} | {memory} | {med:.2f} | {mb / med:.0f} | {base / med:.0%} | {cpu:.2f} | {busy:.2f} |")
    print(f"\nthe agent's peak RSS over the run: {agent_peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
