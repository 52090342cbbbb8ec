"""Transport throughput: androcond's push to the agent over the device namespace link, against OpenSSH's
`ssh host 'cat > /dev/null'` (and `cat > FILE`, which also writes to disk like the agent) on the same link.

Run as root:  .venv/bin/python -m bench.transport [--size-mb 256] [--runs 5]
Prints a Markdown table (median of the runs, MB/s, ratio to OpenSSH).
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
from pathlib import Path
from typing import cast

import asyncssh

from androcond.link.payload import OutgoingFile
from androcond.link.ssh import Endpoint
from androcond.link.transport import AgentConnection
from androcond.protocol import protocol_pb2 as pb
from bench.procfs import peak_rss
from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent
from tests.testbed.images import TEST_IMAGE

AGENT_PORT = 8024


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


def openssh_once(bed: TestBed, payload: Path, target: str) -> float:
    cmd = ["ssh", "-p", str(bed.sshd_port), "-i", str(bed.device.client_key), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           f"root@{bed.device.device_ip}", f"cat > {target}"]
    with payload.open("rb") as f:
        started = time.perf_counter()
        subprocess.run(cmd, stdin=f, check=True)
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
        try:
            ours, plain, to_disk, cipher = [], [], [], ""
            for _ in range(args.runs):  # interleaved, so drift hits all three alike
                seconds, cipher = asyncio.run(push_once(endpoint, payload))
                ours.append(seconds)
                plain.append(openssh_once(bed, payload, "/dev/null"))
                to_disk.append(openssh_once(bed, payload, str(disk_target)))
            agent_peak = peak_rss(agent.proc.pid) if agent.proc is not None else 0
        finally:
            disk_target.unlink(missing_ok=True)
            agent.stop()
    mb = args.size_mb * 1048576 / 1e6
    base = statistics.median(plain)
    rows = [("OpenSSH `cat > /dev/null` (baseline)", plain), ("OpenSSH `cat > FILE` (writes to disk)", to_disk),
            (f"androcond transport → agent (asyncssh, {cipher}; digest checked on disk)", ours)]
    print(f"| {args.size_mb} MB over the namespace link, median of {args.runs} | seconds | MB/s | vs baseline |")
    print("|---|---|---|---|")
    for name, samples in rows:
        med = statistics.median(samples)
        print(f"| {name} | {med:.2f} | {mb / med:.0f} | {base / med:.0%} |")
    print(f"\nthe agent's peak RSS over the run: {agent_peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
