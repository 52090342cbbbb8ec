"""What androcond's runc wrapper costs per runtime call: the device engine runs it for every `create`,
`start`, `state`, `kill`, `delete` of a migrated container. Same run, interleaved, medians: `runc --version`
straight, and through the wrapper (a POSIX shell script that execs runc).

Run:  .venv/bin/python -m bench.runtime [--calls 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from androcond.agent.device import runtime_path


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    runc = shutil.which("runc")
    if runc is None:
        print("runc is not installed", file=sys.stderr)
        return 2
    straight: list[float] = []
    wrapped: list[float] = []
    for _ in range(args.calls):
        straight.append(timed([runc, "--version"]))
        wrapped.append(timed([str(runtime_path()), "--version"]))
    med = statistics.median
    print(f"| runc call | median (ms) | p90 (ms) |   ({args.calls} calls each, interleaved)")
    print("|---|---|---|")
    for label, samples in (("runc", straight), ("through androcond-runc", wrapped)):
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"| {label} | {med(samples) * 1000:.2f} | {p90 * 1000:.2f} |")
    print(f"| added per call | {(med(wrapped) - med(straight)) * 1000:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
