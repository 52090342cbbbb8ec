"""Compression on the wire, on a link like a phone's: the same container moved to the bed's x86_64 device with
`compress = "none"` (the baseline), `"zstd"` and `"auto"`, interleaved, on the bed's link shaped like a phone's
(bench/link.py: `usb2`, `wifi`, `unshaped`).

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
from pathlib import Path

from bench.link import LINKS, shaped
from bench.migration import AWK, RECORDS_PER_MB, migrate_record
from tests.helpers import counts
from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent, daemon_config
from tests.testbed.emulated import install_emulated_image
from tests.testbed.images import TEST_IMAGE
from tests.testbed.proc import wait_for

AGENT_PORT = 8196
LABEL = "androcond-bench"
SETTINGS = ("none", "zstd", "auto")


def workload(kind: str, mb: int, random_image: str) -> list[str]:
    if kind == "heap":
        return [TEST_IMAGE, "/bin/busybox", "awk", AWK.format(n=mb * RECORDS_PER_MB)]
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
    with tempfile.TemporaryDirectory() as tmp, shaped(bed, args.link, [AGENT_PORT]) as at:
        work = Path(tmp)
        agent = DeviceAgent(bed, work, AGENT_PORT)
        host, port = at[AGENT_PORT]
        tables = "".join(f"""
[devices.{setting}]
address = "{host}:{port}"
identity = "{bed.device.client_key}"
known_hosts = "{agent.known_hosts(work / f'known_hosts-{setting}', host=host, port=port)}"
compress = "{setting}"
""" for setting in SETTINGS)
        config = daemon_config(agent, work, daemon=f'api = "unix:{work / "api.sock"}"\nlog_level = "warning"',
                               extra=tables)
        agent.start()
        daemon = run_daemon(config, work)
        try:
            random_image = install_emulated_image(bed.engine_a, work)
            wait_for((work / "api.sock").exists, timeout=30, what="daemon API")
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
