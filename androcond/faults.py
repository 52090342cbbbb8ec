"""Fault injection for the test bed: the failure nobody expected, on demand, through one explicit value.

The daemon reads ``ANDROCOND_INJECT_FAULT=<point>[@<container>][,...]`` once, when it starts
(:meth:`Faults.from_environ`), and hands the resulting :class:`Faults` to what has fault points: the migration's
phases, its source, the link to its device. :meth:`Faults.inject` raises :class:`InjectedFault` at those points
of a migration (of that container only, when one is named). It is a ``RuntimeError`` on purpose, not one of our
errors: it stands for a bug, so the tests prove that the supervisor contains what no ``except`` clause names.
``forward-gone`` instead makes the adb forward of a migration vanish (through the real adb server) just before
the daemon removes it, as when the phone is unplugged right after the restore. ``wrong-exe`` makes a cross-ISA
move send the source's binary where the device needs its own, so the device's CRIU refuses the restore.
``bad-plan`` cuts an emulated move's restorer plan short, so the restorer on the device refuses it.
``restore-refused`` empties the inventory of the images a way back brought home (the device keeps its own), so
the host's CRIU refuses the restore; home from emulation, it empties the restorer's plan, which it refuses.
``paging`` strikes once a post-copy restore runs on the device, before its last page: the daemon's error closes
the connection, which cuts the page transfer. ``dump-end`` SIGKILLs a flat freeze's runc and CRIU at its confirmed
end, between the freezer's thaw and the CLOSE on which CRIU would kill the tasks. Unset — always, outside tests —
nothing happens.

The agent's faults are whole behaviours (a flipped byte, a refused restore, a slow disk), not points: the bed
gives the agent other parts (androcond/agent/server.py's ``AgentParts``) the same explicit way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV = "ANDROCOND_INJECT_FAULT"
POINTS = frozenset({"preflight", "checkpoint", "recode", "stream", "commit", "paging", "finish-source",
                    "forward-gone", "wrong-exe", "bad-plan", "restore-refused", "dump-end"})


class InjectedFault(RuntimeError):
    pass


@dataclass(frozen=True)
class Faults:
    armed_points: tuple[tuple[str, str], ...] = ()  # (point, container or "" for any)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        points = []
        for item in spec.split(","):
            name, _, scope = item.strip().partition("@")
            if name:
                if name not in POINTS:
                    raise ValueError(f"{ENV}: unknown fault point {name!r} (known: {', '.join(sorted(POINTS))})")
                points.append((name, scope))
        return cls(tuple(points))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        return cls.parse(environ.get(ENV, ""))

    def armed(self, point: str, container: str = "") -> bool:
        assert point in POINTS, point
        return any(name == point and (not scope or scope == container) for name, scope in self.armed_points)

    def inject(self, point: str, container: str = "") -> None:
        if self.armed(point, container):
            raise InjectedFault(f"injected fault at {point} ({ENV})")


NO_FAULTS = Faults()
