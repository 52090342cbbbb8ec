"""The migration journal: every state change of every migration, in SQLite under `state_dir`.

A transition is written (and committed) before it takes effect, so after a crash the daemon knows, for every
unfinished migration, how far it got. SQLite work runs on one dedicated thread: the event loop never waits
on the disk, and the connection is only ever used from that thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import AndrocondError
from ..sqlite_thread import SqliteThread
from .states import FROZEN, INITIAL, TERMINAL, IllegalTransition, MigrationState, allowed

# The place that is this daemon's own engine, as a migration's source or target (a device is named by its own).
HOME = "host"

__all__ = ["FROZEN", "TERMINAL", "IllegalTransition", "Journal", "JournalError", "MigrationRecord",
           "MigrationState"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS migrations (
    id TEXT PRIMARY KEY,
    container_id TEXT NOT NULL,
    container_name TEXT NOT NULL,
    device TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    keep_source INTEGER NOT NULL,
    checkpoint_name TEXT NOT NULL,
    target_container_id TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    wire_bytes INTEGER NOT NULL DEFAULT 0,
    timings TEXT NOT NULL DEFAULT '{}',
    adjusted TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'host',
    home_config TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS migrations_by_container ON migrations (container_id, created_at);
CREATE INDEX IF NOT EXISTS migrations_by_name ON migrations (container_name, created_at);
CREATE TABLE IF NOT EXISTS transitions (
    migration_id TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


class JournalError(AndrocondError):
    pass


class TransitionRefused(JournalError, IllegalTransition):
    """The journal refused a transition the state machine does not allow (a bug, never a user error)."""


@dataclass
class MigrationRecord:
    id: str
    container_id: str
    container_name: str
    device: str
    origin: str  # label, api
    state: MigrationState = MigrationState.REQUESTED
    keep_source: bool = False
    checkpoint_name: str = ""
    target_container_id: str = ""
    error: str = ""
    bytes_sent: int = 0  # what moved, as read at the source
    wire_bytes: int = 0  # the same, as the link carried it (compressed where that paid)
    timings: dict[str, float] = field(default_factory=dict)
    # Configuration changed on the way to the device: field → {"from", "to", "why"}.
    adjusted: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where the container ran before the move: "host" (this daemon's engine) or a device's name; `device` is
    # where it goes ("host" on the way back).
    source: str = HOME
    # The create body the container had at home (set when it leaves the host): the way back restores it so.
    home_config: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def way_back(self) -> bool:
        return self.source != HOME

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["home_config"]  # the journal's own (the way back reads it), not news
        data["from"], data["to"] = self.source, self.device
        return data


_COLUMNS = [f.name for f in fields(MigrationRecord)]
# Built from constants only (column names, a fixed count of placeholders).
_INSERT = f"INSERT INTO migrations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"  # noqa: S608
_UNFINISHED = (f"SELECT * FROM migrations WHERE state NOT IN ({', '.join('?' for _ in TERMINAL)}) "  # noqa: S608
               "ORDER BY created_at")


def _row_to_record(row: sqlite3.Row) -> MigrationRecord:
    data = dict(row)
    data["keep_source"] = bool(data["keep_source"])
    data["timings"] = json.loads(data["timings"])
    data["adjusted"] = json.loads(data["adjusted"])
    data["home_config"] = json.loads(data["home_config"])
    data["state"] = MigrationState(data["state"])
    return MigrationRecord(**data)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sqlite = SqliteThread(path, _SCHEMA, JournalError, "journal")
        self._run = self._sqlite.run

    @classmethod
    async def open(cls, path: Path) -> Journal:
        journal = cls(path)
        await journal._sqlite.open()
        await journal._run(journal._upgrade)
        return journal

    def _upgrade(self) -> None:
        """Columns added since the first release, for journals made by an older androcond."""
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(migrations)")}
        if "adjusted" not in columns:
            self.db.execute("ALTER TABLE migrations ADD COLUMN adjusted TEXT NOT NULL DEFAULT '{}'")
        if "wire_bytes" not in columns:
            self.db.execute("ALTER TABLE migrations ADD COLUMN wire_bytes INTEGER NOT NULL DEFAULT 0")
        if "source" not in columns:
            self.db.execute("ALTER TABLE migrations ADD COLUMN source TEXT NOT NULL DEFAULT 'host'")
            self.db.execute("ALTER TABLE migrations ADD COLUMN home_config TEXT NOT NULL DEFAULT '{}'")
        self.db.execute("CREATE INDEX IF NOT EXISTS migrations_by_name ON migrations (container_name, created_at)")

    async def close(self) -> None:
        await self._sqlite.close()

    @property
    def db(self) -> sqlite3.Connection:
        return self._sqlite.db

    async def create(self, record: MigrationRecord) -> None:
        if record.state not in INITIAL:
            raise TransitionRefused(record.id, "(new)", record.state)

        def insert() -> None:
            values = asdict(record)
            values["timings"] = json.dumps(values["timings"])
            values["adjusted"] = json.dumps(values["adjusted"])
            values["home_config"] = json.dumps(values["home_config"])
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute(_INSERT, [values[c] for c in _COLUMNS])
                self.db.execute("INSERT INTO transitions VALUES (?, ?, ?, '')",
                                (record.id, record.state, record.updated_at))

        await self._run(insert)

    async def save(self, record: MigrationRecord, detail: str = "") -> None:
        """Write the record's current state (and a transition row when the state changed)."""
        record.updated_at = time.time()

        def update() -> None:
            with self.db:
                self.db.execute("BEGIN")
                previous = self.db.execute("SELECT state FROM migrations WHERE id = ?", (record.id,)).fetchone()
                if previous is None:
                    raise sqlite3.IntegrityError(f"no migration {record.id}")
                if not allowed(MigrationState(previous["state"]), record.state):
                    raise TransitionRefused(record.id, previous["state"], record.state)
                self.db.execute(
                    "UPDATE migrations SET state=?, target_container_id=?, error=?, bytes_sent=?, wire_bytes=?, "
                    "timings=?, adjusted=?, home_config=?, updated_at=? WHERE id=?",
                    (record.state, record.target_container_id, record.error, record.bytes_sent, record.wire_bytes,
                     json.dumps(record.timings), json.dumps(record.adjusted), json.dumps(record.home_config),
                     record.updated_at, record.id))
                if previous["state"] != record.state:
                    self.db.execute("INSERT INTO transitions VALUES (?, ?, ?, ?)",
                                    (record.id, record.state, record.updated_at, detail))

        await self._run(update)

    async def get(self, migration_id: str) -> MigrationRecord | None:
        def fetch() -> MigrationRecord | None:
            row = self.db.execute("SELECT * FROM migrations WHERE id = ?", (migration_id,)).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._run(fetch)

    async def recent(self, limit: int = 200) -> list[MigrationRecord]:
        def fetch() -> list[MigrationRecord]:
            rows = self.db.execute("SELECT * FROM migrations ORDER BY created_at DESC LIMIT ?", (limit,))
            return [_row_to_record(r) for r in rows]

        return await self._run(fetch)

    async def unfinished(self) -> list[MigrationRecord]:
        def fetch() -> list[MigrationRecord]:
            rows = self.db.execute(_UNFINISHED, tuple(TERMINAL))
            return [_row_to_record(r) for r in rows]

        return await self._run(fetch)

    async def last_for_container(self, container_id: str) -> MigrationRecord | None:
        def fetch() -> MigrationRecord | None:
            row = self.db.execute("SELECT * FROM migrations WHERE container_id = ? ORDER BY created_at DESC "
                                  "LIMIT 1", (container_id,)).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._run(fetch)

    async def last_done_for_name(self, name: str) -> MigrationRecord | None:
        """The last move of the container called `name` that landed: where it runs now (None: it never left)."""
        def fetch() -> MigrationRecord | None:
            row = self.db.execute("SELECT * FROM migrations WHERE container_name = ? AND state = ? "
                                  "ORDER BY created_at DESC LIMIT 1", (name, MigrationState.DONE.value)).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._run(fetch)

    async def home_config(self, name: str) -> dict[str, Any]:
        """The configuration the container called `name` had when it last left home ({} if not recorded): a
        move between devices records none, so the way back from the second device still finds it."""
        def fetch() -> dict[str, Any]:
            row = self.db.execute("SELECT home_config FROM migrations WHERE container_name = ? AND state = ? AND "
                                  "home_config != '{}' ORDER BY created_at DESC LIMIT 1",
                                  (name, MigrationState.DONE.value)).fetchone()
            config: dict[str, Any] = json.loads(row["home_config"]) if row is not None else {}
            return config

        return await self._run(fetch)

    async def last_for_name(self, name: str) -> MigrationRecord | None:
        """The last move of the container called `name`, in any state."""
        def fetch() -> MigrationRecord | None:
            row = self.db.execute("SELECT * FROM migrations WHERE container_name = ? ORDER BY created_at DESC "
                                  "LIMIT 1", (name,)).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._run(fetch)

    async def placements(self) -> list[MigrationRecord]:
        """For every container that moved, its last move that landed (newest first)."""
        def fetch() -> list[MigrationRecord]:
            rows = self.db.execute(
                "SELECT * FROM migrations AS m WHERE state = ? AND created_at = (SELECT MAX(created_at) FROM "
                "migrations WHERE container_name = m.container_name AND state = ?) ORDER BY updated_at DESC",
                (MigrationState.DONE.value, MigrationState.DONE.value))
            return [_row_to_record(r) for r in rows]

        return await self._run(fetch)

    async def transitions(self, migration_id: str) -> list[tuple[str, float, str]]:
        def fetch() -> list[tuple[str, float, str]]:
            rows = self.db.execute("SELECT state, at, detail FROM transitions WHERE migration_id = ? "
                                   "ORDER BY rowid", (migration_id,))
            return [(r["state"], r["at"], r["detail"]) for r in rows]

        return await self._run(fetch)
