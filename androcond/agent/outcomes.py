"""Outcomes by migration id, kept on disk so a daemon that lost its connection can ask what happened.

Each record names the agent process that wrote it (pid and that process's start time, so a reused pid is not
taken for the same process). A record still "receiving" or "restoring" whose writer is gone is stale: that
agent was killed mid-migration, and nobody else will ever finish it (see recovery.py). Under `agent stdio`
every connection is its own process, so the owner check is what keeps a live session of another process safe.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..logging import get_logger
from ..protocol.codes import IN_FLIGHT, OutcomeState
from .errors import BadMigrationId

log = get_logger(__name__)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start: int  # /proc/<pid>/stat field 22: clock ticks after boot

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The process with this pid now, or None if there is none (a zombie counts as gone)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # The command name (field 2) may hold spaces and parentheses: split after its closing one.
        rest = stat.rpartition(")")[2].split()
        if rest[0] in ("Z", "X"):  # field 3, the state
            return None
        return cls(pid, int(rest[19]))  # field 22

    @classmethod
    def current(cls) -> ProcessIdentity:
        me = cls.of(os.getpid())
        assert me is not None
        return me

    def alive(self) -> bool:
        if self.pid <= 0:
            return False
        try:
            return ProcessIdentity.of(self.pid) == self
        except PermissionError:  # /proc hides it from us (hidepid): it may be alive, so never settle it
            return True


@dataclass
class OutcomeRecord:
    migration_id: str
    state: OutcomeState
    container_id: str = ""
    error: str = ""
    restore_seconds: float = 0.0
    restorer_seconds: float = 0.0
    restore_steps: dict[str, float] = field(default_factory=dict)  # where restore_seconds went (restore_steps.py)
    bytes_received: int = 0
    # The agent process that wrote the record (0: a file from before owners were recorded).
    owner_pid: int = 0
    owner_start: int = 0
    # Post-copy: the page keeper guarding the restored container until its last page (page_keeper.py).
    pager_pid: int = 0
    pager_start: int = 0

    @property
    def pager(self) -> ProcessIdentity | None:
        return ProcessIdentity(self.pager_pid, self.pager_start) if self.pager_pid else None

    @property
    def owner(self) -> ProcessIdentity:
        return ProcessIdentity(self.owner_pid, self.owner_start)

    def is_stale(self, me: ProcessIdentity) -> bool:
        """In flight, but its owner is neither this process nor any live process."""
        return self.state in IN_FLIGHT and self.owner != me and not self.owner.alive()

    @classmethod
    def from_json(cls, data: Any) -> OutcomeRecord:
        if not isinstance(data, dict):
            raise ValueError("an outcome record is a JSON object")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "state": OutcomeState(values.get("state", ""))})


def check_id(migration_id: str) -> str:
    if not _ID.match(migration_id):
        raise BadMigrationId(f"refused migration id {migration_id!r}: 1-128 letters, digits, '.', '_' or '-'")
    return migration_id


class OutcomeStore:
    """Public methods are coroutines: the file work (and fsync) runs in a worker thread."""

    def __init__(self, directory: Path, owner: ProcessIdentity | None = None) -> None:
        self.directory = directory
        self.owner = owner or ProcessIdentity.current()

    def _path(self, migration_id: str) -> Path:
        return self.directory / f"{check_id(migration_id)}.json"

    async def get(self, migration_id: str) -> OutcomeRecord | None:
        return await asyncio.to_thread(self._get, self._path(migration_id))

    async def put(self, record: OutcomeRecord) -> None:
        """Write atomically (rename), and durably: the answer must survive an agent restart. The record
        is stamped with this process as its owner."""
        record.owner_pid, record.owner_start = self.owner.pid, self.owner.start
        await asyncio.to_thread(self._put, self._path(record.migration_id), record)

    async def in_flight(self) -> list[OutcomeRecord]:
        """Every readable record still receiving or restoring; removes temporary files of dead writers."""
        return await asyncio.to_thread(self._in_flight)

    @staticmethod
    def _get(path: Path) -> OutcomeRecord | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return OutcomeRecord.from_json(data)

    def _put(self, path: Path, record: OutcomeRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A name per writer: two agent processes never share a temporary file.
        tmp = path.with_name(f"{path.name}.{self.owner.pid}-{self.owner.start}.tmp")
        try:
            with tmp.open("w") as f:
                json.dump(asdict(record), f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # The rename itself must survive a crash too.
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _in_flight(self) -> list[OutcomeRecord]:
        records: list[OutcomeRecord] = []
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return records
        for path in entries:
            if path.suffix == ".tmp":
                self._remove_orphan(path)
                continue
            if path.suffix != ".json":
                continue
            try:
                record = self._get(path)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable outcome record left as it is", path=str(path), error=str(exc))
                continue
            if record is not None and record.state in IN_FLIGHT:
                records.append(record)
        return records

    @staticmethod
    def _remove_orphan(path: Path) -> None:
        """A temporary file whose writer died between writing and renaming it."""
        writer = path.name.removesuffix(".tmp").rpartition(".")[2]
        pid, _, start = writer.partition("-")
        if not (pid.isdigit() and start.isdigit()) or ProcessIdentity(int(pid), int(start)).alive():
            return
        path.unlink(missing_ok=True)
        log.info("removed a temporary outcome file of a dead agent", path=str(path))
