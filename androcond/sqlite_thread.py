"""One SQLite database, used from one dedicated thread (the journal, the webhook outbox).

The event loop never waits on the disk, and the connection is only ever touched from its own thread. WAL and
synchronous=FULL: what is written must survive a power loss, not just a crash.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .errors import AndrocondError

T = TypeVar("T")


class SqliteThread:
    def __init__(self, path: Path, schema: str, error: type[AndrocondError], what: str) -> None:
        self.path = path
        self._schema = schema
        self._error = error
        self._what = what
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._what)
        await self.run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(self._schema)
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; only for functions passed to run()."""
        assert self._db is not None, f"{self._what} is closed"
        return self._db

    @property
    def closed(self) -> bool:
        return self._executor is None

    async def run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise self._error(f"{self._what} {self.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise self._error(f"{self._what} {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._executor is None:
            return

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self.run(close)
        self._executor.shutdown(wait=True)
        self._executor = None
