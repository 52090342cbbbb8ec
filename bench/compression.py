"""Compression on the wire, on a link like a phone's: the same container moved to the bed's x86_64 device with
`compress = "none"` (the baseline), `"zstd"` and `"auto"`, interleaved, on the bed's veth shaped with tc:

- `usb2`: 300 Mbit/s token bucket each way (about 38 MB/s, what USB 2 adb gives on a real phone);
- `wifi-rate`: 120 Mbit/s (about 15 MB/s), Wi-Fi adb's rate without its 10 ms RTT: adding delay needs tc's
  netem, which the bed's kernel lacks (the qdisc kind is unknown there);
- `unshaped`: the veth as it is (faster than the compressor).

Two workloads: an interpreter's heap (busybox awk holding an array of short records: strings and hash nodes,
as real programs' memory is) and a heap of xorshift output (tests/testbed/programs/emulated/heap.c,
incompressible: the worst case, where `auto` must send raw). Figures
are the daemon's journal: downtime (freeze to the device's answer), total, and the bytes sent against the
bytes the link carried.

Run as root:  .venv/bin/python -m bench.compression [--link usb2] [--mb 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.migration import migrate_record
from tests.helpers import counts
from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent, daemon_config
from tests.testbed.emulated import install_emulated_image
from tests.testbed.images import TEST_IMAGE
from tests.testbed.proc import run, wait_for

AGENT_PORT = 8196
LABEL = "androcond-bench"
LINKS: dict[str, str] = {"usb2": "300mbit", "wifi-rate": "120mbit", "unshaped": ""}
SETTINGS = ("none", "zstd", "auto")
RECORDS_PER_MB = 9000  # busybox awk: about 110 MB resident for a million records
AWK = ('BEGIN { for (i = 0; i < {n}; i++) a[i] = "record " i " name-" i % 977 " value " i * 7; '
       'for (c = 1; ; c++) { print "count " c; fflush(); system("sleep 0.1") } }')


@contextmanager
def shaped(bed: TestBed, link: str) -> Iterator[None]:
    """tc on both ends of the device's veth for the duration; removed after, whatever happens."""
    rate = LINKS[link]
    ends = [["tc"], ["ip", "netns", "exec", bed.device.netns, "tc"]]
    devices = [bed.device.host_if, bed.device.device_if]
    try:
        for tc, dev in zip(ends, devices, strict=True):
            if rate:
                run([*tc, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"])
        yield
    finally:
        for tc, dev in zip(ends, devices, strict=True):
            run([*tc, "qdisc", "del", "dev", dev, "root"], check=False)


def workload(kind: str, mb: int, random_image: str) -> list[str]:
    if kind == "heap":
        return [TEST_IMAGE, "/bin/busybox", "awk", AWK.replace("{n}", str(mb * RECORDS_PER_MB))]
    return [random_image, "/bin/heap", str(mb)]


def move_once(bed: TestBed, config: Path, kind: str, mb: int, setting: str, random_image: str) -> dict[str, float]:
    name = f"bench-compress-{setting}-{uuid.uuid4().hex[:6]}"
    bed.engine_a.cli("run", "-d", "--name", name, "--label", f"{LABEL}=1", *workload(kind, mb, random_image))
    try:
        wait_for(lambda: 2 in counts(bed.engine_a.cli("logs", name)), timeout=300, what=f"{name} counting")
        total, record = migrate_record(config, name, setting, keep_source=False)
    finally:
        bed.engine_a.remove_containers(f"{LABEL}=1")
        bed.engine_b.remove_containers(f"{LABEL}=1")
    timings = record["timings"]
    sent, wire = int(record.get("bytes_sent") or 0), int(record.get("wire_bytes") or 0)
    return {"downtime": timings["downtime_s"], "total": total, "sent": sent / 1e6, "wire": wire / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--link", choices=sorted(LINKS), default="usb2")
    parser.add_argument("--mb", type=int, default=128, help="memory of each workload, MB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bed = TestBed().up()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        agent = DeviceAgent(bed, work, AGENT_PORT)
        tables = "".join(f"""
[devices.{setting}]
address = "{bed.device.device_ip}:{AGENT_PORT}"
identity = "{bed.device.client_key}"
known_hosts = "{agent.known_hosts(work / f'known_hosts-{setting}')}"
compress = "{setting}"
""" for setting in SETTINGS)
        config = daemon_config(agent, work, daemon=f'api = "unix:{work / "api.sock"}"\nlog_level = "warning"',
                               extra=tables)
        agent.start()
        daemon = run_daemon(config, work)
        try:
            random_image = install_emulated_image(bed.engine_a, work)
            wait_for((work / "api.sock").exists, timeout=30, what="daemon API")
            with shaped(bed, args.link):
                for _ in range(args.runs):
                    for kind in ("heap", "xorshift"):
                        for setting in SETTINGS:  # interleaved: drift hits all alike
                            results.setdefault((kind, setting), []).append(
                                move_once(bed, config, kind, args.mb, setting, random_image))
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
            agent.stop()
            bed.engine_a.remove_containers(f"{LABEL}=1")
            bed.engine_b.remove_containers(f"{LABEL}=1")
    med = statistics.median
    print(f"| {args.mb} MB, link {args.link}, median of {args.runs} | sent (MB) | on the wire (MB) | "
          "downtime (s) | total (s) | total vs none |")
    print("|---|---|---|---|---|---|")
    for kind in ("heap", "xorshift"):
        base = med(r["total"] for r in results[(kind, "none")])
        for setting in SETTINGS:
            rows = results[(kind, setting)]
            print(f"| {kind}, compress = {setting} | {med(r['sent'] for r in rows):.0f} | "
                  f"{med(r['wire'] for r in rows):.0f} | {med(r['downtime'] for r in rows):.2f} | "
                  f"{med(r['total'] for r in rows):.2f} | {med(r['total'] for r in rows) / base:.2f}× |")
    return 0


def run_daemon(config: Path, work: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "androcond", "run", "--config", str(config)],
                            stderr=(work / "daemon.log").open("wb"))


if __name__ == "__main__":
    sys.exit(main())
