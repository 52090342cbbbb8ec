"""The emulated move on the test bed: an ordinary dynamically linked x86_64 program (two threads, a 16 or 64 MB
heap; tests/testbed/programs/emulated/heap.c) moved by the daemon from engine A to the arm64 device, where it
resumes under the device's qemu-x86_64, rebuilt by androcond's restorer. The baseline in the same run is the
same container moved to the bed's x86_64 device (engine B: same ISA, CRIU restores it), interleaved.

Times are the daemon's own (its journal): checkpoint, plan (the restorer's plan made from the dump), transfer,
restore (until the device answers: for the emulated move the container's start, the restorer and the agent's
probation), and the restorer's own part of it (`restorer_s`: from the container's start to the restorer's
"ok"). Downtime is from the freeze to the device's answer; "resumed after" is when the program ran again on
the device (downtime less the part of the restore after the restorer's ok: the agent's probation, while the
source still waits).

With `--home`, each program moved to the arm64 device comes home again (`androcond migrate NAME --to host`): the
device reads it out of its emulator (checkpoint: the readout), its plan and pages come to engine A, where
androcond's restorer resumes it natively (restore: the container's start, the restorer and the probation). The
way out of the same run is its baseline.

Then the cost of emulation itself: a fixed compute loop (bench/programs/compute.c) built static for x86_64 and
run under the device's qemu-x86_64, against the same loop built for aarch64 and run natively there.

Run as root:  .venv/bin/python -m bench.emulated [--sizes 16,64] [--runs 3] [--steps 200000000] [--home]
(ANDROCOND_ARM64_ATTACH=<the JSON line of `python -m tests.testbed.arm64 boot`> uses a device booted already.)
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from bench.arm64_daemon import Arm64Bench, arm64_bench
from bench.migration import androcond_flow
from tests.testbed.arm64 import Arm64Device
from tests.testbed.emulated import TUNABLES, install_emulated_image
from tests.testbed.proc import run, wait_for

AGENT_PORT = 8198
LABEL = "androcond-bench"
COMPUTE = Path(__file__).parent / "programs" / "compute.c"
PHASES = ("checkpoint_s", "plan_s", "stream_s", "restore_s", "restorer_s")
TARGETS = (("pixel", "x86_64 device (engine B), same ISA, CRIU"), ("arm64", "arm64 device, emulated"))
SECONDS = re.compile(r"steps (\d+) sum ([0-9a-f]{16}) seconds ([0-9.]+)")


def _row(total: float, timings: dict[str, float]) -> dict[str, float]:
    row = {phase: timings.get(phase, 0.0) for phase in PHASES}
    row["downtime"] = timings["downtime_s"]
    row["total"] = total
    # The agent answers after its probation; the program was running again once the restorer said ok.
    row["resumed"] = row["downtime"] - row["restore_s"] + row["restorer_s"] if row["restorer_s"] else row["downtime"]
    return row


def move_once(on: Arm64Bench, image: str, mb: int, target: str, *, home: bool = False) -> dict[str, dict[str, float]]:
    """The move to `target`, by its row; with `home` (the arm64 target) also the way home, as "home"."""
    bed, device = on.bed, on.device
    name = f"bench-emulated-{target}-{uuid.uuid4().hex[:6]}"
    bed.engine_a.cli("run", "-d", "--name", name, "--label", f"{LABEL}=1", "-e", TUNABLES, image, "/bin/heap",
                     str(mb))
    try:
        wait_for(lambda: "count 2 role 0" in bed.engine_a.cli("logs", name), timeout=120, what=f"{name} counting")
        rows = {target: _row(*androcond_flow(on.config, name, target, keep_source=False))}
        if home and target == "arm64":
            rows["home"] = _row(*androcond_flow(on.config, name, "host", keep_source=False))
            wait_for(lambda: "count" in bed.engine_a.cli("logs", name), timeout=60, what=f"{name} counting at home")
    finally:
        bed.engine_a.remove_containers(f"{LABEL}=1")
        bed.engine_b.remove_containers(f"{LABEL}=1")
        device.adb_shell(f"docker rm -f {name} >/dev/null 2>&1 || true", timeout=120)
    return rows


def compute_loop(device: Arm64Device, work: Path, steps: int, runs: int) -> dict[str, list[float]]:
    """The loop's own seconds on the device: x86_64 under its qemu-x86_64, aarch64 natively; interleaved."""
    built = {"x86_64": (work / "compute-x86_64", "gcc"), "aarch64": (work / "compute-aarch64", "aarch64-linux-gnu-gcc")}
    for binary, compiler in built.values():
        run([compiler, "-O2", "-static", "-o", str(binary), str(COMPUTE)])
        device.adb_push(binary, f"/tmp/{binary.name}")
    emulator = device.adb_shell("command -v qemu-x86_64", timeout=60).strip()
    commands = {"x86_64": f"{emulator} /tmp/compute-x86_64 {steps}", "aarch64": f"/tmp/compute-aarch64 {steps}"}
    seconds: dict[str, list[float]] = {isa: [] for isa in commands}
    sums: set[str] = set()
    for _ in range(runs):
        for isa, command in commands.items():
            found = SECONDS.search(device.adb_shell(command, timeout=1800))
            if found is None:
                raise RuntimeError(f"the {isa} compute loop printed no result")
            sums.add(found[2])
            seconds[isa].append(float(found[3]))
    if len(sums) != 1:
        raise RuntimeError(f"the two builds of the loop disagree: {sums}")
    device.adb_shell("rm -f /tmp/compute-x86_64 /tmp/compute-aarch64", timeout=60)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="16,64", help="heap of the program, MB (comma list)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200_000_000, help="steps of the compute loop")
    parser.add_argument("--home", action="store_true", help="bring each emulated program home again")
    parser.add_argument("--no-loop", action="store_true", help="skip the compute loop")
    args = parser.parse_args()
    targets = TARGETS + ((("home", "home from the arm64 device, natively"),) if args.home else ())
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, arm64_bench(Path(tmp), AGENT_PORT, LABEL) as on:
        image = install_emulated_image(on.bed.engine_a, Path(tmp))
        for target, _ in TARGETS:  # not counted: the first move also ships the image to the device
            move_once(on, image, sizes[0], target)
        for _ in range(args.runs):
            for mb in sizes:
                for target, _ in TARGETS:  # interleaved: drift hits both alike
                    for row_target, row in move_once(on, image, mb, target, home=args.home).items():
                        results.setdefault((mb, row_target), []).append(row)
        loop = None if args.no_loop else compute_loop(on.device, Path(tmp), args.steps, args.runs)
    med = statistics.median
    print(f"| heap, median of {args.runs} | checkpoint | plan | transfer | restore | of it the restorer | "
          "downtime (s) | resumed after (s) | total (s) | downtime vs same ISA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mb in sizes:
        base = med(r["downtime"] for r in results[(mb, "pixel")])
        for target, label in targets:
            rows = results[(mb, target)]
            cells = [med(r[p] for r in rows) for p in (*PHASES, "downtime", "resumed", "total")]
            print(f"| {mb} MB, {label} | " + " | ".join(f"{c:.3f}" if c < 0.1 else f"{c:.2f}" for c in cells) +
                  f" | {med(r['downtime'] for r in rows) / base:.2f}× |")
    if loop is None:
        return 0
    x86, a64 = med(loop["x86_64"]), med(loop["aarch64"])
    print(f"\ncompute loop, {args.steps} steps, median of {args.runs} on the device: aarch64 native {a64:.2f} s, "
          f"x86_64 under qemu-x86_64 {x86:.2f} s: {x86 / a64:.1f}× slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
