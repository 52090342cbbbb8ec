"""Which migrations run when: at most `max_migrations` at once overall and one per container; requests
beyond the limit wait (they do not fail). Every migration is a task of the daemon's task group."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .errors import AndrocondError
from .journal import Journal, MigrationRecord
from .logging import get_logger, log_context
from .pipeline import Context, Migration, new_record

log = get_logger(__name__)


class AlreadyMigrating(AndrocondError):
    def __init__(self, record: MigrationRecord) -> None:
        super().__init__(f"container {record.container_name} is already being migrated ({record.id})")
        self.record = record


class SchedulerClosed(AndrocondError):
    pass


class Scheduler:
    def __init__(self, ctx: Context, journal: Journal, limit: int, spawn: Callable[..., asyncio.Task[None]]) -> None:
        self.ctx = ctx
        self.journal = journal
        self._slots = asyncio.Semaphore(limit)
        self._spawn = spawn
        self.active: dict[str, MigrationRecord] = {}  # by container id
        self.running_migrations: dict[str, Migration] = {}  # by migration id, for live progress
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False

    async def submit(self, container_id: str, container_name: str, device: str, *, origin: str,
                     keep_source: bool = False, delay_s: float = 0.0) -> MigrationRecord:
        if self.closed:
            raise SchedulerClosed("the daemon is shutting down; no new migrations")
        if container_id in self.active:
            raise AlreadyMigrating(self.active[container_id])
        record = new_record(container_id, container_name, device, origin, keep_source)
        self.active[container_id] = record
        try:
            await self.journal.create(record)
        except BaseException:
            del self.active[container_id]
            raise
        if self.ctx.on_change is not None:
            await self.ctx.on_change(record)
        self._idle.clear()
        task = self._spawn(self._run(record, delay_s), name=f"migration-{record.id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    async def _run(self, record: MigrationRecord, delay_s: float) -> None:
        with log_context(migration_id=record.id, container=record.container_name):
            try:
                if delay_s > 0:
                    log.info("waiting before migrating", delay_s=delay_s)
                    await asyncio.sleep(delay_s)
                async with self._slots:
                    migration = Migration(self.ctx, record)
                    self.running_migrations[record.id] = migration
                    try:
                        await migration.run()
                    finally:
                        del self.running_migrations[record.id]
            except asyncio.CancelledError:
                if record.state == "requested":  # cancelled while queued: nothing happened
                    record.state, record.error = "failed", "cancelled before it started (daemon shutting down)"
                    await asyncio.shield(self.journal.save(record, record.error))
                raise
            finally:
                self.active.pop(record.container_id, None)
                if not self.active:
                    self._idle.set()

    async def drain(self) -> None:
        """Stop taking new migrations and wait for the ones in flight."""
        self.closed = True
        await self._idle.wait()

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
