"""The cross-ISA move on the test bed: the two-ISA program (tests/recoder/programs/twoisa/) with 16 MB of touched
memory, moved by the daemon from engine A to the arm64 device (qemu-system-aarch64 under TCG, recoded to
aarch64) and, as the baseline in the same run, to the bed's x86_64 device (engine B, same ISA: no notify, no
recode), interleaved. Times are the daemon's own (its journal): notify (the program keeps running), checkpoint,
recode, transfer, restore on the device; downtime is from the freeze to the device's answer that it runs.

With --lazy, a third target in the same run: the arm64 device with post-copy (`lazy = true`: it resumes before its
memory has arrived, which the page server serves from the recoded images); its time to the last page too.

With --flat, a fourth: the arm64 device with post-copy from the flat freeze (`freeze = "flat"`: no memory is
dumped; the paused source serves it). With --back, each container then comes home (`migrate --to host`): from the
x86_64 device as it went, from the arm64 device notified for x86_64 there and recoded back here (and from
`arm64-flat` with post-copy from the device's flat freeze); the same phases, timed by the daemon. Downtime is
the daemon's own (from the freeze to the target's word that it runs). With --regset-in-bss, the program is the
build whose regs_dst/tls_dst lie in .bss (which a lazy dump leaves to post-copy: the notify's copy is recoded).

Run as root:  .venv/bin/python -m bench.cross_isa [--mb 16] [--runs 3] [--lazy] [--flat] [--back] [--regset-in-bss]
(ANDROCOND_ARM64_ATTACH=<the JSON line of `python -m tests.testbed.arm64 boot`> uses a device booted already.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from bench.arm64_daemon import arm64_bench
from bench.migration import androcond_flow
from tests.testbed.proc import wait_for
from tests.testbed.twoisa import BIN, install_twoisa_image

AGENT_PORT = 8197
LABEL = "androcond-bench"
PHASES = ("notify_s", "checkpoint_s", "recode_s", "stream_s", "restore_s")
FROZEN = PHASES[1:]  # notify runs while the program still does
# Each target's row, out and back.
OUT = {"pixel": "x86_64 device (engine B), same ISA", "arm64": "arm64 device (qemu TCG), recoded to aarch64",
       "arm64-lazy": "arm64 device, recoded, post-copy (lazy = true)",
       "arm64-flat": "arm64 device, recoded, post-copy from the flat freeze"}
BACK = {"pixel": "x86_64 device → host, same ISA", "arm64": "arm64 device → host, recoded to x86_64",
        "arm64-lazy": "arm64 device → host, recoded (no post-copy: the device keeps no dump to serve)",
        "arm64-flat": "arm64 device → host, recoded, post-copy from the device's flat freeze"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=16, help="touched memory of the program, MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lazy", action="store_true", help="and onto the arm64 device with post-copy")
    parser.add_argument("--flat", action="store_true", help="and onto it with post-copy from the flat freeze")
    parser.add_argument("--back", action="store_true", help="then bring each container home, timed too")
    parser.add_argument("--regset-in-bss", action="store_true", help="the build with regs_dst/tls_dst in .bss")
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    back: dict[str, dict[str, list[float]]] = {}
    targets = [target for target, wanted in (("pixel", True), ("arm64", True), ("arm64-lazy", args.lazy),
                                           ("arm64-flat", args.flat)) if wanted]
    with tempfile.TemporaryDirectory() as tmp, arm64_bench(Path(tmp), AGENT_PORT, LABEL) as on:
        bed, device = on.bed, on.device
        image = install_twoisa_image(bed.engine_a, device, Path(tmp), regset_in_bss=args.regset_in_bss)
        for _ in range(args.runs):
            for target in targets:  # interleaved: drift hits all alike
                name = f"bench-twoisa-{target}-{uuid.uuid4().hex[:6]}"
                bed.engine_a.cli("run", "-d", "--name", name, "--label", f"{LABEL}=1", image, f"/bin/{BIN}",
                                 "/data/count.log", "0", str(args.mb))

                def counting(n: str = name) -> bool:
                    return "count 3 " in bed.engine_a.cli("logs", n)

                wait_for(counting, timeout=60, what=f"{name} counting")
                _record(results, target, *androcond_flow(on.config, name, target, keep_source=False))
                if args.back:
                    _record(back, target, *androcond_flow(on.config, name, "host", keep_source=False))
                bed.engine_a.remove_containers(f"{LABEL}=1")
                bed.engine_b.remove_containers(f"{LABEL}=1")
                device.adb_shell(f"docker rm -f {name} >/dev/null 2>&1 || true", timeout=120)
    _table(results, args, {target: OUT[target] for target in targets}, "x86_64 device")
    if args.back:
        print()
        _table(back, args, {target: BACK[target] for target in targets}, "same ISA back")
    return 0


def _record(results: dict[str, dict[str, list[float]]], target: str, total: float,
            timings: dict[str, float]) -> None:
    row = results.setdefault(target, {})
    row.setdefault("total", []).append(total)
    # The daemon's own (post-copy: until the target resumed it); else the frozen phases' sum.
    row.setdefault("downtime", []).append(timings.get("downtime_s") or sum(timings.get(k, 0.0) for k in FROZEN))
    for phase in PHASES:
        row.setdefault(phase, []).append(timings.get(phase, 0.0))
    # Post-copy: from the freeze until the device has every page (the others have them when they resume).
    row.setdefault("last_page", []).append(timings.get("last_page_s") or row["downtime"][-1])


def _table(results: dict[str, dict[str, list[float]]], args: argparse.Namespace, labels: dict[str, str],
           baseline: str) -> None:
    med = statistics.median
    base = results["pixel"]
    print(f"| {args.mb} MB touched, median of {args.runs} | notify | checkpoint | recode | transfer | restore | "
          f"downtime (s) | last page (s) | total (s) | downtime vs {baseline} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for target, label in labels.items():
        row = results[target]
        print(f"| {label} | " + " | ".join(f"{med(row[p]):.2f}" for p in PHASES) +
              f" | {med(row['downtime']):.2f} | {med(row['last_page']):.2f} | {med(row['total']):.2f} | "
              f"{med(row['downtime']) / med(base['downtime']):.2f}× |")


if __name__ == "__main__":
    sys.exit(main())
