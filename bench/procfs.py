"""What the benchmarks read of a process from /proc."""

from __future__ import annotations

import os
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
