"""The way back against the way out, on the same test bed, in the same run, interleaved: a counter touching
N MB moves host → namespace device (`androcond migrate --to pixel`), then back (`--to host`). Downtime is the
journal's (from the freeze until the target confirmed it runs; with post-copy, until it resumed), total the
command's wall time. `--flat` adds a second trip through the same agent as the device `pixel-flat`, whose table
says `lazy = true` and `freeze = "flat"`: out with the host's flat freeze, back with the device's (post-copy
back), against the whole way back of the same run.

Run as root:  .venv/bin/python -m bench.way_back [--sizes 16,256] [--runs 3] [--flat]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench.migration import CHECK_EVERY, LABEL, log_times, migrate_record
from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent, daemon_config
from tests.testbed.images import TEST_IMAGE
from tests.testbed.proc import wait_for

AGENT_PORT = 8197
WAYS = (("out", "pixel"), ("back", "host"))
FLAT_WAYS = (("out-flat", "pixel-flat"), ("back-flat", "host"))
STEPS = ("checkpoint_s", "device_checkpoint_s", "pull_s", "stream_s", "restore_s", "last_page_s")
LABELS = {"out": "host → device", "back": "device → host", "out-flat": "host → device, flat freeze",
          "back-flat": "device → host, post-copy back"}


def flat_device(agent: DeviceAgent, work: Path) -> str:
    """The same agent as a second device, moving with the flat freeze both ways."""
    host, port = agent.bed.device.device_ip, agent.port
    return f"""[devices.pixel-flat]
address = "{host}:{port}"
identity = "{agent.bed.device.client_key}"
known_hosts = "{agent.known_hosts(work / "known_hosts-flat", host=host, port=port)}"
lazy = true
freeze = "flat"
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="16,256", help="touched memory of the container, MB (comma list)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flat", action="store_true", help="also out and back with the flat freeze")
    args = parser.parse_args()
    ways = WAYS + (FLAT_WAYS if args.flat else ())
    sizes = [int(s) for s in args.sizes.split(",")]
    bed = TestBed().up()
    results: dict[tuple[int, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        agent = DeviceAgent(bed, work, AGENT_PORT)
        config = daemon_config(agent, work, daemon=f'api = "unix:{work / "api.sock"}"\nlog_level = "warning"',
                               extra=flat_device(agent, work) if args.flat else "")
        agent.start()
        daemon = subprocess.Popen([sys.executable, "-m", "androcond", "run", "--config", str(config)],
                                  stderr=(work / "daemon.log").open("wb"))
        try:
            wait_for((work / "api.sock").exists, timeout=30, what="daemon API")
            for mb in sizes:
                for _ in range(args.runs):
                    name = f"bench-back-{mb}-{uuid.uuid4().hex[:6]}"
                    bed.engine_a.cli("run", "-d", "--name", name, "--label", f"{LABEL}=1", TEST_IMAGE,
                                     "/bin/counter", str(mb), str(CHECK_EVERY))
                    wait_for(lambda: len(log_times(bed.engine_a, name)) >= 3, timeout=120,  # noqa: B023 - used at once
                             what="counting")
                    for way, place in ways:
                        total, record = migrate_record(config, name, place, keep_source=False)
                        row = results.setdefault((mb, way), {})
                        row.setdefault("total", []).append(total)
                        row.setdefault("downtime", []).append(record["timings"]["downtime_s"])
                        for step in STEPS:
                            row.setdefault(step, []).append(record["timings"].get(step, 0.0))
                    wait_for(lambda: len(log_times(bed.engine_a, name)) >= 2, timeout=60,  # noqa: B023 - used at once
                             what="counting at home")
                    bed.engine_a.remove_containers(f"{LABEL}=1")
                    bed.engine_b.remove_containers(f"{LABEL}=1")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            agent.stop()
            bed.engine_a.remove_containers(f"{LABEL}=1")
            bed.engine_b.remove_containers(f"{LABEL}=1")
    med = statistics.median
    print(f"| touched memory | way | downtime (s) | total (s) | checkpoint | of it: device's checkpoint | of it: "
          f"files to the host | stream | restore | last page | vs the way out (downtime) |   (median of {args.runs})")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mb in sizes:
        out = med(results[(mb, "out")]["downtime"])
        for way, _place in ways:
            row, label = results[(mb, way)], LABELS[way]
            print(f"| {mb} MB | {label} | {med(row['downtime']):.2f} | {med(row['total']):.2f} | "
                  + " | ".join(f"{med(row[s]):.2f}" for s in STEPS) + f" | {med(row['downtime']) / out:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
