"""Outcomes by migration id, kept on disk so a daemon that lost its connection can ask what happened."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import AndrocondError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class BadMigrationId(AndrocondError):
    pass


@dataclass
class OutcomeRecord:
    migration_id: str
    state: str  # receiving, restoring, running, failed, aborted
    container_id: str = ""
    error: str = ""
    restore_seconds: float = 0.0
    bytes_received: int = 0


def check_id(migration_id: str) -> str:
    if not _ID.match(migration_id):
        raise BadMigrationId(f"refused migration id {migration_id!r}: 1-128 letters, digits, '.', '_' or '-'")
    return migration_id


class OutcomeStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, migration_id: str) -> Path:
        return self.directory / f"{check_id(migration_id)}.json"

    def get(self, migration_id: str) -> OutcomeRecord | None:
        try:
            data = json.loads(self._path(migration_id).read_text())
        except FileNotFoundError:
            return None
        return OutcomeRecord(**data)

    def put(self, record: OutcomeRecord) -> None:
        """Write atomically (rename), and durably: the answer must survive an agent restart."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(record.migration_id)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(asdict(record), f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
