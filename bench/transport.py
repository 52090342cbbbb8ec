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

import asyncssh

from androcond.agent import protocol_pb2 as pb
from androcond.transport import AgentConnection, Endpoint, OutgoingFile
from tests.testbed import TestBed
from tests.testbed.images import TEST_IMAGE
from tests.testbed.proc import stop_pid, wait_for

AGENT_PORT = 8024


def start_agent(bed: TestBed, work: Path) -> tuple[subprocess.Popen[bytes], Endpoint]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(work / "host_key")
    (work / "host_key").chmod(0o600)
    config = work / "agent.toml"
    config.write_text(f"""
[agent]
docker_host = "{bed.engine_b.host}"
spool_dir = "{work / 'spool'}"
listen = "0.0.0.0:{AGENT_PORT}"
host_key = "{work / 'host_key'}"
authorized_keys = "{bed.device.authorized_keys}"
""")
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen(bed.device.nsenter(sys.executable, "-m", "androcond", "agent", "serve", "--config",
                                               str(config)), stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: _listening(bed.device.device_ip, AGENT_PORT), timeout=30, what="agent serve")
    known = work / "known_hosts"
    known.write_text(f"[{bed.device.device_ip}]:{AGENT_PORT} {key.export_public_key().decode()}")
    return proc, Endpoint(bed.device.device_ip, AGENT_PORT, "root", bed.device.client_key, known)


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def push_once(endpoint: Endpoint, payload: Path) -> tuple[float, str]:
    size = payload.stat().st_size
    spec = OutgoingFile(pb.CHECKPOINT, "pages-1.img", source=payload, size=size)
    begin = pb.Begin(migration_id=f"bench-{uuid.uuid4().hex}", container_name="", image=TEST_IMAGE,
                     create_config_json=json.dumps({"Image": TEST_IMAGE, "Cmd": ["/bin/true"]}),
                     checkpoint_name="bench", total_bytes=size, file_count=1)
    async with await AgentConnection.open(endpoint) as link:
        cipher = str(link._conn.get_extra_info("send_cipher"))
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
        proc, endpoint = start_agent(bed, Path(work_dir))
        disk_target = bed.engine_b.data_root / f"bench-{uuid.uuid4().hex}"
        try:
            ours, plain, to_disk, cipher = [], [], [], ""
            for _ in range(args.runs):  # interleaved, so drift hits all three alike
                seconds, cipher = asyncio.run(push_once(endpoint, payload))
                ours.append(seconds)
                plain.append(openssh_once(bed, payload, "/dev/null"))
                to_disk.append(openssh_once(bed, payload, str(disk_target)))
        finally:
            disk_target.unlink(missing_ok=True)
            stop_pid(proc.pid, what="agent serve")
    mb = args.size_mb * 1048576 / 1e6
    base = statistics.median(plain)
    rows = [("OpenSSH `cat > /dev/null` (baseline)", plain), ("OpenSSH `cat > FILE` (writes to disk)", to_disk),
            (f"androcond transport → agent (asyncssh, {cipher}; digest checked on disk)", ours)]
    print(f"| {args.size_mb} MB over the namespace link, median of {args.runs} | seconds | MB/s | vs baseline |")
    print("|---|---|---|---|")
    for name, samples in rows:
        med = statistics.median(samples)
        print(f"| {name} | {med:.2f} | {mb / med:.0f} | {base / med:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
