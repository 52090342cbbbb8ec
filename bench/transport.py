"""Transport throughput: androcond's push to the agent over the device namespace link, against OpenSSH's
`ssh host 'cat > /dev/null'` (and `cat > FILE`, which also writes to disk like the agent) on the same link, and
against asyncssh alone (bench/ssh_sink.py): the ceiling of any transport built on it.

Run as root:  .venv/bin/python -m bench.transport [--size-mb 256] [--runs 5]
Prints a Markdown table (median of the runs, MB/s, ratio to OpenSSH, and the machine's busy CPU seconds over
each run: both ends share this machine's cores, so a transfer's speed is bounded by what it costs them).
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
from bench.procfs import machine_cpu, peak_rss
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
        try:
            ours, plain, to_disk, bare = Run(), Run(), Run(), Run()
            ciphers: list[str] = []

            def push() -> float:
                seconds, cipher = asyncio.run(push_once(endpoint, payload))
                ciphers.append(cipher)
                return seconds

            for _ in range(args.runs):  # interleaved, so drift hits all four alike
                ours.measure(push)
                plain.measure(lambda: openssh_once(bed, payload, "/dev/null"))
                to_disk.measure(lambda: openssh_once(bed, payload, str(disk_target)))
                bare.measure(lambda: asyncio.run(bare_asyncssh_once(bed.device.device_ip, SINK_PORT,
                                                                    bed.device.client_key, payload)))
            agent_peak = peak_rss(agent.proc.pid) if agent.proc is not None else 0
        finally:
            disk_target.unlink(missing_ok=True)
            agent.stop()
            sink.kill()
            sink.wait()
    mb = args.size_mb * 1048576 / 1e6
    base = statistics.median(plain.seconds)
    rows = [("OpenSSH `cat > /dev/null` (baseline)", plain), ("OpenSSH `cat > FILE` (writes to disk)", to_disk),
            ("asyncssh alone → a sink that discards (the same ciphers, window and packets; no protocol)", bare),
            (f"androcond transport → agent (asyncssh, {ciphers[-1]}; digest checked on disk)", ours)]
    print(f"| {args.size_mb} MB over the namespace link, median of {args.runs} | seconds | MB/s | vs baseline "
          f"| CPU seconds, set-up included | cores busy (of {os.cpu_count()}) |")
    print("|---|---|---|---|---|---|")
    for name, run in rows:
        med = statistics.median(run.seconds)
        cpu = statistics.median(run.cpu)
        busy = statistics.median(c / w for c, w in zip(run.cpu, run.wall, strict=True))
        print(f"| {name} | {med:.2f} | {mb / med:.0f} | {base / med:.0%} | {cpu:.2f} | {busy:.2f} |")
    print(f"\nthe agent's peak RSS over the run: {agent_peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
