"""A container's cgroup freezer, written directly: the hold that keeps a lazy dump's tasks still if CRIU dies.

A lazy dump begins on a paused container, but CRIU thaws the freezer once it has seized the tasks (they are then
held by ptrace alone, seen on the bed: `freezer.state` reads THAWED while it serves). CRIU killed while it serves
(the OOM killer, or systemd's SIGKILL to what is left of a unit whose daemon died) detaches them, and they run
while the target's copy may run too. Frozen again once the dump is ready, they stay still whatever happens to
CRIU: ptrace-stopped tasks count as frozen, and a task that CRIU lets go goes straight into the freezer. Only the
confirmed end needs them thawed (CRIU kills them then, and a frozen task cannot die under cgroup v1) — and they get
their SIGKILL before the thaw (:meth:`Freezer.kill_and_thaw`): a task with SIGKILL pending never returns to user
space, so CRIU dying between the thaw and its own kill cannot let one run either.

The cgroup is the one runc itself pauses: its state file names it (`cgroup_paths`), on v1 (`freezer`) and v2.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import AndrocondError

# What each hierarchy's control file takes.
V1_FROZEN, V1_THAWED = "FROZEN", "THAWED"
V2_FROZEN, V2_THAWED = "1", "0"
V1_FILE: Final = "freezer.state"
V2_FILE: Final = "cgroup.freeze"
PROCS_FILE: Final = "cgroup.procs"  # beside either control file: the cgroup's processes, by pid in our namespace


class FreezerError(AndrocondError):
    pass


@dataclass(frozen=True)
class Freezer:
    control: Path  # freezer.state (cgroup v1) or cgroup.freeze (v2)

    @property
    def v2(self) -> bool:
        return self.control.name == V2_FILE

    @classmethod
    def of_container(cls, runc_root: Path, container_id: str) -> Freezer:
        """The freezer runc pauses the container with, from its state file (blocking). Raises FreezerError."""
        state_file = runc_root / container_id / "state.json"
        try:
            paths = json.loads(state_file.read_text()).get("cgroup_paths") or {}
        except (OSError, ValueError) as exc:
            raise FreezerError(f"cannot read the container's runc state {state_file}: {exc}") from exc
        if not isinstance(paths, dict):
            raise FreezerError(f"{state_file}: cgroup_paths is not a table")
        if paths.get("freezer"):
            control = Path(paths["freezer"]) / V1_FILE
        elif paths.get(""):  # the unified hierarchy: one path for every controller
            control = Path(paths[""]) / V2_FILE
        else:
            raise FreezerError(f"{state_file} names no freezer cgroup for the container")
        if not control.is_file():
            raise FreezerError(f"the container's freezer {control} is not there")
        return cls(control)

    @classmethod
    def hold(cls, runc_root: Path, container_id: str) -> Freezer:
        """The container's freezer, frozen (blocking: one thread hop for both inside the downtime)."""
        freezer = cls.of_container(runc_root, container_id)
        freezer.freeze()
        return freezer

    def freeze(self) -> None:
        self._write(V2_FROZEN if self.v2 else V1_FROZEN)

    def thaw(self) -> None:
        self._write(V2_THAWED if self.v2 else V1_THAWED)

    def kill_and_thaw(self) -> int:
        """The confirmed end (blocking): SIGKILL every process of the frozen cgroup, then thaw it. Returns how many
        were killed. A SIGKILL sent while frozen stays pending (v1) or ends the task at once (v2); either way no
        task runs another instruction of its own, whoever thaws or detaches it next. Frozen, none can fork or
        exit, so the pids read are the tasks', not reused ones."""
        procs = self.control.parent / PROCS_FILE
        try:
            pids = [int(line) for line in procs.read_text().split()]
        except (OSError, ValueError) as exc:
            raise FreezerError(f"cannot read the frozen cgroup's processes from {procs}: {exc}") from exc
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone
            except OSError as exc:
                raise FreezerError(f"cannot kill process {pid} of {procs.parent}: {exc.strerror or exc}") from exc
        self.thaw()
        return len(pids)

    def _write(self, value: str) -> None:
        try:
            self.control.write_text(value)
        except OSError as exc:
            raise FreezerError(f"cannot write {value} to {self.control}: {exc.strerror or exc}") from exc
