"""What the benchmarks read of a process from /proc."""

from __future__ import annotations

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
