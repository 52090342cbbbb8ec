"""Fault injection for the test bed: the failure nobody expected, on demand.

With ``ANDROCOND_INJECT_FAULT=<point>[@<container>][,...]`` in the daemon's environment, :func:`inject`
raises :class:`InjectedFault` at those points of a migration (of that container only, when one is named).
It is a ``RuntimeError`` on purpose, not one of our errors: it stands for a bug, so the tests prove that the
supervisor contains what no ``except`` clause names. ``forward-gone`` instead makes the adb forward of a
migration vanish (through the real adb server) just before the daemon removes it, as when the phone is
unplugged right after the restore. ``wrong-exe`` makes a cross-ISA move send the x86_64 binary where the device needs
the aarch64 one, so the device's own CRIU refuses the restore. ``paging`` strikes once a post-copy restore runs on
the device, before its last page: the daemon's error closes the connection, which cuts the page transfer.
Unset — always, outside tests — nothing happens.
"""

from __future__ import annotations

import os

ENV = "ANDROCOND_INJECT_FAULT"
POINTS = frozenset({"preflight", "checkpoint", "recode", "stream", "commit", "paging", "finish-source",
                    "forward-gone", "wrong-exe"})


class InjectedFault(RuntimeError):
    pass


def armed(point: str, container: str = "") -> bool:
    assert point in POINTS, point
    for item in os.environ.get(ENV, "").split(","):
        name, _, scope = item.strip().partition("@")
        if name == point and (not scope or scope == container):
            return True
    return False


def inject(point: str, container: str = "") -> None:
    if armed(point, container):
        raise InjectedFault(f"injected fault at {point} ({ENV})")
