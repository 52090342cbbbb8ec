"""What the benchmarks read of a process and of the machine, from /proc and /sys."""

from __future__ import annotations

import os
import time
from pathlib import Path


def peak_rss(pid: int) -> int:
    """VmHWM of a process in bytes: the most memory it ever held (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_cpu() -> tuple[float, float]:
    """The machine's CPU seconds since boot: (busy, idle), all cores summed (/proc/stat's first line; iowait
    counts as idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, idle, iowait, irq, softirq = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, (idle + iowait) / hz


# A kernel that hands the freed memory of its VM back to the hypervisor counts it here (this machine's does;
# a stock kernel's page_reporting has no such counter). Such memory costs a fault on the host when touched again.
REPORTED_KIB = Path("/sys/module/page_reporting/parameters/reported_kib")


def settle_freed_memory(quiet_s: float = 3.0, limit_s: float = 60.0) -> float:
    """Wait until the VM has handed back the memory freed so far: its reported count unchanged for `quiet_s`
    (at most `limit_s`). Returns the seconds waited; 0 at once where the kernel does not report."""
    if not REPORTED_KIB.exists():
        return 0.0
    started = time.monotonic()
    last, quiet_since = REPORTED_KIB.read_text(), time.monotonic()
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() - started < limit_s:
        time.sleep(0.5)
        now = REPORTED_KIB.read_text()
        if now != last:
            last, quiet_since = now, time.monotonic()
    return time.monotonic() - started
